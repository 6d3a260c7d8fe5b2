//! Reloading without a restart: the revocation list and the collector's own certificate, key
//! and CA. Triggered by a [`ReloadHandle`] (SIGHUP in the binary) or by a changed modification
//! time of any of those files, checked every [`WATCH_INTERVAL`].
//!
//! A new server config applies to new handshakes only (quinn keeps live connections on the
//! config they were accepted with), so rotating the collector's certificate drops nobody. A new
//! revocation list applies to new handshakes through the shared [`RevocationList`], and to
//! live connections through a generation counter every connection task watches.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tracing::{info, warn};
use vigil_proto::transport::{self, TlsFiles};
use vigil_proto::trust::RevocationList;

/// How often the watched files' modification times are compared.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Asks a running collector to reload its certificates and revocation list.
#[derive(Clone, Debug, Default)]
pub struct ReloadHandle(pub(crate) Arc<Notify>);

impl ReloadHandle {
    pub fn reload(&self) {
        // NB: notify_one keeps a permit when the collector is busy, so no request is lost.
        self.0.notify_one();
    }
}

pub(crate) struct Reloader {
    tls: TlsFiles,
    revoked_path: Option<PathBuf>,
    pub(crate) revoked: Arc<RevocationList>,
    /// Bumped after every reload of the revocation list; connection tasks re-check then.
    pub(crate) generation: watch::Sender<u64>,
    stamps: Vec<Option<SystemTime>>,
}

impl Reloader {
    /// Reads the revocation list for the first time; an unreadable one is a start-up error.
    pub(crate) fn new(
        tls: TlsFiles,
        revoked_path: Option<PathBuf>,
    ) -> Result<Self, vigil_proto::trust::RevocationFileError> {
        let revoked = Arc::new(RevocationList::default());
        if let Some(path) = &revoked_path {
            let count = revoked.replace(RevocationList::read_file(path)?);
            info!(path = %path.display(), count, "revocation list holds {count} serials");
        }
        let mut reloader = Self {
            tls,
            revoked_path,
            revoked,
            generation: watch::channel(0).0,
            stamps: Vec::new(),
        };
        reloader.stamps = reloader.current_stamps();
        Ok(reloader)
    }

    fn current_stamps(&self) -> Vec<Option<SystemTime>> {
        let TlsFiles { ca, cert, key } = &self.tls;
        [Some(ca), Some(cert), Some(key), self.revoked_path.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// True when a watched file changed since the last look.
    pub(crate) fn files_changed(&mut self) -> bool {
        let now = self.current_stamps();
        let changed = now != self.stamps;
        self.stamps = now;
        changed
    }

    /// Re-reads everything; whatever fails to load is logged and the old version kept.
    pub(crate) fn reload(&mut self, endpoint: &quinn::Endpoint) {
        self.stamps = self.current_stamps();
        if let Some(path) = &self.revoked_path {
            match RevocationList::read_file(path) {
                Ok(serials) => {
                    let count = self.revoked.replace(serials);
                    info!(path = %path.display(), count, "reloaded revocation list: {count} serials");
                    self.generation.send_modify(|g| *g += 1);
                }
                Err(e) => warn!("keeping the previous revocation list: {e}"),
            }
        }
        match transport::server_config(&self.tls, self.revoked.clone()) {
            Ok(config) => {
                endpoint.set_server_config(Some(config));
                info!(cert = %self.tls.cert.display(), "reloaded TLS certificate, key and CA for new connections");
            }
            Err(e) => warn!("keeping the previous TLS certificate: {e}"),
        }
    }
}
