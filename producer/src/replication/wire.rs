//! The replication protocol's bytes, without I/O: backend message framing, the CopyData
//! payloads of a logical stream (XLogData, primary keepalive), the standby status update we send,
//! server errors, and which pgoutput messages become which [`WalEvent`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WalEvent;
use crate::pgoutput::{self, Message};

/// The largest backend message accepted. pgoutput rows can be large (a wide row with TOASTed
/// values arrives in one message), but a length beyond this means a broken stream.
pub const MAX_MESSAGE: usize = 1 << 30;

/// Microseconds between the Unix epoch and the Postgres epoch (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The next complete backend message in `buf` (its tag and body), taken out of it; `None` while
/// the message is incomplete.
pub fn next_message(buf: &mut BytesMut) -> Result<Option<(u8, Bytes)>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let body = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_sub(4))
        .filter(|&body| body <= MAX_MESSAGE)
        .ok_or_else(|| {
            format!(
                "backend message `{}` has the invalid length {len}",
                tag as char
            )
        })?;
    if buf.len() < 5 + body {
        buf.reserve(5 + body - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some((tag, buf.split_to(body).freeze())))
}

/// A CopyData payload of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyData {
    /// `w`: WAL data, here one pgoutput message.
    XLogData { wal_start: u64, data: Bytes },
    /// `k`: the server's position while idle; `reply` asks for a status update now.
    KeepAlive { wal_end: u64, reply: bool },
}

/// Parses the body of a CopyData (`d`) message.
pub fn copy_data(mut body: Bytes) -> Result<CopyData, String> {
    let Some(&kind) = body.first() else {
        return Err("empty CopyData message".to_owned());
    };
    match kind {
        // 'w', WAL start, WAL end, send time, then the data.
        b'w' if body.len() >= 25 => {
            body.advance(1);
            let wal_start = body.get_u64();
            body.advance(16);
            Ok(CopyData::XLogData {
                wal_start,
                data: body,
            })
        }
        // 'k', WAL end, send time, reply requested.
        b'k' if body.len() >= 18 => {
            body.advance(1);
            let wal_end = body.get_u64();
            body.advance(8);
            Ok(CopyData::KeepAlive {
                wal_end,
                reply: body.get_u8() != 0,
            })
        }
        b'w' | b'k' => Err(format!(
            "CopyData `{}` is truncated at {} bytes",
            kind as char,
            body.len()
        )),
        other => Err(format!("unknown CopyData message `{}`", other as char)),
    }
}

/// Appends a standby status update (a CopyData `r` message) reporting `lsn` as written, flushed
/// and applied. `unix_micros` is the client's clock.
pub fn status_update(lsn: u64, unix_micros: i64, out: &mut BytesMut) {
    out.put_u8(b'd');
    out.put_i32(4 + 34);
    out.put_u8(b'r');
    out.put_u64(lsn);
    out.put_u64(lsn);
    out.put_u64(lsn);
    out.put_i64(unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS));
    // No reply requested: the server's keepalives already tell us its position.
    out.put_u8(0);
}

/// Appends CopyDone, which ends the stream from our side.
pub fn copy_done(out: &mut BytesMut) {
    out.put_u8(b'c');
    out.put_i32(4);
}

/// The event of one XLogData payload: transaction boundaries and logical messages are decoded
/// here, every other pgoutput message is passed on encoded.
pub fn event(wal_start: u64, data: Bytes) -> Result<WalEvent, String> {
    if !matches!(data.first(), Some(b'B' | b'C' | b'M')) {
        return Ok(WalEvent::Data {
            lsn: wal_start,
            data,
        });
    }
    Ok(match pgoutput::decode(data).map_err(|e| e.to_string())? {
        Message::Begin {
            final_lsn,
            commit_time,
            xid,
        } => WalEvent::Begin {
            final_lsn,
            xid,
            commit_time,
        },
        Message::Commit {
            commit_lsn,
            end_lsn,
            commit_time,
            ..
        } => WalEvent::Commit {
            commit_lsn,
            end_lsn,
            commit_time,
        },
        Message::Message {
            transactional,
            lsn,
            prefix,
            content,
        } => WalEvent::Message {
            transactional,
            lsn,
            prefix,
            content,
        },
        other => return Err(format!("unexpected pgoutput message {other:?}")),
    })
}

/// An ErrorResponse, with the fields sluice acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `55006` for a slot held by another process.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Parses the body of an ErrorResponse (`E`): fields of a type byte and a NUL-terminated
    /// string, ended by a zero byte.
    pub fn parse(body: &[u8]) -> Self {
        let mut error = Self::default();
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            match kind {
                b'V' => error.severity = value,
                b'S' if error.severity.is_empty() => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
            rest = tail.get(end + 1..).unwrap_or_default();
        }
        error
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " ({detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn messages_are_taken_only_when_complete_and_split_anywhere() {
        let mut wire = framed(b'd', b"wxyz");
        wire.extend(framed(b'Z', b"I"));
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(message) = next_message(&mut buf).unwrap() {
                got.push(message);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(message) = next_message(&mut buf).unwrap() {
                got.push(message);
            }
            assert_eq!(
                got,
                vec![
                    (b'd', Bytes::from_static(b"wxyz")),
                    (b'Z', Bytes::from_static(b"I"))
                ],
                "cut at {cut}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn impossible_lengths_are_refused() {
        for len in [-1i32, 0, 3, i32::MAX] {
            let mut buf = BytesMut::from(&[b'd'][..]);
            buf.extend_from_slice(&len.to_be_bytes());
            assert!(next_message(&mut buf).is_err(), "length {len}");
        }
    }

    #[test]
    fn xlogdata_and_keepalives_are_read() {
        let mut w = vec![b'w'];
        w.extend(0x16_0000_0028u64.to_be_bytes());
        w.extend(0x16_0000_0030u64.to_be_bytes());
        w.extend(7i64.to_be_bytes());
        w.extend(b"I...");
        assert_eq!(
            copy_data(Bytes::from(w)).unwrap(),
            CopyData::XLogData {
                wal_start: 0x16_0000_0028,
                data: Bytes::from_static(b"I..."),
            }
        );
        let mut k = vec![b'k'];
        k.extend(0x20u64.to_be_bytes());
        k.extend(7i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            copy_data(Bytes::from(k.clone())).unwrap(),
            CopyData::KeepAlive {
                wal_end: 0x20,
                reply: true
            }
        );
        for cut in 0..k.len() {
            assert!(
                copy_data(Bytes::from(k[..cut].to_vec())).is_err(),
                "cut {cut}"
            );
        }
        assert!(copy_data(Bytes::from_static(b"q")).is_err());
    }

    #[test]
    fn a_status_update_reports_the_lsn_three_times_and_asks_no_reply() {
        let mut out = BytesMut::new();
        status_update(0x1_0000_00AB, PG_EPOCH_UNIX_MICROS + 5, &mut out);
        assert_eq!(out.len(), 1 + 4 + 34);
        assert_eq!(&out[..6], &[b'd', 0, 0, 0, 38, b'r']);
        for field in 0..3 {
            let at = 6 + field * 8;
            assert_eq!(
                u64::from_be_bytes(out[at..at + 8].try_into().unwrap()),
                0x1_0000_00AB
            );
        }
        assert_eq!(i64::from_be_bytes(out[30..38].try_into().unwrap()), 5);
        assert_eq!(out[38], 0);
    }

    #[test]
    fn boundaries_and_logical_messages_are_decoded_the_rest_passed_on() {
        let mut begin = vec![b'B'];
        begin.extend(0x30u64.to_be_bytes());
        begin.extend(99i64.to_be_bytes());
        begin.extend(7u32.to_be_bytes());
        assert!(matches!(
            event(1, Bytes::from(begin)).unwrap(),
            WalEvent::Begin {
                final_lsn: 0x30,
                xid: 7,
                commit_time: 99
            }
        ));
        let mut commit = vec![b'C', 0];
        commit.extend(0x30u64.to_be_bytes());
        commit.extend(0x38u64.to_be_bytes());
        commit.extend(99i64.to_be_bytes());
        assert!(matches!(
            event(1, Bytes::from(commit)).unwrap(),
            WalEvent::Commit {
                commit_lsn: 0x30,
                end_lsn: 0x38,
                commit_time: 99
            }
        ));
        let mut message = vec![b'M', 1];
        message.extend(0x40u64.to_be_bytes());
        message.extend(b"sluice\0");
        message.extend(2i32.to_be_bytes());
        message.extend(b"hi");
        match event(1, Bytes::from(message)).unwrap() {
            WalEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                assert!(transactional);
                assert_eq!(
                    (lsn, prefix.as_str(), &content[..]),
                    (0x40, "sluice", &b"hi"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        match event(0x50, Bytes::from_static(b"I\0\0\0\x01N")).unwrap() {
            WalEvent::Data { lsn, data } => {
                assert_eq!((lsn, &data[..]), (0x50, &b"I\0\0\0\x01N"[..]))
            }
            other => panic!("{other:?}"),
        }
        assert!(event(1, Bytes::from_static(b"B\0")).is_err());
    }

    #[test]
    fn server_errors_keep_code_message_detail_and_hint() {
        let body =
            b"SERROR\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 42\0Dd\0Hh\0\0";
        let error = ServerError::parse(body);
        assert_eq!(error.code, "55006");
        assert_eq!(
            error.to_string(),
            "ERROR 55006: replication slot \"s\" is active for PID 42 (d); hint: h"
        );
        // Truncated or garbage bodies never panic.
        for cut in 0..body.len() {
            let _ = ServerError::parse(&body[..cut]);
        }
    }
}
