//! What `verify` found, with no I/O: the documents a set of rows should make, compared with the
//! documents an index holds, and the report.
//!
//! ```text
//!   rows (key order, range by range) ──▶ expected {(index, _id) → source}
//!                                          │ compare with _mget of those ids
//!                                          ▼
//!                       missing: expected, not stored     stale: stored, source differs
//!   documents (scan, page by page)   ──▶ rows read back by _id ──▶ extra: stored, not expected
//! ```
//!
//! A difference is only a suspect at first: a row may change while the check runs. Suspects are
//! checked again once the pipeline has caught up, and only those that still differ are drift.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

/// How many ids of each kind the report lists.
pub const EXAMPLES: usize = 10;

/// A document `(index, _id)`.
pub type DocId = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A row that should have a document, and the index has none.
    Missing,
    /// A document no row (in scope) makes.
    Extra,
    /// A document whose source differs from what the sink makes of its row now.
    Stale,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Extra => "extra",
            Self::Stale => "stale",
        }
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub doc: DocId,
    /// The stored document's version (a versioned delete of an extra document uses it).
    pub version: Option<u64>,
}

/// The differences between the documents `expected` and the ones `stored` (both for the same
/// set of ids): `kinds` says which kinds to report.
pub fn compare(
    expected: &HashMap<DocId, Value>,
    stored: &HashMap<DocId, (u64, Map<String, Value>)>,
    kinds: &[Kind],
) -> Vec<Finding> {
    let mut found = Vec::new();
    for (doc, source) in expected {
        match stored.get(doc) {
            None => found.push(Finding {
                kind: Kind::Missing,
                doc: doc.clone(),
                version: None,
            }),
            Some((version, stored)) => {
                if source.as_object() != Some(stored) {
                    found.push(Finding {
                        kind: Kind::Stale,
                        doc: doc.clone(),
                        version: Some(*version),
                    });
                }
            }
        }
    }
    for (doc, (version, _)) in stored {
        if !expected.contains_key(doc) {
            found.push(Finding {
                kind: Kind::Extra,
                doc: doc.clone(),
                version: Some(*version),
            });
        }
    }
    found.retain(|f| kinds.contains(&f.kind));
    found.sort_by(|a, b| (a.kind, &a.doc).cmp(&(b.kind, &b.doc)));
    found
}

/// The values a document `_id` was made of (see `event::document_id`): one part as it is;
/// several split at unescaped `:`, with `\` escapes removed.
pub fn id_parts(id: &str, parts: usize) -> Option<Vec<String>> {
    if parts == 1 {
        return Some(vec![id.to_owned()]);
    }
    let mut out = vec![String::new()];
    let mut chars = id.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.last_mut()?.push(chars.next()?),
            ':' => out.push(String::new()),
            c => out.last_mut()?.push(c),
        }
    }
    (out.len() == parts).then_some(out)
}

/// Counts and examples of what a check found.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub sink: String,
    /// Rows read from the table (within `--where`).
    pub rows: u64,
    /// Rows that should have a document (the rest are filtered out by the sink, or would be
    /// dead-lettered: `unindexable`).
    pub expected: u64,
    pub unindexable: u64,
    /// Documents read from the index.
    pub documents: u64,
    pub counts: BTreeMap<Kind, u64>,
    pub examples: BTreeMap<Kind, Vec<DocId>>,
    /// Suspects that were in sync when checked again.
    pub settled: u64,
    /// What `--repair` did: backfilled rows and deleted documents.
    pub repaired: Option<(u64, u64)>,
    pub seconds: f64,
}

impl Report {
    pub fn add(&mut self, finding: &Finding) {
        *self.counts.entry(finding.kind).or_default() += 1;
        let examples = self.examples.entry(finding.kind).or_default();
        if examples.len() < EXAMPLES {
            examples.push(finding.doc.clone());
        }
    }

    pub fn count(&self, kind: Kind) -> u64 {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn in_sync(&self) -> bool {
        self.counts.values().all(|&n| n == 0)
    }

    pub fn to_json(&self) -> Value {
        let kind = |k: Kind| {
            json!({
                "count": self.count(k),
                "first": self.examples.get(&k).map_or_else(Vec::new, |ids| {
                    ids.iter().map(|(index, id)| json!({"index": index, "id": id})).collect()
                }),
            })
        };
        json!({
            "sink": self.sink,
            "in_sync": self.in_sync(),
            "rows": self.rows,
            "expected_documents": self.expected,
            "unindexable_rows": self.unindexable,
            "documents": self.documents,
            "missing": kind(Kind::Missing),
            "extra": kind(Kind::Extra),
            "stale": kind(Kind::Stale),
            "settled_while_checking": self.settled,
            "repaired": self.repaired.map(|(rows, deleted)| json!({"backfilled_rows": rows, "deleted_documents": deleted})),
            "seconds": (self.seconds * 10.0).round() / 10.0,
        })
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "sink {}: {} rows read ({} should be documents, {} filtered out{}), {} documents read, in {:.1} s\n",
            self.sink,
            self.rows,
            self.expected,
            self.rows - self.expected - self.unindexable,
            if self.unindexable > 0 {
                format!(", {} that the sink dead-letters", self.unindexable)
            } else {
                String::new()
            },
            self.documents,
            self.seconds
        );
        for kind in [Kind::Missing, Kind::Extra, Kind::Stale] {
            let count = self.count(kind);
            let first = self.examples.get(&kind).map_or_else(String::new, |ids| {
                let ids: Vec<String> = ids
                    .iter()
                    .map(|(index, id)| format!("{index}/{id}"))
                    .collect();
                if ids.is_empty() {
                    String::new()
                } else {
                    format!(" (first: {})", ids.join(", "))
                }
            });
            out.push_str(&format!("  {}: {count}{first}\n", kind.name()));
        }
        if self.settled > 0 {
            out.push_str(&format!(
                "  {} differences seen while rows changed were in sync when checked again\n",
                self.settled
            ));
        }
        if let Some((rows, deleted)) = self.repaired {
            out.push_str(&format!(
                "  repaired: {rows} rows backfilled again, {deleted} documents deleted\n"
            ));
        }
        out.push_str(if self.in_sync() {
            "in sync\n"
        } else if self.repaired.is_some() {
            "drift remains after the repair: see the ids above\n"
        } else {
            "drift found: `sluice-consumer verify <sink> --repair` fixes it\n"
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str) -> DocId {
        ("items-v1".to_owned(), id.to_owned())
    }

    fn source(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn missing_extra_and_stale_documents_are_told_apart() {
        let expected: HashMap<DocId, Value> = [
            (doc("1"), json!({"id": 1, "name": "a"})),
            (doc("2"), json!({"id": 2, "name": "b"})),
            (doc("3"), json!({"id": 3, "name": "c"})),
        ]
        .into();
        let stored: HashMap<DocId, (u64, Map<String, Value>)> = [
            (doc("1"), (10, source(json!({"id": 1, "name": "a"})))),
            (doc("3"), (11, source(json!({"id": 3, "name": "old"})))),
            (doc("4"), (12, source(json!({"id": 4})))),
        ]
        .into();
        let all = compare(
            &expected,
            &stored,
            &[Kind::Missing, Kind::Extra, Kind::Stale],
        );
        assert_eq!(
            all,
            [
                Finding {
                    kind: Kind::Missing,
                    doc: doc("2"),
                    version: None
                },
                Finding {
                    kind: Kind::Extra,
                    doc: doc("4"),
                    version: Some(12)
                },
                Finding {
                    kind: Kind::Stale,
                    doc: doc("3"),
                    version: Some(11)
                },
            ]
        );
        let extras = compare(&expected, &stored, &[Kind::Extra]);
        assert_eq!(extras.len(), 1);
    }

    #[test]
    fn ids_split_back_into_the_values_they_were_made_of() {
        assert_eq!(id_parts("a:b", 1).unwrap(), ["a:b"]);
        assert_eq!(id_parts(r"1:a\:b", 2).unwrap(), ["1", "a:b"]);
        assert_eq!(id_parts(r"x\\:y", 2).unwrap(), [r"x\", "y"]);
        assert!(id_parts("1:2:3", 2).is_none(), "a foreign id");
    }

    #[test]
    fn the_report_counts_and_lists_the_first_ids() {
        let mut report = Report {
            sink: "items".into(),
            rows: 3,
            expected: 3,
            ..Report::default()
        };
        assert!(report.in_sync());
        for i in 0..12 {
            report.add(&Finding {
                kind: Kind::Missing,
                doc: doc(&i.to_string()),
                version: None,
            });
        }
        assert!(!report.in_sync());
        assert_eq!(report.count(Kind::Missing), 12);
        let json = report.to_json();
        assert_eq!(json["missing"]["count"], 12);
        assert_eq!(json["missing"]["first"].as_array().unwrap().len(), EXAMPLES);
        assert_eq!(json["in_sync"], false);
        assert!(report.render().contains("missing: 12 (first: items-v1/0, "));
    }
}
