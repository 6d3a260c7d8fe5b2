//! Rules from the centre: follows the collector's signed rule set and hands each authentic,
//! newer set to the pipeline, which compiles it with the local rules and swaps it in.
//!
//! The follower keeps one long-poll stream open (`FetchRules`): the collector answers as soon
//! as a set newer than the sensor has seen is pushed, so a push reaches running sensors at
//! once, and on every (re)connection the request also says which version the sensor runs.
//! A set whose signature does not verify against the configured key, or that is not newer
//! than what the sensor has seen (a replayed old set), is refused here and never reaches the
//! pipeline; one that verifies but does not compile beside the local rules is refused by the
//! pipeline, which keeps the rules it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::sync::{mpsc, watch};
use vigil_proto::transport::{self, TlsFiles};
use vigil_proto::{
    read_frame, write_frame, Reply, Request, RuleFetch, SignedRuleSet, MAX_FRAME_BYTES,
};

/// The collector's Ed25519 rule-signing public key (`signing.pub` in its rules directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RulesPublicKey(pub [u8; 32]);

impl<'de> Deserialize<'de> for RulesPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for RulesPublicKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || format!("{text:?} is not an Ed25519 public key: 64 hex digits expected");
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self(key))
    }
}

/// Why a set from the collector was not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// Not signed by the configured key: tampered with, or from a collector that does not
    /// hold the deployment's rule-signing key.
    #[error("rule set version {version} has a bad signature")]
    BadSignature { version: u64 },
    /// Not newer than a set already seen: a replay of an old (authentic) set.
    #[error("rule set version {version} is not newer than version {seen} already seen")]
    NotNewer { version: u64, seen: u64 },
}

/// Checks that `set` is signed by `key` and newer than `seen`.
pub fn verify(key: &RulesPublicKey, set: &SignedRuleSet, seen: Option<u64>) -> Result<(), Refusal> {
    let message = SignedRuleSet::signed_message(set.version, &set.files);
    let verifier = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.0);
    if verifier.verify(&message, &set.signature).is_err() {
        return Err(Refusal::BadSignature {
            version: set.version,
        });
    }
    match seen {
        Some(seen) if set.version <= seen => Err(Refusal::NotNewer {
            version: set.version,
            seen,
        }),
        _ => Ok(()),
    }
}

/// What the pipeline has done with central sets, as the follower reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RulesState {
    /// The central version in force.
    pub running: Option<u64>,
    /// The newest authentic version handed over, whether it ran or failed to compile.
    pub seen: Option<u64>,
}

/// Where to fetch from.
#[derive(Clone, Debug)]
pub struct RulesSource {
    pub address: std::net::SocketAddr,
    pub server_name: String,
    pub tls: TlsFiles,
    pub key: RulesPublicKey,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Follows the collector's rule set until `sets` is closed. Each verified set goes to `sets`;
/// the follower then waits for `state` to show it was taken (run or refused) before asking
/// again, so the same set is not fetched twice.
pub async fn follow(
    source: RulesSource,
    mut state: watch::Receiver<RulesState>,
    sets: mpsc::Sender<Arc<SignedRuleSet>>,
    refused: impl Fn(&Refusal),
) {
    let endpoint = match transport::client_endpoint(&source.tls) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "central rules disabled: cannot make a client endpoint");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    let mut conn: Option<quinn::Connection> = None;
    loop {
        if sets.is_closed() {
            return;
        }
        let live = match conn.as_ref().filter(|c| c.close_reason().is_none()) {
            Some(c) => c.clone(),
            None => {
                match transport::connect(&endpoint, source.address, &source.server_name).await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "central rules: collector unreachable");
                        sleep_backoff(&mut backoff).await;
                        continue;
                    }
                }
            }
        };
        let RulesState { running, seen } = *state.borrow_and_update();
        let set = match fetch(
            &live,
            RuleFetch {
                running,
                after: seen,
            },
            &sets,
        )
        .await
        {
            Ok(Some(set)) => set,
            Ok(None) => return,
            Err(reason) => {
                tracing::debug!(%reason, "central rules: fetch failed; retrying");
                conn = None;
                sleep_backoff(&mut backoff).await;
                continue;
            }
        };
        if let Err(refusal) = verify(&source.key, &set, seen) {
            tracing::error!(collector = %source.address, "refused the collector's rule set: {refusal}; the running rules stay");
            refused(&refusal);
            // Ask again later: the collector may be fixed or replaced meanwhile.
            conn = None;
            sleep_backoff(&mut backoff).await;
            continue;
        }
        backoff = BACKOFF_MIN;
        let version = set.version;
        if sets.send(Arc::new(set)).await.is_err() {
            return;
        }
        // The pipeline records what it did with the set; ask for the next only then.
        while state
            .borrow_and_update()
            .seen
            .is_none_or(|seen| seen < version)
        {
            if state.changed().await.is_err() {
                return;
            }
        }
    }
}

/// One long poll; `Ok(None)` when the pipeline went away while waiting.
async fn fetch(
    conn: &quinn::Connection,
    request: RuleFetch,
    sets: &mpsc::Sender<Arc<SignedRuleSet>>,
) -> Result<Option<SignedRuleSet>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, &Request::FetchRules(request))
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let reply = tokio::select! {
        reply = read_frame::<_, Reply>(&mut recv, MAX_FRAME_BYTES) => reply,
        () = sets.closed() => return Ok(None),
    };
    match reply {
        Ok(Some(Reply::Rules(set))) => Ok(Some(set)),
        Ok(Some(Reply::Refused { reason })) => Err(format!("the collector refused: {reason}")),
        Ok(Some(other)) => Err(format!("unexpected reply {other:?}")),
        Ok(None) => Err("the collector closed the stream".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn sleep_backoff(backoff: &mut Duration) {
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// The file, in the spool directory (the sensor's state), keeping the last set run, so that a
/// sensor restarted while the collector is unreachable still runs it.
pub fn cache_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("central-rules.ruleset")
}

/// The cached set, if there is one and it still verifies against `key` (a file edited on
/// disk or left from another key is ignored, with a warning).
pub fn load_cached(path: &Path, key: &RulesPublicKey) -> Option<SignedRuleSet> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read the cached central rule set: {e}");
            return None;
        }
    };
    let set: SignedRuleSet = match vigil_proto::decode(&bytes) {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(path = %path.display(), "ignoring the cached central rule set: {e}");
            return None;
        }
    };
    match verify(key, &set, None) {
        Ok(()) => Some(set),
        Err(refusal) => {
            tracing::error!(path = %path.display(), "ignoring the cached central rule set: {refusal}");
            None
        }
    }
}

/// Replaces the cache with `set` (temporary file, then rename: never half a file).
pub fn save_cached(path: &Path, set: &SignedRuleSet) -> std::io::Result<()> {
    let bytes = vigil_proto::encode(set).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The sources a central set adds to the local rules, named so that errors say where a rule
/// came from (`central v3 web.yml:4:7`).
pub fn sources(set: &SignedRuleSet) -> Vec<(String, String)> {
    set.files
        .iter()
        .map(|(name, text)| (format!("central v{} {name}", set.version), text.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn signed(key: &Ed25519KeyPair, version: u64, text: &str) -> SignedRuleSet {
        let files = [("a.yml".to_owned(), text.to_owned())]
            .into_iter()
            .collect();
        let signature = key
            .sign(&SignedRuleSet::signed_message(version, &files))
            .as_ref()
            .to_vec();
        SignedRuleSet {
            version,
            files,
            signature,
        }
    }

    fn key_pair() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("parse")
    }

    #[test]
    fn only_authentic_newer_sets_pass() {
        let key = key_pair();
        let public = RulesPublicKey(key.public_key().as_ref().try_into().expect("32 bytes"));
        let set = signed(&key, 3, "title: x\n");
        assert_eq!(verify(&public, &set, Some(2)), Ok(()));
        assert_eq!(verify(&public, &set, None), Ok(()));
        // One byte of rule text changed after signing.
        let mut tampered = set.clone();
        tampered.files.insert("a.yml".into(), "title: y\n".into());
        assert_eq!(
            verify(&public, &tampered, Some(2)),
            Err(Refusal::BadSignature { version: 3 })
        );
        // The version changed after signing (to beat the replay check).
        let mut bumped = set.clone();
        bumped.version = 9;
        assert_eq!(
            verify(&public, &bumped, Some(2)),
            Err(Refusal::BadSignature { version: 9 })
        );
        // Signed by another key (another collector's).
        let other = signed(&key_pair(), 3, "title: x\n");
        assert_eq!(
            verify(&public, &other, None),
            Err(Refusal::BadSignature { version: 3 })
        );
        // An authentic but old set.
        assert_eq!(
            verify(&public, &set, Some(3)),
            Err(Refusal::NotNewer {
                version: 3,
                seen: 3
            })
        );
    }

    #[test]
    fn the_cache_returns_only_what_still_verifies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = cache_path(dir.path());
        let key = key_pair();
        let public = RulesPublicKey(key.public_key().as_ref().try_into().expect("32 bytes"));
        assert_eq!(load_cached(&path, &public), None, "no cache yet");
        let set = signed(&key, 4, "title: cached\n");
        save_cached(&path, &set).expect("save");
        assert_eq!(load_cached(&path, &public), Some(set));
        // Edited on disk: the rule text no longer matches its signature.
        let bytes = std::fs::read(&path).expect("read");
        let edited = String::from_utf8_lossy(&bytes).replace("cached", "edited");
        std::fs::write(&path, edited.as_bytes()).expect("write");
        assert_eq!(load_cached(&path, &public), None);
        // Another deployment's key.
        let other = RulesPublicKey(
            key_pair()
                .public_key()
                .as_ref()
                .try_into()
                .expect("32 bytes"),
        );
        save_cached(&path, &signed(&key, 5, "title: x\n")).expect("save");
        assert_eq!(load_cached(&path, &other), None);
    }

    #[test]
    fn public_keys_are_64_hex_digits() {
        let text = "00".repeat(31) + "ff";
        assert_eq!(text.parse::<RulesPublicKey>().map(|k| k.0[31]), Ok(0xff));
        for bad in ["", "00", &("zz".repeat(32)), &("0".repeat(65))] {
            assert!(bad.parse::<RulesPublicKey>().is_err(), "{bad}");
        }
    }
}
