//! A Kafka message's value to a [`ChangeEvent`] the sink can act on.
//!
//! Every failure here is about one message and definite, so it goes to the dead-letter topic
//! with [`DecodeError::error_type`] as its kind.

use sluice_common::config::Action;
use sluice_proto::Message as _;
use sluice_proto::SCHEMA_VERSION;
use sluice_proto::v1::{ChangeEvent, Op};

use crate::dead_letter::DeadLetter;
use crate::event::action;

/// What one message means for a sink.
#[derive(Debug)]
pub enum Decoded {
    /// A row change (or backfill read) with its action.
    Change(Box<ChangeEvent>, Action),
    /// A TRUNCATE of the table at this commit LSN.
    Truncate(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a sluice.v1.ChangeEvent: {0}")]
    NotAChangeEvent(#[from] prost::DecodeError),
    #[error(
        "schema_version {0} is newer than this consumer understands ({SCHEMA_VERSION}); upgrade \
         sluice-consumer"
    )]
    NewerSchema(u32),
    #[error("operation {0} has no meaning for a sink")]
    UnknownOperation(i32),
}

impl DecodeError {
    /// The `sluice.dlq.error_type` of the dead letter.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::NotAChangeEvent(_) => "decode_error",
            Self::NewerSchema(_) => "unsupported_schema_version",
            Self::UnknownOperation(_) => "unknown_operation",
        }
    }
}

impl From<DecodeError> for DeadLetter {
    fn from(error: DecodeError) -> Self {
        DeadLetter::new("decode", error.error_type(), error.to_string())
    }
}

/// Decodes a message value (not a tombstone: those carry no event).
pub fn decode(payload: &[u8]) -> Result<Decoded, DecodeError> {
    let event = ChangeEvent::decode(payload)?;
    if event.schema_version > SCHEMA_VERSION {
        return Err(DecodeError::NewerSchema(event.schema_version));
    }
    if event.op() == Op::Truncate {
        return Ok(Decoded::Truncate(
            event.position.unwrap_or_default().commit_lsn,
        ));
    }
    match action(event.op()) {
        Some(action) => Ok(Decoded::Change(Box::new(event), action)),
        None => Err(DecodeError::UnknownOperation(event.op)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn encoded(event: &ChangeEvent) -> Vec<u8> {
        event.encode_to_vec()
    }

    #[test]
    fn messages_decode_to_what_they_mean_or_a_typed_error() {
        let insert = ChangeEvent {
            schema_version: SCHEMA_VERSION,
            op: Op::Insert.into(),
            ..ChangeEvent::default()
        };
        assert!(matches!(
            decode(&encoded(&insert)).unwrap(),
            Decoded::Change(_, Action::Insert)
        ));
        let newer = ChangeEvent {
            schema_version: SCHEMA_VERSION + 1,
            ..insert.clone()
        };
        let error = decode(&encoded(&newer)).unwrap_err();
        assert_eq!(error.error_type(), "unsupported_schema_version");
        let unknown = ChangeEvent {
            op: 99,
            ..insert.clone()
        };
        assert_eq!(
            decode(&encoded(&unknown)).unwrap_err().error_type(),
            "unknown_operation"
        );
        let letter = DeadLetter::from(decode(b"\xff\xff\xff").unwrap_err());
        assert_eq!(
            (letter.stage.as_ref(), letter.error_type.as_str()),
            ("decode", "decode_error")
        );
    }
}
