//! Decoded changes → protobuf ChangeEvents and Kafka keys.
//!
//! Each output is a Kafka message: key, value (`None` for a tombstone) and, for TRUNCATE
//! markers only, an explicit partition. Rules that matter for correctness:
//! * the key is [`sluice_proto::key::encode`] of the primary-key values, so one row always lands
//!   on one partition;
//! * an unchanged TOASTed column is never given a value: with `REPLICA IDENTITY FULL` it is
//!   filled from the old row (exact), otherwise it is left out of `record` and listed in
//!   `unchanged_toast_columns`;
//! * an UPDATE that changes the primary key is a DELETE (plus tombstone) of the old key followed
//!   by the UPDATE of the new one, so the old document does not linger;
//! * a DELETE is followed by a tombstone, so compaction can drop the row.

use std::sync::Arc;

use sluice_proto::v1::{self, ChangeEvent, Column, Op, Position, Source, TruncateMarker, Value};
use sluice_proto::{Message as _, SCHEMA_VERSION, key};

use crate::pgoutput::{Tuple, TupleValue, TypeKind, parse_text};

mod wire;

pub use self::wire::read_event_bytes;

/// A column as the current Relation message describes it, with its type resolved.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    pub type_name: String,
    pub kind: TypeKind,
}

/// A captured table as the stream currently describes it.
#[derive(Debug, Clone)]
pub struct RelationInfo {
    pub schema: String,
    pub table: String,
    pub topic: String,
    pub partitions: i32,
    pub columns: Vec<ColumnInfo>,
    /// Indexes into `columns` of the key columns, in key order.
    pub key: Vec<usize>,
}

/// What every event of one transaction shares.
#[derive(Debug, Clone)]
pub struct TxInfo {
    pub database: Arc<str>,
    /// LSN of the commit record: the version of every document write.
    pub commit_lsn: u64,
    pub xid: u32,
    pub commit_time_micros: i64,
}

/// One Kafka message.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub key: Vec<u8>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    /// Set for TRUNCATE markers only; otherwise the key picks the partition.
    pub partition: Option<i32>,
}

/// Where one change sits.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub tx: &'a TxInfo,
    /// LSN of the change.
    pub lsn: u64,
    /// Index of the change inside its transaction.
    pub index: u32,
}

impl RelationInfo {
    fn value(&self, column: usize, raw: &TupleValue) -> Option<Value> {
        match raw {
            TupleValue::Null => Some(Value::null()),
            TupleValue::UnchangedToast => None,
            TupleValue::Text(bytes) | TupleValue::Binary(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                let kind = self
                    .columns
                    .get(column)
                    .map_or(&TypeKind::Unknown, |c| &c.kind);
                Some(parse_text(kind, &text))
            }
        }
    }

    fn column(&self, index: usize, value: Value) -> Column {
        let info = self.columns.get(index);
        Column {
            name: info.map(|c| c.name.clone()).unwrap_or_default(),
            type_name: info.map(|c| c.type_name.clone()).unwrap_or_default(),
            value: Some(value),
        }
    }

    /// Typed values of a tuple (`None` for unchanged TOAST).
    fn values(&self, tuple: &Tuple) -> Vec<Option<Value>> {
        tuple
            .0
            .iter()
            .enumerate()
            .map(|(i, raw)| self.value(i, raw))
            .collect()
    }

    fn key_of(&self, values: &[Option<Value>]) -> Option<Vec<Value>> {
        self.key
            .iter()
            .map(|&i| values.get(i).cloned().flatten())
            .collect()
    }

    fn event(&self, op: Op, at: At<'_>, key: &[Value]) -> ChangeEvent {
        ChangeEvent {
            schema_version: SCHEMA_VERSION,
            op: op as i32,
            source: Some(Source {
                database: at.tx.database.to_string(),
                schema: self.schema.clone(),
                table: self.table.clone(),
            }),
            position: Some(Position {
                commit_lsn: at.tx.commit_lsn,
                lsn: at.lsn,
                xid: at.tx.xid,
                commit_time_micros: at.tx.commit_time_micros,
                index_in_transaction: at.index,
            }),
            key: self
                .key
                .iter()
                .zip(key)
                .map(|(&i, v)| self.column(i, v.clone()))
                .collect(),
            ..ChangeEvent::default()
        }
    }
}

/// Why a change could not be encoded; it names the table so the fix is obvious.
#[derive(Debug, thiserror::Error)]
#[error("{table}: {reason}")]
pub struct EncodeError {
    pub table: String,
    pub reason: String,
}

fn missing_key(rel: &RelationInfo, what: &str) -> EncodeError {
    EncodeError {
        table: format!("{}.{}", rel.schema, rel.table),
        reason: format!(
            "the {what} lacks a value for a key column: set REPLICA IDENTITY FULL or DEFAULT (primary key) on the table"
        ),
    }
}

pub fn insert(rel: &RelationInfo, at: At<'_>, new: &Tuple) -> Result<Vec<Outgoing>, EncodeError> {
    let values = rel.values(new);
    let key = rel
        .key_of(&values)
        .ok_or_else(|| missing_key(rel, "inserted row"))?;
    let mut event = rel.event(Op::Insert, at, &key);
    event.record = record(rel, &values);
    Ok(vec![message(&key, &event)])
}

/// The values an UPDATE sets, column by column: an unchanged TOASTed column is filled from the
/// old row when Postgres sent it (`REPLICA IDENTITY FULL`), else `None`.
fn updated_values(
    rel: &RelationInfo,
    old_values: Option<&Vec<Option<Value>>>,
    new: &Tuple,
) -> Vec<Option<Value>> {
    let mut values = rel.values(new);
    for (i, value) in values.iter_mut().enumerate() {
        if value.is_none() {
            *value = old_values.and_then(|o| o.get(i).cloned().flatten());
        }
    }
    values
}

/// The values of an UPDATE that leaves some columns out (unchanged TOAST, no full old row), or
/// `None` when it carries every column.
pub fn partial_update(
    rel: &RelationInfo,
    old: Option<&Tuple>,
    new: &Tuple,
) -> Option<Vec<Option<Value>>> {
    if !new
        .0
        .iter()
        .any(|v| matches!(v, TupleValue::UnchangedToast))
    {
        return None;
    }
    let old_values = old.map(|t| rel.values(t));
    let values = updated_values(rel, old_values.as_ref(), new);
    values.iter().any(Option::is_none).then_some(values)
}

pub fn update(
    rel: &RelationInfo,
    at: At<'_>,
    key_tuple: Option<&Tuple>,
    old: Option<&Tuple>,
    new: &Tuple,
) -> Result<Vec<Outgoing>, EncodeError> {
    let old_values = old.map(|t| rel.values(t));
    let values = updated_values(rel, old_values.as_ref(), new);
    let unchanged = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_none())
        .map(|(i, _)| {
            rel.columns
                .get(i)
                .map(|c| c.name.clone())
                .unwrap_or_default()
        })
        .collect();
    let key = rel
        .key_of(&values)
        .ok_or_else(|| missing_key(rel, "updated row"))?;

    let mut out = Vec::with_capacity(3);
    // The old key, when Postgres sent it: only if the key changed (`K`), or always with FULL (`O`).
    let previous = key_tuple
        .or(old)
        .map(|t| rel.values(t))
        .and_then(|v| rel.key_of(&v));
    if let Some(previous_key) = previous
        && previous_key != key
    {
        let mut delete = rel.event(Op::Delete, at, &previous_key);
        delete.record = rel
            .key
            .iter()
            .zip(&previous_key)
            .map(|(&i, v)| rel.column(i, v.clone()))
            .collect();
        out.push(message(&previous_key, &delete));
        out.push(Outgoing {
            key: key::encode(&previous_key),
            value: None,
            partition: None,
        });
    }

    let mut event = rel.event(Op::Update, at, &key);
    event.record = record(rel, &values);
    if let Some(old_values) = &old_values {
        event.changes = old_values
            .iter()
            .zip(&values)
            .enumerate()
            .filter_map(|(i, (before, after))| match (before, after) {
                (Some(before), Some(after)) if !same_value(before, after) => {
                    Some(rel.column(i, before.clone()))
                }
                _ => None,
            })
            .collect();
    }
    event.unchanged_toast_columns = unchanged;
    out.push(message(&key, &event));
    Ok(out)
}

pub fn delete(
    rel: &RelationInfo,
    at: At<'_>,
    key_tuple: Option<&Tuple>,
    old: Option<&Tuple>,
) -> Result<Vec<Outgoing>, EncodeError> {
    let (values, full) = match (old, key_tuple) {
        (Some(old), _) => (rel.values(old), true),
        (None, Some(key_tuple)) => (rel.values(key_tuple), false),
        (None, None) => return Err(missing_key(rel, "deleted row")),
    };
    let key = rel
        .key_of(&values)
        .ok_or_else(|| missing_key(rel, "deleted row"))?;
    let mut event = rel.event(Op::Delete, at, &key);
    event.record = if full {
        record(rel, &values)
    } else {
        // Only the identity columns carry values; the rest are nulls that mean "not sent".
        rel.key
            .iter()
            .zip(&key)
            .map(|(&i, v)| rel.column(i, v.clone()))
            .collect()
    };
    let encoded_key = key::encode(&key);
    Ok(vec![
        Outgoing {
            key: encoded_key.clone(),
            value: Some(event.encode_to_vec()),
            partition: None,
        },
        Outgoing {
            key: encoded_key,
            value: None,
            partition: None,
        },
    ])
}

/// A row read by a backfill, `values` in column order, `key` its encoded Kafka key. It carries
/// the position of its chunk's high watermark (commit LSN and time); `lsn` and `xid` are 0.
pub fn read(rel: &RelationInfo, at: At<'_>, key: Vec<u8>, values: &[Value]) -> Outgoing {
    Outgoing {
        key,
        value: Some(read_event_bytes(rel, at, values)),
        partition: None,
    }
}

/// A row read by a backfill as a `READ` event (no change LSN or xid of its own).
pub fn read_event(rel: &RelationInfo, at: At<'_>, values: Vec<Value>) -> ChangeEvent {
    let key_values: Vec<Value> = rel
        .key
        .iter()
        .map(|&i| values.get(i).cloned().unwrap_or_else(Value::null))
        .collect();
    let mut event = rel.event(Op::Read, at, &key_values);
    if let Some(position) = event.position.as_mut() {
        position.lsn = 0;
        position.xid = 0;
    }
    event.record = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| rel.column(i, v))
        .collect();
    event
}

/// One marker per partition of the table's topic.
pub fn truncate(rel: &RelationInfo, at: At<'_>) -> Vec<Outgoing> {
    (0..rel.partitions.max(1))
        .map(|partition| {
            let mut event = rel.event(Op::Truncate, at, &[]);
            event.truncate = Some(TruncateMarker {
                partition,
                partition_count: rel.partitions,
            });
            Outgoing {
                key: key::truncate_marker(partition),
                value: Some(event.encode_to_vec()),
                partition: Some(partition),
            }
        })
        .collect()
}

fn record(rel: &RelationInfo, values: &[Option<Value>]) -> Vec<Column> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.clone().map(|v| rel.column(i, v)))
        .collect()
}

fn message(key: &[Value], event: &ChangeEvent) -> Outgoing {
    Outgoing {
        key: key::encode(key),
        value: Some(event.encode_to_vec()),
        partition: None,
    }
}

/// Equality that treats NaN as equal to itself (a NaN that stayed NaN did not change).
fn same_value(a: &Value, b: &Value) -> bool {
    match (&a.kind, &b.kind) {
        (Some(v1::value::Kind::Double(x)), Some(v1::value::Kind::Double(y))) => {
            x.to_bits() == y.to_bits()
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sluice_proto::v1::value::Kind;

    use super::*;

    fn rel() -> RelationInfo {
        let column = |name: &str, type_name: &str, kind: TypeKind| ColumnInfo {
            name: name.into(),
            type_name: type_name.into(),
            kind,
        };
        RelationInfo {
            schema: "public".into(),
            table: "products".into(),
            topic: "sluice.public.products".into(),
            partitions: 3,
            columns: vec![
                column("id", "int8", TypeKind::Int),
                column("name", "text", TypeKind::Text),
                column("description", "text", TypeKind::Text),
            ],
            key: vec![0],
        }
    }

    fn tx() -> TxInfo {
        TxInfo {
            database: "shop".into(),
            commit_lsn: 1000,
            xid: 7,
            commit_time_micros: 1,
        }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn decode(out: &Outgoing) -> ChangeEvent {
        ChangeEvent::decode(out.value.as_deref().unwrap()).unwrap()
    }

    fn names(columns: &[Column]) -> Vec<&str> {
        columns.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn an_insert_carries_the_typed_row_and_its_key() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 900,
            index: 2,
        };
        let out = insert(
            &rel(),
            at,
            &Tuple(vec![text("42"), text("widget"), TupleValue::Null]),
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, br#"[42]"#);
        let event = decode(&out[0]);
        assert_eq!(event.op(), Op::Insert);
        assert_eq!(
            event.record[0].value.as_ref().unwrap().kind,
            Some(Kind::Int(42))
        );
        assert!(event.record[2].value.as_ref().unwrap().is_null());
        let position = event.position.unwrap();
        assert_eq!(
            (
                position.commit_lsn,
                position.lsn,
                position.index_in_transaction
            ),
            (1000, 900, 2)
        );
    }

    #[test]
    fn an_unchanged_toast_column_is_left_out_and_listed_never_filled_with_a_placeholder() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 900,
            index: 0,
        };
        let new = Tuple(vec![
            text("42"),
            text("renamed"),
            TupleValue::UnchangedToast,
        ]);
        let out = update(&rel(), at, None, None, &new).unwrap();
        let event = decode(&out[0]);
        assert_eq!(names(&event.record), ["id", "name"]);
        assert_eq!(event.unchanged_toast_columns, ["description"]);
    }

    #[test]
    fn with_the_full_old_row_the_unchanged_toast_value_is_filled_exactly() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 900,
            index: 0,
        };
        let old = Tuple(vec![text("42"), text("widget"), text("a long text")]);
        let new = Tuple(vec![
            text("42"),
            text("renamed"),
            TupleValue::UnchangedToast,
        ]);
        let out = update(&rel(), at, None, Some(&old), &new).unwrap();
        assert_eq!(out.len(), 1, "same key: no delete");
        let event = decode(&out[0]);
        assert_eq!(names(&event.record), ["id", "name", "description"]);
        assert_eq!(
            event.record[2].value.as_ref().unwrap().kind,
            Some(Kind::Text("a long text".into()))
        );
        assert!(event.unchanged_toast_columns.is_empty());
        assert_eq!(
            names(&event.changes),
            ["name"],
            "only the changed column's old value"
        );
    }

    #[test]
    fn a_key_change_deletes_the_old_key_first() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 900,
            index: 0,
        };
        let old_key = Tuple(vec![text("41"), TupleValue::Null, TupleValue::Null]);
        let new = Tuple(vec![text("42"), text("widget"), TupleValue::Null]);
        let out = update(&rel(), at, Some(&old_key), None, &new).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(decode(&out[0]).op(), Op::Delete);
        assert_eq!(out[0].key, b"[41]");
        assert_eq!(
            (out[1].key.as_slice(), out[1].value.as_ref()),
            (&b"[41]"[..], None)
        );
        assert_eq!(decode(&out[2]).op(), Op::Update);
        assert_eq!(out[2].key, b"[42]");
    }

    #[test]
    fn a_delete_is_followed_by_a_tombstone() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 900,
            index: 0,
        };
        let key_tuple = Tuple(vec![text("42"), TupleValue::Null, TupleValue::Null]);
        let out = delete(&rel(), at, Some(&key_tuple), None).unwrap();
        assert_eq!(out.len(), 2);
        let event = decode(&out[0]);
        assert_eq!(event.op(), Op::Delete);
        assert_eq!(names(&event.record), ["id"], "only the key was sent");
        assert_eq!(
            out[1],
            Outgoing {
                key: b"[42]".to_vec(),
                value: None,
                partition: None
            }
        );
    }

    /// The READ event written straight into bytes is byte for byte what prost makes of the
    /// event built the long way, for every kind of value, defaults (zero, empty) included.
    #[test]
    fn a_read_written_directly_is_the_bytes_prost_makes() {
        use sluice_proto::v1::ArrayValue;
        let kinds = [
            Value::null(),
            Value::default(),
            Kind::Bool(true).into(),
            Kind::Bool(false).into(),
            Kind::Int(-1).into(),
            Kind::Int(i64::MAX).into(),
            Kind::Double(-0.0).into(),
            Kind::Double(f64::NAN).into(),
            Kind::Numeric("12.50".into()).into(),
            Kind::Text(String::new()).into(),
            Kind::Text("é".repeat(200)).into(),
            Kind::Bytes(vec![0, 255]).into(),
            Kind::Timestamptz("2026-12-01T17:00:00.123456Z".into()).into(),
            Kind::Json("{\"a\":[1]}".into()).into(),
            Kind::Array(ArrayValue {
                elements: vec![Kind::Int(1).into(), Value::null()],
            })
            .into(),
            Kind::Unknown("(1,2)".into()).into(),
        ];
        let mut relation = rel();
        relation.columns = kinds
            .iter()
            .enumerate()
            .map(|(i, _)| ColumnInfo {
                name: if i == 3 {
                    String::new()
                } else {
                    format!("c{i}")
                },
                type_name: if i == 5 { String::new() } else { "t".repeat(i) },
                kind: TypeKind::Unknown,
            })
            .collect();
        for (key, schema, table, database) in [
            (vec![0], "public", "t", "db"),
            (vec![4, 2], "", "", ""),
            (vec![], "s", "x".repeat(300).leak() as &str, "d"),
        ] {
            relation.key = key;
            relation.schema = schema.into();
            relation.table = table.into();
            for (commit_lsn, commit_time_micros, index) in
                [(0, 0, 0), (1000, -1, 7), (u64::MAX, i64::MIN, u32::MAX)]
            {
                let tx = TxInfo {
                    database: database.into(),
                    commit_lsn,
                    xid: 9,
                    commit_time_micros,
                };
                let at = At {
                    tx: &tx,
                    lsn: 5,
                    index,
                };
                for values in [&kinds[..], &kinds[..3], &[]] {
                    assert_eq!(
                        read_event_bytes(&relation, at, values),
                        read_event(&relation, at, values.to_vec()).encode_to_vec(),
                        "key {:?}, {} values, commit {commit_lsn}",
                        relation.key,
                        values.len()
                    );
                }
            }
        }
    }

    #[test]
    fn a_backfilled_row_is_a_read_at_its_watermark_with_the_live_key() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 0,
            index: 4,
        };
        let live = insert(
            &rel(),
            at,
            &Tuple(vec![text("42"), text("widget"), TupleValue::Null]),
        )
        .unwrap();
        let values = vec![
            parse_text(&TypeKind::Int, "42"),
            parse_text(&TypeKind::Text, "widget"),
            Value::null(),
        ];
        let out = read(&rel(), at, live[0].key.clone(), &values);
        let event = decode(&out);
        assert_eq!(event.op(), Op::Read);
        let position = event.position.unwrap();
        assert_eq!(
            (position.commit_lsn, position.lsn, position.xid),
            (1000, 0, 0)
        );
        let live_event = decode(&live[0]);
        assert_eq!(
            event.record, live_event.record,
            "same typed values as a live insert"
        );
        assert_eq!(event.key, live_event.key);
    }

    #[test]
    fn a_truncate_marks_every_partition() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 900,
            index: 0,
        };
        let out = truncate(&rel(), at);
        let partitions: Vec<Option<i32>> = out.iter().map(|o| o.partition).collect();
        assert_eq!(partitions, [Some(0), Some(1), Some(2)]);
        assert!(out.iter().all(|o| key::is_truncate_marker(&o.key)));
        assert_eq!(
            decode(&out[1]).truncate,
            Some(TruncateMarker {
                partition: 1,
                partition_count: 3
            })
        );
    }

    #[test]
    fn a_row_without_its_key_value_is_an_error_naming_the_table() {
        let tx = tx();
        let at = At {
            tx: &tx,
            lsn: 900,
            index: 0,
        };
        let error = insert(&rel(), at, &Tuple(vec![TupleValue::UnchangedToast])).unwrap_err();
        assert!(
            error.to_string().starts_with("public.products: "),
            "{error}"
        );
    }
}
