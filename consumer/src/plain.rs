//! The route of a plain sink (no filter, no transform, a fixed index, the key as `_id`) read
//! straight from the message bytes.
//!
//! Such a sink writes the event's record as the document, so it needs a handful of fields of
//! the `ChangeEvent`: the operation, the commit LSN and time, the key columns and the record.
//! Decoding the whole event first made a `String` of every column name, type name and text
//! value, and freed them all once the document was written (the allocator took about a third
//! of the consumer's CPU in a drain, these strings a good part of it). Here the record's JSON
//! is written from slices of the message, and only the key columns and the rare value kinds
//! that need more than copying (numerics, doubles, bytes, json, arrays) are decoded, by the
//! same code as the full path.
//!
//! Anything this reader does not expect (an unknown or repeated field, a wire type that does
//! not match, unchanged TOAST columns, a TRUNCATE, a newer schema version, an action the sink
//! does not take, invalid UTF-8) makes it give up, and the message takes the full path, which
//! gives it its exact outcome or dead letter. So both paths produce the same write for every
//! message this one accepts (checked by the tests below against the full path).

use prost::Message as _;
use sluice_common::config::Action;
use sluice_proto::SCHEMA_VERSION;
use sluice_proto::v1;

use crate::batch::{Doc, Write};
use crate::event;
use crate::route;
use crate::sink::Prepared;
use crate::stats::Outcome;

/// The write of a plain sink for `payload`, and the event's commit time; `None` when the sink
/// is not plain or the message needs the full path.
pub fn route(prepared: &Prepared, payload: &[u8]) -> Option<(Doc, i64)> {
    let config = &prepared.config;
    if prepared.scripts.has_filter()
        || prepared.scripts.has_transform()
        || config.id_columns.is_some()
    {
        return None;
    }
    let index = prepared.template.fixed()?;
    let event = View::parse(payload)?;
    if event.schema_version > SCHEMA_VERSION {
        return None;
    }
    let op = v1::Op::try_from(i32::try_from(event.op).ok()?).ok()?;
    let action = event::action(op)?;
    if !config.actions.contains(&action) {
        return None;
    }
    let key: Vec<v1::Column> = event
        .key
        .iter()
        .map(|column| v1::Column::decode(*column).ok())
        .collect::<Option<_>>()?;
    let id = route::document_id_of(&key).ok()?;
    let (write, outcome) = if action == Action::Delete {
        (Write::Delete, Outcome::Deleted)
    } else {
        (
            Write::Full(record_json(&event.record, payload.len())?.into()),
            Outcome::Indexed,
        )
    };
    let doc = Doc {
        index: index.to_owned(),
        id,
        version: event.commit_lsn,
        write,
        outcome,
    };
    Some((doc, event.commit_time_micros))
}

/// What a plain route reads of a `ChangeEvent`: slices of the message.
#[derive(Debug, Default)]
struct View<'a> {
    schema_version: u32,
    op: u64,
    commit_lsn: u64,
    commit_time_micros: i64,
    key: Vec<&'a [u8]>,
    record: Vec<&'a [u8]>,
}

impl<'a> View<'a> {
    fn parse(mut bytes: &'a [u8]) -> Option<Self> {
        let mut view = Self {
            // Room for a usual row: no regrowing the list column by column.
            record: Vec::with_capacity(16),
            ..Self::default()
        };
        let mut seen = 0u32;
        while !bytes.is_empty() {
            let (field, wire) = tag(&mut bytes)?;
            // Singular fields must come once (a repeat would be merged by the full path).
            if matches!(field, 1..=4) {
                if seen & (1 << field) != 0 {
                    return None;
                }
                seen |= 1 << field;
            }
            match (field, wire) {
                (1, VARINT) => view.schema_version = u32::try_from(varint(&mut bytes)?).ok()?,
                (2, VARINT) => view.op = varint(&mut bytes)?,
                (3, LEN) => {
                    // The source: not part of the document, but its strings must be UTF-8.
                    strings_valid(field_bytes(&mut bytes)?)?;
                }
                (4, LEN) => view.position(field_bytes(&mut bytes)?)?,
                (5, LEN) => view.key.push(field_bytes(&mut bytes)?),
                (6, LEN) => view.record.push(field_bytes(&mut bytes)?),
                (7, LEN) => {
                    // `changes`: validated as columns, not written.
                    column(field_bytes(&mut bytes)?)?;
                }
                _ => return None,
            }
        }
        Some(view)
    }

    fn position(&mut self, bytes: &[u8]) -> Option<()> {
        once_each(bytes, 5, VARINT, |field, bytes| {
            let value = varint(bytes)?;
            match field {
                1 => self.commit_lsn = value,
                #[allow(clippy::cast_possible_wrap)] // int64 on the wire: two's complement
                4 => self.commit_time_micros = value as i64,
                // xid and index_in_transaction are uint32s: they must fit (lsn is any uint64).
                3 | 5 => {
                    u32::try_from(value).ok()?;
                }
                _ => {}
            }
            Some(())
        })
    }
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            // The tenth byte may only carry the top bit.
            return (shift < 63 || byte <= 1).then_some(value);
        }
    }
    None
}

fn tag(bytes: &mut &[u8]) -> Option<(u32, u8)> {
    let key = varint(bytes)?;
    let field = u32::try_from(key >> 3).ok().filter(|f| *f > 0)?;
    #[allow(clippy::cast_possible_truncation)] // the low three bits
    Some((field, (key & 7) as u8))
}

fn field_bytes<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(bytes)?).ok()?;
    if len > bytes.len() {
        return None;
    }
    let (field, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(field)
}

/// Walks a message whose fields are numbered 1 to `last`, each at most once and all of wire
/// type `wire`: `read` takes each one's content off the bytes.
fn once_each<'a>(
    mut bytes: &'a [u8],
    last: u32,
    wire: u8,
    mut read: impl FnMut(u32, &mut &'a [u8]) -> Option<()>,
) -> Option<()> {
    let mut seen = 0u32;
    while !bytes.is_empty() {
        let (field, got) = tag(&mut bytes)?;
        if field > last || got != wire || seen & (1 << field) != 0 {
            return None;
        }
        seen |= 1 << field;
        read(field, &mut bytes)?;
    }
    Some(())
}

/// A message whose fields are all strings (`Source`): each valid UTF-8, each once.
fn strings_valid(bytes: &[u8]) -> Option<()> {
    once_each(bytes, 3, LEN, |_, bytes| {
        std::str::from_utf8(field_bytes(bytes)?).ok().map(|_| ())
    })
}

/// A `Column`: its name, and its value's bytes (`None`: no value).
fn column(bytes: &[u8]) -> Option<(&str, Option<&[u8]>)> {
    let mut name = "";
    let mut value = None;
    once_each(bytes, 3, LEN, |field, bytes| {
        let content = field_bytes(bytes)?;
        match field {
            1 => name = std::str::from_utf8(content).ok()?,
            2 => {
                std::str::from_utf8(content).ok()?;
            }
            _ => value = Some(content),
        }
        Some(())
    })?;
    Some((name, value))
}

/// The record as a JSON object, as [`event::record_json`] writes it from a decoded event.
fn record_json(columns: &[&[u8]], payload_len: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload_len + 16);
    out.push(b'{');
    for (i, bytes) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let (name, value) = column(bytes)?;
        event::write_json(&mut out, name);
        out.push(b':');
        match value {
            None => out.extend_from_slice(b"null"),
            Some(value) => write_value(&mut out, value)?,
        }
    }
    out.push(b'}');
    Some(out)
}

/// One `Value` as a document field. Null, bool, int and the kinds written as their text are
/// copied from the message; the others are decoded and written by the full path's code.
fn write_value(out: &mut Vec<u8>, mut bytes: &[u8]) -> Option<()> {
    let whole = bytes;
    if bytes.is_empty() {
        // No kind set: null.
        out.extend_from_slice(b"null");
        return Some(());
    }
    let (field, wire) = tag(&mut bytes)?;
    match (field, wire) {
        (1, LEN) => {
            let null = field_bytes(&mut bytes)?;
            if !null.is_empty() || !bytes.is_empty() {
                return None;
            }
            out.extend_from_slice(b"null");
        }
        (2, VARINT) => {
            let value = varint(&mut bytes)?;
            if !bytes.is_empty() {
                return None;
            }
            out.extend_from_slice(if value != 0 { b"true" } else { b"false" });
        }
        (3, VARINT) => {
            let raw = varint(&mut bytes)?;
            if !bytes.is_empty() {
                return None;
            }
            #[allow(clippy::cast_possible_wrap)] // zigzag decoding
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            out.extend_from_slice(value.to_string().as_bytes());
        }
        (6 | 8..=14 | 17, LEN) => {
            let text = std::str::from_utf8(field_bytes(&mut bytes)?).ok()?;
            if !bytes.is_empty() {
                return None;
            }
            event::write_json(out, text);
        }
        (4, FIXED64) | (5 | 7 | 15 | 16, LEN) => {
            let value = v1::Value::decode(whole).ok()?;
            event::write_json(out, &event::value(&value));
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::consume::{Routed, decode_and_route_full};
    use crate::event::KafkaPosition;
    use sluice_proto::v1::value::Kind;
    use sluice_proto::v1::{ArrayValue, ChangeEvent, Column, Null, Op, Position, Source, Value};

    /// A sink of `public.products` with `extra` (one line of YAML) in its config.
    fn prepared(extra: &str) -> Prepared {
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("    {extra}\n")
        };
        let yaml = format!(
            "postgres: {{ url: \"postgres://sluice@127.0.0.1/shop\" }}\n\
             kafka: {{ brokers: 127.0.0.1:9092 }}\n\
             tables: [ {{ name: public.products }} ]\n\
             sinks:\n\
             \x20 - name: products\n\
             \x20   table: public.products\n\
             {extra}\
             \x20   elasticsearch: {{ endpoint: \"http://127.0.0.1:9200\", index: products }}\n"
        );
        let config =
            sluice_common::config::load_str(&yaml, std::path::Path::new("sluice.yaml"), &|_| None)
                .unwrap();
        crate::prepare(&config, None).unwrap().pop().unwrap()
    }

    fn column(name: &str, kind: Option<Kind>) -> Column {
        Column {
            name: name.to_owned(),
            type_name: "text".to_owned(),
            value: Some(Value { kind }),
        }
    }

    fn event(op: Op, record: Vec<Column>, key: Vec<Column>) -> ChangeEvent {
        ChangeEvent {
            schema_version: SCHEMA_VERSION,
            op: op.into(),
            source: Some(Source {
                database: "shop".into(),
                schema: "public".into(),
                table: "products".into(),
            }),
            position: Some(Position {
                commit_lsn: 0x1234_5678,
                lsn: 0x1234_5600,
                xid: 77,
                commit_time_micros: 1_764_000_000_123_456,
                index_in_transaction: 3,
            }),
            key,
            record,
            ..ChangeEvent::default()
        }
    }

    /// The full path alone: decode the whole event, then route it.
    fn full_path(prepared: &Prepared, payload: &[u8]) -> Routed {
        let kafka = KafkaPosition {
            topic: "t",
            partition: 0,
            offset: 0,
        };
        decode_and_route_full(prepared, Some(payload), kafka)
    }

    fn same(fast: &(Doc, i64), full: &Routed) {
        let Routed::Write(doc, micros) = full else {
            panic!("the full path did not write: {full:?}");
        };
        assert_eq!(fast.1, *micros);
        assert_eq!(
            (&fast.0.index, &fast.0.id, fast.0.version, fast.0.outcome),
            (&doc.index, &doc.id, doc.version, doc.outcome)
        );
        match (&fast.0.write, &doc.write) {
            (Write::Full(a), Write::Full(b)) => assert_eq!(
                std::str::from_utf8(a).unwrap(),
                std::str::from_utf8(b).unwrap()
            ),
            (Write::Delete, Write::Delete) => {}
            (a, b) => panic!("writes differ: {a:?} against {b:?}"),
        }
    }

    fn every_kind() -> Vec<Column> {
        vec![
            column("id", Some(Kind::Int(-42))),
            column("nothing", None),
            Column {
                name: "no value".into(),
                type_name: "text".into(),
                value: None,
            },
            column("null", Some(Kind::Null(Null {}))),
            column("yes", Some(Kind::Bool(true))),
            column("no", Some(Kind::Bool(false))),
            column("big", Some(Kind::Int(i64::MIN))),
            column("pi", Some(Kind::Double(3.25))),
            column("inf", Some(Kind::Double(f64::INFINITY))),
            column("price", Some(Kind::Numeric("149.00".into()))),
            column(
                "exact",
                Some(Kind::Numeric("12345678901234567890.5".into())),
            ),
            column(
                "name",
                Some(Kind::Text("a \"quoted\" \\ name\n\u{1}é😀".into())),
            ),
            column("empty", Some(Kind::Text(String::new()))),
            column("blob", Some(Kind::Bytes(vec![0, 1, 2, 255]))),
            column("at", Some(Kind::Timestamp("2026-12-03 10:00:00".into()))),
            column(
                "atz",
                Some(Kind::Timestamptz("2026-12-03 10:00:00+00".into())),
            ),
            column("day", Some(Kind::Date("2026-12-03".into()))),
            column("clock", Some(Kind::Time("10:00:00".into()))),
            column("clocktz", Some(Kind::Timetz("10:00:00+01".into()))),
            column("span", Some(Kind::Interval("1 day".into()))),
            column(
                "uuid",
                Some(Kind::Uuid("3f2c0000-0000-0000-0000-000000000000".into())),
            ),
            column("doc", Some(Kind::Json(r#"{"a":[1,2,{"b":null}]}"#.into()))),
            column("bad json", Some(Kind::Json("{not json".into()))),
            column(
                "tags",
                Some(Kind::Array(ArrayValue {
                    elements: vec![
                        Value {
                            kind: Some(Kind::Text("x".into())),
                        },
                        Value { kind: None },
                    ],
                })),
            ),
            column("other", Some(Kind::Unknown("(1,2)".into()))),
        ]
    }

    #[test]
    fn a_plain_sink_writes_what_the_full_path_writes() {
        let sink = prepared("");
        let keys = [
            vec![column("id", Some(Kind::Int(-42)))],
            vec![column("id", Some(Kind::Text("a:b\\c".into())))],
            vec![
                column("tenant", Some(Kind::Int(7))),
                column("sku", Some(Kind::Text("x:y".into()))),
            ],
            vec![column("blob", Some(Kind::Bytes(vec![9, 8])))],
            vec![column("u", Some(Kind::Uuid("3f2c".into())))],
        ];
        for op in [Op::Insert, Op::Update, Op::Read, Op::Delete] {
            for key in &keys {
                for record in [every_kind(), Vec::new(), vec![column("only", None)]] {
                    let payload = event(op, record, key.clone()).encode_to_vec();
                    let fast = route(&sink, &payload).unwrap();
                    same(&fast, &full_path(&sink, &payload));
                }
            }
        }
        // Without a position the version is 0, as in the full path.
        let mut bare = event(Op::Insert, every_kind(), keys[0].clone());
        bare.position = None;
        bare.source = None;
        let payload = bare.encode_to_vec();
        same(
            &route(&sink, &payload).unwrap(),
            &full_path(&sink, &payload),
        );
    }

    #[test]
    fn anything_unusual_takes_the_full_path() {
        let sink = prepared("");
        let key = vec![column("id", Some(Kind::Int(1)))];
        let plain = event(Op::Insert, every_kind(), key.clone());
        let give_up = |event: ChangeEvent, what: &str| {
            assert!(route(&sink, &event.encode_to_vec()).is_none(), "{what}");
        };
        give_up(
            ChangeEvent {
                unchanged_toast_columns: vec!["body".into()],
                ..plain.clone()
            },
            "unchanged TOAST columns",
        );
        give_up(
            ChangeEvent {
                op: Op::Truncate.into(),
                ..plain.clone()
            },
            "a truncate",
        );
        give_up(
            ChangeEvent {
                op: 99,
                ..plain.clone()
            },
            "an unknown operation",
        );
        give_up(
            ChangeEvent {
                schema_version: SCHEMA_VERSION + 1,
                ..plain.clone()
            },
            "a newer schema",
        );
        give_up(
            ChangeEvent {
                key: Vec::new(),
                ..plain.clone()
            },
            "no key",
        );
        give_up(
            ChangeEvent {
                key: vec![column("id", None)],
                ..plain.clone()
            },
            "a null key",
        );
        // Bytes that are not an event, or an event with a field repeated or cut short.
        let mut payload = plain.encode_to_vec();
        assert!(route(&sink, b"\xff\xff\xff").is_none());
        assert!(route(&sink, &payload[..payload.len() - 1]).is_none());
        payload.extend_from_slice(&[0x08, 0x01]); // schema_version again
        assert!(route(&sink, &payload).is_none());
        // Invalid UTF-8 in a name: the full path's decode error.
        let mut bad = event(
            Op::Insert,
            vec![column("name", Some(Kind::Text("zz".into())))],
            key,
        );
        bad.record[0].name = "ok".into();
        let mut payload = bad.encode_to_vec();
        let at = payload.windows(2).rposition(|w| w == b"zz").unwrap();
        payload[at] = 0xff;
        assert!(route(&sink, &payload).is_none());
        assert!(matches!(full_path(&sink, &payload), Routed::DeadLetter(_)));

        // Sinks that are not plain.
        for extra in [
            "id_columns: [id]",
            "transform: '. = .record'",
            "filter: 'true'",
            "actions: [insert]",
        ] {
            let sink = prepared(extra);
            let payload = event(
                Op::Update,
                every_kind(),
                vec![column("id", Some(Kind::Int(1)))],
            )
            .encode_to_vec();
            assert!(route(&sink, &payload).is_none(), "{extra}");
        }
    }
}
