//! A rule's `detection` block, compiled: named selections (maps of field tests, lists of such
//! maps, or keyword lists) plus the parsed `condition`. Every field name, modifier and value is
//! checked here, at load time, and errors carry the position of the node at fault.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use crate::condition::{self, ConditionErrorKind, Expr};
use crate::document::Positions;
use crate::error::{Location, RuleError};
use crate::field::{EventView, Field};
use crate::matcher::{self, Matcher, ValueError};
use crate::modifier::{split_key, Compare, ModifierError, Modifiers};

/// The field keywords are matched against: for process creation, the command line is the
/// only free text there is.
const KEYWORD_FIELD: Field = Field::CommandLine;

#[derive(Debug)]
pub(crate) struct Detection {
    pub(crate) selections: Vec<Selection>,
    pub(crate) condition: Expr,
}

/// Matches when any alternative matches (a list of maps is an OR of maps).
#[derive(Debug)]
pub(crate) struct Selection {
    pub(crate) alternatives: Vec<Vec<FieldTest>>,
}

/// One `Field|modifiers: values` entry. Each value is a set of matchers any of which may
/// match (several only for `|base64offset`); values combine with OR, or AND under `|all`.
#[derive(Debug)]
pub(crate) struct FieldTest {
    pub(crate) field: Field,
    pub(crate) values: Vec<Vec<Matcher>>,
    pub(crate) all: bool,
}

impl FieldTest {
    fn matches(&self, view: &EventView<'_>) -> bool {
        let value_matches =
            |value: &Vec<Matcher>| value.iter().any(|m| m.matches(view, self.field));
        if self.all {
            self.values.iter().all(value_matches)
        } else {
            self.values.iter().any(value_matches)
        }
    }
}

impl Detection {
    pub fn matches(&self, view: &EventView<'_>) -> bool {
        self.condition.eval(&mut |i| {
            self.selections.get(i).is_some_and(|s| {
                s.alternatives
                    .iter()
                    .any(|tests| tests.iter().all(|t| t.matches(view)))
            })
        })
    }

    /// Compiles the `detection` node; `at` is the location of the `detection` key.
    pub fn compile(node: &Node, at: Location, pos: &Positions<'_>) -> Result<Detection, RuleError> {
        let Some(map) = node.as_mapping() else {
            return Err(RuleError::invalid(
                pos.at(node),
                "`detection` must be a mapping",
            ));
        };
        let mut names = Vec::new();
        let mut selections = Vec::new();
        let mut condition = None;
        for (key, value) in map.iter() {
            match key.as_str() {
                "condition" => condition = Some((key, value)),
                "timeframe" => {
                    return Err(RuleError::unsupported(
                        pos.at_scalar(key),
                        "`timeframe` (aggregations)",
                    ))
                }
                name => {
                    names.push(name);
                    selections.push(compile_selection(key, value, pos)?);
                }
            }
        }
        let Some((key, value)) = condition else {
            return Err(RuleError::invalid(at, "`detection` has no `condition`"));
        };
        let condition = compile_condition(key, value, &names, pos)?;
        Ok(Detection {
            selections,
            condition,
        })
    }
}

fn compile_condition(
    key: &MarkedScalarNode,
    value: &Node,
    names: &[&str],
    pos: &Positions<'_>,
) -> Result<Expr, RuleError> {
    // A list of conditions is the deprecated spelling of their OR.
    let texts: Vec<&MarkedScalarNode> = match value {
        Node::Scalar(s) => vec![s],
        Node::Sequence(items) if !items.is_empty() => items
            .iter()
            .map(|n| {
                n.as_scalar()
                    .ok_or_else(|| RuleError::invalid(pos.at(n), "a condition must be a string"))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(RuleError::invalid(
                pos.at_scalar(key),
                "`condition` must be a string",
            ))
        }
    };
    let mut exprs = Vec::with_capacity(texts.len());
    for text in texts {
        if text.as_str().trim().is_empty() {
            return Err(RuleError::Condition {
                at: pos.at_scalar(key),
                reason: "empty condition".into(),
            });
        }
        let expr = condition::parse(text.as_str(), names).map_err(|e| {
            let at = pos.within(text, e.offset);
            match e.kind {
                ConditionErrorKind::Syntax(reason) => RuleError::Condition { at, reason },
                ConditionErrorKind::Undefined(name) => RuleError::UndefinedSelection { at, name },
                ConditionErrorKind::Unsupported(what) => RuleError::unsupported(at, what),
            }
        })?;
        exprs.push(expr);
    }
    Ok(if exprs.len() == 1 {
        exprs.swap_remove(0)
    } else {
        Expr::Or(exprs)
    })
}

fn compile_selection(
    key: &MarkedScalarNode,
    node: &Node,
    pos: &Positions<'_>,
) -> Result<Selection, RuleError> {
    let alternatives = match node {
        Node::Mapping(map) => vec![compile_map(map, pos)?],
        // A list holds maps (alternatives) and/or bare keywords (one OR-ed keyword test).
        Node::Sequence(items) if !items.is_empty() => {
            let mut alternatives = Vec::new();
            let mut keywords = Vec::new();
            for item in items.iter() {
                match item {
                    Node::Mapping(map) => alternatives.push(compile_map(map, pos)?),
                    Node::Scalar(s) => keywords.push(s),
                    Node::Sequence(_) => {
                        return Err(RuleError::invalid(
                            pos.at(item),
                            "a selection list holds maps or keywords, not lists",
                        ))
                    }
                }
            }
            if !keywords.is_empty() {
                let keyword_mods = keyword_modifiers();
                let values = keywords
                    .into_iter()
                    .map(|s| compile_value(s, &keyword_mods, pos))
                    .collect::<Result<_, _>>()?;
                alternatives.push(vec![FieldTest {
                    field: KEYWORD_FIELD,
                    values,
                    all: false,
                }]);
            }
            alternatives
        }
        Node::Scalar(s) if !s.as_str().is_empty() => {
            let value = compile_value(s, &keyword_modifiers(), pos)?;
            vec![vec![FieldTest {
                field: KEYWORD_FIELD,
                values: vec![value],
                all: false,
            }]]
        }
        _ => {
            return Err(RuleError::invalid(
                pos.at_scalar(key),
                format!(
                    "selection `{}` must be a map, a list of maps or a list of keywords",
                    key.as_str()
                ),
            ))
        }
    };
    Ok(Selection { alternatives })
}

/// Keywords are substrings of the free text (Sigma's full-text search).
fn keyword_modifiers() -> Modifiers {
    Modifiers::plain(Compare::Contains)
}

/// A map of field tests, all of which must hold.
fn compile_map(map: &MarkedMappingNode, pos: &Positions<'_>) -> Result<Vec<FieldTest>, RuleError> {
    if map.is_empty() {
        return Err(RuleError::invalid(pos.at_mapping(map), "empty selection"));
    }
    let mut tests = Vec::with_capacity(map.len());
    for (key, value) in map.iter() {
        let (name, modifier_names) = split_key(key.as_str());
        let names: Vec<&str> = modifier_names.iter().map(|(n, _)| *n).collect();
        let modifiers = Modifiers::parse(&names).map_err(|(i, e)| {
            let at = pos.within(key, modifier_names.get(i).map_or(0, |(_, offset)| *offset));
            match e {
                ModifierError::Unknown(modifier) => RuleError::UnknownModifier { at, modifier },
                ModifierError::Unsupported(feature) => RuleError::unsupported(at, feature),
                ModifierError::Conflict(reason) => RuleError::invalid(at, reason),
            }
        })?;
        // A key of only modifiers (`'|all': [...]`) is a keyword list with modifiers.
        let field = if name.is_empty() && !names.is_empty() {
            KEYWORD_FIELD
        } else {
            Field::from_name(name).map_err(|hint| RuleError::UnknownField {
                at: pos.at_scalar(key),
                field: name.to_owned(),
                hint,
            })?
        };
        // Keywords are substrings unless the key says how to compare.
        let modifiers = if name.is_empty() && modifiers.compare == Compare::Equals {
            Modifiers {
                compare: Compare::Contains,
                ..modifiers
            }
        } else {
            modifiers
        };
        let values = match value {
            Node::Scalar(s) => vec![compile_value_or_null(s, &modifiers, pos)?],
            Node::Sequence(items) if !items.is_empty() => items
                .iter()
                .map(|item| match item {
                    Node::Scalar(s) => compile_value_or_null(s, &modifiers, pos),
                    _ => Err(RuleError::invalid(pos.at(item), "expected a value")),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(RuleError::invalid(
                    pos.at_scalar(key),
                    format!("`{}` needs a value or a list of values", key.as_str()),
                ))
            }
        };
        tests.push(FieldTest {
            field,
            values,
            all: modifiers.all,
        });
    }
    Ok(tests)
}

/// YAML null (`~`, `null`, or nothing, unquoted) means "field absent or empty".
fn compile_value_or_null(
    scalar: &MarkedScalarNode,
    modifiers: &Modifiers,
    pos: &Positions<'_>,
) -> Result<Vec<Matcher>, RuleError> {
    let is_null =
        scalar.may_coerce() && matches!(scalar.as_str(), "" | "~" | "null" | "Null" | "NULL");
    if is_null {
        return matcher::compile(None, modifiers)
            .map_err(|e| value_error(e, pos.at_scalar(scalar)));
    }
    compile_value(scalar, modifiers, pos)
}

fn compile_value(
    scalar: &MarkedScalarNode,
    modifiers: &Modifiers,
    pos: &Positions<'_>,
) -> Result<Vec<Matcher>, RuleError> {
    matcher::compile(Some(scalar.as_str()), modifiers)
        .map_err(|e| value_error(e, pos.at_scalar(scalar)))
}

fn value_error(error: ValueError, at: Location) -> RuleError {
    match error {
        ValueError::Invalid(reason) => RuleError::invalid(at, reason),
        ValueError::Unsupported(feature) => RuleError::unsupported(at, feature),
        ValueError::Regex { pattern, source } => RuleError::Regex {
            at,
            pattern,
            source,
        },
    }
}
