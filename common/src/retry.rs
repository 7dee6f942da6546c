//! The one retry loop of sluice: an operation, a classification of its errors and the shutdown
//! token.
//!
//! Every place that waits for something to come back (a cluster, a broker, a slot held by
//! another process, a topic not created yet) calls [`retry`] or [`retry_with`]; none has a loop
//! of its own. The caller says, for each error, whether to try again ([`Decision::Retry`]),
//! to try again with the delay started over because the operation made progress before it
//! failed ([`Decision::Restart`]), or to give up ([`Decision::GiveUp`]). Delays grow
//! exponentially from [`Policy::first`] to [`Policy::max`] (backon), with jitter unless the
//! policy is a fixed polling interval. Shutdown ends the wait at once.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio_util::sync::CancellationToken;

/// What to do about one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait the next delay and try again.
    Retry,
    /// Try again after the first delay: the operation got somewhere before it failed.
    Restart,
    /// Stop: the error goes back to the caller.
    GiveUp,
}

/// The delays between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The delay after the first failure.
    pub first: Duration,
    /// The longest delay (before jitter, which adds up to as much again).
    pub max: Duration,
    jitter: bool,
}

impl Policy {
    /// Exponential delays from `first` to `max`, with jitter (many processes that lost the same
    /// server do not come back at the same instant).
    pub const fn exponential(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            jitter: true,
        }
    }

    /// The same delay every time, without jitter: polling for something to appear.
    pub const fn every(interval: Duration) -> Self {
        Self {
            first: interval,
            max: interval,
            jitter: false,
        }
    }

    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max)
            .without_max_times();
        let builder = if self.jitter {
            builder.with_jitter()
        } else {
            builder
        };
        builder.build()
    }
}

/// One failed attempt, as the classification sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// How long the loop waits before the next attempt when the decision is to retry.
    pub retry_in: Duration,
}

/// How a retried operation ended without succeeding.
#[derive(Debug)]
pub enum Failure<E> {
    /// The classification gave up on this error.
    GaveUp(E),
    /// Shutdown came while waiting to try again after this error.
    Interrupted(E),
}

impl<E> Failure<E> {
    /// The error, however the loop ended.
    pub fn into_error(self) -> E {
        match self {
            Self::GaveUp(error) | Self::Interrupted(error) => error,
        }
    }

    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> Failure<F> {
        match self {
            Self::GaveUp(error) => Failure::GaveUp(f(error)),
            Self::Interrupted(error) => Failure::Interrupted(f(error)),
        }
    }
}

/// Runs `op` until it succeeds, `classify` gives up on its error, or `shutdown` is cancelled
/// during a wait.
pub async fn retry<T, E, Op, Fut, C>(
    policy: Policy,
    shutdown: &CancellationToken,
    mut op: Op,
    classify: C,
) -> Result<T, Failure<E>>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    C: FnMut(&E, Attempt) -> Decision,
{
    let attempt = |()| {
        let future = op();
        async move { future.await.map_err(|error| ((), error)) }
    };
    retry_with(policy, shutdown, (), attempt, classify)
        .await
        .map_err(|failure| failure.map(|((), error)| error))
}

/// [`retry`] for an operation that carries state from one attempt to the next (the items of a
/// bulk request that still have to go): `op` takes the state and hands it back with its error.
/// On failure the state comes back with the last error.
pub async fn retry_with<S, T, E, Op, Fut, C>(
    policy: Policy,
    shutdown: &CancellationToken,
    mut state: S,
    mut op: Op,
    mut classify: C,
) -> Result<T, Failure<(S, E)>>
where
    Op: FnMut(S) -> Fut,
    Fut: Future<Output = Result<T, (S, E)>>,
    C: FnMut(&E, Attempt) -> Decision,
{
    let mut delays = policy.delays();
    let mut number = 0;
    loop {
        number += 1;
        let (back, error) = match op(state).await {
            Ok(value) => return Ok(value),
            Err(failed) => failed,
        };
        let mut delay = delays.next().unwrap_or(policy.max);
        let attempt = Attempt {
            number,
            retry_in: delay,
        };
        match classify(&error, attempt) {
            Decision::GiveUp => return Err(Failure::GaveUp((back, error))),
            Decision::Retry => {}
            Decision::Restart => {
                delays = policy.delays();
                delay = delays.next().unwrap_or(policy.first);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(Failure::Interrupted((back, error))),
            () = tokio::time::sleep(delay) => {}
        }
        state = back;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy::every(Duration::from_millis(10));

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_operation_succeeds() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let mut seen = Vec::new();
        let result: Result<u32, Failure<&str>> = retry(
            POLICY,
            &shutdown,
            || {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err("not yet") } else { Ok(n) } }
            },
            |_, attempt| {
                seen.push(attempt.number);
                Decision::Retry
            },
        )
        .await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(seen, [1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_classification_says_so() {
        let shutdown = CancellationToken::new();
        let result: Result<(), _> = retry(
            POLICY,
            &shutdown,
            || async { Err::<(), _>("refused") },
            |error: &&str, _| {
                if *error == "refused" {
                    Decision::GiveUp
                } else {
                    Decision::Retry
                }
            },
        )
        .await;
        assert!(matches!(result, Err(Failure::GaveUp("refused"))));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let result: Result<(), _> = retry(
            POLICY,
            &shutdown,
            || async { Err::<(), _>("down") },
            |_, _| Decision::Retry,
        )
        .await;
        assert!(matches!(result, Err(Failure::Interrupted("down"))));
    }

    #[tokio::test(start_paused = true)]
    async fn state_goes_from_one_attempt_to_the_next() {
        let shutdown = CancellationToken::new();
        let result: Result<Vec<u32>, Failure<(Vec<u32>, &str)>> = retry_with(
            POLICY,
            &shutdown,
            vec![1, 2, 3],
            |mut pending: Vec<u32>| async move {
                pending.pop();
                if pending.is_empty() {
                    Ok(pending)
                } else {
                    Err((pending, "more"))
                }
            },
            |_, _| Decision::Retry,
        )
        .await;
        assert!(result.unwrap().is_empty());
    }

    #[test]
    fn delays_grow_to_the_maximum() {
        let policy = Policy::exponential(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = policy.delays().take(5).collect();
        for (delay, base) in delays.iter().zip([100, 200, 400, 400, 400]) {
            let base = Duration::from_millis(base);
            assert!(*delay >= base && *delay <= base * 2, "{delays:?}");
        }
        let fixed: Vec<Duration> = POLICY.delays().take(3).collect();
        assert_eq!(fixed, [Duration::from_millis(10); 3]);
    }
}
