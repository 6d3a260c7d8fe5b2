//! `cargo xtask test`: every tier this machine supports, in order of cost.
//!
//! 1. lint: rustfmt and clippy (warnings are errors);
//! 2. unit, replay, rules and network tests of every crate (no privileges needed);
//! 3. kernel and end-to-end tests (`tests/`): real programs, real processes, real QUIC. They
//!    need root; without it they are reported as skipped, loudly, never as passed.

use std::process::Command;

use anyhow::Context;

use crate::build::{self, cargo, exec, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let build::Built {
        bins,
        ebpf_object: object,
    } = build::all()?;
    let root = workspace_root();

    eprintln!("xtask: tier lint: rustfmt, clippy");
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

    eprintln!("xtask: tier unit/rules/network");
    exec(
        Command::new(cargo())
            .args(["test", "--workspace", "--exclude", "vigil-tests"])
            .current_dir(&root)
            .env("VIGIL_EBPF_OBJECT", &object),
    )?;

    if nix::unistd::geteuid().is_root() {
        eprintln!("xtask: tier kernel/end-to-end (root)");
        exec(
            Command::new(cargo())
                .args(["test", "-p", "vigil-tests", "--", "--test-threads=1"])
                .current_dir(&root)
                .env("VIGIL_EBPF_OBJECT", &object)
                .env("VIGIL_BIN_DIR", &bins),
        )?;
    } else {
        eprintln!(
            "xtask: SKIPPED tier kernel/end-to-end: needs root (run `sudo cargo xtask test`)"
        );
    }
    eprintln!("xtask: all tiers passed in {:.0?}", started.elapsed());
    Ok(())
}
