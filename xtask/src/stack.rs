//! `cargo xtask run`: the local stack. Builds everything, makes a development CA and
//! certificates under `target/vigil-dev/`, starts `vigil-collector` (SQLite in the same place)
//! and `vigil-sensor` with the rules in `rules/`, then tails live alerts until Ctrl-C, and
//! stops everything it started: no stray processes, no programs left in the kernel.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::build::{self, exec, workspace_root};

const LISTEN: &str = "127.0.0.1:7443";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: i32) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("xtask run: the sensor loads eBPF programs and needs root; run `sudo -E cargo xtask run`");
        std::process::exit(1);
    }
    let bins = build::all()?.bins;
    let root = workspace_root();
    let dev = root.join("target/vigil-dev");
    let certs = dev.join("certs");
    std::fs::create_dir_all(&dev)?;
    let vigil = bins.join("vigil");
    make_dev_certs(&vigil, &certs)?;

    // A handler (not SIG_IGN, which children would inherit) so Ctrl-C reaches us as a flag
    // while the children, in the same process group, get their own SIGINT and stop cleanly.
    let handler = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        sigaction(Signal::SIGINT, &handler)?;
        sigaction(Signal::SIGTERM, &handler)?;
    }

    let pem = |name: &str| certs.join(name).display().to_string();
    let mut collector = Command::new(bins.join("vigil-collector"));
    collector
        .args(["--listen", LISTEN, "--database"])
        .arg(dev.join("vigil.db"))
        .args([
            "--tls-ca",
            &pem("ca.pem"),
            "--tls-cert",
            &pem("collector.pem"),
            "--tls-key",
            &pem("collector-key.pem"),
        ]);
    let mut sensor = Command::new(bins.join("vigil-sensor"));
    sensor.arg("--rules").arg(root.join("rules")).args([
        "--collector",
        LISTEN,
        "--ca",
        &pem("ca.pem"),
        "--cert",
        &pem("dev-sensor.pem"),
        "--key",
        &pem("dev-sensor-key.pem"),
    ]);
    let mut tail = Command::new(&vigil);
    tail.args([
        "--collector",
        LISTEN,
        "--ca",
        &pem("ca.pem"),
        "--cert",
        &pem("dev-operator.pem"),
        "--key",
        &pem("dev-operator-key.pem"),
        "tail",
        "-o",
        "table",
    ]);

    eprintln!("xtask: starting the local stack; the same commands by hand:");
    for cmd in [&collector, &sensor, &tail] {
        eprintln!("  {}", shell_line(cmd));
    }
    let collector_log = dev.join("collector.log");
    let sensor_log = dev.join("sensor.log");
    eprintln!(
        "xtask: logs in {} and {}",
        collector_log.display(),
        sensor_log.display()
    );

    let mut children: Vec<(&str, Child)> = Vec::new();
    let result = (|| -> anyhow::Result<()> {
        children.push((
            "vigil-collector",
            spawn_logged(&mut collector, &collector_log)?,
        ));
        wait_for_log(&collector_log, "listening on", &mut children)?;
        children.push(("vigil-sensor", spawn_logged(&mut sensor, &sensor_log)?));
        wait_for_log(&sensor_log, "sensor running", &mut children)?;
        children.push((
            "vigil tail",
            tail.stdin(Stdio::null())
                .spawn()
                .context("starting vigil tail")?,
        ));
        eprintln!("xtask: live alerts below; Ctrl-C stops everything");
        while !INTERRUPTED.load(Ordering::SeqCst) {
            for (name, child) in children.iter_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("{name} exited on its own ({status}); see the logs above");
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    stop_all(&mut children);
    result
}

fn make_dev_certs(vigil: &Path, certs: &Path) -> anyhow::Result<()> {
    if certs.join("ca.pem").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: creating a development CA and certificates in {}",
        certs.display()
    );
    exec(
        Command::new(vigil)
            .args(["certs", "init", "--dir"])
            .arg(certs),
    )?;
    for (role, name) in [
        ("--collector", "collector"),
        ("--sensor", "dev-sensor"),
        ("--operator", "dev-operator"),
    ] {
        exec(
            Command::new(vigil)
                .args(["certs", "issue", "--dir"])
                .arg(certs)
                .args([role, name]),
        )?;
    }
    Ok(())
}

fn spawn_logged(cmd: &mut Command, log: &PathBuf) -> anyhow::Result<Child> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

fn wait_for_log(log: &Path, needle: &str, children: &mut [(&str, Child)]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !INTERRUPTED.load(Ordering::SeqCst) {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
        {
            return Ok(());
        }
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{name} exited ({status}):\n{text}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("gave up waiting for {needle:?} in {}", log.display())
}

/// SIGTERM in reverse start order, 5 s each, then SIGKILL.
fn stop_all(children: &mut Vec<(&str, Child)>) {
    while let Some((name, mut child)) = children.pop() {
        if let Ok(None) = child.try_wait() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("xtask: {name} did not stop within 5 s; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    eprintln!("xtask: stack stopped");
}

fn shell_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
