//! One batch, from items to settled outcomes: partial updates completed from the indexed
//! documents, bulk requests until every item is settled (retrying what the cluster asks to
//! retry, halving a request the cluster refuses as a whole down to the item it refuses), and
//! the items it rejects handed back as dead letters. Also the TRUNCATE marker's versioned
//! deletes.
//!
//! Delivery never returns with an item unsettled, except on shutdown (nothing is committed
//! then) or refused credentials (the sink stops). It does not send dead letters itself: the
//! caller sends a batch's letters together.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_common::retry::{self, Decision, Failure, Policy};
use tokio_util::sync::CancellationToken;

use super::retry::Classify;
use super::{BulkOp, BulkWriter, ElasticError, ItemResult, Stored};
use crate::batch::{Item, Partial, Ready, Ticket};
use crate::dead_letter::DeadLetter;
use crate::error::{Action, Error};
use crate::offsets::Slot;
use crate::stats::{Outcome, SinkStats};

/// What delivery writes through, and how it waits.
#[derive(Debug)]
pub struct Writer<W> {
    pub bulk: W,
    pub policy: Policy,
    pub stats: Arc<SinkStats>,
    pub shutdown: CancellationToken,
}

impl<W> Writer<W> {
    fn stopped(&self, source: ElasticError) -> Error {
        Error::Elastic {
            sink: self.stats.sink.clone(),
            source,
        }
    }
}

/// What one batch settled.
#[derive(Debug, Default)]
pub struct Report {
    /// Final outcomes: slot, outcome, commit time of the event (0 when unknown).
    pub settled: Vec<(Slot, Outcome, i64)>,
    /// Items the cluster rejected (or that cannot be completed): to send to the dead-letter
    /// topic, then settle as dead-lettered.
    pub letters: Vec<(Ticket, DeadLetter)>,
}

impl Report {
    /// Records an item's outcome, and its replaced earlier events as stale.
    pub fn settle(&mut self, ticket: &Ticket, outcome: Outcome) {
        self.settled
            .push((ticket.slot, outcome, ticket.commit_micros));
        for &slot in &ticket.replaced {
            self.settled.push((slot, Outcome::Stale, 0));
        }
    }
}

/// Writes one batch (see the module documentation).
pub async fn deliver<W: BulkWriter>(writer: &Writer<W>, items: Vec<Item>) -> Result<Report, Error> {
    let mut report = Report::default();
    let mut ready = Vec::with_capacity(items.len());
    let mut partials = Vec::new();
    for item in items {
        match item.into_ready() {
            Ok(item) => ready.push(item),
            Err(partial) => partials.push(*partial),
        }
    }
    complete_partials(writer, partials, &mut ready, &mut report).await?;

    let mut chunks = vec![ready];
    while let Some(chunk) = chunks.pop() {
        let (finished, refused) = send(writer, chunk).await?;
        for (item, result, attempts) in finished {
            let outcome = match result {
                ItemResult::Done => item.outcome,
                ItemResult::NotFound if item.outcome == Outcome::Indexed => Outcome::Deleted,
                ItemResult::NotFound => item.outcome,
                ItemResult::Stale => Outcome::Stale,
                ItemResult::Rejected {
                    status,
                    error_type,
                    reason,
                } => {
                    let letter = DeadLetter {
                        status: Some(status),
                        attempts,
                        ..DeadLetter::new("index", &error_type, reason)
                    };
                    report.letters.push((item.ticket, letter));
                    continue;
                }
                // `send` hands back only final results.
                ItemResult::Retry { .. } => continue,
            };
            report.settle(&item.ticket, outcome);
        }
        let Some((mut pending, error, attempts)) = refused else {
            continue;
        };
        if pending.len() > 1 {
            // Maybe one item makes the whole request unacceptable: halve and retry.
            tracing::warn!(sink = %writer.stats.sink, %error, items = pending.len(), "bulk request refused; splitting it");
            let second = pending.split_off(pending.len() / 2);
            chunks.push(second);
            chunks.push(pending);
        } else if let Some(item) = pending.pop() {
            let (status, reason) = match error {
                ElasticError::Fatal { status, reason } => (Some(status), reason),
                other => (None, other.to_string()),
            };
            let letter = DeadLetter {
                status,
                attempts,
                ..DeadLetter::new("index", "request_rejected", reason)
            };
            report.letters.push((item.ticket, letter));
        }
    }
    Ok(report)
}

/// Something with a bulk operation: a batch item, or a bare operation.
pub trait HasOp {
    fn op(&self) -> &BulkOp;
}

impl HasOp for Ready {
    fn op(&self) -> &BulkOp {
        &self.op
    }
}

impl HasOp for BulkOp {
    fn op(&self) -> &BulkOp {
        self
    }
}

/// Each item with its final result and the attempts it took.
type Finished<T> = Vec<(T, ItemResult, u32)>;

/// A request the cluster refused as a whole: the items it carried, why, and the attempts.
type Refused<T> = Option<(Vec<T>, ElasticError, u32)>;

/// The state of [`send`] between attempts.
struct Round<T> {
    pending: Vec<T>,
    finished: Finished<T>,
    attempt: u32,
}

/// Why an attempt of [`send`] did not settle every item.
#[derive(Debug, thiserror::Error)]
enum Unsettled {
    #[error("{count} bulk items to retry: {reason}")]
    Items { count: usize, reason: String },
    #[error(transparent)]
    Request(ElasticError),
}

/// Sends `items` in bulk requests until every one has a final result, retrying the items the
/// cluster asks to retry and the requests that fail transiently. A request the cluster refuses
/// as a whole comes back as refused, with the items still pending; refused credentials past
/// their grace and shutdown are errors.
async fn send<W: BulkWriter, T: HasOp>(
    writer: &Writer<W>,
    items: Vec<T>,
) -> Result<(Finished<T>, Refused<T>), Error> {
    let round = Round {
        pending: items,
        finished: Vec::new(),
        attempt: 0,
    };
    let mut classify = Classify::running(&writer.stats, "send a bulk request");
    let result = retry::retry_with(
        writer.policy,
        &writer.shutdown,
        round,
        |round| attempt(writer, round),
        |error, attempt| match error {
            Unsettled::Items { count, reason } => {
                writer.stats.retried(*count as u64);
                tracing::warn!(sink = %writer.stats.sink, items = count, %reason, attempt = attempt.number, "bulk items to retry");
                Decision::Retry
            }
            Unsettled::Request(error) => classify.decide(error, attempt),
        },
    )
    .await;
    match result {
        Ok(finished) => Ok((finished, None)),
        Err(Failure::Interrupted(_)) => Err(Error::Interrupted),
        Err(Failure::GaveUp((round, Unsettled::Request(error)))) => {
            if error.action() == Action::DeadLetter {
                Ok((round.finished, Some((round.pending, error, round.attempt))))
            } else {
                Err(writer.stopped(error))
            }
        }
        // Item retries never give up.
        Err(Failure::GaveUp((round, Unsettled::Items { .. }))) => Ok((round.finished, None)),
    }
}

/// One bulk request of the pending items.
async fn attempt<W: BulkWriter, T: HasOp>(
    writer: &Writer<W>,
    mut round: Round<T>,
) -> Result<Finished<T>, (Round<T>, Unsettled)> {
    round.attempt += 1;
    let ops: Vec<&BulkOp> = round.pending.iter().map(HasOp::op).collect();
    let started = Instant::now();
    let results = match writer.bulk.bulk(&ops).await {
        Ok(results) => results,
        Err(error) => return Err((round, Unsettled::Request(error))),
    };
    writer.stats.bulk_succeeded(started.elapsed().as_secs_f64());
    let mut retry = Vec::new();
    let mut reason = String::new();
    for (item, result) in round.pending.drain(..).zip(results) {
        match result {
            ItemResult::Retry {
                status,
                reason: why,
            } => {
                reason = format!("{status}: {why}");
                retry.push(item);
            }
            other => round.finished.push((item, other, round.attempt)),
        }
    }
    if retry.is_empty() {
        return Ok(round.finished);
    }
    let count = retry.len();
    round.pending = retry;
    Err((round, Unsettled::Items { count, reason }))
}

/// Turns partial updates (unchanged TOAST columns left out) into full documents: reads the
/// indexed document, treats the event as stale when the document is newer, and otherwise
/// writes the document with the new fields over the old ones, at the event's version. A
/// document that is not in the index cannot be completed: its event is dead-lettered.
async fn complete_partials<W: BulkWriter>(
    writer: &Writer<W>,
    partials: Vec<Partial>,
    ready: &mut Vec<Ready>,
    report: &mut Report,
) -> Result<(), Error> {
    let mut by_index: HashMap<String, Vec<Partial>> = HashMap::new();
    for partial in partials {
        by_index
            .entry(partial.index.clone())
            .or_default()
            .push(partial);
    }
    for (index, partials) in by_index {
        let ids: Vec<String> = partials.iter().map(|p| p.id.clone()).collect();
        let current = read(writer, &index, &ids).await?;
        for (partial, found) in partials.into_iter().zip(current) {
            let Partial {
                index,
                id,
                version,
                mut fields,
                outcome,
                ticket,
            } = partial;
            match found {
                None => {
                    let letter = DeadLetter {
                        status: Some(404),
                        ..DeadLetter::new(
                            "index",
                            "partial_update_of_missing_document",
                            "the event leaves unchanged TOAST columns out and the document is \
                             not in the index, so its full content is unknown; set REPLICA \
                             IDENTITY FULL on the table, or rebuild the index with a backfill",
                        )
                    };
                    report.letters.push((ticket, letter));
                }
                Some((stored, _)) if stored > version => report.settle(&ticket, Outcome::Stale),
                Some((_, mut source)) => {
                    source.append(&mut fields);
                    match serde_json::to_vec(&source) {
                        Ok(bytes) => ready.push(Ready {
                            op: BulkOp::Index {
                                index,
                                id,
                                version,
                                document: bytes.into(),
                            },
                            outcome,
                            ticket,
                        }),
                        Err(error) => report.letters.push((
                            ticket,
                            DeadLetter::new("index", "serialize", error.to_string()),
                        )),
                    }
                }
            }
        }
    }
    Ok(())
}

/// The stored documents `ids` of `index`; a request the cluster refuses (a missing index, say)
/// reads as missing documents.
async fn read<W: BulkWriter>(
    writer: &Writer<W>,
    index: &str,
    ids: &[String],
) -> Result<Vec<Stored>, Error> {
    let mut classify = Classify::running(&writer.stats, "read documents for a partial update");
    let result = retry::retry(
        writer.policy,
        &writer.shutdown,
        || writer.bulk.mget(index, ids),
        |error, attempt| classify.decide(error, attempt),
    )
    .await;
    match result {
        Ok(current) => Ok(current),
        Err(Failure::Interrupted(_)) => Err(Error::Interrupted),
        Err(Failure::GaveUp(error)) if error.action() == Action::DeadLetter => {
            Ok(vec![None; ids.len()])
        }
        Err(Failure::GaveUp(error)) => Err(writer.stopped(error)),
    }
}

/// What a TRUNCATE marker did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Documents deleted (or already gone).
    pub deleted: usize,
    /// Documents kept because they are newer than the truncate.
    pub newer: usize,
    /// Deletes the cluster refused: those documents are still in the index.
    pub refused: usize,
}

/// Applies a TRUNCATE marker: every document of `pattern` whose version is not newer than the
/// truncate is deleted, with a versioned delete (a document written since survives the 409).
pub async fn truncate<W: BulkWriter>(
    writer: &Writer<W>,
    pattern: &str,
    version: u64,
    batch_size: usize,
) -> Result<Truncated, Error> {
    let mut classify = Classify::running(&writer.stats, "read the documents to truncate");
    let scanned = retry::retry(
        writer.policy,
        &writer.shutdown,
        || async {
            writer.bulk.refresh(pattern).await?;
            writer.bulk.scan_versions(pattern).await
        },
        |error, attempt| classify.decide(error, attempt),
    )
    .await;
    let documents = match scanned {
        Ok(documents) => documents,
        Err(Failure::Interrupted(_)) => return Err(Error::Interrupted),
        Err(Failure::GaveUp(error)) => return Err(writer.stopped(error)),
    };
    let mut truncated = Truncated::default();
    let deletes: Vec<BulkOp> = documents
        .into_iter()
        .filter(|(_, _, current)| {
            let older = *current <= version;
            truncated.newer += usize::from(!older);
            older
        })
        .map(|(index, id, _)| BulkOp::Delete { index, id, version })
        .collect();
    for chunk in deletes.chunks(batch_size.max(1)) {
        let (finished, refused) = send(writer, chunk.to_vec()).await?;
        for (op, result, _) in finished {
            match result {
                ItemResult::Done | ItemResult::NotFound => truncated.deleted += 1,
                ItemResult::Stale => truncated.newer += 1,
                ItemResult::Rejected { reason, .. } => {
                    truncated.refused += 1;
                    tracing::warn!(sink = %writer.stats.sink, index = op.index(), id = op.id(), %reason, "truncate delete refused");
                }
                ItemResult::Retry { .. } => {}
            }
        }
        if let Some((pending, error, _)) = refused {
            truncated.refused += pending.len();
            tracing::warn!(sink = %writer.stats.sink, %error, documents = pending.len(), "truncate deletes refused");
        }
    }
    Ok(truncated)
}

#[cfg(test)]
mod tests;
