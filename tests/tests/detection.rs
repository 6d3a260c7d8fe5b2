//! Detection in the live sensor: deduplication windows and Sigma correlation rules, driven by
//! real processes on the real kernel, read back from the sensor's JSON output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vigil_tests::{bin, json_lines, marker, poll_until, require_root, start_sensor, Proc};

fn alerts_of(sensor: &Proc, rule_id: &str) -> Vec<Value> {
    json_lines(&sensor.stdout_lines())
        .into_iter()
        .filter(|v| v["rule"]["id"] == rule_id)
        .collect()
}

fn run_true(args: &[&str]) {
    let status = Command::new("/bin/true")
        .args(args)
        .status()
        .expect("run /bin/true");
    assert!(status.success());
}

fn sensor_with_rules(dir: &Path, rules: &str) -> Proc {
    let rules_dir = dir.join("rules");
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    std::fs::write(rules_dir.join("test.yml"), rules).expect("write rules");
    start_sensor(&[
        "--output",
        "stdout",
        "--rules",
        rules_dir.to_str().expect("utf-8"),
    ])
}

const DEDUP: &str = r#"
title: Marked true, deduplicated
id: e2e-dedup
level: low
logsource: {product: linux, category: process_creation}
detection:
  s: {CommandLine|contains: MARKER}
  condition: s
vigil:
  dedup: {window: 3s, key: [Image]}
"#;

#[test]
fn a_deduplicated_rule_raises_once_then_says_how_many_it_suppressed() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = marker("dedup");
    let sensor = sensor_with_rules(dir.path(), &DEDUP.replace("MARKER", &marker));
    for i in 0..5 {
        run_true(&[&marker, &i.to_string()]);
    }
    // The window is 3 s from the first match; the summary follows within a tick of its close.
    let alerts = poll_until(Duration::from_secs(10), || {
        let alerts = alerts_of(&sensor, "e2e-dedup");
        (alerts.len() >= 2).then_some(alerts)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected an alert and a summary; got {:?}\nstderr:\n{}",
            alerts_of(&sensor, "e2e-dedup"),
            sensor.stderr_text()
        )
    });
    assert_eq!(alerts.len(), 2, "one alert, one summary: {alerts:#?}");
    let (first, summary) = (&alerts[0]["dedup"], &alerts[1]["dedup"]);
    assert_eq!(first["count"], 1);
    assert_eq!(first["summary"], false);
    assert_eq!(first["key"], alerts[0]["process"]["executable"]);
    assert_eq!(
        alerts[0]["process"]["args"][2], "0",
        "the first match is raised"
    );
    assert_eq!(summary["summary"], true);
    assert_eq!(
        (summary["count"].as_u64(), summary["suppressed"].as_u64()),
        (Some(5), Some(4))
    );
    assert!(summary["first_seen"].as_str() < summary["last_seen"].as_str());
    assert_eq!(first["first_seen"], summary["first_seen"]);
    assert_eq!(
        alerts[1]["process"]["args"][2], "4",
        "the summary carries the last suppressed match"
    );
}

const CORRELATIONS: &str = r#"
title: count base
id: e2e-count-base
logsource: {product: linux, category: process_creation}
detection: {s: {CommandLine|contains: MARKER-count}, condition: s}
---
title: Three marked execs by one parent
id: e2e-event-count
correlation:
  type: event_count
  rules: [e2e-count-base]
  group-by: [ParentProcessId]
  timespan: 30s
  condition: {gte: 3}
level: high
---
title: values base
id: e2e-values-base
logsource: {product: linux, category: process_creation}
detection: {s: {CommandLine|contains: MARKER-values}, condition: s}
---
title: Three distinct command lines by one parent
id: e2e-value-count
correlation:
  type: value_count
  rules: [e2e-values-base]
  group-by: [ParentProcessId]
  timespan: 30s
  condition: {gte: 3, field: CommandLine}
level: high
---
title: any-order a
id: e2e-any-a
logsource: {product: linux, category: process_creation}
detection: {s: {CommandLine|contains: MARKER-any-a}, condition: s}
---
title: any-order b
id: e2e-any-b
logsource: {product: linux, category: process_creation}
detection: {s: {CommandLine|contains: MARKER-any-b}, condition: s}
---
title: Both, any order
id: e2e-temporal
correlation:
  type: temporal
  rules: [e2e-any-a, e2e-any-b]
  group-by: [User]
  timespan: 30s
level: high
---
title: ordered first
id: e2e-first
name: ordered_first
logsource: {product: linux, category: process_creation}
detection: {s: {CommandLine|contains: MARKER-first}, condition: s}
---
title: ordered then
id: e2e-then
logsource: {product: linux, category: process_creation}
detection: {s: {CommandLine|contains: MARKER-then}, condition: s}
---
title: First, then then
id: e2e-temporal-ordered
correlation:
  type: temporal_ordered
  rules: [ordered_first, e2e-then]
  group-by: [User]
  timespan: 30s
level: critical
"#;

#[test]
fn correlation_rules_fire_in_the_live_sensor() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let m = marker("corr");
    let sensor = sensor_with_rules(dir.path(), &CORRELATIONS.replace("MARKER", &m));
    let arg = |suffix: &str| format!("{m}-{suffix}");

    // event_count: the same command line three times.
    for _ in 0..3 {
        run_true(&[&arg("count")]);
    }
    // value_count: twice the same, then two more distinct: fires on the third distinct value.
    for v in ["1", "1", "2", "3"] {
        run_true(&[&arg("values"), v]);
    }
    // temporal: b then a (any order).
    run_true(&[&arg("any-b")]);
    run_true(&[&arg("any-a")]);
    // temporal_ordered: `then` before `first` does not count; `first` then `then` does.
    run_true(&[&arg("then"), "early"]);
    run_true(&[&arg("first")]);
    run_true(&[&arg("then"), "late"]);

    let wanted = [
        "e2e-event-count",
        "e2e-value-count",
        "e2e-temporal",
        "e2e-temporal-ordered",
    ];
    let found = poll_until(Duration::from_secs(10), || {
        wanted
            .iter()
            .all(|id| !alerts_of(&sensor, id).is_empty())
            .then_some(())
    });
    assert!(
        found.is_some(),
        "missing correlation alerts; got {:?}\nstderr:\n{}",
        wanted.map(|id| alerts_of(&sensor, id).len()),
        sensor.stderr_text()
    );
    // Let late duplicates arrive before counting them.
    std::thread::sleep(Duration::from_millis(500));
    let one = |id: &str| {
        let alerts = alerts_of(&sensor, id);
        assert_eq!(
            alerts.len(),
            1,
            "{id} fired {} times: {alerts:#?}",
            alerts.len()
        );
        alerts.into_iter().next().expect("one alert")
    };
    let count = one("e2e-event-count");
    assert_eq!(count["correlation"]["kind"], "event_count");
    assert_eq!(count["correlation"]["count"], 3);
    assert_eq!(
        count["correlation"]["group"],
        std::process::id().to_string(),
        "grouped by the parent: this test"
    );
    assert_eq!(count["rule"]["level"], "high");

    let values = one("e2e-value-count");
    assert_eq!(values["correlation"]["count"], 3);
    assert_eq!(
        values["process"]["args"][2], "3",
        "fired on the third distinct value"
    );

    let temporal = one("e2e-temporal");
    assert_eq!(temporal["correlation"]["kind"], "temporal");
    assert_eq!(
        temporal["correlation"]["rules"],
        serde_json::json!(["e2e-any-a", "e2e-any-b"])
    );

    let ordered = one("e2e-temporal-ordered");
    assert_eq!(ordered["correlation"]["kind"], "temporal_ordered");
    assert_eq!(
        ordered["process"]["args"][2], "late",
        "only `then` after `first` completes the sequence"
    );
}

const KILL_AT_EXEC: &str = r#"
title: Kill the marked copy of sh at exec
id: e2e-kill-exec
level: critical
logsource: {product: linux, category: process_creation}
detection:
  s: {Image|cased: PATH}
  condition: s
vigil:
  action: kill
"#;

const KILL_LATER: &str = r#"
title: Kill a marked shell from userspace
id: e2e-kill-userspace
level: critical
logsource: {product: linux, category: process_creation}
detection:
  s: {Image|endswith: /vigil-kill-later, CommandLine|contains: MARKER}
  condition: s
vigil:
  action: kill
"#;

/// A copy of /bin/sh at `dir/name`.
fn shell_copy(dir: &Path, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let sh = dir.join(name);
    std::fs::copy("/bin/sh", &sh).expect("copy /bin/sh");
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    sh
}

#[test]
fn a_kill_rule_on_the_executable_path_kills_in_the_kernel_before_the_process_runs() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let sh = shell_copy(dir.path(), "vigil-kill-me");
    let sh_path = sh.to_str().expect("utf-8").to_owned();
    let sensor = sensor_with_rules(dir.path(), &KILL_AT_EXEC.replace("PATH", &sh_path));
    assert!(
        sensor
            .stderr_text()
            .contains("kill at exec enforced in the kernel"),
        "the kill path reached the kernel:\n{}",
        sensor.stderr_text()
    );
    let check = Command::new(bin("vigil"))
        .args(["rules", "check"])
        .arg(dir.path().join("rules"))
        .output()
        .expect("vigil rules check");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("kill e2e-kill-exec: enforced in the kernel at exec"),
        "rules check says how the kill is enforced: {said}"
    );

    let marker_file = dir.path().join("ran");
    let status = Command::new(&sh)
        .arg("-c")
        .arg(format!("echo ran > {}", marker_file.display()))
        .status()
        .expect("spawn the copy of sh");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    let alert = poll_until(Duration::from_secs(5), || {
        alerts_of(&sensor, "e2e-kill-exec").into_iter().next()
    })
    .unwrap_or_else(|| panic!("no kill alert; stderr:\n{}", sensor.stderr_text()));
    assert_eq!(alert["response"]["action"], "killed");
    assert_eq!(alert["response"]["by"], "kernel");
    assert_eq!(alert["process"]["executable"], sh_path.as_str());
    assert!(
        !marker_file.exists(),
        "the process never ran a single instruction of its own, so it wrote nothing"
    );
}

#[test]
fn a_kill_rule_the_kernel_cannot_evaluate_kills_from_userspace_and_says_when() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let m = marker("kill-later");
    let sh = shell_copy(dir.path(), "vigil-kill-later");
    let sensor = sensor_with_rules(dir.path(), &KILL_LATER.replace("MARKER", &m));
    let marker_file = dir.path().join("ran");
    // The shell waits before writing: userspace kills after the match, not before exec.
    let status = Command::new(&sh)
        .arg("-c")
        .arg(format!("sleep 3; echo ran > {}", marker_file.display()))
        .arg(&m)
        .status()
        .expect("spawn the copy of sh");
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    let alert = poll_until(Duration::from_secs(5), || {
        alerts_of(&sensor, "e2e-kill-userspace").into_iter().next()
    })
    .unwrap_or_else(|| panic!("no kill alert; stderr:\n{}", sensor.stderr_text()));
    assert_eq!(alert["response"]["action"], "killed");
    assert_eq!(alert["response"]["by"], "userspace");
    let after = alert["response"]["after_ns"].as_u64().expect("after_ns");
    assert!(
        after > 0 && after < 3_000_000_000,
        "killed {after} ns after the exec"
    );
    assert!(
        !marker_file.exists(),
        "killed before the shell's sleep ended"
    );
}

const MARKED: &str = r#"
title: Marked true ID
id: e2e-reload-ID
level: low
logsource: {product: linux, category: process_creation}
detection: {s: {CommandLine|contains: MARKER}, condition: s}
"#;

#[test]
fn editing_the_rule_directory_reloads_the_rules_and_a_broken_edit_keeps_the_running_set() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let m = marker("reload");
    let rule = |id: &str| {
        MARKED
            .replace("ID", id)
            .replace("MARKER", &format!("{m}-{id}"))
    };
    let mut sensor = sensor_with_rules(dir.path(), &rule("a"));
    let rules_dir = dir.path().join("rules");
    let fires = |sensor: &Proc, id: &str| {
        run_true(&[&format!("{m}-{id}")]);
        poll_until(Duration::from_secs(5), || {
            (!alerts_of(sensor, &format!("e2e-reload-{id}")).is_empty()).then_some(())
        })
        .is_some()
    };
    assert!(fires(&sensor, "a"), "the initial rule works");

    // A new file: picked up without a signal.
    std::fs::write(rules_dir.join("b.yml"), rule("b")).expect("write rule b");
    sensor.wait_stderr(
        "rule files changed: rules reloaded",
        Duration::from_secs(10),
    );
    assert!(fires(&sensor, "b"), "the added rule fires after the reload");

    // A broken file: rejected as a whole, with where and why; the running rules stay.
    std::fs::write(
        rules_dir.join("c.yml"),
        rule("c").replace("CommandLine|contains", "CommandLine|nosuchmodifier"),
    )
    .expect("write rule c");
    sensor.wait_stderr(
        "rule files changed: rule reload failed",
        Duration::from_secs(10),
    );
    let stderr = sensor.stderr_text();
    let complaint = stderr
        .lines()
        .find(|l| l.contains("rule reload failed"))
        .expect("the failure is logged");
    assert!(
        complaint.contains("c.yml:6:29:") && complaint.contains("nosuchmodifier"),
        "the log names file:line:column and the reason: {complaint}"
    );
    assert!(fires(&sensor, "b"), "the running set stayed in force");
}

#[test]
fn an_alert_raised_while_the_kernel_loses_records_says_so() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let m = marker("loss");
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).expect("rules dir");
    std::fs::write(
        rules_dir.join("a.yml"),
        MARKED.replace("ID", "loss").replace("MARKER", &m),
    )
    .expect("write rule");
    // One page of bulk ring: a burst of file opens overflows it at once.
    let config = dir.path().join("sensor.yaml");
    std::fs::write(
        &config,
        format!("rules: [{}]\nbulk_ring_bytes: 4096\n", rules_dir.display()),
    )
    .expect("write config");
    let sensor = start_sensor(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--output",
        "stdout",
    ]);
    let target = dir.path().join("flood");
    std::fs::write(&target, "").expect("write flood target");
    for _ in 0..20_000 {
        let _ = std::fs::File::open(&target);
    }
    run_true(&[&m]);
    let alert = poll_until(Duration::from_secs(5), || {
        alerts_of(&sensor, "e2e-reload-loss").into_iter().next()
    })
    .unwrap_or_else(|| panic!("no alert; stderr:\n{}", sensor.stderr_text()));
    let lost_opens = alert["loss"]["lost"]["open"].as_u64().unwrap_or(0);
    assert!(
        lost_opens > 0,
        "the alert is marked with the open records lost around it: {alert:#}\nstderr:\n{}",
        sensor.stderr_text()
    );
}
