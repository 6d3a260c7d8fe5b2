//! The kernel filter derived from rules: attached actions, pushed-down paths (a necessary
//! condition of each rule) and kills enforceable at exec (a sufficient one).

use vigil_detect::{PathMatch, PathPattern, RuleSet};
use vigil_proto::EventAction;

fn set(rules: &[&str]) -> RuleSet {
    let text = rules.join("---\n");
    RuleSet::parse(&text, "<inline>").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn p(kind: PathMatch, text: &str) -> PathPattern {
    PathPattern {
        kind,
        text: text.into(),
        cased: false,
    }
}

const KILL_EXACT: &str = "title: k\nid: kill-exact\nlogsource: {category: process_creation}\ndetection: {s: {Image: [/tmp/Evil, /usr/bin/xmrig]}, n: {Image|endswith: /minerd}, condition: s or n}\nvigil: {action: kill}\n";
const KILL_MIXED: &str = "title: k2\nid: kill-mixed\nlogsource: {category: process_creation}\ndetection: {s: {Image|startswith: /dev/shm/, CommandLine|contains: x}, condition: s}\nvigil: {action: kill}\n";
const FILE_PREFIX: &str = "title: f\nid: file-prefix\nlogsource: {category: file_event}\ndetection: {s: {TargetFilename|startswith: [/etc/cron.d/, /var/spool/cron/]}, f: {Image: /usr/sbin/cron}, condition: s and not f}\n";
const NET_ANY: &str = "title: n\nid: net\nlogsource: {category: network_connection}\ndetection: {s: {DestinationPort: 4444}, condition: s}\n";

#[test]
fn exec_kill_needs_a_pure_image_condition() {
    let rules = set(&[KILL_EXACT, KILL_MIXED]);
    let filter = rules.kernel_filter();
    assert_eq!(
        filter.exec_kill.len(),
        1,
        "only the pure Image rule: {filter:?}"
    );
    assert_eq!(filter.exec_kill[0].rule_id, "kill-exact");
    assert_eq!(
        filter.exec_kill[0].patterns,
        vec![
            p(PathMatch::Exact, "/tmp/evil"),
            p(PathMatch::Exact, "/usr/bin/xmrig"),
            p(PathMatch::FileName, "minerd"),
        ]
    );
    // The mixed rule still narrows exec events to /dev/shm/ (a necessary condition).
    let mixed = rules
        .rules()
        .find(|r| r.info().id == "kill-mixed")
        .expect("loaded")
        .pushdown();
    assert_eq!(mixed.paths, Some(vec![p(PathMatch::Prefix, "/dev/shm/")]));
    assert_eq!(
        mixed.exec_kill, None,
        "CommandLine is not evaluated in the kernel"
    );
}

#[test]
fn filter_unions_paths_per_action_and_any_unconstrained_rule_opens_it() {
    let filter = set(&[FILE_PREFIX, NET_ANY]).kernel_filter();
    let open = filter
        .actions
        .iter()
        .find(|(a, _)| *a == EventAction::Open)
        .expect("file_event needs open");
    assert_eq!(
        open.1,
        Some(vec![
            p(PathMatch::Prefix, "/etc/cron.d/"),
            p(PathMatch::Prefix, "/var/spool/cron/"),
        ]),
        "`and not filter` keeps the selection's prefixes"
    );
    assert!(
        filter.needs(EventAction::Connect),
        "network rule attaches connect"
    );
    assert!(!filter.needs(EventAction::Exec), "no exec rule loaded");
    let connect = filter
        .actions
        .iter()
        .find(|(a, _)| *a == EventAction::Connect)
        .expect("connect");
    assert_eq!(
        connect.1, None,
        "no path field for connections: every event"
    );

    // An exec rule without a path test makes every exec needed.
    let any_exec = "title: a\nlogsource: {category: process_creation}\ndetection: {s: {CommandLine|contains: x}, condition: s}\n";
    let filter = set(&[KILL_EXACT, any_exec]).kernel_filter();
    let exec = filter
        .actions
        .iter()
        .find(|(a, _)| *a == EventAction::Exec)
        .expect("exec");
    assert_eq!(exec.1, None, "one unconstrained rule needs every exec");
}

#[test]
fn or_and_not_follow_soundness() {
    let or_unconstrained = "title: o\nlogsource: {category: process_creation}\ndetection: {a: {Image|startswith: /tmp/}, b: {User: root}, condition: a or b}\n";
    let rules = set(&[or_unconstrained]);
    let rule = rules.rules().next().expect("one rule");
    assert_eq!(
        rule.pushdown().paths,
        None,
        "`or` with an unconstrained side"
    );
    let not_only = "title: n\nlogsource: {category: process_creation}\ndetection: {a: {Image|startswith: /tmp/}, condition: not a}\n";
    let rules = set(&[not_only]);
    let rule = rules.rules().next().expect("one rule");
    assert_eq!(rule.pushdown().paths, None, "`not` constrains nothing");
    let contains = "title: c\nlogsource: {category: process_creation}\ndetection: {a: {Image|contains: /tmp/}, condition: a}\n";
    let rules = set(&[contains]);
    let rule = rules.rules().next().expect("one rule");
    assert_eq!(
        rule.pushdown().paths,
        None,
        "contains is not a kernel path test"
    );
}
