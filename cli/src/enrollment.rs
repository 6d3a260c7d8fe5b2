//! `vigil certs token` and `vigil certs revoke`: the deployment-side half of enrollment and
//! revocation. Both write files the collector reads: `DIR/enroll-tokens` (hashes of one-time
//! tokens, see `vigil_collector::enroll`) and `DIR/revoked` (serial numbers).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use vigil_proto::trust::{serial_of, token_hash};

use crate::certs::{cert_paths, check_name, CertError};

/// `DIR/enroll-tokens`: what the collector's `enroll.tokens` should point at.
pub fn tokens_path(dir: &Path) -> PathBuf {
    dir.join("enroll-tokens")
}

/// `DIR/revoked`: what the collector's `revoked` should point at.
pub fn revoked_path(dir: &Path) -> PathBuf {
    dir.join("revoked")
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollmentError {
    #[error(transparent)]
    Cert(#[from] CertError),
    /// A file could not be read or appended to.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The certificate to revoke does not parse.
    #[error("{}: {reason}", path.display())]
    BadCertificate { path: PathBuf, reason: String },
}

/// Makes a one-time token for enrolling the sensor `name`, valid for `ttl`, records its hash
/// and expiry in `DIR/enroll-tokens`, and returns the token (shown once, stored nowhere).
pub fn make_token(dir: &Path, name: &str, ttl: Duration) -> Result<String, EnrollmentError> {
    check_name(name)?;
    let path = tokens_path(dir);
    let io = |source| EnrollmentError::Io {
        path: path.clone(),
        source,
    };
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(io)?;
    let token: String = std::iter::once("vigil-".to_owned())
        .chain(bytes.iter().map(|b| format!("{b:02x}")))
        .collect();
    let expiry = (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let line = format!("{} {expiry} {name}\n", token_hash(&token));
    // NB: one write of one line in append mode, so concurrent `vigil certs token` runs and the
    // collector's reads never see half a line.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    Ok(token)
}

/// Appends the serial of `DIR/NAME.pem` to `DIR/revoked`; returns the serial. The collector
/// notices the change within a second (or at SIGHUP) and closes that peer's connections.
pub fn revoke(dir: &Path, name: &str) -> Result<String, EnrollmentError> {
    check_name(name)?;
    let cert = cert_paths(dir, name).cert;
    revoke_file(dir, &cert, name)
}

/// Appends the serial of the certificate in `cert` (PEM) to `DIR/revoked`.
pub fn revoke_file(dir: &Path, cert: &Path, label: &str) -> Result<String, EnrollmentError> {
    let der = CertificateDer::from_pem_file(cert).map_err(|e| EnrollmentError::BadCertificate {
        path: cert.to_owned(),
        reason: e.to_string(),
    })?;
    let serial = serial_of(der.as_ref()).map_err(|e| EnrollmentError::BadCertificate {
        path: cert.to_owned(),
        reason: e.to_string(),
    })?;
    let path = revoked_path(dir);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|source| EnrollmentError::Io {
            path: path.clone(),
            source,
        })?;
    file.write_all(format!("{serial} # {label}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| EnrollmentError::Io { path, source })?;
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_stored_only_as_its_hash() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = make_token(dir.path(), "web-1", Duration::from_secs(3600)).expect("token");
        let text = std::fs::read_to_string(tokens_path(dir.path())).expect("tokens file");
        assert!(!text.contains(&token), "{text}");
        assert!(text.starts_with(&token_hash(&token)), "{text}");
        assert!(text.trim_end().ends_with(" web-1"), "{text}");
        assert!(make_token(dir.path(), "../x", Duration::from_secs(1)).is_err());
    }
}
