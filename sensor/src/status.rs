//! What the sensor reports about itself in its heartbeats (`vigil sensors` at the collector):
//! host, version, which rules and hooks it runs, and its kernel counters. The shipper adds the
//! spool and delivery figures it owns.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vigil_proto::SensorStatus;

use crate::capture::{HookChoice, KernelCounters};

/// Seconds between heartbeats unless the config says otherwise; the collector raises "sensor
/// silent" after three missed ones.
pub const DEFAULT_HEARTBEAT_SECS: u32 = 30;

/// The status as the sensor starts.
pub fn initial(
    host: &str,
    rules: usize,
    rules_version: String,
    hooks: &[HookChoice],
) -> SensorStatus {
    SensorStatus {
        host: host.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        rules_version,
        rules: u32::try_from(rules).unwrap_or(u32::MAX),
        hooks: hooks
            .iter()
            .map(|h| format!("{}:{}", h.event, h.hook))
            .collect(),
        ..SensorStatus::default()
    }
}

/// Folds the kernel's running totals in.
pub fn update_counters(status: &mut SensorStatus, counters: &KernelCounters) {
    status.events_total = counters.received.iter().sum();
    status.kernel_drops = counters.lost.iter().sum();
}

/// A short digest of the rule files under `paths` (names and contents, in a stable order): it
/// changes whenever a rule does, so operators can see which sensors run which rule set.
pub fn rules_version(paths: &[PathBuf]) -> String {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files);
    }
    files.sort();
    let mut hash = Sha256::new();
    for file in &files {
        hash.update(file.as_os_str().as_encoded_bytes());
        hash.update([0]);
        // An unreadable file changes the digest too (its contents are missing from it).
        if let Ok(bytes) = std::fs::read(file) {
            hash.update(&bytes);
        }
        hash.update([0]);
    }
    let digest = hash.finalize();
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    collect(&p, files);
                } else if p.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                    files.push(p);
                }
            }
        }
        Err(_) => files.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_version_follows_rule_contents() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.yml"), "title: a\n").expect("write");
        std::fs::write(dir.path().join("notes.txt"), "ignored\n").expect("write");
        let paths = vec![dir.path().to_owned()];
        let first = rules_version(&paths);
        assert_eq!(first.len(), 12);
        assert_eq!(rules_version(&paths), first, "stable");
        std::fs::write(dir.path().join("notes.txt"), "still ignored\n").expect("write");
        assert_eq!(rules_version(&paths), first, "only rule files count");
        std::fs::write(dir.path().join("a.yml"), "title: b\n").expect("write");
        assert_ne!(rules_version(&paths), first, "a changed rule changes it");
    }
}
