//! Enrollment and renewal: the collector signs short-lived sensor certificates.
//!
//! `vigil certs token` appends `SHA256(token) EXPIRY NAME` lines to a tokens file; the token
//! itself is printed once and stored nowhere. A sensor presents the token with a CSR on an
//! unauthenticated [`vigil_proto::ENROLL_ALPN`] connection; the collector checks the hash and
//! expiry, marks the token used in its own database (an insert that fails on a second use, so
//! two racing enrollments cannot both win, and a restart does not make a token new again), and
//! signs the CSR's public key for the name the *token* names: the sensor cannot pick its
//! identity. Renewal is the same signing for the name in the peer's current certificate.
//!
//! NB: the used-token table is created here, on its own connection, not in the store's
//! migrations: it is enrollment's state, and WAL lets this occasional write sit beside ingest.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rusqlite::{params, Connection};
use vigil_proto::transport::Role;
use vigil_proto::trust::token_hash;

use crate::config::EnrollConfig;

/// Certificates may be used this long before they were signed, for peers whose clock is behind.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why an enrollment or renewal was refused. The `Display` text is what the peer is told, so
/// it says what to do without revealing which tokens exist.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// No line of the tokens file has this token's hash.
    #[error("unknown enrollment token (make one with `vigil certs token`)")]
    UnknownToken,
    /// The token was valid but has been used before.
    #[error("enrollment token already used (tokens are one-time: make a new one)")]
    Reused,
    /// The token's expiry has passed.
    #[error("enrollment token expired (make a new one with `vigil certs token`)")]
    Expired,
    /// The CSR does not parse or its signature does not verify.
    #[error("bad certificate signing request: {0}")]
    BadCsr(#[source] rcgen::Error),
    /// The collector cannot read its tokens file, CA or database, or cannot sign: its own
    /// problem, logged in full and reported to the peer only as unavailable.
    #[error("enrollment is unavailable on this collector")]
    Internal(String),
}

/// Signs certificates with the deployment CA for enrolling and renewing sensors.
pub struct Enroller {
    config: EnrollConfig,
    ca_cert: PathBuf,
    database: PathBuf,
}

impl Enroller {
    pub fn new(config: EnrollConfig, ca_cert: PathBuf, database: PathBuf) -> Self {
        Self {
            config,
            ca_cert,
            database,
        }
    }

    /// Checks and consumes `token`, then signs the CSR for the token's sensor name. Returns the
    /// certificate and CA in PEM and the name. Blocking (files, SQLite, signing).
    pub fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
        now: SystemTime,
    ) -> Result<(String, String, String), EnrollError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(EnrollError::BadCsr)?;
        let hash = token_hash(token);
        let name = self.find_token(&hash, now)?;
        self.mark_used(&hash, &name, now)?;
        let (cert, ca) = self.sign(&csr, &name, now)?;
        Ok((cert, ca, name))
    }

    /// Signs the CSR for `name`, the name in the peer's current (verified) certificate.
    pub fn renew(
        &self,
        name: &str,
        csr_pem: &str,
        now: SystemTime,
    ) -> Result<(String, String), EnrollError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(EnrollError::BadCsr)?;
        self.sign(&csr, name, now)
    }

    fn find_token(&self, hash: &str, now: SystemTime) -> Result<String, EnrollError> {
        let path = &self.config.tokens;
        let text = std::fs::read_to_string(path).map_err(|e| {
            EnrollError::Internal(format!("cannot read tokens file {}: {e}", path.display()))
        })?;
        let now_secs = unix_secs(now);
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(h), Some(expiry), Some(name)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if h != hash {
                continue;
            }
            let expiry: u64 = expiry.parse().map_err(|_| {
                EnrollError::Internal(format!("bad expiry {expiry:?} in {}", path.display()))
            })?;
            if now_secs >= expiry {
                return Err(EnrollError::Expired);
            }
            return Ok(name.to_owned());
        }
        Err(EnrollError::UnknownToken)
    }

    fn mark_used(&self, hash: &str, name: &str, now: SystemTime) -> Result<(), EnrollError> {
        let internal = |e: rusqlite::Error| {
            EnrollError::Internal(format!("database {}: {e}", self.database.display()))
        };
        let conn = Connection::open(&self.database).map_err(internal)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(internal)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS enroll_tokens_used (
                 hash TEXT PRIMARY KEY,
                 name TEXT NOT NULL,
                 used_s INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )
        .map_err(internal)?;
        let used = i64::try_from(unix_secs(now)).unwrap_or(i64::MAX);
        match conn.execute(
            "INSERT INTO enroll_tokens_used (hash, name, used_s) VALUES (?1, ?2, ?3)",
            params![hash, name, used],
        ) {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(EnrollError::Reused)
            }
            Err(e) => Err(internal(e)),
        }
    }

    fn sign(
        &self,
        csr: &CertificateSigningRequestParams,
        name: &str,
        now: SystemTime,
    ) -> Result<(String, String), EnrollError> {
        let internal = |what: &str, path: &Path, e: String| {
            EnrollError::Internal(format!("{what} {}: {e}", path.display()))
        };
        let ca_pem = std::fs::read_to_string(&self.ca_cert)
            .map_err(|e| internal("cannot read CA", &self.ca_cert, e.to_string()))?;
        let key_pem = std::fs::read_to_string(&self.config.ca_key)
            .map_err(|e| internal("cannot read CA key", &self.config.ca_key, e.to_string()))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| internal("bad CA key", &self.config.ca_key, e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
            .map_err(|e| internal("bad CA", &self.ca_cert, e.to_string()))?;

        // Only the public key is taken from the CSR; everything else is the collector's call.
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Vigil");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, Role::Sensor.as_str());
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + Duration::from_secs(self.config.cert_validity_secs)).into();
        // NB: rcgen's default serial is a hash of the public key, and renewal keeps the key:
        // without a fresh serial, revoking one certificate would revoke its renewals too.
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(|e| EnrollError::Internal(format!("cannot sign for {name}: {e}")))?;
        Ok((cert.pem(), ca_pem))
    }
}

fn random_serial() -> Result<SerialNumber, EnrollError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| EnrollError::Internal(format!("cannot read /dev/urandom: {e}")))?;
    // Positive and never starting with a zero byte, so it round-trips unchanged through DER.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An enrollment connection gets this long to send its one request.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest enrollment request: a token and a CSR are well under a kilobyte or two.
const ENROLL_REQUEST_BYTES: usize = 16 * 1024;

/// Close code after an enrollment connection served (or refused) its one request.
const CLOSE_ENROLL_DONE: quinn::VarInt = quinn::VarInt::from_u32(0);

/// Serves the one request an unauthenticated [`vigil_proto::ENROLL_ALPN`] connection may make.
pub(crate) async fn serve_enrollment(
    conn: quinn::Connection,
    shared: crate::server::Shared,
    remote: std::net::SocketAddr,
) {
    use vigil_proto::{read_frame, write_frame, Enroll, Reply, Request};
    let served = tokio::time::timeout(ENROLL_TIMEOUT, async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let request = read_frame::<_, Request>(&mut recv, ENROLL_REQUEST_BYTES).await;
        let reply = match (request, shared.enroller.clone()) {
            (Ok(Some(Request::Enroll(Enroll { token, csr_pem }))), Some(enroller)) => {
                let signed = tokio::task::spawn_blocking(move || {
                    enroller.enroll(&token, &csr_pem, SystemTime::now())
                })
                .await;
                match signed {
                    Ok(Ok((cert_pem, ca_pem, name))) => {
                        shared.stats.certificate_issued();
                        tracing::info!(%remote, peer = %name, "enrolled sensor {name} from {remote}");
                        Reply::Certificate { cert_pem, ca_pem }
                    }
                    Ok(Err(e)) => {
                        shared.stats.refused_enrollment();
                        tracing::warn!(%remote, "refused enrollment from {remote}: {e:?}");
                        Reply::Refused {
                            reason: e.to_string(),
                        }
                    }
                    Err(_) => Reply::Refused {
                        reason: "the collector failed while signing".into(),
                    },
                }
            }
            (Ok(Some(Request::Enroll(_))), None) => {
                shared.stats.refused_enrollment();
                Reply::Refused {
                    reason: "this collector does not enroll sensors (no `enroll` config)".into(),
                }
            }
            (Ok(Some(_)), _) => {
                shared.stats.refused_request();
                tracing::warn!(%remote, "refused a request without a certificate from {remote}");
                Reply::Refused {
                    reason: "only enrollment is served without a client certificate".into(),
                }
            }
            (Ok(None), _) => return None,
            (Err(e), _) => {
                shared.stats.rejected_frame();
                tracing::warn!(%remote, "malformed enrollment request from {remote}: {e}");
                Reply::Refused {
                    reason: format!("malformed request: {e}"),
                }
            }
        };
        let _ = write_frame(&mut send, &reply).await;
        let _ = send.finish();
        // Give the reply time to arrive before closing; the client closes first normally.
        let _ = conn.closed().await;
        Some(())
    })
    .await;
    if served.is_err() {
        tracing::debug!(%remote, "enrollment connection from {remote} timed out");
    }
    conn.close(CLOSE_ENROLL_DONE, b"enrollment done");
}
