//! `sluice-producer`: parses the command line, loads the config, sets up telemetry and calls the
//! library. Exit codes: 0 success, 1 failure while running, 2 configuration error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_common::config::{GlobalArgs, Process};
use sluice_common::{EXIT_CONFIG, EXIT_FAILURE, shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-producer",
    version,
    about = "Postgres logical replication to Kafka"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stream changes (and run backfills) until SIGINT/SIGTERM.
    Run,
    /// Check Postgres and Kafka and print what is wrong and how to fix it.
    Check,
    /// Show slot lag, confirmed LSN and backfill progress.
    Status,
    /// Start a backfill of one table while `run` is active.
    Backfill {
        /// `schema.table`, declared in the config.
        table: String,
        /// Only rows matching this SQL condition.
        #[arg(long = "where", value_name = "CONDITION")]
        condition: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.global.load(Process::Producer) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice-producer: {error}");
            return exit(EXIT_CONFIG);
        }
    };
    if let Err(error) =
        telemetry::init_logging(config.telemetry.log_format, &config.telemetry.log_level)
    {
        eprintln!("sluice-producer: {error}");
        return exit(EXIT_CONFIG);
    }
    // One thread for the stream: the replication transport and the pipeline hand every event
    // over, and on one thread that is a function call instead of a cross-thread wake-up.
    // librdkafka and blocking calls have threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sluice-producer: cannot start the async runtime: {error}");
            return exit(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run => sluice_producer::run(config, shutdown::on_signals()).await,
            Command::Check => sluice_producer::check(config).await,
            Command::Status => sluice_producer::status(config).await,
            Command::Backfill { table, condition } => {
                sluice_producer::backfill(config, table, condition).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Once, as plain text: logs may be JSON, and the log line would repeat it.
            eprintln!("sluice-producer: {error}");
            exit(error.exit_code())
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
