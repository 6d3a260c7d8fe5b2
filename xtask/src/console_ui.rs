//! The web console's front end (collector/console-ui): `npm ci` from the committed
//! package-lock.json, then `npm run build` (TypeScript check + Vite) into `dist/`, which the
//! collector embeds at compile time. So it runs before any cargo build of the collector.
//!
//! Without node and npm the collector still builds, embedding a page that says the front end is
//! missing; that is reported loudly here, never silently.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::build::{exec, workspace_root};
use crate::tools;

pub fn dir() -> PathBuf {
    workspace_root().join("collector/console-ui")
}

/// Installs the locked npm packages (when the lock changed) and builds `dist/`.
pub fn build() -> anyhow::Result<()> {
    let npm = match tools::debian_tool("npm", "npm") {
        Ok(npm) => npm,
        Err(e) => {
            eprintln!(
                "xtask: WARNING: the console's front end is NOT built ({e:#}); the collector will serve a page saying so"
            );
            return Ok(());
        }
    };
    let dir = dir();
    let lock = dir.join("package-lock.json");
    let installed = dir.join("node_modules/.package-lock.json");
    let fresh = |a: &PathBuf, b: &PathBuf| -> bool {
        let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((modified(a), modified(b)), (Some(a), Some(b)) if b >= a)
    };
    if !fresh(&lock, &installed) {
        eprintln!("xtask: console UI: npm ci");
        exec(
            Command::new(&npm)
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                // Playwright drives Debian's chromium; never download browsers of its own.
                .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1"),
        )
        .context("npm ci in collector/console-ui")?;
    }
    eprintln!("xtask: console UI: npm run build");
    exec(Command::new(&npm).args(["run", "build"]).current_dir(&dir))
        .context("building the console's front end")?;
    Ok(())
}
