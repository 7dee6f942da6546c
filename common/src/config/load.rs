//! Reading the config file into a validated [`Config`].

use std::fmt;
use std::path::{Path, PathBuf};

use super::{Config, env};

/// One thing wrong with the configuration: where, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, like `sinks[0].elasticsearch.batch_size` (empty for the whole file).
    pub path: String,
    pub message: String,
    pub fix: String,
}

impl Problem {
    pub fn new(
        path: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            self.path.as_str()
        };
        write!(f, "{path}: {}\n    fix: {}", self.message, self.fix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}\n    fix: pass an existing file with --config (or SLUICE_CONFIG)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid YAML: {message}\n    fix: correct the syntax at the position given", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// Every problem found (one for read and syntax errors).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Self::Invalid { problems, .. } => problems.clone(),
            other => vec![Problem::new("", other.to_string(), "")],
        }
    }
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = match problems.len() {
        1 => format!("invalid configuration in {}:", path.display()),
        n => format!(
            "invalid configuration in {} ({n} problems):",
            path.display()
        ),
    };
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

/// Reads, parses, substitutes environment variables in, and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    load_str(&text, path, &|name| std::env::var(name).ok())
}

/// [`load`] for text already read; `lookup` resolves `${VAR}` references.
pub fn load_str(
    text: &str,
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_owned(),
        problems,
    };
    let mut tree: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if tree.is_null() {
        return Err(invalid(vec![Problem::new(
            "",
            "the file is empty",
            "start from the example in docs/configuration.md",
        )]));
    }

    let mut problems = Vec::new();
    env::substitute(&mut tree, &mut String::new(), lookup, &mut problems);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }

    let config: Config = serde_path_to_error::deserialize(&tree).map_err(|error| {
        let path = error.path().to_string();
        let message = error.into_inner().to_string();
        invalid(vec![serde_problem(path, message)])
    })?;

    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(problems))
    }
}

/// Turns a serde message into a problem with a fix.
fn serde_problem(path: String, message: String) -> Problem {
    // serde_path_to_error reports the top level as ".".
    let path = if path == "." { String::new() } else { path };
    let fix = if message.starts_with("unknown field") {
        "remove the key or correct its spelling (the known keys are listed above)".to_owned()
    } else if let Some(field) = message.strip_prefix("missing field ") {
        let field = field.trim_matches('`');
        if path.is_empty() {
            format!("add `{field}` at the top level")
        } else {
            format!("add `{field}` under `{path}`")
        }
    } else if message.starts_with("unknown variant") {
        "use one of the values listed above".to_owned()
    } else if message.starts_with("invalid type") {
        "write a value of the expected type (quote secrets that look like numbers)".to_owned()
    } else if message.contains("did not match any variant") {
        "give an inline object, or `{ file: path/to/file.json }`".to_owned()
    } else if message.contains("invalid socket address") {
        "write an address like `0.0.0.0:9600`".to_owned()
    } else {
        "see docs/configuration.md for this field".to_owned()
    };
    let message = if message.contains("invalid socket address") {
        format!("{message} (an IP address and a port are needed)")
    } else {
        message
    };
    Problem { path, message, fix }
}
