//! Every metric name of both processes, in one place, with its description.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

// Producer.
pub const PRODUCER_CHANGES: &str = "sluice_producer_changes_total";
pub const PRODUCER_BYTES: &str = "sluice_producer_bytes_total";
pub const PRODUCER_REPLICATION_LAG_BYTES: &str = "sluice_producer_replication_lag_bytes";
pub const PRODUCER_CONFIRMED_LSN: &str = "sluice_producer_confirmed_lsn";
pub const PRODUCER_KAFKA_ERRORS: &str = "sluice_producer_kafka_delivery_errors_total";
pub const PRODUCER_IN_FLIGHT: &str = "sluice_producer_in_flight_messages";
pub const PRODUCER_KAFKA_UNACKNOWLEDGED_SECONDS: &str =
    "sluice_producer_kafka_unacknowledged_seconds";
pub const PRODUCER_BACKFILL_ROWS: &str = "sluice_producer_backfill_rows_total";
pub const PRODUCER_BACKFILL_ROWS_READ: &str = "sluice_producer_backfill_rows_read_total";
pub const PRODUCER_BACKFILL_CHUNKS: &str = "sluice_producer_backfill_chunks_total";
pub const PRODUCER_BACKFILL_REMAINING_ROWS: &str = "sluice_producer_backfill_remaining_rows";
pub const PRODUCER_BACKFILLS_RUNNING: &str = "sluice_producer_backfills_running";
pub const PRODUCER_BACKFILL_ROWS_COMPLETED: &str = "sluice_producer_backfill_rows_completed_total";
pub const PRODUCER_BACKFILLS_FAILED: &str = "sluice_producer_backfills_failed_total";

// Both.
pub const READY: &str = "sluice_ready";

// Consumer.
pub const CONSUMER_EVENTS: &str = "sluice_consumer_events_total";
pub const CONSUMER_RETRIES: &str = "sluice_consumer_retries_total";
pub const CONSUMER_LAG: &str = "sluice_consumer_lag_messages";
pub const CONSUMER_BULK_SECONDS: &str = "sluice_consumer_bulk_duration_seconds";
pub const CONSUMER_END_TO_END_SECONDS: &str = "sluice_consumer_commit_to_indexed_seconds";
pub const CONSUMER_LAST_BULK_SUCCESS: &str = "sluice_consumer_last_bulk_success_timestamp_seconds";

/// Registers descriptions (shown as `# HELP` lines).
pub fn describe() {
    describe_counter!(
        PRODUCER_CHANGES,
        "Changes published to Kafka, by table and op"
    );
    describe_counter!(
        PRODUCER_BYTES,
        Unit::Bytes,
        "Bytes of ChangeEvents published to Kafka"
    );
    describe_gauge!(
        PRODUCER_REPLICATION_LAG_BYTES,
        Unit::Bytes,
        "WAL bytes between the server's position and the confirmed LSN"
    );
    describe_gauge!(PRODUCER_CONFIRMED_LSN, "LSN last confirmed to Postgres");
    describe_counter!(
        PRODUCER_KAFKA_ERRORS,
        "Kafka delivery errors (each retried)"
    );
    describe_gauge!(
        PRODUCER_IN_FLIGHT,
        "Messages sent to Kafka and not acknowledged yet"
    );
    describe_gauge!(
        PRODUCER_KAFKA_UNACKNOWLEDGED_SECONDS,
        Unit::Seconds,
        "How long messages have waited without Kafka acknowledging any (0 while acknowledgements come), every 5 s"
    );
    describe_counter!(
        PRODUCER_BACKFILL_ROWS,
        "Rows emitted by backfills as READ events, by table"
    );
    describe_counter!(
        PRODUCER_BACKFILL_ROWS_READ,
        "Rows read by backfills (emitted or superseded by a live change), by table"
    );
    describe_counter!(
        PRODUCER_BACKFILL_ROWS_COMPLETED,
        "Backfilled rows whose only changes inside their window were updates without their TOASTed columns: emitted with those changes applied, by table"
    );
    describe_counter!(
        PRODUCER_BACKFILL_CHUNKS,
        "Backfill chunks by table and outcome (published, discarded after a reconnect)"
    );
    describe_gauge!(
        PRODUCER_BACKFILL_REMAINING_ROWS,
        "Estimated rows a running backfill still has to read, by table"
    );
    describe_gauge!(
        PRODUCER_BACKFILLS_RUNNING,
        "Backfills running in this producer"
    );
    describe_counter!(
        PRODUCER_BACKFILLS_FAILED,
        "Backfills that failed for good (their reason is in sluice.backfills), by table"
    );
    describe_gauge!(
        READY,
        "1 while /readyz answers 200 (streaming, or indexing), else 0"
    );
    describe_gauge!(
        CONSUMER_LAST_BULK_SUCCESS,
        Unit::Seconds,
        "Unix time of the sink's last successful bulk request (its start until the first), by sink"
    );
    describe_counter!(
        CONSUMER_EVENTS,
        "Events by sink and outcome (indexed, deleted, stale, filtered, dead_lettered)"
    );
    describe_counter!(CONSUMER_RETRIES, "Bulk items or requests retried, by sink");
    describe_gauge!(
        CONSUMER_LAG,
        "Messages behind the partition's end, by sink and partition"
    );
    describe_histogram!(
        CONSUMER_BULK_SECONDS,
        Unit::Seconds,
        "Duration of bulk requests, by sink"
    );
    describe_histogram!(
        CONSUMER_END_TO_END_SECONDS,
        Unit::Seconds,
        "Postgres commit time to bulk acknowledged, by sink"
    );
}
