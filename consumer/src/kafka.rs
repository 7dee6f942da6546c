//! Client settings shared by every Kafka client the consumer opens (the group consumer, the
//! dead-letter producer, the metadata clients of `check` and `status`).

use rdkafka::config::ClientConfig;
use sluice_common::config::Config;

/// `settings` first, then the user's `kafka` section (security, `options`), which wins.
pub fn client_config(config: &Config, settings: &[(&str, String)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("client.id", "sluice-consumer");
    for (key, value) in settings {
        client.set(*key, value);
    }
    for (key, value) in config.kafka.client_properties() {
        client.set(key, value);
    }
    client
}

/// The `client.id` of a group member: `sluice-consumer:<port of its endpoints>`, so `status`
/// can reach every member at the host Kafka saw it connect from.
pub fn member_client_id(config: &Config) -> String {
    match config.telemetry.consumer_listen {
        Some(addr) => format!("{MEMBER_PREFIX}{}", addr.port()),
        None => "sluice-consumer".to_owned(),
    }
}

const MEMBER_PREFIX: &str = "sluice-consumer:";

/// Where a group member serves `/status`: the port from its client id, at the host Kafka saw it
/// connect from (`/127.0.0.1`).
pub fn member_status_addr(client_id: &str, client_host: &str) -> Option<std::net::SocketAddr> {
    let port: u16 = client_id.strip_prefix(MEMBER_PREFIX)?.parse().ok()?;
    let host = client_host.trim_start_matches('/');
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port))
}

/// The partitions of `topic` in a group member's assignment, as the group coordinator holds
/// it (the consumer protocol's `Assignment`: version, then topics with their partitions).
/// Bytes that do not parse give none.
pub fn assigned_partitions(assignment: &[u8], topic: &str) -> Vec<i32> {
    fn read<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
        let (head, rest) = bytes.split_first_chunk::<N>()?;
        *bytes = rest;
        Some(*head)
    }
    fn parse(mut bytes: &[u8], topic: &str) -> Option<Vec<i32>> {
        let bytes = &mut bytes;
        let _version = i16::from_be_bytes(read(bytes)?);
        let topics = i32::from_be_bytes(read(bytes)?);
        let mut found = Vec::new();
        for _ in 0..topics.max(0) {
            let len = usize::try_from(i16::from_be_bytes(read(bytes)?)).ok()?;
            let (name, rest) = bytes.split_at_checked(len)?;
            *bytes = rest;
            let partitions = i32::from_be_bytes(read(bytes)?);
            for _ in 0..partitions.max(0) {
                let partition = i32::from_be_bytes(read(bytes)?);
                if name == topic.as_bytes() {
                    found.push(partition);
                }
            }
        }
        found.sort_unstable();
        Some(found)
    }
    parse(assignment, topic).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_names_its_partitions_per_topic() {
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        for (topic, partitions) in [("t.items", &[2, 0][..]), ("other", &[1][..])] {
            bytes.extend(i16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
            bytes.extend(topic.as_bytes());
            bytes.extend(i32::try_from(partitions.len()).unwrap_or(0).to_be_bytes());
            for p in partitions {
                bytes.extend(i32::to_be_bytes(*p));
            }
        }
        bytes.extend((-1i32).to_be_bytes()); // no user data
        assert_eq!(assigned_partitions(&bytes, "t.items"), [0, 2]);
        assert_eq!(assigned_partitions(&bytes, "other"), [1]);
        assert!(assigned_partitions(&bytes, "none").is_empty());
        for cut in 0..bytes.len() - 4 {
            assert!(assigned_partitions(&bytes[..cut], "t.items").len() < 2);
        }
    }
}
