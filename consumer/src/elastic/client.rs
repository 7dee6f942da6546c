//! The transport to one cluster: the client, its TLS and authentication, and a request sent
//! and read to its end. The calls the sink makes are in `api`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use sluice_common::config::{Auth, ElasticsearchConfig, Secret, redact_url};
use url::Url;

use super::response::{error_of, raw_reason};
use super::{ElasticError, request};

/// The longest a connection attempt may take, when `request_timeout` is longer.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bodies from this size are gzipped on a blocking thread, so compression does not hold up the
/// other tasks of the runtime (a 5 MB body takes tens of milliseconds).
const BLOCKING_GZIP_BYTES: usize = 256 * 1024;

pub(super) const NDJSON: &str = "application/x-ndjson";
pub(super) const JSON: &str = "application/json";

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

/// A response read to its end.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    /// Whether the `X-elastic-product` header is there (Elasticsearch 7.14+, never OpenSearch).
    pub(super) elastic_product: bool,
    pub(super) body: bytes::Bytes,
    /// `METHOD url`, without a password or the query, for messages.
    pub(super) what: String,
}

impl Reply {
    /// The error of a failed response: auth, retryable or fatal by its status.
    pub(super) fn error(&self) -> ElasticError {
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
    pub(super) fn success(self) -> Result<Self, ElasticError> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.error())
        }
    }

    /// The body as `T`; an unreadable body is retryable (a proxy cut it, a node answered while
    /// shutting down…), and every call here is safe to repeat.
    pub(super) fn parse<T: DeserializeOwned>(&self) -> Result<T, ElasticError> {
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
            // Gzipped answers only with gzipped requests: inflating each answer cost the consumer
            // more than its small size saves on a fast link (a zlib state allocated and freed
            // per response), and the cluster the compressing.
            .gzip(config.gzip);
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
            if config.verify_hostname {
                // Added to the system's roots rather than replacing them (as curl --cacert does),
                // so a publicly signed proxy in front of the cluster keeps working too.
                builder = builder.tls_certs_merge(certificates);
            } else {
                // Only the given CA: with any public CA, any public certificate would do.
                builder = builder
                    .tls_certs_only(certificates)
                    .tls_danger_accept_invalid_hostnames(true);
                warn_unchecked_hostname(&endpoint);
            }
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

    /// The endpoint's URL with `segments` appended to its path (each percent-encoded).
    pub(super) fn url(&self, segments: &[&str]) -> Result<Url, ElasticError> {
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
    pub(super) async fn execute(
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

/// Warns, once per endpoint in this process, that its certificate's names are not checked.
fn warn_unchecked_hostname(endpoint: &str) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut warned = match WARNED.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if !warned.iter().any(|e| e == endpoint) {
        warned.push(endpoint.to_owned());
        tracing::warn!(
            endpoint,
            "elasticsearch.verify_hostname is false: the cluster's certificate must be signed by \
             elasticsearch.ca_file, but the host name it names is not checked"
        );
    }
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
    // Retrying cannot make a refused certificate acceptable: stop, with the fix.
    if let Some(problem) = sluice_common::tls::certificate_problem(
        error,
        "elasticsearch.ca_file",
        "set elasticsearch.verify_hostname: false (the certificate must still be signed by \
         elasticsearch.ca_file)",
    ) {
        return ElasticError::config(format!("{what}: {problem}"));
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
            .parse::<crate::elastic::response::BulkResponse>()
            .unwrap_err();
        assert!(error.is_retryable());
        assert!(error.to_string().contains("could not read"), "{error}");
    }
}
