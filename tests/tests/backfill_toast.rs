//! The index equals the table after an initial backfill of a table with TOASTed values, under the
//! default replica identity, while a writer keeps updating those rows without touching the big
//! column: the backfill must not give up a row in favour of a live event that lacks a column.
//! Producer, Kafka, consumer and Elasticsearch run for real; the check is what a user would do:
//! every row of the table is a document with every column, and nothing else is in the index.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{Cluster, ConfigBuilder, Process, TestContext, connect, eventually};

const ROWS: i32 = 6_000;
/// Every third row carries a ~9.6 kB value that is stored out of line.
const TOASTED_EVERY: i32 = 3;
const WAIT: Duration = Duration::from_secs(120);

/// `items` backfilled into the index `items` on Elasticsearch.
fn items_config(context: &TestContext) -> ConfigBuilder {
    context
        .sink_config(Cluster::Elasticsearch, "items")
        .backfill(true)
}

/// `items(id, qty, body)` with [`ROWS`] rows, every [`TOASTED_EVERY`]th with a ~9.6 kB body
/// stored out of line, and the sequence new rows take their ids from.
async fn create_items(db: &tokio_postgres::Client) {
    db.batch_execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, body text NOT NULL);
         INSERT INTO items
           SELECT g, 0, CASE WHEN g % {TOASTED_EVERY} = 0
                             THEN (SELECT string_agg(md5(g::text || s::text), '')
                                   FROM generate_series(1, 300) s)
                             ELSE 'short ' || g END
           FROM generate_series(1, {ROWS}) g;
         CREATE SEQUENCE new_ids START 100000;
         ANALYZE items;"
    ))
    .await
    .unwrap();
}

/// The table as documents: `_id` → the record the consumer indexes without a transform.
async fn table_documents(db: &tokio_postgres::Client) -> BTreeMap<String, Value> {
    db.query("SELECT id, qty, body FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let id: i32 = row.get(0);
            let qty: i32 = row.get(1);
            let body: String = row.get(2);
            (id.to_string(), json!({"id": id, "qty": qty, "body": body}))
        })
        .collect()
}

/// Updates of `qty` on TOASTed rows, a few per transaction, until `stop`: each one's event
/// leaves `body` out. Returns the number of transactions.
fn spawn_writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let db = connect(&url).await.unwrap();
        let mut transactions = 0u64;
        while !stop.load(Ordering::SeqCst) {
            db.batch_execute(&format!(
                "UPDATE items SET qty = qty + 1
                 WHERE id = ANY(ARRAY(SELECT {TOASTED_EVERY} * (1 + floor(random() * {}))::int
                                      FROM generate_series(1, 3)))",
                ROWS / TOASTED_EVERY - 1
            ))
            .await
            .unwrap();
            transactions += 1;
        }
        transactions
    })
}

fn completed_rows_metric() -> f64 {
    let rendered = sluice_common::telemetry::metrics_handle().unwrap().render();
    rendered
        .lines()
        .filter(|l| l.starts_with("sluice_producer_backfill_rows_completed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_keeps_rows_whose_window_saw_only_updates_without_their_toasted_column() {
    let context = TestContext::new("backfill_toast").await.unwrap();
    let db = context.postgres().await.unwrap();
    create_items(&db).await;
    let toasted: i64 = db
        .query_one(
            "SELECT count(*) FROM items WHERE pg_column_size(body) > 2000",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        toasted >= i64::from(ROWS / TOASTED_EVERY),
        "the big values are TOASTed"
    );

    let config = items_config(&context)
        .backfill_chunk_size(100)
        .load()
        .unwrap();
    // The writer runs before the producer starts and until the backfill is done, so windows
    // keep seeing updates that leave `body` out.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(context.postgres_url(), stop.clone());
    let pipeline = context.start_pipeline(config).await.unwrap();
    eventually(WAIT, "the backfill is done", || async {
        let state: Option<String> = db
            .query_opt(
                "SELECT state FROM sluice.backfills WHERE table_name = 'public.items'",
                &[],
            )
            .await?
            .map(|row| row.get(0));
        Ok((state.as_deref() == Some("done")).then_some(()))
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 100,
        "the writer ran ({transactions} transactions)"
    );
    let completed = completed_rows_metric();
    assert!(
        completed > 0.0,
        "some windows saw only partial updates of a chunk row (the case under test)"
    );

    let expected = table_documents(&db).await;
    let docs = eventually(WAIT, "the index equals the table", || async {
        let docs = context.documents(Cluster::Elasticsearch, "items").await?;
        let missing = expected.keys().filter(|id| !docs.contains_key(*id)).count();
        let extra = docs.keys().filter(|id| !expected.contains_key(*id)).count();
        let stale: Vec<&String> = expected
            .iter()
            .filter(|(id, source)| docs.get(*id).is_some_and(|d| &d.source != *source))
            .map(|(id, _)| id)
            .collect();
        if missing == 0 && extra == 0 && stale.is_empty() {
            Ok(Some(docs))
        } else {
            anyhow::bail!(
                "{missing} missing, {extra} extra, {} stale (first: {:?})",
                stale.len(),
                stale.first()
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(docs.len(), ROWS as usize);
    pipeline.stop().await.unwrap();
    eprintln!(
        "{transactions} writer transactions, {completed} rows completed from partial updates"
    );
    context.cleanup().await.unwrap();
}

/// Inserts, deletes and updates of `items`, half of the updates leaving `body` out, until `stop`.
fn spawn_mixed_writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let db = connect(&url).await.unwrap();
        let mut transactions = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let pick = "(SELECT (1 + floor(random() * 9000))::int)";
            db.batch_execute(&format!(
                "BEGIN;
                 UPDATE items SET qty = qty + 1 WHERE id = {pick};
                 UPDATE items SET qty = qty + 1, body = body || 'x' WHERE id = {pick};
                 DELETE FROM items WHERE id = {pick};
                 INSERT INTO items VALUES (nextval('new_ids'), 0,
                   (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300)));
                 COMMIT;"
            ))
            .await
            .unwrap();
            transactions += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        transactions
    })
}

/// `kill -9` of the producer and of one of two consumers during an initial backfill of TOASTed
/// rows under writes: `verify` then finds nothing missing, extra or stale.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_backfill_under_writes_leaves_nothing_for_verify_to_find() {
    let context = TestContext::new("backfill_kill").await.unwrap();
    let db = context.postgres().await.unwrap();
    create_items(&db).await;
    let path = items_config(&context)
        .backfill_chunk_size(200)
        .backfill_max_rows_per_second(3000)
        .write()
        .unwrap();
    let start = |binary: &str, log: &str| Process::run(binary, &path, log).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_mixed_writer(context.postgres_url(), stop.clone());
    let mut producer = start("sluice-producer", "producer-1.log");
    let mut consumers = [
        start("sluice-consumer", "consumer-1.log"),
        start("sluice-consumer", "consumer-2.log"),
    ];
    let rows_done = || async {
        db.query_opt(
            "SELECT rows_done, state FROM sluice.backfills WHERE table_name = 'public.items'",
            &[],
        )
        .await
        .ok()
        .flatten()
        .map(|row| (row.get::<_, i64>(0), row.get::<_, String>(1)))
    };
    // Kill the producer once a third of the rows are saved, a consumer at two thirds.
    eventually(WAIT, "a third backfilled", || async {
        Ok(rows_done()
            .await
            .filter(|(done, _)| *done >= i64::from(ROWS / 3))
            .map(|_| ()))
    })
    .await
    .unwrap();
    producer.kill9().await.unwrap();
    let mut producer = start("sluice-producer", "producer-2.log");
    eventually(WAIT, "two thirds backfilled", || async {
        Ok(rows_done()
            .await
            .filter(|(done, _)| *done >= i64::from(2 * ROWS / 3))
            .map(|_| ()))
    })
    .await
    .unwrap();
    consumers[0].kill9().await.unwrap();
    consumers[0] = start("sluice-consumer", "consumer-3.log");
    eventually(WAIT, "the backfill is done", || async {
        Ok(rows_done()
            .await
            .filter(|(_, state)| state == "done")
            .map(|_| ()))
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();
    assert!(
        transactions > 50,
        "the writer ran ({transactions} transactions)"
    );

    let sink_name = context.sink_name("items");
    let report = eventually(
        WAIT,
        "verify finds the index equal to the table",
        || async {
            let mut verify = sluice_tests::Process::start(
                "sluice-consumer",
                &[
                    "--config",
                    path.to_str().unwrap(),
                    "verify",
                    &sink_name,
                    "--format",
                    "json",
                    "--settle",
                    "30s",
                ],
                path.with_file_name("verify.log"),
            )?;
            let code = verify.wait(WAIT).await?;
            let output = verify.output();
            let _ = std::fs::remove_file(path.with_file_name("verify.log"));
            let report: Value = output
                .lines()
                .rev()
                .find_map(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .filter(Value::is_object)
                })
                .ok_or_else(|| anyhow::anyhow!("no report (exit {code:?}):\n{output}"))?;
            anyhow::ensure!(code == Some(0), "exit {code:?}: {report}");
            Ok(Some(report))
        },
    )
    .await
    .unwrap();
    for kind in ["missing", "extra", "stale"] {
        assert_eq!(report[kind]["count"], 0, "{report}");
    }
    let rows: i64 = db
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(report["rows"], rows, "{report}");
    // The scan may have run while the consumers caught up (its count is of that moment); what
    // verify reported is checked against the index itself.
    let docs = context
        .documents(Cluster::Elasticsearch, "items")
        .await
        .unwrap();
    assert_eq!(docs.len() as i64, rows, "{report}");
    for process in consumers.iter_mut().chain([&mut producer]) {
        process.stop(WAIT).await.unwrap();
    }
    context.cleanup().await.unwrap();
}
