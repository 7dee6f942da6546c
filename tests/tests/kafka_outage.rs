//! sluice-producer while Kafka is down: nothing is confirmed to Postgres that Kafka has not
//! acknowledged, `sluice_producer_kafka_unacknowledged_seconds` shows how long messages have
//! waited, and once Kafka is back every row arrives, the slot catches up and the gauge is 0.
//!
//! This stops the shared Kafka, so it is a test binary of its own with a single test (cargo runs
//! test binaries one after another), and it always starts Kafka again, also when it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use sluice_producer::stats::format_lsn;
use sluice_tests::{StoppedService, TestContext, connect, eventually, free_port};

const WAIT: Duration = Duration::from_secs(60);

const UNACKNOWLEDGED: &str = "sluice_producer_kafka_unacknowledged_seconds";

/// The producer's `sluice_producer_kafka_unacknowledged_seconds`, from its `/metrics`.
async fn unacknowledged_seconds(port: u16) -> anyhow::Result<Option<f64>> {
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(metrics
        .lines()
        .find_map(|line| line.strip_prefix(UNACKNOWLEDGED)?.trim().parse().ok()))
}

/// Ids of the rows on `topic`.
async fn ids_on_topic(context: &TestContext, topic: &str) -> anyhow::Result<HashSet<i64>> {
    let mut ids = HashSet::new();
    for record in context.read_topic(topic).await? {
        let Some(event) = &record.event else { continue };
        let Some(id) = record.id() else {
            anyhow::bail!("an event without an integer id: {event:?}");
        };
        ids.insert(id);
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_confirmed_while_kafka_is_down_and_nothing_is_lost() {
    let context = TestContext::new("kafka_outage").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE ticks (id int PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
        .unwrap();
    // Frequent status updates and heartbeats: any confirmation would show within the outage.
    let port = free_port();
    let config = context
        .config()
        .table("public.ticks")
        .producer_port(port)
        .heartbeat_interval(Duration::from_secs(1))
        .status_interval(Duration::from_secs(1))
        .load()
        .unwrap();
    let topic = context.topic("public.ticks");
    let (stop, producer) = context.spawn_producer(config);
    context.wait_for_slot(WAIT).await.unwrap();

    // A row every 50 ms until told to stop; returns the last id written.
    let written = Arc::new(AtomicI32::new(0));
    let stop_writer = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, written, stop_writer) =
            (context.postgres_url(), written.clone(), stop_writer.clone());
        tokio::spawn(async move {
            let db = connect(&url).await.unwrap();
            let mut id = 0;
            while !stop_writer.load(Ordering::SeqCst) {
                id += 1;
                db.execute("INSERT INTO ticks (id) VALUES ($1)", &[&id])
                    .await
                    .unwrap();
                written.store(id, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            id
        })
    };

    eventually(WAIT, "the first rows on the topic", || async {
        Ok((ids_on_topic(&context, &topic).await?.len() >= 20).then_some(()))
    })
    .await
    .unwrap();

    // Dropped before the context: Kafka is back for the context's cleanup even on failure.
    let kafka = StoppedService::stop("kafka").await.unwrap();
    // Let what was in flight when Kafka stopped settle, and a status update go out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c0 = context.confirmed_lsn().await.unwrap();
    let written_at_c0 = written.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    let c1 = context.confirmed_lsn().await.unwrap();
    let written_at_c1 = written.load(Ordering::SeqCst);
    let wal = context.current_lsn().await.unwrap();
    let producer_alive = !producer.is_finished();
    // Read every 5 s: after 23 s of outage it shows at least 15.
    let waited = unacknowledged_seconds(port).await;

    kafka.start().await.unwrap();
    eprintln!(
        "Kafka down: confirmed {} → {}, rows {written_at_c0} → {written_at_c1}, WAL at {}",
        format_lsn(c0),
        format_lsn(c1),
        format_lsn(wal)
    );

    assert!(
        written_at_c1 > written_at_c0 && wal > c0,
        "there must be new changes to confirm during the outage: rows {written_at_c0} → \
         {written_at_c1}, WAL at {} vs confirmed {}",
        format_lsn(wal),
        format_lsn(c0)
    );
    assert_eq!(
        format_lsn(c1),
        format_lsn(c0),
        "the slot was confirmed while Kafka was down (rows {written_at_c0} → {written_at_c1} \
         written meanwhile, none of them acknowledged)"
    );
    let waited = waited.unwrap();
    assert!(
        waited.is_some_and(|seconds| seconds >= 15.0),
        "{UNACKNOWLEDGED} after 23 s without Kafka: {waited:?}"
    );
    if !producer_alive {
        panic!(
            "the producer stopped while Kafka was down: {:?}",
            producer.await
        );
    }

    stop_writer.store(true, Ordering::SeqCst);
    let last = writer.await.unwrap();
    let final_lsn = context.current_lsn().await.unwrap();

    let expected: Vec<i64> = (1..=i64::from(last)).collect();
    let missing = eventually(
        Duration::from_secs(120),
        "every written row on the topic",
        || async {
            let ids = ids_on_topic(&context, &topic).await?;
            let missing: Vec<i64> = expected
                .iter()
                .copied()
                .filter(|id| !ids.contains(id))
                .collect();
            Ok(missing.is_empty().then_some(missing))
        },
    )
    .await;
    if let Err(error) = missing {
        let ids = ids_on_topic(&context, &topic).await.unwrap();
        let missing: Vec<i64> = expected
            .iter()
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        panic!(
            "{error:#}: {} of {last} rows missing after Kafka came back (first: {:?})",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
    }
    eventually(
        WAIT,
        &format!(
            "the confirmed LSN passes {} after Kafka came back",
            format_lsn(final_lsn)
        ),
        || async { Ok((context.confirmed_lsn().await? >= final_lsn).then_some(())) },
    )
    .await
    .unwrap();
    eventually(WAIT, &format!("{UNACKNOWLEDGED} back at 0"), || async {
        Ok((unacknowledged_seconds(port).await? == Some(0.0)).then_some(()))
    })
    .await
    .unwrap();

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}
