//! The replication connection: `START_REPLICATION … LOGICAL` with pgoutput, behind a trait of
//! ours so the transport crate can be replaced without touching the pipeline.
//!
//! ```text
//!   Postgres walsender ──CopyBoth──▶ transport ──WalEvent──▶ pipeline (decode, encode, publish)
//!                      ◀─standby status (confirmed LSN)── Checkpoint
//! ```
//!
//! The session runs with fixed `DateStyle`/`TimeZone`/`IntervalStyle` options so values arrive
//! in the text forms the decoder expects, and with `messages 'true'`, so logical messages
//! (`pg_logical_emit_message`: heartbeats and backfill watermarks) arrive in the stream.
//! Standby status updates carry the confirmed LSN; they go out regularly and whenever the server
//! asks (a keepalive with reply requested), also while the pipeline waits for Kafka.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationEvent};

use crate::catalog::PgTarget;
use crate::error::Error;

/// One item of the replication stream. Times are microseconds since 2000-01-01 (Postgres epoch).
#[derive(Debug, Clone)]
pub enum WalEvent {
    Begin {
        final_lsn: u64,
        xid: u32,
        commit_time: i64,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    /// Any other pgoutput message, still encoded; `lsn` is where it starts in the WAL.
    Data { lsn: u64, data: Bytes },
    /// A logical message from `pg_logical_emit_message`.
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
    /// The server's WAL end, sent while idle.
    KeepAlive { wal_end: u64 },
}

/// A source of replication events.
///
/// Contract: events come in WAL order; after [`WalSource::confirm`]`(lsn)` the source may tell
/// the server that everything before `lsn` is durable, so the caller must only confirm what
/// Kafka has acknowledged. At-least-once: after a reconnect the server resends everything after
/// the last confirmed LSN.
pub trait WalSource: Send {
    fn recv(&mut self) -> impl Future<Output = Result<Option<WalEvent>, Error>> + Send;
    fn confirm(&self, lsn: u64);
    fn shutdown(self) -> impl Future<Output = ()> + Send;
}

/// Settings of the replication connection beyond the target.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub slot: String,
    pub publication: String,
    /// Where to start (and what counts as confirmed until the first `confirm`).
    pub start_lsn: u64,
    pub status_interval: Duration,
}

/// The transport of the `pgwire-replication` crate.
pub struct PgWireSource {
    client: ReplicationClient,
}

impl std::fmt::Debug for PgWireSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgWireSource")
    }
}

impl PgWireSource {
    /// Connects and starts streaming. A slot held by another process is [`Error::SlotBusy`], so
    /// callers can wait politely.
    pub async fn start(target: &PgTarget, settings: &StreamSettings) -> Result<Self, Error> {
        let config = target
            .replication_config(&settings.slot, &settings.publication, settings.start_lsn)
            .with_status_interval(settings.status_interval)
            .with_wakeup_interval(Duration::from_secs(5))
            .with_buffer_size(8192);
        let mut client = ReplicationClient::connect(config)
            .await
            .map_err(|e| map_error(target, e))?;
        client
            .wait_started()
            .await
            .map_err(|e| map_error(target, e))?;
        Ok(Self { client })
    }
}

impl WalSource for PgWireSource {
    async fn recv(&mut self) -> Result<Option<WalEvent>, Error> {
        let event = match self.client.recv().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(None),
            Err(error) => return Err(Error::Replication(error.to_string())),
        };
        Ok(Some(match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => WalEvent::Begin {
                final_lsn: final_lsn.0,
                xid,
                commit_time: commit_time_micros,
            },
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => WalEvent::Commit {
                commit_lsn: lsn.0,
                end_lsn: end_lsn.0,
                commit_time: commit_time_micros,
            },
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => WalEvent::Data {
                lsn: wal_start.0,
                data,
            },
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => WalEvent::Message {
                transactional,
                lsn: lsn.0,
                prefix,
                content,
            },
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                WalEvent::KeepAlive { wal_end: wal_end.0 }
            }
            ReplicationEvent::StoppedAt { .. } => return Ok(None),
        }))
    }

    fn confirm(&self, lsn: u64) {
        self.client.update_applied_lsn(Lsn(lsn));
    }

    async fn shutdown(mut self) {
        // CopyDone ends the stream; it carries no last status update (`run` confirms the final
        // position through SQL afterwards).
        if let Err(error) = self.client.shutdown().await {
            tracing::debug!(%error, "replication connection did not close cleanly");
        }
    }
}

fn map_error(target: &PgTarget, error: PgWireError) -> Error {
    match error {
        PgWireError::Auth(message) => Error::Authentication {
            user: target.user.clone(),
            target: target.redacted(),
            message,
        },
        PgWireError::Server(message) if message.contains("password authentication failed") => {
            Error::Authentication {
                user: target.user.clone(),
                target: target.redacted(),
                message,
            }
        }
        PgWireError::Server(message) if message.contains("is active for PID") => {
            Error::SlotBusy(message)
        }
        PgWireError::Server(message)
            if message.contains("must be superuser or replication role")
                || message.contains("permission denied") =>
        {
            Error::Setup(format!(
                "user `{}` may not stream changes: {message}; fix: ALTER ROLE {} REPLICATION",
                target.user, target.user
            ))
        }
        PgWireError::Tls(message) => Error::Tls(message),
        other => Error::Replication(other.to_string()),
    }
}
