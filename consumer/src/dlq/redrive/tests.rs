//! A redrive's batch against the in-memory index: what each letter comes to, and what is
//! written back to the dead-letter topic.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use serde_json::json;
use sluice_common::retry::Policy;
use sluice_proto::Message as _;
use sluice_proto::v1::{ChangeEvent, Op, Position, value::Kind};

use super::*;
use crate::batch::tests::{full, item};
use crate::dlq::letter::Why;
use crate::elastic::memory::MemoryIndex;
use crate::event::tests::column;

const CONFIG: &str = r#"
postgres: { url: "postgres://sluice@127.0.0.1/shop" }
kafka: { brokers: 127.0.0.1:9092 }
tables: [ { name: public.items } ]
sinks:
  - name: items
    table: public.items
    transform: |
      if .record.code == "bad" { abort } else { .record }
    elasticsearch: { endpoint: "http://127.0.0.1:9200", index: items }
"#;

fn prepared() -> Prepared {
    let config =
        sluice_common::config::load_str(CONFIG, Path::new("sluice.yaml"), &|_| None).unwrap();
    crate::prepare(&config, None).unwrap().pop().unwrap()
}

fn writer(index: MemoryIndex) -> Writer<MemoryIndex> {
    Writer {
        bulk: index,
        policy: Policy::every(Duration::from_millis(10)),
        stats: Arc::new(SinkStats::new("items", "t", "items.dlq")),
        shutdown: CancellationToken::new(),
    }
}

/// A letter at `offset` of partition 0 of an UPDATE of row `id` to `code`, at `version`.
fn letter(offset: i64, id: i64, code: &str, version: u64, reason: &str) -> Stored {
    let event = ChangeEvent {
        schema_version: sluice_proto::SCHEMA_VERSION,
        op: Op::Update.into(),
        key: vec![column("id", Kind::Int(id))],
        record: vec![
            column("id", Kind::Int(id)),
            column("code", Kind::Text(code.into())),
        ],
        position: Some(Position {
            commit_lsn: version,
            ..Position::default()
        }),
        ..ChangeEvent::default()
    };
    Stored {
        partition: 0,
        offset,
        time: Some(1_000 + offset),
        key: Some(Bytes::from(format!("[{id}]"))),
        payload: Some(event.encode_to_vec().into()),
        why: Why {
            sink: "items".to_owned(),
            stage: "index".to_owned(),
            error_type: "document_parsing_exception".to_owned(),
            reason: reason.to_owned(),
            status: Some(400),
            attempts: 1,
            topic: "sluice.public.items".to_owned(),
            source_partition: 1,
            source_offset: 100 + offset,
        },
    }
}

#[tokio::test]
async fn letters_are_indexed_found_stale_failed_again_or_kept() {
    let index = MemoryIndex::default();
    // Row 2 was indexed later, at a newer version than its dead-lettered event.
    index.put("items", "2", 500, json!({"id": 2, "code": "newer"}));
    let writer = writer(index);
    let batch = [
        letter(0, 1, "fixed", 100, "mapping"),
        letter(1, 2, "old", 200, "mapping"),
        letter(2, 3, "bad", 300, "mapping"),
        letter(3, 4, "other", 400, "something else"),
    ];
    let filter = Filter {
        reason: Some("mapping".to_owned()),
        ..Filter::default()
    };
    let round = drive(&prepared(), &writer, &batch, &filter, false)
        .await
        .unwrap();
    let tally = &round.tally;
    assert_eq!(tally.selected.total, 3);
    assert_eq!((tally.indexed, tally.stale, tally.kept), (1, 1, 1));
    assert_eq!(tally.failed.total, 1);

    let docs = writer.bulk.state().docs.clone();
    assert_eq!(docs[&("items".into(), "1".into())].0, 100);
    // The newer document was not overwritten by the old event.
    let two = &docs[&("items".into(), "2".into())];
    assert_eq!((two.0, two.1["code"].clone()), (500, json!("newer")));
    assert!(!docs.contains_key(&("items".into(), "3".into())));

    // Written back: the failure with its attempts counted, and the letter not selected as it
    // was, both with their original event and source position.
    assert_eq!(round.to_write.len(), 2);
    let (original, failed) = &round.to_write[0];
    assert_eq!((original.partition, original.offset), (1, 102));
    assert_eq!(original.payload, batch[2].payload);
    assert_eq!(
        (
            failed.stage.as_ref(),
            failed.error_type.as_str(),
            failed.attempts
        ),
        ("transform", "script_error", 2)
    );
    assert_eq!(failed.at, None, "a new failure is written at its own time");
    let (original, kept) = &round.to_write[1];
    assert_eq!(original.offset, 103);
    assert_eq!(*kept, batch[3].unchanged());
}

#[tokio::test]
async fn a_dry_run_writes_nothing() {
    let writer = writer(MemoryIndex::default());
    let batch = [
        letter(0, 1, "fixed", 100, "mapping"),
        letter(1, 3, "bad", 300, "mapping"),
    ];
    let round = drive(&prepared(), &writer, &batch, &Filter::default(), true)
        .await
        .unwrap();
    assert_eq!(round.tally.would_send, 1);
    assert_eq!(round.tally.failed.total, 1);
    assert!(round.to_write.is_empty());
    assert!(writer.bulk.state().docs.is_empty());
    assert!(writer.bulk.state().requests.is_empty());
}

#[test]
fn a_document_appears_once_per_request() {
    let items = vec![
        item("1", 0, full(json!({}))),
        item("2", 1, full(json!({}))),
        item("1", 2, full(json!({}))),
        item("3", 3, full(json!({}))),
        item("4", 4, full(json!({}))),
    ];
    let sizes: Vec<Vec<i64>> = chunks(items, 2)
        .iter()
        .map(|c| c.iter().map(|i| i.ticket.slot.offset).collect())
        .collect();
    assert_eq!(sizes, [vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn the_report_says_what_happened_and_a_commit_marks_each_partition() {
    let mut tally = Tally::default();
    tally.selected.add(
        "index",
        "document_parsing_exception",
        "bad",
        Some(400),
        None,
    );
    tally.indexed = 1;
    let text = tally.render("items", "items.dlq", false);
    assert!(text.starts_with("sink items: 1 dead letters re-driven (topic items.dlq)\n  indexed 1, deleted 0, stale 0"), "{text}");
    assert!(text.contains("failed again 0"), "{text}");
    let json = tally.to_json("items", "items.dlq", false);
    assert_eq!(json["indexed"], 1);
    assert_eq!(json["failed_again"]["total"], 0);
    assert!(
        Tally::default()
            .render("items", "items.dlq", false)
            .contains("no dead letters to re-drive")
    );

    let mut batch = vec![letter(4, 1, "a", 1, "r"), letter(9, 1, "a", 1, "r")];
    batch[1].partition = 2;
    assert_eq!(ends(&batch), BTreeMap::from([(0, 5), (2, 10)]));
}
