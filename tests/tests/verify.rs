//! `sluice-consumer verify` against a real pipeline (Postgres, producer, Kafka, consumer,
//! Elasticsearch): in sync → exit 0; drift made by hand (a document deleted, one changed, one
//! added) → exactly those three, exit 1; `--repair` fixes them through the producer's backfill
//! path and a second `verify` exits 0; bad input → exit 2 before anything is read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{Cluster, TestContext, eventually, json_report, run_command};

const WAIT: Duration = Duration::from_secs(120);
const ROWS: i32 = 500;

async fn verify(config: &Path, args: &[&str], log: &str) -> (Option<i32>, String) {
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    run_command("sluice-consumer", config, &all, log, WAIT)
        .await
        .unwrap()
}

fn report(output: &str) -> Value {
    json_report(output).unwrap()
}

fn ids(report: &Value, kind: &str) -> Vec<String> {
    report[kind]["first"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_hand_made_drift_and_repair_fixes_it() {
    let context = TestContext::new("verify").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL);
         INSERT INTO items SELECT g, 'item ' || g, g % 7 FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .unwrap();
    let items = context
        .sink_config(Cluster::Elasticsearch, "items")
        .backfill(true);
    let config = items.load().unwrap();
    let path = items.write().unwrap();
    let sink_name = context.sink_name("items");
    let pipeline = context.start_pipeline(config).await.unwrap();
    eventually(WAIT, "every row indexed", || async {
        let docs = context.documents(Cluster::Elasticsearch, "items").await?;
        Ok((docs.len() == ROWS as usize).then_some(()))
    })
    .await
    .unwrap();

    let (code, output) = verify(&path, &[&sink_name], "verify-1.log").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("in sync"), "{output}");
    assert!(output.contains(&format!("{ROWS} rows read")), "{output}");

    // Drift by hand, the way a stray script or a restored snapshot would make it.
    let (client, base) = context.elasticsearch();
    let index = context.index("items");
    let docs = context
        .documents(Cluster::Elasticsearch, "items")
        .await
        .unwrap();
    let changed_version = docs["7"].version;
    for (method, url, body) in [
        (
            reqwest::Method::DELETE,
            format!("{base}/{index}/_doc/5"),
            None,
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/{index}/_doc/7?version={changed_version}&version_type=external_gte"),
            Some(json!({"id": 7, "name": "edited by hand", "qty": 0})),
        ),
        (
            reqwest::Method::PUT,
            format!("{base}/{index}/_doc/9999?version=1&version_type=external"),
            Some(json!({"id": 9999, "name": "no such row", "qty": 1})),
        ),
    ] {
        let mut request = client.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert!(response.status().is_success(), "{url}: {response:?}");
    }

    let (code, output) = verify(
        &path,
        &[&sink_name, "--format", "json", "--settle", "10s"],
        "verify-2.log",
    )
    .await;
    assert_eq!(code, Some(1), "drift is exit 1\n{output}");
    let found = report(&output);
    assert_eq!(found["in_sync"], false, "{found}");
    assert_eq!(found["rows"], ROWS, "{found}");
    assert_eq!(found["missing"]["count"], 1, "{found}");
    assert_eq!(ids(&found, "missing"), ["5"]);
    assert_eq!(found["stale"]["count"], 1, "{found}");
    assert_eq!(ids(&found, "stale"), ["7"]);
    assert_eq!(found["extra"]["count"], 1, "{found}");
    assert_eq!(ids(&found, "extra"), ["9999"]);

    let (code, output) = verify(
        &path,
        &[
            &sink_name, "--repair", "--format", "json", "--settle", "60s",
        ],
        "verify-3.log",
    )
    .await;
    assert_eq!(code, Some(0), "repaired is in sync\n{output}");
    let repaired = report(&output);
    assert_eq!(
        repaired["repaired"],
        json!({"backfilled_rows": 2, "deleted_documents": 1}),
        "{repaired}"
    );
    // What a user would look at: the documents themselves.
    let docs = context
        .documents(Cluster::Elasticsearch, "items")
        .await
        .unwrap();
    assert_eq!(docs.len(), ROWS as usize);
    assert_eq!(
        docs["5"].source,
        json!({"id": 5, "name": "item 5", "qty": 5})
    );
    assert_eq!(
        docs["7"].source,
        json!({"id": 7, "name": "item 7", "qty": 0})
    );
    assert!(
        docs["7"].version > changed_version,
        "the repair wrote a newer version"
    );
    assert!(!docs.contains_key("9999"));

    let (code, output) = verify(&path, &[&sink_name], "verify-4.log").await;
    assert_eq!(code, Some(0), "{output}");

    // A filtered check reads only the rows it names.
    let (code, output) = verify(
        &path,
        &[&sink_name, "--where", "id <= 10", "--format", "json"],
        "verify-5.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(report(&output)["rows"], 10);

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_refuses_bad_input_with_exit_2() {
    let context = TestContext::new("verify_input").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE things (id int PRIMARY KEY)")
        .await
        .unwrap();
    let path = context
        .sink_config(Cluster::OpenSearch, "things")
        .write()
        .unwrap();
    let sink_name = context.sink_name("things");

    let (code, output) = verify(&path, &["no-such-sink"], "bad-1.log").await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("no-such-sink: no such sink"), "{output}");

    let (code, output) = verify(
        &path,
        &[&sink_name, "--where", "no_such_column = 1"],
        "bad-2.log",
    )
    .await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("no_such_column"), "{output}");
    context.cleanup().await.unwrap();
}
