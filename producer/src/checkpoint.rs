//! Which LSN may be confirmed to Postgres.
//!
//! The slot's confirmed LSN tells Postgres it may throw away the WAL before it, so it must never
//! pass a change that Kafka has not acknowledged. Every transaction read from the stream gets a
//! sequence number; each message sent for it counts as outstanding until Kafka's delivery report
//! arrives. A transaction is *done* once its commit was read and nothing of it is outstanding,
//! and the confirmable LSN is the end LSN of the last transaction in an unbroken run of done ones:
//!
//! ```text
//!   seq:          41        42        43        44
//!   commit read:  yes       yes       yes       no (still streaming)
//!   outstanding:  0         0         3         1
//!                 └── done ─┴─ done ┘ │
//!                      confirmable = end LSN of 42 (43 still waits for Kafka)
//! ```
//!
//! Kafka acknowledges in order per partition but not across partitions, so later transactions
//! may finish first; they wait in the queue until everything before them is done.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Transaction {
    outstanding: u64,
    end_lsn: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    /// Sequence number of `queue[0]`.
    first_seq: u64,
    queue: VecDeque<Transaction>,
    confirmable: u64,
    in_flight: usize,
    /// Messages Kafka acknowledged so far.
    acknowledged: u64,
    /// The first delivery that failed for good; the producer stops on it.
    failure: Option<String>,
}

/// Shared between the stream reader and Kafka's delivery callbacks.
#[derive(Debug, Default)]
pub struct Checkpoint {
    state: Mutex<State>,
    /// Woken when messages are acknowledged (in-flight count drops) or a delivery fails.
    progress: Notify,
}

impl Checkpoint {
    /// Starts at `confirmed`, the slot's confirmed LSN.
    pub fn new(confirmed: u64) -> Self {
        Self {
            state: Mutex::new(State {
                confirmable: confirmed,
                ..State::default()
            }),
            progress: Notify::new(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A poisoned lock means a callback panicked; the state itself is still consistent
        // because every update below is a few plain assignments.
        let mut guard = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// A transaction began; returns its sequence number.
    pub fn begin(&self) -> u64 {
        self.with(|s| {
            s.queue.push_back(Transaction::default());
            s.first_seq + s.queue.len() as u64 - 1
        })
    }

    /// A message of transaction `seq` was handed to Kafka.
    pub fn sent(&self, seq: u64) {
        self.with(|s| {
            if let Some(tx) = seq
                .checked_sub(s.first_seq)
                .and_then(|i| s.queue.get_mut(i as usize))
            {
                tx.outstanding += 1;
                s.in_flight += 1;
            }
        });
    }

    /// Kafka acknowledged one message of transaction `seq`.
    pub fn delivered(&self, seq: u64) {
        self.with(|s| {
            s.acknowledged += 1;
            if let Some(tx) = seq
                .checked_sub(s.first_seq)
                .and_then(|i| s.queue.get_mut(i as usize))
            {
                tx.outstanding = tx.outstanding.saturating_sub(1);
                s.in_flight = s.in_flight.saturating_sub(1);
            }
            advance(s);
        });
        self.progress.notify_waiters();
    }

    /// Kafka gave up on a message: nothing after it may be confirmed, and the producer stops.
    pub fn failed(&self, reason: String) {
        self.with(|s| {
            s.failure.get_or_insert(reason);
        });
        self.progress.notify_waiters();
    }

    /// The commit of transaction `seq` was read; its end LSN is `end_lsn`.
    pub fn commit(&self, seq: u64, end_lsn: u64) {
        self.with(|s| {
            if let Some(tx) = seq
                .checked_sub(s.first_seq)
                .and_then(|i| s.queue.get_mut(i as usize))
            {
                tx.end_lsn = Some(end_lsn);
            }
            advance(s);
        });
        self.progress.notify_waiters();
    }

    /// The LSN that may be confirmed to Postgres now.
    pub fn confirmable(&self) -> u64 {
        self.with(|s| s.confirmable)
    }

    pub fn in_flight(&self) -> usize {
        self.with(|s| s.in_flight)
    }

    /// Messages acknowledged so far, and messages sent and not acknowledged yet.
    pub fn deliveries(&self) -> (u64, usize) {
        self.with(|s| (s.acknowledged, s.in_flight))
    }

    pub fn failure(&self) -> Option<String> {
        self.with(|s| s.failure.clone())
    }

    /// Waits until fewer than `limit` messages are in flight (or a delivery failed).
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.with(|s| s.in_flight < limit || s.failure.is_some()) {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the confirmable LSN passes `commit_lsn`, the commit record of a transaction:
    /// then every message of that transaction is acknowledged. Fails when a delivery failed.
    pub async fn wait_confirmable_past(&self, commit_lsn: u64) -> Result<(), String> {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.with(|s| (s.confirmable > commit_lsn, s.failure.clone())) {
                (_, Some(failure)) => return Err(failure),
                (true, None) => return Ok(()),
                (false, None) => notified.await,
            }
        }
    }

    /// Closes transactions that were read but whose commit never came (the stream broke in the
    /// middle): they will be read again from the confirmed LSN. They stay in the queue until their
    /// messages still in flight are acknowledged, so sequence numbers are never reused, but they
    /// never move the confirmable LSN themselves.
    pub fn abandon_open_transactions(&self) {
        self.with(|s| {
            for tx in s.queue.iter_mut().filter(|tx| tx.end_lsn.is_none()) {
                tx.end_lsn = Some(0);
            }
            advance(s);
        });
        self.progress.notify_waiters();
    }
}

fn advance(s: &mut State) {
    if s.failure.is_some() {
        return;
    }
    while let Some(front) = s.queue.front() {
        match front.end_lsn {
            Some(end) if front.outstanding == 0 => {
                s.confirmable = s.confirmable.max(end);
                s.queue.pop_front();
                s.first_seq += 1;
            }
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_only_an_unbroken_run_of_acknowledged_transactions() {
        let c = Checkpoint::new(100);
        let a = c.begin();
        c.sent(a);
        c.sent(a);
        c.commit(a, 200);
        let b = c.begin();
        c.sent(b);
        c.commit(b, 300);
        assert_eq!(c.confirmable(), 100, "nothing acknowledged yet");

        c.delivered(b);
        assert_eq!(c.confirmable(), 100, "b is done but a is not");
        c.delivered(a);
        assert_eq!(c.confirmable(), 100);
        c.delivered(a);
        assert_eq!(c.confirmable(), 300, "a and b are both done");
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_transaction_without_messages_is_done_at_its_commit() {
        let c = Checkpoint::new(0);
        let a = c.begin();
        assert_eq!(c.confirmable(), 0, "an open transaction is never done");
        c.commit(a, 50);
        assert_eq!(c.confirmable(), 50);
    }

    #[test]
    fn an_open_transaction_holds_back_later_ones() {
        let c = Checkpoint::new(0);
        let a = c.begin();
        c.sent(a);
        c.delivered(a);
        let b = c.begin();
        c.commit(b, 90);
        assert_eq!(c.confirmable(), 0, "a's commit was not read");
        c.commit(a, 80);
        assert_eq!(c.confirmable(), 90);
    }

    #[test]
    fn a_failed_delivery_stops_confirmation() {
        let c = Checkpoint::new(10);
        let a = c.begin();
        c.sent(a);
        c.commit(a, 20);
        c.failed("message too large".into());
        c.delivered(a);
        assert_eq!(c.confirmable(), 10);
        assert_eq!(c.failure().as_deref(), Some("message too large"));
    }

    #[test]
    fn the_confirmable_lsn_never_goes_back() {
        let c = Checkpoint::new(500);
        let a = c.begin();
        c.commit(a, 400); // replayed after a reconnect, already confirmed
        assert_eq!(c.confirmable(), 500);
    }

    #[test]
    fn abandoned_transactions_wait_for_their_messages_but_confirm_nothing() {
        let c = Checkpoint::new(0);
        let a = c.begin();
        c.sent(a);
        c.commit(a, 10);
        let b = c.begin();
        c.sent(b);
        c.abandon_open_transactions();
        // After a reconnect the same changes arrive again as a new transaction.
        let b2 = c.begin();
        assert_ne!(b, b2, "sequence numbers are never reused");
        c.sent(b2);
        c.commit(b2, 30);
        c.delivered(a);
        c.delivered(b2);
        assert_eq!(c.confirmable(), 10, "b's old message is still in flight");
        c.delivered(b);
        assert_eq!(c.confirmable(), 30);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiting_for_room_returns_once_deliveries_arrive() {
        let c = std::sync::Arc::new(Checkpoint::new(0));
        let a = c.begin();
        c.sent(a);
        c.sent(a);
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_below(2).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.delivered(a);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
