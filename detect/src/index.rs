//! The indexed matcher: instead of evaluating every rule of an action on every event, each
//! rule is reduced to *anchors*, literals one of which must occur in a given field for the
//! rule to match (a necessary condition derived from its condition tree). The anchors of
//! all rules of an action form one Aho-Corasick automaton per field; an event runs each
//! automaton once over the field's lower-cased value, and only the rules whose anchor was
//! found, plus those without anchors, are evaluated in full. The scratch buffers live in a
//! thread-local, so the match path does not allocate once warm.

use std::cell::RefCell;
use std::collections::BTreeMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use crate::condition::Expr;
use crate::detection::{Detection, FieldTest};
use crate::field::{EventView, Field};
use crate::matcher::Matcher;

/// Anchors shorter than this find nearly every event; such rules are evaluated always.
const MIN_ANCHOR: usize = 3;

/// The index of the rules of one action.
#[derive(Debug, Default)]
pub(crate) struct ActionIndex {
    /// Rules without anchors: evaluated on every event of the action.
    always: Vec<usize>,
    fields: Vec<FieldAutomaton>,
}

#[derive(Debug)]
struct FieldAutomaton {
    field: Field,
    automaton: AhoCorasick,
    /// Pattern id → rules anchored on it.
    rules: Vec<Vec<usize>>,
}

impl ActionIndex {
    /// `rules`: (rule index, detection) of the action's rules, in load order.
    pub fn build<'d>(rules: impl Iterator<Item = (usize, &'d Detection)>) -> ActionIndex {
        let mut always = Vec::new();
        let mut per_field: BTreeMap<Field, BTreeMap<String, Vec<usize>>> = BTreeMap::new();
        for (i, detection) in rules {
            match anchors(&detection.condition, detection) {
                Some(list) => {
                    for (field, literal) in list {
                        let rules = per_field
                            .entry(field)
                            .or_default()
                            .entry(literal)
                            .or_default();
                        if rules.last() != Some(&i) {
                            rules.push(i);
                        }
                    }
                }
                None => always.push(i),
            }
        }
        let mut fields = Vec::new();
        for (field, patterns) in per_field {
            let (literals, rules): (Vec<String>, Vec<Vec<usize>>) = patterns.into_iter().unzip();
            // A DFA: one table lookup per byte, the fastest overlapping search; rule sets
            // hold at most a few thousand literals per field, so its size stays small.
            match AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(&literals)
            {
                Ok(automaton) => fields.push(FieldAutomaton {
                    field,
                    automaton,
                    rules,
                }),
                // NB: building only fails on absurd sizes; falling back to full evaluation
                // keeps the rules working.
                Err(_) => always.extend(rules.into_iter().flatten()),
            }
        }
        always.sort_unstable();
        always.dedup();
        ActionIndex { always, fields }
    }

    /// Calls `visit` with each candidate rule index, in load order, once.
    pub fn candidates(&self, view: &EventView<'_>, mut visit: impl FnMut(usize)) {
        if self.fields.is_empty() {
            self.always.iter().for_each(|&i| visit(i));
            return;
        }
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                // Re-entered (cannot happen on the match path): no index, no miss.
                self.all(&mut visit);
                return;
            };
            scratch.clear();
            scratch.extend_from_slice(&self.always);
            for fa in &self.fields {
                let Some(value) = view.lower(fa.field) else {
                    continue;
                };
                for m in fa.automaton.find_overlapping_iter(value.as_bytes()) {
                    if let Some(rules) = fa.rules.get(m.pattern().as_usize()) {
                        scratch.extend_from_slice(rules);
                    }
                }
            }
            scratch.sort_unstable();
            scratch.dedup();
            scratch.iter().for_each(|&i| visit(i));
        });
    }

    fn all(&self, visit: &mut impl FnMut(usize)) {
        let mut every: Vec<usize> = self.always.clone();
        for fa in &self.fields {
            every.extend(fa.rules.iter().flatten());
        }
        every.sort_unstable();
        every.dedup();
        every.into_iter().for_each(visit);
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// (field, literal) pairs one of which every match of `expr` contains, lower-cased.
fn anchors(expr: &Expr, d: &Detection) -> Option<Vec<(Field, String)>> {
    match expr {
        Expr::Selection(i) => {
            let mut out = Vec::new();
            for tests in &d.selections.get(*i)?.alternatives {
                // The test with the longest shortest literal is the most selective anchor.
                let best = tests
                    .iter()
                    .filter_map(test_anchors)
                    .max_by_key(|list| list.iter().map(|(_, l)| l.len()).min().unwrap_or(0))?;
                out.extend(best);
            }
            Some(out)
        }
        Expr::And(all) => all
            .iter()
            .filter_map(|e| anchors(e, d))
            .min_by_key(Vec::len),
        Expr::Or(any) => {
            let mut out = Vec::new();
            for e in any {
                out.extend(anchors(e, d)?);
            }
            Some(out)
        }
        Expr::Not(_) => None,
    }
}

fn test_anchors(test: &FieldTest) -> Option<Vec<(Field, String)>> {
    // With `all`, one value alone is necessary.
    let values = if test.all {
        test.values.get(..1)?
    } else {
        &test.values[..]
    };
    let mut out = Vec::new();
    for value in values {
        for matcher in value {
            let Matcher::Text { needle, .. } = matcher else {
                return None;
            };
            // NB: non-ASCII case folding can change a string's length and context (final
            // sigma), so only ASCII literals are trusted to occur in the lower-cased value.
            if needle.len() < MIN_ANCHOR || !needle.is_ascii() {
                return None;
            }
            out.push((test.field, needle.to_ascii_lowercase()));
        }
    }
    (!out.is_empty()).then_some(out)
}
