//! Elasticsearch 8/9 and OpenSearch 2.x: the handful of calls the sink makes, what their answers
//! mean for it, and the delivery of a batch with its retries.
//!
//! ```text
//!  deliver ──[BulkOp]──▶ request (NDJSON, gzip if set) ──client: POST /_bulk──▶ cluster
//!  deliver ◀─[ItemResult]── response (typed, per item) ◀─────────────────────────┘
//! ```
//!
//! `client` is the transport (TLS, authentication, one request read to its end), `api` the calls,
//! `request` and `response` what goes over the wire, `retry` how long a failure is waited out,
//! `deliver` a batch from items to settled outcomes (bulk, split on whole-request refusals,
//! partial-update completion, truncate). Delivery only needs a [`BulkWriter`]: the client, or in
//! unit tests an in-memory index that refuses what a cluster refuses.
//!
//! # Versions
//!
//! Every write carries `version = commit_lsn` with `version_type=external_gte`: a write with an
//! older version fails with 409 and is reported as [`ItemResult::Stale`] (the document is already
//! newer), a write with the same version wins (changes of one row in one transaction share a
//! commit LSN and arrive in order). Elasticsearch stores external versions as a signed 64-bit
//! number, so they must be at most [`MAX_VERSION`] (`i64::MAX`); an LSN is a byte position in the
//! WAL and stays far below that (2^63 bytes is 8 EiB of WAL). An operation above it is rejected
//! on its own, without being sent.
//!
//! # Errors
//!
//! The client never retries: delivery does, because it knows which items of a batch still need
//! to go. Whole-request failures come back as [`ElasticError`], sorted by what to do
//! ([`ElasticError::action`]); per-item outcomes as [`ItemResult`], in the order of the
//! operations.
//!
//! A request body above the cluster's `http.max_content_length` (100 MB by default), or above a
//! proxy's limit, fails as a whole with 413 ([`ElasticError::Fatal`]); batches stay under
//! `batch_max_bytes` (5 MB by default), far below it.

mod api;
mod client;
pub(crate) mod deliver;
mod indices;
#[cfg(test)]
pub(crate) mod memory;
mod request;
mod response;
pub(crate) mod retry;

use serde_json::{Map, Value};
use std::future::Future;

pub use api::Scan;
pub use client::Client;
pub use request::{BulkOp, TEMPLATE_PRIORITY, estimated_bytes};

use crate::error::Action;

/// The largest external version Elasticsearch and OpenSearch accept (`i64::MAX`).
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// Documents per page of [`Client::scan_versions`].
pub const SCAN_PAGE_SIZE: usize = 1000;

/// What `GET /` says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// `elasticsearch` or `opensearch`.
    pub distribution: String,
    /// `9.2.4`, `2.19.6`, …
    pub version: String,
}

/// The outcome of one bulk operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Written (2xx).
    Done,
    /// 409 `version_conflict_engine_exception`: the document already has a newer version. Final.
    Stale,
    /// 404 on a delete: nothing to delete. Final.
    NotFound,
    /// 429, 5xx, an index block, or a lost dynamic mapping race: try the item again later.
    Retry { status: u16, reason: String },
    /// Any other 4xx (mapping conflict: `document_parsing_exception` on Elasticsearch 8+,
    /// `mapper_parsing_exception` on OpenSearch; `illegal_argument_exception`, …): the item will
    /// never succeed as it is, so it goes to the dead-letter topic. `reason` includes the
    /// `caused_by` reasons, where mapping errors say what was wrong with the value. Operations
    /// that cannot be sent at all are rejected here too, without a request: `version_out_of_range`
    /// (above [`MAX_VERSION`]) and `invalid_document` (not a JSON object), both with status 400.
    Rejected {
        status: u16,
        error_type: String,
        reason: String,
    },
}

/// Why a whole request failed, sorted by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    /// 401 or 403: the credentials are wrong or lack privileges. The sink must stop.
    #[error("{reason} (HTTP {status}): {}", auth_hint(*status))]
    Auth { status: u16, reason: String },
    /// Connection refused or reset, timeouts, 429, 5xx, unreadable answers: try again later.
    #[error("{reason}")]
    Retryable { reason: String },
    /// Any other 4xx for the whole request (413 body too large, 400 malformed request, …), and
    /// configuration errors (bad CA file, bad URL), which have status 0: retrying cannot help.
    #[error("{reason}{}", status_suffix(*status))]
    Fatal { status: u16, reason: String },
}

fn auth_hint(status: u16) -> &'static str {
    if status == 403 {
        "the credentials are valid but lack a privilege: grant the user or API key `monitor` on \
         the cluster (and `manage_index_templates` for templated index names), and `write`, \
         `read` and `manage` (or `all`) on the sink's indices and aliases"
    } else {
        "check `elasticsearch.auth` (its `type`, and the API key, token or password), and that the \
         API key has not expired or been invalidated"
    }
}

fn status_suffix(status: u16) -> String {
    if status == 0 {
        String::new()
    } else {
        format!(" (HTTP {status})")
    }
}

impl ElasticError {
    /// Whether trying the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.action() == Action::Retry
    }

    /// What to do about it: retry a transient failure; stop on refused credentials and on
    /// configuration errors (status 0); a request the cluster refused as a whole is about what
    /// it carries, so the items go to the dead-letter topic (one by one, after halving).
    pub fn action(&self) -> Action {
        match self {
            Self::Retryable { .. } => Action::Retry,
            Self::Auth { .. } | Self::Fatal { status: 0, .. } => Action::Stop,
            Self::Fatal { .. } => Action::DeadLetter,
        }
    }

    /// A configuration error, found before any request.
    fn config(reason: String) -> Self {
        Self::Fatal { status: 0, reason }
    }

    /// Something that cannot happen with well-formed values (a body that does not serialize).
    fn internal(reason: String) -> Self {
        Self::Fatal { status: 0, reason }
    }
}

/// A document as `_mget` reads it: its `_version` and `_source`, `None` when it is missing.
pub type Stored = Option<(u64, Map<String, Value>)>;

/// What delivering a batch needs from a cluster.
///
/// Contract (the in-memory index of the unit tests keeps it as the client does): every write is
/// versioned with `external_gte`, so writes are idempotent and may be sent again; `bulk`
/// answers one [`ItemResult`] per operation, in order, or fails as a whole; `mget` answers one
/// [`Stored`] per id, in order, a missing index reading as missing documents; `scan_versions`
/// lists every document of an index, alias or pattern after a `refresh`.
pub trait BulkWriter: Send + Sync + 'static {
    fn bulk(
        &self,
        ops: &[&BulkOp],
    ) -> impl Future<Output = Result<Vec<ItemResult>, ElasticError>> + Send;

    fn mget(
        &self,
        index: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Stored>, ElasticError>> + Send;

    /// `(concrete index, id, version)` of every document of `index`.
    fn scan_versions(
        &self,
        index: &str,
    ) -> impl Future<Output = Result<Vec<(String, String, u64)>, ElasticError>> + Send;

    /// Makes every write so far visible to `scan_versions`.
    fn refresh(&self, index: &str) -> impl Future<Output = Result<(), ElasticError>> + Send;
}

impl BulkWriter for Client {
    fn bulk(
        &self,
        ops: &[&BulkOp],
    ) -> impl Future<Output = Result<Vec<ItemResult>, ElasticError>> + Send {
        Client::bulk(self, ops)
    }

    fn mget(
        &self,
        index: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Stored>, ElasticError>> + Send {
        Client::mget(self, index, ids)
    }

    fn scan_versions(
        &self,
        index: &str,
    ) -> impl Future<Output = Result<Vec<(String, String, u64)>, ElasticError>> + Send {
        Client::scan_versions(self, index)
    }

    fn refresh(&self, index: &str) -> impl Future<Output = Result<(), ElasticError>> + Send {
        Client::refresh(self, index)
    }
}
