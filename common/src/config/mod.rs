//! The one configuration file both processes read.
//!
//! Loading goes in three steps, all before any connection is made:
//! 1. [`load`] parses the YAML and substitutes `${ENV_VAR}` references in string values;
//! 2. serde builds the typed [`Config`] (unknown keys are errors, every field has a path);
//! 3. [`Config::validate`] checks what types cannot (ranges, names, references between
//!    sections) and reports every problem at once, each with its field path and the fix.
//!
//! Every field is documented for users in `docs/configuration.md`; keep the two in step.

mod args;
mod duration;
mod env;
mod load;
mod secret;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use args::GlobalArgs;
pub use duration::HumanDuration;
pub use load::{ConfigError, Problem, load, load_str};
pub use secret::{Secret, redact_url};

/// Default replication slot and publication name.
pub const DEFAULT_SLOT: &str = "sluice";
pub const DEFAULT_PUBLICATION: &str = "sluice";
pub const DEFAULT_TOPIC_PREFIX: &str = "sluice";
pub const DEFAULT_PARTITIONS: i32 = 6;
pub const DEFAULT_STATUS_INTERVAL: HumanDuration = HumanDuration::from_secs(10);
pub const DEFAULT_HEARTBEAT_INTERVAL: HumanDuration = HumanDuration::from_secs(30);
pub const DEFAULT_MAX_IN_FLIGHT_MESSAGES: usize = 20_000;
pub const DEFAULT_BACKFILL_CHUNK_SIZE: u32 = 10_000;
/// Default memory of one backfill chunk's rows (2 MiB).
pub const DEFAULT_BACKFILL_CHUNK_BYTES: u64 = 2 * 1024 * 1024;
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Elasticsearch refuses bulk requests far above this; 10,000 documents is the cap we allow.
pub const MAX_BATCH_SIZE: usize = 10_000;
pub const DEFAULT_BATCH_MAX_BYTES: usize = 5 * 1024 * 1024;
pub const DEFAULT_LINGER: HumanDuration = HumanDuration::from_millis(100);
pub const DEFAULT_MAX_IN_FLIGHT_REQUESTS: usize = 4;
pub const DEFAULT_REQUEST_TIMEOUT: HumanDuration = HumanDuration::from_secs(30);
pub const DEFAULT_RETRY_INITIAL_BACKOFF: HumanDuration = HumanDuration::from_millis(200);
pub const DEFAULT_RETRY_MAX_BACKOFF: HumanDuration = HumanDuration::from_secs(30);
pub const DEFAULT_TRANSFORM_TIMEOUT: HumanDuration = HumanDuration::from_millis(100);
pub const DEFAULT_UNREADY_AFTER: HumanDuration = HumanDuration::from_secs(300);

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The source database.
    pub postgres: PostgresConfig,
    /// The Kafka cluster between producer and consumers.
    pub kafka: KafkaConfig,
    /// The tables to capture.
    pub tables: Vec<TableConfig>,
    /// Where the consumer writes documents.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Producer tuning.
    #[serde(default)]
    pub producer: ProducerConfig,
    /// Logs, metrics and health endpoints.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?sslmode=…`; may hold a password, so secret.
    pub url: Secret,
    /// Replication slot name (lowercase letters, digits, underscores; at most 63).
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication name.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// CA certificate (PEM) to verify the server with `sslmode=verify-ca|verify-full`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topics are `{topic_prefix}.{schema}.{table}`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Partitions of the topics the producer creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of created topics; the broker's default when unset.
    #[serde(default)]
    pub replication_factor: Option<i16>,
    /// `compact` (default: a replay yields the latest state of every row) or `delete`.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,
    /// With `cleanup_policy: delete`, how long messages are kept.
    #[serde(default)]
    pub retention: Option<HumanDuration>,
    /// Producer compression codec.
    #[serde(default)]
    pub compression: Compression,
    /// TLS and SASL.
    #[serde(default)]
    pub security: KafkaSecurity,
    /// Extra librdkafka properties for every client, for what this file does not model.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupPolicy {
    #[default]
    Compact,
    Delete,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub protocol: KafkaProtocol,
    /// SASL credentials, required by the `sasl_*` protocols.
    #[serde(default)]
    pub sasl: Option<KafkaSasl>,
    /// CA certificate (PEM) for TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `plain`, `scram-sha-256` or `scram-sha-512`.
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "plain")]
    Plain,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `schema.table`, as stored in the catalog (case-sensitive, unquoted).
    pub name: String,
    /// Read every existing row once (as READ events) when the table is first captured.
    #[serde(default)]
    pub backfill: bool,
    /// Key columns for a table without a primary key (needs `REPLICA IDENTITY FULL`).
    #[serde(default)]
    pub key: Option<Vec<String>>,
}

impl TableConfig {
    /// `(schema, table)`; only meaningful after validation.
    pub fn schema_and_table(&self) -> (&str, &str) {
        self.name
            .split_once('.')
            .unwrap_or(("", self.name.as_str()))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// How often the confirmed LSN is reported to Postgres.
    #[serde(default = "default_status_interval")]
    pub status_interval: HumanDuration,
    /// How often an idle database gets a heartbeat message so the slot keeps advancing.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: HumanDuration,
    /// Messages sent to Kafka but not acknowledged yet; reading the WAL pauses at this many.
    #[serde(default = "default_max_in_flight_messages")]
    pub max_in_flight_messages: usize,
    /// Rows per backfill chunk, at most.
    #[serde(default = "default_backfill_chunk_size")]
    pub backfill_chunk_size: u32,
    /// About how much memory one chunk's rows take: chunks hold as many rows as fit, at the size
    /// of the rows read before, up to `backfill_chunk_size`.
    #[serde(default = "default_backfill_chunk_bytes")]
    pub backfill_chunk_bytes: u64,
    /// Upper bound on backfilled rows per second, all tables together; unlimited when unset.
    #[serde(default)]
    pub backfill_max_rows_per_second: Option<u32>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            status_interval: DEFAULT_STATUS_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            max_in_flight_messages: DEFAULT_MAX_IN_FLIGHT_MESSAGES,
            backfill_chunk_size: DEFAULT_BACKFILL_CHUNK_SIZE,
            backfill_chunk_bytes: DEFAULT_BACKFILL_CHUNK_BYTES,
            backfill_max_rows_per_second: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Insert,
    Update,
    Delete,
    Read,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Unique name; also the consumer group id and the prefix of the dead-letter topic.
    pub name: String,
    /// The table (`schema.table`, declared under `tables`) whose topic this sink reads.
    pub table: String,
    /// Which changes to write; all four by default.
    #[serde(default = "default_actions")]
    pub actions: Vec<Action>,
    /// A VRL boolean expression; events for which it is false are skipped.
    #[serde(default)]
    pub filter: Option<String>,
    /// A VRL program returning the document; the record as is when unset.
    #[serde(default)]
    pub transform: Option<String>,
    /// Longest a filter or transform may run for one event.
    #[serde(default = "default_transform_timeout")]
    pub transform_timeout: HumanDuration,
    /// Columns that make the document `_id` (default: the primary key).
    #[serde(default)]
    pub id_columns: Option<Vec<String>>,
    /// Do not delete documents when the table is truncated.
    #[serde(default)]
    pub ignore_truncate: bool,
    /// Dead-letter topic; `{name}.dlq` when unset.
    #[serde(default)]
    pub dlq_topic: Option<String>,
    /// `/readyz` fails when no bulk succeeded for this long while there is lag.
    #[serde(default = "default_unready_after")]
    pub unready_after: HumanDuration,
    /// The Elasticsearch or OpenSearch cluster.
    pub elasticsearch: ElasticsearchConfig,
}

impl SinkConfig {
    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.name))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// `http(s)://host:port`.
    pub endpoint: String,
    /// Index or alias; may be a template such as `orders-{{ record.tenant_id }}`.
    pub index: String,
    /// How to authenticate.
    #[serde(default)]
    pub auth: Auth,
    /// CA certificate (PEM) to verify the cluster's TLS certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Whether the cluster's certificate must name the endpoint's host. `false` still checks
    /// that it is signed by a trusted CA (and warns once).
    #[serde(default = "default_true")]
    pub verify_hostname: bool,
    /// Documents per bulk request (1 to 10,000).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Bytes per bulk request (before compression).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// How long a partial batch waits for more documents.
    #[serde(default = "default_linger")]
    pub linger: HumanDuration,
    /// Bulk requests in flight at once.
    #[serde(default = "default_max_in_flight_requests")]
    pub max_in_flight_requests: usize,
    /// Timeout of one request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Gzip request bodies: off by default, since compressing costs CPU on both ends and pays
    /// only on a slow or metered link (docs/decisions.md).
    #[serde(default)]
    pub gzip: bool,
    /// Retry backoff for 429, 5xx and timeouts: starts here, doubles, with jitter.
    #[serde(default = "default_retry_initial_backoff")]
    pub retry_initial_backoff: HumanDuration,
    /// ...and never waits longer than this between attempts.
    #[serde(default = "default_retry_max_backoff")]
    pub retry_max_backoff: HumanDuration,
    /// Index settings used when the sink creates the index: inline JSON/YAML or `{ file: path }`.
    #[serde(default)]
    pub settings: Option<JsonSource>,
    /// Index mappings used when the sink creates the index: inline JSON/YAML or `{ file: path }`.
    #[serde(default)]
    pub mappings: Option<JsonSource>,
}

/// A JSON document given inline or read from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum JsonSource {
    File {
        /// Path of a JSON file.
        file: PathBuf,
    },
    Inline(serde_json::Map<String, serde_json::Value>),
}

/// Authentication against Elasticsearch or OpenSearch.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    /// The `encoded` value of an Elasticsearch API key (base64 of `id:api_key`).
    ApiKey {
        value: Secret,
    },
    Bearer {
        token: Secret,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `human` (default) or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// A `tracing` filter: `info`, `sluice_producer=debug,info`, …
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Address of the producer's `/metrics`, `/healthz` and `/readyz`. Unset: `0.0.0.0:9600`,
    /// or the next free port when another process on the host has it.
    #[serde(default)]
    pub producer_listen: Option<SocketAddr>,
    /// Address of the consumer's `/metrics`, `/healthz` and `/readyz`. Unset: `0.0.0.0:9601`,
    /// or the next free port when another process on the host has it.
    #[serde(default)]
    pub consumer_listen: Option<SocketAddr>,
    /// The consumer's web console under `/console` of `consumer_listen`.
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// `telemetry.console`: the consumer's web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve `/console` (default `true`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The bearer token the console's actions (redrive) require. Unset: the console is
    /// read-only and every action is refused.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Answer the console to clients on other hosts too. Default `false`: only loopback
    /// clients (the host itself, an SSH tunnel, `kubectl port-forward`) see it, whatever
    /// address `consumer_listen` binds for Prometheus.
    #[serde(default)]
    pub remote: bool,
}

/// The shortest console token accepted: long enough not to be guessed over HTTP.
pub const CONSOLE_TOKEN_MIN_LEN: usize = 16;

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
            remote: false,
        }
    }
}

/// Where a process serves its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// Set by the user (file, `--listen`, `SLUICE_LISTEN`): a busy address is an error. The
    /// default address gives way to the next free port instead, so several processes can run
    /// on one host with the same config.
    pub explicit: bool,
}

/// Which process is loading the config (each has its own listen address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    Producer,
    Consumer,
}

/// The default ports: the producer's and the consumer's.
pub const DEFAULT_PRODUCER_PORT: u16 = 9600;
pub const DEFAULT_CONSUMER_PORT: u16 = 9601;

impl TelemetryConfig {
    /// Where `process` serves `/metrics`, `/healthz`, `/readyz` and `/status`.
    pub fn listen(&self, process: Process) -> Listen {
        let (set, port) = match process {
            Process::Producer => (self.producer_listen, DEFAULT_PRODUCER_PORT),
            Process::Consumer => (self.consumer_listen, DEFAULT_CONSUMER_PORT),
        };
        match set {
            Some(addr) => Listen {
                addr,
                explicit: true,
            },
            None => Listen {
                addr: SocketAddr::from(([0, 0, 0, 0], port)),
                explicit: false,
            },
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::default(),
            log_level: default_log_level(),
            producer_listen: None,
            consumer_listen: None,
            console: ConsoleConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}`: use `human` or `json`"
            )),
        }
    }
}

impl Config {
    pub fn table(&self, name: &str) -> Option<&TableConfig> {
        self.tables.iter().find(|t| t.name == name)
    }

    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// The Kafka topic of a `schema.table`.
    pub fn topic_for(&self, table: &str) -> String {
        format!("{}.{}", self.kafka.topic_prefix, table)
    }
}

fn default_slot() -> String {
    DEFAULT_SLOT.to_owned()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.to_owned()
}
fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_owned()
}
fn default_partitions() -> i32 {
    DEFAULT_PARTITIONS
}
fn default_status_interval() -> HumanDuration {
    DEFAULT_STATUS_INTERVAL
}
fn default_heartbeat_interval() -> HumanDuration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_max_in_flight_messages() -> usize {
    DEFAULT_MAX_IN_FLIGHT_MESSAGES
}
fn default_backfill_chunk_size() -> u32 {
    DEFAULT_BACKFILL_CHUNK_SIZE
}
fn default_backfill_chunk_bytes() -> u64 {
    DEFAULT_BACKFILL_CHUNK_BYTES
}
fn default_actions() -> Vec<Action> {
    vec![Action::Insert, Action::Update, Action::Delete, Action::Read]
}
fn default_transform_timeout() -> HumanDuration {
    DEFAULT_TRANSFORM_TIMEOUT
}
fn default_unready_after() -> HumanDuration {
    DEFAULT_UNREADY_AFTER
}
fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_batch_max_bytes() -> usize {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_linger() -> HumanDuration {
    DEFAULT_LINGER
}
fn default_max_in_flight_requests() -> usize {
    DEFAULT_MAX_IN_FLIGHT_REQUESTS
}
fn default_request_timeout() -> HumanDuration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_retry_initial_backoff() -> HumanDuration {
    DEFAULT_RETRY_INITIAL_BACKOFF
}
fn default_retry_max_backoff() -> HumanDuration {
    DEFAULT_RETRY_MAX_BACKOFF
}
fn default_true() -> bool {
    true
}
fn default_log_level() -> String {
    "info".to_owned()
}

#[cfg(test)]
mod tests;

impl KafkaConfig {
    /// librdkafka properties for the connection and security settings, shared by every client
    /// (the producer's and the consumer's own tuning comes on top). `options` come last, so they
    /// override.
    pub fn client_properties(&self) -> Vec<(String, String)> {
        let mut props = vec![("bootstrap.servers".to_owned(), self.brokers.clone())];
        let protocol = match self.security.protocol {
            KafkaProtocol::Plaintext => "plaintext",
            KafkaProtocol::Ssl => "ssl",
            KafkaProtocol::SaslPlaintext => "sasl_plaintext",
            KafkaProtocol::SaslSsl => "sasl_ssl",
        };
        props.push(("security.protocol".to_owned(), protocol.to_owned()));
        if let Some(sasl) = &self.security.sasl {
            let mechanism = match sasl.mechanism {
                SaslMechanism::Plain => "PLAIN",
                SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            };
            props.push(("sasl.mechanism".to_owned(), mechanism.to_owned()));
            props.push(("sasl.username".to_owned(), sasl.username.clone()));
            props.push((
                "sasl.password".to_owned(),
                sasl.password.expose().to_owned(),
            ));
        }
        if let Some(ca) = &self.security.ca_file {
            props.push(("ssl.ca.location".to_owned(), ca.display().to_string()));
        }
        for (key, value) in &self.options {
            props.push((key.clone(), value.clone()));
        }
        props
    }

    /// The librdkafka name of the compression codec.
    pub fn compression_codec(&self) -> &'static str {
        match self.compression {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}
