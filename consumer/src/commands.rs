//! `check` and `status`.

use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::config::{Config, SinkConfig};
use sluice_common::telemetry;

use crate::dlq::Letters;
use crate::elastic::{Client, ElasticError};
use crate::error::Error;
use crate::kafka;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks each sink: scripts compile (a failure is a config error, exit 2), its topic exists,
/// the cluster answers and accepts the credentials, the index or alias exists. Prints every
/// finding with its fix; fails when something would stop `run`.
pub async fn check(config: Config) -> Result<(), Error> {
    let prepared = crate::prepare(&config, None)?;
    let mut out = String::new();
    let mut blockers = 0;
    for sink in &prepared {
        let name = &sink.config.name;
        let topic = config.topic_for(&sink.config.table);
        let _ = writeln!(out, "sink {name}:");
        let _ = writeln!(
            out,
            "  ok    filter and transform compile ({}, {})",
            if sink.scripts.has_filter() {
                "filter"
            } else {
                "no filter"
            },
            if sink.scripts.has_transform() {
                "transform"
            } else {
                "no transform"
            },
        );
        match partitions(&config, &topic).await {
            Ok(Some(count)) => {
                let _ = writeln!(out, "  ok    kafka topic {topic}: {count} partitions");
            }
            Ok(None) => {
                let _ = writeln!(
                    out,
                    "  note  kafka topic {topic} does not exist yet\n        fix: start sluice-producer (it creates the topic), or check kafka.topic_prefix and the sink's table"
                );
            }
            Err(error) => {
                blockers += 1;
                let _ = writeln!(
                    out,
                    "  FAIL  kafka at {}: {error}\n        fix: check kafka.brokers and kafka.security",
                    config.kafka.brokers
                );
            }
        }
        let es = &sink.config.elasticsearch;
        let client = match Client::new(es) {
            Ok(client) => client,
            Err(error) => {
                blockers += 1;
                let _ = writeln!(out, "  FAIL  {}: {error}", es.endpoint);
                continue;
            }
        };
        match client.info().await {
            Ok(info) => {
                let _ = writeln!(
                    out,
                    "  ok    {} {} at {}, credentials accepted",
                    info.distribution, info.version, es.endpoint
                );
            }
            Err(error) => {
                blockers += 1;
                let fix = match error {
                    ElasticError::Auth { .. } => {
                        "check elasticsearch.auth (type and value) and the key's privileges"
                    }
                    _ => "check elasticsearch.endpoint, ca_file, and that the cluster is up",
                };
                let _ = writeln!(out, "  FAIL  {}: {error}\n        fix: {fix}", es.endpoint);
                continue;
            }
        }
        match sink.template.fixed() {
            Some(alias) => match client.exists(alias).await {
                Ok(true) => {
                    let _ = writeln!(out, "  ok    index {alias} exists");
                }
                Ok(false) => {
                    let _ = writeln!(
                        out,
                        "  note  index {alias} is missing\n        fix: none needed: run creates {alias}-v1 behind the alias {alias}{}",
                        if sink.settings.is_some() || sink.mappings.is_some() {
                            " with the configured settings and mappings"
                        } else {
                            " (dynamic mapping)"
                        }
                    );
                }
                Err(error) => {
                    blockers += 1;
                    let _ = writeln!(out, "  FAIL  index {alias}: {error}");
                }
            },
            None => {
                let _ = writeln!(
                    out,
                    "  ok    index template {} (indices {} are created as events arrive)",
                    es.index,
                    sink.template.pattern()
                );
            }
        }
    }
    print!("{out}");
    if blockers > 0 {
        return Err(Error::Check(format!(
            "{blockers} problem(s) would stop the consumer"
        )));
    }
    println!("everything the consumer needs is in place");
    Ok(())
}

/// The topic's partition count, `None` when it does not exist.
async fn partitions(config: &Config, topic: &str) -> Result<Option<usize>, Error> {
    let consumer: BaseConsumer = kafka::client_config(config, &[])
        .create()
        .map_err(Error::kafka("creating a metadata client"))?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer
            .fetch_metadata(Some(&topic), KAFKA_TIMEOUT)
            .map_err(Error::kafka(format!("reading the metadata of {topic}")))?;
        Ok(metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len()))
    })
    .await?
}

/// Per partition: committed offset, end offset, lag. Per sink: dead letters, and the running
/// consumer's outcome counts when it answers.
pub async fn status(config: Config) -> Result<(), Error> {
    let mut out = String::new();
    for sink in &config.sinks {
        let topic = config.topic_for(&sink.table);
        let _ = writeln!(
            out,
            "sink {} (group {}, topic {topic}):",
            sink.name, sink.name
        );
        match lag(&config, &sink.name, &topic).await {
            Ok(partitions) if partitions.is_empty() => {
                let _ = writeln!(out, "  topic {topic} does not exist yet");
            }
            Ok(partitions) => {
                let total: i64 = partitions.iter().map(|p| p.lag).sum();
                let _ = writeln!(out, "  lag: {total} messages");
                for p in partitions {
                    let committed = p.committed.map_or("none".to_owned(), |c| c.to_string());
                    let _ = writeln!(
                        out,
                        "    partition {}: committed {committed}, end {}, lag {}",
                        p.partition, p.end, p.lag
                    );
                }
            }
            Err(error) => {
                let _ = writeln!(out, "  kafka: {error}");
            }
        }
        render_dead_letters(&mut out, &config, sink).await;
        render_members(&mut out, &config, &sink.name).await;
        out.push_str(
            &crate::rebuild::describe(&config, sink)
                .await
                .unwrap_or_default(),
        );
    }
    print!("{out}");
    Ok(())
}

/// The letters still to re-drive in the sink's dead-letter topic, by reason: the topic is the
/// record across processes and restarts, and it knows what was re-driven.
async fn render_dead_letters(out: &mut String, config: &Config, sink: &SinkConfig) {
    let dlq = sink.dlq_topic();
    let mut letters = match Letters::open(config, sink).await {
        Ok(Some(letters)) => letters,
        Ok(None) => {
            let _ = writeln!(out, "  dead letters: 0 (topic {dlq} does not exist yet)");
            return;
        }
        Err(error) => {
            let _ = writeln!(out, "  dead letters: unknown ({error})");
            return;
        }
    };
    match crate::dlq::pending_summary(&mut letters, &crate::dlq::Filter::default()).await {
        Ok(summary) if summary.total == 0 => {
            let _ = writeln!(out, "  dead letters: 0 (topic {dlq})");
        }
        Ok(summary) => {
            let _ = write!(
                out,
                "  dead letters: {} (topic {dlq}), to re-drive, by reason:\n{}",
                summary.total,
                summary.render("    ")
            );
        }
        Err(error) => {
            let _ = writeln!(out, "  dead letters: unknown ({error})");
        }
    }
}

/// Every member of each sink's group (Kafka's group membership), with the counts of the process
/// behind it when it answers: processes on other hosts and on the next free ports included.
async fn render_members(out: &mut String, config: &Config, sink: &str) {
    let members = match members(config, sink).await {
        Ok(members) => members,
        Err(error) => {
            let _ = writeln!(out, "  members: unknown ({error})");
            return;
        }
    };
    if members.is_empty() {
        let _ = writeln!(out, "  members: none (no sluice-consumer runs this sink)");
        return;
    }
    let _ = writeln!(out, "  members: {}", members.len());
    for GroupMember {
        client_id,
        host,
        addr,
        ..
    } in members
    {
        let Some(addr) = addr else {
            let _ = writeln!(out, "    {client_id} at {host}: no status address");
            continue;
        };
        let entry = match telemetry::fetch_status(addr).await {
            Ok(serde_json::Value::Array(sinks)) => {
                sinks.into_iter().find(|s| s["sink"].as_str() == Some(sink))
            }
            Ok(_) => None,
            Err(error) => {
                let _ = writeln!(out, "    {addr}: not reachable ({error})");
                continue;
            }
        };
        let Some(entry) = entry else {
            let _ = writeln!(out, "    {addr}: runs no sink {sink}");
            continue;
        };
        let outcomes = &entry["outcomes"];
        let last = entry["last_success_micros"]
            .as_i64()
            .map_or("never".to_owned(), |micros| {
                let ago = crate::stats::now_micros() - micros;
                format!("{:.1} s ago", ago as f64 / 1e6)
            });
        let _ = writeln!(
            out,
            "    {addr}: indexed {}, deleted {}, stale {}, filtered {}, dead-lettered {}, retried {}; last bulk success {last}",
            outcomes["indexed"],
            outcomes["deleted"],
            outcomes["stale"],
            outcomes["filtered"],
            outcomes["dead_lettered"],
            entry["retried"],
        );
    }
}

/// One member of a consumer group, as the group coordinator knows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GroupMember {
    pub(crate) client_id: String,
    /// The host Kafka saw it connect from (`/127.0.0.1`).
    pub(crate) host: String,
    /// Where it serves `/status`.
    pub(crate) addr: Option<std::net::SocketAddr>,
    /// Its assignment, undecoded (see [`kafka::assigned_partitions`]).
    pub(crate) assignment: Vec<u8>,
}

/// The members of `group`.
pub(crate) async fn members(config: &Config, group: &str) -> Result<Vec<GroupMember>, Error> {
    let consumer: BaseConsumer = kafka::client_config(config, &[])
        .create()
        .map_err(Error::kafka("creating a group client"))?;
    let group = group.to_owned();
    tokio::task::spawn_blocking(move || {
        let list = consumer
            .fetch_group_list(Some(&group), KAFKA_TIMEOUT)
            .map_err(Error::kafka(format!(
                "reading the members of group {group}"
            )))?;
        let mut members: Vec<_> = list
            .groups()
            .iter()
            .flat_map(|g| g.members())
            .map(|m| GroupMember {
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
                addr: kafka::member_status_addr(m.client_id(), m.client_host()),
                assignment: m.assignment().unwrap_or_default().to_vec(),
            })
            .collect();
        members.sort();
        Ok(members)
    })
    .await?
}

/// Where one partition stands for a group.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PartitionLag {
    pub(crate) partition: i32,
    pub(crate) committed: Option<i64>,
    /// The earliest offset the partition still holds.
    pub(crate) earliest: i64,
    /// One past the last offset written.
    pub(crate) end: i64,
    pub(crate) lag: i64,
}

/// Each partition of `topic` for `group`; empty when the topic does not exist.
pub(crate) async fn lag(
    config: &Config,
    group: &str,
    topic: &str,
) -> Result<Vec<PartitionLag>, Error> {
    let consumer: BaseConsumer = kafka::client_config(
        config,
        &[
            ("group.id", group.to_owned()),
            ("enable.auto.commit", "false".to_owned()),
        ],
    )
    .create()
    .map_err(Error::kafka("creating a group client"))?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_lag(&consumer, &topic)).await?
}

/// [`lag`] through a client of the group (blocking).
pub(crate) fn read_lag(consumer: &BaseConsumer, topic: &str) -> Result<Vec<PartitionLag>, Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(Error::kafka(format!("reading the metadata of {topic}")))?;
    let Some(found) = metadata.topics().first().filter(|t| t.error().is_none()) else {
        return Ok(Vec::new());
    };
    let mut list = TopicPartitionList::new();
    for partition in found.partitions() {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(list, KAFKA_TIMEOUT)
        .map_err(Error::kafka(format!(
            "reading the committed offsets of {topic}"
        )))?;
    let mut rows = Vec::new();
    for element in committed.elements() {
        let partition = element.partition();
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, KAFKA_TIMEOUT)
            .map_err(Error::kafka(format!("reading the offsets of {topic}")))?;
        let committed = match element.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        let lag = high - committed.unwrap_or(low).max(low);
        rows.push(PartitionLag {
            partition,
            committed,
            earliest: low,
            end: high,
            lag,
        });
    }
    rows.sort_unstable();
    Ok(rows)
}
