//! The web console under `/console` of the consumer's HTTP server: the sinks of the whole
//! group, the producer's backfills and the slot, and the failed messages with their redrive.
//!
//! ```text
//!  browser ──GET /console/ ─────────────▶ index.html, console.js, console.css (embedded)
//!     │    ──GET /console/api/overview ─▶ group.rs:    Kafka (group offsets, end offsets,
//!     │                                                members) + every member's /status
//!     │    ──GET /console/api/backfills ▶ backfills.rs: the producer's /status, the slot,
//!     │                                                the control table, rebuilds
//!     │    ──GET /console/api/failed/S ─▶ failed.rs:   the dead-letter topic (as `dlq show`)
//!     └──────POST /console/api/redrive ─▶ failed.rs:   `dlq redrive` (needs the token)
//! ```
//!
//! Everything is computed on request from Kafka and the members' `/status`, so the console of
//! any process of a group shows the whole group. The page is static: the JS sets text with
//! `textContent` only, and every response forbids inline script (`Content-Security-Policy`), so
//! a document holding `<script>` is shown as text. Only loopback clients are answered unless
//! `telemetry.console.remote` is set; actions are POSTs that need `Authorization: Bearer` with
//! the configured token (compared in constant time), and without a token the console is
//! read-only. No response holds a secret: the pages show names, counts, positions and events,
//! never the config's URLs or credentials.

mod backfills;
mod failed;
mod group;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sluice_common::config::{Config, Secret};
use tokio_util::sync::CancellationToken;

use crate::stats::SinkStats;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// No script, style or connection but the console's own; no framing, no forms elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// What the console reads and acts with.
#[derive(Debug)]
pub struct Console {
    config: Arc<Config>,
    /// This process's sinks (the others' come from their `/status`).
    stats: Vec<Arc<SinkStats>>,
    /// Where this process serves, once bound.
    bound: OnceLock<SocketAddr>,
    /// One action at a time: two redrives of one topic would re-drive letters twice.
    busy: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

impl Console {
    pub fn new(config: Config, stats: Vec<Arc<SinkStats>>, shutdown: CancellationToken) -> Self {
        Self {
            config: Arc::new(config),
            stats,
            bound: OnceLock::new(),
            busy: tokio::sync::Mutex::new(()),
            shutdown,
        }
    }

    /// Records where the server listens (members are told apart by it).
    pub fn bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    fn token(&self) -> Option<&Secret> {
        self.config.telemetry.console.token.as_ref()
    }

    /// Whether actions are possible, and why not.
    fn actions(&self) -> Value {
        match self.token() {
            Some(_) => json!({"enabled": true, "reason": null}),
            None => json!({"enabled": false, "reason": READ_ONLY}),
        }
    }
}

const READ_ONLY: &str = "read-only: no telemetry.console.token is configured for this consumer; \
                         set one (from the environment) and restart it to enable actions";

/// The console's routes, or none when `telemetry.console.enabled` is off.
pub fn routes(console: Arc<Console>) -> Router {
    if !console.config.telemetry.console.enabled {
        return Router::new();
    }
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html", INDEX_HTML) }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript", CONSOLE_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css", CONSOLE_CSS) }),
        )
        .route("/console/api/overview", get(group::overview))
        .route("/console/api/backfills", get(backfills::backfills))
        .route("/console/api/failed/{sink}", get(failed::failed))
        .route("/console/api/redrive", post(failed::redrive))
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Loopback clients only (unless `remote`), and the security headers on every answer.
async fn guard(
    State(console): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = if console.config.telemetry.console.remote || peer.ip().is_loopback() {
        next.run(request).await
    } else {
        error(
            StatusCode::FORBIDDEN,
            "the console answers only on this host (loopback): open it through an SSH tunnel or \
             `kubectl port-forward`, or set telemetry.console.remote: true",
        )
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// Whether `headers` carry the configured token; `Err` says why not (a 403).
fn authorize(console: &Console, headers: &HeaderMap) -> Result<(), &'static str> {
    let Some(token) = console.token() else {
        return Err(READ_ONLY);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(
            "refused: this action needs the console token (telemetry.console.token); enter it \
             in the token field, or send `Authorization: Bearer <token>`",
        )
    }
}

/// Compares without stopping at the first difference, so the time taken says nothing about
/// how much of a guess was right (only whether its length was).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut differ = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        differ |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    differ == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!constant_time_eq(b"", b"0123456789abcdef"));
    }

    #[test]
    fn the_page_loads_no_inline_script_and_sets_text_only() {
        assert!(INDEX_HTML.contains(r#"<script src="console.js"></script>"#));
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
        assert!(!INDEX_HTML.contains("http"), "no external URL");
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(
                !CONSOLE_JS.contains(forbidden),
                "console.js uses {forbidden}"
            );
        }
    }
}
