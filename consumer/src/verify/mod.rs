//! `sluice-consumer verify <sink> [--repair] [--where …]`: does the index equal the table?
//!
//! Both sides are made by the pipeline's own code: rows are read the way a backfill reads them
//! (the producer's [`TableReader`]: same SQL, same text parsing, `READ` events), and each goes
//! through the sink's `actions`, filter, transform, index template and `_id` as the consumer
//! would route it. Then, never holding more than one range in memory:
//!
//! 1. rows in key order, [`RANGE`] at a time: the documents they should make are fetched with
//!    `_mget`; not stored is *missing*, stored with another source is *stale*;
//! 2. the index, scanned page by page: each page's ids are read back from the table; a document
//!    no row (within `--where`) makes is *extra*;
//! 3. the differences are suspects, since rows change while this runs: once the sink's consumer
//!    group has reached the end its topic had when the scan ended (bounded by `--settle`), each
//!    suspect is checked again, and only those that still differ are reported;
//! 4. `--repair` queues a backfill of the missing and stale rows through the producer's own
//!    path (a `--where` on their keys, so their current state comes through Kafka with a fresh
//!    version, like any backfill) and deletes the extra documents with their stored version
//!    (`external_gte`, so a newer write is never removed), then checks those ids again.

mod drift;
mod repair;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_common::config::{Action, Config, Problem};
use sluice_producer::backfill::rows::TableReader;
use sluice_proto::v1::ChangeEvent;

use self::drift::{DocId, Finding, Kind, Report, compare, id_parts};
use crate::batch::{Doc, Write};
use crate::elastic::Client;
use crate::error::Error;
use crate::event::KafkaPosition;
use crate::route::{self, Routing};
use crate::sink::Prepared;

/// Rows per range, and ids per `_mget` or table look-up.
const RANGE: u32 = 1_000;
/// Suspects kept for the second look; past this many the rest are reported as found.
const MAX_SUSPECTS: usize = 100_000;
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What `verify` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub sink: String,
    pub repair: bool,
    /// Only rows matching this SQL condition (and their documents).
    pub condition: Option<String>,
    pub json: bool,
    /// How long to wait for the pipeline to catch up before suspects are checked again.
    pub settle: Duration,
}

/// Checks one sink and prints the report; `Ok(true)` when the index equals the table.
pub async fn verify(config: Config, options: Options) -> Result<bool, Error> {
    let started = Instant::now();
    let Some(prepared) = crate::prepare(&config, Some(&options.sink))?.pop() else {
        return Err(unknown_sink(&config, &options.sink));
    };
    let config = Arc::new(config);
    let sink_error = |source| Error::Elastic {
        sink: options.sink.clone(),
        source,
    };
    let client = Client::new(&prepared.config.elasticsearch).map_err(sink_error)?;
    let reader = TableReader::open(
        config.clone(),
        &prepared.config.table,
        options.condition.as_deref(),
    )
    .await
    .map_err(|e| table_error(&options.sink, e))?;
    let id_columns = prepared
        .config
        .id_columns
        .clone()
        .unwrap_or_else(|| reader.key_columns().to_vec());
    let mut check = Check {
        topic: config.topic_for(&prepared.config.table),
        prepared,
        client,
        reader,
        id_columns,
        scoped: options.condition.is_some(),
        report: Report {
            sink: options.sink.clone(),
            ..Report::default()
        },
        progress: Instant::now(),
    };
    check
        .client
        .refresh(&check.scan_target())
        .await
        .map_err(sink_error)?;

    let mut suspects = check.rows_to_documents().await?;
    suspects.extend(check.documents_to_rows().await?);
    let (mut remaining, overflow) = split_suspects(suspects);
    if !remaining.is_empty() {
        let before = remaining.len();
        remaining = check.recheck(&config, remaining, options.settle).await?;
        check.report.settled = (before - remaining.len()) as u64;
    }
    remaining.extend(overflow);
    if options.repair && !remaining.is_empty() {
        let repaired = check.repair(&remaining).await?;
        remaining = check.recheck(&config, remaining, options.settle).await?;
        check.report.repaired = Some(repaired);
    } else if options.repair {
        check.report.repaired = Some((0, 0));
    }
    for finding in &remaining {
        check.report.add(finding);
    }
    check.report.seconds = started.elapsed().as_secs_f64();
    if options.json {
        println!("{}", check.report.to_json());
    } else {
        print!("{}", check.report.render());
    }
    Ok(check.report.in_sync())
}

pub(crate) fn unknown_sink(config: &Config, name: &str) -> Error {
    let known: Vec<&str> = config.sinks.iter().map(|s| s.name.as_str()).collect();
    Error::Config(vec![Problem::new(
        "<sink>",
        format!("no sink named `{name}` in the config"),
        format!("use one of: {}", known.join(", ")),
    )])
}

/// A bad `--where` or a table that cannot be read in key order is bad input (exit 2); the rest
/// (Postgres unreachable, …) a failure.
fn table_error(sink: &str, error: sluice_producer::Error) -> Error {
    match error {
        sluice_producer::Error::Setup(message) | sluice_producer::Error::Command(message) => {
            Error::Config(vec![Problem::new(
                "--where / tables",
                message,
                "fix the condition (it is SQL over the table's columns) or the table's entry in `tables`",
            )])
        }
        other => Error::Table {
            sink: sink.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Suspects to check again, and those past [`MAX_SUSPECTS`] (reported as found).
fn split_suspects(mut suspects: Vec<Finding>) -> (Vec<Finding>, Vec<Finding>) {
    let overflow = if suspects.len() > MAX_SUSPECTS {
        suspects.split_off(MAX_SUSPECTS)
    } else {
        Vec::new()
    };
    (suspects, overflow)
}

/// What a row should be in the index.
enum Expect {
    Document(DocId, Value),
    /// Filtered out by the sink, or an action it does not take: no document.
    Nothing,
    /// The consumer would dead-letter it (bad id, index or script error): no document.
    Unindexable,
}

struct Check {
    prepared: Prepared,
    topic: String,
    client: Client,
    reader: TableReader,
    /// The columns an `_id` is made of.
    id_columns: Vec<String>,
    /// A `--where` was given: documents of rows outside it are not judged.
    scoped: bool,
    report: Report,
    progress: Instant,
}

impl Check {
    fn sink_error(&self, source: crate::elastic::ElasticError) -> Error {
        Error::Elastic {
            sink: self.prepared.config.name.clone(),
            source,
        }
    }

    fn table_error(&self, error: sluice_producer::Error) -> Error {
        table_error(&self.prepared.config.name, error)
    }

    /// The index (alias) or pattern the sink's documents live in.
    fn scan_target(&self) -> String {
        match self.prepared.template.fixed() {
            Some(index) => index.to_owned(),
            None => self.prepared.template.pattern(),
        }
    }

    /// The document `event` (a row read now, as a backfill would publish it) should be: the
    /// consumer's own routing of it.
    fn expect(&self, event: &ChangeEvent) -> Expect {
        let kafka = KafkaPosition {
            topic: &self.topic,
            partition: 0,
            offset: 0,
        };
        // A sink that skips backfilled rows still indexes the row when it is inserted or updated.
        let actions = &self.prepared.config.actions;
        let action = [Action::Read, Action::Insert, Action::Update]
            .into_iter()
            .find(|a| actions.contains(a))
            .unwrap_or(Action::Read);
        match route::route(&self.prepared, event, action, kafka) {
            Ok(Routing::Write(Doc {
                index,
                id,
                write: Write::Full(bytes),
                ..
            })) => match serde_json::from_slice(&bytes) {
                Ok(source) => Expect::Document((index, id), source),
                Err(_) => Expect::Unindexable,
            },
            // Not taken by the sink, or filtered out (routed as a delete).
            Ok(
                Routing::Skip(_)
                | Routing::Write(Doc {
                    write: Write::Delete,
                    ..
                }),
            ) => Expect::Nothing,
            // A read carries every column; a partial write cannot come of it.
            Ok(Routing::Write(Doc {
                write: Write::Partial(_),
                ..
            }))
            | Err(_) => Expect::Unindexable,
        }
    }

    /// The index name a scanned document is compared under: a fixed index's alias, since the
    /// scan answers with the concrete index behind it.
    fn doc_id(&self, concrete: String, id: String) -> DocId {
        match self.prepared.template.fixed() {
            Some(alias) => (alias.to_owned(), id),
            None => (concrete, id),
        }
    }

    fn tick(&mut self, phase: &str) {
        if self.progress.elapsed() >= PROGRESS_EVERY {
            self.progress = Instant::now();
            eprintln!(
                "verify {}: {phase}: {} rows, {} documents read",
                self.prepared.config.name, self.report.rows, self.report.documents
            );
        }
    }

    /// Step 1: every row in key order; suspects missing and stale.
    async fn rows_to_documents(&mut self) -> Result<Vec<Finding>, Error> {
        let mut suspects = Vec::new();
        loop {
            let rows = self
                .reader
                .next_chunk(RANGE)
                .await
                .map_err(|e| self.table_error(e))?;
            if rows.is_empty() {
                return Ok(suspects);
            }
            self.report.rows += rows.len() as u64;
            let mut expected = HashMap::with_capacity(rows.len());
            for (_, event) in &rows {
                match self.expect(event) {
                    Expect::Document(doc, source) => {
                        expected.insert(doc, source);
                    }
                    Expect::Nothing => {}
                    Expect::Unindexable => self.report.unindexable += 1,
                }
            }
            self.report.expected += expected.len() as u64;
            let ids: Vec<DocId> = expected.keys().cloned().collect();
            let stored = self.stored(&ids).await?;
            suspects.extend(compare(&expected, &stored, &[Kind::Missing, Kind::Stale]));
            self.tick("rows");
        }
    }

    /// Step 2: every document, page by page; suspects extra.
    async fn documents_to_rows(&mut self) -> Result<Vec<Finding>, Error> {
        let target = self.scan_target();
        let client = self.client.clone();
        let mut scan = client.scan(&target);
        let mut suspects = Vec::new();
        let result = async {
            while let Some(page) = scan.next_page().await.map_err(|e| self.sink_error(e))? {
                self.report.documents += page.len() as u64;
                let mut stored = HashMap::with_capacity(page.len());
                for (index, id, version) in page {
                    stored.insert(self.doc_id(index, id), (version, serde_json::Map::new()));
                }
                let ids: Vec<DocId> = stored.keys().cloned().collect();
                let (expected, out_of_scope) = self.expected_for(&ids).await?;
                suspects.extend(
                    compare(&expected, &stored, &[Kind::Extra])
                        .into_iter()
                        .filter(|f| !out_of_scope.contains(&f.doc)),
                );
                self.tick("documents");
            }
            Ok::<_, Error>(())
        }
        .await;
        scan.close().await;
        result.map(|()| suspects)
    }

    /// Waits for the pipeline to catch up (at most `settle`), then checks these findings'
    /// documents again: what still differs.
    async fn recheck(
        &mut self,
        config: &Config,
        findings: Vec<Finding>,
        settle: Duration,
    ) -> Result<Vec<Finding>, Error> {
        repair::wait_for_pipeline(config, &self.prepared.config.name, &self.topic, settle).await?;
        self.check_ids(findings.into_iter().map(|f| f.doc).collect())
            .await
    }

    /// Step 3 (and after a repair): these documents, compared afresh in both directions.
    async fn check_ids(&mut self, ids: Vec<DocId>) -> Result<Vec<Finding>, Error> {
        let mut found = Vec::new();
        let unique: Vec<DocId> = ids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for part in unique.chunks(RANGE as usize) {
            let (expected, out_of_scope) = self.expected_for(part).await?;
            let stored = self.stored(part).await?;
            let asked: HashSet<&DocId> = part.iter().collect();
            let expected: HashMap<DocId, Value> = expected
                .into_iter()
                .filter(|(doc, _)| asked.contains(doc))
                .collect();
            found.extend(
                compare(
                    &expected,
                    &stored,
                    &[Kind::Missing, Kind::Extra, Kind::Stale],
                )
                .into_iter()
                .filter(|f| !out_of_scope.contains(&f.doc)),
            );
        }
        Ok(found)
    }

    /// The rows these `_id`s were made of, read back from the table, and the documents they
    /// make now; with `--where`, also the ids of rows that exist outside it (not judged).
    async fn expected_for(
        &mut self,
        ids: &[DocId],
    ) -> Result<(HashMap<DocId, Value>, HashSet<DocId>), Error> {
        let tuples: Vec<Vec<String>> = ids
            .iter()
            .filter_map(|(_, id)| id_parts(id, self.id_columns.len()))
            .collect();
        let rows = self.rows_where(&tuples, true).await?;
        let mut expected = HashMap::new();
        for (_, event) in &rows {
            if let Expect::Document(doc, source) = self.expect(event) {
                expected.insert(doc, source);
            }
        }
        let mut out_of_scope = HashSet::new();
        if self.scoped {
            let in_scope: HashSet<Vec<u8>> = rows.into_iter().map(|(key, _)| key).collect();
            for (key, event) in self.rows_where(&tuples, false).await? {
                if !in_scope.contains(&key)
                    && let Ok(id) =
                        route::document_id(&event, self.prepared.config.id_columns.as_deref())
                {
                    for (index, _) in ids.iter().filter(|(_, i)| *i == id) {
                        out_of_scope.insert((index.clone(), id.clone()));
                    }
                }
            }
        }
        Ok((expected, out_of_scope))
    }

    /// Rows by their id columns' text. Text a column's type cannot read (a foreign `_id`) fails
    /// the whole query: such a batch is then read one id at a time, and an unreadable id has no
    /// row.
    async fn rows_where(
        &mut self,
        tuples: &[Vec<String>],
        scoped: bool,
    ) -> Result<Vec<(Vec<u8>, ChangeEvent)>, Error> {
        let columns = self.id_columns.clone();
        match self.reader.rows_where(&columns, tuples, scoped).await {
            Ok(rows) => Ok(rows),
            Err(sluice_producer::Error::Postgres { .. }) if tuples.len() > 1 => {
                let mut rows = Vec::new();
                for tuple in tuples {
                    if let Ok(found) = self
                        .reader
                        .rows_where(&columns, std::slice::from_ref(tuple), scoped)
                        .await
                    {
                        rows.extend(found);
                    }
                }
                Ok(rows)
            }
            Err(sluice_producer::Error::Postgres { .. }) => Ok(Vec::new()),
            Err(other) => Err(self.table_error(other)),
        }
    }

    /// The stored documents among `ids`, with their versions and sources.
    async fn stored(
        &self,
        ids: &[DocId],
    ) -> Result<HashMap<DocId, (u64, serde_json::Map<String, Value>)>, Error> {
        let mut by_index: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (index, id) in ids {
            by_index.entry(index).or_default().push(id.clone());
        }
        let mut stored = HashMap::with_capacity(ids.len());
        for (index, ids) in by_index {
            for part in ids.chunks(RANGE as usize) {
                let docs = self
                    .client
                    .mget(index, part)
                    .await
                    .map_err(|e| self.sink_error(e))?;
                for (id, doc) in part.iter().zip(docs) {
                    if let Some(doc) = doc {
                        stored.insert((index.to_owned(), id.clone()), doc);
                    }
                }
            }
        }
        Ok(stored)
    }
}
