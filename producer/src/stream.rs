//! The live stream: replication events → decoded changes → ChangeEvents on Kafka, with the
//! confirmed LSN following Kafka's acknowledgements.
//!
//! ```text
//!  WalSource ─▶ decode (pgoutput) ─▶ relation cache ─▶ encode ─▶ Publisher ─▶ Kafka
//!      ▲                                                              │ delivery reports
//!      └──────────── confirm(confirmable LSN) ◀── Checkpoint ◀────────┘
//! ```
//!
//! Every change of a transaction is versioned with the LSN of the transaction's commit record,
//! which pgoutput announces in Begin (`final_lsn`), so changes are published as they are read,
//! without holding whole transactions in memory. The slot is confirmed with the commit's
//! *end* LSN once every message of that transaction (and of all before it) is acknowledged.
//!
//! Logical messages with the `sluice` prefix steer the producer: heartbeats (ignored here),
//! backfill watermarks and backfill requests. Between a chunk's low and high watermark every
//! published key of the table is noted; at the high watermark the chunk's untouched rows are
//! published as READ events inside the watermark's transaction (see [`crate::backfill`]).

use std::collections::HashMap;
use std::sync::Arc;

use metrics::Counter;
use sluice_common::config::Config;
use sluice_common::shutdown::CancellationToken;
use sluice_common::telemetry::names;
use tokio_postgres::Client;

use crate::backfill::{Backfills, Change, ChunkId, Outcome, Signal};
use crate::catalog::{self, TableInfo};
use crate::checkpoint::Checkpoint;
use crate::encode::{self, At, ColumnInfo, Outgoing, RelationInfo, TxInfo};
use crate::error::Error;
use crate::pgoutput::{self, Message, Relation, TypeKind};
use crate::publish::Publisher;
use crate::replication::{WalEvent, WalSource};
use crate::stats::{self, Stats};

/// Prefix of sluice's own logical messages (heartbeats, backfill watermarks).
pub const MESSAGE_PREFIX: &str = "sluice";

/// A relation as the stream described it, with what publishing it needs.
#[derive(Debug)]
struct Captured {
    info: RelationInfo,
    /// The columns' names, shared with backfill windows that note partial updates.
    column_names: Arc<[String]>,
    name: String,
    /// Per-op change counters, registered once.
    counters: [Counter; 4],
}

/// What outlives one replication connection: relations and types learned from the stream
/// survive reconnects, as do the publisher and the checkpoint.
#[derive(Debug)]
pub struct StreamState {
    pub config: Arc<Config>,
    pub database: Arc<str>,
    pub tables: HashMap<String, TableInfo>,
    pub partitions: HashMap<String, i32>,
    pub publisher: Arc<Publisher>,
    pub checkpoint: Arc<Checkpoint>,
    pub stats: Arc<Stats>,
    pub backfills: Arc<Backfills>,
    relations: HashMap<u32, Option<Arc<Captured>>>,
    types: HashMap<u32, (String, TypeKind)>,
    bytes: Counter,
}

struct OpenTx {
    seq: u64,
    info: TxInfo,
    index: u32,
}

impl StreamState {
    pub fn new(
        config: Arc<Config>,
        database: Arc<str>,
        publisher: Arc<Publisher>,
        checkpoint: Arc<Checkpoint>,
        stats: Arc<Stats>,
        backfills: Arc<Backfills>,
    ) -> Self {
        Self {
            config,
            database,
            tables: HashMap::new(),
            partitions: HashMap::new(),
            publisher,
            checkpoint,
            stats,
            backfills,
            relations: HashMap::new(),
            types: HashMap::new(),
            bytes: metrics::counter!(names::PRODUCER_BYTES),
        }
    }

    /// Streams until `shutdown` or an error. `sql` looks up types the stream mentions.
    pub async fn run<S: WalSource>(
        &mut self,
        source: &mut S,
        sql: &Client,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let mut open: Option<OpenTx> = None;
        // The stream resumes from the confirmed LSN, possibly inside a backfill window.
        self.backfills.session_started();
        let mut ticker = tokio::time::interval(self.config.producer.status_interval.get());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    self.confirm(source);
                    continue;
                }
                event = source.recv() => event?,
            };
            let Some(event) = event else {
                return Err(Error::Replication(
                    "the server ended the replication stream".to_owned(),
                ));
            };
            match event {
                WalEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time,
                } => {
                    open = Some(OpenTx {
                        seq: self.checkpoint.begin(),
                        info: TxInfo {
                            database: self.database.clone(),
                            commit_lsn: final_lsn,
                            xid,
                            commit_time_micros: pgoutput::pg_to_unix_micros(commit_time),
                        },
                        index: 0,
                    });
                }
                WalEvent::Commit { end_lsn, .. } => {
                    if let Some(tx) = open.take() {
                        self.checkpoint.commit(tx.seq, end_lsn);
                    }
                    self.confirm(source);
                }
                WalEvent::Data { lsn, data } => {
                    let message = pgoutput::decode(data)?;
                    self.handle(message, lsn, open.as_mut(), sql).await?;
                }
                WalEvent::KeepAlive { wal_end } => {
                    let lag = wal_end.saturating_sub(self.checkpoint.confirmable());
                    metrics::gauge!(names::PRODUCER_REPLICATION_LAG_BYTES).set(lag as f64);
                    self.confirm(source);
                }
                WalEvent::Message {
                    prefix, content, ..
                } => {
                    if prefix == MESSAGE_PREFIX {
                        self.signal(Signal::parse(&content), open.as_mut()).await?;
                    }
                    self.confirm(source);
                }
            }
            if let Some(failure) = self.checkpoint.failure() {
                return Err(Error::KafkaFatal(failure));
            }
        }
    }

    /// Acts on one of sluice's own logical messages.
    async fn signal(&mut self, signal: Signal, tx: Option<&mut OpenTx>) -> Result<(), Error> {
        match signal {
            Signal::Low(id) => self.backfills.on_low(id),
            Signal::High(id) => {
                if let Some(tx) = tx {
                    self.publish_chunk(id, tx).await?;
                }
            }
            Signal::Requested(id) => {
                tracing::debug!(backfill = id, "backfill requested");
                self.backfills.wake();
            }
            Signal::Heartbeat | Signal::Other => {}
        }
        Ok(())
    }

    /// At a high watermark: the chunk's rows the window did not touch, as READ events of the
    /// watermark's transaction, versioned with its commit LSN.
    async fn publish_chunk(&mut self, id: ChunkId, tx: &mut OpenTx) -> Result<(), Error> {
        let Some((chunk, done)) = self.backfills.on_high(id) else {
            return Ok(());
        };
        let rows = chunk.rows.len();
        // Told before publishing, so the worker reads the next chunk meanwhile; it learns that
        // these rows are acknowledged from the checkpoint, through the commit LSN.
        let _ = done.send(Outcome::Published {
            commit_lsn: tx.info.commit_lsn,
            rows,
        });
        let relation = chunk.relation;
        for row in chunk.rows {
            let at = At {
                tx: &tx.info,
                lsn: 0,
                index: tx.index,
            };
            let out = encode::read(&relation, at, row.key, &row.values);
            self.checkpoint
                .wait_below(self.config.producer.max_in_flight_messages)
                .await;
            let bytes = out.value.as_ref().map_or(0, Vec::len) + out.key.len();
            self.publisher
                .send(
                    &relation.topic,
                    &out.key,
                    out.value.as_deref(),
                    None,
                    tx.seq,
                )
                .await?;
            self.bytes.increment(bytes as u64);
            tx.index += 1;
        }
        self.stats.record_many(
            &chunk.table,
            stats::Op::Read,
            rows as u64,
            tx.info.commit_time_micros,
        );
        if chunk.completed > 0 {
            metrics::counter!(names::PRODUCER_BACKFILL_ROWS_COMPLETED, "table" => chunk.table.clone())
                .increment(chunk.completed as u64);
        }
        metrics::counter!(names::PRODUCER_BACKFILL_ROWS, "table" => chunk.table)
            .increment(rows as u64);
        Ok(())
    }

    fn confirm<S: WalSource>(&self, source: &S) {
        let lsn = self.checkpoint.confirmable();
        if lsn > 0 {
            source.confirm(lsn);
            self.stats.set_confirmed(lsn);
            metrics::gauge!(names::PRODUCER_CONFIRMED_LSN).set(lsn as f64);
        }
        metrics::gauge!(names::PRODUCER_IN_FLIGHT).set(self.checkpoint.in_flight() as f64);
    }

    async fn handle(
        &mut self,
        message: Message,
        lsn: u64,
        tx: Option<&mut OpenTx>,
        sql: &Client,
    ) -> Result<(), Error> {
        let (relation_id, kind) = match &message {
            Message::Relation(relation) => {
                let captured = self.describe(relation, sql).await?;
                self.relations.insert(relation.id, captured);
                return Ok(());
            }
            Message::Insert { relation_id, .. } => (*relation_id, 0),
            Message::Update { relation_id, .. } => (*relation_id, 1),
            Message::Delete { relation_id, .. } => (*relation_id, 2),
            Message::Truncate { relation_ids, .. } => {
                let Some(tx) = tx else { return Ok(()) };
                for id in relation_ids {
                    if let Some(Some(captured)) = self.relations.get(id).cloned() {
                        let at = At {
                            tx: &tx.info,
                            lsn,
                            index: tx.index,
                        };
                        let out = encode::truncate(&captured.info, at);
                        if self.backfills.watching() {
                            self.backfills.on_truncate(&captured.name);
                        }
                        self.publish(&captured, out, tx.seq).await?;
                        captured.counters[3].increment(1);
                        self.stats.record(
                            &captured.name,
                            stats::Op::Truncate,
                            tx.info.commit_time_micros,
                        );
                        tx.index += 1;
                    }
                }
                return Ok(());
            }
            // Types are resolved from the catalog when a relation uses them; origins and
            // transaction boundaries come through WalEvent.
            Message::Type { .. }
            | Message::Origin { .. }
            | Message::Begin { .. }
            | Message::Commit { .. }
            | Message::Message { .. } => {
                return Ok(());
            }
        };
        let Some(tx) = tx else {
            return Err(Error::Protocol(format!(
                "a change at {} outside a transaction",
                stats::format_lsn(lsn)
            )));
        };
        let captured = match self.relations.get(&relation_id) {
            Some(Some(captured)) => captured.clone(),
            Some(None) => return Ok(()), // a table in the publication that this config does not capture
            None => {
                return Err(Error::Protocol(format!(
                    "a change of relation {relation_id} arrived before its Relation message"
                )));
            }
        };
        let at = At {
            tx: &tx.info,
            lsn,
            index: tx.index,
        };
        // Only while a backfill window is open: the values of an update that left columns out.
        let mut partial: Option<Vec<Option<sluice_proto::v1::Value>>> = None;
        let encoded = match message {
            Message::Insert { new, .. } => encode::insert(&captured.info, at, &new),
            Message::Update { key, old, new, .. } => {
                if self.backfills.watching() {
                    partial = encode::partial_update(&captured.info, old.as_ref(), &new);
                }
                encode::update(&captured.info, at, key.as_ref(), old.as_ref(), &new)
            }
            Message::Delete { key, old, .. } => {
                encode::delete(&captured.info, at, key.as_ref(), old.as_ref())
            }
            _ => return Ok(()),
        };
        let out = encoded?;
        if self.backfills.watching() {
            // The update of the (new) key is the last message; a changed key's delete before it
            // is complete.
            let last = out.len().saturating_sub(1);
            let changes = out.iter().enumerate().map(|(i, o)| {
                let change = match &partial {
                    Some(values) if i == last => Change::Partial {
                        columns: &captured.column_names,
                        values,
                    },
                    _ => Change::Complete,
                };
                (o.key.as_slice(), change)
            });
            self.backfills.on_changes(&captured.name, changes);
        }
        self.checkpoint
            .wait_below(self.config.producer.max_in_flight_messages)
            .await;
        self.publish(&captured, out, tx.seq).await?;
        captured.counters[kind].increment(1);
        let op = [stats::Op::Insert, stats::Op::Update, stats::Op::Delete][kind];
        self.stats
            .record(&captured.name, op, tx.info.commit_time_micros);
        tx.index += 1;
        Ok(())
    }

    async fn publish(
        &self,
        captured: &Captured,
        out: Vec<Outgoing>,
        seq: u64,
    ) -> Result<(), Error> {
        for message in out {
            let bytes = message.value.as_ref().map_or(0, Vec::len) + message.key.len();
            self.publisher
                .send(
                    &captured.info.topic,
                    &message.key,
                    message.value.as_deref(),
                    message.partition,
                    seq,
                )
                .await?;
            self.bytes.increment(bytes as u64);
        }
        Ok(())
    }

    /// Turns a Relation message into what encoding needs, or `None` for an uncaptured table.
    /// Runs again whenever the table's shape changes (added, dropped or retyped columns).
    async fn describe(
        &mut self,
        relation: &Relation,
        sql: &Client,
    ) -> Result<Option<Arc<Captured>>, Error> {
        let name = format!("{}.{}", relation.namespace, relation.name);
        let Some(key_columns) = self.tables.get(&name).map(|t| t.key_columns.clone()) else {
            return Ok(None);
        };
        let mut columns = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let (type_name, kind) = self.type_of(column.type_oid, sql).await?;
            columns.push(ColumnInfo {
                name: column.name.clone(),
                type_name,
                kind,
            });
        }
        let mut key = Vec::with_capacity(key_columns.len());
        for key_column in &key_columns {
            let index = columns.iter().position(|c| &c.name == key_column).ok_or_else(|| {
                Error::Setup(format!(
                    "key column `{key_column}` of {name} is not in the table any more: restore it or change the key in the config"
                ))
            })?;
            key.push(index);
        }
        let topic = self.config.topic_for(&name);
        let partitions = self.partitions.get(&topic).copied().unwrap_or(1);
        let counter = |op: &'static str| metrics::counter!(names::PRODUCER_CHANGES, "table" => name.clone(), "op" => op);
        tracing::debug!(table = %name, columns = columns.len(), "relation described");
        let column_names = columns.iter().map(|c| c.name.clone()).collect();
        Ok(Some(Arc::new(Captured {
            column_names,
            counters: [
                counter("insert"),
                counter("update"),
                counter("delete"),
                counter("truncate"),
            ],
            info: RelationInfo {
                schema: relation.namespace.clone(),
                table: relation.name.clone(),
                topic,
                partitions,
                columns,
                key,
            },
            name,
        })))
    }

    async fn type_of(&mut self, oid: u32, sql: &Client) -> Result<(String, TypeKind), Error> {
        if let Some((name, kind)) = pgoutput::builtin(oid) {
            return Ok((name.to_owned(), kind));
        }
        if let Some(known) = self.types.get(&oid) {
            return Ok(known.clone());
        }
        let resolved = catalog::resolve_type(sql, oid).await?;
        self.types.insert(oid, resolved.clone());
        Ok(resolved)
    }
}
