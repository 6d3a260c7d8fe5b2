//! A scratch Debian root with systemd as its init, for the test that follows the README's
//! install section word for word (tests/tests/install.rs boots it with `systemd-nspawn -b`).
//!
//! Made once with `debootstrap --variant=minbase` from Debian's mirror and cached under
//! `target/scratch-root/`; the test never writes to it (each run boots an overlay of it), so a
//! rerun only checks the stamp. Built in a temporary directory and renamed into place, so an
//! interrupted debootstrap is never mistaken for a root.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::{build, tools};

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What the README's commands need beyond minbase: systemd as init (`systemctl`, the units'
/// sandboxing), dbus (systemd's bus for `systemctl` and `systemd-run`), sudo (every command
/// of the section is a `sudo` line). apt and dpkg come with minbase.
const INCLUDE: &str = "systemd,systemd-sysv,dbus,sudo";
/// The host name the README's sensor certificate carries; sudo wants it in /etc/hosts.
const HOSTNAME: &str = "web-01";

/// Why the install test cannot run here; xtask hands it to the test, which says SKIPPED.
pub struct Unavailable(pub String);

/// The cached root, made on first use (~3 min: Debian's mirror and dpkg dominate).
pub fn debian_root() -> Result<PathBuf, Unavailable> {
    install_tools()?;
    make_root().map_err(unavailable)
}

/// Starts [`debian_root`] so that it overlaps the build and the earlier tiers (debootstrap
/// mostly waits on the mirror and never takes the host's dpkg lock). The host tools are
/// installed here, before the thread starts, so no two apt-get runs overlap.
pub fn debian_root_in_background() -> std::thread::JoinHandle<Result<PathBuf, Unavailable>> {
    let tools = install_tools();
    std::thread::spawn(move || {
        tools?;
        make_root().map_err(unavailable)
    })
}

fn unavailable(e: anyhow::Error) -> Unavailable {
    Unavailable(format!("{e:#}"))
}

fn install_tools() -> Result<(), Unavailable> {
    for (program, package) in [
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
    ] {
        tools::debian_tool(program, package).map_err(unavailable)?;
    }
    Ok(())
}

fn make_root() -> anyhow::Result<PathBuf> {
    let base = build::bin_dir()
        .parent()
        .map(|t| t.join("scratch-root"))
        .context("target directory has no parent")?;
    let root = base.join(format!("{SUITE}-minbase"));
    let stamp = base.join(format!("{SUITE}-minbase.stamp"));
    let want = format!("{SUITE} {MIRROR} {INCLUDE} {HOSTNAME}");
    if root.join("sbin/init").exists()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want)
    {
        return Ok(root);
    }
    std::fs::create_dir_all(&base)?;
    let partial = base.join(format!("{SUITE}-minbase.partial"));
    for stale in [&partial, &root] {
        if stale.exists() {
            std::fs::remove_dir_all(stale)
                .with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    eprintln!("xtask: debootstrap {SUITE} minbase + {INCLUDE} (one time, ~3 min)");
    let started = std::time::Instant::now();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
        .arg(&partial)
        .arg(MIRROR)
        .output()
        .context("running debootstrap")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&partial);
        bail!(
            "debootstrap {SUITE} from {MIRROR} failed: {}",
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&out.stderr).lines())
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    // A host's own name resolves on a Debian install (sudo looks it up on every call);
    // debootstrap copies the build machine's /etc/hostname, not a name of the root's own.
    std::fs::write(partial.join("etc/hostname"), format!("{HOSTNAME}\n"))?;
    std::fs::write(
        partial.join("etc/hosts"),
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost\n"),
    )?;
    // The downloaded archives are not needed to boot; the README's apt install is offline.
    let archives = partial.join("var/cache/apt/archives");
    for entry in std::fs::read_dir(&archives)?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(entry.path())?;
        }
    }
    std::fs::rename(&partial, &root)?;
    std::fs::write(&stamp, want)?;
    eprintln!(
        "xtask: scratch root in {} ({:.0?})",
        root.display(),
        started.elapsed()
    );
    Ok(root)
}
