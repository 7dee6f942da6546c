//! Reading what the producer wrote and what consumers committed: messages, end offsets,
//! committed offsets, dead letters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rdkafka::Message as _;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers as _;

use sluice_proto::v1::value::Kind;

use crate::TestContext;

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    /// `None` for a tombstone.
    pub event: Option<sluice_proto::v1::ChangeEvent>,
}

impl Record {
    /// The key as text (keys are JSON).
    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// The value of column `name` of the event's row: `None` for a tombstone, a column the row
    /// does not carry, or NULL.
    pub fn column(&self, name: &str) -> Option<&Kind> {
        self.event
            .as_ref()?
            .record
            .iter()
            .find(|c| c.name == name)?
            .value
            .as_ref()?
            .kind
            .as_ref()
    }

    /// The row's `id` column, when it is an integer.
    pub fn id(&self) -> Option<i64> {
        match self.column("id") {
            Some(Kind::Int(id)) => Some(*id),
            _ => None,
        }
    }
}

/// A message of a topic with its headers (for dead letters).
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl TestContext {
    /// Every message of `topic` from the beginning to its current end.
    pub async fn read_topic(&self, topic: &str) -> anyhow::Result<Vec<Record>> {
        use sluice_proto::Message as _;
        self.read_raw(topic)
            .await?
            .into_iter()
            .map(|raw| {
                let event = match &raw.payload {
                    Some(bytes) => Some(sluice_proto::v1::ChangeEvent::decode(&bytes[..])?),
                    None => None,
                };
                Ok(Record {
                    partition: raw.partition,
                    offset: raw.offset,
                    key: raw.key.unwrap_or_default(),
                    event,
                })
            })
            .collect()
    }

    /// Offsets committed by consumer group `group` on `topic`, by partition (partitions
    /// without a commit are left out).
    pub async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = self
            .kafka_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeMap<i32, i64>> {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let mut list = rdkafka::TopicPartitionList::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    list.add_partition(&topic, p.id());
                }
            }
            let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
            Ok(committed
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                    _ => None,
                })
                .collect())
        })
        .await?
    }

    /// The end offset (high watermark) of every partition of `topic`.
    pub async fn end_offsets(&self, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = self.kafka_config().create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeMap<i32, i64>> {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let mut ends = BTreeMap::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (_, high) =
                        consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10))?;
                    ends.insert(p.id(), high);
                }
            }
            Ok(ends)
        })
        .await?
    }

    /// The number of messages on `topic`: the sum over its partitions of high minus low
    /// watermark (0 while the topic does not exist).
    pub async fn topic_size(&self, topic: &str) -> anyhow::Result<i64> {
        let consumer: BaseConsumer = self.kafka_config().create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<i64> {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let mut total = 0;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (low, high) =
                        consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10))?;
                    total += high - low;
                }
            }
            Ok(total)
        })
        .await?
    }

    /// The topics of this test (`{topic_prefix}.*`, and `{group}.*`: the sinks' dead-letter
    /// topics) and its consumer groups (`{group}*`).
    ///
    /// An admin client rather than a consumer: a consumer made only to read metadata can hang
    /// in `rd_kafka_destroy`. The blocking calls run on a thread of their own, since cleanup
    /// also runs from `Drop` on a small runtime.
    pub(crate) async fn topics_and_groups(
        &self,
        admin: Arc<AdminClient<DefaultClientContext>>,
    ) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let topic_prefix = format!("{}.", self.topic_prefix);
        let group_prefix = self.group.clone();
        tokio::task::spawn_blocking(move || {
            let client = admin.inner();
            let metadata = client.fetch_metadata(None, Duration::from_secs(10))?;
            let topics = metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|name| name.starts_with(&topic_prefix) || name.starts_with(&group_prefix))
                .collect();
            let groups = client
                .fetch_group_list(None, Duration::from_secs(10))?
                .groups()
                .iter()
                .map(|g| g.name().to_owned())
                .filter(|name| name.starts_with(&group_prefix))
                .collect();
            Ok((topics, groups))
        })
        .await?
    }

    /// Every topic of this test with its end offsets, and what each of the test's sinks' groups
    /// committed on it: what a failing wait prints, to tell a producer that published nothing
    /// from a consumer that read nothing.
    pub async fn kafka_report(&self) -> String {
        let listed = match self.kafka_admin() {
            Ok(admin) => self.topics_and_groups(Arc::new(admin)).await,
            Err(error) => Err(error),
        };
        let (topics, groups) = match listed {
            Ok(listed) => listed,
            Err(error) => return format!("kafka report: {error:#}"),
        };
        let mut lines = Vec::new();
        for topic in &topics {
            let ends = self.end_offsets(topic).await.unwrap_or_default();
            lines.push(format!("topic {topic}: end offsets {ends:?}"));
            for group in &groups {
                if let Ok(committed) = self.committed_offsets(group, topic).await
                    && !committed.is_empty()
                {
                    lines.push(format!("  group {group} committed {committed:?}"));
                }
            }
        }
        lines.push(format!("groups: {groups:?}"));
        lines.join("\n")
    }

    /// Waits until `topic` has messages and `group` has committed every partition up to its end.
    pub async fn wait_committed_to_end(
        &self,
        group: &str,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<BTreeMap<i32, i64>> {
        crate::eventually(
            timeout,
            &format!("{group} committed {topic} to its end"),
            || async {
                let ends = self.end_offsets(topic).await?;
                // An empty (or not yet created) topic would pass vacuously.
                if ends.values().all(|end| *end == 0) {
                    bail!("{topic} has no messages yet");
                }
                let committed = self.committed_offsets(group, topic).await?;
                let behind: Vec<String> = ends
                    .iter()
                    .filter(|(p, end)| **end > 0 && committed.get(p).copied().unwrap_or(0) < **end)
                    .map(|(p, end)| {
                        format!("p{p} {}/{end}", committed.get(p).copied().unwrap_or(0))
                    })
                    .collect();
                if behind.is_empty() {
                    Ok(Some(committed))
                } else {
                    bail!("behind: {}", behind.join(", "))
                }
            },
        )
        .await
    }

    /// Every message of `topic` with its headers (dead-letter topics).
    pub async fn read_raw(&self, topic: &str) -> anyhow::Result<Vec<RawRecord>> {
        let consumer: BaseConsumer = self
            .kafka_config()
            .set("group.id", format!("{}.raw", self.group))
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<RawRecord>> {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            let mut ends = BTreeMap::new();
            let mut assignment = rdkafka::TopicPartitionList::new();
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (_, high) =
                        consumer.fetch_watermarks(&topic, p.id(), Duration::from_secs(10))?;
                    if high > 0 {
                        ends.insert(p.id(), high);
                        assignment.add_partition_offset(
                            &topic,
                            p.id(),
                            rdkafka::Offset::Beginning,
                        )?;
                    }
                }
            }
            let mut records = Vec::new();
            if ends.is_empty() {
                return Ok(records);
            }
            consumer.assign(&assignment)?;
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while ends
                .iter()
                .any(|(p, end)| next.get(p).copied().unwrap_or(0) < *end)
            {
                if std::time::Instant::now() > deadline {
                    bail!(
                        "reading {topic}: only {} messages before the deadline",
                        records.len()
                    );
                }
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let message = message?;
                next.insert(message.partition(), message.offset() + 1);
                let mut headers = BTreeMap::new();
                if let Some(list) = message.headers() {
                    for header in list.iter() {
                        headers.insert(
                            header.key.to_owned(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                records.push(RawRecord {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
            Ok(records)
        })
        .await?
    }

    /// Writes raw bytes to `topic` (to put a message there that no producer would write).
    pub async fn produce_raw(&self, topic: &str, key: &[u8], payload: &[u8]) -> anyhow::Result<()> {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = self.kafka_config().create()?;
        producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(error, _)| anyhow::anyhow!("producing to {topic}: {error}"))?;
        Ok(())
    }
}
