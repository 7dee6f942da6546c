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
//! One exception keeps rows from being lost: a live event that lacks columns. An UPDATE that
//! leaves a TOASTed column untouched (without `REPLICA IDENTITY FULL`) carries every column but
//! that one, and a consumer that never indexed the row cannot complete it. So the window notes,
//! per key, whether every change it saw was such a *partial* update, and then overlays the
//! columns they carry on the chunk's row instead of dropping it:
//!
//! ```text
//!   chunk row (snapshot S)   id=7 qty=1 body=<9 kB>
//!   in window:  UPDATE id=7 qty=2 (body unchanged)   UPDATE id=7 qty=3 (body unchanged)
//!   at HIGH:    READ   id=7 qty=3 body=<9 kB>        version = HIGH's commit LSN
//! ```
//!
//! This is exact wherever S falls inside the window. The updates of one row are serialized by
//! its row lock, so S shows the row after some prefix of the window's updates of it. Each update
//! carries the absolute new value of every column it carries, and a column it does not carry was
//! unchanged by it. So a column's value at HIGH is the one in the last update that carries it,
//! or, when none does, the one in S. Applying all of them again over S therefore gives the row
//! as of HIGH, whichever prefix S already held, and HIGH's version is right for it: every change
//! before HIGH is in S or in the window, every later one has a higher version. Any complete
//! change in the window (insert, delete, full update, key change) still drops the row: the live
//! events then carry everything a consumer needs. A window whose partial updates describe the
//! table with other columns than the chunk (a schema change inside it) cannot be overlaid, and
//! the chunk is read again.
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
pub mod rows;
mod worker;

/// The checks `sluice-producer backfill` runs before queueing anything.
pub(crate) mod worker_checks {
    pub use super::worker::{estimate, key_columns, validate_condition};
}

use std::collections::{BTreeMap, HashMap};
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

impl ChunkRow {
    /// About the memory the row takes while its chunk is held: the values' bytes (their
    /// encoded length, which is also about what the event takes in Kafka's queue) and the
    /// structures around them.
    pub fn memory(&self) -> usize {
        use prost::Message;
        std::mem::size_of::<Self>()
            + self.key.len()
            + self
                .values
                .iter()
                .map(|value| std::mem::size_of::<Value>() + value.encoded_len())
                .sum::<usize>()
    }
}

/// The rows of one chunk and how to encode them.
#[derive(Debug)]
pub struct Chunk {
    pub relation: Arc<RelationInfo>,
    /// `schema.table`.
    pub table: String,
    pub rows: Vec<ChunkRow>,
    /// Rows that only partial updates touched inside the window, emitted with them applied.
    pub completed: usize,
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

/// What a window saw of one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Touched {
    /// A change whose event carries the whole row (or removes it): the live events suffice.
    Complete,
    /// Only updates that left some columns out (unchanged TOAST): the columns they carry, in
    /// the stream's column order, the last update's value of each (`None`: not carried).
    Partial {
        columns: Arc<[String]>,
        values: Vec<Option<Value>>,
    },
    /// Partial updates with different column lists (a schema change inside the window).
    Unknown,
}

impl Touched {
    /// `self` followed by `change`.
    fn then(&mut self, change: &Change<'_>) {
        match (&mut *self, change) {
            (Self::Complete, _) => {}
            (_, Change::Complete) => *self = Self::Complete,
            (Self::Unknown, Change::Partial { .. }) => {}
            (
                Self::Partial { columns, values },
                Change::Partial {
                    columns: c,
                    values: v,
                },
            ) => {
                if columns[..] != c[..] || values.len() != v.len() {
                    *self = Self::Unknown;
                    return;
                }
                for (value, new) in values.iter_mut().zip(v.iter()) {
                    if new.is_some() {
                        value.clone_from(new);
                    }
                }
            }
        }
    }

    fn from_change(change: &Change<'_>) -> Self {
        match change {
            Change::Complete => Self::Complete,
            Change::Partial { columns, values } => Self::Partial {
                columns: Arc::clone(columns),
                values: values.to_vec(),
            },
        }
    }
}

/// One change the stream published under a key, as a window needs to know it.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// The event carries the whole row, or deletes it.
    Complete,
    /// An update of the row's own key that left columns out: every column of the table in the
    /// stream's order, and the value of each one the update carries.
    Partial {
        columns: &'a Arc<[String]>,
        values: &'a [Option<Value>],
    },
}

#[derive(Debug)]
struct Pending {
    table: String,
    window_open: bool,
    /// A TRUNCATE inside the window: no row of the chunk may be published.
    truncated: bool,
    changed: HashMap<Vec<u8>, Touched>,
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

    /// The stream published these changes of `table` (every key a change was published under,
    /// old keys of key-changing updates included).
    pub fn on_changes<'a>(
        &self,
        table: &str,
        changes: impl Iterator<Item = (&'a [u8], Change<'a>)> + Clone,
    ) {
        let mut pending = lock(&self.pending);
        for p in pending.values_mut() {
            if p.window_open && p.table == table && !p.truncated {
                for (key, change) in changes.clone() {
                    match p.changed.get_mut(key) {
                        Some(touched) => touched.then(&change),
                        None => {
                            p.changed
                                .insert(key.to_vec(), Touched::from_change(&change));
                        }
                    }
                }
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
                } else if !p.changed.is_empty() && !settle(&mut chunk, &p.changed) {
                    let _ = done.send(Outcome::Discarded);
                    return None;
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
                changed: HashMap::new(),
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

/// Applies what the window saw to the chunk's rows: rows a complete change touched are dropped,
/// rows only partial updates touched get their columns overlaid (see the module's essay). False
/// when a row cannot be settled (the partial updates describe other columns than the chunk):
/// the chunk must be read again.
fn settle(chunk: &mut Chunk, changed: &HashMap<Vec<u8>, Touched>) -> bool {
    let names: Vec<&str> = chunk
        .relation
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    let mut settled = true;
    let mut completed = 0;
    chunk.rows.retain_mut(|row| match changed.get(&row.key) {
        None => true,
        Some(Touched::Complete) => false,
        Some(Touched::Unknown) => {
            settled = false;
            false
        }
        Some(Touched::Partial { columns, values }) => {
            let same_shape = columns.len() == names.len()
                && columns.iter().zip(&names).all(|(a, b)| a == b)
                && row.values.len() == values.len();
            if !same_shape {
                settled = false;
                return false;
            }
            for (value, new) in row.values.iter_mut().zip(values) {
                if let Some(new) = new {
                    value.clone_from(new);
                }
            }
            completed += 1;
            true
        }
    });
    chunk.completed = completed;
    settled
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::ColumnInfo;
    use crate::pgoutput::TypeKind;

    fn complete<'a>(keys: &'a [&'a str]) -> impl Iterator<Item = (&'a [u8], Change<'a>)> + Clone {
        keys.iter().map(|k| (k.as_bytes(), Change::Complete))
    }

    /// The chunk's table: `id int4, qty int4, body text`.
    fn columns() -> Arc<[String]> {
        ["id", "qty", "body"].map(str::to_owned).into()
    }

    fn text(s: &str) -> Value {
        Value::from(sluice_proto::v1::value::Kind::Text(s.to_owned()))
    }

    /// A chunk of rows `(key, qty, body)`.
    fn wide_chunk(rows: &[(&str, &str, &str)]) -> Chunk {
        let column = |name: &str| ColumnInfo {
            name: name.into(),
            type_name: "text".into(),
            kind: TypeKind::Text,
        };
        let mut chunk = chunk(&[]);
        chunk.relation = Arc::new(RelationInfo {
            columns: vec![column("id"), column("qty"), column("body")],
            ..(*chunk.relation).clone()
        });
        chunk.rows = rows
            .iter()
            .map(|(k, qty, body)| ChunkRow {
                key: k.as_bytes().to_vec(),
                values: vec![text(k), text(qty), text(body)],
            })
            .collect();
        chunk
    }

    /// One partial update of `key` as the stream reports it.
    fn partial<'a>(
        key: &'a str,
        columns: &'a Arc<[String]>,
        values: &'a [Option<Value>],
    ) -> impl Iterator<Item = (&'a [u8], Change<'a>)> + Clone {
        std::iter::once((key.as_bytes(), Change::Partial { columns, values }))
    }

    fn row_values(chunk: &Chunk) -> Vec<Vec<Value>> {
        chunk.rows.iter().map(|r| r.values.clone()).collect()
    }

    #[test]
    fn rows_only_partial_updates_touched_are_kept_with_their_columns_overlaid() {
        let b = Backfills::new();
        let id = id(&b, 1);
        let _outcome = b.register(id, "public.t");
        b.on_low(id);
        let names = columns();
        // Row 1: two updates of qty that leave the TOASTed body out; the snapshot may have seen
        // either of them or none.
        let first = [Some(text("1")), Some(text("5")), None];
        let second = [Some(text("1")), Some(text("6")), None];
        b.on_changes("public.t", partial("1", &names, &first));
        b.fill(
            id,
            wide_chunk(&[("1", "5", "big"), ("2", "0", "b2"), ("3", "0", "b3")]),
        );
        b.on_changes("public.t", partial("1", &names, &second));
        // Row 2: a partial update, then a complete one: its live events suffice.
        b.on_changes("public.t", partial("2", &names, &first));
        b.on_changes("public.t", complete(&["2"]));
        let (chunk, _done) = b.on_high(id).unwrap();
        assert_eq!(chunk.completed, 1);
        assert_eq!(
            row_values(&chunk),
            [
                vec![text("1"), text("6"), text("big")],
                vec![text("3"), text("0"), text("b3")],
            ]
        );
    }

    #[test]
    fn a_complete_change_before_partial_ones_still_drops_the_row() {
        let b = Backfills::new();
        let id = id(&b, 1);
        let _outcome = b.register(id, "public.t");
        b.on_low(id);
        let names = columns();
        let values = [Some(text("1")), Some(text("9")), None];
        b.fill(id, wide_chunk(&[("1", "5", "big")]));
        b.on_changes("public.t", complete(&["1"]));
        b.on_changes("public.t", partial("1", &names, &values));
        let (chunk, _done) = b.on_high(id).unwrap();
        assert!(chunk.rows.is_empty());
    }

    #[test]
    fn partial_updates_of_another_shape_make_the_chunk_read_again() {
        let b = Backfills::new();
        let id = id(&b, 1);
        let mut outcome = b.register(id, "public.t");
        b.on_low(id);
        // A column was added inside the window: the stream's rows have four columns.
        let names: Arc<[String]> = ["id", "qty", "body", "added"].map(str::to_owned).into();
        let values = [Some(text("1")), Some(text("9")), None, Some(text("x"))];
        b.fill(id, wide_chunk(&[("1", "5", "big"), ("2", "0", "b2")]));
        b.on_changes("public.t", partial("1", &names, &values));
        assert!(b.on_high(id).is_none());
        assert_eq!(outcome.try_recv(), Ok(Outcome::Discarded));
    }

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
            completed: 0,
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
        b.on_changes("public.t", complete(&["[1]"]));
        b.on_low(id);
        assert!(b.watching());
        b.fill(id, chunk(&["[1]", "[2]", "[3]", "[4]"]));
        b.on_changes("public.t", complete(&["[2]"]));
        b.on_changes("public.other", complete(&["[3]"]));
        b.on_changes("public.t", complete(&["[9]", "[4]"]));
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
