//! Folding a topic into the table it describes, the way a sink applying versioned writes ends up:
//! per key, the event with the highest `commit_lsn` wins; between equal versions the later offset
//! wins (one key lives in one partition); a DELETE or a tombstone removes the row; a TRUNCATE
//! marker removes every row older than it. What remains should equal the table, column by column.

use std::collections::BTreeMap;

use sluice_proto::key;
use sluice_proto::v1::value::Kind;
use sluice_proto::v1::{Column, Op};

use crate::Record;

/// The folded state of one key.
#[derive(Debug, Clone)]
pub struct Folded {
    /// `commit_lsn` of the winning event.
    pub version: u64,
    pub partition: i32,
    pub offset: i64,
    /// The row, or `None` when the winning event deleted it.
    pub record: Option<Vec<Column>>,
}

/// A topic folded into rows.
#[derive(Debug, Default)]
pub struct Fold {
    pub keys: BTreeMap<Vec<u8>, Folded>,
    /// Highest TRUNCATE version seen.
    pub truncated_at: u64,
}

impl Fold {
    /// Folds `records` (any order: they are sorted by partition and offset first).
    pub fn new(records: &[Record]) -> Self {
        let mut sorted: Vec<&Record> = records.iter().collect();
        sorted.sort_by_key(|r| (r.partition, r.offset));
        let mut fold = Self::default();
        // The version of the last event of each key in offset order: a tombstone deletes at it.
        let mut last_version: BTreeMap<&[u8], u64> = BTreeMap::new();
        for record in sorted {
            let (version, row) = match &record.event {
                Some(event) => {
                    let version = event.position.as_ref().map_or(0, |p| p.commit_lsn);
                    match event.op() {
                        Op::Truncate => {
                            fold.truncated_at = fold.truncated_at.max(version);
                            continue;
                        }
                        Op::Delete => (version, None),
                        Op::Insert | Op::Update | Op::Read | Op::Unspecified => {
                            (version, Some(event.record.clone()))
                        }
                    }
                }
                None => match last_version.get(record.key.as_slice()) {
                    Some(&version) => (version, None),
                    None => continue,
                },
            };
            if key::is_truncate_marker(&record.key) {
                continue;
            }
            last_version.insert(record.key.as_slice(), version);
            let candidate = Folded {
                version,
                partition: record.partition,
                offset: record.offset,
                record: row,
            };
            match fold.keys.get(&record.key) {
                // Later offsets come later here, so equal versions go to the newcomer.
                Some(current) if current.version > version => {}
                _ => {
                    fold.keys.insert(record.key.clone(), candidate);
                }
            }
        }
        fold
    }

    /// The rows alive after folding: key → column name → value.
    pub fn rows(&self) -> BTreeMap<Vec<u8>, BTreeMap<String, Option<Kind>>> {
        self.keys
            .iter()
            .filter(|(_, f)| f.version >= self.truncated_at)
            .filter_map(|(key, f)| {
                let record = f.record.as_ref()?;
                let columns = record
                    .iter()
                    .map(|c| {
                        (
                            c.name.clone(),
                            c.value.as_ref().and_then(|v| v.kind.clone()),
                        )
                    })
                    .collect();
                Some((key.clone(), columns))
            })
            .collect()
    }
}

/// How a folded topic differs from the table.
#[derive(Debug, Default)]
pub struct Difference {
    /// Keys in the table but not in the topic.
    pub missing: Vec<String>,
    /// Keys in the topic but not in the table.
    pub extra: Vec<String>,
    /// Keys whose columns differ: key, what the table holds, what the topic holds.
    pub stale: Vec<(String, String, String)>,
}

impl Difference {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.stale.is_empty()
    }

    /// A short report: counts and the first few of each.
    pub fn report(&self) -> String {
        format!(
            "{} missing (first {:?}), {} extra (first {:?}), {} stale (first {:?})",
            self.missing.len(),
            &self.missing[..self.missing.len().min(5)],
            self.extra.len(),
            &self.extra[..self.extra.len().min(5)],
            self.stale.len(),
            &self.stale[..self.stale.len().min(3)],
        )
    }
}

/// Compares the folded rows with `table` (key → column → value), every column of every row.
pub fn compare(
    folded: &BTreeMap<Vec<u8>, BTreeMap<String, Option<Kind>>>,
    table: &BTreeMap<Vec<u8>, BTreeMap<String, Option<Kind>>>,
) -> Difference {
    let text = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    let mut difference = Difference::default();
    for (key, expected) in table {
        match folded.get(key) {
            None => difference.missing.push(text(key)),
            Some(actual) if actual != expected => {
                difference
                    .stale
                    .push((text(key), format!("{expected:?}"), format!("{actual:?}")));
            }
            Some(_) => {}
        }
    }
    for key in folded.keys() {
        if !table.contains_key(key) {
            difference.extra.push(text(key));
        }
    }
    difference
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sluice_proto::v1::{ChangeEvent, Position, Value};

    use super::*;

    fn event(op: Op, version: u64, n: i64) -> ChangeEvent {
        ChangeEvent {
            op: op as i32,
            position: Some(Position {
                commit_lsn: version,
                ..Position::default()
            }),
            record: vec![Column {
                name: "n".into(),
                type_name: "int8".into(),
                value: Some(Value::from(Kind::Int(n))),
            }],
            ..ChangeEvent::default()
        }
    }

    fn record(offset: i64, key: &str, event: Option<ChangeEvent>) -> Record {
        Record {
            partition: 0,
            offset,
            key: key.as_bytes().to_vec(),
            event,
        }
    }

    #[test]
    fn the_highest_version_wins_then_the_later_offset_and_deletes_remove() {
        let records = [
            record(0, "[1]", Some(event(Op::Insert, 10, 1))),
            record(1, "[1]", Some(event(Op::Read, 30, 3))),
            // An older update re-delivered after the READ: loses on version.
            record(2, "[1]", Some(event(Op::Update, 20, 2))),
            record(3, "[2]", Some(event(Op::Insert, 10, 1))),
            record(4, "[2]", Some(event(Op::Update, 10, 2))),
            record(5, "[3]", Some(event(Op::Read, 10, 1))),
            record(6, "[3]", Some(event(Op::Delete, 40, 1))),
            record(7, "[3]", None),
        ];
        let rows = Fold::new(&records).rows();
        let n = |key: &str| rows[key.as_bytes()]["n"].clone().unwrap();
        assert_eq!(n("[1]"), Kind::Int(3));
        assert_eq!(n("[2]"), Kind::Int(2), "equal versions: the later offset");
        assert!(!rows.contains_key(b"[3]".as_slice()));
    }
}
