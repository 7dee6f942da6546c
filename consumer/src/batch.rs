//! Items waiting to be written: the open batch, the collapse of one document's events inside
//! it, and the writes that must wait for an earlier batch.
//!
//! Per-key order: inside a batch, a later event of one document replaces the earlier one (a
//! partial update is merged onto it). Across batches, versions (`commit_lsn`, `external_gte`)
//! order the writes, except for two cases that versions cannot order: two events of one
//! transaction (same version: the order decides) and a partial update (it reads the current
//! document). An event in one of those cases waits until the batch in flight holding its
//! document is done ([`InFlight::conflicts`]).

use std::hash::BuildHasher as _;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value};
use sluice_common::config::SinkConfig;

use crate::dead_letter::{DeadLetter, Original};
use crate::elastic::{self, BulkOp};
use crate::offsets::Slot;
use crate::stats::Outcome;

/// A document identity: index and `_id`.
pub type DocKey = (String, String);

/// A document identity borrowed from an item, to find its entry without copying its index and
/// id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyRef<'a>(&'a str, &'a str);

/// Hashes document identities with foldhash (SipHash was 2% of a drain's CPU). A document id
/// comes from a row, so a table could be filled with ids that collide on purpose: foldhash is
/// seeded per process, and a batch holds at most `batch_size` documents.
#[derive(Debug, Default)]
struct KeyHasher(hashbrown::DefaultHashBuilder);

impl KeyHasher {
    fn hash(&self, key: KeyRef<'_>) -> u64 {
        self.0.hash_one(key)
    }
}

/// What to write for a document.
#[derive(Debug)]
pub enum Write {
    Full(Bytes),
    /// A document without the unchanged TOAST columns: merged onto the indexed one first.
    Partial(Map<String, Value>),
    Delete,
}

/// A write the route stage made of one event.
#[derive(Debug)]
pub struct Doc {
    pub index: String,
    pub id: String,
    pub version: u64,
    pub write: Write,
    /// What success means: indexed, deleted, or filtered (a delete of a row that left the filter).
    pub outcome: Outcome,
}

/// The events an item settles, and what a dead letter of it carries.
#[derive(Debug)]
pub struct Ticket {
    pub slot: Slot,
    /// Earlier events of the same document in the same batch, replaced by this one.
    pub replaced: Vec<Slot>,
    pub original: Original,
    pub commit_micros: i64,
}

/// One document's write with the events behind it.
#[derive(Debug)]
pub struct Item {
    pub doc: Doc,
    pub ticket: Ticket,
}

/// An item whose write can be sent as it is.
#[derive(Debug)]
pub struct Ready {
    pub op: BulkOp,
    pub outcome: Outcome,
    pub ticket: Ticket,
}

/// A partial update, to complete from the indexed document before it can be sent.
#[derive(Debug)]
pub struct Partial {
    pub index: String,
    pub id: String,
    pub version: u64,
    pub fields: Map<String, Value>,
    pub outcome: Outcome,
    pub ticket: Ticket,
}

impl Item {
    pub fn key(&self) -> DocKey {
        (self.doc.index.clone(), self.doc.id.clone())
    }

    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef(&self.doc.index, &self.doc.id)
    }

    /// What the item adds to a bulk body: a partial update is counted at the size of its event.
    fn bytes(&self) -> usize {
        let document = match &self.doc.write {
            Write::Full(bytes) => Some(bytes.len()),
            Write::Partial(_) => Some(self.ticket.original.payload.as_ref().map_or(0, Bytes::len)),
            Write::Delete => None,
        };
        elastic::estimated_bytes(&self.doc.index, &self.doc.id, document)
    }

    /// The bulk operation, or the partial update that must be completed first.
    pub fn into_ready(self) -> Result<Ready, Box<Partial>> {
        let Doc {
            index,
            id,
            version,
            write,
            outcome,
        } = self.doc;
        let op = match write {
            Write::Full(document) => BulkOp::Index {
                index,
                id,
                version,
                document,
            },
            Write::Delete => BulkOp::Delete { index, id, version },
            Write::Partial(fields) => {
                return Err(Box::new(Partial {
                    index,
                    id,
                    version,
                    fields,
                    outcome,
                    ticket: self.ticket,
                }));
            }
        };
        Ok(Ready {
            op,
            outcome,
            ticket: self.ticket,
        })
    }
}

/// An event that goes to the dead-letter topic before reaching the cluster.
#[derive(Debug)]
pub struct Letter {
    pub slot: Slot,
    pub original: Original,
    pub letter: DeadLetter,
}

#[derive(Debug, Default)]
pub struct Batch {
    items: Vec<Item>,
    /// Where each document's item is in `items`: indices hashed by the item's key, so the
    /// batch keeps no copy of it.
    by_key: hashbrown::HashTable<usize>,
    hasher: KeyHasher,
    letters: Vec<Letter>,
    bytes: usize,
    opened: Option<Instant>,
}

impl Batch {
    /// Items and letters.
    pub fn len(&self) -> usize {
        self.items.len() + self.letters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    pub fn is_full(&self, config: &SinkConfig) -> bool {
        self.len() >= config.elasticsearch.batch_size
            || self.bytes >= config.elasticsearch.batch_max_bytes
    }

    /// Adds `item`, replacing an earlier event of the same document.
    pub fn push(&mut self, item: Item) {
        self.opened.get_or_insert_with(Instant::now);
        self.bytes += item.bytes();
        let Self {
            items,
            by_key,
            hasher,
            ..
        } = self;
        let hash = hasher.hash(item.key_ref());
        match by_key.find(hash, |&at| items[at].key_ref() == item.key_ref()) {
            Some(&at) => {
                let earlier = std::mem::replace(&mut items[at], item);
                let item = &mut items[at];
                item.ticket.replaced.push(earlier.ticket.slot);
                item.ticket.replaced.extend(earlier.ticket.replaced);
                if let Write::Partial(partial) = &mut item.doc.write {
                    match earlier.doc.write {
                        Write::Full(document) => {
                            if let Ok(mut merged) =
                                serde_json::from_slice::<Map<String, Value>>(&document)
                            {
                                merged.append(partial);
                                if let Ok(bytes) = serde_json::to_vec(&merged) {
                                    item.doc.write = Write::Full(bytes.into());
                                }
                            }
                        }
                        Write::Partial(mut earlier_partial) => {
                            earlier_partial.append(partial);
                            *partial = earlier_partial;
                        }
                        Write::Delete => {}
                    }
                }
            }
            None => {
                by_key.insert_unique(hash, items.len(), |&at| hasher.hash(items[at].key_ref()));
                items.push(item);
            }
        }
    }

    /// Adds an event that goes to the dead-letter topic with this batch.
    pub fn push_letter(&mut self, letter: Letter) {
        self.opened.get_or_insert_with(Instant::now);
        self.letters.push(letter);
    }

    pub fn take(&mut self) -> (Vec<Item>, Vec<Letter>) {
        self.by_key.clear();
        self.bytes = 0;
        self.opened = None;
        // The next batch is likely as big: no regrowing from empty.
        let capacity = self.items.len();
        let items = std::mem::replace(&mut self.items, Vec::with_capacity(capacity));
        (items, std::mem::take(&mut self.letters))
    }
}

/// Documents in batches in flight: the highest version and how many batches hold each.
#[derive(Debug, Default)]
pub struct InFlight {
    entries: hashbrown::HashTable<Entry>,
    hasher: KeyHasher,
    /// Numbers the entries, so a batch can name its own when it is done.
    next_id: u64,
}

#[derive(Debug)]
struct Entry {
    key: DocKey,
    id: u64,
    version: u64,
    batches: usize,
}

impl Entry {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef(&self.key.0, &self.key.1)
    }
}

/// The documents of one batch in flight, as [`InFlight::add`] recorded them (hash and entry
/// id of each): what [`InFlight::remove`] takes back when the batch is done.
#[derive(Debug, Default)]
pub struct Held(Vec<(u64, u64)>);

impl InFlight {
    /// Whether `item` must wait for a batch in flight: same document, and either the same
    /// version (one transaction; order decides) or a partial update (it reads the document).
    pub fn conflicts(&self, item: &Item) -> bool {
        let key = item.key_ref();
        self.entries
            .find(self.hasher.hash(key), |entry| entry.key_ref() == key)
            .is_some_and(|entry| {
                entry.version == item.doc.version || matches!(item.doc.write, Write::Partial(_))
            })
    }

    /// Records the documents of a batch going out (each document once: a batch holds one item
    /// per document).
    pub fn add(&mut self, items: &[Item]) -> Held {
        let mut held = Vec::with_capacity(items.len());
        for item in items {
            let key = item.key_ref();
            let hash = self.hasher.hash(key);
            let id = match self.entries.find_mut(hash, |entry| entry.key_ref() == key) {
                Some(entry) => {
                    entry.version = entry.version.max(item.doc.version);
                    entry.batches += 1;
                    entry.id
                }
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let entry = Entry {
                        key: item.key(),
                        id,
                        version: item.doc.version,
                        batches: 1,
                    };
                    let hasher = &self.hasher;
                    self.entries
                        .insert_unique(hash, entry, |entry| hasher.hash(entry.key_ref()));
                    id
                }
            };
            held.push((hash, id));
        }
        Held(held)
    }

    /// The batch `held` describes is done.
    pub fn remove(&mut self, held: Held) {
        for (hash, id) in held.0 {
            if let Ok(mut found) = self.entries.find_entry(hash, |entry| entry.id == id) {
                let entry = found.get_mut();
                entry.batches -= 1;
                if entry.batches == 0 {
                    found.remove();
                }
            }
        }
    }

    /// How many documents are in flight.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// An indexed item of `products` at version 100 + offset.
    pub(crate) fn item(id: &str, offset: i64, write: Write) -> Item {
        Item {
            doc: Doc {
                index: "products".to_owned(),
                id: id.to_owned(),
                version: 100 + u64::try_from(offset).unwrap(),
                write,
                outcome: Outcome::Indexed,
            },
            ticket: Ticket {
                slot: slot(offset),
                replaced: Vec::new(),
                original: Original {
                    topic: "t".into(),
                    partition: 0,
                    offset,
                    key: None,
                    payload: None,
                },
                commit_micros: 0,
            },
        }
    }

    pub(crate) fn slot(offset: i64) -> Slot {
        Slot {
            partition: 0,
            generation: 1,
            offset,
        }
    }

    pub(crate) fn full(json: Value) -> Write {
        Write::Full(serde_json::to_vec(&json).unwrap().into())
    }

    pub(crate) fn partial(json: Value) -> Write {
        let Value::Object(fields) = json else {
            panic!("not an object: {json}");
        };
        Write::Partial(fields)
    }

    #[test]
    fn a_later_event_of_a_document_replaces_the_earlier_one_in_the_batch() {
        let mut batch = Batch::default();
        batch.push(item("1", 10, full(serde_json::json!({"a": 1}))));
        batch.push(item("2", 11, full(serde_json::json!({"a": 2}))));
        batch.push(item("1", 12, Write::Delete));
        assert_eq!(batch.len(), 2);
        let (items, _) = batch.take();
        assert!(matches!(items[0].doc.write, Write::Delete));
        assert_eq!(items[0].doc.version, 112);
        assert_eq!(items[0].ticket.replaced, [slot(10)]);
        assert!(batch.by_key.is_empty() && batch.opened.is_none());
    }

    #[test]
    fn a_partial_update_after_a_full_document_in_the_batch_becomes_full() {
        let mut batch = Batch::default();
        batch.push(item(
            "1",
            10,
            full(serde_json::json!({"title": "a", "body": "long"})),
        ));
        batch.push(item("1", 11, partial(serde_json::json!({"title": "b"}))));
        let (items, _) = batch.take();
        let Write::Full(bytes) = &items[0].doc.write else {
            panic!("still partial: {:?}", items[0].doc.write);
        };
        let merged: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(merged, serde_json::json!({"title": "b", "body": "long"}));
        assert_eq!(items[0].doc.version, 111);
    }

    #[test]
    fn same_version_and_partial_updates_wait_for_the_batch_in_flight() {
        let mut in_flight = InFlight::default();
        let sent = [item("1", 10, full(serde_json::json!({"a": 1})))];
        let held = in_flight.add(&sent);
        // Same transaction (same version): order matters, versions cannot tell.
        let mut same = item("1", 99, full(serde_json::json!({"a": 2})));
        same.doc.version = 110;
        assert!(in_flight.conflicts(&same));
        // Newer version: external_gte orders it, no wait.
        assert!(!in_flight.conflicts(&item("1", 11, Write::Delete)));
        // A partial update reads the document: it waits whatever its version.
        assert!(in_flight.conflicts(&item("1", 12, partial(serde_json::json!({"a": 3})))));
        // Another document does not wait.
        assert!(!in_flight.conflicts(&item("2", 10, partial(serde_json::json!({"a": 3})))));
        in_flight.remove(held);
        assert!(!in_flight.conflicts(&same));
        assert_eq!(in_flight.len(), 0);
    }

    #[test]
    fn a_document_in_two_batches_in_flight_is_held_until_both_are_done() {
        let mut in_flight = InFlight::default();
        let first = in_flight.add(&[
            item("1", 10, full(serde_json::json!({"a": 1}))),
            item("2", 11, full(serde_json::json!({"a": 1}))),
        ]);
        let second = in_flight.add(&[item("1", 20, full(serde_json::json!({"a": 2})))]);
        // The highest version in flight is what a same-version event is compared with.
        let mut same = item("1", 99, Write::Delete);
        same.doc.version = 120;
        assert!(in_flight.conflicts(&same));
        in_flight.remove(first);
        assert!(in_flight.conflicts(&same), "still in the second batch");
        assert_eq!(in_flight.len(), 1);
        in_flight.remove(second);
        assert!(!in_flight.conflicts(&same));
        // Documents added after others were released are found again.
        let third = in_flight.add(&[
            item("3", 30, full(serde_json::json!({"a": 3}))),
            item("4", 31, full(serde_json::json!({"a": 4}))),
            item("5", 32, full(serde_json::json!({"a": 5}))),
        ]);
        assert_eq!(in_flight.len(), 3);
        for (id, version) in [("3", 130), ("4", 131), ("5", 132)] {
            let mut probe = item(id, 0, Write::Delete);
            probe.doc.version = version;
            assert!(in_flight.conflicts(&probe), "{id}");
        }
        in_flight.remove(third);
        assert_eq!(in_flight.len(), 0);
    }

    #[test]
    fn the_batch_estimate_is_the_bulk_body_estimate() {
        let mut batch = Batch::default();
        let item = item("1", 10, full(serde_json::json!({"a": 1})));
        let expected = match item.doc.write {
            Write::Full(ref document) => BulkOp::Index {
                index: item.doc.index.clone(),
                id: item.doc.id.clone(),
                version: item.doc.version,
                document: document.clone(),
            }
            .estimated_bytes(),
            _ => unreachable!(),
        };
        batch.push(item);
        assert_eq!(batch.bytes, expected);
    }
}
