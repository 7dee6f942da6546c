//! One sink: its consumer group, the batcher and the bulk requests in flight.
//!
//! One task reads the topic, decodes, filters and transforms each event and adds it to the
//! open batch. A batch goes out when it holds `batch_size` documents or `batch_max_bytes`, or
//! after `linger`; up to `max_in_flight_requests` batches are in flight, each in its own task,
//! which retries what Elasticsearch asks to retry and dead-letters what it rejects. When a task
//! reports, the events it settled are marked final in the offset tracker, and a timer commits
//! each partition up to its first event that is not final.
//!
//! Per-key order: inside a batch, later events of one document replace earlier ones. Across
//! batches, versions (`commit_lsn`, `external_gte`) order the writes, except for two cases that
//! versions cannot order: two events of one transaction (same version) and a partial update
//! (it reads the current document). An event in one of those cases waits until the earlier
//! batch holding its document is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};
use sluice_common::config::{Action, Config, SinkConfig};
use sluice_proto::Message as _;
use sluice_proto::v1::{ChangeEvent, Op};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::elastic::{BulkOp, Client, ElasticError, ItemResult};
use crate::error::Error;
use crate::event::{self, IndexTemplate, KafkaPosition};
use crate::kafka::{self, DeadLetter, DeadLetters, Original, SinkContext};
use crate::offsets::{Slot, Tracker};
use crate::script::{Scripts, Verdict};
use crate::stats::{Outcome, SinkStats, now_micros};

/// How long a sink keeps retrying credentials the cluster refuses after they worked at start.
const AUTH_GRACE: Duration = Duration::from_secs(90);

/// Everything a sink needs that was checked before connecting.
#[derive(Debug)]
pub struct Prepared {
    pub config: SinkConfig,
    pub scripts: Arc<Scripts>,
    pub template: IndexTemplate,
    pub settings: Option<Value>,
    pub mappings: Option<Value>,
}

/// State shared by the reading task and the bulk tasks of one sink.
#[derive(Debug)]
struct Shared {
    config: SinkConfig,
    scripts: Arc<Scripts>,
    template: IndexTemplate,
    client: Client,
    dead_letters: DeadLetters,
    stats: Arc<SinkStats>,
    topic: Arc<str>,
    shutdown: CancellationToken,
}

/// A document identity: index and `_id`.
type DocKey = (String, String);

#[derive(Debug)]
enum Write {
    Full(Bytes),
    /// A document without the unchanged TOAST columns: merged onto the indexed one first.
    Partial(Map<String, Value>),
    Delete,
}

#[derive(Debug)]
struct Item {
    index: String,
    id: String,
    version: u64,
    write: Write,
    /// What success means: indexed, deleted, or filtered (a delete of a row that left the filter).
    outcome: Outcome,
    slot: Slot,
    /// Earlier events of the same document in the same batch, replaced by this one.
    replaced: Vec<Slot>,
    original: Original,
    commit_micros: i64,
}

impl Item {
    fn key(&self) -> DocKey {
        (self.index.clone(), self.id.clone())
    }

    fn bytes(&self) -> usize {
        let body = match &self.write {
            Write::Full(bytes) => bytes.len(),
            Write::Partial(_) => self.original.payload.as_ref().map_or(0, Bytes::len),
            Write::Delete => 0,
        };
        body + self.index.len() + self.id.len() + 96
    }

    fn op(&self) -> BulkOp {
        match &self.write {
            Write::Full(document) => BulkOp::Index {
                index: self.index.clone(),
                id: self.id.clone(),
                version: self.version,
                document: document.clone(),
            },
            Write::Delete | Write::Partial(_) => BulkOp::Delete {
                index: self.index.clone(),
                id: self.id.clone(),
                version: self.version,
            },
        }
    }
}

#[derive(Debug, Default)]
struct Batch {
    items: Vec<Item>,
    by_key: HashMap<DocKey, usize>,
    bytes: usize,
    opened: Option<Instant>,
}

impl Batch {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn is_full(&self, config: &SinkConfig) -> bool {
        self.items.len() >= config.elasticsearch.batch_size
            || self.bytes >= config.elasticsearch.batch_max_bytes
    }

    /// Adds `item`, replacing an earlier event of the same document.
    fn push(&mut self, item: Item) {
        self.opened.get_or_insert_with(Instant::now);
        self.bytes += item.bytes();
        match self.by_key.get(&item.key()) {
            Some(&at) => {
                let earlier = std::mem::replace(&mut self.items[at], item);
                let item = &mut self.items[at];
                item.replaced.push(earlier.slot);
                item.replaced.extend(earlier.replaced);
                if let Write::Partial(partial) = &mut item.write {
                    match earlier.write {
                        Write::Full(document) => {
                            if let Ok(mut merged) =
                                serde_json::from_slice::<Map<String, Value>>(&document)
                            {
                                merged.append(partial);
                                if let Ok(bytes) = serde_json::to_vec(&merged) {
                                    item.write = Write::Full(bytes.into());
                                }
                            }
                        }
                        Write::Partial(mut earlier_partial) => {
                            earlier_partial.append(partial);
                            *partial = earlier_partial;
                        }
                        Write::Delete => {}
                    }
                }
            }
            None => {
                self.by_key.insert(item.key(), self.items.len());
                self.items.push(item);
            }
        }
    }

    fn take(&mut self) -> Vec<Item> {
        self.by_key.clear();
        self.bytes = 0;
        self.opened = None;
        std::mem::take(&mut self.items)
    }
}

/// What one bulk task settled.
#[derive(Debug, Default)]
struct Report {
    settled: Vec<(Slot, Outcome, i64)>,
    keys: Vec<DocKey>,
}

/// A message copied out of the client's buffer (borrowed messages must not outlive the
/// consumer, and must not be held across awaits).
#[derive(Debug)]
struct Received {
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    payload: Option<Bytes>,
}

/// What the reading task does with one event besides batching it.
#[derive(Debug)]
enum Next {
    Done,
    Batch(Item),
    DeadLetter(Slot, Original, DeadLetter),
    Truncate(Slot, u64),
}

/// Runs one sink until `shutdown`. Returns an error when the sink cannot go on (credentials
/// refused, Kafka misconfigured); transient failures are retried inside.
pub async fn run(
    config: Arc<Config>,
    prepared: Prepared,
    stats: Arc<SinkStats>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let sink = prepared.config.name.clone();
    let elastic = |source: ElasticError| Error::Elastic {
        sink: sink.clone(),
        source,
    };
    let es = &prepared.config.elasticsearch;
    let client = Client::new(es).map_err(elastic)?;
    let info = retry_setup(&shutdown, &sink, "connect to the cluster", || client.info())
        .await
        .map_err(elastic)?;
    tracing::info!(sink = %sink, distribution = %info.distribution, version = %info.version, "cluster reachable");
    match prepared.template.fixed() {
        Some(alias) => {
            let created = retry_setup(&shutdown, &sink, "create the index", || {
                client.ensure_index(
                    alias,
                    prepared.settings.as_ref(),
                    prepared.mappings.as_ref(),
                )
            })
            .await
            .map_err(elastic)?;
            if created {
                tracing::info!(sink = %sink, alias, index = %format!("{alias}-v1"), "created the index behind the alias");
            }
        }
        None => {
            if prepared.settings.is_some() || prepared.mappings.is_some() {
                let pattern = prepared.template.pattern();
                let template = format!("sluice-{sink}");
                retry_setup(&shutdown, &sink, "put the index template", || {
                    client.put_index_template(
                        &template,
                        &pattern,
                        prepared.settings.as_ref(),
                        prepared.mappings.as_ref(),
                    )
                })
                .await
                .map_err(elastic)?;
            }
        }
    }
    let mut delay = Duration::from_millis(500);
    while let Err(error) = kafka::ensure_dlq_topic(&config, &prepared.config).await {
        let Error::Kafka(_) = error else {
            return Err(error);
        };
        tracing::warn!(sink = %sink, %error, retry_in = ?delay, "cannot reach Kafka yet");
        tokio::select! {
            () = shutdown.cancelled() => return Err(Error::Interrupted),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    let dead_letters = DeadLetters::new(&config, &prepared.config)?;

    let topic: Arc<str> = config.topic_for(&prepared.config.table).into();
    wait_for_topic(&config, &topic, &sink, &shutdown).await?;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let consumer: StreamConsumer<SinkContext> = kafka::consumer_config(&config, &prepared.config)
        .create_with_context(SinkContext {
            topic: topic.to_string(),
            tracker: tracker.clone(),
            stats: stats.clone(),
        })
        .map_err(Error::kafka)?;
    consumer.subscribe(&[&topic]).map_err(Error::kafka)?;
    tracing::info!(sink = %sink, topic = %topic, group = %sink, "consuming");

    let shared = Arc::new(Shared {
        config: prepared.config,
        scripts: prepared.scripts,
        template: prepared.template,
        client,
        dead_letters,
        stats,
        topic,
        shutdown: shutdown.clone(),
    });
    let mut reader = Reader {
        shared,
        tracker,
        batch: Batch::default(),
        in_flight: JoinSet::new(),
        in_flight_keys: HashMap::new(),
    };
    let result = reader.run(&consumer).await;
    // Commit what is final, whatever happened; nothing past an unsettled event.
    reader.commit(&consumer, CommitMode::Sync);
    if result.is_err() {
        reader.in_flight.abort_all();
    }
    while reader.in_flight.join_next().await.is_some() {}
    drop(consumer);
    result
}

/// Waits until the producer has created the topic and every partition has a leader
/// (subscribing to a missing or just-created topic works, but the consumer would only notice it
/// at a later metadata refresh).
async fn wait_for_topic(
    config: &Config,
    topic: &str,
    sink: &str,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    // Asked through a client of its own: a group consumer that once saw the topic missing was
    // seen to fetch nothing after it appeared.
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(config, &[])
        .create()
        .map_err(Error::kafka)?;
    let admin = Arc::new(admin);
    let mut logged = false;
    loop {
        let (client, name) = (admin.clone(), topic.to_owned());
        let found = tokio::task::spawn_blocking(move || {
            client
                .inner()
                .fetch_metadata(Some(&name), Duration::from_secs(10))
                .map(|metadata| {
                    metadata.topics().first().is_some_and(|t| {
                        t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
        })
        .await
        .map_err(|e| Error::Kafka(e.to_string()))?;
        match found {
            Ok(true) => return Ok(()),
            Ok(false) if !logged => {
                tracing::info!(
                    sink,
                    topic,
                    "waiting for the topic (sluice-producer creates it)"
                );
                logged = true;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(sink, topic, %error, "cannot read Kafka metadata yet"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(Error::Interrupted),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Retries a setup step while the cluster is unreachable; credentials and other refusals end
/// it at once.
async fn retry_setup<T, F, Fut>(
    shutdown: &CancellationToken,
    sink: &str,
    what: &str,
    mut step: F,
) -> Result<T, ElasticError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ElasticError>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match step().await {
            Err(error) if error.is_retryable() => {
                tracing::warn!(sink, %error, retry_in = ?delay, "cannot {what} yet");
                tokio::select! {
                    () = shutdown.cancelled() => return Err(error),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

struct Reader {
    shared: Arc<Shared>,
    tracker: Arc<Mutex<Tracker>>,
    batch: Batch,
    in_flight: JoinSet<Result<Report, Error>>,
    /// Documents in flight: the version and how many batches hold it.
    in_flight_keys: HashMap<DocKey, (u64, usize)>,
}

impl Reader {
    async fn run(&mut self, consumer: &StreamConsumer<SinkContext>) -> Result<(), Error> {
        let es = &self.shared.config.elasticsearch;
        let linger = es.linger.get();
        let max_in_flight = es.max_in_flight_requests.max(1);
        let mut commit_tick = tokio::time::interval(Duration::from_secs(1));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shared.shutdown.clone();
        loop {
            if self.batch.is_full(&self.shared.config) && self.in_flight.len() < max_in_flight {
                self.dispatch();
            }
            let full = self.batch.is_full(&self.shared.config);
            let deadline = self
                .batch
                .opened
                .map(|opened| tokio::time::Instant::from_std(opened + linger));
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
                    let received = match message {
                        Ok(message) => Received {
                            partition: message.partition(),
                            offset: message.offset(),
                            key: message.key().map(Bytes::copy_from_slice),
                            payload: message.payload().map(Bytes::copy_from_slice),
                        },
                        Err(error) => {
                            tracing::warn!(sink = %self.shared.config.name, %error, "kafka consumer error");
                            continue;
                        }
                    };
                    self.handle(received).await?;
                }
            }
        }
        // Graceful stop: send what is batched and wait (bounded) for the requests in flight.
        if self.batch.len() > 0 {
            self.dispatch();
        }
        let grace = tokio::time::sleep(Duration::from_secs(30));
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
            Next::Done => {}
            Next::Batch(item) => {
                if self.conflicts(&item) {
                    // Versions cannot order this write after the earlier one: wait for it.
                    if self.batch.len() > 0 {
                        self.dispatch();
                    }
                    self.drain().await?;
                }
                self.batch.push(item);
            }
            Next::DeadLetter(slot, original, letter) => {
                send_dead_letter(&self.shared, &original, &letter).await?;
                self.finish(slot, Outcome::DeadLettered, 0);
            }
            Next::Truncate(slot, version) => {
                if self.batch.len() > 0 {
                    self.dispatch();
                }
                self.drain().await?;
                if self.shared.config.ignore_truncate {
                    tracing::info!(sink = %self.shared.config.name, "table truncated; documents kept (ignore_truncate)");
                } else {
                    truncate(&self.shared, version).await?;
                }
                self.finish(slot, Outcome::Skipped, 0);
            }
        }
        Ok(())
    }

    fn finish(&self, slot: Slot, outcome: Outcome, commit_micros: i64) {
        if let Ok(mut tracker) = self.tracker.lock() {
            tracker.done(slot);
        }
        self.shared.stats.record(outcome, 1);
        if commit_micros > 0 && matches!(outcome, Outcome::Indexed | Outcome::Deleted) {
            #[allow(clippy::cast_precision_loss)] // seconds for a histogram
            let seconds = (now_micros() - commit_micros).max(0) as f64 / 1e6;
            self.shared.stats.indexed_after_commit(seconds);
        }
    }

    /// Decodes, filters, transforms and routes one message.
    fn prepare(&self, received: Received, slot: Slot) -> Next {
        let shared = &self.shared;
        let original = Original {
            topic: shared.topic.clone(),
            partition: received.partition,
            offset: received.offset,
            key: received.key,
            payload: received.payload,
        };
        let Some(payload) = &original.payload else {
            // A tombstone: the DELETE before it did the work.
            return self.settled(slot, Outcome::Skipped);
        };
        let letter = |stage, error_type: &str, reason: String| DeadLetter {
            stage,
            error_type: error_type.to_owned(),
            reason,
            status: None,
            attempts: 1,
        };
        let event = match ChangeEvent::decode(payload.as_ref()) {
            Ok(event) if event.schema_version <= sluice_proto::SCHEMA_VERSION => event,
            Ok(event) => {
                let reason = format!(
                    "schema_version {} is newer than this consumer understands ({}); upgrade sluice-consumer",
                    event.schema_version,
                    sluice_proto::SCHEMA_VERSION
                );
                return Next::DeadLetter(
                    slot,
                    original,
                    letter("decode", "unsupported_schema_version", reason),
                );
            }
            Err(error) => {
                let reason = format!("not a sluice.v1.ChangeEvent: {error}");
                return Next::DeadLetter(slot, original, letter("decode", "decode_error", reason));
            }
        };
        let position = event.position.unwrap_or_default();
        let version = position.commit_lsn;
        if event.op() == Op::Truncate {
            return Next::Truncate(slot, version);
        }
        let Some(action) = event::action(event.op()) else {
            let reason = format!("operation {} has no meaning for a sink", event.op);
            return Next::DeadLetter(
                slot,
                original,
                letter("decode", "unknown_operation", reason),
            );
        };
        if !shared.config.actions.contains(&action) {
            return self.settled(slot, Outcome::Filtered);
        }
        let id = match event::document_id(&event, shared.config.id_columns.as_deref()) {
            Ok(id) => id,
            Err(reason) => {
                return Next::DeadLetter(slot, original, letter("route", "bad_id", reason));
            }
        };
        // Without scripts and with a fixed index the document is the record: no script input.
        let plain = !shared.scripts.has_filter() && !shared.scripts.has_transform();
        if let (true, Some(index)) = (plain, shared.template.fixed()) {
            let (write, outcome) = if action == Action::Delete {
                (Write::Delete, Outcome::Deleted)
            } else {
                if event.unchanged_toast_columns.is_empty() {
                    let bytes = event::record_json(&event.record);
                    (Write::Full(bytes.into()), Outcome::Indexed)
                } else {
                    (
                        Write::Partial(event::columns(&event.record)),
                        Outcome::Indexed,
                    )
                }
            };
            return Next::Batch(Item {
                index: index.to_owned(),
                id,
                version,
                write,
                outcome,
                slot,
                replaced: Vec::new(),
                original,
                commit_micros: position.commit_time_micros,
            });
        }
        let input = event::script_input(
            &event,
            action,
            KafkaPosition {
                topic: &shared.topic,
                partition: received.partition,
                offset: received.offset,
            },
        );
        let index = match shared.template.render(&input) {
            Ok(index) => index,
            Err(reason) => {
                return Next::DeadLetter(slot, original, letter("route", "bad_index", reason));
            }
        };
        let (write, outcome) = if action == Action::Delete {
            (Write::Delete, Outcome::Deleted)
        } else {
            match shared.scripts.apply(&input) {
                Ok(Verdict::Document(document)) => {
                    if event.unchanged_toast_columns.is_empty() {
                        match serde_json::to_vec(&document) {
                            Ok(bytes) => (Write::Full(bytes.into()), Outcome::Indexed),
                            Err(error) => {
                                let reason = format!("document does not serialize: {error}");
                                return Next::DeadLetter(
                                    slot,
                                    original,
                                    letter("transform", "serialize", reason),
                                );
                            }
                        }
                    } else {
                        let document = without_toast_dependents(
                            &shared.scripts,
                            &input,
                            &event.unchanged_toast_columns,
                            document,
                        );
                        (Write::Partial(document), Outcome::Indexed)
                    }
                }
                // A row that does not pass the filter has no document: remove an earlier one.
                Ok(Verdict::Filtered) => (Write::Delete, Outcome::Filtered),
                Err(error) => {
                    let stage = match error.stage {
                        crate::script::Stage::Filter => "filter",
                        crate::script::Stage::Transform => "transform",
                    };
                    return Next::DeadLetter(
                        slot,
                        original,
                        letter(stage, "script_error", error.to_string()),
                    );
                }
            }
        };
        Next::Batch(Item {
            index,
            id,
            version,
            write,
            outcome,
            slot,
            replaced: Vec::new(),
            original,
            commit_micros: position.commit_time_micros,
        })
    }

    fn settled(&self, slot: Slot, outcome: Outcome) -> Next {
        self.finish(slot, outcome, 0);
        Next::Done
    }

    /// Whether `item` must wait for a batch in flight: same document, and either the same
    /// version (one transaction; order decides) or a partial update (it reads the document).
    fn conflicts(&self, item: &Item) -> bool {
        self.in_flight_keys
            .get(&item.key())
            .is_some_and(|&(version, _)| {
                version == item.version || matches!(item.write, Write::Partial(_))
            })
    }

    fn dispatch(&mut self) {
        let items = self.batch.take();
        if items.is_empty() {
            return;
        }
        for item in &items {
            let entry = self.in_flight_keys.entry(item.key()).or_insert((0, 0));
            entry.0 = entry.0.max(item.version);
            entry.1 += 1;
        }
        let shared = self.shared.clone();
        self.in_flight.spawn(deliver(shared, items));
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
        joined: Result<Result<Report, Error>, tokio::task::JoinError>,
    ) -> Result<(), Error> {
        let report = match joined {
            Ok(Ok(report)) => report,
            Ok(Err(Error::Interrupted)) => return Ok(()),
            Ok(Err(error)) => return Err(error),
            Err(join) => {
                return Err(Error::Setup {
                    sink: self.shared.config.name.clone(),
                    message: format!("bulk task failed: {join}"),
                });
            }
        };
        for key in report.keys {
            if let Some(entry) = self.in_flight_keys.get_mut(&key) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.in_flight_keys.remove(&key);
                }
            }
        }
        for (slot, outcome, commit_micros) in report.settled {
            self.finish(slot, outcome, commit_micros);
        }
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
                    self.shared.stats.committed(partition, offset);
                }
            }
            Err(error) => {
                tracing::warn!(sink = %self.shared.config.name, %error, "offset commit failed; retried with the next one");
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The fields of a partial document that do not depend on the unchanged TOAST columns.
///
/// The transform saw the record without those columns, so a field it computed from them holds
/// a stand-in (null, a default), which must not overwrite the indexed value. Running the
/// transform again with a marker in each missing column shows which fields depend on them:
/// those that come out different are dropped, and the stored document keeps its values.
fn without_toast_dependents(
    scripts: &Scripts,
    input: &Value,
    unchanged: &[String],
    mut document: Map<String, Value>,
) -> Map<String, Value> {
    if !scripts.has_transform() {
        return document;
    }
    let mut marked = input.clone();
    if let Some(record) = marked.get_mut("record").and_then(Value::as_object_mut) {
        for column in unchanged {
            record.insert(
                column.clone(),
                Value::String(format!("\u{0}sluice-unchanged-toast:{column}\u{0}")),
            );
        }
    }
    match scripts.apply(&marked) {
        Ok(Verdict::Document(with_marker)) => {
            document.retain(|field, value| with_marker.get(field) == Some(value));
        }
        // The transform fails on the marker (it parses the column, say): keep only the fields
        // named after a column the event carries.
        _ => document.retain(|field, _| input["record"].get(field).is_some()),
    }
    document
}

/// Retries a dead letter until Kafka takes it (or shutdown).
async fn send_dead_letter(
    shared: &Shared,
    original: &Original,
    letter: &DeadLetter,
) -> Result<(), Error> {
    let mut backoff = Backoff::new(&shared.config);
    loop {
        match shared
            .dead_letters
            .send(original, letter, &shared.shutdown)
            .await
        {
            Ok(()) => {
                tracing::warn!(
                    sink = %shared.config.name,
                    topic = %original.topic, partition = original.partition, offset = original.offset,
                    stage = letter.stage, error_type = %letter.error_type, reason = %letter.reason,
                    dlq = shared.dead_letters.topic(),
                    "event dead-lettered"
                );
                return Ok(());
            }
            Err(Error::Interrupted) => return Err(Error::Interrupted),
            Err(error) => {
                tracing::warn!(sink = %shared.config.name, %error, "cannot write the dead letter; retrying");
                backoff.wait(&shared.shutdown).await?;
            }
        }
    }
}

/// Exponential backoff with full jitter between the sink's initial and maximum delay.
struct Backoff {
    next: Duration,
    max: Duration,
    /// When the cluster first refused the credentials in this retry loop.
    refused_since: Option<Instant>,
}

impl Backoff {
    fn new(config: &SinkConfig) -> Self {
        Self {
            next: config.elasticsearch.retry_initial_backoff.get(),
            max: config.elasticsearch.retry_max_backoff.get(),
            refused_since: None,
        }
    }

    /// After a 401/403. The credentials worked at start: a cluster that is still starting (its
    /// security index not ready) refuses them for a while. Waits to retry during
    /// [`AUTH_GRACE`], then stops the sink with the cluster's answer.
    async fn refused(&mut self, shared: &Shared, error: ElasticError) -> Result<(), Error> {
        let since = *self.refused_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= AUTH_GRACE {
            return Err(Error::Elastic {
                sink: shared.config.name.clone(),
                source: error,
            });
        }
        shared.stats.retried(1);
        tracing::warn!(sink = %shared.config.name, %error, grace = ?AUTH_GRACE, "credentials refused; retrying in case the cluster is still starting");
        self.wait(&shared.shutdown).await
    }

    async fn wait(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        let jittered = self.next.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            () = shutdown.cancelled() => Err(Error::Interrupted),
            () = tokio::time::sleep(jittered) => Ok(()),
        }
    }
}

/// Writes one batch: completes partial updates, sends bulk requests until every item is
/// settled, dead-letters rejected items. Never returns with an item unsettled except on
/// shutdown (nothing is committed then) or refused credentials (the sink stops).
async fn deliver(shared: Arc<Shared>, items: Vec<Item>) -> Result<Report, Error> {
    let mut report = Report {
        keys: items.iter().map(Item::key).collect(),
        ..Report::default()
    };
    let mut letters: Vec<(Item, DeadLetter)> = Vec::new();
    let items = complete_partials(&shared, items, &mut report, &mut letters).await?;

    let mut chunks = vec![items];
    while let Some(mut pending) = chunks.pop() {
        let mut backoff = Backoff::new(&shared.config);
        let mut attempt: u32 = 1;
        while !pending.is_empty() {
            let ops: Vec<BulkOp> = pending.iter().map(Item::op).collect();
            let started = Instant::now();
            match shared.client.bulk(&ops).await {
                Ok(results) => {
                    shared.stats.bulk_succeeded(started.elapsed().as_secs_f64());
                    let mut retry = Vec::new();
                    let mut reason = String::new();
                    for (item, result) in pending.drain(..).zip(results) {
                        match result {
                            ItemResult::Done => settle(&mut report, &item, item.outcome),
                            ItemResult::NotFound => {
                                let outcome = if item.outcome == Outcome::Indexed {
                                    Outcome::Deleted
                                } else {
                                    item.outcome
                                };
                                settle(&mut report, &item, outcome);
                            }
                            ItemResult::Stale => settle(&mut report, &item, Outcome::Stale),
                            ItemResult::Retry {
                                status,
                                reason: why,
                            } => {
                                reason = format!("{status}: {why}");
                                retry.push(item);
                            }
                            ItemResult::Rejected {
                                status,
                                error_type,
                                reason,
                            } => {
                                let letter = DeadLetter {
                                    stage: "index",
                                    error_type,
                                    reason,
                                    status: Some(status),
                                    attempts: attempt,
                                };
                                letters.push((item, letter));
                            }
                        }
                    }
                    if !retry.is_empty() {
                        shared.stats.retried(retry.len() as u64);
                        tracing::warn!(sink = %shared.config.name, items = retry.len(), %reason, attempt, "bulk items to retry");
                        pending = retry;
                        attempt += 1;
                        backoff.wait(&shared.shutdown).await?;
                    }
                }
                Err(error @ ElasticError::Auth { .. }) => {
                    attempt += 1;
                    backoff.refused(&shared, error).await?;
                }
                Err(error) if error.is_retryable() => {
                    shared.stats.retried(1);
                    tracing::warn!(sink = %shared.config.name, %error, items = pending.len(), attempt, "bulk request failed; retrying");
                    attempt += 1;
                    backoff.wait(&shared.shutdown).await?;
                }
                Err(error) => {
                    if pending.len() > 1 {
                        // Maybe one item makes the whole request unacceptable: halve and retry.
                        tracing::warn!(sink = %shared.config.name, %error, items = pending.len(), "bulk request refused; splitting it");
                        let second = pending.split_off(pending.len() / 2);
                        chunks.push(second);
                        chunks.push(std::mem::take(&mut pending));
                    } else if let Some(item) = pending.pop() {
                        let (status, reason) = match &error {
                            ElasticError::Fatal { status, reason } => {
                                (Some(*status), reason.clone())
                            }
                            other => (None, other.to_string()),
                        };
                        let letter = DeadLetter {
                            stage: "index",
                            error_type: "request_rejected".to_owned(),
                            reason,
                            status,
                            attempts: attempt,
                        };
                        letters.push((item, letter));
                    }
                }
            }
        }
    }

    for (item, letter) in letters {
        send_dead_letter(&shared, &item.original, &letter).await?;
        settle(&mut report, &item, Outcome::DeadLettered);
    }
    Ok(report)
}

/// Records an item's outcome, and its replaced earlier events as stale.
fn settle(report: &mut Report, item: &Item, outcome: Outcome) {
    report
        .settled
        .push((item.slot, outcome, item.commit_micros));
    for &slot in &item.replaced {
        report.settled.push((slot, Outcome::Stale, 0));
    }
}

/// Turns partial updates (unchanged TOAST columns left out) into full documents: reads the
/// indexed document, treats the event as stale when the document is newer, and otherwise
/// writes the document with the new fields over the old ones, at the event's version.
async fn complete_partials(
    shared: &Shared,
    items: Vec<Item>,
    report: &mut Report,
    letters: &mut Vec<(Item, DeadLetter)>,
) -> Result<Vec<Item>, Error> {
    if !items.iter().any(|i| matches!(i.write, Write::Partial(_))) {
        return Ok(items);
    }
    let (partial, mut ready): (Vec<Item>, Vec<Item>) = items
        .into_iter()
        .partition(|i| matches!(i.write, Write::Partial(_)));
    let mut by_index: HashMap<String, Vec<Item>> = HashMap::new();
    for item in partial {
        by_index.entry(item.index.clone()).or_default().push(item);
    }
    for (index, items) in by_index {
        let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
        let mut backoff = Backoff::new(&shared.config);
        let current = loop {
            match shared.client.mget(&index, &ids).await {
                Ok(current) => break current,
                Err(error @ ElasticError::Auth { .. }) => backoff.refused(shared, error).await?,
                Err(error) if error.is_retryable() => {
                    shared.stats.retried(1);
                    tracing::warn!(sink = %shared.config.name, %error, "reading documents for a partial update failed; retrying");
                    backoff.wait(&shared.shutdown).await?;
                }
                // A missing index reads as missing documents.
                Err(_) => break vec![None; ids.len()],
            }
        };
        for (mut item, found) in items.into_iter().zip(current) {
            let Write::Partial(partial) = &mut item.write else {
                continue;
            };
            match found {
                None => {
                    let letter = DeadLetter {
                        stage: "index",
                        error_type: "partial_update_of_missing_document".to_owned(),
                        reason: "the event leaves unchanged TOAST columns out and the document is \
                                 not in the index, so its full content is unknown; set REPLICA \
                                 IDENTITY FULL on the table, or rebuild the index with a backfill"
                            .to_owned(),
                        status: Some(404),
                        attempts: 1,
                    };
                    letters.push((item, letter));
                }
                Some((version, _)) if version > item.version => {
                    settle(report, &item, Outcome::Stale);
                }
                Some((_, mut source)) => {
                    source.append(partial);
                    match serde_json::to_vec(&source) {
                        Ok(bytes) => {
                            item.write = Write::Full(bytes.into());
                            ready.push(item);
                        }
                        Err(error) => {
                            let letter = DeadLetter {
                                stage: "index",
                                error_type: "serialize".to_owned(),
                                reason: error.to_string(),
                                status: None,
                                attempts: 1,
                            };
                            letters.push((item, letter));
                        }
                    }
                }
            }
        }
    }
    Ok(ready)
}

/// Applies a TRUNCATE marker: every document of the sink's indices whose version is not newer
/// than the truncate is deleted, with a versioned delete (a newer document survives the 409).
/// Runs at the marker of every partition, so no older row indexed later survives a replay.
async fn truncate(shared: &Shared, version: u64) -> Result<(), Error> {
    let pattern = shared.template.pattern();
    let mut backoff = Backoff::new(&shared.config);
    let documents = loop {
        let scanned = async {
            shared.client.refresh(&pattern).await?;
            shared.client.scan_versions(&pattern).await
        }
        .await;
        match scanned {
            Ok(documents) => break documents,
            Err(error @ ElasticError::Auth { .. }) => backoff.refused(shared, error).await?,
            Err(error) => {
                tracing::warn!(sink = %shared.config.name, %error, "reading documents to truncate failed; retrying");
                backoff.wait(&shared.shutdown).await?;
            }
        }
    };
    let deletes: Vec<BulkOp> = documents
        .into_iter()
        .filter(|(_, _, current)| *current <= version)
        .map(|(index, id, _)| BulkOp::Delete { index, id, version })
        .collect();
    let total = deletes.len();
    for chunk in deletes.chunks(shared.config.elasticsearch.batch_size.max(1)) {
        let mut backoff = Backoff::new(&shared.config);
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            match shared.client.bulk(&pending).await {
                Ok(results) => {
                    let mut retry = Vec::new();
                    for (op, result) in pending.drain(..).zip(results) {
                        match result {
                            ItemResult::Retry { reason, .. } => {
                                tracing::debug!(%reason, "truncate delete to retry");
                                retry.push(op);
                            }
                            ItemResult::Rejected { reason, .. } => {
                                tracing::warn!(sink = %shared.config.name, %reason, "truncate delete refused");
                            }
                            ItemResult::Done | ItemResult::NotFound | ItemResult::Stale => {}
                        }
                    }
                    if !retry.is_empty() {
                        backoff.wait(&shared.shutdown).await?;
                    }
                    pending = retry;
                }
                Err(error @ ElasticError::Auth { .. }) => backoff.refused(shared, error).await?,
                Err(error) => {
                    tracing::warn!(sink = %shared.config.name, %error, "truncate delete request failed; retrying");
                    backoff.wait(&shared.shutdown).await?;
                }
            }
        }
    }
    tracing::info!(sink = %shared.config.name, pattern, version, documents = total, "table truncated: documents deleted");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item(id: &str, offset: i64, write: Write) -> Item {
        Item {
            index: "products".to_owned(),
            id: id.to_owned(),
            version: 100 + u64::try_from(offset).unwrap(),
            write,
            outcome: Outcome::Indexed,
            slot: Slot {
                partition: 0,
                generation: 1,
                offset,
            },
            replaced: Vec::new(),
            original: Original {
                topic: "t".into(),
                partition: 0,
                offset,
                key: None,
                payload: None,
            },
            commit_micros: 0,
        }
    }

    fn full(json: serde_json::Value) -> Write {
        Write::Full(serde_json::to_vec(&json).unwrap().into())
    }

    #[test]
    fn a_later_event_of_a_document_replaces_the_earlier_one_in_the_batch() {
        let mut batch = Batch::default();
        batch.push(item("1", 10, full(serde_json::json!({"a": 1}))));
        batch.push(item("2", 11, full(serde_json::json!({"a": 2}))));
        batch.push(item("1", 12, Write::Delete));
        assert_eq!(batch.len(), 2);
        let items = batch.take();
        assert!(matches!(items[0].write, Write::Delete));
        assert_eq!(items[0].version, 112);
        assert_eq!(items[0].replaced, [items[0].slot_at(10)]);
        assert!(batch.by_key.is_empty() && batch.opened.is_none());
    }

    #[test]
    fn a_partial_update_after_a_full_document_in_the_batch_becomes_full() {
        let mut batch = Batch::default();
        batch.push(item(
            "1",
            10,
            full(serde_json::json!({"title": "a", "body": "long"})),
        ));
        let mut partial = Map::new();
        partial.insert("title".to_owned(), Value::from("b"));
        batch.push(item("1", 11, Write::Partial(partial)));
        let items = batch.take();
        let Write::Full(bytes) = &items[0].write else {
            panic!("still partial: {:?}", items[0].write);
        };
        let merged: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(merged, serde_json::json!({"title": "b", "body": "long"}));
        assert_eq!(items[0].version, 111);
    }

    impl Item {
        fn slot_at(&self, offset: i64) -> Slot {
            Slot {
                offset,
                ..self.slot
            }
        }
    }
}
