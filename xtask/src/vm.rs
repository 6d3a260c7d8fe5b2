//! `cargo xtask vm-test`: the kernel test tier inside Debian's packaged 6.1 kernel under QEMU.
//!
//! The kernel comes from Debian's archive (`apt-get download linux-image-6.1.0-N-amd64`, newest
//! N, unpacked into ~/.cache/vigil/vm). The test binaries, the sensor, a shell and busybox,
//! plus every shared library they load, go into an initramfs whose `/init` mounts the kernel
//! filesystems, runs the kernel tier and prints `init: success` or `init: failure`. QEMU runs
//! with software emulation (TCG, `-cpu max`): KVM hangs at early boot on the development
//! machines (ARCHITECTURE.md). The boot line carries `lsm=...,bpf` so BPF LSM is available.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bootstrap::cache_dir;
use crate::build::{self, cargo, exec, workspace_root};
use crate::tools;

/// The whole run inside the VM, boot included, under TCG.
const VM_DEADLINE: Duration = Duration::from_secs(600);
const BOOT_LINE: &str =
    "console=ttyS0 panic=-1 oops=panic lsm=lockdown,capability,landlock,yama,bpf";

/// Why the VM tier cannot run here; the caller reports it as skipped.
pub struct Unavailable(pub String);

pub fn run() -> anyhow::Result<()> {
    match prepare() {
        Ok(vm) => boot_and_test(&vm),
        Err(Unavailable(why)) => {
            eprintln!("xtask: SKIPPED tier vm (Debian 6.1 kernel under QEMU): {why}");
            Ok(())
        }
    }
}

struct Vm {
    kernel: PathBuf,
    initramfs: PathBuf,
}

fn prepare() -> Result<Vm, Unavailable> {
    let unavailable = |e: anyhow::Error| Unavailable(format!("{e:#}"));
    if !nix::unistd::geteuid().is_root() {
        return Err(Unavailable(
            "needs root (to install qemu and load programs)".into(),
        ));
    }
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cpio", "cpio"),
        ("busybox", "busybox-static"),
    ] {
        tools::debian_tool(program, package).map_err(unavailable)?;
    }
    let kernel = debian_kernel().map_err(unavailable)?;
    let initramfs = initramfs().map_err(unavailable)?;
    Ok(Vm { kernel, initramfs })
}

/// vmlinuz of the newest linux-image-6.1.0-N-amd64 in the apt archive, cached.
fn debian_kernel() -> anyhow::Result<PathBuf> {
    let dir = cache_dir()
        .parent()
        .map(|p| p.join("vm"))
        .context("cache dir")?;
    std::fs::create_dir_all(&dir)?;
    if let Some(found) = find_vmlinuz(&dir.join("root/boot")) {
        return Ok(found);
    }
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64$",
        ])
        .output()
        .context("apt-cache search")?;
    let package = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|name| {
            name.trim_start_matches("linux-image-6.1.0-")
                .trim_end_matches("-amd64")
                .parse::<u32>()
                .unwrap_or(0)
        })
        .map(str::to_owned)
        .context("no linux-image-6.1.0-*-amd64 in the apt archive (run apt-get update)")?;
    eprintln!("xtask: downloading Debian's {package} (one time)");
    exec(
        Command::new("apt-get")
            .args(["download", "-q", &package])
            .current_dir(&dir),
    )?;
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    exec(
        Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    )?;
    let _ = std::fs::remove_file(&deb);
    find_vmlinuz(&dir.join("root/boot")).context("the kernel package holds no vmlinuz")
}

fn find_vmlinuz(boot: &Path) -> Option<PathBuf> {
    std::fs::read_dir(boot)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// The kernel tier's test binary, from cargo's own report of what it built.
fn kernel_test_binary() -> anyhow::Result<PathBuf> {
    let out = Command::new(cargo())
        .args([
            "test",
            "-p",
            "vigil-tests",
            "--test",
            "kernel",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("building the kernel tier")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter(|l| l.contains("\"executable\":\"") && l.contains("\"name\":\"kernel\""))
        .filter_map(|l| {
            l.split("\"executable\":\"")
                .nth(1)?
                .split('"')
                .next()
                .map(PathBuf::from)
        })
        .next()
        .context("cargo reported no kernel test executable")
}

fn initramfs() -> anyhow::Result<PathBuf> {
    let built = build::all()?;
    let test = kernel_test_binary()?;
    let work = build::bin_dir().join("vm");
    let root = work.join("root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "vigil",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = which("busybox")?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    for applet in [
        "mount",
        "mkdir",
        "poweroff",
        "cat",
        "echo",
        "sync",
        "ln",
        "sha256sum",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    // A real shell as /bin/sh: the tests copy it under another name, which busybox refuses.
    // Real coreutils `true` too: the tests run copies of it under other names.
    let mut binaries = vec![
        (which("dash")?, root.join("bin/sh")),
        (which("true")?, root.join("bin/true")),
    ];
    binaries.push((test, root.join("vigil/kernel-tests")));
    for name in ["vigil-sensor", "vigil", "vigil-collector"] {
        binaries.push((built.bins.join(name), root.join("vigil").join(name)));
    }
    let mut libs = BTreeSet::new();
    for (from, to) in &binaries {
        // Stripped: debug info would make the initramfs hundreds of MB for TCG to unpack.
        exec(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(from)
                .arg(to),
        )?;
        libs.extend(shared_libraries(from)?);
    }
    for lib in libs {
        let to = root.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&lib, &to).with_context(|| format!("copying {}", lib.display()))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let image = work.join("initramfs.cpio");
    exec(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet > '{}'",
                image.display()
            ))
            .current_dir(&root),
    )?;
    Ok(image)
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t tmpfs tmp /tmp
/bin/busybox mount -t tracefs tracefs /sys/kernel/tracing
/bin/busybox mount -t securityfs securityfs /sys/kernel/security
/bin/busybox mount -t bpf bpf /sys/fs/bpf
/bin/busybox mount -t tmpfs cgroup /sys/fs/cgroup
/bin/busybox mkdir -p /sys/fs/cgroup/unified
/bin/busybox mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
echo "vm: kernel $(/bin/busybox uname -r), lockdown: $(/bin/busybox cat /sys/kernel/security/lockdown 2>/dev/null), lsm: $(/bin/busybox cat /sys/kernel/security/lsm 2>/dev/null)"
/vigil/vigil-sensor doctor
# TCG emulates every instruction: wall-clock bounds in the tests are stretched 4 times.
# fentry and BPF LSM load on this kernel: the probe test asserts they are chosen.
export VIGIL_BIN_DIR=/vigil PATH=/bin:/vigil HOME=/tmp TMPDIR=/tmp NO_COLOR=1 VIGIL_TEST_TIME_SCALE=4 VIGIL_EXPECT_FENTRY=1
if /vigil/kernel-tests --test-threads=1; then echo "init: success"; else echo "init: failure"; fi
/bin/busybox sync
/bin/busybox poweroff -f
"#;

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}

/// Absolute paths of the shared libraries `binary` loads (ldd), the loader included.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect())
}

fn boot_and_test(vm: &Vm) -> anyhow::Result<()> {
    eprintln!(
        "xtask: tier vm: booting {} under QEMU TCG",
        vm.kernel.display()
    );
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(&vm.initramfs)
        .args(["-append", BOOT_LINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut verdict = None;
    let mut log = Vec::new();
    while verdict.is_none() {
        let left = VM_DEADLINE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                if line.starts_with("init: success") {
                    verdict = Some(true);
                } else if line.starts_with("init: failure") {
                    verdict = Some(false);
                }
                if line.starts_with("vm:")
                    || line.starts_with("test ")
                    || line.starts_with("init: ")
                    || line.starts_with("OK ")
                    || line.starts_with("WARN")
                    || line.starts_with("FAIL")
                {
                    eprintln!("  {line}");
                }
                log.push(line);
            }
            Err(_) => break,
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let log_path = build::bin_dir().join("vm").join("console.log");
    let _ = std::fs::write(&log_path, log.join("\n"));
    match verdict {
        Some(true) => {
            eprintln!(
                "xtask: tier vm passed on {} in {:.0?}",
                vm.kernel.display(),
                started.elapsed()
            );
            Ok(())
        }
        Some(false) => bail!(
            "kernel tier failed inside the VM; console: {}",
            log_path.display()
        ),
        None => bail!(
            "the VM gave no verdict within {VM_DEADLINE:?}; console: {}",
            log_path.display()
        ),
    }
}
