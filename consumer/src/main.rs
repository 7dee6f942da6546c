//! `sluice-consumer`: parses the command line, loads the config, sets up telemetry and calls the
//! library. Exit codes: 0 success, 1 failure while running, 2 configuration error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_common::config::{GlobalArgs, Process};
use sluice_common::{EXIT_CONFIG, EXIT_FAILURE, shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-consumer",
    version,
    about = "Kafka to Elasticsearch and OpenSearch"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume and index until SIGINT/SIGTERM.
    Run {
        /// Run only this sink (default: every sink in the config).
        #[arg(long)]
        sink: Option<String>,
    },
    /// Check Kafka, each cluster, its auth and index, and compile filters and transforms.
    Check,
    /// Show per-partition lag and outcome counts.
    Status,
    /// Compare the sink's index with its table: missing, extra and stale documents. Exit 0 in
    /// sync, 1 drift found, 2 bad input.
    Verify {
        /// The sink to check.
        sink: String,
        /// Fix what was found: backfill missing and stale rows again (through the running
        /// producer), delete extra documents, then check those again.
        #[arg(long)]
        repair: bool,
        /// Only rows matching this SQL condition over the table's columns.
        #[arg(long = "where", value_name = "CONDITION")]
        condition: Option<String>,
        /// `human` (default) or `json`.
        #[arg(long, default_value = "human", value_parser = ["human", "json"])]
        format: String,
        /// How long to wait for the sink to catch up before differences are checked again.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        settle: std::time::Duration,
    },
    /// Rebuild the sink's index behind its alias without downtime: fill `{index}-v{n+1}` from
    /// the start of the topic, swap the alias, keep `--keep-old` older versions.
    Rebuild(RebuildArgs),
    /// Move the sink's consumer group back so it writes the topic again (safe by versions).
    Replay(ReplayArgs),
    /// The sink's dead letters: count them by reason, show them, re-drive them after a fix.
    Dlq {
        /// The sink whose dead-letter topic to read.
        sink: String,
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, clap::Args)]
struct RebuildArgs {
    /// The sink whose index to rebuild.
    sink: String,
    /// Settings of the new index (a JSON object file) instead of the sink's.
    #[arg(long, value_name = "FILE")]
    settings: Option<std::path::PathBuf>,
    /// Mappings of the new index (a JSON object file) instead of the sink's.
    #[arg(long, value_name = "FILE")]
    mappings: Option<std::path::PathBuf>,
    /// Older versions to keep after the swap; older ones are deleted.
    #[arg(long, value_name = "N", default_value_t = 1)]
    keep_old: usize,
    /// Print the plan and change nothing.
    #[arg(long, conflicts_with = "abort")]
    dry_run: bool,
    /// Undo an interrupted rebuild: lift the write block, delete the unfinished index.
    #[arg(long)]
    abort: bool,
    /// Longest the old index stays write-blocked while the rebuild reads its last events.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    max_block: std::time::Duration,
    /// Documents per bulk request while filling the new index (1 to 10,000; default: the
    /// sink's `batch_size` or 2,000, whichever is larger).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10_000))]
    batch_size: Option<u16>,
}

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("from").required(true))]
struct ReplayArgs {
    /// The sink whose group to move.
    sink: String,
    /// Replay the whole topic.
    #[arg(long, group = "from")]
    from_beginning: bool,
    /// Replay from this time: RFC 3339 (2025-01-31T12:00:00Z) or a duration ago (2h).
    #[arg(long, group = "from", value_name = "T", value_parser = sluice_consumer::parse_time)]
    from_time: Option<std::time::SystemTime>,
    /// Wait for the group's running members to stop instead of refusing.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Count the letters still to re-drive by stage, error type and reason, with first and last
    /// time.
    List(DlqArgs),
    /// Print letters with their event (decoded), error and source position.
    Show {
        /// Only the letter at PARTITION:OFFSET of the dead-letter topic (or OFFSET in every
        /// partition), re-driven or not.
        #[arg(long, value_parser = sluice_consumer::dlq::parse_at, conflicts_with = "limit")]
        offset: Option<sluice_consumer::dlq::At>,
        /// How many letters still to re-drive to print, oldest first.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        #[command(flatten)]
        args: DlqArgs,
    },
    /// Send the letters still to re-drive through the sink's current filter, transform and
    /// mapping; those that fail again go back with their attempts counted. Exit 1 when some
    /// failed again.
    Redrive {
        /// Decode, filter and transform only: write nothing, commit nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        args: DlqArgs,
    },
}

#[derive(Debug, clap::Args)]
struct DlqArgs {
    /// Only letters whose reason is this (as `list` prints it) or contains it.
    #[arg(long)]
    reason: Option<String>,
    /// Only letters written since this RFC 3339 time or this long ago (`2h`).
    #[arg(long, value_name = "TIME", value_parser = sluice_consumer::dlq::parse_since)]
    since: Option<i64>,
    /// `human` (default) or `json`.
    #[arg(long, default_value = "human", value_parser = ["human", "json"])]
    format: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.global.load(Process::Consumer) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sluice-consumer: {error}");
            return exit(EXIT_CONFIG);
        }
    };
    let named = match &cli.command {
        Command::Run { sink: Some(name) } => Some(("--sink ", name)),
        Command::Verify { sink, .. } | Command::Dlq { sink, .. } => Some(("", sink)),
        Command::Rebuild(RebuildArgs { sink, .. }) | Command::Replay(ReplayArgs { sink, .. }) => {
            Some(("", sink))
        }
        _ => None,
    };
    if let Some((flag, name)) = named
        && config.sink(name).is_none()
    {
        let known: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
        eprintln!(
            "sluice-consumer: {flag}{name}: no such sink in the config (known: {})",
            known.join(", ")
        );
        return exit(EXIT_CONFIG);
    }
    if let Err(error) =
        telemetry::init_logging(config.telemetry.log_format, &config.telemetry.log_level)
    {
        eprintln!("sluice-consumer: {error}");
        return exit(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sluice-consumer: cannot start the async runtime: {error}");
            return exit(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run { sink } => sluice_consumer::run(config, sink, shutdown::on_signals())
                .await
                .map(|()| true),
            Command::Check => sluice_consumer::check(config).await.map(|()| true),
            Command::Status => sluice_consumer::status(config).await.map(|()| true),
            Command::Verify {
                sink,
                repair,
                condition,
                format,
                settle,
            } => {
                let options = sluice_consumer::VerifyOptions {
                    sink,
                    repair,
                    condition,
                    json: format == "json",
                    settle,
                };
                // `false`: drift found; the report said what differs.
                sluice_consumer::verify(config, options).await
            }
            Command::Rebuild(args) => {
                let options = sluice_consumer::RebuildOptions {
                    sink: args.sink,
                    settings: args.settings,
                    mappings: args.mappings,
                    keep_old: args.keep_old,
                    dry_run: args.dry_run,
                    abort: args.abort,
                    max_block: args.max_block,
                    batch_size: args.batch_size.map(usize::from),
                };
                sluice_consumer::rebuild(config, options, shutdown::on_signals())
                    .await
                    .map(|()| true)
            }
            Command::Replay(args) => {
                let options = sluice_consumer::ReplayOptions {
                    sink: args.sink,
                    from: match args.from_time {
                        Some(time) => sluice_consumer::ReplayFrom::Time(time),
                        None => sluice_consumer::ReplayFrom::Beginning,
                    },
                    wait: args.wait,
                };
                sluice_consumer::replay(config, options, shutdown::on_signals())
                    .await
                    .map(|()| true)
            }
            Command::Dlq { sink, command } => {
                let options = dlq_options(sink, command);
                sluice_consumer::dlq::dlq(config, options, shutdown::on_signals()).await
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => exit(EXIT_FAILURE),
        Err(error) => {
            // Once, as plain text: logs may be JSON, and the log line would repeat it.
            eprintln!("sluice-consumer: {error}");
            exit(error.exit_code())
        }
    }
}

fn dlq_options(sink: String, command: DlqCommand) -> sluice_consumer::dlq::Options {
    use sluice_consumer::dlq::{Command, Filter, Options};
    let (command, args) = match command {
        DlqCommand::List(args) => (Command::List, args),
        DlqCommand::Show {
            offset,
            limit,
            args,
        } => (Command::Show { at: offset, limit }, args),
        DlqCommand::Redrive { dry_run, args } => (Command::Redrive { dry_run }, args),
    };
    Options {
        sink,
        command,
        filter: Filter {
            reason: args.reason,
            since: args.since,
            position: None,
        },
        json: args.format == "json",
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
