//! Tools the packaging, fuzzing, audit and operations tiers need, installed on first use:
//! cargo-deb, cargo-fuzz and cargo-deny (cargo install, cached under ~/.cache/vigil/toolchain
//! beside bpf-linker) and Debian packages
//! (systemd for `systemd-analyze`, prometheus for `promtool`). Each install prints one line; a
//! second run only checks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::bootstrap::cache_dir;

const CARGO_DEB_VERSION: &str = "3.8.0";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The version ARCHITECTURE.md's offline advisory recipe was verified with.
const CARGO_DENY_VERSION: &str = "0.20.2";

/// The directory holding `cargo-deb`, installing it if missing.
pub fn cargo_deb() -> anyhow::Result<PathBuf> {
    cargo_tool("cargo-deb", CARGO_DEB_VERSION, "~2 min")
}

/// The directory holding `cargo-fuzz`, installing it if missing.
pub fn cargo_fuzz() -> anyhow::Result<PathBuf> {
    cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION, "~1 min")
}

/// The directory holding `cargo-deny`, installing it if missing.
pub fn cargo_deny() -> anyhow::Result<PathBuf> {
    cargo_tool("cargo-deny", CARGO_DENY_VERSION, "~4 min")
}

/// `cargo install`s `name` at `version` into its own root under the toolchain cache (a version
/// stamp beside it, so a bump reinstalls) and returns the root's `bin` directory.
fn cargo_tool(name: &str, version: &str, takes: &str) -> anyhow::Result<PathBuf> {
    let root = cache_dir().join(name);
    let bin = root.join("bin");
    let stamp = root.join("version");
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    if bin.join(name).exists() && current.trim() == version {
        return Ok(bin);
    }
    eprintln!("xtask: installing {name} {version} (one time, {takes})");
    let status = Command::new("cargo")
        .args(["install", "--locked", "--force", "--quiet", "--root"])
        .arg(&root)
        .args([name, "--version", version])
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .with_context(|| format!("running cargo install {name}"))?;
    if !status.success() {
        bail!("installing {name} failed ({status}); check that crates.io is reachable");
    }
    std::fs::write(&stamp, version)?;
    Ok(bin)
}

/// Makes sure `program` is on PATH, installing Debian `package` with apt-get if it is not.
pub fn debian_tool(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(found) = on_path(program) {
        return Ok(found);
    }
    if !nix::unistd::geteuid().is_root() || on_path("apt-get").is_none() {
        bail!(
            "{program} is missing: install the Debian package {package} (needs root and apt-get)"
        );
    }
    eprintln!("xtask: installing Debian package {package} (for {program})");
    let out = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get install {package} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    on_path(program).with_context(|| format!("{package} is installed but {program} is not on PATH"))
}

/// The directory of Debian's PostgreSQL server binaries (`/usr/lib/postgresql/N/bin`, off
/// PATH), installing the `postgresql` package if there is none. The storage tests start a
/// real server from it.
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let newest = || -> Option<PathBuf> {
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = entry.path().join("bin");
                is_executable(&bin.join("initdb")).then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    };
    if let Some(bin) = newest() {
        return Ok(bin);
    }
    if !nix::unistd::geteuid().is_root() || on_path("apt-get").is_none() {
        bail!(
            "PostgreSQL is missing: install the Debian package postgresql (needs root and apt-get)"
        );
    }
    eprintln!("xtask: installing Debian package postgresql (for the storage tests)");
    let out = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "postgresql",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .context("running apt-get")?;
    if !out.status.success() {
        bail!(
            "apt-get install postgresql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    newest().context("postgresql is installed but /usr/lib/postgresql/*/bin/initdb is not")
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
