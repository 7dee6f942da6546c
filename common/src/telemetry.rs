//! Logs, metrics and the health server: one HTTP listener per process serving Prometheus
//! `/metrics`, `/healthz` (the process is alive) and `/readyz` (it is doing its job).

pub mod names;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::{Listen, LogFormat};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter `{filter}`: {message}")]
    Filter { filter: String, message: String },
    #[error(
        "cannot listen on {addr} for metrics and health checks: {source}; choose another address with --listen (or SLUICE_LISTEN)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// Sets up `tracing` to write to stderr, as human-readable or JSON lines. Calling it again is a
/// no-op (tests run several pipelines in one process).
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    // The platform verifier logs every refused certificate as an ERROR of its own; the process
    // reports it once, with the fix.
    let quiet;
    let with_quiet = if filter.contains("rustls_platform_verifier") {
        filter
    } else {
        quiet = format!("{filter},rustls_platform_verifier=off");
        &quiet
    };
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(with_quiet).map_err(|e| TelemetryError::Filter {
            filter: filter.to_owned(),
            message: e.to_string(),
        })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
            names::describe();
            // Histogram samples wait in per-thread buffers until upkeep folds them into the
            // summaries: without it they pile up (memory grows with every event) until someone
            // scrapes /metrics, and a late scrape sees a distorted window.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
        .map_err(TelemetryError::Metrics)
}

/// Readiness as seen by `/readyz`: ready, or not ready with the reason.
#[derive(Debug, Clone)]
pub struct Health {
    unready: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// Starts not ready ("starting").
    pub fn new() -> Self {
        metrics::gauge!(names::READY).set(0.0);
        Self {
            unready: Arc::new(Mutex::new(Some("starting".to_owned()))),
        }
    }

    pub fn set_ready(&self) {
        if let Ok(mut state) = self.unready.lock() {
            *state = None;
        }
        metrics::gauge!(names::READY).set(1.0);
    }

    pub fn set_unready(&self, reason: impl Into<String>) {
        if let Ok(mut state) = self.unready.lock() {
            *state = Some(reason.into());
        }
        metrics::gauge!(names::READY).set(0.0);
    }

    /// `None` when ready, else why not.
    pub fn unready_reason(&self) -> Option<String> {
        self.unready
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|_| Some("poisoned".to_owned()))
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

/// Renders the process's own status document for `GET /status` (what the `status` commands
/// show about a running process).
pub type StatusFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Clone)]
struct ServerState {
    metrics: PrometheusHandle,
    health: Health,
    status: Option<StatusFn>,
}

/// How many ports after the default one a process tries when the default is busy: room for this
/// many processes of one kind on a host with the same config.
pub const DEFAULT_PORT_TRIES: u16 = 20;

/// Binds `listen` and serves the endpoints until `shutdown` is cancelled. Returns the bound
/// address (useful with port 0) once the listener is up. A default address that another process
/// holds (a second consumer or a standby producer on the same host) gives way to the next free
/// port; an address the user chose must be free.
pub async fn serve(
    listen: Listen,
    health: Health,
    status: Option<StatusFn>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, TelemetryError> {
    serve_with(listen, health, status, Router::new(), shutdown).await
}

/// [`serve`] with more routes beside the health endpoints (the consumer's console). Handlers
/// can read the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve_with(
    listen: Listen,
    health: Health,
    status: Option<StatusFn>,
    routes: Router,
    shutdown: CancellationToken,
) -> Result<SocketAddr, TelemetryError> {
    let metrics = metrics_handle()?;
    let listener = bind(listen).await?;
    let bound = listener
        .local_addr()
        .map_err(|source| TelemetryError::Bind {
            addr: listen.addr,
            source,
        })?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_document))
        .with_state(ServerState {
            metrics,
            health,
            status,
        })
        .merge(routes);
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "health server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

/// Where processes started with `listen` on this host may serve `/status`: the chosen address
/// (loopback for an unspecified IP), or every port the default address may have given way to.
pub fn local_addresses(listen: Listen) -> Vec<SocketAddr> {
    let mut addr = listen.addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    if listen.explicit {
        return vec![addr];
    }
    (0..DEFAULT_PORT_TRIES)
        .filter_map(|i| addr.port().checked_add(i))
        .map(|port| SocketAddr::new(addr.ip(), port))
        .collect()
}

/// The `/status` document served at `addr`.
pub async fn fetch_status(addr: SocketAddr) -> Result<serde_json::Value, reqwest::Error> {
    reqwest::Client::new()
        .get(format!("http://{addr}/status"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

async fn bind(listen: Listen) -> Result<tokio::net::TcpListener, TelemetryError> {
    let tries = if listen.explicit {
        1
    } else {
        DEFAULT_PORT_TRIES
    };
    let mut addr = listen.addr;
    let mut first_error = None;
    for _ in 0..tries {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                if addr != listen.addr {
                    tracing::info!(
                        default = %listen.addr,
                        %addr,
                        "the default address is taken (another sluice process on this host?): using the next free port"
                    );
                }
                return Ok(listener);
            }
            Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
                first_error.get_or_insert(source);
                let Some(port) = addr.port().checked_add(1) else {
                    break;
                };
                addr.set_port(port);
            }
            Err(source) => {
                return Err(TelemetryError::Bind {
                    addr: listen.addr,
                    source,
                });
            }
        }
    }
    let source = first_error.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into());
    Err(TelemetryError::Bind {
        addr: listen.addr,
        source,
    })
}

async fn render_metrics(State(state): State<ServerState>) -> String {
    state.metrics.render()
}

async fn status_document(
    State(state): State<ServerState>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    match &state.status {
        Some(render) => (StatusCode::OK, axum::Json(render())),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no status here"})),
        ),
    }
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, String) {
    match state.health.unready_reason() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let addr = serve(
            Listen {
                addr: "127.0.0.1:0".parse().unwrap(),
                explicit: true,
            },
            health.clone(),
            Some(Arc::new(|| serde_json::json!({"up": true}))),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        let unready = get("/readyz").await.unwrap();
        assert_eq!(unready.status(), 503);
        assert_eq!(unready.text().await.unwrap(), "not ready: starting\n");
        health.set_ready();
        assert_eq!(get("/readyz").await.unwrap().status(), 200);

        metrics::counter!("sluice_test_total").increment(3);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(body.contains("sluice_test_total 3"), "{body}");

        let status: serde_json::Value = get("/status").await.unwrap().json().await.unwrap();
        assert_eq!(status, serde_json::json!({"up": true}));

        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_busy_default_port_gives_way_to_the_next_and_a_chosen_one_is_an_error() {
        // Hold a port, as a first process on this host would.
        let held = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let busy = held.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let default = Listen {
            addr: busy,
            explicit: false,
        };
        let second = serve(default, Health::new(), None, shutdown.clone())
            .await
            .unwrap();
        assert_ne!(second.port(), busy.port());
        assert!(second.port() > busy.port() && second.port() < busy.port() + DEFAULT_PORT_TRIES);
        let reply = reqwest::get(format!("http://{second}/healthz"))
            .await
            .unwrap();
        assert_eq!(reply.status(), 200);

        let chosen = Listen {
            addr: busy,
            explicit: true,
        };
        let error = serve(chosen, Health::new(), None, shutdown.clone())
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&format!("cannot listen on {busy}")),
            "{error}"
        );
        shutdown.cancel();
    }
}
