//! `--repair`, and waiting for the pipeline to catch up before anything is checked again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_common::config::Config;
use sluice_producer::backfill::rows::TableReader;

use super::drift::{DocId, Finding, Kind, id_parts};
use super::{Check, RANGE};
use crate::commands::lag;
use crate::elastic::{BulkOp, ItemResult};
use crate::error::Error;

/// Keys per repair backfill.
const REPAIR_KEYS: usize = 500;
/// How long `--repair` waits for its backfills.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(600);

impl Check {
    /// Step 4: backfills of the missing and stale rows, versioned deletes of the extra
    /// documents; returns (rows backfilled, documents deleted) once the backfills are done.
    pub(super) async fn repair(&mut self, findings: &[Finding]) -> Result<(u64, u64), Error> {
        let rows: Vec<DocId> = findings
            .iter()
            .filter(|f| f.kind != Kind::Extra)
            .map(|f| f.doc.clone())
            .collect();
        let mut keys = Vec::new();
        for part in rows.chunks(RANGE as usize) {
            let tuples: Vec<Vec<String>> = part
                .iter()
                .filter_map(|(_, id)| id_parts(id, self.id_columns.len()))
                .collect();
            for (_, event) in self.rows_where(&tuples, true).await? {
                keys.push(TableReader::key_text(&event));
            }
        }
        let mut backfills = Vec::new();
        for part in keys.chunks(REPAIR_KEYS) {
            let id = self
                .reader
                .request_backfill(part)
                .await
                .map_err(|e| self.table_error(e))?;
            backfills.push(id);
        }
        let deletes: Vec<BulkOp> = findings
            .iter()
            .filter(|f| f.kind == Kind::Extra)
            .filter_map(|f| {
                Some(BulkOp::Delete {
                    index: f.doc.0.clone(),
                    id: f.doc.1.clone(),
                    version: f.version?,
                })
            })
            .collect();
        let mut deleted = 0;
        for part in deletes.chunks(RANGE as usize) {
            let results = self
                .client
                .bulk(part)
                .await
                .map_err(|e| self.sink_error(e))?;
            deleted += results
                .iter()
                .filter(|r| matches!(r, ItemResult::Done | ItemResult::NotFound))
                .count() as u64;
        }
        if !backfills.is_empty() {
            eprintln!(
                "verify {}: repairing: {} rows queued for backfill ({} backfills: {backfills:?}); waiting for the producer",
                self.prepared.config.name,
                keys.len(),
                backfills.len()
            );
        }
        let deadline = Instant::now() + REPAIR_TIMEOUT;
        for id in backfills {
            loop {
                let (state, error) = self
                    .reader
                    .backfill_state(id)
                    .await
                    .map_err(|e| self.table_error(e))?;
                match state.as_str() {
                    "done" => break,
                    "failed" => {
                        return Err(Error::Check(format!(
                            "repair backfill {id} failed: {}",
                            error.unwrap_or_default()
                        )));
                    }
                    _ if Instant::now() > deadline => {
                        return Err(Error::Check(format!(
                            "repair backfill {id} is still {state} after {} s: is sluice-producer running? (`sluice-producer status` shows it)",
                            REPAIR_TIMEOUT.as_secs()
                        )));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
        Ok((keys.len() as u64, deleted))
    }
}

/// Waits (at most `settle`) until the sink's group has committed up to the end its topic has
/// now: what the pipeline knew when this was called is then in the index.
pub(super) async fn wait_for_pipeline(
    config: &Config,
    group: &str,
    topic: &str,
    settle: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + settle;
    let target: BTreeMap<i32, i64> = lag(config, group, topic)
        .await?
        .into_iter()
        .map(|p| (p.partition, p.end))
        .collect();
    loop {
        let now = lag(config, group, topic).await?;
        let behind = now.iter().any(|p| {
            target
                .get(&p.partition)
                .is_some_and(|end| p.committed.unwrap_or(0) < *end)
        });
        if !behind {
            return Ok(());
        }
        if Instant::now() > deadline {
            eprintln!(
                "verify: consumer group {group} did not reach the end of {topic} within {} s (is sluice-consumer running?): checking again anyway",
                settle.as_secs()
            );
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
