//! How long a failed request to the cluster is waited out: the classification that
//! [`sluice_common::retry`] asks about each failure.
//!
//! Transient failures (unreachable, timeouts, 429, 5xx) are retried without end: nothing is
//! committed meanwhile, and the sink's `/readyz` says it is stuck. Refused credentials stop
//! the sink, except for a grace period once they have worked: a cluster that is still starting
//! (its security index not ready) refuses them for a while.

use std::time::{Duration, Instant};

use sluice_common::config::SinkConfig;
use sluice_common::retry::{Attempt, Decision, Policy};

use super::ElasticError;
use crate::error::Action;
use crate::stats::SinkStats;

/// How long a sink keeps retrying credentials the cluster refuses after they worked at start.
pub const AUTH_GRACE: Duration = Duration::from_secs(90);

/// Setup requests (reach the cluster, create the index): from half a second to 30 s.
pub const SETUP_POLICY: Policy =
    Policy::exponential(Duration::from_millis(500), Duration::from_secs(30));

/// The sink's own delays for its writes (`retry_initial_backoff`, `retry_max_backoff`).
pub fn policy(config: &SinkConfig) -> Policy {
    Policy::exponential(
        config.elasticsearch.retry_initial_backoff.get(),
        config.elasticsearch.retry_max_backoff.get(),
    )
}

/// One retry loop's view of the failures of one request.
#[derive(Debug)]
pub struct Classify<'a> {
    sink: &'a str,
    /// What was being done, for the log: `connect to the cluster`, `read documents for a partial
    /// update`, …
    what: &'a str,
    /// `None` at setup (refused credentials stop at once), else where retries are counted.
    stats: Option<&'a SinkStats>,
    refused_since: Option<Instant>,
}

impl<'a> Classify<'a> {
    /// At setup: credentials are refused for good, and nothing is counted.
    pub fn setup(sink: &'a str, what: &'a str) -> Self {
        Self {
            sink,
            what,
            stats: None,
            refused_since: None,
        }
    }

    /// While running: refused credentials get [`AUTH_GRACE`], retries are counted.
    pub fn running(stats: &'a SinkStats, what: &'a str) -> Self {
        Self {
            sink: &stats.sink,
            what,
            stats: Some(stats),
            refused_since: None,
        }
    }

    /// Whether to try again after `error`; logs the decision.
    pub fn decide(&mut self, error: &ElasticError, attempt: Attempt) -> Decision {
        let (sink, what, retry_in) = (self.sink, self.what, attempt.retry_in);
        match (error.action(), error, self.stats) {
            (Action::Retry, _, stats) => {
                if let Some(stats) = stats {
                    stats.retried(1);
                }
                tracing::warn!(sink, %error, ?retry_in, attempt = attempt.number, "cannot {what}; retrying");
                Decision::Retry
            }
            (_, ElasticError::Auth { .. }, Some(stats)) => {
                let since = *self.refused_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= AUTH_GRACE {
                    return Decision::GiveUp;
                }
                stats.retried(1);
                tracing::warn!(sink, %error, grace = ?AUTH_GRACE, "credentials refused; retrying in case the cluster is still starting");
                Decision::Retry
            }
            _ => Decision::GiveUp,
        }
    }
}
