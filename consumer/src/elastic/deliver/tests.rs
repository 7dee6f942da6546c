//! Delivery against the in-memory index: what ends up in the index, with which version, and
//! which outcome and dead letter each event gets.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice_common::retry::Policy;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::batch::tests::{full, item, partial};
use crate::batch::{Batch, Write};
use crate::elastic::memory::MemoryIndex;
use crate::offsets::Tracker;

fn writer() -> Writer<MemoryIndex> {
    Writer {
        bulk: MemoryIndex::default(),
        policy: Policy::every(Duration::from_millis(10)),
        stats: Arc::new(SinkStats::new("s", "t", "t.dlq")),
        shutdown: CancellationToken::new(),
    }
}

/// The outcome each offset settled with.
fn outcomes(report: &Report) -> Vec<(i64, Outcome)> {
    let mut settled: Vec<(i64, Outcome)> = report
        .settled
        .iter()
        .map(|(slot, outcome, _)| (slot.offset, *outcome))
        .collect();
    settled.sort_by_key(|(offset, _)| *offset);
    settled
}

/// The dead letters: offset and error type.
fn letters(report: &Report) -> Vec<(i64, String)> {
    report
        .letters
        .iter()
        .map(|(ticket, letter)| (ticket.original.offset, letter.error_type.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn events_of_one_document_in_a_batch_make_one_write() {
    let w = writer();
    let mut batch = Batch::default();
    batch.push(item("1", 1, full(json!({"v": 1}))));
    batch.push(item("1", 2, full(json!({"v": 2}))));
    batch.push(item("2", 3, full(json!({"v": 3}))));
    let (items, _) = batch.take();
    let report = deliver(&w, items).await.unwrap();
    assert_eq!(w.bulk.state().requests, [2]);
    assert_eq!(w.bulk.get("products", "1"), Some((102, json!({"v": 2}))));
    assert_eq!(
        outcomes(&report),
        [
            (1, Outcome::Stale),
            (2, Outcome::Indexed),
            (3, Outcome::Indexed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn across_batches_the_same_version_wins_and_an_older_one_is_stale() {
    let w = writer();
    let first = item("1", 5, full(json!({"v": "first"})));
    deliver(&w, vec![first]).await.unwrap();
    // The same version (a later change in the same transaction) replaces the document.
    let same = item("1", 5, full(json!({"v": "second"})));
    let report = deliver(&w, vec![same]).await.unwrap();
    assert_eq!(outcomes(&report), [(5, Outcome::Indexed)]);
    assert_eq!(
        w.bulk.get("products", "1"),
        Some((105, json!({"v": "second"})))
    );
    // An older version (replayed after a newer one) leaves the document alone.
    let older = item("1", 4, full(json!({"v": "older"})));
    let report = deliver(&w, vec![older]).await.unwrap();
    assert_eq!(outcomes(&report), [(4, Outcome::Stale)]);
    assert_eq!(
        w.bulk.get("products", "1"),
        Some((105, json!({"v": "second"})))
    );
}

#[tokio::test(start_paused = true)]
async fn each_item_gets_the_outcome_of_its_own_answer() {
    let w = writer();
    w.bulk.put("products", "stale", 200, json!({"v": "newer"}));
    w.bulk.state().reject_field = Some("bad".to_owned());
    w.bulk.state().busy.insert("busy".to_owned(), 2);
    let mut delete = item("gone", 2, Write::Delete);
    delete.doc.outcome = Outcome::Deleted;
    let items = vec![
        item("stale", 1, full(json!({"v": 1}))),
        delete,
        item("mapping", 3, full(json!({"bad": "x"}))),
        item("busy", 4, full(json!({"v": 4}))),
    ];
    let report = deliver(&w, items).await.unwrap();
    assert_eq!(
        outcomes(&report),
        [
            (1, Outcome::Stale),
            (2, Outcome::Deleted),
            (4, Outcome::Indexed)
        ]
    );
    assert_eq!(
        letters(&report),
        [(3, "document_parsing_exception".to_owned())]
    );
    let (_, letter) = &report.letters[0];
    assert_eq!((letter.status, letter.attempts), (Some(400), 1));
    // The 429 item went again alone, twice, and was counted as retried.
    assert_eq!(w.bulk.state().requests, [4, 1, 1]);
    assert_eq!(w.stats.to_json()["retried"], 2);
    assert_eq!(w.bulk.get("products", "busy"), Some((104, json!({"v": 4}))));
}

#[tokio::test(start_paused = true)]
async fn a_request_failing_as_a_whole_transiently_is_sent_again() {
    let w = writer();
    w.bulk.state().unavailable = 3;
    let report = deliver(&w, vec![item("1", 1, full(json!({"v": 1})))])
        .await
        .unwrap();
    assert_eq!(outcomes(&report), [(1, Outcome::Indexed)]);
    assert_eq!(w.bulk.state().requests, [1, 1, 1, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_request_is_halved_down_to_the_item_it_refuses() {
    let w = writer();
    w.bulk.state().too_large.insert("6".to_owned());
    let items = (0..8)
        .map(|i| item(&i.to_string(), i, full(json!({"v": i}))))
        .collect();
    let report = deliver(&w, items).await.unwrap();
    assert_eq!(letters(&report), [(6, "request_rejected".to_owned())]);
    assert_eq!(report.letters[0].1.status, Some(413));
    let indexed = outcomes(&report)
        .into_iter()
        .filter(|(_, outcome)| *outcome == Outcome::Indexed)
        .count();
    assert_eq!(indexed, 7);
    // 8 → 4 + 4 (the first half goes through) → 2 + 2 → 1 + 1.
    assert_eq!(w.bulk.state().requests, [8, 4, 4, 2, 2, 1, 1]);
    assert!(w.bulk.get("products", "6").is_none());
}

#[tokio::test(start_paused = true)]
async fn partial_updates_merge_onto_the_indexed_document_or_are_dead_lettered() {
    let w = writer();
    w.bulk
        .put("products", "1", 100, json!({"title": "a", "body": "long"}));
    w.bulk
        .put("products", "newer", 500, json!({"title": "kept"}));
    let items = vec![
        item("1", 1, partial(json!({"title": "b"}))),
        item("missing", 2, partial(json!({"title": "c"}))),
        item("newer", 3, partial(json!({"title": "d"}))),
    ];
    let report = deliver(&w, items).await.unwrap();
    assert_eq!(
        w.bulk.get("products", "1"),
        Some((101, json!({"title": "b", "body": "long"})))
    );
    assert_eq!(
        w.bulk.get("products", "newer"),
        Some((500, json!({"title": "kept"})))
    );
    assert_eq!(
        outcomes(&report),
        [(1, Outcome::Indexed), (3, Outcome::Stale)]
    );
    assert_eq!(
        letters(&report),
        [(2, "partial_update_of_missing_document".to_owned())]
    );
    assert!(w.bulk.get("products", "missing").is_none());
}

#[tokio::test(start_paused = true)]
async fn truncate_deletes_what_is_not_newer_and_counts_refusals() {
    let w = writer();
    w.bulk.put("orders-a", "old", 50, json!({}));
    w.bulk.put("orders-b", "also-old", 100, json!({}));
    w.bulk.put("orders-a", "new", 150, json!({}));
    w.bulk.put("orders-a", "stuck", 60, json!({}));
    w.bulk.put("other", "untouched", 10, json!({}));
    w.bulk.state().refuse_delete.insert("stuck".to_owned());
    let truncated = truncate(&w, "orders-*", 100, 2).await.unwrap();
    assert_eq!(
        truncated,
        Truncated {
            deleted: 2,
            newer: 1,
            refused: 1
        }
    );
    assert!(w.bulk.get("orders-a", "old").is_none());
    assert!(w.bulk.get("orders-b", "also-old").is_none());
    assert_eq!(w.bulk.get("orders-a", "new").map(|(v, _)| v), Some(150));
    assert_eq!(w.bulk.get("orders-a", "stuck").map(|(v, _)| v), Some(60));
    assert!(w.bulk.get("other", "untouched").is_some());
}

#[tokio::test(start_paused = true)]
async fn offsets_never_pass_an_event_that_is_not_settled() {
    let w = writer();
    let mut tracker = Tracker::default();
    tracker.assign(0);
    for offset in 0..4 {
        tracker.receive(0, offset).unwrap();
    }
    let apply = |tracker: &mut Tracker, report: &Report| {
        for (slot, _, _) in &report.settled {
            tracker.done(*slot);
        }
    };
    // The later batch (offsets 2, 3) finishes first: nothing may be committed yet.
    let later = vec![item("c", 2, full(json!({}))), item("d", 3, full(json!({})))];
    let report = deliver(&w, later).await.unwrap();
    apply(&mut tracker, &report);
    // Committing offset 0 passes nothing: the next reader starts at the unsettled event.
    assert_eq!(tracker.to_commit(), [(0, 0)]);
    // The earlier batch is interrupted by shutdown while the cluster is away: still nothing.
    w.bulk.state().unavailable = usize::MAX;
    let earlier = vec![item("a", 0, full(json!({}))), item("b", 1, full(json!({})))];
    w.shutdown.cancel();
    assert!(matches!(
        deliver(&w, earlier).await,
        Err(Error::Interrupted)
    ));
    assert_eq!(tracker.to_commit(), [], "the position must not move");
    // Delivered later (another attempt): everything up to the end may be committed.
    let w = writer();
    let earlier = vec![item("a", 0, full(json!({}))), item("b", 1, full(json!({})))];
    let report = deliver(&w, earlier).await.unwrap();
    apply(&mut tracker, &report);
    assert_eq!(tracker.to_commit(), [(0, 4)]);
}

#[tokio::test(start_paused = true)]
async fn a_write_blocked_index_is_waited_out_never_dead_lettered() {
    let w = writer();
    // What a rebuild does to the old index while it swaps the alias.
    w.bulk.state().blocked.insert("products".to_owned(), 5);
    let mut delete = item("2", 2, Write::Delete);
    delete.doc.outcome = Outcome::Deleted;
    w.bulk.put("products", "2", 1, json!({"v": 0}));
    let report = deliver(&w, vec![item("1", 1, full(json!({"v": 1}))), delete])
        .await
        .unwrap();
    assert!(letters(&report).is_empty(), "{:?}", letters(&report));
    assert_eq!(
        outcomes(&report),
        [(1, Outcome::Indexed), (2, Outcome::Deleted)]
    );
    assert_eq!(w.bulk.get("products", "1"), Some((101, json!({"v": 1}))));
    assert_eq!(w.bulk.get("products", "2"), None);
    // Five refusals, then the writes that landed.
    assert_eq!(w.bulk.state().requests.len(), 4);
    assert!(w.stats.to_json()["retried"].as_u64().unwrap() >= 5);
}
