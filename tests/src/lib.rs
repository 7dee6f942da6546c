//! The end-to-end test harness.
//!
//! Endpoints come from the `SLUICE_TEST_*` variables that `deploy/local/up.sh` prints (the test
//! command `deploy/local/test.sh` exports them). Every test takes a [`TestContext`], which gives it
//! its own database, replication slot, publication, topic prefix, consumer group and index names,
//! so tests run in parallel and never share state; dropping the context removes all of them.

pub mod fold;
pub mod proxy;
pub mod sink;
pub mod traffic;

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

    /// An HTTP client for Elasticsearch with the test API key, and the base URL.
    /// Panics with how to get it when Elasticsearch is not configured.
    pub fn elasticsearch(&self) -> (reqwest::Client, String) {
        let endpoints = &self.endpoints;
        let (Some(url), Some(key)) = (
            &endpoints.elasticsearch_url,
            &endpoints.elasticsearch_api_key,
        ) else {
            panic!(
                "SLUICE_TEST_ELASTICSEARCH_URL/_API_KEY are not set: start it with deploy/local/up.sh"
            );
        };
        (
            cluster_client(
                Some(&format!("ApiKey {key}")),
                endpoints.elasticsearch_ca.as_deref(),
            ),
            url.clone(),
        )
    }

    /// An HTTP client for OpenSearch and the base URL. Panics when OpenSearch is not configured.
    pub fn opensearch(&self) -> (reqwest::Client, String) {
        let Some(url) = &self.endpoints.opensearch_url else {
            panic!("SLUICE_TEST_OPENSEARCH_URL is not set: start it with deploy/local/up.sh");
        };
        (opensearch_client(&self.endpoints), url.clone())
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
    let endpoints = &context.endpoints;
    let mut clusters = Vec::new();
    if let (Some(url), Some(key)) = (
        &endpoints.elasticsearch_url,
        &endpoints.elasticsearch_api_key,
    ) {
        clusters.push((
            cluster_client(
                Some(&format!("ApiKey {key}")),
                endpoints.elasticsearch_ca.as_deref(),
            ),
            url.clone(),
        ));
    }
    if let Some(url) = &endpoints.opensearch_url {
        clusters.push((opensearch_client(endpoints), url.clone()));
    }
    for (client, base) in clusters {
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
    // One admin client for everything: a consumer created only to read metadata can hang in
    // rd_kafka_destroy. Blocking calls go to a thread of their own, since cleanup also runs
    // from Drop on a small runtime.
    let admin = std::sync::Arc::new(context.kafka_admin()?);
    let reader = admin.clone();
    let topic_prefix = format!("{}.", context.topic_prefix);
    let group_prefix = context.group.clone();
    let (topics, groups) =
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<String>, Vec<String>)> {
            let client = reader.inner();
            let metadata = client.fetch_metadata(None, Duration::from_secs(10))?;
            let topics = metadata
                .topics()
                .iter()
                .map(|t| t.name().to_owned())
                .filter(|name| name.starts_with(&topic_prefix) || name.starts_with(&group_prefix))
                .collect();
            let groups = client
                .fetch_group_list(None, Duration::from_secs(10))?
                .groups()
                .iter()
                .map(|g| g.name().to_owned())
                .filter(|name| name.starts_with(&group_prefix))
                .collect();
            Ok((topics, groups))
        })
        .await??;
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

/// A client that sends `authorization` with every request and trusts the CA in `ca_file`.
fn cluster_client(authorization: Option<&str>, ca_file: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = authorization.and_then(|v| v.parse().ok()) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some(certificate) = ca_file
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok())
    {
        builder = builder.tls_certs_merge([certificate]);
    }
    builder.build().unwrap_or_default()
}

fn opensearch_client(endpoints: &Endpoints) -> reqwest::Client {
    use base64::Engine as _;
    let authorization = endpoints.opensearch_user.as_ref().map(|(user, password)| {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {pair}")
    });
    cluster_client(authorization.as_deref(), endpoints.opensearch_ca.as_deref())
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

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    /// `None` for a tombstone.
    pub event: Option<sluice_proto::v1::ChangeEvent>,
}

impl Record {
    /// The key as text (keys are JSON).
    pub fn key_text(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

impl TestContext {
    /// A config for this test: its database, slot, publication and topic prefix, telemetry on a
    /// free port. `tables` and `extra` are YAML written under `tables:` and at the top level.
    pub fn config_yaml(&self, tables: &str, extra: &str) -> String {
        format!(
            "postgres:\n  url: {url}\n  slot: {slot}\n  publication: {publication}\n\
             kafka:\n  brokers: {brokers}\n  topic_prefix: {prefix}\n  partitions: 3\n\
             tables:\n{tables}\n\
             telemetry:\n  producer_listen: 127.0.0.1:0\n  consumer_listen: 127.0.0.1:0\n  log_level: info\n\
             {extra}\n",
            url = self.postgres_url(),
            slot = self.slot,
            publication = self.publication,
            brokers = self.endpoints.kafka_brokers,
            prefix = self.topic_prefix,
        )
    }

    /// Writes `yaml` to this test's config file and returns its path.
    pub fn write_config(&self, yaml: &str) -> anyhow::Result<std::path::PathBuf> {
        let dir = std::env::temp_dir().join("sluice-tests").join(&self.id);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("sluice.yaml");
        std::fs::write(&path, yaml)?;
        Ok(path)
    }

    /// Parses and validates `yaml` the way the binaries do.
    pub fn config(&self, yaml: &str) -> anyhow::Result<sluice_common::config::Config> {
        let path = self.write_config(yaml)?;
        Ok(sluice_common::config::load(&path)?)
    }

    pub fn topic(&self, table: &str) -> String {
        format!("{}.{table}", self.topic_prefix)
    }

    /// Every message of `topic` from the beginning to its current end.
    pub async fn read_topic(&self, topic: &str) -> anyhow::Result<Vec<Record>> {
        use rdkafka::Message as _;
        use sluice_proto::Message as _;
        let consumer: BaseConsumer = self
            .kafka_config()
            .set("group.id", format!("{}.reader", self.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?;
        let topic_owned = topic.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Record>> {
            let topic = topic_owned.as_str();
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .first()
                .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                .unwrap_or_default();
            let mut ends = std::collections::HashMap::new();
            let mut assignment = rdkafka::TopicPartitionList::new();
            for &partition in &partitions {
                let (_, high) =
                    consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
                ends.insert(partition, high);
                assignment.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)?;
            }
            consumer.assign(&assignment)?;
            let mut records = Vec::new();
            let mut done: std::collections::HashMap<i32, i64> = std::collections::HashMap::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while ends
                .iter()
                .any(|(p, high)| done.get(p).copied().unwrap_or(-1) + 1 < *high)
            {
                if std::time::Instant::now() > deadline {
                    bail!(
                        "reading {topic}: only got {} messages before the deadline",
                        records.len()
                    );
                }
                let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                    continue;
                };
                let message = message?;
                done.insert(message.partition(), message.offset());
                let event = match message.payload() {
                    Some(bytes) => Some(sluice_proto::v1::ChangeEvent::decode(bytes)?),
                    None => None,
                };
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().unwrap_or_default().to_vec(),
                    event,
                });
            }
            Ok(records)
        })
        .await?
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

    /// Starts `sluice-producer run` in this process (as a task); cancel the token to stop it.
    pub fn spawn_producer(
        &self,
        config: sluice_common::config::Config,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_producer::Error>>,
    ) {
        let token = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(sluice_producer::run(config, token.clone()));
        (token, handle)
    }
}

/// Path of a workspace binary (`sluice-producer`, `sluice-consumer`), built by the test command
/// before the tests run.
pub fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    // target/debug/deps/<test binary> → target/debug/<name>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .context("test binary has no target directory")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --bins` (deploy/local/test.sh does)",
            path.display()
        );
    }
    Ok(path)
}

/// A sluice binary running as a child process, with its output in a log file.
#[derive(Debug)]
pub struct Process {
    pub child: tokio::process::Child,
    pub log: std::path::PathBuf,
}

impl Process {
    /// Starts `binary args…` (one of the project's binaries), logging to `log`.
    pub fn start(
        binary_name: &str,
        args: &[&str],
        log: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        Self::start_program(&binary(binary_name)?, args, log)
    }

    /// Starts any `program args…`, logging to `log`.
    pub fn start_program(
        program: &std::path::Path,
        args: &[&str],
        log: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdout(output.try_clone()?)
            .stderr(output)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self { child, log })
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("the process has already exited")?;
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed: {status}");
        }
        Ok(())
    }

    /// SIGKILL: the process gets no chance to flush or confirm anything.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal("KILL").await?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        self.signal("TERM").await?;
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        Ok(status.code())
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await??;
        Ok(status.code())
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `binary --config config args…` to its end (at most `timeout`), logging to `log` beside
/// the config: the exit code and everything it printed.
pub async fn run_command(
    binary_name: &str,
    config: &std::path::Path,
    args: &[&str],
    log: &str,
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    let mut all = vec![
        "--config",
        config.to_str().context("config path is not UTF-8")?,
    ];
    all.extend_from_slice(args);
    let mut process = Process::start(binary_name, &all, config.with_file_name(log))?;
    let code = process.wait(timeout).await?;
    Ok((code, process.output()))
}

/// The JSON report of a `--format json` command: the last line of its output that parses as a
/// JSON object (logs come before it).
pub fn json_report(output: &str) -> anyhow::Result<serde_json::Value> {
    output
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .filter(serde_json::Value::is_object)
        })
        .with_context(|| format!("no JSON report in\n{output}"))
}

/// Runs a `deploy/local/<service>.sh` command (`stop`, `start`), for fault tests.
pub async fn service(name: &str, command: &str) -> anyhow::Result<()> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/local/{name}.sh"));
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    if !status.success() {
        bail!("{} {command} failed: {status}", script.display());
    }
    Ok(())
}

/// A shared service a test stopped (`deploy/local/{name}.sh stop`). It is started again when
/// this is dropped while stopped, so a failing assertion never leaves it down for the tests that
/// run after.
#[derive(Debug)]
pub struct StoppedService {
    name: &'static str,
    stopped: bool,
}

impl StoppedService {
    pub async fn stop(name: &'static str) -> anyhow::Result<Self> {
        let guard = Self {
            name,
            stopped: true,
        };
        service(name, "stop").await?;
        Ok(guard)
    }

    /// Starts the service again and waits until it answers.
    pub async fn start(mut self) -> anyhow::Result<()> {
        service(self.name, "start").await?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for StoppedService {
    fn drop(&mut self) {
        if !self.stopped {
            return;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../deploy/local/{}.sh", self.name));
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .stdout(std::process::Stdio::null())
            .status();
        if !matches!(&status, Ok(s) if s.success()) {
            eprintln!(
                "could not start {} again ({status:?}): run `bash {} start`",
                self.name,
                script.display()
            );
        }
    }
}
