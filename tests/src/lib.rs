//! The end-to-end test harness.
//!
//! Endpoints come from the `SLUICE_TEST_*` variables that `deploy/local/up.sh` prints (the test
//! command `deploy/local/test.sh` exports them). Every test takes a [`TestContext`], which gives it
//! its own database, replication slot, publication, topic prefix, consumer group and index names,
//! so tests run in parallel and never share state; dropping the context removes all of them.
//!
//! A test builds its config with [`TestContext::config`] ([`config`]), runs the binaries
//! ([`process`]) or the producer and consumer in this process ([`pipeline`]), and checks what a
//! user would: the topic and the offsets ([`kafka`]), the index ([`cluster`]), the slot's
//! confirmed LSN (here). docs/development.md shows how.

pub mod cluster;
pub mod config;
pub mod fold;
pub mod kafka;
pub mod pipeline;
pub mod process;
pub mod proxy;
pub mod traffic;

pub use cluster::{Cluster, Doc};
pub use config::{ConfigBuilder, Sink};
pub use kafka::{RawRecord, Record};
pub use pipeline::Pipeline;
pub use process::{Process, StoppedService, binary, free_port, json_report, run_command, service};

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Where the real services are.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// A superuser URL (`postgres://sluice:sluice@127.0.0.1:PORT/postgres`).
    pub postgres_url: String,
    /// PEM certificate of the server (it is its own CA).
    pub postgres_ca: Option<String>,
    /// Directory of the Postgres client binaries (pg_recvlogical, …).
    pub postgres_bindir: Option<String>,
    pub kafka_brokers: String,
    /// OpenSearch and Elasticsearch are optional for tests that do not index (the producer's).
    /// Which instance of each the tests use is chosen by `SLUICE_TEST_ELASTICSEARCH_INSTANCE`
    /// and `SLUICE_TEST_OPENSEARCH_INSTANCE` (see [`Endpoints::from_env`]).
    pub opensearch_url: Option<String>,
    /// Basic credentials of OpenSearch, when it runs with its security plugin.
    pub opensearch_user: Option<(String, String)>,
    /// PEM file of the CA that signed OpenSearch's certificate (HTTPS instances).
    pub opensearch_ca: Option<String>,
    pub elasticsearch_url: Option<String>,
    /// The `encoded` value of an API key allowed to manage every index.
    pub elasticsearch_api_key: Option<String>,
    /// PEM file of the CA that signed Elasticsearch's certificate (HTTPS instances).
    pub elasticsearch_ca: Option<String>,
    /// The instances chosen (`elasticsearch`, `elasticsearch8`, `opensearch`, `opensearch3`).
    pub elasticsearch_instance: String,
    pub opensearch_instance: String,
}

impl Endpoints {
    /// Reads the `SLUICE_TEST_*` variables, failing with how to get them.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!(
                    "{name} is not set: run the tests with deploy/local/test.sh, or \
                     `eval \"$(deploy/local/up.sh)\"` first (it starts the real services)"
                )
            })
        };
        // The same tests run against each instance of a kind: `elasticsearch8` reads
        // SLUICE_TEST_ELASTICSEARCH8_URL, …; an instance asked for must be running.
        let instance = |kind: &str| {
            std::env::var(format!("SLUICE_TEST_{}_INSTANCE", kind.to_uppercase()))
                .unwrap_or_else(|_| kind.to_owned())
        };
        let elasticsearch = instance("elasticsearch");
        let opensearch = instance("opensearch");
        let of = |instance: &str, what: &str| -> anyhow::Result<Option<String>> {
            let name = format!("SLUICE_TEST_{}_{what}", instance.to_uppercase());
            match std::env::var(&name) {
                Ok(value) => Ok(Some(value)),
                Err(_) if what == "URL" && !matches!(instance, "elasticsearch" | "opensearch") => {
                    bail!(
                        "{name} is not set but the tests were asked to use {instance}: start it \
                         with `eval \"$(deploy/local/up.sh {instance})\"`"
                    )
                }
                Err(_) => Ok(None),
            }
        };
        Ok(Self {
            postgres_url: var("SLUICE_TEST_PG_URL")?,
            postgres_ca: std::env::var("SLUICE_TEST_PG_CA").ok(),
            postgres_bindir: std::env::var("SLUICE_TEST_PG_BINDIR").ok(),
            kafka_brokers: var("SLUICE_TEST_KAFKA_BROKERS")?,
            opensearch_url: of(&opensearch, "URL")?,
            opensearch_user: match (of(&opensearch, "USER")?, of(&opensearch, "PASSWORD")?) {
                (Some(user), Some(password)) => Some((user, password)),
                _ => None,
            },
            opensearch_ca: of(&opensearch, "CA")?,
            elasticsearch_url: of(&elasticsearch, "URL")?,
            elasticsearch_api_key: of(&elasticsearch, "API_KEY")?,
            elasticsearch_ca: of(&elasticsearch, "CA")?,
            elasticsearch_instance: elasticsearch,
            opensearch_instance: opensearch,
        })
    }

    /// [`Endpoints::from_env`], panicking with the message (for tests).
    pub fn get() -> Self {
        match Self::from_env() {
            Ok(endpoints) => endpoints,
            Err(error) => panic!("{error:#}"),
        }
    }
}

/// Names and connections owned by one test.
#[derive(Debug, Clone)]
pub struct TestContext {
    pub endpoints: Endpoints,
    /// Unique per test: `{test}_{pid}_{n}`, lowercase, safe for every service's names.
    pub id: String,
    pub database: String,
    pub slot: String,
    pub publication: String,
    pub topic_prefix: String,
    pub group: String,
    pub index_prefix: String,
    cleaned: bool,
}

impl TestContext {
    /// Creates the test's database and reserves its names.
    pub async fn new(test: &str) -> anyhow::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // Logs of the in-process producer and consumer, shown with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .try_init();
        let endpoints = Endpoints::from_env()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let test: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(24)
            .collect();
        let id = format!("{test}_{}_{n}_{:x}", std::process::id(), nanos & 0xffff);
        let context = Self {
            database: format!("t_{id}"),
            slot: format!("s_{id}"),
            publication: format!("p_{id}"),
            topic_prefix: format!("t.{id}"),
            group: format!("g.{id}"),
            index_prefix: format!("i-{}", id.replace('_', "-")),
            id,
            endpoints,
            cleaned: false,
        };
        let admin = context.admin_postgres().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{}\"", context.database))
            .await?;
        Ok(context)
    }

    /// A context with these endpoints that creates nothing and removes nothing (for unit tests
    /// of the harness).
    #[cfg(test)]
    pub(crate) fn offline(endpoints: Endpoints) -> Self {
        Self {
            id: format!("offline_{}", std::process::id()),
            database: "t_offline".to_owned(),
            slot: "s_offline".to_owned(),
            publication: "p_offline".to_owned(),
            topic_prefix: "t.offline".to_owned(),
            group: "g.offline".to_owned(),
            index_prefix: "i-offline".to_owned(),
            endpoints,
            cleaned: true,
        }
    }

    /// URL of this test's own database, as the superuser.
    pub fn postgres_url(&self) -> String {
        with_database(&self.endpoints.postgres_url, &self.database)
    }

    /// A connection to this test's database.
    pub async fn postgres(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.postgres_url()).await
    }

    /// A connection to the server's `postgres` database, for administration.
    pub async fn admin_postgres(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.endpoints.postgres_url).await
    }

    pub fn kafka_admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(self.kafka_config().create()?)
    }

    /// A client config pointing at the test broker.
    pub fn kafka_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.endpoints.kafka_brokers)
            .set("enable.metrics.push", "false");
        config
    }

    /// An index name of this test.
    pub fn index(&self, name: &str) -> String {
        format!("{}-{name}", self.index_prefix)
    }

    /// Removes everything this test made. Also runs (best effort) when the context is dropped,
    /// so a failing test cleans up too.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        cleanup(&self).await
    }
}

impl Drop for TestContext {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // Drop cannot be async and may run inside a runtime: clean up on a thread of its own.
        let mut context = self.clone();
        context.cleaned = true;
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Err(error) = runtime.block_on(cleanup(&context)) {
                eprintln!("cleanup of test {} failed: {error:#}", context.id);
            }
        })
        .join();
    }
}

async fn cleanup(context: &TestContext) -> anyhow::Result<()> {
    let mut failures = Vec::new();

    // Postgres: slots pin the database, so end their readers and drop them first.
    match context.admin_postgres().await {
        Ok(admin) => {
            let steps = [
                format!(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                     WHERE database = '{0}' AND active_pid IS NOT NULL",
                    context.database
                ),
                format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE database = '{0}'",
                    context.database
                ),
                format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    context.database
                ),
            ];
            for step in steps {
                // A terminated walsender releases its slot a moment later: retry briefly.
                let mut attempt = 0;
                loop {
                    match admin.batch_execute(&step).await {
                        Ok(()) => break,
                        Err(_) if attempt < 20 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(error) => {
                            failures.push(format!("{step}: {error}"));
                            break;
                        }
                    }
                }
            }
        }
        Err(error) => failures.push(format!("postgres: {error:#}")),
    }

    // Kafka: every topic with the test's prefix, and its consumer groups.
    if let Err(error) = delete_topics(context).await {
        failures.push(format!("kafka: {error:#}"));
    }

    // Indices with the test's prefix on both clusters (aliases go with their indices).
    let pattern = format!("{}-*", context.index_prefix);
    for (client, base) in cluster::configured(&context.endpoints) {
        // Index templates the test's sinks installed (`sluice-{sink}`).
        let templates = format!("{base}/_index_template/sluice-{}*", context.group);
        if let Err(error) = client.delete(&templates).send().await {
            failures.push(format!("DELETE {templates}: {error}"));
        }
        let url = format!("{base}/{pattern}?expand_wildcards=all&ignore_unavailable=true");
        match client.delete(&url).send().await {
            Ok(response) if response.status().is_success() || response.status() == 404 => {}
            Ok(response) => failures.push(format!("DELETE {url}: {}", response.status())),
            Err(error) => failures.push(format!("DELETE {url}: {error}")),
        }
    }

    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

async fn delete_topics(context: &TestContext) -> anyhow::Result<()> {
    // One admin client for everything (see `topics_and_groups`).
    let admin = std::sync::Arc::new(context.kafka_admin()?);
    let (topics, groups) = context.topics_and_groups(admin.clone()).await?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if !topics.is_empty() {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        admin.delete_topics(&names, &options).await?;
    }
    if !groups.is_empty() {
        let names: Vec<&str> = groups.iter().map(String::as_str).collect();
        admin.delete_groups(&names, &options).await?;
    }
    Ok(())
}

/// Connects with tokio-postgres, driving the connection on a task.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", sluice_common::config::redact_url(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// `url` with its database replaced.
pub fn with_database(url: &str, database: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            parsed.set_path(database);
            parsed.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_error {
                Some(error) => {
                    bail!("{what}: not reached within {timeout:?}; last error: {error:#}")
                }
                None => bail!("{what}: not reached within {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl TestContext {
    /// Writes `yaml` to this test's config file and returns its path: for tests that need a
    /// broken or unusual file (the others build theirs with [`TestContext::config`]).
    pub fn write_config(&self, yaml: &str) -> anyhow::Result<std::path::PathBuf> {
        config::write_file(&self.config_dir(), yaml)
    }

    pub fn topic(&self, table: &str) -> String {
        format!("{}.{table}", self.topic_prefix)
    }

    /// The slot's `confirmed_flush_lsn` (0 when the slot does not exist).
    pub async fn confirmed_lsn(&self) -> anyhow::Result<u64> {
        let admin = self.admin_postgres().await?;
        let row = admin
            .query_opt(
                "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await?;
        Ok(row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map_or(0, |v| v as u64))
    }

    /// Waits until the test's slot exists with a confirmed LSN, i.e. a producer has set up and
    /// is about to stream (changes written from now on are captured); returns that LSN.
    pub async fn wait_for_slot(&self, timeout: Duration) -> anyhow::Result<u64> {
        eventually(
            timeout,
            "the producer created its replication slot",
            || async {
                let lsn = self.confirmed_lsn().await?;
                Ok((lsn > 0).then_some(lsn))
            },
        )
        .await
    }

    /// Waits until the slot's confirmed LSN is at least `lsn`; returns it.
    pub async fn wait_confirmed(&self, lsn: u64, timeout: Duration) -> anyhow::Result<u64> {
        let wanted = sluice_producer::stats::format_lsn(lsn);
        eventually(
            timeout,
            &format!("the slot confirmed LSN {wanted}"),
            || async {
                let confirmed = self.confirmed_lsn().await?;
                Ok((confirmed >= lsn).then_some(confirmed))
            },
        )
        .await
    }

    /// True while a walsender holds the test's slot (a producer is streaming).
    pub async fn slot_active(&self) -> anyhow::Result<bool> {
        let admin = self.admin_postgres().await?;
        let row = admin
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    }

    /// The server's current WAL position.
    pub async fn current_lsn(&self) -> anyhow::Result<u64> {
        let admin = self.admin_postgres().await?;
        let row = admin
            .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}
