//! `cargo xtask test`: every tier this machine supports, in order of cost.
//!
//! 1. lint: rustfmt and clippy (warnings are errors);
//! 2. unit, replay, rules and network tests of every crate (no privileges needed), the storage
//!    suite against SQLite and a real PostgreSQL server (Debian's `postgresql`, installed here);
//! 3. dependency audit (cargo-deny, offline RustSec snapshot) and a fuzz smoke (a few seconds
//!    per libFuzzer target; `cargo xtask fuzz` runs them longer);
//! 4. kernel, end-to-end and operations tests (`tests/`): real programs, real processes, real
//!    QUIC, the .deb packages in a scratch root (systemd-analyze), the README's install section
//!    followed word for word in a debootstrapped Debian root booted with systemd-nspawn,
//!    metrics through promtool, the web console in Debian's headless chromium driven by
//!    Playwright. They
//!    need root; without it they are reported as skipped, loudly, never as passed.
//! 5. the kernel tier again inside Debian's 6.1 kernel under QEMU (`cargo xtask vm-test`);
//! 6. `cargo xtask bench --quick` (root): fails only if the benchmark itself breaks.

use std::process::Command;

use anyhow::Context;

use crate::build::{self, cargo, exec, workspace_root};
use crate::{audit, bench, fuzz, package, scratch_root, tools, vm};

/// Seconds each fuzz target runs in the test suite: enough to replay the corpus and catch a
/// regression on it, not a fuzzing campaign.
const FUZZ_SMOKE_SECONDS: u64 = 5;

pub fn run() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Only the root tier boots the scratch root; made now, so debootstrap (~3 min, mostly the
    // mirror) overlaps the build and the tiers before it.
    let scratch_made = nix::unistd::geteuid()
        .is_root()
        .then(scratch_root::debian_root_in_background);
    let build::Built {
        bins,
        ebpf_object: object,
    } = build::all()?;
    let root = workspace_root();

    eprintln!(
        "xtask: tier lint: rustfmt, clippy (at {:.0?})",
        started.elapsed()
    );
    exec(
        Command::new(cargo())
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(&root),
    )
    .context("code is not formatted: run `cargo fmt --all`")?;
    exec(
        Command::new(cargo())
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&root)
            .env("VIGIL_EBPF_OBJECT", &object),
    )?;

    // The storage suite runs against a real PostgreSQL server as well as SQLite; with the
    // server installed, a test that cannot start it fails instead of skipping.
    let postgres = match tools::postgres_bin_dir() {
        Ok(bin) => Some(bin),
        Err(e) => {
            eprintln!("xtask: SKIPPED PostgreSQL storage tests: {e:#}");
            None
        }
    };
    eprintln!(
        "xtask: tier unit/rules/network (at {:.0?})",
        started.elapsed()
    );
    let mut unit = Command::new(cargo());
    unit.args(["test", "--workspace", "--exclude", "vigil-tests"])
        .current_dir(&root)
        .env("VIGIL_EBPF_OBJECT", &object);
    if let Some(bin) = &postgres {
        unit.env("VIGIL_PG_BIN", bin)
            .env("VIGIL_REQUIRE_POSTGRES", "1");
    }
    exec(&mut unit)?;

    audit::run()?;
    eprintln!(
        "xtask: tier fuzz smoke: {FUZZ_SMOKE_SECONDS} s per target (at {:.0?})",
        started.elapsed()
    );
    fuzz::run(FUZZ_SMOKE_SECONDS, None)?;

    let mut release_build = None;
    if nix::unistd::geteuid().is_root() {
        // The operations tests check the packages and units with systemd-analyze and the
        // metrics with promtool; the packages hold the debug binaries already built above.
        tools::debian_tool("systemd-analyze", "systemd")?;
        tools::debian_tool("promtool", "prometheus")?;
        // The console's browser test drives Debian's chromium (never Playwright's download);
        // where it cannot be had, that test says SKIPPED and why.
        if let Err(e) = tools::debian_tool("chromium", "chromium") {
            eprintln!("xtask: WARNING: the console browser test will be SKIPPED: {e:#}");
        }
        let debs = package::build(package::Profile::Dev)?;
        // The bench tier's release build overlaps this tier, which mostly waits.
        release_build = Some(bench::build_release_in_background(object.clone()));
        eprintln!(
            "xtask: tier kernel/end-to-end/operations (root) (at {:.0?})",
            started.elapsed()
        );
        let mut tier = Command::new(cargo());
        tier.args(["test", "-p", "vigil-tests", "--", "--test-threads=1"])
            .current_dir(&root)
            .env("VIGIL_EBPF_OBJECT", &object)
            .env("VIGIL_BIN_DIR", &bins)
            .env("VIGIL_DEB_DIR", &debs);
        // The README's install section runs word for word in a booted Debian root; where that
        // root cannot be made (no mirror, no debootstrap), the test says SKIPPED and why.
        let scratch = match scratch_made {
            Some(made) => made.join().unwrap_or_else(|_| {
                Err(scratch_root::Unavailable(
                    "the thread making it panicked".into(),
                ))
            }),
            None => scratch_root::debian_root(),
        };
        match scratch {
            Ok(scratch) => tier.env("VIGIL_SCRATCH_ROOT", scratch),
            Err(scratch_root::Unavailable(why)) => {
                eprintln!("xtask: WARNING: the README install test will be SKIPPED: {why}");
                tier.env("VIGIL_SCRATCH_ROOT_UNAVAILABLE", why)
            }
        };
        exec(&mut tier)?;
    } else {
        eprintln!(
            "xtask: SKIPPED tier kernel/end-to-end: needs root (run `sudo cargo xtask test`)"
        );
    }
    // Debian's 6.1 kernel under QEMU (TCG): the kernel tier on a second kernel, skipped loudly
    // where QEMU or the kernel package cannot be had.
    eprintln!("xtask: tier VM (at {:.0?})", started.elapsed());
    vm::run()?;
    // The benchmark's short version, so that a change that breaks it fails here; its figures
    // are printed, never asserted (these machines are too noisy for timing gates).
    if nix::unistd::geteuid().is_root() {
        eprintln!(
            "xtask: tier bench --quick: release build, then every series once (at {:.0?})",
            started.elapsed()
        );
        if let Some(build) = release_build {
            let _ = build.join();
        }
        bench::run(true, &[])?;
    } else {
        eprintln!("xtask: SKIPPED tier bench --quick: the sensor needs root");
    }
    eprintln!("xtask: all tiers passed in {:.0?}", started.elapsed());
    Ok(())
}
