//! Deduplication with simulated time: one alert per rule and key per window, an explicit
//! summary of what was suppressed, bounded memory.

use vigil_detect::{sample_exec_event, DedupDecision, Deduplicator, RuleSet};
use vigil_proto::Timestamp;

const RULE: &str = "title: d\nid: dedup-rule\nlogsource: {category: process_creation}\ndetection: {s: {Image|endswith: /nc}, condition: s}\nvigil:\n  dedup: {window: 60s, key: [Image, User]}\n";

fn at(seconds: u64) -> Timestamp {
    Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + seconds * 1_000_000_000)
}

#[test]
fn one_alert_per_key_per_window_then_a_suppressed_summary() {
    let set = RuleSet::parse(RULE, "<inline>").unwrap_or_else(|e| panic!("{e}"));
    let rule = set.rules().next().expect("one rule");
    let alice = sample_exec_event(&[("Image", "/usr/bin/nc"), ("User", "alice")]).expect("event");
    let bob = sample_exec_event(&[("Image", "/usr/bin/nc"), ("User", "bob")]).expect("event");
    let mut dedup = Deduplicator::new(16);

    assert_eq!(
        dedup.observe(rule, &alice, at(0)),
        DedupDecision::Raise,
        "first alice"
    );
    assert_eq!(
        dedup.observe(rule, &bob, at(1)),
        DedupDecision::Raise,
        "bob is another key"
    );
    assert_eq!(
        dedup.observe(rule, &alice, at(10)),
        DedupDecision::Suppress { count: 2 },
        "alice again within 60 s"
    );
    assert_eq!(
        dedup.observe(rule, &alice, at(59)),
        DedupDecision::Suppress { count: 3 },
        "still within the window"
    );
    assert!(dedup.expire(at(59)).is_empty(), "no window closed yet");

    let summaries = dedup.expire(at(61));
    assert_eq!(
        summaries.len(),
        1,
        "bob suppressed nothing, so only alice: {summaries:?}"
    );
    let s = &summaries[0];
    assert_eq!(s.rule_id, "dedup-rule");
    assert_eq!(s.key, "/usr/bin/nc\u{1f}alice");
    assert_eq!((s.count, s.suppressed), (3, 2));
    assert_eq!((s.first_seen, s.last_seen), (at(0), at(59)));
    assert!(dedup.is_empty(), "both windows closed");
    assert_eq!(
        dedup.observe(rule, &alice, at(62)),
        DedupDecision::Raise,
        "new window"
    );
}

#[test]
fn rules_without_dedup_always_raise_and_a_full_table_raises() {
    let plain = "title: p\nid: plain\nlogsource: {category: process_creation}\ndetection: {s: {Image: x}, condition: s}\n";
    let set = RuleSet::parse(&format!("{RULE}---\n{plain}"), "<inline>")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rules = set.rules();
    let (deduped, plain) = (rules.next().expect("rule 1"), rules.next().expect("rule 2"));
    let mut dedup = Deduplicator::new(1);
    let event =
        |user: &str| sample_exec_event(&[("Image", "/bin/nc"), ("User", user)]).expect("event");
    for i in 0..3 {
        assert_eq!(
            dedup.observe(plain, &event("a"), at(i)),
            DedupDecision::Raise,
            "no dedup key"
        );
    }
    assert_eq!(
        dedup.observe(deduped, &event("a"), at(0)),
        DedupDecision::Raise
    );
    assert_eq!(
        dedup.observe(deduped, &event("b"), at(0)),
        DedupDecision::Raise,
        "table full: raised, not dropped"
    );
    assert_eq!(dedup.overflowed(), 1, "the overflow is counted");
    assert_eq!(dedup.len(), 1, "memory stays bounded");
}
