//! What a rebuild would do (`--dry-run`) and where an unfinished one stands (`status`).

use super::*;

impl Rebuild {
    /// `--dry-run`: what a run would do, from what the cluster and Kafka hold now.
    pub(super) async fn plan(&self, observed: &Observed, start: &Start) -> Result<String, Error> {
        let sink = self.sink();
        let alias = &self.alias;
        let mut out = String::new();
        let (from, target, group) = match start {
            Start::Fresh { from, target } => {
                let source = |given: &Option<PathBuf>, sink_has: bool, what: &str| match given {
                    Some(path) => format!("{what} from {}", path.display()),
                    None if sink_has => format!("the sink's {what}"),
                    None => format!("default {what}"),
                };
                let _ = writeln!(
                    out,
                    "rebuild plan for sink {sink} (alias {alias} → {from}):\n  1. create {target} \
                     with {} and {}, without refreshes while it fills",
                    source(
                        &self.options.settings,
                        self.prepared.settings.is_some(),
                        "settings"
                    ),
                    source(
                        &self.options.mappings,
                        self.prepared.mappings.is_some(),
                        "mappings"
                    ),
                );
                (from.clone(), target.clone(), self.group_for(target))
            }
            Start::Resume {
                from,
                target,
                group,
                blocked,
            } => {
                let _ = writeln!(
                    out,
                    "rebuild plan for sink {sink} (alias {alias} → {from}):\n  1. resume the \
                     interrupted rebuild into {target}{}",
                    if *blocked {
                        format!(" ({from} is write-blocked: the live sink waits)")
                    } else {
                        String::new()
                    }
                );
                (from.clone(), target.clone(), group.clone())
            }
            Start::Finish {
                from,
                target,
                group,
            } => {
                let _ = writeln!(
                    out,
                    "rebuild plan for sink {sink}: {alias} already serves {target}: lift the \
                     block on {from}, mark the rebuild done, delete group {group}"
                );
                return Ok(out);
            }
        };
        let kafka = self.group_client(&group)?;
        let positions = self.positions(&kafka).await?;
        let behind = catchup::behind(&positions, None);
        let _ = writeln!(
            out,
            "  2. fill it from {} of {} ({} partitions, {} messages to read) with group \
             {group}: the sink's actions, filter, transform and versions, {} documents per bulk \
             request",
            if positions.values().any(|p| p.committed.is_some()) {
                "the committed offsets"
            } else {
                "the start"
            },
            self.topic,
            positions.len(),
            behind.values().sum::<i64>(),
            plan::fill_batch_size(
                self.prepared.config.elasticsearch.batch_size,
                self.options.batch_size
            ),
        );
        let _ = writeln!(
            out,
            "  3. when at most {} events are left: block writes on {from} (the live sink retries \
             them), read up to each partition's end as of then (at most --max-block {})",
            catchup::CATCH_UP_LAG,
            humantime::format_duration(self.options.max_block)
        );
        let _ = writeln!(
            out,
            "  4. give {target} its refresh interval ({}), refresh it, swap {alias} from {from} \
             to {target} in one _aliases request, lift the block on {from}",
            match &self.refresh_interval {
                Value::Null => "the default".to_owned(),
                Value::String(text) => text.clone(),
                other => other.to_string(),
            }
        );
        let mut after = observed.clone();
        after.serving = Some(vec![target.clone()]);
        if let Some(n) = plan::version_of(alias, &target) {
            after.versions.push(Version {
                name: target.clone(),
                number: n,
                meta: None,
                write_blocked: false,
            });
        }
        let doomed = plan::to_delete(&after, &target, self.options.keep_old);
        let _ = writeln!(
            out,
            "  5. keep {} older version(s) (--keep-old {}); delete {}",
            self.options.keep_old,
            self.options.keep_old,
            list_or_none(&doomed.iter().map(String::as_str).collect::<Vec<_>>())
        );
        let _ = writeln!(out, "nothing was changed (--dry-run)");
        Ok(out)
    }
}

pub(super) fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

pub(super) fn render_offsets(offsets: &std::collections::BTreeMap<i32, i64>) -> String {
    offsets
        .iter()
        .map(|(p, o)| format!("p{p} {o}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// For `status`: the sink's unfinished rebuild, if any, with its group's lag.
pub(crate) async fn describe(config: &Config, sink: &SinkConfig) -> Option<String> {
    let template = IndexTemplate::parse(&sink.elasticsearch.index).ok()?;
    let alias = template.fixed()?;
    let client = Client::new(&sink.elasticsearch).ok()?;
    let versions = match client.indices(&format!("{alias}-v*")).await {
        Ok(versions) => versions,
        Err(error) => return Some(format!("  rebuild: unknown ({error})\n")),
    };
    let blocked: Vec<&str> = versions
        .iter()
        .filter(|v| v.write_blocked)
        .map(|v| v.name.as_str())
        .collect();
    let open = versions.iter().find_map(|info| {
        let meta: Meta = serde_json::from_value(info.meta.get(META_KEY)?.clone()).ok()?;
        (meta.state == State::Filling && meta.sink == sink.name)
            .then_some((info.name.clone(), meta))
    })?;
    let (target, meta) = open;
    let topic = config.topic_for(&sink.table);
    let mut out = format!(
        "  rebuild: into {target} from {} (group {}){}\n",
        meta.from,
        meta.group,
        if blocked.contains(&meta.from.as_str()) {
            format!(
                "; {} is write-blocked: the live sink waits (a rebuild runs, or was killed: \
                 run `rebuild {}` again or `--abort`)",
                meta.from, sink.name
            )
        } else {
            String::new()
        }
    );
    match crate::commands::lag(config, &meta.group, &topic).await {
        Ok(rows) => {
            let total: i64 = rows.iter().map(|r| r.lag).sum();
            let applied: i64 = rows.iter().filter_map(|r| r.committed).sum();
            let parts: Vec<String> = rows
                .iter()
                .map(|r| format!("p{} {}", r.partition, r.lag))
                .collect();
            let _ = writeln!(
                out,
                "    {applied} events applied, lag {total} ({})",
                parts.join(", ")
            );
        }
        Err(error) => {
            let _ = writeln!(out, "    lag unknown ({error})");
        }
    }
    Some(out)
}
