//! sluice-consumer while Elasticsearch is down: nothing is committed past an event that is not
//! indexed, and once Elasticsearch is back every row arrives.
//!
//! This stops the shared Elasticsearch, so it is a test binary of its own with a single test
//! (cargo runs test binaries one after another), and it always starts Elasticsearch again, also
//! when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{Cluster, StoppedService, TestContext, eventually, free_port};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_stopped_mid_stream_loses_nothing_and_commits_nothing_unindexed() {
    let context = TestContext::new("es_outage").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE events (id int PRIMARY KEY, n int)")
        .await
        .unwrap();
    let sink = context
        .sink(Cluster::Elasticsearch, "events", "public.events")
        .request_timeout(Duration::from_secs(2))
        .unready_after(Duration::from_secs(3));
    let port = free_port();
    let config = context
        .config()
        .table("public.events")
        .sink(sink)
        .consumer_port(port)
        .load()
        .unwrap();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let ready = |url: String| async move {
        let response = reqwest::get(&url).await?;
        let status = response.status().as_u16();
        anyhow::Ok((status, response.text().await?))
    };
    let pipeline = context.start_pipeline(config).await.unwrap();
    let group = context.sink_name("events");
    let topic = context.topic("public.events");

    db.batch_execute("INSERT INTO events SELECT i, i FROM generate_series(1, 200) i")
        .await
        .unwrap();
    eventually(WAIT, "200 documents", || async {
        let docs = context.documents(Cluster::Elasticsearch, "events").await?;
        Ok((docs.len() == 200).then_some(()))
    })
    .await
    .unwrap();
    let before = context
        .wait_committed_to_end(&group, &topic, WAIT)
        .await
        .unwrap();

    let elasticsearch = StoppedService::stop("elasticsearch").await.unwrap();
    let stopped_at = Instant::now();
    // Writes while Elasticsearch is away, one transaction per second for a few seconds.
    for chunk in 0..5 {
        let from = 201 + chunk * 40;
        db.batch_execute(&format!(
            "INSERT INTO events SELECT i, i FROM generate_series({from}, {}) i;
             UPDATE events SET n = n + 1000 WHERE id = {};",
            from + 39,
            chunk + 1
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // For 20 s of outage: the committed offsets never pass what was indexed before it.
    while stopped_at.elapsed() < Duration::from_secs(20) {
        let committed = context.committed_offsets(&group, &topic).await.unwrap();
        for (partition, offset) in &committed {
            let limit = before.get(partition).copied().unwrap_or(0);
            assert!(
                *offset <= limit,
                "partition {partition} committed {offset} while Elasticsearch was down (indexed up to {limit})"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        pipeline.consumer_running(),
        "the consumer waits, it does not give up"
    );
    // Behind and not indexing for longer than unready_after: not ready, and says why.
    let reason = eventually(WAIT, "/readyz reports the stuck sink", || async {
        let (status, body) = ready(readyz.clone()).await?;
        Ok((status == 503).then_some(body))
    })
    .await
    .unwrap();
    assert!(reason.contains("no bulk request succeeded"), "{reason}");
    elasticsearch.start().await.unwrap();

    let expected: BTreeMap<String, serde_json::Value> = (1..=400)
        .map(|i| {
            let n = if i <= 5 { i + 1000 } else { i };
            (i.to_string(), json!({"id": i, "n": n}))
        })
        .collect();
    eventually(WAIT, "all 400 rows indexed after the outage", || async {
        let docs = context.documents(Cluster::Elasticsearch, "events").await?;
        let sources: BTreeMap<String, serde_json::Value> =
            docs.into_iter().map(|(id, doc)| (id, doc.source)).collect();
        if sources == expected {
            Ok(Some(()))
        } else {
            anyhow::bail!("{} documents so far", sources.len())
        }
    })
    .await
    .unwrap();
    context
        .wait_committed_to_end(&group, &topic, WAIT)
        .await
        .unwrap();
    eventually(WAIT, "/readyz ready again", || async {
        Ok((ready(readyz.clone()).await?.0 == 200).then_some(()))
    })
    .await
    .unwrap();

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}
