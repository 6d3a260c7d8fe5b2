//! SHA-256 of executed files, computed on a worker thread so that a large binary never stalls
//! the pipeline, and cached by (device, inode, size, mtime) so that a binary run a thousand
//! times is read once. A replaced file has a new inode or mtime and is hashed again.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc;

use sha2::{Digest, Sha256};

/// Identity of a file's content, as far as the file system can tell without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileKey {
    pub fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        }
    }
}

/// Entries kept before the cache is cleared (a crude bound: executables on a host are few).
const CACHE_ENTRIES: usize = 8192;
/// Files larger than this are not hashed (a hash of a 2 GB file is not worth the I/O).
pub const MAX_HASH_BYTES: u64 = 256 * 1024 * 1024;

/// Requests go to the worker, answers come back tagged with the caller's token.
pub struct Hasher {
    cache: HashMap<FileKey, String>,
    requests: mpsc::SyncSender<(u64, FileKey, Vec<PathBuf>)>,
    answers: tokio::sync::mpsc::UnboundedReceiver<(u64, FileKey, Option<String>)>,
}

pub enum Lookup {
    Hit(String),
    /// Being computed; the answer arrives through [`Hasher::answered`] with this token.
    Pending,
    /// Not hashable (gone, too big, or the worker queue is full).
    Unavailable,
}

impl Hasher {
    pub fn start() -> Self {
        let (requests, work) = mpsc::sync_channel::<(u64, FileKey, Vec<PathBuf>)>(1024);
        let (answer_tx, answers) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("vigil-hash".into())
            .spawn(move || {
                for (token, key, candidates) in work {
                    // The process may be gone by now (its /proc link with it): any candidate
                    // that is still the same file will do.
                    let digest = candidates.iter().find_map(|path| hash_file(path, key));
                    if answer_tx.send((token, key, digest)).is_err() {
                        return;
                    }
                }
            })
            .map(drop)
            .unwrap_or_else(
                |e| tracing::warn!(error = %e, "no hashing thread: executables will not be hashed"),
            );
        Self {
            cache: HashMap::new(),
            requests,
            answers,
        }
    }

    /// Looks the first readable of `candidates` up by identity; queues it for hashing on a miss.
    pub fn lookup(&mut self, token: u64, candidates: &[PathBuf]) -> Lookup {
        let Some(metadata) = candidates.iter().find_map(|p| std::fs::metadata(p).ok()) else {
            return Lookup::Unavailable;
        };
        if !metadata.is_file() || metadata.size() > MAX_HASH_BYTES {
            return Lookup::Unavailable;
        }
        let key = FileKey::of(&metadata);
        if let Some(hash) = self.cache.get(&key) {
            return Lookup::Hit(hash.clone());
        }
        match self.requests.try_send((token, key, candidates.to_vec())) {
            Ok(()) => Lookup::Pending,
            Err(_) => Lookup::Unavailable,
        }
    }

    /// The next computed hash: `(token, sha256)`; also fills the cache.
    pub async fn answered(&mut self) -> Option<(u64, Option<String>)> {
        let (token, key, digest) = self.answers.recv().await?;
        if let Some(hash) = &digest {
            if self.cache.len() >= CACHE_ENTRIES {
                self.cache.clear();
            }
            self.cache.insert(key, hash.clone());
        }
        Some((token, digest))
    }
}

/// Hashes `path` if it still is the file identified by `key`.
fn hash_file(path: &PathBuf, key: FileKey) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    if FileKey::of(&file.metadata().ok()?) != key {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_once_then_serves_from_cache_and_rehashes_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"abc").unwrap();
        let mut hasher = Hasher::start();
        assert!(matches!(
            hasher.lookup(1, std::slice::from_ref(&path)),
            Lookup::Pending
        ));
        let (token, hash) = hasher.answered().await.unwrap();
        assert_eq!(token, 1);
        // SHA-256("abc"), the FIPS 180-2 test vector.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(hash.as_deref(), Some(abc));
        assert!(
            matches!(hasher.lookup(2, std::slice::from_ref(&path)), Lookup::Hit(h) if h == abc)
        );
        std::fs::write(&path, b"abcd").unwrap();
        assert!(matches!(
            hasher.lookup(3, &[dir.path().join("gone"), path.clone()]),
            Lookup::Pending
        ));
        assert!(matches!(
            hasher.lookup(4, &[dir.path().join("missing")]),
            Lookup::Unavailable
        ));
    }
}
