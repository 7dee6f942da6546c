//! `sluice-consumer dlq <sink> list | show | redrive` against a real pipeline (Postgres, the
//! producer running throughout, Kafka, the consumer, Elasticsearch 9 and OpenSearch 2), checked
//! the way a user would: the documents in the index with their versions, the letters in the
//! dead-letter topic, the redrive group's committed offsets, `status` and `/status`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{Cluster, TestContext, eventually, free_port, json_report, run_command};

const WAIT: Duration = Duration::from_secs(120);

async fn consumer(config: &Path, args: &[&str], log: &str) -> (Option<i32>, String) {
    run_command("sluice-consumer", config, args, log, WAIT)
        .await
        .unwrap()
}

fn report(output: &str) -> Value {
    json_report(output).unwrap()
}

/// Fifty rows whose `code` the mapping (`long`) refuses go to the dead-letter topic; `list`
/// shows them as one reason. A redrive before the fix sends all fifty back with two attempts.
/// The fix is the one a user can make without a rebuild here, because nothing was indexed: the
/// consumer is stopped, the empty index deleted, and the sink's `mappings` changed to
/// `keyword`; the redrive re-creates the index behind its alias with the new mapping (as the
/// sink does at start) and indexes all fifty. A second redrive finds nothing to do.
#[tokio::test(flavor = "multi_thread")]
async fn a_mapping_conflict_is_one_reason_and_a_redrive_after_the_fix_indexes_it_once() {
    let context = TestContext::new("dlq_mapping").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL)")
        .await
        .unwrap();
    let port = free_port();
    let with_code = |code_type: &str| {
        let sink = context
            .sink(Cluster::Elasticsearch, "items", "public.items")
            .mappings(json!({"properties": {"code": {"type": code_type}}}));
        context
            .config()
            .table("public.items")
            .sink(sink)
            .consumer_port(port)
    };
    let long = with_code("long");
    let config = long.load().unwrap();
    let path = long.write().unwrap();
    let sink = context.sink_name("items");
    let dlq = format!("{sink}.dlq");
    let redrive_group = format!("{sink}.dlq-redrive");
    let (producer, producer_task) = context.spawn_producer(config.clone());
    let (consumer_stop, consumer_task) = context.spawn_consumer(config);
    context.wait_streaming().await.unwrap();

    db.batch_execute("INSERT INTO items SELECT i, 'code-' || i FROM generate_series(1, 50) i")
        .await
        .unwrap();
    let topic = context.topic("public.items");
    context
        .wait_committed_to_end(&sink, &topic, WAIT)
        .await
        .unwrap();
    assert_eq!(context.read_raw(&dlq).await.unwrap().len(), 50);

    // list: one reason, fifty letters.
    let (code, output) = consumer(
        &path,
        &["dlq", &sink, "list", "--format", "json"],
        "list-1.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    let listed = report(&output);
    assert_eq!(listed["total"], 50, "{listed}");
    let reasons = listed["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "one reason: {listed}");
    assert_eq!(reasons[0]["count"], 50);
    assert_eq!(reasons[0]["stage"], "index");
    assert_eq!(reasons[0]["error_type"], "document_parsing_exception");
    assert_eq!(reasons[0]["statuses"], json!([400]));
    let reason = reasons[0]["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("failed to parse field [code] of type [long]"),
        "{reason}"
    );
    assert!(reasons[0]["first"].as_str().unwrap() <= reasons[0]["last"].as_str().unwrap());
    let (code, output) = consumer(
        &path,
        &["dlq", &sink, "list", "--reason", &reason],
        "list-2.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("50 dead letters to re-drive selected (of 50)"),
        "{output}"
    );
    let (_, output) = consumer(
        &path,
        &[
            "dlq",
            &sink,
            "list",
            "--since",
            "1h",
            "--reason",
            "no such reason",
        ],
        "list-3.log",
    )
    .await;
    assert!(
        output.contains("0 dead letters to re-drive selected (of 50)"),
        "{output}"
    );

    // show: each letter with its event decoded, error and source position.
    let (code, output) = consumer(
        &path,
        &["dlq", &sink, "show", "--limit", "3", "--format", "json"],
        "show-1.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    let shown = report(&output);
    let letters = shown["letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3, "{shown}");
    let first = &letters[0];
    assert_eq!(first["status"], 400);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["source"]["topic"], topic.as_str());
    assert_eq!(first["event"]["action"], "insert");
    let id = first["event"]["record"]["id"].as_i64().unwrap();
    assert_eq!(first["event"]["record"]["code"], format!("code-{id}"));
    assert_eq!(first["key"], format!("[{id}]"));
    let position = format!("{}:{}", first["partition"], first["offset"]);
    let (code, output) = consumer(
        &path,
        &["dlq", &sink, "show", "--offset", &position],
        "show-2.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!("dead letter {position}, written ")),
        "{output}"
    );
    assert!(
        output.contains(&format!("\"code\": \"code-{id}\"")),
        "{output}"
    );

    // status from the topic, /status from the running consumer's counters.
    let (code, output) = consumer(&path, &["status"], "status-1.log").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains(&format!("dead letters: 50 (topic {dlq}), to re-drive, by reason:\n    50 index document_parsing_exception, HTTP 400")), "{output}");
    let live: Value = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let live = &live[0]["dead_letters"];
    assert_eq!(live["total"], 50, "{live}");
    assert_eq!(live["reasons"][0]["count"], 50, "{live}");
    assert_eq!(live["reasons"][0]["reason"], reason.as_str(), "{live}");
    // Looking moved no group.
    assert!(
        context
            .committed_offsets(&redrive_group, &dlq)
            .await
            .unwrap()
            .is_empty()
    );

    // A dry run writes and commits nothing.
    let (code, output) = consumer(
        &path,
        &["dlq", &sink, "redrive", "--dry-run", "--format", "json"],
        "dry.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(report(&output)["would_send"], 50, "{output}");
    assert!(
        context
            .committed_offsets(&redrive_group, &dlq)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(context.read_raw(&dlq).await.unwrap().len(), 50);

    // Before the fix, every letter fails again and goes back with two attempts.
    let (code, output) = consumer(
        &path,
        &["dlq", &sink, "redrive", "--format", "json"],
        "redrive-1.log",
    )
    .await;
    assert_eq!(code, Some(1), "failed again is exit 1\n{output}");
    let redriven = report(&output);
    assert_eq!(redriven["indexed"], 0, "{redriven}");
    assert_eq!(redriven["failed_again"]["total"], 50, "{redriven}");
    let letters = context.read_raw(&dlq).await.unwrap();
    assert_eq!(letters.len(), 100);
    assert_eq!(
        letters
            .iter()
            .filter(|l| l.headers["sluice.dlq.attempts"] == "2")
            .count(),
        50
    );
    let ends = context.end_offsets(&dlq).await.unwrap();
    let committed = context
        .committed_offsets(&redrive_group, &dlq)
        .await
        .unwrap();
    assert_eq!(
        committed.values().sum::<i64>(),
        50,
        "the first fifty are re-driven: {committed:?} of {ends:?}"
    );
    let (_, output) = consumer(
        &path,
        &["dlq", &sink, "list", "--format", "json"],
        "list-4.log",
    )
    .await;
    assert_eq!(report(&output)["total"], 50, "{output}");

    // The fix: the consumer stopped, the (empty) index deleted, the mapping changed.
    consumer_stop.cancel();
    consumer_task.await.unwrap().unwrap();
    let (client, base) = context.elasticsearch();
    let response = client
        .delete(format!("{base}/{}-v1", context.index("items")))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{response:?}");
    let path = with_code("keyword").write().unwrap();

    let (code, output) = consumer(&path, &["dlq", &sink, "redrive"], "redrive-2.log").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("50 dead letters re-driven"), "{output}");
    assert!(
        output.contains("indexed 50, deleted 0, stale 0"),
        "{output}"
    );
    let docs = context
        .documents(Cluster::Elasticsearch, "items")
        .await
        .unwrap();
    assert_eq!(docs.len(), 50);
    assert_eq!(docs["17"].source, json!({"id": 17, "code": "code-17"}));
    let mapping: Value = client
        .get(format!("{base}/{}/_mapping", context.index("items")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        mapping[format!("{}-v1", context.index("items"))]["mappings"]["properties"]["code"]["type"],
        "keyword",
        "{mapping}"
    );

    // Twice changes nothing: what was re-driven is remembered by the redrive group.
    let committed = context
        .committed_offsets(&redrive_group, &dlq)
        .await
        .unwrap();
    let (code, output) = consumer(
        &path,
        &["dlq", &sink, "redrive", "--format", "json"],
        "redrive-3.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    let again = report(&output);
    assert_eq!(again["selected"]["total"], 0, "{again}");
    assert_eq!(again["indexed"], 0, "{again}");
    assert_eq!(
        context.read_raw(&dlq).await.unwrap().len(),
        100,
        "nothing written back"
    );
    assert_eq!(
        context
            .committed_offsets(&redrive_group, &dlq)
            .await
            .unwrap(),
        committed
    );
    assert_eq!(
        context
            .documents(Cluster::Elasticsearch, "items")
            .await
            .unwrap(),
        docs
    );
    let (_, output) = consumer(&path, &["dlq", &sink, "list"], "list-5.log").await;
    assert!(output.contains("0 dead letters to re-drive"), "{output}");

    // The sink runs on with the fixed mapping.
    let (consumer_stop, consumer_task) =
        context.spawn_consumer(with_code("keyword").load().unwrap());
    db.batch_execute("UPDATE items SET code = 'changed' WHERE id = 17")
        .await
        .unwrap();
    eventually(WAIT, "the update indexed", || async {
        let docs = context.documents(Cluster::Elasticsearch, "items").await?;
        Ok((docs["17"].source["code"] == "changed").then_some(()))
    })
    .await
    .unwrap();
    consumer_stop.cancel();
    consumer_task.await.unwrap().unwrap();
    producer.cancel();
    producer_task.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

/// A row's update that the mapping refuses is dead-lettered, then a later update of the row is
/// indexed. The fix is a change of the sink's transform (a code that is not a number goes to
/// another field). The redrive indexes the letter of another row, but finds the first row's
/// old event stale: the document keeps its newer content and version.
#[tokio::test(flavor = "multi_thread")]
async fn a_redriven_event_older_than_the_indexed_document_is_stale() {
    let context = TestContext::new("dlq_stale").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(
        "CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL);
         INSERT INTO items VALUES (1, '1'), (2, '2'), (3, '3');",
    )
    .await
    .unwrap();
    let with_transform = |transform: &str| {
        let sink = context
            .sink(Cluster::OpenSearch, "items", "public.items")
            .transform(transform)
            .mappings(json!({"properties": {"code": {"type": "long"}}}));
        context
            .config()
            .table("public.items")
            .backfill(true)
            .sink(sink)
    };
    let sink_name = context.sink_name("items");
    let pipeline = context
        .start_pipeline(
            with_transform(r#"{ "id": .record.id, "code": .record.code }"#)
                .load()
                .unwrap(),
        )
        .await
        .unwrap();
    eventually(WAIT, "the backfill indexed", || async {
        let docs = context.documents(Cluster::OpenSearch, "items").await?;
        Ok((docs.len() == 3).then_some(()))
    })
    .await
    .unwrap();
    db.batch_execute("UPDATE items SET code = 'two' WHERE id = 2")
        .await
        .unwrap();
    db.batch_execute("UPDATE items SET code = 'three' WHERE id = 3")
        .await
        .unwrap();
    let dlq = format!("{sink_name}.dlq");
    // Rejected before the next change of row 2 arrives (in one batch it would replace them).
    eventually(WAIT, "both updates dead-lettered", || async {
        Ok((context.read_raw(&dlq).await?.len() == 2).then_some(()))
    })
    .await
    .unwrap();
    db.batch_execute("UPDATE items SET code = '22' WHERE id = 2")
        .await
        .unwrap();
    let topic = context.topic("public.items");
    context
        .wait_committed_to_end(&sink_name, &topic, WAIT)
        .await
        .unwrap();
    let docs = context
        .documents(Cluster::OpenSearch, "items")
        .await
        .unwrap();
    assert_eq!(docs["2"].source, json!({"id": 2, "code": "22"}));
    let newer = docs["2"].version;
    assert_eq!(context.read_raw(&dlq).await.unwrap().len(), 2);

    let path = with_transform(
        r#"if is_null(to_int(.record.code) ?? null) { { "id": .record.id, "code_text": .record.code } } else { { "id": .record.id, "code": .record.code } }"#,
    )
    .write()
    .unwrap();
    let (code, output) = consumer(
        &path,
        &["dlq", &sink_name, "redrive", "--format", "json"],
        "redrive.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    let redriven = report(&output);
    assert_eq!(redriven["selected"]["total"], 2, "{redriven}");
    assert_eq!(redriven["indexed"], 1, "{redriven}");
    assert_eq!(redriven["stale"], 1, "{redriven}");
    assert_eq!(redriven["failed_again"]["total"], 0, "{redriven}");
    let docs = context
        .documents(Cluster::OpenSearch, "items")
        .await
        .unwrap();
    assert_eq!(
        docs["2"].source,
        json!({"id": 2, "code": "22"}),
        "the newer document stays"
    );
    assert_eq!(docs["2"].version, newer);
    assert_eq!(docs["3"].source, json!({"id": 3, "code_text": "three"}));

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

/// Bad flags and unknown sinks are refused with exit 2, naming what to fix, before anything
/// is read.
#[tokio::test(flavor = "multi_thread")]
async fn dlq_refuses_bad_input_with_exit_2() {
    let context = TestContext::new("dlq_input").await.unwrap();
    let path = context
        .sink_config(Cluster::OpenSearch, "things")
        .write()
        .unwrap();
    let sink = context.sink_name("things");
    for (args, expected) in [
        (
            vec!["dlq", "no-such-sink", "list"],
            "no-such-sink: no such sink",
        ),
        (
            vec!["dlq", &sink, "list", "--since", "yesterday"],
            "--since",
        ),
        (
            vec!["dlq", &sink, "show", "--offset", "x:1"],
            "PARTITION:OFFSET",
        ),
        (
            vec!["dlq", &sink, "show", "--offset", "0:1", "--limit", "2"],
            "--limit",
        ),
    ] {
        let (code, output) = consumer(&path, &args, "bad.log").await;
        assert_eq!(code, Some(2), "{args:?}: {output}");
        assert!(output.contains(expected), "{args:?}: {output}");
    }
    let (_, output) = consumer(
        &path,
        &["dlq", &sink, "list", "--since", "yesterday"],
        "bad-since.log",
    )
    .await;
    assert!(output.contains("RFC 3339"), "says what to give: {output}");
    context.cleanup().await.unwrap();
}
