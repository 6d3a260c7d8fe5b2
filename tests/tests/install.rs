//! The README's install section, followed word for word in a scratch Debian root booted with
//! systemd as its init, works: both units active from the shipped (hardened) unit files, the
//! sensor connected to the collector, and a real exec inside the root (`cat /etc/shadow`)
//! arriving at the collector as the rule pack's alert.
//!
//! The commands are read from README.md at test time (the ```sh block under "Installing on
//! Debian or Ubuntu"), so a README change that no longer works fails here. Its first command,
//! `cargo xtask package`, is the one run on the build machine: `cargo xtask test` has already
//! run it (debug binaries, `VIGIL_DEB_DIR`), and that directory is bound read-only at
//! `./target/debian/release` of the checkout the commands run in. Every other line runs inside
//! the root, as one `sh -e -x` script started by the root's own systemd (`systemd-run`), as a
//! root shell in it would.
//!
//! The root is `debootstrap --variant=minbase` bookworm plus systemd, dbus and sudo, made once
//! by xtask (`VIGIL_SCRATCH_ROOT`); each run boots a fresh overlay of it with `systemd-nspawn
//! -b`, with no network but its own loopback (`--private-network`), and removes it after.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::{deb_dir, marker, poll_every, require_root, scaled};

const SECTION: &str = "## Installing on Debian or Ubuntu";
/// The README's build step, run on the build machine by `cargo xtask test` before this test.
const BUILD_COMMAND: &str = "cargo xtask package";
/// The checkout inside the root the README's commands run in (`./target/debian/release/...`).
const CHECKOUT: &str = "/root/vigil";
/// The sensor name the README issues a certificate for.
const SENSOR: &str = "web-01";
/// The rule pack's rule for a text utility reading /etc/shadow (rules/credential_file_read.yml).
const SHADOW_RULE: &str = "23f64c28-f14e-49e6-bba8-7957550b1253";

/// What a systemd-nspawn container cannot do the way a Debian host does, and what the test
/// gives it instead. Each is container setup; the shipped units run unchanged.
const CONTAINER_ADJUSTMENTS: &[&str] = &[
    "nspawn's own seccomp filter refuses bpf() and perf_event_open() to every process under \
     the container's init, whatever its capabilities (map creation fails with EPERM even with \
     CAP_SYS_ADMIN; with bpf alone allowed, tracepoint attach fails in perf_event_open): the \
     container is started with --system-call-filter='bpf perf_event_open'",
    "nspawn's default capability set lacks CAP_BPF and CAP_PERFMON: the container gets them \
     with --capability=CAP_BPF,CAP_PERFMON (the sensor unit's bounding set narrows them again)",
    "the container's systemd skips sys-kernel-tracing.mount (ConditionCapability=CAP_SYS_RAWIO), \
     and the sensor unit, without CAP_SYS_ADMIN, cannot mount tracefs itself: the test mounts \
     it in the container after boot, as systemd does on a host",
    "the container has its own PID namespace (systemd must be its PID 1) while the kernel \
     programs report host PIDs: the sensor learns its host PID from a program of its own, says it \
     runs outside the host PID namespace, and attaches nothing looked up in the container's \
     /proc by a host PID (tests/tests/pid_namespace.rs); the alert is matched by a marker in \
     its command line, which the exec record carries from the kernel",
];

/// The fenced ```sh block under the install heading, without its build command.
fn readme_install_commands() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let section = readme
        .split_once(&format!("\n{SECTION}\n"))
        .unwrap_or_else(|| panic!("README.md has no {SECTION:?} heading"))
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let block = section
        .split_once("\n```sh\n")
        .unwrap_or_else(|| panic!("no ```sh block under {SECTION:?} in README.md"))
        .1
        .split_once("\n```\n")
        .unwrap_or_else(|| panic!("the ```sh block under {SECTION:?} is not closed"))
        .0;
    let first = block
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap_or_default();
    assert_eq!(
        first, BUILD_COMMAND,
        "the README's install block no longer starts with the build step this test runs on the \
         host; update tests/tests/install.rs with it"
    );
    block.replacen(BUILD_COMMAND, "", 1)
}

/// Where `cargo xtask test` put the root, or the reason it could not (a loud skip).
fn scratch_root() -> Option<PathBuf> {
    if let Some(why) = std::env::var_os("VIGIL_SCRATCH_ROOT_UNAVAILABLE") {
        eprintln!(
            "SKIPPED: the README install section was NOT tested: no scratch Debian root: {}",
            why.to_string_lossy()
        );
        return None;
    }
    let root = std::env::var_os("VIGIL_SCRATCH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_default();
    assert!(
        root.join("sbin/init").exists(),
        "VIGIL_SCRATCH_ROOT is not set to a Debian root: run the tests with `cargo xtask test` \
         (or set it to the path `cargo xtask scratch-root` prints)"
    );
    Some(root)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A booted overlay of the scratch root. Dropping it shuts the container down (killing it
/// after a grace period), unmounts the overlay and removes the scratch directory, so a failed
/// assertion leaves nothing behind.
struct Machine {
    nspawn: Option<Child>,
    /// PID (in the host's namespace) of the container's systemd.
    leader: Option<i32>,
    merged: PathBuf,
    mounted: bool,
    dir: tempfile::TempDir,
}

impl Machine {
    fn boot(lower: &Path, debs: &Path) -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("vigil-install-")
            .tempdir()
            .expect("scratch dir");
        let (upper, work, merged) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(&merged)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "overlay mount: {}", text(&out));
        let mut machine = Machine {
            nspawn: None,
            leader: None,
            merged: merged.clone(),
            mounted: true,
            dir,
        };
        std::fs::create_dir_all(merged.join(CHECKOUT.trim_start_matches('/')).join("target"))
            .expect("mkdir checkout");
        let console = File::create(machine.dir.path().join("console.log")).expect("console log");
        let nspawn = Command::new("systemd-nspawn")
            .arg("--directory")
            .arg(&merged)
            .args([
                "--boot",
                // No systemd-machined on the build machine: nothing to register with.
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=read-only",
                &format!("--machine=vigil-install-{}", std::process::id()),
                "--capability=CAP_BPF,CAP_PERFMON",
                "--system-call-filter=bpf perf_event_open",
            ])
            .arg(format!(
                "--bind-ro={}:{CHECKOUT}/target/debian/release",
                debs.display()
            ))
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            .spawn()
            .expect("start systemd-nspawn");
        machine.nspawn = Some(nspawn);
        machine.leader = Some(machine.find_leader());
        machine.wait_booted();
        // What systemd's sys-kernel-tracing.mount does at boot on a host, and skips in the
        // container (ConditionCapability=CAP_SYS_RAWIO, which nspawn does not grant): the
        // sensor unit, without CAP_SYS_ADMIN, cannot mount it itself.
        let out = machine.nsenter(&["mount", "-t", "tracefs", "tracefs", "/sys/kernel/tracing"]);
        assert!(out.status.success(), "mount tracefs: {}", text(&out));
        machine
    }

    /// The container's systemd: the process whose parent is systemd-nspawn.
    fn find_leader(&mut self) -> i32 {
        let child = self.nspawn.as_mut().expect("nspawn started");
        let nspawn = child.id().to_string();
        let deadline = Instant::now() + scaled(Duration::from_secs(30));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", self.console());
            }
            for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
                let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                // pid (comm) state ppid ...: comm may hold spaces, so split after the ')'.
                let ppid = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1));
                // Until it has exec'd /sbin/init, the child is still nspawn setting up.
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                if ppid == Some(nspawn.as_str()) && comm.trim() == "systemd" {
                    if let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) {
                        return pid;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the container's init did not start:\n{}", self.console());
    }

    fn wait_booted(&self) {
        // `is-system-running --wait` needs systemd's private bus socket, made early in boot.
        let leader = self.leader.expect("container booted");
        let marker = PathBuf::from(format!("/proc/{leader}/root/run/systemd/private"));
        if poll_every(Duration::from_secs(1), Duration::from_secs(30), || {
            marker.exists().then_some(())
        })
        .is_none()
        {
            panic!("the container's systemd never started:\n{}", self.console());
        }
        let out = self.nsenter(&["timeout", "120", "systemctl", "is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if state != "running" {
            let failed = self.nsenter(&["systemctl", "--failed", "--no-pager"]);
            panic!(
                "the container did not boot cleanly (state {state:?}):\n{}\n{}",
                text(&failed),
                self.console()
            );
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Runs a program in the container's namespaces (not under its init: for inspection).
    fn nsenter(&self, args: &[&str]) -> Output {
        let leader = self.leader.expect("container booted").to_string();
        Command::new("nsenter")
            .args(["--target", &leader, "--all", "--"])
            .args(args)
            .output()
            .expect("run nsenter")
    }

    /// Runs a shell script as a service of the container's systemd, as a root shell inside
    /// the root would (its seccomp filter, cgroup and session), in the checkout directory.
    fn sh(&self, script: &str, timeout_secs: u64) -> Output {
        let timeout = scaled(Duration::from_secs(timeout_secs))
            .as_secs()
            .to_string();
        self.nsenter(&[
            "timeout",
            &timeout,
            "systemd-run",
            "--wait",
            "--pipe",
            "--quiet",
            "--collect",
            &format!("--working-directory={CHECKOUT}"),
            "--",
            "sh",
            "-e",
            "-x",
            "-c",
            script,
        ])
    }

    fn journal(&self) -> String {
        text(&self.nsenter(&[
            "journalctl",
            "--no-pager",
            "-n",
            "60",
            "-u",
            "vigil-collector",
            "-u",
            "vigil-sensor",
        ]))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // SIGTERM asks nspawn to shut the container down cleanly (the sensor detaches its
        // programs on its own SIGTERM); after the grace period, kill init and nspawn.
        if let Some(child) = self.nspawn.as_mut() {
            let nspawn = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(nspawn, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("install test: the container did not stop in 20 s; killing it");
                if let Some(leader) = self.leader {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(leader),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.mounted {
            let unmounted = Command::new("umount")
                .arg(&self.merged)
                .status()
                .is_ok_and(|s| s.success());
            if !unmounted {
                eprintln!("install test: overlay busy; detaching it lazily");
                let _ = Command::new("umount")
                    .arg("--lazy")
                    .arg(&self.merged)
                    .status();
            }
            self.mounted = false;
        }
    }
}

#[test]
fn the_readme_install_section_followed_word_for_word_in_a_debian_root_works() {
    require_root();
    let commands = readme_install_commands();
    let debs = deb_dir();
    let Some(lower) = scratch_root() else { return };
    for adjustment in CONTAINER_ADJUSTMENTS {
        eprintln!("install test: CONTAINER LIMIT: {adjustment}");
    }
    let started = Instant::now();
    let machine = Machine::boot(&lower, &debs);
    let booted = started.elapsed();

    let out = machine.sh(&commands, 300);
    assert!(
        out.status.success(),
        "the README's install commands failed in the root ({}):\n{}\n--- journal ---\n{}",
        out.status,
        text(&out),
        machine.journal()
    );
    let installed = started.elapsed();
    let said = text(&out);
    eprintln!("{said}");
    assert!(
        !said.contains("mounted tracefs"),
        "`doctor` mounted tracefs: the container's setup no longer provides it, so the unit's \
         start would depend on doctor having run first"
    );

    // The container is a PID namespace of its own: `doctor` (run by the README) says so, and
    // so does the running sensor (below), rather than attach the container's /proc data to host pids.
    assert!(
        said.contains("WARN  pid namespace: running outside the host PID namespace (host pid ")
            && !said.contains("host pid unknown"),
        "doctor does not say it runs outside the host PID namespace:\n{said}"
    );

    // Both units run from the shipped unit files, with no local override.
    for unit in ["vigil-collector", "vigil-sensor"] {
        let out = machine.nsenter(&["systemctl", "show", "-p", "DropInPaths", "--value", unit]);
        assert_eq!(text(&out).trim(), "", "{unit} has drop-ins");
    }

    // An operator certificate, as `vigil certs` issues one, to ask the collector.
    let out = machine.sh(
        "vigil certs issue --dir /etc/vigil/certs --operator install-test",
        30,
    );
    assert!(out.status.success(), "operator certificate: {}", text(&out));
    let vigil = "vigil --server-name collector.example.org --ca /etc/vigil/certs/ca.pem \
                 --cert /etc/vigil/certs/install-test.pem \
                 --key /etc/vigil/certs/install-test-key.pem";

    // The sensor is connected: the collector lists it from its status report.
    let sensors = poll_every(Duration::from_secs(1), Duration::from_secs(60), || {
        let out = machine.sh(&format!("{vigil} sensors -o json"), 30);
        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
        listed
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|s| s["sensor"] == SENSOR)
    });
    let Some(sensor) = sensors else {
        panic!(
            "the collector never listed sensor {SENSOR}:\n{}",
            machine.journal()
        )
    };
    assert_eq!(sensor["status"]["host"], SENSOR, "{sensor}");
    let journal = text(&machine.nsenter(&["journalctl", "--no-pager", "-u", "vigil-sensor"]));
    assert!(
        journal.contains("running outside the host PID namespace (host pid ")
            && !journal.contains("host pid unknown"),
        "the sensor did not warn that it runs outside the host PID namespace:\n{journal}"
    );

    // A real exec in the root that the shipped pack flags: a text utility reading
    // /etc/shadow, with a marker file in its command line to tell this run's alert apart.
    let mark = marker("install");
    let out = machine.sh(
        &format!("touch /tmp/{mark}; cat /etc/shadow /tmp/{mark} >/dev/null"),
        30,
    );
    assert!(out.status.success(), "cat /etc/shadow: {}", text(&out));
    let alert = poll_every(Duration::from_secs(1), Duration::from_secs(60), || {
        let out = machine.sh(&format!("{vigil} alerts --since 10m -o json"), 30);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&mark))
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    });
    let Some(alert) = alert else {
        panic!(
            "no alert for `cat /etc/shadow /tmp/{mark}` reached the collector:\n{}",
            machine.journal()
        )
    };
    eprintln!("install test: alert {alert}");
    assert_eq!(alert["rule"]["id"], SHADOW_RULE, "{alert}");
    assert_eq!(alert["sensor"], SENSOR, "{alert}");

    // Both services are still the ones started by the README: active, never restarted
    // (a hardening directive that broke the sensor would show as a restart loop).
    for unit in ["vigil-collector", "vigil-sensor"] {
        let out = machine.nsenter(&["systemctl", "is-active", unit]);
        assert_eq!(
            text(&out).trim(),
            "active",
            "{unit}:\n{}",
            machine.journal()
        );
        let out = machine.nsenter(&["systemctl", "show", "-p", "NRestarts", "--value", unit]);
        assert_eq!(
            text(&out).trim(),
            "0",
            "{unit} restarted:\n{}",
            machine.journal()
        );
    }
    eprintln!(
        "install test: booted in {booted:.1?}, README commands done at {installed:.1?}, \
         alert checked at {:.1?}",
        started.elapsed()
    );
}
