//! Reading a table's rows the way a backfill does: every column pgoutput would send, in key
//! order, through the simple query protocol (so values are the text pgoutput sends, typed by the
//! same parser as live changes), as `READ` events. The backfill worker reads its chunks with
//! these pieces; [`TableReader`] offers them to others (`sluice-consumer verify` compares a
//! table with an index through it, so both sides of the check are what the pipeline makes).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_common::config::Config;
use sluice_proto::key;
use sluice_proto::v1::{ChangeEvent, Value};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::ChunkRow;
use super::control::{self, literal};
use crate::catalog::{self, PgTarget, quote_ident, quote_table};
use crate::encode::{self, At, ColumnInfo, RelationInfo, TxInfo};
use crate::error::Error;
use crate::pgoutput::{self, TypeKind, parse_text};

/// The table as a backfill reads it.
#[derive(Debug)]
pub(super) struct Shape {
    pub(super) relation: Arc<RelationInfo>,
    /// Column name and type OID, to notice schema changes.
    pub(super) columns: Vec<(String, u32)>,
    /// `format_type` of each key column, for the typed literals of the last key.
    pub(super) key_types: Vec<String>,
    /// `format_type` of every column, for typed literals of any column.
    pub(super) column_types: Vec<String>,
}

/// Reads the table's columns as pgoutput would describe them (no dropped or generated ones),
/// reusing the last shape while they stay the same.
pub(super) async fn describe(
    sql: &Client,
    config: &Config,
    (schema, name): (&str, &str),
    key_columns: &[String],
    types: &mut HashMap<u32, (String, TypeKind)>,
    previous: Option<Arc<Shape>>,
) -> Result<Arc<Shape>, Error> {
    let rows = sql
        .query(
            "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
               AND a.attgenerated = ''
             ORDER BY a.attnum",
            &[&schema, &name],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the columns of {schema}.{name}"), e))?;
    let columns: Vec<(String, u32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if let Some(previous) = previous
        && previous.columns == columns
    {
        return Ok(previous);
    }
    let mut infos = Vec::with_capacity(columns.len());
    for (column, oid) in &columns {
        let (type_name, kind) = match pgoutput::builtin(*oid) {
            Some((type_name, kind)) => (type_name.to_owned(), kind),
            None => match types.get(oid) {
                Some(known) => known.clone(),
                None => {
                    let resolved = catalog::resolve_type(sql, *oid).await?;
                    types.insert(*oid, resolved.clone());
                    resolved
                }
            },
        };
        infos.push(ColumnInfo {
            name: column.clone(),
            type_name,
            kind,
        });
    }
    let mut key = Vec::with_capacity(key_columns.len());
    let mut key_types = Vec::with_capacity(key_columns.len());
    for key_column in key_columns {
        let index = columns
            .iter()
            .position(|(c, _)| c == key_column)
            .ok_or_else(|| {
                Error::Setup(format!(
                    "key column `{key_column}` of {schema}.{name} is not in the table any more"
                ))
            })?;
        key.push(index);
        key_types.push(rows[index].get::<_, String>(2));
    }
    let table = format!("{schema}.{name}");
    let topic = config.topic_for(&table);
    Ok(Arc::new(Shape {
        relation: Arc::new(RelationInfo {
            schema: schema.to_owned(),
            table: name.to_owned(),
            topic,
            partitions: config.kafka.partitions,
            columns: infos,
            key,
        }),
        columns,
        key_types,
        column_types: rows.iter().map(|r| r.get::<_, String>(2)).collect(),
    }))
}

/// `SELECT <every column> FROM t WHERE (keys) > (last key) AND (condition) ORDER BY keys LIMIT n`.
pub(super) fn chunk_query(
    quoted_table: &str,
    shape: &Shape,
    key_columns: &[String],
    after: Option<&[String]>,
    until: Option<&[String]>,
    condition: Option<&str>,
    limit: u32,
) -> String {
    let columns: Vec<String> = shape
        .relation
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    let keys: Vec<String> = key_columns.iter().map(|c| quote_ident(c)).collect();
    let keys = keys.join(", ");
    let mut filters = Vec::new();
    let typed = |values: &[String]| -> String {
        values
            .iter()
            .zip(&shape.key_types)
            .map(|(value, type_name)| format!("{}::{type_name}", literal(value)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(after) = after {
        filters.push(format!("({keys}) > ({})", typed(after)));
    }
    if let Some(until) = until {
        filters.push(format!("({keys}) <= ({})", typed(until)));
    }
    if let Some(condition) = condition {
        // Line breaks: a trailing `--` comment in the condition cannot swallow what follows.
        filters.push(format!("(\n{condition}\n)"));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    format!(
        "SELECT {} FROM {quoted_table}{filter} ORDER BY {keys} LIMIT {limit}",
        columns.join(", ")
    )
}

/// Typed rows with their Kafka keys, and the text of the last row's key columns.
pub(super) fn parse_rows(
    shape: &Shape,
    messages: &[SimpleQueryMessage],
) -> (Vec<ChunkRow>, Option<Vec<String>>) {
    let relation = &shape.relation;
    let mut rows = Vec::with_capacity(messages.len());
    let mut last_key = None;
    let mut last_row = None;
    for message in messages {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let values: Vec<Value> = relation
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| match row.get(i) {
                Some(text) => parse_text(&column.kind, text),
                None => Value::null(),
            })
            .collect();
        let key = key::encode(relation.key.iter().filter_map(|&i| values.get(i)));
        rows.push(ChunkRow { key, values });
        last_row = Some(row);
    }
    if let Some(row) = last_row {
        last_key = Some(
            relation
                .key
                .iter()
                .map(|&i| row.get(i).unwrap_or_default().to_owned())
                .collect(),
        );
    }
    (rows, last_key)
}

/// Reads one captured table in key order, chunk by chunk, as `READ` events (version 0: a row
/// read outside the stream has no commit LSN).
#[derive(Debug)]
pub struct TableReader {
    sql: Client,
    config: Arc<Config>,
    table: String,
    quoted: String,
    schema: String,
    name: String,
    key_columns: Vec<String>,
    condition: Option<String>,
    types: HashMap<u32, (String, TypeKind)>,
    shape: Option<Arc<Shape>>,
    after: Option<Vec<String>>,
    finished: bool,
    tx: TxInfo,
}

impl TableReader {
    /// Connects and checks the table and the condition (a `--where` expression).
    pub async fn open(
        config: Arc<Config>,
        table: &str,
        condition: Option<&str>,
    ) -> Result<Self, Error> {
        let target = PgTarget::from_config(&config.postgres)?;
        let sql = target.connect().await?;
        let Some(table_config) = config.table(table) else {
            return Err(Error::Command(format!(
                "table {table} is not in `tables` of the config: add it there"
            )));
        };
        let (schema, name) = table_config.schema_and_table();
        let (schema, name) = (schema.to_owned(), name.to_owned());
        let key_columns = super::worker_checks::key_columns(&sql, &config, table).await?;
        let quoted = quote_table(&schema, &name);
        if let Some(condition) = condition {
            super::worker_checks::validate_condition(&sql, &quoted, condition).await?;
        }
        Ok(Self {
            sql,
            tx: TxInfo {
                database: target.database.as_str().into(),
                commit_lsn: 0,
                xid: 0,
                commit_time_micros: 0,
            },
            config,
            table: table.to_owned(),
            quoted,
            schema,
            name,
            key_columns,
            condition: condition.map(str::to_owned),
            types: HashMap::new(),
            shape: None,
            after: None,
            finished: false,
        })
    }

    /// The key columns rows are ordered by.
    pub fn key_columns(&self) -> &[String] {
        &self.key_columns
    }

    async fn shape(&mut self) -> Result<Arc<Shape>, Error> {
        let shape = describe(
            &self.sql,
            &self.config,
            (&self.schema, &self.name),
            &self.key_columns,
            &mut self.types,
            self.shape.take(),
        )
        .await?;
        self.shape = Some(shape.clone());
        Ok(shape)
    }

    fn events(&self, shape: &Shape, rows: Vec<ChunkRow>) -> Vec<(Vec<u8>, ChangeEvent)> {
        let at = At {
            tx: &self.tx,
            lsn: 0,
            index: 0,
        };
        rows.into_iter()
            .map(|row| {
                let event = encode::read_event(&shape.relation, at, row.values);
                (row.key, event)
            })
            .collect()
    }

    /// The next `limit` rows after the previous chunk, with their Kafka keys; empty at the end.
    pub async fn next_chunk(&mut self, limit: u32) -> Result<Vec<(Vec<u8>, ChangeEvent)>, Error> {
        if self.finished {
            return Ok(Vec::new());
        }
        let shape = self.shape().await?;
        let query = chunk_query(
            &self.quoted,
            &shape,
            &self.key_columns,
            self.after.as_deref(),
            None,
            self.condition.as_deref(),
            limit,
        );
        let messages = self
            .sql
            .simple_query(&query)
            .await
            .map_err(|e| Error::postgres(format!("reading {}", self.table), e))?;
        let (rows, last_key) = parse_rows(&shape, &messages);
        match last_key {
            Some(last) => self.after = Some(last),
            None => self.finished = true,
        }
        Ok(self.events(&shape, rows))
    }

    /// The rows whose `columns` have these values (each tuple is the columns' text, as the
    /// `_id` of a document carries them); only those within the reader's condition when
    /// `scoped`.
    pub async fn rows_where(
        &mut self,
        columns: &[String],
        tuples: &[Vec<String>],
        scoped: bool,
    ) -> Result<Vec<(Vec<u8>, ChangeEvent)>, Error> {
        if tuples.is_empty() {
            return Ok(Vec::new());
        }
        let shape = self.shape().await?;
        let membership = self.membership(&shape, columns, tuples)?;
        let condition = match &self.condition {
            Some(condition) if scoped => format!("{membership} AND (\n{condition}\n)"),
            _ => membership,
        };
        let query = chunk_query(
            &self.quoted,
            &shape,
            &self.key_columns,
            None,
            None,
            Some(&condition),
            u32::try_from(tuples.len()).unwrap_or(u32::MAX),
        );
        let messages = self
            .sql
            .simple_query(&query)
            .await
            .map_err(|e| Error::postgres(format!("reading rows of {}", self.table), e))?;
        let (rows, _) = parse_rows(&shape, &messages);
        Ok(self.events(&shape, rows))
    }

    /// `(columns) IN ((typed values), …)`: a condition matching rows by the text of `columns`.
    fn membership(
        &self,
        shape: &Shape,
        columns: &[String],
        tuples: &[Vec<String>],
    ) -> Result<String, Error> {
        let mut types = Vec::with_capacity(columns.len());
        for column in columns {
            let index = shape
                .relation
                .columns
                .iter()
                .position(|c| &c.name == column)
                .ok_or_else(|| Error::Setup(format!("{} has no column `{column}`", self.table)))?;
            types.push(shape.column_types[index].clone());
        }
        let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        let values: Vec<String> = tuples
            .iter()
            .map(|tuple| {
                let typed: Vec<String> = tuple
                    .iter()
                    .zip(&types)
                    .map(|(text, type_name)| format!("{}::{type_name}", literal(text)))
                    .collect();
                format!("({})", typed.join(", "))
            })
            .collect();
        Ok(format!("({}) IN ({})", names.join(", "), values.join(", ")))
    }

    /// Queues a backfill of the rows with these keys (text per key column) through the
    /// producer's own path (`sluice-producer backfill --where`); the running producer starts it
    /// at once. Returns its id.
    pub async fn request_backfill(&mut self, keys: &[Vec<String>]) -> Result<i64, Error> {
        let shape = self.shape().await?;
        let condition = self.membership(&shape, &self.key_columns, keys)?;
        control::ensure(&self.sql).await?;
        control::request(
            &mut self.sql,
            &self.config.postgres.slot,
            &self.table,
            Some(&condition),
            i64::try_from(keys.len()).ok(),
        )
        .await
    }

    /// The state of backfill `id` (`pending`, `running`, `done`, `failed`), with its error.
    pub async fn backfill_state(&self, id: i64) -> Result<(String, Option<String>), Error> {
        let row = self
            .sql
            .query_one(
                "SELECT state, error FROM sluice.backfills WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|e| Error::postgres("reading the backfill control table", e))?;
        Ok((row.get(0), row.get(1)))
    }

    /// The Kafka key of the row a `READ` event describes, as text per key column.
    pub fn key_text(event: &ChangeEvent) -> Vec<String> {
        event
            .key
            .iter()
            .map(|c| {
                c.value
                    .as_ref()
                    .and_then(|v| v.kind.as_ref())
                    .map(kind_text)
                    .unwrap_or_default()
            })
            .collect()
    }
}

/// The text Postgres would read a key value back from.
fn kind_text(kind: &sluice_proto::v1::value::Kind) -> String {
    use sluice_proto::v1::value::Kind;
    match kind {
        Kind::Bool(b) => b.to_string(),
        Kind::Int(i) => i.to_string(),
        Kind::Double(d) => d.to_string(),
        Kind::Bytes(b) => format!("\\x{}", hex::encode(b)),
        other => other.as_text().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        let column = |name: &str| ColumnInfo {
            name: name.into(),
            type_name: "text".into(),
            kind: TypeKind::Text,
        };
        Shape {
            relation: Arc::new(RelationInfo {
                schema: "public".into(),
                table: "t".into(),
                topic: "x".into(),
                partitions: 1,
                columns: vec![column("tenant"), column("id"), column("note")],
                key: vec![0, 1],
            }),
            columns: Vec::new(),
            key_types: vec!["text".into(), "integer".into()],
            column_types: vec!["text".into(), "integer".into(), "text".into()],
        }
    }

    #[test]
    fn chunks_page_by_the_whole_key_with_typed_literals() {
        let keys = ["tenant".to_owned(), "id".to_owned()];
        let first = chunk_query("\"public\".\"t\"", &shape(), &keys, None, None, None, 10);
        assert_eq!(
            first,
            "SELECT \"tenant\", \"id\", \"note\" FROM \"public\".\"t\" ORDER BY \"tenant\", \"id\" LIMIT 10"
        );
        let next = chunk_query(
            "\"public\".\"t\"",
            &shape(),
            &keys,
            Some(&["o'hara".to_owned(), "7".to_owned()]),
            Some(&["z".to_owned(), "1".to_owned()]),
            Some("note <> 'x' -- comment"),
            10,
        );
        assert_eq!(
            next,
            "SELECT \"tenant\", \"id\", \"note\" FROM \"public\".\"t\" WHERE (\"tenant\", \"id\") > \
             (E'o''hara'::text, E'7'::integer) AND (\"tenant\", \"id\") <= (E'z'::text, E'1'::integer) \
             AND (\nnote <> 'x' -- comment\n) ORDER BY \"tenant\", \"id\" LIMIT 10"
        );
    }
}
