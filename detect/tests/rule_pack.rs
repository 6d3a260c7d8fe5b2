//! The default rule pack in `rules/`: every rule compiles, is well described, carries both
//! positive and near-miss test cases, and passes them.

use std::collections::HashSet;
use std::path::Path;

use vigil_detect::RuleSet;

#[test]
fn default_rule_pack_passes_its_embedded_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let set = RuleSet::load(&[&dir]).unwrap_or_else(|e| panic!("the default pack must load: {e}"));
    assert!(
        set.len() >= 40,
        "the pack should hold at least 40 rules, has {}",
        set.len()
    );
    assert!(
        set.unsupported().is_empty(),
        "every default rule should compile: {:?}",
        set.unsupported()
    );

    let mut titles = HashSet::new();
    for rule in set.rules() {
        let info = rule.info();
        let name = format!("{} ({})", info.title, rule.origin());
        assert!(titles.insert(info.title.clone()), "duplicate title: {name}");
        assert_eq!(
            info.id.len(),
            36,
            "{name}: id should be a UUID, is {:?}",
            info.id
        );
        assert_eq!(info.author.as_deref(), Some("Vigil"), "{name}: author");
        assert!(
            info.description.as_deref().is_some_and(|d| d.len() > 40),
            "{name}: description"
        );
        assert!(
            info.tags.iter().any(|t| t.starts_with("attack.t")),
            "{name}: needs an ATT&CK technique tag, has {:?}",
            info.tags
        );
        assert!(!rule.falsepositives().is_empty(), "{name}: falsepositives");
        let positives = rule
            .test_cases()
            .iter()
            .filter(|c| c.expects_match())
            .count();
        let negatives = rule.test_cases().len() - positives;
        assert!(
            positives >= 2,
            "{name}: needs at least 2 `match` cases, has {positives}"
        );
        assert!(
            negatives >= 2,
            "{name}: needs at least 2 `no_match` cases, has {negatives}"
        );
    }

    let failures = set.run_embedded_tests();
    let report: Vec<String> = failures.iter().map(ToString::to_string).collect();
    assert!(
        failures.is_empty(),
        "embedded rule tests failed:\n{}",
        report.join("\n")
    );
    eprintln!(
        "default pack: {} rules, {} embedded test cases pass",
        set.len(),
        set.rules().map(|r| r.test_cases().len()).sum::<usize>()
    );
}

#[test]
fn default_rule_pack_is_quiet_on_ordinary_activity() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let set = RuleSet::load(&[&dir]).unwrap_or_else(|e| panic!("the default pack must load: {e}"));
    let ordinary: &[&[(&str, &str)]] = &[
        &[("Image", "/usr/bin/ls"), ("CommandLine", "ls -la /tmp")],
        &[
            ("Image", "/usr/bin/git"),
            ("CommandLine", "git commit -m 'fix: -e flag'"),
        ],
        &[
            ("Image", "/usr/bin/bash"),
            ("CommandLine", "bash -c 'cd /srv && make -j2'"),
        ],
        &[
            ("Image", "/usr/bin/systemctl"),
            ("CommandLine", "systemctl restart nginx"),
        ],
        &[
            ("Image", "/usr/bin/python3"),
            ("CommandLine", "python3 -m pip install -r req.txt"),
        ],
        &[
            ("Image", "/usr/bin/ssh"),
            ("CommandLine", "ssh -i ~/.ssh/id_ed25519 host"),
        ],
        &[
            ("Image", "/usr/bin/apt-get"),
            ("CommandLine", "apt-get install -y curl"),
        ],
        &[
            ("Image", "/usr/bin/curl"),
            ("CommandLine", "curl -fsSL https://example.com -o x.tgz"),
        ],
        &[
            ("Image", "/usr/bin/tar"),
            ("CommandLine", "tar -xzf x.tgz -C /tmp/build"),
        ],
        &[
            ("Image", "/usr/bin/grep"),
            ("CommandLine", "grep -r TODO /srv/app"),
        ],
        &[
            ("Image", "/usr/sbin/useradd"),
            ("CommandLine", "useradd -m -s /bin/bash bob"),
        ],
        &[("Image", "/usr/bin/crontab"), ("CommandLine", "crontab -l")],
        &[
            ("Image", "/usr/bin/base64"),
            ("CommandLine", "base64 -w0 image.png"),
        ],
        &[
            ("Image", "/usr/bin/nc"),
            ("CommandLine", "nc -zv db.internal 5432"),
        ],
        &[
            ("Image", "/usr/bin/sh"),
            ("CommandLine", "/bin/sh /usr/lib/apt/apt.systemd.daily"),
        ],
        &[
            ("Image", "/usr/bin/cat"),
            ("CommandLine", "cat /etc/os-release"),
        ],
        &[
            ("Image", "/usr/bin/passwd"),
            ("CommandLine", "passwd alice"),
        ],
    ];
    for fields in ordinary {
        let event = vigil_detect::sample_exec_event(fields).expect("fields are known");
        let fired: Vec<&str> = set
            .matches(&event)
            .iter()
            .map(|r| r.info().title.as_str())
            .collect();
        assert!(fired.is_empty(), "{fields:?} fired {fired:?}");
    }
}

/// The indexed matcher finds exactly what evaluating every rule finds, on every test case
/// of the pack (positives of one rule are near misses of others).
#[test]
fn indexed_matching_equals_evaluating_every_rule() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules");
    let set = RuleSet::load(&[&dir]).unwrap_or_else(|e| panic!("the default pack must load: {e}"));
    let mut compared = 0;
    for case in set.rules().flat_map(|r| r.test_cases()) {
        let event = case.event();
        let indexed: Vec<&str> = set
            .matches(event)
            .iter()
            .map(|r| r.info().id.as_str())
            .collect();
        let linear: Vec<&str> = set
            .rules()
            .filter(|r| r.matches(event))
            .map(|r| r.info().id.as_str())
            .collect();
        assert_eq!(
            indexed,
            linear,
            "index and full evaluation disagree at {}",
            case.location()
        );
        compared += 1;
    }
    assert!(compared > 200, "compared {compared} events");
}
