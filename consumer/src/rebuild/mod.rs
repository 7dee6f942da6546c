//! `sluice-consumer rebuild <sink>`: a new index behind the sink's alias, filled from the start of
//! the topic by the sink's own pipeline, swapped in without a moment where a search misses a
//! committed change or a write lands only in the old index.
//!
//! ```text
//!  live sink ──_bulk──▶ alias ──▶ {alias}-v1                 searches: v1
//!  rebuild   ──_bulk──────────▶ {alias}-v2   (group {sink}.rebuild-v2, from offset 0)
//!     … lag small …
//!  block writes on v1 ─▶ live sink's items: 403 cluster_block_exception → retried, not committed
//!  marks = the topic's ends, read after the block is acknowledged
//!  rebuild commits every partition up to its mark ─▶ refresh v2
//!  POST _aliases {remove v1, add v2 (write index)}            searches: v2
//!  lift the block on v1 ─▶ the live sink's retries land in v2
//! ```
//!
//! Why it is safe is in [`catchup`]. The state lives in the cluster and in Kafka ([`plan`]):
//! a re-run after any crash resumes from the group's committed offsets, and a run that finds
//! the old index blocked takes new marks (the block is still in effect, so they are valid) and
//! goes on; `--abort` lifts the block and deletes the unfinished index. A run that fails or is
//! stopped lifts its block before it exits and leaves the alias where it was.
//!
//! Here: the command, its checks, creating the index and `--abort`; [`swap`] fills and swaps;
//! [`report`] prints the `--dry-run` plan and the `status` lines.

mod catchup;
mod plan;
mod report;
mod swap;

pub(crate) use self::report::describe;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use serde_json::{Map, Value};
use sluice_common::config::{Config, Problem, SinkConfig};
use sluice_common::retry::{self, Failure};
use tokio_util::sync::CancellationToken;

use self::catchup::{Catchup, Phase, Position, Positions, Step};
use self::plan::{META_KEY, Meta, Observed, Start, State, Version};
use crate::elastic::retry::{Classify, SETUP_POLICY};
use crate::elastic::{Client, ElasticError};
use crate::error::Error;
use crate::route::IndexTemplate;
use crate::sink::Prepared;
use crate::stats::{Outcome, SinkStats};

/// How often the rebuild group's offsets are read.
const POLL: Duration = Duration::from_millis(500);
/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What `rebuild` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub sink: String,
    /// Index settings of the new index (JSON file), instead of the sink's.
    pub settings: Option<PathBuf>,
    /// Mappings of the new index (JSON file), instead of the sink's.
    pub mappings: Option<PathBuf>,
    /// Older versions kept after the swap.
    pub keep_old: usize,
    pub dry_run: bool,
    /// Undo an interrupted rebuild: lift the block, delete the unfinished index and group.
    pub abort: bool,
    /// Longest the old index stays write-blocked waiting for the rebuild to reach the marks.
    pub max_block: Duration,
    /// Documents per bulk request of the fill, instead of [`plan::fill_batch_size`]'s default.
    pub batch_size: Option<usize>,
}

/// Everything about the sink the rebuild needs, checked before connecting.
struct Rebuild {
    config: Arc<Config>,
    prepared: Prepared,
    alias: String,
    topic: String,
    /// The new index's settings: the sink's (or `--settings`) without refreshes while it fills.
    settings: Value,
    /// The refresh interval given back to the new index before the swap (`null`: the default).
    refresh_interval: Value,
    mappings: Option<Value>,
    client: Client,
    options: Options,
}

/// Runs a rebuild (or its dry run, or its abort) of one sink's index.
pub async fn rebuild(
    config: Config,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let rebuild = Rebuild::prepare(config, options)?;
    let observed = rebuild.observe().await?;
    if rebuild.options.abort {
        return rebuild.abort(&observed).await;
    }
    let start = plan::start(&observed, &rebuild.prepared.config.name).map_err(Error::Command)?;
    if rebuild.options.dry_run {
        print!("{}", rebuild.plan(&observed, &start).await?);
        return Ok(());
    }
    let (from, target, group, blocked) = match start {
        Start::Fresh { from, target } => {
            let group = rebuild.group_for(&target);
            rebuild.create(&from, &target, &group).await?;
            (from, target, group, false)
        }
        Start::Resume {
            from,
            target,
            group,
            blocked,
        } => {
            let ignored =
                if rebuild.options.settings.is_some() || rebuild.options.mappings.is_some() {
                    " (--settings/--mappings ignored: the index exists; --abort to start over)"
                } else {
                    ""
                };
            eprintln!(
                "rebuild {}: resuming the rebuild into {target} (group {group}){}{ignored}",
                rebuild.prepared.config.name,
                if blocked {
                    format!(", {from} is write-blocked")
                } else {
                    String::new()
                },
            );
            (from, target, group, blocked)
        }
        Start::Finish {
            from,
            target,
            group,
        } => {
            eprintln!(
                "rebuild {}: {} already serves {target}; finishing",
                rebuild.prepared.config.name, rebuild.alias
            );
            return rebuild.finish(&from, &target, &group).await;
        }
    };
    rebuild
        .fill_and_swap(&from, &target, &group, blocked, &shutdown)
        .await?;
    rebuild.finish(&from, &target, &group).await
}

impl Rebuild {
    /// The sink, its alias, and the settings and mappings of the new index: bad input is a
    /// configuration error (exit 2) before anything is asked of a server.
    fn prepare(config: Config, options: Options) -> Result<Self, Error> {
        let Some(prepared) = crate::prepare(&config, Some(&options.sink))?.pop() else {
            return Err(Error::Config(vec![Problem::new(
                "<sink>",
                format!("no sink named `{}` in the config", options.sink),
                "name a sink of the config",
            )]));
        };
        let Some(alias) = prepared.template.fixed().map(str::to_owned) else {
            return Err(Error::Config(vec![Problem::new(
                format!("sink {}: elasticsearch.index", options.sink),
                format!(
                    "`{}` is an index template: rebuild swaps one alias, and templated sinks \
                     write concrete indices without aliases",
                    prepared.config.elasticsearch.index
                ),
                "rebuild such indices by hand (see docs/operations.md), or use a fixed index name",
            )]));
        };
        let mut problems = Vec::new();
        let settings = read_json("--settings", options.settings.as_deref(), &mut problems)
            .or_else(|| prepared.settings.clone());
        let (settings, refresh_interval) = plan::fill_settings(settings.as_ref());
        let mappings = read_json("--mappings", options.mappings.as_deref(), &mut problems)
            .or_else(|| prepared.mappings.clone());
        if !problems.is_empty() {
            return Err(Error::Config(problems));
        }
        let client =
            Client::new(&prepared.config.elasticsearch).map_err(|source| Error::Elastic {
                sink: options.sink.clone(),
                source,
            })?;
        Ok(Self {
            topic: config.topic_for(&prepared.config.table),
            config: Arc::new(config),
            prepared,
            alias,
            settings,
            refresh_interval,
            mappings,
            client,
            options,
        })
    }

    fn sink(&self) -> &str {
        &self.prepared.config.name
    }

    fn elastic(&self, source: ElasticError) -> Error {
        Error::Elastic {
            sink: self.sink().to_owned(),
            source,
        }
    }

    /// The rebuild's group: its own, named after the index it fills, so a later rebuild starts
    /// from the beginning again.
    fn group_for(&self, target: &str) -> String {
        let suffix = target.strip_prefix(&self.alias).unwrap_or(target);
        format!("{}.rebuild{suffix}", self.sink())
    }

    /// One cluster call, retried while the cluster is unreachable or busy.
    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ElasticError>>,
    {
        let mut classify = Classify::setup(self.sink(), what);
        // Not interruptible: lifting a block must finish even while the command stops.
        let never = CancellationToken::new();
        retry::retry(SETUP_POLICY, &never, op, |error, attempt| {
            classify.decide(error, attempt)
        })
        .await
        .map_err(|failure| match failure {
            Failure::GaveUp(source) | Failure::Interrupted(source) => self.elastic(source),
        })
    }

    async fn observe(&self) -> Result<Observed, Error> {
        let alias = self.alias.as_str();
        let serving = self
            .call("read the alias", || self.client.alias_indices(alias))
            .await?;
        let index_named_like_alias = serving.is_none()
            && self
                .call("look for the index", || self.client.exists(alias))
                .await?;
        let pattern = format!("{alias}-v*");
        let versions = self
            .call("list the index versions", || self.client.indices(&pattern))
            .await?
            .into_iter()
            .filter_map(|info| {
                let number = plan::version_of(alias, &info.name)?;
                let meta = info
                    .meta
                    .get(META_KEY)
                    .and_then(|m| serde_json::from_value::<Meta>(m.clone()).ok());
                Some(Version {
                    name: info.name,
                    number,
                    meta,
                    write_blocked: info.write_blocked,
                })
            })
            .collect();
        Ok(Observed {
            alias: alias.to_owned(),
            serving,
            index_named_like_alias,
            versions,
        })
    }

    fn meta(&self, from: &str, group: &str, state: State) -> Value {
        serde_json::to_value(Meta {
            sink: self.sink().to_owned(),
            from: from.to_owned(),
            group: group.to_owned(),
            state,
        })
        .unwrap_or(Value::Null)
    }

    async fn create(&self, from: &str, target: &str, group: &str) -> Result<(), Error> {
        let meta = self.meta(from, group, State::Filling);
        self.call("create the new index", || {
            self.client.create_index(
                target,
                Some(&self.settings),
                self.mappings.as_ref(),
                (META_KEY, meta.clone()),
            )
        })
        .await?;
        eprintln!(
            "rebuild {}: created {target}; filling it from the start of {} (group {group})",
            self.sink(),
            self.topic
        );
        Ok(())
    }

    /// The rebuild group's positions on the topic.
    async fn positions(&self, consumer: &Arc<BaseConsumer>) -> Result<Positions, Error> {
        let (consumer, topic) = (consumer.clone(), self.topic.clone());
        let rows =
            tokio::task::spawn_blocking(move || crate::commands::read_lag(&consumer, &topic))
                .await??;
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    row.partition,
                    Position {
                        committed: row.committed,
                        earliest: row.earliest,
                        end: row.end,
                    },
                )
            })
            .collect())
    }

    fn group_client(&self, group: &str) -> Result<Arc<BaseConsumer>, Error> {
        let consumer: BaseConsumer = crate::kafka::client_config(
            &self.config,
            &[
                ("group.id", group.to_owned()),
                ("enable.auto.commit", "false".to_owned()),
            ],
        )
        .create()
        .map_err(Error::kafka("creating a group client"))?;
        Ok(Arc::new(consumer))
    }

    /// The sink as the rebuild runs it: its own group, writing into `target`, dead letters to
    /// the sink's topic (named after the rebuild group in their `sluice.dlq.sink` header).
    fn fill_sink(&self, target: &str, group: &str) -> Result<Prepared, Error> {
        let mut config: SinkConfig = self.prepared.config.clone();
        config.dlq_topic = Some(config.dlq_topic());
        config.name = group.to_owned();
        config.elasticsearch.index = target.to_owned();
        config.elasticsearch.batch_size =
            plan::fill_batch_size(config.elasticsearch.batch_size, self.options.batch_size);
        let template = IndexTemplate::parse(target)
            .map_err(|message| Error::Config(vec![Problem::new("<target index>", message, "")]))?;
        Ok(Prepared {
            config,
            scripts: self.prepared.scripts.clone(),
            template,
            settings: None,
            mappings: None,
        })
    }
    /// `--abort`: lifts a block on the served index, deletes the unfinished index and its group.
    async fn abort(&self, observed: &Observed) -> Result<(), Error> {
        let sink = self.sink();
        match plan::start(observed, sink) {
            Ok(Start::Finish {
                from,
                target,
                group,
            }) => {
                eprintln!(
                    "rebuild {sink}: {} already serves {target}: nothing to undo; finishing instead",
                    self.alias
                );
                self.finish(&from, &target, &group).await
            }
            Ok(Start::Resume {
                from,
                target,
                group,
                ..
            }) => {
                self.call("lift the write block", || {
                    self.client.set_write_block(&from, false)
                })
                .await?;
                self.call("delete the unfinished index", || {
                    self.client.delete_index(&target)
                })
                .await?;
                if let Err(error) = self.delete_group(&group).await {
                    tracing::warn!(sink, group, %error, "could not delete the rebuild's consumer group");
                }
                println!(
                    "rebuild {sink}: aborted: deleted {target} and group {group}; {} serves {from}, \
                     writes to it are not blocked",
                    self.alias
                );
                Ok(())
            }
            Ok(Start::Fresh { from, .. }) => {
                let blocked = observed
                    .versions
                    .iter()
                    .any(|v| v.name == from && v.write_blocked);
                if blocked {
                    self.call("lift the write block", || {
                        self.client.set_write_block(&from, false)
                    })
                    .await?;
                    println!(
                        "rebuild {sink}: no unfinished rebuild; lifted the write block on {from}"
                    );
                } else {
                    println!(
                        "rebuild {sink}: nothing to abort: no unfinished rebuild of {}",
                        self.alias
                    );
                }
                Ok(())
            }
            Err(reason) => Err(Error::Command(reason)),
        }
    }
}

/// A JSON object file given on the command line; problems name the flag.
fn read_json(
    flag: &str,
    path: Option<&std::path::Path>,
    problems: &mut Vec<Problem>,
) -> Option<Value> {
    let path = path?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| {
            problems.push(Problem::new(
                flag,
                format!("cannot read {}: {e}", path.display()),
                "point it at a readable JSON file",
            ));
        })
        .ok()?;
    match serde_json::from_str::<Value>(&text) {
        Ok(value @ Value::Object(_)) => Some(value),
        Ok(_) => {
            problems.push(Problem::new(
                flag,
                format!("{} is not a JSON object", path.display()),
                "write the object you would send as the index's settings or mappings",
            ));
            None
        }
        Err(e) => {
            problems.push(Problem::new(
                flag,
                format!("{} is not JSON: {e}", path.display()),
                "fix the JSON in the file",
            ));
            None
        }
    }
}
