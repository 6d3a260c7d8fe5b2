//! Sigma correlation rules (`correlation:` documents): `event_count`, `value_count`,
//! `temporal` and `temporal_ordered` over the matches of other rules, grouped by fields
//! (`group-by`) within a sliding `timespan`. Evaluation is pure (time is passed in) and
//! bounded: at most `max_groups` groups per correlation and `max_entries` matches per group,
//! with what was dropped counted.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use marked_yaml::Node;
use vigil_proto::{Event, RuleInfo, Timestamp};

use crate::document::Positions;
use crate::error::{Location, RuleError};
use crate::field::Field;
use crate::options::parse_duration;
use crate::rule::Rule;

/// Which Sigma correlation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorrelationKind {
    /// The referenced rules matched at least N times in the timespan.
    EventCount,
    /// The referenced rules matched with at least N distinct values of a field.
    ValueCount,
    /// Every referenced rule matched within the timespan, in any order.
    Temporal,
    /// Every referenced rule matched within the timespan, in the order listed.
    TemporalOrdered,
}

impl CorrelationKind {
    /// The Sigma name, as written in `type:`.
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationKind::EventCount => "event_count",
            CorrelationKind::ValueCount => "value_count",
            CorrelationKind::Temporal => "temporal",
            CorrelationKind::TemporalOrdered => "temporal_ordered",
        }
    }
}

/// A compiled correlation rule.
#[derive(Clone, Debug)]
pub struct Correlation {
    info: RuleInfo,
    location: Location,
    kind: CorrelationKind,
    /// Rule ids or names, as written; resolved against the set by [`Correlation::resolve`].
    refs: Vec<(String, Location)>,
    /// The referenced rules' ids, in `rules:` order, once resolved.
    rule_ids: Vec<String>,
    group_by: Vec<Field>,
    timespan: Duration,
    /// Matches needed (`gte` N; `gt` N is stored as N + 1); 0 for temporal kinds.
    threshold: u64,
    value_field: Option<Field>,
}

impl Correlation {
    pub fn info(&self) -> &RuleInfo {
        &self.info
    }
    pub fn kind(&self) -> CorrelationKind {
        self.kind
    }
    pub fn timespan(&self) -> Duration {
        self.timespan
    }
    pub fn location(&self) -> &Location {
        &self.location
    }
    /// The referenced rules' ids, in the order of `rules:`.
    pub fn rule_ids(&self) -> &[String] {
        &self.rule_ids
    }

    /// Resolves `rules:` entries (ids or Sigma `name`s) against the loaded rules.
    pub(crate) fn resolve<'r>(
        &mut self,
        rules: impl Iterator<Item = &'r Rule> + Clone,
    ) -> Result<(), RuleError> {
        self.rule_ids.clear();
        for (reference, at) in &self.refs {
            let found = rules
                .clone()
                .find(|r| r.info().id == *reference || r.name() == Some(reference.as_str()))
                .ok_or_else(|| {
                    RuleError::invalid(
                        at.clone(),
                        format!("correlation refers to unknown rule `{reference}`"),
                    )
                })?;
            self.rule_ids.push(found.info().id.clone());
        }
        Ok(())
    }
}

pub(crate) fn parse(
    node: &Node,
    info: RuleInfo,
    location: Location,
    pos: &Positions<'_>,
) -> Result<Correlation, RuleError> {
    let Some(body) = node.as_mapping() else {
        return Err(RuleError::invalid(
            pos.at(node),
            "`correlation` must be a mapping",
        ));
    };
    let scalar = |name: &str| {
        body.get_node(name)
            .and_then(Node::as_scalar)
            .map(|s| s.as_str())
    };
    let kind = match scalar("type") {
        Some("event_count") => CorrelationKind::EventCount,
        Some("value_count") => CorrelationKind::ValueCount,
        Some("temporal") => CorrelationKind::Temporal,
        Some("temporal_ordered") => CorrelationKind::TemporalOrdered,
        Some(other) => {
            return Err(RuleError::unsupported(
                pos.at(body.get_node("type").unwrap_or(node)),
                format!("correlation type `{other}`"),
            ))
        }
        None => {
            return Err(RuleError::invalid(
                pos.at(node),
                "correlation needs a `type`",
            ))
        }
    };
    let refs: Vec<(String, Location)> = match body.get_node("rules") {
        Some(Node::Sequence(items)) if !items.is_empty() => items
            .iter()
            .map(|n| match n.as_scalar() {
                Some(s) => Ok((s.as_str().to_owned(), pos.at(n))),
                None => Err(RuleError::invalid(
                    pos.at(n),
                    "a correlated rule is an id or a name",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(Node::Scalar(s)) => vec![(s.as_str().to_owned(), pos.at_scalar(s))],
        _ => {
            return Err(RuleError::invalid(
                pos.at(node),
                "correlation needs `rules`",
            ))
        }
    };
    let group_by = match body.get_node("group-by") {
        None => Vec::new(),
        Some(n) => {
            let items: Vec<&Node> = match n {
                Node::Sequence(items) => items.iter().collect(),
                other => vec![other],
            };
            items
                .into_iter()
                .map(|item| {
                    let name = item.as_scalar().map(|s| s.as_str()).unwrap_or_default();
                    Field::from_name(name).map_err(|hint| RuleError::UnknownField {
                        at: pos.at(item),
                        field: name.to_owned(),
                        hint,
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    if body.get_node("aliases").is_some() {
        return Err(RuleError::unsupported(
            pos.at(node),
            "correlation `aliases`",
        ));
    }
    let timespan_node = body
        .get_node("timespan")
        .ok_or_else(|| RuleError::invalid(pos.at(node), "correlation needs a `timespan`"))?;
    let timespan = parse_duration(
        timespan_node
            .as_scalar()
            .map(|s| s.as_str())
            .unwrap_or_default(),
    )
    .map_err(|r| RuleError::invalid(pos.at(timespan_node), r))?;
    let (threshold, value_field) = condition(kind, body.get_node("condition"), node, pos)?;
    Ok(Correlation {
        info,
        location,
        kind,
        refs,
        rule_ids: Vec::new(),
        group_by,
        timespan,
        threshold,
        value_field,
    })
}

fn condition(
    kind: CorrelationKind,
    node: Option<&Node>,
    at: &Node,
    pos: &Positions<'_>,
) -> Result<(u64, Option<Field>), RuleError> {
    let counting = matches!(
        kind,
        CorrelationKind::EventCount | CorrelationKind::ValueCount
    );
    let Some(node) = node else {
        if counting {
            return Err(RuleError::invalid(
                pos.at(at),
                "a counting correlation needs a `condition`",
            ));
        }
        return Ok((0, None));
    };
    let Some(map) = node.as_mapping() else {
        return Err(RuleError::invalid(
            pos.at(node),
            "`condition` must be a mapping like {gte: 5}",
        ));
    };
    let mut threshold = None;
    let mut field = None;
    for (key, value) in map.iter() {
        let text = value.as_scalar().map(|s| s.as_str()).unwrap_or_default();
        let number = || {
            text.trim()
                .parse::<u64>()
                .map_err(|_| RuleError::invalid(pos.at(value), format!("{text:?} is not a count")))
        };
        match key.as_str() {
            "gte" => threshold = Some(number()?),
            "gt" => threshold = Some(number()?.saturating_add(1)),
            "field" => {
                field = Some(
                    Field::from_name(text).map_err(|hint| RuleError::UnknownField {
                        at: pos.at(value),
                        field: text.to_owned(),
                        hint,
                    })?,
                )
            }
            // A streaming engine can only say "at most N" once the window has passed.
            "lt" | "lte" | "eq" | "neq" => {
                return Err(RuleError::unsupported(
                    pos.at_scalar(key),
                    format!(
                        "correlation condition `{}` (only gt/gte are evaluated as events arrive)",
                        key.as_str()
                    ),
                ))
            }
            other => {
                return Err(RuleError::invalid(
                    pos.at_scalar(key),
                    format!("unknown condition key `{other}`"),
                ))
            }
        }
    }
    if kind == CorrelationKind::ValueCount && field.is_none() {
        return Err(RuleError::invalid(
            pos.at(node),
            "value_count needs `condition.field`",
        ));
    }
    let threshold = match (counting, threshold) {
        (true, None) => {
            return Err(RuleError::invalid(
                pos.at(node),
                "condition needs gt or gte",
            ))
        }
        (_, t) => t.unwrap_or(0),
    };
    Ok((threshold, field))
}

/// A correlation that fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationHit {
    pub correlation_id: String,
    pub title: String,
    /// The group-by values, joined by `\u{1f}`.
    pub group: String,
    /// Matches (event_count), distinct values (value_count) or rules (temporal) that made it fire.
    pub count: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

#[derive(Debug, Default)]
struct Group {
    /// (time, index of the rule in `rules:`, value of the value_count field).
    entries: VecDeque<(Timestamp, usize, Option<String>)>,
}

/// Correlation state of one rule set. Bounded: see [`CorrelationEngine::new`].
#[derive(Debug)]
pub struct CorrelationEngine {
    groups: Vec<HashMap<String, Group>>,
    max_groups: usize,
    max_entries: usize,
    /// Matches not recorded because a bound was hit.
    dropped: u64,
}

impl CorrelationEngine {
    /// `max_groups` groups per correlation, `max_entries` remembered matches per group.
    pub fn new(max_groups: usize, max_entries: usize) -> Self {
        Self {
            groups: Vec::new(),
            max_groups,
            max_entries,
            dropped: 0,
        }
    }

    /// Matches not recorded because a group or entry bound was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Feeds the rules that matched `event` (as from [`crate::RuleSet::matches`]); returns
    /// the correlations that fired. A group that fires starts over, so a burst raises once.
    pub fn observe(
        &mut self,
        correlations: &[Correlation],
        matched: &[&Rule],
        event: &Event,
        now: Timestamp,
    ) -> Vec<CorrelationHit> {
        if self.groups.len() < correlations.len() {
            self.groups.resize_with(correlations.len(), HashMap::new);
        }
        let mut hits = Vec::new();
        for (ci, corr) in correlations.iter().enumerate() {
            for rule in matched {
                let Some(ri) = corr.rule_ids.iter().position(|id| *id == rule.info().id) else {
                    continue;
                };
                if let Some(hit) = self.record(ci, corr, ri, event, now) {
                    hits.push(hit);
                }
            }
        }
        hits
    }

    fn record(
        &mut self,
        ci: usize,
        corr: &Correlation,
        ri: usize,
        event: &Event,
        now: Timestamp,
    ) -> Option<CorrelationHit> {
        let mut key = String::new();
        for (i, field) in corr.group_by.iter().enumerate() {
            if i > 0 {
                key.push('\u{1f}');
            }
            key.push_str(field.read(event).as_deref().unwrap_or_default());
        }
        let span = u64::try_from(corr.timespan.as_nanos()).unwrap_or(u64::MAX);
        let horizon = Timestamp::from_unix_nanos(now.unix_nanos().saturating_sub(span));
        let groups = self.groups.get_mut(ci)?;
        if !groups.contains_key(&key) && groups.len() >= self.max_groups {
            // Make room from groups whose every entry has left the window.
            groups.retain(|_, g| g.entries.back().is_some_and(|(t, _, _)| *t >= horizon));
            if groups.len() >= self.max_groups {
                self.dropped += 1;
                return None;
            }
        }
        let group = groups.entry(key.clone()).or_default();
        while group.entries.front().is_some_and(|(t, _, _)| *t < horizon) {
            group.entries.pop_front();
        }
        if group.entries.len() >= self.max_entries {
            group.entries.pop_front();
            self.dropped += 1;
        }
        let value = corr
            .value_field
            .and_then(|f| f.read(event).map(|v| v.into_owned()));
        group.entries.push_back((now, ri, value));

        let count = match corr.kind {
            CorrelationKind::EventCount => {
                let n = group.entries.len() as u64;
                (n >= corr.threshold).then_some(n)
            }
            CorrelationKind::ValueCount => {
                let mut values: Vec<&str> = group
                    .entries
                    .iter()
                    .filter_map(|(_, _, v)| v.as_deref())
                    .collect();
                values.sort_unstable();
                values.dedup();
                let n = values.len() as u64;
                (n >= corr.threshold).then_some(n)
            }
            CorrelationKind::Temporal => {
                let all =
                    (0..corr.rule_ids.len()).all(|r| group.entries.iter().any(|(_, e, _)| *e == r));
                all.then_some(corr.rule_ids.len() as u64)
            }
            CorrelationKind::TemporalOrdered => {
                // Greedy subsequence: rule 0, then rule 1 after it, and so on.
                let mut want = 0;
                for (_, e, _) in &group.entries {
                    if *e == want {
                        want += 1;
                        if want == corr.rule_ids.len() {
                            break;
                        }
                    }
                }
                (want == corr.rule_ids.len()).then_some(want as u64)
            }
        }?;
        let first_seen = group.entries.front().map_or(now, |(t, _, _)| *t);
        groups.remove(&key);
        Some(CorrelationHit {
            correlation_id: corr.info.id.clone(),
            title: corr.info.title.clone(),
            group: key,
            count,
            first_seen,
            last_seen: now,
        })
    }
}
