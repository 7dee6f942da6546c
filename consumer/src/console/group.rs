//! `GET /console/api/overview`: every sink as its whole group stands. The group's offsets and
//! members come from Kafka (what `status` reads), each member's counters and recent samples
//! from its `/status`, the letters still to re-drive from the dead-letter topic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};
use sluice_common::config::SinkConfig;
use sluice_common::telemetry;

use super::Console;
use crate::commands::{GroupMember, PartitionLag, lag, members};
use crate::dlq::Letters;
use crate::kafka;
use crate::stats::{Outcome, now_micros, recent};

pub(super) async fn overview(State(console): State<Arc<Console>>) -> Json<Value> {
    let mut sinks = Vec::new();
    for sink in &console.config.sinks {
        sinks.push(sink_overview(&console, sink).await);
    }
    let own: Vec<&str> = console.stats.iter().map(|s| s.sink.as_str()).collect();
    Json(json!({
        "process": console.bound.get().map(ToString::to_string),
        "runs": own,
        "actions": console.actions(),
        "now_micros": now_micros(),
        "sinks": sinks,
    }))
}

/// One member of a sink's group and what its `/status` says about the sink.
struct Member {
    client_id: String,
    host: String,
    addr: Option<SocketAddr>,
    /// The partitions of the sink's topic the group assigned it.
    partitions: Vec<i32>,
    /// The sink's entry of the member's `/status`, or why there is none.
    entry: Result<Value, String>,
}

async fn read_members(console: &Console, sink: &str, topic: &str) -> Result<Vec<Member>, String> {
    let listed = members(&console.config, sink)
        .await
        .map_err(|e| e.to_string())?;
    // Every member at once: one that does not answer costs its timeout once, not per member.
    let mut asked = tokio::task::JoinSet::new();
    for (i, member) in listed.iter().enumerate() {
        let (addr, sink) = (member.addr, sink.to_owned());
        asked.spawn(async move { (i, status_entry(addr, &sink).await) });
    }
    let mut entries: Vec<Result<Value, String>> = vec![Err("not asked".to_owned()); listed.len()];
    while let Some(answered) = asked.join_next().await {
        if let Ok((i, entry)) = answered
            && let Some(slot) = entries.get_mut(i)
        {
            *slot = entry;
        }
    }
    Ok(listed
        .into_iter()
        .zip(entries)
        .map(|(member, entry)| {
            let GroupMember {
                client_id,
                host,
                addr,
                assignment,
            } = member;
            Member {
                client_id,
                host,
                addr,
                partitions: kafka::assigned_partitions(&assignment, topic),
                entry,
            }
        })
        .collect())
}

/// The sink's entry of the `/status` served at `addr`, or why there is none.
async fn status_entry(addr: Option<SocketAddr>, sink: &str) -> Result<Value, String> {
    let Some(addr) = addr else {
        return Err("no status address in its client id".to_owned());
    };
    match telemetry::fetch_status(addr).await {
        Ok(Value::Array(entries)) => entries
            .into_iter()
            .find(|e| e["sink"].as_str() == Some(sink))
            .ok_or_else(|| format!("runs no sink {sink}")),
        Ok(_) => Err("its /status is not a consumer's".to_owned()),
        Err(error) => Err(format!("not reachable ({error})")),
    }
}

async fn sink_overview(console: &Console, sink: &SinkConfig) -> Value {
    let config = &console.config;
    let topic = config.topic_for(&sink.table);
    let partitions = lag(config, &sink.name, &topic)
        .await
        .map_err(|e| e.to_string());
    let members = read_members(console, &sink.name, &topic).await;
    let pending = match Letters::open(config, sink).await {
        Ok(Some(letters)) => Ok(letters.pending()),
        Ok(None) => Ok(0),
        Err(error) => Err(error.to_string()),
    };
    let listed = members.as_deref().unwrap_or_default();
    let entries: Vec<(&Member, &Value)> = listed
        .iter()
        .filter_map(|m| m.entry.as_ref().ok().map(|e| (m, e)))
        .collect();

    // Which member holds each partition, as the group assigned them.
    let mut owners: BTreeMap<i32, String> = BTreeMap::new();
    for member in listed {
        let name = member
            .addr
            .map_or_else(|| member.client_id.clone(), |a| a.to_string());
        for partition in &member.partitions {
            owners.insert(*partition, name.clone());
        }
    }
    let mut outcomes = [0u64; 6];
    for (_, entry) in &entries {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            outcomes[i] += entry["outcomes"][outcome.label()].as_u64().unwrap_or(0);
        }
    }
    let last_success = entries
        .iter()
        .filter_map(|(_, e)| e["last_success_micros"].as_i64())
        .max();
    let latency = entries
        .iter()
        .filter_map(|(_, e)| e["commit_to_indexed_micros"].as_i64())
        .max();
    let total_lag = partitions
        .as_ref()
        .ok()
        .map(|rows| rows.iter().map(|r| r.lag).sum::<i64>());
    let since_success = last_success
        .map(|micros| Duration::from_micros(u64::try_from(now_micros() - micros).unwrap_or(0)));
    let (state, reason) = match (&members, total_lag) {
        (Err(error), _) => (
            "unknown",
            format!("cannot read the group's members: {error}"),
        ),
        (_, None) => (
            "unknown",
            format!(
                "cannot read the group's offsets: {}",
                partitions.as_ref().err().cloned().unwrap_or_default()
            ),
        ),
        (Ok(members), Some(lag)) => state(
            &sink.name,
            members.len(),
            lag,
            since_success,
            sink.unready_after.get(),
            sink.elasticsearch.batch_size,
        ),
    };
    json!({
        "sink": sink.name,
        "topic": topic,
        "group": sink.name,
        "dlq_topic": sink.dlq_topic(),
        "index": sink.elasticsearch.index,
        "state": state,
        "state_reason": reason,
        "lag": total_lag,
        "partitions": partitions.as_ref().map_or_else(
            |e| json!({"error": e}),
            |rows| Value::Array(rows.iter().map(|r| partition_json(r, &owners)).collect()),
        ),
        "members": members.as_ref().map_or_else(
            |e| json!({"error": e}),
            |list| Value::Array(list.iter().map(|m| member_json(m, console.bound.get())).collect()),
        ),
        "outcomes": labelled(outcomes.map(|c| json!(c))),
        "last_success_micros": last_success,
        "commit_to_indexed_micros": latency,
        "dead_letters": pending.as_ref().map_or_else(|e| json!({"error": e}), |n| json!(n)),
        "rates": rates(&entries),
    })
}

fn partition_json(row: &PartitionLag, owners: &BTreeMap<i32, String>) -> Value {
    json!({
        "partition": row.partition,
        "committed": row.committed,
        "end": row.end,
        "lag": row.lag,
        "member": owners.get(&row.partition),
    })
}

fn member_json(member: &Member, this: Option<&SocketAddr>) -> Value {
    // A process listening on every address is a member at the address Kafka saw.
    let is_this = member.addr.zip(this).is_some_and(|(addr, this)| {
        addr.port() == this.port() && (addr.ip() == this.ip() || this.ip().is_unspecified())
    });
    let mut out = json!({
        "client_id": member.client_id,
        "host": member.host,
        "addr": member.addr.map(|a| a.to_string()),
        "this_process": is_this,
        "partitions": member.partitions,
    });
    match &member.entry {
        Ok(entry) => {
            out["outcomes"] = entry["outcomes"].clone();
            out["retried"] = entry["retried"].clone();
            out["lag"] = entry["lag"].clone();
            out["last_success_micros"] = entry["last_success_micros"].clone();
        }
        Err(error) => out["error"] = json!(error),
    }
    out
}

/// `{"indexed": …, "deleted": …, …}` in [`Outcome::ALL`] order.
fn labelled(values: [Value; 6]) -> Value {
    let map: Map<String, Value> = Outcome::ALL
        .iter()
        .zip(values)
        .map(|(o, v)| (o.label().to_owned(), v))
        .collect();
    Value::Object(map)
}

/// The members' per-second rates, summed per sample time: `[{"at": s, "indexed": r, …}]`.
fn rates(entries: &[(&Member, &Value)]) -> Value {
    let mut sum: BTreeMap<i64, [f64; 6]> = BTreeMap::new();
    for (_, entry) in entries {
        for (at, rates) in recent::rates(&recent::from_json(&entry["recent"])) {
            let total = sum.entry(at).or_insert([0.0; 6]);
            for (t, r) in total.iter_mut().zip(rates) {
                *t += r;
            }
        }
    }
    Value::Array(
        sum.into_iter()
            .map(|(at, rates)| {
                let mut row = labelled(rates.map(|r| json!((r * 10.0).round() / 10.0)));
                row["at"] = json!(at);
                row
            })
            .collect(),
    )
}

/// The sink's state, with why when it is not simply running: stopped (no member), stalled
/// (behind, and no bulk request succeeded for `unready_after`: what fails `/readyz`), catching
/// up (a batch or more behind), running.
fn state(
    group: &str,
    members: usize,
    lag: i64,
    since_success: Option<Duration>,
    unready_after: Duration,
    batch_size: usize,
) -> (&'static str, String) {
    if members == 0 {
        return (
            "stopped",
            format!(
                "no sluice-consumer is a member of group {group}{}: start `sluice-consumer run`",
                if lag > 0 {
                    format!(" ({lag} messages wait)")
                } else {
                    String::new()
                }
            ),
        );
    }
    if lag > 0
        && let Some(since) = since_success.filter(|since| *since > unready_after)
    {
        return (
            "stalled",
            format!(
                "{lag} messages behind and no bulk request succeeded for {}",
                humantime::format_duration(Duration::from_secs(since.as_secs()))
            ),
        );
    }
    if lag >= i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX) {
        return ("catching up", format!("{lag} messages behind"));
    }
    ("running", String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_sink_is_stopped_stalled_catching_up_or_running() {
        let at = |members, lag, since: Option<u64>| {
            state(
                "g",
                members,
                lag,
                since.map(Duration::from_secs),
                MINUTE,
                100,
            )
        };
        let (label, reason) = at(0, 5, None);
        assert_eq!(label, "stopped");
        assert!(reason.contains("no sluice-consumer is a member of group g (5 messages wait)"));
        let (label, reason) = at(2, 5, Some(90));
        assert_eq!(label, "stalled");
        assert_eq!(
            reason,
            "5 messages behind and no bulk request succeeded for 1m 30s"
        );
        assert_eq!(at(2, 0, Some(90)).0, "running", "idle is not stalled");
        assert_eq!(at(2, 500, Some(1)).0, "catching up");
        assert_eq!(at(2, 500, None).0, "catching up", "no success yet");
        assert_eq!(at(2, 99, Some(1)), ("running", String::new()));
    }
}
