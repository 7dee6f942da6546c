//! Consumer errors, sorted by what the caller should do about them ([`Error::action`]).
//!
//! Errors about one event (it does not decode, its script fails, the cluster rejects its
//! document) never stop a sink: they become a [`crate::dead_letter::DeadLetter`]. The errors
//! here are about the sink as a whole.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use sluice_common::config::Problem;
use sluice_common::telemetry::TelemetryError;

use crate::elastic::ElasticError;

/// What the caller does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transient: wait and try again; nothing is committed meanwhile.
    Retry,
    /// Definite, and about one event: write it to the dead-letter topic and go on.
    DeadLetter,
    /// Fatal (configuration, credentials, shutdown): stop the sink.
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter, transform or index template that does not compile: exit 2, like any bad config.
    #[error("{}", render(.0))]
    Config(Vec<Problem>),
    /// The cluster refused the credentials, or a setup request: the sink stops, nothing is
    /// committed past it.
    #[error("sink {sink}: {source}")]
    Elastic { sink: String, source: ElasticError },
    /// Kafka cannot be used right now (broker away, timeouts).
    #[error("kafka: {what}: {source}")]
    Kafka { what: String, source: KafkaError },
    /// Kafka refused to create the dead-letter topic, and will keep refusing.
    #[error(
        "sink {sink}: cannot create the dead-letter topic {topic}: {code}; fix: create it \
         yourself (cleanup.policy=delete) or allow this client to create topics, or set the \
         sink's dlq_topic to an existing topic"
    )]
    DeadLetterTopic {
        sink: String,
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// The metrics recorder or the HTTP listener could not start.
    #[error("telemetry: {0}")]
    Telemetry(#[from] TelemetryError),
    /// A task of the consumer panicked or was cancelled.
    #[error("a task of the consumer failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Shutdown interrupted the work; nothing was committed for it.
    #[error("interrupted by shutdown")]
    Interrupted,
    /// The sink's table cannot be read (`verify`): Postgres away, a privilege missing.
    #[error("sink {sink}: {message}")]
    Table { sink: String, message: String },
    /// `check` found problems (already printed with their fixes).
    #[error("{0}")]
    Check(String),
    /// A command (`rebuild`, `replay`) cannot do what it was asked: why, and the fix.
    #[error("{0}")]
    Command(String),
}

impl Error {
    /// What to do about this error.
    pub fn action(&self) -> Action {
        match self {
            Self::Kafka { .. } => Action::Retry,
            Self::Elastic { source, .. } => match source.action() {
                Action::Retry => Action::Retry,
                // A request about the sink as a whole, not one event: nothing to dead-letter.
                Action::DeadLetter | Action::Stop => Action::Stop,
            },
            Self::Config(_)
            | Self::DeadLetterTopic { .. }
            | Self::Telemetry(_)
            | Self::Task(_)
            | Self::Interrupted
            | Self::Table { .. }
            | Self::Check(_)
            | Self::Command(_) => Action::Stop,
        }
    }

    /// Exit code for `main`: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => sluice_common::EXIT_CONFIG,
            _ => sluice_common::EXIT_FAILURE,
        }
    }

    /// Wraps a Kafka client error with what was being done (`map_err(Error::kafka("…"))`).
    pub fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> Self {
        let what = what.into();
        move |source| Self::Kafka { what, source }
    }
}

fn render(problems: &[Problem]) -> String {
    let mut out = "invalid configuration:".to_owned();
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}
