//! The end-to-end test harness.
//!
//! Endpoints come from the `SLUICE_TEST_*` variables that `deploy/local/up.sh` prints (the test
//! command `deploy/local/test.sh` exports them). Every test takes a [`TestContext`], which gives it
//! its own database, replication slot, publication, topic prefix, consumer group and index names,
//! so tests run in parallel and never share state; dropping the context removes all of them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

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
    pub opensearch_url: String,
    pub elasticsearch_url: String,
    /// The `encoded` value of an API key allowed to manage every index.
    pub elasticsearch_api_key: String,
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
        Ok(Self {
            postgres_url: var("SLUICE_TEST_PG_URL")?,
            postgres_ca: std::env::var("SLUICE_TEST_PG_CA").ok(),
            postgres_bindir: std::env::var("SLUICE_TEST_PG_BINDIR").ok(),
            kafka_brokers: var("SLUICE_TEST_KAFKA_BROKERS")?,
            opensearch_url: var("SLUICE_TEST_OPENSEARCH_URL")?,
            elasticsearch_url: var("SLUICE_TEST_ELASTICSEARCH_URL")?,
            elasticsearch_api_key: var("SLUICE_TEST_ELASTICSEARCH_API_KEY")?,
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
        config.set("bootstrap.servers", &self.endpoints.kafka_brokers);
        config
    }

    /// An index name of this test.
    pub fn index(&self, name: &str) -> String {
        format!("{}-{name}", self.index_prefix)
    }

    /// An HTTP client for Elasticsearch with the test API key, and the base URL.
    pub fn elasticsearch(&self) -> (reqwest::Client, String) {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(value) = format!("ApiKey {}", self.endpoints.elasticsearch_api_key).parse() {
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        (client, self.endpoints.elasticsearch_url.clone())
    }

    /// An HTTP client for OpenSearch and the base URL.
    pub fn opensearch(&self) -> (reqwest::Client, String) {
        (
            reqwest::Client::new(),
            self.endpoints.opensearch_url.clone(),
        )
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
    let (es, es_url) = context.elasticsearch();
    let (os, os_url) = context.opensearch();
    for (client, base) in [(es, es_url), (os, os_url)] {
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
    let consumer: BaseConsumer = context.kafka_config().create()?;
    let metadata =
        tokio::task::block_in_place(|| consumer.fetch_metadata(None, Duration::from_secs(10)))?;
    let topics: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|name| {
            name.starts_with(&format!("{}.", context.topic_prefix))
                || name.starts_with(&context.group)
        })
        .collect();
    let admin = context.kafka_admin()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if !topics.is_empty() {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        admin.delete_topics(&names, &options).await?;
    }
    let groups =
        tokio::task::block_in_place(|| consumer.fetch_group_list(None, Duration::from_secs(10)))?;
    let groups: Vec<String> = groups
        .groups()
        .iter()
        .map(|g| g.name().to_owned())
        .filter(|name| name.starts_with(&context.group))
        .collect();
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
