//! sluice-producer: Postgres logical replication and backfills → protobuf ChangeEvents on Kafka.
//!
//! The binary is a thin wrapper; everything runs through [`run`], [`check`], [`status`] and
//! [`backfill()`], which tests call with their own shutdown token. [`run`] only wires the stages
//! together: [`replication`] (transport) → [`pgoutput`] (decode) → [`mod@backfill`] (watermarks)
//! → [`encode`] (ChangeEvent) → [`publish`] (Kafka) → [`checkpoint`] (confirm LSN).

pub mod backfill;
pub mod catalog;
pub mod checkpoint;
mod commands;
pub mod encode;
mod error;
pub mod pgoutput;
pub mod publish;
pub mod replication;
pub mod setup;
pub mod stats;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

pub use commands::{backfill, check, status};
pub use error::{Action, Error};
use sluice_common::config::Config;
use sluice_common::retry::{self, Decision, Failure, Policy};
use sluice_common::shutdown::CancellationToken;
use sluice_common::telemetry::{self, Health};

use crate::backfill::Backfills;
use crate::catalog::PgTarget;
use crate::checkpoint::Checkpoint;
use crate::publish::Publisher;
use crate::replication::{SocketSource, StreamSettings, WalSource};
use crate::stats::Stats;
use crate::stream::{MESSAGE_PREFIX, StreamState};

/// Retries of a broken stream and of an interrupted backfill: from 200 ms to 30 s.
pub(crate) const RETRY_POLICY: Policy =
    Policy::exponential(Duration::from_millis(200), Duration::from_secs(30));

/// How long a graceful shutdown waits for Kafka to acknowledge what was sent.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(30);

/// Streams changes until `shutdown` is cancelled. Transient failures (Postgres or Kafka away, the
/// slot held by another producer) are retried with backoff; the rest are returned.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let config = Arc::new(config);
    let target = PgTarget::from_config(&config.postgres)?;
    let health = Health::new();
    let stats = Arc::new(Stats::default());
    let backfills = Arc::new(Backfills::new());
    let status = {
        let (stats, backfills, health) = (stats.clone(), backfills.clone(), health.clone());
        let slot = config.postgres.slot.clone();
        Arc::new(move || {
            let mut status = stats.to_json();
            status["slot"] = slot.clone().into();
            // `status` tells the streaming producer from a standby by this.
            status["state"] = match health.unready_reason() {
                None => "streaming".to_owned(),
                Some(reason) => reason,
            }
            .into();
            status["backfills"] = backfills.to_json();
            status
        }) as telemetry::StatusFn
    };
    telemetry::serve(
        config
            .telemetry
            .listen(sluice_common::config::Process::Producer),
        health.clone(),
        Some(status),
        shutdown.child_token(),
    )
    .await
    .map_err(|e| Error::Setup(e.to_string()))?;

    let checkpoint = Arc::new(Checkpoint::new(0));
    let publisher = Arc::new(Publisher::new(&config, checkpoint.clone())?);
    let watch = tokio::spawn(publisher.clone().watch(shutdown.child_token()));
    let state = StreamState::new(
        config.clone(),
        target.database.as_str().into(),
        publisher,
        checkpoint.clone(),
        stats,
        backfills.clone(),
    );
    let heartbeat = tokio::spawn(heartbeat(
        target.clone(),
        config.producer.heartbeat_interval.get(),
        shutdown.clone(),
    ));
    let backfill_shutdown = shutdown.child_token();
    let backfill_thread = spawn_backfills(
        target.clone(),
        config.clone(),
        backfills,
        checkpoint.clone(),
        backfill_shutdown.clone(),
    )?;
    // Also when this future is dropped instead of finishing.
    let _stop_backfills = backfill_shutdown.clone().drop_guard();

    // One session at a time; a broken session is retried from the confirmed LSN, with the
    // delay started over when it had been streaming.
    let attempt = |mut state: StreamState| {
        let (target, health, shutdown) = (&target, &health, &shutdown);
        async move {
            match session(target, &mut state, health, shutdown).await {
                Ok(Session::Stopped) => Ok(()),
                Ok(Session::Interrupted(error)) => Err((state, (error, true))),
                Err(error) => Err((state, (error, false))),
            }
        }
    };
    let classify = |(error, streamed): &(Error, bool), attempt: retry::Attempt| {
        if !error.is_transient() || shutdown.is_cancelled() {
            return Decision::GiveUp;
        }
        checkpoint.abandon_open_transactions();
        let retry_in = attempt.retry_in;
        if let Error::SlotBusy(_) = error {
            health.set_unready("the slot is held by another producer");
            tracing::info!(slot = %config.postgres.slot, ?retry_in, "slot is held by another producer: waiting to take over");
        } else {
            health.set_unready(error.to_string());
            tracing::warn!(%error, ?retry_in, "cannot stream: retrying from the confirmed LSN");
        }
        if *streamed {
            Decision::Restart
        } else {
            Decision::Retry
        }
    };
    let result = match retry::retry_with(RETRY_POLICY, &shutdown, state, attempt, classify).await {
        Ok(()) | Err(Failure::Interrupted(_)) => Ok(()),
        Err(Failure::GaveUp((_, (error, _)))) if error.is_transient() => Ok(()),
        Err(Failure::GaveUp((_, (error, _)))) => Err(error),
    };
    heartbeat.abort();
    watch.abort();
    backfill_shutdown.cancel();
    // The manager returns at once when cancelled; its runtime drops the workers.
    let _ = tokio::task::spawn_blocking(move || backfill_thread.join()).await;
    result
}

/// Runs the backfill manager and its workers on a thread and runtime of their own: reading and
/// typing chunk rows then runs beside the stream, which encodes and publishes them, instead of
/// taking turns with it on the stream's thread.
fn spawn_backfills(
    target: PgTarget,
    config: Arc<Config>,
    backfills: Arc<Backfills>,
    checkpoint: Arc<Checkpoint>,
    shutdown: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Setup(format!("cannot start the backfill runtime: {e}")))?;
    std::thread::Builder::new()
        .name("sluice-backfill".to_owned())
        .spawn(move || {
            runtime.block_on(backfill::manage(
                target, config, backfills, checkpoint, shutdown,
            ));
        })
        .map_err(|e| Error::Setup(format!("cannot start the backfill thread: {e}")))
}

enum Session {
    /// Shutdown was requested and everything acknowledged was confirmed.
    Stopped,
    /// The stream broke after it had started.
    Interrupted(Error),
}

/// One replication connection, from setup to its end.
async fn session(
    target: &PgTarget,
    state: &mut StreamState,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Session, Error> {
    let config = state.config.clone();
    let sql = target.connect().await?;
    let (tables, confirmed) = setup::prepare(&sql, &config).await?;
    state.tables = tables;
    state.partitions = publish::ensure_topics(&config).await?;
    let settings = StreamSettings {
        slot: config.postgres.slot.clone(),
        publication: config.postgres.publication.clone(),
        start_lsn: confirmed.max(state.checkpoint.confirmable()),
        status_interval: config.producer.status_interval.get(),
    };
    let mut source = SocketSource::start(target, &settings).await?;
    tracing::info!(slot = %settings.slot, from = %stats::format_lsn(settings.start_lsn), "streaming changes");
    health.set_ready();

    state.backfills.set_streaming(true);
    let result = state.run(&mut source, &sql, shutdown).await;
    state.backfills.set_streaming(false);
    let mut stopped_at = None;
    let outcome = match result {
        Ok(()) => {
            // Graceful stop: wait for Kafka, then confirm everything it acknowledged.
            if let Err(error) = state.publisher.flush(SHUTDOWN_FLUSH).await {
                tracing::warn!(%error, "stopping with unacknowledged messages: they will be sent again on restart");
            }
            let lsn = state.checkpoint.confirmable();
            source.confirm(lsn);
            stopped_at = Some(lsn);
            Session::Stopped
        }
        Err(error) => Session::Interrupted(error),
    };
    source.shutdown().await;
    if let Some(lsn) = stopped_at {
        // The transport ends the stream (CopyDone) without a last standby status update, so the
        // slot would keep the position of the last periodic one: confirm the final position
        // through SQL once the walsender has let go of the slot.
        advance_slot(&sql, &config.postgres.slot, lsn).await;
        tracing::info!(confirmed = %stats::format_lsn(lsn), "stopped");
    }
    match outcome {
        Session::Interrupted(error) if !error.is_transient() => Err(error),
        other => Ok(other),
    }
}

/// Moves the slot's confirmed LSN to `lsn` (never back) after the replication connection closed.
/// Best effort: if it fails, a restart resends what came after the slot's position.
async fn advance_slot(sql: &tokio_postgres::Client, slot: &str, lsn: u64) {
    if lsn == 0 {
        return;
    }
    let target = stats::format_lsn(lsn);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let advanced = sql
            .query_opt(
                "SELECT pg_replication_slot_advance(slot_name, $2::text::pg_lsn) \
                 FROM pg_replication_slots \
                 WHERE slot_name = $1 AND confirmed_flush_lsn < $2::text::pg_lsn",
                &[&slot, &target],
            )
            .await;
        match advanced {
            Ok(_) => return,
            // The walsender releases the slot a moment after the stream ended.
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => {
                tracing::warn!(%error, slot, lsn = %target, "could not confirm the final position: what came after the slot's position will be sent again on restart");
                return;
            }
        }
    }
}

/// Writes a logical message every `interval`, so an idle database still produces a commit that
/// moves the slot's confirmed LSN (otherwise WAL of other databases piles up behind it).
async fn heartbeat(target: PgTarget, interval: Duration, shutdown: CancellationToken) {
    let mut client = None;
    let mut failing = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if client.is_none() {
            client = target.connect().await.ok();
        }
        let Some(sql) = &client else { continue };
        let sent = sql
            .execute(
                "SELECT pg_logical_emit_message(true, $1, '{\"heartbeat\":true}')",
                &[&MESSAGE_PREFIX],
            )
            .await;
        match sent {
            Ok(_) => failing = false,
            Err(error) => {
                // Said once per failing streak: an idle database's slot does not advance meanwhile.
                if !failing {
                    tracing::warn!(%error, "heartbeat failed: an idle database's slot will not advance until it works (check that the role may call pg_logical_emit_message)");
                }
                failing = true;
                client = None;
            }
        }
    }
}
