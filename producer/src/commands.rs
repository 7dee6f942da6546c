//! `check`, `status` and `backfill`: the commands that inspect or steer, rather than stream.

use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_common::config::{Config, Process};
use sluice_common::telemetry;

use crate::backfill::control;
use crate::backfill::worker_checks;
use crate::catalog::{self, PgTarget, quote_table};
use crate::error::Error;
use crate::stats::format_lsn;

/// One finding of `check`.
#[derive(Debug)]
struct Finding {
    level: Level,
    what: String,
    fix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    /// Worth changing, but running works.
    Warn,
    /// Running cannot work until this is fixed.
    Fail,
}

#[derive(Debug, Default)]
struct Report(Vec<Finding>);

impl Report {
    fn ok(&mut self, what: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Ok,
            what: what.into(),
            fix: None,
        });
    }
    fn warn(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Warn,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }
    fn fail(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Finding {
            level: Level::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        });
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for finding in &self.0 {
            let tag = match finding.level {
                Level::Ok => "ok  ",
                Level::Warn => "WARN",
                Level::Fail => "FAIL",
            };
            let _ = writeln!(out, "{tag}  {}", finding.what);
            if let Some(fix) = &finding.fix {
                let _ = writeln!(out, "      fix: {fix}");
            }
        }
        out
    }

    fn failures(&self) -> usize {
        self.0.iter().filter(|f| f.level == Level::Fail).count()
    }
}

/// Checks Postgres and Kafka, prints each finding with its fix, and fails when anything blocks
/// running.
pub async fn check(config: Config) -> Result<(), Error> {
    let mut report = Report::default();
    let target = PgTarget::from_config(&config.postgres)?;
    let sql = target.connect().await?;
    report.ok(format!(
        "connected to {} as {}",
        target.redacted(),
        target.user
    ));
    check_server(&sql, &target, &mut report).await?;
    check_tables(&sql, &config, &target, &mut report).await?;
    check_slot(&sql, &config, &mut report).await?;
    check_kafka(&config, &mut report).await;
    print!("{}", report.render());
    match report.failures() {
        0 => Ok(()),
        n => Err(Error::Command(format!(
            "{n} problem(s) block running: fix them and run check again"
        ))),
    }
}

async fn check_server(
    sql: &tokio_postgres::Client,
    target: &PgTarget,
    report: &mut Report,
) -> Result<(), Error> {
    let settings = catalog::settings(sql).await?;
    let get = |name: &str| settings.get(name).cloned().unwrap_or_default();
    let wal_level = get("wal_level");
    if wal_level == "logical" {
        report.ok("wal_level = logical");
    } else {
        report.fail(
            format!("wal_level = {wal_level}"),
            "ALTER SYSTEM SET wal_level = logical; then restart Postgres",
        );
    }
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM pg_replication_slots)::bigint,
                    (SELECT count(*) FROM pg_stat_replication)::bigint",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("counting slots and senders", e))?;
    let (slots_used, senders_used): (i64, i64) = (row.get(0), row.get(1));
    for (name, used) in [
        ("max_replication_slots", slots_used),
        ("max_wal_senders", senders_used),
    ] {
        let max: i64 = get(name).parse().unwrap_or(0);
        if max > used {
            report.ok(format!("{name} = {max} ({used} in use)"));
        } else {
            report.fail(
                format!("{name} = {max} with {used} in use: no room for sluice"),
                format!(
                    "ALTER SYSTEM SET {name} = {}; then restart Postgres",
                    (used + 4).max(10)
                ),
            );
        }
    }
    let row = sql
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("reading the role", e))?;
    if row.get::<_, bool>(0) {
        report.ok(format!("role {} may replicate", target.user));
    } else {
        report.fail(
            format!("role {} lacks the REPLICATION attribute", target.user),
            format!(
                "ALTER ROLE {} REPLICATION",
                catalog::quote_ident(&target.user)
            ),
        );
    }
    Ok(())
}

async fn check_tables(
    sql: &tokio_postgres::Client,
    config: &Config,
    target: &PgTarget,
    report: &mut Report,
) -> Result<(), Error> {
    let published = catalog::publication_tables(sql, &config.postgres.publication).await?;
    match &published {
        None => report.ok(format!(
            "publication {} will be created by run",
            config.postgres.publication
        )),
        Some(_) => report.ok(format!(
            "publication {} exists",
            config.postgres.publication
        )),
    }
    for table in &config.tables {
        let (schema, name) = table.schema_and_table();
        let Some(info) = catalog::table_info(sql, schema, name).await? else {
            report.fail(
                format!("table {} does not exist", table.name),
                "create it, or remove it from `tables`",
            );
            continue;
        };
        let quoted = quote_table(schema, name);
        let row = sql
            .query_one(
                "SELECT has_table_privilege(current_user, $1, 'SELECT')",
                &[&quoted],
            )
            .await
            .map_err(|e| Error::postgres(format!("checking privileges on {}", table.name), e))?;
        if !row.get::<_, bool>(0) {
            report.fail(
                format!("{} is not readable by {}", table.name, target.user),
                format!(
                    "GRANT SELECT ON {quoted} TO {}",
                    catalog::quote_ident(&target.user)
                ),
            );
        }
        match (&table.key, info.key_columns.is_empty(), info.replica_identity) {
            (Some(_), _, 'f') => report.ok(format!("{}: key from the config, replica identity full", table.name)),
            (Some(_), _, identity) => report.fail(
                format!("{}: key columns come from the config but replica identity is `{identity}`", table.name),
                format!("ALTER TABLE {quoted} REPLICA IDENTITY FULL"),
            ),
            (None, true, _) => report.fail(
                format!("{} has no primary key", table.name),
                "add a primary key, or set REPLICA IDENTITY FULL and name key columns in `tables[].key`",
            ),
            (None, false, identity) => {
                report.ok(format!("{}: primary key ({})", table.name, info.key_columns.join(", ")));
                if identity != 'f' && has_toastable_columns(sql, schema, name).await? {
                    report.warn(
                        format!(
                            "{} has TOASTable columns and replica identity `{identity}`: updates that leave them untouched become partial updates",
                            table.name
                        ),
                        format!("ALTER TABLE {quoted} REPLICA IDENTITY FULL (exact updates, at the cost of more WAL)"),
                    );
                }
            }
        }
        if let Some(published) = &published
            && !published.contains(&table.name)
        {
            report.ok(format!(
                "{} will be added to the publication by run",
                table.name
            ));
        }
    }
    Ok(())
}

async fn has_toastable_columns(
    sql: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> Result<bool, Error> {
    let row = sql
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attstorage <> 'p')",
            &[&schema, &name],
        )
        .await
        .map_err(|e| Error::postgres("reading column storage", e))?;
    Ok(row.get(0))
}

async fn check_slot(
    sql: &tokio_postgres::Client,
    config: &Config,
    report: &mut Report,
) -> Result<(), Error> {
    let slot = &config.postgres.slot;
    match catalog::slot_state(sql, slot).await? {
        None => report.ok(format!("slot {slot} will be created by run")),
        Some(state) => {
            if state.plugin != "pgoutput" {
                report.fail(
                    format!("slot {slot} uses plugin {}", state.plugin),
                    format!("SELECT pg_drop_replication_slot('{slot}'), or set postgres.slot to another name"),
                );
            } else if state.wal_status.as_deref() == Some("lost") {
                report.fail(
                    format!("slot {slot} lost WAL it needed"),
                    "drop the slot and backfill again",
                );
            } else {
                let holder = state
                    .active_pid
                    .map_or("idle".to_owned(), |pid| format!("held by pid {pid}"));
                report.ok(format!(
                    "slot {slot}: confirmed {}, {} bytes behind, {holder}",
                    format_lsn(state.confirmed_flush_lsn),
                    state.lag_bytes
                ));
            }
        }
    }
    Ok(())
}

async fn check_kafka(config: &Config, report: &mut Report) {
    let consumer: Result<BaseConsumer, _> = crate::publish::client_config(config, &[]).create();
    let result = match consumer {
        Ok(consumer) => tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string())),
        Err(error) => Err(error.to_string()),
    };
    match result {
        Ok(brokers) => report.ok(format!(
            "kafka at {} answers ({brokers} broker(s))",
            config.kafka.brokers
        )),
        Err(error) => report.fail(
            format!("kafka at {} does not answer: {error}", config.kafka.brokers),
            "check kafka.brokers and that the brokers run and are reachable from here",
        ),
    }
}

/// Prints the slot's state and, when the producer runs, its own counters.
pub async fn status(config: Config) -> Result<(), Error> {
    let target = PgTarget::from_config(&config.postgres)?;
    let sql = target.connect().await?;
    let slot = &config.postgres.slot;
    let mut out = String::new();
    match catalog::slot_state(&sql, slot).await? {
        None => {
            let _ = writeln!(out, "slot {slot}: does not exist (run has not started yet)");
        }
        Some(state) => {
            let holder = state
                .active_pid
                .map_or("no producer attached".to_owned(), |pid| {
                    format!("streaming to pid {pid}")
                });
            let _ = writeln!(out, "slot {slot}: {holder}");
            let _ = writeln!(
                out,
                "  confirmed lsn: {}",
                format_lsn(state.confirmed_flush_lsn)
            );
            let _ = writeln!(out, "  lag: {} bytes", state.lag_bytes);
        }
    }
    let jobs = control::recent(&sql, slot, 20).await?;
    let listen = config.telemetry.listen(Process::Producer);
    // Every producer of this slot on this host: the one streaming and any standby.
    let mut running = Vec::new();
    for addr in telemetry::local_addresses(listen) {
        match telemetry::fetch_status(addr).await {
            Ok(document) if document["slot"].as_str() == Some(slot.as_str()) => {
                running.push((addr, document));
            }
            Ok(_) => {} // another process (a consumer, another slot's producer)
            Err(error) if listen.explicit => {
                render_backfills(&mut out, &jobs, &[]);
                let _ = writeln!(out, "producer at {addr}: not reachable ({error})");
            }
            Err(_) => {}
        }
    }
    if running.is_empty() && !listen.explicit {
        render_backfills(&mut out, &jobs, &[]);
        let _ = writeln!(
            out,
            "no producer of slot {slot} answers on this host (ports {}–{})",
            listen.addr.port(),
            listen.addr.port() + telemetry::DEFAULT_PORT_TRIES - 1
        );
    }
    let live = running
        .iter()
        .find(|(_, document)| document["state"] == "streaming")
        .and_then(|(_, document)| document["backfills"].as_array().cloned());
    if !running.is_empty() {
        render_backfills(&mut out, &jobs, live.as_deref().unwrap_or_default());
    }
    for (addr, running) in &running {
        let state = running["state"].as_str().unwrap_or("running");
        let last =
            running["last_event_unix_micros"]
                .as_i64()
                .map_or("none yet".to_owned(), |micros| {
                    let secs = micros / 1_000_000;
                    let age = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|now| now.as_secs() as i64 - secs)
                        .unwrap_or(0);
                    format!("{age}s ago (commit time, unix {secs})")
                });
        let _ = writeln!(out, "producer at {addr}: {state}");
        let _ = writeln!(out, "  last event: {last}");
        if let Some(tables) = running["tables"].as_object() {
            for (table, counts) in tables {
                let _ = writeln!(
                    out,
                    "  {table}: {} inserts, {} updates, {} deletes, {} truncates, {} backfilled",
                    counts["insert"],
                    counts["update"],
                    counts["delete"],
                    counts["truncate"],
                    counts["read"]
                );
            }
        }
    }
    print!("{out}");
    Ok(())
}

/// Asks the running producer to backfill `table`, optionally only rows matching `condition`.
///
/// Everything is checked before anything is written: the table must be in the config and have
/// a key to page by, and the condition must work on the table (Postgres's own message when it
/// does not). The backfill is then queued in the control table, and the running producer is told
/// through the WAL in the same transaction; it starts at once, without a restart (or when the
/// producer next runs).
pub async fn backfill(
    config: Config,
    table: String,
    condition: Option<String>,
) -> Result<(), Error> {
    let condition = condition.filter(|c| !c.trim().is_empty());
    let Some(table_config) = config.table(&table) else {
        let known: Vec<&str> = config.tables.iter().map(|t| t.name.as_str()).collect();
        return Err(Error::Command(format!(
            "table {table} is not in `tables` of the config (it has {}): add it there and restart              the producer first, since only captured tables can be backfilled",
            known.join(", ")
        )));
    };
    let (schema, name) = table_config.schema_and_table();
    let quoted = quote_table(schema, name);
    let target = PgTarget::from_config(&config.postgres)?;
    let mut sql = target.connect().await?;
    worker_checks::key_columns(&sql, &config, &table).await?;
    if let Some(condition) = &condition {
        worker_checks::validate_condition(&sql, &quoted, condition).await?;
    }
    let estimate = worker_checks::estimate(&sql, &quoted, condition.as_deref()).await?;
    control::ensure(&sql).await?;
    let id = control::request(
        &mut sql,
        &config.postgres.slot,
        &table,
        condition.as_deref(),
        estimate,
    )
    .await?;
    let what = match &condition {
        Some(condition) => format!("rows of {table} where {condition}"),
        None => format!("every row of {table}"),
    };
    println!(
        "backfill {id} queued: {what} (about {} rows); follow it with `sluice-producer status`",
        estimate.unwrap_or(0)
    );
    Ok(())
}

/// One line per backfill: the control table's state, with the running producer's fresher
/// count, rate and ETA when it has them.
fn render_backfills(out: &mut String, jobs: &[control::Job], live: &[serde_json::Value]) {
    if jobs.is_empty() {
        return;
    }
    let _ = writeln!(out, "backfills:");
    for job in jobs {
        let running = live.iter().find(|l| l["id"].as_i64() == Some(job.id));
        let rows_done = running
            .and_then(|l| l["rows_done"].as_i64())
            .unwrap_or(job.rows_done)
            .max(job.rows_done);
        let total = job
            .rows_total
            .or_else(|| running.and_then(|l| l["rows_total"].as_i64()));
        let mut line = format!("  {} {}", job.id, job.table);
        if let Some(condition) = &job.condition {
            let _ = write!(line, " where {condition}");
        }
        let _ = write!(line, ": {}, {rows_done} rows", job.state);
        if let Some(total) = total.filter(|t| *t > 0) {
            let percent = (rows_done as f64 * 100.0 / total as f64).min(100.0);
            let _ = write!(line, " of ~{total} ({percent:.0}%)");
        }
        if job.state == "running" {
            match running {
                Some(l) => {
                    let _ = write!(line, ", {} rows/s", l["rows_per_second"]);
                    if let Some(eta) = l["eta_seconds"].as_u64() {
                        let _ = write!(line, ", ETA {eta}s");
                    }
                }
                None => line.push_str(", waiting for the producer"),
            }
        }
        if let Some(error) = &job.error {
            let _ = write!(line, " ({error})");
        }
        let _ = writeln!(out, "{line}");
    }
}
