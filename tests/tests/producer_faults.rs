//! sluice-producer under faults, against real Postgres and Kafka and real processes: a `kill -9`
//! in the middle of a burst loses nothing, SIGTERM flushes and confirms, an idle database still
//! advances the slot, a wrong password stops the producer with the fix, a second producer waits
//! and takes over, and a terminated walsender is survived.
//!
//! These tests run in parallel with others, so they never stop a shared service (Kafka outages are
//! in `kafka_outage.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use sluice_producer::stats::format_lsn;
use sluice_tests::{Process, TestContext, connect, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// What a topic holds: how often each `id` arrived, and the highest commit LSN seen.
#[derive(Debug, Default)]
struct Seen {
    counts: HashMap<i64, usize>,
    max_commit_lsn: u64,
}

impl Seen {
    fn missing(&self, ids: impl IntoIterator<Item = i64>) -> Vec<i64> {
        ids.into_iter()
            .filter(|id| !self.counts.contains_key(id))
            .collect()
    }

    fn duplicates(&self) -> usize {
        self.counts.values().map(|n| n - 1).sum()
    }
}

/// Reads `topic` and counts the `id` column of every change event.
async fn seen(context: &TestContext, topic: &str) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    for record in context.read_topic(topic).await? {
        let Some(event) = &record.event else { continue };
        let Some(id) = record.id() else {
            anyhow::bail!("an event without an integer id: {event:?}");
        };
        *seen.counts.entry(id).or_default() += 1;
        if let Some(position) = &event.position {
            seen.max_commit_lsn = seen.max_commit_lsn.max(position.commit_lsn);
        }
    }
    Ok(seen)
}

/// Waits until every id of `ids` is on `topic` (or `timeout` passes) and returns what is there;
/// the caller asserts, so a failure names the missing ids.
async fn wait_for_ids(context: &TestContext, topic: &str, ids: &[i64], timeout: Duration) -> Seen {
    let deadline = Instant::now() + timeout;
    loop {
        let size = context.topic_size(topic).await.unwrap_or(0);
        let last = Instant::now() >= deadline;
        if size >= ids.len() as i64 || last {
            let seen = seen(context, topic).await.unwrap();
            if last || seen.missing(ids.iter().copied()).is_empty() {
                return seen;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Panics unless every id of `ids` is in `seen`.
fn assert_all_arrived(seen: &Seen, ids: &[i64], what: &str) {
    let missing = seen.missing(ids.iter().copied());
    assert!(
        missing.is_empty(),
        "{what}: {} of {} ids are missing from the topic (first: {:?}); {} duplicates",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(20)],
        seen.duplicates()
    );
}

/// Waits until the slot exists (see [`TestContext::wait_for_slot`]); its confirmed LSN.
async fn wait_for_slot(context: &TestContext) -> u64 {
    context.wait_for_slot(WAIT).await.unwrap()
}

/// Waits until the slot's confirmed LSN is at least `lsn`, and returns it.
async fn wait_for_confirmed(context: &TestContext, lsn: u64, timeout: Duration, what: &str) -> u64 {
    match context.wait_confirmed(lsn, timeout).await {
        Ok(confirmed) => confirmed,
        Err(error) => panic!("{what}: {error:#}"),
    }
}

/// Inserts rows `first..=last` of `table(id int, …)` in one transaction.
async fn insert_ids(db: &tokio_postgres::Client, table: &str, first: i32, last: i32) {
    db.execute(
        &format!("INSERT INTO {table} (id) SELECT g FROM generate_series($1::int, $2::int) g"),
        &[&first, &last],
    )
    .await
    .unwrap();
}

fn ids(first: i64, last: i64) -> Vec<i64> {
    (first..=last).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_middle_of_a_burst_loses_nothing() {
    const ROWS: i32 = 50_000;
    const PER_TX: i32 = 100;
    /// The writer does not go past this row before the producer was killed, so the kill always
    /// lands in the middle of the burst.
    const GATE: i32 = 40_000;

    let context = TestContext::new("kill9_burst").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE burst (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let config = context
        .config()
        .table("public.burst")
        .heartbeat_interval(Duration::from_secs(1))
        .status_interval(Duration::from_secs(1))
        .write()
        .unwrap();
    let topic = context.topic("public.burst");

    let mut first = Process::run("sluice-producer", &config, "producer-1.log").unwrap();
    let slot_created_at = wait_for_slot(&context).await;

    let written = Arc::new(AtomicI32::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, written, killed) = (context.postgres_url(), written.clone(), killed.clone());
        tokio::spawn(async move {
            let db = connect(&url).await.unwrap();
            let mut last = 0;
            while last < ROWS {
                if last >= GATE {
                    while !killed.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let (from, to) = (last + 1, last + PER_TX);
                // One statement, one transaction of PER_TX rows with ~300-byte payloads.
                db.execute(
                    "INSERT INTO burst SELECT g, rpad(md5(g::text), 300, 'x') \
                     FROM generate_series($1::int, $2::int) g",
                    &[&from, &to],
                )
                .await
                .unwrap();
                last = to;
                written.store(last, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // Kill once a good part is on the topic and part of it is confirmed: the restart must resume
    // from a confirmed position in the middle of the burst.
    let (on_topic, confirmed_at_kill) = eventually(
        WAIT,
        "5000 messages on the topic and the slot confirmed past its start",
        || async {
            let size = context.topic_size(&topic).await?;
            let confirmed = context.confirmed_lsn().await?;
            Ok((size >= 5_000 && confirmed > slot_created_at).then_some((size, confirmed)))
        },
    )
    .await
    .unwrap();
    assert!(
        !writer.is_finished(),
        "the writer finished before the kill: the kill would not be mid-burst"
    );
    first.kill9().await.unwrap();
    killed.store(true, Ordering::SeqCst);
    let written_at_kill = written.load(Ordering::SeqCst);
    eprintln!(
        "killed the producer with {on_topic} messages on the topic, {written_at_kill} rows \
         written, slot confirmed at {}",
        format_lsn(confirmed_at_kill)
    );
    assert!(
        written_at_kill < ROWS,
        "the kill came after the burst ({written_at_kill} rows written)"
    );

    writer.await.unwrap();
    let after_writer = context.current_lsn().await.unwrap();

    let mut second = Process::run("sluice-producer", &config, "producer-2.log").unwrap();
    let seen = wait_for_ids(
        &context,
        &topic,
        &ids(1, ROWS.into()),
        Duration::from_secs(180),
    )
    .await;
    assert_all_arrived(&seen, &ids(1, ROWS.into()), "after kill -9 and restart");
    eprintln!(
        "{} messages for {ROWS} rows: {} duplicates",
        seen.counts.values().sum::<usize>(),
        seen.duplicates()
    );
    wait_for_confirmed(
        &context,
        after_writer,
        WAIT,
        "after the burst, the restarted producer",
    )
    .await;

    let code = second.terminate(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        code,
        Some(0),
        "the restarted producer did not stop cleanly:\n{}",
        second.output()
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_confirms_and_exits_0() {
    let context = TestContext::new("sigterm").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    // Status updates and heartbeats far apart: only the shutdown itself can confirm the rows.
    let config = context
        .config()
        .table("public.items")
        .heartbeat_interval(Duration::from_secs(600))
        .status_interval(Duration::from_secs(600))
        .write()
        .unwrap();
    let topic = context.topic("public.items");

    let mut producer = Process::run("sluice-producer", &config, "producer.log").unwrap();
    wait_for_slot(&context).await;

    let mut db = db;
    let tx = db.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g",
        &[],
    )
    .await
    .unwrap();
    // Everything of the transaction but its commit record lies before this position.
    let before_commit = tx
        .query_one(
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0) as u64;
    tx.commit().await.unwrap();
    let after_commit = context.current_lsn().await.unwrap();

    let seen = wait_for_ids(&context, &topic, &ids(1, 500), WAIT).await;
    assert_all_arrived(&seen, &ids(1, 500), "before SIGTERM");
    let confirmed_before = context.confirmed_lsn().await.unwrap();

    let code = producer.terminate(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        code,
        Some(0),
        "SIGTERM must stop the producer with exit code 0; output:\n{}",
        producer.output()
    );
    let confirmed = context.confirmed_lsn().await.unwrap();
    // The events carry their commit record's LSN; the slot must be confirmed past it. (The LSN
    // read right after the commit may already include other databases' WAL, which this
    // database's stream never covers without a heartbeat, so it is only reported.)
    let commit = seen.max_commit_lsn;
    assert!(
        confirmed > commit && confirmed >= before_commit,
        "after SIGTERM the slot's confirmed LSN is {} (before SIGTERM: {}); it must pass the \
         commit record of the inserted rows at {} (WAL position right after the commit: {})",
        format_lsn(confirmed),
        format_lsn(confirmed_before),
        format_lsn(commit),
        format_lsn(after_commit),
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_database_still_advances_the_slot() {
    let context = TestContext::new("idle_heartbeat").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = context
        .config()
        .table("public.quiet")
        .heartbeat_interval(Duration::from_secs(1))
        .status_interval(Duration::from_secs(1))
        .load()
        .unwrap();
    let (stop, producer) = context.spawn_producer(config);
    let at_start = wait_for_slot(&context).await;

    // WAL in another database only: the test database stays idle.
    let admin = context.admin_postgres().await.unwrap();
    let scratch = format!("scratch_{}", context.id);
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"{scratch}\" (id int, payload text);
             INSERT INTO \"{scratch}\" SELECT g, md5(g::text) FROM generate_series(1, 2000) g;"
        ))
        .await
        .unwrap();
    let elsewhere = context.current_lsn().await.unwrap();
    assert!(elsewhere > at_start);

    let confirmed = wait_for_confirmed(
        &context,
        elsewhere,
        Duration::from_secs(20),
        "an idle database with heartbeat_interval 1s",
    )
    .await;
    assert!(confirmed > at_start);
    // Heartbeats move the slot but never reach the table's topic.
    let records = context
        .read_topic(&context.topic("public.quiet"))
        .await
        .unwrap();
    assert!(
        records.is_empty(),
        "heartbeats leaked onto the table's topic: {records:?}"
    );

    admin
        .batch_execute(&format!("DROP TABLE \"{scratch}\""))
        .await
        .unwrap();
    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_stops_with_the_fix() {
    let context = TestContext::new("bad_password").await.unwrap();
    let config = context
        .config()
        .table("public.items")
        .postgres_password("wrong")
        .write()
        .unwrap();

    let mut producer = Process::run("sluice-producer", &config, "producer.log").unwrap();
    let code = producer.wait(Duration::from_secs(20)).await;
    let output = producer.output();
    let code = code.unwrap_or_else(|_| {
        panic!("the producer did not exit by itself within 20 s; output:\n{output}")
    });
    assert_eq!(
        code,
        Some(1),
        "a refused login must exit with 1; output:\n{output}"
    );
    assert!(
        output.contains("password authentication failed"),
        "the output must name the failure; output:\n{output}"
    );
    assert!(
        output.contains("postgres.url"),
        "the output must name the setting to fix; output:\n{output}"
    );
    assert!(
        !output.contains(":wrong@"),
        "the output shows the password; output:\n{output}"
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_producer_waits_and_takes_over() {
    let context = TestContext::new("takeover").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let config = context.config().table("public.items").write().unwrap();
    let topic = context.topic("public.items");

    let mut active = Process::run("sluice-producer", &config, "producer-a.log").unwrap();
    wait_for_slot(&context).await;
    insert_ids(&db, "items", 1, 100).await;
    let seen = wait_for_ids(&context, &topic, &ids(1, 100), WAIT).await;
    assert_all_arrived(&seen, &ids(1, 100), "producer A alone");

    let mut standby = Process::run("sluice-producer", &config, "producer-b.log").unwrap();
    // A keeps streaming while B waits.
    insert_ids(&db, "items", 101, 200).await;
    // B keeps trying (with backoff: four attempts take a few seconds) and keeps waiting.
    let waited_since = Instant::now();
    eventually(WAIT, "producer B found the slot held 4 times", || async {
        let attempts = standby
            .output()
            .matches("slot is held by another producer")
            .count();
        Ok((attempts >= 4).then_some(()))
    })
    .await
    .unwrap();
    eprintln!("producer B waited {:?}", waited_since.elapsed());
    let seen = wait_for_ids(&context, &topic, &ids(1, 200), WAIT).await;
    assert_all_arrived(&seen, &ids(1, 200), "producer A with B waiting");
    assert!(
        standby.child.try_wait().unwrap().is_none(),
        "producer B exited instead of waiting; output:\n{}",
        standby.output()
    );

    active.kill9().await.unwrap();
    insert_ids(&db, "items", 201, 300).await;
    let seen = wait_for_ids(&context, &topic, &ids(1, 300), WAIT).await;
    assert_all_arrived(
        &seen,
        &ids(1, 300),
        &format!(
            "producer B after A was killed; B's output:\n{}",
            standby.output()
        ),
    );

    let code = standby.terminate(Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        code,
        Some(0),
        "producer B did not stop cleanly:\n{}",
        standby.output()
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_walsender_is_survived() {
    let context = TestContext::new("walsender_killed").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let config = context.config().table("public.items").load().unwrap();
    let topic = context.topic("public.items");
    let (stop, producer) = context.spawn_producer(config);
    wait_for_slot(&context).await;

    insert_ids(&db, "items", 1, 200).await;
    let seen = wait_for_ids(&context, &topic, &ids(1, 200), WAIT).await;
    assert_all_arrived(&seen, &ids(1, 200), "before the walsender was terminated");

    let admin = context.admin_postgres().await.unwrap();
    let terminated: i32 = admin
        .query_one(
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&context.slot],
        )
        .await
        .unwrap()
        .get(0);
    // Written while the producer reconnects.
    insert_ids(&db, "items", 201, 400).await;
    let seen = wait_for_ids(&context, &topic, &ids(1, 400), WAIT).await;
    assert_all_arrived(&seen, &ids(1, 400), "after the walsender was terminated");
    let reader: Option<i32> = admin
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&context.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        reader.is_some_and(|pid| pid != terminated),
        "the slot should be read by a new walsender (was {terminated}, now {reader:?})"
    );
    assert!(!producer.is_finished(), "the producer stopped");

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}
