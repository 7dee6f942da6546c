//! `sluice-consumer replay <sink> --from-beginning | --from-time T [--wait]`: moves the sink's
//! consumer group back, so its next run writes the topic again from there.
//!
//! A replay is safe by versions: every write carries its event's commit LSN as an external
//! version, so an event older than the document is a 409 (counted stale) and changes nothing;
//! the latest event of each document rewrites it with the same version and content.
//!
//! Kafka moves a group's offsets only while the group has no members (a running member would
//! commit its own position over the new one), so the command refuses while members run, or
//! with `--wait` waits until they have stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_common::config::Config;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--wait` looks at the group again.
const WAIT_POLL: Duration = Duration::from_secs(1);

/// Where the replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Beginning,
    /// The first message at or after this time, per partition.
    Time(SystemTime),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub sink: String,
    pub from: From,
    /// Wait for the group's members to stop instead of refusing.
    pub wait: bool,
}

/// `--from-time`: an RFC 3339 time (`2025-01-31T12:00:00Z`) or how long ago (`2h`, `30min`).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{text}` ago is before 1970")),
        Err(_) => Err(format!(
            "`{text}` is neither a time (2025-01-31T12:00:00Z) nor a duration ago (2h, 30min)"
        )),
    }
}

/// Moves the group (see the module documentation) and prints where each partition went.
pub async fn replay(
    config: Config,
    options: Options,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Some(sink) = config.sink(&options.sink).cloned() else {
        return Err(Error::Command(format!("no sink {}", options.sink)));
    };
    let group = sink.name.clone();
    let topic = config.topic_for(&sink.table);
    let mut said = false;
    loop {
        let members = crate::commands::members(&config, &group).await?;
        if members.is_empty() {
            break;
        }
        let listed: Vec<String> = members
            .iter()
            .map(|m| format!("{} at {}", m.client_id, m.host.trim_start_matches('/')))
            .collect();
        if !options.wait {
            return Err(Error::Command(format!(
                "group {group} has {} running member(s) ({}): Kafka moves a group only while \
                 none runs. Stop the sink's consumers first, or pass --wait to move it as soon \
                 as they have stopped",
                members.len(),
                listed.join(", ")
            )));
        }
        if !said {
            eprintln!(
                "replay {group}: waiting for {} member(s) to stop ({})",
                members.len(),
                listed.join(", ")
            );
            said = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(Error::Interrupted),
            () = tokio::time::sleep(WAIT_POLL) => {}
        }
    }
    let from = options.from;
    let (group_owned, topic_owned) = (group.clone(), topic.clone());
    let client: BaseConsumer = crate::kafka::client_config(
        &config,
        &[
            ("group.id", group.clone()),
            ("enable.auto.commit", "false".to_owned()),
        ],
    )
    .create()
    .map_err(Error::kafka("creating a group client"))?;
    let moved =
        tokio::task::spawn_blocking(move || move_group(&client, &group_owned, &topic_owned, from))
            .await??;
    let mut out = format!(
        "replay {group}: moved to {} of {topic}:\n",
        match from {
            From::Beginning => "the beginning".to_owned(),
            From::Time(time) => humantime::format_rfc3339_seconds(time).to_string(),
        }
    );
    for (partition, (before, after)) in &moved {
        let before = before.map_or("none".to_owned(), |o| o.to_string());
        let _ = writeln!(out, "  partition {partition}: {before} → {after}");
    }
    out.push_str(
        "start the sink's consumers to replay; every write carries its commit LSN as its \
         version, so nothing newer is overwritten\n",
    );
    print!("{out}");
    Ok(())
}

/// Commits the new position of every partition for `group` (blocking). Returns per partition
/// the committed offset before and the new one.
fn move_group(
    client: &BaseConsumer,
    group: &str,
    topic: &str,
    from: From,
) -> Result<BTreeMap<i32, (Option<i64>, i64)>, Error> {
    let metadata = client
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(Error::kafka(format!("reading the metadata of {topic}")))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(Error::Command(format!(
            "topic {topic} does not exist: nothing to replay (sluice-producer creates it)"
        )));
    }
    let mut list = TopicPartitionList::new();
    for &p in &partitions {
        list.add_partition(topic, p);
    }
    let before: BTreeMap<i32, Option<i64>> = client
        .committed_offsets(list, KAFKA_TIMEOUT)
        .map_err(Error::kafka(format!(
            "reading the committed offsets of {topic}"
        )))?
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect();
    let mut targets = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = client
            .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
            .map_err(Error::kafka(format!("reading the offsets of {topic}")))?;
        targets.insert(p, low);
        ends.insert(p, high);
    }
    if let From::Time(time) = from {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut query = TopicPartitionList::new();
        for &p in &partitions {
            query
                .add_partition_offset(topic, p, Offset::Offset(millis))
                .map_err(Error::kafka("building the time query"))?;
        }
        let found = client
            .offsets_for_times(query, KAFKA_TIMEOUT)
            .map_err(Error::kafka(format!(
                "finding the offsets of {topic} at that time"
            )))?;
        for element in found.elements() {
            let offset = match element.offset() {
                Offset::Offset(o) => o,
                // No message at or after the time: nothing to replay there.
                _ => ends.get(&element.partition()).copied().unwrap_or(0),
            };
            targets.insert(element.partition(), offset);
        }
    }
    let mut commit = TopicPartitionList::new();
    for (&p, &offset) in &targets {
        commit
            .add_partition_offset(topic, p, Offset::Offset(offset))
            .map_err(Error::kafka("building the commit"))?;
    }
    client.commit(&commit, CommitMode::Sync).map_err(|error| {
        Error::Command(format!(
            "Kafka refused to move group {group}: {error} (a member may have joined meanwhile: \
             stop the sink's consumers and run the command again)"
        ))
    })?;
    Ok(targets
        .into_iter()
        .map(|(p, offset)| (p, (before.get(&p).copied().flatten(), offset)))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let t = parse_time("2025-01-31T12:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_738_324_800
        );
        let ago = parse_time("2h").unwrap();
        let expected = SystemTime::now() - Duration::from_secs(7200);
        let diff = expected
            .duration_since(ago)
            .unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(5));
        let error = parse_time("yesterday-ish").unwrap_err();
        assert!(error.contains("2025-01-31T12:00:00Z"), "{error}");
    }
}
