//! Raw kernel events to ECS events: the one owner of the process table.
//!
//! The table maps a live tgid to what we know of that process (entity id, executable, argv,
//! working directory), seeded from /proc at start so processes older than the sensor have
//! ancestry, then kept current by fork, exec and exit records. Lookups that need the host
//! (working directory, cgroup, user names) go through [`SystemView`], so this module does no
//! I/O of its own and is tested with a fake host.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use vigil_proto::{
    Container, Event, EventAction, EventMeta, Host, ParentProcess, Process, Timestamp, UserRef,
};

use crate::decode::{RawEvent, Subject, SyscallEvent};
use crate::describe::{describe, Described, PathResolver, AT_FDCWD};
use crate::dns::ResolvedNames;

fn is_file_kind(record_kind: u32) -> bool {
    (vigil_common::kind::OPEN..=vigil_common::kind::UTIMES).contains(&record_kind)
}

/// Resolves a syscall's path arguments the way the kernel did, as well as /proc still can.
struct ProcessPaths<'a, V> {
    view: &'a V,
    pid: u32,
    known_cwd: Option<String>,
}

impl<V: SystemView> PathResolver for ProcessPaths<'_, V> {
    fn resolve(&self, dirfd: i32, path: Option<&str>) -> Option<String> {
        match path {
            Some(p) if p.starts_with('/') => Some(p.to_owned()),
            Some(p) => {
                let base = if dirfd == AT_FDCWD {
                    self.view
                        .working_directory(self.pid)
                        .or_else(|| self.known_cwd.clone())
                } else {
                    self.view.fd_path(self.pid, dirfd)
                };
                Some(match base {
                    Some(base) => format!("{}/{}", base.trim_end_matches('/'), p),
                    None => p.to_owned(),
                })
            }
            None => self.view.fd_path(self.pid, dirfd),
        }
    }
}

/// What enrichment asks of the host. `pid` is a tgid that may already be gone: every answer is
/// optional.
pub trait SystemView {
    fn working_directory(&self, pid: u32) -> Option<String>;
    fn executable(&self, pid: u32) -> Option<String>;
    fn cgroup_path(&self, pid: u32) -> Option<String>;
    fn user_name(&self, uid: u32) -> Option<String>;
    fn group_name(&self, gid: u32) -> Option<String>;
    /// What a process's file descriptor refers to.
    fn fd_path(&self, pid: u32, fd: i32) -> Option<String>;
}

/// Converts kernel boot-time stamps to wall-clock time, and names the host.
#[derive(Clone, Debug)]
pub struct HostContext {
    pub host: Host,
    /// Boot id: keeps entity ids unique across reboots that reuse (pid, start time).
    pub boot_id: String,
    /// Unix time in ns at boot: wall = boot_unix_ns + boot_ns.
    pub boot_unix_ns: u64,
    /// Kernel clock ticks per second, the unit of /proc/PID/stat start times.
    pub clock_ticks_per_sec: u64,
}

impl HostContext {
    fn wall(&self, boot_ns: u64) -> Timestamp {
        Timestamp(self.boot_unix_ns.saturating_add(boot_ns))
    }

    /// Entity ids are derived from start times at /proc's tick resolution, so a process seeded
    /// from /proc and the same process seen by the kernel get the same id.
    pub fn entity_id(&self, tgid: u32, start_boot_ns: u64) -> String {
        let ticks = start_boot_ns / (1_000_000_000 / self.clock_ticks_per_sec.max(1));
        let mut hash = Sha256::new();
        hash.update(self.host.id.as_bytes());
        hash.update(self.boot_id.as_bytes());
        hash.update(tgid.to_le_bytes());
        hash.update(ticks.to_le_bytes());
        let digest = hash.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Detail of an exec event whose process the kernel killed at exec (a `kill` rule's path).
pub const KILLED_DETAIL: &str = "vigil.killed";

/// What the table remembers of one live process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub tgid: u32,
    pub ppid: u32,
    pub start_boot_ns: u64,
    pub entity_id: String,
    pub name: String,
    pub executable: String,
    pub args: Vec<String>,
    pub working_directory: Option<String>,
    /// The effective uid last seen (exec, fork, a syscall record, a setuid's new id), so that
    /// an exec that changes it (a setuid binary) says so. `None` when unknown.
    pub euid: Option<u32>,
}

impl ProcessInfo {
    fn as_parent(&self, ctx: &HostContext) -> ParentProcess {
        ParentProcess {
            pid: self.tgid,
            entity_id: self.entity_id.clone(),
            name: self.name.clone(),
            executable: self.executable.clone(),
            args: self.args.clone(),
            command_line: command_line(&self.args),
            start: ctx.wall(self.start_boot_ns),
        }
    }
}

pub struct Enricher<V> {
    ctx: HostContext,
    view: V,
    table: HashMap<u32, ProcessInfo>,
    sequence: u64,
    /// Watched prefixes for file events: the kernel filters absolute paths, this filters the
    /// relative ones once resolved. `None`: every path.
    file_prefixes: Option<Vec<String>>,
    /// DNS answers seen, so that connects to answered addresses carry the name.
    names: ResolvedNames,
    /// Files the kernel reported opened, per tgid by fd: names the file of an io_uring request
    /// when the process is already gone from /proc. Forgotten at exit; bounded.
    open_files: HashMap<u32, HashMap<i32, String>>,
    /// Container of each cgroup seen, by the kernel's cgroup id: reading /proc/PID/cgroup for
    /// every event was three syscalls and a parse per event. A cgroup id names one cgroup
    /// (its directory's inode) for as long as it exists, so its container never changes.
    containers: HashMap<u64, Option<Container>>,
}

/// Open files remembered per process, and processes with remembered files, at most.
const OPEN_FILES_PER_PROCESS: usize = 256;
const OPEN_FILES_PROCESSES: usize = 8192;
/// Cgroups remembered before the container cache starts over (a host has far fewer live).
const CONTAINER_CACHE: usize = 4096;

impl<V: SystemView> Enricher<V> {
    pub fn new(ctx: HostContext, view: V) -> Self {
        Self {
            ctx,
            view,
            table: HashMap::new(),
            sequence: 0,
            file_prefixes: None,
            names: ResolvedNames::default(),
            open_files: HashMap::new(),
            containers: HashMap::new(),
        }
    }

    /// Replaces the watched prefixes (after a rule reload).
    pub fn set_file_prefixes(&mut self, prefixes: Option<Vec<String>>) {
        self.file_prefixes = prefixes;
    }

    pub fn with_file_prefixes(mut self, prefixes: Option<Vec<String>>) -> Self {
        self.file_prefixes = prefixes;
        self
    }

    /// Adds a process known before the kernel programs started (from /proc).
    pub fn seed(&mut self, info: ProcessInfo) {
        self.table.insert(info.tgid, info);
    }

    pub fn context(&self) -> &HostContext {
        &self.ctx
    }

    pub fn process(&self, tgid: u32) -> Option<&ProcessInfo> {
        self.table.get(&tgid)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Updates the table and produces the event the record describes; `None` when the record
    /// turns out to be of no interest (a relative path outside the watched prefixes, a
    /// non-IP socket).
    pub fn enrich(&mut self, raw: RawEvent) -> Option<Event> {
        Some(match raw {
            RawEvent::Exec {
                subject,
                filename,
                args,
                args_truncated,
                killed_at_exec,
            } => {
                let mut event = self.exec(subject, filename, args, args_truncated);
                if killed_at_exec {
                    event
                        .details
                        .insert(KILLED_DETAIL.to_owned(), "kernel".to_owned());
                }
                event
            }
            RawEvent::Fork { child } => self.fork(child),
            RawEvent::Exit { subject, status } => self.exit(subject, status),
            RawEvent::Syscall(syscall) => return self.syscall(&syscall),
        })
    }

    fn syscall(&mut self, syscall: &SyscallEvent) -> Option<Event> {
        let pid = syscall.subject.tgid;
        let paths = ProcessPaths {
            view: &self.view,
            pid,
            known_cwd: self
                .table
                .get(&pid)
                .and_then(|p| p.working_directory.clone()),
        };
        let described = describe(syscall, &paths)?;
        if let (Some(prefixes), Some(file)) = (&self.file_prefixes, &described.file) {
            // The kernel sees relative paths unresolved, and compares only the first
            // PREFIX_KEY_LEN bytes of absolute ones: both are checked again here.
            let relative = syscall.strings[0]
                .as_deref()
                .is_some_and(|p| !p.starts_with('/') || p.len() >= vigil_common::PREFIX_KEY_LEN);
            if relative
                && is_file_kind(syscall.kind)
                && !prefixes.iter().any(|p| file.path.starts_with(p.as_str()))
            {
                return None;
            }
        }
        // NB: built from the table's entry in place (not a clone of it): most records are
        // syscalls of known processes, and a clone was a copy of argv per record.
        self.sequence += 1;
        let sequence = self.sequence;
        let container = self.container(&syscall.subject);
        let mut event = match self.table.get(&pid) {
            Some(info) => self.build_event(
                described.action,
                &syscall.subject,
                info,
                sequence,
                container,
            ),
            None => {
                let info = self.unknown(&syscall.subject);
                self.build_event(
                    described.action,
                    &syscall.subject,
                    &info,
                    sequence,
                    container,
                )
            }
        };
        let Described {
            action,
            mut file,
            mut destination,
            source,
            network,
            dns,
            mut target,
            error,
            details,
        } = described;
        let now = syscall.subject.boot_ns;
        if let Some(known) = self.table.get_mut(&pid) {
            // Credential records carry the ids from before the call; their details, after.
            known.euid = match action {
                EventAction::SetUid if syscall.ret >= 0 => details
                    .get("uid.effective")
                    .or_else(|| details.get("uid.new"))
                    .and_then(|u| u.parse().ok())
                    .or(known.euid),
                EventAction::SetUid | EventAction::SetGid | EventAction::Capset => known.euid,
                _ => Some(syscall.subject.euid),
            };
        }
        match (action, &mut destination, &mut file) {
            (EventAction::Connect, Some(endpoint), _) => {
                if let Ok(ip) = endpoint.ip.parse() {
                    endpoint.domain = self.names.lookup(pid, ip, now).map(str::to_owned);
                }
            }
            (EventAction::Open, _, Some(f)) if syscall.ret >= 0 && !f.path.is_empty() => {
                self.remember_open(pid, syscall.ret as i32, &f.path);
            }
            (EventAction::IoUring, _, Some(f)) if f.path.is_empty() => {
                let fd = details
                    .get("io_uring.fd")
                    .and_then(|fd| fd.parse::<i32>().ok());
                let own = self.open_files.get(&pid);
                if let Some(known) = fd.and_then(|fd| own?.get(&fd)) {
                    f.path = known.clone();
                }
            }
            _ => {}
        }
        if let Some(answer) = dns.as_ref().filter(|d| d.kind == "answer") {
            for ip in &answer.resolved_ip {
                if let Ok(ip) = ip.parse() {
                    self.names.record(pid, ip, &answer.question.name, now);
                }
            }
        }
        if let Some(file) = file.as_mut() {
            if syscall.truncated {
                file.flags.push("path_truncated".into());
            }
        }
        if let Some(target) = target.as_mut() {
            if let Some(known) = self.table.get(&target.pid) {
                target.executable = Some(known.executable.clone());
                target.entity_id = Some(known.entity_id.clone());
            }
        }
        event.file = file;
        event.destination = destination;
        event.source = source;
        event.network = network;
        event.dns = dns;
        event.target = target;
        event.error = error;
        event.details = details;
        Some(event)
    }

    /// Remembers what a process's fd names, within the bounds.
    fn remember_open(&mut self, pid: u32, fd: i32, path: &str) {
        if self.open_files.len() >= OPEN_FILES_PROCESSES && !self.open_files.contains_key(&pid) {
            return;
        }
        let own = self.open_files.entry(pid).or_default();
        if own.len() < OPEN_FILES_PER_PROCESS || own.contains_key(&fd) {
            own.insert(fd, path.to_owned());
        }
    }

    /// The in-band record of kernel loss: `lost` records of `record_kind` did not fit in the ring
    /// buffer since the last report. Rules and the collector see it like any event.
    pub fn loss_event(&mut self, record_kind: &str, lost: u64, now: Timestamp) -> Event {
        self.sequence += 1;
        let mut details = std::collections::BTreeMap::new();
        details.insert("lost.kind".to_owned(), record_kind.to_owned());
        details.insert("lost.records".to_owned(), lost.to_string());
        Event {
            timestamp: now,
            event: EventMeta {
                kind: "event".into(),
                action: EventAction::Lost,
                sequence: self.sequence,
                boot_ns: 0,
            },
            host: self.ctx.host.clone(),
            details,
            ..Event::default()
        }
    }

    /// A process the table does not know (it started and exec'd while records were lost).
    fn unknown(&self, subject: &Subject) -> ProcessInfo {
        ProcessInfo {
            tgid: subject.tgid,
            ppid: subject.ppid,
            start_boot_ns: subject.start_boot_ns,
            entity_id: self.ctx.entity_id(subject.tgid, subject.start_boot_ns),
            name: subject.comm.clone(),
            executable: self.view.executable(subject.tgid).unwrap_or_default(),
            args: Vec::new(),
            working_directory: None,
            euid: Some(subject.euid),
        }
    }

    fn exec(
        &mut self,
        subject: Subject,
        filename: String,
        args: Vec<String>,
        args_truncated: bool,
    ) -> Event {
        let pid = subject.tgid;
        let working_directory = self.view.working_directory(pid).or_else(|| {
            self.table
                .get(&pid)
                .and_then(|p| p.working_directory.clone())
        });
        // execveat(fd, "", AT_EMPTY_PATH) reports /dev/fd/N: the kernel's link names the
        // image itself ("/memfd:name (deleted)" for fileless execution).
        let via_fd = filename.starts_with("/dev/fd/") || filename.starts_with("/proc/self/fd/");
        let executable = if via_fd {
            self.view.executable(pid).unwrap_or(filename)
        } else if filename.starts_with('/') {
            filename
        } else {
            // A relative exec path: the kernel's own answer if the process still runs, else
            // the path against its working directory.
            self.view
                .executable(pid)
                .unwrap_or_else(|| match &working_directory {
                    Some(cwd) => format!("{}/{}", cwd.trim_end_matches('/'), filename),
                    None => filename,
                })
        };
        let previous_euid = self.table.get(&pid).and_then(|p| p.euid);
        let info = ProcessInfo {
            tgid: pid,
            ppid: subject.ppid,
            start_boot_ns: subject.start_boot_ns,
            entity_id: self.ctx.entity_id(pid, subject.start_boot_ns),
            name: subject.comm.clone(),
            executable,
            args,
            working_directory,
            euid: Some(subject.euid),
        };
        self.table.insert(pid, info.clone());
        let mut event = self.event(EventAction::Exec, &subject, &info);
        event.process.args_truncated = args_truncated;
        // A set-user-ID image (or file capabilities) changed who the process acts as. The table
        // knows the euid from the process's last record, but not always the one it ran as just
        // before the exec: the setuid family is attached only when a rule or setting reads it
        // (`capture_kinds`), and a process can start while records are lost. An effective uid
        // that differs from the real one right after exec is then the sign, with the real uid
        // as the one it acted as before.
        let previous_euid = previous_euid
            .filter(|p| *p != subject.euid)
            .or_else(|| (subject.uid != subject.euid).then_some(subject.uid));
        if let Some(previous) = previous_euid {
            event
                .details
                .insert("exec.euid_changed".into(), "true".into());
            event
                .details
                .insert("exec.previous_euid".into(), previous.to_string());
        }
        event
    }

    fn fork(&mut self, child: Subject) -> Event {
        let inherited = self.table.get(&child.ppid).cloned();
        let info = ProcessInfo {
            tgid: child.tgid,
            ppid: child.ppid,
            start_boot_ns: child.start_boot_ns,
            entity_id: self.ctx.entity_id(child.tgid, child.start_boot_ns),
            name: child.comm.clone(),
            executable: inherited
                .as_ref()
                .map(|p| p.executable.clone())
                .unwrap_or_default(),
            args: inherited
                .as_ref()
                .map(|p| p.args.clone())
                .unwrap_or_default(),
            working_directory: inherited.and_then(|p| p.working_directory),
            euid: Some(child.euid),
        };
        self.table.insert(child.tgid, info.clone());
        self.event(EventAction::Fork, &child, &info)
    }

    fn exit(&mut self, subject: Subject, status: u32) -> Event {
        self.names.forget_process(subject.tgid);
        // Records reach this stage in time order (see `crate::merge`): the exiting leader's
        // io_uring requests, stamped at submission and completed or cancelled early in
        // do_exit (io_uring_files_cancel waits for them), came before its exit. NB: requests of
        // another thread still in flight when the leader exits come after, without a file name.
        self.open_files.remove(&subject.tgid);
        let info = self
            .table
            .remove(&subject.tgid)
            .unwrap_or_else(|| ProcessInfo {
                tgid: subject.tgid,
                ppid: subject.ppid,
                start_boot_ns: subject.start_boot_ns,
                entity_id: self.ctx.entity_id(subject.tgid, subject.start_boot_ns),
                name: subject.comm.clone(),
                executable: String::new(),
                args: Vec::new(),
                working_directory: None,
                euid: None,
            });
        let mut event = self.event(EventAction::Exit, &subject, &info);
        let signal = (status & 0x7f) as i32;
        if signal == 0 {
            event.process.exit_code = Some(((status >> 8) & 0xff) as i32);
        } else {
            event.process.exit_signal = Some(signal);
            // The shell convention, so rules and people can read one number.
            event.process.exit_code = Some(128 + signal);
        }
        event
    }

    /// The container `subject` runs in, from the cache by cgroup id, else from /proc (only a
    /// successful read is remembered: a process already gone says nothing of its cgroup).
    fn container(&mut self, subject: &Subject) -> Option<Container> {
        if let Some(known) = self.containers.get(&subject.cgroup_id) {
            return known.clone();
        }
        let path = self.view.cgroup_path(subject.tgid)?;
        let container = container_id(&path).map(|id| Container { id });
        if subject.cgroup_id != 0 {
            if self.containers.len() >= CONTAINER_CACHE {
                self.containers.clear();
            }
            self.containers.insert(subject.cgroup_id, container.clone());
        }
        container
    }

    fn event(&mut self, action: EventAction, subject: &Subject, info: &ProcessInfo) -> Event {
        self.sequence += 1;
        let container = self.container(subject);
        self.build_event(action, subject, info, self.sequence, container)
    }

    fn build_event(
        &self,
        action: EventAction,
        subject: &Subject,
        info: &ProcessInfo,
        sequence: u64,
        container: Option<Container>,
    ) -> Event {
        let parent = self
            .table
            .get(&subject.ppid)
            .filter(|p| p.tgid != info.tgid)
            .map(|p| Box::new(p.as_parent(&self.ctx)))
            .or_else(|| {
                (subject.ppid != 0).then(|| {
                    Box::new(ParentProcess {
                        pid: subject.ppid,
                        ..ParentProcess::default()
                    })
                })
            });
        let user = |id: u32| UserRef {
            id,
            name: self.view.user_name(id),
        };
        let group = |id: u32| UserRef {
            id,
            name: self.view.group_name(id),
        };
        Event {
            timestamp: self.ctx.wall(subject.boot_ns),
            event: EventMeta {
                kind: "event".into(),
                action,
                sequence,
                boot_ns: subject.boot_ns,
            },
            host: self.ctx.host.clone(),
            process: Process {
                pid: info.tgid,
                entity_id: info.entity_id.clone(),
                name: subject.comm.clone(),
                executable: info.executable.clone(),
                command_line: command_line(&info.args),
                args: info.args.clone(),
                args_truncated: false,
                hash: None,
                working_directory: info.working_directory.clone(),
                start: self.ctx.wall(info.start_boot_ns),
                exit_code: None,
                exit_signal: None,
                user: user(subject.euid),
                group: group(subject.egid),
                real_group: group(subject.gid),
                parent,
            },
            user: user(subject.uid),
            audit_user: subject.loginuid.map(user),
            container,
            ..Default::default()
        }
    }
}

/// ECS `process.command_line`: the arguments as one string, as `ps` shows them.
pub fn command_line(args: &[String]) -> String {
    args.join(" ")
}

/// The container id in a cgroup path, as docker, podman, containerd and CRI-O name their
/// cgroups: a 64-hex-digit segment, possibly wrapped as `docker-<id>.scope`.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path.split('/').rev().find_map(|segment| {
        let segment = segment.strip_suffix(".scope").unwrap_or(segment);
        let id = segment.rsplit(['-', ':']).next().unwrap_or(segment);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeHost {
        cwd: HashMap<u32, String>,
        cgroup: HashMap<u32, String>,
    }

    impl SystemView for FakeHost {
        fn working_directory(&self, pid: u32) -> Option<String> {
            self.cwd.get(&pid).cloned()
        }
        fn executable(&self, _pid: u32) -> Option<String> {
            None
        }
        fn cgroup_path(&self, pid: u32) -> Option<String> {
            self.cgroup.get(&pid).cloned()
        }
        fn user_name(&self, uid: u32) -> Option<String> {
            (uid == 0).then(|| "root".to_owned())
        }
        fn group_name(&self, _gid: u32) -> Option<String> {
            None
        }
        fn fd_path(&self, _pid: u32, _fd: i32) -> Option<String> {
            None
        }
    }

    fn ctx() -> HostContext {
        HostContext {
            host: Host {
                name: "h".into(),
                id: "machine".into(),
            },
            boot_id: "boot".into(),
            boot_unix_ns: 1_000_000_000_000,
            clock_ticks_per_sec: 100,
        }
    }

    fn subject(tgid: u32, ppid: u32, start: u64) -> Subject {
        Subject {
            boot_ns: 500,
            pid: tgid,
            tgid,
            ppid,
            uid: 1000,
            gid: 1000,
            euid: 0,
            egid: 0,
            loginuid: Some(1000),
            cgroup_id: 1,
            start_boot_ns: start,
            comm: "sh".into(),
        }
    }

    fn shell(tgid: u32) -> ProcessInfo {
        ProcessInfo {
            tgid,
            ppid: 1,
            start_boot_ns: 10_000_000,
            entity_id: ctx().entity_id(tgid, 10_000_000),
            name: "bash".into(),
            executable: "/usr/bin/bash".into(),
            args: vec!["bash".into(), "-l".into()],
            working_directory: Some("/root".into()),
            euid: Some(1000),
        }
    }

    #[test]
    fn exec_carries_parent_from_the_table_and_relative_paths_resolve() {
        let mut host = FakeHost::default();
        host.cwd.insert(20, "/srv".into());
        host.cgroup.insert(
            20,
            format!("/system.slice/docker-{}.scope", "ab".repeat(32)),
        );
        let mut enricher = Enricher::new(ctx(), host);
        enricher.seed(shell(10));
        enricher.enrich(RawEvent::Fork {
            child: subject(20, 10, 30_000_000),
        });
        let event = enricher
            .enrich(RawEvent::Exec {
                subject: subject(20, 10, 30_000_000),
                filename: "./tool".into(),
                args: vec!["./tool".into(), "--flag".into()],
                args_truncated: true,
                killed_at_exec: false,
            })
            .unwrap();
        assert_eq!(event.process.executable, "/srv/./tool");
        assert_eq!(event.process.command_line, "./tool --flag");
        assert!(event.process.args_truncated);
        let parent = event.process.parent.as_deref().expect("parent");
        assert_eq!(parent.executable, "/usr/bin/bash");
        assert_eq!(parent.command_line, "bash -l");
        assert_eq!(parent.entity_id, ctx().entity_id(10, 10_000_000));
        assert_eq!(event.process.user.name.as_deref(), Some("root"));
        assert_eq!(event.user.id, 1000);
        assert_eq!(event.audit_user.as_ref().map(|u| u.id), Some(1000));
        assert_eq!(event.container.as_ref().map(|c| c.id.len()), Some(64));
        assert_eq!(event.timestamp, Timestamp(1_000_000_000_500));
    }

    #[test]
    fn entity_id_survives_pid_reuse_and_matches_proc_resolution() {
        let c = ctx();
        // Same tick (10 ms at 100 Hz): same process as /proc reports it.
        assert_eq!(c.entity_id(5, 10_000_001), c.entity_id(5, 19_999_999));
        // Same pid later: another process.
        assert_ne!(c.entity_id(5, 10_000_000), c.entity_id(5, 20_000_000));
    }

    #[test]
    fn exit_reports_code_or_signal_and_forgets_the_process() {
        let mut enricher = Enricher::new(ctx(), FakeHost::default());
        enricher.seed(shell(10));
        let event = enricher
            .enrich(RawEvent::Exit {
                subject: subject(10, 1, 10_000_000),
                status: 7 << 8,
            })
            .unwrap();
        assert_eq!(event.process.exit_code, Some(7));
        assert_eq!(event.process.executable, "/usr/bin/bash");
        assert!(enricher.process(10).is_none());
        let killed = enricher
            .enrich(RawEvent::Exit {
                subject: subject(11, 1, 1),
                status: 9,
            })
            .unwrap();
        assert_eq!(
            (killed.process.exit_signal, killed.process.exit_code),
            (Some(9), Some(137))
        );
    }

    #[test]
    fn container_ids_from_common_runtimes() {
        let id = "0123456789abcdef".repeat(4);
        for path in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods/besteffort/pod1/cri-containerd-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id.as_str()), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }
}
