//! sluice-consumer as a group: several processes share the partitions and survive one of them
//! being killed; a second group replaying the topic cannot make documents older.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use sluice_tests::{Cluster, Process, Sink, TestContext, eventually};

const WAIT: Duration = Duration::from_secs(120);

/// What `orders` must look like in the index: every row with its latest amount.
async fn wait_for_table(context: &TestContext, cluster: Cluster, index: &str) {
    let db = context.postgres().await.unwrap();
    let rows = db
        .query("SELECT id, amount FROM orders", &[])
        .await
        .unwrap();
    let expected: BTreeMap<String, serde_json::Value> = rows
        .iter()
        .map(|r| {
            let id: i32 = r.get(0);
            let amount: i32 = r.get(1);
            (id.to_string(), json!({"id": id, "amount": amount}))
        })
        .collect();
    context
        .wait_for_documents(cluster, index, &expected, WAIT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn three_consumers_share_the_partitions_and_one_killed_loses_nothing() {
    let context = TestContext::new("three_consumers").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, amount int NOT NULL)")
        .await
        .unwrap();
    let config = context.config().table("public.orders").sink(
        context
            .sink(Cluster::OpenSearch, "orders", "public.orders")
            .batch_size(200),
    );
    let path = config.write().unwrap();
    let (producer_stop, producer) = context.spawn_producer(config.load().unwrap());
    context.wait_streaming().await.unwrap();

    let start =
        |n: usize| Process::run("sluice-consumer", &path, &format!("consumer-{n}.log")).unwrap();
    let mut consumers: Vec<Process> = (0..3).map(start).collect();
    // The group settles: every member gets a partition (3 partitions, 3 members).
    eventually(WAIT, "every consumer owns a partition", || async {
        let assigned = consumers
            .iter()
            .filter(|c| c.output().contains("partitions assigned"))
            .count();
        Ok((assigned == 3).then_some(()))
    })
    .await
    .unwrap();

    // A writer keeps inserting and updating while one consumer is killed.
    let writer = {
        let db = context.postgres().await.unwrap();
        tokio::spawn(async move {
            for round in 0..30 {
                let from = round * 100 + 1;
                db.batch_execute(&format!(
                    "INSERT INTO orders SELECT i, i FROM generate_series({from}, {}) i;
                     UPDATE orders SET amount = amount + 1 WHERE id % 7 = {};",
                    from + 99,
                    round % 7
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    consumers[1].kill9().await.unwrap();
    writer.await.unwrap();

    wait_for_table(&context, Cluster::OpenSearch, "orders").await;
    let topic = context.topic("public.orders");
    context
        .wait_committed_to_end(&context.sink_name("orders"), &topic, WAIT)
        .await
        .unwrap();
    for (n, consumer) in consumers.iter_mut().enumerate() {
        if n != 1 {
            assert_eq!(
                consumer.terminate(Duration::from_secs(30)).await.unwrap(),
                Some(0),
                "consumer {n} stops cleanly:\n{}",
                consumer.output()
            );
        }
    }
    producer_stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

/// A second group replaying the topic from the start into the live index: documents keep
/// their versions and content. The replaying sink writes only inserts and deletes: the insert
/// is the oldest event of every row, so without versions it would turn every updated document
/// back to its first state.
#[tokio::test(flavor = "multi_thread")]
async fn replaying_the_topic_with_a_new_group_changes_no_document() {
    let context = TestContext::new("replay").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE orders (id int PRIMARY KEY, amount int NOT NULL)")
        .await
        .unwrap();
    // Both sinks write the index `orders`.
    let config_of = |name: &str, settings: fn(Sink) -> Sink| {
        let sink = context.sink(Cluster::Elasticsearch, name, "public.orders");
        let sink = settings(sink.index("orders"));
        context
            .config()
            .table("public.orders")
            .sink(sink)
            .load()
            .unwrap()
    };
    let config = config_of("live", |sink| sink);
    let (producer_stop, producer) = context.spawn_producer(config.clone());
    let (live_stop, live_consumer) = context.spawn_consumer(config);
    context.wait_streaming().await.unwrap();
    // Separate transactions: changes of one transaction share a version.
    for statement in [
        "INSERT INTO orders SELECT i, i FROM generate_series(1, 500) i",
        "UPDATE orders SET amount = amount * 100 WHERE id % 2 = 0",
        "UPDATE orders SET amount = amount + 1 WHERE id % 3 = 0",
        "DELETE FROM orders WHERE id % 10 = 0",
    ] {
        db.batch_execute(statement).await.unwrap();
    }
    wait_for_table(&context, Cluster::Elasticsearch, "orders").await;
    let topic = context.topic("public.orders");
    context
        .wait_committed_to_end(&context.sink_name("live"), &topic, WAIT)
        .await
        .unwrap();
    live_stop.cancel();
    live_consumer.await.unwrap().unwrap();
    let before = context
        .documents(Cluster::Elasticsearch, "orders")
        .await
        .unwrap();

    let replay = config_of("replay", |sink| sink.actions(&["insert", "delete"]));
    let (replay_stop, replay_consumer) = context.spawn_consumer(replay);
    context
        .wait_committed_to_end(&context.sink_name("replay"), &topic, WAIT)
        .await
        .unwrap();
    let after = context
        .documents(Cluster::Elasticsearch, "orders")
        .await
        .unwrap();
    assert_eq!(before.len(), 450);
    assert!(
        before == after,
        "documents changed: {:?}",
        after
            .iter()
            .filter(|(id, doc)| before.get(*id) != Some(doc))
            .take(5)
            .collect::<Vec<_>>()
    );

    replay_stop.cancel();
    replay_consumer.await.unwrap().unwrap();
    producer_stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}
