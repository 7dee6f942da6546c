//! Dead letters counted by stage, error type and reason (as [`reason_group`] groups it), with
//! the first and last time and the HTTP statuses seen: what `dlq list`, `status` and `/status`
//! show. No I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::letter::{Stored, reason_group};

/// What letters are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub stage: String,
    pub error_type: String,
    /// The grouped reason (see [`reason_group`]).
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    pub count: u64,
    /// Unix ms of the oldest and newest letter.
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub statuses: BTreeSet<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: u64,
    groups: BTreeMap<Key, Group>,
    /// At most this many groups; later reasons are counted in `other` (bounds the counters of
    /// a running consumer).
    limit: Option<usize>,
    other: u64,
}

impl Summary {
    /// A summary of at most `limit` groups.
    pub fn bounded(limit: usize) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    pub fn add(
        &mut self,
        stage: &str,
        error_type: &str,
        reason: &str,
        status: Option<u16>,
        time: Option<i64>,
    ) {
        self.total += 1;
        let key = Key {
            stage: stage.to_owned(),
            error_type: error_type.to_owned(),
            reason: reason_group(reason),
        };
        let full = self.limit.is_some_and(|limit| self.groups.len() >= limit);
        if full && !self.groups.contains_key(&key) {
            self.other += 1;
            return;
        }
        let group = self.groups.entry(key).or_default();
        group.count += 1;
        if let Some(time) = time {
            group.first = Some(group.first.map_or(time, |first| first.min(time)));
            group.last = Some(group.last.map_or(time, |last| last.max(time)));
        }
        group.statuses.extend(status);
    }

    pub fn add_stored(&mut self, letter: &Stored) {
        let why = &letter.why;
        self.add(
            &why.stage,
            &why.error_type,
            &why.reason,
            why.status,
            letter.time,
        );
    }

    /// Adds the counts of `other`.
    pub fn merge(&mut self, other: Self) {
        self.total += other.total;
        self.other += other.other;
        for (key, theirs) in other.groups {
            let group = self.groups.entry(key).or_default();
            group.count += theirs.count;
            group.first = group.first.into_iter().chain(theirs.first).min();
            group.last = group.last.into_iter().chain(theirs.last).max();
            group.statuses.extend(theirs.statuses);
        }
    }

    /// The groups, largest first.
    pub fn groups(&self) -> Vec<(&Key, &Group)> {
        let mut groups: Vec<(&Key, &Group)> = self.groups.iter().collect();
        groups.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
        groups
    }

    pub fn to_json(&self) -> Value {
        let reasons: Vec<Value> = self
            .groups()
            .into_iter()
            .map(|(key, group)| {
                json!({
                    "stage": key.stage,
                    "error_type": key.error_type,
                    "reason": key.reason,
                    "count": group.count,
                    "statuses": group.statuses,
                    "first": group.first.map(rfc3339),
                    "last": group.last.map(rfc3339),
                })
            })
            .collect();
        json!({"total": self.total, "reasons": reasons, "other_reasons": self.other})
    }

    /// One line per group (count, stage, error type, statuses, first and last time) and its
    /// reason on the next, each line starting with `indent`.
    pub fn render(&self, indent: &str) -> String {
        let mut out = String::new();
        for (key, group) in self.groups() {
            let statuses: Vec<String> = group.statuses.iter().map(u16::to_string).collect();
            let status = if statuses.is_empty() {
                String::new()
            } else {
                format!(", HTTP {}", statuses.join("/"))
            };
            let when = match (group.first, group.last) {
                (Some(first), Some(last)) => {
                    format!(", first {}, last {}", rfc3339(first), rfc3339(last))
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "{indent}{count} {stage} {error_type}{status}{when}\n{indent}  reason: {reason}",
                count = group.count,
                stage = key.stage,
                error_type = key.error_type,
                reason = key.reason,
            );
        }
        if self.other > 0 {
            let _ = writeln!(out, "{indent}{} with other reasons", self.other);
        }
        out
    }
}

/// Unix ms as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_of_one_problem_are_one_group_with_first_and_last_time() {
        let mut summary = Summary::default();
        for id in 1..=50 {
            summary.add(
                "index",
                "document_parsing_exception",
                &format!("failed to parse field [code] in document with id '{id}'"),
                Some(400),
                Some(1_000 + id),
            );
        }
        summary.add("transform", "script_error", "boom", None, None);
        let groups = summary.groups();
        assert_eq!(groups.len(), 2);
        let (key, group) = groups[0];
        assert_eq!(
            key.reason,
            "failed to parse field [code] in document with id '…'"
        );
        assert_eq!(
            (group.count, group.first, group.last),
            (50, Some(1_001), Some(1_050))
        );
        let json = summary.to_json();
        assert_eq!(json["total"], 51);
        assert_eq!(json["reasons"][0]["count"], 50);
        assert_eq!(json["reasons"][0]["statuses"], json!([400]));
        assert_eq!(json["reasons"][0]["first"], "1970-01-01T00:00:01.001Z");
        let text = summary.render("  ");
        assert!(
            text.starts_with("  50 index document_parsing_exception, HTTP 400, first 1970-"),
            "{text}"
        );
        assert!(text.contains("  1 transform script_error\n    reason: boom\n"));
    }

    #[test]
    fn a_bounded_summary_counts_further_reasons_as_other() {
        let mut summary = Summary::bounded(1);
        summary.add("index", "a", "one", None, None);
        summary.add("index", "b", "two", None, None);
        summary.add("index", "a", "one", None, None);
        assert_eq!(summary.total, 3);
        assert_eq!(summary.groups()[0].1.count, 2);
        assert_eq!(summary.to_json()["other_reasons"], 1);
    }
}
