//! Decoding of `pgoutput`, the logical decoding plugin that ships with Postgres.
//!
//! The replication stage receives `XLogData` frames from the walsender; the payload of each frame
//! is exactly one pgoutput message. This module turns such a payload into a [`Message`] and turns
//! column text into typed [`sluice_proto::v1::Value`]s. It does no I/O, so every corner of the
//! protocol is covered by unit tests with hand-built (and real, captured) bytes.
//!
//! ```text
//!  XLogData payload ──decode()──▶ Message ─┬─ Relation ─▶ kept by the caller, keyed by id
//!                                          └─ Insert/Update/Delete (relation id + Tuple)
//!                                                   │ column i ↔ Relation.columns[i]
//!                                                   ▼
//!          builtin(type oid) ─▶ TypeKind ──parse_text(kind, text)──▶ Value
//! ```
//!
//! # Protocol version 1
//!
//! sluice asks for `proto_version '1'`, the version every supported Postgres speaks. Versions 2
//! to 4 add streamed (in-progress) and two-phase transactions, which would force the producer to
//! buffer or discard transactions that may still abort; with version 1 the walsender only sends
//! a transaction once it has committed, always framed as:
//!
//! ```text
//!  Begin ─ (Origin) ─ (Type | Relation)* ─ (Insert | Update | Delete | Truncate | Message)* ─ Commit
//! ```
//!
//! Non-transactional logical messages (`pg_logical_emit_message(false, …)`) arrive on their own,
//! outside any Begin/Commit. A message tag of a later version (e.g. `S`, stream start) is a
//! [`DecodeError`], never silently skipped.
//!
//! A `Relation` message describes a table (columns, types, key columns) before the first change
//! to it in a session and again after its schema changed; a `Type` message does the same for a
//! column type that is not built in (an enum, a domain, a composite). Changes carry only the
//! relation id, so the caller keeps the latest `Relation` per id.
//!
//! # How values arrive
//!
//! Unless the `binary` option is set (sluice does not set it), every non-null column value is the
//! type's text output function's result, in the server encoding (sluice requires UTF-8), exactly
//! as `SELECT col::text` would print it in the replication session. Those settings decide the
//! format, so the producer pins them on the replication connection:
//! `DateStyle=ISO, TimeZone=UTC, IntervalStyle=iso_8601, bytea_output=hex, extra_float_digits=1`.
//! [`parse_text`] relies on exactly that.
//!
//! Two column states are not values: `n` (SQL NULL) and `u`, an unchanged TOASTed value that
//! Postgres did not send because the update did not touch it. The second must never be written
//! into a document as if it were a value (see DESIGN.md, "Unchanged TOAST columns").

pub mod decode;
pub mod types;
pub mod values;

pub use decode::{
    DecodeError, Message, PG_EPOCH_UNIX_MICROS, Relation, RelationColumn, ReplicaIdentity, Tuple,
    TupleValue, decode, pg_to_unix_micros,
};
pub use types::{TypeKind, builtin};
pub use values::parse_text;
