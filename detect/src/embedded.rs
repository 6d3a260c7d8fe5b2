//! Rules that carry their own proof: the Vigil key `vigil.tests` lists events (as maps of
//! Sigma field → value) a rule must match and near-misses it must not. This module parses
//! those cases, builds [`Event`]s from them, and reports [`TestFailure`]s. Other keys under
//! `vigil:` (actions, dedup) are reserved for the sensor and ignored here.

use std::fmt;

use marked_yaml::Node;
use vigil_proto::{
    Container, Dns, Endpoint, Event, EventAction, EventMeta, File, Host, Network, ParentProcess,
    Process, Target, Timestamp, UserRef,
};

use crate::document::Positions;
use crate::error::{Location, RuleError};
use crate::field::Field;

/// One embedded test case of a rule.
#[derive(Clone, Debug)]
pub struct TestCase {
    expects_match: bool,
    location: Location,
    event: Event,
}

impl TestCase {
    /// `true` for a `match` case, `false` for a `no_match` case.
    pub fn expects_match(&self) -> bool {
        self.expects_match
    }

    /// Where the case is written.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The exec event the case describes.
    pub fn event(&self) -> &Event {
        &self.event
    }
}

/// A rule that did not do what its own test case says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestFailure {
    /// Where the failing case is written.
    pub at: Location,
    pub rule_id: String,
    pub rule_title: String,
    pub expected_match: bool,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expectation = if self.expected_match {
            "should match but did not"
        } else {
            "should not match but did"
        };
        write!(
            f,
            "{}: rule {} ({}): test case {expectation}",
            self.at, self.rule_id, self.rule_title
        )
    }
}

/// Why a field map cannot become an event.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The name is not a field rules can test.
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// A numeric field (`ProcessId`, `ParentProcessId`, `LogonId`, numeric `User`) got text.
    #[error("`{field}` must be a number, not {value:?}")]
    NotANumber { field: String, value: String },
    /// `event.action` names no [`EventAction`].
    #[error("unknown event action {value:?}")]
    UnknownAction { value: String },
}

/// Builds the exec event a set of Sigma fields describes, e.g. for `vigil rules test` or a
/// rule's embedded cases. Fields not given are empty (and the parent absent unless a
/// `Parent*` field is given).
pub fn sample_exec_event(fields: &[(&str, &str)]) -> Result<Event, SampleError> {
    sample_event(EventAction::Exec, fields)
}

/// Builds an event of kind `action` from Sigma (or ECS) field names and values. An
/// `event.action` field overrides `action`. Sections (file, destination, dns...) exist only
/// when one of their fields is given.
pub fn sample_event(action: EventAction, fields: &[(&str, &str)]) -> Result<Event, SampleError> {
    let mut event = Event {
        timestamp: Timestamp::default(),
        event: EventMeta {
            kind: "event".into(),
            action,
            sequence: 0,
            boot_ns: 0,
        },
        host: Host::default(),
        process: Process::default(),
        user: UserRef::default(),
        ..Default::default()
    };
    for (name, value) in fields {
        let field =
            Field::from_name(name).map_err(|_| SampleError::UnknownField((*name).to_owned()))?;
        set_field(&mut event, field, name, value)?;
    }
    Ok(event)
}

fn set_field(event: &mut Event, field: Field, name: &str, value: &str) -> Result<(), SampleError> {
    let number = || {
        value
            .trim()
            .parse::<u32>()
            .map_err(|_| SampleError::NotANumber {
                field: name.to_owned(),
                value: value.to_owned(),
            })
    };
    let int = || {
        value
            .trim()
            .parse::<i64>()
            .map_err(|_| SampleError::NotANumber {
                field: name.to_owned(),
                value: value.to_owned(),
            })
    };
    let text = value.to_owned();
    let process = &mut event.process;
    match field {
        Field::Image => {
            process.executable = text;
            process.name = comm_of(value);
        }
        Field::CommandLine => {
            process.command_line = text;
            process.args = value.split_whitespace().map(str::to_owned).collect();
        }
        Field::ParentImage => {
            let parent = parent(process);
            parent.executable = text;
            parent.name = comm_of(value);
        }
        Field::ParentCommandLine => {
            let parent = parent(process);
            parent.command_line = text;
            parent.args = value.split_whitespace().map(str::to_owned).collect();
        }
        Field::ParentProcessId => parent(process).pid = number()?,
        Field::ParentName => parent(process).name = text,
        Field::User => match value.parse::<u32>() {
            Ok(id) => process.user = UserRef { id, name: None },
            Err(_) => process.user.name = Some(text),
        },
        Field::UserId => process.user.id = number()?,
        Field::RealUser => event.user.name = Some(text),
        Field::CurrentDirectory => process.working_directory = Some(text),
        Field::ProcessId => process.pid = number()?,
        Field::ProcessName => process.name = text,
        Field::LogonId => {
            event.audit_user = Some(UserRef {
                id: number()?,
                name: None,
            })
        }
        Field::ContainerId => event.container = Some(Container { id: text }),
        Field::Action => {
            event.event.action = action_named(value).ok_or_else(|| SampleError::UnknownAction {
                value: text.clone(),
            })?
        }
        Field::TargetFilename | Field::FilePath => file(event).path = text,
        Field::FileTargetPath => file(event).target_path = Some(text),
        Field::FileMode => file(event).mode = Some(text),
        Field::FileFlags => {
            file(event).flags = value
                .split(',')
                .map(|f| f.trim().to_owned())
                .filter(|f| !f.is_empty())
                .collect()
        }
        Field::DestinationIp => endpoint(&mut event.destination).ip = text,
        Field::DestinationPort => endpoint(&mut event.destination).port = port(name, value)?,
        Field::DestinationHostname => endpoint(&mut event.destination).domain = Some(text),
        Field::SourceIp => endpoint(&mut event.source).ip = text,
        Field::SourcePort => endpoint(&mut event.source).port = port(name, value)?,
        Field::Initiated => {
            // Derived from the action when matching; a case sets it by choosing the action.
            event.event.action = if value.eq_ignore_ascii_case("true") {
                EventAction::Connect
            } else {
                EventAction::Accept
            };
        }
        Field::Protocol => network(event).transport = text,
        Field::NetworkDirection => network(event).direction = text,
        Field::NetworkType => network(event).kind = text,
        Field::QueryName => dns(event).question.name = text,
        Field::QueryType => dns(event).question.kind = text,
        Field::QueryResults => {
            dns(event).resolved_ip = value.split(';').map(|s| s.trim().to_owned()).collect()
        }
        Field::TargetImage => target(event).executable = Some(text),
        Field::TargetProcessId => target(event).pid = number()?,
        Field::Signal => {
            let signal = i32::try_from(int()?).map_err(|_| SampleError::NotANumber {
                field: name.to_owned(),
                value: text.clone(),
            })?;
            target(event).signal = Some(signal);
        }
        Field::PtraceRequest => target(event).ptrace_request = Some(int()?),
        Field::ErrorCode => {
            let code = i32::try_from(int()?).map_err(|_| SampleError::NotANumber {
                field: name.to_owned(),
                value: text.clone(),
            })?;
            event.error.get_or_insert_with(Default::default).code = code;
        }
        Field::ErrorMessage => event.error.get_or_insert_with(Default::default).message = text,
        Field::Detail(key) => {
            event.details.insert(key.to_owned(), text);
        }
    }
    Ok(())
}

fn parent(process: &mut Process) -> &mut ParentProcess {
    process
        .parent
        .get_or_insert_with(Box::<ParentProcess>::default)
}

fn file(event: &mut Event) -> &mut File {
    event.file.get_or_insert_with(Default::default)
}

fn endpoint(slot: &mut Option<Endpoint>) -> &mut Endpoint {
    slot.get_or_insert_with(Default::default)
}

fn network(event: &mut Event) -> &mut Network {
    event.network.get_or_insert_with(Default::default)
}

fn dns(event: &mut Event) -> &mut Dns {
    event.dns.get_or_insert_with(Default::default)
}

fn target(event: &mut Event) -> &mut Target {
    event.target.get_or_insert_with(Default::default)
}

fn port(name: &str, value: &str) -> Result<u16, SampleError> {
    value
        .trim()
        .parse::<u16>()
        .map_err(|_| SampleError::NotANumber {
            field: name.to_owned(),
            value: value.to_owned(),
        })
}

/// The [`EventAction`] whose serialized name is `name` (`exec`, `dns_query`, ...).
pub(crate) fn action_named(name: &str) -> Option<EventAction> {
    crate::category::ALL_ACTIONS
        .iter()
        .copied()
        .find(|a| a.as_str() == name)
}

/// The kernel's `comm` for an executable path: its base name cut to 15 bytes.
fn comm_of(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let mut end = base.len().min(15);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    base[..end].to_owned()
}

/// Parses `vigil.tests` of a rule; each case becomes an event of `action` (the first action
/// of the rule's category) unless the case names `event.action`.
pub(crate) fn parse_tests(
    node: &Node,
    action: EventAction,
    pos: &Positions<'_>,
) -> Result<Vec<TestCase>, RuleError> {
    let Some(map) = node.as_mapping() else {
        return Err(RuleError::invalid(
            pos.at(node),
            "`vigil` must be a mapping",
        ));
    };
    let Some(tests) = map.get_node("tests") else {
        return Ok(Vec::new());
    };
    let Some(tests) = tests.as_mapping() else {
        return Err(RuleError::invalid(
            pos.at(tests),
            "`vigil.tests` must be a mapping with `match` and/or `no_match`",
        ));
    };
    let mut cases = Vec::new();
    for (key, list) in tests.iter() {
        // NB: a misspelt key here would silently drop a rule's tests, so it is an error.
        let expects_match = match key.as_str() {
            "match" => true,
            "no_match" => false,
            other => {
                return Err(RuleError::invalid(
                    pos.at_scalar(key),
                    format!(
                        "unknown key `{other}` in `vigil.tests` (expected `match` or `no_match`)"
                    ),
                ))
            }
        };
        let Some(items) = list.as_sequence() else {
            return Err(RuleError::invalid(
                pos.at_scalar(key),
                format!("`{}` must be a list of field maps", key.as_str()),
            ));
        };
        for item in items.iter() {
            cases.push(parse_case(item, expects_match, action, pos)?);
        }
    }
    Ok(cases)
}

fn parse_case(
    item: &Node,
    expects_match: bool,
    action: EventAction,
    pos: &Positions<'_>,
) -> Result<TestCase, RuleError> {
    let location = pos.at(item);
    let Some(map) = item.as_mapping() else {
        return Err(RuleError::invalid(
            location,
            "a test case must be a map of field: value",
        ));
    };
    let mut fields = Vec::with_capacity(map.len());
    for (key, value) in map.iter() {
        let Some(value) = value.as_scalar() else {
            return Err(RuleError::invalid(
                pos.at(value),
                "a test field value must be a string",
            ));
        };
        // An unquoted null leaves the field out, so cases can say "no working directory".
        if value.may_coerce() && matches!(value.as_str(), "~" | "null") {
            continue;
        }
        if let Err(hint) = Field::from_name(key.as_str()) {
            return Err(RuleError::UnknownField {
                at: pos.at_scalar(key),
                field: key.as_str().to_owned(),
                hint,
            });
        }
        fields.push((key.as_str(), value.as_str()));
    }
    let event = sample_event(action, &fields)
        .map_err(|e| RuleError::invalid(location.clone(), e.to_string()))?;
    Ok(TestCase {
        expects_match,
        location,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_event_fills_the_mapped_fields() {
        let event = sample_exec_event(&[
            ("Image", "/usr/bin/averyveryverylongname"),
            ("CommandLine", "x  -a b"),
            ("ParentImage", "/bin/bash"),
            ("User", "0"),
            ("LogonId", "1000"),
        ])
        .expect("all fields are known");
        assert_eq!(event.process.name, "averyveryverylo");
        assert_eq!(event.process.args, vec!["x", "-a", "b"]);
        let parent = event
            .process
            .parent
            .as_deref()
            .expect("ParentImage makes a parent");
        assert_eq!(parent.executable, "/bin/bash");
        assert_eq!(event.process.user, UserRef { id: 0, name: None });
        assert_eq!(event.audit_user.map(|u| u.id), Some(1000));
    }

    #[test]
    fn sample_event_rejects_unknown_and_non_numeric_fields() {
        assert_eq!(
            sample_exec_event(&[("Nope", "x")]),
            Err(SampleError::UnknownField("Nope".into()))
        );
        assert!(
            matches!(
                sample_exec_event(&[("ProcessId", "abc")]),
                Err(SampleError::NotANumber { .. })
            ),
            "a pid must be numeric"
        );
    }
}
