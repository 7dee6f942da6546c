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
