//! What changes while a deployment runs: revoked certificates, certificates renewed on disk, and
//! the unauthenticated enrollment path.
//!
//! - [`RevocationList`]: serial numbers the collector refuses. The server's client-certificate
//!   verifier consults it on every handshake, so a reload applies to the next connection
//!   without rebuilding anything; the collector closes live connections itself.
//! - [`ReloadingClientCert`]: a client certificate read from disk again whenever the file
//!   changes, so a sensor that renewed its certificate presents the new one at its next
//!   (re)connect without restarting or rebuilding its endpoint.
//! - [`enroll_endpoint`]: the one kind of client without a certificate, speaking
//!   [`crate::ENROLL_ALPN`]; the collector serves nothing but an enrollment request on it.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::transport::{self, TransportError};

/// Serial numbers (lowercase hex, no separators or leading zeros) the collector refuses.
#[derive(Debug, Default)]
pub struct RevocationList {
    serials: RwLock<HashSet<String>>,
}

/// A line of a revocation file is not a serial number.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {text:?} is not a hexadecimal serial number", path.display())]
pub struct BadRevocationFile {
    pub path: PathBuf,
    pub line: usize,
    pub text: String,
}

impl RevocationList {
    /// Replaces the whole list; returns how many serials it now holds.
    pub fn replace(&self, serials: HashSet<String>) -> usize {
        let count = serials.len();
        // NB: a poisoned lock only means a reader panicked mid-lookup; the set is still whole.
        *self.serials.write().unwrap_or_else(|p| p.into_inner()) = serials;
        count
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial)
    }

    /// Parses a revocation file: one serial per line in hex (colons and a `0x` prefix
    /// allowed, as `openssl x509 -serial` and `vigil certs revoke` print them); `#` starts a
    /// comment. A missing file is an empty list: revocation is opt-in.
    pub fn read_file(path: &Path) -> Result<HashSet<String>, RevocationFileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(source) => {
                return Err(RevocationFileError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut serials = HashSet::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let serial = normalize_serial(line).ok_or_else(|| BadRevocationFile {
                path: path.to_owned(),
                line: index + 1,
                text: line.to_owned(),
            })?;
            serials.insert(serial);
        }
        Ok(serials)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RevocationFileError {
    /// The file exists but could not be read; the previous list stays in force.
    #[error("cannot read revocation list {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is not a serial; the previous list stays in force.
    #[error(transparent)]
    Bad(#[from] BadRevocationFile),
}

/// The hash under which an enrollment token is stored (`vigil certs token` writes it, the
/// collector looks it up): hex SHA-256 of the token text. The token itself is stored nowhere.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The canonical form of a hex serial, or `None` when it is not one.
pub fn normalize_serial(text: &str) -> Option<String> {
    let digits: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = digits.trim_start_matches('0').to_ascii_lowercase();
    Some(if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed
    })
}

/// The serial number of a DER certificate, canonical as in [`normalize_serial`].
pub fn serial_of(der: &[u8]) -> Result<String, TransportError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TransportError::PeerCertificate {
            reason: format!("unparsable: {e}"),
        })?;
    let hex: String = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    normalize_serial(&hex).ok_or_else(|| TransportError::PeerCertificate {
        reason: "empty serial number".into(),
    })
}

/// The serial of the leaf certificate the peer of `conn` authenticated with, if any.
pub fn peer_serial(conn: &quinn::Connection) -> Option<String> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    serial_of(certs.first()?.as_ref()).ok()
}

/// webpki's chain and validity checks, then the revocation list. Client authentication is
/// optional at the TLS layer only so that enrollment can happen on the same port: a
/// certificate that *is* presented is checked in full, and the collector closes any
/// connection on the main ALPN that has none before serving a single stream.
#[derive(Debug)]
pub(crate) struct RevocationCheckingVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) revoked: Arc<RevocationList>,
}

impl ClientCertVerifier for RevocationCheckingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let serial = serial_of(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.revoked.is_revoked(&serial) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client certificate and key read from disk, and read again when the certificate file's
/// modification time changes. A file that fails to load keeps the previous pair in use (and
/// is retried at the next handshake), so a half-written renewal never costs a connection.
pub struct ReloadingClientCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Option<SystemTime>, Arc<CertifiedKey>)>,
}

impl fmt::Debug for ReloadingClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ReloadingClientCert {
    /// Loads the pair now, so a missing or broken file is a start-up error.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let mtime = modified(cert);
        let pair = load_certified_key(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: Mutex::new((mtime, pair)),
        })
    }
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = modified(&self.cert);
        if mtime != current.0 {
            match load_certified_key(&self.cert, &self.key) {
                Ok(pair) => *current = (mtime, pair),
                Err(e) => tracing::warn!("keeping the previous client certificate: {e}"),
            }
        }
        Some(current.1.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TransportError> {
    let files = transport::TlsFiles {
        ca: PathBuf::new(),
        cert: cert.to_owned(),
        key: key.to_owned(),
    };
    let (certs, private) = transport::cert_and_key(&files)?;
    CertifiedKey::from_der(certs, private, &transport::provider())
        .map(Arc::new)
        .map_err(|source| TransportError::CertKey {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })
}

/// A client endpoint without a certificate, for enrollment only: it trusts servers chaining to
/// `ca` and speaks [`crate::ENROLL_ALPN`], which the collector serves with exactly one request
/// kind.
pub fn enroll_endpoint(ca: &Path) -> Result<quinn::Endpoint, TransportError> {
    anonymous_endpoint(ca, crate::ENROLL_ALPN)
}

/// A client endpoint without a certificate speaking `alpn`. Only enrollment has a use for it;
/// tests use it to check that the main ALPN refuses such clients.
pub fn anonymous_endpoint(ca: &Path, alpn: &[u8]) -> Result<quinn::Endpoint, TransportError> {
    let roots = transport::root_store(ca)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(transport::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    transport::endpoint_with(tls)
}

/// A private key from PEM text, checked to be something rustls can sign with.
pub fn check_private_key_pem(pem: &str) -> Result<(), String> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())?;
    transport::provider()
        .key_provider
        .load_private_key(key)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_compared_in_one_canonical_form() {
        assert_eq!(normalize_serial("0x00:1A:ff").as_deref(), Some("1aff"));
        assert_eq!(normalize_serial("000").as_deref(), Some("0"));
        assert_eq!(normalize_serial("xyz"), None);
        assert_eq!(normalize_serial(""), None);
    }

    #[test]
    fn a_revocation_file_with_a_bad_line_names_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("revoked");
        std::fs::write(&path, "# revoked\n0a:0b # web-1\n\nnot-a-serial\n").expect("write");
        let err = RevocationList::read_file(&path).expect_err("bad line accepted");
        assert!(err.to_string().contains(":4: \"not-a-serial\""), "{err}");
        std::fs::write(&path, "0a:0b # web-1\n").expect("write");
        let list = RevocationList::default();
        list.replace(RevocationList::read_file(&path).expect("valid file"));
        assert!(list.is_revoked("a0b"));
        let missing = RevocationList::read_file(&dir.path().join("none")).expect("missing file");
        assert!(missing.is_empty());
    }
}
