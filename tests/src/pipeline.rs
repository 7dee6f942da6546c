//! The producer and the consumer running inside the test process (as tasks), and waiting until
//! the producer streams.

use std::time::Duration;

use crate::TestContext;

impl TestContext {
    /// Starts `sluice-producer run` in this process (as a task); cancel the token to stop it.
    pub fn spawn_producer(
        &self,
        config: sluice_common::config::Config,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_producer::Error>>,
    ) {
        let token = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(sluice_producer::run(config, token.clone()));
        (token, handle)
    }

    /// Starts `sluice-consumer run` in this process (as a task); cancel the token to stop it.
    pub fn spawn_consumer(
        &self,
        config: sluice_common::config::Config,
    ) -> (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_consumer::Error>>,
    ) {
        let token = tokio_util::sync::CancellationToken::new();
        let handle = tokio::spawn(sluice_consumer::run(config, None, token.clone()));
        (token, handle)
    }
}

/// A producer and a consumer running in this process.
#[derive(Debug)]
pub struct Pipeline {
    producer: (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_producer::Error>>,
    ),
    consumer: (
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<Result<(), sluice_consumer::Error>>,
    ),
}

impl Pipeline {
    /// Whether the consumer is still running (it stops only on a fatal error).
    pub fn consumer_running(&self) -> bool {
        !self.consumer.1.is_finished()
    }

    /// Stops both gracefully; fails when either ended with an error.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.consumer.0.cancel();
        self.consumer.1.await??;
        self.producer.0.cancel();
        self.producer.1.await??;
        Ok(())
    }
}

impl TestContext {
    /// Starts the producer and the consumer with `config` and waits until the producer streams.
    pub async fn start_pipeline(
        &self,
        config: sluice_common::config::Config,
    ) -> anyhow::Result<Pipeline> {
        let producer = self.spawn_producer(config.clone());
        let consumer = self.spawn_consumer(config);
        self.wait_streaming().await?;
        Ok(Pipeline { producer, consumer })
    }

    /// Waits until a producer streams from the test's slot: changes committed from now on reach
    /// the topic.
    ///
    /// An active slot alone does not prove it: the slot is active while it is being created
    /// (before its consistent point) and during a first session that fails and starts again.
    /// So a sentinel message is committed once the slot is active, and the wait ends when the
    /// slot's confirmed LSN passes it.
    pub async fn wait_streaming(&self) -> anyhow::Result<()> {
        let wait = Duration::from_secs(60);
        crate::eventually(wait, "producer streaming", || async {
            Ok(self.slot_active().await?.then_some(()))
        })
        .await?;
        let db = self.postgres().await?;
        let sentinel: i64 = db
            .query_one(
                "SELECT (pg_logical_emit_message(true, 'sluice-test', 'streaming') - '0/0'::pg_lsn)::bigint",
                &[],
            )
            .await?
            .get(0);
        crate::eventually(wait, "the producer confirmed a sentinel", || async {
            Ok((self.confirmed_lsn().await? >= sentinel as u64).then_some(()))
        })
        .await
    }
}
