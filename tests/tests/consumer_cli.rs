//! sluice-consumer's command line as a user meets it: a script that does not compile is a
//! configuration error (exit 2, before connecting), `check` says what is wrong, `status` shows
//! lag and outcome counts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sluice_tests::{Cluster, Sink, TestContext, eventually, free_port, run_command};

const WAIT: Duration = Duration::from_secs(90);

/// Runs `sluice-consumer ARGS…` to its end, logging to `log` beside the config.
async fn run_consumer(config: &Path, args: &[&str], log: &str) -> (Option<i32>, String) {
    run_command(
        "sluice-consumer",
        config,
        args,
        log,
        Duration::from_secs(60),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transform_that_does_not_compile_exits_2_naming_line_and_column_before_connecting() {
    let context = TestContext::new("bad_transform").await.unwrap();
    // Nothing listens on port 1: a process that tried to connect would not exit at once. A
    // literal file: what is tested is how the parser and the compilers report it.
    let yaml = "postgres:\n  url: postgres://nobody@127.0.0.1:1/db\n\
                kafka:\n  brokers: 127.0.0.1:1\n\
                tables:\n  - name: public.products\n\
                sinks:\n  - name: products\n    table: public.products\n    filter: price >\n    transform: |\n      {\n        \"name\": upcase(.record.name)\n      }\n    elasticsearch:\n      endpoint: http://127.0.0.1:1\n      index: products\n";
    let started = std::time::Instant::now();
    let path = context.write_config(yaml).unwrap();
    let (code, output) = run_consumer(&path, &["run"], "run.log").await;
    assert_eq!(code, Some(2), "{output}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exited at once"
    );
    assert!(output.contains("sinks[0].transform"), "{output}");
    assert!(
        output.contains("line 2, column"),
        "names the position: {output}"
    );
    assert!(
        output.contains("sinks[0].filter"),
        "every problem at once: {output}"
    );
    assert!(output.contains("fix:"), "{output}");
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_what_is_ready_and_what_is_wrong() {
    let context = TestContext::new("consumer_check").await.unwrap();
    let config = |sink: Sink| context.config().table("public.products").sink(sink);
    let good = context
        .sink(Cluster::Elasticsearch, "products", "public.products")
        .filter("in_stock = true");
    let path = config(good.clone()).write().unwrap();
    let (code, output) = run_consumer(&path, &["check"], "check.log").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("filter and transform compile (filter, no transform)"),
        "{output}"
    );
    assert!(output.contains("does not exist yet"), "the topic: {output}");
    assert!(output.contains("credentials accepted"), "{output}");
    assert!(
        output.contains(&format!("index {} is missing", context.index("products"))),
        "{output}"
    );

    let wrong = good.api_key("bm90LWEta2V5Om5vdC1hLXNlY3JldA==");
    let path = config(wrong).write().unwrap();
    let (code, output) = run_consumer(&path, &["check"], "check-wrong-key.log").await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("FAIL"), "{output}");
    assert!(
        output.contains("elasticsearch.auth"),
        "says what to fix: {output}"
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_lag_dead_letters_and_the_running_consumers_counts() {
    let context = TestContext::new("consumer_status").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE things (id int PRIMARY KEY, n int, tag text)")
        .await
        .unwrap();
    let sink = context
        .sink(Cluster::OpenSearch, "things", "public.things")
        .filter("n > 2")
        // Rows 9 and 10 carry a tag that is not a number: their documents are rejected.
        .mappings(json!({"properties": {"tag": {"type": "long"}}}));
    let config = context
        .config()
        .table("public.things")
        .sink(sink)
        .consumer_port(free_port());
    let path = config.write().unwrap();
    let pipeline = context
        .start_pipeline(config.load().unwrap())
        .await
        .unwrap();
    db.batch_execute(
        "INSERT INTO things SELECT i, i, CASE WHEN i > 8 THEN 'x' END FROM generate_series(1, 10) i",
    )
        .await
        .unwrap();
    let topic = context.topic("public.things");
    context
        .wait_committed_to_end(&context.sink_name("things"), &topic, WAIT)
        .await
        .unwrap();
    let output = eventually(WAIT, "status with the counts", || async {
        let (code, output) = run_consumer(&path, &["status"], "status.log").await;
        anyhow::ensure!(code == Some(0), "exit {code:?}: {output}");
        let settled = output.contains("indexed 6, deleted 0") && output.contains("lag: 0 messages");
        Ok(settled.then_some(output))
    })
    .await
    .unwrap();
    assert!(output.contains("lag: 0 messages"), "{output}");
    assert!(output.contains("filtered 2"), "{output}");
    assert!(output.contains("dead-lettered 2"), "{output}");
    assert!(output.contains("dead letters: 2 (topic"), "{output}");
    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}
