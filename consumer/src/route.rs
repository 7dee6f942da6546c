//! Where one event goes: the index (from the sink's index template) and the document `_id`, and
//! the write of the document the filter and transform make of it.
//!
//! Everything here is a pure function of the event and the sink's prepared config, so it can be
//! applied outside the pipeline too (to compare a table with its index).

use serde_json::{Map, Value};
use sluice_common::config::Action;
use sluice_proto::v1::{self, ChangeEvent, value::Kind};

use crate::batch::{Doc, Write};
use crate::dead_letter::DeadLetter;
use crate::event::{self, KafkaPosition, base64};
use crate::script::{Scripts, Stage, Verdict};
use crate::sink::Prepared;
use crate::stats::Outcome;

/// What the sink does with one row change.
#[derive(Debug)]
pub enum Routing {
    /// Nothing to write (an action the sink does not take): final with this outcome.
    Skip(Outcome),
    Write(Doc),
}

/// Routes one decoded event: the actions the sink takes, its `_id`, its index, and the filter
/// and transform. A failure is about this event alone: its dead letter.
pub fn route(
    sink: &Prepared,
    event: &ChangeEvent,
    action: Action,
    kafka: KafkaPosition<'_>,
) -> Result<Routing, DeadLetter> {
    let config = &sink.config;
    if !config.actions.contains(&action) {
        return Ok(Routing::Skip(Outcome::Filtered));
    }
    let id = document_id(event, config.id_columns.as_deref())
        .map_err(|reason| DeadLetter::new("route", "bad_id", reason))?;
    let version = event.position.unwrap_or_default().commit_lsn;
    let doc = |index: String, write: Write, outcome: Outcome| {
        Ok(Routing::Write(Doc {
            index,
            id: id.clone(),
            version,
            write,
            outcome,
        }))
    };
    // Without scripts and with a fixed index the document is the record: no script input.
    let plain = !sink.scripts.has_filter() && !sink.scripts.has_transform();
    if let (true, Some(index)) = (plain, sink.template.fixed()) {
        let index = index.to_owned();
        if action == Action::Delete {
            return doc(index, Write::Delete, Outcome::Deleted);
        }
        let write = if event.unchanged_toast_columns.is_empty() {
            Write::Full(event::record_json(&event.record).into())
        } else {
            Write::Partial(event::columns(&event.record))
        };
        return doc(index, write, Outcome::Indexed);
    }
    let input = event::script_input(event, action, kafka);
    let index = sink
        .template
        .render(&input)
        .map_err(|reason| DeadLetter::new("route", "bad_index", reason))?;
    if action == Action::Delete {
        return doc(index, Write::Delete, Outcome::Deleted);
    }
    match sink.scripts.apply(&input) {
        Ok(Verdict::Document(document)) => {
            if event.unchanged_toast_columns.is_empty() {
                let bytes = serde_json::to_vec(&document).map_err(|error| {
                    DeadLetter::new(
                        "transform",
                        "serialize",
                        format!("document does not serialize: {error}"),
                    )
                })?;
                doc(index, Write::Full(bytes.into()), Outcome::Indexed)
            } else {
                let document = without_toast_dependents(
                    &sink.scripts,
                    &input,
                    &event.unchanged_toast_columns,
                    document,
                );
                doc(index, Write::Partial(document), Outcome::Indexed)
            }
        }
        // A row that does not pass the filter has no document: remove an earlier one.
        Ok(Verdict::Filtered) => doc(index, Write::Delete, Outcome::Filtered),
        Err(error) => {
            let stage = match error.stage {
                Stage::Filter => "filter",
                Stage::Transform => "transform",
            };
            Err(DeadLetter::new(stage, "script_error", error.to_string()))
        }
    }
}

/// The fields of a partial document that do not depend on the unchanged TOAST columns.
///
/// The transform saw the record without those columns, so a field it computed from them holds
/// a stand-in (null, a default), which must not overwrite the indexed value. Running the
/// transform again with a marker in each missing column shows which fields depend on them:
/// those that come out different are dropped, and the stored document keeps its values.
fn without_toast_dependents(
    scripts: &Scripts,
    input: &Value,
    unchanged: &[String],
    mut document: Map<String, Value>,
) -> Map<String, Value> {
    if !scripts.has_transform() {
        return document;
    }
    let mut marked = input.clone();
    if let Some(record) = marked.get_mut("record").and_then(Value::as_object_mut) {
        for column in unchanged {
            record.insert(
                column.clone(),
                Value::String(format!("\u{0}sluice-unchanged-toast:{column}\u{0}")),
            );
        }
    }
    match scripts.apply(&marked) {
        Ok(Verdict::Document(with_marker)) => {
            document.retain(|field, value| with_marker.get(field) == Some(value));
        }
        // The transform fails on the marker (it parses the column, say): keep only the fields
        // named after a column the event carries.
        _ => document.retain(|field, _| input["record"].get(field).is_some()),
    }
    document
}

/// The document `_id`: the primary key (or the sink's `id_columns`, read from the record).
///
/// One column gives its value as text (`42`, `3f2c…`). Several are joined with `:`, and a `:`
/// or `\` inside a value is escaped with `\`, so two different keys never share an id
/// (`(1, "a:b")` → `1:a\:b`, `(1, "a")` → `1:a`).
pub fn document_id(event: &ChangeEvent, id_columns: Option<&[String]>) -> Result<String, String> {
    let parts: Vec<String> =
        match id_columns {
            None => return document_id_of(&event.key),
            Some(names) => names
                .iter()
                .map(|name| {
                    let column = event.record.iter().find(|c| &c.name == name).ok_or_else(|| {
                    format!(
                        "id column `{name}` is not in the event (a delete carries only the key \
                         unless the table has REPLICA IDENTITY FULL)"
                    )
                })?;
                    id_part(name, column.value.as_ref())
                })
                .collect::<Result<_, _>>()?,
        };
    Ok(joined(parts))
}

/// The document `_id` made of the key columns.
pub fn document_id_of(key: &[v1::Column]) -> Result<String, String> {
    if key.is_empty() {
        return Err("the event has no key columns".to_owned());
    }
    let parts: Vec<String> = key
        .iter()
        .map(|c| id_part(&c.name, c.value.as_ref()))
        .collect::<Result<_, _>>()?;
    Ok(joined(parts))
}

/// One id part as it is; several joined with `:`, with `:` and `\` escaped.
fn joined(mut parts: Vec<String>) -> String {
    if parts.len() == 1 {
        return parts.swap_remove(0);
    }
    let mut id = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            id.push(':');
        }
        for c in part.chars() {
            if c == ':' || c == '\\' {
                id.push('\\');
            }
            id.push(c);
        }
    }
    id
}

fn id_part(name: &str, value: Option<&v1::Value>) -> Result<String, String> {
    let text = match value.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::Null(_)) => return Err(format!("id column `{name}` is null")),
        Some(Kind::Bool(b)) => b.to_string(),
        Some(Kind::Int(i)) => i.to_string(),
        Some(Kind::Double(d)) => d.to_string(),
        Some(Kind::Bytes(b)) => base64(b),
        Some(Kind::Array(_)) => {
            return Err(format!(
                "id column `{name}` is an array; arrays cannot make an id"
            ));
        }
        Some(kind) => kind.as_text().unwrap_or_default().to_owned(),
    };
    if text.len() > 512 {
        return Err(format!(
            "id from column `{name}` is {} bytes; Elasticsearch allows 512",
            text.len()
        ));
    }
    Ok(text)
}

/// An index name, possibly with `{{ record.field }}` / `{{ metadata.field }}` parts.
#[derive(Debug, Clone)]
pub struct IndexTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Field(Vec<String>),
}

impl IndexTemplate {
    /// Parses `index` (its syntax was checked with the config); fields must start with
    /// `record.` or `metadata.`.
    pub fn parse(index: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = index;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find("}}")
                .ok_or_else(|| format!("`{index}` opens `{{{{` without closing it"))?;
            let field = rest[open + 2..open + close].trim();
            let path: Vec<String> = field.split('.').map(str::to_owned).collect();
            if path.len() < 2
                || !matches!(path[0].as_str(), "record" | "metadata")
                || path.iter().any(String::is_empty)
            {
                return Err(format!(
                    "`{{{{ {field} }}}}` must name a field of `record` or `metadata`, e.g. \
                     `{{{{ record.tenant_id }}}}`"
                ));
            }
            parts.push(Part::Field(path));
            rest = &rest[open + close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// The plain index name when there are no fields.
    pub fn fixed(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Literal(name)] => Some(name),
            _ => None,
        }
    }

    /// The wildcard pattern matching every index this template renders (`orders-*`).
    pub fn pattern(&self) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.as_str(),
                Part::Field(_) => "*",
            })
            .collect()
    }

    /// The index for one event; fields are lowercased, and a missing field or one that would
    /// make an invalid name is an error (the event goes to the dead-letter topic).
    pub fn render(&self, input: &Value) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Field(path) => {
                    let mut value = input;
                    for step in path {
                        value = value.get(step).unwrap_or(&Value::Null);
                    }
                    let text = match value {
                        Value::String(s) => s.to_lowercase(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => {
                            return Err(format!(
                                "index field `{}` is missing or null",
                                path.join(".")
                            ));
                        }
                        _ => {
                            return Err(format!(
                                "index field `{}` is not a string or number",
                                path.join(".")
                            ));
                        }
                    };
                    if text.is_empty()
                        || text
                            .chars()
                            .any(|c| c.is_whitespace() || "\\/*?\"<>|,#:".contains(c))
                    {
                        return Err(format!(
                            "index field `{}` = {text:?} cannot be part of an index name",
                            path.join(".")
                        ));
                    }
                    out.push_str(&text);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::tests::column;

    #[test]
    fn ids_from_keys_escape_the_separator() {
        let mut event = ChangeEvent {
            key: vec![column("id", Kind::Int(42))],
            ..ChangeEvent::default()
        };
        assert_eq!(document_id(&event, None).unwrap(), "42");
        event.key = vec![
            column("a", Kind::Int(1)),
            column("b", Kind::Text("x:y\\z".into())),
        ];
        assert_eq!(document_id(&event, None).unwrap(), "1:x\\:y\\\\z");
        event.record = vec![column("sku", Kind::Text("A-1".into()))];
        assert_eq!(
            document_id(&event, Some(&["sku".to_owned()])).unwrap(),
            "A-1"
        );
        let missing = document_id(&event, Some(&["nope".to_owned()])).unwrap_err();
        assert!(missing.contains("`nope`"), "{missing}");
        event.key = vec![column("id", Kind::Null(v1::Null {}))];
        assert!(document_id(&event, None).unwrap_err().contains("null"));
    }

    #[test]
    fn index_templates_render_and_match() {
        let template =
            IndexTemplate::parse("orders-{{ record.tenant }}-{{metadata.table}}").unwrap();
        assert_eq!(template.fixed(), None);
        assert_eq!(template.pattern(), "orders-*-*");
        let input = json!({"record": {"tenant": "ACME"}, "metadata": {"table": "orders"}});
        assert_eq!(template.render(&input).unwrap(), "orders-acme-orders");
        let missing = template.render(&json!({"record": {}})).unwrap_err();
        assert!(missing.contains("record.tenant"), "{missing}");
        let bad = template
            .render(&json!({"record": {"tenant": "a b"}, "metadata": {"table": "t"}}))
            .unwrap_err();
        assert!(bad.contains("cannot be part"), "{bad}");
        assert_eq!(
            IndexTemplate::parse("products").unwrap().fixed(),
            Some("products")
        );
        assert!(IndexTemplate::parse("x-{{ tenant }}").is_err());
    }
}
