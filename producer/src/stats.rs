//! Counters the `status` command and `/status` show: per-table changes and the last event time.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde_json::{Value, json};

#[derive(Debug, Default, Clone, Copy)]
struct TableCounts {
    insert: u64,
    update: u64,
    delete: u64,
    truncate: u64,
    read: u64,
}

/// Shared by the stream and the HTTP server.
#[derive(Debug, Default)]
pub struct Stats {
    tables: Mutex<BTreeMap<String, TableCounts>>,
    /// Commit time (Unix µs) of the last change published.
    last_event_micros: AtomicI64,
    /// Last LSN confirmed to Postgres.
    confirmed_lsn: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    Read,
}

impl Stats {
    pub fn record(&self, table: &str, op: Op, commit_time_micros: i64) {
        self.record_many(table, op, 1, commit_time_micros);
    }

    /// `n` events of one kind at once (a backfill chunk).
    pub fn record_many(&self, table: &str, op: Op, n: u64, commit_time_micros: i64) {
        if let Ok(mut tables) = self.tables.lock() {
            // The hot path finds the table without allocating its name.
            if !tables.contains_key(table) {
                tables.insert(table.to_owned(), TableCounts::default());
            }
            let Some(counts) = tables.get_mut(table) else {
                return;
            };
            match op {
                Op::Insert => counts.insert += n,
                Op::Update => counts.update += n,
                Op::Delete => counts.delete += n,
                Op::Truncate => counts.truncate += n,
                Op::Read => counts.read += n,
            }
        }
        self.last_event_micros
            .fetch_max(commit_time_micros, Ordering::Relaxed);
    }

    pub fn set_confirmed(&self, lsn: u64) {
        self.confirmed_lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    pub fn to_json(&self) -> Value {
        let tables: BTreeMap<String, Value> = self
            .tables
            .lock()
            .map(|t| {
                t.iter()
                    .map(|(name, c)| {
                        (
                            name.clone(),
                            json!({"insert": c.insert, "update": c.update, "delete": c.delete,
                                   "truncate": c.truncate, "read": c.read}),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let last = self.last_event_micros.load(Ordering::Relaxed);
        json!({
            "confirmed_lsn": format_lsn(self.confirmed_lsn.load(Ordering::Relaxed)),
            "last_event_unix_micros": if last > 0 { Value::from(last) } else { Value::Null },
            "tables": tables,
        })
    }
}

/// `16/B374D848`, the way Postgres prints an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
