//! sluice-consumer: Kafka consumer group → filters → transforms → Elasticsearch/OpenSearch bulk
//! writes, committing offsets only after each event's outcome is final.
//!
//! The binary is a thin wrapper; everything runs through the functions here, which tests call
//! with their own shutdown token.

mod error;

pub use error::Error;
use sluice_common::config::Config;
use sluice_common::shutdown::CancellationToken;

/// Runs the sinks (all, or only `sink`) until `shutdown` is cancelled.
// Async because the real implementation talks to servers; see the roadmap in docs/.
#[allow(clippy::unused_async)]
pub async fn run(
    config: Config,
    sink: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let _ = (config, sink, shutdown);
    Err(Error::Unsupported("run"))
}

/// Checks Kafka and every sink's cluster, index and scripts.
// Async because the real implementation talks to servers; see the roadmap in docs/.
#[allow(clippy::unused_async)]
pub async fn check(config: Config) -> Result<(), Error> {
    let _ = config;
    Err(Error::Unsupported("check"))
}

/// Prints per-partition lag and outcome counts.
// Async because the real implementation talks to servers; see the roadmap in docs/.
#[allow(clippy::unused_async)]
pub async fn status(config: Config) -> Result<(), Error> {
    let _ = config;
    Err(Error::Unsupported("status"))
}
