//! Reading the dead-letter topic: where each partition stands (what it holds, how far the
//! redrive group got), and its letters over given ranges, batch by batch. Reading commits
//! nothing; only [`Letters::commit`] (a redrive's) moves the redrive group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::config::{Config, SinkConfig};

use super::letter::{Stored, Why};
use crate::commands::lag;
use crate::error::Error;
use crate::kafka;

/// How long a read may go without a message while letters are still due before it fails.
const STALL: Duration = Duration::from_secs(30);

/// The consumer group whose committed offsets on the dead-letter topic mark what was re-driven.
pub fn redrive_group(sink: &SinkConfig) -> String {
    format!("{}.dlq-redrive", sink.name)
}

/// One partition of the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub partition: i32,
    /// The earliest offset it still holds (retention removes older letters).
    pub earliest: i64,
    /// One past its last letter.
    pub end: i64,
    /// The redrive group's committed offset: letters before it were re-driven.
    pub redriven: Option<i64>,
}

impl Span {
    /// The first letter not re-driven yet.
    pub fn pending_from(&self) -> i64 {
        self.redriven.unwrap_or(self.earliest).max(self.earliest)
    }

    pub fn pending(&self) -> i64 {
        (self.end - self.pending_from()).max(0)
    }
}

/// Letters of `(partition, from, to)` ranges, read in batches.
pub struct Letters {
    consumer: Arc<BaseConsumer>,
    pub topic: String,
    pub spans: Vec<Span>,
    /// Per partition: the next offset due and the end of its range.
    due: BTreeMap<i32, (i64, i64)>,
}

impl std::fmt::Debug for Letters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Letters")
            .field("topic", &self.topic)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl Letters {
    /// Opens the sink's dead-letter topic and reads where its partitions stand; `None` when the
    /// topic does not exist (nothing was ever dead-lettered).
    pub async fn open(config: &Config, sink: &SinkConfig) -> Result<Option<Self>, Error> {
        let consumer: BaseConsumer = kafka::client_config(
            config,
            &[
                ("group.id", redrive_group(sink)),
                ("enable.auto.commit", "false".to_owned()),
                ("enable.auto.offset.store", "false".to_owned()),
                ("enable.partition.eof", "false".to_owned()),
                ("auto.offset.reset", "earliest".to_owned()),
            ],
        )
        .create()
        .map_err(Error::kafka("creating the dead-letter reader"))?;
        let topic = sink.dlq_topic();
        let partitions = lag(config, &redrive_group(sink), &topic).await?;
        if partitions.is_empty() {
            return Ok(None);
        }
        let spans = partitions
            .into_iter()
            .map(|p| Span {
                partition: p.partition,
                earliest: p.earliest,
                end: p.end,
                redriven: p.committed,
            })
            .collect();
        Ok(Some(Self {
            consumer: Arc::new(consumer),
            topic,
            spans,
            due: BTreeMap::new(),
        }))
    }

    /// Letters not re-driven yet.
    pub fn pending(&self) -> i64 {
        self.spans.iter().map(Span::pending).sum()
    }

    /// Letters the topic holds.
    pub fn held(&self) -> i64 {
        self.spans.iter().map(|s| s.end - s.earliest).sum()
    }

    /// Starts reading `(partition, from, to)` ranges (`to` exclusive); empty ones are left out.
    pub fn seek(&mut self, ranges: &[(i32, i64, i64)]) -> Result<(), Error> {
        self.due = ranges
            .iter()
            .filter(|(_, from, to)| from < to)
            .map(|&(partition, from, to)| (partition, (from, to)))
            .collect();
        let mut assignment = TopicPartitionList::new();
        for (&partition, &(from, _)) in &self.due {
            assignment
                .add_partition_offset(&self.topic, partition, Offset::Offset(from))
                .map_err(Error::kafka("assigning the dead-letter topic"))?;
        }
        self.consumer
            .assign(&assignment)
            .map_err(Error::kafka(format!("reading {}", self.topic)))
    }

    /// Every letter not re-driven yet.
    pub fn seek_pending(&mut self) -> Result<(), Error> {
        let ranges: Vec<(i32, i64, i64)> = self
            .spans
            .iter()
            .map(|s| (s.partition, s.pending_from(), s.end))
            .collect();
        self.seek(&ranges)
    }

    /// The next letters of the ranges, at most `max`; empty when every range is read.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Stored>, Error> {
        if self.due.is_empty() {
            return Ok(Vec::new());
        }
        let consumer = self.consumer.clone();
        let mut due = std::mem::take(&mut self.due);
        let topic = self.topic.clone();
        let (batch, due) = tokio::task::spawn_blocking(move || {
            let batch = poll(&consumer, &topic, &mut due, max);
            (batch, due)
        })
        .await?;
        self.due = due;
        batch
    }

    /// Marks everything before these offsets as re-driven (the redrive group's commit).
    pub fn commit(&self, positions: &BTreeMap<i32, i64>) -> Result<(), Error> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in positions {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(Error::kafka("committing the redrive"))?;
        }
        self.consumer
            .commit(&list, CommitMode::Sync)
            .map_err(Error::kafka(format!(
                "committing the redrive's offsets on {}",
                self.topic
            )))
    }
}

/// Polls until `max` letters, or every range is read. Letters past a range's end (written
/// after it was taken) are left for later.
fn poll(
    consumer: &BaseConsumer,
    topic: &str,
    due: &mut BTreeMap<i32, (i64, i64)>,
    max: usize,
) -> Result<Vec<Stored>, Error> {
    let mut batch = Vec::new();
    let mut last = Instant::now();
    while !due.is_empty() && batch.len() < max {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if last.elapsed() > STALL {
                return Err(Error::Kafka {
                    what: format!("reading {topic}: no letter arrived for {STALL:?}"),
                    source: KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
                });
            }
            continue;
        };
        let message = message.map_err(Error::kafka(format!("reading {topic}")))?;
        last = Instant::now();
        let partition = message.partition();
        let Some(&(_, to)) = due.get(&partition) else {
            continue;
        };
        let offset = message.offset();
        if offset >= to {
            due.remove(&partition);
            continue;
        }
        if offset + 1 >= to {
            due.remove(&partition);
        } else {
            due.insert(partition, (offset + 1, to));
        }
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers.iter().map(|h| (h.key, h.value)).collect()
        });
        batch.push(Stored {
            partition,
            offset,
            time: message.timestamp().to_millis(),
            key: message.key().map(Bytes::copy_from_slice),
            payload: message.payload().map(Bytes::copy_from_slice),
            why: Why::parse(headers),
        });
    }
    if due.is_empty() {
        // Stop fetching: nothing more is wanted.
        let _ = consumer.unassign();
    }
    Ok(batch)
}
