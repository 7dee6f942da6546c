//! `sluice-bulk-load`: the helper of `bench/consumer-drain.sh`.
//!
//! ```text
//! sluice-bulk-load count BROKERS TOPIC                      messages (high − low watermarks) and partitions
//! sluice-bulk-load wait-group BROKERS TOPIC GROUP SECONDS   until GROUP has committed every partition's end
//! sluice-bulk-load delete BROKERS topic:NAME|group:NAME…    deletes topics and consumer groups
//! sluice-bulk-load sweep BROKERS TOPIC                      the raw `_bulk` limit (settings below)
//! ```
//!
//! `sweep` reads the whole topic into memory and turns each event into the document
//! sluice-consumer writes without a transform (`event::columns` of the record, `_id` from
//! `event::document_id`). Then, for each batch size × concurrency, it indexes the first
//! `BULK_SAMPLE` documents into a fresh index with plain `index` actions (no version), and runs the
//! best setting again over every document. Bodies are built (and gzipped) before the clock starts;
//! only the requests are timed. Settings, from the environment: `BULK_ENDPOINT`, `BULK_API_KEY` or
//! `BULK_USER`/`BULK_PASSWORD`, `BULK_INDEX_PREFIX`, `BULK_SAMPLE` (100000), `BULK_BATCHES`
//! (`500,1000,2000,5000`), `BULK_CONCURRENCY` (`1,2,4`), `BULK_GZIP` (`off`: the sweep's bodies are
//! plain, as the consumer's are by default; `on` gzips them; the best setting is then also tried
//! with the other),
//! `BULK_FULL_GZIP` (`both`, `on` or `off`: the full runs) and `BULK_WATCH_PID` (a process, the
//! cluster's JVM, whose CPU time each trial reports). One line per trial on stdout:
//! `trial|full gzip=on batch=500 concurrency=2 docs=… seconds=… rate=… loader_cpu=… watched_cpu=…
//! errors=0 count=…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use sluice_proto::Message as _;
use sluice_proto::v1::ChangeEvent;

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["count", brokers, topic] => {
            let (messages, partitions) = count(brokers, topic)?;
            println!("{messages} {partitions}");
            Ok(())
        }
        ["wait-group", brokers, topic, group, seconds] => {
            wait_group(brokers, topic, group, seconds.parse()?)
        }
        ["delete", brokers, names @ ..] => runtime.block_on(delete(brokers, names)),
        ["sweep", brokers, topic] => runtime.block_on(sweep(brokers, topic)),
        _ => bail!(
            "usage: sluice-bulk-load count BROKERS TOPIC | wait-group BROKERS TOPIC GROUP SECONDS | \
             delete BROKERS topic:NAME|group:NAME... | sweep BROKERS TOPIC"
        ),
    }
}

fn consumer(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?)
}

/// Per partition: (low, high) watermarks.
fn watermarks(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<(i64, i64)>> {
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let found = metadata.topics().first().context("no such topic")?;
    if found.error().is_some() || found.partitions().is_empty() {
        bail!("topic {topic} does not exist (yet)");
    }
    (0..i32::try_from(found.partitions().len())?)
        .map(|p| Ok(consumer.fetch_watermarks(topic, p, TIMEOUT)?))
        .collect()
}

/// Messages (high − low watermarks, summed) and partitions.
fn count(brokers: &str, topic: &str) -> anyhow::Result<(i64, usize)> {
    let consumer = consumer(brokers, "sluice-bulk-load")?;
    let marks = watermarks(&consumer, topic)?;
    Ok((
        marks.iter().map(|(low, high)| high - low).sum(),
        marks.len(),
    ))
}

/// Polls GROUP's committed offsets every 200 ms until each partition's is at its end.
fn wait_group(brokers: &str, topic: &str, group: &str, seconds: u64) -> anyhow::Result<()> {
    // Never subscribes, so it does not join the group: it only reads its commits.
    let consumer = consumer(brokers, group)?;
    let ends = watermarks(&consumer, topic)?;
    let mut partitions = TopicPartitionList::new();
    for p in 0..ends.len() {
        partitions.add_partition(topic, i32::try_from(p)?);
    }
    let total: i64 = ends.iter().map(|(low, high)| high - low).sum();
    let start = Instant::now();
    let mut reported = Instant::now();
    loop {
        let committed = consumer.committed_offsets(partitions.clone(), TIMEOUT)?;
        let mut behind = 0;
        for (p, (low, high)) in ends.iter().enumerate() {
            let at = match committed.find_partition(topic, i32::try_from(p)?) {
                Some(element) => match element.offset() {
                    Offset::Offset(offset) => offset,
                    _ => *low,
                },
                None => *low,
            };
            behind += (high - at).max(0);
        }
        if behind == 0 {
            return Ok(());
        }
        if start.elapsed().as_secs() >= seconds {
            bail!("group {group}: {behind} of {total} messages still uncommitted after {seconds}s");
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "wait-group {group}: {} of {total} committed after {:.0}s",
                total - behind,
                start.elapsed().as_secs_f64()
            );
            reported = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn delete(brokers: &str, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let topics: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("topic:"))
        .collect();
    let groups: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("group:"))
        .collect();
    let mut failed = Vec::new();
    if !topics.is_empty() {
        for result in admin.delete_topics(&topics, &options).await? {
            if let Err((name, error)) = result {
                failed.push(format!("topic {name}: {error}"));
            }
        }
    }
    if !groups.is_empty() {
        for result in admin.delete_groups(&groups, &options).await? {
            if let Err((name, error)) = result {
                failed.push(format!("group {name}: {error}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("could not delete {}", failed.join("; "))
    }
}

/// One document: its `_id` and its JSON source.
struct Doc {
    id: String,
    source: Vec<u8>,
}

/// Every event of the topic as the consumer's document (inserts, updates and reads; a topic
/// of this benchmark holds inserts only).
fn read_topic(brokers: &str, topic: &str) -> anyhow::Result<Vec<Doc>> {
    let consumer = consumer(brokers, "sluice-bulk-load")?;
    let ends = watermarks(&consumer, topic)?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining: i64 = 0;
    for (p, (low, high)) in ends.iter().enumerate() {
        remaining += high - low;
        assignment.add_partition_offset(topic, i32::try_from(p)?, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut docs = Vec::with_capacity(usize::try_from(remaining)?);
    while remaining > 0 {
        let Some(message) = consumer.poll(TIMEOUT) else {
            bail!("no message within 10 s with {remaining} still expected");
        };
        let message = message?;
        remaining -= 1;
        let Some(payload) = message.payload() else {
            continue;
        };
        let event = ChangeEvent::decode(payload)?;
        if sluice_consumer::event::action(event.op()).is_none() {
            continue;
        }
        let id = sluice_consumer::route::document_id(&event, None)
            .map_err(|reason| anyhow::anyhow!("offset {}: {reason}", message.offset()))?;
        let source = serde_json::to_vec(&Value::Object(sluice_consumer::event::columns(
            &event.record,
        )))?;
        docs.push(Doc { id, source });
    }
    Ok(docs)
}

struct Cluster {
    http: reqwest::Client,
    endpoint: String,
    auth: Option<HeaderValue>,
}

impl Cluster {
    fn from_env() -> anyhow::Result<Self> {
        let endpoint = std::env::var("BULK_ENDPOINT")
            .context("BULK_ENDPOINT is not set")?
            .trim_end_matches('/')
            .to_owned();
        let auth = if let Ok(key) = std::env::var("BULK_API_KEY") {
            let mut value = HeaderValue::from_str(&format!("ApiKey {}", key.trim()))?;
            value.set_sensitive(true);
            Some(value)
        } else {
            None
        };
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(300));
        if auth.is_none()
            && let Ok(user) = std::env::var("BULK_USER")
        {
            let password = std::env::var("BULK_PASSWORD").unwrap_or_default();
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value = HeaderValue::from_str(&format!(
                "Basic {}",
                sluice_consumer::event::base64(format!("{user}:{password}").as_bytes())
            ))?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(Self {
            http: builder.build()?,
            endpoint,
            auth,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}/{path}", self.endpoint));
        match &self.auth {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let response = self.request(method, path).send().await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {body}");
        }
        Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// The NDJSON bodies of `docs` in batches of `batch`, gzipped when `gzip`.
fn bodies(docs: &[Doc], index: &str, batch: usize, gzip: bool) -> anyhow::Result<Vec<Vec<u8>>> {
    docs.chunks(batch)
        .map(|chunk| {
            let mut body = Vec::with_capacity(chunk.iter().map(|d| d.source.len() + 64).sum());
            for doc in chunk {
                serde_json::to_writer(
                    &mut body,
                    &json!({"index": {"_index": index, "_id": doc.id}}),
                )?;
                body.push(b'\n');
                body.extend_from_slice(&doc.source);
                body.push(b'\n');
            }
            if gzip {
                use std::io::Write as _;
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 3),
                    flate2::Compression::fast(),
                );
                encoder.write_all(&body)?;
                body = encoder.finish()?;
            }
            Ok(body)
        })
        .collect()
}

/// User+system CPU seconds of a process so far (`None` when it cannot be read).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // CLK_TCK is 100 on Linux.
    Some(ticks / 100.0)
}

#[derive(Debug, Clone, Copy)]
struct Setting {
    gzip: bool,
    batch: usize,
    concurrency: usize,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    rate: f64,
}

/// Indexes `docs` into the fresh index `index` with `setting`, checks its `_count`, prints one
/// line and deletes the index.
async fn trial(
    cluster: &Arc<Cluster>,
    kind: &str,
    docs: &[Doc],
    index: &str,
    setting: Setting,
    watch: Option<&str>,
) -> anyhow::Result<Outcome> {
    cluster.call(reqwest::Method::PUT, index).await?;
    let built = Instant::now();
    let bodies = Arc::new(bodies(docs, index, setting.batch, setting.gzip)?);
    let build_seconds = built.elapsed().as_secs_f64();
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let loader_before = cpu_seconds("self");
    let watched_before = watch.and_then(cpu_seconds);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..setting.concurrency {
        let (cluster, bodies, next, errors) = (
            cluster.clone(),
            bodies.clone(),
            next.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return anyhow::Ok(());
                };
                let mut request = cluster
                    .request(reqwest::Method::POST, "_bulk?filter_path=errors")
                    .header(CONTENT_TYPE, "application/x-ndjson");
                if setting.gzip {
                    request = request.header(CONTENT_ENCODING, "gzip");
                }
                let response = request.body(body.clone()).send().await?;
                let status = response.status();
                let text = response.text().await?;
                if !status.is_success() {
                    bail!("_bulk: HTTP {status}: {text}");
                }
                if text.contains("true") {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let loader_cpu = cpu_seconds("self")
        .zip(loader_before)
        .map_or(f64::NAN, |(after, before)| after - before);
    let watched_cpu = watch
        .and_then(cpu_seconds)
        .zip(watched_before)
        .map_or(f64::NAN, |(after, before)| after - before);
    cluster
        .call(reqwest::Method::POST, &format!("{index}/_refresh"))
        .await?;
    let counted = cluster
        .call(reqwest::Method::GET, &format!("{index}/_count"))
        .await?["count"]
        .as_u64()
        .unwrap_or(0);
    cluster.call(reqwest::Method::DELETE, index).await?;
    #[allow(clippy::cast_precision_loss)] // a rate
    let rate = docs.len() as f64 / seconds;
    println!(
        "{kind} gzip={} batch={} concurrency={} docs={} seconds={seconds:.2} rate={rate:.0} \
         loader_cpu={loader_cpu:.2} watched_cpu={watched_cpu:.2} errors={} count={counted} \
         build_seconds={build_seconds:.2}",
        if setting.gzip { "on" } else { "off" },
        setting.batch,
        setting.concurrency,
        docs.len(),
        errors.load(Ordering::Relaxed),
    );
    let failed = errors.load(Ordering::Relaxed) > 0 || counted != docs.len() as u64;
    Ok(Outcome {
        // A trial with item errors does not count.
        rate: if failed { 0.0 } else { rate },
    })
}

fn list(name: &str, default: &str) -> anyhow::Result<Vec<usize>> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|n| n.trim().parse().with_context(|| format!("{name}: `{n}`")))
        .collect()
}

async fn sweep(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let cluster = Arc::new(Cluster::from_env()?);
    let prefix = std::env::var("BULK_INDEX_PREFIX").unwrap_or_else(|_| "bench-bulk".to_owned());
    let sample: usize = std::env::var("BULK_SAMPLE").map_or(Ok(100_000), |v| v.parse())?;
    let batches = list("BULK_BATCHES", "500,1000,2000,5000")?;
    let concurrency = list("BULK_CONCURRENCY", "1,2,4")?;
    let gzip = std::env::var("BULK_GZIP").is_ok_and(|v| v == "on");
    let full_gzip = std::env::var("BULK_FULL_GZIP").unwrap_or_else(|_| "both".to_owned());
    let watch = std::env::var("BULK_WATCH_PID").ok();
    let watch = watch.as_deref();

    let read = Instant::now();
    let docs = tokio::task::block_in_place(|| read_topic(brokers, topic))?;
    eprintln!(
        "sluice-bulk-load: {} documents read from {topic} in {:.1}s, {} bytes of JSON",
        docs.len(),
        read.elapsed().as_secs_f64(),
        docs.iter().map(|d| d.source.len()).sum::<usize>()
    );
    let sample = &docs[..sample.min(docs.len())];

    // Warm-up (not reported as a trial): the cluster's JIT and caches.
    let warm = &sample[..sample.len().min(20_000)];
    let warm_setting = Setting {
        gzip,
        batch: 1000,
        concurrency: 2,
    };
    let _ = trial(
        &cluster,
        "warmup",
        warm,
        &format!("{prefix}-warmup"),
        warm_setting,
        watch,
    )
    .await?;

    let mut best = (warm_setting, 0.0);
    for &batch in &batches {
        for &conc in &concurrency {
            let setting = Setting {
                gzip,
                batch,
                concurrency: conc,
            };
            let index = format!("{prefix}-g{}-b{batch}-c{conc}", u8::from(gzip));
            let outcome = trial(&cluster, "trial", sample, &index, setting, watch).await?;
            if outcome.rate > best.1 {
                best = (setting, outcome.rate);
            }
        }
    }
    let other = Setting {
        gzip: !gzip,
        ..best.0
    };
    let index = format!(
        "{prefix}-g{}-b{}-c{}",
        u8::from(!gzip),
        other.batch,
        other.concurrency
    );
    let other_rate = trial(&cluster, "trial", sample, &index, other, watch)
        .await?
        .rate;
    println!(
        "best gzip={} batch={} concurrency={} rate={:.0} other_gzip_rate={other_rate:.0}",
        if gzip { "on" } else { "off" },
        best.0.batch,
        best.0.concurrency,
        best.1
    );
    let modes: &[bool] = match full_gzip.as_str() {
        "on" => &[true],
        "off" => &[false],
        _ => &[true, false],
    };
    for &mode in modes {
        let setting = Setting {
            gzip: mode,
            ..best.0
        };
        let index = format!("{prefix}-full-g{}", u8::from(mode));
        trial(&cluster, "full", &docs, &index, setting, watch).await?;
    }
    Ok(())
}
