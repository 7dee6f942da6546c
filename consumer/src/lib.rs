//! sluice-consumer: Kafka consumer group → filters → transforms → Elasticsearch/OpenSearch bulk
//! writes, committing offsets only after each event's outcome is final.
//!
//! The binary is a thin wrapper; everything runs through the functions here, which tests call
//! with their own shutdown token.
//!
//! One module per stage of an event's trip, in its order: `consume` (group consumer, read
//! loop, commits) → `decode` → `script` (filter, transform) and `route` (index, `_id`, the
//! write) → `batch` → `elastic` (`deliver` with its `retry`, over the client) → `dead_letter`.
//! `sink` wires one sink's stages; [`run`] wires the sinks.

mod batch;
mod commands;
mod console;
mod consume;
mod dead_letter;
mod decode;
pub mod dlq;
pub mod elastic;
mod error;
pub mod event;
mod kafka;
pub mod offsets;
mod plain;
mod rebuild;
mod replay;
pub mod route;
pub mod script;
mod sink;
mod stats;
mod verify;

use std::sync::Arc;
use std::time::Duration;

pub use commands::{check, status};
pub use error::{Action, Error};
pub use rebuild::{Options as RebuildOptions, rebuild};
pub use replay::{From as ReplayFrom, Options as ReplayOptions, parse_time, replay};
use serde_json::Value;
use sluice_common::config::{Config, JsonSource, Problem};
use sluice_common::shutdown::CancellationToken;
use sluice_common::telemetry::{self, Health};
pub use verify::{Options as VerifyOptions, verify};

use crate::route::IndexTemplate;
use crate::script::Scripts;
use crate::sink::Prepared;
use crate::stats::SinkStats;

/// Compiles every sink's filter, transform and index template and reads its settings and
/// mappings files: everything that can be wrong before connecting. `only` picks one sink.
pub fn prepare(config: &Config, only: Option<&str>) -> Result<Vec<Prepared>, Error> {
    let mut problems = Vec::new();
    let mut prepared = Vec::new();
    for (i, sink) in config.sinks.iter().enumerate() {
        if only.is_some_and(|name| name != sink.name) {
            continue;
        }
        let scripts = Scripts::compile(sink, i).map_err(|p| problems.extend(p));
        let template = IndexTemplate::parse(&sink.elasticsearch.index).map_err(|message| {
            problems.push(Problem::new(
                format!("sinks[{i}].elasticsearch.index"),
                message,
                "use `{{ record.column }}` or `{{ metadata.table }}`-style fields",
            ));
        });
        let mut json = |field: &str, source: &Option<JsonSource>| -> Option<Value> {
            match source.as_ref()? {
                JsonSource::Inline(map) => Some(Value::Object(map.clone())),
                JsonSource::File { file } => {
                    let path = format!("sinks[{i}].elasticsearch.{field}.file");
                    let text = std::fs::read_to_string(file)
                        .map_err(|e| {
                            problems.push(Problem::new(
                                &path,
                                format!("cannot read {}: {e}", file.display()),
                                "point it at a readable JSON file",
                            ));
                        })
                        .ok()?;
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| {
                            problems.push(Problem::new(
                                &path,
                                format!("{} is not JSON: {e}", file.display()),
                                format!("fix the JSON {field} object in the file"),
                            ));
                        })
                        .ok()
                }
            }
        };
        let settings = json("settings", &sink.elasticsearch.settings);
        let mappings = json("mappings", &sink.elasticsearch.mappings);
        if let (Ok(scripts), Ok(template)) = (scripts, template) {
            prepared.push(Prepared {
                config: sink.clone(),
                scripts: Arc::new(scripts),
                template,
                settings,
                mappings,
            });
        }
    }
    if problems.is_empty() {
        Ok(prepared)
    } else {
        Err(Error::Config(problems))
    }
}

/// Runs the sinks (all, or only `sink`) until `shutdown` is cancelled. A sink that cannot go on
/// (credentials refused) stops every sink of the process and is returned as the error.
pub async fn run(
    config: Config,
    sink: Option<String>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let prepared = prepare(&config, sink.as_deref())?;
    if prepared.is_empty() {
        return Err(Error::Config(vec![Problem::new(
            "sinks",
            "no sink to run",
            "add a sink under `sinks`",
        )]));
    }
    let mut config = config;
    // The recorder first: the sinks' metric handles bind to it when they are made.
    telemetry::metrics_handle()?;
    let health = Health::new();
    health.set_unready("starting");
    let all_stats: Vec<Arc<SinkStats>> = prepared
        .iter()
        .map(|p| {
            Arc::new(SinkStats::new(
                &p.config.name,
                &config.topic_for(&p.config.table),
                &p.config.dlq_topic(),
            ))
        })
        .collect();
    let status = {
        let all_stats = all_stats.clone();
        Arc::new(move || Value::Array(all_stats.iter().map(|s| s.to_json()).collect()))
            as telemetry::StatusFn
    };
    let console = Arc::new(console::Console::new(
        config.clone(),
        all_stats.clone(),
        shutdown.child_token(),
    ));
    let bound = telemetry::serve_with(
        config
            .telemetry
            .listen(sluice_common::config::Process::Consumer),
        health.clone(),
        Some(status),
        console::routes(console.clone()),
        shutdown.child_token(),
    )
    .await?;
    console.bound(bound);
    // Where this process really listens: group members name it in their client id, so
    // `status` finds every process of a group.
    config.telemetry.consumer_listen = Some(bound);
    let config = Arc::new(config);

    let stop = shutdown.child_token();
    let mut sinks = tokio::task::JoinSet::new();
    let mut readiness = Vec::new();
    for (prepared, stats) in prepared.into_iter().zip(&all_stats) {
        readiness.push((stats.clone(), prepared.config.unready_after.get()));
        sinks.spawn(sink::run(
            config.clone(),
            prepared,
            stats.clone(),
            stop.clone(),
        ));
    }
    let watch = tokio::spawn(watch_readiness(health, readiness, stop.clone()));
    let sampler = tokio::spawn(stats::sample_every(all_stats.clone(), stop.clone()));
    let mut result = Ok(());
    while let Some(joined) = sinks.join_next().await {
        let outcome = joined.map_err(Error::from).and_then(|outcome| outcome);
        if let Err(error) = outcome.or_else(|e| match e {
            Error::Interrupted => Ok(()),
            other => Err(other),
        }) {
            // The first error is the process's, printed once by the caller; later ones (other
            // sinks stopping with it) only here.
            if result.is_ok() {
                result = Err(error);
            } else {
                tracing::error!(%error, "sink stopped");
            }
            stop.cancel();
        }
    }
    stop.cancel();
    let _ = watch.await;
    let _ = sampler.await;
    result
}

/// `/readyz` fails while some sink has lag and no bulk request succeeded for its
/// `unready_after`.
async fn watch_readiness(
    health: Health,
    sinks: Vec<(Arc<SinkStats>, Duration)>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stuck = sinks.iter().find(|(stats, after)| {
            let since =
                Duration::from_micros(u64::try_from(stats.since_last_success()).unwrap_or(0));
            stats.total_lag() > 0 && since > *after
        });
        match stuck {
            Some((stats, after)) => health.set_unready(format!(
                "sink {}: {} messages behind and no bulk request succeeded for {}",
                stats.sink,
                stats.total_lag(),
                humantime::format_duration(*after)
            )),
            None => health.set_ready(),
        }
    }
}
