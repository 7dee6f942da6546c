//! Notices when messages wait for Kafka and none is acknowledged for a while.
//!
//! While Kafka is away the producer keeps its messages and waits, which is right. But the same
//! silence can come from the client itself (a partition whose new leader it never learns), and
//! then nothing would say why the pipeline stands still. Every statistics report (5 s) the
//! watch compares the acknowledgements with the previous report: while messages wait and none
//! was acknowledged, `sluice_producer_kafka_unacknowledged_seconds` counts up; after
//! [`STALL`] it logs, once per stall, what librdkafka knows (brokers, the partitions' leaders
//! and queues) and asks for fresh metadata, again every [`STALL`] until an acknowledgement
//! comes. Nothing unacknowledged is ever confirmed to Postgres, so a stall loses nothing; it
//! only holds the slot (and the index) back.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;

/// How long messages may wait without an acknowledgement before the watch says so.
pub(crate) const STALL: Duration = Duration::from_secs(30);

/// At most this many partitions are described in the warning.
const PARTITIONS_SHOWN: usize = 12;

/// What one look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing waits, or something was acknowledged since the last look.
    Flowing,
    /// Messages wait and none was acknowledged for this long (less than [`STALL`], or already
    /// told).
    Waiting(Duration),
    /// Messages have waited [`STALL`] or longer without an acknowledgement: warn (the first time)
    /// and ask for metadata.
    Stalled { waited: Duration, first: bool },
    /// Acknowledgements came again after a stall that was told.
    Resumed(Duration),
}

impl Seen {
    /// How long messages have waited without an acknowledgement (the metric).
    pub(crate) fn waited(self) -> Duration {
        match self {
            Self::Flowing | Self::Resumed(_) => Duration::ZERO,
            Self::Waiting(waited) | Self::Stalled { waited, .. } => waited,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Watch {
    acknowledged: u64,
    /// Since when nothing was acknowledged while messages waited.
    since: Instant,
    /// When the stall was last told (warning or metadata request), if it was.
    told: Option<Instant>,
}

impl Watch {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            acknowledged: 0,
            since: now,
            told: None,
        }
    }

    /// One look: `acknowledged` counts every acknowledgement so far, `waiting` the messages
    /// sent and not acknowledged.
    pub(crate) fn look(&mut self, now: Instant, acknowledged: u64, waiting: usize) -> Seen {
        if waiting == 0 || acknowledged != self.acknowledged {
            self.acknowledged = acknowledged;
            let waited = now.saturating_duration_since(self.since);
            self.since = now;
            return match self.told.take() {
                Some(_) => Seen::Resumed(waited),
                None => Seen::Flowing,
            };
        }
        let waited = now.saturating_duration_since(self.since);
        if waited < STALL {
            return Seen::Waiting(waited);
        }
        match self.told {
            Some(at) if now.saturating_duration_since(at) < STALL => Seen::Waiting(waited),
            told => {
                self.told = Some(now);
                Seen::Stalled {
                    waited,
                    first: told.is_none(),
                }
            }
        }
    }
}

/// What librdkafka knows that explains a stall, on one line: the brokers' states, the idempotent
/// producer's state, and the partitions that hold messages with their leader.
pub(crate) fn describe(statistics: &Statistics) -> String {
    let mut out = String::new();
    let mut brokers: Vec<_> = statistics
        .brokers
        .values()
        .filter(|b| b.nodeid >= 0)
        .map(|b| format!("{} {}", b.name, b.state))
        .collect();
    brokers.sort();
    let _ = write!(out, "brokers: {}", brokers.join(", "));
    if brokers.is_empty() {
        out.push_str("none known");
    }
    if let Some(eos) = &statistics.eos {
        let _ = write!(out, "; idempotent producer {}", eos.idemp_state);
    }
    let mut partitions: Vec<String> = Vec::new();
    let mut topics: Vec<_> = statistics.topics.values().collect();
    topics.sort_by(|a, b| a.topic.cmp(&b.topic));
    for topic in topics {
        let mut held: Vec<_> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.msgq_cnt + p.xmit_msgq_cnt + p.msgs_inflight > 0)
            .collect();
        held.sort_by_key(|p| p.partition);
        for p in held {
            partitions.push(format!(
                "{}[{}] leader {} queued {} in flight {}",
                topic.topic,
                p.partition,
                p.leader,
                p.msgq_cnt + p.xmit_msgq_cnt,
                p.msgs_inflight
            ));
        }
    }
    let more = partitions.len().saturating_sub(PARTITIONS_SHOWN);
    partitions.truncate(PARTITIONS_SHOWN);
    if !partitions.is_empty() {
        let _ = write!(out, "; {}", partitions.join(", "));
    }
    if more > 0 {
        let _ = write!(out, " and {more} more partitions");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test reports failure

    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn nothing_waiting_or_acknowledgements_coming_is_flowing() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0);
        assert_eq!(watch.look(t0 + 60 * S, 0, 0), Seen::Flowing);
        assert_eq!(watch.look(t0 + 65 * S, 10, 5), Seen::Flowing);
        assert_eq!(watch.look(t0 + 70 * S, 20, 5), Seen::Flowing);
        assert_eq!(watch.look(t0 + 75 * S, 20, 5), Seen::Waiting(5 * S));
    }

    #[test]
    fn a_stall_is_told_once_asked_about_every_stall_and_its_end_is_told() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0);
        assert_eq!(watch.look(t0, 7, 3), Seen::Flowing);
        assert_eq!(watch.look(t0 + 25 * S, 7, 3), Seen::Waiting(25 * S));
        assert_eq!(
            watch.look(t0 + 30 * S, 7, 3),
            Seen::Stalled {
                waited: 30 * S,
                first: true
            }
        );
        assert_eq!(watch.look(t0 + 35 * S, 7, 4), Seen::Waiting(35 * S));
        assert_eq!(
            watch.look(t0 + 60 * S, 7, 4),
            Seen::Stalled {
                waited: 60 * S,
                first: false
            }
        );
        assert_eq!(watch.look(t0 + 60 * S, 7, 4).waited(), 60 * S);
        assert_eq!(watch.look(t0 + 65 * S, 8, 3), Seen::Resumed(65 * S));
        assert_eq!(watch.look(t0 + 70 * S, 8, 3), Seen::Waiting(5 * S));
        assert_eq!(watch.look(t0 + 75 * S, 9, 2), Seen::Flowing);
    }

    #[test]
    fn a_stall_that_ends_because_nothing_waits_any_more_is_told_too() {
        let t0 = Instant::now();
        let mut watch = Watch::new(t0);
        watch.look(t0, 1, 1);
        assert!(matches!(
            watch.look(t0 + 40 * S, 1, 1),
            Seen::Stalled { .. }
        ));
        assert_eq!(watch.look(t0 + 45 * S, 1, 0), Seen::Resumed(45 * S));
    }

    #[test]
    fn the_description_names_brokers_state_and_the_partitions_holding_messages() {
        let statistics: Statistics = serde_json::from_value(serde_json::json!({
            "name": "p", "client_id": "sluice", "type": "producer", "ts": 0, "time": 0,
            "age": 0, "replyq": 0, "msg_cnt": 3, "msg_size": 0, "msg_max": 0,
            "msg_size_max": 0, "simple_cnt": 0, "metadata_cache_cnt": 1, "tx": 0,
            "tx_bytes": 0, "rx": 0, "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0,
            "rxmsgs": 0, "rxmsg_bytes": 0,
            "brokers": {
                "127.0.0.1:19092/1": broker("127.0.0.1:19092/1", 1, "UP"),
                "127.0.0.1:19092/bootstrap": broker("127.0.0.1:19092/bootstrap", -1, "INIT")
            },
            "topics": {"t": {
                "topic": "t", "age": 0, "metadata_age": 0,
                "batchsize": window(), "batchcnt": window(),
                "partitions": {
                    "0": partition(0, 1, 0, 0),
                    "1": partition(1, -1, 2, 1),
                    "-1": partition(-1, -1, 0, 0)
                }
            }},
            "eos": {"idemp_state": "Assigned", "idemp_stateage": 0, "txn_state": "Init",
                    "txn_stateage": 0, "txn_may_enq": false, "producer_id": 1,
                    "producer_epoch": 0, "epoch_cnt": 1}
        }))
        .unwrap();
        assert_eq!(
            describe(&statistics),
            "brokers: 127.0.0.1:19092/1 UP; idempotent producer Assigned; t[1] leader -1 queued 2 in flight 1"
        );
    }

    fn broker(name: &str, nodeid: i32, state: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "nodeid": nodeid, "nodename": "127.0.0.1:19092", "source": "configured",
            "state": state, "stateage": 0, "outbuf_cnt": 0, "outbuf_msg_cnt": 0,
            "waitresp_cnt": 0, "waitresp_msg_cnt": 0, "tx": 0, "txbytes": 0, "txerrs": 0,
            "txretries": 0, "txidle": 0, "req_timeouts": 0, "rx": 0, "rxbytes": 0, "rxerrs": 0,
            "rxcorriderrs": 0, "rxpartial": 0, "rxidle": 0, "zbuf_grow": 0, "buf_grow": 0,
            "wakeups": 0, "connects": 0, "disconnects": 0, "req": {}, "toppars": {}
        })
    }

    fn window() -> serde_json::Value {
        serde_json::json!({"min": 0, "max": 0, "avg": 0, "sum": 0, "cnt": 0, "stddev": 0,
            "hdrsize": 0, "p50": 0, "p75": 0, "p90": 0, "p95": 0, "p99": 0, "p99_99": 0,
            "outofrange": 0})
    }

    fn partition(id: i32, leader: i32, queued: i64, in_flight: i64) -> serde_json::Value {
        serde_json::json!({
            "partition": id, "broker": leader, "leader": leader, "desired": false,
            "unknown": false, "msgq_cnt": queued, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
            "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0, "fetch_state": "none",
            "query_offset": 0, "next_offset": 0, "app_offset": 0, "stored_offset": 0,
            "committed_offset": 0, "eof_offset": 0, "lo_offset": 0, "hi_offset": 0,
            "ls_offset": 0, "consumer_lag": 0, "consumer_lag_stored": 0, "txmsgs": 0,
            "txbytes": 0, "rxmsgs": 0, "rxbytes": 0, "msgs": 0, "rx_ver_drops": 0,
            "msgs_inflight": in_flight, "next_ack_seq": 0, "next_err_seq": 0, "acked_msgid": 0
        })
    }
}
