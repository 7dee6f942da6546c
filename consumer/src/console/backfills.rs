//! `GET /console/api/backfills`: what `sluice-producer status` shows (the slot's confirmed LSN
//! and lag, the backfills of the control table with the running producer's rate and ETA), and
//! each sink's unfinished rebuild as `sluice-consumer status` describes it, with the command
//! that runs or resumes it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use sluice_common::config::{Config, Process};
use sluice_common::telemetry;
use sluice_producer::backfill::control;
use sluice_producer::catalog::{PgTarget, slot_state};
use sluice_producer::stats::format_lsn;

use super::Console;

/// Backfills listed, newest first.
const BACKFILLS_SHOWN: i64 = 20;

pub(super) async fn backfills(State(console): State<Arc<Console>>) -> Json<Value> {
    let config = &console.config;
    let producer = producer(config).await;
    let live = producer
        .as_ref()
        .and_then(|p| p["backfills"].as_array().cloned())
        .unwrap_or_default();
    let (slot, jobs) = match from_postgres(config, &live).await {
        Ok(found) => found,
        Err(error) => (json!({"error": error}), json!({"error": error})),
    };
    let mut rebuilds = Vec::new();
    for sink in &config.sinks {
        rebuilds.push(json!({
            "sink": sink.name,
            "progress": crate::rebuild::describe(config, sink).await.map(|d| d.trim().to_owned()),
            "command": format!("sluice-consumer rebuild {}", sink.name),
        }));
    }
    Json(json!({
        "producer": producer.map(|p| json!({
            "addr": p["addr"],
            "state": p["state"],
            "confirmed_lsn": p["confirmed_lsn"],
            "last_event_unix_micros": p["last_event_unix_micros"],
        })),
        "slot": slot,
        "backfills": jobs,
        "rebuilds": rebuilds,
    }))
}

/// The `/status` of the producer of the config's slot on this host (the streaming one when a
/// standby answers too), with its address as `addr`.
async fn producer(config: &Config) -> Option<Value> {
    let slot = config.postgres.slot.as_str();
    let mut found: Option<Value> = None;
    for addr in telemetry::local_addresses(config.telemetry.listen(Process::Producer)) {
        let Ok(mut document) = telemetry::fetch_status(addr).await else {
            continue;
        };
        if document["slot"].as_str() != Some(slot) {
            continue;
        }
        document["addr"] = json!(addr.to_string());
        let streaming = document["state"] == "streaming";
        if streaming || found.is_none() {
            found = Some(document);
        }
        if streaming {
            break;
        }
    }
    found
}

/// The slot, and the backfills of the control table merged with the live progress.
async fn from_postgres(config: &Config, live: &[Value]) -> Result<(Value, Value), String> {
    let sql = PgTarget::from_config(&config.postgres)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let name = &config.postgres.slot;
    let slot = match slot_state(&sql, name).await.map_err(|e| e.to_string())? {
        None => json!({"name": name, "exists": false}),
        Some(state) => json!({
            "name": name,
            "exists": true,
            "active": state.active_pid.is_some(),
            "confirmed_lsn": format_lsn(state.confirmed_flush_lsn),
            "lag_bytes": state.lag_bytes,
            "wal_status": state.wal_status,
        }),
    };
    let jobs = control::recent(&sql, name, BACKFILLS_SHOWN)
        .await
        .map_err(|e| e.to_string())?;
    let jobs: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let running = live.iter().find(|l| l["id"].as_i64() == Some(job.id));
            let rows_done = running
                .and_then(|l| l["rows_done"].as_i64())
                .unwrap_or(job.rows_done)
                .max(job.rows_done);
            let live_field = |field: &str| {
                running
                    .filter(|_| job.state == "running")
                    .map_or(Value::Null, |l| l[field].clone())
            };
            json!({
                "id": job.id,
                "table": job.table,
                "condition": job.condition,
                "state": job.state,
                "rows_done": rows_done,
                "rows_total": job
                    .rows_total
                    .or_else(|| running.and_then(|l| l["rows_total"].as_i64())),
                "rows_per_second": live_field("rows_per_second"),
                "eta_seconds": live_field("eta_seconds"),
                "error": job.error,
            })
        })
        .collect();
    Ok((slot, Value::Array(jobs)))
}
