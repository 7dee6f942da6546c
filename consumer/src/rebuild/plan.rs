//! Where a rebuild stands, read from the cluster alone: which index the alias serves, which
//! versions `{alias}-v{n}` exist, which of them an unfinished rebuild created (its `_meta`) and
//! whether the served one is write-blocked. No I/O here: the command observes, this decides.
//!
//! ```text
//!  alias ─▶ {alias}-v1                      nothing started          → Fresh (create v2)
//!  alias ─▶ {alias}-v1, v2 meta "filling"   interrupted while filling → Resume
//!  alias ─▶ {alias}-v1 (blocked), v2 …      interrupted while blocked → Resume, blocked
//!  alias ─▶ {alias}-v2 meta "filling"       interrupted after the swap → Finish (lift, clean)
//! ```
//!
//! The state a re-run needs is therefore never lost with the process: the target index and its
//! `_meta`, the block on the old index and the alias are the cluster's; the rebuild's progress
//! is its consumer group's committed offsets, in Kafka.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The key of the rebuild's record in the target index's mapping `_meta`.
pub const META_KEY: &str = "sluice_rebuild";

/// What a rebuild writes into its target's mapping `_meta` (under [`META_KEY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub sink: String,
    /// The index the alias served when the rebuild started.
    pub from: String,
    /// The rebuild's consumer group.
    pub group: String,
    pub state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Created, being filled, or swapped but not cleaned up yet.
    Filling,
    /// Serving, the old index unblocked: nothing left to do.
    Done,
}

/// One index `{alias}-v{number}` as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub name: String,
    pub number: u32,
    pub meta: Option<Meta>,
    pub write_blocked: bool,
}

/// What the cluster says about an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub alias: String,
    /// The indices the alias points at; `None` when there is no alias of that name.
    pub serving: Option<Vec<String>>,
    /// Whether a concrete index has the alias's name.
    pub index_named_like_alias: bool,
    /// Every `{alias}-v{n}`, in any order.
    pub versions: Vec<Version>,
}

/// How a rebuild goes on from what the cluster holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Nothing unfinished: create `target` and fill it.
    Fresh { from: String, target: String },
    /// `target` was created by an earlier run that did not swap: fill on from its group's
    /// offsets (`blocked`: that run had blocked `from` already).
    Resume {
        from: String,
        target: String,
        group: String,
        blocked: bool,
    },
    /// The alias already serves `target`: lift the block on `from` and clean up.
    Finish {
        from: String,
        target: String,
        group: String,
    },
}

/// The number `n` of `{alias}-v{n}`, when `name` is one.
pub fn version_of(alias: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(alias)?.strip_prefix("-v")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

/// The one index the alias serves, or why a rebuild cannot start, with the fix.
fn served(observed: &Observed) -> Result<&str, String> {
    let alias = &observed.alias;
    match observed.serving.as_deref() {
        Some([one]) => Ok(one),
        Some(several) => Err(format!(
            "alias {alias} points at {} indices ({}): a rebuild swaps one index for another; \
             leave one behind the alias (POST /_aliases with a `remove`)",
            several.len(),
            several.join(", ")
        )),
        None if observed.index_named_like_alias => Err(format!(
            "{alias} is an index, not an alias, so it cannot be swapped without downtime: \
             reindex it into {alias}-v1, delete it and add the alias {alias} to {alias}-v1 \
             (see docs/operations.md), then rebuild"
        )),
        None => Err(format!(
            "alias {alias} does not exist: run the sink once (it creates {alias}-v1 behind the \
             alias {alias}), then rebuild"
        )),
    }
}

/// How to go on (see [`Start`]), or why not, with the fix.
pub fn start(observed: &Observed, sink: &str) -> Result<Start, String> {
    let from = served(observed)?;
    let alias = &observed.alias;
    let unfinished = |v: &&Version| {
        v.meta
            .as_ref()
            .is_some_and(|m| m.state == State::Filling && m.sink == sink)
    };
    if let Some(serving) = observed.versions.iter().find(|v| v.name == from)
        && let Some(meta) = serving.meta.as_ref().filter(|_| unfinished(&serving))
    {
        return Ok(Start::Finish {
            from: meta.from.clone(),
            target: from.to_owned(),
            group: meta.group.clone(),
        });
    }
    let mut open: Vec<&Version> = observed
        .versions
        .iter()
        .filter(|v| v.name != from)
        .filter(unfinished)
        .collect();
    open.sort_by_key(|v| v.number);
    match open.as_slice() {
        [] => {}
        [one] => {
            let Some(meta) = &one.meta else {
                return Err(format!("{} has no rebuild record", one.name));
            };
            if meta.from != from {
                return Err(format!(
                    "an interrupted rebuild into {} started from {}, but alias {alias} now \
                     serves {from}: run `rebuild {sink} --abort` to delete {}, then rebuild again",
                    one.name, meta.from, one.name
                ));
            }
            let blocked = observed
                .versions
                .iter()
                .any(|v| v.name == from && v.write_blocked);
            return Ok(Start::Resume {
                from: from.to_owned(),
                target: one.name.clone(),
                group: meta.group.clone(),
                blocked,
            });
        }
        several => {
            let names: Vec<&str> = several.iter().map(|v| v.name.as_str()).collect();
            return Err(format!(
                "several interrupted rebuilds of alias {alias} ({}): delete all but the newest \
                 (DELETE /<index>), then run again",
                names.join(", ")
            ));
        }
    }
    let next = observed
        .versions
        .iter()
        .map(|v| v.number)
        .chain(version_of(alias, from))
        .max()
        .unwrap_or(0)
        + 1;
    Ok(Start::Fresh {
        from: from.to_owned(),
        target: format!("{alias}-v{next}"),
    })
}

/// The versions older than `target` to delete so that `keep` of them remain (the newest first),
/// never one the alias serves.
pub fn to_delete(observed: &Observed, target: &str, keep: usize) -> Vec<String> {
    let Some(limit) = version_of(&observed.alias, target) else {
        return Vec::new();
    };
    let serving = observed.serving.clone().unwrap_or_default();
    let mut older: Vec<&Version> = observed
        .versions
        .iter()
        .filter(|v| v.number < limit && !serving.contains(&v.name))
        .collect();
    older.sort_by_key(|v| std::cmp::Reverse(v.number));
    older
        .into_iter()
        .skip(keep)
        .map(|v| v.name.clone())
        .collect()
}

/// The refresh interval a new index is filled with: none. A refresh every second would make
/// segments of a second's writes each, merged again while the fill goes on; the index serves no
/// search before the swap, which refreshes it explicitly.
pub const FILL_REFRESH_INTERVAL: &str = "-1";

/// Where index settings can name `refresh_interval`: flat, nested under `index`, or bare.
const REFRESH_KEYS: [&str; 2] = ["index.refresh_interval", "refresh_interval"];

/// The settings a new index is created with: `settings` (the sink's or `--settings`) with the
/// refresh interval replaced by [`FILL_REFRESH_INTERVAL`], and the interval to restore before
/// the swap (`null`: the cluster's default).
pub fn fill_settings(settings: Option<&Value>) -> (Value, Value) {
    let mut settings = match settings {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    let mut restore = Value::Null;
    for key in REFRESH_KEYS {
        if let Some(value) = settings.remove(key) {
            restore = value;
        }
    }
    if let Some(Value::Object(index)) = settings.get_mut("index")
        && let Some(value) = index.remove("refresh_interval")
    {
        restore = value;
    }
    settings.insert(
        REFRESH_KEYS[0].to_owned(),
        Value::String(FILL_REFRESH_INTERVAL.to_owned()),
    );
    (Value::Object(settings), restore)
}

/// Fewest documents per bulk request of the fill, unless `--batch-size` says otherwise. The
/// fill is a bulk load into an index nothing searches yet: larger requests cost the cluster
/// less per document (2,000 × 4 in flight indexed about 40% faster than 500 × 4 here), and
/// its latency does not matter.
const FILL_BATCH_SIZE: usize = 2_000;

/// The fill's documents per bulk request: `--batch-size`, or the sink's and [`FILL_BATCH_SIZE`],
/// whichever is larger.
pub fn fill_batch_size(sink: usize, flag: Option<usize>) -> usize {
    flag.unwrap_or(sink.max(FILL_BATCH_SIZE))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_fill_sends_at_least_two_thousand_documents_per_request_unless_told() {
        assert_eq!(fill_batch_size(500, None), 2_000);
        assert_eq!(fill_batch_size(5_000, None), 5_000);
        assert_eq!(fill_batch_size(5_000, Some(100)), 100);
    }

    #[test]
    fn a_new_index_is_filled_without_refreshes_and_gets_the_configured_interval_back() {
        let (fill, restore) = fill_settings(None);
        assert_eq!(fill, json!({"index.refresh_interval": "-1"}));
        assert_eq!(restore, Value::Null);
        for given in [
            json!({"index": {"number_of_shards": 2, "refresh_interval": "5s"}}),
            json!({"index.refresh_interval": "5s", "index": {"number_of_shards": 2}}),
            json!({"refresh_interval": "5s", "index": {"number_of_shards": 2}}),
        ] {
            let (fill, restore) = fill_settings(Some(&given));
            assert_eq!(
                fill,
                json!({"index": {"number_of_shards": 2}, "index.refresh_interval": "-1"}),
                "{given}"
            );
            assert_eq!(restore, json!("5s"), "{given}");
        }
    }

    fn version(number: u32, meta: Option<(&str, State)>, blocked: bool) -> Version {
        Version {
            name: format!("items-v{number}"),
            number,
            meta: meta.map(|(from, state)| Meta {
                sink: "s".to_owned(),
                from: from.to_owned(),
                group: format!("s.rebuild-v{number}"),
                state,
            }),
            write_blocked: blocked,
        }
    }

    fn observed(serving: &[&str], versions: Vec<Version>) -> Observed {
        Observed {
            alias: "items".to_owned(),
            serving: Some(serving.iter().map(|s| (*s).to_owned()).collect()),
            index_named_like_alias: false,
            versions,
        }
    }

    #[test]
    fn versions_are_the_alias_dash_v_and_a_number() {
        assert_eq!(version_of("items", "items-v1"), Some(1));
        assert_eq!(version_of("items", "items-v12"), Some(12));
        for other in [
            "items",
            "items-v",
            "items-v01",
            "items-very",
            "items-v1-x",
            "other-v1",
        ] {
            assert_eq!(version_of("items", other), None, "{other}");
        }
    }

    #[test]
    fn a_fresh_rebuild_takes_the_next_free_version() {
        let o = observed(&["items-v1"], vec![version(1, None, false)]);
        assert_eq!(
            start(&o, "s").unwrap(),
            Start::Fresh {
                from: "items-v1".to_owned(),
                target: "items-v2".to_owned()
            }
        );
        // A kept older version and a finished one do not count as unfinished.
        let o = observed(
            &["items-v3"],
            vec![
                version(1, None, false),
                version(2, Some(("items-v1", State::Done)), false),
                version(3, Some(("items-v2", State::Done)), false),
                version(5, None, false),
            ],
        );
        assert!(
            matches!(start(&o, "s").unwrap(), Start::Fresh { target, .. } if target == "items-v6")
        );
        // An alias over an index of another name.
        let o = observed(&["legacy"], vec![]);
        assert!(
            matches!(start(&o, "s").unwrap(), Start::Fresh { target, .. } if target == "items-v1")
        );
    }

    #[test]
    fn an_interrupted_rebuild_is_resumed_blocked_or_not() {
        let o = observed(
            &["items-v1"],
            vec![
                version(1, None, false),
                version(2, Some(("items-v1", State::Filling)), false),
            ],
        );
        assert_eq!(
            start(&o, "s").unwrap(),
            Start::Resume {
                from: "items-v1".to_owned(),
                target: "items-v2".to_owned(),
                group: "s.rebuild-v2".to_owned(),
                blocked: false
            }
        );
        let o = observed(
            &["items-v1"],
            vec![
                version(1, None, true),
                version(2, Some(("items-v1", State::Filling)), false),
            ],
        );
        assert!(matches!(
            start(&o, "s").unwrap(),
            Start::Resume { blocked: true, .. }
        ));
        // Another sink's rebuild of the same alias is not this one's.
        let mut other = version(2, Some(("items-v1", State::Filling)), false);
        other.meta.as_mut().unwrap().sink = "t".to_owned();
        let o = observed(&["items-v1"], vec![version(1, None, false), other]);
        assert!(
            matches!(start(&o, "s").unwrap(), Start::Fresh { target, .. } if target == "items-v3")
        );
    }

    #[test]
    fn a_swapped_but_unfinished_rebuild_is_finished() {
        let o = observed(
            &["items-v2"],
            vec![
                version(1, None, true),
                version(2, Some(("items-v1", State::Filling)), false),
            ],
        );
        assert_eq!(
            start(&o, "s").unwrap(),
            Start::Finish {
                from: "items-v1".to_owned(),
                target: "items-v2".to_owned(),
                group: "s.rebuild-v2".to_owned()
            }
        );
    }

    #[test]
    fn what_cannot_be_rebuilt_says_why_and_the_fix() {
        let mut o = observed(&[], vec![]);
        o.serving = None;
        assert!(start(&o, "s").unwrap_err().contains("run the sink once"));
        o.index_named_like_alias = true;
        assert!(
            start(&o, "s")
                .unwrap_err()
                .contains("is an index, not an alias")
        );
        let o = observed(&["items-v1", "items-v2"], vec![]);
        assert!(start(&o, "s").unwrap_err().contains("2 indices"));
        // The alias was moved by hand after a rebuild was interrupted.
        let o = observed(
            &["items-v3"],
            vec![
                version(2, Some(("items-v1", State::Filling)), false),
                version(3, None, false),
            ],
        );
        assert!(start(&o, "s").unwrap_err().contains("--abort"));
    }

    #[test]
    fn keep_old_keeps_the_newest_and_never_the_served_one() {
        let o = observed(
            &["items-v4"],
            vec![
                version(1, None, false),
                version(2, None, false),
                version(3, None, false),
                version(4, None, false),
            ],
        );
        assert_eq!(to_delete(&o, "items-v4", 1), ["items-v2", "items-v1"]);
        assert_eq!(to_delete(&o, "items-v4", 3), Vec::<String>::new());
        assert_eq!(
            to_delete(&o, "items-v4", 0),
            ["items-v3", "items-v2", "items-v1"]
        );
        // Before the swap nothing served is deleted, whatever `keep` says.
        let o = observed(&["items-v1"], vec![version(1, None, false)]);
        assert!(to_delete(&o, "items-v2", 0).is_empty());
    }
}
