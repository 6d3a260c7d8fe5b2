//! Rules from the centre: an operator pushes a rule set, the collector validates it, gives it
//! the next version, signs it with its own Ed25519 key and serves it to every sensor, which
//! verifies the signature against the public key in its config before running it.
//!
//! Why a key of the collector's own rather than the deployment CA's: the CA key mints every
//! identity in the deployment and is best kept offline (enrollment is optional, and without
//! it the CA key never needs to be on the collector). A rule-signing key that leaks lets an
//! attacker push rules, not impersonate sensors or collectors; and pinning it on sensors
//! means a stolen collector *TLS* key (or a rogue collector with a valid certificate) cannot
//! feed sensors rules either. Several collectors of one fleet share the key file.
//!
//! State lives in one directory (`rules.dir`), apart from the database: `signing.key` (PKCS#8,
//! mode 0600, made on first start), `signing.pub` (the public key in hex, for sensor configs)
//! and `current.ruleset` (the signed set being served, replaced atomically on each push).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::sync::watch;
use tracing::{error, info};
use vigil_proto::{RuleFetch, RuleSetShapeError, SignedRuleSet};

use crate::config::CentralRulesConfig;

const KEY_FILE: &str = "signing.key";
const PUBLIC_FILE: &str = "signing.pub";
const CURRENT_FILE: &str = "current.ruleset";

#[derive(Debug, thiserror::Error)]
pub enum CentralRulesError {
    /// The state directory or a file in it could not be read, created or written.
    #[error("rules state {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The signing key file is not an Ed25519 PKCS#8 key.
    #[error("rule signing key {} is not an Ed25519 PKCS#8 key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    /// The served set on disk is unreadable or its signature does not match this key
    /// (damaged, or edited by hand): refusing beats serving it.
    #[error("stored rule set {} is unusable: {reason}", path.display())]
    BadStoredSet { path: PathBuf, reason: String },
}

/// Why a push was refused; the text goes back to the operator.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Shape(#[from] RuleSetShapeError),
    /// A rule does not parse or compile: the error names file:line:column.
    #[error("{0}")]
    Invalid(String),
    /// A rule's own `vigil.tests` cases fail.
    #[error("rule tests fail: {0}")]
    TestsFail(String),
    /// The set could not be written to the state directory.
    #[error("the collector could not store the rule set")]
    Store(#[source] CentralRulesError),
}

pub struct CentralRules {
    key: Ed25519KeyPair,
    dir: PathBuf,
    /// The set being served; sensors waiting for a newer one watch it.
    current: watch::Sender<Option<Arc<SignedRuleSet>>>,
    /// One push at a time, so versions are assigned and written in order.
    pushing: tokio::sync::Mutex<()>,
    /// Sensor name → the central version it last said it runs.
    running: Mutex<HashMap<String, Option<u64>>>,
}

impl CentralRules {
    /// Opens the state directory, making it and the signing key on first use, and loads the
    /// set being served. Blocking.
    pub fn open(config: &CentralRulesConfig) -> Result<Self, CentralRulesError> {
        let CentralRulesConfig { dir } = config;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CentralRulesError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let key_path = dir.join(KEY_FILE);
        let pkcs8 = match std::fs::read(&key_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| {
                    CentralRulesError::BadKey {
                        path: key_path.clone(),
                        reason: "the system random generator failed".into(),
                    }
                })?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io(&key_path))?;
                file.write_all(doc.as_ref())
                    .and_then(|()| file.sync_all())
                    .map_err(io(&key_path))?;
                info!(key = %key_path.display(), "made a new rule signing key");
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| {
            CentralRulesError::BadKey {
                path: key_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let public = hex(key.public_key().as_ref());
        let public_path = dir.join(PUBLIC_FILE);
        write_atomically(&public_path, format!("{public}\n").as_bytes())?;
        info!(public_key = %public, "rule sets are signed with the key {public} (sensors' central_rules.public_key)");
        let current_path = dir.join(CURRENT_FILE);
        let current = match std::fs::read(&current_path) {
            Ok(bytes) => {
                let set: SignedRuleSet =
                    vigil_proto::decode(&bytes).map_err(|e| CentralRulesError::BadStoredSet {
                        path: current_path.clone(),
                        reason: e.to_string(),
                    })?;
                let message = SignedRuleSet::signed_message(set.version, &set.files);
                let valid = ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ED25519,
                    key.public_key().as_ref(),
                )
                .verify(&message, &set.signature)
                .is_ok();
                if !valid {
                    return Err(CentralRulesError::BadStoredSet {
                        path: current_path,
                        reason: "its signature does not match the signing key".into(),
                    });
                }
                info!(
                    version = set.version,
                    files = set.files.len(),
                    "serving central rule set version {}",
                    set.version
                );
                Some(Arc::new(set))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&current_path)(e)),
        };
        Ok(Self {
            key,
            dir: dir.clone(),
            current: watch::Sender::new(current),
            pushing: tokio::sync::Mutex::new(()),
            running: Mutex::default(),
        })
    }

    /// Validates `files`, stores them signed as the next version and serves them.
    pub async fn push(self: &Arc<Self>, files: BTreeMap<String, String>) -> Result<u64, PushError> {
        SignedRuleSet::check_files(&files)?;
        let _one_at_a_time = self.pushing.lock().await;
        let version = self
            .current
            .borrow()
            .as_ref()
            .map_or(1, |set| set.version + 1);
        let this = self.clone();
        let set = tokio::task::spawn_blocking(move || this.validate_and_store(version, files))
            .await
            .map_err(|_| PushError::Invalid("validation failed unexpectedly".into()))??;
        info!(
            version,
            files = set.files.len(),
            "serving central rule set version {version}"
        );
        self.current.send_replace(Some(Arc::new(set)));
        if let Some(m) = crate::metrics::collector_metrics() {
            m.central_rules_version(version);
        }
        Ok(version)
    }

    fn validate_and_store(
        &self,
        version: u64,
        files: BTreeMap<String, String>,
    ) -> Result<SignedRuleSet, PushError> {
        let sources: Vec<(String, String)> = files
            .iter()
            .map(|(name, text)| (name.clone(), text.clone()))
            .collect();
        let rules = vigil_detect::RuleSet::load_with_sources::<&Path>(&[], &sources)
            .map_err(|e| PushError::Invalid(e.to_string()))?;
        let failures = rules.run_embedded_tests();
        if let Some(first) = failures.first() {
            return Err(PushError::TestsFail(format!(
                "{} failing, first: {first}",
                failures.len()
            )));
        }
        let message = SignedRuleSet::signed_message(version, &files);
        let signature = self.key.sign(&message).as_ref().to_vec();
        let set = SignedRuleSet {
            version,
            files,
            signature,
        };
        let bytes = vigil_proto::encode(&set).map_err(|e| {
            PushError::Store(CentralRulesError::Io {
                path: self.dir.join(CURRENT_FILE),
                source: std::io::Error::other(e),
            })
        })?;
        write_atomically(&self.dir.join(CURRENT_FILE), &bytes).map_err(PushError::Store)?;
        Ok(set)
    }

    /// The set being served, if one was ever pushed.
    pub fn served(&self) -> Option<Arc<SignedRuleSet>> {
        self.current.borrow().clone()
    }

    /// Sensor name → the central version it said it runs when it last asked for rules
    /// (`None`: none yet). Sensors without a rules public key never ask, so are not here.
    pub fn running(&self) -> HashMap<String, Option<u64>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records what `sensor` runs, then waits until a set newer than `fetch.after` is served.
    pub async fn next_for(&self, sensor: &str, fetch: &RuleFetch) -> Arc<SignedRuleSet> {
        let RuleFetch { running, after } = *fetch;
        let changed = {
            let mut map = self.running.lock().unwrap_or_else(|p| p.into_inner());
            map.insert(sensor.to_owned(), running) != Some(running)
        };
        if changed {
            match running {
                Some(v) => info!(
                    sensor,
                    version = v,
                    "{sensor} runs central rule set version {v}"
                ),
                None => info!(sensor, "{sensor} runs no central rule set yet"),
            }
        }
        if let Some(m) = crate::metrics::collector_metrics() {
            m.sensor_rules_version(sensor, running);
        }
        let mut current = self.current.subscribe();
        loop {
            let newer = current
                .borrow_and_update()
                .as_ref()
                .filter(|set| after.is_none_or(|seen| set.version > seen))
                .cloned();
            if let Some(set) = newer {
                return set;
            }
            if current.changed().await.is_err() {
                // The collector is shutting down; the stream closes with the connection.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`: a
/// crash leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CentralRulesError> {
    let io = |source| CentralRulesError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.to_owned().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            error!(dir = %dir.display(), "cannot sync the rules directory: {e}");
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
