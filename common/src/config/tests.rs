//! Good and bad configs, each bad one asserting the message a user sees.

use std::path::Path;

use super::*;

const GOOD: &str = r#"
postgres:
  url: postgres://sluice:${PG_PASSWORD}@127.0.0.1:5432/shop
  slot: sluice
  publication: sluice
kafka:
  brokers: 127.0.0.1:9092
  topic_prefix: sluice
tables:
  - name: public.products
    backfill: true
  - name: public.orders
sinks:
  - name: products-elasticsearch
    table: public.products
    actions: [insert, update, delete]
    filter: in_stock = true
    transform: |
      { "name": .record.name }
    elasticsearch:
      endpoint: http://127.0.0.1:9200
      index: products
      auth: { type: api_key, value: "${ES_API_KEY}" }
      batch_size: 500
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "PG_PASSWORD" => Some("pg-secret".to_owned()),
        "ES_API_KEY" => Some("es-secret".to_owned()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    load_str(text, Path::new("sluice.yaml"), &env)
}

/// Applies `edit` to the good config's text and returns the single problem it causes.
fn problem_after(from: &str, to: &str) -> Problem {
    assert!(GOOD.contains(from), "the good config has no `{from}`");
    let error = parse(&GOOD.replacen(from, to, 1)).expect_err("the edited config must be rejected");
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "expected one problem, got: {error}");
    problems.into_iter().next().unwrap()
}

fn assert_problem(problem: &Problem, path: &str, message_part: &str, fix_part: &str) {
    assert_eq!(problem.path, path, "{problem}");
    assert!(
        problem.message.contains(message_part),
        "message `{}` lacks `{message_part}`",
        problem.message
    );
    assert!(
        problem.fix.contains(fix_part),
        "fix `{}` lacks `{fix_part}`",
        problem.fix
    );
}

#[test]
fn the_example_config_loads_with_defaults_and_secrets() {
    let config = parse(GOOD).unwrap();
    assert_eq!(
        config.postgres.url.expose(),
        "postgres://sluice:pg-secret@127.0.0.1:5432/shop"
    );
    assert_eq!(config.kafka.partitions, DEFAULT_PARTITIONS);
    assert_eq!(config.kafka.compression, Compression::Lz4);
    assert_eq!(config.kafka.cleanup_policy, CleanupPolicy::Compact);
    assert_eq!(config.sinks[0].elasticsearch.batch_size, 500);
    assert_eq!(config.sinks[0].elasticsearch.linger, DEFAULT_LINGER);
    assert!(!config.sinks[0].elasticsearch.gzip);
    assert_eq!(
        config.sinks[0].actions,
        vec![Action::Insert, Action::Update, Action::Delete]
    );
    assert_eq!(config.sinks[0].dlq_topic(), "products-elasticsearch.dlq");
    assert_eq!(
        config.topic_for("public.products"),
        "sluice.public.products"
    );
    assert!(config.tables[0].backfill && !config.tables[1].backfill);
    assert_eq!(config.tables[0].schema_and_table(), ("public", "products"));
}

#[test]
fn debug_output_never_shows_secrets() {
    let config = parse(GOOD).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("pg-secret"), "{debug}");
    assert!(!debug.contains("es-secret"), "{debug}");
}

#[test]
fn an_unknown_key_is_named() {
    let p = problem_after("  slot: sluice\n", "  slott: sluice\n");
    assert_problem(
        &p,
        "postgres.slott",
        "unknown field `slott`, expected one of",
        "remove the key or correct its spelling",
    );
}

#[test]
fn an_unknown_key_deep_inside_a_sink_is_named() {
    let p = problem_after(
        "      batch_size: 500\n",
        "      batch_size: 500\n      bulk_size: 5\n",
    );
    assert_problem(
        &p,
        "sinks[0].elasticsearch.bulk_size",
        "unknown field `bulk_size`",
        "remove the key",
    );
}

#[test]
fn a_missing_required_field_is_named() {
    let p = problem_after("  brokers: 127.0.0.1:9092\n", "");
    assert_problem(
        &p,
        "kafka",
        "missing field `brokers`",
        "add `brokers` under `kafka`",
    );
}

#[test]
fn a_malformed_postgres_url_is_rejected_without_showing_the_password() {
    let p = problem_after(
        "postgres://sluice:${PG_PASSWORD}@127.0.0.1:5432/shop",
        "mysql://sluice:${PG_PASSWORD}@127.0.0.1/shop",
    );
    assert_problem(&p, "postgres.url", "scheme `mysql`", "postgres://");
    assert!(!p.message.contains("pg-secret"), "{p}");

    let p = problem_after(
        "postgres://sluice:${PG_PASSWORD}@127.0.0.1:5432/shop",
        "127.0.0.1:5432",
    );
    assert_problem(
        &p,
        "postgres.url",
        "not a URL",
        "postgres://user:password@host:5432/database",
    );

    let p = problem_after("127.0.0.1:5432/shop", "127.0.0.1:5432");
    assert_problem(&p, "postgres.url", "no database", "name the database");
}

#[test]
fn a_malformed_elasticsearch_endpoint_is_rejected() {
    let p = problem_after("http://127.0.0.1:9200", "127.0.0.1:9200");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.endpoint",
        "not a URL",
        "http://host:9200",
    );
    let p = problem_after("http://127.0.0.1:9200", "elasticsearch:9200");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.endpoint",
        "not an http(s) URL with a host (scheme `elasticsearch`)",
        "http://host:9200",
    );
}

#[test]
fn backfill_chunk_bytes_outside_64_kib_to_1_gib_are_rejected() {
    let good = parse(GOOD).unwrap();
    assert_eq!(good.producer.backfill_chunk_bytes, 2 * 1024 * 1024);
    assert_eq!(good.producer.backfill_chunk_size, 10_000);
    for bytes in ["1000", "2000000000"] {
        let p = problem_after(
            "  topic_prefix: sluice\n",
            &format!("  topic_prefix: sluice\nproducer:\n  backfill_chunk_bytes: {bytes}\n"),
        );
        assert_problem(
            &p,
            "producer.backfill_chunk_bytes",
            &format!("{bytes} is out of range"),
            "from 65536 (64 KiB) to 1073741824 (1 GiB)",
        );
    }
}

#[test]
fn batch_size_zero_is_out_of_range() {
    let p = problem_after("batch_size: 500", "batch_size: 0");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.batch_size",
        "0 is out of range",
        "from 1 to 10000",
    );
}

#[test]
fn batch_size_above_ten_thousand_is_out_of_range() {
    let p = problem_after("batch_size: 500", "batch_size: 10001");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.batch_size",
        "10001 is out of range",
        "from 1 to 10000",
    );
}

#[test]
fn batch_size_of_the_wrong_type_is_named() {
    let p = problem_after("batch_size: 500", "batch_size: lots");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.batch_size",
        "invalid type: string \"lots\"",
        "expected type",
    );
}

#[test]
fn duplicate_sink_names_are_rejected() {
    let second = r#"  - name: products-elasticsearch
    table: public.orders
    elasticsearch: { endpoint: "http://127.0.0.1:9200", index: orders }
"#;
    let error = parse(&format!("{GOOD}{second}")).unwrap_err();
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "{error}");
    assert_problem(
        &problems[0],
        "sinks[1].name",
        "duplicate sink name `products-elasticsearch` (also sinks[0].name)",
        "consumer group id",
    );
}

#[test]
fn a_sink_naming_an_undeclared_table_is_rejected() {
    let p = problem_after("    table: public.products", "    table: public.customers");
    assert_problem(
        &p,
        "sinks[0].table",
        "`public.customers` is not declared under `tables`",
        "add `- name: public.customers` to `tables`",
    );
}

#[test]
fn an_unset_environment_variable_is_named_with_its_field() {
    let p = problem_after("${ES_API_KEY}", "${ES_KEY_TYPO}");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.auth.value",
        "environment variable `ES_KEY_TYPO` is not set",
        "export ES_KEY_TYPO",
    );
}

#[test]
fn a_table_name_without_schema_is_rejected() {
    let p = problem_after("  - name: public.orders", "  - name: orders");
    assert_problem(
        &p,
        "tables[1].name",
        "`orders` is not schema.table",
        "`public.orders`",
    );
}

#[test]
fn a_table_declared_twice_is_rejected() {
    let p = problem_after("  - name: public.orders", "  - name: public.products");
    assert_problem(
        &p,
        "tables[1].name",
        "declared twice (also tables[0])",
        "declare each table once",
    );
}

#[test]
fn a_slot_name_postgres_would_refuse_is_rejected() {
    let p = problem_after("  slot: sluice", "  slot: Sluice-Main");
    assert_problem(
        &p,
        "postgres.slot",
        "`Sluice-Main` is not a valid replication slot name",
        "lowercase letters",
    );
}

#[test]
fn a_broker_without_port_is_rejected() {
    let p = problem_after("brokers: 127.0.0.1:9092", "brokers: 127.0.0.1:9092,kafka-2");
    assert_problem(
        &p,
        "kafka.brokers",
        "`kafka-2` is not host:port",
        "host:port",
    );
}

#[test]
fn an_unknown_action_is_rejected() {
    let p = problem_after("[insert, update, delete]", "[insert, upsert]");
    assert_problem(
        &p,
        "sinks[0].actions[1]",
        "unknown variant `upsert`",
        "values listed",
    );
}

#[test]
fn a_malformed_duration_is_rejected() {
    let p = problem_after(
        "      batch_size: 500\n",
        "      batch_size: 500\n      linger: 10 parsecs\n",
    );
    assert_problem(
        &p,
        "sinks[0].elasticsearch.linger",
        "`10 parsecs` is not a duration",
        "",
    );
}

#[test]
fn an_empty_api_key_is_rejected() {
    let p = problem_after("\"${ES_API_KEY}\"", "\"\"");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.auth.value",
        "the API key is empty",
        "ES_API_KEY",
    );
}

#[test]
fn an_unknown_auth_type_is_rejected() {
    let p = problem_after("type: api_key", "type: kerberos");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.auth.type",
        "unknown variant `kerberos`",
        "values listed",
    );
}

#[test]
fn an_index_name_elasticsearch_would_refuse_is_rejected() {
    let p = problem_after("index: products", "index: Products");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.index",
        "`Products` is not a valid index name",
        "lowercase",
    );
    // A template is fine, and its literal part is still checked.
    assert!(
        parse(&GOOD.replace("index: products", "index: \"products-{{ record.tenant }}\"")).is_ok()
    );
    let p = problem_after("index: products", "index: \"products-{{ record.tenant \"");
    assert_problem(
        &p,
        "sinks[0].elasticsearch.index",
        "without closing it",
        "close every",
    );
}

#[test]
fn zero_partitions_are_rejected() {
    let p = problem_after(
        "  topic_prefix: sluice\n",
        "  topic_prefix: sluice\n  partitions: 0\n",
    );
    assert_problem(
        &p,
        "kafka.partitions",
        "0 is out of range",
        "from 1 to 10000",
    );
}

#[test]
fn sasl_protocol_without_credentials_is_rejected() {
    let p = problem_after(
        "  topic_prefix: sluice\n",
        "  topic_prefix: sluice\n  security: { protocol: sasl_ssl }\n",
    );
    assert_problem(
        &p,
        "kafka.security.sasl",
        "needs SASL credentials",
        "mechanism",
    );
}

#[test]
fn a_missing_ca_file_is_rejected() {
    let p = problem_after(
        "  publication: sluice\n",
        "  publication: sluice\n  ca_file: /nonexistent/ca.pem\n",
    );
    assert_problem(
        &p,
        "postgres.ca_file",
        "/nonexistent/ca.pem does not exist",
        "existing file",
    );
}

#[test]
fn an_unchecked_host_name_needs_a_ca_file() {
    let p = problem_after(
        "      batch_size: 500\n",
        "      batch_size: 500\n      verify_hostname: false\n",
    );
    assert_problem(
        &p,
        "sinks[0].elasticsearch.verify_hostname",
        "any public certificate would be accepted",
        "set elasticsearch.ca_file",
    );
}

#[test]
fn a_bad_log_level_is_rejected() {
    let text = format!("{GOOD}telemetry:\n  log_level: \"sluice=loud\"\n");
    let problems = parse(&text).unwrap_err().problems();
    assert_eq!(problems.len(), 1);
    assert_problem(
        &problems[0],
        "telemetry.log_level",
        "is not a log filter",
        "`info`",
    );
}

#[test]
fn a_console_token_comes_from_the_environment_and_a_short_one_is_refused_unshown() {
    let console = |token: &str| format!("{GOOD}telemetry:\n  console:\n    token: \"{token}\"\n");
    let config = parse(&console("${ES_API_KEY}-and-some-more")).unwrap();
    let token = config.telemetry.console.token.as_ref().map(Secret::expose);
    assert_eq!(token, Some("es-secret-and-some-more"));
    assert!(config.telemetry.console.enabled && !config.telemetry.console.remote);
    assert!(parse(GOOD).unwrap().telemetry.console.token.is_none());

    let problems = parse(&console("short secret")).unwrap_err().problems();
    assert_eq!(problems.len(), 1);
    assert_problem(
        &problems[0],
        "telemetry.console.token",
        "the token has 12 characters and whitespace: it needs at least 16",
        "${SLUICE_CONSOLE_TOKEN}",
    );
    assert!(!format!("{problems:?}").contains("short secret"));
}

#[test]
fn yaml_syntax_errors_say_where() {
    let error = parse("postgres:\n  url: [unclosed\n").unwrap_err();
    assert!(matches!(error, ConfigError::Syntax { .. }), "{error}");
    assert!(error.to_string().contains("line"), "{error}");
}

#[test]
fn an_empty_file_is_rejected() {
    let p = parse("").unwrap_err().problems();
    assert_problem(&p[0], "", "the file is empty", "docs/configuration.md");
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = GOOD
        .replace("batch_size: 500", "batch_size: 0")
        .replace("  - name: public.orders", "  - name: orders")
        .replace("  slot: sluice", "  slot: BAD");
    let error = parse(&text).unwrap_err();
    let paths: Vec<String> = error.problems().into_iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        [
            "postgres.slot",
            "tables[1].name",
            "sinks[0].elasticsearch.batch_size"
        ]
    );
    assert!(
        error
            .to_string()
            .starts_with("invalid configuration in sluice.yaml (3 problems):"),
        "{error}"
    );
}
