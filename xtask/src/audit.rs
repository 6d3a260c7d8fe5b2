//! `cargo deny check advisories`, offline, against the RustSec snapshot in `../shared/advisory-db`.
//!
//! cargo-deny only reads an advisory DB that is a git repository in a directory named after its
//! URL, so the snapshot is copied to `<cache>/advisory-dbs/advisory-db-3157b0e258782691` and
//! committed there; `deny.toml` points `db-path` at that root through `VIGIL_ADVISORY_DBS`. The
//! copy is redone only when the snapshot's `SNAPSHOT` line changes.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::bootstrap::cache_dir;
use crate::build::{cargo, exec, workspace_root};
use crate::tools;

/// The directory cargo-deny derives from `https://github.com/RustSec/advisory-db`.
const DB_DIR_NAME: &str = "advisory-db-3157b0e258782691";

pub fn run() -> anyhow::Result<()> {
    let bin = tools::cargo_deny()?;
    let root = workspace_root();
    let snapshot = root.join("../shared/advisory-db");
    let dbs = cache_dir().join("advisory-dbs");
    let version = refresh_db(&snapshot, &dbs.join(DB_DIR_NAME))?;
    eprintln!("xtask: audit: cargo deny check advisories (offline, {version})");
    // NB: offline cargo-deny reads the lock file's packages from the local registry cache.
    exec(
        Command::new(cargo())
            .args(["fetch", "--quiet"])
            .current_dir(&root),
    )?;
    exec(
        Command::new(bin.join("cargo-deny"))
            .args(["deny", "--offline", "check", "advisories"])
            .current_dir(&root)
            .env("VIGIL_ADVISORY_DBS", &dbs),
    )
    .context("a dependency has a RustSec advisory: update it, or justify an `ignore` in deny.toml")
}

/// Makes `db` a one-commit git copy of `snapshot`; returns the snapshot's id line.
fn refresh_db(snapshot: &Path, db: &Path) -> anyhow::Result<String> {
    let id = std::fs::read_to_string(snapshot.join("SNAPSHOT")).with_context(|| {
        format!(
            "no advisory DB snapshot at {} (a copy of rustsec/advisory-db with a SNAPSHOT file)",
            snapshot.display()
        )
    })?;
    let id = id.trim().to_owned();
    // NB: beside the repository, not in it, so the stamp is never part of the DB.
    let stamp = db.with_extension("snapshot");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == id) {
        return Ok(id);
    }
    eprintln!("xtask: audit: copying the advisory DB snapshot into a git repository");
    if db.exists() {
        std::fs::remove_dir_all(db).with_context(|| format!("removing {}", db.display()))?;
    }
    std::fs::create_dir_all(db)?;
    exec(Command::new("cp").arg("-a").arg(snapshot.join(".")).arg(db))?;
    for args in [
        &["init", "--quiet"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=vigil-xtask",
            "-c",
            "user.email=xtask@vigil.invalid",
            "commit",
            "--quiet",
            "-m",
            "advisory-db snapshot",
        ],
    ] {
        let out = Command::new("git")
            .args(args)
            .current_dir(db)
            .output()
            .context("running git (needed to hand cargo-deny its DB)")?;
        if !out.status.success() {
            bail!(
                "git {args:?} in {} failed: {}",
                db.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    std::fs::write(&stamp, &id)?;
    Ok(id)
}
