//! Producer errors, sorted by what the caller should do about them:
//! * [`Error::is_transient`] ones (a lost connection, a broker away) are retried with backoff,
//!   resuming from the slot's confirmed LSN, so nothing is lost;
//! * the rest stop the producer with a message that says what to fix.

use sluice_common::config::redact_url;

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
    /// Something about the database must change before sluice can run (a missing privilege,
    /// a table without a key, wal_level). The message says what to do.
    #[error("{0}")]
    Setup(String),
    /// Kafka refused a message for good (too large, not authorized): retrying cannot help.
    #[error("kafka refused a message for good: {0}")]
    KafkaFatal(String),
    /// The replication stream sent something we cannot decode.
    #[error("cannot decode the replication stream: {0}")]
    Decode(String),
    /// The TLS settings cannot be used.
    #[error("postgres TLS: {0}")]
    Tls(String),
    /// A command for a running producer failed.
    #[error("{0}")]
    Command(String),
}

impl Error {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Postgres { source, .. } => !is_fatal_sql(source),
            Self::Replication(_) | Self::Kafka(_) => true,
            Self::Authentication { .. }
            | Self::Setup(_)
            | Self::KafkaFatal(_)
            | Self::Decode(_)
            | Self::Tls(_)
            | Self::Command(_) => false,
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
