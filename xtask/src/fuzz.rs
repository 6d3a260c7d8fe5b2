//! `cargo xtask fuzz`: the libFuzzer targets in `fuzz/` (outside the workspace, nightly), each
//! run for a fixed time. The corpus under `fuzz/corpus/<target>` persists between runs (it is
//! git-ignored), seeded from the shipped rules and configs. A crash fails the run and names the
//! artifact that reproduces it (`cargo +nightly fuzz run <target> <artifact>` in `fuzz/`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::build::{exec, workspace_root};
use crate::tools;

/// Every target in `fuzz/fuzz_targets/`, and the checked-in files that seed its corpus.
pub const TARGETS: &[(&str, &[&str])] = &[
    ("frame", &[]),
    ("spool", &[]),
    ("rules", &["rules"]),
    ("config", &["packaging/etc"]),
];

pub fn run(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let targets: Vec<_> = TARGETS
        .iter()
        .filter(|(name, _)| only.is_none_or(|o| o == *name))
        .collect();
    if targets.is_empty() {
        let names: Vec<_> = TARGETS.iter().map(|(n, _)| *n).collect();
        bail!("no fuzz target {only:?}; the targets are {names:?}");
    }
    let bin = tools::cargo_fuzz()?;
    let root = workspace_root();
    let dir = root.join("fuzz");

    // NB: the sensor's build script embeds the kernel programs and re-runs while the object it
    // names is missing, recompiling the sensor before every target; the targets never load
    // kernel programs, so they get an empty object that exists.
    let target_dir = dir.join("target");
    std::fs::create_dir_all(&target_dir)?;
    let no_kernel_programs = target_dir.join("no-kernel-programs.o");
    if !no_kernel_programs.exists() {
        std::fs::write(&no_kernel_programs, b"")?;
    }

    let started = Instant::now();
    eprintln!("xtask: fuzz: building the targets (nightly, libFuzzer, ASan)");
    exec(&mut fuzz_command(&bin, &dir, &["build"]))
        .context("building the fuzz targets (cargo-fuzz needs the nightly toolchain)")?;
    eprintln!("xtask: fuzz: built in {:.0?}", started.elapsed());

    let mut failures = Vec::new();
    for (name, seeds) in targets {
        let corpus = dir.join("corpus").join(name);
        std::fs::create_dir_all(&corpus)?;
        let log = dir.join("target").join(format!("fuzz-{name}.log"));
        let mut cmd = fuzz_command(&bin, &dir, &["run", name]);
        cmd.arg(&corpus);
        cmd.args(seeds.iter().map(|s| root.join(s)));
        cmd.args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
        ]);
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        std::fs::write(&log, &text)?;
        let execs = stat(&text, "stat::number_of_executed_units:").unwrap_or_default();
        let rate = stat(&text, "stat::average_exec_per_sec:").unwrap_or_default();
        let units = count_files(&corpus);
        if out.status.success() {
            eprintln!(
                "xtask: fuzz {name}: {execs} execs in {seconds} s ({rate}/s), corpus {units}, no crash"
            );
        } else {
            let artifact = text
                .lines()
                .find_map(|l| l.split_once("Test unit written to "))
                .map(|(_, path)| dir.join(path.trim()));
            let why = text
                .lines()
                .find(|l| l.contains("panicked at") || l.contains("ERROR: "))
                .unwrap_or("no libFuzzer error line")
                .trim()
                .to_owned();
            eprintln!("xtask: fuzz {name}: FAILED after {execs} execs: {why}");
            failures.push(match artifact {
                Some(path) => format!(
                    "{name}: {why} (artifact {}, log {})",
                    path.display(),
                    log.display()
                ),
                None => format!("{name}: {why} ({}; log {})", out.status, log.display()),
            });
        }
    }
    if !failures.is_empty() {
        bail!("fuzzing found crashes:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

/// `cargo +nightly fuzz <args>` in `fuzz/`, with the cached cargo-fuzz on PATH.
fn fuzz_command(bin: &Path, dir: &Path, args: &[&str]) -> Command {
    let object = dir.join("target/no-kernel-programs.o");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let paths: Vec<PathBuf> = std::iter::once(bin.to_owned())
        .chain(std::env::split_paths(&path))
        .collect();
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .args(args)
        .current_dir(dir)
        .env("PATH", std::env::join_paths(paths).unwrap_or(path))
        .env("VIGIL_EBPF_OBJECT", object)
        // NB: variables the outer (stable) cargo set would leak into the nightly build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    cmd
}

/// The value of a libFuzzer `-print_final_stats` line.
fn stat<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::trim)
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}
