//! Outcome counters of one sink, for `/status`, `/metrics`, readiness and the console.

pub mod recent;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sluice_common::telemetry::names;

use self::recent::Recent;
use crate::dead_letter::DeadLetter;
use crate::dlq::summary::Summary;

/// Reasons `/status` tells apart; later ones are counted together.
const DEAD_LETTER_REASONS: usize = 100;

/// What finally happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Indexed,
    Deleted,
    /// The index already held a newer version (or a newer event of the same batch replaced it).
    Stale,
    /// Skipped by `actions`, the filter, or a transform returning null.
    Filtered,
    DeadLettered,
    /// A tombstone: the delete before it did the work.
    Skipped,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Indexed => "indexed",
            Self::Deleted => "deleted",
            Self::Stale => "stale",
            Self::Filtered => "filtered",
            Self::DeadLettered => "dead_lettered",
            Self::Skipped => "skipped",
        }
    }

    pub const ALL: [Self; 6] = [
        Self::Indexed,
        Self::Deleted,
        Self::Stale,
        Self::Filtered,
        Self::DeadLettered,
        Self::Skipped,
    ];

    pub(crate) fn index(self) -> usize {
        match self {
            Self::Indexed => 0,
            Self::Deleted => 1,
            Self::Stale => 2,
            Self::Filtered => 3,
            Self::DeadLettered => 4,
            Self::Skipped => 5,
        }
    }
}

/// Metric handles, registered once (a lookup per event would cost more than the event).
struct Handles {
    outcomes: [metrics::Counter; 6],
    retries: metrics::Counter,
    bulk_seconds: metrics::Histogram,
    commit_to_indexed: metrics::Histogram,
    last_bulk_success: metrics::Gauge,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handles")
    }
}

#[derive(Debug)]
pub struct SinkStats {
    pub sink: String,
    pub topic: String,
    pub dlq_topic: String,
    handles: Handles,
    outcomes: [AtomicU64; 6],
    retried: AtomicU64,
    /// Unix micros of the last bulk request that succeeded (0: none yet).
    last_success: AtomicI64,
    /// Unix micros when the sink started.
    started: AtomicI64,
    /// Per partition: messages behind the end, from the client's statistics.
    lag: Mutex<BTreeMap<i32, i64>>,
    /// Per partition: last committed offset.
    committed: Mutex<BTreeMap<i32, i64>>,
    /// This process's dead letters since it started, by reason.
    dead_letters: Mutex<Summary>,
    /// Micros from a change's commit in Postgres to its bulk request's success, the latest.
    commit_to_indexed: AtomicI64,
    /// The outcome counters of the last minutes.
    recent: Mutex<Recent>,
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

impl SinkStats {
    pub fn new(sink: &str, topic: &str, dlq_topic: &str) -> Self {
        let label = sink.to_owned();
        let handles = Handles {
            outcomes: Outcome::ALL.map(|outcome| {
                metrics::counter!(names::CONSUMER_EVENTS, "sink" => label.clone(), "outcome" => outcome.label())
            }),
            retries: metrics::counter!(names::CONSUMER_RETRIES, "sink" => label.clone()),
            bulk_seconds: metrics::histogram!(names::CONSUMER_BULK_SECONDS, "sink" => label.clone()),
            commit_to_indexed: metrics::histogram!(names::CONSUMER_END_TO_END_SECONDS, "sink" => label.clone()),
            last_bulk_success: metrics::gauge!(names::CONSUMER_LAST_BULK_SUCCESS, "sink" => label),
        };
        // Until the first success: the sink's start, so "no success for N minutes" counts from it.
        handles.last_bulk_success.set(now_micros() as f64 / 1e6);
        Self {
            sink: sink.to_owned(),
            topic: topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            handles,
            outcomes: Default::default(),
            retried: AtomicU64::new(0),
            last_success: AtomicI64::new(0),
            started: AtomicI64::new(now_micros()),
            lag: Mutex::new(BTreeMap::new()),
            committed: Mutex::new(BTreeMap::new()),
            dead_letters: Mutex::new(Summary::bounded(DEAD_LETTER_REASONS)),
            commit_to_indexed: AtomicI64::new(-1),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Counts letters Kafka acknowledged, by reason.
    pub fn dead_lettered<'a>(&self, letters: impl IntoIterator<Item = &'a DeadLetter>) {
        let now = now_micros() / 1_000;
        if let Ok(mut summary) = self.dead_letters.lock() {
            for letter in letters {
                summary.add(
                    &letter.stage,
                    &letter.error_type,
                    &letter.reason,
                    letter.status,
                    Some(now),
                );
            }
        }
    }

    pub fn record(&self, outcome: Outcome, count: u64) {
        if count == 0 {
            return;
        }
        self.outcomes[outcome.index()].fetch_add(count, Ordering::Relaxed);
        self.handles.outcomes[outcome.index()].increment(count);
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome.index()].load(Ordering::Relaxed)
    }

    pub fn retried(&self, count: u64) {
        self.retried.fetch_add(count, Ordering::Relaxed);
        self.handles.retries.increment(count);
    }

    pub fn bulk_succeeded(&self, seconds: f64) {
        let now = now_micros();
        self.last_success.store(now, Ordering::Relaxed);
        self.handles.last_bulk_success.set(now as f64 / 1e6);
        self.handles.bulk_seconds.record(seconds);
    }

    pub fn indexed_after_commit(&self, seconds: f64) {
        self.handles.commit_to_indexed.record(seconds);
        #[allow(clippy::cast_possible_truncation)] // micros of a latency
        self.commit_to_indexed
            .store((seconds * 1e6) as i64, Ordering::Relaxed);
    }

    /// Adds the counters as they are now to the last minutes' samples.
    pub fn sample(&self) {
        let counts = Outcome::ALL.map(|o| self.count(o));
        if let Ok(mut recent) = self.recent.lock() {
            recent.record(now_micros() / 1_000_000, counts);
        }
    }

    pub fn set_lag(&self, partitions: BTreeMap<i32, i64>) {
        for (partition, lag) in &partitions {
            #[allow(clippy::cast_precision_loss)] // a gauge
            metrics::gauge!(names::CONSUMER_LAG, "sink" => self.sink.clone(), "partition" => partition.to_string())
                .set(*lag as f64);
        }
        if let Ok(mut lag) = self.lag.lock() {
            *lag = partitions;
        }
    }

    pub fn total_lag(&self) -> i64 {
        self.lag.lock().map_or(0, |lag| lag.values().sum())
    }

    pub fn committed(&self, partition: i32, offset: i64) {
        if let Ok(mut committed) = self.committed.lock() {
            committed.insert(partition, offset);
        }
    }

    /// Micros since the last successful bulk (or since start when none succeeded yet).
    pub fn since_last_success(&self) -> i64 {
        let last = self.last_success.load(Ordering::Relaxed);
        let since = if last == 0 {
            self.started.load(Ordering::Relaxed)
        } else {
            last
        };
        now_micros() - since
    }

    pub fn to_json(&self) -> Value {
        let outcomes: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| (o.label().to_owned(), json!(self.count(*o))))
            .collect();
        let lag = self.lag.lock().map(|l| l.clone()).unwrap_or_default();
        let committed = self.committed.lock().map(|c| c.clone()).unwrap_or_default();
        let partitions: serde_json::Map<String, Value> = lag
            .keys()
            .chain(committed.keys())
            .map(|p| {
                (
                    p.to_string(),
                    json!({"lag": lag.get(p), "committed": committed.get(p)}),
                )
            })
            .collect();
        let last = self.last_success.load(Ordering::Relaxed);
        let dead_letters = self
            .dead_letters
            .lock()
            .map(|s| s.to_json())
            .unwrap_or_default();
        json!({
            "sink": self.sink,
            "topic": self.topic,
            "dlq_topic": self.dlq_topic,
            "outcomes": outcomes,
            "retried": self.retried.load(Ordering::Relaxed),
            "last_success_micros": (last != 0).then_some(last),
            "lag": lag.values().sum::<i64>(),
            "partitions": partitions,
            "dead_letters": dead_letters,
            "commit_to_indexed_micros": Some(self.commit_to_indexed.load(Ordering::Relaxed))
                .filter(|m| *m >= 0),
            "recent": self.recent.lock().map(|r| r.to_json()).unwrap_or_default(),
        })
    }
}

/// Samples every sink's counters on the grid of [`recent::EVERY_SECONDS`] until `stop`.
pub async fn sample_every(
    sinks: Vec<std::sync::Arc<SinkStats>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        for sink in &sinks {
            sink.sample();
        }
        // To just past the next grid point, so each sample lands on its own point.
        let micros = now_micros().rem_euclid(recent::EVERY_SECONDS * 1_000_000);
        let wait = recent::EVERY_SECONDS * 1_000_000 - micros + 10_000;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_micros(u64::try_from(wait).unwrap_or(0))) => {}
        }
    }
}
