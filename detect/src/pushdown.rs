//! What of a rule set the kernel can evaluate: which event actions any rule reads (the hooks
//! to attach), which paths a rule could possibly match (so other events never leave the
//! kernel), and which `kill` rules reduce to a test on the executable path alone (so the
//! kill can be enforced at exec, before the first instruction). The analysis is sound: a
//! pushed-down path set is a *necessary* condition of the rule (every match satisfies it),
//! and an exec kill is pushed only when the path test is also *sufficient*.

use std::collections::BTreeMap;

use vigil_proto::EventAction;

use crate::condition::Expr;
use crate::detection::{Detection, FieldTest};
use crate::field::Field;
use crate::matcher::{Matcher, TextOp};
use crate::options::RuleAction;
use crate::rule::Rule;

/// How a path is compared in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathMatch {
    /// The whole path.
    Exact,
    /// The path starts with the text.
    Prefix,
    /// The last path component equals the text.
    FileName,
}

/// One path test the kernel can run. `text` is lower-cased unless `cased`: Sigma compares
/// case-insensitively, so the kernel must fold ASCII case when `cased` is false.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathPattern {
    pub kind: PathMatch,
    pub text: String,
    pub cased: bool,
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            PathMatch::Exact => "path",
            PathMatch::Prefix => "prefix",
            PathMatch::FileName => "file name",
        };
        let case = if self.cased { "" } else { ", any case" };
        write!(f, "{kind} {:?}{case}", self.text)
    }
}

/// What one rule needs from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RulePushdown {
    /// The actions the rule's category reads.
    pub actions: &'static [EventAction],
    /// The path field the kernel can filter on for this category (`Image` for exec,
    /// `TargetFilename` for file categories), if any.
    pub path_field: Option<&'static str>,
    /// Paths every match has (one of them); `None` when the rule may match any path.
    pub paths: Option<Vec<PathPattern>>,
    /// For a `kill` rule whose whole condition is these path tests on the executable: the
    /// kernel can kill at exec. `None` otherwise (the kill, if any, runs from userspace).
    pub exec_kill: Option<Vec<PathPattern>>,
}

/// Per action: `None` means every event of the action is needed; otherwise only events
/// whose path matches one of the patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    pub actions: Vec<(EventAction, Option<Vec<PathPattern>>)>,
    /// Kill at exec: rule id and the executable paths that trigger it.
    pub exec_kill: Vec<ExecKill>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecKill {
    pub rule_id: String,
    pub patterns: Vec<PathPattern>,
}

/// How a `kill` rule's kill is carried out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KillEnforcement {
    /// The kernel kills at exec every process whose exec'd path passes one of these tests,
    /// before its first instruction. Any match the kernel misses (an exec'd path spelled
    /// differently from the test: relative, through a symbolic link, or in another case for
    /// an any-case pattern) is killed from userspace right after the match.
    Kernel(Vec<PathPattern>),
    /// Only these tests run in the kernel; matches of the others (file name tests, which the
    /// kernel's prefix lookup cannot evaluate) are killed from userspace after the match.
    Partial {
        kernel: Vec<PathPattern>,
        userspace: Vec<PathPattern>,
    },
    /// Killed from userspace after the match, for the reason given.
    Userspace(&'static str),
}

impl std::fmt::Display for KillEnforcement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |p: &[PathPattern]| {
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" | ")
        };
        match self {
            KillEnforcement::Kernel(p) => write!(
                f,
                "enforced in the kernel at exec, before the first instruction ({})",
                list(p)
            ),
            KillEnforcement::Partial { kernel, userspace } => write!(
                f,
                "in the kernel at exec for {}; from userspace after the match for {}",
                list(kernel),
                list(userspace)
            ),
            KillEnforcement::Userspace(why) => {
                write!(f, "from userspace after the match ({why})")
            }
        }
    }
}

impl PathPattern {
    /// Whether the kernel's exec kill lookup (longest prefix of the exec'd path) can run it.
    pub fn kernel_killable(&self) -> bool {
        matches!(self.kind, PathMatch::Exact | PathMatch::Prefix) && !self.text.is_empty()
    }
}

/// How `rule`'s kill is enforced; `None` when the rule does not kill.
pub(crate) fn kill_enforcement(rule: &Rule) -> Option<KillEnforcement> {
    if rule.options().action != RuleAction::Kill {
        return None;
    }
    if rule.category().name != "process_creation" {
        return Some(KillEnforcement::Userspace(
            "only process_creation rules can kill at exec",
        ));
    }
    let Some(patterns) = analyse(rule).exec_kill else {
        return Some(KillEnforcement::Userspace(
            "the condition tests more than the executable path (Image equals, startswith, endswith /name)",
        ));
    };
    let (kernel, userspace): (Vec<_>, Vec<_>) =
        patterns.into_iter().partition(PathPattern::kernel_killable);
    Some(match (kernel.is_empty(), userspace.is_empty()) {
        (_, true) => KillEnforcement::Kernel(kernel),
        (true, false) => KillEnforcement::Userspace(
            "file name tests (endswith /name) cannot be looked up by prefix in the kernel",
        ),
        (false, false) => KillEnforcement::Partial { kernel, userspace },
    })
}

impl KernelFilter {
    /// Whether `action` is needed at all.
    pub fn needs(&self, action: EventAction) -> bool {
        self.actions.iter().any(|(a, _)| *a == action)
    }
}

pub(crate) fn build<'a>(rules: impl Iterator<Item = &'a Rule>) -> KernelFilter {
    // Keyed by the action's name so the output order is stable.
    let mut per_action: BTreeMap<&'static str, (EventAction, Option<Vec<PathPattern>>)> =
        BTreeMap::new();
    let mut exec_kill = Vec::new();
    for rule in rules {
        let pd = analyse(rule);
        for action in pd.actions {
            let entry = per_action
                .entry(action.as_str())
                .or_insert_with(|| (*action, Some(Vec::new())));
            match (&mut entry.1, &pd.paths) {
                (Some(all), Some(paths)) => all.extend(paths.iter().cloned()),
                (slot, _) => *slot = None,
            }
        }
        if let Some(patterns) = pd.exec_kill {
            exec_kill.push(ExecKill {
                rule_id: rule.info().id.clone(),
                patterns,
            });
        }
    }
    let actions = per_action
        .into_values()
        .map(|(action, paths)| {
            let paths = paths.map(|mut p| {
                p.sort();
                p.dedup();
                p
            });
            (action, paths)
        })
        .collect();
    KernelFilter { actions, exec_kill }
}

/// The path field the kernel reports for a category, if it has one.
fn path_field(category: &str) -> Option<Field> {
    match category {
        "process_creation" | "fileless_exec" => Some(Field::Image),
        "file_event" | "file_access" | "file_change" | "file_delete" | "file_rename" => {
            Some(Field::TargetFilename)
        }
        _ => None,
    }
}

pub(crate) fn analyse(rule: &Rule) -> RulePushdown {
    let category = rule.category();
    let field = path_field(category.name);
    let detection = rule.detection();
    let paths = field.and_then(|f| necessary(&detection.condition, detection, f));
    let exec_kill = (rule.options().action == RuleAction::Kill
        && category.name == "process_creation")
        .then(|| sufficient(&detection.condition, detection))
        .flatten();
    RulePushdown {
        actions: category.actions,
        path_field: field.map(Field::name),
        paths,
        exec_kill,
    }
}

/// Path patterns one of which every event matching `expr` has, if there is such a set.
fn necessary(expr: &Expr, d: &Detection, field: Field) -> Option<Vec<PathPattern>> {
    match expr {
        Expr::Selection(i) => {
            let selection = d.selections.get(*i)?;
            let mut out = Vec::new();
            for tests in &selection.alternatives {
                // An alternative is constrained when one of its (AND-ed) tests is on the path.
                let constrained = tests
                    .iter()
                    .filter(|t| t.field == field)
                    .find_map(test_patterns)?;
                out.extend(constrained);
            }
            Some(out)
        }
        // Any constrained operand constrains the conjunction; take the narrowest.
        Expr::And(all) => all
            .iter()
            .filter_map(|e| necessary(e, d, field))
            .min_by_key(Vec::len),
        Expr::Or(any) => {
            let mut out = Vec::new();
            for e in any {
                out.extend(necessary(e, d, field)?);
            }
            Some(out)
        }
        Expr::Not(_) => None,
    }
}

/// The patterns of a test when every value is a path test the kernel can run.
fn test_patterns(test: &FieldTest) -> Option<Vec<PathPattern>> {
    // With `all`, every value must hold, so the first alone is a necessary condition.
    let values = if test.all {
        test.values.get(..1)?
    } else {
        &test.values[..]
    };
    let mut out = Vec::new();
    for value in values {
        for matcher in value {
            out.push(pattern(matcher)?);
        }
    }
    (!out.is_empty()).then_some(out)
}

fn pattern(matcher: &Matcher) -> Option<PathPattern> {
    let Matcher::Text { op, needle, cased } = matcher else {
        return None;
    };
    let (kind, text) = match op {
        TextOp::Equals => (PathMatch::Exact, needle.clone()),
        TextOp::StartsWith => (PathMatch::Prefix, needle.clone()),
        // `endswith: /name` is a file name test; other suffixes are not.
        TextOp::EndsWith => {
            let name = needle.strip_prefix('/')?;
            if name.is_empty() || name.contains('/') {
                return None;
            }
            (PathMatch::FileName, name.to_owned())
        }
        TextOp::Contains => return None,
    };
    Some(PathPattern {
        kind,
        text,
        cased: *cased,
    })
}

/// The executable patterns equivalent to the whole condition, when it is nothing but an OR
/// of selections each of which tests only `Image` with kernel-evaluable values.
fn sufficient(expr: &Expr, d: &Detection) -> Option<Vec<PathPattern>> {
    match expr {
        Expr::Selection(i) => {
            let mut out = Vec::new();
            for tests in &d.selections.get(*i)?.alternatives {
                let [test] = tests.as_slice() else {
                    return None;
                };
                if test.field != Field::Image || (test.all && test.values.len() > 1) {
                    return None;
                }
                out.extend(test_patterns(test)?);
            }
            Some(out)
        }
        Expr::Or(any) => {
            let mut out = Vec::new();
            for e in any {
                out.extend(sufficient(e, d)?);
            }
            Some(out)
        }
        Expr::And(_) | Expr::Not(_) => None,
    }
}
