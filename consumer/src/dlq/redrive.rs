//! `dlq <sink> redrive`: the letters still to re-drive, batch by batch, through the sink's own
//! stages as they are configured now (see the module essay of [`super`]).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_common::config::Config;
use tokio_util::sync::CancellationToken;

use super::Options;
use super::letter::{Filter, Stored};
use super::read::Letters;
use super::summary::Summary;
use crate::batch::{DocKey, Item, Ticket};
use crate::consume::{Routed, decode_and_route};
use crate::dead_letter::{DeadLetter, DeadLetters, Original};
use crate::elastic::deliver::{self, Writer};
use crate::elastic::retry::policy;
use crate::elastic::{BulkWriter, Client};
use crate::error::Error;
use crate::event::KafkaPosition;
use crate::offsets::Slot;
use crate::sink::{Prepared, set_up_cluster};
use crate::stats::{Outcome, SinkStats};

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a redrive did (or, dry, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The selected letters, by reason.
    pub selected: Summary,
    pub indexed: u64,
    pub deleted: u64,
    /// The index holds a newer version: the old event was not applied.
    pub stale: u64,
    /// The sink's filter (or `actions`) now leaves the event out.
    pub filtered: u64,
    /// Nothing to write (a truncate marker).
    pub skipped: u64,
    /// Failed again, by their new reason; written back with their attempts counted.
    pub failed: Summary,
    /// Letters `--reason`/`--since` did not select, written back unchanged.
    pub kept: u64,
    /// Dry run: letters that would be sent to the cluster.
    pub would_send: u64,
}

impl Tally {
    fn settle(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Indexed => self.indexed += 1,
            Outcome::Deleted => self.deleted += 1,
            Outcome::Stale => self.stale += 1,
            Outcome::Filtered => self.filtered += 1,
            Outcome::Skipped | Outcome::DeadLettered => self.skipped += 1,
        }
    }

    fn add(&mut self, other: Self) {
        let Self {
            selected,
            indexed,
            deleted,
            stale,
            filtered,
            skipped,
            failed,
            kept,
            would_send,
        } = other;
        self.selected.merge(selected);
        self.indexed += indexed;
        self.deleted += deleted;
        self.stale += stale;
        self.filtered += filtered;
        self.skipped += skipped;
        self.failed.merge(failed);
        self.kept += kept;
        self.would_send += would_send;
    }

    pub fn to_json(&self, sink: &str, topic: &str, dry_run: bool) -> Value {
        json!({
            "sink": sink,
            "topic": topic,
            "dry_run": dry_run,
            "selected": self.selected.to_json(),
            "indexed": self.indexed,
            "deleted": self.deleted,
            "stale": self.stale,
            "filtered": self.filtered,
            "skipped": self.skipped,
            "failed_again": self.failed.to_json(),
            "not_selected": self.kept,
            "would_send": dry_run.then_some(self.would_send),
        })
    }

    pub fn render(&self, sink: &str, topic: &str, dry_run: bool) -> String {
        let selected = self.selected.total;
        if selected == 0 && self.kept == 0 {
            return format!("sink {sink}: no dead letters to re-drive (topic {topic})\n");
        }
        let mut out = String::new();
        if dry_run {
            let _ = writeln!(
                out,
                "sink {sink}: dry run: {selected} dead letters would be re-driven (topic {topic}; nothing written, nothing committed)\n  \
                 {} would go to the cluster, filtered {}, skipped {}, would fail again before it {}",
                self.would_send, self.filtered, self.skipped, self.failed.total
            );
        } else {
            let _ = writeln!(
                out,
                "sink {sink}: {selected} dead letters re-driven (topic {topic})\n  \
                 indexed {}, deleted {}, stale {} (the index held a newer version), filtered {}, skipped {}, failed again {}",
                self.indexed,
                self.deleted,
                self.stale,
                self.filtered,
                self.skipped,
                self.failed.total
            );
        }
        out.push_str("  re-driven by reason:\n");
        out.push_str(&self.selected.render("    "));
        if self.failed.total > 0 {
            out.push_str(if dry_run {
                "  would fail again before the cluster:\n"
            } else {
                "  failed again (back in the dead-letter topic with their attempts counted):\n"
            });
            out.push_str(&self.failed.render("    "));
        }
        if self.kept > 0 {
            let _ = writeln!(
                out,
                "  {} not selected by --reason/--since{}",
                self.kept,
                if dry_run {
                    ""
                } else {
                    ": written again at the end of the topic, still to re-drive"
                }
            );
        }
        out
    }
}

/// One batch of letters through the stages.
#[derive(Debug, Default)]
struct Round {
    tally: Tally,
    /// To write at the end of the dead-letter topic: letters that failed again and letters not
    /// selected.
    to_write: Vec<(Original, DeadLetter)>,
}

impl Round {
    fn failed(&mut self, letter: &Stored, failure: DeadLetter) {
        let failure = letter.again(failure);
        self.tally.failed.add(
            &failure.stage,
            &failure.error_type,
            &failure.reason,
            failure.status,
            None,
        );
        self.to_write.push((letter.original(), failure));
    }
}

/// Re-drives the letters still to re-drive that `options.filter` selects and prints the
/// report; `Ok(false)` when some failed again.
pub async fn redrive(
    config: Config,
    options: &Options,
    dry_run: bool,
    shutdown: CancellationToken,
) -> Result<bool, Error> {
    let tally = redrive_letters(&config, &options.sink, &options.filter, dry_run, shutdown).await?;
    let topic = config
        .sink(&options.sink)
        .map(sluice_common::config::SinkConfig::dlq_topic)
        .unwrap_or_default();
    print(&tally, &options.sink, &topic, dry_run, options.json);
    Ok(tally.failed.total == 0)
}

/// The redrive itself, reporting only progress: what `dlq redrive` and the console's redrive
/// action run.
pub async fn redrive_letters(
    config: &Config,
    sink: &str,
    filter: &Filter,
    dry_run: bool,
    shutdown: CancellationToken,
) -> Result<Tally, Error> {
    let Some(prepared) = crate::prepare(config, Some(sink))?.pop() else {
        return Err(crate::verify::unknown_sink(config, sink));
    };
    let sink = prepared.config.clone();
    let topic = sink.dlq_topic();
    let Some(mut letters) = Letters::open(config, &sink).await? else {
        return Ok(Tally::default());
    };
    let client = Client::new(&sink.elasticsearch).map_err(|source| Error::Elastic {
        sink: sink.name.clone(),
        source,
    })?;
    let dead_letters = if dry_run {
        None
    } else {
        // The index as the sink would make it (a sink re-created with new mappings).
        set_up_cluster(&client, &prepared, &shutdown).await?;
        Some(DeadLetters::new(config, &sink)?)
    };
    let writer = Writer {
        bulk: client,
        policy: policy(&sink),
        stats: Arc::new(SinkStats::new(
            &sink.name,
            &config.topic_for(&sink.table),
            &topic,
        )),
        shutdown: shutdown.clone(),
    };
    let batch_size = sink.elasticsearch.batch_size.max(1);
    letters.seek_pending()?;
    let mut tally = Tally::default();
    let mut progress = Instant::now();
    loop {
        let batch = letters.next_batch(batch_size).await?;
        if batch.is_empty() {
            break;
        }
        let round = drive(&prepared, &writer, &batch, filter, dry_run).await?;
        if let Some(dead_letters) = &dead_letters {
            let outgoing: Vec<(&Original, &DeadLetter)> =
                round.to_write.iter().map(|(o, l)| (o, l)).collect();
            dead_letters.send_all(&outgoing, &shutdown).await?;
            // Only now is every letter of the batch settled: re-driven, or written again.
            letters.commit(&ends(&batch))?;
        }
        tally.add(round.tally);
        if progress.elapsed() >= PROGRESS_EVERY {
            progress = Instant::now();
            eprintln!(
                "redrive {}: {} letters re-driven, {} failed again",
                sink.name, tally.selected.total, tally.failed.total
            );
        }
    }
    Ok(tally)
}

fn print(tally: &Tally, sink: &str, topic: &str, dry_run: bool, json: bool) {
    if json {
        println!("{}", tally.to_json(sink, topic, dry_run));
    } else {
        print!("{}", tally.render(sink, topic, dry_run));
    }
}

/// Per partition, one past the last letter of `batch`: what its commit marks as re-driven.
fn ends(batch: &[Stored]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for letter in batch {
        let end = ends.entry(letter.partition).or_insert(0);
        *end = (*end).max(letter.offset + 1);
    }
    ends
}

/// One batch: decode and route each selected letter as the read loop would, deliver the
/// writes (a dry run stops before the cluster), and collect what must be written back.
async fn drive<W: BulkWriter>(
    prepared: &Prepared,
    writer: &Writer<W>,
    batch: &[Stored],
    filter: &Filter,
    dry_run: bool,
) -> Result<Round, Error> {
    let mut round = Round::default();
    let mut items = Vec::new();
    for (at, letter) in batch.iter().enumerate() {
        if !filter.matches(letter) {
            round.tally.kept += 1;
            round.to_write.push((letter.original(), letter.unchanged()));
            continue;
        }
        round.tally.selected.add_stored(letter);
        let kafka = KafkaPosition {
            topic: &letter.why.topic,
            partition: letter.why.source_partition,
            offset: letter.why.source_offset,
        };
        match decode_and_route(prepared, letter.payload.as_deref(), kafka) {
            Routed::Done(outcome) => round.tally.settle(outcome),
            // A truncate marker is never dead-lettered; nothing to re-drive in one.
            Routed::Truncate(_) => round.tally.settle(Outcome::Skipped),
            Routed::DeadLetter(failure) => round.failed(letter, failure),
            Routed::Write(doc, _) => items.push(Item {
                doc,
                ticket: Ticket {
                    // The letter's place in the batch: how its outcome finds it again.
                    slot: Slot {
                        partition: letter.partition,
                        generation: 0,
                        offset: i64::try_from(at).unwrap_or(i64::MAX),
                    },
                    replaced: Vec::new(),
                    original: letter.original(),
                    commit_micros: 0,
                },
            }),
        }
    }
    if dry_run {
        round.tally.would_send = items.len() as u64;
        round.to_write.clear();
        return Ok(round);
    }
    let batch_size = prepared.config.elasticsearch.batch_size.max(1);
    for chunk in chunks(items, batch_size) {
        let report = deliver::deliver(writer, chunk).await?;
        for (_, outcome, _) in &report.settled {
            round.tally.settle(*outcome);
        }
        for (ticket, failure) in report.letters {
            let letter = usize::try_from(ticket.slot.offset)
                .ok()
                .and_then(|at| batch.get(at));
            if let Some(letter) = letter {
                round.failed(letter, failure);
            }
        }
    }
    Ok(round)
}

/// The items in bulk requests of at most `size`, in order, a document at most once per
/// request: two events of one document in one request would read or collapse each other (a
/// partial update reads the stored document), so the second starts the next request.
fn chunks(items: Vec<Item>, size: usize) -> Vec<Vec<Item>> {
    let mut chunks: Vec<Vec<Item>> = Vec::new();
    let mut keys: HashSet<DocKey> = HashSet::new();
    for item in items {
        let key = item.key();
        let full = chunks.last().is_none_or(|c| c.len() >= size);
        if full || keys.contains(&key) {
            chunks.push(Vec::new());
            keys.clear();
        }
        keys.insert(key);
        if let Some(chunk) = chunks.last_mut() {
            chunk.push(item);
        }
    }
    chunks
}

#[cfg(test)]
mod tests;
