//! What goes over the wire: bulk operations and the NDJSON body of a `_bulk` request, the small
//! JSON bodies of the other calls, and gzip.

use std::io::Write as _;

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::{ElasticError, ItemResult, MAX_VERSION};

/// `version_type` of every write: a write with the same version as the stored document wins (so
/// several changes of one row in one transaction, which share a commit LSN, apply in order), an
/// older one fails with 409.
const VERSION_TYPE: &str = "external_gte";

/// Bytes of an action line besides the index name, the id and the version digits:
/// `{"delete":{"_index":"","_id":"","version":,"version_type":"external_gte"}}` and its newline.
const ACTION_LINE_OVERHEAD: usize = 75;

/// Digits of the largest version (`i64::MAX` has 19).
const VERSION_DIGITS: usize = 19;

/// About how many bytes one operation adds to a bulk body (before compression): its action line
/// and, for an index operation, the document of `document` bytes on a line of its own. The one
/// estimate both the batcher (against `batch_max_bytes`) and the body's allocation use.
pub fn estimated_bytes(index: &str, id: &str, document: Option<usize>) -> usize {
    ACTION_LINE_OVERHEAD + VERSION_DIGITS + index.len() + id.len() + document.map_or(0, |n| n + 1)
}

/// Priority of the index templates sluice puts: above the built-in templates of Elasticsearch
/// (`logs-*-*`, `metrics-*-*`, … at 100, and the ones documented up to 500), so a sink's pattern
/// that overlaps one of them still gets the sink's settings and mappings.
pub const TEMPLATE_PRIORITY: u32 = 501;

/// One write of a `_bulk` request. Both carry `version` with `version_type=external_gte`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkOp {
    /// Index (create or replace) the document `id` of `index`. `document` is the already
    /// serialized JSON object (one line or several: newlines between JSON tokens are removed).
    Index {
        index: String,
        id: String,
        version: u64,
        document: Bytes,
    },
    /// Delete the document `id` of `index`, unless it has a newer version.
    Delete {
        index: String,
        id: String,
        version: u64,
    },
}

impl BulkOp {
    /// About how many bytes this operation adds to a bulk body (before compression); what a
    /// batch sums up against `batch_max_bytes` ([`estimated_bytes`]).
    pub fn estimated_bytes(&self) -> usize {
        match self {
            Self::Index {
                index,
                id,
                document,
                ..
            } => estimated_bytes(index, id, Some(document.len())),
            Self::Delete { index, id, .. } => estimated_bytes(index, id, None),
        }
    }

    pub fn index(&self) -> &str {
        match self {
            Self::Index { index, .. } | Self::Delete { index, .. } => index,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Self::Index { id, .. } | Self::Delete { id, .. } => id,
        }
    }

    pub fn version(&self) -> u64 {
        match self {
            Self::Index { version, .. } | Self::Delete { version, .. } => *version,
        }
    }

    pub fn is_delete(&self) -> bool {
        matches!(self, Self::Delete { .. })
    }

    /// Why this operation cannot be sent at all, as the result the server would have given it.
    /// Sending it would fail the whole request (a version above `i64::MAX` does not parse; a
    /// document that is not one JSON object breaks the NDJSON framing of every item after it).
    pub(crate) fn refusal(&self) -> Option<ItemResult> {
        if self.version() > MAX_VERSION {
            return Some(ItemResult::Rejected {
                status: 400,
                error_type: "version_out_of_range".to_owned(),
                reason: format!(
                    "version {} of document [{}] is above {MAX_VERSION}, the largest external \
                     version Elasticsearch accepts",
                    self.version(),
                    self.id()
                ),
            });
        }
        if let Self::Index { document, .. } = self
            && document.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        {
            return Some(ItemResult::Rejected {
                status: 400,
                error_type: "invalid_document".to_owned(),
                reason: format!("document [{}] is not a JSON object", self.id()),
            });
        }
        None
    }
}

#[derive(Serialize)]
enum ActionLine<'a> {
    #[serde(rename = "index")]
    Index(ActionMeta<'a>),
    #[serde(rename = "delete")]
    Delete(ActionMeta<'a>),
}

#[derive(Serialize)]
struct ActionMeta<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a str,
    version: u64,
    version_type: &'static str,
}

/// The NDJSON body of a `_bulk` request: an action line per operation, followed for `index` by
/// the document on a line of its own. One allocation of the estimated size.
pub(crate) fn bulk_body(ops: &[&BulkOp]) -> Result<Vec<u8>, ElasticError> {
    let capacity = ops.iter().map(|op| op.estimated_bytes()).sum();
    let mut body = Vec::with_capacity(capacity);
    for op in ops {
        let meta = ActionMeta {
            index: op.index(),
            id: op.id(),
            version: op.version(),
            version_type: VERSION_TYPE,
        };
        let line = match op {
            BulkOp::Index { .. } => ActionLine::Index(meta),
            BulkOp::Delete { .. } => ActionLine::Delete(meta),
        };
        serde_json::to_writer(&mut body, &line).map_err(|error| {
            ElasticError::internal(format!("could not write a bulk action line: {error}"))
        })?;
        body.push(b'\n');
        if let BulkOp::Index { document, .. } = op {
            push_single_line(&mut body, document);
            body.push(b'\n');
        }
    }
    Ok(body)
}

/// Appends a JSON document, replacing raw newlines by spaces. JSON strings cannot hold a raw
/// newline (it must be escaped), so a raw one is whitespace between tokens and the document
/// means the same on one line, which NDJSON needs.
fn push_single_line(body: &mut Vec<u8>, document: &[u8]) {
    if document.contains(&b'\n') {
        body.extend(document.iter().map(|&b| if b == b'\n' { b' ' } else { b }));
    } else {
        body.extend_from_slice(document);
    }
}

/// Body of `PUT /{alias}-v1`: the index with its settings and mappings, and `alias` as its
/// write alias, created in one cluster state update (so a reader never sees one without the other).
pub(crate) fn create_index_body(
    alias: &str,
    settings: Option<&Value>,
    mappings: Option<&Value>,
) -> Value {
    let mut aliases = Map::new();
    aliases.insert(alias.to_owned(), json!({ "is_write_index": true }));
    let mut body = Map::new();
    body.insert("aliases".to_owned(), Value::Object(aliases));
    if let Some(settings) = settings {
        body.insert("settings".to_owned(), settings.clone());
    }
    if let Some(mappings) = mappings {
        body.insert("mappings".to_owned(), mappings.clone());
    }
    Value::Object(body)
}

/// Body of `PUT /_index_template/{name}`: a composable template (Elasticsearch 7.8+, OpenSearch
/// 1.0+) for `pattern`.
pub(crate) fn index_template_body(
    pattern: &str,
    settings: Option<&Value>,
    mappings: Option<&Value>,
) -> Value {
    let mut template = Map::new();
    if let Some(settings) = settings {
        template.insert("settings".to_owned(), settings.clone());
    }
    if let Some(mappings) = mappings {
        template.insert("mappings".to_owned(), mappings.clone());
    }
    json!({
        "index_patterns": [pattern],
        "priority": TEMPLATE_PRIORITY,
        "template": template,
        "_meta": { "managed_by": "sluice" },
    })
}

/// Body of the first page of a scan: every document, in index order (the cheapest sort), with
/// its version and without its source.
pub(crate) fn scan_body(page_size: usize) -> Value {
    json!({
        "size": page_size,
        "sort": ["_doc"],
        "_source": false,
        "version": true,
        "query": { "match_all": {} },
    })
}

pub(crate) fn to_json(value: &impl Serialize) -> Result<Vec<u8>, ElasticError> {
    serde_json::to_vec(value)
        .map_err(|error| ElasticError::internal(format!("could not write a request body: {error}")))
}

/// Gzip at the fastest level: bulk bodies are repetitive JSON, so even the fastest level shrinks
/// them several times, at a fraction of the CPU of the default level.
pub(crate) fn gzip(body: &[u8]) -> Result<Vec<u8>, ElasticError> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(body)
        .and_then(|()| encoder.finish())
        .map_err(|error| ElasticError::internal(format!("could not gzip a request body: {error}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

    use std::io::Read as _;

    use super::*;

    fn index(id: &str, version: u64, document: &str) -> BulkOp {
        BulkOp::Index {
            index: "products".to_owned(),
            id: id.to_owned(),
            version,
            document: Bytes::from(document.to_owned()),
        }
    }

    fn delete(id: &str, version: u64) -> BulkOp {
        BulkOp::Delete {
            index: "products".to_owned(),
            id: id.to_owned(),
            version,
        }
    }

    #[test]
    fn bulk_body_is_ndjson_with_external_gte_versions() {
        let ops = [index("1", 42, r#"{"name":"kettle"}"#), delete("2", 43)];
        let refs: Vec<&BulkOp> = ops.iter().collect();
        let body = String::from_utf8(bulk_body(&refs).unwrap()).unwrap();
        assert_eq!(
            body,
            concat!(
                r#"{"index":{"_index":"products","_id":"1","version":42,"version_type":"external_gte"}}"#,
                "\n",
                r#"{"name":"kettle"}"#,
                "\n",
                r#"{"delete":{"_index":"products","_id":"2","version":43,"version_type":"external_gte"}}"#,
                "\n",
            )
        );
    }

    #[test]
    fn ids_are_json_escaped() {
        let ops = [delete("a\"b\\c\nd", 1)];
        let refs: Vec<&BulkOp> = ops.iter().collect();
        let body = bulk_body(&refs).unwrap();
        let line = std::str::from_utf8(&body).unwrap().trim_end_matches('\n');
        assert!(!line.contains('\n'), "one line: {line}");
        let parsed: Value = serde_json::from_str(line).unwrap();
        assert_eq!(parsed["delete"]["_id"], "a\"b\\c\nd");
    }

    #[test]
    fn multi_line_documents_become_one_line() {
        let ops = [index("1", 1, "{\n  \"text\": \"a\\nb\"\n}")];
        let refs: Vec<&BulkOp> = ops.iter().collect();
        let body = String::from_utf8(bulk_body(&refs).unwrap()).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines.len(), 2);
        let document: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(document["text"], "a\nb");
    }

    #[test]
    fn estimate_covers_the_body() {
        let ops = [
            index("1", MAX_VERSION, r#"{"name":"kettle"}"#),
            delete("2", MAX_VERSION),
            index("\u{e9}t\u{e9}", 0, "{}"),
        ];
        let refs: Vec<&BulkOp> = ops.iter().collect();
        let body = bulk_body(&refs).unwrap();
        let estimate: usize = ops.iter().map(BulkOp::estimated_bytes).sum();
        assert!(
            estimate >= body.len(),
            "estimate {estimate} < {}",
            body.len()
        );
        assert!(
            estimate < body.len() + 3 * 40,
            "estimate {estimate} is far off"
        );
    }

    #[test]
    fn unsendable_operations_are_refused() {
        assert!(index("1", MAX_VERSION, "{}").refusal().is_none());
        assert!(delete("1", MAX_VERSION).refusal().is_none());
        match delete("1", MAX_VERSION + 1).refusal() {
            Some(ItemResult::Rejected {
                status: 400,
                error_type,
                ..
            }) => assert_eq!(error_type, "version_out_of_range"),
            other => panic!("unexpected {other:?}"),
        }
        for document in ["", "  ", "[1]", "null"] {
            match index("1", 1, document).refusal() {
                Some(ItemResult::Rejected { error_type, .. }) => {
                    assert_eq!(error_type, "invalid_document");
                }
                other => panic!("unexpected {other:?} for {document:?}"),
            }
        }
        assert!(index("1", 1, " \n{}").refusal().is_none());
    }

    #[test]
    fn create_index_body_has_the_write_alias() {
        let settings = json!({"number_of_shards": 1});
        let body = create_index_body("products", Some(&settings), None);
        assert_eq!(
            body,
            json!({
                "aliases": {"products": {"is_write_index": true}},
                "settings": {"number_of_shards": 1},
            })
        );
    }

    #[test]
    fn template_body_has_pattern_priority_and_template() {
        let mappings = json!({"properties": {"n": {"type": "long"}}});
        let body = index_template_body("orders-*", None, Some(&mappings));
        assert_eq!(body["index_patterns"], json!(["orders-*"]));
        assert_eq!(body["priority"], json!(TEMPLATE_PRIORITY));
        assert_eq!(body["template"], json!({"mappings": mappings}));
    }

    #[test]
    fn gzip_round_trips() {
        let body = b"{\"index\":{}}\n{}\n".repeat(1000);
        let compressed = gzip(&body).unwrap();
        assert!(compressed.len() < body.len() / 10);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, body);
    }
}
