//! `sluice-consumer rebuild` end to end (Postgres, sluice-producer, Kafka, the live consumer and
//! Elasticsearch 9 or OpenSearch 2), checked the way a user would: searches through the alias
//! while it runs, the alias and the index versions afterwards, the documents against the table,
//! the dead-letter topic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::traffic::{self, ITEMS, Reader, Writer};
use sluice_tests::{Cluster, Process, Sink, TestContext, eventually, on_each_cluster, run_command};

const WAIT: Duration = Duration::from_secs(180);

/// `rebuild SINK EXTRA…`.
fn rebuild_args<'a>(sink: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["rebuild", sink];
    args.extend_from_slice(extra);
    args
}

/// Runs `sluice-consumer --config CONFIG ARGS…` to its end: exit code and output.
async fn run(config: &Path, args: &[&str], log: &str) -> (Option<i32>, String) {
    run_command("sluice-consumer", config, args, log, WAIT)
        .await
        .unwrap()
}

/// GET `path` on `cluster`: status and JSON body.
async fn get(context: &TestContext, cluster: Cluster, path: &str) -> (u16, Value) {
    context.get(cluster, path).await.unwrap()
}

/// Blocks writes to `index` (prefixed), as a crash while the old index is blocked leaves it.
async fn block_writes(context: &TestContext, cluster: Cluster, index: &str) {
    let (client, base) = context.cluster(cluster);
    client
        .put(format!("{base}/{}/_settings", context.index(index)))
        .json(&json!({"index.blocks.write": true}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// The indices the alias points at.
async fn alias_targets(context: &TestContext, cluster: Cluster, alias: &str) -> Vec<String> {
    let (_, body) = get(
        context,
        cluster,
        &format!("_alias/{}", context.index(alias)),
    )
    .await;
    let mut names: Vec<String> = body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    names
}

async fn setting(context: &TestContext, cluster: Cluster, index: &str, name: &str) -> Value {
    let index = context.index(index);
    let (_, body) = get(
        context,
        cluster,
        &format!("{index}/_settings/{name}?flat_settings=true"),
    )
    .await;
    body[&index]["settings"][name].clone()
}

async fn write_blocked(context: &TestContext, cluster: Cluster, index: &str) -> bool {
    setting(context, cluster, index, "index.blocks.write").await == "true"
}

/// The new index is filled without refreshes and serves with the default interval.
async fn refresh_interval(context: &TestContext, cluster: Cluster, index: &str) -> Value {
    setting(context, cluster, index, "index.refresh_interval").await
}

/// A pipeline over `items` with `rows` rows backfilled and indexed into alias `items`.
async fn items_pipeline(
    context: &TestContext,
    cluster: Cluster,
    rows: i32,
    sink: fn(Sink) -> Sink,
) -> (sluice_tests::Pipeline, std::path::PathBuf, String) {
    let db = context.postgres().await.unwrap();
    db.batch_execute(ITEMS).await.unwrap();
    traffic::fill_items(&db, rows).await.unwrap();
    let config = context
        .config()
        .table("public.items")
        .backfill(true)
        .sink(sink(context.sink(cluster, "items", "public.items")));
    let path = config.write().unwrap();
    let pipeline = context
        .start_pipeline(config.load().unwrap())
        .await
        .unwrap();
    eventually(WAIT, "every row indexed", || async {
        let docs = context.documents(cluster, "items").await?;
        Ok((docs.len() == rows as usize).then_some(()))
    })
    .await
    .unwrap();
    (pipeline, path, context.sink_name("items"))
}

async fn rebuild_with_a_new_mapping_under_writes(cluster: Cluster, test: &str) {
    let context = TestContext::new(test).await.unwrap();
    let rows = 5000;
    let (pipeline, config, sink) = items_pipeline(&context, cluster, rows, |sink| sink).await;
    let mappings = config.with_file_name("mappings.json");
    std::fs::write(
        &mappings,
        json!({"properties": {
            "id": {"type": "integer"},
            "name": {"type": "keyword"},
            "qty": {"type": "integer"},
            "note": {"type": "text"},
        }})
        .to_string(),
    )
    .unwrap();

    let reader = Reader::start(&context, cluster, "items", 1);
    let writer = Writer::start(&context, 500, rows).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, output) = run(
        &config,
        &rebuild_args(
            &sink,
            &["--mappings", mappings.to_str().unwrap(), "--keep-old", "1"],
        ),
        "rebuild.log",
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    // It went through the block, not around it.
    assert!(output.contains("is write-blocked"), "{output}");
    assert!(output.contains("now serves"), "{output}");
    // The live sink goes on writing, now into v2.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let changes = writer.stop().await.unwrap();
    assert!(changes > 1000, "the writer wrote {changes} changes");
    let db = context.postgres().await.unwrap();
    db.batch_execute("UPDATE items SET note = 'after the swap' WHERE id = 1")
        .await
        .unwrap();
    context
        .wait_committed_to_end(&sink, &context.topic("public.items"), WAIT)
        .await
        .unwrap();
    let seen = reader.stop().await.unwrap();
    assert!(seen.polls > 50, "{seen:?}");
    assert!(seen.errors.is_empty(), "searches failed: {:?}", seen.errors);
    assert_eq!(
        seen.empty, 0,
        "a search through the alias found nothing: {seen:?}"
    );
    assert_eq!(
        seen.indices,
        [context.index("items-v1"), context.index("items-v2")],
        "the alias served v1, then v2"
    );

    assert_eq!(
        alias_targets(&context, cluster, "items").await,
        [context.index("items-v2")]
    );
    let (status, _) = get(&context, cluster, &context.index("items-v1")).await;
    assert_eq!(status, 200, "v1 is kept (--keep-old 1)");
    assert!(!write_blocked(&context, cluster, "items-v1").await);
    assert_eq!(
        refresh_interval(&context, cluster, "items-v2").await,
        Value::Null,
        "the refresh interval is given back before the swap"
    );
    let (_, mapping) = get(
        &context,
        cluster,
        &format!("{}/_mapping", context.index("items-v2")),
    )
    .await;
    assert_eq!(
        mapping[context.index("items-v2")]["mappings"]["properties"]["name"]["type"],
        "keyword",
        "{mapping}"
    );
    // Index == table through the alias, versions = last commit LSN.
    let count = eventually(WAIT, "the alias serves the table", || async {
        Ok(Some(
            traffic::assert_index_equals_items(&context, cluster, "items").await?,
        ))
    })
    .await
    .unwrap();
    assert!(count > 4000, "{count} rows");
    // The live sink writes into v2 (and no longer into v1).
    let v2 = context.documents(cluster, "items-v2").await.unwrap();
    assert_eq!(v2["1"].source["note"], "after the swap");
    let v1 = context.documents(cluster, "items-v1").await.unwrap();
    assert_ne!(v1["1"].source["note"], "after the swap");
    // The block made the live sink wait, never dead-letter.
    let letters = context.read_raw(&format!("{sink}.dlq")).await.unwrap();
    assert!(letters.is_empty(), "dead letters: {:?}", letters.first());
    assert!(pipeline.consumer_running());

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

on_each_cluster!(
    rebuild_swaps_a_new_mapping_in_under_writes = rebuild_with_a_new_mapping_under_writes()
);

/// Killed with -9 halfway, then killed "while blocked" (the block set by hand, as a crash then
/// leaves it): each re-run resumes and finishes, and the alias never serves a partial index.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_rebuild_resumes_and_never_serves_a_partial_index() {
    let cluster = Cluster::Elasticsearch;
    let context = TestContext::new("rebuild_kill").await.unwrap();
    let rows = 20_000;
    // Small batches, one at a time (the fill's own 2,000 overridden): the rebuild takes long
    // enough to be killed halfway.
    let (pipeline, config, sink) = items_pipeline(&context, cluster, rows, |sink| {
        sink.batch_size(100).max_in_flight_requests(1)
    })
    .await;
    let reader = Reader::start(&context, cluster, "items", u64::try_from(rows).unwrap());
    let group = format!("{sink}.rebuild-v2");
    let topic = context.topic("public.items");

    let args = rebuild_args(&sink, &["--batch-size", "100"]);
    let mut first = Process::command("sluice-consumer", &config, &args, "first.log").unwrap();
    let v2 = context.index("items-v2");
    eventually(
        WAIT,
        "the rebuild halfway, with offsets committed",
        || async {
            // Filled without refreshes: only a refresh makes its documents countable.
            let (client, base) = context.cluster(cluster);
            client
                .post(format!("{base}/{v2}/_refresh"))
                .send()
                .await?
                .error_for_status()?;
            let n = context.count(cluster, "items-v2").await.unwrap_or(0);
            let committed: i64 = context
                .committed_offsets(&group, &topic)
                .await?
                .values()
                .sum();
            Ok((n > 2000 && n < 12_000 && committed > 2000).then_some(()))
        },
    )
    .await
    .unwrap();
    first.kill9().await.unwrap();
    assert_eq!(refresh_interval(&context, cluster, "items-v2").await, "-1");
    let committed: i64 = context
        .committed_offsets(&group, &topic)
        .await
        .unwrap()
        .values()
        .sum();
    assert!(
        committed < i64::from(rows),
        "killed before the end: {committed}"
    );
    assert_eq!(
        alias_targets(&context, cluster, "items").await,
        [context.index("items-v1")]
    );

    block_writes(&context, cluster, "items-v1").await;
    let db = context.postgres().await.unwrap();
    db.batch_execute("UPDATE items SET note = 'while blocked' WHERE id = 2")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let docs = context.documents(cluster, "items").await.unwrap();
    assert_ne!(
        docs["2"].source["note"], "while blocked",
        "the block holds writes"
    );
    let (code, status) = run(&config, &["status"], "status.log").await;
    assert_eq!(code, Some(0), "{status}");
    assert!(status.contains(&format!("rebuild: into {v2}")), "{status}");
    assert!(status.contains("write-blocked"), "{status}");

    let (code, output) = run(&config, &args, "second.log").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("resuming the rebuild into"), "{output}");
    assert!(output.contains("is write-blocked"), "{output}");
    let resumed_from_zero = output.contains("from the start");
    assert!(!resumed_from_zero, "{output}");
    assert_eq!(
        refresh_interval(&context, cluster, "items-v2").await,
        Value::Null
    );
    assert_eq!(
        alias_targets(&context, cluster, "items").await,
        [context.index("items-v2")]
    );
    assert!(!write_blocked(&context, cluster, "items-v1").await);
    context
        .wait_committed_to_end(&sink, &topic, WAIT)
        .await
        .unwrap();
    let seen = reader.stop().await.unwrap();
    assert!(seen.errors.is_empty(), "{:?}", seen.errors);
    assert!(
        seen.below_floor.is_empty(),
        "the alias served a partial index: counts {:?}",
        seen.below_floor
    );
    traffic::assert_index_equals_items(&context, cluster, "items")
        .await
        .unwrap();
    let docs = context.documents(cluster, "items").await.unwrap();
    assert_eq!(docs["2"].source["note"], "while blocked");
    let letters = context.read_raw(&format!("{sink}.dlq")).await.unwrap();
    assert!(letters.is_empty(), "dead letters: {:?}", letters.first());
    // The rebuild's group is gone with it.
    assert!(
        context
            .committed_offsets(&group, &topic)
            .await
            .unwrap()
            .is_empty()
    );

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

/// `--abort` undoes an interrupted rebuild (lifts the block, deletes the new index), `--dry-run`
/// changes nothing, bad input is exit 2 before anything is asked of a server.
#[tokio::test(flavor = "multi_thread")]
async fn abort_dry_run_and_bad_input() {
    let cluster = Cluster::OpenSearch;
    let context = TestContext::new("rebuild_abort").await.unwrap();
    let (pipeline, config, sink) = items_pipeline(&context, cluster, 300, |sink| sink).await;

    let (code, output) = run(&config, &rebuild_args(&sink, &["--dry-run"]), "dry.log").await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!("create {}", context.index("items-v2"))),
        "{output}"
    );
    assert!(output.contains("nothing was changed"), "{output}");
    assert!(
        output.contains("2000 documents per bulk request"),
        "the fill's default batch size: {output}"
    );
    let (status, _) = get(&context, cluster, &context.index("items-v2")).await;
    assert_eq!(status, 404, "a dry run creates nothing");

    // An interrupted rebuild, killed while the old index was blocked.
    let args = rebuild_args(&sink, &[]);
    let mut first = Process::command("sluice-consumer", &config, &args, "first.log").unwrap();
    eventually(WAIT, "the new index exists", || async {
        let (status, _) = get(&context, cluster, &context.index("items-v2")).await;
        Ok((status == 200).then_some(()))
    })
    .await
    .unwrap();
    first.kill9().await.unwrap();
    assert_eq!(
        alias_targets(&context, cluster, "items").await,
        [context.index("items-v1")],
        "killed before the swap"
    );
    {
        block_writes(&context, cluster, "items-v1").await;
        let (code, output) = run(&config, &rebuild_args(&sink, &["--abort"]), "abort.log").await;
        assert_eq!(code, Some(0), "{output}");
        assert!(output.contains("aborted"), "{output}");
        let (status, _) = get(&context, cluster, &context.index("items-v2")).await;
        assert_eq!(status, 404, "the unfinished index is deleted");
        assert!(!write_blocked(&context, cluster, "items-v1").await);
        assert_eq!(
            alias_targets(&context, cluster, "items").await,
            [context.index("items-v1")]
        );
    }

    for (n, (extra, expect)) in [
        (vec!["--mappings", "/nonexistent/m.json"], "--mappings"),
        (vec!["--keep-old", "x"], "--keep-old"),
        (vec!["--batch-size", "0"], "--batch-size"),
        (vec!["--dry-run", "--abort"], "--abort"),
    ]
    .into_iter()
    .enumerate()
    {
        let log = format!("bad-{n}.log");
        let (code, output) = run(&config, &rebuild_args(&sink, &extra), &log).await;
        assert_eq!(code, Some(2), "{extra:?}: {output}");
        assert!(output.contains(expect), "{extra:?}: {output}");
    }
    let (code, output) = run(&config, &["rebuild", "nope"], "bad-sink.log").await;
    assert_eq!(code, Some(2), "{output}");
    assert!(output.contains("nope: no such sink"), "{output}");

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}
