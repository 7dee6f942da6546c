//! Setup before streaming: every configured table exists and has a key, the publication covers
//! them all (a table added to the config is added to the publication), the slot exists, and so
//! does the backfill control table, with the initial backfill of every `backfill: true` table
//! queued (once per slot and table). Existing publications and slots are adopted, never
//! recreated.

use std::collections::HashMap;

use sluice_common::config::Config;
use tokio_postgres::Client;

use crate::catalog::{self, TableInfo, quote_ident, quote_table};
use crate::error::Error;

/// Tables by `schema.table`, as setup found them.
pub type Tables = HashMap<String, TableInfo>;

/// Runs every setup step; returns the tables and the slot's confirmed LSN.
pub async fn prepare(client: &Client, config: &Config) -> Result<(Tables, u64), Error> {
    let tables = tables(client, config).await?;
    publication(client, config).await?;
    let confirmed = slot(client, config).await?;
    // After the slot: a watermark written before the slot existed would never be seen.
    crate::backfill::control::ensure(client).await?;
    crate::backfill::control::register_initial(client, config).await?;
    Ok((tables, confirmed))
}

/// Reads each configured table's key, refusing tables that have none.
pub async fn tables(client: &Client, config: &Config) -> Result<Tables, Error> {
    let mut found = HashMap::new();
    for table in &config.tables {
        let (schema, name) = table.schema_and_table();
        let Some(mut info) = catalog::table_info(client, schema, name).await? else {
            return Err(Error::Setup(format!(
                "table {} does not exist in database {}: create it, or remove it from `tables`",
                table.name,
                client_database(client).await
            )));
        };
        if let Some(key) = &table.key {
            if info.replica_identity != 'f' && info.key_columns != *key {
                return Err(Error::Setup(format!(
                    "table {} names key columns {key:?} in the config but has replica identity `{}`: \
                     run ALTER TABLE {} REPLICA IDENTITY FULL, so deletes carry those columns",
                    table.name,
                    info.replica_identity,
                    quote_table(schema, name)
                )));
            }
            info.key_columns = key.clone();
        }
        if info.key_columns.is_empty() {
            return Err(Error::Setup(format!(
                "table {} has no primary key: add one, or set REPLICA IDENTITY FULL and name its key \
                 columns in `tables[].key`",
                table.name
            )));
        }
        found.insert(table.name.clone(), info);
    }
    Ok(found)
}

async fn client_database(client: &Client) -> String {
    match client
        .query_one("SELECT current_database()::text", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => "?".to_owned(),
    }
}

/// Creates the publication, or adds the tables it lacks.
pub async fn publication(client: &Client, config: &Config) -> Result<(), Error> {
    let name = &config.postgres.publication;
    let quoted: Vec<String> = config
        .tables
        .iter()
        .map(|t| {
            let (schema, table) = t.schema_and_table();
            quote_table(schema, table)
        })
        .collect();
    match catalog::publication_tables(client, name).await? {
        None => {
            let sql = format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(name),
                quoted.join(", ")
            );
            client
                .batch_execute(&sql)
                .await
                .map_err(|e| privilege_hint(e, "create the publication"))?;
            tracing::info!(publication = %name, tables = quoted.len(), "created publication");
        }
        Some(existing) => {
            let missing: Vec<&String> = config
                .tables
                .iter()
                .zip(&quoted)
                .filter(|(t, _)| !existing.contains(&t.name))
                .map(|(_, q)| q)
                .collect();
            if !missing.is_empty() {
                let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                let sql = format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(name),
                    list.join(", ")
                );
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| privilege_hint(e, "add tables to the publication"))?;
                tracing::info!(publication = %name, added = ?list, "added tables to publication");
            }
        }
    }
    Ok(())
}

/// Creates the slot when missing; returns its confirmed LSN.
pub async fn slot(client: &Client, config: &Config) -> Result<u64, Error> {
    let name = &config.postgres.slot;
    if catalog::slot_state(client, name).await?.is_none() {
        let created = client
            .query_one(
                "SELECT (lsn - '0/0'::pg_lsn)::bigint FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[name],
            )
            .await;
        match created {
            Ok(row) => {
                tracing::info!(slot = %name, "created replication slot");
                let _ = row;
            }
            // Another producer created it a moment ago: adopt it.
            Err(e) if e.code().is_some_and(|c| c.code() == "42710") => {}
            Err(e) => return Err(privilege_hint(e, "create the replication slot")),
        }
    }
    let state = catalog::slot_state(client, name).await?.ok_or_else(|| {
        Error::Setup(format!(
            "replication slot {name} vanished right after creation"
        ))
    })?;
    if state.plugin != "pgoutput" {
        return Err(Error::Setup(format!(
            "replication slot {name} uses plugin `{}`, not pgoutput: drop it (SELECT pg_drop_replication_slot('{name}')) or set postgres.slot to another name",
            state.plugin
        )));
    }
    let database = client_database(client).await;
    if state.database != database {
        return Err(Error::Setup(format!(
            "replication slot {name} belongs to database {}, not {database}: set postgres.slot to another name",
            state.database
        )));
    }
    if state.wal_status.as_deref() == Some("lost") {
        return Err(Error::Setup(format!(
            "replication slot {name} has lost WAL it needed (wal_status = lost): drop it and backfill again"
        )));
    }
    Ok(state.confirmed_flush_lsn)
}

fn privilege_hint(error: tokio_postgres::Error, what: &str) -> Error {
    match error.as_db_error() {
        Some(db) if db.code().code() == "42501" => Error::Setup(format!(
            "cannot {what}: {} — grant the privilege (creating a publication needs table ownership or superuser; a slot needs the REPLICATION attribute)",
            db.message()
        )),
        _ => Error::postgres(format!("cannot {what}"), error),
    }
}
