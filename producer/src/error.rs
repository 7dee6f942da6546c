//! Producer errors, sorted by what the caller should do about them ([`Error::action`]):
//! * [`Action::Retry`] ones (a lost connection, a broker away, the slot held by another
//!   producer) are retried with backoff, resuming from the slot's confirmed LSN, so nothing is
//!   lost;
//! * [`Action::Stop`] ones stop the producer with a message that says what to fix. The producer
//!   has no dead-letter topic: an event it cannot encode stops it, since skipping it would lose
//!   a change.

use sluice_common::config::redact_url;

use crate::encode::EncodeError;
use crate::pgoutput::DecodeError;

/// What the caller does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Transient: wait and try again from the confirmed LSN.
    Retry,
    /// Fatal: stop with the message.
    Stop,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not reach or talk to Postgres; retried.
    #[error("postgres: {context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication connection failed; retried.
    #[error("replication stream: {0}")]
    Replication(String),
    /// Another process streams from the slot; retried until it lets go (a standby producer
    /// taking over).
    #[error("replication slot is held by another process: {0}")]
    SlotBusy(String),
    /// Kafka cannot be used right now; retried.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The server refused our credentials: retrying cannot help.
    #[error(
        "postgres refused the login of user `{user}` at {target}: {message}; fix the user or password in postgres.url"
    )]
    Authentication {
        user: String,
        target: String,
        message: String,
    },
    /// The configuration cannot work (found before connecting): exit 2.
    #[error("{0}")]
    Config(String),
    /// Something about the database must change before sluice can run (a missing privilege,
    /// a table without a key, wal_level). The message says what to do.
    #[error("{0}")]
    Setup(String),
    /// A change cannot be encoded (a key column without a value).
    #[error("cannot encode a change of {0}")]
    Encode(#[from] EncodeError),
    /// Kafka refused a message for good (too large, not authorized): retrying cannot help.
    #[error("kafka refused a message for good: {0}")]
    KafkaFatal(String),
    /// The replication stream sent something we cannot decode.
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] DecodeError),
    /// The replication stream's messages came in an order the protocol does not allow.
    #[error("the replication stream broke the protocol: {0}")]
    Protocol(String),
    /// The TLS settings cannot be used.
    #[error("postgres TLS: {0}")]
    Tls(String),
    /// A command for a running producer failed.
    #[error("{0}")]
    Command(String),
    /// Shutdown interrupted the work.
    #[error("interrupted by shutdown")]
    Interrupted,
}

impl Error {
    /// What to do about this error.
    pub fn action(&self) -> Action {
        match self {
            Self::Postgres { source, .. } if is_fatal_sql(source) => Action::Stop,
            Self::Postgres { .. } | Self::Replication(_) | Self::SlotBusy(_) | Self::Kafka(_) => {
                Action::Retry
            }
            Self::Authentication { .. }
            | Self::Config(_)
            | Self::Setup(_)
            | Self::Encode(_)
            | Self::KafkaFatal(_)
            | Self::Decode(_)
            | Self::Protocol(_)
            | Self::Tls(_)
            | Self::Command(_)
            | Self::Interrupted => Action::Stop,
        }
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.action() == Action::Retry
    }

    /// Exit code for `main`: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => sluice_common::EXIT_CONFIG,
            _ => sluice_common::EXIT_FAILURE,
        }
    }

    pub(crate) fn postgres(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Self::Postgres {
            context: context.into(),
            source,
        }
    }

    /// Maps a connection error to [`Error::Authentication`] when the server refused the login.
    pub(crate) fn connect(url: &str, user: &str, source: tokio_postgres::Error) -> Self {
        if let Some(db) = source.as_db_error()
            && matches!(db.code().code(), "28P01" | "28000")
        {
            return Self::Authentication {
                user: user.to_owned(),
                target: redact_url(url),
                message: db.message().to_owned(),
            };
        }
        // A certificate that does not verify will not verify on the next attempt either.
        let chain = error_chain(&source);
        if chain.contains("TLS handshake") || chain.contains("certificate") {
            return Self::Tls(format!(
                "connecting to {}: {chain}; check postgres.ca_file and the sslmode in postgres.url",
                redact_url(url)
            ));
        }
        Self::postgres(format!("connecting to {}", redact_url(url)), source)
    }
}

/// An error and its sources, joined by `: `.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// SQL errors that retrying cannot fix: authentication, privileges, missing objects, syntax.
fn is_fatal_sql(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        let class = &db.code().code()[..2];
        // 28 auth, 42 syntax/privilege/undefined object, 3D missing database, 55 object state.
        matches!(class, "28" | "42" | "3D")
    })
}
