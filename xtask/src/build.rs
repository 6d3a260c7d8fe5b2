//! Builds the kernel programs (nightly, bpf target, bpf-linker), then every binary of the
//! workspace with the programs embedded in the sensor.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::bootstrap;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where the built binaries land.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("debug")
}

pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Builds the eBPF object and returns its path.
pub fn ebpf() -> anyhow::Result<PathBuf> {
    let toolchain = bootstrap::ensure()?;
    let crate_dir = workspace_root().join("sensor-ebpf");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![toolchain.bpf_linker_dir];
    paths.extend(std::env::split_paths(&path));
    exec(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "build", "--release"])
            .current_dir(&crate_dir)
            .env("PATH", std::env::join_paths(paths)?)
            // NB: variables the outer (stable) cargo set would leak into the nightly build.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET"),
    )
    .context("building the kernel programs")?;
    Ok(crate_dir.join("target/bpfel-unknown-none/release/vigil-sensor"))
}

pub struct Built {
    /// The directory holding `vigil`, `vigil-sensor` and `vigil-collector`.
    pub bins: PathBuf,
    /// The kernel programs' object, embedded in the sensor.
    pub ebpf_object: PathBuf,
}

/// Builds the kernel programs and every binary.
pub fn all() -> anyhow::Result<Built> {
    let ebpf_object = ebpf()?;
    crate::console_ui::build()?;
    exec(
        Command::new(cargo())
            .args(["build", "--workspace", "--bins"])
            .current_dir(workspace_root())
            .env("VIGIL_EBPF_OBJECT", &ebpf_object),
    )?;
    Ok(Built {
        bins: bin_dir(),
        ebpf_object,
    })
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}
