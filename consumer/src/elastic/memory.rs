//! An in-memory index for unit tests of delivery: a [`BulkWriter`] that keeps documents with
//! their external versions and refuses what Elasticsearch refuses.
//!
//! * `external_gte`: a write with an older version than the stored one is a 409 (stale), the
//!   same or a newer one wins; a delete of a missing document is a 404.
//! * a document carrying the field named by [`MemoryIndex::reject_field`] is a per-item 400
//!   `document_parsing_exception` (a mapping conflict);
//! * a request carrying an id of [`MemoryIndex::too_large`] fails as a whole with 413;
//! * [`MemoryIndex::busy`] makes an item answer 429 a number of times, and
//!   [`MemoryIndex::unavailable`] whole requests 503;
//! * [`State::blocked`] makes writes to an index answer what a write-blocked index answers
//!   (403 `cluster_block_exception`, read through the real response parser) a number of times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Mutex, MutexGuard};

use serde_json::{Map, Value};

use super::{BulkOp, BulkWriter, ElasticError, ItemResult, Stored};

#[derive(Debug, Default)]
pub struct MemoryIndex {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
pub struct State {
    /// (index, id) → (version, source).
    pub docs: BTreeMap<(String, String), (u64, Map<String, Value>)>,
    /// Documents with this field are rejected with 400.
    pub reject_field: Option<String>,
    /// A request carrying one of these ids fails as a whole with 413.
    pub too_large: HashSet<String>,
    /// Deletes of these ids are rejected with 400.
    pub refuse_delete: HashSet<String>,
    /// How many more times an id answers 429.
    pub busy: HashMap<String, usize>,
    /// Index → how many more writes to it answer as a write-blocked index does.
    pub blocked: HashMap<String, usize>,
    /// How many more bulk requests fail as a whole with 503.
    pub unavailable: usize,
    /// The number of operations of every bulk request received, in order.
    pub requests: Vec<usize>,
}

impl MemoryIndex {
    /// The state, to arrange a test or to look at the index after it.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a document as if indexed earlier.
    pub fn put(&self, index: &str, id: &str, version: u64, source: Value) {
        let Value::Object(source) = source else {
            panic!("not an object: {source}");
        };
        self.state()
            .docs
            .insert((index.to_owned(), id.to_owned()), (version, source));
    }

    /// The stored document: its version and source.
    pub fn get(&self, index: &str, id: &str) -> Option<(u64, Value)> {
        self.state()
            .docs
            .get(&(index.to_owned(), id.to_owned()))
            .map(|(version, source)| (*version, Value::Object(source.clone())))
    }

    fn write(state: &mut State, op: &BulkOp) -> ItemResult {
        if let Some(refused) = op.refusal() {
            return refused;
        }
        if let Some(left) = state.busy.get_mut(op.id())
            && *left > 0
        {
            *left -= 1;
            return ItemResult::Retry {
                status: 429,
                reason: "es_rejected_execution_exception: queue full".to_owned(),
            };
        }
        if let Some(left) = state.blocked.get_mut(op.index())
            && *left > 0
        {
            *left -= 1;
            return blocked(op);
        }
        let key = (op.index().to_owned(), op.id().to_owned());
        let stored = state.docs.get(&key).map(|(version, _)| *version);
        if stored.is_some_and(|stored| stored > op.version()) {
            return ItemResult::Stale;
        }
        match op {
            BulkOp::Delete { .. } if state.refuse_delete.contains(op.id()) => rejected(
                "illegal_argument_exception",
                "deletes of this document are refused",
            ),
            BulkOp::Delete { .. } => match state.docs.remove(&key) {
                Some(_) => ItemResult::Done,
                None => ItemResult::NotFound,
            },
            BulkOp::Index {
                version, document, ..
            } => {
                let Ok(source) = serde_json::from_slice::<Map<String, Value>>(document) else {
                    return rejected("document_parsing_exception", "not a JSON object");
                };
                if let Some(field) = &state.reject_field
                    && source.contains_key(field)
                {
                    return rejected(
                        "document_parsing_exception",
                        &format!("failed to parse field [{field}] of type [long]"),
                    );
                }
                state.docs.insert(key, (*version, source));
                ItemResult::Done
            }
        }
    }
}

/// The answer of Elasticsearch 9.2 to a write into an index with `index.blocks.write: true`.
fn blocked(op: &BulkOp) -> ItemResult {
    let action = if op.is_delete() { "delete" } else { "index" };
    let item = serde_json::json!({ action: {
        "_index": op.index(), "_id": op.id(), "status": 403,
        "error": {
            "type": "cluster_block_exception",
            "reason": format!("index [{}] blocked by: [FORBIDDEN/8/index write (api)];", op.index()),
        },
    }});
    match serde_json::from_value::<super::response::BulkItem>(item) {
        Ok(item) => item.outcome(op.is_delete()),
        Err(error) => rejected("test", &error.to_string()),
    }
}

fn rejected(error_type: &str, reason: &str) -> ItemResult {
    ItemResult::Rejected {
        status: 400,
        error_type: error_type.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len())
                .filter(|&at| rest.is_char_boundary(at))
                .any(|at| matches(tail, &rest[at..]))
        }
    }
}

impl BulkWriter for MemoryIndex {
    fn bulk(
        &self,
        ops: &[&BulkOp],
    ) -> impl Future<Output = Result<Vec<ItemResult>, ElasticError>> + Send {
        let mut state = self.state();
        state.requests.push(ops.len());
        let answer = if state.unavailable > 0 {
            state.unavailable -= 1;
            Err(ElasticError::Retryable {
                reason: "POST /_bulk failed: unavailable (HTTP 503)".to_owned(),
            })
        } else if ops.iter().any(|op| state.too_large.contains(op.id())) {
            Err(ElasticError::Fatal {
                status: 413,
                reason: "POST /_bulk failed: request entity too large".to_owned(),
            })
        } else {
            Ok(ops.iter().map(|op| Self::write(&mut state, op)).collect())
        };
        drop(state);
        std::future::ready(answer)
    }

    fn mget(
        &self,
        index: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Stored>, ElasticError>> + Send {
        let state = self.state();
        let found = ids
            .iter()
            .map(|id| state.docs.get(&(index.to_owned(), id.clone())).cloned())
            .collect();
        drop(state);
        std::future::ready(Ok(found))
    }

    fn scan_versions(
        &self,
        index: &str,
    ) -> impl Future<Output = Result<Vec<(String, String, u64)>, ElasticError>> + Send {
        let state = self.state();
        let found = state
            .docs
            .iter()
            .filter(|((name, _), _)| matches(index, name))
            .map(|((name, id), (version, _))| (name.clone(), id.clone(), *version))
            .collect();
        drop(state);
        std::future::ready(Ok(found))
    }

    fn refresh(&self, _index: &str) -> impl Future<Output = Result<(), ElasticError>> + Send {
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns_match_like_index_patterns() {
        assert!(matches("orders-*", "orders-acme"));
        assert!(matches("orders-*-*", "orders-acme-eu"));
        assert!(!matches("orders-*-*", "orders-acme"));
        assert!(matches("products", "products"));
        assert!(!matches("products", "products-v1"));
    }
}
