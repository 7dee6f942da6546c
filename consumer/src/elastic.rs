//! The HTTP client of Elasticsearch 8/9 and OpenSearch 2.x: the handful of calls the sink makes,
//! and what their answers mean for it.
//!
//! ```text
//!  core ──[BulkOp]──▶ request (NDJSON, gzip) ──POST /_bulk──▶ cluster
//!  core ◀─[ItemResult]── response (typed, per item) ◀──────────┘
//! ```
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
//! This module never retries: the core does, because it knows which items of a batch still need
//! to go. Whole-request failures come back as [`ElasticError`], sorted by what to do (retry, stop
//! the sink, or fix the config); per-item outcomes as [`ItemResult`], in the order of the
//! operations.
//!
//! A request body above the cluster's `http.max_content_length` (100 MB by default), or above a
//! proxy's limit, fails as a whole with 413 ([`ElasticError::Fatal`]); the core keeps batches under
//! `batch_max_bytes` (5 MB by default), far below it.

mod request;
mod response;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sluice_common::config::{Auth, ElasticsearchConfig, Secret, redact_url};
use url::Url;

pub use request::{BulkOp, TEMPLATE_PRIORITY};
use response::{
    BULK_FILTER_PATH, BulkResponse, CountResponse, MgetResponse, NodesResponse, RootResponse,
    SCROLL_FILTER_PATH, ScrollPage, error_of, raw_reason,
};

/// The largest external version Elasticsearch and OpenSearch accept (`i64::MAX`).
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// Documents per page of [`Client::scan_versions`].
pub const SCAN_PAGE_SIZE: usize = 1000;

/// How long a scroll's search context lives between two pages.
const SCROLL_KEEP_ALIVE: &str = "1m";

/// The longest a connection attempt may take, when `request_timeout` is longer.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bodies from this size are gzipped on a blocking thread, so compression does not hold up the
/// other tasks of the runtime (a 5 MB body takes tens of milliseconds).
const BLOCKING_GZIP_BYTES: usize = 256 * 1024;

const NDJSON: &str = "application/x-ndjson";
const JSON: &str = "application/json";

/// A client of one cluster. Cheap to clone (the connection pool is shared); `Debug` shows the
/// endpoint without its password and the kind of authentication, never a secret.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    /// `base` for messages: without a password.
    endpoint: String,
    auth: Authorization,
    gzip: bool,
}

enum Authorization {
    None,
    /// Applied with reqwest's `basic_auth`, which marks the header sensitive.
    Basic {
        username: String,
        password: Secret,
    },
    /// `ApiKey …` (`kind` "api_key") or `Bearer …` ("bearer"), marked sensitive.
    Header {
        kind: &'static str,
        value: HeaderValue,
    },
}

impl Authorization {
    fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Basic { .. } => "basic",
            Self::Header { kind, .. } => kind,
        }
    }

    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::None => request,
            Self::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
            Self::Header { value, .. } => request.header(AUTHORIZATION, value.clone()),
        }
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.endpoint)
            .field("auth", &self.inner.auth.kind())
            .field("gzip", &self.inner.gzip)
            .finish_non_exhaustive()
    }
}

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
    /// 429 or 5xx: try the item again later.
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
        matches!(self, Self::Retryable { .. })
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

/// A response read to its end.
struct Reply {
    status: StatusCode,
    /// Whether the `X-elastic-product` header is there (Elasticsearch 7.14+, never OpenSearch).
    elastic_product: bool,
    body: bytes::Bytes,
    /// `METHOD url`, without a password or the query, for messages.
    what: String,
}

impl Reply {
    /// The error of a failed response: auth, retryable or fatal by its status.
    fn error(&self) -> ElasticError {
        let status = self.status.as_u16();
        let (kind, reason) = error_of(&self.body);
        let reason = if kind.is_empty() {
            format!("{} failed: {reason}", self.what)
        } else {
            format!("{} failed: {kind}: {reason}", self.what)
        };
        match status {
            401 | 403 => ElasticError::Auth { status, reason },
            408 | 429 | 500..=599 => ElasticError::Retryable {
                reason: format!("{reason} (HTTP {status})"),
            },
            413 => ElasticError::Fatal {
                status,
                reason: format!(
                    "{reason}: the request body is larger than the cluster (`http.max_content_length`, \
                     100mb by default) or a proxy in front of it accepts; lower `batch_max_bytes`"
                ),
            },
            _ => ElasticError::Fatal { status, reason },
        }
    }

    /// `Ok(self)` for a 2xx, else the error.
    fn success(self) -> Result<Self, ElasticError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.error())
        }
    }

    /// The body as `T`; an unreadable body is retryable (a proxy cut it, a node answered while
    /// shutting down…), and every call here is safe to repeat.
    fn parse<T: DeserializeOwned>(&self) -> Result<T, ElasticError> {
        serde_json::from_slice(&self.body).map_err(|error| ElasticError::Retryable {
            reason: format!(
                "could not read the answer to {} (HTTP {}): {error}; it starts with: {}",
                self.what,
                self.status.as_u16(),
                raw_reason(&self.body)
            ),
        })
    }
}

impl Client {
    /// A client for `config`'s cluster: checks the endpoint, reads the CA file and prepares the
    /// authentication header. Makes no request.
    pub fn new(config: &ElasticsearchConfig) -> Result<Client, ElasticError> {
        let endpoint = redact_url(&config.endpoint);
        let base = Url::parse(&config.endpoint).map_err(|error| {
            // Unparsable, so redact_url cannot help: show it unless it may hold a password.
            let shown = if config.endpoint.contains('@') {
                "<hidden: it has an @>"
            } else {
                config.endpoint.as_str()
            };
            ElasticError::config(format!(
                "elasticsearch.endpoint `{shown}` is not a URL ({error}): write it as \
                 http(s)://host:port"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ElasticError::config(format!(
                "elasticsearch.endpoint `{endpoint}` must start with http:// or https://"
            )));
        }

        let auth = match &config.auth {
            Auth::None => Authorization::None,
            Auth::Basic { username, password } => Authorization::Basic {
                username: username.clone(),
                password: password.clone(),
            },
            Auth::ApiKey { value } => Authorization::Header {
                kind: "api_key",
                value: sensitive_header("ApiKey", value, "auth.value")?,
            },
            Auth::Bearer { token } => Authorization::Header {
                kind: "bearer",
                value: sensitive_header("Bearer", token, "auth.token")?,
            },
        };

        let timeout = config.request_timeout.get();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            // Accept gzipped answers (bulk responses of big batches compress well).
            .gzip(true);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|error| {
                ElasticError::config(format!(
                    "elasticsearch.ca_file {}: cannot read it: {error}",
                    path.display()
                ))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
                ElasticError::config(format!(
                    "elasticsearch.ca_file {}: not a PEM certificate: {error}",
                    path.display()
                ))
            })?;
            if certificates.is_empty() {
                return Err(ElasticError::config(format!(
                    "elasticsearch.ca_file {}: no PEM certificate in it (expected \
                     -----BEGIN CERTIFICATE-----)",
                    path.display()
                )));
            }
            // Added to the system's roots rather than replacing them (as curl --cacert does), so
            // a publicly signed proxy in front of the cluster keeps working too.
            builder = builder.tls_certs_merge(certificates);
        }
        let http = builder.build().map_err(|error| {
            ElasticError::config(format!(
                "cannot set up the HTTP client for {endpoint}: {}",
                error_chain(&error)
            ))
        })?;

        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                endpoint,
                auth,
                gzip: config.gzip,
            }),
        })
    }

    /// `GET /`: the distribution and its version. Where `GET /` is not served (Elasticsearch
    /// without its `rest-root` module, as in the integration-test distribution, or a proxy that
    /// only forwards some paths), the version comes from `GET /_nodes/_local`, and the
    /// distribution from the `X-elastic-product` header, which only Elasticsearch sends.
    pub async fn info(&self) -> Result<ClusterInfo, ElasticError> {
        let reply = self.execute(Method::GET, self.url(&[])?, None).await?;
        if reply.status.is_success() {
            let root: RootResponse = reply.parse()?;
            return Ok(ClusterInfo {
                distribution: root
                    .version
                    .distribution
                    .unwrap_or_else(|| "elasticsearch".to_owned()),
                version: root.version.number,
            });
        }
        if !matches!(reply.status.as_u16(), 400 | 404 | 405 | 410 | 501) {
            return Err(reply.error());
        }
        let mut url = self.url(&["_nodes", "_local"])?;
        url.query_pairs_mut()
            .append_pair("filter_path", "nodes.*.version");
        let nodes = self.execute(Method::GET, url, None).await?.success()?;
        let elastic_product = reply.elastic_product || nodes.elastic_product;
        let parsed: NodesResponse = nodes.parse()?;
        let Some(node) = parsed.nodes.into_values().next() else {
            return Err(ElasticError::Retryable {
                reason: format!("{} listed no node", nodes.what),
            });
        };
        Ok(ClusterInfo {
            distribution: if elastic_product {
                "elasticsearch"
            } else {
                "opensearch"
            }
            .to_owned(),
            version: node.version,
        })
    }

    /// Whether `name` exists as an index or an alias (or, for a pattern, matches one):
    /// `HEAD /{name}?allow_no_indices=false` (without the parameter, both Elasticsearch and
    /// OpenSearch answer 200 for a pattern that matches nothing).
    pub async fn exists(&self, name: &str) -> Result<bool, ElasticError> {
        let mut url = self.url(&[name])?;
        url.query_pairs_mut()
            .append_pair("allow_no_indices", "false");
        let reply = self.execute(Method::HEAD, url, None).await?;
        match reply.status.as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            // A HEAD answer has no body to tell why.
            status @ (401 | 403) => Err(ElasticError::Auth {
                status,
                reason: format!("{} was refused", reply.what),
            }),
            _ => Err(reply.error()),
        }
    }

    /// When `alias` is neither an alias nor an index: creates the index `{alias}-v1` with
    /// `settings` and `mappings`, and `alias` as its write alias, in one request (so a later
    /// rebuild can fill `{alias}-v2` and swap the alias). Returns whether it created them; a
    /// concurrent creator (another consumer of the group) is not an error.
    pub async fn ensure_index(
        &self,
        alias: &str,
        settings: Option<&Value>,
        mappings: Option<&Value>,
    ) -> Result<bool, ElasticError> {
        if self.exists(alias).await? {
            return Ok(false);
        }
        let index = format!("{alias}-v1");
        let body = request::create_index_body(alias, settings, mappings);
        let reply = self
            .execute(
                Method::PUT,
                self.url(&[&index])?,
                Some((request::to_json(&body)?, JSON)),
            )
            .await?;
        if reply.status.is_success() {
            tracing::info!(%index, %alias, "created index with its alias");
            return Ok(true);
        }
        let (kind, _) = error_of(&reply.body);
        if kind != "resource_already_exists_exception" {
            return Err(reply.error());
        }
        // Someone else created the index; with it came the alias, unless the index was left
        // over from before (its alias removed by hand), which only a person can sort out.
        if self.exists(alias).await? {
            Ok(false)
        } else {
            Err(ElasticError::Fatal {
                status: 400,
                reason: format!(
                    "index {index} exists but alias {alias} does not: point the alias at it \
                     (POST /_aliases with {{\"add\": {{\"index\": \"{index}\", \"alias\": \
                     \"{alias}\", \"is_write_index\": true}}}}) or delete the index"
                ),
            })
        }
    }

    /// Puts the composable index template `name` for `pattern` (e.g. `orders-*` for the index
    /// name `orders-{{ record.tenant }}`), with `settings` and `mappings` and priority
    /// [`TEMPLATE_PRIORITY`]: `PUT /_index_template/{name}`. Replaces an existing template of that
    /// name; fails (400) when another template with an overlapping pattern has the same priority.
    pub async fn put_index_template(
        &self,
        name: &str,
        pattern: &str,
        settings: Option<&Value>,
        mappings: Option<&Value>,
    ) -> Result<(), ElasticError> {
        let body = request::index_template_body(pattern, settings, mappings);
        self.execute(
            Method::PUT,
            self.url(&["_index_template", name])?,
            Some((request::to_json(&body)?, JSON)),
        )
        .await?
        .success()?;
        Ok(())
    }

    /// One `_bulk` request. The results are in the order of `ops`, one per operation. An empty
    /// `ops` makes no request.
    pub async fn bulk(&self, ops: &[BulkOp]) -> Result<Vec<ItemResult>, ElasticError> {
        let mut results: Vec<Option<ItemResult>> = ops.iter().map(BulkOp::refusal).collect();
        let sendable: Vec<&BulkOp> = ops
            .iter()
            .zip(&results)
            .filter(|(_, refused)| refused.is_none())
            .map(|(op, _)| op)
            .collect();
        if !sendable.is_empty() {
            let body = request::bulk_body(&sendable)?;
            let mut url = self.url(&["_bulk"])?;
            url.query_pairs_mut()
                .append_pair("filter_path", BULK_FILTER_PATH);
            tracing::debug!(
                operations = sendable.len(),
                bytes = body.len(),
                "sending bulk request"
            );
            let reply = self
                .execute(Method::POST, url, Some((body, NDJSON)))
                .await?
                .success()?;
            let response: BulkResponse = reply.parse()?;
            if response.items.len() != sendable.len() {
                // Every write is versioned, so sending them all again is safe.
                return Err(ElasticError::Retryable {
                    reason: format!(
                        "{} answered {} items for {} operations",
                        reply.what,
                        response.items.len(),
                        sendable.len()
                    ),
                });
            }
            let mut items = response.items.into_iter().zip(sendable);
            for slot in results.iter_mut().filter(|slot| slot.is_none()) {
                if let Some((item, op)) = items.next() {
                    *slot = Some(item.outcome(op.is_delete()));
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| ItemResult::Retry {
                    status: 0,
                    reason: "no result for the operation".to_owned(),
                })
            })
            .collect())
    }

    /// `_mget` of `ids` in `index` (an index, or an alias with one index): for each id, in order,
    /// the document's `_version` and `_source`, or `None` when it is missing (also when the index
    /// is). A document stored without `_source` comes back with an empty map.
    pub async fn mget(
        &self,
        index: &str,
        ids: &[String],
    ) -> Result<Vec<Option<(u64, Map<String, Value>)>>, ElasticError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let body = request::to_json(&json!({ "ids": ids }))?;
        let reply = self
            .execute(
                Method::POST,
                self.url(&[index, "_mget"])?,
                Some((body, JSON)),
            )
            .await?
            .success()?;
        let response: MgetResponse = reply.parse()?;
        if response.docs.len() != ids.len() {
            return Err(ElasticError::Retryable {
                reason: format!(
                    "{} answered {} documents for {} ids",
                    reply.what,
                    response.docs.len(),
                    ids.len()
                ),
            });
        }
        response
            .docs
            .into_iter()
            .zip(ids)
            .map(|(doc, id)| {
                if let Some(error) = doc.error {
                    if error.kind() == "index_not_found_exception" {
                        return Ok(None);
                    }
                    return Err(ElasticError::Retryable {
                        reason: format!(
                            "{}: document [{id}]: {}: {}",
                            reply.what,
                            error.kind(),
                            error.describe()
                        ),
                    });
                }
                match (doc.found, doc.version) {
                    (false, _) => Ok(None),
                    (true, Some(version)) => Ok(Some((version, doc.source.unwrap_or_default()))),
                    (true, None) => Err(ElasticError::Retryable {
                        reason: format!("{}: document [{id}] has no _version", reply.what),
                    }),
                }
            })
            .collect()
    }

    /// `POST /{index}/_refresh`: makes every write so far visible to searches. `index` may be an
    /// alias or pattern; a missing index has nothing to refresh and is not an error.
    pub async fn refresh(&self, index: &str) -> Result<(), ElasticError> {
        let mut url = self.url(&[index, "_refresh"])?;
        url.query_pairs_mut()
            .append_pair("ignore_unavailable", "true");
        self.execute(Method::POST, url, None).await?.success()?;
        Ok(())
    }

    /// Every document of `index` (an index, alias or pattern; nothing when it does not exist) as
    /// `(concrete index, id, _version)`: all pages of a [`Scan`].
    pub async fn scan_versions(
        &self,
        index: &str,
    ) -> Result<Vec<(String, String, u64)>, ElasticError> {
        let mut scan = self.scan(index);
        let mut found = Vec::new();
        let result = async {
            while let Some(page) = scan.next_page().await? {
                found.extend(page);
            }
            Ok(())
        }
        .await;
        scan.close().await;
        result.map(|()| found)
    }

    /// A scan of every document of `index` (an index, alias or pattern), page by page.
    pub fn scan(&self, index: &str) -> Scan<'_> {
        Scan {
            client: self,
            index: index.to_owned(),
            scroll_id: None,
            finished: false,
        }
    }

    async fn clear_scroll(&self, id: &str) -> Result<(), ElasticError> {
        let body = request::to_json(&json!({ "scroll_id": [id] }))?;
        let reply = self
            .execute(
                Method::DELETE,
                self.url(&["_search", "scroll"])?,
                Some((body, JSON)),
            )
            .await?;
        // 404: the context is already gone.
        if reply.status.is_success() || reply.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(reply.error())
        }
    }

    /// `_count` of `index` (an index, alias or pattern).
    pub async fn count(&self, index: &str) -> Result<u64, ElasticError> {
        let reply = self
            .execute(Method::GET, self.url(&[index, "_count"])?, None)
            .await?
            .success()?;
        Ok(reply.parse::<CountResponse>()?.count)
    }

    /// The endpoint's URL with `segments` appended to its path (each percent-encoded).
    fn url(&self, segments: &[&str]) -> Result<Url, ElasticError> {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .map_err(|()| {
                ElasticError::config(format!(
                    "elasticsearch.endpoint `{}` cannot have a path",
                    self.inner.endpoint
                ))
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends one request (gzipping the body when configured) and reads the whole answer.
    /// Transport failures are retryable; the status is left to the caller.
    async fn execute(
        &self,
        method: Method,
        url: Url,
        body: Option<(Vec<u8>, &'static str)>,
    ) -> Result<Reply, ElasticError> {
        let what = describe(&method, &url);
        let mut request = self.inner.auth.apply(self.inner.http.request(method, url));
        if let Some((body, content_type)) = body {
            request = request.header(CONTENT_TYPE, content_type);
            if self.inner.gzip {
                request = request
                    .header(CONTENT_ENCODING, "gzip")
                    .body(compress(body).await?);
            } else {
                request = request.body(body);
            }
        }
        let response = request
            .send()
            .await
            .map_err(|error| transport_error(&what, &error))?;
        let status = response.status();
        let elastic_product = response.headers().contains_key("x-elastic-product");
        let body = response
            .bytes()
            .await
            .map_err(|error| transport_error(&what, &error))?;
        Ok(Reply {
            status,
            elastic_product,
            body,
            what,
        })
    }
}

/// Every document of an index read with the scroll API in pages of [`SCAN_PAGE_SIZE`], as
/// `(concrete index, id, _version)` (it works on Elasticsearch and OpenSearch alike, where
/// `_delete_by_query` needs a module the minimal distributions lack). A page with failed shards
/// is a retryable error, since a partial list would leave documents behind. [`Scan::close`]
/// clears the scroll; one left open expires by itself after a minute.
#[derive(Debug)]
pub struct Scan<'a> {
    client: &'a Client,
    index: String,
    scroll_id: Option<String>,
    finished: bool,
}

impl Scan<'_> {
    /// The next page, or `None` after the last one (an index that does not exist has none).
    pub async fn next_page(&mut self) -> Result<Option<Vec<(String, String, u64)>>, ElasticError> {
        if self.finished {
            return Ok(None);
        }
        let client = self.client;
        let reply = match self.scroll_id.as_deref() {
            None => {
                let mut url = client.url(&[&self.index, "_search"])?;
                url.query_pairs_mut()
                    .append_pair("scroll", SCROLL_KEEP_ALIVE)
                    .append_pair("ignore_unavailable", "true")
                    .append_pair("allow_no_indices", "true")
                    .append_pair("filter_path", SCROLL_FILTER_PATH);
                let body = request::to_json(&request::scan_body(SCAN_PAGE_SIZE))?;
                client
                    .execute(Method::POST, url, Some((body, JSON)))
                    .await?
                    .success()?
            }
            Some(id) => {
                let mut url = client.url(&["_search", "scroll"])?;
                url.query_pairs_mut()
                    .append_pair("filter_path", SCROLL_FILTER_PATH);
                let body =
                    request::to_json(&json!({ "scroll": SCROLL_KEEP_ALIVE, "scroll_id": id }))?;
                client
                    .execute(Method::POST, url, Some((body, JSON)))
                    .await?
                    .success()?
            }
        };
        let page: ScrollPage = reply.parse()?;
        if let Some(id) = page.scroll_id {
            self.scroll_id = Some(id);
        }
        if let Some(failure) = page.shards.failure() {
            return Err(ElasticError::Retryable {
                reason: format!("{}: {failure}", reply.what),
            });
        }
        if page.timed_out {
            return Err(ElasticError::Retryable {
                reason: format!("{} timed out", reply.what),
            });
        }
        if page.hits.hits.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        if self.scroll_id.is_none() {
            return Err(ElasticError::Retryable {
                reason: format!("{} returned no scroll id", reply.what),
            });
        }
        page.hits
            .hits
            .into_iter()
            .map(|hit| match hit.version {
                Some(version) => Ok((hit.index, hit.id, version)),
                None => Err(ElasticError::Retryable {
                    reason: format!("{}: document [{}] has no _version", reply.what, hit.id),
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Clears the scroll (also after an error).
    pub async fn close(self) {
        if let Some(id) = self.scroll_id
            && let Err(error) = self.client.clear_scroll(&id).await
        {
            // The context expires by itself after SCROLL_KEEP_ALIVE.
            tracing::warn!(index = %self.index, %error, "could not clear a scroll");
        }
    }
}

async fn compress(body: Vec<u8>) -> Result<Vec<u8>, ElasticError> {
    if body.len() < BLOCKING_GZIP_BYTES {
        return request::gzip(&body);
    }
    tokio::task::spawn_blocking(move || request::gzip(&body))
        .await
        .map_err(|error| ElasticError::internal(format!("gzip task failed: {error}")))?
}

/// An `Authorization` header value, marked sensitive so reqwest never prints it.
fn sensitive_header(
    scheme: &str,
    secret: &Secret,
    field: &str,
) -> Result<HeaderValue, ElasticError> {
    let value = secret.expose().trim();
    // Tolerate a value pasted with its scheme ("ApiKey abc…").
    let value = value.strip_prefix(scheme).map_or(value, str::trim_start);
    if value.is_empty() {
        return Err(ElasticError::config(format!(
            "elasticsearch.{field} is empty"
        )));
    }
    let mut header = HeaderValue::from_str(&format!("{scheme} {value}")).map_err(|_| {
        ElasticError::config(format!(
            "elasticsearch.{field} holds characters an HTTP header cannot carry (a line break?)"
        ))
    })?;
    header.set_sensitive(true);
    Ok(header)
}

/// `METHOD url` without the query or a password.
fn describe(method: &Method, url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    format!("{method} {}", redact_url(url.as_str()))
}

fn transport_error(what: &str, error: &reqwest::Error) -> ElasticError {
    let chain = error_chain(error);
    if error.is_builder() {
        return ElasticError::config(format!("{what}: invalid request: {chain}"));
    }
    let failure = if error.is_timeout() {
        "timed out (raise `request_timeout` if the cluster is only slow)"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    ElasticError::Retryable {
        reason: format!("{what} {failure}: {chain}"),
    }
}

/// An error and its sources, one after the other, without repeats (reqwest's own message only
/// says "error sending request").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(error) = current {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

    use super::*;

    /// A config through serde, as the loader builds it (from JSON, which is YAML too).
    fn config(json: &str) -> ElasticsearchConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn debug_shows_no_secret() {
        let client = Client::new(&config(
            r#"{"endpoint":"http://elastic:hunter2@127.0.0.1:9200","index":"p",
                "auth":{"type":"api_key","value":"c2VjcmV0LWtleQ=="}}"#,
        ))
        .unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("c2VjcmV0LWtleQ"), "{debug}");
        assert!(debug.contains("127.0.0.1:9200"), "{debug}");
    }

    #[test]
    fn bad_endpoints_and_ca_files_are_fatal() {
        let error =
            Client::new(&config(r#"{"endpoint":"127.0.0.1:9200","index":"p"}"#)).unwrap_err();
        assert!(
            matches!(error, ElasticError::Fatal { status: 0, .. }),
            "{error}"
        );
        let error = Client::new(&config(r#"{"endpoint":"ftp://h","index":"p"}"#)).unwrap_err();
        assert!(error.to_string().contains("http://"), "{error}");

        let error = Client::new(&config(
            r#"{"endpoint":"https://h:9200","index":"p","ca_file":"/nonexistent/ca.pem"}"#,
        ))
        .unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");

        let path = std::env::temp_dir().join(format!("sluice-not-a-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate").unwrap();
        let error = Client::new(&config(&format!(
            r#"{{"endpoint":"https://h:9200","index":"p","ca_file":"{}"}}"#,
            path.display()
        )))
        .unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("PEM"), "{error}");
    }

    #[test]
    fn auth_values_become_sensitive_headers() {
        let header = sensitive_header("ApiKey", &Secret::new("abc=="), "auth.value").unwrap();
        assert_eq!(header.to_str().unwrap(), "ApiKey abc==");
        assert!(header.is_sensitive());
        let header =
            sensitive_header("ApiKey", &Secret::new("ApiKey abc== "), "auth.value").unwrap();
        assert_eq!(header.to_str().unwrap(), "ApiKey abc==");
        let header = sensitive_header("Bearer", &Secret::new("tok"), "auth.token").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer tok");
        let error = sensitive_header("Bearer", &Secret::new("a\nb"), "auth.token").unwrap_err();
        assert!(!error.to_string().contains("a\nb"));
        assert!(sensitive_header("Bearer", &Secret::new(" "), "auth.token").is_err());
    }

    #[test]
    fn urls_append_encoded_segments() {
        let client =
            Client::new(&config(r#"{"endpoint":"http://h:9200/es/","index":"p"}"#)).unwrap();
        assert_eq!(
            client.url(&["orders-*", "_search"]).unwrap().as_str(),
            "http://h:9200/es/orders-*/_search"
        );
        assert_eq!(
            client.url(&["a b#c/d"]).unwrap().as_str(),
            "http://h:9200/es/a%20b%23c%2Fd"
        );
        let client = Client::new(&config(r#"{"endpoint":"http://h:9200","index":"p"}"#)).unwrap();
        assert_eq!(client.url(&[]).unwrap().as_str(), "http://h:9200/");
        assert_eq!(
            client.url(&["_bulk"]).unwrap().as_str(),
            "http://h:9200/_bulk"
        );
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap(),
            elastic_product: true,
            body: bytes::Bytes::from(body.to_owned()),
            what: "POST http://h:9200/_bulk".to_owned(),
        }
    }

    #[test]
    fn whole_request_statuses_map_to_errors() {
        let error = reply(
            401,
            r#"{"error":{"type":"security_exception","reason":"unable to authenticate with provided credentials"},"status":401}"#,
        )
        .error();
        assert!(matches!(error, ElasticError::Auth { status: 401, .. }));
        let text = error.to_string();
        assert!(text.contains("unable to authenticate"), "{text}");
        assert!(text.contains("elasticsearch.auth"), "{text}");

        let error = reply(403, r#"{"error":{"type":"security_exception","reason":"action [indices:data/write/bulk] is unauthorized"},"status":403}"#).error();
        assert!(error.to_string().contains("privilege"), "{error}");

        for status in [429, 500, 502, 503, 504] {
            let error = reply(status, "<html>Bad Gateway</html>").error();
            assert!(error.is_retryable(), "{status}: {error}");
        }
        let error = reply(413, "").error();
        assert!(matches!(error, ElasticError::Fatal { status: 413, .. }));
        assert!(error.to_string().contains("batch_max_bytes"), "{error}");
        let error = reply(
            400,
            r#"{"error":{"type":"illegal_argument_exception","reason":"Malformed action/metadata line [1]"},"status":400}"#,
        )
        .error();
        assert_eq!(
            error.to_string(),
            "POST http://h:9200/_bulk failed: illegal_argument_exception: Malformed action/metadata \
             line [1] (HTTP 400)"
        );
        assert!(!error.is_retryable());
    }

    #[test]
    fn unreadable_answers_are_retryable() {
        let error = reply(200, "{\"items\":[")
            .parse::<BulkResponse>()
            .unwrap_err();
        assert!(error.is_retryable());
        assert!(error.to_string().contains("could not read"), "{error}");
    }
}
