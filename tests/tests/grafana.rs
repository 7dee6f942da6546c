//! The Grafana dashboard (`deploy/grafana/sluice.json`) asks only for metrics the processes
//! export: every `sluice_*` name in its queries is one of `common/src/telemetry/names.rs`
//! (a summary's `_sum` and `_count` included). Whether Grafana draws it is not tested here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeSet;

use serde_json::Value;

const DASHBOARD: &str = include_str!("../../deploy/grafana/sluice.json");
const NAMES: &str = include_str!("../../common/src/telemetry/names.rs");

/// Every `sluice_…` word of `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("sluice_"))
        .map(str::to_owned)
        .collect()
}

fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("expr" | "definition", Value::String(query)) => out.push(query.clone()),
                    _ => queries(item, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| queries(item, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_the_processes_export() {
    let exported = metric_names(NAMES);
    assert!(
        exported.contains("sluice_consumer_events_total"),
        "{exported:?}"
    );
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    assert!(found.len() > 10, "{found:?}");
    let mut used = BTreeSet::new();
    for query in &found {
        used.extend(metric_names(query));
    }
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| {
            let base = name
                .strip_suffix("_sum")
                .or_else(|| name.strip_suffix("_count"))
                .unwrap_or(name);
            !exported.contains(*name) && !exported.contains(base)
        })
        .collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}");
    let consumer: Vec<&String> = exported
        .iter()
        .filter(|n| n.starts_with("sluice_consumer_"))
        .collect();
    for name in consumer {
        assert!(used.contains(name), "the dashboard shows nothing of {name}");
    }
}
