//! Operating the daemons from their real config files: SIGHUP rule reload on a running sensor
//! whose new rule then fires all the way to the collector; Prometheus endpoints on both that
//! `promtool check metrics` accepts; broken configs that stop start-up naming file, line, key.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_tests::{
    bin, certs, free_port, json_lines, marker, poll_until, require_root, scrape, start_collector,
    start_sensor, Proc,
};

fn rule(title: &str, id: &str, marker: &str) -> String {
    format!(
        r#"title: {title}
id: {id}
level: high
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    Image|endswith: /vigil-ops-sh
    CommandLine|contains: {marker}
  condition: selection
"#
    )
}

fn promtool_check(what: &str, exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool result");
    assert!(
        out.status.success(),
        "promtool check metrics rejected the {what} metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sighup_reloads_rules_the_new_rule_fires_to_the_collector_and_metrics_pass_promtool() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let certs_dir = d.join("certs");
    certs(&certs_dir, &["init"]);
    for (role, name) in [
        ("--collector", "collector"),
        ("--sensor", "ops-sensor"),
        ("--operator", "ops-operator"),
    ] {
        certs(&certs_dir, &["issue", role, name]);
    }
    let pem = |n: &str| certs_dir.join(n).display().to_string();
    let collector_metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let sensor_metrics: SocketAddr = ([127, 0, 0, 1], free_port()).into();

    let collector_yaml = d.join("collector.yaml");
    std::fs::write(
        &collector_yaml,
        format!(
            "listen: 127.0.0.1:0\ndatabase: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\nmetrics:\n  listen: {collector_metrics}\n",
            d.join("collector.db").display(),
            pem("ca.pem"),
            pem("collector.pem"),
            pem("collector-key.pem"),
        ),
    )
    .expect("write collector.yaml");
    let mut cmd = Command::new(bin("vigil-collector"));
    cmd.arg("--config").arg(&collector_yaml);
    let (collector, address) = start_collector(cmd);

    let old_marker = marker("ops-old");
    let new_marker = marker("ops-new");
    let rules = d.join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    let rule_file = rules.join("ops.yml");
    std::fs::write(
        &rule_file,
        rule(
            "Vigil ops - before reload",
            "0c5c1f4e-2b7a-4d1e-9a53-6f2f0a7d1a01",
            &old_marker,
        ),
    )
    .expect("write rule");
    // The sensor's collector settings come from a drop-in, proving drop-ins reach a running sensor.
    let sensor_yaml = d.join("sensor.yaml");
    std::fs::write(
        &sensor_yaml,
        format!(
            "rules: [{}]\nmetrics:\n  listen: {sensor_metrics}\n",
            rules.display()
        ),
    )
    .expect("write sensor.yaml");
    std::fs::create_dir_all(d.join("sensor.conf.d")).expect("drop-in dir");
    std::fs::write(
        d.join("sensor.conf.d/10-collector.yaml"),
        format!(
            "collector:\n  address: {address}\n  ca: {}\n  cert: {}\n  key: {}\n",
            pem("ca.pem"),
            pem("ops-sensor.pem"),
            pem("ops-sensor-key.pem"),
        ),
    )
    .expect("write drop-in");
    let mut sensor = start_sensor(&["--config", sensor_yaml.to_str().expect("utf-8")]);
    let sighup = |sensor: &Proc| {
        kill(Pid::from_raw(sensor.pid() as i32), Signal::SIGHUP).expect("SIGHUP the sensor")
    };

    // A rule file that does not compile: the reload fails, naming the file, and the sensor runs on.
    let broken = rules.join("broken.yml");
    std::fs::write(&broken, "title: broken\ndetection:\n  selection: [\n")
        .expect("write broken rule");
    sighup(&sensor);
    sensor.wait_stderr("rule reload failed", Duration::from_secs(10));
    let log = sensor.stderr_text();
    assert!(
        log.contains(&format!("{}:", broken.display())),
        "the failed reload does not name {}:\n{log}",
        broken.display()
    );
    std::fs::remove_file(&broken).expect("remove broken rule");

    // The changed rule, reloaded.
    std::fs::write(
        &rule_file,
        rule(
            "Vigil ops - after reload",
            "0c5c1f4e-2b7a-4d1e-9a53-6f2f0a7d1a02",
            &new_marker,
        ),
    )
    .expect("rewrite rule");
    sighup(&sensor);
    sensor.wait_stderr("rules reloaded", Duration::from_secs(10));

    let sh = d.join("vigil-ops-sh");
    std::fs::copy("/bin/sh", &sh).expect("copy sh");
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = Command::new(&sh)
        .args(["-c", "exit 0", &new_marker])
        .spawn()
        .expect("run sh copy");
    let pid = child.id();
    assert!(child.wait().expect("wait").success());

    let operator = [
        "--collector".to_owned(),
        address.clone(),
        "--ca".to_owned(),
        pem("ca.pem"),
        "--cert".to_owned(),
        pem("ops-operator.pem"),
        "--key".to_owned(),
        pem("ops-operator-key.pem"),
    ];
    let alert = poll_until(Duration::from_secs(10), || {
        let out = Command::new(bin("vigil"))
            .args(&operator)
            .args(["alerts", "--since", "5m", "-o", "json"])
            .output()
            .expect("vigil alerts");
        let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        json_lines(&lines)
            .into_iter()
            .find(|a| a["process"]["pid"] == pid)
    })
    .unwrap_or_else(|| {
        panic!(
            "the reloaded rule's alert for pid {pid} did not reach the collector.\nsensor:\n{}\ncollector:\n{}",
            sensor.stderr_text(),
            collector.stderr_text()
        )
    });
    assert_eq!(alert["rule"]["title"], "Vigil ops - after reload");

    // Counters are fed once a second: wait until the acks of the alert's batch show.
    let sensor_text = poll_until(Duration::from_secs(5), || {
        let text = scrape(sensor_metrics);
        (!text.contains("vigil_sensor_batches_acked_total 0\n")).then_some(text)
    })
    .expect("the sensor's batches are acked");
    promtool_check("sensor", &sensor_text);
    for needle in [
        "vigil_sensor_rule_hits_total{rule=\"0c5c1f4e-2b7a-4d1e-9a53-6f2f0a7d1a02\"} 1",
        "vigil_sensor_events_total{kind=\"exec\"}",
        "vigil_sensor_drops_total{reason=\"ringbuf_full\",stage=\"kernel\"}",
        // Started by the test, in the host's PID namespace.
        "vigil_sensor_host_pid_namespace 1\n",
    ] {
        assert!(
            sensor_text.contains(needle),
            "sensor metrics lack {needle:?}:\n{sensor_text}"
        );
    }
    // Each edit of the rule directory reloads too (the sensor watches it), so SIGHUP adds to
    // those: at least one reload of each outcome.
    for result in ["failed", "ok"] {
        let prefix = format!("vigil_sensor_rule_reloads_total{{result=\"{result}\"}} ");
        let count = sensor_text
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {prefix}in:\n{sensor_text}"));
        assert!(count >= 1.0, "{prefix}{count}");
    }
    let collector_text = scrape(collector_metrics);
    promtool_check("collector", &collector_text);
    for needle in [
        "vigil_collector_ingested_total{type=\"alert\"}",
        "vigil_collector_store_seconds_bucket",
        "vigil_collector_connected_sensors 1",
    ] {
        assert!(
            collector_text.contains(needle),
            "collector metrics lack {needle:?}:\n{collector_text}"
        );
    }
    println!("sensor metrics:\n{sensor_text}\ncollector metrics:\n{collector_text}");
}

#[test]
fn a_broken_config_stops_start_naming_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("sensor.yaml"), "output: none\n").expect("write sensor.yaml");
    std::fs::create_dir_all(d.join("sensor.conf.d")).expect("drop-in dir");
    let bad = d.join("sensor.conf.d/50-bad.yaml");
    std::fs::write(&bad, "# typo below\ncollector:\n  adress: 127.0.0.1:7443\n")
        .expect("write drop-in");
    let out = Command::new(bin("vigil-sensor"))
        .arg("--config")
        .arg(d.join("sensor.yaml"))
        .output()
        .expect("run vigil-sensor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a broken drop-in was accepted: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:3:", bad.display())) && stderr.contains("adress"),
        "the error does not name {}:3 and `adress`: {stderr}",
        bad.display()
    );

    let collector_yaml = d.join("collector.yaml");
    std::fs::write(
        &collector_yaml,
        "listen: 127.0.0.1:0\ntls:\n  cetr: x.pem\n",
    )
    .expect("write");
    let out = Command::new(bin("vigil-collector"))
        .arg("--config")
        .arg(&collector_yaml)
        .output()
        .expect("run vigil-collector");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a broken config was accepted: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{}:3:", collector_yaml.display())) && stderr.contains("cetr"),
        "the error does not name {}:3 and `cetr`: {stderr}",
        collector_yaml.display()
    );
}

/// The verdict `vigil-sensor doctor` printed for check `name`, with its detail.
fn doctor_line<'a>(stdout: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    stdout.lines().find_map(|line| {
        let (verdict, rest) = line.split_once("  ")?;
        let detail = rest.trim_start().strip_prefix(name)?.strip_prefix(": ")?;
        Some((verdict.trim(), detail))
    })
}

#[test]
fn doctor_gives_a_verdict_per_check_and_fails_on_a_collector_it_cannot_trust() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (ours, theirs) = (d.join("certs"), d.join("other-ca"));
    certs(&ours, &["init"]);
    certs(&ours, &["issue", "--collector", "collector"]);
    certs(&ours, &["issue", "--sensor", "doctor-sensor"]);
    certs(&theirs, &["init"]);
    certs(&theirs, &["issue", "--sensor", "doctor-sensor"]);
    let pem = |dir: &std::path::Path, n: &str| dir.join(n).display().to_string();

    let collector_yaml = d.join("collector.yaml");
    std::fs::write(
        &collector_yaml,
        format!(
            "listen: 127.0.0.1:0\ndatabase: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n",
            d.join("collector.db").display(),
            pem(&ours, "ca.pem"),
            pem(&ours, "collector.pem"),
            pem(&ours, "collector-key.pem"),
        ),
    )
    .expect("write collector.yaml");
    let mut cmd = Command::new(bin("vigil-collector"));
    cmd.arg("--config").arg(&collector_yaml);
    let (collector, address) = start_collector(cmd);

    let doctor = |certs_dir: &std::path::Path, tag: &str| {
        let yaml = d.join(format!("sensor-{tag}.yaml"));
        std::fs::write(
            &yaml,
            format!(
                "rules: [{}]\ncollector:\n  address: {address}\n  ca: {}\n  cert: {}\n  key: {}\n",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../rules"),
                pem(certs_dir, "ca.pem"),
                pem(certs_dir, "doctor-sensor.pem"),
                pem(certs_dir, "doctor-sensor-key.pem"),
            ),
        )
        .expect("write sensor.yaml");
        let out = Command::new(bin("vigil-sensor"))
            .arg("--config")
            .arg(&yaml)
            .arg("doctor")
            .env("NO_COLOR", "1")
            .output()
            .expect("run vigil-sensor doctor");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!(
            "doctor ({tag}):\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), stdout)
    };

    // Trusted collector: every line has a verdict, the host facts are right, and it passes.
    let (passed, stdout) = doctor(&ours, "trusted");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    for (name, verdict, detail) in [
        ("kernel", "OK", format!("Linux {}", release.trim())),
        (
            "collector",
            "OK",
            format!("{address} (localhost): mTLS handshake ok"),
        ),
    ] {
        assert_eq!(
            doctor_line(&stdout, name),
            Some((verdict, detail.as_str())),
            "doctor's {name} line:\n{stdout}"
        );
    }
    for name in [
        "btf",
        "lockdown",
        "cgroup2",
        "clock",
        "rules",
        "certificate sensor",
    ] {
        let (verdict, _) = doctor_line(&stdout, name)
            .unwrap_or_else(|| panic!("doctor printed no {name} line:\n{stdout}"));
        assert!(
            ["OK", "WARN"].contains(&verdict),
            "{name}: {verdict}\n{stdout}"
        );
    }
    assert_eq!(
        doctor_line(&stdout, "btf").map(|l| l.0),
        Some("OK"),
        "{stdout}"
    );
    // The test runs in the host's PID namespace (tests/tests/pid_namespace.rs covers outside).
    assert_eq!(
        doctor_line(&stdout, "pid namespace").map(|l| l.0),
        Some("OK"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("OK") && l.contains("hook exec")),
        "no exec hook loads according to doctor:\n{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        passed,
        "doctor failed against a trusted collector:\n{stdout}"
    );

    // A sensor whose certificates come from another CA: the handshake check fails, and so does doctor.
    let (passed, stdout) = doctor(&theirs, "foreign");
    let (verdict, detail) = doctor_line(&stdout, "collector")
        .unwrap_or_else(|| panic!("doctor printed no collector line:\n{stdout}"));
    assert_eq!(verdict, "FAIL", "{stdout}");
    assert!(detail.starts_with(&address), "{detail}");
    assert!(
        !passed,
        "doctor passed against a collector it cannot trust:\n{stdout}"
    );
    drop(collector);
}
