//! Table-driven semantics: one row per modifier and condition form, checked against the
//! Sigma specification's meaning (case-insensitive by default, wildcards, `cased`, `all`,
//! `re` flags, `cidr`, `exists`, numbers, nulls, keywords, `1 of`/`all of`/`them`).

use vigil_detect::{sample_event, RuleSet};
use vigil_proto::EventAction;

/// (category, detection body, event action, event fields, expected).
type Row = (
    &'static str,
    &'static str,
    EventAction,
    &'static [(&'static str, &'static str)],
    bool,
);

const PC: &str = "process_creation";
const NET: &str = "network_connection";
const X: EventAction = EventAction::Exec;
const C: EventAction = EventAction::Connect;

const ROWS: &[Row] = &[
    // Plain values: whole value, case-insensitive, wildcards.
    (
        PC,
        "s: {Image: /usr/bin/BASH}",
        X,
        &[("Image", "/usr/bin/bash")],
        true,
    ),
    (
        PC,
        "s: {Image: /usr/bin/bash}",
        X,
        &[("Image", "/usr/bin/bash2")],
        false,
    ),
    (
        PC,
        "s: {Image: '/usr/*/ba?h'}",
        X,
        &[("Image", "/usr/local/bin/bash")],
        true,
    ),
    (
        PC,
        "s: {Image: '/usr/*/ba?h'}",
        X,
        &[("Image", "/usr/bin/baash")],
        false,
    ),
    (
        PC,
        "s: {CommandLine: 'a\\*b'}",
        X,
        &[("CommandLine", "a*b")],
        true,
    ),
    (
        PC,
        "s: {CommandLine: 'a\\*b'}",
        X,
        &[("CommandLine", "axb")],
        false,
    ),
    // contains / startswith / endswith, and their cased forms.
    (
        PC,
        "s: {CommandLine|contains: TCP}",
        X,
        &[("CommandLine", "x /dev/tcp/1")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|contains|cased: TCP}",
        X,
        &[("CommandLine", "x /dev/tcp/1")],
        false,
    ),
    (
        PC,
        "s: {Image|startswith: /TMP/}",
        X,
        &[("Image", "/tmp/x")],
        true,
    ),
    (
        PC,
        "s: {Image|startswith: /tmp/}",
        X,
        &[("Image", "/var/tmp/x")],
        false,
    ),
    (
        PC,
        "s: {Image|endswith: /nc}",
        X,
        &[("Image", "/bin/NC")],
        true,
    ),
    (
        PC,
        "s: {Image|endswith: /nc}",
        X,
        &[("Image", "/bin/ncat")],
        false,
    ),
    // Lists are OR; `all` makes them AND.
    (
        PC,
        "s: {CommandLine|contains: [aa, bb]}",
        X,
        &[("CommandLine", "xbbx")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|contains|all: [aa, bb]}",
        X,
        &[("CommandLine", "xbbx")],
        false,
    ),
    (
        PC,
        "s: {CommandLine|contains|all: [aa, bb]}",
        X,
        &[("CommandLine", "bb aa")],
        true,
    ),
    // Regular expressions: unanchored, case-sensitive unless `i`.
    (
        PC,
        "s: {CommandLine|re: 'a.c'}",
        X,
        &[("CommandLine", "xxabcxx")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|re: 'ABC'}",
        X,
        &[("CommandLine", "abc")],
        false,
    ),
    (
        PC,
        "s: {CommandLine|re|i: 'ABC'}",
        X,
        &[("CommandLine", "abc")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|re|m: '^b$'}",
        X,
        &[("CommandLine", "a\nb\nc")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|re: '^b$'}",
        X,
        &[("CommandLine", "a\nb\nc")],
        false,
    ),
    (
        PC,
        "s: {CommandLine|re|s: 'a.b'}",
        X,
        &[("CommandLine", "a\nb")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|re: 'a.b'}",
        X,
        &[("CommandLine", "a\nb")],
        false,
    ),
    // windash, base64, base64offset.
    (
        PC,
        "s: {CommandLine|windash|contains: ' -enc '}",
        X,
        &[("CommandLine", "x /enc y")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|windash|contains: ' -enc '}",
        X,
        &[("CommandLine", "x \u{2013}enc y")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|base64|contains: 'foo'}",
        X,
        &[("CommandLine", "echo Zm9v | base64 -d")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|base64offset|contains: '/bin/bash'}",
        X,
        &[("CommandLine", "x IC9iaW4vYmFzaA== y")],
        true,
    ),
    (
        PC,
        "s: {CommandLine|base64offset|contains: '/bin/bash'}",
        X,
        &[("CommandLine", "/bin/bash")],
        false,
    ),
    // exists, null, numbers.
    (
        PC,
        "s: {CurrentDirectory|exists: true}",
        X,
        &[("CurrentDirectory", "/root")],
        true,
    ),
    (
        PC,
        "s: {CurrentDirectory|exists: true}",
        X,
        &[("Image", "/x")],
        false,
    ),
    (
        PC,
        "s: {CurrentDirectory|exists: false}",
        X,
        &[("Image", "/x")],
        true,
    ),
    (
        PC,
        "s: {CurrentDirectory: null}",
        X,
        &[("Image", "/x")],
        true,
    ),
    (
        PC,
        "s: {CurrentDirectory: null}",
        X,
        &[("CurrentDirectory", "/")],
        false,
    ),
    (
        PC,
        "s: {ProcessId|lt: 100}",
        X,
        &[("ProcessId", "99")],
        true,
    ),
    (
        PC,
        "s: {ProcessId|lte: 100}",
        X,
        &[("ProcessId", "100")],
        true,
    ),
    (
        PC,
        "s: {ProcessId|gt: 100}",
        X,
        &[("ProcessId", "100")],
        false,
    ),
    (
        PC,
        "s: {ProcessId|gte: 100}",
        X,
        &[("ProcessId", "100")],
        true,
    ),
    // cidr on network fields.
    (
        NET,
        "s: {DestinationIp|cidr: 10.0.0.0/8}",
        C,
        &[("DestinationIp", "10.9.8.7")],
        true,
    ),
    (
        NET,
        "s: {DestinationIp|cidr: 10.0.0.0/8}",
        C,
        &[("DestinationIp", "11.0.0.1")],
        false,
    ),
    (
        NET,
        "s: {DestinationIp|cidr: 'fd00::/8'}",
        C,
        &[("DestinationIp", "fd12::1")],
        true,
    ),
    (
        NET,
        "s: {Initiated: 'true'}",
        C,
        &[("DestinationIp", "1.1.1.1")],
        true,
    ),
    (
        NET,
        "s: {Initiated: 'true'}",
        EventAction::Accept,
        &[("DestinationIp", "1.1.1.1")],
        false,
    ),
    // Keywords: substrings of the command line; a list is OR, `|all` is AND.
    (
        PC,
        "s: [evil, bad]",
        X,
        &[("CommandLine", "run BAD thing")],
        true,
    ),
    (PC, "s: [evil, bad]", X, &[("CommandLine", "good")], false),
    (
        PC,
        "s: {'|all': [evil, bad]}",
        X,
        &[("CommandLine", "bad only")],
        false,
    ),
    // A list of maps is OR of maps; a map is AND of fields.
    (
        PC,
        "s: [{Image: /a}, {Image: /b}]",
        X,
        &[("Image", "/b")],
        true,
    ),
    (
        PC,
        "s: {Image: /a, User: root}",
        X,
        &[("Image", "/a"), ("User", "bob")],
        false,
    ),
];

/// (condition, Image, expected): selections a (Image /a*), b (User root), c_1 (Image *x), c_2 (Image *y).
const CONDITIONS: &[(&str, &str, &str, bool)] = &[
    ("a and b", "/ax", "root", true),
    ("a and b", "/ax", "bob", false),
    ("a or b", "/zz", "root", true),
    ("not a", "/zz", "bob", true),
    ("not a and b", "/ax", "root", false),
    ("a or b and not a", "/zz", "root", true),
    ("(a or b) and c_1", "/zz", "root", false),
    ("(a or b) and c_1", "/ax", "bob", true),
    ("1 of c_*", "/ay", "bob", true),
    ("all of c_*", "/ay", "bob", false),
    ("1 of them", "/zz", "root", true),
    ("all of them", "/ax", "root", false),
    ("a and not 1 of c_*", "/az", "bob", true),
    ("a and not 1 of c_*", "/ax", "bob", false),
];

fn compile(category: &str, detection: &str) -> RuleSet {
    let text = format!(
        "title: row\nlogsource: {{product: linux, category: {category}}}\ndetection:\n  {detection}\n  condition: s\n"
    );
    RuleSet::parse(&text, "<row>").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn every_modifier_row_matches_the_specification() {
    let mut failures = Vec::new();
    for (category, detection, action, fields, expected) in ROWS {
        let set = compile(category, detection);
        let event = sample_event(*action, fields).unwrap_or_else(|e| panic!("{detection}: {e}"));
        let got = !set.matches(&event).is_empty();
        if got != *expected {
            failures.push(format!(
                "{detection} on {fields:?}: expected {expected}, got {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "rows that disagree with the spec:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_condition_form_matches_the_specification() {
    let mut failures = Vec::new();
    for (condition, image, user, expected) in CONDITIONS {
        let text = format!(
            "title: c\nlogsource: {{category: process_creation}}\ndetection:\n  a: {{Image|startswith: /a}}\n  b: {{User: root}}\n  c_1: {{Image|endswith: x}}\n  c_2: {{Image|endswith: y}}\n  condition: {condition}\n"
        );
        let set = RuleSet::parse(&text, "<c>").unwrap_or_else(|e| panic!("{condition}: {e}"));
        let event = sample_event(EventAction::Exec, &[("Image", image), ("User", user)])
            .unwrap_or_else(|e| panic!("{e}"));
        let got = !set.matches(&event).is_empty();
        if got != *expected {
            failures.push(format!(
                "`{condition}` on {image} {user}: expected {expected}, got {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "conditions that disagree with the spec:\n{}",
        failures.join("\n")
    );
}
