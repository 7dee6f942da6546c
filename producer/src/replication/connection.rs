//! Opening the replication connection, with blocking I/O on the reader thread: TCP, TLS as
//! `sslmode` asks, the startup message with `replication=database`, password or SCRAM
//! authentication, then `START_REPLICATION … LOGICAL` until the server answers CopyBothResponse.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;

use super::StreamSettings;
use super::wire::{self, ServerError};
use crate::catalog::{APPLICATION_NAME, PgTarget, SESSION_OPTIONS, SslMode};
use crate::error::Error;

/// How long connecting and each read of the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How much one read takes from the kernel at most.
const SOCKET_BUFFER: usize = 256 * 1024;

/// The TCP socket with a read buffer of its own, so that TLS records (one per pgoutput
/// message, a few hundred bytes each) are taken from the kernel many at a time.
#[derive(Debug)]
pub struct Socket {
    tcp: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The last read from the kernel did not fill the buffer: the receive queue was empty
    /// after it.
    short_read: bool,
}

impl Socket {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: vec![0; SOCKET_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            short_read: false,
        }
    }

    /// Everything the kernel had was read and handed on.
    pub fn drained(&self) -> bool {
        self.start == self.end && self.short_read
    }
}

impl Read for Socket {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            let n = self.tcp.read(&mut self.buf)?;
            self.short_read = n < self.buf.len();
            self.start = 0;
            self.end = n;
        }
        let n = out.len().min(self.end - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl Write for Socket {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.tcp.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The connection, plain or TLS.
#[derive(Debug)]
pub enum Connection {
    Plain(Socket),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Socket>>),
}

impl Connection {
    fn socket(&self) -> &Socket {
        match self {
            Self::Plain(socket) => socket,
            Self::Tls(stream) => &stream.sock,
        }
    }

    /// Nothing is left to read without asking the kernel, which had nothing more either.
    pub fn drained(&self) -> bool {
        self.socket().drained() && !self.has_plaintext()
    }

    /// Bytes were read from the kernel and not handed on yet: reading again does not block.
    pub fn buffered(&self) -> bool {
        let socket = self.socket();
        socket.start < socket.end || self.has_plaintext()
    }

    fn has_plaintext(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            // rustls wants TLS data only once its decrypted plaintext was read.
            Self::Tls(stream) => !stream.conn.wants_read(),
        }
    }

    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.socket()
            .tcp
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
    }

    /// Writes all of `data` and flushes it (through TLS if on).
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_all(data)?;
        self.flush()
    }
}

impl Read for Connection {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(socket) => socket.read(out),
            Self::Tls(stream) => stream.read(out),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(socket) => socket.write(data),
            Self::Tls(stream) => stream.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(socket) => socket.flush(),
            Self::Tls(stream) => stream.flush(),
        }
    }
}

/// A connection that streams, and a handle to its socket that can end a blocked read.
#[derive(Debug)]
pub struct Started {
    pub connection: Connection,
    pub reader_stop: TcpStream,
    /// Anything the server sent after CopyBothResponse in the same read.
    pub pending: BytesMut,
}

/// Connects, authenticates and starts streaming from `settings.start_lsn`.
pub fn start(target: &PgTarget, settings: &StreamSettings) -> Result<Started, Error> {
    let tcp = connect_tcp(target)?;
    let reader_stop = tcp
        .try_clone()
        .map_err(|e| io_error(target, "connecting", &e))?;
    let mut connection = negotiate_tls(target, tcp)?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = BytesMut::new();
    let options = SESSION_OPTIONS;
    frontend::startup_message(
        [
            ("user", target.user.as_str()),
            ("database", target.database.as_str()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", APPLICATION_NAME),
            ("options", options),
        ],
        &mut out,
    )
    .map_err(|e| Error::Replication(format!("cannot encode the startup message: {e}")))?;
    send(target, &mut connection, &mut out)?;
    authenticate(target, &mut connection, &mut buf, &mut out)?;

    let command = format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names '{}', messages 'true')",
        settings.slot,
        crate::stats::format_lsn(settings.start_lsn),
        settings.publication.replace('\'', "''"),
    );
    frontend::query(&command, &mut out)
        .map_err(|e| Error::Replication(format!("cannot encode START_REPLICATION: {e}")))?;
    send(target, &mut connection, &mut out)?;
    loop {
        let (tag, body) = receive(target, &mut connection, &mut buf)?;
        match tag {
            b'W' => break,
            b'E' => return Err(server_error(target, &ServerError::parse(&body))),
            // Notices and parameter statuses.
            _ => {}
        }
    }
    Ok(Started {
        connection,
        reader_stop,
        pending: buf,
    })
}

fn connect_tcp(target: &PgTarget) -> Result<TcpStream, Error> {
    let addresses = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| io_error(target, "resolving the host", &e))?;
    let mut last = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, HANDSHAKE_TIMEOUT) {
            Ok(tcp) => {
                let setup = tcp
                    .set_nodelay(true)
                    .and_then(|()| tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
                    .and_then(|()| tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT)));
                setup.map_err(|e| io_error(target, "connecting", &e))?;
                return Ok(tcp);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(error) => io_error(target, "connecting", &error),
        None => Error::Replication(format!("{} resolves to no address", target.host)),
    })
}

/// SSLRequest, then the TLS handshake if the server agrees (or plain TCP where `sslmode`
/// allows it).
fn negotiate_tls(target: &PgTarget, mut tcp: TcpStream) -> Result<Connection, Error> {
    if target.sslmode == SslMode::Disable {
        return Ok(Connection::Plain(Socket::new(tcp)));
    }
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    tcp.write_all(&out)
        .map_err(|e| io_error(target, "asking for TLS", &e))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .map_err(|e| io_error(target, "asking for TLS", &e))?;
    match answer[0] {
        b'S' => {}
        b'N' if target.sslmode == SslMode::Prefer => {
            return Ok(Connection::Plain(Socket::new(tcp)));
        }
        b'N' => {
            return Err(Error::Tls(format!(
                "the server at {} does not accept TLS, which sslmode={} requires",
                target.redacted(),
                sslmode_name(target.sslmode)
            )));
        }
        other => {
            return Err(Error::Replication(format!(
                "unexpected answer `{}` to SSLRequest",
                other as char
            )));
        }
    }
    let name = ServerName::try_from(target.host.clone())
        .map_err(|e| Error::Tls(format!("{} is not a valid server name: {e}", target.host)))?;
    let config = Arc::new(target.rustls_config()?);
    let mut tls = rustls::ClientConnection::new(config, name)
        .map_err(|e| Error::Tls(format!("cannot start TLS: {e}")))?;
    let mut socket = Socket::new(tcp);
    while tls.is_handshaking() {
        tls.complete_io(&mut socket).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                Error::Tls(format!(
                    "TLS handshake with {} failed: {e}",
                    target.redacted()
                ))
            } else {
                io_error(target, "during the TLS handshake", &e)
            }
        })?;
    }
    Ok(Connection::Tls(Box::new(rustls::StreamOwned::new(
        tls, socket,
    ))))
}

fn authenticate(
    target: &PgTarget,
    connection: &mut Connection,
    buf: &mut BytesMut,
    out: &mut BytesMut,
) -> Result<(), Error> {
    let refused = |message: String| Error::Authentication {
        user: target.user.clone(),
        target: target.redacted(),
        message,
    };
    let password = target.password().as_bytes();
    let mut scram: Option<ScramSha256> = None;
    loop {
        let (tag, body) = receive(target, connection, buf)?;
        match tag {
            b'R' => {
                let code = body
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| Error::Replication("truncated authentication request".into()))?;
                let data = &body[4..];
                match code {
                    0 => {}
                    // Cleartext password.
                    3 => send_password(target, connection, out, password.to_vec())?,
                    // MD5 with a 4-byte salt.
                    5 => {
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or_else(|| {
                                Error::Replication("truncated MD5 authentication request".into())
                            })?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            target.user.as_bytes(),
                            password,
                            salt,
                        );
                        send_password(target, connection, out, hash.into_bytes())?;
                    }
                    // SASL: the mechanisms offered, NUL-separated.
                    10 => {
                        let offered = data
                            .split(|&b| b == 0)
                            .any(|m| m == SCRAM_SHA_256.as_bytes());
                        if !offered {
                            return Err(refused(format!(
                                "the server offers no SASL mechanism sluice speaks ({}), only {}",
                                SCRAM_SHA_256,
                                String::from_utf8_lossy(data).replace('\0', " ").trim()
                            )));
                        }
                        let client = ScramSha256::new(password, ChannelBinding::unsupported());
                        frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), out)
                            .map_err(|e| Error::Replication(e.to_string()))?;
                        send(target, connection, out)?;
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or_else(|| {
                            Error::Replication("SASL continue before start".into())
                        })?;
                        client
                            .update(data)
                            .map_err(|e| refused(format!("SCRAM: {e}")))?;
                        frontend::sasl_response(client.message(), out)
                            .map_err(|e| Error::Replication(e.to_string()))?;
                        send(target, connection, out)?;
                    }
                    12 => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| Error::Replication("SASL final before start".into()))?;
                        client.finish(data).map_err(|e| {
                            refused(format!("SCRAM: the server's proof is wrong: {e}"))
                        })?;
                    }
                    other => {
                        return Err(refused(format!(
                            "unsupported authentication method (code {other})"
                        )));
                    }
                }
            }
            b'E' => return Err(server_error(target, &ServerError::parse(&body))),
            b'Z' => return Ok(()),
            // ParameterStatus, BackendKeyData, notices.
            _ => {}
        }
    }
}

/// Reads until one whole backend message is in `buf`, and takes it.
fn receive(
    target: &PgTarget,
    connection: &mut Connection,
    buf: &mut BytesMut,
) -> Result<(u8, bytes::Bytes), Error> {
    loop {
        if let Some(message) = wire::next_message(buf).map_err(Error::Replication)? {
            return Ok(message);
        }
        let mut chunk = [0u8; 8192];
        let n = connection
            .read(&mut chunk)
            .map_err(|e| io_error(target, "during the handshake", &e))?;
        if n == 0 {
            return Err(Error::Replication(format!(
                "{} closed the connection during the handshake",
                target.redacted()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Sends a PasswordMessage carrying `secret` (cleartext or MD5 hash; NUL-terminated here).
fn send_password(
    target: &PgTarget,
    connection: &mut Connection,
    out: &mut BytesMut,
    mut secret: Vec<u8>,
) -> Result<(), Error> {
    secret.push(0);
    frontend::password_message(&secret, out).map_err(|e| {
        Error::Replication(format!(
            "cannot encode the password message for user {}: {e}",
            target.user
        ))
    })?;
    send(target, connection, out)
}

fn send(target: &PgTarget, connection: &mut Connection, out: &mut BytesMut) -> Result<(), Error> {
    let sent = connection.send(out);
    out.clear();
    sent.map_err(|e| io_error(target, "sending", &e))
}

/// What a server error means for the caller.
pub fn server_error(target: &PgTarget, error: &ServerError) -> Error {
    let text = error.to_string();
    match error.code.as_str() {
        // invalid_password
        "28P01" => Error::Authentication {
            user: target.user.clone(),
            target: target.redacted(),
            message: text,
        },
        // object_in_use: the slot is streamed by another process.
        "55006" => Error::SlotBusy(text),
        // insufficient_privilege
        "42501" => Error::Setup(format!(
            "user `{}` may not stream changes: {text}; fix: ALTER ROLE {} REPLICATION",
            target.user, target.user
        )),
        _ => Error::Replication(text),
    }
}

fn io_error(target: &PgTarget, what: &str, error: &io::Error) -> Error {
    Error::Replication(format!("{} ({what}): {error}", target.redacted()))
}

fn sslmode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// Ends a read blocked on `socket` (the reader sees end of stream).
pub fn interrupt(socket: &TcpStream) {
    let _ = socket.shutdown(Shutdown::Read);
}
