//! The per-event cost of filters and transforms (see "Cost" in `consumer/src/script.rs`):
//! `cargo bench -p sluice-consumer --bench script_cost`. Prints one line per case.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: a panic is its report

use std::time::Instant;

use serde_json::json;
use sluice_common::config::SinkConfig;
use sluice_consumer::script::{Scripts, Verdict};

const EVENTS: u32 = 20_000;

fn main() {
    let input = json!({
        "action": "update",
        "record": {
            "id": 7, "name": "lamp", "price": 12.5, "in_stock": true, "sku": "LMP-7",
            "color": "red", "weight": 1.2, "created_at": "2024-01-01T00:00:00Z",
            "tags": ["home", "light"], "vendor_id": 42,
        },
        "changes": { "price": { "old": 5, "new": 12 } },
        "metadata": { "table": "public.products", "lsn": "0/16B3748" },
    });
    let pick = r#"{ "id": .record.id, "name": .record.name, "price": .record.price }"#;
    for (what, filter, transform) in [
        ("no scripts", None, None),
        ("shorthand filter", Some("price > 10"), None),
        ("transform", None, Some(pick)),
        ("filter + transform", Some("price > 10"), Some(pick)),
    ] {
        let sink: SinkConfig = serde_json::from_value(json!({
            "name": "products",
            "table": "public.products",
            "filter": filter,
            "transform": transform,
            "elasticsearch": { "endpoint": "http://127.0.0.1:9200", "index": "products" },
        }))
        .unwrap();
        let scripts = Scripts::compile(&sink, 0).unwrap();
        let start = Instant::now();
        for _ in 0..EVENTS {
            assert!(matches!(
                scripts.apply(&input).unwrap(),
                Verdict::Document(_)
            ));
        }
        println!("script: {what}: {:?} per event", start.elapsed() / EVENTS);
    }
}
