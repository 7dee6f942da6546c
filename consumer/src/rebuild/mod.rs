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

mod catchup;
mod plan;

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

    /// Fills `target` and swaps the alias once it has caught up (see [`catchup`]). On any
    /// failure the block is lifted and the alias stays on `from`.
    async fn fill_and_swap(
        &self,
        from: &str,
        target: &str,
        group: &str,
        blocked: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let prepared = self.fill_sink(target, group)?;
        let stats = Arc::new(SinkStats::new(
            group,
            &self.topic,
            &prepared.config.dlq_topic(),
        ));
        let stop = CancellationToken::new();
        let mut fill = tokio::spawn(crate::sink::run(
            self.config.clone(),
            prepared,
            stats.clone(),
            stop.clone(),
        ));
        let kafka = self.group_client(group)?;
        let mut catchup = Catchup::new(self.options.max_block);
        if blocked {
            let marks = self.marks(&kafka).await?;
            catchup.blocked(marks, Instant::now());
        }
        let mut progress = Progress::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fill_ended = None;
        let outcome: Result<(), Error> = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Err(Error::Interrupted),
                joined = &mut fill, if fill_ended.is_none() => {
                    let result = joined.map_err(Error::from).and_then(|r| r);
                    fill_ended = Some(());
                    break Err(match result {
                        Err(error) => error,
                        Ok(()) => Error::Command("the rebuild's consumer stopped".to_owned()),
                    });
                }
                _ = tick.tick() => {}
            }
            let positions = match self.positions(&kafka).await {
                Ok(positions) => positions,
                Err(error) => {
                    tracing::warn!(sink = %self.sink(), %error, "cannot read the rebuild's offsets; retrying");
                    continue;
                }
            };
            if progress.due() {
                eprintln!(
                    "{}",
                    progress.line(self.sink(), target, &catchup, &positions, &stats)
                );
            }
            let step = catchup.next(&positions, Instant::now());
            match step {
                Step::Wait => {}
                Step::Block => {
                    if let Err(error) = self
                        .call("block writes on the old index", || {
                            self.client.set_write_block(from, true)
                        })
                        .await
                    {
                        break Err(error);
                    }
                    match self.marks(&kafka).await {
                        Ok(marks) => {
                            eprintln!(
                                "rebuild {}: {from} is write-blocked (the live sink's writes wait); \
                                 reading up to {}",
                                self.sink(),
                                render_offsets(&marks)
                            );
                            catchup.blocked(marks, Instant::now());
                        }
                        Err(error) => {
                            // The phase is still Filling: the block is lifted below.
                            self.lift(from).await;
                            break Err(error);
                        }
                    }
                }
                Step::Swap => {
                    break self.swap(from, target).await.map(|()| catchup.swapped());
                }
                Step::Lift | Step::GiveUp => {
                    let give_up = step == Step::GiveUp;
                    self.lift(from).await;
                    catchup.lifted();
                    let left: i64 = catchup::behind(&positions, None).values().sum();
                    if give_up {
                        break Err(Error::Command(format!(
                            "the rebuild did not catch up within --max-block ({}) {} times \
                             ({left} events behind the last time); the alias stays on {from} \
                             and its writes flow again. Run the rebuild again to resume (with a \
                             longer --max-block, or when the table is quieter)",
                            humantime::format_duration(self.options.max_block),
                            catchup::MAX_ATTEMPTS
                        )));
                    }
                    eprintln!(
                        "rebuild {}: not caught up within --max-block; lifted the block on \
                         {from} and filling on ({left} events behind)",
                        self.sink()
                    );
                }
            }
        };
        // The live sink must never be left blocked by a run that stops here without a swap.
        if outcome.is_err() && matches!(catchup.phase(), Phase::Blocked { .. }) {
            self.lift(from).await;
        }
        stop.cancel();
        if fill_ended.is_none() {
            match fill.await {
                Ok(Err(error)) if outcome.is_ok() => {
                    tracing::warn!(sink = %self.sink(), %error, "the rebuild's consumer ended with an error after the swap");
                }
                _ => {}
            }
        }
        outcome.map_err(|error| {
            let why = match &error {
                Error::Interrupted => "interrupted".to_owned(),
                other => other.to_string(),
            };
            Error::Command(format!(
                "rebuild of {} failed: {why}; the alias still serves {from} (not blocked); run the \
                 same command again to resume filling {target}, or with --abort to delete it",
                self.alias
            ))
        })
    }

    /// The topic's ends now: called only once the block is acknowledged.
    async fn marks(
        &self,
        kafka: &Arc<BaseConsumer>,
    ) -> Result<std::collections::BTreeMap<i32, i64>, Error> {
        Ok(self
            .positions(kafka)
            .await?
            .into_iter()
            .map(|(p, pos)| (p, pos.end))
            .collect())
    }

    async fn swap(&self, from: &str, target: &str) -> Result<(), Error> {
        self.restore_refresh(target).await?;
        self.call("refresh the new index", || self.client.refresh(target))
            .await?;
        let swapped = self
            .call("swap the alias", || {
                self.client.swap_alias(&self.alias, from, target)
            })
            .await;
        if let Err(error) = swapped {
            // An answer lost after the cluster applied it: the alias tells.
            let serving = self.client.alias_indices(&self.alias).await.ok().flatten();
            if serving.as_deref() != Some(&[target.to_owned()][..]) {
                return Err(error);
            }
        }
        eprintln!(
            "rebuild {}: {} now serves {target}",
            self.sink(),
            self.alias
        );
        Ok(())
    }

    /// Gives the new index its refresh interval back if it was filled without refreshes (an
    /// index created by an older version, or resumed after this step, is left as it is).
    async fn restore_refresh(&self, target: &str) -> Result<(), Error> {
        let paused = self
            .call("read the new index", || self.client.indices(target))
            .await?
            .iter()
            .any(|info| info.refresh_interval.as_deref() == Some(plan::FILL_REFRESH_INTERVAL));
        if !paused || self.refresh_interval == plan::FILL_REFRESH_INTERVAL {
            return Ok(());
        }
        let settings = serde_json::json!({ "index.refresh_interval": self.refresh_interval });
        self.call("set the new index's refresh interval", || {
            self.client.put_settings(target, &settings)
        })
        .await
    }

    /// Lifts the write block on `index`, retrying until the cluster takes it. A failure is
    /// printed with what to run: this is the live sink's way out.
    async fn lift(&self, index: &str) {
        if let Err(error) = self
            .call("lift the write block", || {
                self.client.set_write_block(index, false)
            })
            .await
        {
            eprintln!(
                "rebuild {}: could not lift the write block on {index}: {error}; the live sink \
                 waits until it is lifted: run `sluice-consumer rebuild {} --abort`, or \
                 PUT /{index}/_settings {{\"index.blocks.write\": null}}",
                self.sink(),
                self.sink()
            );
        }
    }

    /// After the swap: the block lifted, the new index marked done, old versions beyond
    /// `--keep-old` deleted, the rebuild group deleted.
    async fn finish(&self, from: &str, target: &str, group: &str) -> Result<(), Error> {
        self.call("lift the write block", || {
            self.client.set_write_block(from, false)
        })
        .await?;
        let observed = self.observe().await?;
        let mut meta: Map<String, Value> = Map::new();
        if let Some(info) = self
            .call("read the new index", || self.client.indices(target))
            .await?
            .into_iter()
            .next()
        {
            meta = info.meta;
        }
        meta.insert(META_KEY.to_owned(), self.meta(from, group, State::Done));
        self.call("mark the rebuild done", || {
            self.client.put_meta(target, &meta)
        })
        .await?;
        let doomed = plan::to_delete(&observed, target, self.options.keep_old);
        for index in &doomed {
            self.call("delete an old version", || self.client.delete_index(index))
                .await?;
        }
        if let Err(error) = self.delete_group(group).await {
            tracing::warn!(sink = %self.sink(), group, %error, "could not delete the rebuild's consumer group; it holds no state that matters");
        }
        let documents = self.client.count(&self.alias).await.ok();
        let mut kept: Vec<&str> = observed
            .versions
            .iter()
            .filter(|v| v.name != target && !doomed.contains(&v.name))
            .map(|v| v.name.as_str())
            .collect();
        kept.sort_unstable();
        println!(
            "rebuild {}: {} serves {target}{}; kept {}; deleted {}",
            self.sink(),
            self.alias,
            documents.map_or(String::new(), |n| format!(" ({n} documents)")),
            list_or_none(&kept),
            list_or_none(&doomed.iter().map(String::as_str).collect::<Vec<_>>()),
        );
        Ok(())
    }

    async fn delete_group(&self, group: &str) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> =
            crate::kafka::client_config(&self.config, &[])
                .create()
                .map_err(Error::kafka("creating an admin client"))?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .delete_groups(&[group], &options)
            .await
            .map_err(Error::kafka(format!("deleting group {group}")))?;
        for result in results {
            if let Err((name, code)) = result
                && code != rdkafka::types::RDKafkaErrorCode::GroupIdNotFound
            {
                return Err(Error::Command(format!("deleting group {name}: {code}")));
            }
        }
        Ok(())
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

    /// `--dry-run`: what a run would do, from what the cluster and Kafka hold now.
    async fn plan(&self, observed: &Observed, start: &Start) -> Result<String, Error> {
        let sink = self.sink();
        let alias = &self.alias;
        let mut out = String::new();
        let (from, target, group) = match start {
            Start::Fresh { from, target } => {
                let source = |given: &Option<PathBuf>, sink_has: bool, what: &str| match given {
                    Some(path) => format!("{what} from {}", path.display()),
                    None if sink_has => format!("the sink's {what}"),
                    None => format!("default {what}"),
                };
                let _ = writeln!(
                    out,
                    "rebuild plan for sink {sink} (alias {alias} → {from}):\n  1. create {target} \
                     with {} and {}, without refreshes while it fills",
                    source(
                        &self.options.settings,
                        self.prepared.settings.is_some(),
                        "settings"
                    ),
                    source(
                        &self.options.mappings,
                        self.prepared.mappings.is_some(),
                        "mappings"
                    ),
                );
                (from.clone(), target.clone(), self.group_for(target))
            }
            Start::Resume {
                from,
                target,
                group,
                blocked,
            } => {
                let _ = writeln!(
                    out,
                    "rebuild plan for sink {sink} (alias {alias} → {from}):\n  1. resume the \
                     interrupted rebuild into {target}{}",
                    if *blocked {
                        format!(" ({from} is write-blocked: the live sink waits)")
                    } else {
                        String::new()
                    }
                );
                (from.clone(), target.clone(), group.clone())
            }
            Start::Finish {
                from,
                target,
                group,
            } => {
                let _ = writeln!(
                    out,
                    "rebuild plan for sink {sink}: {alias} already serves {target}: lift the \
                     block on {from}, mark the rebuild done, delete group {group}"
                );
                return Ok(out);
            }
        };
        let kafka = self.group_client(&group)?;
        let positions = self.positions(&kafka).await?;
        let behind = catchup::behind(&positions, None);
        let _ = writeln!(
            out,
            "  2. fill it from {} of {} ({} partitions, {} messages to read) with group \
             {group}: the sink's actions, filter, transform and versions",
            if positions.values().any(|p| p.committed.is_some()) {
                "the committed offsets"
            } else {
                "the start"
            },
            self.topic,
            positions.len(),
            behind.values().sum::<i64>(),
        );
        let _ = writeln!(
            out,
            "  3. when at most {} events are left: block writes on {from} (the live sink retries \
             them), read up to each partition's end as of then (at most --max-block {})",
            catchup::CATCH_UP_LAG,
            humantime::format_duration(self.options.max_block)
        );
        let _ = writeln!(
            out,
            "  4. give {target} its refresh interval ({}), refresh it, swap {alias} from {from} \
             to {target} in one _aliases request, lift the block on {from}",
            match &self.refresh_interval {
                Value::Null => "the default".to_owned(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            }
        );
        let mut after = observed.clone();
        after.serving = Some(vec![target.clone()]);
        if let Some(n) = plan::version_of(alias, &target) {
            after.versions.push(Version {
                name: target.clone(),
                number: n,
                meta: None,
                write_blocked: false,
            });
        }
        let doomed = plan::to_delete(&after, &target, self.options.keep_old);
        let _ = writeln!(
            out,
            "  5. keep {} older version(s) (--keep-old {}); delete {}",
            self.options.keep_old,
            self.options.keep_old,
            list_or_none(&doomed.iter().map(String::as_str).collect::<Vec<_>>())
        );
        let _ = writeln!(out, "nothing was changed (--dry-run)");
        Ok(out)
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn render_offsets(offsets: &std::collections::BTreeMap<i32, i64>) -> String {
    offsets
        .iter()
        .map(|(p, o)| format!("p{p} {o}"))
        .collect::<Vec<_>>()
        .join(", ")
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

/// Progress on stderr: documents, lag per partition, rate and ETA.
struct Progress {
    started: Instant,
    last: Option<Instant>,
    first_done: Option<i64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last: None,
            first_done: None,
        }
    }

    fn due(&self) -> bool {
        self.last.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY)
    }

    fn line(
        &mut self,
        sink: &str,
        target: &str,
        catchup: &Catchup,
        positions: &Positions,
        stats: &SinkStats,
    ) -> String {
        self.last = Some(Instant::now());
        let marks = match catchup.phase() {
            Phase::Blocked { marks, .. } => Some(marks),
            _ => None,
        };
        let behind = catchup::behind(positions, marks);
        let left: i64 = behind.values().sum();
        let done: i64 = positions
            .values()
            .map(|p| p.committed.unwrap_or(p.earliest))
            .sum();
        let first = *self.first_done.get_or_insert(done);
        let seconds = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // a rate
        let rate = if seconds > 0.0 {
            (done - first) as f64 / seconds
        } else {
            0.0
        };
        let eta = if rate >= 1.0 {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_sign_loss,
                clippy::cast_possible_truncation
            )]
            let secs = (left as f64 / rate).ceil() as u64;
            format!(
                "ETA {}",
                humantime::format_duration(Duration::from_secs(secs))
            )
        } else {
            "ETA unknown".to_owned()
        };
        let phase = match catchup.phase() {
            Phase::Filling => "filling",
            Phase::Blocked { .. } => "catching up (old index write-blocked)",
            Phase::Swapped => "swapped",
        };
        // Events, not a document count: the index fills without refreshes, so `_count` would
        // lag behind (and counting would keep its shards from going search-idle).
        format!(
            "rebuild {sink}: {phase} {target}: {done} events applied, lag {left} ({}), {rate:.0} \
             events/s, {eta}; this run: indexed {}, deleted {}, dead-lettered {}",
            render_offsets(&behind),
            stats.count(Outcome::Indexed),
            stats.count(Outcome::Deleted),
            stats.count(Outcome::DeadLettered),
        )
    }
}

/// For `status`: the sink's unfinished rebuild, if any, with its group's lag.
pub(crate) async fn describe(config: &Config, sink: &SinkConfig) -> Option<String> {
    let template = IndexTemplate::parse(&sink.elasticsearch.index).ok()?;
    let alias = template.fixed()?;
    let client = Client::new(&sink.elasticsearch).ok()?;
    let versions = match client.indices(&format!("{alias}-v*")).await {
        Ok(versions) => versions,
        Err(error) => return Some(format!("  rebuild: unknown ({error})\n")),
    };
    let blocked: Vec<&str> = versions
        .iter()
        .filter(|v| v.write_blocked)
        .map(|v| v.name.as_str())
        .collect();
    let open = versions.iter().find_map(|info| {
        let meta: Meta = serde_json::from_value(info.meta.get(META_KEY)?.clone()).ok()?;
        (meta.state == State::Filling && meta.sink == sink.name)
            .then_some((info.name.clone(), meta))
    })?;
    let (target, meta) = open;
    let topic = config.topic_for(&sink.table);
    let mut out = format!(
        "  rebuild: into {target} from {} (group {}){}\n",
        meta.from,
        meta.group,
        if blocked.contains(&meta.from.as_str()) {
            format!(
                "; {} is write-blocked: the live sink waits (a rebuild runs, or was killed: \
                 run `rebuild {}` again or `--abort`)",
                meta.from, sink.name
            )
        } else {
            String::new()
        }
    );
    match crate::commands::lag(config, &meta.group, &topic).await {
        Ok(rows) => {
            let total: i64 = rows.iter().map(|r| r.lag).sum();
            let applied: i64 = rows.iter().filter_map(|r| r.committed).sum();
            let parts: Vec<String> = rows
                .iter()
                .map(|r| format!("p{} {}", r.partition, r.lag))
                .collect();
            let _ = writeln!(
                out,
                "    {applied} events applied, lag {total} ({})",
                parts.join(", ")
            );
        }
        Err(error) => {
            let _ = writeln!(out, "    lag unknown ({error})");
        }
    }
    Some(out)
}
