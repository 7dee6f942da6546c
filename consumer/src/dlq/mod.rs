//! `sluice-consumer dlq <sink> list | show | redrive`: the sink's failed deliveries.
//!
//! The dead-letter topic `{sink}.dlq` is the record of every event the sink could not index,
//! each the original key and value with why in `sluice.dlq.*` headers. The consumer group
//! `{sink}.dlq-redrive` marks what was re-driven: its committed offset in a partition is where
//! the letters still to re-drive begin.
//!
//! ```text
//!  partition 0:  [re-driven · · · · ·|to re-drive · · · · · · · · ·]
//!                earliest            ^ {sink}.dlq-redrive          end
//!
//!  redrive:  letter ─▶ decode ─▶ route (filter, transform, index, _id) ─▶ deliver (_bulk)
//!               │                    │ fails                                │ rejected
//!               │ not selected       ▼                                      ▼
//!               └──────────▶  written again at the end  ◀── (attempts + 1) ─┘
//!                             then the group commits past the batch
//! ```
//!
//! `list` and `show` read from the redrive group's offsets to the end and commit nothing.
//! `redrive` takes letters in batches through the consumer's own stages, writes those that
//! fail again (with their attempts counted) and those `--reason`/`--since` did not select back
//! to the end of the topic, waits for Kafka to take them, and only then commits the batch: a
//! crash re-drives at most one batch again, and a letter is never lost. Versions (the commit
//! LSN, `external_gte`) keep a re-driven old event from overwriting a newer document.

mod letter;
mod read;
mod redrive;
pub(crate) mod show;
pub mod summary;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_common::config::{Config, SinkConfig};
use tokio_util::sync::CancellationToken;

pub use self::letter::{Filter, reason_group};
pub(crate) use self::read::Letters;
use self::read::Span;
pub use self::redrive::{Tally, redrive, redrive_letters};
use self::summary::Summary;
use crate::error::Error;

/// Letters read from Kafka per batch by `list` and `show`.
const READ_BATCH: usize = 1_000;

/// What `dlq` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub sink: String,
    pub command: Command,
    pub filter: Filter,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Counts by stage, error type and reason.
    List,
    /// The letters at `at`, or the first `limit` still to re-drive.
    Show { at: Option<At>, limit: usize },
    /// Re-submits the selected letters through the sink's current stages.
    Redrive { dry_run: bool },
}

/// `--offset` of `show`: a position in the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// `O`: offset O of every partition.
    Offset(i64),
    /// `P:O`: offset O of partition P.
    Position(i32, i64),
}

/// Parses `--offset`: `PARTITION:OFFSET` as `show` prints it, or an offset alone.
pub fn parse_at(text: &str) -> Result<At, String> {
    let bad = || {
        format!(
            "`{text}` is not a position: give PARTITION:OFFSET as `dlq show` prints it (0:17), or \
             an offset alone for that offset of every partition"
        )
    };
    match text.split_once(':') {
        Some((partition, offset)) => Ok(At::Position(
            partition.trim().parse().map_err(|_| bad())?,
            offset.trim().parse().map_err(|_| bad())?,
        )),
        None => text.trim().parse().map(At::Offset).map_err(|_| bad()),
    }
    .and_then(|at| match at {
        At::Offset(o) | At::Position(_, o) if o < 0 => Err(bad()),
        At::Position(p, _) if p < 0 => Err(bad()),
        at => Ok(at),
    })
}

/// Parses `--since`: an RFC 3339 time, or a duration back from now (`2h`, `30m`, `1d`); Unix ms.
pub fn parse_since(text: &str) -> Result<i64, String> {
    let at = humantime::parse_rfc3339_weak(text.trim())
        .ok()
        .or_else(|| {
            let back = humantime::parse_duration(text.trim()).ok()?;
            SystemTime::now().checked_sub(back)
        })
        .ok_or_else(|| {
            format!(
                "`{text}` is neither an RFC 3339 time (2024-05-01T12:00:00Z) nor a duration back \
                 from now (2h, 30m, 1d)"
            )
        })?;
    let ms = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Runs a `dlq` command and prints its report. `Ok(false)`: `redrive` left letters that failed
/// again (exit 1), or `show` found no letter at `--offset`.
pub async fn dlq(
    config: Config,
    options: Options,
    shutdown: CancellationToken,
) -> Result<bool, Error> {
    let Some(sink) = config.sink(&options.sink).cloned() else {
        return Err(crate::verify::unknown_sink(&config, &options.sink));
    };
    match options.command.clone() {
        Command::List => list(&config, &sink, &options).await,
        Command::Show { at, limit } => show_letters(&config, &sink, &options, at, limit).await,
        Command::Redrive { dry_run } => redrive(config, &options, dry_run, shutdown).await,
    }
}

async fn list(config: &Config, sink: &SinkConfig, options: &Options) -> Result<bool, Error> {
    let topic = sink.dlq_topic();
    let (summary, pending, held) = match Letters::open(config, sink).await? {
        Some(mut letters) => {
            let (pending, held) = (letters.pending(), letters.held());
            (
                pending_summary(&mut letters, &options.filter).await?,
                pending,
                held,
            )
        }
        None => (Summary::default(), 0, 0),
    };
    if options.json {
        let mut json = summary.to_json();
        json["sink"] = sink.name.clone().into();
        json["topic"] = topic.into();
        json["to_redrive"] = pending.into();
        json["held"] = held.into();
        println!("{json}");
        return Ok(true);
    }
    let selected = if options.filter == Filter::default() {
        String::new()
    } else {
        format!(" selected (of {pending})")
    };
    print!(
        "sink {}: {} dead letters to re-drive{selected} (topic {topic}, {held} held)\n{}",
        sink.name,
        summary.total,
        summary.render("  ")
    );
    if summary.total > 0 {
        println!(
            "show them with `dlq {0} show`; after fixing the cause, `dlq {0} redrive` re-drives them",
            sink.name
        );
    }
    Ok(true)
}

/// The letters still to re-drive that `filter` selects, counted by reason.
pub(crate) async fn pending_summary(
    letters: &mut Letters,
    filter: &Filter,
) -> Result<Summary, Error> {
    letters.seek_pending()?;
    let mut summary = Summary::default();
    loop {
        let batch = letters.next_batch(READ_BATCH).await?;
        if batch.is_empty() {
            return Ok(summary);
        }
        for letter in batch.iter().filter(|l| filter.matches(l)) {
            summary.add_stored(letter);
        }
    }
}

async fn show_letters(
    config: &Config,
    sink: &SinkConfig,
    options: &Options,
    at: Option<At>,
    limit: usize,
) -> Result<bool, Error> {
    let topic = sink.dlq_topic();
    let mut shown = Vec::new();
    let mut held = Vec::new();
    if let Some(mut letters) = Letters::open(config, sink).await? {
        held = letters
            .spans
            .iter()
            .map(|s| format!("{}:{}..{}", s.partition, s.earliest, s.end))
            .collect();
        match at {
            Some(at) => letters.seek(&at_ranges(&letters.spans, at))?,
            None => letters.seek_pending()?,
        }
        // `--offset` shows what is there, selected or not.
        let limit = if at.is_some() { usize::MAX } else { limit };
        while shown.len() < limit {
            let batch = letters.next_batch(READ_BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for letter in batch {
                if at.is_none() && !options.filter.matches(&letter) {
                    continue;
                }
                let redriven = letters
                    .spans
                    .iter()
                    .any(|s| s.partition == letter.partition && letter.offset < s.pending_from());
                shown.push((letter, redriven));
            }
        }
        shown.truncate(limit);
    }
    if options.json {
        let list: Vec<serde_json::Value> =
            shown.iter().map(|(l, r)| show::to_json(l, *r)).collect();
        println!(
            "{}",
            serde_json::json!({"sink": sink.name, "topic": topic, "letters": list})
        );
    } else {
        for (letter, redriven) in &shown {
            println!("{}", show::render(letter, *redriven));
        }
    }
    if at.is_some() && shown.is_empty() {
        let held = if held.is_empty() {
            "nothing".to_owned()
        } else {
            held.join(", ")
        };
        eprintln!("sluice-consumer: no dead letter at that --offset in {topic} (it holds {held})");
        return Ok(false);
    }
    if !options.json && shown.is_empty() {
        println!(
            "sink {}: no dead letters to re-drive (topic {topic})",
            sink.name
        );
    }
    Ok(true)
}

/// The one-letter ranges `--offset` names, among those the topic holds.
fn at_ranges(spans: &[Span], at: At) -> Vec<(i32, i64, i64)> {
    spans
        .iter()
        .filter_map(|s| {
            let offset = match at {
                At::Offset(o) => o,
                At::Position(p, o) if p == s.partition => o,
                At::Position(..) => return None,
            };
            (offset >= s.earliest && offset < s.end).then_some((s.partition, offset, offset + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_times_parse_or_say_what_to_give() {
        assert_eq!(parse_at("0:17"), Ok(At::Position(0, 17)));
        assert_eq!(parse_at("17"), Ok(At::Offset(17)));
        for bad in ["x", "0:", ":1", "-1", "1:-2", "a:b"] {
            let error = parse_at(bad).unwrap_err();
            assert!(error.contains("PARTITION:OFFSET"), "{bad}: {error}");
        }
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Ok(1_000));
        let two_hours_ago = parse_since("2h").unwrap_or_default();
        let now = parse_since("0s").unwrap_or_default();
        assert!((now - two_hours_ago - 7_200_000).abs() < 1_000);
        let error = parse_since("yesterday").unwrap_err();
        assert!(
            error.contains("RFC 3339") && error.contains("2h"),
            "{error}"
        );
    }

    #[test]
    fn an_offset_names_a_letter_of_every_partition_that_holds_it() {
        let span = |partition, earliest, end| Span {
            partition,
            earliest,
            end,
            redriven: None,
        };
        let spans = [span(0, 0, 10), span(1, 5, 20), span(2, 0, 3)];
        assert_eq!(
            at_ranges(&spans, At::Offset(7)),
            [(0, 7, 8), (1, 7, 8)],
            "partition 2 ends before 7"
        );
        assert_eq!(at_ranges(&spans, At::Position(1, 5)), [(1, 5, 6)]);
        assert!(
            at_ranges(&spans, At::Position(1, 4)).is_empty(),
            "removed by retention"
        );
        assert!(
            at_ranges(&spans, At::Position(3, 0)).is_empty(),
            "no such partition"
        );
    }
}
