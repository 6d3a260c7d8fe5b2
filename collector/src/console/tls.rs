//! The HTTPS accept loop: TCP, then TLS with the collector's own certificate, then HTTP/1.1
//! through hyper into the axum router.
//!
//! Everything a browser (or anyone who can reach the port) controls is bounded: connections at
//! once (a semaphore; more wait in the kernel's backlog), the time to finish the TLS handshake,
//! and the time to send request headers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower_service::Service;
use tracing::{debug, warn};

use super::ConsoleError;

/// Browser connections served at once. A browser opens a handful; a few operators fit easily.
const MAX_CONNECTIONS: usize = 256;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to send a request's headers (slowloris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS acceptor presenting the collector's certificate: browsers check it against the
/// deployment CA (imported by the operator) like sensors do. No client certificate is asked
/// for: the console authenticates with sessions, made from links only operators can get.
pub(super) fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, ConsoleError> {
    let fail = |reason: String| ConsoleError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(format!("cannot read the certificate: {e}")))?;
    if chain.is_empty() {
        return Err(fail("the certificate file holds no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| fail(format!("cannot read the private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| fail(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts until `shutdown`; then stops accepting and lets no connection outlive it.
pub(super) async fn serve(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let tls = tls.clone();
                    let router = router.clone();
                    connections.spawn(async move {
                        let _slot = slot;
                        serve_connection(tcp, remote, tls, router).await;
                    });
                }
                // Out of file descriptors and the like: log, let a moment pass, keep serving.
                Err(e) => {
                    warn!("console: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next() => {}
            () = &mut shutdown => break,
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: std::net::SocketAddr,
    tls: tokio_rustls::TlsAcceptor,
    router: axum::Router,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            debug!(%remote, "console: TLS handshake with {remote} failed: {e}");
            return;
        }
        Err(_) => {
            debug!(%remote, "console: TLS handshake with {remote} timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |request| router.clone().call(request));
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        debug!(%remote, "console: connection from {remote} ended: {e}");
    }
}
