//! sluice-consumer end to end: Postgres → sluice-producer → Kafka → sluice-consumer →
//! Elasticsearch and OpenSearch, checked the way a user would: the documents in the index, their
//! versions, the committed offsets, the dead-letter topic. The suite's core runs on both kinds
//! of cluster ([`on_each_cluster`]); the test command runs it once with Elasticsearch 9.2 and
//! OpenSearch 2.19 and once with Elasticsearch 8.19 (HTTPS) and OpenSearch 3.3
//! (`SLUICE_TEST_ELASTICSEARCH_INSTANCE=elasticsearch8 SLUICE_TEST_OPENSEARCH_INSTANCE=opensearch3`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::json;
use sluice_tests::{
    Cluster, Doc, Process, RawRecord, Sink, TestContext, eventually, on_each_cluster,
};

const WAIT: Duration = Duration::from_secs(90);

const PRODUCTS: &str = "CREATE TABLE products (
    id serial PRIMARY KEY,
    name text NOT NULL,
    description text,
    price numeric(10,2),
    in_stock boolean NOT NULL,
    supplier_secret text
)";

/// The products example of the README: filter `in_stock = true`, a transform keeping four
/// fields.
fn products_sink(context: &TestContext, cluster: Cluster) -> Sink {
    context
        .sink(cluster, "products", "public.products")
        .filter("in_stock = true")
        .transform(
            r#"{ "name": .record.name, "description": .record.description, "price": .record.price, "in_stock": .record.in_stock }"#,
        )
}

/// Waits until the index holds exactly the ids in `expected` with those sources.
async fn wait_for_documents(
    context: &TestContext,
    cluster: Cluster,
    index: &str,
    expected: &BTreeMap<String, serde_json::Value>,
) -> BTreeMap<String, Doc> {
    context
        .wait_for_documents(cluster, index, expected, WAIT)
        .await
        .unwrap()
}

/// The dead letters of sink `name`, once its group committed `table`'s topic to the end (every
/// event's outcome final).
async fn letters_once_committed(context: &TestContext, name: &str, table: &str) -> Vec<RawRecord> {
    let sink = context.sink_name(name);
    context
        .wait_committed_to_end(&sink, &context.topic(table), WAIT)
        .await
        .unwrap();
    context.read_raw(&format!("{sink}.dlq")).await.unwrap()
}

/// The commit LSN of the last event of every key on `topic` (what the document's version must
/// be).
async fn last_versions(context: &TestContext, topic: &str) -> HashMap<String, u64> {
    let mut versions = HashMap::new();
    for record in context.read_topic(topic).await.unwrap() {
        if let Some(event) = record.event
            && let Some(position) = event.position
        {
            let id = event
                .key
                .iter()
                .map(|c| match c.value.as_ref().and_then(|v| v.kind.as_ref()) {
                    Some(sluice_proto::v1::value::Kind::Int(i)) => i.to_string(),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(":");
            versions.insert(id, position.commit_lsn);
        }
    }
    versions
}

async fn products_example(cluster: Cluster, test: &str) {
    let context = TestContext::new(test).await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(PRODUCTS).await.unwrap();
    let config = context
        .config()
        .table("public.products")
        .sink(products_sink(&context, cluster))
        .load()
        .unwrap();
    let pipeline = context.start_pipeline(config).await.unwrap();

    db.batch_execute(
        "INSERT INTO products (name, description, price, in_stock, supplier_secret) VALUES
           ('lamp', 'a desk lamp', 19.99, true, 's1'),
           ('chair', 'an office chair', 149.00, true, 's2'),
           ('desk', 'a standing desk', 499.50, true, 's3'),
           ('shelf', 'a book shelf', 89.00, false, 's4');
         UPDATE products SET price = 139.00 WHERE name = 'chair';
         DELETE FROM products WHERE name = 'desk';
         UPDATE products SET in_stock = false WHERE name = 'lamp';
         INSERT INTO products (name, description, price, in_stock) VALUES ('rug', NULL, 35.5, true);",
    )
    .await
    .unwrap();

    let expected: BTreeMap<String, serde_json::Value> = [
        (
            "2",
            json!({"name": "chair", "description": "an office chair", "price": 139, "in_stock": true}),
        ),
        (
            "5",
            json!({"name": "rug", "description": null, "price": 35.5, "in_stock": true}),
        ),
    ]
    .into_iter()
    .map(|(id, doc)| (id.to_owned(), doc))
    .collect();
    let docs = wait_for_documents(&context, cluster, "products", &expected).await;

    // Every document carries the commit LSN of its row's last change as its version.
    let topic = context.topic("public.products");
    let versions = last_versions(&context, &topic).await;
    for (id, doc) in &docs {
        assert_eq!(
            Some(&doc.version),
            versions.get(id),
            "version of document {id}"
        );
    }
    // The index is an alias over a versioned index, ready for a rebuild.
    let (client, base) = context.cluster(cluster);
    let aliases: serde_json::Value = client
        .get(format!("{base}/_alias/{}", context.index("products")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        aliases
            .get(format!("{}-v1", context.index("products")))
            .is_some(),
        "alias points at the -v1 index: {aliases}"
    );
    // Every event's outcome is final, so the group committed the whole topic.
    context
        .wait_committed_to_end(&context.sink_name("products"), &topic, WAIT)
        .await
        .unwrap();

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

on_each_cluster!(
    products_example,
    mapping_conflict,
    mapping_race,
    toasted_update,
    truncate,
    per_tenant_indices,
);

/// A row whose document the mapping refuses goes to the dead-letter topic with Elasticsearch's
/// reason; every other row is indexed and the offsets move past it.
async fn mapping_conflict(cluster: Cluster, test: &str) {
    let context = TestContext::new(test).await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, code text)")
        .await
        .unwrap();
    let config = context
        .config()
        .table("public.items")
        .sink(
            context
                .sink(cluster, "items", "public.items")
                .mappings(json!({"properties": {"code": {"type": "long"}}})),
        )
        .load()
        .unwrap();
    let pipeline = context.start_pipeline(config).await.unwrap();
    db.batch_execute("INSERT INTO items SELECT i, (i * 10)::text FROM generate_series(1, 50) i")
        .await
        .unwrap();
    let expected: BTreeMap<String, serde_json::Value> = (1..=50)
        .map(|i| {
            (
                i.to_string(),
                json!({"id": i, "code": (i * 10).to_string()}),
            )
        })
        .collect();
    wait_for_documents(&context, cluster, "items", &expected).await;
    // One update the mapping refuses, between two it accepts.
    db.batch_execute(
        "UPDATE items SET code = '1' WHERE id = 16;
         UPDATE items SET code = 'not a number' WHERE id = 17;
         UPDATE items SET code = '3' WHERE id = 18;",
    )
    .await
    .unwrap();
    let mut expected = expected;
    expected.insert("16".to_owned(), json!({"id": 16, "code": "1"}));
    expected.insert("18".to_owned(), json!({"id": 18, "code": "3"}));
    wait_for_documents(&context, cluster, "items", &expected).await;
    let letters = letters_once_committed(&context, "items", "public.items").await;
    assert_eq!(letters.len(), 1, "one dead letter: {letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.key.as_deref(), Some(&b"[17]"[..]));
    assert_eq!(letter.headers["sluice.dlq.stage"], "index");
    assert_eq!(letter.headers["sluice.dlq.status"], "400");
    assert!(
        letter.headers["sluice.dlq.error_type"].contains("parsing_exception"),
        "{:?}",
        letter.headers
    );
    assert!(
        letter.headers["sluice.dlq.reason"].contains("code"),
        "the reason names the field: {:?}",
        letter.headers
    );
    assert_eq!(letter.headers["sluice.dlq.attempts"], "1");
    // The original event, untouched.
    use sluice_proto::Message as _;
    let event = sluice_proto::v1::ChangeEvent::decode(letter.payload.as_deref().unwrap()).unwrap();
    assert_eq!(event.op(), sluice_proto::v1::Op::Update);

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

/// Rows whose numeric columns hold whole numbers in some rows and fractions in others, into an
/// index of four shards without mappings: the first writes race to add each field (`long`
/// against `float`), and OpenSearch fails the losers. Every row must still be indexed as it is,
/// the offsets committed to the end, and no dead letter written.
async fn mapping_race(cluster: Cluster, test: &str) {
    let context = TestContext::new(test).await.unwrap();
    let db = context.postgres().await.unwrap();
    let columns: Vec<String> = (0..20).map(|c| format!("f{c}")).collect();
    db.batch_execute(&format!(
        "CREATE TABLE readings (id int PRIMARY KEY, {})",
        columns
            .iter()
            .map(|c| format!("{c} numeric"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await
    .unwrap();
    let config = context
        .config()
        .table("public.readings")
        .sink(
            context
                .sink(cluster, "readings", "public.readings")
                .settings(json!({"number_of_shards": 4, "number_of_replicas": 0})),
        )
        .load()
        .unwrap();
    let pipeline = context.start_pipeline(config).await.unwrap();
    // Even rows hold c, odd rows c + 0.5, in every column.
    let value = |id: i64, c: i64| {
        if id % 2 == 0 {
            json!(c)
        } else {
            json!(c as f64 + 0.5)
        }
    };
    db.batch_execute(&format!(
        "INSERT INTO readings SELECT i, {} FROM generate_series(1, 60) i",
        (0..20)
            .map(|c| format!("CASE WHEN i % 2 = 0 THEN {c} ELSE {c}.5 END"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .await
    .unwrap();
    let expected: BTreeMap<String, serde_json::Value> = (1..=60)
        .map(|id| {
            let mut doc = serde_json::Map::new();
            doc.insert("id".to_owned(), json!(id));
            for c in 0..20 {
                doc.insert(format!("f{c}"), value(id, c));
            }
            (id.to_string(), serde_json::Value::Object(doc))
        })
        .collect();
    wait_for_documents(&context, cluster, "readings", &expected).await;
    let letters = letters_once_committed(&context, "readings", "public.readings").await;
    assert!(letters.is_empty(), "no dead letter: {letters:?}");

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

/// A message that is not a ChangeEvent goes to the dead-letter topic; the consumer neither
/// crashes nor stops at it.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_is_not_protobuf_is_dead_lettered_without_a_crash_loop() {
    let context = TestContext::new("not_protobuf").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    let config = context
        .sink_config(Cluster::OpenSearch, "notes")
        .load()
        .unwrap();
    let pipeline = context.start_pipeline(config).await.unwrap();
    db.batch_execute("INSERT INTO notes VALUES (1, 'before')")
        .await
        .unwrap();
    let topic = context.topic("public.notes");
    eventually(WAIT, "first event on the topic", || async {
        Ok((!context.read_topic(&topic).await?.is_empty()).then_some(()))
    })
    .await
    .unwrap();
    context
        .produce_raw(&topic, b"[999]", b"{\"this is\": \"json, not protobuf\"}")
        .await
        .unwrap();
    db.batch_execute("INSERT INTO notes VALUES (2, 'after')")
        .await
        .unwrap();

    let expected: BTreeMap<String, serde_json::Value> = [
        ("1".to_owned(), json!({"id": 1, "body": "before"})),
        ("2".to_owned(), json!({"id": 2, "body": "after"})),
    ]
    .into_iter()
    .collect();
    wait_for_documents(&context, Cluster::OpenSearch, "notes", &expected).await;
    context
        .wait_committed_to_end(&context.sink_name("notes"), &topic, WAIT)
        .await
        .unwrap();
    let letters = context
        .read_raw(&format!("{}.dlq", context.sink_name("notes")))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].headers["sluice.dlq.stage"], "decode");
    assert_eq!(
        letters[0].payload.as_deref(),
        Some(&b"{\"this is\": \"json, not protobuf\"}"[..])
    );
    assert!(pipeline.consumer_running(), "the consumer keeps running");

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

/// A wrong API key stops the consumer with a clear message and a non-zero exit, before it
/// commits anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_api_key_stops_the_consumer_and_commits_nothing() {
    let context = TestContext::new("wrong_key").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE things (id int PRIMARY KEY)")
        .await
        .unwrap();
    let wrong_key = context.config().table("public.things").sink(
        context
            .sink(Cluster::Elasticsearch, "things", "public.things")
            .api_key("bm90LWEta2V5Om5vdC1hLXNlY3JldA=="),
    );
    let config = wrong_key.load().unwrap();
    let (producer_stop, producer) = context.spawn_producer(config);
    context.wait_streaming().await.unwrap();
    db.batch_execute("INSERT INTO things SELECT generate_series(1, 10)")
        .await
        .unwrap();
    let topic = context.topic("public.things");
    eventually(WAIT, "events on the topic", || async {
        Ok((context.read_topic(&topic).await?.len() >= 10).then_some(()))
    })
    .await
    .unwrap();

    let path = wrong_key.write().unwrap();
    let mut process = Process::run("sluice-consumer", &path, "consumer.log").unwrap();
    let code = process.wait(Duration::from_secs(60)).await.unwrap();
    let output = process.output();
    assert_eq!(code, Some(1), "exit code; output:\n{output}");
    assert!(
        output.contains("401"),
        "says what the cluster answered:\n{output}"
    );
    assert!(
        output.contains("elasticsearch.auth"),
        "says what to fix:\n{output}"
    );
    let committed = context
        .committed_offsets(&context.sink_name("things"), &topic)
        .await
        .unwrap();
    assert!(committed.is_empty(), "nothing committed: {committed:?}");

    producer_stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

/// An update that leaves a TOASTed column out (no REPLICA IDENTITY FULL) keeps the indexed
/// value of that column: never a placeholder, never a hole. Without an indexed document to
/// complete, the event is dead-lettered with the fix.
async fn toasted_update(cluster: Cluster, test: &str) {
    let context = TestContext::new(test).await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE docs (id int PRIMARY KEY, title text, body text)")
        .await
        .unwrap();
    // 100 kB of random hex does not compress below the TOAST threshold: stored out of line.
    let body: String = db
        .query_one(
            "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A row from before the pipeline: never indexed (no backfill).
    db.execute("INSERT INTO docs VALUES (2, 'old', $1)", &[&body])
        .await
        .unwrap();
    let config = context.sink_config(cluster, "docs")
        // A transform that derives a field from the TOASTed column.
        .sink(context.sink(cluster, "previews", "public.docs").transform(
            r#"{ "title": .record.title, "preview": slice(string(.record.body) ?? "", 0, 8) ?? "" }"#,
        ))
        .load()
        .unwrap();
    let pipeline = context.start_pipeline(config).await.unwrap();
    db.execute("INSERT INTO docs VALUES (1, 'first', $1)", &[&body])
        .await
        .unwrap();
    let first: BTreeMap<String, serde_json::Value> = [(
        "1".to_owned(),
        json!({"id": 1, "title": "first", "body": body}),
    )]
    .into();
    wait_for_documents(&context, cluster, "docs", &first).await;

    db.batch_execute(
        "UPDATE docs SET title = 'second' WHERE id = 1;
         UPDATE docs SET title = 'newer' WHERE id = 2;",
    )
    .await
    .unwrap();
    let second: BTreeMap<String, serde_json::Value> = [(
        "1".to_owned(),
        json!({"id": 1, "title": "second", "body": body}),
    )]
    .into();
    let docs = wait_for_documents(&context, cluster, "docs", &second).await;
    let topic = context.topic("public.docs");
    let update = context
        .read_topic(&topic)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.key_text() == "[1]")
        .filter_map(|r| r.event)
        .find(|e| e.op() == sluice_proto::v1::Op::Update)
        .unwrap();
    assert_eq!(
        update.unchanged_toast_columns,
        ["body"],
        "the event left body out"
    );
    assert_eq!(docs["1"].version, update.position.unwrap().commit_lsn);
    // The derived field keeps its indexed value: the transform's stand-in for the missing
    // column never reaches the document.
    let previews: BTreeMap<String, serde_json::Value> = [(
        "1".to_owned(),
        json!({"title": "second", "preview": body[..8]}),
    )]
    .into();
    wait_for_documents(&context, cluster, "previews", &previews).await;

    context
        .wait_committed_to_end(&context.sink_name("docs"), &topic, WAIT)
        .await
        .unwrap();
    let letters = context
        .read_raw(&format!("{}.dlq", context.sink_name("docs")))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].key.as_deref(), Some(&b"[2]"[..]));
    assert_eq!(
        letters[0].headers["sluice.dlq.error_type"],
        "partial_update_of_missing_document"
    );
    assert!(letters[0].headers["sluice.dlq.reason"].contains("REPLICA IDENTITY FULL"));

    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

/// TRUNCATE deletes every document written before it; rows written after it survive.
async fn truncate(cluster: Cluster, test: &str) {
    let context = TestContext::new(test).await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        .await
        .unwrap();
    let config = context.sink_config(cluster, "items").load().unwrap();
    let pipeline = context.start_pipeline(config).await.unwrap();
    db.batch_execute("INSERT INTO items SELECT i, i FROM generate_series(1, 100) i")
        .await
        .unwrap();
    eventually(WAIT, "100 documents", || async {
        let docs = context.documents(cluster, "items").await?;
        Ok((docs.len() == 100).then_some(()))
    })
    .await
    .unwrap();
    db.batch_execute("TRUNCATE items").await.unwrap();
    db.batch_execute("INSERT INTO items SELECT i, i FROM generate_series(101, 110) i")
        .await
        .unwrap();
    let expected: BTreeMap<String, serde_json::Value> = (101..=110)
        .map(|i| (i.to_string(), json!({"id": i, "v": i})))
        .collect();
    wait_for_documents(&context, cluster, "items", &expected).await;
    context
        .wait_committed_to_end(
            &context.sink_name("items"),
            &context.topic("public.items"),
            WAIT,
        )
        .await
        .unwrap();
    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}

/// A per-tenant index template (with mappings installed as an index template) and a second
/// sink of the same table keyed by another column, in one process.
async fn per_tenant_indices(cluster: Cluster, test: &str) {
    let context = TestContext::new(test).await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(
        "CREATE TABLE orders (tenant text, id int, sku text NOT NULL, PRIMARY KEY (tenant, id))",
    )
    .await
    .unwrap();
    let by_tenant = context
        .sink(cluster, "by-tenant", "public.orders")
        .index("orders-{{ record.tenant }}")
        .mappings(json!({"properties": {"sku": {"type": "keyword"}}}));
    let by_sku = context
        .sink(cluster, "by-sku", "public.orders")
        .index("skus")
        .id_columns(&["sku"]);
    let config = context
        .config()
        .table("public.orders")
        .sink(by_tenant)
        .sink(by_sku)
        .load()
        .unwrap();
    let pipeline = context.start_pipeline(config).await.unwrap();
    db.batch_execute(
        "INSERT INTO orders VALUES ('Acme', 1, 'A-1'), ('Acme', 2, 'A:2'), ('globex', 1, 'G-1')",
    )
    .await
    .unwrap();
    let acme: BTreeMap<String, serde_json::Value> = [
        ("Acme:1", json!({"tenant": "Acme", "id": 1, "sku": "A-1"})),
        ("Acme:2", json!({"tenant": "Acme", "id": 2, "sku": "A:2"})),
    ]
    .into_iter()
    .map(|(id, doc)| (id.to_owned(), doc))
    .collect();
    wait_for_documents(&context, cluster, "orders-acme", &acme).await;
    let globex: BTreeMap<String, serde_json::Value> = [(
        "globex:1".to_owned(),
        json!({"tenant": "globex", "id": 1, "sku": "G-1"}),
    )]
    .into();
    wait_for_documents(&context, cluster, "orders-globex", &globex).await;
    let skus: Vec<String> = wait_for_documents(
        &context,
        cluster,
        "skus",
        &[("A-1", "Acme", 1), ("A:2", "Acme", 2), ("G-1", "globex", 1)]
            .into_iter()
            .map(|(sku, tenant, id)| {
                (
                    sku.to_owned(),
                    json!({"tenant": tenant, "id": id, "sku": sku}),
                )
            })
            .collect(),
    )
    .await
    .into_keys()
    .collect();
    assert_eq!(skus, ["A-1", "A:2", "G-1"]);
    // The template's mappings applied to the indices it created.
    let (client, base) = context.cluster(cluster);
    let mapping: serde_json::Value = client
        .get(format!("{base}/{}/_mapping", context.index("orders-acme")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sku_type = &mapping[context.index("orders-acme")]["mappings"]["properties"]["sku"]["type"];
    assert_eq!(sku_type, "keyword", "{mapping}");
    pipeline.stop().await.unwrap();
    context.cleanup().await.unwrap();
}
