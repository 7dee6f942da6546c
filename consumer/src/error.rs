//! Consumer errors, sorted by what the caller should do about them.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{0}` is not available in this build")]
    Unsupported(&'static str),
}
