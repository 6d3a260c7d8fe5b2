//! ECS-shaped events and alerts: field names follow the Elastic Common Schema
//! (`process.executable`, `process.parent.command_line`, `user.name`, `host.name`, `rule.*`)
//! so that SIEMs and Sigma field mappings line up without translation tables.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One enriched observation from a sensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "@timestamp")]
    pub timestamp: Timestamp,
    pub event: EventMeta,
    pub host: Host,
    pub process: Process,
    /// The real user of the process (ECS `user.*`); the effective user is `process.user`.
    pub user: UserRef,
    /// The login (audit) uid: who logged in, whatever they became since. `None` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_user: Option<UserRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    /// `event` for telemetry, `alert` for a rule match.
    pub kind: String,
    pub action: EventAction,
    /// Sensor-local, strictly increasing; lets consumers order events of one sensor.
    pub sequence: u64,
    /// Kernel boot-time clock at capture, in nanoseconds: comparable between events of one boot.
    pub boot_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventAction {
    Exec,
    Fork,
    Exit,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Exec => "exec",
            EventAction::Fork => "fork",
            EventAction::Exit => "exit",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    /// /etc/machine-id: stable across reboots and renames.
    pub id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Unique per process for the life of the host (host, boot, pid, start time): survives PID reuse.
    pub entity_id: String,
    /// The kernel's `comm`: at most 15 bytes, what `ps` shows.
    pub name: String,
    pub executable: String,
    pub args: Vec<String>,
    /// True when the kernel's argv capture hit its bound and `args` is a prefix.
    #[serde(default)]
    pub args_truncated: bool,
    pub command_line: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_directory: Option<String>,
    pub start: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended the process, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// Effective user and group.
    pub user: UserRef,
    pub group: UserRef,
    pub real_group: UserRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<ParentProcess>>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParentProcess {
    pub pid: u32,
    pub entity_id: String,
    pub name: String,
    pub executable: String,
    pub args: Vec<String>,
    pub command_line: String,
    pub start: Timestamp,
}

/// A numeric id with the name it resolved to on the sensor's host, when it resolved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
}

/// Sigma levels, lowest first, so that `level >= Level::High` reads naturally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Informational => "informational",
            Level::Low => "low",
            Level::Medium => "medium",
            Level::High => "high",
            Level::Critical => "critical",
        }
    }
}

/// What an alert says about the rule that raised it (ECS `rule.*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub id: String,
    pub title: String,
    pub level: Level,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// A rule match: the rule plus the event that matched it, whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: RuleInfo,
    #[serde(flatten)]
    pub event: Event,
}
