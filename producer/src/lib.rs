//! sluice-producer: Postgres logical replication and backfills → protobuf ChangeEvents on Kafka.
//!
//! The binary is a thin wrapper; everything runs through [`run`], [`check`], [`status`] and
//! [`backfill`], which tests call with their own shutdown token.

mod error;

pub use error::Error;
use sluice_common::config::Config;
use sluice_common::shutdown::CancellationToken;

/// Streams changes until `shutdown` is cancelled.
// Async because the real implementation talks to servers; see the roadmap in docs/.
#[allow(clippy::unused_async)]
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let _ = (config, shutdown);
    Err(Error::Unsupported("run"))
}

/// Checks the database and Kafka, printing each problem with its fix.
// Async because the real implementation talks to servers; see the roadmap in docs/.
#[allow(clippy::unused_async)]
pub async fn check(config: Config) -> Result<(), Error> {
    let _ = config;
    Err(Error::Unsupported("check"))
}

/// Prints slot lag, confirmed LSN and per-table progress.
// Async because the real implementation talks to servers; see the roadmap in docs/.
#[allow(clippy::unused_async)]
pub async fn status(config: Config) -> Result<(), Error> {
    let _ = config;
    Err(Error::Unsupported("status"))
}

/// Asks the running producer to backfill `table`, optionally only rows matching `condition`.
// Async because the real implementation talks to servers; see the roadmap in docs/.
#[allow(clippy::unused_async)]
pub async fn backfill(
    config: Config,
    table: String,
    condition: Option<String>,
) -> Result<(), Error> {
    let _ = (config, table, condition);
    Err(Error::Unsupported("backfill"))
}
