//! Failed messages: `GET /console/api/failed/{sink}` (the letters still to re-drive, by reason
//! as `dlq list` counts them, and the first of them as `dlq show --format json` shows them) and
//! `POST /console/api/redrive` (`dlq redrive`, of one reason or one letter).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_common::config::{Config, SinkConfig};

use super::{Console, authorize, error};
use crate::dlq::{self, At, Filter, Letters};
use crate::error::Error;

/// Letters shown with their event; the counts cover them all.
const LETTERS_SHOWN: usize = 100;

pub(super) async fn failed(
    State(console): State<Arc<Console>>,
    Path(sink): Path<String>,
) -> Response {
    let Some(sink) = console.config.sink(&sink) else {
        return unknown_sink(&console.config, &sink);
    };
    match read(&console.config, sink).await {
        Ok(report) => Json(report).into_response(),
        Err(failure) => error(StatusCode::BAD_GATEWAY, failure.to_string()),
    }
}

async fn read(config: &Config, sink: &SinkConfig) -> Result<Value, Error> {
    let topic = sink.dlq_topic();
    let mut report = json!({
        "sink": sink.name,
        "topic": topic,
        "redrive_command": format!("sluice-consumer dlq {} redrive", sink.name),
    });
    let Some(mut letters) = Letters::open(config, sink).await? else {
        report["summary"] = dlq::summary::Summary::default().to_json();
        report["letters"] = json!([]);
        return Ok(report);
    };
    let summary = dlq::pending_summary(&mut letters, &Filter::default()).await?;
    letters.seek_pending()?;
    let mut shown = Vec::new();
    while shown.len() < LETTERS_SHOWN {
        let batch = letters.next_batch(LETTERS_SHOWN - shown.len()).await?;
        if batch.is_empty() {
            break;
        }
        shown.extend(batch.iter().map(|letter| dlq::show::to_json(letter, false)));
    }
    report["summary"] = summary.to_json();
    report["letters"] = Value::Array(shown);
    Ok(report)
}

/// `{"sink": …, "reason": …}` re-drives the letters of one reason (as the summary groups it),
/// `{"sink": …, "position": "P:O"}` one letter; `{"sink": …}` all of them.
pub(super) async fn redrive(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    if let Err(refused) = authorize(&console, &headers) {
        return error(StatusCode::FORBIDDEN, refused);
    }
    let Some(name) = request["sink"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the sink: {\"sink\": \"name\"}",
        );
    };
    if console.config.sink(name).is_none() {
        return unknown_sink(&console.config, name);
    }
    let mut filter = Filter {
        reason: request["reason"].as_str().map(str::to_owned),
        ..Filter::default()
    };
    if let Some(position) = request["position"].as_str() {
        match dlq::parse_at(position) {
            Ok(At::Position(partition, offset)) => filter.position = Some((partition, offset)),
            Ok(At::Offset(_)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("`{position}` names no partition: give PARTITION:OFFSET"),
                );
            }
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        }
    }
    let Ok(_busy) = console.busy.try_lock() else {
        return error(
            StatusCode::CONFLICT,
            "another action of this console is running: wait for it to finish",
        );
    };
    tracing::info!(
        sink = name,
        reason = filter.reason,
        position = ?filter.position,
        "console: re-driving dead letters"
    );
    let shutdown = console.shutdown.child_token();
    match dlq::redrive_letters(&console.config, name, &filter, false, shutdown).await {
        Ok(tally) => {
            let topic = console
                .config
                .sink(name)
                .map(SinkConfig::dlq_topic)
                .unwrap_or_default();
            tracing::info!(
                sink = name,
                redriven = tally.selected.total,
                failed_again = tally.failed.total,
                "console: redrive done"
            );
            Json(tally.to_json(name, &topic, false)).into_response()
        }
        Err(failure) => {
            tracing::warn!(sink = name, error = %failure, "console: redrive failed");
            error(StatusCode::BAD_GATEWAY, failure.to_string())
        }
    }
}

fn unknown_sink(config: &Config, name: &str) -> Response {
    let known: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no sink {name} in this consumer's config (known: {})",
            known.join(", ")
        ),
    )
}
