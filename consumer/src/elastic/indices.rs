//! The index and alias calls of a rebuild: the indices behind an alias and their versions,
//! creating the next one, the write block, the one-request alias swap, deleting old versions.
//! The same requests work on Elasticsearch 8/9 and OpenSearch 2.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client::{Client, JSON};
use super::{ElasticError, request};

/// An index behind (or named like) an alias, with what a rebuild reads of it.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexInfo {
    pub name: String,
    /// The mapping's `_meta` (empty when it has none).
    pub meta: Map<String, Value>,
    /// `index.blocks.write` is set.
    pub write_blocked: bool,
    /// `index.refresh_interval`, when set on the index.
    pub refresh_interval: Option<String>,
}

#[derive(Deserialize)]
struct AliasEntry {
    #[serde(default)]
    aliases: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct MappingEntry {
    #[serde(default)]
    mappings: MappingBody,
}

#[derive(Default, Deserialize)]
struct MappingBody {
    #[serde(rename = "_meta", default)]
    meta: Map<String, Value>,
}

#[derive(Deserialize)]
struct SettingsEntry {
    #[serde(default)]
    settings: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct Acknowledged {
    #[serde(default)]
    acknowledged: bool,
}

impl Client {
    /// The indices `alias` points at; `None` when no alias has that name.
    pub async fn alias_indices(&self, alias: &str) -> Result<Option<Vec<String>>, ElasticError> {
        let reply = self
            .execute(Method::GET, self.url(&["_alias", alias])?, None)
            .await?;
        if reply.status.as_u16() == 404 {
            return Ok(None);
        }
        let entries: BTreeMap<String, AliasEntry> = reply.success()?.parse()?;
        Ok(Some(
            entries
                .into_iter()
                .filter(|(_, entry)| entry.aliases.contains_key(alias))
                .map(|(index, _)| index)
                .collect(),
        ))
    }

    /// Every index matching `pattern`, with its mapping `_meta` and whether it is write-blocked.
    pub async fn indices(&self, pattern: &str) -> Result<Vec<IndexInfo>, ElasticError> {
        let mut url = self.url(&[pattern, "_mapping"])?;
        url.query_pairs_mut()
            .append_pair("allow_no_indices", "true")
            .append_pair("ignore_unavailable", "true");
        let mappings: BTreeMap<String, MappingEntry> = self
            .execute(Method::GET, url, None)
            .await?
            .success()?
            .parse()?;
        let mut url = self.url(&[
            pattern,
            "_settings",
            "index.blocks.write,index.refresh_interval",
        ])?;
        url.query_pairs_mut()
            .append_pair("allow_no_indices", "true")
            .append_pair("ignore_unavailable", "true")
            .append_pair("flat_settings", "true");
        let settings: BTreeMap<String, SettingsEntry> = self
            .execute(Method::GET, url, None)
            .await?
            .success()?
            .parse()?;
        Ok(mappings
            .into_iter()
            .map(|(name, entry)| {
                let setting = |key: &str| settings.get(&name).and_then(|s| s.settings.get(key));
                let write_blocked = setting("index.blocks.write")
                    .is_some_and(|v| v == "true" || v == &Value::Bool(true));
                let refresh_interval = setting("index.refresh_interval").map(|v| match v {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                });
                IndexInfo {
                    name,
                    meta: entry.mappings.meta,
                    write_blocked,
                    refresh_interval,
                }
            })
            .collect())
    }

    /// Creates `index` with `settings` and `mappings`, and `meta` merged into the mapping's
    /// `_meta`. Fails when it exists.
    pub async fn create_index(
        &self,
        index: &str,
        settings: Option<&Value>,
        mappings: Option<&Value>,
        meta: (&str, Value),
    ) -> Result<(), ElasticError> {
        let mut mappings = match mappings {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        let mut merged = match mappings.remove("_meta") {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        merged.insert(meta.0.to_owned(), meta.1);
        mappings.insert("_meta".to_owned(), Value::Object(merged));
        let mut body = Map::new();
        if let Some(settings) = settings {
            body.insert("settings".to_owned(), settings.clone());
        }
        body.insert("mappings".to_owned(), Value::Object(mappings));
        self.execute(
            Method::PUT,
            self.url(&[index])?,
            Some((request::to_json(&body)?, JSON)),
        )
        .await?
        .success()?;
        Ok(())
    }

    /// Replaces the mapping `_meta` of `index`.
    pub async fn put_meta(
        &self,
        index: &str,
        meta: &Map<String, Value>,
    ) -> Result<(), ElasticError> {
        let body = request::to_json(&json!({ "_meta": meta }))?;
        self.execute(
            Method::PUT,
            self.url(&[index, "_mapping"])?,
            Some((body, JSON)),
        )
        .await?
        .success()?;
        Ok(())
    }

    /// Sets (or removes) `index.blocks.write` on `index`. Returns once every node applied it: a
    /// request not acknowledged is an error, since a write could still land.
    pub async fn set_write_block(&self, index: &str, blocked: bool) -> Result<(), ElasticError> {
        // `null` removes the setting rather than leaving `false` behind.
        let value = if blocked { json!(true) } else { Value::Null };
        self.put_settings(index, &json!({ "index.blocks.write": value }))
            .await
    }

    /// Updates the dynamic `settings` of `index` (a `null` value resets one to its default).
    /// Returns once every node applied them: a request not acknowledged is an error.
    pub async fn put_settings(&self, index: &str, settings: &Value) -> Result<(), ElasticError> {
        let body = request::to_json(settings)?;
        let reply = self
            .execute(
                Method::PUT,
                self.url(&[index, "_settings"])?,
                Some((body, JSON)),
            )
            .await?
            .success()?;
        let answer: Acknowledged = reply.parse()?;
        if answer.acknowledged {
            Ok(())
        } else {
            Err(ElasticError::Retryable {
                reason: format!("{}: not acknowledged by every node in time", reply.what),
            })
        }
    }

    /// Moves `alias` from `from` to `to` (as its write index) in one `_aliases` request: a
    /// search through the alias sees one index or the other, never both or none.
    pub async fn swap_alias(&self, alias: &str, from: &str, to: &str) -> Result<(), ElasticError> {
        let body = request::to_json(&json!({ "actions": [
            { "remove": { "index": from, "alias": alias } },
            { "add": { "index": to, "alias": alias, "is_write_index": true } },
        ]}))?;
        self.execute(Method::POST, self.url(&["_aliases"])?, Some((body, JSON)))
            .await?
            .success()?;
        Ok(())
    }

    /// Deletes `index` (a concrete name); a missing one is not an error.
    pub async fn delete_index(&self, index: &str) -> Result<(), ElasticError> {
        let reply = self
            .execute(Method::DELETE, self.url(&[index])?, None)
            .await?;
        if reply.status.as_u16() == 404 {
            return Ok(());
        }
        reply.success()?;
        Ok(())
    }
}
