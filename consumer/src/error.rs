//! Consumer errors, sorted by what the caller should do about them.

use sluice_common::config::Problem;

use crate::elastic::ElasticError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter, transform or index template that does not compile: exit 2, like any bad config.
    #[error("{}", render(.0))]
    Config(Vec<Problem>),
    /// The cluster refused the credentials: the sink stops, nothing is committed past it.
    #[error("sink {sink}: {source}")]
    Elastic { sink: String, source: ElasticError },
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("sink {sink}: {message}")]
    Setup { sink: String, message: String },
    /// Shutdown interrupted the work; nothing was committed for it.
    #[error("interrupted by shutdown")]
    Interrupted,
    #[error("{0}")]
    Check(String),
}

impl Error {
    /// Exit code for `main`: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) => sluice_common::EXIT_CONFIG,
            _ => sluice_common::EXIT_FAILURE,
        }
    }
}

fn render(problems: &[Problem]) -> String {
    let mut out = "invalid configuration:".to_owned();
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}
