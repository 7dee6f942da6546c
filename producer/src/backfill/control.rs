//! The control table `sluice.backfills`: what to backfill, and how far each backfill got.
//!
//! It lives in the source database, next to the rows it describes, because its progress must
//! survive the producer (a restart resumes from `last_key`), the command that requests a backfill
//! only needs the database, and a row is written in the same transaction as the low watermark
//! that follows it. It is not in the publication, so its updates never reach Kafka. Rows belong
//! to one replication slot (`slot`), so several sluice deployments can share a database.
//!
//! | column | meaning |
//! |---|---|
//! | `id` | the backfill; watermarks carry it |
//! | `slot` | the replication slot of the producer that runs it |
//! | `table_name` | `schema.table` |
//! | `condition` | the `--where` condition, or NULL for every row |
//! | `kind` | `initial` (from `tables[].backfill`, once per slot and table) or `on_demand` |
//! | `state` | `pending`, `running`, `done` or `failed` |
//! | `last_key` | key values (their text forms, a JSON array) of the last row whose chunk Kafka acknowledged |
//! | `end_key` | key values of the last row when the backfill started: it reads no further (later rows come through the stream); NULL for a table that was empty |
//! | `rows_done` | rows read up to `last_key` |
//! | `rows_total` | the planner's estimate of the rows to read |
//! | `error` | why a `failed` backfill stopped |
//! | `created_at`, `started_at`, `updated_at`, `finished_at` | timestamps |

use serde_json::Value as Json;
use sluice_common::config::Config;
use tokio_postgres::Client;

use crate::error::Error;
use crate::stream::MESSAGE_PREFIX;

/// The schema and table; fixed, so the command and every producer agree without configuration.
pub const TABLE: &str = "sluice.backfills";

const DDL: &str = "
CREATE SCHEMA IF NOT EXISTS sluice;
CREATE TABLE IF NOT EXISTS sluice.backfills (
    id bigserial PRIMARY KEY,
    slot text NOT NULL,
    table_name text NOT NULL,
    condition text,
    kind text NOT NULL DEFAULT 'on_demand',
    state text NOT NULL DEFAULT 'pending',
    last_key jsonb,
    end_key jsonb,
    rows_done bigint NOT NULL DEFAULT 0,
    rows_total bigint,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS backfills_initial
    ON sluice.backfills (slot, table_name) WHERE kind = 'initial';
";

/// One backfill as the control table holds it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub table: String,
    pub condition: Option<String>,
    pub state: String,
    pub last_key: Option<Vec<String>>,
    /// Where the backfill stops, once it started (`None` before, or for a table that was empty).
    pub end_key: Option<Vec<String>>,
    pub rows_done: i64,
    pub rows_total: Option<i64>,
    pub error: Option<String>,
}

/// Creates the control table when it does not exist yet.
pub async fn ensure(sql: &Client) -> Result<(), Error> {
    let exists = sql
        .query_one("SELECT to_regclass('sluice.backfills') IS NOT NULL", &[])
        .await
        .map_err(|e| Error::postgres("looking for the control table sluice.backfills", e))?;
    if exists.get::<_, bool>(0) {
        return upgrade(sql).await;
    }
    match sql.batch_execute(DDL).await {
        Ok(()) => {
            tracing::info!(table = TABLE, "created the backfill control table");
            Ok(())
        }
        // Another producer (or the backfill command) created it at the same moment.
        Err(e)
            if e.code()
                .is_some_and(|c| matches!(c.code(), "23505" | "42P07" | "42P06")) =>
        {
            Ok(())
        }
        Err(e) if e.code().is_some_and(|c| c.code() == "42501") => Err(Error::Setup(format!(
            "cannot create the backfill control table {TABLE}: {}; grant the producer's role CREATE on the database, or create it once as an owner (see docs/operations.md)",
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_owned())
        ))),
        Err(e) => Err(Error::postgres(
            "creating the control table sluice.backfills",
            e,
        )),
    }
}

/// Adds the columns later versions introduced to a control table an earlier version created.
async fn upgrade(sql: &Client) -> Result<(), Error> {
    let has_end_key = sql
        .query_one(
            "SELECT count(*) > 0 FROM information_schema.columns
             WHERE table_schema = 'sluice' AND table_name = 'backfills' AND column_name = 'end_key'",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("looking at the control table sluice.backfills", e))?;
    if has_end_key.get::<_, bool>(0) {
        return Ok(());
    }
    match sql
        .batch_execute("ALTER TABLE sluice.backfills ADD COLUMN IF NOT EXISTS end_key jsonb")
        .await
    {
        Ok(()) => {
            tracing::info!(
                table = TABLE,
                "added column end_key to the backfill control table"
            );
            Ok(())
        }
        Err(e) if e.code().is_some_and(|c| c.code() == "42501") => Err(Error::Setup(format!(
            "cannot add column end_key to the backfill control table {TABLE}: {}; run `ALTER TABLE {TABLE} ADD COLUMN end_key jsonb` once as its owner (see docs/operations.md)",
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_owned())
        ))),
        Err(e) => Err(Error::postgres(
            "adding column end_key to the control table sluice.backfills",
            e,
        )),
    }
}

/// Queues the initial backfill of every table with `backfill: true`, once per slot and table.
pub async fn register_initial(sql: &Client, config: &Config) -> Result<(), Error> {
    for table in config.tables.iter().filter(|t| t.backfill) {
        let inserted = sql
            .execute(
                "INSERT INTO sluice.backfills (slot, table_name, kind, state)
                 VALUES ($1, $2, 'initial', 'pending')
                 ON CONFLICT (slot, table_name) WHERE kind = 'initial' DO NOTHING",
                &[&config.postgres.slot, &table.name],
            )
            .await
            .map_err(|e| Error::postgres(format!("queueing the backfill of {}", table.name), e))?;
        if inserted > 0 {
            tracing::info!(table = %table.name, "queued the initial backfill");
        }
    }
    Ok(())
}

/// Queues an on-demand backfill and tells the running producer through the WAL, in one
/// transaction. Returns its id.
pub async fn request(
    sql: &mut Client,
    slot: &str,
    table: &str,
    condition: Option<&str>,
    rows_total: Option<i64>,
) -> Result<i64, Error> {
    let tx = sql
        .transaction()
        .await
        .map_err(|e| Error::postgres("starting a transaction", e))?;
    let id: i64 = tx
        .query_one(
            "INSERT INTO sluice.backfills (slot, table_name, condition, kind, state, rows_total)
             VALUES ($1, $2, $3, 'on_demand', 'pending', $4) RETURNING id",
            &[&slot, &table, &condition, &rows_total],
        )
        .await
        .map_err(|e| Error::postgres(format!("queueing the backfill of {table}"), e))?
        .get(0);
    tx.execute(
        "SELECT pg_logical_emit_message(true, $1, $2)",
        &[&MESSAGE_PREFIX, &super::requested(id)],
    )
    .await
    .map_err(|e| Error::postgres("signalling the producer", e))?;
    tx.commit()
        .await
        .map_err(|e| Error::postgres(format!("queueing the backfill of {table}"), e))?;
    Ok(id)
}

/// Key values stored as a JSON array of their text forms.
fn key_values(json: Option<Json>) -> Option<Vec<String>> {
    json.and_then(|k| {
        k.as_array().map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect()
        })
    })
}

/// The SQL form of stored key values.
fn key_json(key: Option<&[String]>) -> String {
    match key {
        Some(key) => format!("{}::jsonb", literal(&Json::from(key.to_vec()).to_string())),
        None => "NULL".to_owned(),
    }
}

fn job(row: &tokio_postgres::Row) -> Job {
    Job {
        id: row.get(0),
        table: row.get(1),
        condition: row.get(2),
        state: row.get(3),
        last_key: key_values(row.get(4)),
        // Only the producer's own query asks for it (after `ensure` added the column).
        end_key: key_values(row.try_get(8).ok().flatten()),
        rows_done: row.get(5),
        rows_total: row.get(6),
        error: row.get(7),
    }
}

const COLUMNS: &str = "id, table_name, condition, state, last_key, rows_done, rows_total, error";

/// Backfills of `slot` still to run or running, oldest first.
pub async fn unfinished(sql: &Client, slot: &str) -> Result<Vec<Job>, Error> {
    let rows = sql
        .query(
            &format!(
                "SELECT {COLUMNS}, end_key FROM sluice.backfills
                 WHERE slot = $1 AND state IN ('pending', 'running') ORDER BY id"
            ),
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres("reading the backfill control table", e))?;
    Ok(rows.iter().map(job).collect())
}

/// The latest backfills of `slot` (for `status`), oldest first; empty when the table does not
/// exist yet.
pub async fn recent(sql: &Client, slot: &str, limit: i64) -> Result<Vec<Job>, Error> {
    let exists = sql
        .query_one("SELECT to_regclass('sluice.backfills') IS NOT NULL", &[])
        .await
        .map_err(|e| Error::postgres("looking for the control table sluice.backfills", e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(Vec::new());
    }
    let rows = sql
        .query(
            &format!(
                "SELECT * FROM (SELECT {COLUMNS} FROM sluice.backfills WHERE slot = $1
                 ORDER BY id DESC LIMIT $2) latest ORDER BY id"
            ),
            &[&slot, &limit],
        )
        .await
        .map_err(|e| Error::postgres("reading the backfill control table", e))?;
    Ok(rows.iter().map(job).collect())
}

/// A backfill starts: state `running`, with the estimate and the key it ends at. A backfill an
/// earlier version started without an end gets one here too.
pub async fn start(
    sql: &Client,
    id: i64,
    rows_total: Option<i64>,
    end_key: Option<&[String]>,
) -> Result<(), Error> {
    sql.batch_execute(&format!(
        "UPDATE sluice.backfills SET state = 'running', rows_total = coalesce(rows_total, {}),
                end_key = {}, started_at = coalesce(started_at, now()), updated_at = now()
         WHERE id = {id}",
        rows_total.map_or("NULL".to_owned(), |t| t.to_string()),
        key_json(end_key),
    ))
    .await
    .map_err(|e| Error::postgres("updating the backfill control table", e))?;
    Ok(())
}

/// The SQL that records progress; it runs in the low watermark's transaction.
pub fn progress_sql(id: i64, last_key: Option<&[String]>, rows_done: u64) -> String {
    let key = key_json(last_key);
    format!(
        "UPDATE sluice.backfills SET last_key = {key}, rows_done = {rows_done}, updated_at = now() \
         WHERE id = {id}"
    )
}

/// A backfill read its last chunk and Kafka acknowledged everything.
pub async fn finish(
    sql: &Client,
    id: i64,
    last_key: Option<&[String]>,
    rows_done: u64,
) -> Result<(), Error> {
    sql.batch_execute(&format!(
        "{}; UPDATE sluice.backfills SET state = 'done', finished_at = now() WHERE id = {id}",
        progress_sql(id, last_key, rows_done)
    ))
    .await
    .map_err(|e| Error::postgres("updating the backfill control table", e))
}

/// A backfill cannot go on (its table or condition stopped working).
pub async fn fail(sql: &Client, id: i64, error: &str) -> Result<(), Error> {
    sql.execute(
        "UPDATE sluice.backfills SET state = 'failed', error = $2, updated_at = now(),
                finished_at = now() WHERE id = $1",
        &[&id, &error],
    )
    .await
    .map_err(|e| Error::postgres("updating the backfill control table", e))?;
    Ok(())
}

/// A SQL string literal that means `text` whatever `standard_conforming_strings` says.
pub fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str("E'");
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_quotes_and_backslashes() {
        assert_eq!(literal(r"it's a \ test"), r"E'it''s a \\ test'");
        assert_eq!(
            progress_sql(3, Some(&["a'b".to_owned(), "7".to_owned()]), 10),
            "UPDATE sluice.backfills SET last_key = E'[\"a''b\",\"7\"]'::jsonb, rows_done = 10, \
             updated_at = now() WHERE id = 3"
        );
    }
}
