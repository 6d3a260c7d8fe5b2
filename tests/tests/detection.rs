//! Detection in the live sensor: deduplication windows and Sigma correlation rules, driven by
//! real processes on the real kernel, read back from the sensor's JSON output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use vigil_tests::{json_lines, marker, poll_until, require_root, start_sensor, Proc};

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
