//! sluice-producer against real Postgres and Kafka: what lands on the topic, and what the slot
//! confirms.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::HashMap;
use std::time::Duration;

use sluice_proto::v1::value::Kind;
use sluice_proto::v1::{ArrayValue, ChangeEvent, Op, Value};
use sluice_tests::{Process, Record, TestContext, eventually, free_port, run_command};

const WAIT: Duration = Duration::from_secs(60);

/// Waits until `topic` holds at least `count` messages, and returns them all.
async fn wait_for_messages(context: &TestContext, topic: &str, count: usize) -> Vec<Record> {
    eventually(WAIT, &format!("{count} messages on {topic}"), || async {
        let records = context.read_topic(topic).await?;
        Ok((records.len() >= count).then_some(records))
    })
    .await
    .unwrap()
}

fn value<'a>(event: &'a ChangeEvent, column: &str) -> &'a Kind {
    let column = event
        .record
        .iter()
        .find(|c| c.name == column)
        .unwrap_or_else(|| panic!("no column {column} in {event:?}"));
    column.value.as_ref().and_then(|v| v.kind.as_ref()).unwrap()
}

fn text(s: &str) -> Kind {
    Kind::Text(s.to_owned())
}

fn array(elements: Vec<Kind>) -> Kind {
    Kind::Array(ArrayValue {
        elements: elements.into_iter().map(Value::from).collect(),
    })
}

fn null() -> Kind {
    Kind::Null(sluice_proto::v1::Null {})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_of_the_zoo_arrives_exactly() {
    let context = TestContext::new("type_zoo").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
         CREATE TABLE zoo (
           tenant text, id int,
           c_smallint smallint, c_int int, c_bigint bigint, c_numeric numeric,
           c_real real, c_double double precision, c_bool bool,
           c_text text, c_varchar varchar(20), c_char char(5), c_bytea bytea, c_uuid uuid,
           c_json json, c_jsonb jsonb,
           c_date date, c_time time, c_timetz timetz, c_timestamp timestamp, c_timestamptz timestamptz,
           c_interval interval, c_inet inet, c_cidr cidr, c_macaddr macaddr,
           c_enum mood, c_domain posint, c_int_arr int[], c_text_arr text[],
           PRIMARY KEY (tenant, id));",
    )
    .await
    .unwrap();
    let config = context.config().table("public.zoo").load().unwrap();
    let (stop, producer) = context.spawn_producer(config);
    let topic = context.topic("public.zoo");
    // The topic exists once the producer streams; write only then.
    context.wait_for_slot(WAIT).await.unwrap();

    db.batch_execute(
        r#"SET TimeZone = 'America/New_York';
        INSERT INTO zoo VALUES
        ('acme', 1, 32767, 2147483647, 9223372036854775807,
         1234567890123456789012345678901234567890.123, 'Infinity', '-0', true,
         'héllo "world", {braces} \ back', 'abc', 'ab', '\x00ff10', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
         '{"b": 1,  "a": [1, 2]}', '{"b": 1, "a": [1, 2]}',
         '2024-02-29', '23:59:59.999999', '12:00:00+05:30', '2024-01-02 03:04:05.123456',
         '2024-01-02 03:04:05.123456+02', '1 year 2 months 3 days 04:05:06.5',
         '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 'happy', 42,
         '{1,NULL,3}', '{"a,b",NULL,"NULL","x\"y"}'),
        ('acme', 2, -32768, -2147483648, -9223372036854775808,
         'NaN', '-Infinity', 'NaN', false,
         '', '', '', '\x', '00000000-0000-0000-0000-000000000000',
         'null', '[]',
         '0044-03-15 BC', '00:00:00', '00:00:00-08', '2000-01-01 00:00:00',
         '2024-06-30 23:00:00', '-1 days',
         '::1', '2001:db8::/32', '00:00:00:00:00:00', 'sad', 1,
         '{}', '{}'),
        ('a,"b"', 3, NULL, NULL, NULL, -0.0000000000000000000000000000000000000001, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL);"#,
    )
    .await
    .unwrap();

    let records = wait_for_messages(&context, &topic, 3).await;
    let by_id: HashMap<i64, ChangeEvent> = records
        .into_iter()
        .filter_map(|r| r.event)
        .map(|e| {
            let id = match value(&e, "id") {
                Kind::Int(id) => *id,
                other => panic!("id is {other:?}"),
            };
            (id, e)
        })
        .collect();

    let one = &by_id[&1];
    assert_eq!(one.op(), Op::Insert);
    let expected_one = [
        ("tenant", text("acme")),
        ("c_smallint", Kind::Int(32767)),
        ("c_int", Kind::Int(2147483647)),
        ("c_bigint", Kind::Int(i64::MAX)),
        (
            "c_numeric",
            Kind::Numeric("1234567890123456789012345678901234567890.123".into()),
        ),
        ("c_real", Kind::Double(f64::INFINITY)),
        ("c_bool", Kind::Bool(true)),
        ("c_text", text(r#"héllo "world", {braces} \ back"#)),
        ("c_varchar", text("abc")),
        ("c_char", text("ab   ")),
        ("c_bytea", Kind::Bytes(vec![0x00, 0xff, 0x10])),
        (
            "c_uuid",
            Kind::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        ),
        ("c_json", Kind::Json(r#"{"b": 1,  "a": [1, 2]}"#.into())),
        ("c_jsonb", Kind::Json(r#"{"a": [1, 2], "b": 1}"#.into())),
        ("c_date", Kind::Date("2024-02-29".into())),
        ("c_time", Kind::Time("23:59:59.999999".into())),
        ("c_timetz", Kind::Timetz("12:00:00+05:30".into())),
        (
            "c_timestamp",
            Kind::Timestamp("2024-01-02T03:04:05.123456".into()),
        ),
        (
            "c_timestamptz",
            Kind::Timestamptz("2024-01-02T01:04:05.123456Z".into()),
        ),
        ("c_interval", Kind::Interval("P1Y2M3DT4H5M6.5S".into())),
        ("c_inet", Kind::Unknown("192.168.0.1/24".into())),
        ("c_cidr", Kind::Unknown("10.0.0.0/8".into())),
        ("c_macaddr", Kind::Unknown("08:00:2b:01:02:03".into())),
        ("c_enum", text("happy")),
        ("c_domain", Kind::Int(42)),
        ("c_int_arr", array(vec![Kind::Int(1), null(), Kind::Int(3)])),
        (
            "c_text_arr",
            array(vec![text("a,b"), null(), text("NULL"), text(r#"x"y"#)]),
        ),
    ];
    for (column, expected) in &expected_one {
        assert_eq!(value(one, column), expected, "row 1, column {column}");
    }
    match value(one, "c_double") {
        Kind::Double(d) => assert!(*d == 0.0 && d.is_sign_negative(), "-0 lost its sign: {d}"),
        other => panic!("c_double is {other:?}"),
    }
    let type_of = |event: &ChangeEvent, column: &str| {
        event
            .record
            .iter()
            .find(|c| c.name == column)
            .map(|c| c.type_name.clone())
            .unwrap()
    };
    assert_eq!(type_of(one, "c_enum"), "mood");
    assert_eq!(type_of(one, "c_domain"), "posint");
    assert_eq!(type_of(one, "c_int_arr"), "_int4");
    assert_eq!(
        one.key.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["tenant", "id"]
    );

    let two = &by_id[&2];
    let expected_two = [
        ("c_smallint", Kind::Int(-32768)),
        ("c_int", Kind::Int(-2147483648)),
        ("c_bigint", Kind::Int(i64::MIN)),
        ("c_numeric", Kind::Numeric("NaN".into())),
        ("c_real", Kind::Double(f64::NEG_INFINITY)),
        ("c_bool", Kind::Bool(false)),
        ("c_text", text("")),
        ("c_char", text("     ")),
        ("c_bytea", Kind::Bytes(vec![])),
        ("c_json", Kind::Json("null".into())),
        ("c_jsonb", Kind::Json("[]".into())),
        ("c_date", Kind::Date("-0043-03-15".into())),
        ("c_timetz", Kind::Timetz("00:00:00-08:00".into())),
        // Written in America/New_York (EDT, -04): stored and sent as UTC.
        (
            "c_timestamptz",
            Kind::Timestamptz("2024-07-01T03:00:00Z".into()),
        ),
        ("c_interval", Kind::Interval("P-1D".into())),
        ("c_inet", Kind::Unknown("::1".into())),
        ("c_int_arr", array(vec![])),
        ("c_text_arr", array(vec![])),
    ];
    for (column, expected) in &expected_two {
        assert_eq!(value(two, column), expected, "row 2, column {column}");
    }
    match value(two, "c_double") {
        Kind::Double(d) => assert!(d.is_nan()),
        other => panic!("c_double is {other:?}"),
    }

    let three = &by_id[&3];
    assert_eq!(value(three, "tenant"), &text(r#"a,"b""#));
    assert_eq!(
        value(three, "c_numeric"),
        &Kind::Numeric("-0.0000000000000000000000000000000000000001".into())
    );
    assert_eq!(value(three, "c_text"), &null());
    assert_eq!(value(three, "c_int_arr"), &null());

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

/// Starts the producer on `tables` and waits until it streams (its slot exists and is confirmed).
async fn streaming_producer(
    context: &TestContext,
    tables: &[&str],
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<Result<(), sluice_producer::Error>>,
) {
    let config = tables
        .iter()
        .fold(context.config(), |config, table| config.table(table))
        .load()
        .unwrap();
    let running = context.spawn_producer(config);
    // Every change committed from now on is streamed.
    context.wait_streaming().await.unwrap();
    running
}

#[tokio::test(flavor = "multi_thread")]
async fn changes_of_each_key_arrive_in_order_with_tombstones_and_truncate_markers() {
    let context = TestContext::new("ordering").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
        .await
        .unwrap();
    let (stop, producer) = streaming_producer(&context, &["public.items"]).await;

    // One statement per transaction (a multi-statement simple query would be one transaction).
    for statement in [
        "INSERT INTO items SELECT g, 0 FROM generate_series(1, 20) g",
        "UPDATE items SET n = 1",
        "BEGIN; UPDATE items SET n = 2 WHERE id <= 10; UPDATE items SET n = 3 WHERE id <= 5; COMMIT;",
        "DELETE FROM items WHERE id % 2 = 0",
        "UPDATE items SET id = 100 WHERE id = 1",
        "TRUNCATE items",
    ] {
        db.batch_execute(statement).await.unwrap();
    }
    let after = context.current_lsn().await.unwrap();

    let topic = context.topic("public.items");
    // 20 inserts, 20 updates, 10 + 5 updates, 10 deletes + 10 tombstones,
    // key change: delete + tombstone + update, and 3 truncate markers.
    let records = wait_for_messages(&context, &topic, 20 + 20 + 15 + 20 + 3 + 3).await;

    let mut by_key: HashMap<String, Vec<&Record>> = HashMap::new();
    for record in &records {
        by_key.entry(record.key_text()).or_default().push(record);
    }
    let ops = |key: &str| -> Vec<Option<Op>> {
        by_key[key]
            .iter()
            .map(|r| r.event.as_ref().map(ChangeEvent::op))
            .collect()
    };
    // One partition per key, offsets in stream order.
    for (key, list) in &by_key {
        assert!(
            list.windows(2)
                .all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset),
            "{key}"
        );
    }
    assert_eq!(
        ops("[3]"),
        [
            Some(Op::Insert),
            Some(Op::Update),
            Some(Op::Update),
            Some(Op::Update)
        ]
    );
    assert_eq!(
        ops("[4]"),
        [
            Some(Op::Insert),
            Some(Op::Update),
            Some(Op::Update),
            Some(Op::Update),
            Some(Op::Delete),
            None
        ]
    );
    assert_eq!(
        ops("[8]"),
        [
            Some(Op::Insert),
            Some(Op::Update),
            Some(Op::Update),
            Some(Op::Delete),
            None
        ]
    );
    assert_eq!(
        ops("[1]"),
        [
            Some(Op::Insert),
            Some(Op::Update),
            Some(Op::Update),
            Some(Op::Update),
            Some(Op::Delete),
            None
        ]
    );
    assert_eq!(ops("[100]"), [Some(Op::Update)]);
    let n_of = |r: &Record| match value(r.event.as_ref().unwrap(), "n") {
        Kind::Int(n) => *n,
        other => panic!("n is {other:?}"),
    };
    assert_eq!(
        by_key["[3]"].iter().map(|r| n_of(r)).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );

    // Versions: every change carries its transaction's commit LSN, increasing in stream order;
    // the two updates of one transaction share one.
    let versions: Vec<u64> = by_key["[3]"]
        .iter()
        .map(|r| r.event.as_ref().unwrap().position.unwrap().commit_lsn)
        .collect();
    assert!(
        versions[0] < versions[1] && versions[1] < versions[2],
        "{versions:?}"
    );
    assert_eq!(
        versions[2], versions[3],
        "two updates in one transaction share the commit LSN"
    );
    let inside: Vec<u32> = by_key["[3]"][2..]
        .iter()
        .map(|r| {
            r.event
                .as_ref()
                .unwrap()
                .position
                .unwrap()
                .index_in_transaction
        })
        .collect();
    assert!(inside[0] < inside[1], "{inside:?}");

    // TRUNCATE: one marker on each of the 3 partitions.
    let mut markers: Vec<i32> = records
        .iter()
        .filter(|r| sluice_proto::key::is_truncate_marker(&r.key))
        .map(|r| {
            assert_eq!(r.event.as_ref().unwrap().op(), Op::Truncate);
            r.partition
        })
        .collect();
    markers.sort_unstable();
    assert_eq!(markers, [0, 1, 2]);

    // The producer created the topic compacted, so a replay yields the latest state of each row.
    let admin = context.kafka_admin().unwrap();
    let resource = rdkafka::admin::ResourceSpecifier::Topic(&topic);
    let described = admin
        .describe_configs([&resource], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    let config = described.into_iter().next().unwrap().unwrap();
    let policy = config
        .get("cleanup.policy")
        .and_then(|entry| entry.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));

    // Everything read is confirmed to Postgres once Kafka has it.
    eventually(WAIT, "slot confirmed past the writes", || async {
        Ok((context.confirmed_lsn().await? >= after).then_some(()))
    })
    .await
    .unwrap();
    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_untouched_toasted_column_is_never_sent_as_a_value() {
    let context = TestContext::new("toast").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         CREATE TABLE docs_full (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs_full REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    let (stop, producer) = streaming_producer(&context, &["public.docs", "public.docs_full"]).await;

    // 100 kB of random hex does not compress below the TOAST threshold: stored out of line.
    let body: String = db
        .query_one(
            "SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 3200)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for table in ["docs", "docs_full"] {
        db.execute(
            &format!("INSERT INTO {table} VALUES (1, 'first', $1)"),
            &[&body],
        )
        .await
        .unwrap();
        db.execute(
            &format!("UPDATE {table} SET title = 'second' WHERE id = 1"),
            &[],
        )
        .await
        .unwrap();
    }

    let plain = wait_for_messages(&context, &context.topic("public.docs"), 2).await;
    let update = plain[1].event.as_ref().unwrap();
    assert_eq!(update.op(), Op::Update);
    assert_eq!(update.unchanged_toast_columns, ["body"]);
    assert!(
        update.record.iter().all(|c| c.name != "body"),
        "body must be absent, not a placeholder: {update:?}"
    );
    assert_eq!(value(update, "title"), &text("second"));

    let full = wait_for_messages(&context, &context.topic("public.docs_full"), 2).await;
    let update = full[1].event.as_ref().unwrap();
    assert!(update.unchanged_toast_columns.is_empty());
    assert_eq!(
        value(update, "body"),
        &text(&body),
        "REPLICA IDENTITY FULL fills the unchanged value exactly"
    );
    assert_eq!(
        update
            .changes
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["title"]
    );
    assert_eq!(
        update.changes[0].value.as_ref().unwrap().kind,
        Some(text("first"))
    );

    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_changes_are_picked_up_without_a_restart() {
    let context = TestContext::new("schema_change").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE t (id int PRIMARY KEY, a int, b text)")
        .await
        .unwrap();
    let (stop, producer) = streaming_producer(&context, &["public.t"]).await;
    db.batch_execute(
        "INSERT INTO t VALUES (1, 1, 'x');
         ALTER TABLE t ADD COLUMN c numeric;
         INSERT INTO t VALUES (2, 2, 'y', 2.5);
         ALTER TABLE t DROP COLUMN b;
         INSERT INTO t VALUES (3, 3, 3.5);
         ALTER TABLE t ALTER COLUMN a TYPE text;
         INSERT INTO t VALUES (4, 'four', 4.5);",
    )
    .await
    .unwrap();
    let mut records = wait_for_messages(&context, &context.topic("public.t"), 4).await;
    records.sort_by_key(|r| r.key_text());
    let columns = |i: usize| -> Vec<String> {
        records[i]
            .event
            .as_ref()
            .unwrap()
            .record
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    assert_eq!(columns(0), ["id", "a", "b"]);
    assert_eq!(columns(1), ["id", "a", "b", "c"]);
    assert_eq!(columns(2), ["id", "a", "c"]);
    assert_eq!(
        value(records[2].event.as_ref().unwrap(), "c"),
        &Kind::Numeric("3.5".into())
    );
    assert_eq!(
        value(records[3].event.as_ref().unwrap(), "a"),
        &text("four")
    );
    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_over_tls_with_the_server_certificate_chain_verified() {
    let context = TestContext::new("tls").await.unwrap();
    let ca = context
        .endpoints
        .postgres_ca
        .clone()
        .expect("SLUICE_TEST_PG_CA is set by deploy/local/postgres.sh");
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE secure (id int PRIMARY KEY)")
        .await
        .unwrap();
    let secure = |ca: &str| {
        context
            .config()
            .table("public.secure")
            .postgres_url(&format!("{}?sslmode=verify-ca", context.postgres_url()))
            .postgres_ca_file(ca)
    };
    let config = secure(&ca).load().unwrap();
    let (stop, producer) = context.spawn_producer(config);
    context.wait_for_slot(WAIT).await.unwrap();

    // Both of the producer's connections (SQL and replication) are encrypted.
    eventually(
        WAIT,
        "the replication and SQL connections over TLS",
        || async {
            let connections: Vec<(String, bool)> = db
            .query(
                "SELECT a.backend_type, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.application_name = 'sluice-producer' AND a.datname = current_database()",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
            let over_tls = |kind: &str| connections.iter().any(|(what, ssl)| what == kind && *ssl);
            anyhow::ensure!(
                connections.iter().all(|(_, ssl)| *ssl),
                "a connection without TLS: {connections:?}"
            );
            Ok((over_tls("walsender") && over_tls("client backend")).then_some(()))
        },
    )
    .await
    .unwrap();
    db.batch_execute("INSERT INTO secure VALUES (1), (2)")
        .await
        .unwrap();
    wait_for_messages(&context, &context.topic("public.secure"), 2).await;
    stop.cancel();
    producer.await.unwrap().unwrap();

    // A CA that did not sign the server's certificate is refused, with no retry loop.
    let wrong_ca = std::env::temp_dir().join(format!("{}-wrong-ca.pem", context.id));
    std::fs::write(&wrong_ca, include_str!("data/unrelated-ca.pem")).unwrap();
    let config = secure(wrong_ca.to_str().unwrap()).load().unwrap();
    let (_stop, producer) = context.spawn_producer(config);
    let error = tokio::time::timeout(WAIT, producer)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(error.to_string().contains("certificate"), "{error}");
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_each_problem_with_its_fix() {
    let context = TestContext::new("check").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(
        "CREATE TABLE good (id int PRIMARY KEY, body text);
         CREATE TABLE keyless (a int, b int);",
    )
    .await
    .unwrap();
    let run_check = |config: sluice_tests::ConfigBuilder| async move {
        let path = config.write().unwrap();
        run_command("sluice-producer", &path, &["check"], "check.log", WAIT)
            .await
            .unwrap()
    };

    let (code, output) = run_check(context.config().table("public.good")).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("ok    wal_level = logical"), "{output}");
    assert!(output.contains("public.good: primary key (id)"), "{output}");
    assert!(
        output.contains(&format!("slot {} will be created by run", context.slot)),
        "{output}"
    );
    assert!(
        output.contains("WARN  public.good has TOASTable columns"),
        "{output}"
    );
    assert!(output.contains("REPLICA IDENTITY FULL"), "{output}");

    let (code, output) = run_check(
        context
            .config()
            .table("public.keyless")
            .table("public.missing"),
    )
    .await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("FAIL  public.keyless has no primary key"),
        "{output}"
    );
    assert!(
        output.contains("fix: add a primary key, or set REPLICA IDENTITY FULL"),
        "{output}"
    );
    assert!(
        output.contains("FAIL  table public.missing does not exist"),
        "{output}"
    );
    assert!(output.contains("2 problem(s) block running"), "{output}");

    // The same keyless table stops `run` at once with the fix, before anything is created.
    let config = context.config().table("public.keyless").load().unwrap();
    let (_stop, producer) = context.spawn_producer(config);
    let error = tokio::time::timeout(WAIT, producer)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("public.keyless has no primary key"),
        "{error}"
    );
    assert_eq!(
        context.confirmed_lsn().await.unwrap(),
        0,
        "no slot may be created for a config that cannot run"
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_metrics_show_what_was_published() {
    let context = TestContext::new("status").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE counted (id int PRIMARY KEY)")
        .await
        .unwrap();
    // A fixed free port, so `status` (another process) finds the running producer.
    let port = free_port();
    let path = context
        .config()
        .table("public.counted")
        .producer_port(port)
        .write()
        .unwrap();
    let mut producer = Process::run("sluice-producer", &path, "run.log").unwrap();
    let ready = format!("http://127.0.0.1:{port}/readyz");
    eventually(WAIT, "producer ready", || async {
        Ok(reqwest::get(&ready)
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ()))
    })
    .await
    .unwrap();
    db.batch_execute("INSERT INTO counted SELECT generate_series(1, 5); UPDATE counted SET id = id WHERE id = 1; DELETE FROM counted WHERE id = 2;")
        .await
        .unwrap();
    wait_for_messages(&context, &context.topic("public.counted"), 8).await;

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"sluice_producer_changes_total{table="public.counted",op="insert"} 5"#,
        r#"sluice_producer_changes_total{table="public.counted",op="update"} 1"#,
        r#"sluice_producer_changes_total{table="public.counted",op="delete"} 1"#,
    ] {
        assert!(metrics.contains(line), "missing `{line}` in\n{metrics}");
    }

    let (code, output) = run_command("sluice-producer", &path, &["status"], "status.log", WAIT)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!("slot {}: streaming to pid", context.slot)),
        "{output}"
    );
    assert!(
        output.contains("public.counted: 5 inserts, 1 updates, 1 deletes"),
        "{output}"
    );
    assert!(output.contains("last event: "), "{output}");

    assert_eq!(
        producer.terminate(WAIT).await.unwrap(),
        Some(0),
        "{}",
        producer.output()
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_added_to_the_config_joins_the_existing_publication_and_slot() {
    let context = TestContext::new("add_table").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute(
        "CREATE TABLE first (id int PRIMARY KEY); CREATE TABLE second (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    let (stop, producer) = streaming_producer(&context, &["public.first"]).await;
    db.batch_execute("INSERT INTO first VALUES (1)")
        .await
        .unwrap();
    wait_for_messages(&context, &context.topic("public.first"), 1).await;
    stop.cancel();
    producer.await.unwrap().unwrap();
    let slot_before = context.confirmed_lsn().await.unwrap();

    // Written while no producer runs: the adopted slot still has it.
    db.batch_execute("INSERT INTO first VALUES (2)")
        .await
        .unwrap();
    let (stop, producer) = streaming_producer(&context, &["public.first", "public.second"]).await;
    db.batch_execute("INSERT INTO second VALUES (10)")
        .await
        .unwrap();
    let second = wait_for_messages(&context, &context.topic("public.second"), 1).await;
    assert_eq!(second[0].key_text(), "[10]");
    let first = wait_for_messages(&context, &context.topic("public.first"), 2).await;
    assert!(
        first.iter().any(|r| r.key_text() == "[2]"),
        "the change made while stopped was lost"
    );
    let published: Vec<String> = db
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&context.publication],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["first", "second"]);
    assert!(
        context.confirmed_lsn().await.unwrap() >= slot_before,
        "the slot was adopted, not recreated"
    );
    stop.cancel();
    producer.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}
