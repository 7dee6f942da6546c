//! Helpers for tests of the consumer: sink config, running the consumer, reading what a user
//! would look at (documents in the index, committed offsets, dead letters).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers as _;
use serde_json::Value;

use crate::TestContext;

/// Which cluster a sink writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Elasticsearch with the test API key: 9.2, or the instance `SLUICE_TEST_ELASTICSEARCH_INSTANCE`
    /// names (`elasticsearch8`: 8.19 over HTTPS).
    Elasticsearch,
    /// OpenSearch: 2.19 without auth, or the instance `SLUICE_TEST_OPENSEARCH_INSTANCE` names
    /// (`opensearch3`).
    OpenSearch,
}

/// A document as the index holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub version: u64,
    pub source: Value,
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
    /// A sink named `{group}.{name}` (so cleanup removes its group and DLQ topic) writing
    /// `table` into `index` (prefixed) on `cluster`; `fields` is YAML added under the sink
    /// (indented by 4), `es_fields` under its `elasticsearch:` (indented by 6).
    pub fn sink_yaml(
        &self,
        name: &str,
        table: &str,
        cluster: Cluster,
        index: &str,
        fields: &str,
        es_fields: &str,
    ) -> String {
        let endpoints = &self.endpoints;
        let (endpoint, auth, ca) = match cluster {
            Cluster::Elasticsearch => (
                endpoints.elasticsearch_url.clone().unwrap_or_default(),
                format!(
                    "      auth: {{ type: api_key, value: \"{}\" }}\n",
                    endpoints.elasticsearch_api_key.clone().unwrap_or_default()
                ),
                endpoints.elasticsearch_ca.as_deref(),
            ),
            Cluster::OpenSearch => (
                endpoints.opensearch_url.clone().unwrap_or_default(),
                endpoints
                    .opensearch_user
                    .as_ref()
                    .map(|(user, password)| {
                        format!(
                            "      auth: {{ type: basic, username: \"{user}\", password: \"{password}\" }}\n"
                        )
                    })
                    .unwrap_or_default(),
                endpoints.opensearch_ca.as_deref(),
            ),
        };
        let auth = match ca {
            Some(ca) => format!("{auth}      ca_file: {ca}\n"),
            None => auth,
        };
        format!(
            "  - name: {group}.{name}\n    table: {table}\n{fields}    elasticsearch:\n      endpoint: {endpoint}\n      index: {index}\n{auth}      linger: 50ms\n      retry_initial_backoff: 100ms\n      retry_max_backoff: 2s\n{es_fields}",
            group = self.group,
            index = self.index(index),
        )
    }

    /// The sink name `sink_yaml` gives `name`.
    pub fn sink_name(&self, name: &str) -> String {
        format!("{}.{name}", self.group)
    }

    /// An HTTP client and base URL for `cluster`.
    pub fn cluster(&self, cluster: Cluster) -> (reqwest::Client, String) {
        match cluster {
            Cluster::Elasticsearch => self.elasticsearch(),
            Cluster::OpenSearch => self.opensearch(),
        }
    }

    /// Every document of `index` (prefixed; an alias or pattern works too) by `_id`, after a
    /// refresh. An index that does not exist reads as empty.
    pub async fn documents(
        &self,
        cluster: Cluster,
        index: &str,
    ) -> anyhow::Result<BTreeMap<String, Doc>> {
        let (client, base) = self.cluster(cluster);
        let index = self.index(index);
        let refresh = client
            .post(format!("{base}/{index}/_refresh?ignore_unavailable=true"))
            .send()
            .await?;
        if refresh.status() == 404 {
            return Ok(BTreeMap::new());
        }
        // A scroll reads one point-in-time view: paging with `search_after` on `_doc` can skip
        // or repeat documents when a merge lands between two pages.
        let mut docs = BTreeMap::new();
        let mut response = client
            .post(format!(
                "{base}/{index}/_search?scroll=1m&ignore_unavailable=true"
            ))
            .json(&serde_json::json!({
                "size": 5000,
                "version": true,
                "sort": ["_doc"],
                "query": {"match_all": {}},
            }))
            .send()
            .await?;
        loop {
            let status = response.status();
            let answer: Value = response.json().await?;
            if status == 404 {
                return Ok(docs);
            }
            if !status.is_success() {
                bail!("search {index}: {status} {answer}");
            }
            let scroll_id = answer["_scroll_id"].as_str().map(str::to_owned);
            let hits = answer["hits"]["hits"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if hits.is_empty() {
                if let Some(scroll_id) = scroll_id {
                    let _ = client
                        .delete(format!("{base}/_search/scroll"))
                        .json(&serde_json::json!({"scroll_id": scroll_id}))
                        .send()
                        .await;
                }
                return Ok(docs);
            }
            for hit in &hits {
                let id = hit["_id"].as_str().context("hit without _id")?.to_owned();
                docs.insert(
                    id,
                    Doc {
                        version: hit["_version"].as_u64().context("hit without _version")?,
                        source: hit["_source"].clone(),
                    },
                );
            }
            let scroll_id = scroll_id.context("search answer without _scroll_id")?;
            response = client
                .post(format!("{base}/_search/scroll"))
                .json(&serde_json::json!({"scroll": "1m", "scroll_id": scroll_id}))
                .send()
                .await?;
        }
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

    /// Every topic of this test with its end offsets, and what each of the test's sinks' groups
    /// committed on it: what a failing wait prints, to tell a producer that published nothing
    /// from a consumer that read nothing.
    pub async fn kafka_report(&self) -> String {
        let consumer: BaseConsumer = match self.kafka_config().create() {
            Ok(consumer) => consumer,
            Err(error) => return format!("kafka report: {error}"),
        };
        let prefixes = (format!("{}.", self.topic_prefix), self.group.clone());
        let listed =
            tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<String>, Vec<String>)> {
                let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
                let topics = metadata
                    .topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .filter(|n| n.starts_with(&prefixes.0) || n.starts_with(&prefixes.1))
                    .collect();
                let groups = consumer
                    .fetch_group_list(None, Duration::from_secs(10))?
                    .groups()
                    .iter()
                    .map(|g| g.name().to_owned())
                    .filter(|n| n.starts_with(&prefixes.1))
                    .collect();
                Ok((topics, groups))
            })
            .await;
        let (topics, groups) = match listed {
            Ok(Ok(listed)) => listed,
            Ok(Err(error)) => return format!("kafka report: {error}"),
            Err(error) => return format!("kafka report: {error}"),
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

    /// Starts `sluice-consumer run` in this process (as a task); cancel the token to stop it.
    pub fn spawn_consumer(
        &self,
        config: sluice_common::config::Config,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_consumer::Error>>,
    ) {
        let token = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(sluice_consumer::run(config, None, token.clone()));
        (token, handle)
    }
}

/// A producer and a consumer running in this process.
#[derive(Debug)]
pub struct Pipeline {
    producer: (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_producer::Error>>,
    ),
    consumer: (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_consumer::Error>>,
    ),
}

impl Pipeline {
    /// Whether the consumer is still running (it stops only on a fatal error).
    pub fn consumer_running(&self) -> bool {
        !self.consumer.1.is_finished()
    }

    /// Stops both gracefully; fails when either ended with an error.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.consumer.0.cancel();
        self.consumer.1.await??;
        self.producer.0.cancel();
        self.producer.1.await??;
        Ok(())
    }
}

impl TestContext {
    /// Starts the producer and the consumer with `config` and waits until the producer streams.
    pub async fn start_pipeline(
        &self,
        config: sluice_common::config::Config,
    ) -> anyhow::Result<Pipeline> {
        let producer = self.spawn_producer(config.clone());
        let consumer = self.spawn_consumer(config);
        self.wait_streaming().await?;
        Ok(Pipeline { producer, consumer })
    }

    /// Waits until a producer streams from the test's slot: changes committed from now on reach
    /// the topic.
    ///
    /// An active slot alone does not prove it: the slot is active while it is being created
    /// (before its consistent point) and during a first session that fails and starts again.
    /// So a sentinel message is committed once the slot is active, and the wait ends when the
    /// slot's confirmed LSN passes it.
    pub async fn wait_streaming(&self) -> anyhow::Result<()> {
        let wait = Duration::from_secs(60);
        crate::eventually(wait, "producer streaming", || async {
            Ok(self.slot_active().await?.then_some(()))
        })
        .await?;
        let db = self.postgres().await?;
        let sentinel: i64 = db
            .query_one(
                "SELECT (pg_logical_emit_message(true, 'sluice-test', 'streaming') - '0/0'::pg_lsn)::bigint",
                &[],
            )
            .await?
            .get(0);
        crate::eventually(wait, "the producer confirmed a sentinel", || async {
            Ok((self.confirmed_lsn().await? >= sentinel as u64).then_some(()))
        })
        .await
    }
}
