//! The field map: which Sigma field names (and their ECS spellings) this engine knows, how
//! each is read from a [`vigil_proto::Event`], and a per-event cache so that a field read by
//! many rules is fetched and lower-cased once per event, not once per rule.

use std::borrow::Cow;
use std::cell::OnceCell;

use vigil_proto::{Event, UserRef};

/// A field a process_creation rule can test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
}

/// Sigma name, ECS name, field. The Sigma names are what SigmaHQ's Linux rules use; the ECS
/// names let Vigil's own rules say exactly which event field they mean.
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
];

impl Field {
    pub const COUNT: usize = 9;

    /// Looks a rule's field name up; `Err` carries a "did you mean" hint (possibly empty).
    pub fn from_name(name: &str) -> Result<Field, String> {
        if let Some((_, _, field)) = NAMES.iter().find(|(s, e, _)| *s == name || *e == name) {
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

    fn index(self) -> usize {
        self as usize
    }

    /// Reads the field; `None` when the event does not have it (no parent, no login uid,
    /// unknown working directory).
    fn read(self, event: &Event) -> Option<Cow<'_, str>> {
        let process = &event.process;
        let parent = process.parent.as_deref();
        match self {
            Field::Image => Some(Cow::Borrowed(&process.executable)),
            Field::CommandLine => Some(Cow::Borrowed(&process.command_line)),
            Field::ParentImage => parent.map(|p| Cow::Borrowed(p.executable.as_str())),
            Field::ParentCommandLine => parent.map(|p| Cow::Borrowed(p.command_line.as_str())),
            Field::User => Some(user_text(&process.user)),
            Field::CurrentDirectory => process.working_directory.as_deref().map(Cow::Borrowed),
            Field::ProcessId => Some(Cow::Owned(process.pid.to_string())),
            Field::ParentProcessId => parent.map(|p| Cow::Owned(p.pid.to_string())),
            Field::LogonId => event
                .audit_user
                .as_ref()
                .map(|u| Cow::Owned(u.id.to_string())),
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
    lower: [OnceCell<Option<String>>; Field::COUNT],
}

impl<'e> EventView<'e> {
    pub fn new(event: &'e Event) -> Self {
        Self {
            event,
            raw: Default::default(),
            lower: Default::default(),
        }
    }

    /// The field's value as captured.
    pub fn raw(&self, field: Field) -> Option<&str> {
        self.raw[field.index()]
            .get_or_init(|| field.read(self.event))
            .as_deref()
    }

    /// The field's value lower-cased, for Sigma's case-insensitive comparisons.
    pub fn lower(&self, field: Field) -> Option<&str> {
        self.lower[field.index()]
            .get_or_init(|| self.raw(field).map(str::to_lowercase))
            .as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table_is_in_enum_order() {
        for (i, (sigma, _, field)) in NAMES.iter().enumerate() {
            assert_eq!(field.index(), i, "NAMES[{i}] ({sigma}) is out of order");
        }
    }

    #[test]
    fn unknown_name_suggests_the_right_case() {
        assert_eq!(Field::from_name("CommandLine"), Ok(Field::CommandLine));
        assert_eq!(Field::from_name("process.executable"), Ok(Field::Image));
        assert_eq!(
            Field::from_name("commandline"),
            Err(" (did you mean `CommandLine`?)".to_owned())
        );
        assert_eq!(Field::from_name("TargetFilename"), Err(String::new()));
    }
}
