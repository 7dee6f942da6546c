//! Kafka publishing with delivery tracking.
//!
//! One idempotent producer (acks=all, unlimited retries, no delivery timeout) sends every
//! ChangeEvent. Each message carries its transaction's sequence number as the delivery opaque;
//! librdkafka's delivery report hands it back to [`Checkpoint`], which decides what may be
//! confirmed to Postgres. While Kafka is away messages wait inside librdkafka and the stream
//! reader stops at `producer.max_in_flight_messages`, so memory stays bounded and nothing
//! unacknowledged is ever confirmed. [`watch`] says so when that wait lasts.

mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode as Code;
use sluice_common::config::{CleanupPolicy, Config};
use sluice_common::shutdown::CancellationToken;
use sluice_common::telemetry::names;
use tokio::sync::Notify;

use crate::checkpoint::Checkpoint;
use crate::error::Error;
use watch::{Seen, Watch};

/// Timeout of admin and metadata requests.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often librdkafka reports its statistics, and so how often the [`watch`] looks.
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

struct DeliveryContext {
    checkpoint: Arc<Checkpoint>,
    watch: Mutex<Watch>,
    /// Notified when a stall wants fresh metadata; [`Publisher::watch`] asks for it.
    refresh: Notify,
}

impl ClientContext for DeliveryContext {
    fn stats(&self, statistics: Statistics) {
        let (acknowledged, waiting) = self.checkpoint.deliveries();
        let seen = match self.watch.lock() {
            Ok(mut watch) => watch.look(Instant::now(), acknowledged, waiting),
            Err(_) => return,
        };
        metrics::gauge!(names::PRODUCER_KAFKA_UNACKNOWLEDGED_SECONDS)
            .set(seen.waited().as_secs_f64());
        match seen {
            Seen::Stalled { waited, first } => {
                if first {
                    tracing::warn!(
                        waiting,
                        librdkafka = %watch::describe(&statistics),
                        "Kafka acknowledged none of the messages waiting for it for {} s: nothing \
                         after them is confirmed to Postgres, so nothing is lost; asking Kafka for \
                         fresh metadata. If the brokers are up and this goes on, restart the \
                         producer: it resumes from the slot's confirmed LSN",
                        waited.as_secs()
                    );
                }
                self.refresh.notify_one();
            }
            Seen::Resumed(waited) => tracing::info!(
                waiting,
                "Kafka acknowledges messages again, after {} s without",
                waited.as_secs()
            ),
            Seen::Flowing | Seen::Waiting(_) => {}
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self.checkpoint.delivered(seq as u64),
            Err((error, message)) => {
                metrics::counter!(names::PRODUCER_KAFKA_ERRORS).increment(1);
                use rdkafka::Message as _;
                self.checkpoint.failed(format!(
                    "message for topic {} (partition {}) was not delivered: {error}",
                    message.topic(),
                    message.partition()
                ));
            }
        }
    }
}

/// Sends ChangeEvents and reports their delivery to the checkpoint.
pub struct Publisher {
    producer: ThreadedProducer<DeliveryContext>,
    checkpoint: Arc<Checkpoint>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("in_flight", &self.checkpoint.in_flight())
            .finish()
    }
}

/// A librdkafka config with sluice's own `settings` first and the connection, security and user
/// `options` from the config file on top (so `kafka.options` can override anything).
pub(crate) fn client_config(config: &Config, settings: &[(&str, String)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in settings {
        client.set(*key, value);
    }
    for (key, value) in config.kafka.client_properties() {
        client.set(key, value);
    }
    client
}

impl Publisher {
    pub fn new(config: &Config, checkpoint: Arc<Checkpoint>) -> Result<Self, Error> {
        let queue = (config.producer.max_in_flight_messages * 2).max(100_000);
        let settings = [
            ("enable.idempotence", "true".to_owned()),
            ("acks", "all".to_owned()),
            // Never give up on a message: while Kafka is away, nothing is confirmed to Postgres
            // and the stream reader waits at the in-flight limit.
            ("message.timeout.ms", "0".to_owned()),
            (
                "compression.type",
                config.kafka.compression_codec().to_owned(),
            ),
            // The Java client's partitioner: keys land where other Kafka tools expect them.
            ("partitioner", "murmur2_random".to_owned()),
            ("linger.ms", "5".to_owned()),
            ("queue.buffering.max.messages", queue.to_string()),
            ("queue.buffering.max.kbytes", "262144".to_owned()),
            ("client.id", crate::catalog::APPLICATION_NAME.to_owned()),
            (
                "statistics.interval.ms",
                STATISTICS_INTERVAL.as_millis().to_string(),
            ),
        ];
        let producer = client_config(config, &settings)
            .create_with_context(DeliveryContext {
                checkpoint: checkpoint.clone(),
                watch: Mutex::new(Watch::new(Instant::now())),
                refresh: Notify::new(),
            })
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot create the Kafka producer: {e}; check the kafka section of the config (kafka.options in particular)"
                ))
            })?;
        Ok(Self {
            producer,
            checkpoint,
        })
    }

    /// Sends one message for transaction `seq`; `payload` `None` is a tombstone. Waits (without
    /// blocking the runtime) while librdkafka's queue is full.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        partition: Option<i32>,
        seq: u64,
    ) -> Result<(), Error> {
        // Count the message before handing it over: its delivery report may come back first.
        self.checkpoint.sent(seq);
        let mut record = BaseRecord::with_opaque_to(topic, seq as usize).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    let reason = format!("cannot send to topic {topic}: {error}");
                    self.checkpoint.failed(reason.clone());
                    return Err(Error::KafkaFatal(reason));
                }
            }
        }
    }

    /// Until `shutdown`: asks Kafka for fresh metadata whenever the delivery watch found a
    /// stall (the answer updates the client's partition leaders).
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.producer.context().refresh.notified() => {}
            }
            let publisher = self.clone();
            let answer = tokio::task::spawn_blocking(move || {
                publisher
                    .producer
                    .client()
                    .fetch_metadata(None, ADMIN_TIMEOUT)
                    .map(|metadata| metadata.brokers().len())
            })
            .await;
            match answer {
                Ok(Ok(brokers)) => {
                    tracing::info!(brokers, "fresh Kafka metadata while messages wait")
                }
                Ok(Err(error)) => {
                    tracing::info!(%error, "no fresh Kafka metadata while messages wait")
                }
                Err(_) => return,
            }
        }
    }

    /// Waits until every message sent so far is acknowledged, up to `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.checkpoint.in_flight() > 0 {
            if let Some(failure) = self.checkpoint.failure() {
                return Err(Error::KafkaFatal(failure));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Kafka(format!(
                    "{} messages still unacknowledged after {timeout:?}",
                    self.checkpoint.in_flight()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        // Whatever is still queued is not confirmed; it will be read again from the slot.
        let _ = self.producer.flush(Duration::from_secs(1));
    }
}

/// Creates the topics of every configured table that do not exist yet, and returns the
/// partition count of each (TRUNCATE markers go to every partition).
pub async fn ensure_topics(config: &Config) -> Result<HashMap<String, i32>, Error> {
    let admin: AdminClient<DefaultClientContext> = client_config(config, &[])
        .create()
        .map_err(|e| {
            Error::Setup(format!(
                "cannot create the Kafka admin client: {e}; check the kafka section of the config (kafka.options in particular)"
            ))
        })?;
    let replication = config.kafka.replication_factor.map_or(-1, i32::from);
    let retention = config
        .kafka
        .retention
        .map(|r| r.get().as_millis().to_string());
    let names: Vec<String> = config
        .tables
        .iter()
        .map(|t| config.topic_for(&t.name))
        .collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| {
            let topic = NewTopic::new(
                name,
                config.kafka.partitions,
                TopicReplication::Fixed(replication),
            );
            match config.kafka.cleanup_policy {
                CleanupPolicy::Compact => topic.set("cleanup.policy", "compact"),
                CleanupPolicy::Delete => match &retention {
                    Some(ms) => topic
                        .set("cleanup.policy", "delete")
                        .set("retention.ms", ms),
                    None => topic.set("cleanup.policy", "delete"),
                },
            }
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(ADMIN_TIMEOUT))
        .request_timeout(Some(ADMIN_TIMEOUT));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|e| Error::Kafka(format!("cannot create topics: {e}")))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, Code::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Kafka(format!("cannot create topic {topic}: {code}")));
            }
        }
    }
    drop(topics);
    partition_counts(admin, names).await
}

/// Blocking metadata requests run on a thread of their own (the producer's runtime has one
/// thread for the stream).
async fn partition_counts(
    admin: AdminClient<DefaultClientContext>,
    topics: Vec<String>,
) -> Result<HashMap<String, i32>, Error> {
    tokio::task::spawn_blocking(move || {
        let mut counts = HashMap::new();
        for topic in topics {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(&topic), ADMIN_TIMEOUT)
                .map_err(|e| Error::Kafka(format!("cannot read metadata of topic {topic}: {e}")))?;
            let partitions = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::Kafka(format!("topic {topic} has no partitions yet")))?;
            counts.insert(topic, i32::try_from(partitions).unwrap_or(i32::MAX));
        }
        Ok(counts)
    })
    .await
    .map_err(|e| Error::Kafka(format!("reading topic metadata: {e}")))?
}
