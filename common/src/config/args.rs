//! Command-line options every sluice binary shares, and how they override the file.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use super::Process;
use super::{Config, ConfigError, LogFormat, Problem, load};

/// Options before the subcommand, each also settable from the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The configuration file.
    #[arg(
        short,
        long,
        env = "SLUICE_CONFIG",
        default_value = "sluice.yaml",
        global = true
    )]
    pub config: PathBuf,
    /// Log filter, overriding `telemetry.log_level` (e.g. `debug`, `sluice_producer=debug,info`).
    #[arg(long, env = "SLUICE_LOG_LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Log format, overriding `telemetry.log_format`: `human` or `json`.
    #[arg(long, env = "SLUICE_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Address for /metrics, /healthz and /readyz, overriding the file (port 0 picks a free one).
    #[arg(long, env = "SLUICE_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
}

impl GlobalArgs {
    /// Loads and validates the file, then applies the command-line overrides.
    pub fn load(&self, process: Process) -> Result<Config, ConfigError> {
        let mut config = load(&self.config)?;
        if let Some(level) = &self.log_level {
            config.telemetry.log_level = level.clone();
        }
        if let Some(format) = self.log_format {
            config.telemetry.log_format = format;
        }
        if let Some(listen) = self.listen {
            match process {
                Process::Producer => config.telemetry.producer_listen = Some(listen),
                Process::Consumer => config.telemetry.consumer_listen = Some(listen),
            }
        }
        // An override can be as wrong as the file; say where it came from.
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&config.telemetry.log_level) {
            return Err(ConfigError::Invalid {
                path: self.config.clone(),
                problems: vec![Problem::new(
                    "--log-level (SLUICE_LOG_LEVEL)",
                    format!(
                        "`{}` is not a log filter ({error})",
                        config.telemetry.log_level
                    ),
                    "use a level such as `info` or `debug`",
                )],
            });
        }
        Ok(config)
    }
}
