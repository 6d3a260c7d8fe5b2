//! Enrollment and renewal of the sensor's own certificate.
//!
//! The sensor makes its key here and it never leaves `state_dir` (mode 0600): the collector
//! only ever sees a CSR. Enrollment uses a one-time token on an unauthenticated
//! [`vigil_proto::ENROLL_ALPN`] connection; renewal uses the current certificate over mTLS,
//! keeps the key, and replaces the certificate file atomically. The shipper's endpoint re-reads
//! the file at its next handshake (see `vigil_proto::trust::ReloadingClientCert`).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use vigil_proto::transport::{self, TlsFiles};
use vigil_proto::trust;
use vigil_proto::{read_frame, write_frame, Enroll, Renew, Reply, Request};

/// Largest reply to an enrollment or renewal: a certificate and the CA.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Retry delay after a failed renewal; renewal starts at two thirds of the lifetime, so there
/// are many retries before the certificate expires.
const RENEW_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a key or CSR: {0}")]
    Csr(#[source] rcgen::Error),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    #[error("talking to the collector: {0}")]
    Exchange(String),
    /// The collector said no; its reason (e.g. token reused or expired).
    #[error("the collector refused: {0}")]
    Refused(String),
    #[error("certificate {}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
}

/// Where the sensor keeps what enrollment made.
pub fn state_files(state_dir: &Path, ca: &Path) -> TlsFiles {
    TlsFiles {
        ca: ca.to_owned(),
        cert: state_dir.join("sensor.pem"),
        key: state_dir.join("sensor-key.pem"),
    }
}

/// Enrolls with `token` unless `state_dir` already holds a certificate (a restarted sensor
/// must not spend, or need, a new token). Returns the TLS files to use.
pub async fn ensure_enrolled(
    token: &str,
    address: SocketAddr,
    server_name: &str,
    ca: &Path,
    state_dir: &Path,
) -> Result<TlsFiles, EnrollError> {
    let files = state_files(state_dir, ca);
    if files.cert.exists() && files.key.exists() {
        tracing::info!(cert = %files.cert.display(), "already enrolled; not using the token");
        return Ok(files);
    }
    std::fs::create_dir_all(state_dir).map_err(|source| EnrollError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    let key = KeyPair::generate().map_err(EnrollError::Csr)?;
    let csr_pem = csr(&key)?;
    let endpoint = trust::enroll_endpoint(ca)?;
    let reply = exchange(
        &endpoint,
        address,
        server_name,
        &Request::Enroll(Enroll {
            token: token.trim().to_owned(),
            csr_pem,
        }),
    )
    .await;
    endpoint.close(0u32.into(), b"enrolled");
    let cert_pem = certificate_from(reply?)?;
    // Key first: a certificate on disk always has its key beside it.
    write_atomic(&files.key, &key.serialize_pem(), 0o600)?;
    write_atomic(&files.cert, &cert_pem, 0o644)?;
    tracing::info!(cert = %files.cert.display(), "enrolled with the collector");
    Ok(files)
}

/// Renews the certificate in `files` at two thirds of its lifetime, forever. Failures are
/// logged and retried; they never stop the sensor (the old certificate works until it expires).
pub async fn renew_forever(files: TlsFiles, address: SocketAddr, server_name: String) {
    loop {
        let wait = match renew_at(&files.cert) {
            Ok(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
            Err(e) => {
                tracing::warn!("cannot read my certificate: {e}");
                RENEW_RETRY
            }
        };
        tokio::time::sleep(wait).await;
        match renew_once(&files, address, &server_name).await {
            Ok(()) => tracing::info!(cert = %files.cert.display(), "renewed my certificate"),
            Err(e) => {
                tracing::warn!("certificate renewal failed, retrying: {e}");
                tokio::time::sleep(RENEW_RETRY).await;
            }
        }
    }
}

/// One renewal over mTLS with the current certificate; keeps the key.
pub async fn renew_once(
    files: &TlsFiles,
    address: SocketAddr,
    server_name: &str,
) -> Result<(), EnrollError> {
    let key_pem = std::fs::read_to_string(&files.key).map_err(|source| EnrollError::Io {
        path: files.key.clone(),
        source,
    })?;
    let key = KeyPair::from_pem(&key_pem).map_err(EnrollError::Csr)?;
    let endpoint = transport::client_endpoint(files)?;
    let reply = exchange(
        &endpoint,
        address,
        server_name,
        &Request::Renew(Renew {
            csr_pem: csr(&key)?,
        }),
    )
    .await;
    endpoint.close(0u32.into(), b"renewed");
    let cert_pem = certificate_from(reply?)?;
    write_atomic(&files.cert, &cert_pem, 0o644)
}

/// When the certificate has lived two thirds of its lifetime.
fn renew_at(cert: &Path) -> Result<SystemTime, EnrollError> {
    let bad = |reason: String| EnrollError::BadCertificate {
        path: cert.to_owned(),
        reason,
    };
    let der = CertificateDer::from_pem_file(cert).map_err(|e| bad(e.to_string()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| bad(e.to_string()))?;
    let validity = parsed.validity();
    let from = validity.not_before.timestamp();
    let to = validity.not_after.timestamp();
    let at = from + (to - from) * 2 / 3;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0)))
}

fn csr(key: &KeyPair) -> Result<String, EnrollError> {
    // The subject is the collector's call (from the token or the current certificate).
    CertificateParams::default()
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(EnrollError::Csr)
}

async fn exchange(
    endpoint: &quinn::Endpoint,
    address: SocketAddr,
    server_name: &str,
    request: &Request,
) -> Result<Reply, EnrollError> {
    let conn = transport::connect(endpoint, address, server_name).await?;
    let ask = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, request)
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        read_frame::<_, Reply>(&mut recv, MAX_REPLY_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no reply".to_owned())
    };
    let reply = tokio::time::timeout(transport::CONNECT_TIMEOUT * 2, ask)
        .await
        .map_err(|_| EnrollError::Exchange("no reply in time".into()))?
        .map_err(EnrollError::Exchange);
    conn.close(0u32.into(), b"done");
    reply
}

fn certificate_from(reply: Reply) -> Result<String, EnrollError> {
    match reply {
        Reply::Certificate { cert_pem, .. } => Ok(cert_pem),
        Reply::Refused { reason } => Err(EnrollError::Refused(reason)),
        other => Err(EnrollError::Exchange(format!("unexpected reply {other:?}"))),
    }
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), EnrollError> {
    let io = |source| EnrollError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
