//! Backfills: every existing row of a table as a `READ` event, while the stream keeps flowing.
//!
//! sluice uses watermarks (the DBLog algorithm). A backfill reads its table in chunks by primary
//! key (keyset pagination). Each chunk is framed by two transactional logical messages, written
//! with `pg_logical_emit_message(true, 'sluice', …)`, so they appear in the replication stream at
//! their commit positions:
//!
//! ```text
//!   worker (SQL):    LOW ── SELECT chunk (keys > last, LIMIT n) ── HIGH
//!   WAL / stream:  … LOW ── change k7 ── change k2 ── HIGH ── …
//!                       └──── window: changed keys {k7, k2} ──┘
//!                                                             at HIGH: emit chunk − {k7, k2}
//! ```
//!
//! The chunk's snapshot is taken after LOW committed (and after every transaction that committed
//! before LOW became visible: see `worker::settled_snapshot`) and before HIGH began, so every
//! change that committed between the two is in the window, and every change outside it is either
//! older than the chunk (before LOW: the chunk already shows it) or newer (after HIGH: it
//! follows the chunk on the topic, with a higher version). A row the window touched is dropped
//! from the chunk: its live event carries its state. The rest are published at HIGH, as part of
//! HIGH's transaction, versioned with HIGH's commit LSN, so a consumer orders them exactly like
//! live changes.
//!
//! Who does what:
//! * the stream (`stream.rs`) calls [`Backfills::on_low`], [`Backfills::on_changes`] and
//!   [`Backfills::on_high`] as it reads the messages, and publishes what `on_high` returns;
//! * a worker per table (`worker.rs`) registers a chunk before writing LOW, reads it, hands the
//!   rows over with [`Backfills::fill`], writes HIGH, and waits for the [`Outcome`];
//! * progress (last key, rows done) lives in the control table `sluice.backfills`
//!   (`control.rs`), and advances only once Kafka acknowledged the chunk's events.
//!
//! A window is only trusted when this stream session saw both of its ends. Watermarks carry a
//! random token of the process, so messages re-delivered after a restart never match a chunk in
//! memory, and a reconnect closes every open window ([`Backfills::session_started`]): the
//! chunks are then [`Outcome::Discarded`] at HIGH and read again from the same key.

pub mod control;
mod worker;

/// The checks `sluice-producer backfill` runs before queueing anything.
pub(crate) mod worker_checks {
    pub use super::worker::{estimate, key_columns, validate_condition};
}

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{Value as Json, json};
use sluice_proto::v1::Value;
use tokio::sync::{Notify, oneshot};
pub use worker::manage;

use crate::encode::RelationInfo;

/// Identifies one chunk of one backfill, as its watermarks carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkId {
    /// Random per producer process: watermarks of another process never match.
    pub run: u64,
    /// `sluice.backfills.id`.
    pub backfill: i64,
    /// Sequence number of the chunk within this process's run of the backfill.
    pub chunk: u64,
}

/// What a logical message with the `sluice` prefix says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Heartbeat,
    Low(ChunkId),
    High(ChunkId),
    /// `sluice-producer backfill` queued backfill `id` in the control table.
    Requested(i64),
    /// Something this version does not know (a newer producer's message): ignored.
    Other,
}

impl Signal {
    pub fn parse(content: &[u8]) -> Self {
        let Ok(json) = serde_json::from_slice::<Json>(content) else {
            return Self::Other;
        };
        if json["heartbeat"] == json!(true) {
            return Self::Heartbeat;
        }
        if let Some(id) = json["backfill_requested"].as_i64() {
            return Self::Requested(id);
        }
        let id = match (
            json["run"].as_u64(),
            json["backfill"].as_i64(),
            json["chunk"].as_u64(),
        ) {
            (Some(run), Some(backfill), Some(chunk)) => ChunkId {
                run,
                backfill,
                chunk,
            },
            _ => return Self::Other,
        };
        match json["watermark"].as_str() {
            Some("low") => Self::Low(id),
            Some("high") => Self::High(id),
            _ => Self::Other,
        }
    }
}

/// The content of a watermark message.
pub fn watermark(kind: &str, id: ChunkId) -> String {
    json!({"watermark": kind, "run": id.run, "backfill": id.backfill, "chunk": id.chunk})
        .to_string()
}

/// The content of the message `sluice-producer backfill` writes.
pub fn requested(id: i64) -> String {
    json!({ "backfill_requested": id }).to_string()
}

/// A row read by a backfill: its Kafka key and its typed values, column by column.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    pub key: Vec<u8>,
    pub values: Vec<Value>,
}

/// The rows of one chunk and how to encode them.
#[derive(Debug)]
pub struct Chunk {
    pub relation: Arc<RelationInfo>,
    /// `schema.table`.
    pub table: String,
    pub rows: Vec<ChunkRow>,
}

/// What the stream did with a chunk at its high watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `rows` rows were published in the high watermark's transaction, whose commit record is at
    /// `commit_lsn`: once the confirmable LSN passes it, Kafka has them all.
    Published { commit_lsn: u64, rows: usize },
    /// This stream session did not see the whole window: read the chunk again.
    Discarded,
}

#[derive(Debug)]
struct Pending {
    table: String,
    window_open: bool,
    /// A TRUNCATE inside the window: no row of the chunk may be published.
    truncated: bool,
    changed: HashSet<Vec<u8>>,
    chunk: Option<Chunk>,
    done: Option<oneshot::Sender<Outcome>>,
}

/// Live progress of one backfill in this process, for `/status`.
#[derive(Debug, Clone)]
struct Progress {
    table: String,
    condition: Option<String>,
    state: &'static str,
    rows_done: u64,
    rows_total: Option<u64>,
    /// Rows read by this process, and since when: the rate.
    rows_this_run: u64,
    started: Instant,
    error: Option<String>,
}

/// Shared between the stream and the backfill workers.
#[derive(Debug)]
pub struct Backfills {
    run: u64,
    pending: Mutex<HashMap<ChunkId, Pending>>,
    /// Windows currently open; the stream skips all bookkeeping while it is 0.
    open_windows: AtomicUsize,
    streaming: AtomicBool,
    streaming_changed: Notify,
    /// Wakes the manager: a backfill was requested.
    wake: Notify,
    progress: Mutex<BTreeMap<i64, Progress>>,
}

impl Default for Backfills {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a few plain assignments: a panic elsewhere cannot leave
    // the data half-changed.
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Backfills {
    pub fn new() -> Self {
        Self {
            run: rand::random::<u64>() >> 1,
            pending: Mutex::new(HashMap::new()),
            open_windows: AtomicUsize::new(0),
            streaming: AtomicBool::new(false),
            streaming_changed: Notify::new(),
            wake: Notify::new(),
            progress: Mutex::new(BTreeMap::new()),
        }
    }

    /// This process's token in watermarks.
    pub fn run_token(&self) -> u64 {
        self.run
    }

    // ---- the stream's side ----

    /// A new stream session starts: windows opened by the previous one cannot be trusted (the
    /// stream resumes from the confirmed LSN, which may lie inside a window).
    pub fn session_started(&self) {
        let mut pending = lock(&self.pending);
        for p in pending.values_mut() {
            p.window_open = false;
            p.truncated = false;
            p.changed.clear();
        }
        self.open_windows.store(0, Ordering::Release);
    }

    /// Marks whether a stream session is running; the manager starts backfills only once the
    /// first one streams (the slot must exist before the first watermark).
    pub fn set_streaming(&self, streaming: bool) {
        self.streaming.store(streaming, Ordering::Release);
        self.streaming_changed.notify_waiters();
    }

    pub fn on_low(&self, id: ChunkId) {
        if id.run != self.run {
            return;
        }
        let mut pending = lock(&self.pending);
        if let Some(p) = pending.get_mut(&id)
            && !p.window_open
        {
            p.window_open = true;
            self.open_windows.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// True while any window is open: only then do changes need to be noted.
    pub fn watching(&self) -> bool {
        self.open_windows.load(Ordering::Acquire) > 0
    }

    /// The stream changed these keys of `table` (every key a change was published under,
    /// old keys of key-changing updates included).
    pub fn on_changes<'a>(&self, table: &str, keys: impl Iterator<Item = &'a [u8]> + Clone) {
        let mut pending = lock(&self.pending);
        for p in pending.values_mut() {
            if p.window_open && p.table == table && !p.truncated {
                p.changed.extend(keys.clone().map(<[u8]>::to_vec));
            }
        }
    }

    /// `table` was truncated: no chunk of it read before may be published.
    pub fn on_truncate(&self, table: &str) {
        let mut pending = lock(&self.pending);
        for p in pending.values_mut() {
            if p.window_open && p.table == table {
                p.truncated = true;
                p.changed.clear();
            }
        }
    }

    /// The high watermark of `id`: the chunk's rows that the window did not touch, to be
    /// published in the watermark's transaction, and where to report the outcome. `None` when
    /// there is nothing to publish (another process's watermark, or a window not seen whole,
    /// which is reported as [`Outcome::Discarded`]).
    pub fn on_high(&self, id: ChunkId) -> Option<(Chunk, oneshot::Sender<Outcome>)> {
        if id.run != self.run {
            return None;
        }
        let mut p = {
            let mut pending = lock(&self.pending);
            let p = pending.remove(&id)?;
            if p.window_open {
                self.open_windows.fetch_sub(1, Ordering::AcqRel);
            }
            p
        };
        let done = p.done.take()?;
        match p.chunk.take() {
            Some(mut chunk) if p.window_open => {
                if p.truncated {
                    chunk.rows.clear();
                } else if !p.changed.is_empty() {
                    chunk.rows.retain(|row| !p.changed.contains(&row.key));
                }
                Some((chunk, done))
            }
            _ => {
                let _ = done.send(Outcome::Discarded);
                None
            }
        }
    }

    // ---- the workers' side ----

    /// Registers a chunk before its low watermark is written; the receiver gets its outcome.
    fn register(&self, id: ChunkId, table: &str) -> oneshot::Receiver<Outcome> {
        let (done, outcome) = oneshot::channel();
        lock(&self.pending).insert(
            id,
            Pending {
                table: table.to_owned(),
                window_open: false,
                truncated: false,
                changed: HashSet::new(),
                chunk: None,
                done: Some(done),
            },
        );
        outcome
    }

    /// The chunk's rows, read between its watermarks.
    fn fill(&self, id: ChunkId, chunk: Chunk) {
        if let Some(p) = lock(&self.pending).get_mut(&id) {
            p.chunk = Some(chunk);
        }
    }

    /// Drops a chunk whose worker gave up on it.
    fn forget(&self, id: ChunkId) {
        if let Some(p) = lock(&self.pending).remove(&id)
            && p.window_open
        {
            self.open_windows.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn wait_streaming(&self) {
        loop {
            let changed = self.streaming_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.streaming.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    /// Wakes the manager to look for requested backfills.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn set_progress(&self, id: i64, update: impl FnOnce(&mut Progress)) {
        if let Some(p) = lock(&self.progress).get_mut(&id) {
            update(p);
        }
    }

    fn start_progress(
        &self,
        id: i64,
        table: &str,
        condition: Option<&str>,
        rows_done: u64,
        rows_total: Option<u64>,
    ) {
        lock(&self.progress).insert(
            id,
            Progress {
                table: table.to_owned(),
                condition: condition.map(str::to_owned),
                state: "running",
                rows_done,
                rows_total,
                rows_this_run: 0,
                started: Instant::now(),
                error: None,
            },
        );
    }

    /// Per-backfill progress for `/status`: rows done, estimated total, rate and ETA.
    pub fn to_json(&self) -> Json {
        let progress = lock(&self.progress);
        let list: Vec<Json> = progress
            .iter()
            .map(|(id, p)| {
                let elapsed = p.started.elapsed().as_secs_f64();
                let rate = if elapsed > 0.0 {
                    p.rows_this_run as f64 / elapsed
                } else {
                    0.0
                };
                let eta = match (p.state, p.rows_total) {
                    ("running", Some(total)) if rate > 0.0 => {
                        Json::from((total.saturating_sub(p.rows_done) as f64 / rate).ceil() as u64)
                    }
                    _ => Json::Null,
                };
                json!({
                    "id": id,
                    "table": p.table,
                    "condition": p.condition,
                    "state": p.state,
                    "rows_done": p.rows_done,
                    "rows_total": p.rows_total,
                    "rows_per_second": rate.round() as u64,
                    "eta_seconds": eta,
                    "error": p.error,
                })
            })
            .collect();
        Json::Array(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::ColumnInfo;
    use crate::pgoutput::TypeKind;

    fn chunk(keys: &[&str]) -> Chunk {
        Chunk {
            relation: Arc::new(RelationInfo {
                schema: "public".into(),
                table: "t".into(),
                topic: "sluice.public.t".into(),
                partitions: 1,
                columns: vec![ColumnInfo {
                    name: "id".into(),
                    type_name: "int4".into(),
                    kind: TypeKind::Int,
                }],
                key: vec![0],
            }),
            table: "public.t".into(),
            rows: keys
                .iter()
                .map(|k| ChunkRow {
                    key: k.as_bytes().to_vec(),
                    values: Vec::new(),
                })
                .collect(),
        }
    }

    fn keys(chunk: &Chunk) -> Vec<String> {
        chunk
            .rows
            .iter()
            .map(|r| String::from_utf8_lossy(&r.key).into_owned())
            .collect()
    }

    fn id(b: &Backfills, chunk: u64) -> ChunkId {
        ChunkId {
            run: b.run_token(),
            backfill: 1,
            chunk,
        }
    }

    #[test]
    fn keys_changed_inside_the_window_are_dropped_from_the_chunk() {
        let b = Backfills::new();
        let id = id(&b, 1);
        let _outcome = b.register(id, "public.t");
        // Changes before the low watermark do not count.
        b.on_changes("public.t", [b"[1]".as_slice()].into_iter());
        b.on_low(id);
        assert!(b.watching());
        b.fill(id, chunk(&["[1]", "[2]", "[3]", "[4]"]));
        b.on_changes("public.t", [b"[2]".as_slice()].into_iter());
        b.on_changes("public.other", [b"[3]".as_slice()].into_iter());
        b.on_changes(
            "public.t",
            [b"[9]".as_slice(), b"[4]".as_slice()].into_iter(),
        );
        let (chunk, _done) = b.on_high(id).unwrap();
        assert_eq!(keys(&chunk), ["[1]", "[3]"]);
        assert!(!b.watching());
    }

    #[test]
    fn a_truncate_inside_the_window_empties_the_chunk() {
        let b = Backfills::new();
        let id = id(&b, 1);
        let _outcome = b.register(id, "public.t");
        b.on_low(id);
        b.fill(id, chunk(&["[1]"]));
        b.on_truncate("public.t");
        let (chunk, _done) = b.on_high(id).unwrap();
        assert!(chunk.rows.is_empty());
    }

    #[test]
    fn a_window_not_seen_whole_is_discarded() {
        let b = Backfills::new();
        let id = id(&b, 1);
        let mut outcome = b.register(id, "public.t");
        b.on_low(id);
        b.fill(id, chunk(&["[1]"]));
        b.session_started(); // a reconnect: the stream may resume after the low watermark
        assert!(!b.watching());
        assert!(b.on_high(id).is_none());
        assert_eq!(outcome.try_recv(), Ok(Outcome::Discarded));
    }

    #[test]
    fn watermarks_of_another_process_or_unknown_chunks_are_ignored() {
        let b = Backfills::new();
        let mut other = id(&b, 1);
        other.run ^= 1;
        let _outcome = b.register(id(&b, 1), "public.t");
        b.on_low(other);
        assert!(!b.watching());
        assert!(b.on_high(other).is_none());
        assert!(b.on_high(id(&b, 2)).is_none());
    }

    #[test]
    fn messages_parse_into_signals() {
        let id = ChunkId {
            run: u64::MAX >> 1,
            backfill: 7,
            chunk: 3,
        };
        assert_eq!(
            Signal::parse(watermark("low", id).as_bytes()),
            Signal::Low(id)
        );
        assert_eq!(
            Signal::parse(watermark("high", id).as_bytes()),
            Signal::High(id)
        );
        assert_eq!(Signal::parse(br#"{"heartbeat":true}"#), Signal::Heartbeat);
        assert_eq!(
            Signal::parse(requested(12).as_bytes()),
            Signal::Requested(12)
        );
        assert_eq!(Signal::parse(b"not json"), Signal::Other);
        assert_eq!(Signal::parse(br#"{"watermark":"low"}"#), Signal::Other);
    }
}
