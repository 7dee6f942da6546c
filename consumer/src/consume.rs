//! The read loop of one sink: messages from the group consumer through decode and route into
//! the open batch, batches out to delivery, settled outcomes into the offset tracker, and a
//! timer that commits each partition up to its first event that is not final.
//!
//! ```text
//!  recv ─▶ decode ─▶ route ─▶ batch ──dispatch──▶ [task: deliver ─▶ dead letters] ×N
//!                                                          │ Report
//!  commit tick ◀── tracker ◀──────────── settle ◀──────────┘
//! ```
//!
//! A batch goes out when it holds `batch_size` events or `batch_max_bytes`, when no message has
//! come for [`IDLE_GAP`] (the topic is quiet: waiting longer only adds latency), or at the latest
//! `linger` after it opened (messages keep coming: batch them); up to `max_in_flight_requests`
//! batches are in flight, each in its own task. So a trickle is written at once and a backlog in
//! full batches, without a setting to choose between them. An event that
//! versions cannot order after a batch in flight (see [`crate::batch`]) waits for it; a
//! TRUNCATE marker waits for every batch in flight.

pub mod group;

use std::future::Future as _;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinSet;

use crate::batch::{Batch, Doc, Held, InFlight, Item, Letter, Ticket};
use crate::dead_letter::{DeadLetter, Original};
use crate::decode::{self, Decoded};
use crate::elastic::deliver::{self, Report};
use crate::error::Error;
use crate::event::KafkaPosition;
use crate::offsets::{Slot, Tracker};
use crate::plain;
use crate::route::{self, Routing};
use crate::sink::{Prepared, Shared};
use crate::stats::{Outcome, now_micros};
use group::SinkContext;

/// How long a graceful stop waits for the batches in flight.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// A pause in the messages this long sends the open batch. While a backlog is read, messages
/// follow each other within microseconds; a transaction's events reach the consumer together.
const IDLE_GAP: Duration = Duration::from_millis(2);

/// Messages taken in one turn of the read loop when they are already fetched: about half a
/// millisecond of work, so settling a finished batch never waits longer.
const BURST: usize = 64;

/// The smallest chunk message bytes are copied into: about a hundred events of a usual row.
const ARENA_CHUNK: usize = 64 * 1024;

/// A message copied out of the client's buffer (borrowed messages must not outlive the
/// consumer, and must not be held across awaits).
#[derive(Debug)]
struct Received {
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    payload: Option<Bytes>,
}

/// What the read loop does with one event besides batching it.
#[derive(Debug)]
enum Next {
    Done(Outcome),
    Batch(Item),
    DeadLetter(Letter),
    Truncate(u64),
}

pub struct Reader {
    shared: Arc<Shared>,
    tracker: Arc<Mutex<Tracker>>,
    batch: Batch,
    in_flight: JoinSet<Result<(Report, Held), Error>>,
    in_flight_keys: InFlight,
    /// Where message keys and values are copied out of librdkafka's buffers (see [`copy`]).
    arena: BytesMut,
}

impl Reader {
    pub fn new(shared: Arc<Shared>, tracker: Arc<Mutex<Tracker>>) -> Self {
        Self {
            shared,
            tracker,
            batch: Batch::default(),
            in_flight: JoinSet::new(),
            in_flight_keys: InFlight::default(),
            arena: BytesMut::new(),
        }
    }

    /// Reads until shutdown or an error that stops the sink, then commits what is final and
    /// waits for (or, after an error, aborts) the batches in flight.
    pub async fn run(mut self, consumer: &StreamConsumer<SinkContext>) -> Result<(), Error> {
        let result = self.read(consumer).await;
        // Commit what is final, whatever happened; nothing past an unsettled event.
        self.commit(consumer, CommitMode::Sync);
        if result.is_err() {
            self.in_flight.abort_all();
        }
        while self.in_flight.join_next().await.is_some() {}
        result
    }

    async fn read(&mut self, consumer: &StreamConsumer<SinkContext>) -> Result<(), Error> {
        let config = &self.shared.prepared.config;
        let linger = config.elasticsearch.linger.get();
        let max_in_flight = config.elasticsearch.max_in_flight_requests.max(1);
        let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shared.writer.shutdown.clone();
        let mut last_message: Option<std::time::Instant> = None;
        loop {
            let full = self.batch.is_full(&self.shared.prepared.config);
            if full && self.in_flight.len() < max_in_flight {
                self.dispatch();
            }
            let full = self.batch.is_full(&self.shared.prepared.config);
            let deadline = self.batch.opened().map(|opened| {
                let quiet = last_message.map_or(opened, |at| at.max(opened)) + IDLE_GAP;
                tokio::time::Instant::from_std(quiet.min(opened + linger))
            });
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    self.settle(joined)?;
                }
                () = sleep_until(deadline), if deadline.is_some() && self.in_flight.len() < max_in_flight => {
                    self.dispatch();
                }
                _ = commit_tick.tick() => self.commit(consumer, CommitMode::Async),
                message = consumer.recv(), if !full => {
                    self.take(message).await?;
                    // Then the messages already fetched, without a turn of this loop each (its
                    // branches cost more than a small event), as long as the batch has room.
                    for _ in 1..BURST {
                        if self.batch.is_full(&self.shared.prepared.config) {
                            break;
                        }
                        let mut next = std::pin::pin!(consumer.recv());
                        let ready = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await;
                        let Poll::Ready(message) = ready else {
                            break;
                        };
                        self.take(message).await?;
                    }
                    last_message = Some(std::time::Instant::now());
                }
            }
        }
        // Graceful stop: send what is batched and wait (bounded) for the requests in flight.
        self.dispatch();
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        while !self.in_flight.is_empty() {
            tokio::select! {
                () = &mut grace => break,
                Some(joined) = self.in_flight.join_next() => {
                    if let Err(error) = self.settle(joined) {
                        tracing::warn!(%error, "bulk request failed during shutdown");
                    }
                }
            }
        }
        Ok(())
    }

    /// One message from the consumer: handled, or its error logged.
    async fn take(&mut self, message: KafkaResult<BorrowedMessage<'_>>) -> Result<(), Error> {
        let received = match message {
            Ok(message) => Received {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(|key| copy(&mut self.arena, key)),
                payload: message
                    .payload()
                    .map(|payload| copy(&mut self.arena, payload)),
            },
            Err(error) => {
                tracing::warn!(sink = %self.shared.prepared.config.name, %error, "kafka consumer error");
                return Ok(());
            }
        };
        self.handle(received).await
    }

    async fn handle(&mut self, received: Received) -> Result<(), Error> {
        let slot = match self.tracker.lock() {
            Ok(mut tracker) => tracker.receive(received.partition, received.offset),
            Err(_) => None,
        };
        let Some(slot) = slot else {
            // Fetched just before its partition was revoked: the next owner reads it.
            return Ok(());
        };
        match self.prepare(received, slot) {
            Next::Done(outcome) => self.finish(slot, outcome, 0),
            Next::Batch(item) => {
                if self.in_flight_keys.conflicts(&item) {
                    // Versions cannot order this write after the earlier one: wait for it.
                    self.dispatch();
                    self.drain().await?;
                }
                self.batch.push(item);
            }
            Next::DeadLetter(letter) => self.batch.push_letter(letter),
            Next::Truncate(version) => {
                self.dispatch();
                self.drain().await?;
                let sink = &self.shared.prepared;
                if sink.config.ignore_truncate {
                    tracing::info!(sink = %sink.config.name, "table truncated; documents kept (ignore_truncate)");
                } else {
                    let pattern = sink.template.pattern();
                    let batch_size = sink.config.elasticsearch.batch_size;
                    let truncated =
                        deliver::truncate(&self.shared.writer, &pattern, version, batch_size)
                            .await?;
                    tracing::info!(
                        sink = %sink.config.name, pattern, version,
                        documents = truncated.deleted, newer = truncated.newer, refused = truncated.refused,
                        "table truncated: documents deleted"
                    );
                }
                self.finish(slot, Outcome::Skipped, 0);
            }
        }
        Ok(())
    }

    /// Settles one event.
    fn finish(&self, slot: Slot, outcome: Outcome, commit_micros: i64) {
        self.finish_all(&[(slot, outcome, commit_micros)]);
    }

    /// Settles a batch's events: one lock, one clock reading, one count per outcome.
    fn finish_all(&self, settled: &[(Slot, Outcome, i64)]) {
        if let Ok(mut tracker) = self.tracker.lock() {
            for &(slot, _, _) in settled {
                tracker.done(slot);
            }
        }
        let stats = &self.shared.writer.stats;
        let mut counts = [0u64; Outcome::ALL.len()];
        let now = now_micros();
        for &(_, outcome, commit_micros) in settled {
            counts[outcome.index()] += 1;
            if commit_micros > 0 && matches!(outcome, Outcome::Indexed | Outcome::Deleted) {
                #[allow(clippy::cast_precision_loss)] // seconds for a histogram
                stats.indexed_after_commit((now - commit_micros).max(0) as f64 / 1e6);
            }
        }
        for outcome in Outcome::ALL {
            stats.record(outcome, counts[outcome.index()]);
        }
    }

    /// Decodes and routes one message.
    fn prepare(&self, received: Received, slot: Slot) -> Next {
        let shared = &self.shared;
        let kafka = KafkaPosition {
            topic: &shared.topic,
            partition: received.partition,
            offset: received.offset,
        };
        let routed = decode_and_route(&shared.prepared, received.payload.as_deref(), kafka);
        let original = Original {
            topic: shared.topic.clone(),
            partition: received.partition,
            offset: received.offset,
            key: received.key,
            payload: received.payload,
        };
        match routed {
            Routed::Done(outcome) => Next::Done(outcome),
            Routed::Truncate(version) => Next::Truncate(version),
            Routed::Write(doc, commit_micros) => Next::Batch(Item {
                doc,
                ticket: Ticket {
                    slot,
                    replaced: Vec::new(),
                    original,
                    commit_micros,
                },
            }),
            Routed::DeadLetter(letter) => Next::DeadLetter(Letter {
                slot,
                original,
                letter,
            }),
        }
    }

    fn dispatch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let (items, letters) = self.batch.take();
        let held = self.in_flight_keys.add(&items);
        let shared = self.shared.clone();
        self.in_flight.spawn(async move {
            let report = write_batch(shared, items, letters).await?;
            Ok((report, held))
        });
    }

    /// Waits for every batch in flight.
    async fn drain(&mut self) -> Result<(), Error> {
        while let Some(joined) = self.in_flight.join_next().await {
            self.settle(joined)?;
        }
        Ok(())
    }

    fn settle(
        &mut self,
        joined: Result<Result<(Report, Held), Error>, tokio::task::JoinError>,
    ) -> Result<(), Error> {
        let (report, held) = match joined? {
            Ok(done) => done,
            Err(Error::Interrupted) => return Ok(()),
            Err(error) => return Err(error),
        };
        self.in_flight_keys.remove(held);
        self.finish_all(&report.settled);
        Ok(())
    }

    fn commit(&self, consumer: &StreamConsumer<SinkContext>, mode: CommitMode) {
        let positions = match self.tracker.lock() {
            Ok(mut tracker) => tracker.to_commit(),
            Err(_) => return,
        };
        if positions.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in &positions {
            let _ =
                list.add_partition_offset(&self.shared.topic, partition, Offset::Offset(offset));
        }
        match consumer.commit(&list, mode) {
            Ok(()) => {
                for (partition, offset) in positions {
                    self.shared.writer.stats.committed(partition, offset);
                }
            }
            Err(error) => {
                tracing::warn!(sink = %self.shared.prepared.config.name, %error, "offset commit failed; retried with the next one");
            }
        }
    }
}

/// The task of one batch: delivers its items, then sends its dead letters (those of the stages
/// before the cluster and those the cluster rejected) together, and reports them settled.
async fn write_batch(
    shared: Arc<Shared>,
    items: Vec<Item>,
    letters: Vec<Letter>,
) -> Result<Report, Error> {
    let mut report = deliver::deliver(&shared.writer, items).await?;
    let rejected = std::mem::take(&mut report.letters);
    let all: Vec<(&Original, &DeadLetter)> = letters
        .iter()
        .map(|l| (&l.original, &l.letter))
        .chain(rejected.iter().map(|(t, l)| (&t.original, l)))
        .collect();
    shared
        .dead_letters
        .send_all(&all, &shared.writer.shutdown)
        .await?;
    shared
        .writer
        .stats
        .dead_lettered(all.iter().map(|(_, letter)| *letter));
    for letter in &letters {
        report.settled.push((letter.slot, Outcome::DeadLettered, 0));
    }
    for (ticket, _) in &rejected {
        report.settle(ticket, Outcome::DeadLettered);
    }
    Ok(report)
}

/// Copies message bytes into `arena`, a shared chunk of at least [`ARENA_CHUNK`] bytes: one
/// allocation for many messages instead of one per key and one per value. A chunk is freed when
/// the last message copied into it is settled.
fn copy(arena: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if arena.capacity() < bytes.len() {
        arena.reserve(bytes.len().max(ARENA_CHUNK));
    }
    arena.extend_from_slice(bytes);
    arena.split().freeze()
}

/// What decode and route make of one message value.
#[derive(Debug)]
pub enum Routed {
    /// Final without a write (a tombstone, an action the sink does not take).
    Done(Outcome),
    /// The write, and the event's commit time (Unix micros).
    Write(Doc, i64),
    DeadLetter(DeadLetter),
    /// A TRUNCATE marker at this commit LSN.
    Truncate(u64),
}

/// The stages of one message before the batch: decode, then route (actions, `_id`, index,
/// filter, transform). The read loop and a redrive of dead letters both go through it.
pub fn decode_and_route(
    prepared: &Prepared,
    payload: Option<&[u8]>,
    kafka: KafkaPosition<'_>,
) -> Routed {
    if let Some((doc, commit_micros)) = payload.and_then(|p| plain::route(prepared, p)) {
        return Routed::Write(doc, commit_micros);
    }
    decode_and_route_full(prepared, payload, kafka)
}

/// [`decode_and_route`] without the shortcut of a plain sink: the whole event is decoded.
pub(crate) fn decode_and_route_full(
    prepared: &Prepared,
    payload: Option<&[u8]>,
    kafka: KafkaPosition<'_>,
) -> Routed {
    let Some(payload) = payload else {
        // A tombstone: the DELETE before it did the work.
        return Routed::Done(Outcome::Skipped);
    };
    let (event, action) = match decode::decode(payload) {
        Ok(Decoded::Change(event, action)) => (event, action),
        Ok(Decoded::Truncate(version)) => return Routed::Truncate(version),
        Err(error) => return Routed::DeadLetter(DeadLetter::from(error)),
    };
    match route::route(prepared, &event, action, kafka) {
        Ok(Routing::Skip(outcome)) => Routed::Done(outcome),
        Ok(Routing::Write(doc)) => {
            Routed::Write(doc, event.position.unwrap_or_default().commit_time_micros)
        }
        Err(letter) => Routed::DeadLetter(letter),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn message_bytes_are_copied_whole_into_shared_chunks() {
        let mut arena = BytesMut::new();
        let small: Vec<Bytes> = (0..100u8).map(|n| copy(&mut arena, &[n; 300])).collect();
        for (n, bytes) in (0..100u8).zip(&small) {
            assert_eq!(bytes.as_ref(), [n; 300].as_slice());
        }
        // A value larger than a chunk is copied whole, and later ones still fit.
        let large = vec![7u8; 3 * ARENA_CHUNK];
        assert_eq!(copy(&mut arena, &large), large);
        assert_eq!(copy(&mut arena, b"after").as_ref(), b"after");
        // Dropping earlier copies leaves the later ones intact (the chunk is shared).
        let kept = copy(&mut arena, &[9; 100]);
        drop(small);
        assert_eq!(copy(&mut arena, &[1; 100]).as_ref(), [1; 100].as_slice());
        assert_eq!(kept.as_ref(), [9; 100].as_slice());
    }
}
