//! The alerting rules of deploy/prometheus/alerts.yaml in a real Prometheus (Debian's package)
//! that scrapes a running sluice-producer and sluice-consumer: when the cluster goes away (a
//! proxy in front of Elasticsearch is cut while rows keep coming) `SluiceNotReady` and
//! `SluiceNoBulkSuccess` fire; when it returns they resolve and every row is indexed.
//!
//! The rules are the file's, with its waiting times shortened so the test takes seconds: every
//! `for:` becomes 2s and the 300 s without a bulk success becomes 5 s (the timing itself is
//! unit-tested by deploy/prometheus/alerts.test.yaml).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::proxy::Proxy;
use sluice_tests::{Cluster, Process, TestContext, eventually, free_port};

const WAIT: Duration = Duration::from_secs(120);

/// alerts.yaml with its waiting times shortened (see the module's doc).
fn fast_rules() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yaml");
    let rules = std::fs::read_to_string(&path).unwrap();
    let mut fast: Vec<String> = Vec::new();
    for line in rules.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("for: ") {
            assert!(rest.ends_with('m'), "a `for:` in minutes: {line}");
            fast.push(format!("{}for: 2s", &line[..line.len() - trimmed.len()]));
        } else {
            fast.push(line.replace(
                "sluice_consumer_last_bulk_success_timestamp_seconds)) > 300",
                "sluice_consumer_last_bulk_success_timestamp_seconds)) > 5",
            ));
        }
    }
    let fast = fast.join("\n");
    assert!(fast.contains("> 5\n"), "the no-success threshold was found");
    fast
}

/// The alerts Prometheus has firing, as `alertname` (and `sink` when it has one).
async fn firing(prometheus: &str) -> anyhow::Result<BTreeSet<String>> {
    let answer: Value = reqwest::get(format!("{prometheus}/api/v1/alerts"))
        .await?
        .json()
        .await?;
    Ok(answer["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            let name = a["labels"]["alertname"].as_str().unwrap_or_default();
            match a["labels"]["job"].as_str() {
                Some(job) => format!("{name} {job}"),
                None => name.to_owned(),
            }
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_fires_and_resolves_the_alerts_when_the_cluster_goes_away() {
    let context = TestContext::new("alerts").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
        .await
        .unwrap();
    let elasticsearch = context.endpoints.elasticsearch_url.clone().unwrap();
    let target = url::Url::parse(&elasticsearch).unwrap();
    let proxy = Proxy::start(
        format!(
            "{}:{}",
            target.host_str().unwrap(),
            target.port_or_known_default().unwrap()
        )
        .parse()
        .unwrap(),
    )
    .await
    .unwrap();
    let sink = context
        .sink(Cluster::Elasticsearch, "items", "public.items")
        .endpoint(&proxy.url())
        .unready_after(Duration::from_secs(3));
    let (producer_port, consumer_port, prometheus_port) = (free_port(), free_port(), free_port());
    let path = context
        .config()
        .table("public.items")
        .sink(sink)
        .producer_port(producer_port)
        .consumer_port(consumer_port)
        .write()
        .unwrap();
    let dir = path.parent().unwrap().to_owned();
    let mut producer = Process::run("sluice-producer", &path, "producer.log").unwrap();
    let mut consumer = Process::run("sluice-consumer", &path, "consumer.log").unwrap();

    context.wait_streaming().await.unwrap();
    std::fs::write(dir.join("rules.yaml"), fast_rules()).unwrap();
    let scrape = |job: &str, port: u16| json!({"job_name": job, "static_configs": [{"targets": [format!("127.0.0.1:{port}")]}]});
    let prometheus_config = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            scrape("sluice-producer", producer_port),
            scrape("sluice-consumer", consumer_port),
        ],
    });
    std::fs::write(
        dir.join("prometheus.yml"),
        serde_saphyr::to_string(&prometheus_config).unwrap(),
    )
    .unwrap();
    let mut prometheus_process = Process::start_program(
        Path::new("prometheus"),
        &[
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ),
            &format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
        dir.join("prometheus.log"),
    )
    .expect("prometheus from Debian's package (deploy/prometheus/test.sh installs it)");
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");

    // Working: rows are indexed, both targets are up, nothing fires.
    db.batch_execute("INSERT INTO items SELECT i, 0 FROM generate_series(1, 100) i")
        .await
        .unwrap();
    let indexed = |count: usize| {
        let context = &context;
        async move {
            let docs = context.documents(Cluster::Elasticsearch, "items").await?;
            anyhow::ensure!(docs.len() == count, "{} of {count} documents", docs.len());
            Ok(Some(()))
        }
    };
    eventually(WAIT, "100 rows indexed", || indexed(100))
        .await
        .unwrap();
    eventually(WAIT, "Prometheus scrapes both processes", || async {
        let answer: Value = reqwest::get(format!("{prometheus}/api/v1/targets"))
            .await?
            .json()
            .await?;
        let up = answer["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["health"] == "up")
            .count();
        anyhow::ensure!(up == 2, "{up} of 2 targets up: {answer}");
        Ok(Some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet = firing(&prometheus).await.unwrap();
    assert!(
        quiet.is_empty(),
        "nothing fires while all is well: {quiet:?}"
    );

    // The cluster goes away while rows keep coming.
    proxy.cut();
    db.batch_execute("INSERT INTO items SELECT i, 0 FROM generate_series(101, 200) i")
        .await
        .unwrap();
    let expected = ["SluiceNoBulkSuccess", "SluiceNotReady sluice-consumer"];
    eventually(WAIT, "the alerts fire", || async {
        let now = firing(&prometheus).await?;
        anyhow::ensure!(expected.iter().all(|a| now.contains(*a)), "firing: {now:?}");
        Ok(Some(()))
    })
    .await
    .unwrap();

    // It returns: everything is indexed and the alerts resolve.
    proxy.restore();
    eventually(WAIT, "200 rows indexed", || indexed(200))
        .await
        .unwrap();
    eventually(WAIT, "the alerts resolve", || async {
        let now = firing(&prometheus).await?;
        anyhow::ensure!(now.is_empty(), "still firing: {now:?}");
        Ok(Some(()))
    })
    .await
    .unwrap();

    for process in [&mut consumer, &mut producer, &mut prometheus_process] {
        process.stop(WAIT).await.unwrap();
    }
    context.cleanup().await.unwrap();
}
