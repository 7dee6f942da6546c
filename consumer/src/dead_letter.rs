//! The dead-letter topic: events that will never index as they are, with why, next to their
//! untouched original key and value.
//!
//! The letters of one batch are handed to the producer together and awaited together (the
//! producer batches them into few requests), and logged as one line per reason with a count
//! and the first event's position: a flood of rejected events (a mapping conflict on a field
//! every row carries) moves at the speed of a flood of indexed ones, and does not flood the
//! log. The offset of an event is not committed until its letter is acknowledged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use sluice_common::config::{Config, SinkConfig};
use sluice_common::retry::{self, Decision, Policy};
use tokio_util::sync::CancellationToken;

use crate::error::{Action, Error};
use crate::kafka;

/// Retries of the dead-letter topic's creation and of sending letters while Kafka is away.
const KAFKA_POLICY: Policy =
    Policy::exponential(Duration::from_millis(500), Duration::from_secs(30));

/// Why an event went to the dead-letter topic; written as message headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `decode`, `filter`, `transform`, `route` or `index` (read back from a header when a
    /// letter is written again as it was).
    pub stage: Cow<'static, str>,
    /// The Elasticsearch error type (`document_parsing_exception`, …), or the stage's own kind.
    pub error_type: String,
    pub reason: String,
    /// HTTP status of the item, for `index`.
    pub status: Option<u16>,
    /// Attempts made (1 unless the item was retried before it was rejected; a redrive adds its
    /// own).
    pub attempts: u32,
    /// When the letter was first written (Unix ms), for a letter written again unchanged;
    /// `None`: now.
    pub at: Option<i64>,
}

impl DeadLetter {
    /// A letter of a stage before the cluster: one attempt, no status.
    pub fn new(stage: &'static str, error_type: &str, reason: impl Into<String>) -> Self {
        Self {
            stage: Cow::Borrowed(stage),
            error_type: error_type.to_owned(),
            reason: reason.into(),
            status: None,
            attempts: 1,
            at: None,
        }
    }
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

/// Creates the sink's dead-letter topic (delete policy, the config's partitions and
/// replication) when missing, retrying while Kafka cannot be reached. A refusal that retrying
/// cannot change is [`Error::DeadLetterTopic`].
pub async fn ensure_topic(
    config: &Config,
    sink: &SinkConfig,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    retry::retry(
        KAFKA_POLICY,
        shutdown,
        || create_topic(config, sink),
        |error: &Error, attempt| {
            if error.action() != Action::Retry {
                return Decision::GiveUp;
            }
            tracing::warn!(sink = %sink.name, %error, retry_in = ?attempt.retry_in, "cannot reach Kafka yet");
            Decision::Retry
        },
    )
    .await
    .map_err(|failure| match failure {
        retry::Failure::GaveUp(error) => error,
        retry::Failure::Interrupted(_) => Error::Interrupted,
    })
}

async fn create_topic(config: &Config, sink: &SinkConfig) -> Result<(), Error> {
    let topic = sink.dlq_topic();
    let admin: AdminClient<DefaultClientContext> = kafka::client_config(config, &[])
        .create()
        .map_err(Error::kafka("creating an admin client"))?;
    let replication = config
        .kafka
        .replication_factor
        .map_or(TopicReplication::Fixed(-1), |rf| {
            TopicReplication::Fixed(i32::from(rf))
        });
    let new =
        NewTopic::new(&topic, config.kafka.partitions, replication).set("cleanup.policy", "delete");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(Error::kafka(format!(
            "creating the dead-letter topic {topic}"
        )))?;
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
                return Err(Error::DeadLetterTopic {
                    sink: sink.name.clone(),
                    topic: name,
                    code,
                });
            }
            Err((name, code)) => {
                return Err(Error::Kafka {
                    what: format!("creating the dead-letter topic {name}"),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
    }
    Ok(())
}

/// Writes dead letters; never gives up while Kafka is away (the offset is not committed until
/// the letter is acknowledged), except when the sink is shutting down.
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
        let producer = kafka::client_config(
            config,
            &[
                ("enable.idempotence", "true".to_owned()),
                ("acks", "all".to_owned()),
                ("message.timeout.ms", "0".to_owned()),
                ("linger.ms", "5".to_owned()),
            ],
        )
        .create()
        .map_err(Error::kafka("creating the dead-letter producer"))?;
        Ok(Self {
            producer,
            topic: sink.dlq_topic(),
            sink: sink.name.clone(),
        })
    }

    /// Sends the letters of one batch together and waits until Kafka acknowledged every one,
    /// retrying those it did not take. `Err` only on shutdown (nothing is committed for them).
    pub async fn send_all(
        &self,
        letters: &[(&Original, &DeadLetter)],
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        if letters.is_empty() {
            return Ok(());
        }
        let unsent: Vec<usize> = (0..letters.len()).collect();
        retry::retry_with(
            KAFKA_POLICY,
            shutdown,
            unsent,
            |unsent| self.send_some(letters, unsent, shutdown),
            |error: &Error, attempt| {
                if matches!(error, Error::Interrupted) {
                    return Decision::GiveUp;
                }
                tracing::warn!(sink = %self.sink, %error, retry_in = ?attempt.retry_in, "cannot write dead letters; retrying");
                Decision::Retry
            },
        )
        .await
        .map_err(|_| Error::Interrupted)?;
        self.log(letters);
        Ok(())
    }

    /// One round: enqueues the letters at `unsent`, then awaits them all. Hands back those that
    /// failed.
    async fn send_some(
        &self,
        letters: &[(&Original, &DeadLetter)],
        unsent: Vec<usize>,
        shutdown: &CancellationToken,
    ) -> Result<(), (Vec<usize>, Error)> {
        let mut waiting: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(unsent.len());
        let mut failed = Vec::new();
        let mut last_error = None;
        for at in unsent {
            let (original, letter) = letters[at];
            let headers = headers(&self.sink, original, letter);
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(at) = letter.at {
                record = record.timestamp(at);
            }
            if let Some(key) = &original.key {
                record = record.key(key.as_ref());
            }
            if let Some(payload) = &original.payload {
                record = record.payload(payload.as_ref());
            }
            match self.producer.send_result(record) {
                Ok(delivery) => waiting.push((at, delivery)),
                // The local queue is full: what is enqueued goes first, this one next round.
                Err((error, _)) => {
                    failed.push(at);
                    last_error = Some(error);
                }
            }
        }
        for (at, delivery) in waiting {
            let delivered = tokio::select! {
                () = shutdown.cancelled() => return Err((Vec::new(), Error::Interrupted)),
                delivered = delivery => delivered,
            };
            match delivered {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    failed.push(at);
                    last_error = Some(error);
                }
                Err(_) => {
                    failed.push(at);
                    last_error = Some(KafkaError::Canceled);
                }
            }
        }
        match last_error {
            None => Ok(()),
            Some(source) => Err((
                failed,
                Error::Kafka {
                    what: format!("dead-letter topic {}", self.topic),
                    source,
                },
            )),
        }
    }

    /// One line per stage and error type, with the count and the first event's position.
    fn log(&self, letters: &[(&Original, &DeadLetter)]) {
        for ((stage, error_type), (count, original, letter)) in summarize(letters) {
            tracing::warn!(
                sink = %self.sink,
                events = count,
                topic = %original.topic, partition = original.partition, offset = original.offset,
                stage, %error_type, reason = %letter.reason,
                dlq = %self.topic,
                "events dead-lettered"
            );
        }
    }
}

/// The letters grouped by stage and error type: how many, and the first of each.
fn summarize<'a>(
    letters: &[(&'a Original, &'a DeadLetter)],
) -> BTreeMap<(&'a str, &'a str), (usize, &'a Original, &'a DeadLetter)> {
    let mut groups = BTreeMap::new();
    for &(original, letter) in letters {
        groups
            .entry((letter.stage.as_ref(), letter.error_type.as_str()))
            .and_modify(|(count, _, _)| *count += 1)
            .or_insert((1, original, letter));
    }
    groups
}

/// The `sluice.dlq.*` header names, in the order they are written.
pub mod names {
    pub const SINK: &str = "sluice.dlq.sink";
    pub const STAGE: &str = "sluice.dlq.stage";
    pub const ERROR_TYPE: &str = "sluice.dlq.error_type";
    pub const REASON: &str = "sluice.dlq.reason";
    pub const ATTEMPTS: &str = "sluice.dlq.attempts";
    pub const TOPIC: &str = "sluice.dlq.topic";
    pub const PARTITION: &str = "sluice.dlq.partition";
    pub const OFFSET: &str = "sluice.dlq.offset";
    pub const STATUS: &str = "sluice.dlq.status";
}

/// The headers of a letter: why it is here and where its original came from.
pub fn headers(sink: &str, original: &Original, letter: &DeadLetter) -> OwnedHeaders {
    let partition = original.partition.to_string();
    let offset = original.offset.to_string();
    let attempts = letter.attempts.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(header(names::SINK, sink))
        .insert(header(names::STAGE, &letter.stage))
        .insert(header(names::ERROR_TYPE, &letter.error_type))
        .insert(header(names::REASON, &letter.reason))
        .insert(header(names::ATTEMPTS, &attempts))
        .insert(header(names::TOPIC, &original.topic))
        .insert(header(names::PARTITION, &partition))
        .insert(header(names::OFFSET, &offset));
    if let Some(status) = letter.status {
        headers = headers.insert(header(names::STATUS, &status.to_string()));
    }
    headers
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn original(offset: i64) -> Original {
        Original {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: None,
        }
    }

    #[test]
    fn letters_are_summarized_per_reason_with_the_first_position() {
        let (a, b, c) = (original(7), original(8), original(9));
        let mapping = DeadLetter {
            status: Some(400),
            ..DeadLetter::new("index", "document_parsing_exception", "bad field")
        };
        let script = DeadLetter::new("transform", "script_error", "boom");
        let groups = summarize(&[(&a, &mapping), (&b, &script), (&c, &mapping)]);
        assert_eq!(groups.len(), 2);
        let (count, first, _) = groups[&("index", "document_parsing_exception")];
        assert_eq!((count, first.offset), (2, 7));
        let (count, first, _) = groups[&("transform", "script_error")];
        assert_eq!((count, first.offset), (1, 8));
    }
}
