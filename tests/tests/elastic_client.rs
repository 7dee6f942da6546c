//! The consumer's Elasticsearch/OpenSearch client against the real servers: Elasticsearch 9 with
//! an API key and OpenSearch 2 without authentication. Every scenario runs on both; what differs
//! between them is asserted where it differs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use serde_json::{Map, Value, json};
use sluice_common::config::ElasticsearchConfig;
use sluice_consumer::elastic::{BulkOp, Client, ElasticError, ItemResult, SCAN_PAGE_SIZE};
use sluice_tests::{Cluster, Sink, TestContext, on_each_cluster};

/// A sink on `cluster`, for its `elasticsearch:` section (each scenario names its own indices).
fn sink(context: &TestContext, cluster: Cluster) -> Sink {
    context.sink(cluster, "unused", "public.unused")
}

/// The consumer's client with the sink's settings.
fn client(sink: &Sink) -> Client {
    Client::new(&sink.elasticsearch_config().unwrap()).unwrap()
}

async fn setup(test: &str, cluster: Cluster, gzip: bool) -> (TestContext, Client) {
    let context = TestContext::new(test).await.unwrap();
    let client = client(&sink(&context, cluster).gzip(gzip));
    (context, client)
}

async fn get_json(context: &TestContext, cluster: Cluster, path: &str) -> Value {
    context.get_json(cluster, path).await.unwrap()
}

fn index_op(index: &str, id: &str, version: u64, document: Value) -> BulkOp {
    BulkOp::Index {
        index: index.to_owned(),
        id: id.to_owned(),
        version,
        document: serde_json::to_vec(&document).unwrap().into(),
    }
}

fn delete_op(index: &str, id: &str, version: u64) -> BulkOp {
    BulkOp::Delete {
        index: index.to_owned(),
        id: id.to_owned(),
        version,
    }
}

fn long_mapping() -> Value {
    json!({ "properties": { "n": { "type": "long" }, "name": { "type": "keyword" } } })
}

fn source(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

on_each_cluster!(info_reports_distribution_and_version = info_scenario());

async fn info_scenario(cluster: Cluster, test: &str) {
    let (context, client) = setup(test, cluster, true).await;
    let info = client.info().await.unwrap();
    match cluster {
        Cluster::Elasticsearch => {
            assert_eq!(info.distribution, "elasticsearch");
            assert!(info.version.starts_with("9."), "{info:?}");
        }
        Cluster::OpenSearch => {
            assert_eq!(info.distribution, "opensearch");
            assert!(info.version.starts_with("2."), "{info:?}");
        }
    }
    context.cleanup().await.unwrap();
}

on_each_cluster!(ensure_index_creates_v1_behind_a_write_alias = ensure_index_scenario());

async fn ensure_index_scenario(cluster: Cluster, test: &str) {
    let (context, client) = setup(test, cluster, true).await;
    let alias = context.index("products");
    let concrete = format!("{alias}-v1");
    let settings = json!({ "number_of_shards": 1, "number_of_replicas": 0 });

    assert!(!client.exists(&alias).await.unwrap());
    assert!(
        client
            .ensure_index(&alias, Some(&settings), Some(&long_mapping()))
            .await
            .unwrap()
    );
    assert!(client.exists(&alias).await.unwrap());
    assert!(client.exists(&concrete).await.unwrap());
    assert!(client.exists(&format!("{alias}-*")).await.unwrap());
    assert!(!client.exists(&format!("{alias}-nothing-*")).await.unwrap());

    // What a user sees: the alias points at -v1 as its write index, with our mappings/settings.
    let aliases = get_json(&context, cluster, &format!("_alias/{alias}")).await;
    assert_eq!(
        aliases,
        json!({ concrete.clone(): { "aliases": { alias.clone(): { "is_write_index": true } } } })
    );
    let mapping = get_json(&context, cluster, &format!("{alias}/_mapping")).await;
    assert_eq!(
        mapping[&concrete]["mappings"]["properties"]["n"]["type"],
        "long"
    );
    let index_settings = get_json(&context, cluster, &format!("{concrete}/_settings")).await;
    assert_eq!(
        index_settings[&concrete]["settings"]["index"]["number_of_replicas"],
        "0"
    );

    // Idempotent: the second call finds the alias and changes nothing.
    assert!(!client.ensure_index(&alias, None, None).await.unwrap());
    let mapping = get_json(&context, cluster, &format!("{alias}/_mapping")).await;
    assert_eq!(
        mapping[&concrete]["mappings"]["properties"]["n"]["type"],
        "long"
    );

    // Concurrent creators: exactly one creates, the other is fine with it.
    let other = context.index("race");
    let (a, b) = tokio::join!(
        client.ensure_index(&other, None, None),
        client.ensure_index(&other, None, None)
    );
    let mut created = [a.unwrap(), b.unwrap()];
    created.sort();
    assert_eq!(created, [false, true]);
    assert!(client.exists(&other).await.unwrap());

    context.cleanup().await.unwrap();
}

on_each_cluster!(bulk_with_gzip = bulk_scenario(true));
on_each_cluster!(bulk_without_gzip = bulk_scenario(false));

async fn bulk_scenario(cluster: Cluster, test: &str, gzip: bool) {
    let (context, client) = setup(test, cluster, gzip).await;
    let alias = context.index("products");
    client
        .ensure_index(&alias, None, Some(&long_mapping()))
        .await
        .unwrap();

    assert_eq!(client.bulk::<BulkOp>(&[]).await.unwrap(), []);

    let results = client
        .bulk(&[
            index_op(&alias, "1", 10, json!({ "name": "kettle", "n": 1 })),
            index_op(&alias, "2", 10, json!({ "name": "teapot", "n": 2 })),
            delete_op(&alias, "3", 10),
            // Two changes of one row in one transaction: same version, applied in order.
            index_op(&alias, "4", 20, json!({ "name": "first", "n": 4 })),
            index_op(&alias, "4", 20, json!({ "name": "second", "n": 4 })),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            ItemResult::Done,
            ItemResult::Done,
            ItemResult::NotFound,
            ItemResult::Done,
            ItemResult::Done
        ]
    );

    let results = client
        .bulk(&[
            // Older than what is stored: stale, and the document keeps its newer content.
            index_op(&alias, "1", 5, json!({ "name": "old kettle", "n": 0 })),
            // Same version again (a redelivery): accepted.
            index_op(&alias, "2", 10, json!({ "name": "teapot", "n": 22 })),
            delete_op(&alias, "1", 9),
            delete_op(&alias, "4", 21),
            // Deleting again: the version is known and not newer, so not found.
            delete_op(&alias, "4", 22),
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            ItemResult::Stale,
            ItemResult::Done,
            ItemResult::Stale,
            ItemResult::Done,
            ItemResult::NotFound
        ]
    );

    let ids: Vec<String> = ["1", "2", "3", "4"].map(str::to_owned).to_vec();
    let docs = client.mget(&alias, &ids).await.unwrap();
    assert_eq!(
        docs,
        [
            Some((10, source(json!({ "name": "kettle", "n": 1 })))),
            Some((10, source(json!({ "name": "teapot", "n": 22 })))),
            None,
            None,
        ]
    );
    // A missing index has no documents either.
    assert_eq!(
        client
            .mget(&context.index("missing"), &ids[..1])
            .await
            .unwrap(),
        [None]
    );

    client.refresh(&alias).await.unwrap();
    assert_eq!(client.count(&alias).await.unwrap(), 2);

    // After a delete, an older index of the same document stays stale (the tombstone keeps its
    // version for index.gc_deletes, 60s by default).
    let results = client
        .bulk(&[index_op(&alias, "4", 19, json!({ "name": "late", "n": 4 }))])
        .await
        .unwrap();
    assert_eq!(results, [ItemResult::Stale]);

    context.cleanup().await.unwrap();
}

on_each_cluster!(mapping_conflicts_are_rejected_per_item = rejected_scenario());

async fn rejected_scenario(cluster: Cluster, test: &str) {
    let (context, client) = setup(test, cluster, true).await;
    let alias = context.index("products");
    client
        .ensure_index(&alias, None, Some(&long_mapping()))
        .await
        .unwrap();

    let results = client
        .bulk(&[
            index_op(&alias, "1", 1, json!({ "n": 1 })),
            index_op(&alias, "2", 1, json!({ "n": "not a number" })),
            index_op(&context.index("UPPER"), "3", 1, json!({ "n": 3 })),
            // Never sent (Elasticsearch would fail the whole request on it); the others are.
            index_op(&alias, "5", u64::MAX, json!({ "n": 5 })),
            index_op(&alias, "4", 1, json!({ "n": 4 })),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0], ItemResult::Done);
    assert_eq!(results[4], ItemResult::Done);
    let ItemResult::Rejected {
        status,
        error_type,
        reason,
    } = &results[1]
    else {
        panic!("not rejected: {:?}", results[1]);
    };
    assert_eq!(*status, 400);
    let expected_type = match cluster {
        Cluster::Elasticsearch => "document_parsing_exception",
        Cluster::OpenSearch => "mapper_parsing_exception",
    };
    assert_eq!(error_type, expected_type);
    // The reason names the field, and carries the cause (where the bad value is).
    assert!(reason.contains("[n]"), "{reason}");
    assert!(reason.contains("caused by"), "{reason}");
    assert!(reason.contains("not a number"), "{reason}");
    assert!(
        matches!(&results[2], ItemResult::Rejected { status: 400, error_type, .. } if error_type == "invalid_index_name_exception"),
        "{:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], ItemResult::Rejected { status: 400, error_type, .. } if error_type == "version_out_of_range"),
        "{:?}",
        results[3]
    );

    client.refresh(&alias).await.unwrap();
    assert_eq!(client.count(&alias).await.unwrap(), 2);
    context.cleanup().await.unwrap();
}

on_each_cluster!(a_dynamic_mapping_race_is_retried_not_rejected = mapping_race_scenario());

/// Forty documents bring twenty new fields, as integers in even documents and as floats in odd
/// ones, in one request to an index of four shards without mappings: the shards add the fields
/// at once, and on OpenSearch the losers of each race fail (Elasticsearch 9 retries on its own).
/// They must come back to be retried, never as rejected (dead letters of good rows), and the
/// retry must index them.
async fn mapping_race_scenario(cluster: Cluster, test: &str) {
    let (context, client) = setup(test, cluster, true).await;
    let alias = context.index("raced");
    let settings = json!({ "number_of_shards": 4, "number_of_replicas": 0 });
    client
        .ensure_index(&alias, Some(&settings), None)
        .await
        .unwrap();
    let ops: Vec<BulkOp> = (0..40u64)
        .map(|id| {
            let document: Map<String, Value> = (0..20u64)
                .map(|field| {
                    let value = if id % 2 == 0 {
                        json!(field)
                    } else {
                        json!(field as f64 + 0.5)
                    };
                    (format!("f{field}"), value)
                })
                .collect();
            index_op(&alias, &id.to_string(), 1, Value::Object(document))
        })
        .collect();

    let results = client.bulk(&ops).await.unwrap();
    let mut raced = Vec::new();
    for (op, result) in ops.iter().zip(&results) {
        match result {
            ItemResult::Done => {}
            ItemResult::Retry {
                status: 400,
                reason,
            } if reason.contains("cannot be changed") => {
                raced.push(op.clone());
            }
            other => panic!("neither written nor retried: {other:?}"),
        }
    }
    if cluster == Cluster::OpenSearch {
        // Seen in every one of twenty tries; without a race this test would prove nothing.
        assert!(
            !raced.is_empty(),
            "no write lost a mapping race: {results:?}"
        );
    }
    let retried = client.bulk(&raced).await.unwrap();
    assert!(
        retried.iter().all(|result| *result == ItemResult::Done),
        "{retried:?}"
    );

    client.refresh(&alias).await.unwrap();
    assert_eq!(client.count(&alias).await.unwrap(), 40);
    let odd = get_json(&context, cluster, &format!("{alias}/_doc/1")).await;
    assert_eq!(odd["_source"]["f3"], json!(3.5), "{odd}");
    context.cleanup().await.unwrap();
}

on_each_cluster!(scan_versions_pages_through_everything = scan_scenario());

async fn scan_scenario(cluster: Cluster, test: &str) {
    let (context, client) = setup(test, cluster, true).await;
    let alias = context.index("scan-a");
    let other = context.index("scan-b");
    client.ensure_index(&alias, None, None).await.unwrap();
    client.ensure_index(&other, None, None).await.unwrap();

    let total = SCAN_PAGE_SIZE * 2 + 500;
    let ops: Vec<BulkOp> = (0..total)
        .map(|i| {
            index_op(
                &alias,
                &format!("id-{i}"),
                1_000 + i as u64,
                json!({ "i": i }),
            )
        })
        .collect();
    for chunk in ops.chunks(1000) {
        let results = client.bulk(chunk).await.unwrap();
        assert!(results.iter().all(|r| *r == ItemResult::Done));
    }
    client
        .bulk(&[index_op(&other, "x", 7, json!({}))])
        .await
        .unwrap();
    client.refresh(&alias).await.unwrap();
    client.refresh(&other).await.unwrap();
    assert_eq!(client.count(&alias).await.unwrap(), total as u64);

    let mut found = client.scan_versions(&alias).await.unwrap();
    assert_eq!(found.len(), total);
    found.sort_by_key(|(_, _, version)| *version);
    for (i, (index, id, version)) in found.iter().enumerate() {
        assert_eq!(index, &format!("{alias}-v1"));
        assert_eq!(id, &format!("id-{i}"));
        assert_eq!(*version, 1_000 + i as u64);
    }

    // A pattern covers both indices; a missing index has nothing.
    let pattern = format!("{}-scan-*", context.index_prefix);
    let everything = client.scan_versions(&pattern).await.unwrap();
    assert_eq!(everything.len(), total + 1);
    assert!(everything.contains(&(format!("{other}-v1"), "x".to_owned(), 7)));
    client.refresh(&context.index("missing")).await.unwrap();
    assert_eq!(
        client
            .scan_versions(&context.index("missing"))
            .await
            .unwrap(),
        []
    );

    context.cleanup().await.unwrap();
}

on_each_cluster!(index_templates_apply_to_templated_indices = template_scenario());

async fn template_scenario(cluster: Cluster, test: &str) {
    let (context, mut client) = setup(test, cluster, true).await;
    let name = context.index("orders");
    let pattern = format!("{name}-*");
    if cluster == Cluster::Elasticsearch {
        // The test API key may lack `manage_index_templates` (deploy/local grants `monitor`):
        // then the refusal must say which privilege is missing, and the superuser goes on.
        match client.put_index_template(&name, &pattern, None, None).await {
            Ok(()) => {}
            Err(error @ ElasticError::Auth { status: 403, .. }) => {
                assert!(
                    error.to_string().contains("manage_index_templates"),
                    "{error}"
                );
                client = superuser(&context);
            }
            Err(error) => panic!("{error:?}"),
        }
    }
    client
        .put_index_template(&name, &pattern, None, Some(&long_mapping()))
        .await
        .unwrap();
    // Putting it again replaces it.
    client
        .put_index_template(
            &name,
            &pattern,
            Some(&json!({ "number_of_replicas": 0 })),
            Some(&long_mapping()),
        )
        .await
        .unwrap();

    let tenant = format!("{name}-tenant1");
    let results = client
        .bulk(&[
            index_op(&tenant, "1", 1, json!({ "n": 1 })),
            index_op(&tenant, "2", 1, json!({ "n": "x" })),
        ])
        .await
        .unwrap();
    assert_eq!(results[0], ItemResult::Done);
    assert!(
        matches!(results[1], ItemResult::Rejected { status: 400, .. }),
        "{:?}",
        results[1]
    );
    let mapping = get_json(&context, cluster, &format!("{tenant}/_mapping")).await;
    assert_eq!(
        mapping[&tenant]["mappings"]["properties"]["n"]["type"],
        "long"
    );

    let (http, base) = context.cluster(cluster);
    let mut request = http.delete(format!("{base}/_index_template/{name}"));
    if cluster == Cluster::Elasticsearch {
        let (user, password) = superuser_credentials();
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success());
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_api_key_is_an_auth_error() {
    let context = TestContext::new("elastic_wrong_key").await.unwrap();
    // A well-formed key (base64 of `id:key`) that Elasticsearch does not know.
    let client = client(&sink(&context, Cluster::Elasticsearch).api_key("Zm9vOmJhcg=="));

    let error = client.info().await.unwrap_err();
    let ElasticError::Auth { status, reason } = &error else {
        panic!("not an auth error: {error:?}");
    };
    assert_eq!(*status, 401);
    assert!(reason.contains("unable to authenticate"), "{reason}");
    assert!(!error.is_retryable());
    assert!(error.to_string().contains("elasticsearch.auth"), "{error}");
    assert!(!error.to_string().contains("Zm9vOmJhcg"), "{error}");

    let error = client
        .bulk(&[index_op(&context.index("x"), "1", 1, json!({}))])
        .await
        .unwrap_err();
    assert!(
        matches!(error, ElasticError::Auth { status: 401, .. }),
        "{error:?}"
    );
    let error = client.exists(&context.index("x")).await.unwrap_err();
    assert!(
        matches!(error, ElasticError::Auth { status: 401, .. }),
        "{error:?}"
    );
    context.cleanup().await.unwrap();
}

/// The `elastic` user and its password, which deploy/local/elasticsearch.sh prints.
fn superuser_credentials() -> (String, String) {
    let (Ok(user), Ok(password)) = (
        std::env::var("SLUICE_TEST_ELASTICSEARCH_USER"),
        std::env::var("SLUICE_TEST_ELASTICSEARCH_PASSWORD"),
    ) else {
        panic!(
            "SLUICE_TEST_ELASTICSEARCH_USER/_PASSWORD are not set: start it with deploy/local/up.sh"
        );
    };
    (user, password)
}

/// A client of Elasticsearch as the `elastic` superuser (basic auth).
fn superuser(context: &TestContext) -> Client {
    let (user, password) = superuser_credentials();
    client(&sink(context, Cluster::Elasticsearch).basic_auth(&user, &password))
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_works() {
    let (user, password) = superuser_credentials();
    let context = TestContext::new("elastic_basic").await.unwrap();
    let elasticsearch = sink(&context, Cluster::Elasticsearch).gzip(false);
    let right = client(&elasticsearch.clone().basic_auth(&user, &password));
    assert_eq!(right.info().await.unwrap().distribution, "elasticsearch");

    let wrong = client(&elasticsearch.basic_auth(&user, "wrong"));
    let error = wrong.info().await.unwrap_err();
    assert!(
        matches!(error, ElasticError::Auth { status: 401, .. }),
        "{error:?}"
    );
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_cluster_is_retryable() {
    // A port that was free a moment ago: nothing listens, the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config: ElasticsearchConfig = serde_json::from_value(json!({
        "endpoint": format!("http://127.0.0.1:{port}"),
        "index": "x",
        "request_timeout": "2s",
    }))
    .unwrap();
    let client = Client::new(&config).unwrap();

    let error = client.info().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("could not connect"), "{error}");
    let error = client
        .bulk(&[index_op("x", "1", 1, json!({}))])
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_cluster_times_out_retryably() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config: ElasticsearchConfig = serde_json::from_value(json!({
        "endpoint": format!("http://127.0.0.1:{port}"),
        "index": "x",
        "request_timeout": "500ms",
    }))
    .unwrap();
    let error = Client::new(&config).unwrap().info().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert!(error.to_string().contains("timed out"), "{error}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pem_ca_file_builds_a_client() {
    let Ok(ca) = std::env::var("SLUICE_TEST_PG_CA") else {
        panic!("SLUICE_TEST_PG_CA is not set: start the services with deploy/local/up.sh");
    };
    // Any PEM CA will do to build the client (the local clusters speak plain HTTP).
    let config: ElasticsearchConfig = serde_json::from_value(json!({
        "endpoint": "https://127.0.0.1:9200",
        "index": "x",
        "ca_file": ca,
    }))
    .unwrap();
    Client::new(&config).unwrap();
}
