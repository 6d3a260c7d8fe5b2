//! Kernel tier: the real sensor binary, its real programs, real processes started here.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vigil_tests::{json_lines, marker, poll_until, require_root, scaled, start_sensor, time_scale};

fn events_of(lines: &[String], action: &str, pid: u32) -> Vec<Value> {
    json_lines(lines)
        .into_iter()
        .filter(|e| e["event"]["action"] == action && e["process"]["pid"] == pid)
        .collect()
}

#[test]
fn exec_and_exit_are_captured_exactly_through_the_btf_tracepoint() {
    exec_and_exit_of_a_known_process_are_captured_exactly("btf", "tp_btf/sched_process_exec");
}

/// The fallback for kernels without BTF tracepoints, forced so that it is proven here too.
#[test]
fn exec_and_exit_are_captured_exactly_through_the_plain_tracepoint() {
    exec_and_exit_of_a_known_process_are_captured_exactly(
        "tracepoint",
        "tracepoint/sched/sched_process_exec",
    );
}

fn exec_and_exit_of_a_known_process_are_captured_exactly(hook: &str, hook_name: &str) {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let sh = dir.path().join("vigil-test-sh");
    std::fs::copy("/bin/sh", &sh).expect("copy /bin/sh");
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sh_path = sh.to_str().expect("utf-8 path").to_owned();
    let marker = marker("exec");

    let sensor = start_sensor(&["--output", "stdout", "--exec-hook", hook]);
    assert!(
        sensor.stderr_text().contains(hook_name),
        "exec is not on {hook_name}:\n{}",
        sensor.stderr_text()
    );
    let status = Command::new(&sh)
        .args(["-c", "exit 7", &marker])
        .status()
        .expect("run the copy of sh");
    assert_eq!(status.code(), Some(7));
    // Command::status does not tell the pid; find the exec by its unique marker instead.
    let exec = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines())
            .into_iter()
            .find(|e| e["event"]["action"] == "exec" && e["process"]["args"][3] == marker.as_str())
    })
    .unwrap_or_else(|| panic!("no exec event carrying {marker}"));
    let pid = exec["process"]["pid"].as_u64().expect("pid") as u32;
    let exit = poll_until(Duration::from_secs(5), || {
        events_of(&sensor.stdout_lines(), "exit", pid).pop()
    })
    .unwrap_or_else(|| panic!("no exit event for pid {pid}"));

    let me = std::process::id();
    let my_exe = std::env::current_exe().expect("current_exe");
    assert_eq!(exec["process"]["executable"], sh_path.as_str());
    assert_eq!(
        exec["process"]["args"],
        serde_json::json!([sh_path, "-c", "exit 7", marker])
    );
    assert_eq!(exec["process"]["parent"]["pid"], me);
    assert_eq!(
        exec["process"]["parent"]["executable"],
        my_exe.to_str().expect("utf-8")
    );
    assert_eq!(exec["user"]["id"], 0);
    assert_eq!(exec["process"]["user"]["id"], 0);
    assert_eq!(exec["process"]["user"]["name"], "root");
    assert_eq!(exec["process"]["name"], "vigil-test-sh");
    assert_eq!(exit["process"]["exit_code"], 7);
    assert_eq!(exit["process"]["entity_id"], exec["process"]["entity_id"]);
    // Exactly one exec for this process: no duplicate hook fired.
    assert_eq!(events_of(&sensor.stdout_lines(), "exec", pid).len(), 1);
}

fn our_kernel_objects() -> (BTreeSet<u32>, BTreeSet<u32>) {
    let programs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let maps = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .collect();
    (programs, maps)
}

#[test]
fn sigterm_leaves_no_program_or_map_in_the_kernel() {
    require_root();
    let (programs_before, maps_before) = our_kernel_objects();
    let mut sensor = start_sensor(&[]);
    let names: BTreeSet<String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| !programs_before.contains(&p.id()))
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .collect();
    for expected in ["fork", "exit"] {
        assert!(
            names.contains(expected),
            "program {expected} not loaded: {names:?}"
        );
    }
    assert!(
        names.contains("exec_btf") || names.contains("exec_tp"),
        "no exec program loaded: {names:?}"
    );
    let (programs_running, maps_running) = our_kernel_objects();
    let ours_programs: BTreeSet<u32> = programs_running
        .difference(&programs_before)
        .copied()
        .collect();
    let ours_maps: BTreeSet<u32> = maps_running.difference(&maps_before).copied().collect();
    assert!(!ours_maps.is_empty(), "sensor maps not visible");

    let (status, took) = sensor.terminate(Duration::from_secs(10));
    assert!(
        status.success(),
        "sensor exit status after SIGTERM: {status}"
    );
    assert!(
        took < scaled(Duration::from_secs(5)),
        "SIGTERM took {took:?} (time scale {})",
        time_scale()
    );
    // The kernel frees programs and maps after the last reference goes, asynchronously.
    let leftovers = poll_until(Duration::from_secs(5), || {
        let (programs, maps) = our_kernel_objects();
        let left: Vec<u32> = ours_programs
            .iter()
            .chain(ours_maps.iter())
            .filter(|id| programs.contains(id) || maps.contains(id))
            .copied()
            .collect();
        left.is_empty().then_some(())
    });
    assert!(
        leftovers.is_some(),
        "programs {ours_programs:?} / maps {ours_maps:?} still in the kernel after SIGTERM"
    );
}

#[test]
fn an_executed_file_is_hashed_like_sha256sum() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let tool = dir.path().join("vigil-hashed");
    std::fs::copy("/bin/true", &tool).expect("copy true");
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let expected = Command::new("sha256sum")
        .arg(&tool)
        .output()
        .expect("sha256sum");
    let expected = String::from_utf8_lossy(&expected.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_owned();
    let sensor = start_sensor(&["--output", "stdout"]);
    let marker = marker("hash");
    Command::new(&tool)
        .arg(&marker)
        .status()
        .expect("run the copy");
    let exec = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines())
            .into_iter()
            .find(|e| e["event"]["action"] == "exec" && e["process"]["args"][1] == marker.as_str())
    })
    .expect("exec event of the hashed copy");
    assert_eq!(exec["process"]["hash"]["sha256"], expected.as_str());
}

#[test]
fn secrets_on_command_lines_never_reach_the_output() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let mysql = dir.path().join("mysql");
    std::fs::copy("/bin/true", &mysql).expect("copy true");
    std::fs::set_permissions(&mysql, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = marker("SECRET");
    let sensor = start_sensor(&["--output", "stdout"]);
    Command::new(&mysql)
        .args(["-uroot", &format!("-p{secret}"), "db"])
        .status()
        .expect("run mysql copy");
    Command::new("/bin/true")
        .arg(format!("password={secret}"))
        .status()
        .expect("run true");
    let mysql_path = mysql.to_str().expect("utf-8").to_owned();
    let exec = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines()).into_iter().find(|e| {
            e["event"]["action"] == "exec" && e["process"]["executable"] == mysql_path.as_str()
        })
    })
    .expect("exec of the mysql copy");
    assert_eq!(
        exec["process"]["args"],
        serde_json::json!([mysql_path, "-uroot", "-p<redacted>", "db"])
    );
    poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines())
            .into_iter()
            .find(|e| e["process"]["args"][1] == "password=<redacted>")
    })
    .expect("exec of true with a redacted password argument");
    let leaked: Vec<String> = sensor
        .stdout_lines()
        .into_iter()
        .filter(|l| l.contains(&secret))
        .collect();
    assert!(leaked.is_empty(), "secret in the output: {leaked:?}");
}

/// `vigil-sensor --probe` runs the sensor's own hook chains: here fentry and LSM are refused
/// with EPERM (this kernel forbids trampolines), so file opens fall back to the syscall
/// tracepoints; and the running sensor then really captures opens through them.
#[test]
fn probe_lists_the_refused_fentry_and_lsm_hooks_and_the_tracepoint_fallback_in_use() {
    require_root();
    let out = Command::new(vigil_tests::bin("vigil-sensor"))
        .arg("--probe")
        .env("NO_COLOR", "1")
        .output()
        .expect("run vigil-sensor --probe");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--probe failed: {table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |hook: &str| {
        table
            .lines()
            .find(|l| l.starts_with("file open") && l.contains(hook))
            .unwrap_or_else(|| panic!("no file open row for {hook}:\n{table}"))
            .to_owned()
    };
    let fentry = row("fentry/security_file_open");
    if std::env::var_os("VIGIL_EXPECT_FENTRY").is_some() {
        // A kernel that allows fentry (`cargo xtask vm-test` sets this): the best hook is chosen.
        println!("{table}");
        assert!(fentry.ends_with("in use"), "fentry not chosen:\n{table}");
        return;
    }
    let lsm = row("lsm/file_open");
    let tracepoint = row("tracepoint/syscalls/sys_{enter,exit}_{openat,open,creat,openat2}");
    assert!(fentry.contains("refused: load: EPERM"), "{fentry}");
    assert!(lsm.contains("refused: load: EPERM"), "{lsm}");
    assert!(tracepoint.ends_with("in use"), "{tracepoint}");
    let lines: Vec<&str> = table.lines().collect();
    let position = |row: &str| lines.iter().position(|l| *l == row);
    assert!(
        position(&fentry) < position(&lsm) && position(&lsm) < position(&tracepoint),
        "the chain is tried best first:\n{table}"
    );

    // The sensor makes the same choice and really uses the fallback.
    let sensor = start_sensor(&["--output", "stdout"]);
    let log = sensor.stderr_text();
    assert!(
        log.lines().any(|l| l.contains("hook refused, fell back")
            && l.contains("fentry/security_file_open")
            && l.contains("EPERM")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("attached")
            && l.contains("file open")
            && l.contains("tracepoint/syscalls")),
        "{log}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("probe-open");
    let path_text = path.to_str().expect("utf-8").to_owned();
    std::fs::write(&path, b"x").expect("write");
    let open = poll_until(Duration::from_secs(5), || {
        json_lines(&sensor.stdout_lines()).into_iter().find(|e| {
            e["event"]["action"] == "open"
                && e["file"]["path"] == path_text.as_str()
                && e["process"]["pid"] == std::process::id()
        })
    })
    .unwrap_or_else(|| panic!("the fallback captured no open of {path_text}"));
    assert_eq!(open["details"]["syscall"], "openat", "{open}");
}
