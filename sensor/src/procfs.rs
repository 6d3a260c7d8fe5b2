//! The host as /proc and the user database describe it: the real [`SystemView`], the seed of the
//! process table, and the facts that turn kernel clocks into wall-clock time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;

use nix::time::{clock_gettime, ClockId};
use nix::unistd::{Gid, Group, Uid, User};
use vigil_proto::Host;

use crate::enrich::{HostContext, ProcessInfo, SystemView};

pub struct ProcFs {
    root: PathBuf,
    /// Whether /proc numbers processes as kernel records do (the sensor is in the host's PID
    /// namespace). Without it every lookup by pid answers nothing: the pid would name another
    /// process, or none, and an event must never carry another process's details.
    host_pids: bool,
    users: RefCell<HashMap<u32, Option<String>>>,
    groups: RefCell<HashMap<u32, Option<String>>>,
}

impl ProcFs {
    /// The host as /proc shows it; `host_pids` from [`crate::pidns::PidNamespace::host`].
    pub fn new(host_pids: bool) -> Self {
        Self {
            root: PathBuf::from("/proc"),
            host_pids,
            users: RefCell::default(),
            groups: RefCell::default(),
        }
    }

    fn read_link(&self, pid: u32, what: &str) -> Option<String> {
        if !self.host_pids {
            return None;
        }
        let target = fs::read_link(self.root.join(pid.to_string()).join(what)).ok()?;
        Some(target.to_string_lossy().into_owned())
    }

    /// Every process alive now, for the table's seed. Processes that vanish mid-scan are skipped.
    /// Empty outside the host's PID namespace: those pids are not the ones records carry.
    pub fn scan(&self, ctx: &HostContext) -> Vec<ProcessInfo> {
        if !self.host_pids {
            return Vec::new();
        }
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let tick_ns = 1_000_000_000 / ctx.clock_ticks_per_sec.max(1);
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = fs::read_to_string(self.root.join(pid.to_string()).join("stat")).ok()?;
                let stat = parse_stat(&stat)?;
                let cmdline =
                    fs::read(self.root.join(pid.to_string()).join("cmdline")).unwrap_or_default();
                let start_boot_ns = stat.start_ticks * tick_ns;
                Some(ProcessInfo {
                    tgid: pid,
                    ppid: stat.ppid,
                    start_boot_ns,
                    entity_id: ctx.entity_id(pid, start_boot_ns),
                    name: stat.comm,
                    executable: self.executable(pid).unwrap_or_default(),
                    args: split_nul(&cmdline),
                    working_directory: self.working_directory(pid),
                    euid: fs::read_to_string(self.root.join(pid.to_string()).join("status"))
                        .ok()
                        .and_then(|status| effective_uid(&status)),
                })
            })
            .collect()
    }
}

/// The effective uid of a /proc/PID/status text (`Uid:` real, effective, saved, fs).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl SystemView for ProcFs {
    fn working_directory(&self, pid: u32) -> Option<String> {
        self.read_link(pid, "cwd")
    }

    fn executable(&self, pid: u32) -> Option<String> {
        // NB: a deleted binary reads as "/path (deleted)"; keep that, it is what happened.
        self.read_link(pid, "exe")
    }

    fn fd_path(&self, pid: u32, fd: i32) -> Option<String> {
        self.read_link(pid, &format!("fd/{fd}"))
    }

    fn cgroup_path(&self, pid: u32) -> Option<String> {
        if !self.host_pids {
            return None;
        }
        let text = fs::read_to_string(self.root.join(pid.to_string()).join("cgroup")).ok()?;
        // cgroup v2 line is "0::/path"; on hybrid hosts take the longest path, the most specific.
        text.lines()
            .filter_map(|line| line.splitn(3, ':').nth(2))
            .max_by_key(|path| path.len())
            .map(str::to_owned)
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        self.users
            .borrow_mut()
            .entry(uid)
            .or_insert_with(|| {
                User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }

    fn group_name(&self, gid: u32) -> Option<String> {
        self.groups
            .borrow_mut()
            .entry(gid)
            .or_insert_with(|| {
                Group::from_gid(Gid::from_raw(gid))
                    .ok()
                    .flatten()
                    .map(|g| g.name)
            })
            .clone()
    }
}

pub struct Stat {
    pub comm: String,
    pub ppid: u32,
    pub start_ticks: u64,
}

/// Parses /proc/PID/stat. The command name is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, starttime field 22.
    Some(Stat {
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

fn split_nul(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Reads host identity and clock facts once at start.
pub fn host_context() -> HostContext {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let id = fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    HostContext {
        host: Host { name, id },
        boot_id,
        boot_unix_ns: boot_unix_ns(),
        clock_ticks_per_sec: u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100),
    }
}

/// Wall-clock time of boot, from reading both clocks back to back.
fn boot_unix_ns() -> u64 {
    let nanos = |clock| {
        clock_gettime(clock)
            .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
            .unwrap_or(0)
    };
    let real = nanos(ClockId::CLOCK_REALTIME);
    let boot = nanos(ClockId::CLOCK_BOOTTIME);
    u64::try_from(real - boot).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_of_status() {
        assert_eq!(
            effective_uid("Name:\tsu\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n"),
            Some(0)
        );
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn stat_with_hostile_comm_parses() {
        let stat =
            parse_stat("42 (a) b (c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0")
                .expect("parse");
        assert_eq!(stat.comm, "a) b (c");
        assert_eq!(stat.ppid, 7);
        assert_eq!(stat.start_ticks, 12345);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn our_own_process_seeds_with_its_real_facts() {
        let procfs = ProcFs::new(true);
        let ctx = host_context();
        let me = std::process::id();
        let seed = procfs.scan(&ctx);
        let mine = seed
            .iter()
            .find(|p| p.tgid == me)
            .expect("own process in /proc");
        assert_eq!(mine.ppid, std::os::unix::process::parent_id());
        assert_eq!(
            mine.executable,
            std::env::current_exe().unwrap().to_string_lossy()
        );
        assert_eq!(
            mine.working_directory.as_deref(),
            Some(std::env::current_dir().unwrap().to_str().unwrap())
        );
    }

    #[test]
    fn outside_the_host_namespace_no_pid_is_looked_up() {
        let procfs = ProcFs::new(false);
        let me = std::process::id();
        assert!(procfs.scan(&host_context()).is_empty());
        assert_eq!(procfs.executable(me), None);
        assert_eq!(procfs.working_directory(me), None);
        assert_eq!(procfs.cgroup_path(me), None);
        assert_eq!(procfs.fd_path(me, 0), None);
        // Names of ids are not pids: they still resolve.
        assert_eq!(procfs.user_name(0).as_deref(), Some("root"));
    }
}
