//! Checks the typed config for what serde cannot: ranges, names, references between sections.
//! Every problem is collected, so a user fixes the whole file in one go.

use std::collections::HashMap;
use std::path::Path;

use super::load::Problem;
use super::{
    Auth, CleanupPolicy, Config, ElasticsearchConfig, JsonSource, KafkaProtocol, MAX_BATCH_SIZE,
    SinkConfig, redact_url,
};

/// Most partitions a created topic may have.
const MAX_PARTITIONS: i32 = 10_000;
/// Largest backfill chunk: bigger chunks hold more rows in memory between watermarks.
const MAX_BACKFILL_CHUNK_SIZE: u32 = 100_000;
/// Memory of one backfill chunk: at least a few rows' worth, at most what a producer can hold.
const BACKFILL_CHUNK_BYTES: std::ops::RangeInclusive<u64> = 64 * 1024..=1024 * 1024 * 1024;
/// Postgres truncates identifiers at 63 bytes.
const MAX_IDENTIFIER_LEN: usize = 63;
/// Kafka topic names are at most 249 characters.
const MAX_TOPIC_LEN: usize = 249;

impl Config {
    /// Every problem in the config; empty when it is good to run.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        self.validate_postgres(&mut p);
        self.validate_kafka(&mut p);
        self.validate_tables(&mut p);
        self.validate_producer(&mut p);
        self.validate_sinks(&mut p);
        self.validate_telemetry(&mut p);
        p
    }

    fn validate_postgres(&self, p: &mut Vec<Problem>) {
        let raw = self.postgres.url.expose();
        match url::Url::parse(raw) {
            Err(error) => p.push(Problem::new(
                "postgres.url",
                format!("not a URL ({error})"),
                "write it as postgres://user:password@host:5432/database",
            )),
            Ok(url) => {
                if !matches!(url.scheme(), "postgres" | "postgresql") {
                    p.push(Problem::new(
                        "postgres.url",
                        format!(
                            "scheme `{}` in {} is not postgres",
                            url.scheme(),
                            redact_url(raw)
                        ),
                        "start the URL with postgres://",
                    ));
                }
                if url.host_str().is_none_or(str::is_empty) {
                    p.push(Problem::new(
                        "postgres.url",
                        format!("no host in {}", redact_url(raw)),
                        "write it as postgres://user:password@host:5432/database",
                    ));
                }
                if url.path().trim_start_matches('/').is_empty() {
                    p.push(Problem::new(
                        "postgres.url",
                        format!("no database in {}", redact_url(raw)),
                        "name the database after the port: postgres://user@host:5432/database",
                    ));
                }
                if url.username().is_empty() {
                    p.push(Problem::new(
                        "postgres.url",
                        format!("no user in {}", redact_url(raw)),
                        "name the user: postgres://user:password@host:5432/database",
                    ));
                }
            }
        }
        check_pg_name(p, "postgres.slot", &self.postgres.slot, "replication slot");
        check_pg_name(
            p,
            "postgres.publication",
            &self.postgres.publication,
            "publication",
        );
        check_file(p, "postgres.ca_file", self.postgres.ca_file.as_deref());
    }

    fn validate_kafka(&self, p: &mut Vec<Problem>) {
        let kafka = &self.kafka;
        let brokers: Vec<&str> = kafka
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect();
        if brokers.is_empty() {
            p.push(Problem::new(
                "kafka.brokers",
                "no broker given",
                "list at least one broker as host:port, e.g. 127.0.0.1:9092",
            ));
        }
        for broker in brokers {
            let ok = broker
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                p.push(Problem::new(
                    "kafka.brokers",
                    format!("`{broker}` is not host:port"),
                    "write each broker as host:port, separated by commas",
                ));
            }
        }
        check_topic_name(p, "kafka.topic_prefix", &kafka.topic_prefix);
        if !(1..=MAX_PARTITIONS).contains(&kafka.partitions) {
            p.push(Problem::new(
                "kafka.partitions",
                format!("{} is out of range", kafka.partitions),
                format!("set a value from 1 to {MAX_PARTITIONS}"),
            ));
        }
        if let Some(rf) = kafka.replication_factor
            && rf < 1
        {
            p.push(Problem::new(
                "kafka.replication_factor",
                format!("{rf} is out of range"),
                "set 1 or more, or leave it out for the broker's default",
            ));
        }
        if kafka.retention.is_some() && kafka.cleanup_policy == CleanupPolicy::Compact {
            p.push(Problem::new(
                "kafka.retention",
                "retention applies to `cleanup_policy: delete` only",
                "remove `retention`, or set `cleanup_policy: delete`",
            ));
        }
        let sasl_protocol = matches!(
            kafka.security.protocol,
            KafkaProtocol::SaslPlaintext | KafkaProtocol::SaslSsl
        );
        match (&kafka.security.sasl, sasl_protocol) {
            (None, true) => p.push(Problem::new(
                "kafka.security.sasl",
                "a sasl_* protocol needs SASL credentials",
                "add `sasl: { mechanism: scram-sha-512, username: …, password: ${KAFKA_PASSWORD} }`",
            )),
            (Some(_), false) => p.push(Problem::new(
                "kafka.security.sasl",
                "SASL credentials are set but the protocol does not use SASL",
                "set `protocol: sasl_ssl` (or sasl_plaintext), or remove `sasl`",
            )),
            (Some(sasl), true) => {
                if sasl.username.is_empty() {
                    p.push(Problem::new("kafka.security.sasl.username", "empty", "set the user"));
                }
                if sasl.password.is_empty() {
                    p.push(Problem::new(
                        "kafka.security.sasl.password",
                        "empty",
                        "set the password, e.g. from ${KAFKA_PASSWORD}",
                    ));
                }
            }
            (None, false) => {}
        }
        check_file(
            p,
            "kafka.security.ca_file",
            kafka.security.ca_file.as_deref(),
        );
    }

    fn validate_tables(&self, p: &mut Vec<Problem>) {
        if self.tables.is_empty() {
            p.push(Problem::new(
                "tables",
                "no table to capture",
                "add at least one entry like `- name: public.products`",
            ));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, table) in self.tables.iter().enumerate() {
            let path = format!("tables[{i}].name");
            match table.name.split_once('.') {
                Some((schema, name))
                    if !schema.is_empty() && !name.is_empty() && !name.contains('.') => {}
                _ => p.push(Problem::new(
                    &path,
                    format!("`{}` is not schema.table", table.name),
                    format!(
                        "name the schema too, e.g. `public.{}`",
                        table.name.trim_matches('.')
                    ),
                )),
            }
            if let Some(first) = seen.insert(table.name.as_str(), i) {
                p.push(Problem::new(
                    &path,
                    format!("`{}` is declared twice (also tables[{first}])", table.name),
                    "declare each table once",
                ));
            }
            if let Some(key) = &table.key {
                check_columns(p, &format!("tables[{i}].key"), key);
            }
        }
    }

    fn validate_producer(&self, p: &mut Vec<Problem>) {
        let producer = &self.producer;
        if producer.status_interval.get().is_zero() {
            p.push(Problem::new(
                "producer.status_interval",
                "must be above zero",
                "set e.g. `10s`",
            ));
        }
        if producer.heartbeat_interval.get().is_zero() {
            p.push(Problem::new(
                "producer.heartbeat_interval",
                "must be above zero",
                "set e.g. `30s`",
            ));
        }
        if producer.max_in_flight_messages == 0 {
            p.push(Problem::new(
                "producer.max_in_flight_messages",
                "must be at least 1",
                "set e.g. 20000",
            ));
        }
        if !(1..=MAX_BACKFILL_CHUNK_SIZE).contains(&producer.backfill_chunk_size) {
            p.push(Problem::new(
                "producer.backfill_chunk_size",
                format!("{} is out of range", producer.backfill_chunk_size),
                format!("set a value from 1 to {MAX_BACKFILL_CHUNK_SIZE}"),
            ));
        }
        if !BACKFILL_CHUNK_BYTES.contains(&producer.backfill_chunk_bytes) {
            p.push(Problem::new(
                "producer.backfill_chunk_bytes",
                format!("{} is out of range", producer.backfill_chunk_bytes),
                format!(
                    "set a value from {} (64 KiB) to {} (1 GiB)",
                    BACKFILL_CHUNK_BYTES.start(),
                    BACKFILL_CHUNK_BYTES.end()
                ),
            ));
        }
        if producer.backfill_max_rows_per_second == Some(0) {
            p.push(Problem::new(
                "producer.backfill_max_rows_per_second",
                "0 would stop every backfill",
                "set 1 or more, or leave it out for no limit",
            ));
        }
    }

    fn validate_sinks(&self, p: &mut Vec<Problem>) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let at = |field: &str| format!("sinks[{i}].{field}");
            if sink.name.is_empty()
                || sink.name.len() > 200
                || !sink
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                p.push(Problem::new(
                    at("name"),
                    format!("`{}` is not a usable sink name", sink.name),
                    "use letters, digits, `.`, `_` and `-` (it names the consumer group and the DLQ topic)",
                ));
            }
            if let Some(first) = seen.insert(sink.name.as_str(), i) {
                p.push(Problem::new(
                    at("name"),
                    format!(
                        "duplicate sink name `{}` (also sinks[{first}].name)",
                        sink.name
                    ),
                    "give every sink its own name: it is the consumer group id",
                ));
            }
            if self.table(&sink.table).is_none() {
                let declared: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
                p.push(Problem::new(
                    at("table"),
                    format!(
                        "table `{}` is not declared under `tables` (declared: {})",
                        sink.table,
                        declared.join(", ")
                    ),
                    format!("add `- name: {}` to `tables`, or fix the name", sink.table),
                ));
            }
            if sink.actions.is_empty() {
                p.push(Problem::new(
                    at("actions"),
                    "no action: this sink would write nothing",
                    "list some of insert, update, delete, read (or leave it out for all)",
                ));
            }
            let mut actions = sink.actions.clone();
            actions.sort();
            if actions.windows(2).any(|w| w[0] == w[1]) {
                p.push(Problem::new(
                    at("actions"),
                    "an action is listed twice",
                    "list each action once",
                ));
            }
            for (field, script) in [("filter", &sink.filter), ("transform", &sink.transform)] {
                if script.as_deref().is_some_and(|s| s.trim().is_empty()) {
                    p.push(Problem::new(
                        at(field),
                        "empty",
                        format!("write a VRL program, or remove `{field}`"),
                    ));
                }
            }
            if sink.transform_timeout.get().is_zero() {
                p.push(Problem::new(
                    at("transform_timeout"),
                    "must be above zero",
                    "set e.g. `100ms`",
                ));
            }
            if let Some(columns) = &sink.id_columns {
                check_columns(p, &at("id_columns"), columns);
            }
            if let Some(dlq) = &sink.dlq_topic {
                check_topic_name(p, &at("dlq_topic"), dlq);
            }
            validate_elasticsearch(p, &at("elasticsearch"), sink, &sink.elasticsearch);
        }
    }

    fn validate_telemetry(&self, p: &mut Vec<Problem>) {
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.log_level) {
            p.push(Problem::new(
                "telemetry.log_level",
                format!("`{}` is not a log filter ({error})", self.telemetry.log_level),
                "use a level such as `info` or `debug`, or directives like `sluice_producer=debug,info`",
            ));
        }
        if let Some(token) = &self.telemetry.console.token {
            let value = token.expose();
            // Never the value itself: only what is wrong with it.
            if value.chars().count() < super::CONSOLE_TOKEN_MIN_LEN
                || value.chars().any(char::is_whitespace)
            {
                p.push(Problem::new(
                    "telemetry.console.token",
                    format!(
                        "the token has {} characters{}: it needs at least {} and no whitespace",
                        value.chars().count(),
                        if value.chars().any(char::is_whitespace) {
                            " and whitespace"
                        } else {
                            ""
                        },
                        super::CONSOLE_TOKEN_MIN_LEN
                    ),
                    "set it from the environment (`token: ${SLUICE_CONSOLE_TOKEN}`) to a random value, e.g. `openssl rand -hex 24`, or remove it for a read-only console",
                ));
            }
        }
    }
}

fn validate_elasticsearch(
    p: &mut Vec<Problem>,
    base: &str,
    _sink: &SinkConfig,
    es: &ElasticsearchConfig,
) {
    let at = |field: &str| format!("{base}.{field}");
    match url::Url::parse(&es.endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {}
        Ok(url) => p.push(Problem::new(
            at("endpoint"),
            format!(
                "`{}` is not an http(s) URL with a host (scheme `{}`)",
                redact_url(&es.endpoint),
                url.scheme()
            ),
            "write it as http://host:9200 or https://host:9200",
        )),
        Err(error) => p.push(Problem::new(
            at("endpoint"),
            format!("not a URL ({error})"),
            "write it as http://host:9200 or https://host:9200",
        )),
    }
    check_index_template(p, &at("index"), &es.index);
    match &es.auth {
        Auth::None => {}
        Auth::Basic { username, password } => {
            if username.is_empty() || password.is_empty() {
                p.push(Problem::new(
                    at("auth"),
                    "basic auth needs a username and a password",
                    "set both, e.g. `{ type: basic, username: elastic, password: ${ES_PASSWORD} }`",
                ));
            }
        }
        Auth::ApiKey { value } => {
            if value.is_empty() {
                p.push(Problem::new(
                    at("auth.value"),
                    "the API key is empty",
                    "set the `encoded` value of the key, e.g. `value: ${ES_API_KEY}`",
                ));
            }
        }
        Auth::Bearer { token } => {
            if token.is_empty() {
                p.push(Problem::new(
                    at("auth.token"),
                    "the token is empty",
                    "set it, e.g. `${ES_TOKEN}`",
                ));
            }
        }
    }
    if !(1..=MAX_BATCH_SIZE).contains(&es.batch_size) {
        p.push(Problem::new(
            at("batch_size"),
            format!("{} is out of range", es.batch_size),
            format!("set a value from 1 to {MAX_BATCH_SIZE}"),
        ));
    }
    if es.batch_max_bytes < 1024 {
        p.push(Problem::new(
            at("batch_max_bytes"),
            format!(
                "{} bytes is too small for a bulk request",
                es.batch_max_bytes
            ),
            "set 1024 or more (5 MiB = 5242880 is a good start)",
        ));
    }
    if !(1..=64).contains(&es.max_in_flight_requests) {
        p.push(Problem::new(
            at("max_in_flight_requests"),
            format!("{} is out of range", es.max_in_flight_requests),
            "set a value from 1 to 64",
        ));
    }
    if es.request_timeout.get().is_zero() {
        p.push(Problem::new(
            at("request_timeout"),
            "must be above zero",
            "set e.g. `30s`",
        ));
    }
    if es.retry_initial_backoff.get().is_zero() || es.retry_initial_backoff > es.retry_max_backoff {
        p.push(Problem::new(
            at("retry_initial_backoff"),
            format!(
                "{:?} must be above zero and at most retry_max_backoff ({:?})",
                es.retry_initial_backoff, es.retry_max_backoff
            ),
            "set e.g. `retry_initial_backoff: 200ms` and `retry_max_backoff: 30s`",
        ));
    }
    check_file(p, &at("ca_file"), es.ca_file.as_deref());
    if !es.verify_hostname && es.ca_file.is_none() {
        p.push(Problem::new(
            at("verify_hostname"),
            "false needs the CA the cluster's certificate is checked against: with the public \
             CAs, any public certificate would be accepted",
            "set elasticsearch.ca_file to the PEM file of the CA that signed the cluster's \
             certificate, or remove verify_hostname",
        ));
    }
    for (field, source) in [("settings", &es.settings), ("mappings", &es.mappings)] {
        if let Some(JsonSource::File { file }) = source {
            check_file(p, &format!("{}.file", at(field)), Some(file));
        }
    }
}

fn check_pg_name(p: &mut Vec<Problem>, path: &str, name: &str, what: &str) {
    if name.is_empty()
        || name.len() > MAX_IDENTIFIER_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        p.push(Problem::new(
            path,
            format!("`{name}` is not a valid {what} name"),
            format!("use lowercase letters, digits and underscores, at most {MAX_IDENTIFIER_LEN} characters"),
        ));
    }
}

fn check_topic_name(p: &mut Vec<Problem>, path: &str, name: &str) {
    if name.is_empty()
        || name.len() > MAX_TOPIC_LEN
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        p.push(Problem::new(
            path,
            format!("`{name}` is not a valid Kafka topic name"),
            "use letters, digits, `.`, `_` and `-`",
        ));
    }
}

fn check_columns(p: &mut Vec<Problem>, path: &str, columns: &[String]) {
    if columns.is_empty() || columns.iter().any(String::is_empty) {
        p.push(Problem::new(
            path,
            "empty column list or column name",
            "name at least one column",
        ));
    }
}

fn check_file(p: &mut Vec<Problem>, path: &str, file: Option<&Path>) {
    if let Some(file) = file
        && !file.is_file()
    {
        p.push(Problem::new(
            path,
            format!("{} does not exist or is not a file", file.display()),
            "give the path of an existing file (relative paths start at the working directory)",
        ));
    }
}

/// Index names: lowercase, none of `\ / * ? " < > | , #` or spaces, not starting with `-`, `_`,
/// `+`. Template parts (`{{ record.tenant }}`) are checked when the event is routed.
fn check_index_template(p: &mut Vec<Problem>, path: &str, index: &str) {
    let mut literal = String::new();
    let mut rest = index;
    loop {
        match rest.find("{{") {
            Some(open) => {
                literal.push_str(&rest[..open]);
                match rest[open..].find("}}") {
                    Some(close) => {
                        if rest[open + 2..open + close].trim().is_empty() {
                            p.push(Problem::new(
                                path,
                                format!("`{index}` has an empty `{{{{ }}}}`"),
                                "name a field, e.g. `{{ record.tenant_id }}`",
                            ));
                        }
                        literal.push('x');
                        rest = &rest[open + close + 2..];
                    }
                    None => {
                        p.push(Problem::new(
                            path,
                            format!("`{index}` opens `{{{{` without closing it"),
                            "close every `{{` with `}}`",
                        ));
                        return;
                    }
                }
            }
            None => {
                literal.push_str(rest);
                break;
            }
        }
    }
    let bad = literal.is_empty()
        || literal.starts_with(['-', '_', '+'])
        || literal
            .chars()
            .any(|c| c.is_ascii_uppercase() || c.is_whitespace() || "\\/*?\"<>|,#:".contains(c));
    if bad {
        p.push(Problem::new(
            path,
            format!("`{index}` is not a valid index name"),
            "use lowercase letters, digits, `-`, `_` and `.`, not starting with `-`, `_` or `+`",
        ));
    }
}
