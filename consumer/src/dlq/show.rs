//! One dead letter as `dlq show` prints it: why it failed, where it came from, and its event
//! decoded (the input a filter or transform sees). No I/O.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::letter::Stored;
use super::summary::rfc3339;
use crate::decode::{self, Decoded};
use crate::event::{self, KafkaPosition};

/// The event as JSON: `{action, record, changes, metadata}` like a script's input, a truncate
/// marker, or `null` with why it does not decode.
pub fn event_json(letter: &Stored) -> (Value, Option<String>) {
    let Some(payload) = &letter.payload else {
        return (Value::Null, Some("no value (a tombstone)".to_owned()));
    };
    let kafka = KafkaPosition {
        topic: &letter.why.topic,
        partition: letter.why.source_partition,
        offset: letter.why.source_offset,
    };
    match decode::decode(payload) {
        Ok(Decoded::Change(event, action)) => (event::script_input(&event, action, kafka), None),
        Ok(Decoded::Truncate(version)) => (json!({"truncate": {"commit_lsn": version}}), None),
        Err(error) => (Value::Null, Some(error.to_string())),
    }
}

/// One letter as a JSON object; `redriven`: it lies before the redrive group's offset.
pub fn to_json(letter: &Stored, redriven: bool) -> Value {
    let (event, undecodable) = event_json(letter);
    let why = &letter.why;
    json!({
        "partition": letter.partition,
        "offset": letter.offset,
        "time": letter.time.map(rfc3339),
        "redriven": redriven,
        "stage": why.stage,
        "error_type": why.error_type,
        "reason": why.reason,
        "status": why.status,
        "attempts": why.attempts,
        "source": {
            "topic": why.topic,
            "partition": why.source_partition,
            "offset": why.source_offset,
        },
        "key": letter.key.as_deref().map(String::from_utf8_lossy),
        "event": event,
        "undecodable": undecodable,
        "value_base64": undecodable.as_ref().and(letter.payload.as_deref()).map(event::base64),
    })
}

/// One letter for people: a heading with its position, then why, where from, and the event.
pub fn render(letter: &Stored, redriven: bool) -> String {
    let why = &letter.why;
    let mut out = format!(
        "dead letter {}{}{}\n",
        letter.position(),
        letter
            .time
            .map_or_else(String::new, |t| format!(", written {}", rfc3339(t))),
        if redriven { ", re-driven" } else { "" },
    );
    let status = why
        .status
        .map_or_else(String::new, |s| format!(", HTTP {s}"));
    let _ = writeln!(
        out,
        "  {} {}{status}, attempts {}",
        why.stage, why.error_type, why.attempts
    );
    let _ = writeln!(out, "  reason: {}", why.reason);
    let key = letter.key.as_deref().map_or_else(
        || "none".to_owned(),
        |k| String::from_utf8_lossy(k).into_owned(),
    );
    let _ = writeln!(
        out,
        "  source: {} partition {} offset {}, key {key}",
        why.topic, why.source_partition, why.source_offset
    );
    match event_json(letter) {
        (event, None) => {
            let pretty = serde_json::to_string_pretty(&event).unwrap_or_default();
            out.push_str("  event:\n");
            for line in pretty.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
        (_, Some(why)) => {
            let _ = writeln!(out, "  event: does not decode: {why}");
            if let Some(payload) = &letter.payload {
                let _ = writeln!(out, "  value (base64): {}", event::base64(payload));
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;
    use sluice_proto::Message as _;
    use sluice_proto::v1::{ChangeEvent, Op, Position};

    use super::*;
    use crate::dlq::letter::Why;
    use crate::event::tests::column;

    fn letter(payload: &[u8]) -> Stored {
        Stored {
            partition: 1,
            offset: 7,
            time: Some(0),
            key: Some(Bytes::from_static(b"[17]")),
            payload: Some(Bytes::copy_from_slice(payload)),
            why: Why {
                stage: "index".to_owned(),
                error_type: "document_parsing_exception".to_owned(),
                reason: "bad code".to_owned(),
                status: Some(400),
                attempts: 1,
                topic: "sluice.public.items".to_owned(),
                source_partition: 2,
                source_offset: 41,
                ..Why::default()
            },
        }
    }

    #[test]
    fn a_letter_shows_its_event_as_a_script_sees_it() {
        let event = ChangeEvent {
            schema_version: sluice_proto::SCHEMA_VERSION,
            op: Op::Update.into(),
            key: vec![column("id", sluice_proto::v1::value::Kind::Int(17))],
            record: vec![column(
                "code",
                sluice_proto::v1::value::Kind::Text("x".into()),
            )],
            position: Some(Position {
                commit_lsn: 99,
                ..Position::default()
            }),
            ..ChangeEvent::default()
        };
        let letter = letter(&event.encode_to_vec());
        let json = to_json(&letter, false);
        assert_eq!(json["event"]["action"], "update");
        assert_eq!(json["event"]["record"]["code"], "x");
        assert_eq!(json["event"]["metadata"]["commit_lsn"], 99);
        assert_eq!(json["event"]["metadata"]["offset"], 41);
        assert_eq!(json["key"], "[17]");
        assert_eq!(json["undecodable"], Value::Null);
        let text = render(&letter, true);
        assert!(
            text.starts_with("dead letter 1:7, written 1970-01-01T00:00:00.000Z, re-driven\n"),
            "{text}"
        );
        assert!(text.contains("  index document_parsing_exception, HTTP 400, attempts 1\n"));
        assert!(text.contains("  source: sluice.public.items partition 2 offset 41, key [17]\n"));
        assert!(text.contains("\"code\": \"x\""), "{text}");
    }

    #[test]
    fn a_letter_that_does_not_decode_shows_why_and_its_bytes() {
        let letter = letter(b"\xff\xff");
        let json = to_json(&letter, false);
        assert_eq!(json["event"], Value::Null);
        assert!(
            json["undecodable"]
                .as_str()
                .unwrap()
                .contains("ChangeEvent")
        );
        assert_eq!(json["value_base64"], "//8=");
        assert!(render(&letter, false).contains("value (base64): //8=\n"));
    }
}
