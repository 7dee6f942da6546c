//! `sluice-dump BROKERS TOPIC`: prints every message of a sluice topic as one JSON line
//! (partition, offset, key, and the decoded ChangeEvent, or `null` for a tombstone), then exits.
//! A development aid for looking at what the producer wrote.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::{Value, json};
use sluice_proto::Message as _;
use sluice_proto::v1::value::Kind;
use sluice_proto::v1::{self, ChangeEvent};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(brokers), Some(topic)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: sluice-dump BROKERS TOPIC");
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "sluice-dump")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .context("no such topic")?
        .partitions()
        .len();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0;
    for partition in 0..i32::try_from(partitions)? {
        let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10))?;
        remaining += high - low;
        assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    while remaining > 0 {
        let Some(message) = consumer.poll(Duration::from_secs(10)) else {
            anyhow::bail!("no message within 10 s with {remaining} still expected");
        };
        let message = message?;
        remaining -= 1;
        let event = match message.payload() {
            Some(bytes) => event_json(&ChangeEvent::decode(bytes)?),
            None => Value::Null,
        };
        let line = json!({
            "partition": message.partition(),
            "offset": message.offset(),
            "key": String::from_utf8_lossy(message.key().unwrap_or_default()),
            "event": event,
        });
        println!("{line}");
    }
    Ok(())
}

fn event_json(event: &ChangeEvent) -> Value {
    let columns = |columns: &[v1::Column]| -> Value {
        columns
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.value.as_ref().map_or(Value::Null, value_json),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let position = event.position.unwrap_or_default();
    json!({
        "op": event.op().as_str_name(),
        "table": event.source.as_ref().map(|s| format!("{}.{}", s.schema, s.table)),
        "commit_lsn": position.commit_lsn,
        "record": columns(&event.record),
        "changes": columns(&event.changes),
        "unchanged_toast_columns": event.unchanged_toast_columns,
    })
}

fn value_json(value: &v1::Value) -> Value {
    match &value.kind {
        None | Some(Kind::Null(_)) => Value::Null,
        Some(Kind::Bool(b)) => json!(b),
        Some(Kind::Int(i)) => json!(i),
        Some(Kind::Double(d)) => {
            serde_json::Number::from_f64(*d).map_or_else(|| json!(d.to_string()), Value::Number)
        }
        Some(Kind::Bytes(b)) => json!(format!(
            "\\x{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
        Some(Kind::Json(text)) => serde_json::from_str(text).unwrap_or_else(|_| json!(text)),
        Some(Kind::Array(array)) => array.elements.iter().map(value_json).collect(),
        Some(
            Kind::Numeric(s)
            | Kind::Text(s)
            | Kind::Timestamp(s)
            | Kind::Timestamptz(s)
            | Kind::Date(s)
            | Kind::Time(s)
            | Kind::Timetz(s)
            | Kind::Interval(s)
            | Kind::Uuid(s)
            | Kind::Unknown(s),
        ) => json!(s),
    }
}
