//! Sigma correlation rules over simulated time: temporal (ordered and not), event_count and
//! value_count with group-by and timespan, bounded memory, load errors.

use vigil_detect::{sample_event, CorrelationEngine, CorrelationKind, RuleSet};
use vigil_proto::{Event, EventAction, Timestamp};

const BASE: &str = r#"title: Web server spawns a shell
id: web-shell
name: web_shell
logsource: {category: process_creation}
detection: {s: {ParentImage|endswith: /nginx, Image|endswith: /sh}, condition: s}
---
title: Shell connects out
id: shell-out
logsource: {category: network_connection}
detection: {s: {Image|endswith: /sh, Initiated: 'true'}, condition: s}
---
title: Web shell then outbound connection
id: web-shell-c2
correlation:
    type: temporal_ordered
    rules: [web_shell, shell-out]
    group-by: [ProcessId]
    timespan: 30s
level: critical
---
title: Same, any order
id: web-shell-c2-any
correlation:
    type: temporal
    rules: [web-shell, shell-out]
    group-by: [ProcessId]
    timespan: 30s
"#;

fn at(s: u64) -> Timestamp {
    Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + s * 1_000_000_000)
}

fn spawn(pid: &str) -> Event {
    sample_event(
        EventAction::Exec,
        &[
            ("ParentImage", "/usr/sbin/nginx"),
            ("Image", "/bin/sh"),
            ("ProcessId", pid),
        ],
    )
    .expect("event")
}

fn connect(pid: &str) -> Event {
    sample_event(
        EventAction::Connect,
        &[
            ("Image", "/bin/sh"),
            ("ProcessId", pid),
            ("DestinationIp", "203.0.113.1"),
        ],
    )
    .expect("event")
}

/// Feeds events in order; returns the ids of correlations that fired, per event.
fn run(set: &RuleSet, events: &[(u64, Event)]) -> Vec<Vec<String>> {
    let mut engine = CorrelationEngine::new(64, 64);
    events
        .iter()
        .map(|(t, event)| {
            let matched = set.matches(event);
            engine
                .observe(set.correlations(), &matched, event, at(*t))
                .into_iter()
                .map(|h| h.correlation_id)
                .collect()
        })
        .collect()
}

#[test]
fn temporal_ordered_needs_order_group_and_timespan() {
    let set = RuleSet::parse(BASE, "<inline>").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.correlations().len(), 2, "two correlations compiled");
    assert_eq!(
        set.correlations()[0].kind(),
        CorrelationKind::TemporalOrdered
    );
    assert_eq!(
        set.correlations()[0].rule_ids(),
        ["web-shell", "shell-out"],
        "name resolved to id"
    );

    let fired = run(&set, &[(0, spawn("42")), (10, connect("42"))]);
    assert_eq!(
        fired[1],
        vec!["web-shell-c2", "web-shell-c2-any"],
        "spawn then connect within 30 s"
    );

    let fired = run(&set, &[(0, connect("42")), (10, spawn("42"))]);
    assert_eq!(
        fired[1],
        vec!["web-shell-c2-any"],
        "wrong order: only the unordered one"
    );

    let fired = run(&set, &[(0, spawn("42")), (31, connect("42"))]);
    assert!(fired[1].is_empty(), "outside the timespan: {fired:?}");

    let fired = run(&set, &[(0, spawn("42")), (5, connect("43"))]);
    assert!(fired[1].is_empty(), "different process: {fired:?}");

    // A group that fired starts over: a second connect alone does not fire again.
    let fired = run(
        &set,
        &[(0, spawn("42")), (1, connect("42")), (2, connect("42"))],
    );
    assert!(fired[2].is_empty(), "fires once per sequence: {fired:?}");
}

#[test]
fn event_count_and_value_count_with_thresholds() {
    let text = r#"title: Outbound connection
id: out
logsource: {category: network_connection}
detection: {s: {Initiated: 'true'}, condition: s}
---
title: Burst of connections by one user
id: burst
correlation: {type: event_count, rules: [out], group-by: [User], timespan: 60s, condition: {gte: 3}}
---
title: Port scan
id: scan
correlation: {type: value_count, rules: [out], group-by: [User], timespan: 60s, condition: {gt: 2, field: DestinationPort}}
"#;
    let set = RuleSet::parse(text, "<inline>").unwrap_or_else(|e| panic!("{e}"));
    let conn = |user: &str, port: &str| {
        sample_event(
            EventAction::Connect,
            &[("User", user), ("DestinationPort", port)],
        )
        .expect("event")
    };
    let fired = run(
        &set,
        &[
            (0, conn("a", "80")),
            (1, conn("a", "80")),
            (2, conn("b", "80")),
            (3, conn("a", "80")),
        ],
    );
    assert_eq!(
        fired[3],
        vec!["burst"],
        "third match of user a; one port only: {fired:?}"
    );
    assert!(fired[2].is_empty(), "user b is its own group");

    let fired = run(
        &set,
        &[
            (0, conn("a", "1")),
            (1, conn("a", "2")),
            (2, conn("a", "2")),
            (3, conn("a", "3")),
        ],
    );
    assert!(
        fired[2].iter().any(|f| f == "burst") && !fired[2].iter().any(|f| f == "scan"),
        "{fired:?}"
    );
    assert_eq!(
        fired[3],
        vec!["scan"],
        "three distinct ports (gt 2): {fired:?}"
    );

    let fired = run(
        &set,
        &[
            (0, conn("a", "80")),
            (61, conn("a", "80")),
            (62, conn("a", "80")),
        ],
    );
    assert!(
        fired.iter().all(Vec::is_empty),
        "the first left the window: {fired:?}"
    );
}

#[test]
fn memory_is_bounded_and_drops_are_counted() {
    let set = RuleSet::parse(BASE, "<inline>").unwrap_or_else(|e| panic!("{e}"));
    let mut engine = CorrelationEngine::new(2, 4);
    for pid in 0..10 {
        let event = spawn(&pid.to_string());
        let matched = set.matches(&event);
        let _ = engine.observe(set.correlations(), &matched, &event, at(0));
    }
    assert_eq!(
        engine.dropped(),
        16,
        "8 groups over the bound of 2, for each of 2 correlations"
    );
    // Old groups leave the window and make room again.
    let event = spawn("99");
    let matched = set.matches(&event);
    let _ = engine.observe(set.correlations(), &matched, &event, at(100));
    assert_eq!(
        engine.dropped(),
        16,
        "expired groups were evicted for the new one"
    );
}

#[test]
fn bad_correlations_are_positioned_errors() {
    let unknown = "title: c\ncorrelation:\n  type: temporal\n  rules: [nope]\n  timespan: 5m\n";
    let err = RuleSet::parse(unknown, "c.yml").expect_err("unknown rule");
    assert_eq!(
        err.to_string(),
        "c.yml:4:11: correlation refers to unknown rule `nope`"
    );
    let lt = "title: c\ncorrelation: {type: event_count, rules: [x], timespan: 5m, condition: {lt: 3}}\n";
    let err = RuleSet::parse(lt, "c.yml").expect_err("lt unsupported");
    assert!(err.is_unsupported_feature(), "{err}");
    let no_span = "title: c\ncorrelation: {type: temporal, rules: [x]}\n";
    assert!(
        RuleSet::parse(no_span, "c.yml").is_err(),
        "timespan is required"
    );
}
