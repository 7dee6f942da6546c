//! The calls the sink makes, each one request (or a scroll of them) through the transport.

use std::borrow::Borrow;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[allow(unused_imports)] // named in the rustdoc
use super::TEMPLATE_PRIORITY;
use super::client::{Client, JSON, NDJSON};
use super::response::{
    BULK_FILTER_PATH, BulkResponse, CountResponse, MgetResponse, NodesResponse, RootResponse,
    SCROLL_FILTER_PATH, ScrollPage, error_of,
};
use super::{BulkOp, ClusterInfo, ElasticError, ItemResult, SCAN_PAGE_SIZE, Stored, request};

/// How long a scroll's search context lives between two pages.
const SCROLL_KEEP_ALIVE: &str = "1m";

impl Client {
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
    pub async fn bulk<O: Borrow<BulkOp> + Sync>(
        &self,
        ops: &[O],
    ) -> Result<Vec<ItemResult>, ElasticError> {
        let mut results: Vec<Option<ItemResult>> =
            ops.iter().map(|op| op.borrow().refusal()).collect();
        let mut sendable: Vec<&BulkOp> = Vec::with_capacity(ops.len());
        sendable.extend(
            ops.iter()
                .zip(&results)
                .filter(|(_, refused)| refused.is_none())
                .map(|(op, _)| op.borrow()),
        );
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
    pub async fn mget(&self, index: &str, ids: &[String]) -> Result<Vec<Stored>, ElasticError> {
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
