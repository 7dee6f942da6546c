//! Backfills against real Postgres and Kafka: every existing row arrives as a READ event while a
//! writer keeps changing the table, and folding the topic gives exactly the table; a `kill -9` in
//! the middle resumes from the last finished chunk; `sluice-producer backfill` starts filtered and
//! repeated backfills on a running producer, and refuses bad input before writing anything; a
//! backfill of a table that keeps growing at the end of its key order finishes; a stream that
//! keeps reconnecting mid-backfill loses no row; chunks of wide rows hold what fits in
//! `backfill_chunk_bytes`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_proto::key;
use sluice_proto::v1::value::Kind;
use sluice_proto::v1::{Op, Value};
use sluice_tests::fold::{self, Fold};
use sluice_tests::{Process, Record, TestContext, connect, eventually, run_command};

const WAIT: Duration = Duration::from_secs(60);
/// Rows in the big table.
const ROWS: i64 = 200_000;
/// Rows per chunk in these tests: 40 chunks for the big table.
const CHUNK: u32 = 5_000;

type Rows = BTreeMap<Vec<u8>, BTreeMap<String, Option<Kind>>>;

/// `items(id bigint primary key, grp, name, price, flag, note)` with `rows` rows, plus the
/// sequences the writer takes new ids from.
async fn create_items(db: &tokio_postgres::Client, rows: i64) {
    db.batch_execute(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, name text NOT NULL,
                             price numeric(12,2), flag bool, note text);
         INSERT INTO items
           SELECT g, g % 97, md5(g::text) || md5((g * 7)::text),
                  CASE WHEN g % 11 = 0 THEN NULL ELSE round((g % 10000) / 7.0, 2) END,
                  CASE WHEN g % 13 = 0 THEN NULL ELSE g % 2 = 0 END,
                  CASE WHEN g % 3 = 0 THEN 'note ' || g END
           FROM generate_series(1, {rows}) g;
         CREATE SEQUENCE new_ids START {};
         CREATE SEQUENCE moved_ids START {};
         ANALYZE items;",
        rows + 100_000,
        rows + 1_000_000
    ))
    .await
    .unwrap();
}

/// The table, keyed like the topic, with the values the events must carry.
async fn items_table(db: &tokio_postgres::Client) -> Rows {
    let rows = db
        .query(
            "SELECT id, grp, name, price::text, flag, note FROM items",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let id: i64 = row.get(0);
            let mut columns = BTreeMap::new();
            let null = || Some(Kind::Null(sluice_proto::v1::Null {}));
            columns.insert("id".to_owned(), Some(Kind::Int(id)));
            columns.insert(
                "grp".to_owned(),
                Some(Kind::Int(i64::from(row.get::<_, i32>(1)))),
            );
            columns.insert("name".to_owned(), Some(Kind::Text(row.get(2))));
            columns.insert(
                "price".to_owned(),
                row.get::<_, Option<String>>(3)
                    .map_or_else(null, |p| Some(Kind::Numeric(p))),
            );
            columns.insert(
                "flag".to_owned(),
                row.get::<_, Option<bool>>(4)
                    .map_or_else(null, |b| Some(Kind::Bool(b))),
            );
            columns.insert(
                "note".to_owned(),
                row.get::<_, Option<String>>(5)
                    .map_or_else(null, |t| Some(Kind::Text(t))),
            );
            (key::encode(&[Value::from(Kind::Int(id))]), columns)
        })
        .collect()
}

/// Random updates, inserts, deletes and key changes of `items`, one small transaction at a time,
/// until `stop`. Returns the number of transactions.
fn spawn_writer(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let db = connect(&url).await.unwrap();
        let range = ROWS + 20_000;
        let mut transactions = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let moved = if transactions.is_multiple_of(10) {
                // A key change: a DELETE of the old key and an UPDATE of the new one.
                format!(
                    "UPDATE items SET id = nextval('moved_ids')
                     WHERE id = (SELECT (1 + floor(random() * {range}))::bigint);"
                )
            } else {
                String::new()
            };
            db.batch_execute(&format!(
                "BEGIN;
                 UPDATE items SET grp = grp + 1, name = md5(random()::text),
                        price = round((random() * 1000)::numeric, 2),
                        note = CASE WHEN random() < 0.3 THEN NULL ELSE 'changed ' || random() END
                 WHERE id = ANY(ARRAY(SELECT (1 + floor(random() * {range}))::bigint
                                      FROM generate_series(1, 4)));
                 DELETE FROM items WHERE id = (SELECT (1 + floor(random() * {range}))::bigint);
                 INSERT INTO items VALUES (nextval('new_ids'), 1, md5(random()::text), 1.50, true, NULL);
                 {moved}
                 COMMIT;"
            ))
            .await
            .unwrap();
            transactions += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        transactions
    })
}

/// The state of backfill `id` (or of the table's latest backfill) in the control table.
async fn backfill_row(
    db: &tokio_postgres::Client,
    table: &str,
) -> Option<(i64, String, i64, Option<serde_json::Value>)> {
    db.query_opt(
        "SELECT id, state, rows_done, last_key FROM sluice.backfills
         WHERE table_name = $1 ORDER BY id DESC LIMIT 1",
        &[&table],
    )
    .await
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// Waits until the latest backfill of `table` is done; returns its id and rows done.
async fn wait_done(
    db: &tokio_postgres::Client,
    table: &str,
    after_id: i64,
    timeout: Duration,
) -> (i64, i64) {
    eventually(timeout, &format!("a backfill of {table} done"), || async {
        Ok(backfill_row(db, table)
            .await
            .filter(|(id, state, _, _)| *id > after_id && state == "done")
            .map(|(id, _, rows, _)| (id, rows)))
    })
    .await
    .unwrap()
}

/// Commits a transaction of its own (a logical message) and waits until the slot has confirmed
/// past it: everything committed before is on the topic.
async fn settle(context: &TestContext) {
    let mut db = connect(&context.postgres_url()).await.unwrap();
    let tx = db.transaction().await.unwrap();
    tx.batch_execute("SELECT pg_logical_emit_message(true, 'sluice-test', 'settle')")
        .await
        .unwrap();
    let lsn = tx
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0) as u64;
    tx.commit().await.unwrap();
    eventually(
        Duration::from_secs(120),
        "the sentinel confirmed",
        || async { Ok((context.confirmed_lsn().await? >= lsn).then_some(())) },
    )
    .await
    .unwrap();
}

/// Every record of the items topic once everything committed so far is on it.
async fn settled_items_topic(context: &TestContext) -> Vec<Record> {
    settle(context).await;
    context
        .read_topic(&context.topic("public.items"))
        .await
        .unwrap()
}

/// A test context whose database holds the big items table.
async fn with_items(name: &str) -> (TestContext, tokio_postgres::Client) {
    let context = TestContext::new(name).await.unwrap();
    let db = context.postgres().await.unwrap();
    create_items(&db, ROWS).await;
    (context, db)
}

fn reads(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.event.as_ref().is_some_and(|e| e.op() == Op::Read))
        .collect()
}

fn assert_exact(records: &[Record], table: &Rows, what: &str) {
    let folded = Fold::new(records).rows();
    let difference = fold::compare(&folded, table);
    assert!(
        difference.is_empty(),
        "{what}: the folded topic differs from the table ({} rows): {}",
        table.len(),
        difference.report()
    );
}

/// Runs `sluice-producer --config CONFIG ARGS…` to its end, logging to `{log}.log`: exit code
/// and output.
async fn command(config: &Path, args: &[&str], log: &str) -> (Option<i32>, String) {
    run_command("sluice-producer", config, args, &format!("{log}.log"), WAIT)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_under_concurrent_writes_folds_to_exactly_the_table() {
    let (context, db) = with_items("backfill_exact").await;
    let config = context
        .config()
        .table("public.items")
        .backfill(true)
        .backfill_chunk_size(CHUNK)
        .status_interval(Duration::from_secs(1))
        .load()
        .unwrap();
    let (stop, producer) = context.spawn_producer(config);

    let writing = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(context.postgres_url(), writing.clone());
    let started = Instant::now();
    let (_, rows_done) = wait_done(&db, "public.items", 0, Duration::from_secs(600)).await;
    let took = started.elapsed();
    writing.store(true, Ordering::SeqCst);
    let transactions = writer.await.unwrap();

    let records = settled_items_topic(&context).await;
    let table = items_table(&db).await;
    let read = reads(&records);
    eprintln!(
        "backfill of {ROWS} rows in {took:?} ({rows_done} rows read) with {transactions} writer \
         transactions; {} messages, {} READ events, {} rows in the table",
        records.len(),
        read.len(),
        table.len()
    );
    assert!(
        transactions > 100,
        "the writer hardly ran ({transactions} transactions)"
    );
    assert!(
        read.len() as i64 > ROWS / 2,
        "only {} READ events: the backfill did not read the table",
        read.len()
    );
    // A READ event carries its high watermark's commit LSN, never a change's own position.
    let event = read[0].event.as_ref().unwrap();
    let position = event.position.as_ref().unwrap();
    assert!(position.commit_lsn > 0 && position.lsn == 0 && position.xid == 0);
    assert_exact(&records, &table, "backfill under concurrent writes");

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

/// Rows of about 48 KB: a chunk holds as many as fit in `backfill_chunk_bytes` (1 MiB here,
/// about 21 of them), not `backfill_chunk_size` (10,000 by default), and every row arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_of_wide_rows_reads_chunks_of_the_chunk_bytes() {
    const WIDE_ROWS: i64 = 400;
    let context = TestContext::new("backfill_wide").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(&format!(
        "CREATE TABLE wide_rows (id bigint PRIMARY KEY, body text NOT NULL);
         INSERT INTO wide_rows
           SELECT g, (SELECT string_agg(md5(g::text || '/' || i::text), '')
                      FROM generate_series(1, 1500) i)
           FROM generate_series(1, {WIDE_ROWS}) g;"
    ))
    .await
    .unwrap();
    let config = context
        .config()
        .table("public.wide_rows")
        .backfill(true)
        .backfill_chunk_bytes(1024 * 1024)
        .status_interval(Duration::from_secs(1))
        .load()
        .unwrap();
    let (stop, producer) = context.spawn_producer(config);
    let (_, rows_done) = wait_done(&db, "public.wide_rows", 0, Duration::from_secs(120)).await;
    settle(&context).await;
    let records = context
        .read_topic(&context.topic("public.wide_rows"))
        .await
        .unwrap();
    let read = reads(&records);
    let keys: HashSet<&[u8]> = read.iter().map(|r| r.key.as_slice()).collect();
    let published = chunks("published", Some("public.wide_rows"));
    eprintln!(
        "{rows_done} rows read in {published} chunks; {} READ events",
        read.len()
    );
    assert_eq!(rows_done, WIDE_ROWS);
    assert_eq!(keys.len() as i64, WIDE_ROWS, "every row on the topic");
    let body_length = |record: &Record| {
        let event = record.event.as_ref()?;
        let column = event.record.iter().find(|c| c.name == "body")?;
        match column.value.as_ref()?.kind.as_ref()? {
            Kind::Text(text) => Some(text.len()),
            _ => None,
        }
    };
    assert!(
        read.iter().all(|r| body_length(r) == Some(48_000)),
        "every body whole"
    );
    // 16 rows first (their size unknown), then about 21 a chunk: 19 or so in all; the row
    // limit alone would make 2.
    assert!(
        (15.0..=30.0).contains(&published),
        "{published} chunks for {WIDE_ROWS} rows of 48 KB in chunks of 1 MiB"
    );

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

/// `sluice_producer_backfill_chunks_total{outcome="…"}` of this test process, of one table or
/// of all of them.
fn chunks(outcome: &str, table: Option<&str>) -> f64 {
    let rendered = sluice_common::telemetry::metrics_handle().unwrap().render();
    rendered
        .lines()
        .filter(|l| {
            l.starts_with("sluice_producer_backfill_chunks_total")
                && l.contains(&format!("\"{outcome}\""))
                && table.is_none_or(|table| l.contains(&format!("\"{table}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The stream reconnects again and again while the worker reads chunks ahead of it: every chunk
/// whose window a session did not see whole is discarded, and it and the chunks read after it are
/// read again, so the topic still folds to exactly the table.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_whose_stream_keeps_reconnecting_reads_discarded_chunks_again() {
    const TERMINATIONS: usize = 12;
    let (context, db) = with_items("backfill_reconnect").await;
    let config = context
        .config()
        .table("public.items")
        .backfill(true)
        .backfill_chunk_size(CHUNK / 5)
        .load()
        .unwrap();
    let discarded_before = chunks("discarded", None);
    let (stop, producer) = context.spawn_producer(config);

    let writing = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(context.postgres_url(), writing.clone());
    // End the walsender every 300 ms while the backfill runs.
    let admin = context.admin_postgres().await.unwrap();
    let mut terminated = 0;
    while terminated < TERMINATIONS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if backfill_row(&db, "public.items")
            .await
            .is_some_and(|(_, state, _, _)| state == "done")
        {
            break;
        }
        let ended = admin
            .query(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&context.slot],
            )
            .await
            .unwrap();
        terminated += ended.len();
    }
    let (_, rows_done) = wait_done(&db, "public.items", 0, Duration::from_secs(600)).await;
    writing.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let records = settled_items_topic(&context).await;
    let table = items_table(&db).await;
    let discarded = chunks("discarded", None) - discarded_before;
    eprintln!(
        "{terminated} walsenders ended during the backfill; {discarded} chunks discarded; \
         {rows_done} rows done; {} READ events",
        reads(&records).len()
    );
    assert!(
        terminated >= 3,
        "the backfill ended before the stream was interrupted often ({terminated} times)"
    );
    assert!(
        discarded > 0.0,
        "no chunk was discarded: no reconnect fell inside a window"
    );
    assert_exact(
        &records,
        &table,
        "after the stream reconnected inside windows",
    );

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_a_backfill_resumes_from_the_last_finished_chunk() {
    const KILL_AFTER: i64 = 60_000;
    let (context, db) = with_items("backfill_kill9").await;
    // Rate-limited so the kill lands in the middle.
    let config = context
        .config()
        .table("public.items")
        .backfill(true)
        .backfill_chunk_size(CHUNK)
        .backfill_max_rows_per_second(25_000)
        .status_interval(Duration::from_secs(1))
        .write()
        .unwrap();

    let writing = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(context.postgres_url(), writing.clone());
    let mut first = Process::run("sluice-producer", &config, "producer-1.log").unwrap();
    let (at_kill, key_at_kill) = eventually(
        Duration::from_secs(180),
        "the backfill persisted some progress",
        || async {
            Ok(backfill_row(&db, "public.items")
                .await
                .filter(|(_, _, rows, _)| *rows >= KILL_AFTER)
                .map(|(_, _, rows, key)| (rows, key)))
        },
    )
    .await
    .unwrap();
    first.kill9().await.unwrap();
    let (_, state, persisted, _) = backfill_row(&db, "public.items").await.unwrap();
    assert_eq!(
        state,
        "running",
        "the kill came after the backfill ended; output:\n{}",
        first.output()
    );
    eprintln!(
        "killed with {persisted} rows persisted (≥ {at_kill} seen before the kill, last key {key_at_kill:?})"
    );

    let mut second = Process::run("sluice-producer", &config, "producer-2.log").unwrap();
    wait_done(&db, "public.items", 0, Duration::from_secs(600)).await;
    writing.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    let records = settled_items_topic(&context).await;
    let table = items_table(&db).await;
    assert_exact(&records, &table, "after kill -9 and restart");

    // The restarted run read on from the persisted key: only the chunks in flight at the kill
    // (read ahead of the stream, or published and not yet acknowledged by Kafka: four at most)
    // may have been read twice.
    let mut per_key: HashMap<&[u8], usize> = HashMap::new();
    let read = reads(&records);
    for record in &read {
        *per_key.entry(record.key.as_slice()).or_default() += 1;
    }
    let read_twice = per_key.values().filter(|n| **n > 1).count();
    let duplicates: usize = per_key.values().map(|n| n - 1).sum();
    eprintln!(
        "{} READ events for {} keys: {read_twice} keys read twice",
        read.len(),
        per_key.len()
    );
    assert!(
        read_twice <= 4 * CHUNK as usize && duplicates <= 4 * CHUNK as usize,
        "{read_twice} keys were read more than once ({duplicates} extra READ events): the restart \
         re-read more than the four chunks in flight"
    );

    let code = second.terminate(Duration::from_secs(30)).await.unwrap();
    assert_eq!(code, Some(0), "output:\n{}", second.output());
    context.cleanup().await.unwrap();
}

/// A table that keeps receiving rows at the end of its key order: the backfill stops at the
/// last key it saw when it started (the control table's `end_key`) instead of chasing the new
/// rows, which come through the stream.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_of_a_table_growing_at_its_end_finishes_at_its_starting_last_key() {
    const START_ROWS: i64 = 2_000;
    let context = TestContext::new("backfill_tail").await.unwrap();
    let db = context.postgres().await.unwrap();
    create_items(&db, START_ROWS).await;
    // 400 rows/s in chunks of 100: each chunk sees the ~10 rows appended since the one before.
    let config = context
        .config()
        .table("public.items")
        .backfill(true)
        .backfill_chunk_size(100)
        .backfill_max_rows_per_second(400)
        .status_interval(Duration::from_secs(1))
        .write()
        .unwrap();
    let appending = Arc::new(AtomicBool::new(false));
    let appender = {
        let url = context.postgres_url();
        let stop = appending.clone();
        tokio::spawn(async move {
            let db = connect(&url).await.unwrap();
            let mut appended = 0u64;
            while !stop.load(Ordering::SeqCst) {
                db.batch_execute(
                    "INSERT INTO items VALUES (nextval('new_ids'), 1, md5(random()::text), 1.50, true, NULL)",
                )
                .await
                .unwrap();
                appended += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            appended
        })
    };
    let mut producer = Process::run("sluice-producer", &config, "producer.log").unwrap();
    let (_, rows_done) = wait_done(&db, "public.items", 0, Duration::from_secs(90)).await;
    // Some more rows after the end, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    appending.store(true, Ordering::SeqCst);
    let appended = appender.await.unwrap();
    assert!(appended > 100, "the appender hardly ran ({appended} rows)");
    let ends: (serde_json::Value, serde_json::Value) = db
        .query_one(
            "SELECT end_key, last_key FROM sluice.backfills WHERE table_name = 'public.items'",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    // end_key is the last row when the backfill started; the appender went on long after.
    let end: i64 = ends.0[0].as_str().unwrap().parse().unwrap();
    let last: i64 = db
        .query_one("SELECT max(id) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert!(end >= START_ROWS, "end_key {end}");
    assert!(
        last - end > 50,
        "the backfill ended at {end}, the table at {last}"
    );
    assert_eq!(ends.1, ends.0, "the last chunk ended at end_key");
    let records = settled_items_topic(&context).await;
    assert_eq!(reads(&records).len() as i64, rows_done);
    let table = items_table(&db).await;
    assert_eq!(table.len() as u64, START_ROWS as u64 + appended);
    assert_exact(&records, &table, "a backfill while rows are appended");

    let code = producer.terminate(Duration::from_secs(30)).await.unwrap();
    assert_eq!(code, Some(0), "output:\n{}", producer.output());
    context.cleanup().await.unwrap();
}

/// `accounts(tenant, id)` with a composite key: 3 tenants × `per_tenant` rows.
async fn create_accounts(db: &tokio_postgres::Client, per_tenant: i32) {
    db.batch_execute(&format!(
        "CREATE TABLE accounts (tenant text, id int, balance numeric, PRIMARY KEY (tenant, id));
         INSERT INTO accounts SELECT t, g, g * 10
           FROM unnest(ARRAY['a', 'b', 'c']) t, generate_series(1, {per_tenant}) g;
         CREATE TABLE loose (id int, v text);
         INSERT INTO loose VALUES (1, 'x');"
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_backfills_filter_repeat_and_refuse_bad_input() {
    const PER_TENANT: i32 = 3_000;
    let context = TestContext::new("backfill_on_demand").await.unwrap();
    let db = context.postgres().await.unwrap();
    create_accounts(&db, PER_TENANT).await;
    let topic = context.topic("public.accounts");
    let accounts = context
        .config()
        .table("public.accounts")
        .backfill_chunk_size(1000)
        .status_interval(Duration::from_secs(1));
    // The commands' config also names a table without a primary key (the producer would refuse
    // to run with it).
    let with_loose = accounts.clone().table("public.loose");
    let (stop, producer) = context.spawn_producer(accounts.load().unwrap());
    // The control table is created after the slot, right before streaming starts.
    eventually(WAIT, "producer streaming", || async {
        let ready = db
            .query_one("SELECT to_regclass('sluice.backfills') IS NOT NULL", &[])
            .await?
            .get::<_, bool>(0);
        Ok(ready.then_some(()))
    })
    .await
    .unwrap();
    context.wait_streaming().await.unwrap();
    let listen = "127.0.0.1:0";
    let config = with_loose.write().unwrap();

    // Bad input is refused before anything is written.
    let (code, output) = command(
        &config,
        &[
            "--listen",
            listen,
            "backfill",
            "public.accounts",
            "--where",
            "nope = 1",
        ],
        "unknown-column",
    )
    .await;
    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains(r#"column "nope" does not exist"#),
        "Postgres's message is missing; output:\n{output}"
    );
    let (code, output) = command(
        &config,
        &[
            "--listen",
            listen,
            "backfill",
            "public.accounts",
            "--where",
            "tenant = = 'a'",
        ],
        "syntax-error",
    )
    .await;
    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains(r#"syntax error at or near "=""#),
        "Postgres's message is missing; output:\n{output}"
    );
    let (code, output) = command(
        &config,
        &["--listen", listen, "backfill", "public.elsewhere"],
        "not-in-config",
    )
    .await;
    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains("public.elsewhere is not in `tables`"),
        "output:\n{output}"
    );
    let (code, output) = command(
        &config,
        &["--listen", listen, "backfill", "public.loose"],
        "no-key",
    )
    .await;
    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains("has no primary key") && output.contains("add one"),
        "the refusal must say how to fix it; output:\n{output}"
    );
    let queued: i64 = db
        .query_one("SELECT count(*) FROM sluice.backfills", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, 0, "a refused backfill was queued");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = context.read_topic(&topic).await.unwrap();
    assert!(
        records.is_empty(),
        "refused backfills emitted {} messages",
        records.len()
    );

    // A filtered backfill: only tenant b, on the running producer.
    let (code, output) = command(
        &config,
        &[
            "--listen",
            listen,
            "backfill",
            "public.accounts",
            "--where",
            "tenant = 'b'",
        ],
        "filtered",
    )
    .await;
    assert_eq!(code, Some(0), "output:\n{output}");
    assert!(output.contains("backfill 1 queued"), "output:\n{output}");
    let (first, rows) = wait_done(&db, "public.accounts", 0, WAIT).await;
    assert_eq!(rows, i64::from(PER_TENANT));
    let records = context.read_topic(&topic).await.unwrap();
    let read = reads(&records);
    assert_eq!(read.len(), records.len(), "only READ events were written");
    let tenants: BTreeMap<String, usize> = read.iter().fold(BTreeMap::new(), |mut acc, r| {
        let tenant = match r.column("tenant") {
            Some(Kind::Text(t)) => t.clone(),
            other => panic!("tenant is {other:?}"),
        };
        *acc.entry(tenant).or_default() += 1;
        acc
    });
    assert_eq!(
        tenants,
        BTreeMap::from([("b".to_owned(), PER_TENANT as usize)]),
        "the filtered backfill emitted other rows"
    );
    assert!(
        read.iter().any(|r| r.key_text() == r#"["b",1]"#),
        "composite keys are encoded like live changes"
    );

    // Some live changes, then a full backfill, then another one of a table already in sync: the
    // folded topic is the table each time, and the second full backfill changes nothing.
    db.batch_execute(
        "UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0;
         DELETE FROM accounts WHERE id % 50 = 0;
         INSERT INTO accounts VALUES ('d', 1, 1), ('a', 100000, 2);",
    )
    .await
    .unwrap();
    let expected = async || -> Rows {
        db.query("SELECT tenant, id, balance::text FROM accounts", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| {
                let tenant: String = row.get(0);
                let id: i32 = row.get(1);
                let key = key::encode(&[
                    Value::from(Kind::Text(tenant.clone())),
                    Value::from(Kind::Int(id.into())),
                ]);
                let columns = BTreeMap::from([
                    ("tenant".to_owned(), Some(Kind::Text(tenant))),
                    ("id".to_owned(), Some(Kind::Int(id.into()))),
                    ("balance".to_owned(), Some(Kind::Numeric(row.get(2)))),
                ]);
                (key, columns)
            })
            .collect()
    };
    let mut folds = Vec::new();
    let mut last = first;
    for round in ["full", "in-sync"] {
        let (code, output) = command(
            &config,
            &["--listen", listen, "backfill", "public.accounts"],
            round,
        )
        .await;
        assert_eq!(code, Some(0), "output:\n{output}");
        last = wait_done(&db, "public.accounts", last, WAIT).await.0;
        settle(&context).await;
        let records = context.read_topic(&topic).await.unwrap();
        let table = expected().await;
        assert_exact(&records, &table, round);
        folds.push((Fold::new(&records).rows(), reads(&records).len()));
    }
    let (full, reads_full) = &folds[0];
    let (in_sync, reads_in_sync) = &folds[1];
    assert!(
        reads_in_sync > reads_full,
        "the second backfill emitted nothing"
    );
    let changed = fold::compare(in_sync, full);
    assert!(
        changed.is_empty(),
        "a backfill of a table in sync changed the folded result: {}",
        changed.report()
    );

    // `status` shows the backfills.
    let (code, output) = command(&config, &["--listen", listen, "status"], "status").await;
    assert_eq!(code, Some(0), "output:\n{output}");
    assert!(
        output.contains("backfills:") && output.contains("where tenant = 'b': done, 3000 rows"),
        "output:\n{output}"
    );

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}
