//! sluice's own transport: one thread reads the replication connection with blocking I/O and
//! hands the pipeline batches of events, one batch per read.
//!
//! ```text
//!   walsender ──TLS──▶ reader thread ──Vec<WalEvent> per read──▶ channel ──▶ SocketSource::recv
//!             ◀── standby status (confirmed LSN, every status_interval) ── AtomicU64 ◀── confirm
//! ```
//!
//! Why a thread, and why it naps. The walsender sends every pgoutput message on its own
//! (one `send`, one TLS record), whoever reads. When the reader is faster than the walsender it
//! empties the socket and sleeps, and the next `send` has to wake it: a wake-up, and often a
//! preemption of the walsender by the woken reader, for every two or three transactions. That
//! costs the walsender about as much again as decoding (see docs/benchmarks.md, "Producer
//! drain"). So after a read that emptied the kernel's receive queue the reader thread sleeps
//! [`NAP`] before it reads again: the walsender's messages meanwhile go into the socket buffer
//! with nobody to wake, and the next read takes tens of kilobytes at once. A plain sleep
//! does this where an async read cannot: the runtime's epoll would be woken by every arrival.
//! When the stream is idle the thread blocks in `read` (the first byte wakes it, so a lone
//! change is not delayed); the nap only ever comes after data was handed on.
//!
//! Standby status updates go out from this thread: every `status_interval` (the read timeout
//! wakes an idle thread for it), at once when a keepalive asks for a reply, and while the
//! pipeline does not take events (it waits for Kafka), so the server never times us out. They
//! carry the LSN given to [`WalSource::confirm`], which the caller only raises to what Kafka
//! acknowledged.

use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};

use super::connection::{self, Connection};
use super::wire::{self, CopyData, ServerError};
use super::{StreamSettings, WalEvent, WalSource};
use crate::catalog::PgTarget;
use crate::error::Error;

/// How long the reader sleeps after a read that emptied the receive queue. About 40 KB of a
/// busy stream arrive meanwhile; the socket buffer holds far more, so the walsender never waits.
pub const NAP: Duration = Duration::from_millis(1);
/// Batches in flight between the thread and the pipeline (each is one read, at most
/// [`READ_SIZE`] bytes of messages).
const BATCHES: usize = 16;
/// Plaintext taken per read.
const READ_SIZE: usize = 256 * 1024;
/// How often a reader whose batches are not taken looks again.
const FULL_POLL: Duration = Duration::from_millis(1);
/// How long shutdown waits for the thread to end the stream.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

type Batch = Result<Vec<WalEvent>, Error>;

/// What the thread and the source share.
#[derive(Debug)]
struct Shared {
    /// The LSN to report as flushed.
    confirmed: AtomicU64,
    stop: AtomicBool,
}

/// The replication stream read by a thread of ours (see the module docs).
#[derive(Debug)]
pub struct SocketSource {
    shared: Arc<Shared>,
    batches: mpsc::Receiver<Batch>,
    current: std::vec::IntoIter<WalEvent>,
    /// A handle on the socket, to end a read the thread is blocked in.
    socket: TcpStream,
    done: Option<oneshot::Receiver<()>>,
}

impl SocketSource {
    /// Connects and starts streaming on a new thread. A slot held by another process is
    /// [`Error::SlotBusy`].
    pub async fn start(target: &PgTarget, settings: &StreamSettings) -> Result<Self, Error> {
        let (started_tx, started_rx) = oneshot::channel();
        let (batch_tx, batches) = mpsc::channel(BATCHES);
        let (done_tx, done) = oneshot::channel();
        let shared = Arc::new(Shared {
            confirmed: AtomicU64::new(settings.start_lsn),
            stop: AtomicBool::new(false),
        });
        let thread_shared = shared.clone();
        let target = target.clone();
        let settings = settings.clone();
        std::thread::Builder::new()
            .name("sluice-wal-reader".to_owned())
            .spawn(move || {
                match connection::start(&target, &settings) {
                    Ok(started) => {
                        let socket = started.reader_stop.try_clone();
                        let Ok(socket) = socket else {
                            let _ = started_tx.send(Err(Error::Replication(
                                "cannot share the replication socket".to_owned(),
                            )));
                            return;
                        };
                        if started_tx.send(Ok(socket)).is_err() {
                            return;
                        }
                        let mut reader = Reader {
                            target,
                            connection: started.connection,
                            input: started.pending,
                            scratch: vec![0; READ_SIZE].into_boxed_slice(),
                            shared: thread_shared,
                            batches: batch_tx,
                            status_interval: settings.status_interval,
                            last_status: None,
                            out: BytesMut::new(),
                        };
                        if let Err(error) = reader.run() {
                            let _ = reader.batches.blocking_send(Err(error));
                        }
                    }
                    Err(error) => {
                        let _ = started_tx.send(Err(error));
                    }
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Replication(format!("cannot start the reader thread: {e}")))?;
        let socket = started_rx.await.map_err(|_| {
            Error::Replication("the reader thread ended before streaming".to_owned())
        })??;
        Ok(Self {
            shared,
            batches,
            current: Vec::new().into_iter(),
            socket,
            done: Some(done),
        })
    }

    fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        connection::interrupt(&self.socket);
    }
}

impl WalSource for SocketSource {
    async fn recv(&mut self) -> Result<Option<WalEvent>, Error> {
        loop {
            if let Some(event) = self.current.next() {
                return Ok(Some(event));
            }
            // Cancellation-safe: a batch is either still in the channel or in `current`.
            match self.batches.recv().await {
                Some(Ok(batch)) => self.current = batch.into_iter(),
                Some(Err(error)) => return Err(error),
                None => return Ok(None),
            }
        }
    }

    fn confirm(&self, lsn: u64) {
        self.shared.confirmed.fetch_max(lsn, Ordering::AcqRel);
    }

    async fn shutdown(mut self) {
        // CopyDone ends the stream; it carries no last status update (`run` confirms the final
        // position through SQL afterwards).
        self.stop();
        if let Some(done) = self.done.take()
            && tokio::time::timeout(SHUTDOWN_WAIT, done).await.is_err()
        {
            tracing::debug!("the replication reader did not end in time");
        }
    }
}

impl Drop for SocketSource {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The reader thread's state.
struct Reader {
    target: PgTarget,
    connection: Connection,
    /// Plaintext read but not yet framed into messages.
    input: BytesMut,
    /// Where a read puts the plaintext (allocated and zeroed once).
    scratch: Box<[u8]>,
    shared: Arc<Shared>,
    batches: mpsc::Sender<Batch>,
    status_interval: Duration,
    last_status: Option<Instant>,
    out: BytesMut,
}

impl Reader {
    fn run(&mut self) -> Result<(), Error> {
        self.connection
            .set_read_timeout(self.status_interval)
            .map_err(|e| self.io_error(&e))?;
        loop {
            if self.stopping() {
                return self.end();
            }
            if self.status_due() {
                self.send_status()?;
            }
            let mut batch = Vec::new();
            self.frame(&mut batch)?;
            // One blocking read if nothing is pending, then whatever is already buffered.
            let mut wait = batch.is_empty();
            while wait || self.connection.buffered() {
                wait = false;
                match self.read() {
                    Ok(0) if self.stopping() => return self.end(),
                    Ok(0) => {
                        return Err(Error::Replication(
                            "the server closed the replication connection".to_owned(),
                        ));
                    }
                    Ok(_) => self.frame(&mut batch)?,
                    // The read timeout: time for a status update.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        break;
                    }
                    Err(e) if self.stopping() => {
                        tracing::debug!(error = %e, "read ended by shutdown");
                        return self.end();
                    }
                    Err(e) => return Err(self.io_error(&e)),
                }
            }
            if !batch.is_empty() && !self.deliver(batch)? {
                return self.end();
            }
            if self.connection.drained() && !self.stopping() {
                std::thread::sleep(NAP);
            }
        }
    }

    /// Reads what the connection has (blocking until something or the read timeout).
    fn read(&mut self) -> io::Result<usize> {
        let n = self.connection.read(&mut self.scratch)?;
        self.input.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    /// Turns every complete message in `input` into events (and answers keepalives).
    fn frame(&mut self, batch: &mut Vec<WalEvent>) -> Result<(), Error> {
        while let Some((tag, body)) =
            wire::next_message(&mut self.input).map_err(Error::Replication)?
        {
            match tag {
                b'd' => match wire::copy_data(body).map_err(Error::Replication)? {
                    CopyData::XLogData { wal_start, data } => {
                        batch.push(wire::event(wal_start, data).map_err(Error::Replication)?);
                    }
                    CopyData::KeepAlive { wal_end, reply } => {
                        if reply {
                            self.send_status()?;
                        }
                        batch.push(WalEvent::KeepAlive { wal_end });
                    }
                },
                b'E' => {
                    return Err(connection::server_error(
                        &self.target,
                        &ServerError::parse(&body),
                    ));
                }
                b'c' => {
                    return Err(Error::Replication(
                        "the server ended the replication stream".to_owned(),
                    ));
                }
                // Notices, parameter statuses.
                _ => {}
            }
        }
        Ok(())
    }

    /// Hands `batch` to the pipeline, sending status updates while it does not take it.
    /// `false`: the source is gone or stopping.
    fn deliver(&mut self, batch: Vec<WalEvent>) -> Result<bool, Error> {
        let mut item = Ok(batch);
        loop {
            match self.batches.try_send(item) {
                Ok(()) => return Ok(true),
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(false),
                Err(mpsc::error::TrySendError::Full(back)) => item = back,
            }
            if self.stopping() {
                return Ok(false);
            }
            if self.status_due() {
                self.send_status()?;
            }
            std::thread::sleep(FULL_POLL);
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    fn status_due(&self) -> bool {
        self.last_status
            .is_none_or(|at| at.elapsed() >= self.status_interval)
    }

    fn send_status(&mut self) -> Result<(), Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.out.clear();
        wire::status_update(
            self.shared.confirmed.load(Ordering::Acquire),
            now,
            &mut self.out,
        );
        self.connection
            .send(&self.out)
            .map_err(|e| self.io_error(&e))?;
        self.last_status = Some(Instant::now());
        Ok(())
    }

    /// Ends the stream from our side (best effort: the connection closes right after).
    fn end(&mut self) -> Result<(), Error> {
        self.out.clear();
        wire::copy_done(&mut self.out);
        if let Err(error) = self.connection.send(&self.out) {
            tracing::debug!(%error, "could not end the replication stream cleanly");
        }
        Ok(())
    }

    fn io_error(&self, error: &io::Error) -> Error {
        Error::Replication(format!(
            "{}: replication connection: {error}",
            self.target.redacted()
        ))
    }
}
