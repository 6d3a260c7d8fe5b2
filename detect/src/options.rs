//! The Vigil extension keys of a rule (`vigil:`; other Sigma tools ignore them): what to do
//! on a match (`action: alert|kill`), how to deduplicate (`dedup: {window, key}`) and how to
//! phrase the alert (`output`). `vigil.tests` is read by [`crate::embedded`].

use std::time::Duration;

use marked_yaml::Node;
use vigil_proto::Event;

use crate::document::Positions;
use crate::error::RuleError;
use crate::field::Field;

/// What the sensor does when the rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuleAction {
    /// Raise an alert (the default).
    #[default]
    Alert,
    /// Kill the process, then raise an alert saying so. Enforced in the kernel at exec when
    /// [`crate::RuleSet::kernel_filter`] lists the rule under `exec_kill`, else from userspace.
    Kill,
}

/// `vigil.dedup`: at most one alert per rule and key within `window`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupSpec {
    pub window: Duration,
    /// Fields whose values form the key (empty: one key for the whole rule).
    pub key: Vec<String>,
    pub(crate) fields: Vec<Field>,
}

impl DedupSpec {
    /// The dedup key of `event`: the key fields' values joined by `\u{1f}` (unit separator,
    /// which cannot appear in a path or command line the kernel reports as text).
    pub fn key_of(&self, event: &Event) -> String {
        let mut key = String::new();
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                key.push('\u{1f}');
            }
            if let Some(value) = field.read(event) {
                key.push_str(&value);
            }
        }
        key
    }
}

/// `vigil.output`: text with `{Field}` placeholders (Sigma or ECS names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputTemplate {
    source: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

impl OutputTemplate {
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text for `event`; a field the event lacks renders as `-`.
    pub fn render(&self, event: &Event) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => match f.read(event) {
                    Some(v) if !v.is_empty() => out.push_str(&v),
                    _ => out.push('-'),
                },
            }
        }
        out
    }

    fn parse(text: &str) -> Result<OutputTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| {
                format!("unclosed `{{` at byte {}", text.len() - rest.len() + open)
            })?;
            let name = after[..close].trim();
            let field = Field::from_name(name)
                .map_err(|hint| format!("unknown field `{name}` in output{hint}"))?;
            parts.push(Part::Field(field));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(OutputTemplate {
            source: text.to_owned(),
            parts,
        })
    }
}

/// Everything under `vigil:` except `tests`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleOptions {
    pub action: RuleAction,
    pub dedup: Option<DedupSpec>,
    pub output: Option<OutputTemplate>,
}

pub(crate) fn parse(node: &Node, pos: &Positions<'_>) -> Result<RuleOptions, RuleError> {
    let Some(map) = node.as_mapping() else {
        return Err(RuleError::invalid(
            pos.at(node),
            "`vigil` must be a mapping",
        ));
    };
    let mut options = RuleOptions::default();
    for (key, value) in map.iter() {
        let text = || {
            value.as_scalar().map(|s| s.as_str()).ok_or_else(|| {
                RuleError::invalid(
                    pos.at(value),
                    format!("`vigil.{}` must be a string", key.as_str()),
                )
            })
        };
        match key.as_str() {
            "tests" => {}
            "action" => {
                options.action = match text()? {
                    "alert" => RuleAction::Alert,
                    "kill" => RuleAction::Kill,
                    other => {
                        return Err(RuleError::invalid(
                            pos.at(value),
                            format!("bad action {other:?}: expected alert or kill"),
                        ))
                    }
                }
            }
            "output" => {
                options.output = Some(
                    OutputTemplate::parse(text()?)
                        .map_err(|reason| RuleError::invalid(pos.at(value), reason))?,
                )
            }
            "dedup" => options.dedup = Some(parse_dedup(value, pos)?),
            other => {
                return Err(RuleError::invalid(
                    pos.at_scalar(key),
                    format!(
                        "unknown key `vigil.{other}` (expected action, dedup, output or tests)"
                    ),
                ))
            }
        }
    }
    Ok(options)
}

fn parse_dedup(node: &Node, pos: &Positions<'_>) -> Result<DedupSpec, RuleError> {
    let Some(map) = node.as_mapping() else {
        return Err(RuleError::invalid(
            pos.at(node),
            "`vigil.dedup` must be a mapping with `window` and `key`",
        ));
    };
    let mut window = None;
    let mut key = Vec::new();
    let mut fields = Vec::new();
    for (name, value) in map.iter() {
        match name.as_str() {
            "window" => {
                let text = value.as_scalar().map(|s| s.as_str()).unwrap_or_default();
                window =
                    Some(parse_duration(text).map_err(|r| RuleError::invalid(pos.at(value), r))?);
            }
            "key" => {
                let items: Vec<&Node> = match value {
                    Node::Sequence(items) => items.iter().collect(),
                    other => vec![other],
                };
                for item in items {
                    let Some(s) = item.as_scalar() else {
                        return Err(RuleError::invalid(
                            pos.at(item),
                            "a dedup key is a field name",
                        ));
                    };
                    let field =
                        Field::from_name(s.as_str()).map_err(|hint| RuleError::UnknownField {
                            at: pos.at(item),
                            field: s.as_str().to_owned(),
                            hint,
                        })?;
                    key.push(s.as_str().to_owned());
                    fields.push(field);
                }
            }
            other => {
                return Err(RuleError::invalid(
                    pos.at_scalar(name),
                    format!("unknown key `vigil.dedup.{other}` (expected window or key)"),
                ))
            }
        }
    }
    let Some(window) = window else {
        return Err(RuleError::invalid(
            pos.at(node),
            "`vigil.dedup` needs a `window`",
        ));
    };
    Ok(DedupSpec {
        window,
        key,
        fields,
    })
}

/// Durations as rule authors write them: `500ms`, `30s`, `5m`, `2h`, `1d`; Sigma's
/// correlation `timespan` uses the same units.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: a duration needs a unit (ms, s, m, h, d)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if n == 0 {
        return Err(format!("{text:?}: a duration must be positive"));
    }
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "30", "s", "3x", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn output_template_renders_fields_and_dashes() {
        let t = OutputTemplate::parse("{Image} wrote {file.path} as {User}!").expect("valid");
        let mut event = Event::default();
        event.process.executable = "/bin/cp".into();
        event.process.user.name = Some("root".into());
        assert_eq!(t.render(&event), "/bin/cp wrote - as root!");
        assert!(OutputTemplate::parse("{Nope}").is_err(), "unknown field");
        assert!(OutputTemplate::parse("{Image").is_err(), "unclosed brace");
    }
}
