//! The eBPF toolchain: the nightly compiler with `rust-src`, and `bpf-linker` built against the
//! nightly's own libLLVM. Installed on first use into a cache that `cargo clean` leaves alone;
//! a second run only checks. Each install step prints one line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// What the eBPF build needs on PATH.
pub struct Toolchain {
    pub bpf_linker_dir: PathBuf,
}

pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("vigil").join("toolchain")
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn step(what: &str, cmd: &mut Command, hint: &str) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); {hint}");
    }
    Ok(())
}

pub fn ensure() -> anyhow::Result<Toolchain> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step(
            "installing the nightly toolchain (eBPF programs need it)",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
            "install it by hand with `rustup toolchain install nightly`",
        )?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        step(
            "adding rust-src to nightly (build-std for the bpf target)",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "run `rustup component add rust-src --toolchain nightly` by hand",
        )?;
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot = PathBuf::from(sysroot.trim());
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV does not report its LLVM version")?
        .to_owned();
    let libllvm = find_libllvm(&sysroot.join("lib"))?;

    let cache = cache_dir();
    let root = cache.join("bpf-linker");
    let bin = root.join("bin").join("bpf-linker");
    // The linker is tied to the exact libLLVM it was built against: rebuild when nightly moves.
    let stamp = root.join("built-against");
    let wanted = format!("{BPF_LINKER_VERSION} {}", libllvm.display());
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    if bin.exists() && current.trim() == wanted {
        return Ok(Toolchain {
            bpf_linker_dir: root.join("bin"),
        });
    }
    let llvm_prefix = cache.join("llvm");
    std::fs::create_dir_all(llvm_prefix.join("lib"))?;
    let link = llvm_prefix.join("lib").join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    step(
        &format!("building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} (one time, ~2 min)"),
        Command::new("cargo")
            .args(["install", "--force", "--root"])
            .arg(&root)
            .args(["bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &llvm_prefix)
            .env_remove("CARGO_TARGET_DIR"),
        "check that crates.io is reachable and that nightly ships libLLVM (see ARCHITECTURE.md)",
    )?;
    std::fs::write(&stamp, wanted)?;
    Ok(Toolchain {
        bpf_linker_dir: root.join("bin"),
    })
}

/// nightly ships its LLVM as `libLLVM.so.<ver>-rust-<ver>-nightly` (plus a `libLLVM-<maj>-...`
/// alias); bpf-linker links against whichever we point `LLVM_PREFIX/lib/libLLVM.so` at.
fn find_libllvm(lib: &Path) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM") && n.contains(".so"))
        })
        .collect();
    found.sort();
    found
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so* in {}: nightly without its LLVM cannot build bpf-linker",
                lib.display()
            )
        })
}
