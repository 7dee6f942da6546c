//! The Kafka message key of a row.
//!
//! A key is the primary-key values of the row, in key-column order, written as a compact JSON
//! array (UTF-8, no whitespace):
//!
//! | value kind                              | element                                  |
//! |-----------------------------------------|------------------------------------------|
//! | null                                    | `null`                                   |
//! | bool                                    | `true` / `false`                         |
//! | int                                     | a JSON integer: `42`                     |
//! | double                                  | a string: `"1.5"`, `"NaN"`, `"Infinity"`, `"-Infinity"`, `"-0"` |
//! | bytes                                   | a string in Postgres hex form: `"\\x00ff"` |
//! | array                                   | a JSON array of its elements, recursively |
//! | every other kind (numeric, text, uuid, temporal, json, unknown) | a JSON string of its text |
//!
//! So `(tenant 'acme', id 7)` is the key `["acme",7]`. JSON string escaping makes the encoding
//! unambiguous whatever the text contains (commas, quotes, brackets), and the same row always gives
//! the same bytes, which is what partitioning and log compaction need.
//!
//! TRUNCATE markers use the reserved key `{"truncate":P}` (P = the partition written to). It is a
//! JSON object, so it can never equal a row key.

use std::fmt::Write as _;

use crate::v1::Value;
use crate::v1::value::Kind;

/// Encodes primary-key values (in key-column order) as a Kafka message key.
pub fn encode<'a>(values: impl IntoIterator<Item = &'a Value>) -> Vec<u8> {
    let mut out = String::with_capacity(32);
    out.push('[');
    for (i, value) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_value(&mut out, value);
    }
    out.push(']');
    out.into_bytes()
}

/// The reserved key of the TRUNCATE marker written to `partition`.
pub fn truncate_marker(partition: i32) -> Vec<u8> {
    format!(r#"{{"truncate":{partition}}}"#).into_bytes()
}

/// True when `key` is a TRUNCATE marker's key rather than a row's.
pub fn is_truncate_marker(key: &[u8]) -> bool {
    key.starts_with(br#"{"truncate":"#)
}

fn write_value(out: &mut String, value: &Value) {
    match &value.kind {
        None | Some(Kind::Null(_)) => out.push_str("null"),
        Some(Kind::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(Kind::Int(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(Kind::Double(d)) => write_string(out, &double_text(*d)),
        Some(Kind::Bytes(bytes)) => {
            let mut hex = String::with_capacity(2 + bytes.len() * 2);
            hex.push_str("\\x");
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            write_string(out, &hex);
        }
        Some(Kind::Array(array)) => {
            out.push('[');
            for (i, element) in array.elements.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, element);
            }
            out.push(']');
        }
        Some(kind) => write_string(out, kind.as_text().unwrap_or_default()),
    }
}

/// Postgres-style text of a double: `NaN`, `Infinity`, `-Infinity`, `-0`, else the shortest
/// decimal that reads back as the same double.
fn double_text(d: f64) -> String {
    if d.is_nan() {
        "NaN".to_owned()
    } else if d.is_infinite() {
        if d > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{d}")
    }
}

fn write_string(out: &mut String, s: &str) {
    // serde_json's string escaping is deterministic, and writing to a String cannot fail.
    if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::ArrayValue;

    fn v(kind: Kind) -> Value {
        Value::from(kind)
    }
    fn text(s: &str) -> Value {
        v(Kind::Text(s.to_owned()))
    }

    #[test]
    fn the_documented_examples_hold() {
        assert_eq!(encode(&[text("acme"), v(Kind::Int(7))]), br#"["acme",7]"#);
        assert_eq!(encode(&[Value::null()]), b"[null]");
        assert_eq!(encode(&[v(Kind::Bytes(vec![0, 255]))]), br#"["\\x00ff"]"#);
        assert_eq!(
            encode(&[
                v(Kind::Double(-0.0)),
                v(Kind::Double(f64::INFINITY)),
                v(Kind::Double(f64::NAN))
            ]),
            br#"["-0","Infinity","NaN"]"#
        );
        assert_eq!(
            encode(&[v(Kind::Array(ArrayValue {
                elements: vec![v(Kind::Int(1)), Value::null()]
            }))]),
            b"[[1,null]]"
        );
    }

    #[test]
    fn the_same_row_gives_the_same_bytes_every_time() {
        let row = || {
            vec![
                text("tenant-1"),
                v(Kind::Int(-5)),
                v(Kind::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())),
                v(Kind::Timestamptz("2024-01-02T03:04:05Z".into())),
                v(Kind::Numeric("12.50".into())),
            ]
        };
        let first = encode(&row());
        for _ in 0..100 {
            assert_eq!(encode(&row()), first);
        }
    }

    #[test]
    fn different_rows_give_different_bytes() {
        let keys = [
            encode(&[v(Kind::Int(1))]),
            encode(&[v(Kind::Int(2))]),
            encode(&[text("1")]),
            encode(&[v(Kind::Int(1)), v(Kind::Int(2))]),
            encode(&[v(Kind::Int(2)), v(Kind::Int(1))]),
            encode(&[v(Kind::Int(12))]),
            encode(&[Value::null()]),
            encode(&[text("null")]),
            encode(&[text("")]),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(
                    a,
                    b,
                    "{} and {}",
                    String::from_utf8_lossy(a),
                    String::from_utf8_lossy(b)
                );
            }
        }
    }

    #[test]
    fn text_containing_the_separator_or_quotes_cannot_collide() {
        // ("a,b", "c") and ("a", "b,c") would collide under a naive comma join.
        let one = encode(&[text("a,b"), text("c")]);
        let two = encode(&[text("a"), text("b,c")]);
        assert_ne!(one, two);
        // ...and so would a value that contains the quoted form of the separator.
        let three = encode(&[text(r#"a","b"#)]);
        let four = encode(&[text("a"), text("b")]);
        assert_ne!(three, four);
        assert_eq!(three, br#"["a\",\"b"]"#);
        // Every key reads back as the JSON array it claims to be.
        let parsed: serde_json::Value = serde_json::from_slice(&one).unwrap();
        assert_eq!(parsed, serde_json::json!(["a,b", "c"]));
    }

    #[test]
    fn truncate_markers_never_equal_a_row_key() {
        let marker = truncate_marker(3);
        assert_eq!(marker, br#"{"truncate":3}"#);
        assert!(is_truncate_marker(&marker));
        assert!(!is_truncate_marker(&encode(&[text(r#"{"truncate":3}"#)])));
    }
}
