//! TLS pieces both processes use: reading a CA file into roots, and the verifier that checks the
//! chain but not the host name (Postgres's `sslmode=verify-ca`, the consumer's
//! `elasticsearch.verify_hostname: false`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The certificates of a PEM file, added to `roots`; the error says what is wrong with the file
/// (`field` names the setting it came from).
pub fn add_pem_roots(
    roots: &mut rustls::RootCertStore,
    path: &Path,
    field: &str,
) -> Result<(), String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{field} {}: cannot read it: {e}", path.display()))?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{field} {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{field} {}: {e}", path.display()))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!(
            "{field} {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(())
}

/// A verifier that accepts a certificate whose chain leads to a trusted root whatever names it
/// carries; every other check (signatures, expiry, key usage) stays.
#[derive(Debug)]
pub struct IgnoreHostname(pub Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostname {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// What to tell the user about a refused server certificate, if `error` (or one of its sources)
/// is one: the problem and the setting that fixes it. `ca_field` and `hostname_fix` name the
/// settings of the process asking.
pub fn certificate_problem(
    error: &(dyn std::error::Error + 'static),
    ca_field: &str,
    hostname_fix: &str,
) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        // io::Error's own source skips the error it wraps (and connectors nest them), so look
        // inside every layer of io::Error too.
        let mut candidate = Some(error);
        while let Some(layer) = candidate {
            if let Some(rustls::Error::InvalidCertificate(problem)) =
                layer.downcast_ref::<rustls::Error>()
            {
                return Some(describe(problem, ca_field, hostname_fix));
            }
            candidate = layer
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|e| e as &(dyn std::error::Error + 'static));
        }
        current = error.source();
    }
    None
}

fn describe(problem: &CertificateError, ca_field: &str, hostname_fix: &str) -> String {
    match problem {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "the server's TLS certificate is not signed by a trusted CA ({problem:?}): set \
             {ca_field} to the PEM file of the CA that signed it"
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "the server's TLS certificate is not valid for this host name ({problem}): connect \
                 with a name the certificate carries, or {hostname_fix}"
            )
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => format!(
            "the server's TLS certificate is outside its validity period ({problem}): renew it, \
             or check this machine's clock"
        ),
        other => format!("the server's TLS certificate was refused ({other})"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test reports failure

    use super::*;

    #[test]
    fn a_refused_certificate_inside_an_io_error_is_described_with_its_fix() {
        // As hyper's connector hands it over: an io::Error in an io::Error.
        let error = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        let text = certificate_problem(&error, "elasticsearch.ca_file", "x").unwrap();
        assert!(text.contains("not signed by a trusted CA"), "{text}");
        assert!(text.contains("set elasticsearch.ca_file"), "{text}");
        let other = std::io::Error::other("connection reset");
        assert_eq!(certificate_problem(&other, "a", "b"), None);
    }

    #[test]
    fn a_file_without_certificates_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        let error = add_pem_roots(&mut roots, &path, "elasticsearch.ca_file").unwrap_err();
        assert!(error.contains("no PEM certificate"), "{error}");
        assert!(error.starts_with("elasticsearch.ca_file "), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
