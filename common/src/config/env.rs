//! `${ENV_VAR}` substitution in string values of the config file.
//!
//! * `${NAME}` is replaced by the variable's value; an unset variable is an error that names the
//!   field it appears in.
//! * `${NAME:-default}` uses `default` when the variable is unset or empty.
//! * `$${` is a literal `${`.
//!
//! Substitution happens on parsed string values, never on the raw text, so a value cannot inject
//! YAML structure, and numbers or booleans are never substituted.

use serde_json::Value;

use super::load::Problem;

/// Replaces references in every string of `value`, in place. `lookup` reads a variable.
pub(super) fn substitute(
    value: &mut Value,
    path: &mut String,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(text) => {
            if text.contains('$') {
                match expand(text, lookup) {
                    Ok(expanded) => *text = expanded,
                    Err(problem) => problems.push(Problem::new(path.clone(), problem.0, problem.1)),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                substitute(item, path, lookup, problems);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                substitute(item, path, lookup, problems);
                path.truncate(len);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// (message, fix)
struct Failure(String, String);

fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Failure> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(reference) = after.strip_prefix("${") {
            let Some(end) = reference.find('}') else {
                return Err(Failure(
                    "`${` without a closing `}`".to_owned(),
                    "close the reference as `${NAME}`, or write `$${` for a literal `${`"
                        .to_owned(),
                ));
            };
            let inner = &reference[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(Failure(
                    format!("`${{{inner}}}` is not a valid environment variable reference"),
                    "use letters, digits and underscores, like `${PG_PASSWORD}`".to_owned(),
                ));
            }
            match (lookup(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(Failure(
                        format!("environment variable `{name}` is not set"),
                        format!("export {name}, or give a default as `${{{name}:-value}}`"),
                    ));
                }
            }
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "PASSWORD" => Some("s3cret".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, String> {
        expand(text, &vars).map_err(|f| f.0)
    }

    #[test]
    fn substitutes_references() {
        assert_eq!(
            run("postgres://u:${PASSWORD}@h/db").unwrap(),
            "postgres://u:s3cret@h/db"
        );
        assert_eq!(run("${MISSING:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${EMPTY:-fallback}").unwrap(), "fallback");
        assert_eq!(run("${EMPTY}").unwrap(), "");
        assert_eq!(
            run("cost $5 and $${PASSWORD}").unwrap(),
            "cost $5 and ${PASSWORD}"
        );
    }

    #[test]
    fn reports_unset_and_malformed_references() {
        assert_eq!(
            run("${MISSING}").unwrap_err(),
            "environment variable `MISSING` is not set"
        );
        assert!(run("${OPEN").unwrap_err().contains("without a closing"));
        assert!(run("${bad-name}").unwrap_err().contains("not a valid"));
    }
}
