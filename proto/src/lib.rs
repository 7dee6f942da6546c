//! The sluice wire format shared by the producer and the consumer.
//!
//! * [`v1::ChangeEvent`] is the protobuf value of every Kafka message (see
//!   `proto/sluice/v1/change_event.proto` for the field-by-field contract).
//! * [`key`] is the Kafka message key: a deterministic encoding of the primary-key values, so
//!   that one row always lands on one partition and log compaction keeps its latest state.

pub mod key;

/// Generated protobuf types of package `sluice.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/sluice.v1.rs"));
}

/// The `schema_version` written by this build into every [`v1::ChangeEvent`].
pub const SCHEMA_VERSION: u32 = 1;

pub use prost::Message;

impl v1::Value {
    /// A SQL NULL.
    pub fn null() -> Self {
        Self::from(v1::value::Kind::Null(v1::Null {}))
    }

    /// True for a SQL NULL (or a value without a kind, which decoders treat the same way).
    pub fn is_null(&self) -> bool {
        matches!(self.kind, None | Some(v1::value::Kind::Null(_)))
    }
}

impl v1::value::Kind {
    /// The text of every kind carried as a string (numeric, text, dates and times, interval,
    /// uuid, json, unknown); `None` for null, bool, int, double, bytes and arrays.
    pub fn as_text(&self) -> Option<&str> {
        use v1::value::Kind;
        match self {
            Kind::Numeric(s)
            | Kind::Text(s)
            | Kind::Timestamp(s)
            | Kind::Timestamptz(s)
            | Kind::Date(s)
            | Kind::Time(s)
            | Kind::Timetz(s)
            | Kind::Interval(s)
            | Kind::Uuid(s)
            | Kind::Json(s)
            | Kind::Unknown(s) => Some(s),
            Kind::Null(_)
            | Kind::Bool(_)
            | Kind::Int(_)
            | Kind::Double(_)
            | Kind::Bytes(_)
            | Kind::Array(_) => None,
        }
    }
}

impl From<v1::value::Kind> for v1::Value {
    fn from(kind: v1::value::Kind) -> Self {
        Self { kind: Some(kind) }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::value::Kind;
    use super::v1::{self, ArrayValue, ChangeEvent, Column, Op, Position, Source, Value};
    use super::*;

    fn column(name: &str, type_name: &str, kind: Kind) -> Column {
        Column {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            value: Some(Value::from(kind)),
        }
    }

    /// One column of every value kind the format has, with edge values.
    fn every_kind() -> Vec<Column> {
        vec![
            column("n", "int4", Kind::Null(v1::Null {})),
            column("b", "bool", Kind::Bool(true)),
            column("i_min", "int8", Kind::Int(i64::MIN)),
            column("i_max", "int8", Kind::Int(i64::MAX)),
            column("d", "float8", Kind::Double(-0.0)),
            column("d_inf", "float8", Kind::Double(f64::NEG_INFINITY)),
            column("d_nan", "float8", Kind::Double(f64::NAN)),
            column(
                "num",
                "numeric",
                Kind::Numeric("1234567890123456789012345678901234567890.5".into()),
            ),
            column("t", "text", Kind::Text("héllo \u{0} \"world\"".into())),
            column("by", "bytea", Kind::Bytes(vec![0, 1, 0xfe, 0xff])),
            column(
                "ts",
                "timestamp",
                Kind::Timestamp("2024-01-02T03:04:05.123456".into()),
            ),
            column(
                "tstz",
                "timestamptz",
                Kind::Timestamptz("2024-01-02T01:04:05.123456Z".into()),
            ),
            column("dt", "date", Kind::Date("2024-01-02".into())),
            column("tm", "time", Kind::Time("03:04:05.123456".into())),
            column("tmtz", "timetz", Kind::Timetz("03:04:05+02:00".into())),
            column("iv", "interval", Kind::Interval("P1Y2M3DT4H5M6.5S".into())),
            column(
                "u",
                "uuid",
                Kind::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ),
            column("j", "jsonb", Kind::Json(r#"{"a": [1, null]}"#.into())),
            column(
                "arr",
                "_int4",
                Kind::Array(ArrayValue {
                    elements: vec![
                        Value::from(Kind::Int(1)),
                        Value::null(),
                        Value::from(Kind::Int(3)),
                    ],
                }),
            ),
            column("x", "inet", Kind::Unknown("192.168.0.1/24".into())),
        ]
    }

    #[test]
    fn every_value_kind_survives_a_round_trip() {
        let event = ChangeEvent {
            schema_version: SCHEMA_VERSION,
            op: Op::Update as i32,
            source: Some(Source {
                database: "shop".into(),
                schema: "public".into(),
                table: "products".into(),
            }),
            position: Some(Position {
                commit_lsn: u64::MAX,
                lsn: 0x16_B374_D848,
                xid: u32::MAX,
                commit_time_micros: -1,
                index_in_transaction: 7,
            }),
            key: vec![column("id", "int8", Kind::Int(42))],
            record: every_kind(),
            changes: vec![column("b", "bool", Kind::Bool(false))],
            unchanged_toast_columns: vec!["description".into()],
            truncate: None,
        };
        let bytes = event.encode_to_vec();
        let decoded = ChangeEvent::decode(bytes.as_slice()).unwrap();

        // NaN != NaN, so compare that one column by its bits and the rest structurally.
        let nan_at = decoded
            .record
            .iter()
            .position(|c| c.name == "d_nan")
            .unwrap();
        match decoded.record[nan_at]
            .value
            .as_ref()
            .and_then(|v| v.kind.clone())
        {
            Some(Kind::Double(d)) => assert!(d.is_nan()),
            other => panic!("d_nan decoded as {other:?}"),
        }
        let mut expected = event.clone();
        let mut actual = decoded.clone();
        expected.record.remove(nan_at);
        actual.record.remove(nan_at);
        assert_eq!(actual, expected);

        // -0.0 == 0.0 numerically; the sign must survive too.
        match decoded
            .record
            .iter()
            .find(|c| c.name == "d")
            .and_then(|c| c.value.clone())
        {
            Some(Value {
                kind: Some(Kind::Double(d)),
            }) => assert!(d == 0.0 && d.is_sign_negative()),
            other => panic!("d decoded as {other:?}"),
        }
        assert_eq!(decoded.op(), Op::Update);
    }

    #[test]
    fn a_null_is_distinct_from_an_empty_text() {
        let null = Value::null().encode_to_vec();
        let empty = Value::from(Kind::Text(String::new())).encode_to_vec();
        assert_ne!(null, empty);
        assert!(Value::decode(null.as_slice()).unwrap().is_null());
        assert!(!Value::decode(empty.as_slice()).unwrap().is_null());
    }
}
