//! `sluice-consumer replay` end to end: refused while the sink's consumer runs (with the fix),
//! `--wait` moves the group as soon as it stopped, and replaying the whole topic into the live
//! index changes no document (same sources, same versions) once the consumer has read it all
//! again.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use sluice_tests::traffic::{self, ITEMS};
use sluice_tests::{Cluster, Process, TestContext, eventually, run_command};

const WAIT: Duration = Duration::from_secs(120);
const ROWS: i32 = 400;

#[tokio::test(flavor = "multi_thread")]
async fn replay_from_the_beginning_changes_no_document() {
    let cluster = Cluster::Elasticsearch;
    let context = TestContext::new("replay").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(ITEMS).await.unwrap();
    let items = context.sink_config(cluster, "items");
    let config = items.load().unwrap();
    let path = items.write().unwrap();
    let sink = context.sink_name("items");
    let topic = context.topic("public.items");
    let producer = context.spawn_producer(config.clone());
    context.wait_streaming().await.unwrap();
    let mut consumer = context.spawn_consumer(config.clone());

    // Every row changed after its insert, some deleted: the topic holds older events than the
    // index for most documents, which a replay must not bring back.
    traffic::fill_items(&db, ROWS).await.unwrap();
    db.batch_execute(
        "UPDATE items SET qty = qty + 1000, note = 'second';
         UPDATE items SET name = 'third ' || id WHERE id % 2 = 0;
         DELETE FROM items WHERE id % 10 = 0;",
    )
    .await
    .unwrap();
    let ends = context
        .wait_committed_to_end(&sink, &topic, WAIT)
        .await
        .unwrap();
    traffic::assert_index_equals_items(&context, cluster, "items")
        .await
        .unwrap();
    let before = context.documents(cluster, "items").await.unwrap();

    let args = ["replay", &sink, "--from-beginning"];
    let (code, output) = run_command("sluice-consumer", &path, &args, "refused.log", WAIT)
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("running member"), "{output}");
    assert!(output.contains("--wait"), "{output}");
    assert_eq!(
        context.committed_offsets(&sink, &topic).await.unwrap(),
        ends,
        "a refused replay moves nothing"
    );

    let mut waiting: Vec<&str> = args.to_vec();
    waiting.push("--wait");
    let mut replay = Process::command("sluice-consumer", &path, &waiting, "replay.log").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        replay.child.try_wait().unwrap().is_none(),
        "it waits for the member"
    );
    consumer.0.cancel();
    consumer.1.await.unwrap().unwrap();
    let code = replay.wait(WAIT).await.unwrap();
    let output = replay.output();
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("waiting for 1 member"), "{output}");
    assert!(output.contains("moved to the beginning"), "{output}");
    let moved = context.committed_offsets(&sink, &topic).await.unwrap();
    assert_eq!(moved.len(), ends.len(), "{moved:?}");
    assert!(moved.values().all(|&o| o == 0), "{moved:?}");

    consumer = context.spawn_consumer(config);
    context
        .wait_committed_to_end(&sink, &topic, WAIT)
        .await
        .unwrap();
    // Read again to the end, and not one document differs: sources and versions.
    let after = eventually(WAIT, "the replay settled", || async {
        Ok(Some(context.documents(cluster, "items").await?))
    })
    .await
    .unwrap();
    assert_eq!(after.len(), before.len());
    for (id, doc) in &before {
        assert_eq!(after.get(id), Some(doc), "document {id} changed");
    }
    traffic::assert_index_equals_items(&context, cluster, "items")
        .await
        .unwrap();

    // A time after every message: the group lands at the ends.
    consumer.0.cancel();
    consumer.1.await.unwrap().unwrap();
    let future = ["replay", &sink, "--from-time", "0s"];
    let (code, output) = run_command("sluice-consumer", &path, &future, "later.log", WAIT)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        context.committed_offsets(&sink, &topic).await.unwrap(),
        ends
    );

    producer.0.cancel();
    producer.1.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_refuses_bad_input_with_exit_2() {
    let context = TestContext::new("replay_input").await.unwrap();
    let path = context
        .sink_config(Cluster::OpenSearch, "items")
        .write()
        .unwrap();
    let sink = context.sink_name("items");
    for (n, (args, expect)) in [
        (vec!["replay", sink.as_str()], "--from-beginning"),
        (
            vec![
                "replay",
                sink.as_str(),
                "--from-beginning",
                "--from-time",
                "1h",
            ],
            "cannot be used with",
        ),
        (
            vec!["replay", sink.as_str(), "--from-time", "last tuesday"],
            "neither a time",
        ),
        (
            vec!["replay", "nope", "--from-beginning"],
            "nope: no such sink",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let log = format!("bad-{n}.log");
        let (code, output) = run_command("sluice-consumer", &path, &args, &log, WAIT)
            .await
            .unwrap();
        assert_eq!(code, Some(2), "{args:?}: {output}");
        assert!(output.contains(expect), "{args:?}: {output}");
    }
    context.cleanup().await.unwrap();
}
