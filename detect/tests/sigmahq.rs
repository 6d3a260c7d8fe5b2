//! SigmaHQ's Linux rules, loaded file by file from the shared checkout (never copied into
//! the project): every process_creation rule must compile or fail with a positioned
//! "unsupported feature" error, rules of other log sources must load as skipped, and at
//! least 80% of the process_creation rules must compile.

use std::fs;
use std::path::{Path, PathBuf};

use vigil_detect::{sample_exec_event, RuleSet};

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
    assert!(!files.is_empty(), "no rule files under {}", dir.display());

    let probe = sample_exec_event(&[
        ("Image", "/usr/bin/bash"),
        ("CommandLine", "bash -c 'echo hello'"),
        ("ParentImage", "/usr/sbin/sshd"),
    ])
    .expect("probe event fields are known");

    let (mut process_creation, mut compiled, mut skipped) = (0, 0, 0);
    let mut unsupported_features = Vec::new();
    let mut broken = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let is_process_creation = text.contains("category: process_creation");
        process_creation += usize::from(is_process_creation);
        match RuleSet::load(&[file]) {
            Ok(set) => {
                compiled += set.len();
                skipped += set.unsupported().len();
                if is_process_creation && set.is_empty() {
                    broken.push(format!(
                        "{}: process_creation rule was skipped",
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
    eprintln!(
        "SigmaHQ linux: {compiled}/{process_creation} process_creation rules compile \
         ({:.1}%), {} use unsupported features, {skipped} rules of other log sources skipped, \
         {} files",
        100.0 * compiled as f64 / process_creation.max(1) as f64,
        unsupported_features.len(),
        files.len()
    );
    for line in &unsupported_features {
        eprintln!("  unsupported: {line}");
    }
    assert!(
        broken.is_empty(),
        "rules that failed for other reasons:\n{}",
        broken.join("\n")
    );
    assert!(
        compiled * 5 >= process_creation * 4,
        "only {compiled} of {process_creation} process_creation rules compile (need 80%)"
    );

    // The whole folder loads in one go too (ids are unique, nothing aborts the load) when no
    // rule needs an unsupported feature, and real rules fire on what they describe.
    if unsupported_features.is_empty() {
        let set = RuleSet::load(&[&dir]).unwrap_or_else(|e| panic!("loading the folder: {e}"));
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
        let interactive = fired(&[("Image", "/usr/bin/bash"), ("CommandLine", "bash -i >& x")]);
        assert!(
            interactive.contains(&"6104e693-a7d6-4891-86cb-49a258523559".to_owned()),
            "SigmaHQ 'Bash Interactive Shell' should fire: {interactive:?}"
        );
        let decode = fired(&[("Image", "/usr/bin/base64"), ("CommandLine", "base64 -D x")]);
        assert!(
            decode.contains(&"e2072cab-8c9a-459b-b63c-40ae79e27031".to_owned()),
            "SigmaHQ 'Decode Base64 Encoded Text' (case-insensitive `-d`) should fire: {decode:?}"
        );
    }
}
