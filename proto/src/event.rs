//! ECS-shaped events and alerts: field names follow the Elastic Common Schema
//! (`process.executable`, `process.parent.command_line`, `user.name`, `host.name`, `rule.*`)
//! so that SIEMs and Sigma field mappings line up without translation tables.

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One enriched observation from a sensor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The file acted on (open, unlink, rename, chmod...; memfd name; module file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<File>,
    /// The remote end of a connect, or the peer of an accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    /// The local end of a bind, listen or accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// The process acted upon by ptrace, kill, process_vm_writev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// The syscall failed: its errno.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Kind-specific facts without an ECS home (new uid of a setuid, mount fs type, namespace
    /// flags, protection bits...), as text so that rules can match them like any field.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub details: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct File {
    pub path: String,
    /// Rename and link destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// Permission bits, octal text as ECS has it (`"0644"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Open flags, by name: read, write, create, truncate, append...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// SHA-256 of an executed file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Hash {
    pub sha256: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: String,
    pub port: u16,
    /// The name the process resolved to this address, when the sensor saw the lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// `tcp`, `udp`, or the socket type number as text.
    pub transport: String,
    /// `ipv4` or `ipv6`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `egress` (connect), `ingress` (accept), `listen` (bind/listen).
    pub direction: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    /// ECS `dns.type`: `query` (the process sent it) or `answer` (it received the response).
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The message id, which pairs a query with its answer.
    #[serde(default)]
    pub id: u16,
    /// Of an answer: `NOERROR`, `NXDOMAIN`, `SERVFAIL`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<String>,
    pub question: DnsQuestion,
    /// Addresses of the A and AAAA records of an answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved_ip: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsQuestion {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// kill: the signal; ptrace: the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ptrace_request: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// errno as a number.
    pub code: i32,
    /// errno by name (`EPERM`).
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    /// `event` for telemetry, `alert` for a rule match.
    pub kind: String,
    pub action: EventAction,
    /// Sensor-local, strictly increasing; lets consumers order events of one sensor.
    pub sequence: u64,
    /// Kernel boot-time clock at capture, in nanoseconds: comparable between events of one boot.
    pub boot_ns: u64,
}

/// What happened. Serialized names are stable: rules and stored data refer to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventAction {
    #[default]
    Exec,
    Fork,
    Exit,
    Open,
    Unlink,
    Rename,
    Chmod,
    Chown,
    Truncate,
    Link,
    Symlink,
    Mkdir,
    Rmdir,
    Utimes,
    Connect,
    Bind,
    Listen,
    Accept,
    DnsQuery,
    SetUid,
    SetGid,
    Capset,
    Ptrace,
    ProcessVmWrite,
    Kill,
    ModuleLoad,
    ModuleUnload,
    BpfLoad,
    Mount,
    Umount,
    Unshare,
    Setns,
    MemfdCreate,
    ExecMemory,
    IoUring,
    /// The kernel dropped records: `details` says how many, of which kind.
    Lost,
}

impl EventAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Exec => "exec",
            EventAction::Fork => "fork",
            EventAction::Exit => "exit",
            EventAction::Open => "open",
            EventAction::Unlink => "unlink",
            EventAction::Rename => "rename",
            EventAction::Chmod => "chmod",
            EventAction::Chown => "chown",
            EventAction::Truncate => "truncate",
            EventAction::Link => "link",
            EventAction::Symlink => "symlink",
            EventAction::Mkdir => "mkdir",
            EventAction::Rmdir => "rmdir",
            EventAction::Utimes => "utimes",
            EventAction::Connect => "connect",
            EventAction::Bind => "bind",
            EventAction::Listen => "listen",
            EventAction::Accept => "accept",
            EventAction::DnsQuery => "dns_query",
            EventAction::SetUid => "set_uid",
            EventAction::SetGid => "set_gid",
            EventAction::Capset => "capset",
            EventAction::Ptrace => "ptrace",
            EventAction::ProcessVmWrite => "process_vm_write",
            EventAction::Kill => "kill",
            EventAction::ModuleLoad => "module_load",
            EventAction::ModuleUnload => "module_unload",
            EventAction::BpfLoad => "bpf_load",
            EventAction::Mount => "mount",
            EventAction::Umount => "umount",
            EventAction::Unshare => "unshare",
            EventAction::Setns => "setns",
            EventAction::MemfdCreate => "memfd_create",
            EventAction::ExecMemory => "exec_memory",
            EventAction::IoUring => "io_uring",
            EventAction::Lost => "lost",
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
    /// Hash of the executable (exec events, when the sensor could read the file in time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Hash>,
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

/// A rule match: the rule plus the event that matched it, whole, and what the sensor knew and
/// did about it. Every part after `event` is optional on the wire, so older peers still read it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: RuleInfo,
    #[serde(flatten)]
    pub event: Event,
    /// The rule deduplicates (`vigil.dedup`): how many matches this alert stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupInfo>,
    /// The alert of a correlation rule: the group and matches that made it fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<CorrelationInfo>,
    /// What the sensor did to the process (the `kill` action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    /// The kernel lost records of the event's kind around the time of the match: context the
    /// rule or an analyst would want (a parent exec, a file write) may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossContext>,
}

impl Alert {
    /// An alert of `rule` on `event`, with nothing more known yet.
    pub fn new(rule: RuleInfo, event: Event) -> Alert {
        Alert {
            rule,
            event,
            dedup: None,
            correlation: None,
            response: None,
            loss: None,
        }
    }
}

/// Deduplication state carried by an alert. The first match of a key raises an alert with
/// `count` 1 at once; when the window closes with matches suppressed, a summary alert
/// (`summary: true`, carrying the last suppressed event) says how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupInfo {
    /// Every match of the key in the window, the raised one included.
    pub count: u64,
    /// Matches not raised on their own.
    pub suppressed: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// The values of `vigil.dedup.key`, joined by U+001F.
    pub key: String,
    /// This alert is the end-of-window "suppressed N" record, not a fresh match.
    #[serde(default)]
    pub summary: bool,
}

/// Why a correlation rule fired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrelationInfo {
    /// `event_count`, `value_count`, `temporal` or `temporal_ordered`.
    pub kind: String,
    /// The ids of the correlated rules.
    pub rules: Vec<String>,
    /// The `group-by` values, joined by U+001F.
    pub group: String,
    /// Matches, distinct values or rules that made it fire.
    pub count: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
}

/// What the sensor did about the process that matched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// `killed`, or `kill_failed` with `error`.
    pub action: String,
    /// `kernel` (SIGKILL at exec, before the first instruction) or `userspace` (after the match).
    pub by: String,
    /// Nanoseconds from the event to the kill; 0 when the kernel killed at exec.
    pub after_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Kernel record loss around an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossContext {
    /// Records lost, per kind, in the window the alert's event belongs to.
    pub lost: std::collections::BTreeMap<String, u64>,
}
