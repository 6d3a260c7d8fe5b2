//! TLS to PostgreSQL with libpq's meaning of the store URL's `sslmode`, `sslrootcert`, `sslcert`
//! and `sslkey`, on the rustls (ring) the collector already links.
//!
//! tokio-postgres' URL parser knows only `sslmode=disable|prefer|require` and rejects the other
//! keys, so they are taken out of the URL here and the rest is left to it. What each mode
//! checks, as in libpq:
//!
//! | sslmode            | encrypted            | chain checked against `sslrootcert` | host name checked |
//! |--------------------|----------------------|-------------------------------------|-------------------|
//! | disable            | no                   | -                                   | -                 |
//! | prefer (default)   | if the server offers | only if `sslrootcert` is given      | no                |
//! | require            | yes                  | only if `sslrootcert` is given      | no                |
//! | verify-ca          | yes                  | yes (`sslrootcert` required)        | no                |
//! | verify-full        | yes                  | yes (`sslrootcert` required)        | yes               |
//!
//! NB: libpq falls back to `~/.postgresql/root.crt` (and `postgresql.crt`/`.key`) when the keys
//! are left out; a service's home is no place for its trust anchors, so here they are named or
//! not used, and verify-ca/verify-full without `sslrootcert` is a config error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The URL query keys this module owns.
const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`, less `allow` (plaintext first, TLS if refused), which tokio-postgres
/// cannot do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS settings of a store URL, checked for consistency (files are read by [`connector`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// The CA the server's certificate must chain to.
    pub root_cert: Option<PathBuf>,
    /// A client certificate and its key, for servers that ask for one (`cert` in pg_hba.conf).
    pub client: Option<(PathBuf, PathBuf)>,
}

/// Why the TLS settings cannot be used: a file named by one of the URL's keys.
#[derive(Debug, thiserror::Error)]
#[error("store URL: {key}={}: {reason}", path.display())]
pub struct TlsFileError {
    /// The URL key naming the file (`sslrootcert`, `sslcert`, `sslkey`).
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Takes libpq's TLS keys out of `url`'s query: the URL left for tokio-postgres, and the settings.
/// Errors name the key and why.
pub(crate) fn split_url(url: &str) -> Result<(String, TlsParams), String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, query),
        None => (url, ""),
    };
    let mut kept = Vec::new();
    let mut values: [Option<String>; 4] = Default::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match KEYS.iter().position(|k| *k == key) {
            Some(i) => values[i] = Some(percent_decode(value)),
            None => kept.push(pair),
        }
    }
    let [mode, root_cert, cert, key] = values;
    let mode = match mode.as_deref() {
        None | Some("prefer") => SslMode::Prefer,
        Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some("allow") => {
            return Err("sslmode=allow is not supported (it tries plaintext first); use prefer, or require to insist on TLS".into())
        }
        Some(other) => {
            return Err(format!(
                "unknown sslmode {other:?}: expected disable, prefer, require, verify-ca or verify-full"
            ))
        }
    };
    let path = |key: &str, value: Option<String>| {
        match value.as_deref() {
        None => Ok(None),
        Some("") => Err(format!("{key} is empty: give the path of a PEM file")),
        Some("system") if key == "sslrootcert" => Err(
            "sslrootcert=system is not supported: name the CA's PEM file (e.g. /etc/ssl/certs/ca-certificates.crt)".into(),
        ),
        Some(path) => Ok(Some(PathBuf::from(path))),
    }
    };
    let root_cert = path("sslrootcert", root_cert)?;
    let client = match (path("sslcert", cert)?, path("sslkey", key)?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            return Err("sslcert needs sslkey (the client certificate's private key)".into())
        }
        (None, Some(_)) => return Err("sslkey needs sslcert (the client certificate)".into()),
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        let name = if mode == SslMode::VerifyCa {
            "verify-ca"
        } else {
            "verify-full"
        };
        return Err(format!(
            "sslmode={name} needs sslrootcert=/path/to/ca.pem, the CA that signed the server's certificate"
        ));
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((
        rest,
        TlsParams {
            mode,
            root_cert,
            client,
        },
    ))
}

/// `%2F` -> `/`; a malformed escape is kept as written (the path then does not exist and says so).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl TlsParams {
    /// What tokio-postgres is told: whether to ask for TLS and whether to insist.
    pub(crate) fn tokio_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS connector for these settings, reading the files they name.
pub(crate) fn connector(params: &TlsParams) -> Result<MakeRustlsConnect, TlsFileError> {
    let TlsParams {
        mode,
        root_cert,
        client,
    } = params;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = match root_cert {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("sslrootcert", path)? {
                roots.add(cert).map_err(|e| TlsFileError {
                    key: "sslrootcert",
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsFileError {
                        key: "sslrootcert",
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
            Some(verifier)
        }
        None => None,
    };
    let verifier = Verifier {
        chain,
        check_name: *mode == SslMode::VerifyFull,
        provider: provider.clone(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError {
            key: "sslmode",
            path: PathBuf::new(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates("sslcert", cert)?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsFileError {
                key: "sslkey",
                path: key.clone(),
                reason: format!("cannot read a private key: {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsFileError {
                    key: "sslkey",
                    path: key.clone(),
                    reason: format!("does not fit sslcert: {e}"),
                })?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates of a PEM file; an error when it has none.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let fail = |reason: String| TlsFileError {
        key,
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "holds no certificate (no BEGIN CERTIFICATE section)".into(),
        ));
    }
    Ok(certs)
}

/// The server-certificate check for a mode: none, the chain only, or chain and name.
#[derive(Debug)]
struct Verifier {
    /// `None`: unverified (prefer/require without `sslrootcert`), like libpq.
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // NB: webpki checks the chain before the name, so a name error means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    // The handshake signatures are checked in every mode: an unverified certificate still
    // has to be the one whose key signed this handshake.
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a connection failed, for a person: tokio-postgres' Display stops at "error performing
/// TLS handshake"; the cause, and what it means for the settings, follows.
pub(crate) fn explain(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        // tokio-rustls hands rustls' error over inside an io::Error, whose `source` skips it.
        let rustls_error = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| cause.downcast_ref::<rustls::Error>());
        if let Some(tls) = rustls_error {
            text.push_str(": ");
            text.push_str(&describe_tls(tls));
            return text;
        }
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn describe_tls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate does not match the host name in the store URL \
             (sslmode=verify-full checks it): {e}"
        ),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("the server's certificate is not signed by the CA in sslrootcert: {e}")
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_are_taken_out_and_the_rest_is_left_to_tokio_postgres() {
        let (rest, params) = split_url(
            "postgres://u:pw@db:5432/vigil?application_name=c&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        )
        .expect("valid");
        assert_eq!(
            rest,
            "postgres://u:pw@db:5432/vigil?application_name=c&connect_timeout=5"
        );
        assert_eq!(
            params,
            TlsParams {
                mode: SslMode::VerifyFull,
                root_cert: Some("/etc/ca.pem".into()),
                client: None,
            }
        );
        let (rest, params) = split_url("postgres://db/vigil").expect("valid");
        assert_eq!(rest, "postgres://db/vigil");
        assert_eq!(params.mode, SslMode::Prefer, "libpq's default");
    }

    #[test]
    fn bad_tls_settings_name_the_key_and_why() {
        for (url, needle) in [
            (
                "postgres://db/v?sslmode=verify",
                "unknown sslmode \"verify\"",
            ),
            (
                "postgres://db/v?sslmode=allow",
                "sslmode=allow is not supported",
            ),
            (
                "postgres://db/v?sslmode=verify-full",
                "verify-full needs sslrootcert",
            ),
            (
                "postgres://db/v?sslmode=verify-ca",
                "verify-ca needs sslrootcert",
            ),
            ("postgres://db/v?sslrootcert=", "sslrootcert is empty"),
            ("postgres://db/v?sslcert=/c.pem", "sslcert needs sslkey"),
            ("postgres://db/v?sslkey=/k.pem", "sslkey needs sslcert"),
        ] {
            let err = split_url(url).expect_err(url);
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn unreadable_or_empty_ca_files_are_errors_naming_sslrootcert() {
        let dir = tempfile::tempdir().expect("temp dir");
        let params = |path: &Path| TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: Some(path.to_owned()),
            client: None,
        };
        let missing = dir.path().join("missing.pem");
        let err = connector(&params(&missing)).err().expect("missing file");
        let text = err.to_string();
        assert!(text.starts_with("store URL: sslrootcert="), "{text}");
        assert!(text.contains("cannot read"), "{text}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let text = connector(&params(&empty))
            .err()
            .expect("no certs")
            .to_string();
        assert!(text.contains("sslrootcert="), "{text}");
        assert!(text.contains("holds no certificate"), "{text}");
    }
}
