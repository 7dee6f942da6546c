//! Load around a test: a writer changing a table at a steady rate, a reader searching through an
//! alias every 100 ms the way an application would, and the check that an index equals its
//! table (every row, every column, versions = the commit LSN of each row's last change).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::Cluster;
use crate::TestContext;
use crate::fold::Fold;

/// The table the rebuild and replay tests change: `items(id, name, qty, note)`.
pub const ITEMS: &str = "CREATE TABLE items (
    id int PRIMARY KEY,
    name text NOT NULL,
    qty int NOT NULL,
    note text
)";

/// Inserts rows `1..=rows` into `items`.
pub async fn fill_items(db: &tokio_postgres::Client, rows: i32) -> anyhow::Result<()> {
    db.batch_execute(&format!(
        "INSERT INTO items SELECT g, 'item ' || g, g % 97, CASE WHEN g % 3 = 0 THEN NULL ELSE 'note ' || g END \
         FROM generate_series(1, {rows}) g"
    ))
    .await?;
    Ok(())
}

/// Changes `items` at about `per_second` changes/s (updates, inserts and deletes, in small
/// transactions) until stopped.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    pub changes: Arc<AtomicU64>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Writer {
    /// Starts writing into a table of `existing` rows; new rows get the ids after it.
    pub async fn start(
        context: &TestContext,
        per_second: u64,
        existing: i32,
    ) -> anyhow::Result<Self> {
        let db = context.postgres().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(AtomicU64::new(0));
        let (stop_flag, counter) = (stop.clone(), changes.clone());
        let task = tokio::spawn(async move {
            // Ten changes per transaction, one transaction per tick.
            let per_tick = 10u64;
            let tick = Duration::from_micros(1_000_000 * per_tick / per_second.max(1));
            let mut interval = tokio::time::interval(tick);
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut next_id = existing + 1;
            let mut round = 0u64;
            while !stop_flag.load(Ordering::Relaxed) {
                interval.tick().await;
                let mut sql = String::from("BEGIN;");
                for _ in 0..per_tick {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let id =
                        i64::try_from(seed % u64::try_from(next_id).unwrap_or(1)).unwrap_or(0) + 1;
                    round += 1;
                    match seed % 10 {
                        0..=5 => sql.push_str(&format!(
                            "UPDATE items SET qty = qty + 1, note = 'changed {round}' WHERE id = {id};"
                        )),
                        6 => sql.push_str(&format!(
                            "UPDATE items SET name = 'renamed {round}', note = NULL WHERE id = {id};"
                        )),
                        7 | 8 => {
                            sql.push_str(&format!(
                                "INSERT INTO items VALUES ({next_id}, 'new {next_id}', 1, 'inserted') ON CONFLICT DO NOTHING;"
                            ));
                            next_id += 1;
                        }
                        _ => sql.push_str(&format!("DELETE FROM items WHERE id = {id};")),
                    }
                }
                sql.push_str("COMMIT;");
                db.batch_execute(&sql)
                    .await
                    .context("the writer's transaction")?;
                counter.fetch_add(per_tick, Ordering::Relaxed);
            }
            Ok(())
        });
        Ok(Self {
            stop,
            changes,
            task,
        })
    }

    /// Stops and returns how many changes were written.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await??;
        Ok(self.changes.load(Ordering::Relaxed))
    }
}

/// What a reader saw through an alias.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub polls: u64,
    /// Failed searches or counts: what failed.
    pub errors: Vec<String>,
    /// Polls where `_count` or a search found nothing.
    pub empty: u64,
    /// Every distinct `_count` answer below `floor`, if one was set.
    pub below_floor: Vec<u64>,
    /// The concrete indices seen behind the alias, in order of first sight.
    pub indices: Vec<String>,
}

/// Searches and counts through an alias every 100 ms until stopped.
#[derive(Debug)]
pub struct Reader {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Seen>,
}

impl Reader {
    /// Starts polling `alias` (prefixed) on `cluster`; a `_count` under `floor` is recorded.
    pub fn start(context: &TestContext, cluster: Cluster, alias: &str, floor: u64) -> Self {
        let (client, base) = context.cluster(cluster);
        let alias = context.index(alias);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            while !flag.load(Ordering::Relaxed) {
                interval.tick().await;
                seen.polls += 1;
                let count = client.get(format!("{base}/{alias}/_count")).send().await;
                match count {
                    Ok(response) if response.status().is_success() => {
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        let n = body["count"].as_u64().unwrap_or(0);
                        if n == 0 {
                            seen.empty += 1;
                        }
                        if n < floor && !seen.below_floor.contains(&n) {
                            seen.below_floor.push(n);
                        }
                    }
                    Ok(response) => seen.errors.push(format!(
                        "_count: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    )),
                    Err(error) => seen.errors.push(format!("_count: {error}")),
                }
                let search = client
                    .post(format!("{base}/{alias}/_search"))
                    .json(&json!({"size": 1, "query": {"match_all": {}}}))
                    .send()
                    .await;
                match search {
                    Ok(response) if response.status().is_success() => {
                        let body: Value = response.json().await.unwrap_or(Value::Null);
                        match body["hits"]["hits"].as_array().and_then(|h| h.first()) {
                            Some(hit) => {
                                let index = hit["_index"].as_str().unwrap_or_default().to_owned();
                                if !seen.indices.contains(&index) {
                                    seen.indices.push(index);
                                }
                            }
                            None => seen.empty += 1,
                        }
                    }
                    Ok(response) => seen.errors.push(format!(
                        "_search: {} {}",
                        response.status(),
                        response.text().await.unwrap_or_default()
                    )),
                    Err(error) => seen.errors.push(format!("_search: {error}")),
                }
            }
            seen
        });
        Self { stop, task }
    }

    pub async fn stop(self) -> anyhow::Result<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// The document a row of `items` makes (the sink has no transform).
fn item_document(row: &tokio_postgres::Row) -> Value {
    json!({
        "id": row.get::<_, i32>(0),
        "name": row.get::<_, String>(1),
        "qty": row.get::<_, i32>(2),
        "note": row.get::<_, Option<String>>(3),
    })
}

/// Fails unless the documents of `index` (prefixed; an alias works) are exactly the rows of
/// `items`, every column, each at the commit LSN of its row's last change on the topic.
pub async fn assert_index_equals_items(
    context: &TestContext,
    cluster: Cluster,
    index: &str,
) -> anyhow::Result<usize> {
    let db = context.postgres().await?;
    let rows = db
        .query("SELECT id, name, qty, note FROM items ORDER BY id", &[])
        .await?;
    let expected: BTreeMap<String, Value> = rows
        .iter()
        .map(|row| (row.get::<_, i32>(0).to_string(), item_document(row)))
        .collect();
    let docs = context.documents(cluster, index).await?;
    let records = context.read_topic(&context.topic("public.items")).await?;
    let fold = Fold::new(&records);
    let mut problems = Vec::new();
    for (id, source) in &expected {
        match docs.get(id) {
            None => problems.push(format!("{id}: missing")),
            Some(doc) if &doc.source != source => {
                problems.push(format!("{id}: {} instead of {source}", doc.source));
            }
            Some(doc) => {
                let key = format!("[{id}]").into_bytes();
                let version = fold.keys.get(&key).map(|f| f.version);
                if version != Some(doc.version) {
                    problems.push(format!(
                        "{id}: version {} instead of the last commit LSN {version:?}",
                        doc.version
                    ));
                }
            }
        }
    }
    for id in docs.keys() {
        if !expected.contains_key(id) {
            problems.push(format!("{id}: no such row"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{index} differs from the table in {} documents: {}",
            problems.len(),
            problems[..problems.len().min(10)].join("; ")
        );
    }
    Ok(expected.len())
}
