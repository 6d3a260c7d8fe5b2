//! A sensor in a PID namespace of its own (a container without `--pid=host` / `hostPID`): the
//! kernel numbers processes the host's way, the sensor's /proc another way. The real sensor runs
//! under `unshare --pid --fork --mount-proc` and must still recognise itself (by its host TGID),
//! must never attach to an event what its /proc says about a host pid (a process there with
//! that very number is arranged on purpose), and must say where it stands: a warning at start,
//! `doctor`, `--probe` and a metric.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use vigil_tests::{bin, free_port, json_lines, marker, poll_until, require_root, scrape, Proc};

/// What the sensor says at start outside the host's namespace, and `doctor`/`--probe` with it.
const OUTSIDE: &str = "running outside the host PID namespace";

/// `program args...` as the first process of a new PID namespace with its own /proc, killed
/// (with everything in the namespace) if unshare goes away.
fn in_new_pid_namespace(program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(program)
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// Pids of the processes whose /proc/PID/stat names `parent` as their parent.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.get(s.rfind(')')? + 1..)?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The `NSpid:` line of a process: its pid in each namespace from the host's down.
fn ns_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn pid_namespace_of(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/pid: {e}"))
}

fn copy_executable(from: &str, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from}: {e}"));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn a_sensor_in_its_own_pid_namespace_ignores_itself_and_never_attaches_another_processes_proc_details(
) {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let watched = dir.path().join("watched");
    let rules = watched.join("rules");
    std::fs::create_dir_all(&rules).expect("mkdir rules");
    let rule_file = rules.join("shadow.yml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/credential_file_read.yml"),
        &rule_file,
    )
    .expect("copy a rule of the pack");
    // The host process whose exec the sensor must report: waits for a line, then execs a
    // relative path from its own working directory.
    let workdir = dir.path().join("host-workdir");
    std::fs::create_dir(&workdir).expect("mkdir");
    copy_executable("/bin/true", &workdir.join("vigil-pidns-true"));
    let exec_marker = marker("pidns");
    let mut host = Command::new("/bin/sh")
        .current_dir(&workdir)
        .args([
            "-c",
            "read go; exec ./vigil-pidns-true \"$0\"",
            &exec_marker,
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start the host process");
    let host_pid = host.id();

    // Inside the namespace, a decoy gets exactly the host process's pid number (the namespace
    // is fresh, and ns_last_pid picks the next pid), with its own executable and directory.
    let decoy_dir = tempfile::Builder::new()
        .prefix("vigil-decoy-dir")
        .tempdir()
        .expect("decoy dir");
    copy_executable("/bin/sleep", &decoy_dir.path().join("vigil-decoy"));
    let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let config = dir.path().join("sensor.yaml");
    std::fs::write(
        &config,
        format!(
            "output: stdout\nfile_prefixes: [\"{}/\"]\nrules: [\"{}\"]\nmetrics:\n  listen: {metrics}\n",
            watched.display(),
            rules.display()
        ),
    )
    .expect("write config");
    let script = format!(
        "echo {} > /proc/sys/kernel/ns_last_pid || exit 97\n\
         (cd '{}' && exec ./vigil-decoy 3600) &\n\
         exec '{}' --config '{}'\n",
        host_pid - 1,
        decoy_dir.path().display(),
        bin("vigil-sensor").display(),
        config.display()
    );
    let mut sensor = Proc::spawn(
        "vigil-sensor in a new PID namespace",
        in_new_pid_namespace(Path::new("/bin/sh"), &["-c", &script]),
    );
    sensor.wait_stderr("sensor running", Duration::from_secs(30));

    // The namespace as /proc on the host sees it: the sensor (its first process, pid 1 there)
    // and the decoy holding the host process's number.
    let sensor_pid = poll_until(Duration::from_secs(5), || {
        children_of(sensor.pid()).into_iter().next()
    })
    .expect("the sensor under unshare");
    assert_eq!(
        ns_pids(sensor_pid),
        vec![sensor_pid, 1],
        "the sensor's pids"
    );
    let namespace = pid_namespace_of(sensor_pid);
    let decoy = children_of(sensor_pid)
        .into_iter()
        .find(|&p| ns_pids(p).get(1) == Some(&host_pid) && pid_namespace_of(p) == namespace)
        .unwrap_or_else(|| {
            panic!("no process with pid {host_pid} in the sensor's namespace: the collision was not arranged")
        });
    assert_ne!(decoy, host_pid);

    // Said once at start, with both numbers.
    let stderr = sensor.stderr_text();
    assert!(
        stderr.contains(&format!("{OUTSIDE} (host pid {sensor_pid}, pid 1 here)"))
            && stderr.contains("run with --pid=host / hostPID for full process details"),
        "no warning about the PID namespace:\n{stderr}"
    );
    let exposition = scrape(metrics);
    assert!(
        exposition.contains("vigil_sensor_host_pid_namespace 0\n"),
        "{exposition}"
    );

    // The host process execs: the event carries the exec record's own filename and argv, its
    // host pid, and nothing of the decoy that pid names in the sensor's /proc.
    writeln!(host.stdin.take().expect("stdin"), "go").expect("release the host process");
    assert!(host.wait().expect("wait").success());
    let exec = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines()).into_iter().find(|e| {
            e["event"]["action"] == "exec" && e["process"]["args"][1] == exec_marker.as_str()
        })
    })
    .unwrap_or_else(|| panic!("no exec event carrying {exec_marker}"));
    assert_eq!(exec["process"]["pid"], host_pid, "{exec:#}");
    assert_eq!(
        exec["process"]["executable"], "./vigil-pidns-true",
        "{exec:#}"
    );
    assert_eq!(
        exec["process"]["args"],
        serde_json::json!(["./vigil-pidns-true", exec_marker]),
    );
    assert_eq!(exec["process"]["name"], "vigil-pidns-tru", "{exec:#}");
    for looked_up in ["working_directory", "hash"] {
        assert!(
            exec["process"][looked_up].is_null(),
            "{looked_up} from /proc of a namespaced pid: {exec:#}"
        );
    }
    let text = exec.to_string();
    assert!(
        !text.contains("vigil-decoy"),
        "the decoy's /proc details are on the host process's event: {exec:#}"
    );

    // The sensor's own work after start: SIGHUP makes it read its rule file (a watched path)
    // again. A host process reading the same file is reported (the positive control); the
    // sensor, by its host pid, never.
    kill(Pid::from_raw(sensor_pid as i32), Signal::SIGHUP).expect("SIGHUP the sensor");
    sensor.wait_stderr("SIGHUP: rules reloaded", Duration::from_secs(10));
    let cat = Command::new("cat")
        .arg(&rule_file)
        .stdout(Stdio::null())
        .spawn()
        .expect("cat");
    let cat_pid = cat.id();
    let _ = cat.wait_with_output();
    let rule_path = rule_file.to_str().expect("utf-8");
    poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines()).into_iter().find(|e| {
            e["process"]["pid"] == cat_pid
                && e["event"]["action"] == "open"
                && e["file"]["path"] == rule_path
        })
    })
    .unwrap_or_else(|| panic!("cat's open of {rule_path} was not reported"));
    let own: Vec<Value> = json_lines(&sensor.stdout_lines())
        .into_iter()
        .filter(|e| e["process"]["pid"] == sensor_pid)
        .collect();
    assert!(own.is_empty(), "the sensor captured itself: {own:#?}");

    let stop = kill(Pid::from_raw(sensor_pid as i32), Signal::SIGTERM);
    assert!(stop.is_ok(), "SIGTERM the sensor: {stop:?}");
    let status = sensor.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "the sensor did not stop cleanly: {status}\n{}",
        sensor.stderr_text()
    );
}

#[test]
fn doctor_and_probe_say_the_sensor_is_outside_the_host_pid_namespace() {
    require_root();
    let sensor = bin("vigil-sensor");
    let doctor = in_new_pid_namespace(&sensor, &["doctor"])
        .output()
        .expect("run doctor under unshare");
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("pid namespace:"))
        .unwrap_or_else(|| {
            panic!(
                "doctor printed no pid namespace line:\n{stdout}{}",
                String::from_utf8_lossy(&doctor.stderr)
            )
        });
    assert!(
        line.starts_with("WARN  pid namespace: running outside the host PID namespace (host pid ")
            && line.contains(", pid 1 here)")
            && !line.contains("host pid unknown")
            && line.ends_with("run with --pid=host / hostPID for full process details"),
        "{line}"
    );
    // A warning, not a failure: the sensor works there, with less detail.
    assert!(
        doctor.status.success(),
        "doctor failed:\n{stdout}{}",
        String::from_utf8_lossy(&doctor.stderr)
    );

    let probe = in_new_pid_namespace(&sensor, &["--probe"])
        .output()
        .expect("run --probe under unshare");
    let stdout = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "{stdout}");
    assert!(
        stdout.lines().any(
            |l| l.starts_with(&format!("pid namespace: {OUTSIDE} (host pid "))
                && !l.contains("host pid unknown")
        ),
        "--probe does not say where it stands:\n{stdout}"
    );
}
