//! What comes back: typed views of the responses (serde skips every field not named here, so a
//! bulk response is never built into a `serde_json::Value`), per-item outcomes, and the reason
//! of an error body in one line.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::ItemResult;

/// How deep `caused_by` chains are followed into a reason.
const MAX_CAUSES: usize = 3;

/// How much of a body that is not an Elasticsearch error (a proxy's HTML page, …) goes into a
/// reason.
const MAX_RAW_REASON: usize = 300;

/// The `error` of an Elasticsearch/OpenSearch response: an object, or only a string (some
/// errors from the REST layer, like a 405).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum ErrorField {
    Detail(ErrorDetail),
    Text(String),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ErrorDetail {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub caused_by: Option<Box<ErrorDetail>>,
}

impl ErrorField {
    pub fn kind(&self) -> &str {
        match self {
            Self::Detail(detail) => &detail.kind,
            Self::Text(_) => "",
        }
    }

    /// The reason, followed by the reasons it was caused by: for a mapping error the useful part
    /// ("For input string: \"abc\"") is in `caused_by`.
    pub fn describe(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Detail(detail) => {
                let mut text = detail.reason.clone().unwrap_or_else(|| detail.kind.clone());
                let mut cause = detail.caused_by.as_deref();
                let mut depth = 0;
                while let Some(inner) = cause
                    && depth < MAX_CAUSES
                {
                    text.push_str(" (caused by ");
                    text.push_str(&inner.kind);
                    if let Some(reason) = &inner.reason {
                        text.push_str(": ");
                        text.push_str(reason);
                    }
                    text.push(')');
                    cause = inner.caused_by.as_deref();
                    depth += 1;
                }
                text
            }
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorField,
}

/// `(error type, reason)` of a failed response's body; the type is empty when the body is not an
/// Elasticsearch error, and the reason is then the start of the body as text.
pub(crate) fn error_of(body: &[u8]) -> (String, String) {
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) {
        return (parsed.error.kind().to_owned(), parsed.error.describe());
    }
    (String::new(), raw_reason(body))
}

/// The start of a body as one line of text.
pub(crate) fn raw_reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    match text.char_indices().nth(MAX_RAW_REASON) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// A `_bulk` response, as much of it as the outcome needs (the request asks for only these
/// fields with `filter_path`, and serde skips the rest when a proxy drops the parameter).
#[derive(Debug, Deserialize)]
pub(crate) struct BulkResponse {
    #[serde(default)]
    pub items: Vec<BulkItem>,
}

/// One item: an object with one key, the action.
#[derive(Debug, Deserialize)]
pub(crate) enum BulkItem {
    #[serde(rename = "index")]
    Index(ItemStatus),
    #[serde(rename = "create")]
    Create(ItemStatus),
    #[serde(rename = "update")]
    Update(ItemStatus),
    #[serde(rename = "delete")]
    Delete(ItemStatus),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ItemStatus {
    pub status: u16,
    #[serde(default)]
    pub error: Option<ErrorField>,
}

/// Said with every retried write an index block refused.
pub(crate) const BLOCK_HINT: &str = "(the index refuses writes: a rebuild is swapping the alias, \
     or the block was set by hand; writes are retried until it is lifted. When no \
     `sluice-consumer rebuild` runs, finish or undo the interrupted one with `sluice-consumer \
     rebuild <sink>` or `rebuild <sink> --abort`)";

/// Said with every write retried after a dynamic mapping race.
pub(crate) const MAPPING_RACE_HINT: &str = "(two writes added this field to the mapping at \
     once with different types, and the other one's type was kept; the write is retried against \
     it. Declare the field in the sink's `mappings` to choose the type yourself)";

/// Whether an item failed only because another write added the same new field at the same
/// moment with another type (`1` and `1.5`, on two shards or in two concurrent requests): both
/// asked the master for a mapping update, the first won, and the second's merge failed.
/// OpenSearch 2 and 3 answer so; Elasticsearch 9 retries on its own. Tried again, the write
/// parses against the field that now exists (a float into a `long` is coerced, the source kept
/// as sent), or fails with the document's real mapping error, which is then dead-lettered. A
/// field once mapped never races again, so the retries end.
fn is_dynamic_mapping_race(error_type: &str, reason: &str) -> bool {
    error_type == "illegal_argument_exception"
        && reason.starts_with("mapper [")
        && reason.contains("] cannot be changed from type [")
}

/// The `filter_path` of bulk requests: the status and error of every item, nothing else.
pub(crate) const BULK_FILTER_PATH: &str = "items.*.status,items.*.error";

impl BulkItem {
    fn status(self) -> ItemStatus {
        match self {
            Self::Index(status) | Self::Create(status) | Self::Update(status) => status,
            Self::Delete(status) => status,
        }
    }

    /// What the item's outcome means for the core. `is_delete` is the operation as sent.
    pub fn outcome(self, is_delete: bool) -> ItemResult {
        let ItemStatus { status, error } = self.status();
        let (error_type, reason) = match &error {
            Some(error) => (error.kind().to_owned(), error.describe()),
            None => (String::new(), format!("status {status} without an error")),
        };
        match status {
            200..=299 => ItemResult::Done,
            // Every write is versioned: a conflict means the document is already newer.
            409 if error_type == "version_conflict_engine_exception" || error.is_none() => {
                ItemResult::Stale
            }
            // Nothing to delete: the document (or, without auto-creation, its index) is missing.
            404 if is_delete => ItemResult::NotFound,
            // A block on the index (`index.blocks.write`, set by a rebuild while it swaps the
            // alias, or a disk flood stage): the document is fine, the index refuses writes for
            // now. Retried until the block goes; never dead-lettered, never committed past.
            _ if error_type == "cluster_block_exception" => ItemResult::Retry {
                status,
                reason: format!("{reason} {BLOCK_HINT}"),
            },
            429 | 500..=599 => ItemResult::Retry { status, reason },
            _ if is_dynamic_mapping_race(&error_type, &reason) => ItemResult::Retry {
                status,
                reason: format!("{reason} {MAPPING_RACE_HINT}"),
            },
            _ => ItemResult::Rejected {
                status,
                error_type,
                reason,
            },
        }
    }
}

/// A `_mget` response.
#[derive(Debug, Deserialize)]
pub(crate) struct MgetResponse {
    #[serde(default)]
    pub docs: Vec<MgetDoc>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MgetDoc {
    #[serde(default)]
    pub found: bool,
    #[serde(rename = "_version", default)]
    pub version: Option<u64>,
    #[serde(rename = "_source", default)]
    pub source: Option<Map<String, Value>>,
    #[serde(default)]
    pub error: Option<ErrorField>,
}

/// A page of a scroll.
#[derive(Debug, Deserialize)]
pub(crate) struct ScrollPage {
    #[serde(rename = "_scroll_id", default)]
    pub scroll_id: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(rename = "_shards", default)]
    pub shards: Shards,
    #[serde(default)]
    pub hits: Hits,
}

/// The `filter_path` of scroll pages. With it an empty page has no `hits` at all, hence the
/// defaults above.
pub(crate) const SCROLL_FILTER_PATH: &str = "_scroll_id,timed_out,_shards.failed,\
     _shards.failures,hits.hits._index,hits.hits._id,hits.hits._version";

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Shards {
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub failures: Vec<ShardFailure>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ShardFailure {
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub reason: Option<ErrorField>,
}

impl Shards {
    /// Why the page is incomplete, when shards failed.
    pub fn failure(&self) -> Option<String> {
        if self.failed == 0 {
            return None;
        }
        let first = self.failures.first().map(|failure| {
            let reason = failure
                .reason
                .as_ref()
                .map(ErrorField::describe)
                .unwrap_or_default();
            match &failure.index {
                Some(index) => format!(": index {index}: {reason}"),
                None => format!(": {reason}"),
            }
        });
        Some(format!(
            "{} shard(s) failed{}",
            self.failed,
            first.unwrap_or_default()
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct Hits {
    #[serde(default)]
    pub hits: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Hit {
    #[serde(rename = "_index")]
    pub index: String,
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(rename = "_version", default)]
    pub version: Option<u64>,
}

/// `GET /`.
#[derive(Debug, Deserialize)]
pub(crate) struct RootResponse {
    pub version: RootVersion,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootVersion {
    pub number: String,
    /// `opensearch` on OpenSearch; absent on Elasticsearch.
    #[serde(default)]
    pub distribution: Option<String>,
}

/// `GET /_nodes/_local` with `filter_path=nodes.*.version`.
#[derive(Debug, Deserialize)]
pub(crate) struct NodesResponse {
    #[serde(default)]
    pub nodes: HashMap<String, NodeVersion>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct NodeVersion {
    pub version: String,
}

/// `_count`.
#[derive(Debug, Deserialize)]
pub(crate) struct CountResponse {
    pub count: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

    use super::*;

    fn outcomes(body: &str, deletes: &[bool]) -> Vec<ItemResult> {
        let response: BulkResponse = serde_json::from_str(body).unwrap();
        response
            .items
            .into_iter()
            .zip(deletes)
            .map(|(item, &is_delete)| item.outcome(is_delete))
            .collect()
    }

    // Shapes as Elasticsearch 9.2 returns them (OpenSearch 2.19 only orders the fields otherwise).
    #[test]
    fn bulk_items_map_to_outcomes() {
        let body = r#"{"errors":true,"took":0,"items":[
            {"index":{"_index":"p","_id":"1","_version":5,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}},
            {"index":{"_index":"p","_id":"1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[1]: version conflict, current version [5] is higher than the one provided [4]","index_uuid":"x","shard":"0","index":"p"}}},
            {"index":{"_index":"p","_id":"2","status":400,"error":{"type":"document_parsing_exception","reason":"[1:6] failed to parse field [n] of type [long] in document with id '2'. Preview of field's value: 'abc'","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"abc\""}}}},
            {"delete":{"_index":"p","_id":"3","_version":5,"result":"not_found","status":404}},
            {"delete":{"_index":"p","_id":"1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"conflict"}}},
            {"index":{"_index":"p","_id":"4","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
            {"index":{"_index":"p","_id":"5","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"index":{"_index":"q","_id":"6","status":404,"error":{"type":"index_not_found_exception","reason":"no such index [q]"}}},
            {"delete":{"_index":"p","_id":"7","_version":1,"result":"deleted","status":200}},
            {"index":{"_index":"p-v1","_id":"8","status":403,"error":{"type":"cluster_block_exception","reason":"index [p-v1] blocked by: [FORBIDDEN/8/index write (api)];"}}},
            {"delete":{"_index":"p-v1","_id":"9","status":403,"error":{"type":"cluster_block_exception","reason":"index [p-v1] blocked by: [FORBIDDEN/8/index write (api)];"}}}
        ]}"#;
        let got = outcomes(
            body,
            &[
                false, false, false, true, true, false, false, false, true, false, true,
            ],
        );
        assert_eq!(got[0], ItemResult::Done);
        assert_eq!(got[1], ItemResult::Stale);
        assert_eq!(
            got[2],
            ItemResult::Rejected {
                status: 400,
                error_type: "document_parsing_exception".to_owned(),
                reason: "[1:6] failed to parse field [n] of type [long] in document with id '2'. \
                         Preview of field's value: 'abc' (caused by illegal_argument_exception: \
                         For input string: \"abc\")"
                    .to_owned(),
            }
        );
        assert_eq!(got[3], ItemResult::NotFound);
        assert_eq!(got[4], ItemResult::Stale);
        assert_eq!(
            got[5],
            ItemResult::Retry {
                status: 429,
                reason: "rejected execution of coordinating operation".to_owned()
            }
        );
        assert!(matches!(got[6], ItemResult::Retry { status: 503, .. }));
        assert!(matches!(
            &got[7],
            ItemResult::Rejected { status: 404, error_type, .. } if error_type == "index_not_found_exception"
        ));
        assert_eq!(got[8], ItemResult::Done);
        // A write block is waited out, for writes and deletes alike.
        for blocked in &got[9..] {
            assert!(
                matches!(blocked, ItemResult::Retry { status: 403, reason } if reason.contains("blocked by") && reason.contains("--abort")),
                "{blocked:?}"
            );
        }
    }

    // As OpenSearch 2.19 and 3.3 answer the loser of a dynamic mapping race.
    #[test]
    fn a_dynamic_mapping_race_is_retried_and_a_wrong_value_is_not() {
        let body = r#"{"items":[
            {"index":{"_index":"p","_id":"1","status":400,"error":{"type":"illegal_argument_exception","reason":"mapper [f10] cannot be changed from type [long] to [float]"}}},
            {"index":{"_index":"p","_id":"2","status":400,"error":{"type":"illegal_argument_exception","reason":"mapper [a.b] cannot be changed from type [date] to [text]"}}},
            {"index":{"_index":"p","_id":"3","status":400,"error":{"type":"illegal_argument_exception","reason":"Limit of total fields [1000] has been exceeded"}}},
            {"index":{"_index":"p","_id":"4","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n] of type [long] in document with id '4'. Preview of field's value: 'abc'"}}}
        ]}"#;
        let got = outcomes(body, &[false; 4]);
        for raced in &got[..2] {
            assert!(
                matches!(raced, ItemResult::Retry { status: 400, reason } if reason.starts_with("mapper [") && reason.contains("retried") && reason.contains("`mappings`")),
                "{raced:?}"
            );
        }
        for rejected in &got[2..] {
            assert!(
                matches!(rejected, ItemResult::Rejected { status: 400, .. }),
                "{rejected:?}"
            );
        }
    }

    #[test]
    fn filtered_bulk_response_parses() {
        let body = r#"{"items":[{"index":{"status":201}},{"delete":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"x"}}}]}"#;
        assert_eq!(
            outcomes(body, &[false, true]),
            [ItemResult::Done, ItemResult::Stale]
        );
    }

    #[test]
    fn error_bodies_give_type_and_reason() {
        let es = br#"{"error":{"root_cause":[{"type":"security_exception","reason":"unable to authenticate"}],"type":"security_exception","reason":"unable to authenticate with provided credentials","additional_unsuccessful_credentials":"API key: unable to find apikey with id foo"},"status":401}"#;
        assert_eq!(
            error_of(es),
            (
                "security_exception".to_owned(),
                "unable to authenticate with provided credentials".to_owned()
            )
        );
        let rest = br#"{"error":"Incorrect HTTP method for uri [/] and method [GET], allowed: [DELETE]","status":405}"#;
        assert_eq!(
            error_of(rest),
            (
                String::new(),
                "Incorrect HTTP method for uri [/] and method [GET], allowed: [DELETE]".to_owned()
            )
        );
        assert_eq!(
            error_of(b"Unauthorized"),
            (String::new(), "Unauthorized".to_owned())
        );
        assert_eq!(error_of(b""), (String::new(), "(empty body)".to_owned()));
        let html = format!("<html>\n<body>{}</body></html>", "x".repeat(1000));
        let (kind, reason) = error_of(html.as_bytes());
        assert!(kind.is_empty());
        assert!(reason.starts_with("<html> <body>xxx"));
        assert!(reason.chars().count() <= MAX_RAW_REASON + 1);
    }

    #[test]
    fn caused_by_chains_are_bounded() {
        let mut detail = serde_json::json!({"type": "t0", "reason": "r0"});
        for n in 1..10 {
            detail = serde_json::json!({"type": format!("t{n}"), "reason": format!("r{n}"), "caused_by": detail});
        }
        let field: ErrorField = serde_json::from_value(detail).unwrap();
        assert_eq!(
            field.describe(),
            "r9 (caused by t8: r8) (caused by t7: r7) (caused by t6: r6)"
        );
    }

    #[test]
    fn mget_docs_parse() {
        let body = r#"{"docs":[
            {"_index":"p-v1","_id":"1","_version":42,"_seq_no":0,"_primary_term":1,"found":true,"_source":{"name":"kettle"}},
            {"_index":"p-v1","_id":"2","found":false},
            {"_index":"missing","_id":"3","error":{"root_cause":[],"type":"index_not_found_exception","reason":"no such index [missing]"}}
        ]}"#;
        let response: MgetResponse = serde_json::from_str(body).unwrap();
        assert_eq!(response.docs.len(), 3);
        assert!(response.docs[0].found);
        assert_eq!(response.docs[0].version, Some(42));
        assert_eq!(response.docs[0].source.as_ref().unwrap()["name"], "kettle");
        assert!(!response.docs[1].found);
        assert_eq!(
            response.docs[2].error.as_ref().unwrap().kind(),
            "index_not_found_exception"
        );
    }

    #[test]
    fn scroll_pages_parse_with_and_without_hits() {
        let page: ScrollPage = serde_json::from_str(
            r#"{"_scroll_id":"abc","timed_out":false,"_shards":{"failed":0},"hits":{"hits":[{"_index":"p-v1","_id":"1","_version":7}]}}"#,
        )
        .unwrap();
        assert_eq!(page.scroll_id.as_deref(), Some("abc"));
        assert_eq!(page.hits.hits[0].version, Some(7));
        assert!(page.shards.failure().is_none());

        let empty: ScrollPage = serde_json::from_str(
            r#"{"_scroll_id":"abc","timed_out":false,"_shards":{"failed":0}}"#,
        )
        .unwrap();
        assert!(empty.hits.hits.is_empty());

        let failed: ScrollPage = serde_json::from_str(
            r#"{"_scroll_id":"abc","_shards":{"failed":1,"failures":[{"shard":0,"index":"p-v1","node":"n","reason":{"type":"search_context_missing_exception","reason":"No search context found"}}]}}"#,
        )
        .unwrap();
        assert_eq!(
            failed.shards.failure().unwrap(),
            "1 shard(s) failed: index p-v1: No search context found"
        );
    }

    #[test]
    fn root_info_parses_on_both_distributions() {
        let es: RootResponse = serde_json::from_str(
            r#"{"name":"n","cluster_name":"c","version":{"number":"9.2.4","build_flavor":"default","build_type":"tar"},"tagline":"You Know, for Search"}"#,
        )
        .unwrap();
        assert_eq!(es.version.number, "9.2.4");
        assert_eq!(es.version.distribution, None);
        let os: RootResponse = serde_json::from_str(
            r#"{"name":"n","version":{"distribution":"opensearch","number":"2.19.6","build_type":"zip"}}"#,
        )
        .unwrap();
        assert_eq!(os.version.distribution.as_deref(), Some("opensearch"));
        let nodes: NodesResponse =
            serde_json::from_str(r#"{"nodes":{"abc":{"version":"9.2.4"}}}"#).unwrap();
        assert_eq!(nodes.nodes["abc"].version, "9.2.4");
    }
}
