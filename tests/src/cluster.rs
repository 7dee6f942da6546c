//! The clusters as a user sees them: an HTTP client per cluster, the documents of an index
//! with their versions, waiting for what an index should hold.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Endpoints, TestContext};

/// Which cluster a sink writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Elasticsearch with the test API key: 9.2, or the instance `SLUICE_TEST_ELASTICSEARCH_INSTANCE`
    /// names (`elasticsearch8`: 8.19 over HTTPS).
    Elasticsearch,
    /// OpenSearch: 2.19 without auth, or the instance `SLUICE_TEST_OPENSEARCH_INSTANCE` names
    /// (`opensearch3`).
    OpenSearch,
}

/// A document as the index holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub version: u64,
    pub source: Value,
}

impl TestContext {
    /// An HTTP client for Elasticsearch with the test API key, and the base URL.
    /// Panics with how to get it when Elasticsearch is not configured.
    pub fn elasticsearch(&self) -> (reqwest::Client, String) {
        elasticsearch(&self.endpoints).unwrap_or_else(|| {
            panic!(
                "SLUICE_TEST_ELASTICSEARCH_URL/_API_KEY are not set: start it with deploy/local/up.sh"
            )
        })
    }

    /// An HTTP client for OpenSearch and the base URL. Panics when OpenSearch is not configured.
    pub fn opensearch(&self) -> (reqwest::Client, String) {
        opensearch(&self.endpoints).unwrap_or_else(|| {
            panic!("SLUICE_TEST_OPENSEARCH_URL is not set: start it with deploy/local/up.sh")
        })
    }

    /// An HTTP client and base URL for `cluster`.
    pub fn cluster(&self, cluster: Cluster) -> (reqwest::Client, String) {
        match cluster {
            Cluster::Elasticsearch => self.elasticsearch(),
            Cluster::OpenSearch => self.opensearch(),
        }
    }

    /// GET `path` (below the base URL) on `cluster`: the status and the JSON body (`null`
    /// when the body is not JSON).
    pub async fn get(&self, cluster: Cluster, path: &str) -> anyhow::Result<(u16, Value)> {
        let (client, base) = self.cluster(cluster);
        let response = client.get(format!("{base}/{path}")).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// GET `path` on `cluster`, which must answer 2xx: the JSON body.
    pub async fn get_json(&self, cluster: Cluster, path: &str) -> anyhow::Result<Value> {
        match self.get(cluster, path).await? {
            (200..=299, body) => Ok(body),
            (status, body) => bail!("GET {path}: {status} {body}"),
        }
    }

    /// The number of documents `index` (prefixed) counts now, without a refresh.
    pub async fn count(&self, cluster: Cluster, index: &str) -> anyhow::Result<u64> {
        let index = self.index(index);
        let answer = self.get_json(cluster, &format!("{index}/_count")).await?;
        answer["count"]
            .as_u64()
            .with_context(|| format!("{index}/_count: {answer}"))
    }

    /// The sources of every document of `index` (see [`TestContext::documents`]) by `_id`.
    pub async fn sources(
        &self,
        cluster: Cluster,
        index: &str,
    ) -> anyhow::Result<BTreeMap<String, Value>> {
        let docs = self.documents(cluster, index).await?;
        Ok(docs.into_iter().map(|(id, doc)| (id, doc.source)).collect())
    }

    /// Waits until `index` holds exactly the documents `expected` (sources by `_id`); returns
    /// them with their versions. A timeout says what differs, with [`TestContext::kafka_report`].
    pub async fn wait_for_documents(
        &self,
        cluster: Cluster,
        index: &str,
        expected: &BTreeMap<String, Value>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<BTreeMap<String, Doc>> {
        let waited = crate::eventually(
            timeout,
            &format!(
                "index {index} holds the {} documents expected",
                expected.len()
            ),
            || async {
                let docs = self.documents(cluster, index).await?;
                let missing = expected.keys().filter(|id| !docs.contains_key(*id)).count();
                let different = expected
                    .iter()
                    .filter(|(id, source)| docs.get(*id).is_some_and(|doc| doc.source != **source))
                    .count();
                let unexpected = docs.keys().filter(|id| !expected.contains_key(*id)).count();
                if missing + different + unexpected == 0 {
                    return Ok(Some(docs));
                }
                let mut what = format!(
                    "{missing} missing, {different} different, {unexpected} unexpected of {} \
                     in the index",
                    docs.len()
                );
                if docs.len() <= 20 {
                    let sources: BTreeMap<&String, &Value> =
                        docs.iter().map(|(id, doc)| (id, &doc.source)).collect();
                    what.push_str(&format!(": {sources:?}"));
                }
                bail!("{what}")
            },
        )
        .await;
        match waited {
            Ok(docs) => Ok(docs),
            Err(error) => bail!("{error:#}\n{}", self.kafka_report().await),
        }
    }

    /// Every document of `index` (prefixed; an alias or pattern works too) by `_id`, after a
    /// refresh. An index that does not exist reads as empty.
    pub async fn documents(
        &self,
        cluster: Cluster,
        index: &str,
    ) -> anyhow::Result<BTreeMap<String, Doc>> {
        let (client, base) = self.cluster(cluster);
        let index = self.index(index);
        let refresh = client
            .post(format!("{base}/{index}/_refresh?ignore_unavailable=true"))
            .send()
            .await?;
        if refresh.status() == 404 {
            return Ok(BTreeMap::new());
        }
        // A scroll reads one point-in-time view: paging with `search_after` on `_doc` can skip
        // or repeat documents when a merge lands between two pages.
        let mut docs = BTreeMap::new();
        let mut response = client
            .post(format!(
                "{base}/{index}/_search?scroll=1m&ignore_unavailable=true"
            ))
            .json(&serde_json::json!({
                "size": 5000,
                "version": true,
                "sort": ["_doc"],
                "query": {"match_all": {}},
            }))
            .send()
            .await?;
        loop {
            let status = response.status();
            let answer: Value = response.json().await?;
            if status == 404 {
                return Ok(docs);
            }
            if !status.is_success() {
                bail!("search {index}: {status} {answer}");
            }
            let scroll_id = answer["_scroll_id"].as_str().map(str::to_owned);
            let hits = answer["hits"]["hits"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if hits.is_empty() {
                if let Some(scroll_id) = scroll_id {
                    let _ = client
                        .delete(format!("{base}/_search/scroll"))
                        .json(&serde_json::json!({"scroll_id": scroll_id}))
                        .send()
                        .await;
                }
                return Ok(docs);
            }
            for hit in &hits {
                let id = hit["_id"].as_str().context("hit without _id")?.to_owned();
                docs.insert(
                    id,
                    Doc {
                        version: hit["_version"].as_u64().context("hit without _version")?,
                        source: hit["_source"].clone(),
                    },
                );
            }
            let scroll_id = scroll_id.context("search answer without _scroll_id")?;
            response = client
                .post(format!("{base}/_search/scroll"))
                .json(&serde_json::json!({"scroll": "1m", "scroll_id": scroll_id}))
                .send()
                .await?;
        }
    }
}

/// A client that sends `authorization` with every request and trusts the CA in `ca_file`.
fn cluster_client(authorization: Option<&str>, ca_file: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(value) = authorization.and_then(|v| v.parse().ok()) {
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some(certificate) = ca_file
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|pem| reqwest::Certificate::from_pem(&pem).ok())
    {
        builder = builder.tls_certs_merge([certificate]);
    }
    builder.build().unwrap_or_default()
}

/// A client and base URL for each cluster the endpoints name.
pub(crate) fn configured(endpoints: &Endpoints) -> Vec<(reqwest::Client, String)> {
    [elasticsearch(endpoints), opensearch(endpoints)]
        .into_iter()
        .flatten()
        .collect()
}

fn elasticsearch(endpoints: &Endpoints) -> Option<(reqwest::Client, String)> {
    let url = endpoints.elasticsearch_url.as_ref()?;
    let key = endpoints.elasticsearch_api_key.as_ref()?;
    let authorization = format!("ApiKey {key}");
    Some((
        cluster_client(Some(&authorization), endpoints.elasticsearch_ca.as_deref()),
        url.clone(),
    ))
}

fn opensearch(endpoints: &Endpoints) -> Option<(reqwest::Client, String)> {
    use base64::Engine as _;
    let url = endpoints.opensearch_url.as_ref()?;
    let authorization = endpoints.opensearch_user.as_ref().map(|(user, password)| {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {pair}")
    });
    Some((
        cluster_client(authorization.as_deref(), endpoints.opensearch_ca.as_deref()),
        url.clone(),
    ))
}

/// Runs a scenario as one test per kind of cluster, `NAME::elasticsearch` and
/// `NAME::opensearch` (which instance of each: `SLUICE_TEST_*_INSTANCE`, see [`Endpoints`]).
/// The scenario is called with the [`Cluster`], a test name for [`TestContext::new`]
/// (`NAME_es`, `NAME_os`) and the arguments given:
///
/// ```ignore
/// on_each_cluster!(products_example, truncate);          // products_example(cluster, name)
/// on_each_cluster!(bulk_gzip = bulk_scenario(true));     // bulk_scenario(cluster, name, true)
/// ```
#[macro_export]
macro_rules! on_each_cluster {
    ($test:ident = $scenario:ident($($arg:expr),* $(,)?)) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread")]
            async fn elasticsearch() {
                super::$scenario(
                    $crate::Cluster::Elasticsearch,
                    concat!(stringify!($test), "_es"),
                    $($arg),*
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn opensearch() {
                super::$scenario(
                    $crate::Cluster::OpenSearch,
                    concat!(stringify!($test), "_os"),
                    $($arg),*
                )
                .await;
            }
        }
    };
    ($($name:ident),* $(,)?) => {
        $($crate::on_each_cluster!($name = $name());)*
    };
}
