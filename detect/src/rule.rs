//! One Sigma rule document → a compiled [`Rule`] or an [`Unsupported`] entry. Owns the rule's
//! metadata (title, id, level, tags, ...), the log-source decision (what this engine can
//! match today) and the Vigil extension key `vigil:`.

use std::path::Path;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;
use vigil_proto::{Event, Level, RuleInfo};

use crate::category::Category;
use crate::correlation::Correlation;
use crate::detection::Detection;
use crate::document::{Document, Positions};
use crate::embedded::{self, TestCase};
use crate::error::{Location, RuleError};
use crate::field::EventView;
use crate::options::{self, RuleOptions};

/// Sigma's `logsource`: which kind of log a rule reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogSource {
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
}

impl LogSource {
    /// The category this engine compiles the log source as, or why it cannot.
    fn resolve(&self) -> Result<&'static Category, String> {
        if let Some(product) = self.product.as_deref() {
            if !product.eq_ignore_ascii_case("linux") {
                return Err(format!("product `{product}` (Vigil reads Linux hosts)"));
            }
        }
        match (self.category.as_deref(), self.service.as_deref()) {
            (Some(category), _) => Category::named(category).ok_or_else(|| {
                format!("category `{category}` has no Vigil event source")
            }),
            (None, Some(service)) => Err(format!(
                "service `{service}` (a log file or audit stream; Vigil reads the kernel directly)"
            )),
            (None, None) => Err(
                "product-only log source: keyword searches over system logs, which Vigil does not read"
                    .into(),
            ),
        }
    }
}

impl std::fmt::Display for LogSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            ("product", &self.product),
            ("category", &self.category),
            ("service", &self.service),
        ];
        let mut first = true;
        for (name, value) in parts {
            if let Some(value) = value {
                write!(f, "{}{name}={value}", if first { "" } else { " " })?;
                first = false;
            }
        }
        if first {
            f.write_str("(none)")?;
        }
        Ok(())
    }
}

/// A compiled, matchable rule.
#[derive(Debug)]
pub struct Rule {
    info: RuleInfo,
    origin: String,
    location: Location,
    status: Option<String>,
    logsource: LogSource,
    falsepositives: Vec<String>,
    /// Sigma's `name`: how correlation rules may refer to this rule besides its id.
    name: Option<String>,
    category: &'static Category,
    detection: Detection,
    options: RuleOptions,
    tests: Vec<TestCase>,
}

impl Rule {
    /// What an alert carries about this rule.
    pub fn info(&self) -> &RuleInfo {
        &self.info
    }

    /// The file the rule came from, or `<inline>`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Where the rule's document starts.
    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    pub fn logsource(&self) -> &LogSource {
        &self.logsource
    }

    pub fn falsepositives(&self) -> &[String] {
        &self.falsepositives
    }

    /// Sigma's optional `name`, used by correlation rules to refer to this rule.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The compiled log-source category: which event actions the rule reads.
    pub fn category(&self) -> &'static Category {
        self.category
    }

    /// The Vigil keys: action, dedup, output template.
    pub fn options(&self) -> &RuleOptions {
        &self.options
    }

    /// The alert text from `vigil.output`, or `None` when the rule has no template.
    pub fn render_output(&self, event: &Event) -> Option<String> {
        self.options.output.as_ref().map(|t| t.render(event))
    }

    pub(crate) fn detection(&self) -> &Detection {
        &self.detection
    }

    /// What of this rule the kernel can evaluate (see [`crate::RuleSet::kernel_filter`]).
    pub fn pushdown(&self) -> crate::RulePushdown {
        crate::pushdown::analyse(self)
    }

    /// How the rule's `kill` action is carried out; `None` for a rule that only alerts.
    pub fn kill_enforcement(&self) -> Option<crate::KillEnforcement> {
        crate::pushdown::kill_enforcement(self)
    }

    /// The rule's own test cases (`vigil.tests`).
    pub fn test_cases(&self) -> &[TestCase] {
        &self.tests
    }

    /// Whether the rule fires on `event`. Pure.
    pub fn matches(&self, event: &Event) -> bool {
        self.category.admits(event) && self.detection.matches(&EventView::new(event))
    }

    pub(crate) fn matches_view(&self, view: &EventView<'_>) -> bool {
        self.detection.matches(view)
    }
}

/// A rule that was read but not compiled, and why (another log source, a correlation rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The file the rule came from, or `<inline>`.
    pub origin: String,
    /// Where the rule's document starts.
    pub location: Location,
    pub id: String,
    pub title: String,
    pub logsource: LogSource,
    pub why: String,
}

pub(crate) enum Parsed {
    Rule(Box<Rule>),
    Correlation(Box<Correlation>),
    Unsupported(Unsupported),
}

pub(crate) fn from_document(doc: &Document<'_>) -> Result<Parsed, RuleError> {
    let pos = &doc.pos;
    let root_at = pos.at(&doc.root);
    let Some(map) = doc.root.as_mapping() else {
        return Err(RuleError::invalid(root_at, "a rule must be a mapping"));
    };
    if let Some((key, _)) = entry(map, "action") {
        return Err(RuleError::unsupported(
            pos.at_scalar(key),
            "rule collections (`action: global/reset/repeat`)",
        ));
    }
    let title = match entry(map, "title") {
        Some((key, node)) => required_text(key, node, pos)?,
        None => return Err(RuleError::invalid(root_at, "missing `title`")),
    };
    let id = match entry(map, "id") {
        Some((key, node)) => required_text(key, node, pos)?,
        None => default_id(pos.origin(), doc.index),
    };
    let logsource = match map.get_node("logsource") {
        Some(node) => logsource(node, pos)?,
        None => LogSource::default(),
    };
    let skip = |why: &str| {
        Ok(Parsed::Unsupported(Unsupported {
            origin: pos.origin().to_owned(),
            location: root_at.clone(),
            id: id.clone(),
            title: title.clone(),
            logsource: logsource.clone(),
            why: why.to_owned(),
        }))
    };
    // Valid Sigma documents of kinds this engine does not run: skipped, not errors.
    if map.contains_key("filter") && !map.contains_key("detection") {
        return skip("Sigma filter document");
    }
    let level = match entry(map, "level") {
        Some((key, node)) => level(key, node, pos)?,
        None => Level::Medium,
    };
    if let Some(node) = map.get_node("correlation") {
        let info = RuleInfo {
            id,
            title,
            level,
            tags: optional_list(map, "tags", pos)?,
            description: optional_text(map, "description", pos)?,
            author: optional_text(map, "author", pos)?,
        };
        let corr = crate::correlation::parse(node, info, root_at, pos)?;
        return Ok(Parsed::Correlation(Box::new(corr)));
    }
    let Some((detection_key, detection)) = entry(map, "detection") else {
        return Err(RuleError::invalid(root_at, "missing `detection`"));
    };
    if map.get_node("logsource").is_none() {
        return Err(RuleError::invalid(root_at, "missing `logsource`"));
    }
    let category = match logsource.resolve() {
        Ok(category) => category,
        Err(why) => return skip(&why),
    };
    let detection = Detection::compile(detection, pos.at_scalar(detection_key), pos)?;
    let (options, tests) = match map.get_node("vigil") {
        Some(node) => (
            options::parse(node, pos)?,
            embedded::parse_tests(node, category.actions[0], pos)?,
        ),
        None => (RuleOptions::default(), Vec::new()),
    };
    let info = RuleInfo {
        id,
        title,
        level,
        tags: optional_list(map, "tags", pos)?,
        description: optional_text(map, "description", pos)?,
        author: optional_text(map, "author", pos)?,
    };
    Ok(Parsed::Rule(Box::new(Rule {
        info,
        origin: pos.origin().to_owned(),
        location: root_at,
        status: optional_text(map, "status", pos)?,
        logsource,
        falsepositives: optional_list(map, "falsepositives", pos)?,
        name: optional_text(map, "name", pos)?,
        category,
        detection,
        options,
        tests,
    })))
}

/// Without an `id`, a rule is named after its file and its place in it.
fn default_id(origin: &str, index: usize) -> String {
    let stem = Path::new(origin)
        .file_stem()
        .map_or_else(|| origin.into(), |s| s.to_string_lossy());
    format!("{stem}-{index}")
}

fn entry<'m>(map: &'m MarkedMappingNode, name: &str) -> Option<(&'m MarkedScalarNode, &'m Node)> {
    map.iter().find(|(k, _)| k.as_str() == name)
}

/// Where to report a problem with a value: the value itself, or its key when the value is
/// empty (marked-yaml places an empty value at the *next* token, which misleads).
pub(crate) fn value_at(key: &MarkedScalarNode, node: &Node, pos: &Positions<'_>) -> Location {
    match node.as_scalar() {
        Some(s) if s.as_str().is_empty() => pos.at_scalar(key),
        _ => pos.at(node),
    }
}

fn required_text(
    key: &MarkedScalarNode,
    node: &Node,
    pos: &Positions<'_>,
) -> Result<String, RuleError> {
    match node.as_scalar().map(|s| s.as_str().trim()) {
        Some(text) if !text.is_empty() => Ok(text.to_owned()),
        _ => Err(RuleError::invalid(
            value_at(key, node, pos),
            format!("`{}` must be a non-empty string", key.as_str()),
        )),
    }
}

fn optional_text(
    map: &MarkedMappingNode,
    name: &str,
    pos: &Positions<'_>,
) -> Result<Option<String>, RuleError> {
    match map.get_node(name) {
        None => Ok(None),
        Some(Node::Scalar(s)) if s.may_coerce() && matches!(s.as_str(), "" | "~" | "null") => {
            Ok(None)
        }
        Some(Node::Scalar(s)) => Ok(Some(s.as_str().to_owned())),
        Some(node) => Err(RuleError::invalid(
            pos.at(node),
            format!("`{name}` must be a string"),
        )),
    }
}

/// A list of strings; a single string is accepted as a list of one.
fn optional_list(
    map: &MarkedMappingNode,
    name: &str,
    pos: &Positions<'_>,
) -> Result<Vec<String>, RuleError> {
    match map.get_node(name) {
        None => Ok(Vec::new()),
        Some(Node::Scalar(s)) if s.as_str().is_empty() => Ok(Vec::new()),
        Some(Node::Scalar(s)) => Ok(vec![s.as_str().to_owned()]),
        Some(Node::Sequence(items)) => items
            .iter()
            .map(|item| match item.as_scalar() {
                Some(s) => Ok(s.as_str().to_owned()),
                None => Err(RuleError::invalid(
                    pos.at(item),
                    format!("`{name}` must be a list of strings"),
                )),
            })
            .collect(),
        Some(node) => Err(RuleError::invalid(
            pos.at(node),
            format!("`{name}` must be a list of strings"),
        )),
    }
}

fn level(key: &MarkedScalarNode, node: &Node, pos: &Positions<'_>) -> Result<Level, RuleError> {
    let text = node.as_scalar().map(|s| s.as_str());
    match text {
        Some("informational") => Ok(Level::Informational),
        Some("low") => Ok(Level::Low),
        Some("medium") => Ok(Level::Medium),
        Some("high") => Ok(Level::High),
        Some("critical") => Ok(Level::Critical),
        _ => Err(RuleError::invalid(
            value_at(key, node, pos),
            format!(
                "bad level {:?}: expected informational, low, medium, high or critical",
                text.unwrap_or("(not a string)")
            ),
        )),
    }
}

fn logsource(node: &Node, pos: &Positions<'_>) -> Result<LogSource, RuleError> {
    let Some(map) = node.as_mapping() else {
        return Err(RuleError::invalid(
            pos.at(node),
            "`logsource` must be a mapping",
        ));
    };
    Ok(LogSource {
        product: optional_text(map, "product", pos)?,
        category: optional_text(map, "category", pos)?,
        service: optional_text(map, "service", pos)?,
    })
}
