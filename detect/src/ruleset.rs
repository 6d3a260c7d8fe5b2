//! [`RuleSet`]: loading rule files and directories, keeping rule ids unique, and matching
//! events against every compiled rule. Loading does the I/O; matching is pure.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use vigil_proto::{Event, EventAction};

use crate::correlation::Correlation;
use crate::document::parse_documents;
use crate::embedded::TestFailure;
use crate::error::{Location, RuleError};
use crate::field::EventView;
use crate::index::ActionIndex;
use crate::rule::{from_document, Parsed, Rule, Unsupported};

/// A compiled set of rules, in load order.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    unsupported: Vec<Unsupported>,
    /// Rule id → where it was first defined, to reject duplicates across files.
    ids: HashMap<String, Location>,
    correlations: Vec<Correlation>,
    /// Action → indices of the rules whose category reads it, in load order.
    by_action: HashMap<EventAction, Vec<usize>>,
    /// Action → the literal index of those rules; rebuilt after every load. A short list
    /// scanned by comparison: cheaper per event than hashing the action (measured with perf:
    /// SipHash was 6% of the match path over SigmaHQ's rules).
    index: Vec<(EventAction, ActionIndex)>,
}

impl RuleSet {
    /// Files, or directories searched recursively for *.yml / *.yaml.
    ///
    /// Directory entries are read in name order so that load order (and so match order) is
    /// the same on every host. Symbolic links to directories are not followed (no loops);
    /// a file given explicitly is read whatever its extension. The first error aborts.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<RuleSet, RuleError> {
        Self::load_with_sources(paths, &[])
    }

    /// Like [`RuleSet::load`], then rule texts that are not files (a set pushed from the
    /// collector), each as (origin for errors, YAML text), after the files and in the order
    /// given. Ids must be unique across both.
    pub fn load_with_sources<P: AsRef<Path>>(
        paths: &[P],
        sources: &[(String, String)],
    ) -> Result<RuleSet, RuleError> {
        let mut files = Vec::new();
        for path in paths {
            collect_files(path.as_ref(), true, &mut files)?;
        }
        let mut set = RuleSet::default();
        for file in files {
            let text = fs::read_to_string(&file).map_err(|source| RuleError::Io {
                path: file.clone(),
                source,
            })?;
            set.add_source(&text, &file.display().to_string())?;
        }
        for (origin, text) in sources {
            set.add_source(text, origin)?;
        }
        set.resolve_correlations()?;
        set.build_index();
        Ok(set)
    }

    /// `origin` names the source in errors (a path, or "<inline>").
    pub fn parse(source: &str, origin: &str) -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::default();
        set.add_source(source, origin)?;
        set.resolve_correlations()?;
        set.build_index();
        Ok(set)
    }

    fn add_source(&mut self, source: &str, origin: &str) -> Result<(), RuleError> {
        for doc in parse_documents(source, origin)? {
            match from_document(&doc)? {
                Parsed::Rule(rule) => {
                    let id = &rule.info().id;
                    if let Some(first) = self.ids.get(id) {
                        return Err(RuleError::DuplicateId {
                            at: rule.location().clone(),
                            id: id.clone(),
                            first: first.clone(),
                        });
                    }
                    self.ids.insert(id.clone(), rule.location().clone());
                    for action in rule.category().actions {
                        self.by_action
                            .entry(*action)
                            .or_default()
                            .push(self.rules.len());
                    }
                    self.rules.push(*rule);
                }
                Parsed::Correlation(corr) => self.correlations.push(*corr),
                Parsed::Unsupported(skipped) => self.unsupported.push(skipped),
            }
        }
        Ok(())
    }

    /// Correlations may refer to rules of any file, so they are resolved once all are read.
    fn build_index(&mut self) {
        self.index = self
            .by_action
            .iter()
            .map(|(action, rules)| {
                let detections = rules
                    .iter()
                    .filter_map(|&i| self.rules.get(i).map(|r| (i, r.detection())));
                (*action, ActionIndex::build(detections))
            })
            .collect();
    }

    fn resolve_correlations(&mut self) -> Result<(), RuleError> {
        let rules = &self.rules;
        for corr in &mut self.correlations {
            corr.resolve(rules.iter())?;
        }
        Ok(())
    }

    /// Compiled correlation rules; feed them to a [`crate::CorrelationEngine`].
    pub fn correlations(&self) -> &[Correlation] {
        &self.correlations
    }

    /// Compiled, matchable rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rules that were read but skipped: other log sources, correlation rules.
    pub fn unsupported(&self) -> &[Unsupported] {
        &self.unsupported
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    /// Rules matching the event, in load order. Pure: no I/O, no clock.
    pub fn matches<'a>(&'a self, event: &Event) -> Vec<&'a Rule> {
        let mut out = Vec::new();
        self.matches_into(event, &mut out);
        out
    }

    /// Like [`RuleSet::matches`], appending to `out` so a caller that reuses its buffer
    /// allocates nothing per event on the match path (field values that need lower-casing
    /// or number formatting aside).
    pub fn matches_into<'a>(&'a self, event: &Event, out: &mut Vec<&'a Rule>) {
        // Only the rules of categories that read this action are looked at.
        let action = event.event.action;
        let Some((_, index)) = self.index.iter().find(|(a, _)| *a == action) else {
            return;
        };
        let view = EventView::new(event);
        index.candidates(&view, |i| {
            if let Some(rule) = self.rules.get(i) {
                if rule.category().admits(event) && rule.matches_view(&view) {
                    out.push(rule);
                }
            }
        });
    }

    /// What the kernel must deliver for these rules, and which kills it can enforce at exec.
    pub fn kernel_filter(&self) -> crate::KernelFilter {
        crate::pushdown::build(self.rules.iter())
    }

    /// Runs every rule's `vigil.tests` cases against that rule alone.
    pub fn run_embedded_tests(&self) -> Vec<TestFailure> {
        let mut failures = Vec::new();
        for rule in &self.rules {
            for case in rule.test_cases() {
                if rule.matches(case.event()) != case.expects_match() {
                    failures.push(TestFailure {
                        at: case.location().clone(),
                        rule_id: rule.info().id.clone(),
                        rule_title: rule.info().title.clone(),
                        expected_match: case.expects_match(),
                    });
                }
            }
        }
        failures
    }
}

fn collect_files(path: &Path, explicit: bool, files: &mut Vec<PathBuf>) -> Result<(), RuleError> {
    let io = |source| RuleError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = if explicit {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    }
    .map_err(io)?;
    if meta.is_dir() {
        let mut entries = fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)?;
        entries.sort();
        for entry in entries {
            collect_files(&entry, false, files)?;
        }
    } else if explicit || is_rule_file(path) {
        files.push(path.to_owned());
    }
    Ok(())
}

fn is_rule_file(path: &Path) -> bool {
    let is_yaml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"));
    // NB: found by a directory walk, a symlink is followed only to a file.
    is_yaml && fs::metadata(path).is_ok_and(|m| m.is_file())
}
