//! Mutual-TLS QUIC glue shared by the sensor, the collector and the CLI.
//!
//! Every connection is authenticated both ways against the deployment's own CA and nothing
//! else: the server trusts client certificates that chain to it, the client trusts a server
//! certificate that chains to it and names the host it dialled. What a peer may do is decided
//! by its certificate: the subject OrganizationalUnit carries its [`Role`] and the subject
//! CommonName its name (a sensor's name is what the collector stores its data under).
//!
//! Only TLS 1.3 (QUIC requires it) with the ring provider; the ALPN is [`crate::ALPN`], so a peer
//! of another protocol version fails the handshake instead of misreading frames.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A connection with no packet from the peer for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The client pings this often, so a quiet but healthy connection (a subscription with no
/// alerts, a sensor between batches) never reaches [`IDLE_TIMEOUT`], and NATs keep their mapping.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How long [`connect`] waits for the handshake. QUIC ignores ICMP errors, so without this a
/// collector that is down would only be noticed after the whole idle timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests a client may have in flight on one connection (one request per stream). A
/// peer-controlled resource, so it is bounded; the server may lower it in its transport config.
pub const MAX_CONCURRENT_STREAMS: u32 = 64;

/// What a certificate holder may do; carried in the subject OrganizationalUnit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A host agent: may publish events and alerts.
    Sensor,
    /// A person or tool: may read alerts and manage the deployment.
    Operator,
    /// The central server: presents this role to its clients.
    Collector,
}

impl Role {
    /// The OrganizationalUnit value that encodes this role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sensor => "sensor",
            Role::Operator => "operator",
            Role::Collector => "collector",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The string is not one of the role names.
#[derive(Debug, thiserror::Error)]
#[error("unknown role {0:?} (expected sensor, operator or collector)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sensor" => Ok(Role::Sensor),
            "operator" => Ok(Role::Operator),
            "collector" => Ok(Role::Collector),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// Who is on the other end of an authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The subject CommonName.
    pub name: String,
    pub role: Role,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.role)
    }
}

/// The PEM files of one party: the deployment CA, its own certificate (chain) and private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A PEM file could not be read at all.
    #[error("cannot read {what} {}: {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file was read but holds nothing usable of the expected kind.
    #[error("{what} {}: {reason}", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    /// rustls refused the certificate/key pair, e.g. the key does not belong to the certificate.
    #[error("certificate {} with key {}: {source}", cert.display(), key.display())]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The provider lacks what QUIC needs (TLS 1.3 and its initial cipher suite): a build problem.
    #[error("TLS setup: {0}")]
    TlsSetup(String),
    /// The local UDP socket could not be bound.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The connection could not even be attempted (e.g. a server name that is not a valid DNS name).
    #[error("cannot connect to {addr} as {server_name:?}: {source}")]
    Connect {
        addr: SocketAddr,
        server_name: String,
        #[source]
        source: quinn::ConnectError,
    },
    /// The handshake failed: unreachable, refused, or a certificate the other side rejected.
    #[error("connection to {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    /// Nobody answered within [`CONNECT_TIMEOUT`].
    #[error("no answer from {addr} within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { addr: SocketAddr },
    /// The peer's certificate lacks a name or role, or cannot be parsed. Cannot happen for a
    /// certificate made by `vigil certs`; it names what is missing so a hand-made one can be fixed.
    #[error("peer certificate: {reason}")]
    PeerCertificate { reason: String },
}

/// A client endpoint that authenticates with `files.cert`/`files.key` and trusts only servers
/// whose certificate chains to `files.ca` and names the host it dialled. The certificate is
/// read again at a handshake after its file changed, so a renewed certificate is used at the
/// next (re)connect.
pub fn client_endpoint(files: &TlsFiles) -> Result<quinn::Endpoint, TransportError> {
    let roots = root_store(&files.ca)?;
    let resolver = crate::trust::ReloadingClientCert::load(&files.cert, &files.key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(resolver));
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    endpoint_with(tls)
}

/// A client endpoint from a finished rustls config.
pub(crate) fn endpoint_with(tls: rustls::ClientConfig) -> Result<quinn::Endpoint, TransportError> {
    let quic = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| TransportError::TlsSetup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = base_transport();
    // The server never opens streams towards a client.
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    config.transport_config(Arc::new(transport));

    let mut endpoint = bind_client()?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Dials `addr`, checking that the server's certificate names `server_name`.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, TransportError> {
    let connecting =
        endpoint
            .connect(addr, server_name)
            .map_err(|source| TransportError::Connect {
                addr,
                server_name: server_name.to_owned(),
                source,
            })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(TransportError::Handshake { addr, source }),
        Err(_elapsed) => Err(TransportError::Timeout { addr }),
    }
}

/// A server config presenting `files.cert`/`files.key`. A client certificate, when presented,
/// must chain to `files.ca`, be within its validity and not be in `revoked`; one is *required*
/// for everything but enrollment, which the server enforces per connection by ALPN: it offers
/// [`crate::ALPN`] and [`crate::ENROLL_ALPN`], and the caller must close a connection on the
/// former whose peer has no certificate (see [`peer_identity`]). Streams per connection are
/// capped at [`MAX_CONCURRENT_STREAMS`]; callers may replace the transport config.
pub fn server_config(
    files: &TlsFiles,
    revoked: Arc<crate::trust::RevocationList>,
) -> Result<quinn::ServerConfig, TransportError> {
    let roots = Arc::new(root_store(&files.ca)?);
    let (certs, key) = cert_and_key(files)?;
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TransportError::BadPem {
            what: "CA certificate",
            path: files.ca.clone(),
            reason: e.to_string(),
        })?;
    let verifier = crate::trust::RevocationCheckingVerifier { inner, revoked };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::TlsSetup(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(certs, key)
        .map_err(|source| TransportError::CertKey {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    tls.alpn_protocols = vec![crate::ALPN.to_vec(), crate::ENROLL_ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| TransportError::TlsSetup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = base_transport();
    transport.max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into());
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The ALPN the peer of an accepted connection negotiated.
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// The name and role in the certificate the peer authenticated with.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, TransportError> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| TransportError::PeerCertificate {
            reason: "none presented".into(),
        })?;
    let leaf = certs
        .first()
        .ok_or_else(|| TransportError::PeerCertificate {
            reason: "empty chain".into(),
        })?;
    identity_of(leaf)
}

/// The name and role in a DER certificate.
pub fn identity_of(der: &CertificateDer<'_>) -> Result<PeerIdentity, TransportError> {
    let bad = |reason: String| TransportError::PeerCertificate { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| bad(format!("unparsable: {e}")))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .ok_or_else(|| bad(format!("subject {subject} has no CommonName")))?
        .as_str()
        .map_err(|e| bad(format!("subject CommonName is not a string: {e}")))?
        .to_owned();
    let mut role = None;
    for ou in subject.iter_organizational_unit() {
        let Ok(Ok(this)) = ou.as_str().map(Role::from_str) else {
            continue;
        };
        // NB: two different roles in one certificate would let the holder pick; refuse instead.
        if role.is_some_and(|r| r != this) {
            return Err(bad(format!("subject {subject} names more than one role")));
        }
        role = Some(this);
    }
    let role = role.ok_or_else(|| {
        bad(format!(
            "subject {subject} has no OrganizationalUnit naming a role (sensor, operator or collector)"
        ))
    })?;
    Ok(PeerIdentity { name, role })
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn base_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let idle_ms = u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    transport
        .max_idle_timeout(Some(quinn::VarInt::from_u32(idle_ms).into()))
        // Nothing in the protocol uses unidirectional streams.
        .max_concurrent_uni_streams(0u32.into());
    transport
}

/// Binds a dual-stack socket where the host has IPv6, IPv4 otherwise, so that one endpoint can
/// reach a collector at either kind of address.
fn bind_client() -> Result<quinn::Endpoint, TransportError> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
    quinn::Endpoint::client(v6).or_else(|_| {
        let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        quinn::Endpoint::client(v4).map_err(|source| TransportError::Bind { addr: v4, source })
    })
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read_pem(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::BadPem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TransportError::BadPem {
            what,
            path: path.to_owned(),
            reason: "no CERTIFICATE section".into(),
        });
    }
    Ok(certs)
}

pub(crate) fn root_store(ca: &Path) -> Result<rustls::RootCertStore, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates("CA certificate", ca)? {
        roots.add(cert).map_err(|e| TransportError::BadPem {
            what: "CA certificate",
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

pub(crate) fn cert_and_key(
    files: &TlsFiles,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let certs = certificates("certificate", &files.cert)?;
    let pem = read_pem("private key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TransportError::BadPem {
        what: "private key",
        path: files.key.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section".into(),
            other => other.to_string(),
        },
    })?;
    Ok((certs, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [Role::Sensor, Role::Operator, Role::Collector] {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
        let err = "admin".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("admin"), "{err}");
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let files = TlsFiles {
            ca: "/nonexistent/vigil-ca.pem".into(),
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
        };
        let err = server_config(&files, Default::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("CA certificate /nonexistent/vigil-ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_pem_sections_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("vigil-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").expect("write");
        let err = root_store(&ca).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(err.to_string().contains("no CERTIFICATE section"), "{err}");
    }

    #[test]
    fn garbage_der_is_a_peer_certificate_error() {
        let err = identity_of(&CertificateDer::from(vec![1u8, 2, 3])).unwrap_err();
        assert!(
            matches!(err, TransportError::PeerCertificate { .. }),
            "{err}"
        );
    }
}
