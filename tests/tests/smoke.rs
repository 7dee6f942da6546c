//! The harness reaches every real service, with the access the pipeline needs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use rdkafka::Message;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use sluice_tests::{TestContext, connect, eventually};

#[tokio::test(flavor = "multi_thread")]
async fn postgres_is_ready_for_logical_replication() {
    let context = TestContext::new("smoke_postgres").await.unwrap();
    let client = context.postgres().await.unwrap();

    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(wal_level, "logical");

    // The test database exists and a pgoutput slot can be made in it.
    let row = client
        .query_one(
            "SELECT current_database()::text, lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&context.slot],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), context.database);
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND database = $2",
            &[&context.slot, &context.database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);

    // A wrong password is refused (the server authenticates with SCRAM over TCP).
    let wrong = context.postgres_url().replacen(":sluice@", ":wrong@", 1);
    let error = connect(&wrong).await.unwrap_err();
    assert!(
        format!("{error:#}").contains("password authentication failed"),
        "{error:#}"
    );

    // Cleanup removes the slot and the database.
    let admin = context.admin_postgres().await.unwrap();
    let (database, slot) = (context.database.clone(), context.slot.clone());
    drop(client);
    context.cleanup().await.unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1) + (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $2)",
            &[&database, &slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "cleanup left the database or the slot behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_round_trips_a_message_and_commits_its_offset() {
    let context = TestContext::new("smoke_kafka").await.unwrap();
    let topic = format!("{}.public.things", context.topic_prefix);
    let admin = context.kafka_admin().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 2, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer: FutureProducer = context
        .kafka_config()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key(r#"[1]"#).payload("hello"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let (partition, offset) = (delivery.partition, delivery.offset);

    let consumer: StreamConsumer = context
        .kafka_config()
        .set("group.id", &context.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.payload(), Some(&b"hello"[..]));
    assert_eq!(message.key(), Some(&br#"[1]"#[..]));
    assert_eq!((message.partition(), message.offset()), (partition, offset));
    consumer.commit_message(&message, CommitMode::Sync).unwrap();

    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&topic, partition);
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .unwrap();
    let element = committed.find_partition(&topic, partition).unwrap();
    assert_eq!(element.offset(), Offset::Offset(offset + 1));
    // A message must go before its consumer: a live message pins librdkafka's partition state
    // and destroying the consumer would wait for it forever.
    drop(message);
    drop(consumer);
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn opensearch_indexes_and_returns_a_document() {
    let context = TestContext::new("smoke_opensearch").await.unwrap();
    let (client, base) = context.opensearch();
    let index = context.index("docs");
    let put = client
        .put(format!(
            "{base}/{index}/_doc/1?refresh=true&version=5&version_type=external_gte"
        ))
        .json(&json!({"name": "widget"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let doc: Value = client
        .get(format!("{base}/{index}/_doc/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["_source"], json!({"name": "widget"}));
    assert_eq!(doc["_version"], 5);
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn elasticsearch_accepts_the_api_key_and_refuses_a_wrong_one() {
    let context = TestContext::new("smoke_elasticsearch").await.unwrap();
    let (client, base) = context.elasticsearch();
    let index = context.index("docs");

    let who: Value = client
        .get(format!("{base}/_security/_authenticate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["authentication_type"], "api_key", "{who}");

    let put = client
        .put(format!(
            "{base}/{index}/_doc/1?refresh=true&version=7&version_type=external_gte"
        ))
        .json(&json!({"name": "widget"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    let doc: Value = client
        .get(format!("{base}/{index}/_doc/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["_source"], json!({"name": "widget"}));
    assert_eq!(doc["_version"], 7);

    // Same request with a key that does not exist: 401, and the document is untouched.
    let wrong = reqwest::Client::new()
        .put(format!("{base}/{index}/_doc/1?refresh=true"))
        .header("Authorization", "ApiKey d3Jvbmc6a2V5")
        .json(&json!({"name": "tampered"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let source = eventually(Duration::from_secs(5), "document readable", || {
        let client = client.clone();
        let url = format!("{base}/{index}/_doc/1");
        async move {
            Ok(Some(
                client.get(url).send().await?.json::<Value>().await?["_source"].clone(),
            ))
        }
    })
    .await
    .unwrap();
    assert_eq!(source, json!({"name": "widget"}));
    context.cleanup().await.unwrap();
}
