//! Backfill workers: the manager starts one per table with a backfill to run; each reads its
//! table chunk by chunk between watermarks.
//!
//! One chunk, as a worker sees it:
//!
//! ```text
//!  wait until Kafka acknowledged all but the last few published chunks
//!    ─▶ BEGIN; UPDATE progress (acknowledged chunks); LOW; COMMIT
//!    ─▶ SELECT … WHERE key > last AND (condition) ORDER BY key LIMIT n
//!    ─▶ hand the rows to the stream ─▶ HIGH ─▶ the next chunk, from this one's last key
//! ```
//!
//! Chunks follow each other without waiting for the stream: their windows never overlap (each
//! LOW is written after the HIGH before it), and while the stream reaches chunk n's HIGH and
//! publishes its rows, the worker already reads chunk n+1 (at most [`WINDOWS`] chunks ahead of
//! the stream's outcomes; workers run on a thread of their own). A chunk the stream discarded
//! is read again, and so is every chunk read after it, since each started at the end of the one
//! before. Progress written with a low watermark is that of chunks Kafka has acknowledged, so a
//! producer killed at any moment resumes at most `UNACKED + WINDOWS` chunks back. Rows are read
//! with the simple query protocol, which returns every value as its type's output function
//! prints it: exactly the text pgoutput sends (both connections run with the same session
//! settings), typed by the same parser as live changes. The rate limit is shared by all workers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_common::config::{Config, ProducerConfig};
use sluice_common::retry::{self, Decision, Failure};
use sluice_common::shutdown::CancellationToken;
use sluice_common::telemetry::names;
use tokio::sync::oneshot;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::control::{self, Job, literal};
use super::rows::{Shape, chunk_query, describe, parse_rows};
use super::{Backfills, Chunk, ChunkId, ChunkRow, Outcome, watermark};
use crate::RETRY_POLICY;
use crate::catalog::{self, PgTarget, quote_table};
use crate::checkpoint::Checkpoint;
use crate::error::Error;
use crate::pgoutput::TypeKind;
use crate::stream::MESSAGE_PREFIX;

/// Chunks read ahead of the stream: the next chunk is read while the stream has not reached the
/// high watermark of the one before (a chunk's outcome takes about as long to come as a chunk
/// takes to read), never further ahead.
const WINDOWS: usize = 2;

/// Published chunks Kafka may not have acknowledged yet when a low watermark is written: the
/// progress it persists is at most this many chunks behind the ones being read.
const UNACKED: usize = 2;

/// Rows in a table's first chunk, before the size of its rows is known.
const FIRST_CHUNK_ROWS: u32 = 16;

/// How many rows the next chunk reads: as many as fit in `backfill_chunk_bytes` at the size of
/// the rows of the chunk before, at most `backfill_chunk_size` (and at most the rate limit's
/// rows per second). Rows of a few hundred bytes make chunks of thousands; rows of megabytes,
/// chunks of a few, so a chunk's memory stays about the same whatever the table.
#[derive(Debug)]
struct ChunkSizer {
    bytes: u64,
    max_rows: u32,
    /// Average memory of a row in the last chunk read.
    row_bytes: Option<u64>,
}

impl ChunkSizer {
    fn new(producer: &ProducerConfig) -> Self {
        Self {
            bytes: producer.backfill_chunk_bytes,
            max_rows: match producer.backfill_max_rows_per_second {
                Some(rate) => producer.backfill_chunk_size.min(rate),
                None => producer.backfill_chunk_size,
            }
            .max(1),
            row_bytes: None,
        }
    }

    fn rows(&self) -> u32 {
        match self.row_bytes {
            None => self.max_rows.min(FIRST_CHUNK_ROWS),
            Some(row_bytes) => {
                let fit = self.bytes / row_bytes.max(1);
                u32::try_from(fit)
                    .unwrap_or(u32::MAX)
                    .clamp(1, self.max_rows)
            }
        }
    }

    fn read(&mut self, rows: &[ChunkRow]) {
        if rows.is_empty() {
            return;
        }
        let total: usize = rows.iter().map(ChunkRow::memory).sum();
        self.row_bytes = Some((total / rows.len()) as u64);
    }
}

/// How often the manager looks at the control table without being woken.
const SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// What every worker shares.
#[derive(Debug)]
struct Context {
    target: PgTarget,
    config: Arc<Config>,
    backfills: Arc<Backfills>,
    checkpoint: Arc<Checkpoint>,
    shutdown: CancellationToken,
    limiter: Limiter,
}

/// Runs the backfills of the control table until `shutdown`: those queued at setup
/// (`tables[].backfill`), those requested with `sluice-producer backfill`, and those a previous
/// producer left unfinished. Starts once the first stream session runs.
pub async fn manage(
    target: PgTarget,
    config: Arc<Config>,
    backfills: Arc<Backfills>,
    checkpoint: Arc<Checkpoint>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        () = backfills.wait_streaming() => {}
        () = shutdown.cancelled() => return,
    }
    let context = Arc::new(Context {
        limiter: Limiter::new(config.producer.backfill_max_rows_per_second),
        target,
        config,
        backfills,
        checkpoint,
        shutdown,
    });
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut sql: Option<Client> = None;
    loop {
        running.retain(|_, worker| !worker.is_finished());
        if sql.is_none() {
            sql = context.target.connect().await.ok();
        }
        if let Some(client) = &sql {
            match control::unfinished(client, &context.config.postgres.slot).await {
                Ok(jobs) => {
                    for job in jobs {
                        if running.contains_key(&job.table) {
                            continue; // one backfill per table at a time, oldest first
                        }
                        if context.config.table(&job.table).is_none() {
                            let reason = "the table is not in `tables` of the config any more";
                            tracing::warn!(backfill = job.id, table = %job.table, "{reason}: backfill failed");
                            let _ = control::fail(client, job.id, reason).await;
                            continue;
                        }
                        let table = job.table.clone();
                        running.insert(table, tokio::spawn(work(context.clone(), job)));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the backfill control table: retrying");
                    sql = None;
                }
            }
        }
        metrics::gauge!(names::PRODUCER_BACKFILLS_RUNNING).set(running.len() as f64);
        tokio::select! {
            () = context.backfills.wake.notified() => {}
            () = tokio::time::sleep(SCAN_INTERVAL) => {}
            () = context.shutdown.cancelled() => break,
        }
    }
    for worker in running.values() {
        worker.abort();
    }
}

/// Where one backfill stands in this process.
#[derive(Debug)]
struct JobState {
    id: i64,
    table: String,
    condition: Option<String>,
    started: bool,
    rows_total: Option<i64>,
    /// The key of the table's last row when the backfill started: the last chunk ends there.
    end_key: Option<Vec<String>>,
    /// Where the next chunk starts, and the rows read up to there.
    read_key: Option<Vec<String>>,
    read_rows: u64,
    /// Progress Kafka has acknowledged: what may be persisted.
    acked_key: Option<Vec<String>>,
    acked_rows: u64,
    /// Published chunks not known to be acknowledged, oldest first: the commit LSN of each one's
    /// high watermark, and the progress it completes.
    unacked: VecDeque<(u64, Option<Vec<String>>, u64)>,
    next_chunk: u64,
}

/// Runs one backfill to its end, retrying transient failures; a definite one fails it.
async fn work(context: Arc<Context>, job: Job) {
    let rows_done = u64::try_from(job.rows_done).unwrap_or(0);
    let state = JobState {
        id: job.id,
        table: job.table.clone(),
        condition: job.condition.clone(),
        started: job.state == "running",
        rows_total: job.rows_total,
        end_key: job.end_key.clone(),
        read_key: job.last_key.clone(),
        read_rows: rows_done,
        acked_key: job.last_key,
        acked_rows: rows_done,
        unacked: VecDeque::new(),
        next_chunk: 0,
    };
    context.backfills.start_progress(
        job.id,
        &job.table,
        job.condition.as_deref(),
        rows_done,
        job.rows_total.and_then(|t| u64::try_from(t).ok()),
    );
    tracing::info!(backfill = job.id, table = %job.table, condition = ?job.condition, resume_after = ?state.read_key, "backfill started");
    // Exported from the start, so a first failure is an increase an alert can see.
    metrics::counter!(names::PRODUCER_BACKFILLS_FAILED, "table" => job.table.clone()).increment(0);
    let attempt = |mut state: JobState| {
        let context = &context;
        async move {
            let result = tokio::select! {
                result = run(context, &mut state) => result,
                () = context.shutdown.cancelled() => Err(Error::Interrupted),
            };
            result
                .map(|()| state.acked_rows)
                .map_err(|error| (state, error))
        }
    };
    let classify = |error: &Error, attempt: retry::Attempt| {
        if !error.is_transient() {
            return Decision::GiveUp;
        }
        tracing::warn!(backfill = job.id, table = %job.table, %error, retry_in = ?attempt.retry_in, "backfill interrupted: retrying");
        Decision::Retry
    };
    match retry::retry_with(RETRY_POLICY, &context.shutdown, state, attempt, classify).await {
        Ok(rows) => {
            tracing::info!(backfill = job.id, table = %job.table, rows, "backfill done");
            context.backfills.set_progress(job.id, |p| p.state = "done");
        }
        Err(Failure::Interrupted(_) | Failure::GaveUp((_, Error::Interrupted))) => {}
        Err(Failure::GaveUp((state, error))) => {
            let reason = error.to_string();
            tracing::error!(backfill = state.id, table = %state.table, error = %reason, "backfill failed");
            metrics::counter!(names::PRODUCER_BACKFILLS_FAILED, "table" => state.table.clone())
                .increment(1);
            context.backfills.set_progress(state.id, |p| {
                p.state = "failed";
                p.error = Some(reason.clone());
            });
            if let Ok(sql) = context.target.connect().await {
                let _ = control::fail(&sql, state.id, &reason).await;
            }
        }
    }
}

/// A chunk read, its high watermark written, its outcome still to come.
struct Window<'a> {
    id: ChunkId,
    outcome: oneshot::Receiver<Outcome>,
    _registered: Registered<'a>,
    /// The key of its last row, and how many rows it read.
    last_key: Vec<String>,
    read: u64,
}

/// Removes a registered chunk when its worker stops waiting for it (error or shutdown).
struct Registered<'a> {
    backfills: &'a Backfills,
    id: ChunkId,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.backfills.forget(self.id);
    }
}

async fn run(context: &Context, state: &mut JobState) -> Result<(), Error> {
    let sql = context.target.connect().await?;
    let Some(table) = context.config.table(&state.table) else {
        return Err(Error::Setup(format!(
            "table {} is not in `tables` of the config any more",
            state.table
        )));
    };
    let (schema, name) = table.schema_and_table();
    let key_columns = key_columns(&sql, &context.config, &state.table).await?;
    let quoted = quote_table(schema, name);
    let condition = state.condition.clone();
    if let Some(condition) = &condition {
        validate_condition(&sql, &quoted, condition).await?;
    }
    let mut sizer = ChunkSizer::new(&context.config.producer);
    let labels = [("table", state.table.clone())];
    let rows_read = metrics::counter!(names::PRODUCER_BACKFILL_ROWS_READ, &labels);
    let published = metrics::counter!(names::PRODUCER_BACKFILL_CHUNKS, "table" => state.table.clone(), "outcome" => "published");
    let discarded = metrics::counter!(names::PRODUCER_BACKFILL_CHUNKS, "table" => state.table.clone(), "outcome" => "discarded");
    let remaining = metrics::gauge!(names::PRODUCER_BACKFILL_REMAINING_ROWS, &labels);
    if !state.started || state.end_key.is_none() {
        let total = if state.started {
            state.rows_total
        } else {
            estimate(&sql, &quoted, condition.as_deref()).await?
        };
        let end = last_key(&sql, &quoted, &key_columns, condition.as_deref()).await?;
        control::start(&sql, state.id, total, end.as_deref()).await?;
        state.started = true;
        state.rows_total = total;
        context.backfills.set_progress(state.id, |p| {
            p.rows_total = total.and_then(|t| u64::try_from(t).ok());
        });
        let Some(end) = end else {
            // Nothing (left) to read: rows inserted from now on come through the stream. A
            // resumed backfill keeps the progress it had.
            control::finish(&sql, state.id, state.acked_key.as_deref(), state.acked_rows).await?;
            remaining.set(0.0);
            return Ok(());
        };
        state.end_key = Some(end);
    }
    let mut types: HashMap<u32, (String, TypeKind)> = HashMap::new();
    let mut shape: Option<Arc<Shape>> = None;
    let mut long_running: HashSet<u64> = HashSet::new();
    // Chunks between their watermarks whose outcome is not known yet, oldest first, and where
    // the chunk after them starts.
    let mut windows: VecDeque<Window<'_>> = VecDeque::new();
    let mut next_key = state.read_key.clone();
    let mut at_end = false;
    loop {
        // Take in the outcomes that are known; wait for the oldest one while the window
        // pipeline is full, or when nothing is left to read.
        loop {
            let wait = at_end || windows.len() >= WINDOWS;
            let Some(front) = windows.front_mut() else {
                break;
            };
            let outcome = if wait {
                (&mut front.outcome).await.unwrap_or(Outcome::Discarded)
            } else {
                match front.outcome.try_recv() {
                    Ok(outcome) => outcome,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => Outcome::Discarded,
                }
            };
            let Some(window) = windows.pop_front() else {
                break;
            };
            match outcome {
                Outcome::Published { commit_lsn, rows } => {
                    published.increment(1);
                    state.read_key = Some(window.last_key);
                    state.read_rows += window.read;
                    state
                        .unacked
                        .push_back((commit_lsn, state.read_key.clone(), state.read_rows));
                    let done = state.read_rows;
                    let read = window.read;
                    context.backfills.set_progress(state.id, |p| {
                        p.rows_done = done;
                        p.rows_this_run += read;
                    });
                    if let Some(total) = state.rows_total {
                        remaining.set((total as f64 - done as f64).max(0.0));
                    }
                    tracing::debug!(
                        backfill = state.id,
                        chunk = window.id.chunk,
                        read,
                        published = rows,
                        "chunk published"
                    );
                }
                Outcome::Discarded => {
                    // The chunks read after it start from its end: read them all again.
                    discarded.increment(1);
                    tracing::debug!(
                        backfill = state.id,
                        chunk = window.id.chunk,
                        after = windows.len(),
                        "chunk discarded: the stream reconnected inside its window, reading it again"
                    );
                    windows.clear();
                    next_key.clone_from(&state.read_key);
                    at_end = false;
                }
            }
        }
        if at_end {
            // Every chunk up to the last key is published: finished once Kafka has them all.
            acknowledged(context, state, 0).await?;
            control::finish(&sql, state.id, state.acked_key.as_deref(), state.acked_rows).await?;
            remaining.set(0.0);
            return Ok(());
        }
        let limit = sizer.rows();
        context.limiter.acquire(limit).await;
        // Progress of acknowledged chunks goes with the next low watermark; wait only when the
        // acknowledgement pipeline is full.
        acknowledged(context, state, UNACKED).await?;
        let current = describe(
            &sql,
            &context.config,
            (schema, name),
            &key_columns,
            &mut types,
            shape.take(),
        )
        .await?;
        let shape = &**shape.insert(current);

        let id = ChunkId {
            run: context.backfills.run_token(),
            backfill: state.id,
            chunk: state.next_chunk,
        };
        state.next_chunk += 1;
        let outcome = context.backfills.register(id, &state.table);
        let registered = Registered {
            backfills: &context.backfills,
            id,
        };
        sql.batch_execute(&format!(
            "{}; SELECT pg_logical_emit_message(true, {}, {})",
            control::progress_sql(state.id, state.acked_key.as_deref(), state.acked_rows),
            literal(MESSAGE_PREFIX),
            literal(&watermark("low", id))
        ))
        .await
        .map_err(|e| Error::postgres("writing a low watermark", e))?;

        let query = chunk_query(
            &quoted,
            shape,
            &key_columns,
            next_key.as_deref(),
            state.end_key.as_deref(),
            condition.as_deref(),
            limit,
        );
        settled_snapshot(&sql, &mut long_running).await?;
        let messages = sql
            .simple_query(&format!("{query}; COMMIT"))
            .await
            .map_err(|e| Error::postgres(format!("reading a chunk of {}", state.table), e))?;
        let (rows, last_key) = parse_rows(shape, &messages);
        drop(messages);
        sizer.read(&rows);
        let Some(last_key) = last_key else {
            // Nothing after the last key (its registration ends here): done once every chunk
            // before it is published.
            at_end = true;
            continue;
        };
        let read = rows.len() as u64;
        rows_read.increment(read);
        context.backfills.fill(
            id,
            Chunk {
                relation: shape.relation.clone(),
                table: state.table.clone(),
                rows,
                completed: 0,
            },
        );
        sql.batch_execute(&format!(
            "SELECT pg_logical_emit_message(true, {}, {})",
            literal(MESSAGE_PREFIX),
            literal(&watermark("high", id))
        ))
        .await
        .map_err(|e| Error::postgres("writing a high watermark", e))?;
        next_key = Some(last_key.clone());
        windows.push_back(Window {
            id,
            outcome,
            _registered: registered,
            last_key,
            read,
        });
    }
}

/// How long a chunk read waits for transactions that were finishing when its low watermark
/// committed; one still running after this is a long transaction that had not committed yet.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens the REPEATABLE READ transaction the chunk is read in, with a snapshot that sees every
/// transaction whose commit record precedes the low watermark.
///
/// Postgres writes a commit record, flushes it, and only then makes the transaction visible, so
/// right after the low watermark committed, a transaction that committed just before it may still
/// be invisible. Its changes precede the window, so a chunk read without it would be published
/// with the old row and a newer version. Such transactions are in the snapshot's in-progress
/// list: wait (briefly) until none of them is, taking a fresh snapshot each time.
async fn settled_snapshot(sql: &Client, long_running: &mut HashSet<u64>) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let mut finishing: Option<HashSet<u64>> = None;
    loop {
        let messages = sql
            .simple_query(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT pg_current_snapshot()::text",
            )
            .await
            .map_err(|e| Error::postgres("taking a chunk's snapshot", e))?;
        let in_progress = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0).map(snapshot_in_progress),
                _ => None,
            })
            .unwrap_or_default();
        let waiting: HashSet<u64> = match &finishing {
            // The first snapshot, taken after the low watermark committed, names them.
            None => in_progress
                .into_iter()
                .filter(|xid| !long_running.contains(xid))
                .collect(),
            Some(finishing) => in_progress
                .into_iter()
                .filter(|xid| finishing.contains(xid))
                .collect(),
        };
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            // Still running after a second: not finishing, just long. Not waited for again.
            long_running.extend(waiting);
            return Ok(());
        }
        sql.batch_execute("ROLLBACK")
            .await
            .map_err(|e| Error::postgres("taking a chunk's snapshot", e))?;
        finishing = Some(waiting);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The in-progress transaction ids of `pg_current_snapshot()`'s text, `xmin:xmax:xip,…`.
fn snapshot_in_progress(text: &str) -> Vec<u64> {
    text.rsplit(':')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|xid| xid.trim().parse().ok())
        .collect()
}

/// Moves the progress of every chunk Kafka acknowledged into `acked_*`, waiting until at most
/// `in_flight` chunks remain unacknowledged.
async fn acknowledged(
    context: &Context,
    state: &mut JobState,
    in_flight: usize,
) -> Result<(), Error> {
    while let Some((commit_lsn, _, _)) = state.unacked.front() {
        let commit_lsn = *commit_lsn;
        if state.unacked.len() > in_flight {
            context
                .checkpoint
                .wait_confirmable_past(commit_lsn)
                .await
                .map_err(Error::KafkaFatal)?;
        } else if context.checkpoint.confirmable() <= commit_lsn {
            break;
        }
        if let Some((_, key, rows)) = state.unacked.pop_front() {
            state.acked_key = key;
            state.acked_rows = rows;
        }
    }
    Ok(())
}

/// The key columns a backfill pages by: `tables[].key`, else the primary key. A table without
/// either is refused with the fix.
pub async fn key_columns(sql: &Client, config: &Config, table: &str) -> Result<Vec<String>, Error> {
    let Some(table_config) = config.table(table) else {
        return Err(Error::Command(format!(
            "table {table} is not in `tables` of the config: add it there first (the producer only backfills tables it captures)"
        )));
    };
    let (schema, name) = table_config.schema_and_table();
    let Some(info) = catalog::table_info(sql, schema, name).await? else {
        return Err(Error::Setup(format!("table {table} does not exist")));
    };
    let columns = table_config.key.clone().unwrap_or(info.key_columns);
    if columns.is_empty() {
        return Err(Error::Setup(format!(
            "table {table} has no primary key, so it cannot be read in key order: add one \
             (ALTER TABLE {} ADD PRIMARY KEY (…)), or set REPLICA IDENTITY FULL and name unique \
             key columns in `tables[].key`",
            quote_table(schema, name)
        )));
    }
    Ok(columns)
}

/// Checks a `--where` condition against the table without reading a row; the error is
/// Postgres's own message. The condition must be one expression: it is prepared (one statement
/// only) inside the same parentheses and line breaks the chunk query puts around it.
pub async fn validate_condition(
    sql: &Client,
    quoted_table: &str,
    condition: &str,
) -> Result<(), Error> {
    let explain = format!("EXPLAIN SELECT 1 FROM {quoted_table} WHERE (\n{condition}\n)");
    match sql.query(&explain, &[]).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let message = match e.as_db_error() {
                Some(db) => db.message().to_owned(),
                None => e.to_string(),
            };
            if e.as_db_error().is_some() {
                Err(Error::Setup(format!(
                    "the condition `{condition}` does not work on {quoted_table}: {message}"
                )))
            } else {
                Err(Error::postgres("checking the condition", e))
            }
        }
    }
}

/// The planner's estimate of the rows a backfill reads.
pub async fn estimate(
    sql: &Client,
    quoted_table: &str,
    condition: Option<&str>,
) -> Result<Option<i64>, Error> {
    let filter = condition.map_or(String::new(), |c| format!(" WHERE (\n{c}\n)"));
    let rows = sql
        .query(
            &format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM {quoted_table}{filter}"),
            &[],
        )
        .await
        .map_err(|e| Error::postgres("estimating the rows to backfill", e))?;
    let plan: Option<serde_json::Value> = rows.first().and_then(|r| r.try_get(0).ok());
    Ok(plan
        .and_then(|p| p[0]["Plan"]["Plan Rows"].as_f64())
        .map(|rows| rows.round() as i64))
}

/// The key values (text forms) of the table's last row in key order among those matching
/// `condition`, or `None` when there is none.
///
/// A backfill reads no further than this: a row with a greater key was inserted after this
/// query, so its INSERT comes through the stream. Without the bound, a backfill of a table that
/// keeps receiving rows at the end of its key order would chase them and never finish.
async fn last_key(
    sql: &Client,
    quoted: &str,
    key_columns: &[String],
    condition: Option<&str>,
) -> Result<Option<Vec<String>>, Error> {
    let keys: Vec<String> = key_columns
        .iter()
        .map(|c| catalog::quote_ident(c))
        .collect();
    let descending: Vec<String> = keys.iter().map(|k| format!("{k} DESC")).collect();
    let filter = condition.map_or(String::new(), |c| format!(" WHERE (\n{c}\n)"));
    let messages = sql
        .simple_query(&format!(
            "SELECT {} FROM {quoted}{filter} ORDER BY {} LIMIT 1",
            keys.join(", "),
            descending.join(", ")
        ))
        .await
        .map_err(|e| Error::postgres("reading the last key to backfill", e))?;
    Ok(messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(
            (0..keys.len())
                .map(|i| row.get(i).unwrap_or_default().to_owned())
                .collect(),
        ),
        _ => None,
    }))
}

/// Rows per second for all backfills together.
#[derive(Debug)]
struct Limiter {
    per_second: Option<u32>,
    next: Mutex<tokio::time::Instant>,
}

impl Limiter {
    fn new(per_second: Option<u32>) -> Self {
        Self {
            per_second,
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the turn of `rows` more rows.
    async fn acquire(&self, rows: u32) {
        let Some(rate) = self.per_second.filter(|r| *r > 0) else {
            return;
        };
        let at = {
            let mut next = match self.next.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + Duration::from_secs_f64(f64::from(rows) / f64::from(rate));
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use sluice_proto::v1::Value;
    use sluice_proto::v1::value::Kind;

    use super::*;

    #[test]
    fn in_progress_transactions_are_read_from_the_snapshot_text() {
        assert_eq!(snapshot_in_progress("10:20:12,15"), [12, 15]);
        assert!(snapshot_in_progress("10:10:").is_empty());
    }

    fn sizer(chunk_size: u32, chunk_bytes: u64, rate: Option<u32>) -> ChunkSizer {
        ChunkSizer::new(&ProducerConfig {
            backfill_chunk_size: chunk_size,
            backfill_chunk_bytes: chunk_bytes,
            backfill_max_rows_per_second: rate,
            ..ProducerConfig::default()
        })
    }

    fn rows(n: usize, text_bytes: usize) -> Vec<ChunkRow> {
        let value = Value::from(Kind::Text("x".repeat(text_bytes)));
        (0..n)
            .map(|i| ChunkRow {
                key: format!("{i:08}").into_bytes(),
                values: vec![Value::from(Kind::Int(1_000_000 + i as i64)), value.clone()],
            })
            .collect()
    }

    #[test]
    fn chunks_hold_the_rows_that_fit_in_the_chunk_bytes() {
        let mut sizer = sizer(10_000, 3 * 1024 * 1024, None);
        assert_eq!(sizer.rows(), FIRST_CHUNK_ROWS);
        // Rows of ~500 bytes: thousands per chunk, their memory about the chunk bytes.
        sizer.read(&rows(256, 500));
        let n = sizer.rows();
        assert!((4_000..6_000).contains(&n), "{n}");
        let memory: usize = rows(n as usize, 500).iter().map(ChunkRow::memory).sum();
        assert!(
            memory <= 3 * 1024 * 1024 && memory > 3 * 1024 * 1024 - 1024,
            "{memory}"
        );
        // Rows of a megabyte: two per chunk; small rows: the row limit.
        sizer.read(&rows(4, 1024 * 1024));
        assert_eq!(sizer.rows(), 2);
        sizer.read(&rows(10, 10));
        assert_eq!(sizer.rows(), 10_000);
        // Rows bigger than the chunk bytes: one at a time. An empty chunk changes nothing.
        sizer.read(&rows(1, 4 * 1024 * 1024));
        assert_eq!(sizer.rows(), 1);
        sizer.read(&[]);
        assert_eq!(sizer.rows(), 1);
    }

    #[test]
    fn chunks_never_exceed_the_row_limit_or_the_rate() {
        assert_eq!(sizer(8, 3 * 1024 * 1024, None).rows(), 8);
        let mut capped = sizer(100, 3 * 1024 * 1024, None);
        capped.read(&rows(FIRST_CHUNK_ROWS as usize, 10));
        assert_eq!(capped.rows(), 100);
        let mut limited = sizer(10_000, 3 * 1024 * 1024, Some(50));
        limited.read(&rows(FIRST_CHUNK_ROWS as usize, 10));
        assert_eq!(limited.rows(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_spaces_chunks_by_the_rate() {
        let limiter = Limiter::new(Some(1000));
        let start = tokio::time::Instant::now();
        limiter.acquire(500).await;
        limiter.acquire(500).await;
        limiter.acquire(500).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }
}
