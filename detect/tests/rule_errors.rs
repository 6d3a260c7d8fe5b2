//! Rule errors through the public API: each renders as `path:line:column: reason` and points
//! at the offending node; nothing panics on any input.

use std::fs;

use vigil_detect::{RuleError, RuleSet};

const HEAD: &str =
    "title: t\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n";

/// Lines 1-5 are `HEAD`; `detection` continues on line 6.
fn error(detection: &str) -> RuleError {
    let text = format!("{HEAD}{detection}");
    match RuleSet::parse(&text, "r.yml") {
        Ok(_) => panic!("rule should be rejected:\n{text}"),
        Err(e) => e,
    }
}

fn message(detection: &str) -> String {
    error(detection).to_string()
}

#[test]
fn yaml_syntax_error_has_exact_position() {
    assert_eq!(
        message("  sel:\n    Image: x: y\n  condition: sel\n"),
        "r.yml:7:13: YAML: mapping values are not allowed in this context"
    );
}

#[test]
fn columns_count_characters_and_crlf_files_work() {
    let text = "title: Übergröße ✓\r\nlogsource: {category: process_creation}\r\ndetection:\r\n  sél: {Image: é}\r\n  condition: sél and ñope\r\n";
    let err = RuleSet::parse(text, "u.yml").err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("u.yml:5:22: condition refers to undefined selection `ñope`")
    );
}

#[test]
fn unknown_modifier_points_at_the_modifier() {
    assert_eq!(
        message("  sel:\n    Image|foo: x\n  condition: sel\n"),
        "r.yml:7:11: unknown modifier `foo`"
    );
    assert_eq!(
        message("  sel:\n    'CommandLine|contains|alll': x\n  condition: sel\n"),
        "r.yml:7:27: unknown modifier `alll`",
        "quoted keys are accounted for"
    );
}

#[test]
fn unknown_field_points_at_the_key_and_suggests() {
    assert_eq!(
        message("  sel:\n    TargetFilenam: x\n  condition: sel\n"),
        "r.yml:7:5: unknown field `TargetFilenam`"
    );
    assert_eq!(
        message("  sel:\n    - commandline|contains: x\n  condition: sel\n"),
        "r.yml:7:7: unknown field `commandline` (did you mean `CommandLine`?)"
    );
}

#[test]
fn undefined_selection_points_at_the_name() {
    assert_eq!(
        message("  sel:\n    Image: x\n  condition: sel and other\n"),
        "r.yml:8:22: condition refers to undefined selection `other`"
    );
    assert_eq!(
        message("  sel:\n    Image: x\n  condition: '1 of filter_*'\n"),
        "r.yml:8:20: condition refers to undefined selection `filter_*`"
    );
}

#[test]
fn condition_syntax_errors() {
    assert_eq!(
        message("  sel:\n    Image: x\n  condition: sel and\n"),
        "r.yml:8:21: condition: unexpected end, expected a selection"
    );
    assert_eq!(
        message("  sel:\n    Image: x\n  condition: (sel or sel\n"),
        "r.yml:8:14: condition: unclosed `(`"
    );
    assert_eq!(
        message("  sel:\n    Image: x\n"),
        "r.yml:5:1: `detection` has no `condition`"
    );
}

#[test]
fn bad_regex_and_bad_values() {
    let err = error("  sel:\n    CommandLine|re: '(unclosed'\n  condition: sel\n");
    assert!(matches!(err, RuleError::Regex { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("r.yml:7:21: bad regular expression"),
        "{err}"
    );
    assert_eq!(
        message("  sel:\n    ProcessId|gt: many\n  condition: sel\n"),
        "r.yml:7:19: \"many\" is not an integer"
    );
    assert_eq!(
        message("  sel:\n    Image|startswith|endswith: x\n  condition: sel\n"),
        "r.yml:7:22: `endswith` cannot follow another comparison modifier"
    );
    assert_eq!(
        message("  sel:\n    Image:\n      nested: map\n  condition: sel\n"),
        "r.yml:7:5: `Image` needs a value or a list of values"
    );
}

#[test]
fn unsupported_features_are_flagged_as_such() {
    for detection in [
        "  sel:\n    Image|expand: '%admins%'\n  condition: sel\n",
        "  sel:\n    CommandLine|utf16le|base64offset|contains: x\n  condition: sel\n",
        "  sel:\n    Image: x\n  condition: sel | count() > 5\n",
        "  sel:\n    Image: x\n  timeframe: 5m\n  condition: sel\n",
    ] {
        let err = error(detection);
        assert!(err.is_unsupported_feature(), "{err}");
        assert!(err.location().is_some(), "{err} has a position");
    }
    assert_eq!(
        message("  sel:\n    Image: x\n  condition: sel | count() > 5\n"),
        "r.yml:8:18: unsupported Sigma feature: aggregation after `|`"
    );
}

#[test]
fn metadata_errors() {
    let parse = |text: &str| match RuleSet::parse(text, "m.yml") {
        Ok(_) => panic!("should be rejected:\n{text}"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        parse(
            "logsource: {category: process_creation}\ndetection: {s: {Image: x}, condition: s}\n"
        ),
        "m.yml:1:1: missing `title`"
    );
    assert_eq!(
        parse("title: t\nlogsource: {category: process_creation}\n"),
        "m.yml:1:1: missing `detection`"
    );
    assert_eq!(
        parse("title: t\nlevel: severe\nlogsource: {category: process_creation}\ndetection: {s: {Image: x}, condition: s}\n"),
        "m.yml:2:8: bad level \"severe\": expected informational, low, medium, high or critical"
    );
    assert_eq!(
        parse("title:\nlevel: low\n"),
        "m.yml:1:1: `title` must be a non-empty string"
    );
    assert_eq!(
        parse("- just\n- a list\n"),
        "m.yml:1:1: YAML: a rule must be a mapping"
    );
    assert_eq!(
        parse("title: t\nlogsource: {category: process_creation}\ndetection:\n  s: {Image: x}\n  s: {Image: y}\n  condition: s\n"),
        "m.yml:5:3: YAML: duplicate key `s` (first at line 4)"
    );
}

#[test]
fn documents_ids_and_duplicates() {
    let rule = |id: &str| {
        format!("title: t\n{id}logsource: {{category: process_creation}}\ndetection: {{s: {{Image: x}}, condition: s}}\n")
    };
    let text = format!("{}---\n{}", rule(""), rule(""));
    let set = RuleSet::parse(&text, "rules/shells.yml").unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = set.rules().map(|r| r.info().id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["shells-0", "shells-1"],
        "default ids are file stem + index"
    );
    let text = format!("{}---\n{}", rule("id: same\n"), rule("id: same\n"));
    let err = RuleSet::parse(&text, "d.yml").err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("d.yml:6:1: duplicate rule id `same` (first defined at d.yml:1:1)")
    );
    let text = format!("{}---\ntitle: broken\nlevel: [\n", rule(""));
    let err = RuleSet::parse(&text, "d.yml").err().map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.starts_with("d.yml:7:")),
        "errors in later documents carry file lines: {err:?}"
    );
}

#[test]
fn other_log_sources_are_listed_not_compiled() {
    let text = "title: net\nlogsource: {product: linux, category: firewall}\ndetection: {s: {DestinationPort: 4444}, condition: s}\n---\ntitle: win\nlogsource: {product: windows, category: process_creation}\ndetection: {s: {Image: x}, condition: s}\n";
    let set = RuleSet::parse(text, "<inline>").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        set.is_empty(),
        "nothing here is a Linux category Vigil reads"
    );
    let titles: Vec<&str> = set.unsupported().iter().map(|u| u.title.as_str()).collect();
    assert_eq!(titles, vec!["net", "win"]);
    assert_eq!(
        set.unsupported()[0].logsource.to_string(),
        "product=linux category=firewall"
    );
    assert_eq!(set.unsupported()[1].location.line, 5);
}

#[test]
fn vigil_key_is_accepted_and_its_tests_checked() {
    let base = "title: t\nlogsource: {category: process_creation}\ndetection: {s: {Image|endswith: /sh}, condition: s}\n";
    let ok = format!("{base}vigil:\n  action: kill\n  tests:\n    match: [{{Image: /bin/sh}}]\n    no_match: [{{Image: /bin/ls}}, {{Image: /bin/sh}}]\n");
    let set = RuleSet::parse(&ok, "v.yml").unwrap_or_else(|e| panic!("{e}"));
    let failures = set.run_embedded_tests();
    assert_eq!(
        failures.len(),
        1,
        "the second no_match case matches: {failures:?}"
    );
    assert_eq!(
        failures[0].to_string(),
        "v.yml:8:35: rule v-0 (t): test case should not match but did"
    );
    let typo = format!("{base}vigil:\n  tests:\n    matches: []\n");
    assert_eq!(
        RuleSet::parse(&typo, "v.yml")
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("v.yml:6:5: unknown key `matches` in `vigil.tests` (expected `match` or `no_match`)")
    );
    let bad_field = format!("{base}vigil:\n  tests:\n    match:\n      - {{Imag: /bin/sh}}\n");
    assert_eq!(
        RuleSet::parse(&bad_field, "v.yml")
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("v.yml:7:10: unknown field `Imag`")
    );
}

#[test]
fn load_walks_directories_and_reports_io_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nested = dir.path().join("a/b");
    fs::create_dir_all(&nested).expect("mkdir");
    let rule = |id: &str| {
        format!("title: {id}\nid: {id}\nlogsource: {{category: process_creation}}\ndetection: {{s: {{Image: x}}, condition: s}}\n")
    };
    fs::write(dir.path().join("z.yml"), rule("z")).expect("write");
    fs::write(nested.join("m.yaml"), rule("m")).expect("write");
    fs::write(nested.join("notes.txt"), "not: [a rule").expect("write");
    let set = RuleSet::load(&[dir.path()]).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = set.rules().map(|r| r.info().id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["m", "z"],
        "recursive, in path order, yml and yaml only"
    );
    assert!(set
        .rules()
        .all(|r| r.origin().starts_with(&*dir.path().to_string_lossy())));
    let missing = dir.path().join("missing.yml");
    let err = RuleSet::load(&[&missing])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with(&format!("{}: cannot read:", missing.display())),
        "{err}"
    );
}

#[test]
fn mutated_rules_never_panic() {
    let seed = "title: Reverse shell\nid: 1\nlevel: high\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  sel:\n    - CommandLine|contains|all: ['/dev/tcp/', ' -i']\n    - Image|re: '^/tmp/.*'\n  keywords: ['nc -e', '*x?\\*']\n  filter_1:\n    ParentImage: null\n  condition: (sel or keywords) and not 1 of filter_*\nvigil:\n  tests:\n    match: [{CommandLine: 'bash -i >& /dev/tcp/1/2'}]\n";
    RuleSet::parse(seed, "seed.yml").unwrap_or_else(|e| panic!("the seed must be valid: {e}"));
    let alphabet: Vec<char> = "-:[]{}'\"|*?\\(),#&!%@ \n\tanot1".chars().collect();
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % 1_000_003).unwrap_or(0)
    };
    for _ in 0..5_000 {
        let mut chars: Vec<char> = seed.chars().collect();
        for _ in 0..1 + next() % 4 {
            let at = next() % (chars.len() + 1);
            match next() % 3 {
                0 => chars.insert(at, alphabet[next() % alphabet.len()]),
                1 if at < chars.len() => {
                    chars.remove(at);
                }
                _ => {
                    let end = (at + next() % 20).min(chars.len());
                    chars.drain(at..end);
                }
            }
        }
        let text: String = chars.into_iter().collect();
        if let Ok(set) = RuleSet::parse(&text, "fuzz.yml") {
            let _ = set.run_embedded_tests();
        }
    }
}
