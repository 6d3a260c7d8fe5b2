//! The field map: which Sigma field names (and their ECS spellings) this engine knows, how
//! each is read from a [`vigil_proto::Event`], and a per-event cache so that a field read by
//! many rules is fetched and lower-cased once per event, not once per rule.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use vigil_proto::{Event, EventAction, UserRef};

/// A field a rule can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Field {
    Image,
    CommandLine,
    ParentImage,
    ParentCommandLine,
    User,
    CurrentDirectory,
    ProcessId,
    ParentProcessId,
    LogonId,
    ProcessName,
    ParentName,
    UserId,
    RealUser,
    ContainerId,
    Action,
    TargetFilename,
    FilePath,
    FileTargetPath,
    FileMode,
    FileFlags,
    DestinationIp,
    DestinationPort,
    DestinationHostname,
    SourceIp,
    SourcePort,
    Initiated,
    Protocol,
    NetworkDirection,
    NetworkType,
    QueryName,
    QueryType,
    QueryResults,
    TargetImage,
    TargetProcessId,
    Signal,
    PtraceRequest,
    ErrorCode,
    ErrorMessage,
    /// `details.<key>`: a kind-specific fact; the key is interned (see [`intern`]).
    Detail(&'static str),
}

/// Sigma name, ECS name, field. The Sigma names are what SigmaHQ's Linux rules use; the ECS
/// names let Vigil's own rules say exactly which event field they mean. Fields without a
/// Sigma name carry their ECS name twice.
const NAMES: [(&str, &str, Field); Field::COUNT] = [
    ("Image", "process.executable", Field::Image),
    ("CommandLine", "process.command_line", Field::CommandLine),
    (
        "ParentImage",
        "process.parent.executable",
        Field::ParentImage,
    ),
    (
        "ParentCommandLine",
        "process.parent.command_line",
        Field::ParentCommandLine,
    ),
    ("User", "process.user.name", Field::User),
    (
        "CurrentDirectory",
        "process.working_directory",
        Field::CurrentDirectory,
    ),
    ("ProcessId", "process.pid", Field::ProcessId),
    (
        "ParentProcessId",
        "process.parent.pid",
        Field::ParentProcessId,
    ),
    ("LogonId", "audit_user.id", Field::LogonId),
    ("process.name", "process.name", Field::ProcessName),
    (
        "process.parent.name",
        "process.parent.name",
        Field::ParentName,
    ),
    ("process.user.id", "process.user.id", Field::UserId),
    ("user.name", "user.name", Field::RealUser),
    ("container.id", "container.id", Field::ContainerId),
    ("event.action", "event.action", Field::Action),
    ("TargetFilename", "file.name_after", Field::TargetFilename),
    ("SourceFilename", "file.path", Field::FilePath),
    (
        "file.target_path",
        "file.target_path",
        Field::FileTargetPath,
    ),
    ("file.mode", "file.mode", Field::FileMode),
    ("file.flags", "file.flags", Field::FileFlags),
    ("DestinationIp", "destination.ip", Field::DestinationIp),
    (
        "DestinationPort",
        "destination.port",
        Field::DestinationPort,
    ),
    (
        "DestinationHostname",
        "destination.domain",
        Field::DestinationHostname,
    ),
    ("SourceIp", "source.ip", Field::SourceIp),
    ("SourcePort", "source.port", Field::SourcePort),
    ("Initiated", "network.initiated", Field::Initiated),
    ("Protocol", "network.transport", Field::Protocol),
    (
        "network.direction",
        "network.direction",
        Field::NetworkDirection,
    ),
    ("network.type", "network.type", Field::NetworkType),
    ("QueryName", "dns.question.name", Field::QueryName),
    ("QueryType", "dns.question.type", Field::QueryType),
    ("QueryResults", "dns.resolved_ip", Field::QueryResults),
    ("TargetImage", "target.executable", Field::TargetImage),
    ("TargetProcessId", "target.pid", Field::TargetProcessId),
    ("Signal", "target.signal", Field::Signal),
    (
        "PtraceRequest",
        "target.ptrace_request",
        Field::PtraceRequest,
    ),
    ("error.code", "error.code", Field::ErrorCode),
    ("error.message", "error.message", Field::ErrorMessage),
];

/// Field names rules may use but that name the same value twice (old spellings).
const ALIASES: [(&str, Field); 2] = [
    ("TargetFileName", Field::TargetFilename),
    ("DestinationHostName", Field::DestinationHostname),
];

/// `details.<key>` keys seen in rules, leaked once each so [`Field`] stays `Copy`. Bounded by
/// the distinct keys rule authors write, not by events or reloads.
fn intern(key: &str) -> &'static str {
    static KEYS: OnceLock<Mutex<BTreeSet<&'static str>>> = OnceLock::new();
    let keys = KEYS.get_or_init(Default::default);
    // NB: a poisoned lock only means another thread panicked mid-insert; the set is still valid.
    let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = keys.get(key) {
        return found;
    }
    let leaked: &'static str = Box::leak(key.to_owned().into_boxed_str());
    keys.insert(leaked);
    leaked
}

impl Field {
    /// Fields with a slot in the per-event cache (all but `Detail`).
    pub const COUNT: usize = 38;

    /// Looks a rule's field name up; `Err` carries a "did you mean" hint (possibly empty).
    pub fn from_name(name: &str) -> Result<Field, String> {
        if let Some(key) = name.strip_prefix("details.") {
            if !key.is_empty() {
                return Ok(Field::Detail(intern(key)));
            }
        }
        if let Some((_, _, field)) = NAMES.iter().find(|(s, e, _)| *s == name || *e == name) {
            return Ok(*field);
        }
        if let Some((_, field)) = ALIASES.iter().find(|(a, _)| *a == name) {
            return Ok(*field);
        }
        let hint = NAMES
            .iter()
            .find(|(s, e, _)| s.eq_ignore_ascii_case(name) || e.eq_ignore_ascii_case(name))
            .map(|(s, _, _)| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        Err(hint)
    }

    /// The Sigma names of every known field, for documentation and error messages.
    pub fn sigma_names() -> impl Iterator<Item = &'static str> {
        NAMES.iter().map(|(s, _, _)| *s)
    }

    /// The name a rule author would recognise, for explanations.
    pub fn name(self) -> &'static str {
        match self {
            Field::Detail(key) => key,
            other => NAMES[other.index().unwrap_or(0)].0,
        }
    }

    fn index(self) -> Option<usize> {
        match self {
            Field::Detail(_) => None,
            other => Some(match other {
                Field::Image => 0,
                Field::CommandLine => 1,
                Field::ParentImage => 2,
                Field::ParentCommandLine => 3,
                Field::User => 4,
                Field::CurrentDirectory => 5,
                Field::ProcessId => 6,
                Field::ParentProcessId => 7,
                Field::LogonId => 8,
                Field::ProcessName => 9,
                Field::ParentName => 10,
                Field::UserId => 11,
                Field::RealUser => 12,
                Field::ContainerId => 13,
                Field::Action => 14,
                Field::TargetFilename => 15,
                Field::FilePath => 16,
                Field::FileTargetPath => 17,
                Field::FileMode => 18,
                Field::FileFlags => 19,
                Field::DestinationIp => 20,
                Field::DestinationPort => 21,
                Field::DestinationHostname => 22,
                Field::SourceIp => 23,
                Field::SourcePort => 24,
                Field::Initiated => 25,
                Field::Protocol => 26,
                Field::NetworkDirection => 27,
                Field::NetworkType => 28,
                Field::QueryName => 29,
                Field::QueryType => 30,
                Field::QueryResults => 31,
                Field::TargetImage => 32,
                Field::TargetProcessId => 33,
                Field::Signal => 34,
                Field::PtraceRequest => 35,
                Field::ErrorCode => 36,
                Field::ErrorMessage => 37,
                Field::Detail(_) => return None,
            }),
        }
    }

    /// Reads the field; `None` when the event does not have it (no parent, no file, no
    /// login uid...).
    pub fn read(self, event: &Event) -> Option<Cow<'_, str>> {
        let process = &event.process;
        let parent = process.parent.as_deref();
        let file = event.file.as_ref();
        let dst = event.destination.as_ref();
        let src = event.source.as_ref();
        let net = event.network.as_ref();
        let dns = event.dns.as_ref();
        let target = event.target.as_ref();
        let b = Cow::Borrowed;
        fn num(n: impl ToString) -> Cow<'static, str> {
            Cow::Owned(n.to_string())
        }
        match self {
            Field::Image => Some(b(&process.executable)),
            Field::CommandLine => Some(b(&process.command_line)),
            Field::ParentImage => parent.map(|p| b(&p.executable)),
            Field::ParentCommandLine => parent.map(|p| b(&p.command_line)),
            Field::User => Some(user_text(&process.user)),
            Field::CurrentDirectory => process.working_directory.as_deref().map(b),
            Field::ProcessId => Some(num(process.pid)),
            Field::ParentProcessId => parent.map(|p| num(p.pid)),
            Field::LogonId => event.audit_user.as_ref().map(|u| num(u.id)),
            Field::ProcessName => Some(b(&process.name)),
            Field::ParentName => parent.map(|p| b(&p.name)),
            Field::UserId => Some(num(process.user.id)),
            Field::RealUser => Some(user_text(&event.user)),
            Field::ContainerId => event.container.as_ref().map(|c| b(&c.id)),
            Field::Action => Some(b(event.event.action.as_str())),
            // The name the file has once the action is done: a rename's or link's new name.
            Field::TargetFilename => file.map(|f| b(f.target_path.as_deref().unwrap_or(&f.path))),
            Field::FilePath => file.map(|f| b(&f.path)),
            Field::FileTargetPath => file.and_then(|f| f.target_path.as_deref()).map(b),
            Field::FileMode => file.and_then(|f| f.mode.as_deref()).map(b),
            Field::FileFlags => file.map(|f| Cow::Owned(f.flags.join(","))),
            Field::DestinationIp => dst.map(|d| b(&d.ip)),
            Field::DestinationPort => dst.map(|d| num(d.port)),
            Field::DestinationHostname => dst.and_then(|d| d.domain.as_deref()).map(b),
            Field::SourceIp => src.map(|s| b(&s.ip)),
            Field::SourcePort => src.map(|s| num(s.port)),
            Field::Initiated => match event.event.action {
                EventAction::Connect => Some(b("true")),
                EventAction::Accept => Some(b("false")),
                _ => None,
            },
            Field::Protocol => net.map(|n| b(&n.transport)),
            Field::NetworkDirection => net.map(|n| b(&n.direction)),
            Field::NetworkType => net.map(|n| b(&n.kind)),
            Field::QueryName => dns.map(|d| b(&d.question.name)),
            Field::QueryType => dns.map(|d| b(&d.question.kind)),
            Field::QueryResults => dns.map(|d| Cow::Owned(d.resolved_ip.join(";"))),
            Field::TargetImage => target.and_then(|t| t.executable.as_deref()).map(b),
            Field::TargetProcessId => target.map(|t| num(t.pid)),
            Field::Signal => target.and_then(|t| t.signal).map(num),
            Field::PtraceRequest => target.and_then(|t| t.ptrace_request).map(num),
            Field::ErrorCode => event.error.as_ref().map(|e| num(e.code)),
            Field::ErrorMessage => event.error.as_ref().map(|e| b(&e.message)),
            Field::Detail(key) => event.details.get(key).map(|v| b(v)),
        }
    }
}

/// A user as rules see it: the resolved name, or the numeric id when it did not resolve.
fn user_text(user: &UserRef) -> Cow<'_, str> {
    match &user.name {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(user.id.to_string()),
    }
}

/// One event as seen by the matcher, with field values fetched on first use.
pub(crate) struct EventView<'e> {
    event: &'e Event,
    raw: [OnceCell<Option<Cow<'e, str>>>; Field::COUNT],
    lower: [OnceCell<Option<Cow<'e, str>>>; Field::COUNT],
}

impl<'e> EventView<'e> {
    pub fn new(event: &'e Event) -> Self {
        Self {
            event,
            raw: std::array::from_fn(|_| OnceCell::new()),
            lower: std::array::from_fn(|_| OnceCell::new()),
        }
    }

    /// The field's value as captured.
    pub fn raw(&self, field: Field) -> Option<&str> {
        match field.index() {
            Some(i) => self.raw[i]
                .get_or_init(|| field.read(self.event))
                .as_deref(),
            // Details are borrowed straight from the event's map: nothing to cache.
            None => match field {
                Field::Detail(key) => self.event.details.get(key).map(String::as_str),
                _ => None,
            },
        }
    }

    /// The field's value lower-cased, for Sigma's case-insensitive comparisons. Values that
    /// are already lower case (most paths) are borrowed, not copied.
    pub fn lower(&self, field: Field) -> Option<Cow<'_, str>> {
        match field.index() {
            Some(i) => self.lower[i]
                .get_or_init(|| field.read(self.event).map(lowercase))
                .as_deref()
                .map(Cow::Borrowed),
            None => self.raw(field).map(|v| lowercase(Cow::Borrowed(v))),
        }
    }
}

fn lowercase(value: Cow<'_, str>) -> Cow<'_, str> {
    // Paths and command lines are nearly always ASCII: a byte scan, no char decoding.
    if value.is_ascii() {
        if value.bytes().any(|c| c.is_ascii_uppercase()) {
            return Cow::Owned(value.to_ascii_lowercase());
        }
        return value;
    }
    if value.chars().any(char::is_uppercase) {
        Cow::Owned(value.to_lowercase())
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table_covers_every_cached_field_once() {
        let mut seen = BTreeSet::new();
        for (i, (sigma, _, field)) in NAMES.into_iter().enumerate() {
            assert_eq!(
                field.index(),
                Some(i),
                "NAMES[{i}] ({sigma}) is out of order"
            );
            assert!(seen.insert(field), "NAMES lists {sigma} twice");
            assert!(field.index().is_some(), "{sigma} has a cache slot");
        }
        assert_eq!(seen.len(), Field::COUNT, "Field::COUNT matches NAMES");
    }

    #[test]
    fn unknown_name_suggests_the_right_case() {
        assert_eq!(Field::from_name("CommandLine"), Ok(Field::CommandLine));
        assert_eq!(Field::from_name("process.executable"), Ok(Field::Image));
        assert_eq!(
            Field::from_name("commandline"),
            Err(" (did you mean `CommandLine`?)".to_owned())
        );
        assert_eq!(
            Field::from_name("TargetFilename"),
            Ok(Field::TargetFilename)
        );
        assert_eq!(Field::from_name("details."), Err(String::new()));
        assert_eq!(
            Field::from_name("details.fstype"),
            Ok(Field::Detail("fstype"))
        );
        assert_eq!(Field::from_name("Nope"), Err(String::new()));
    }
}
