//! The web console: an HTTPS server on its own port where operators look at alerts in a
//! browser. Off unless the config has a `console:` section.
//!
//! It owns nothing the rest of the collector relies on: it reads the store through
//! [`queries::ConsoleStore`], and the QUIC server hands it only one thing, the request for a
//! one-time sign-in link ([`LoginIssuer`]), which only an operator certificate may make. So the
//! console has no passwords of its own: whoever can sign in holds an operator certificate.
//!
//! Modules: `auth` (links, sessions, CSRF), `api` (the JSON under `/api/`), `fleet` (the
//! sensors' and rules' JSON), `queries` (what the console reads, for both engines),
//! `sqlite_queries` and `pg_queries` (the SQL of each), `page` (the embedded front end and
//! security headers), `tls` (the HTTPS accept loop).

mod api;
mod auth;
mod fleet;
mod page;
mod pg_queries;
mod queries;
mod sqlite_queries;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::Store;

pub(crate) use auth::LoginIssuer;

/// The `console:` key of collector.yaml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// TCP address of the HTTPS listener (e.g. 127.0.0.1:7444).
    pub listen: SocketAddr,
    /// The address operators' browsers use, as printed in sign-in links
    /// (`https://collector.example.org:7444`); its host must be a name in the collector's
    /// certificate. Default: `https://` plus `listen` (required when `listen` is 0.0.0.0 or ::).
    #[serde(default)]
    pub url: Option<String>,
    /// How long a sign-in link from `vigil console login` stays valid (it works once).
    #[serde(default = "default_link_ttl_secs")]
    pub link_ttl_secs: u64,
    /// How long a browser session lasts from sign-in; then the operator signs in again.
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
}

fn default_link_ttl_secs() -> u64 {
    300
}

fn default_session_ttl_secs() -> u64 {
    8 * 3600
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The TCP address could not be bound (in use, not local, no permission).
    #[error("console: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `listen` is a wildcard address and no `url` says what browsers should dial.
    #[error("console: `listen: {0}` is a wildcard address; set `console.url` to the https:// address operators open")]
    NeedUrl(SocketAddr),
    /// `url` is not an https:// URL without a path.
    #[error("console: `url: {0}` must look like https://HOST[:PORT] (no path)")]
    BadUrl(String),
    /// The collector's certificate or key is unusable for HTTPS.
    #[error("console: certificate {} with key {}: {reason}", cert.display(), key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A bound console, ready to [`Console::run`].
pub(crate) struct Console {
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    router: axum::Router,
}

impl Console {
    /// Binds the listener and loads the certificate; returns the console and the issuer the
    /// QUIC server uses to answer `vigil console login`.
    pub(crate) async fn bind(
        config: &ConsoleConfig,
        tls: &crate::config::TlsConfig,
        store: Store,
        central: Option<Arc<crate::central_rules::CentralRules>>,
    ) -> Result<(Self, LoginIssuer), ConsoleError> {
        let ConsoleConfig {
            listen,
            url,
            link_ttl_secs,
            session_ttl_secs,
        } = config;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ConsoleError::Bind {
                addr: *listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ConsoleError::Bind {
            addr: *listen,
            source,
        })?;
        let base_url = base_url(url.as_deref(), local)?;
        let acceptor = tls::acceptor(&tls.cert, &tls.key)?;
        let sessions = Arc::new(auth::Sessions::new(
            Duration::from_secs(*link_ttl_secs),
            Duration::from_secs(*session_ttl_secs),
        ));
        let issuer = LoginIssuer::new(sessions.clone(), base_url.clone());
        let router = api::router(api::AppState {
            sessions,
            store: queries::ConsoleStore::new(store),
            central,
        });
        tracing::info!(%local, url = %base_url, "console serving https on {local}");
        Ok((
            Self {
                listener,
                tls: acceptor,
                router,
            },
            issuer,
        ))
    }

    /// Serves until `shutdown` resolves.
    pub(crate) async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Self {
            listener,
            tls,
            router,
        } = self;
        tls::serve(listener, tls, router, shutdown).await;
    }
}

/// `https://host:port` for links: the configured URL, or the bound address.
fn base_url(url: Option<&str>, local: SocketAddr) -> Result<String, ConsoleError> {
    match url {
        Some(url) => {
            let trimmed = url.trim_end_matches('/');
            let rest = trimmed
                .strip_prefix("https://")
                .ok_or_else(|| ConsoleError::BadUrl(url.to_owned()))?;
            if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
                return Err(ConsoleError::BadUrl(url.to_owned()));
            }
            Ok(trimmed.to_owned())
        }
        None if local.ip().is_unspecified() => Err(ConsoleError::NeedUrl(local)),
        None => Ok(format!("https://{local}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_base_comes_from_url_or_listen_address() {
        let local: SocketAddr = "127.0.0.1:7444".parse().expect("addr");
        assert_eq!(
            base_url(None, local).expect("loopback"),
            "https://127.0.0.1:7444"
        );
        let v6: SocketAddr = "[::1]:7444".parse().expect("addr");
        assert_eq!(base_url(None, v6).expect("v6"), "https://[::1]:7444");
        assert_eq!(
            base_url(Some("https://c.example.org:7444/"), local).expect("url"),
            "https://c.example.org:7444"
        );
        let any: SocketAddr = "0.0.0.0:7444".parse().expect("addr");
        assert!(matches!(base_url(None, any), Err(ConsoleError::NeedUrl(_))));
        for bad in ["http://c:1", "https://", "https://c/x", "c.example.org"] {
            assert!(
                matches!(base_url(Some(bad), local), Err(ConsoleError::BadUrl(_))),
                "{bad}"
            );
        }
    }
}
