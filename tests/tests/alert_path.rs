//! The whole path, for real: an exec in the kernel → sensor → Sigma rule → QUIC/mTLS →
//! collector (SQLite) → `vigil alerts` and `vigil tail`. Plus the trust boundary: a sensor
//! whose certificate comes from another CA is refused, and the collector says so.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{
    bin, certs, json_lines, marker, poll_until, require_root, start_collector, start_sensor, Proc,
};

fn vigil(args: &[&str]) -> std::process::Output {
    Command::new(bin("vigil"))
        .args(args)
        .output()
        .expect("run vigil")
}

struct Deployment {
    dir: tempfile::TempDir,
    collector: Proc,
    address: String,
}

impl Deployment {
    fn start() -> Deployment {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs_dir = dir.path().join("certs");
        certs(&certs_dir, &["init"]);
        for (role, name) in [
            ("--collector", "collector"),
            ("--sensor", "e2e-sensor"),
            ("--operator", "e2e-operator"),
        ] {
            certs(&certs_dir, &["issue", role, name]);
        }
        let pem = |n: &str| certs_dir.join(n).display().to_string();
        let mut cmd = Command::new(bin("vigil-collector"));
        cmd.args(["--listen", "127.0.0.1:0", "--database"])
            .arg(dir.path().join("collector.db"))
            .args(["--tls-ca", &pem("ca.pem")])
            .args(["--tls-cert", &pem("collector.pem")])
            .args(["--tls-key", &pem("collector-key.pem")]);
        let (collector, address) = start_collector(cmd);
        Deployment {
            dir,
            collector,
            address,
        }
    }

    fn spool_dir(&self) -> String {
        self.dir.path().join("spool").display().to_string()
    }

    fn pem(&self, name: &str) -> String {
        self.dir
            .path()
            .join("certs")
            .join(name)
            .display()
            .to_string()
    }

    fn operator_args<'a>(&'a self, owned: &'a mut Vec<String>) -> Vec<&'a str> {
        *owned = vec![
            "--collector".into(),
            self.address.clone(),
            "--ca".into(),
            self.pem("ca.pem"),
            "--cert".into(),
            self.pem("e2e-operator.pem"),
            "--key".into(),
            self.pem("e2e-operator-key.pem"),
        ];
        owned.iter().map(String::as_str).collect()
    }
}

const RULE: &str = r#"
title: Vigil e2e - marked shell copy
id: 5f1d9c2e-7a41-4c55-9a4e-2f7d0c1b3e99
description: A copy of sh run with the test's marker
author: Vigil tests
level: high
tags:
  - attack.execution
  - attack.t1059.004
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    Image|endswith: /vigil-test-sh
    CommandLine|contains: MARKER
  condition: selection
"#;

#[test]
fn an_exec_matching_a_rule_reaches_alerts_and_tail_within_two_seconds() {
    require_root();
    let mut deployment = Deployment::start();
    let marker = marker("alert");
    let rules = deployment.dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    std::fs::write(rules.join("e2e.yml"), RULE.replace("MARKER", &marker)).expect("write rule");
    let sh = deployment.dir.path().join("vigil-test-sh");
    std::fs::copy("/bin/sh", &sh).expect("copy sh");
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // tail first, and wait until the collector has its subscription.
    let mut owned = Vec::new();
    let mut tail_args = deployment.operator_args(&mut owned);
    tail_args.extend(["tail", "-o", "json"]);
    let mut tail_cmd = Command::new(bin("vigil"));
    tail_cmd.args(&tail_args);
    let tail = Proc::spawn("vigil tail", tail_cmd);
    deployment.collector.wait_stderr(
        "e2e-operator (operator) subscribed",
        Duration::from_secs(20),
    );

    let sensor = start_sensor(&[
        "--rules",
        rules.to_str().expect("utf-8"),
        "--collector",
        &deployment.address,
        "--ca",
        &deployment.pem("ca.pem"),
        "--cert",
        &deployment.pem("e2e-sensor.pem"),
        "--key",
        &deployment.pem("e2e-sensor-key.pem"),
        // Its own spool, so no batch from another run (or test) rides along.
        "--spool-dir",
        &deployment.spool_dir(),
    ]);
    let mut child = Command::new(&sh)
        .args(["-c", "exit 0", &marker])
        .spawn()
        .expect("run sh copy");
    let pid = child.id();
    let exec_done = Instant::now();
    assert!(child.wait().expect("wait").success());

    let mut owned = Vec::new();
    let mut query = deployment.operator_args(&mut owned);
    query.extend(["alerts", "--since", "5m", "-o", "json"]);
    let alert = poll_until(Duration::from_secs(2), || {
        let out = vigil(&query);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        json_lines(&lines)
            .into_iter()
            .find(|a| a["process"]["pid"] == pid)
    });
    let latency = exec_done.elapsed();
    let alert: Value = alert.unwrap_or_else(|| {
        panic!(
            "no alert for pid {pid} from `vigil alerts` within 2 s.\nsensor:\n{}\ncollector:\n{}",
            sensor.stderr_text(),
            deployment.collector.stderr_text()
        )
    });
    eprintln!("exec → stored alert visible to `vigil alerts`: {latency:?}");

    assert_eq!(alert["rule"]["title"], "Vigil e2e - marked shell copy");
    assert_eq!(alert["rule"]["level"], "high");
    assert_eq!(
        alert["rule"]["tags"],
        serde_json::json!(["attack.execution", "attack.t1059.004"])
    );
    assert_eq!(alert["sensor"], "e2e-sensor");
    assert_eq!(alert["process"]["executable"], sh.to_str().expect("utf-8"));
    assert_eq!(
        alert["process"]["args"],
        serde_json::json!([sh.to_str().expect("utf-8"), "-c", "exit 0", marker])
    );
    assert_eq!(alert["process"]["parent"]["pid"], std::process::id());
    assert_eq!(
        alert["process"]["parent"]["executable"],
        std::env::current_exe()
            .expect("exe")
            .to_str()
            .expect("utf-8")
    );
    assert_eq!(alert["user"]["id"], 0);
    assert_eq!(alert["event"]["kind"], "alert");

    // The same alert, live, from the tail started before the exec.
    let tailed = poll_until(Duration::from_secs(5), || {
        json_lines(&tail.stdout_lines())
            .into_iter()
            .find(|a| a["process"]["pid"] == pid)
    })
    .unwrap_or_else(|| {
        panic!(
            "vigil tail did not print the alert; stderr:\n{}",
            tail.stderr_text()
        )
    });
    assert_eq!(tailed["alert_id"], alert["alert_id"]);
    assert_eq!(tailed["rule"]["title"], alert["rule"]["title"]);
    assert_eq!(tailed["process"], alert["process"]);
}

#[test]
fn a_sensor_with_a_certificate_from_another_ca_is_refused_and_logged() {
    require_root();
    let mut deployment = Deployment::start();
    let rogue = deployment.dir.path().join("rogue");
    certs(&rogue, &["init"]);
    certs(&rogue, &["issue", "--sensor", "rogue-sensor"]);
    let pem = |n: &str| rogue.join(n).display().to_string();
    let _sensor = start_sensor(&[
        "--collector",
        &deployment.address,
        "--ca",
        &deployment.pem("ca.pem"),
        "--cert",
        &pem("rogue-sensor.pem"),
        "--key",
        &pem("rogue-sensor-key.pem"),
        "--spool-dir",
        &deployment.spool_dir(),
    ]);
    // Give the sensor something to send so it dials the collector.
    Command::new("/bin/true").status().expect("run true");
    deployment
        .collector
        .wait_stderr("refused connection from 127.0.0.1", Duration::from_secs(10));
    let log = deployment.collector.stderr_text();
    assert!(
        log.contains("UnknownIssuer"),
        "refusal does not say why:\n{log}"
    );
    assert!(
        !log.contains("connection from rogue-sensor"),
        "rogue sensor was accepted:\n{log}"
    );
}

#[test]
fn rules_check_points_at_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml_error = dir.path().join("broken.yml");
    std::fs::write(
        &yaml_error,
        "title: broken\nlogsource:\n  category: process_creation\ndetection:\n  selection:\n    Image: [unclosed\n  condition: selection\n",
    )
    .expect("write");
    let bad_modifier = dir.path().join("modifier.yml");
    std::fs::write(
        &bad_modifier,
        "title: bad modifier\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  selection:\n    Image|sortof: /tmp/x\n  condition: selection\n",
    )
    .expect("write");
    for (file, reason) in [(&yaml_error, "YAML"), (&bad_modifier, "sortof")] {
        let out = vigil(&["rules", "check", file.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} passed the check", file.display());
        let prefix = format!("{}:", file.display());
        let position = stderr
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in: {stderr}"));
        let mut parts = position.splitn(3, ':');
        let line: usize = parts
            .next()
            .and_then(|n| n.parse().ok())
            .expect("line number");
        let column: usize = parts
            .next()
            .and_then(|n| n.parse().ok())
            .expect("column number");
        assert!(line > 0 && column > 0, "{stderr}");
        assert!(
            stderr.contains(reason),
            "reason {reason:?} missing: {stderr}"
        );
        if reason == "sortof" {
            // The modifier itself: line 7, after `    Image|`.
            assert_eq!((line, column), (7, 11), "{stderr}");
        }
    }
    let out = vigil(&[
        "rules",
        "check",
        "--",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"),
    ]);
    assert!(
        out.status.success(),
        "the shipped rule pack fails its check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
