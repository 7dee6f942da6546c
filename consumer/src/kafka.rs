//! The sink's Kafka clients: the group consumer (whose rebalance callbacks keep the offset
//! tracker in step with the assignment) and the dead-letter producer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::config::{Config, SinkConfig};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::offsets::Tracker;
use crate::stats::SinkStats;

/// Client settings shared by everything the consumer opens, then the user's `kafka` section
/// (security, `options`), which wins.
pub fn client_config(config: &Config, settings: &[(&str, String)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("client.id", "sluice-consumer");
    for (key, value) in settings {
        client.set(*key, value);
    }
    for (key, value) in config.kafka.client_properties() {
        client.set(key, value);
    }
    client
}

/// The `client.id` of a group member: `sluice-consumer:<port of its endpoints>`, so `status`
/// can reach every member at the host Kafka saw it connect from.
pub fn member_client_id(config: &Config) -> String {
    match config.telemetry.consumer_listen {
        Some(addr) => format!("{MEMBER_PREFIX}{}", addr.port()),
        None => "sluice-consumer".to_owned(),
    }
}

const MEMBER_PREFIX: &str = "sluice-consumer:";

/// Where a group member serves `/status`: the port from its client id, at the host Kafka saw it
/// connect from (`/127.0.0.1`).
pub fn member_status_addr(client_id: &str, client_host: &str) -> Option<std::net::SocketAddr> {
    let port: u16 = client_id.strip_prefix(MEMBER_PREFIX)?.parse().ok()?;
    let host = client_host.trim_start_matches('/');
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port))
}

/// The group consumer's settings: manual commits only, cooperative rebalancing, a bounded
/// prefetch queue (memory), and a session timeout short enough that a killed member's partitions
/// move on within seconds.
pub fn consumer_config(config: &Config, sink: &SinkConfig) -> ClientConfig {
    client_config(
        config,
        &[
            ("client.id", member_client_id(config)),
            ("group.id", sink.name.clone()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
            ("auto.offset.reset", "earliest".to_owned()),
            (
                "partition.assignment.strategy",
                "cooperative-sticky".to_owned(),
            ),
            ("session.timeout.ms", "10000".to_owned()),
            ("heartbeat.interval.ms", "2000".to_owned()),
            // While the cluster is down the sink stops reading; it stays in the group for this
            // long before its partitions move to another member.
            ("max.poll.interval.ms", "1800000".to_owned()),
            // Bounds the prefetched messages held in memory (the group consumer's one queue).
            ("queued.max.messages.kbytes", "4096".to_owned()),
            // When the queue is full, fetch again soon after it drains (librdkafka waits 1 s by
            // default, which starves a fast sink behind a small queue).
            ("fetch.queue.backoff.ms", "20".to_owned()),
            ("fetch.max.bytes", "16777216".to_owned()),
            ("statistics.interval.ms", "5000".to_owned()),
            // Notices the topic soon when the consumer starts before the producer created it.
            ("topic.metadata.refresh.interval.ms", "10000".to_owned()),
        ],
    )
}

/// Callbacks of the group consumer.
#[derive(Debug)]
pub struct SinkContext {
    pub topic: String,
    pub tracker: Arc<Mutex<Tracker>>,
    pub stats: Arc<SinkStats>,
}

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let lag: BTreeMap<i32, i64> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| (p.partition, p.consumer_lag))
            .collect();
        self.stats.set_lag(lag);
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Ok(mut tracker) = self.tracker.lock() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(list) => {
                for element in list.elements() {
                    tracker.assign(element.partition());
                }
                tracing::info!(sink = %self.stats.sink, partitions = ?partitions(list), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                // Commit what is final for the partitions going away; work still in flight for
                // them finishes (or not) without ever being committed by this process.
                let mut commits = TopicPartitionList::new();
                for element in list.elements() {
                    if let Some(offset) = tracker.revoke(element.partition()) {
                        let _ = commits.add_partition_offset(
                            &self.topic,
                            element.partition(),
                            Offset::Offset(offset),
                        );
                    }
                }
                drop(tracker);
                if commits.count() > 0
                    && let Err(error) = consumer.commit(&commits, CommitMode::Sync)
                {
                    tracing::warn!(sink = %self.stats.sink, %error, "commit on revocation failed; the next owner re-reads from the previous commit");
                }
                tracing::info!(sink = %self.stats.sink, partitions = ?partitions(list), "partitions revoked");
            }
            Rebalance::Error(error) => {
                tracing::warn!(sink = %self.stats.sink, %error, "rebalance error");
            }
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// Creates `topic` (delete policy, the config's partitions and replication) when missing.
/// `Error::Kafka` is worth retrying (broker unreachable, timeouts); `Error::Setup` is not.
pub async fn ensure_dlq_topic(config: &Config, sink: &SinkConfig) -> Result<(), Error> {
    let topic = sink.dlq_topic();
    let topic = topic.as_str();
    let admin: AdminClient<DefaultClientContext> =
        client_config(config, &[]).create().map_err(Error::kafka)?;
    let replication = config
        .kafka
        .replication_factor
        .map_or(TopicReplication::Fixed(-1), |rf| {
            TopicReplication::Fixed(i32::from(rf))
        });
    let new =
        NewTopic::new(topic, config.kafka.partitions, replication).set("cleanup.policy", "delete");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(Error::kafka)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((
                name,
                code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidReplicationFactor
                | RDKafkaErrorCode::InvalidPartitions),
            )) => {
                return Err(Error::Setup {
                    sink: sink.name.clone(),
                    message: format!(
                        "cannot create the dead-letter topic {name}: {code}; fix: create it \
                         yourself (cleanup.policy=delete) or allow this client to create \
                         topics, or set the sink's dlq_topic to an existing topic"
                    ),
                });
            }
            Err((name, code)) => {
                return Err(Error::Kafka(format!(
                    "cannot create the dead-letter topic {name} yet: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Why an event went to the dead-letter topic; written as message headers next to the
/// untouched original key and value.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// `decode`, `filter`, `transform`, `route` or `index`.
    pub stage: &'static str,
    /// The Elasticsearch error type (`document_parsing_exception`, …), or the stage's own kind.
    pub error_type: String,
    pub reason: String,
    /// HTTP status of the item, for `index`.
    pub status: Option<u16>,
    /// Attempts made (1 unless the item was retried before it was rejected).
    pub attempts: u32,
}

/// The original message a dead letter carries.
#[derive(Debug, Clone)]
pub struct Original {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<bytes::Bytes>,
    pub payload: Option<bytes::Bytes>,
}

/// Writes dead letters; never gives up while Kafka is away (the offset is not committed until
/// the dead letter is acknowledged), except when the sink is shutting down.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    sink: String,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    pub fn new(config: &Config, sink: &SinkConfig) -> Result<Self, Error> {
        let producer = client_config(
            config,
            &[
                ("enable.idempotence", "true".to_owned()),
                ("acks", "all".to_owned()),
                ("message.timeout.ms", "0".to_owned()),
                ("linger.ms", "5".to_owned()),
            ],
        )
        .create()
        .map_err(Error::kafka)?;
        Ok(Self {
            producer,
            topic: sink.dlq_topic(),
            sink: sink.name.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one dead letter and waits for Kafka's acknowledgement. `Err` only on shutdown or a
    /// permanent error (the offset is then not committed).
    pub async fn send(
        &self,
        original: &Original,
        letter: &DeadLetter,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let partition = original.partition.to_string();
        let offset = original.offset.to_string();
        let attempts = letter.attempts.to_string();
        let status = letter.status.map(|s| s.to_string());
        let mut headers = OwnedHeaders::new()
            .insert(header("sluice.dlq.sink", &self.sink))
            .insert(header("sluice.dlq.stage", letter.stage))
            .insert(header("sluice.dlq.error_type", &letter.error_type))
            .insert(header("sluice.dlq.reason", &letter.reason))
            .insert(header("sluice.dlq.attempts", &attempts))
            .insert(header("sluice.dlq.topic", &original.topic))
            .insert(header("sluice.dlq.partition", &partition))
            .insert(header("sluice.dlq.offset", &offset));
        if let Some(status) = &status {
            headers = headers.insert(header("sluice.dlq.status", status));
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &original.key {
            record = record.key(key.as_ref());
        }
        if let Some(payload) = &original.payload {
            record = record.payload(payload.as_ref());
        }
        tokio::select! {
            () = shutdown.cancelled() => Err(Error::Interrupted),
            result = self.producer.send(record, Duration::from_secs(0)) => match result {
                Ok(_) => Ok(()),
                Err((error, _)) => Err(Error::Kafka(format!("dead-letter topic {}: {error}", self.topic))),
            },
        }
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

impl Error {
    pub fn kafka(error: KafkaError) -> Self {
        Self::Kafka(error.to_string())
    }
}
