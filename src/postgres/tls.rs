//! TLS to PostgreSQL, with rustls (the same rustls and ring the MongoDB
//! driver uses). libpq's `sslmode` and `sslrootcert` are read from the URL:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | if the server offers it | not checked, unless `sslrootcert` is given (then as `verify-full`) |
//! | `require` | always, or fail | checked, as `verify-full` |
//! | `verify-ca` | always, or fail | signed by a trusted CA; any host name |
//! | `verify-full` | always, or fail | signed by a trusted CA and made out to the host connected to |
//!
//! The trusted CAs are those of `sslrootcert=/path/ca.pem` when it is given
//! (`sslrootcert=system`: the built-in ones), else the Mozilla roots built
//! into docmirror (webpki-roots). `require` thus checks more than libpq's
//! `require` (which checks nothing without a root certificate): a server
//! whose certificate a private CA signed (RDS, Cloud SQL) needs that CA in
//! `sslrootcert`. tokio-postgres parses neither `sslrootcert` nor the
//! `verify-*` modes, so the driver is given the URL without `sslrootcert`
//! and with `sslmode=require` for them.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Fatal;
use crate::redact::{percent_decode, redact_uri};

/// libpq's `sslmode`, as far as docmirror follows it (`allow` is not taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Encryption only (`prefer` without `sslrootcert`, as libpq's).
    Nothing,
    /// Signed by a trusted CA, for any host name (`verify-ca`).
    Chain,
    /// Signed by a trusted CA and made out to the host (`require`, `verify-full`).
    Full,
}

/// The URL as docmirror reads it: what the driver is given, and the TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The URL without `sslrootcert`, and with `sslmode=require` for the `verify-*` modes.
    pub driver_url: String,
    pub mode: Mode,
    /// `sslrootcert`: `None` for the built-in roots.
    pub root: Option<PathBuf>,
}

impl Settings {
    pub fn check(&self) -> Check {
        match (self.mode, &self.root) {
            (Mode::VerifyCa, _) => Check::Chain,
            (Mode::Prefer | Mode::Disable, None) => Check::Nothing,
            _ => Check::Full,
        }
    }

    /// Whether the connection is TLS or nothing.
    pub fn requires_tls(&self) -> bool {
        matches!(self.mode, Mode::Require | Mode::VerifyCa | Mode::VerifyFull)
    }
}

/// Read `sslmode` and `sslrootcert` out of a URL (`postgresql://...?...`) or a
/// `key=value` connection string. The mode's value is checked by the driver,
/// except for the `verify-*` ones, which it does not know.
pub fn settings(url: &str) -> Settings {
    let uri = url.contains("://");
    let (head, params, sep) = match (uri, url.split_once('?')) {
        (true, Some((head, query))) => (format!("{head}?"), query.to_string(), '&'),
        (true, None) => (url.to_string(), String::new(), '&'),
        (false, _) => (String::new(), url.to_string(), ' '),
    };
    let mut mode = Mode::Prefer;
    let mut root = None;
    let mut kept: Vec<String> = Vec::new();
    for part in params.split(sep).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let value = if uri { percent_decode(value) } else { value.to_string() };
        match key {
            "sslrootcert" => {
                root = (value != "system" && !value.is_empty()).then(|| PathBuf::from(value));
                continue;
            }
            "sslmode" => {
                mode = match value.as_str() {
                    "disable" => Mode::Disable,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    _ => Mode::Prefer,
                };
                if matches!(mode, Mode::VerifyCa | Mode::VerifyFull) {
                    kept.push("sslmode=require".into());
                    continue;
                }
            }
            _ => {}
        }
        kept.push(part.to_string());
    }
    let driver_url = match (uri, kept.is_empty()) {
        (true, true) => head.trim_end_matches('?').to_string(),
        (true, false) => format!("{head}{}", kept.join("&")),
        (false, _) => kept.join(" "),
    };
    Settings { driver_url, mode, root }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The trusted CAs: those in the `sslrootcert` file, or the built-in ones.
fn roots(s: &Settings, shown_url: &str) -> Result<RootCertStore, Fatal> {
    let Some(path) = &s.root else {
        return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    };
    let unreadable = |why: String| {
        Fatal::Config(format!(
            "--postgres-url {shown_url}: cannot use sslrootcert={}: {why} (it must be a PEM file holding the \
             CA certificate(s) that signed the server's certificate)",
            path.display()
        ))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(e.to_string()))?;
    let mut store = RootCertStore::empty();
    let (added, refused) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(unreadable(if refused == 0 {
            "no certificate in it".into()
        } else {
            format!("none of its {refused} certificate(s) could be read")
        }));
    }
    Ok(store)
}

/// The TLS connector for these settings (reads the `sslrootcert` file).
pub fn connector(s: &Settings, url: &str) -> Result<MakeRustlsConnect, Fatal> {
    let shown = redact_uri(url);
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Fatal::Internal(format!("TLS setup: {e}")))?;
    let config = match s.check() {
        Check::Full => builder.with_root_certificates(roots(s, &shown)?),
        Check::Chain => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(s, &shown)?), provider)
                .build()
                .map_err(|e| Fatal::Config(format!("--postgres-url {shown}: sslrootcert: {e}")))?;
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyName(inner)))
        }
        Check::Nothing => builder.dangerous().with_custom_certificate_verifier(Arc::new(Unchecked(provider))),
    };
    Ok(MakeRustlsConnect::new(config.with_no_client_auth()))
}

/// The rustls error under a driver error, if a TLS handshake failed on one.
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

/// What to check when a TLS connection failed, for the error line.
pub fn hint(e: &tokio_postgres::Error, s: &Settings) -> Option<&'static str> {
    if chain_says(e, "server does not support TLS") {
        return Some(
            "the server does not accept TLS connections (its ssl setting is off), and the URL's sslmode requires \
             TLS: turn ssl on at the server, or use sslmode=prefer or disable on a network you trust",
        );
    }
    let rustls::Error::InvalidCertificate(why) = rustls_error(e)? else { return None };
    Some(match why {
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the server's certificate is not made out to the host name in the URL: connect by a name the \
             certificate names, or use sslmode=verify-ca to check only who signed it"
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired: the server needs a new one"
        }
        _ if s.root.is_some() => {
            "the server's certificate was not signed by the CA in sslrootcert: point sslrootcert at the CA that \
             signed it (RDS: the region's certificate bundle; Cloud SQL: server-ca.pem)"
        }
        _ => {
            "the server's certificate was not signed by a CA docmirror knows (the Mozilla roots): give the CA \
             that signed it as sslrootcert=/path/ca.pem in the URL (RDS: the region's certificate bundle; \
             Cloud SQL: server-ca.pem)"
        }
    })
}

/// Whether an error under `e` says `text`.
fn chain_says(e: &tokio_postgres::Error, text: &str) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.to_string().contains(text) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name last, after the chain: only that failure is let through.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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

/// `prefer` without `sslrootcert`: encryption only, as libpq's `prefer`
/// (the handshake's signatures are still checked against the certificate).
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_and_the_verify_modes_are_taken_out_of_the_url() {
        let s =
            settings("postgresql://u:pw@db:5432/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5");
        assert_eq!(s.driver_url, "postgresql://u:pw@db:5432/x?sslmode=require&connect_timeout=5");
        assert_eq!(
            (s.mode, s.root.as_deref(), s.check()),
            (Mode::VerifyFull, Some("/etc/ca.pem".as_ref()), Check::Full)
        );
        let s = settings("postgresql://u@db/x?sslrootcert=/ca.pem");
        assert_eq!((s.driver_url.as_str(), s.mode, s.check()), ("postgresql://u@db/x", Mode::Prefer, Check::Full));
        let s = settings("postgresql://u@db/x");
        assert_eq!((s.driver_url.as_str(), s.mode, s.check()), ("postgresql://u@db/x", Mode::Prefer, Check::Nothing));
        assert_eq!(settings("postgresql://u@db/x?sslmode=require").check(), Check::Full);
        assert_eq!(settings("postgresql://u@db/x?sslmode=verify-ca&sslrootcert=system").check(), Check::Chain);
        assert!(settings("postgresql://u@db/x?sslmode=verify-ca&sslrootcert=system").root.is_none());
        assert!(!settings("postgresql://u@db/x?sslmode=disable").requires_tls());
        let kv = settings("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem");
        assert_eq!((kv.driver_url.as_str(), kv.mode), ("host=db user=u sslmode=require", Mode::VerifyCa));
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_naming_it_and_not_the_password() {
        let url = "postgresql://u:s3cret@db/x?sslmode=require&sslrootcert=/nonexistent/ca.pem";
        let Err(e) = connector(&settings(url), url) else { panic!("a missing CA file was taken") };
        let said = e.to_string();
        assert!(said.contains("/nonexistent/ca.pem") && !said.contains("s3cret"), "{said}");
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        let empty = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
        let url = format!("postgresql://u@db/x?sslrootcert={}", empty.path().display());
        let Err(e) = connector(&settings(&url), &url) else { panic!("an empty CA file was taken") };
        assert!(e.to_string().contains("no certificate"), "{e}");
        assert!(connector(&settings("postgresql://u@db/x?sslmode=require"), "").is_ok());
        assert!(connector(&settings("postgresql://u@db/x"), "").is_ok());
    }
}
