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
