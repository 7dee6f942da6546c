//! The SQL side of the producer: connecting to Postgres (with TLS as `sslmode` asks), and the
//! catalog queries that setup, `check`, `status` and decoding need.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sluice_common::config::{PostgresConfig, redact_url};
use sluice_common::tls::IgnoreHostname;
use tokio_postgres::Client;

use crate::error::Error;
use crate::pgoutput::TypeKind;

/// `application_name` of every sluice connection, so operators can find them in
/// `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "sluice-producer";

/// Session settings that make Postgres print values in the forms the decoder expects
/// (ISO dates in UTC, ISO-8601 intervals, hex bytea, shortest exact floats).
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 \
                                   -c bytea_output=hex -c extra_float_digits=1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where and how to connect, taken apart from `postgres.url`.
#[derive(Clone)]
pub struct PgTarget {
    url: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    password: String,
    pub database: String,
    pub sslmode: SslMode,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.url))
    }
}

impl PgTarget {
    pub fn from_config(config: &PostgresConfig) -> Result<Self, Error> {
        let raw = config.url.expose();
        let url = url::Url::parse(raw)
            .map_err(|e| Error::Config(format!("postgres.url is not a URL: {e}")))?;
        let decode =
            |s: &str| percent_decode(s).map_err(|e| Error::Config(format!("postgres.url: {e}")));
        let mut sslmode = SslMode::Prefer;
        for (key, value) in url.query_pairs() {
            if key == "sslmode" {
                sslmode = match value.as_ref() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(Error::Config(format!(
                            "postgres.url: unknown sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full"
                        )));
                    }
                };
            }
        }
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && config.ca_file.is_none() {
            return Err(Error::Config(
                "postgres.url asks to verify the server certificate but postgres.ca_file is not set: \
                 name the CA certificate (PEM) in postgres.ca_file"
                    .to_owned(),
            ));
        }
        let host = url
            .host_str()
            .unwrap_or("localhost")
            .trim_matches(['[', ']'])
            .to_owned();
        if sslmode == SslMode::VerifyFull && host.parse::<std::net::IpAddr>().is_ok() {
            // The replication transport checks host names only, not IP addresses.
            return Err(Error::Config(format!(
                "postgres.url: sslmode=verify-full needs the server's DNS name, not the IP address {host}: \
                 name the host as in its certificate, or use sslmode=verify-ca"
            )));
        }
        Ok(Self {
            url: raw.to_owned(),
            host,
            port: url.port().unwrap_or(5432),
            user: decode(url.username())?,
            password: decode(url.password().unwrap_or(""))?,
            database: decode(url.path().trim_start_matches('/'))?,
            sslmode,
            ca_file: config.ca_file.clone(),
        })
    }

    /// The password from the URL (empty if none).
    pub(crate) fn password(&self) -> &str {
        &self.password
    }

    /// The URL without its password, for messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    fn sql_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.database)
            .application_name(APPLICATION_NAME)
            .options(SESSION_OPTIONS)
            .connect_timeout(std::time::Duration::from_secs(10))
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        config
    }

    /// A SQL connection; its driver runs on a task of its own.
    pub async fn connect(&self) -> Result<Client, Error> {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.rustls_config()?);
        let (client, connection) = self
            .sql_config()
            .connect(tls)
            .await
            .map_err(|e| Error::connect(&self.url, &self.user, e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// The TLS settings `sslmode` asks for (also used by the replication connection).
    pub(crate) fn rustls_config(&self) -> Result<rustls::ClientConfig, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let config = match self.sslmode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(self.load_roots()?);
                let verifier =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| Error::Tls(e.to_string()))?;
                if self.sslmode == SslMode::VerifyFull {
                    builder.with_webpki_verifier(verifier).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(IgnoreHostname(verifier)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(config)
    }

    fn load_roots(&self) -> Result<rustls::RootCertStore, Error> {
        let path = self
            .ca_file
            .as_ref()
            .ok_or_else(|| Error::Tls("postgres.ca_file is not set".to_owned()))?;
        let mut roots = rustls::RootCertStore::empty();
        sluice_common::tls::add_pem_roots(&mut roots, path, "postgres.ca_file")
            .map_err(Error::Tls)?;
        Ok(roots)
    }
}

#[cfg(test)]
mod tests {
    use sluice_common::config::{PostgresConfig, Secret};

    use super::*;

    fn target(url: &str, ca_file: Option<&str>) -> Result<PgTarget, Error> {
        PgTarget::from_config(&PostgresConfig {
            url: Secret::new(url),
            slot: "s".into(),
            publication: "p".into(),
            ca_file: ca_file.map(PathBuf::from),
        })
    }

    #[test]
    fn the_url_is_taken_apart_with_escapes_decoded() {
        let t = target(
            "postgres://us%40er:p%3Ass@db.example:6543/shop?sslmode=require",
            None,
        )
        .unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_str(),
                t.database.as_str()
            ),
            ("db.example", 6543, "us@er", "shop")
        );
        assert_eq!(t.password, "p:ss");
        assert_eq!(t.sslmode, SslMode::Require);
        assert!(
            !format!("{t:?}").contains("p%3Ass"),
            "Debug must not show the password"
        );
    }

    #[test]
    fn verifying_modes_need_a_ca_and_verify_full_a_host_name() {
        let error = target("postgres://u@db/shop?sslmode=verify-ca", None).unwrap_err();
        assert!(error.to_string().contains("postgres.ca_file"), "{error}");
        let error = target(
            "postgres://u@127.0.0.1/shop?sslmode=verify-full",
            Some("/ca.pem"),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("use sslmode=verify-ca"),
            "{error}"
        );
        assert!(
            target(
                "postgres://u@db.example/shop?sslmode=verify-full",
                Some("/ca.pem")
            )
            .is_ok()
        );
        let error = target("postgres://u@db/shop?sslmode=maybe", None).unwrap_err();
        assert!(
            error.to_string().contains("unknown sslmode `maybe`"),
            "{error}"
        );
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad percent escape in `{s}`"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

/// `sslmode=require` as libpq means it: encrypt, but do not check who is on the other side.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What setup learned about a captured table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub schema: String,
    pub name: String,
    /// Key columns in key order: the primary key, or `tables[].key`.
    pub key_columns: Vec<String>,
    /// `d` default, `f` full, `i` index, `n` nothing.
    pub replica_identity: char,
}

/// Looks up a table's primary key and replica identity. `None` when the table does not exist.
pub async fn table_info(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Option<TableInfo>, Error> {
    let row = client
        .query_opt(
            "SELECT c.relreplident::text,
                    coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                              FROM pg_index i
                              CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &name],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading the catalog entry of {schema}.{name}"), e))?;
    Ok(row.map(|row| {
        let identity: String = row.get(0);
        TableInfo {
            schema: schema.to_owned(),
            name: name.to_owned(),
            key_columns: row.get(1),
            replica_identity: identity.chars().next().unwrap_or('d'),
        }
    }))
}

/// Resolves a type the decoder does not know by its OID: enums are text, domains their base
/// type, arrays their element type; anything else travels as text.
pub async fn resolve_type(client: &Client, oid: u32) -> Result<(String, TypeKind), Error> {
    let mut oid = oid;
    let mut name: Option<String> = None;
    // Domains over domains over arrays: follow a few levels, never forever.
    for _ in 0..8 {
        if let Some((builtin_name, kind)) = crate::pgoutput::builtin(oid) {
            return Ok((name.unwrap_or_else(|| builtin_name.to_owned()), kind));
        }
        let row = client
            .query_opt(
                "SELECT typname::text, typtype::text, typbasetype, typelem, typdelim::text, typcategory::text
                 FROM pg_type WHERE oid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| Error::postgres(format!("looking up type {oid}"), e))?;
        let Some(row) = row else {
            return Ok((
                name.unwrap_or_else(|| format!("oid:{oid}")),
                TypeKind::Unknown,
            ));
        };
        let typname: String = row.get(0);
        let typtype: String = row.get(1);
        let base: u32 = row.get(2);
        let element: u32 = row.get(3);
        let delimiter: String = row.get(4);
        let category: String = row.get(5);
        let name_now = name.get_or_insert(typname).clone();
        match (typtype.as_str(), category.as_str()) {
            ("e", _) => return Ok((name_now, TypeKind::Text)),
            ("d", _) => oid = base,
            (_, "A") if element != 0 => {
                let (_, element_kind) = Box::pin(resolve_type(client, element)).await?;
                let delimiter = delimiter.chars().next().unwrap_or(',');
                return Ok((
                    name_now,
                    TypeKind::Array {
                        element: Box::new(element_kind),
                        delimiter,
                    },
                ));
            }
            _ => return Ok((name_now, TypeKind::Unknown)),
        }
    }
    Ok((
        name.unwrap_or_else(|| format!("oid:{oid}")),
        TypeKind::Unknown,
    ))
}

/// State of the replication slot, as `pg_replication_slots` reports it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub plugin: String,
    pub database: String,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: u64,
    pub wal_status: Option<String>,
    /// Bytes of WAL between the server's current position and the confirmed LSN.
    pub lag_bytes: i64,
}

pub async fn slot_state(client: &Client, slot: &str) -> Result<Option<SlotState>, Error> {
    let row = client
        .query_opt(
            "SELECT coalesce(plugin, '')::text, coalesce(database, '')::text, active_pid,
                    (coalesce(confirmed_flush_lsn, '0/0') - '0/0'::pg_lsn)::bigint,
                    wal_status::text,
                    (pg_current_wal_lsn() - coalesce(confirmed_flush_lsn, pg_current_wal_lsn()))::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading slot {slot}"), e))?;
    Ok(row.map(|row| SlotState {
        plugin: row.get(0),
        database: row.get(1),
        active_pid: row.get(2),
        confirmed_flush_lsn: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        wal_status: row.get(4),
        lag_bytes: row.get(5),
    }))
}

/// Tables currently in the publication (`schema.table`), or `None` when it does not exist.
pub async fn publication_tables(
    client: &Client,
    publication: &str,
) -> Result<Option<Vec<String>>, Error> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading publication {publication}"), e))?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| Error::postgres(format!("reading publication {publication}"), e))?;
    Ok(Some(rows.iter().map(|r| r.get(0)).collect()))
}

/// `"schema"."table"`, quoted for SQL.
pub fn quote_table(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Server settings that `check` reports.
pub async fn settings(client: &Client) -> Result<HashMap<String, String>, Error> {
    let rows = client
        .query(
            "SELECT name, setting FROM pg_settings
             WHERE name IN ('wal_level', 'max_replication_slots', 'max_wal_senders')",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("reading server settings", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
