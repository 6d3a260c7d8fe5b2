//! Watches the configured rule paths (inotify, through `notify`) so that editing a rule
//! file reloads the rules as SIGHUP does. A burst of changes (an editor's write then
//! rename, a package upgrade replacing many files) is one reload once it settles.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long the rule paths must stay quiet before a change is acted on.
pub const SETTLE: Duration = Duration::from_millis(300);

pub struct RuleWatcher {
    // NB: dropping the watcher stops its thread and closes the inotify fd.
    _watcher: RecommendedWatcher,
    changes: mpsc::Receiver<()>,
    /// A change was seen: reload once nothing else changes until then.
    settles_at: Option<tokio::time::Instant>,
}

impl RuleWatcher {
    /// Watches directories recursively and files through their directory (editors replace a
    /// file by renaming a new one over it, which a watch on the file itself would miss).
    pub fn start(paths: &[PathBuf]) -> notify::Result<RuleWatcher> {
        // One slot: a change already signalled covers every later one until it is taken.
        let (tx, changes) = mpsc::channel(1);
        let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) =
            paths.iter().cloned().partition(|p| p.is_dir());
        let (watched_dirs, watched_files) = (dirs.clone(), files.clone());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Reads and opens change nothing; a file's directory holds other files too.
                    Ok(e) => {
                        !matches!(e.kind, EventKind::Access(_))
                            && e.paths.iter().any(|p| {
                                watched_dirs.iter().any(|d| p.starts_with(d))
                                    || watched_files.iter().any(|f| f == p)
                            })
                    }
                    // A watch error (e.g. the queue overflowed): reload to be safe.
                    Err(_) => true,
                };
                if relevant {
                    let _ = tx.try_send(());
                }
            })?;
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::Recursive)?;
        }
        for file in &files {
            let dir = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(RuleWatcher {
            _watcher: watcher,
            changes,
            settles_at: None,
        })
    }

    /// Completes once the rule paths changed and then stayed quiet for [`SETTLE`].
    /// Cancel-safe: the sensor's loop drops this future whenever another duty comes first,
    /// so what was seen is kept in `self`, never in the future.
    pub async fn changed(&mut self) {
        loop {
            match self.settles_at {
                None => match self.changes.recv().await {
                    Some(()) => self.settles_at = Some(tokio::time::Instant::now() + SETTLE),
                    None => return std::future::pending().await,
                },
                Some(at) => {
                    tokio::select! {
                        got = self.changes.recv() => {
                            if got.is_some() {
                                self.settles_at = Some(tokio::time::Instant::now() + SETTLE);
                            }
                        }
                        () = tokio::time::sleep_until(at) => {
                            self.settles_at = None;
                            return;
                        }
                    }
                }
            }
        }
    }
}
