//! From a decoded [`ChangeEvent`] to JSON: the script input (`action`, `record`, `changes`,
//! `metadata`) and the document of a sink without scripts.
//!
//! Column values become JSON the way Elasticsearch maps them best: numbers stay numbers, exact
//! numerics become JSON numbers when a double holds them exactly enough (15 significant digits)
//! and strings otherwise, bytes become base64 (the `binary` field type), json/jsonb is embedded
//! as JSON, and dates and times stay ISO-8601 text (dynamic mapping detects them as dates).

use serde_json::{Map, Value, json};
use sluice_common::config::Action;
use sluice_proto::v1::{self, ChangeEvent, Op, value::Kind};

/// The action a change event stands for; `None` for TRUNCATE and unknown operations.
pub fn action(op: Op) -> Option<Action> {
    match op {
        Op::Insert => Some(Action::Insert),
        Op::Update => Some(Action::Update),
        Op::Delete => Some(Action::Delete),
        Op::Read => Some(Action::Read),
        Op::Truncate | Op::Unspecified => None,
    }
}

pub fn action_name(action: Action) -> &'static str {
    match action {
        Action::Insert => "insert",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::Read => "read",
    }
}

/// Where a message came from in Kafka (part of the script's `metadata`).
#[derive(Debug, Clone, Copy)]
pub struct KafkaPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// The object filters and transforms see as `.`:
/// `{"action", "record", "changes", "metadata": {database, schema, table, commit_lsn, lsn, xid,
/// commit_time, key, unchanged_toast_columns, topic, partition, offset}}`.
pub fn script_input(event: &ChangeEvent, action: Action, kafka: KafkaPosition<'_>) -> Value {
    let source = event.source.clone().unwrap_or_default();
    let position = event.position.unwrap_or_default();
    json!({
        "action": action_name(action),
        "record": columns(&event.record),
        "changes": columns(&event.changes),
        "metadata": {
            "database": source.database,
            "schema": source.schema,
            "table": source.table,
            "commit_lsn": position.commit_lsn,
            "lsn": position.lsn,
            "xid": position.xid,
            "commit_time": rfc3339_micros(position.commit_time_micros),
            "key": columns(&event.key),
            "unchanged_toast_columns": event.unchanged_toast_columns,
            "topic": kafka.topic,
            "partition": kafka.partition,
            "offset": kafka.offset,
        },
    })
}

/// Columns as a JSON object, in column order.
pub fn columns(columns: &[v1::Column]) -> Map<String, Value> {
    columns
        .iter()
        .map(|c| (c.name.clone(), c.value.as_ref().map_or(Value::Null, value)))
        .collect()
}

/// Columns as a serialized JSON object, written straight from the event (the document of a
/// sink without scripts): the same JSON as serializing [`columns`], without building it.
pub fn record_json(columns: &[v1::Column]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + columns.len() * 32);
    out.push(b'{');
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(&mut out, &column.name);
        out.push(b':');
        match column.value.as_ref().and_then(|v| v.kind.as_ref()) {
            None | Some(Kind::Null(_)) => out.extend_from_slice(b"null"),
            Some(Kind::Bool(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Some(Kind::Int(i)) => out.extend_from_slice(i.to_string().as_bytes()),
            Some(
                kind @ (Kind::Text(_)
                | Kind::Timestamp(_)
                | Kind::Timestamptz(_)
                | Kind::Date(_)
                | Kind::Time(_)
                | Kind::Timetz(_)
                | Kind::Interval(_)
                | Kind::Uuid(_)
                | Kind::Unknown(_)),
            ) => write_json(&mut out, kind.as_text().unwrap_or_default()),
            Some(_) => {
                let value = column.value.as_ref().map_or(Value::Null, value);
                write_json(&mut out, &value);
            }
        }
    }
    out.push(b'}');
    out
}

pub(crate) fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing a string or a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// One column value as a document field.
pub fn value(value: &v1::Value) -> Value {
    match &value.kind {
        None | Some(Kind::Null(_)) => Value::Null,
        Some(Kind::Bool(b)) => Value::Bool(*b),
        Some(Kind::Int(i)) => Value::from(*i),
        Some(Kind::Double(d)) => serde_json::Number::from_f64(*d)
            .map_or_else(|| Value::String(float_text(*d)), Value::Number),
        Some(Kind::Numeric(text)) => numeric(text),
        Some(Kind::Bytes(bytes)) => Value::String(base64(bytes)),
        Some(Kind::Json(text)) => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
        }
        Some(Kind::Array(array)) => array.elements.iter().map(self::value).collect(),
        Some(kind) => Value::String(kind.as_text().unwrap_or_default().to_owned()),
    }
}

fn float_text(d: f64) -> String {
    if d.is_nan() {
        "NaN".to_owned()
    } else if d > 0.0 {
        "Infinity".to_owned()
    } else {
        "-Infinity".to_owned()
    }
}

/// An exact numeric: a JSON number when at most 15 significant digits (a double holds those
/// exactly), else the exact text, so no digit is ever silently lost.
fn numeric(text: &str) -> Value {
    let significant = text
        .trim_start_matches(['-', '+'])
        .trim_start_matches(['0', '.'])
        .chars()
        .filter(char::is_ascii_digit)
        .count();
    if significant <= 15
        && let Ok(parsed) = text.parse::<f64>()
        && let Some(number) = serde_json::Number::from_f64(parsed)
    {
        if parsed.fract() == 0.0 && parsed.abs() < 9.0e15 {
            #[allow(clippy::cast_possible_truncation)] // integral and below 2^53
            return Value::from(parsed as i64);
        }
        return Value::Number(number);
    }
    Value::String(text.to_owned())
}

/// Standard base64 with padding (what Elasticsearch's `binary` type reads).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn rfc3339_micros(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let clock = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        clock / 3600,
        clock % 3600 / 60,
        clock % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use sluice_proto::v1::{ArrayValue, Column};

    pub(crate) fn column(name: &str, kind: Kind) -> Column {
        Column {
            name: name.to_owned(),
            type_name: String::new(),
            value: Some(v1::Value::from(kind)),
        }
    }

    #[test]
    fn values_become_document_fields() {
        let v = |k| value(&v1::Value::from(k));
        assert_eq!(v(Kind::Numeric("19.99".into())), json!(19.99));
        assert_eq!(v(Kind::Numeric("100".into())), json!(100));
        assert_eq!(v(Kind::Numeric("0.000123".into())), json!(0.000_123));
        let long = "1234567890123456789.5";
        assert_eq!(v(Kind::Numeric(long.into())), json!(long));
        assert_eq!(v(Kind::Numeric("NaN".into())), json!("NaN"));
        assert_eq!(v(Kind::Double(f64::INFINITY)), json!("Infinity"));
        assert_eq!(v(Kind::Bytes(b"hello".to_vec())), json!("aGVsbG8="));
        assert_eq!(v(Kind::Bytes(vec![0xff])), json!("/w=="));
        assert_eq!(v(Kind::Json(r#"{"a":[1]}"#.into())), json!({"a": [1]}));
        let array = Kind::Array(ArrayValue {
            elements: vec![v1::Value::from(Kind::Int(1)), v1::Value::null()],
        });
        assert_eq!(v(array), json!([1, null]));
    }

    #[test]
    fn record_json_is_the_columns_serialized() {
        let record = vec![
            column("id", Kind::Int(7)),
            column("name", Kind::Text("a \"quoted\"\nline".into())),
            column("price", Kind::Numeric("19.99".into())),
            column("tags", Kind::Json(r#"{"a":[1,2]}"#.into())),
            column("gone", Kind::Null(v1::Null {})),
            column("ok", Kind::Bool(true)),
            column("at", Kind::Timestamptz("2026-11-25T10:00:00Z".into())),
            column("raw", Kind::Bytes(vec![1, 2, 3])),
        ];
        let direct: Value = serde_json::from_slice(&record_json(&record)).unwrap();
        assert_eq!(direct, Value::Object(columns(&record)));
    }

    #[test]
    fn commit_time_is_rfc3339() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_764_028_800_123_456),
            "2025-11-25T00:00:00.123456Z"
        );
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }
}
