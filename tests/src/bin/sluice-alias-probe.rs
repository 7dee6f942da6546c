//! `sluice-alias-probe`: the latency probe of `bench/rebuild.sh`.
//!
//! ```text
//! sluice-alias-probe PG_URL ES_ENDPOINT ALIAS SECONDS
//! ```
//!
//! Every 200 ms it commits `UPDATE items SET note = 'probe <n>' WHERE id = <probe row>` (rows
//! -1 … -20, which must exist) and then searches the alias every 50 ms with a `match_phrase` on
//! `note` until the document is found: commit → visible through the alias, as an application
//! reading the index sees it (after a refresh). The API key comes from `PROBE_API_KEY`. Prints
//! one line: `probes=… found=… p50=… p99=… max=…` (seconds). It stops after SECONDS, or earlier
//! once the file named by `PROBE_STOP_FILE` exists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const PROBE_EVERY: Duration = Duration::from_millis(200);
const POLL_EVERY: Duration = Duration::from_millis(50);
const GIVE_UP: Duration = Duration::from_secs(60);
const PROBE_ROWS: i64 = 20;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pg, endpoint, alias, seconds] = args.as_slice() else {
        bail!("usage: sluice-alias-probe PG_URL ES_ENDPOINT ALIAS SECONDS");
    };
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    tokio::runtime::Runtime::new()?.block_on(probe(pg, endpoint, alias, seconds))
}

async fn probe(pg: &str, endpoint: &str, alias: &str, seconds: u64) -> anyhow::Result<()> {
    let db = Arc::new(sluice_tests::connect(pg).await?);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(key) = std::env::var("PROBE_API_KEY") {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("ApiKey {key}").parse()?,
        );
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    let url = format!("{endpoint}/{alias}/_search");
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut n: i64 = 0;
    let stop_file = std::env::var_os("PROBE_STOP_FILE").map(std::path::PathBuf::from);
    while Instant::now() < end && !stop_file.as_ref().is_some_and(|f| f.exists()) {
        tick.tick().await;
        n += 1;
        let row = -(n % PROBE_ROWS) - 1;
        let note = format!("probe {n}");
        db.execute("UPDATE items SET note = $1 WHERE id = $2", &[&note, &row])
            .await?;
        let committed = Instant::now();
        let (http, url, latencies) = (http.clone(), url.clone(), latencies.clone());
        tasks.spawn(async move {
            let query = json!({"size": 0, "query": {"match_phrase": {"note": note}}});
            while committed.elapsed() < GIVE_UP {
                tokio::time::sleep(POLL_EVERY).await;
                let Ok(response) = http.post(&url).json(&query).send().await else {
                    continue;
                };
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if body["hits"]["total"]["value"].as_u64().unwrap_or(0) > 0 {
                    latencies
                        .lock()
                        .await
                        .push(committed.elapsed().as_secs_f64());
                    return;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut found = latencies.lock().await.clone();
    found.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if found.is_empty() {
            return f64::NAN;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((found.len() as f64 * q).ceil() as usize).clamp(1, found.len()) - 1;
        found[i]
    };
    println!(
        "probes={n} found={} p50={:.3} p99={:.3} max={:.3}",
        found.len(),
        at(0.5),
        at(0.99),
        found.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
