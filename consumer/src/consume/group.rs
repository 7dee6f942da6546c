//! The sink's group consumer: its settings, the rebalance callbacks that keep the offset
//! tracker in step with the assignment, and waiting for the topic to exist.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::config::{Config, SinkConfig};
use sluice_common::retry::{self, Decision, Policy};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::kafka::client_config;
use crate::offsets::Tracker;
use crate::stats::SinkStats;

/// How often the sink looks again for a topic that does not exist yet.
const TOPIC_POLL: Policy = Policy::every(Duration::from_secs(1));

/// The group consumer's settings: manual commits only, cooperative rebalancing, a bounded
/// prefetch queue (memory), and a session timeout short enough that a killed member's partitions
/// move on within seconds.
pub fn consumer_config(config: &Config, sink: &SinkConfig) -> ClientConfig {
    client_config(
        config,
        &[
            ("client.id", crate::kafka::member_client_id(config)),
            ("group.id", sink.name.clone()),
            ("enable.auto.commit", "false".to_owned()),
            ("enable.auto.offset.store", "false".to_owned()),
            ("auto.offset.reset", "earliest".to_owned()),
            (
                "partition.assignment.strategy",
                "cooperative-sticky".to_owned(),
            ),
            ("session.timeout.ms", "10000".to_owned()),
            ("heartbeat.interval.ms", "2000".to_owned()),
            // While the cluster is down the sink stops reading; it stays in the group for this
            // long before its partitions move to another member.
            ("max.poll.interval.ms", "1800000".to_owned()),
            // Bounds the prefetched messages held in memory (the group consumer's one queue).
            // librdkafka counts them as fetched, compressed; each message set is kept
            // decompressed while any of its messages waits, about six times as much for these
            // rows (LZ4): at 4096 a heap profile found 26 MB of such buffers at a drain's peak.
            // 1024 held 10 MB less than 4096, at the same rate (docs/benchmarks.md, run H).
            ("queued.max.messages.kbytes", "1024".to_owned()),
            // When the queue is full, fetch again soon after it drains (librdkafka waits 1 s by
            // default, which starves a fast sink behind a small queue).
            ("fetch.queue.backoff.ms", "20".to_owned()),
            // A fetch response stays in memory while any of its messages waits in the queue:
            // 4 MiB (librdkafka's default is 50 MiB) held 9 MB less at a drain's peak than
            // 16 MiB, at the same rate (docs/benchmarks.md, run G). Still four partitions'
            // `max.partition.fetch.bytes`, and a larger single message is fetched whole.
            ("fetch.max.bytes", "4194304".to_owned()),
            ("statistics.interval.ms", "5000".to_owned()),
            // Notices the topic soon when the consumer starts before the producer created it.
            ("topic.metadata.refresh.interval.ms", "10000".to_owned()),
        ],
    )
}

/// Callbacks of the group consumer.
#[derive(Debug)]
pub struct SinkContext {
    pub topic: String,
    pub tracker: Arc<Mutex<Tracker>>,
    pub stats: Arc<SinkStats>,
    /// Since when each assigned partition has not been fetching, and whether that was logged.
    pub idle: Mutex<BTreeMap<i32, (std::time::Instant, bool)>>,
}

/// An assigned partition not fetching for this long is logged with librdkafka's state of it.
const FETCH_STALL: Duration = Duration::from_secs(30);

impl ClientContext for SinkContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let lag: BTreeMap<i32, i64> = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag >= 0)
            .map(|p| (p.partition, p.consumer_lag))
            .collect();
        self.stats.set_lag(lag);
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = std::time::Instant::now();
        for p in topic.partitions.values().filter(|p| p.partition >= 0) {
            if !p.desired || p.fetch_state == "active" {
                idle.remove(&p.partition);
                continue;
            }
            let (since, logged) = idle.entry(p.partition).or_insert((now, false));
            if !*logged && now.duration_since(*since) >= FETCH_STALL {
                *logged = true;
                tracing::warn!(
                    sink = %self.stats.sink,
                    partition = p.partition,
                    fetch_state = %p.fetch_state,
                    leader = p.leader,
                    next_offset = p.next_offset,
                    hi_offset = p.hi_offset,
                    "an assigned partition has not been fetching for {FETCH_STALL:?}"
                );
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Ok(mut tracker) = self.tracker.lock() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(list) => {
                for element in list.elements() {
                    tracker.assign(element.partition());
                }
                tracing::info!(sink = %self.stats.sink, partitions = ?partitions(list), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                // Commit what is final for the partitions going away; work still in flight for
                // them finishes (or not) without ever being committed by this process.
                let mut commits = TopicPartitionList::new();
                for element in list.elements() {
                    if let Some(offset) = tracker.revoke(element.partition()) {
                        let _ = commits.add_partition_offset(
                            &self.topic,
                            element.partition(),
                            Offset::Offset(offset),
                        );
                    }
                }
                drop(tracker);
                if commits.count() > 0
                    && let Err(error) = consumer.commit(&commits, CommitMode::Sync)
                {
                    tracing::warn!(sink = %self.stats.sink, %error, "commit on revocation failed; the next owner re-reads from the previous commit");
                }
                tracing::info!(sink = %self.stats.sink, partitions = ?partitions(list), "partitions revoked");
            }
            Rebalance::Error(error) => {
                tracing::warn!(sink = %self.stats.sink, %error, "rebalance error");
            }
        }
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// Why the topic cannot be consumed yet.
#[derive(Debug, thiserror::Error)]
enum NotYet {
    #[error("the topic does not exist yet or a partition has no leader")]
    Missing,
    #[error("cannot read Kafka metadata yet: {0}")]
    Metadata(#[from] rdkafka::error::KafkaError),
}

/// Waits until the producer has created the topic and every partition has a leader
/// (subscribing to a missing or just-created topic works, but the consumer would only notice it
/// at a later metadata refresh).
pub async fn wait_for_topic(
    config: &Config,
    topic: &str,
    sink: &str,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    // Asked through a client of its own: a group consumer that once saw the topic missing was
    // seen to fetch nothing after it appeared.
    let admin: AdminClient<DefaultClientContext> = client_config(config, &[])
        .create()
        .map_err(Error::kafka("creating a metadata client"))?;
    let admin = Arc::new(admin);
    let mut logged = false;
    let look = || {
        let (client, name) = (admin.clone(), topic.to_owned());
        async move {
            let found = tokio::task::spawn_blocking(move || {
                client
                    .inner()
                    .fetch_metadata(Some(&name), Duration::from_secs(10))
                    .map(|metadata| {
                        metadata.topics().first().is_some_and(|t| {
                            t.error().is_none()
                                && !t.partitions().is_empty()
                                && t.partitions()
                                    .iter()
                                    .all(|p| p.error().is_none() && p.leader() >= 0)
                        })
                    })
            })
            .await
            .map_err(|_| NotYet::Missing)??;
            if found { Ok(()) } else { Err(NotYet::Missing) }
        }
    };
    retry::retry(TOPIC_POLL, shutdown, look, |error, _| {
        match error {
            NotYet::Missing if !logged => {
                tracing::info!(
                    sink,
                    topic,
                    "waiting for the topic (sluice-producer creates it)"
                );
                logged = true;
            }
            NotYet::Missing => {}
            NotYet::Metadata(error) => {
                tracing::warn!(sink, topic, %error, "cannot read Kafka metadata yet");
            }
        }
        Decision::Retry
    })
    .await
    .map_err(|_| Error::Interrupted)
}
