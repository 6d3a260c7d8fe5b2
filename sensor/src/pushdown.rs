//! What the kernel captures: the union of what the config selects and what the loaded rules
//! read ([`vigil_detect::RuleSet::kernel_filter`]). A kind in neither is not attached at all;
//! the file path prefixes rules test are added to the kernel's prefix filter, so that a rule
//! on a path outside the configured prefixes still sees its events.
//!
//! NB: the rule compiler folds case-insensitive path tests to lower case, and the kernel's
//! prefix trie compares bytes: a rule prefix pushed down admits the lower-case spelling of the
//! path only. Linux paths are case-sensitive and rules write them as they are, in lower case.

use std::collections::HashSet;

use vigil_detect::{KernelFilter, PathMatch};
use vigil_proto::EventAction;

use crate::config::{CaptureKeyword, CaptureSelector, SensorConfig};

/// The kernel side of the sensor's configuration, after the rules are loaded.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturePlan {
    /// Actions to capture; `None`: every kind.
    pub actions: Option<HashSet<EventAction>>,
    /// Watched prefixes for file events; `None`: every path.
    pub file_prefixes: Option<Vec<String>>,
    /// What the kernel filter cannot express for the rules, for the log.
    pub notes: Vec<String>,
}

impl CapturePlan {
    pub fn wants(&self, action: EventAction) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(&action))
    }
}

/// Actions whose events carry a path the kernel's prefix filter applies to.
pub fn is_file_action(action: EventAction) -> bool {
    use EventAction as A;
    matches!(
        action,
        A::Open
            | A::Unlink
            | A::Rename
            | A::Chmod
            | A::Chown
            | A::Truncate
            | A::Link
            | A::Symlink
            | A::Mkdir
            | A::Rmdir
            | A::Utimes
    )
}

pub fn plan(config: &SensorConfig, filter: &KernelFilter) -> CapturePlan {
    let mut all = false;
    let mut actions = HashSet::new();
    for selector in &config.capture_kinds {
        match selector {
            CaptureSelector::Keyword(CaptureKeyword::All) => all = true,
            CaptureSelector::Keyword(CaptureKeyword::Rules) => {
                actions.extend(filter.actions.iter().map(|(action, _)| *action));
            }
            CaptureSelector::Action(action) => {
                actions.insert(*action);
            }
        }
    }
    let mut notes = Vec::new();
    let mut prefixes = config.file_prefixes();
    if let Some(list) = prefixes.as_mut() {
        for (action, patterns) in &filter.actions {
            if !is_file_action(*action) {
                continue;
            }
            let Some(patterns) = patterns else {
                notes.push(format!(
                    "a rule reads {} events on any path: it sees those under the watched prefixes only",
                    action.as_str()
                ));
                continue;
            };
            for pattern in patterns {
                match pattern.kind {
                    // A whole path is its own (narrowest) prefix.
                    PathMatch::Prefix | PathMatch::Exact => {
                        if !list.iter().any(|p| pattern.text.starts_with(p.as_str())) {
                            list.push(pattern.text.clone());
                        }
                    }
                    PathMatch::FileName => notes.push(format!(
                        "a rule tests {} events by file name ({}): it sees those under the watched prefixes only",
                        action.as_str(),
                        pattern.text
                    )),
                }
            }
        }
    }
    notes.sort();
    notes.dedup();
    CapturePlan {
        actions: (!all).then_some(actions),
        file_prefixes: prefixes,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rules(text: &str) -> KernelFilter {
        vigil_detect::RuleSet::parse(text, "<inline>")
            .expect("rules")
            .kernel_filter()
    }

    const CRON: &str = "title: f\nid: cron\nlogsource: {category: file_event}\ndetection: {s: {TargetFilename|startswith: /srv/cron.d/}, condition: s}\n";
    const NET: &str = "title: n\nid: net\nlogsource: {category: network_connection}\ndetection: {s: {DestinationPort: 4444}, condition: s}\n";

    #[test]
    fn rules_mode_captures_what_rules_read_and_adds_their_prefixes() {
        let config =
            SensorConfig::parse("capture_kinds: [rules, dns_query]\n", Path::new("s.yaml"))
                .expect("config");
        let plan = plan(&config, &rules(&format!("{CRON}---\n{NET}")));
        assert!(plan.wants(EventAction::Connect));
        assert!(plan.wants(EventAction::DnsQuery), "selected by name");
        assert!(plan.wants(EventAction::Open), "file_event reads opens");
        assert!(!plan.wants(EventAction::Ptrace));
        assert!(!plan.wants(EventAction::Mount));
        let prefixes = plan.file_prefixes.expect("a prefix filter");
        assert!(prefixes.iter().any(|p| p == "/srv/cron.d/"), "{prefixes:?}");
        assert!(
            prefixes.iter().any(|p| p == "/etc/"),
            "configured ones stay"
        );
    }

    #[test]
    fn default_captures_everything() {
        let plan = plan(&SensorConfig::default(), &rules(NET));
        assert_eq!(plan.actions, None);
        assert!(plan.wants(EventAction::Mount));
    }
}
