//! A test's config file, built with typed calls instead of YAML text:
//!
//! ```ignore
//! let path = context
//!     .config()
//!     .table("public.items")
//!     .backfill(true)
//!     .sink(
//!         context
//!             .sink(Cluster::Elasticsearch, "items", "public.items")
//!             .filter("in_stock = true")
//!             .mappings(json!({"properties": {"code": {"type": "long"}}})),
//!     )
//!     .consumer_port(port)
//!     .write()?;
//! ```
//!
//! The builder holds the document as a [`serde_json::Value`] and serialises it as YAML, so a
//! value never needs quoting or indenting by hand. The defaults are what every test wants: the
//! test's own database, slot, publication and topic prefix, 3 partitions, telemetry on free
//! ports, and sinks named `{group}.{name}` (so cleanup removes their groups and dead-letter
//! topics) writing to indices with the test's prefix. Tests of the parser itself, which need a
//! broken or unusual file, write their YAML as a literal with [`TestContext::write_config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Map, Value, json};

use crate::{Cluster, TestContext};

/// A config file being built; see the module docs.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    dir: PathBuf,
    postgres: Map<String, Value>,
    kafka: Map<String, Value>,
    tables: Vec<Map<String, Value>>,
    sinks: Vec<Sink>,
    producer: Map<String, Value>,
    telemetry: Map<String, Value>,
}

/// One entry of `sinks:`; made by [`TestContext::sink`] or [`TestContext::sink_at`].
#[derive(Debug, Clone)]
pub struct Sink {
    name: String,
    index_prefix: String,
    fields: Map<String, Value>,
    elasticsearch: Map<String, Value>,
}

impl TestContext {
    /// A config for this test with no tables and no sinks yet.
    pub fn config(&self) -> ConfigBuilder {
        ConfigBuilder {
            dir: self.config_dir(),
            postgres: object(json!({
                "url": self.postgres_url(),
                "slot": self.slot,
                "publication": self.publication,
            })),
            kafka: object(json!({
                "brokers": self.endpoints.kafka_brokers,
                "topic_prefix": self.topic_prefix,
                "partitions": 3,
            })),
            tables: Vec::new(),
            sinks: Vec::new(),
            producer: Map::new(),
            telemetry: object(json!({
                "producer_listen": "127.0.0.1:0",
                "consumer_listen": "127.0.0.1:0",
                "log_level": "info",
            })),
        }
    }

    /// A config capturing `public.{name}` with one sink, `name`, writing it into the index
    /// `name` on `cluster` (the shape most consumer tests need).
    pub fn sink_config(&self, cluster: Cluster, name: &str) -> ConfigBuilder {
        let table = format!("public.{name}");
        self.config()
            .table(&table)
            .sink(self.sink(cluster, name, &table))
    }

    /// A sink `{group}.{name}` writing `table` to the index `name` (prefixed) on `cluster`,
    /// with the cluster's credentials and CA, a short linger and short retry backoffs.
    pub fn sink(&self, cluster: Cluster, name: &str, table: &str) -> Sink {
        let endpoints = &self.endpoints;
        let (endpoint, auth, ca) = match cluster {
            Cluster::Elasticsearch => (
                endpoints.elasticsearch_url.clone(),
                endpoints
                    .elasticsearch_api_key
                    .as_ref()
                    .map(|key| json!({"type": "api_key", "value": key})),
                endpoints.elasticsearch_ca.as_deref(),
            ),
            Cluster::OpenSearch => (
                endpoints.opensearch_url.clone(),
                endpoints.opensearch_user.as_ref().map(|(user, password)| {
                    json!({"type": "basic", "username": user, "password": password})
                }),
                endpoints.opensearch_ca.as_deref(),
            ),
        };
        let mut sink = self.sink_at(&endpoint.unwrap_or_default(), name, table);
        if let Some(auth) = auth {
            sink.elasticsearch.insert("auth".to_owned(), auth);
        }
        match ca {
            Some(ca) => sink.ca_file(ca),
            None => sink,
        }
    }

    /// Like [`TestContext::sink`], on any `endpoint`, without credentials or CA.
    pub fn sink_at(&self, endpoint: &str, name: &str, table: &str) -> Sink {
        Sink {
            name: self.sink_name(name),
            index_prefix: self.index_prefix.clone(),
            fields: object(json!({"table": table})),
            elasticsearch: object(json!({
                "endpoint": endpoint,
                "index": self.index(name),
                "linger": "50ms",
                "retry_initial_backoff": "100ms",
                "retry_max_backoff": "2s",
            })),
        }
    }

    /// The name [`TestContext::sink`] gives the sink `name`: `{group}.{name}`.
    pub fn sink_name(&self, name: &str) -> String {
        format!("{}.{name}", self.group)
    }

    /// The directory of this test's config file and logs.
    pub fn config_dir(&self) -> PathBuf {
        std::env::temp_dir().join("sluice-tests").join(&self.id)
    }
}

impl ConfigBuilder {
    /// Captures `table` (`schema.table`).
    pub fn table(mut self, name: &str) -> Self {
        self.tables.push(object(json!({"name": name})));
        self
    }

    /// Whether the table added last is backfilled.
    ///
    /// # Panics
    /// When no table was added yet.
    #[allow(clippy::expect_used)] // a builder misused in a test
    pub fn backfill(mut self, backfill: bool) -> Self {
        let table = self
            .tables
            .last_mut()
            .expect("backfill() goes after the table() it is for");
        table.insert("backfill".to_owned(), json!(backfill));
        self
    }

    pub fn sink(mut self, sink: Sink) -> Self {
        self.sinks.push(sink);
        self
    }

    /// `postgres.url` (the test database's URL by default).
    pub fn postgres_url(mut self, url: &str) -> Self {
        self.postgres.insert("url".to_owned(), json!(url));
        self
    }

    /// The test database's URL with another password.
    pub fn postgres_password(self, password: &str) -> Self {
        let mut url = url::Url::parse(self.postgres["url"].as_str().unwrap_or_default())
            .unwrap_or_else(|error| panic!("the test's Postgres URL: {error}"));
        let _ = url.set_password(Some(password));
        self.postgres_url(url.as_str())
    }

    pub fn postgres_ca_file(mut self, path: &str) -> Self {
        self.postgres.insert("ca_file".to_owned(), json!(path));
        self
    }

    pub fn backfill_chunk_size(self, rows: u32) -> Self {
        self.producer_field("backfill_chunk_size", json!(rows))
    }

    pub fn backfill_chunk_bytes(self, bytes: u64) -> Self {
        self.producer_field("backfill_chunk_bytes", json!(bytes))
    }

    pub fn backfill_max_rows_per_second(self, rows: u32) -> Self {
        self.producer_field("backfill_max_rows_per_second", json!(rows))
    }

    pub fn status_interval(self, every: Duration) -> Self {
        self.producer_field("status_interval", duration(every))
    }

    pub fn heartbeat_interval(self, every: Duration) -> Self {
        self.producer_field("heartbeat_interval", duration(every))
    }

    /// The producer's endpoints on `127.0.0.1:port` (a free port by default).
    pub fn producer_port(mut self, port: u16) -> Self {
        self.telemetry
            .insert("producer_listen".to_owned(), listen(port));
        self
    }

    /// The consumer's endpoints on `127.0.0.1:port` (a free port by default).
    pub fn consumer_port(mut self, port: u16) -> Self {
        self.telemetry
            .insert("consumer_listen".to_owned(), listen(port));
        self
    }

    /// The consumer's endpoints on `address` (`host:port`, e.g. every address of the host).
    pub fn consumer_listen(mut self, address: &str) -> Self {
        self.telemetry
            .insert("consumer_listen".to_owned(), json!(address));
        self
    }

    /// `telemetry.console`, e.g. `json!({"token": "…"})`.
    pub fn console(mut self, console: Value) -> Self {
        self.telemetry.insert("console".to_owned(), console);
        self
    }

    /// Leaves both listen addresses out, so every process takes the defaults.
    pub fn default_listen(mut self) -> Self {
        self.telemetry.remove("producer_listen");
        self.telemetry.remove("consumer_listen");
        self
    }

    fn producer_field(mut self, key: &str, value: Value) -> Self {
        self.producer.insert(key.to_owned(), value);
        self
    }

    /// The whole document.
    pub fn value(&self) -> Value {
        let mut root = object(json!({
            "postgres": self.postgres,
            "kafka": self.kafka,
            "tables": self.tables,
            "telemetry": self.telemetry,
        }));
        if !self.sinks.is_empty() {
            root.insert(
                "sinks".to_owned(),
                self.sinks.iter().map(Sink::value).collect(),
            );
        }
        if !self.producer.is_empty() {
            root.insert("producer".to_owned(), Value::Object(self.producer.clone()));
        }
        Value::Object(root)
    }

    /// The document as YAML.
    ///
    /// # Panics
    /// When it cannot be serialised (a JSON value always can).
    pub fn yaml(&self) -> String {
        serde_saphyr::to_string(&self.value())
            .unwrap_or_else(|error| panic!("serialising the config: {error}"))
    }

    /// Writes the file (`sluice.yaml` in the test's directory, replacing an earlier one) and
    /// returns its path.
    pub fn write(&self) -> anyhow::Result<PathBuf> {
        write_file(&self.dir, &self.yaml())
    }

    /// Writes the file and loads it the way the binaries do (parsed and validated).
    pub fn load(&self) -> anyhow::Result<sluice_common::config::Config> {
        let path = self.write()?;
        sluice_common::config::load(&path).with_context(|| format!("loading\n{}", self.yaml()))
    }
}

impl Sink {
    /// The sink's name as the commands take it (`{group}.{name}`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another index (prefixed with the test's; a `{{ … }}` template works too).
    pub fn index(self, index: &str) -> Self {
        let index = format!("{}-{index}", self.index_prefix);
        self.es("index", json!(index))
    }

    pub fn filter(self, filter: &str) -> Self {
        self.field("filter", json!(filter))
    }

    pub fn transform(self, transform: &str) -> Self {
        self.field("transform", json!(transform))
    }

    /// The actions written (`insert`, `update`, `delete`, `read`: backfilled rows).
    pub fn actions(self, actions: &[&str]) -> Self {
        self.field("actions", json!(actions))
    }

    pub fn id_columns(self, columns: &[&str]) -> Self {
        self.field("id_columns", json!(columns))
    }

    pub fn unready_after(self, after: Duration) -> Self {
        self.field("unready_after", duration(after))
    }

    pub fn endpoint(self, endpoint: &str) -> Self {
        self.es("endpoint", json!(endpoint))
    }

    /// An `api_key` credential (the `encoded` value).
    pub fn api_key(self, key: &str) -> Self {
        self.es("auth", json!({"type": "api_key", "value": key}))
    }

    pub fn basic_auth(self, username: &str, password: &str) -> Self {
        self.es(
            "auth",
            json!({"type": "basic", "username": username, "password": password}),
        )
    }

    pub fn bearer(self, token: &str) -> Self {
        self.es("auth", json!({"type": "bearer", "token": token}))
    }

    /// No credentials at all.
    pub fn no_auth(mut self) -> Self {
        self.elasticsearch.remove("auth");
        self
    }

    pub fn ca_file(self, path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().display().to_string();
        self.es("ca_file", json!(path))
    }

    pub fn verify_hostname(self, verify: bool) -> Self {
        self.es("verify_hostname", json!(verify))
    }

    /// The index settings the sink creates the index with.
    pub fn settings(self, settings: Value) -> Self {
        self.es("settings", settings)
    }

    /// The index mappings the sink creates the index with.
    pub fn mappings(self, mappings: Value) -> Self {
        self.es("mappings", mappings)
    }

    pub fn batch_size(self, documents: usize) -> Self {
        self.es("batch_size", json!(documents))
    }

    pub fn max_in_flight_requests(self, requests: usize) -> Self {
        self.es("max_in_flight_requests", json!(requests))
    }

    pub fn request_timeout(self, timeout: Duration) -> Self {
        self.es("request_timeout", duration(timeout))
    }

    pub fn retry_max_backoff(self, backoff: Duration) -> Self {
        self.es("retry_max_backoff", duration(backoff))
    }

    pub fn gzip(self, gzip: bool) -> Self {
        self.es("gzip", json!(gzip))
    }

    fn field(mut self, key: &str, value: Value) -> Self {
        self.fields.insert(key.to_owned(), value);
        self
    }

    fn es(mut self, key: &str, value: Value) -> Self {
        self.elasticsearch.insert(key.to_owned(), value);
        self
    }

    fn value(&self) -> Value {
        let mut sink = self.fields.clone();
        sink.insert("name".to_owned(), json!(self.name));
        sink.insert(
            "elasticsearch".to_owned(),
            Value::Object(self.elasticsearch.clone()),
        );
        Value::Object(sink)
    }

    /// The `elasticsearch:` section as the consumer reads it, for tests of its client.
    pub fn elasticsearch_config(
        &self,
    ) -> anyhow::Result<sluice_common::config::ElasticsearchConfig> {
        serde_json::from_value(Value::Object(self.elasticsearch.clone()))
            .context("the sink's elasticsearch section")
    }
}

/// Writes `yaml` as `sluice.yaml` in `dir` (made when missing); the file's path.
pub(crate) fn write_file(dir: &Path, yaml: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("sluice.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path)
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn listen(port: u16) -> Value {
    json!(format!("127.0.0.1:{port}"))
}

/// A duration as the config writes it (`250ms`, `3s`).
fn duration(duration: Duration) -> Value {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        json!(format!("{}s", millis / 1000))
    } else {
        json!(format!("{millis}ms"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Endpoints;

    fn context() -> TestContext {
        TestContext::offline(Endpoints {
            postgres_url: "postgres://sluice:sluice@127.0.0.1:15432/postgres".to_owned(),
            postgres_ca: None,
            postgres_bindir: None,
            kafka_brokers: "127.0.0.1:19092".to_owned(),
            opensearch_url: Some("http://127.0.0.1:9200".to_owned()),
            opensearch_user: None,
            opensearch_ca: None,
            elasticsearch_url: Some("http://127.0.0.1:9210".to_owned()),
            elasticsearch_api_key: Some("a2V5OnNlY3JldA==".to_owned()),
            elasticsearch_ca: None,
            elasticsearch_instance: "elasticsearch".to_owned(),
            opensearch_instance: "opensearch".to_owned(),
        })
    }

    /// What the builder writes is what the binaries read: every setting arrives in its field.
    #[test]
    fn the_written_file_loads_with_every_setting() {
        use sluice_common::config::{Auth, JsonSource};
        let context = context();
        let config = context
            .config()
            .table("public.items")
            .backfill(true)
            .table("public.other")
            .backfill_chunk_size(100)
            .backfill_max_rows_per_second(400)
            .status_interval(Duration::from_secs(1))
            .heartbeat_interval(Duration::from_millis(1500))
            .consumer_port(9999)
            .postgres_password("wrong: #1")
            .sink(
                context
                    .sink(Cluster::Elasticsearch, "items", "public.items")
                    .index("orders-{{ record.tenant }}")
                    .filter("in_stock = true")
                    .transform("{ \"name\": .record.name }\n")
                    .actions(&["insert", "delete"])
                    .id_columns(&["sku"])
                    .unready_after(Duration::from_secs(3))
                    .mappings(json!({"properties": {"code": {"type": "long"}}}))
                    .batch_size(200),
            )
            .sink(
                context
                    .sink(Cluster::OpenSearch, "other", "public.other")
                    .basic_auth("admin", "p: w\"d"),
            )
            .load()
            .unwrap();
        assert_eq!(config.tables.len(), 2);
        assert!(config.tables[0].backfill);
        assert!(!config.tables[1].backfill);
        assert_eq!(config.producer.backfill_chunk_size, 100);
        assert_eq!(config.producer.backfill_max_rows_per_second, Some(400));
        assert_eq!(
            config.producer.heartbeat_interval.get(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            config.telemetry.consumer_listen.unwrap().to_string(),
            "127.0.0.1:9999"
        );
        assert!(
            config
                .postgres
                .url
                .expose()
                .contains(":wrong%3A%20%231@127.0.0.1"),
            "{:?}",
            config.postgres.url
        );
        let items = &config.sinks[0];
        assert_eq!(items.name, context.sink_name("items"));
        assert_eq!(
            items.elasticsearch.index,
            context.index("orders-{{ record.tenant }}")
        );
        assert_eq!(items.filter.as_deref(), Some("in_stock = true"));
        assert_eq!(
            items.transform.as_deref(),
            Some("{ \"name\": .record.name }\n")
        );
        assert_eq!(items.id_columns, Some(vec!["sku".to_owned()]));
        assert_eq!(items.elasticsearch.batch_size, 200);
        assert!(
            matches!(&items.elasticsearch.auth, Auth::ApiKey { value } if value.expose() == "a2V5OnNlY3JldA==")
        );
        assert!(matches!(
            &items.elasticsearch.mappings,
            Some(JsonSource::Inline(m)) if m["properties"]["code"]["type"] == "long"
        ));
        assert!(matches!(
            &config.sinks[1].elasticsearch.auth,
            Auth::Basic { username, password } if username == "admin" && password.expose() == "p: w\"d"
        ));
        let _ = std::fs::remove_dir_all(context.config_dir());
    }

    #[test]
    fn default_listen_leaves_the_addresses_out() {
        let yaml = context()
            .config()
            .table("public.items")
            .default_listen()
            .yaml();
        assert!(!yaml.contains("_listen"), "{yaml}");
    }
}
