//! `cargo xtask package`: Debian packages for the sensor, the collector and the CLI they share.
//!
//! Three packages rather than the CLI inside both: dpkg refuses two packages owning
//! /usr/bin/vigil, and one host may run the sensor and the collector. `vigil-sensor` and
//! `vigil-collector` depend on the exact `vigil-cli` version. The layout (binaries, units,
//! conffiles, rule pack) is declared in each crate's `[package.metadata.deb]`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use crate::build::{self, cargo, exec, workspace_root};
use crate::tools;

pub const PACKAGES: [&str; 3] = ["vigil-cli", "vigil-sensor", "vigil-collector"];

/// Which build goes into the packages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Optimised binaries: what users install.
    Release,
    /// The debug binaries `cargo xtask build` already made: for tests of the layout and units,
    /// without a second full build.
    Dev,
}

/// Builds the binaries (for `release`) and the three .debs; returns the directory holding them.
pub fn build(profile: Profile) -> anyhow::Result<PathBuf> {
    let cargo_deb = tools::cargo_deb()?;
    let ebpf = build::ebpf()?;
    crate::console_ui::build()?;
    let root = workspace_root();
    let (profile_name, target_sub) = match profile {
        Profile::Release => ("release", "release"),
        Profile::Dev => ("dev", "debug"),
    };
    let mut build_cmd = Command::new(cargo());
    build_cmd.args(["build", "--workspace", "--bins"]);
    if profile == Profile::Release {
        build_cmd.arg("--release");
    }
    exec(build_cmd.current_dir(&root).env("VIGIL_EBPF_OBJECT", &ebpf))?;
    let out = build::bin_dir()
        .parent()
        .map(|t| t.join("debian").join(target_sub))
        .context("target directory has no parent")?;
    std::fs::create_dir_all(&out)?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![cargo_deb];
    paths.extend(std::env::split_paths(&path));
    for package in PACKAGES {
        let mut deb = Command::new(cargo());
        deb.arg("deb");
        if profile == Profile::Dev {
            // Test packages of debug binaries: full-strength xz would cost most of a minute.
            deb.arg("--fast");
        }
        exec(
            deb.args([
                "--no-build",
                "--quiet",
                "--profile",
                profile_name,
                "-p",
                package,
                "--output",
            ])
            .arg(&out)
            .current_dir(&root)
            .env("PATH", std::env::join_paths(&paths)?),
        )
        .with_context(|| format!("packaging {package}"))?;
    }
    eprintln!("xtask: packages in {}", out.display());
    Ok(out)
}
