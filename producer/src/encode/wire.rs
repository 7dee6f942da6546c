//! A backfill's `READ` event written straight into protobuf bytes: the bytes `prost` makes of
//! [`read_event`](super::read_event)'s `ChangeEvent`, without building it. The event would copy
//! every column's name and type name, the key's values and the source's names into owned
//! strings for each row, only to be encoded and dropped; here they are borrowed from the
//! relation and the row. Field order and the omission of default (zero, empty) scalars follow
//! the encoding prost generates for `change_event.proto`, and the tests hold the two equal.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use sluice_proto::Message as _;
use sluice_proto::SCHEMA_VERSION;
use sluice_proto::v1::{Op, Value};

use super::{At, RelationInfo};

// Field numbers of change_event.proto.
const EVENT_SCHEMA_VERSION: u32 = 1;
const EVENT_OP: u32 = 2;
const EVENT_SOURCE: u32 = 3;
const EVENT_POSITION: u32 = 4;
const EVENT_KEY: u32 = 5;
const EVENT_RECORD: u32 = 6;
const SOURCE_DATABASE: u32 = 1;
const SOURCE_SCHEMA: u32 = 2;
const SOURCE_TABLE: u32 = 3;
const POSITION_COMMIT_LSN: u32 = 1;
const POSITION_COMMIT_TIME: u32 = 4;
const POSITION_INDEX: u32 = 5;
const COLUMN_NAME: u32 = 1;
const COLUMN_TYPE_NAME: u32 = 2;
const COLUMN_VALUE: u32 = 3;

/// The encoded `READ` event of one row (`values` in column order): the same bytes as
/// `read_event(rel, at, values).encode_to_vec()`.
pub fn read_event_bytes(rel: &RelationInfo, at: At<'_>, values: &[Value]) -> Vec<u8> {
    let null = Value::null();
    let value_at = |i: usize| values.get(i).unwrap_or(&null);
    let value_lens: Vec<usize> = values.iter().map(|v| v.encoded_len()).collect();
    let value_len = |i: usize| value_lens.get(i).copied().unwrap_or(null.encoded_len());

    let source_len =
        str_field_len(&at.tx.database) + str_field_len(&rel.schema) + str_field_len(&rel.table);
    // A READ has no change LSN or xid of its own: fields 2 and 3 stay at their default.
    let position_len = u64_field_len(at.tx.commit_lsn)
        + u64_field_len(at.tx.commit_time_micros as u64)
        + u64_field_len(u64::from(at.index));
    // Column lengths are arithmetic on lengths already known: computed again when written
    // rather than kept in vectors of their own.
    let column_len = |i: usize| column_len(rel, i, value_len(i));
    let len = u64_field_len(u64::from(SCHEMA_VERSION))
        + u64_field_len(Op::Read as u64)
        + message_field_len(source_len)
        + message_field_len(position_len)
        + rel
            .key
            .iter()
            .map(|&i| message_field_len(column_len(i)))
            .sum::<usize>()
        + (0..values.len())
            .map(|i| message_field_len(column_len(i)))
            .sum::<usize>();

    let mut out = Vec::with_capacity(len);
    put_u64(&mut out, EVENT_SCHEMA_VERSION, u64::from(SCHEMA_VERSION));
    put_u64(&mut out, EVENT_OP, Op::Read as u64);
    put_message_header(&mut out, EVENT_SOURCE, source_len);
    put_str(&mut out, SOURCE_DATABASE, &at.tx.database);
    put_str(&mut out, SOURCE_SCHEMA, &rel.schema);
    put_str(&mut out, SOURCE_TABLE, &rel.table);
    put_message_header(&mut out, EVENT_POSITION, position_len);
    put_u64(&mut out, POSITION_COMMIT_LSN, at.tx.commit_lsn);
    // int64 is encoded as the varint of its two's complement, like prost does.
    put_u64(
        &mut out,
        POSITION_COMMIT_TIME,
        at.tx.commit_time_micros as u64,
    );
    put_u64(&mut out, POSITION_INDEX, u64::from(at.index));
    for &i in &rel.key {
        put_column(
            &mut out,
            EVENT_KEY,
            rel,
            i,
            column_len(i),
            value_at(i),
            value_len(i),
        );
    }
    for i in 0..values.len() {
        put_column(
            &mut out,
            EVENT_RECORD,
            rel,
            i,
            column_len(i),
            value_at(i),
            value_len(i),
        );
    }
    debug_assert_eq!(out.len(), len);
    out
}

/// The body length of column `i` (name, type name, value).
fn column_len(rel: &RelationInfo, i: usize, value_len: usize) -> usize {
    let (name, type_name) = names(rel, i);
    str_field_len(name) + str_field_len(type_name) + message_field_len(value_len)
}

fn names(rel: &RelationInfo, i: usize) -> (&str, &str) {
    rel.columns
        .get(i)
        .map_or(("", ""), |c| (c.name.as_str(), c.type_name.as_str()))
}

fn put_column(
    out: &mut Vec<u8>,
    tag: u32,
    rel: &RelationInfo,
    i: usize,
    column_len: usize,
    value: &Value,
    value_len: usize,
) {
    let (name, type_name) = names(rel, i);
    put_message_header(out, tag, column_len);
    put_str(out, COLUMN_NAME, name);
    put_str(out, COLUMN_TYPE_NAME, type_name);
    put_message_header(out, COLUMN_VALUE, value_len);
    value.encode_raw(out);
}

/// Bytes of a string field; an empty string is left out.
fn str_field_len(text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        1 + encoded_len_varint(text.len() as u64) + text.len()
    }
}

/// Bytes of a varint field; zero is left out.
fn u64_field_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

/// Bytes of a message field whose body is `len` bytes (present even when empty).
fn message_field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_str(out: &mut Vec<u8>, tag: u32, text: &str) {
    if !text.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(text.len() as u64, out);
        out.extend_from_slice(text.as_bytes());
    }
}

fn put_u64(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn put_message_header(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}
