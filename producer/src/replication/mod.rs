//! The replication connection: `START_REPLICATION … LOGICAL` with pgoutput, behind a trait of
//! ours so the pipeline does not depend on how the stream is read. The transport is our own
//! ([`SocketSource`]: `connection` opens it, `wire` has the protocol's bytes, `reader` reads it on
//! a thread that batches reads so the walsender is not woken per message).
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

use crate::error::Error;

mod connection;
mod reader;
mod wire;

pub use reader::SocketSource;

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
