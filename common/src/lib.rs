//! What the sluice producer and consumer share: the configuration file (model, loading,
//! validation), telemetry (logs, metrics, health endpoints), shutdown handling and the one retry
//! loop.

pub mod config;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// Exit code for a configuration error, before anything was connected to.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for a failure while running.
pub const EXIT_FAILURE: i32 = 1;
