//! Where the sensor stands relative to the host's PID namespace.
//!
//! Kernel records number processes as the host does (`bpf_get_current_pid_tgid`, `task->tgid`).
//! A sensor in a PID namespace of its own (a container without `--pid=host` / `hostPID`) knows
//! itself by another number, and its /proc numbers processes the container's way: host PID N
//! there is missing, or is a different process. So the sensor learns its host TGID from a
//! program of its own ([`learn_host_tgid`]: every program skips that TGID) and, when it is not
//! in the host's namespace, never looks a record's PID up in /proc ([`PidNamespace::host`]).
//! The program knows the sensor by the one pair nothing else can hold: its PID namespace
//! (device and inode of `/proc/self/ns/pid`) and its pid there ([`whoami_query`]).

use std::os::unix::fs::MetadataExt;

use aya::maps::Array;
use aya::programs::TracePoint;
use aya::Ebpf;
use vigil_common::WhoamiQuery;

/// The inode of the initial PID namespace's `/proc/PID/ns/pid` (`PROC_PID_INIT_INO` in the
/// kernel's `include/linux/proc_ns.h`, fixed since 3.8): any other inode is a child namespace.
pub const INIT_PID_NS_INODE: u64 = 0xEFFF_FFFC;

/// What the sensor found out about its PID namespace at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidNamespace {
    /// Its own TGID as kernel records carry it; `None` when no program of ours could tell.
    pub host_tgid: Option<u32>,
    /// `getpid()`: its PID in its own namespace.
    pub local_pid: u32,
    /// Whether PIDs in kernel records name the same processes in this /proc. Only then may an
    /// event carry what /proc says of its PID.
    pub host: bool,
}

impl PidNamespace {
    /// Reads the facts of this process and decides. `host_tgid` comes from [`learn_host_tgid`].
    pub fn locate(host_tgid: Option<u32>) -> Self {
        let local_pid = std::process::id();
        let ns_inode = std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino());
        let proc_self = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse().ok());
        Self {
            host_tgid,
            local_pid,
            host: in_host_namespace(local_pid, host_tgid, ns_inode, proc_self),
        }
    }

    /// The TGID every program must skip: the host's number when known, else the only one we
    /// have (right in the host's namespace, and nothing better exists outside it).
    pub fn own_tgid(&self) -> u32 {
        self.host_tgid.unwrap_or(self.local_pid)
    }

    /// One line for logs, `--probe` and `doctor`.
    pub fn describe(&self) -> String {
        let tgid = match self.host_tgid {
            Some(t) => t.to_string(),
            None => "unknown".into(),
        };
        if self.host {
            format!("host PID namespace (sensor pid {})", self.local_pid)
        } else {
            format!(
                "running outside the host PID namespace (host pid {tgid}, pid {} here): process \
                 details looked up in /proc (executable links, working directory, container, \
                 executable hashes, processes older than the sensor) are not attached and kills \
                 are left to the kernel; run with --pid=host / hostPID for full process details",
                self.local_pid
            )
        }
    }
}

/// The decision, from facts that may each be unknown. Any sign of another namespace wins: a
/// namespace inode other than the initial one, a host TGID other than our pid, or a /proc in
/// which we have another number than the host's.
fn in_host_namespace(
    local_pid: u32,
    host_tgid: Option<u32>,
    ns_inode: Option<u64>,
    proc_self: Option<u32>,
) -> bool {
    let other_namespace = ns_inode.is_some_and(|i| i != INIT_PID_NS_INODE);
    let renumbered = host_tgid.is_some_and(|t| t != local_pid);
    let foreign_proc = proc_self.is_some_and(|p| p != host_tgid.unwrap_or(local_pid));
    !(other_namespace || renumbered || foreign_proc)
}

/// The syscall tracepoint `whoami` watches for a moment; the sensor then enters it itself.
/// `getpgid` is cheap, harmless and rarely called by anything else.
const WHOAMI_TRACEPOINT: (&str, &str) = ("syscalls", "sys_enter_getpgid");

/// The sensor as its own PID namespace knows it, for the `WHOAMI` global. All zeros (which no
/// task matches) when /proc/self/ns/pid cannot be read.
pub fn whoami_query() -> WhoamiQuery {
    let local_pid = std::process::id();
    match std::fs::metadata("/proc/self/ns/pid") {
        Ok(ns) => WhoamiQuery {
            pidns_dev: ns.dev(),
            pidns_ino: ns.ino(),
            local_pid,
            _pad: 0,
        },
        Err(_) => WhoamiQuery::default(),
    }
}

/// Why the host TGID could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum WhoamiError {
    /// The object has no `whoami` program or `SENSOR_TGID` map (a mismatched build).
    #[error("{0} is missing from the kernel object")]
    Missing(&'static str),
    /// The kernel refused the program or its tracepoint.
    #[error("tracepoint {step}: {source}")]
    Tracepoint {
        step: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The map could not be read back.
    #[error("reading SENSOR_TGID: {0}")]
    Map(#[source] Box<aya::maps::MapError>),
    /// The program was attached and the sensor entered the syscall, yet nothing was recorded
    /// (/proc/self/ns/pid unreadable, or no `bpf_get_ns_current_pid_tgid`).
    #[error("the whoami program did not recognise the sensor")]
    Silent,
}

/// Learns this process's TGID as the kernel numbers it, and leaves it in the programs'
/// `SENSOR_TGID` map: attaches `whoami` (loaded with [`whoami_query`]) to a syscall
/// tracepoint, makes that syscall, reads the map, detaches. Must run before any other program
/// is attached, so that none of them ever sees the sensor unrecognised.
pub fn learn_host_tgid(ebpf: &mut Ebpf) -> Result<u32, WhoamiError> {
    let tracepoint = |step, source| WhoamiError::Tracepoint {
        step,
        source: Box::new(source),
    };
    let program: &mut TracePoint = ebpf
        .program_mut("whoami")
        .ok_or(WhoamiError::Missing("program whoami"))?
        .try_into()
        .map_err(|e| tracepoint("type", e))?;
    program.load().map_err(|e| tracepoint("load", e))?;
    let (category, name) = WHOAMI_TRACEPOINT;
    let link = program
        .attach(category, name)
        .map_err(|e| tracepoint("attach", e))?;
    // SAFETY: getpgid(0) only reads the calling process's group.
    std::hint::black_box(unsafe { libc::getpgid(0) });
    let detached = program.detach(link);
    let map = ebpf
        .map("SENSOR_TGID")
        .ok_or(WhoamiError::Missing("map SENSOR_TGID"))?;
    let tgid = Array::<_, u32>::try_from(map)
        .and_then(|a| a.get(&0, 0))
        .map_err(|e| WhoamiError::Map(Box::new(e)))?;
    detached.map_err(|e| tracepoint("detach", e))?;
    if tgid == 0 {
        return Err(WhoamiError::Silent);
    }
    Ok(tgid)
}

/// Writes `tgid` into the programs' `SENSOR_TGID` map (when [`learn_host_tgid`] could not).
pub fn set_own_tgid(ebpf: &mut Ebpf, tgid: u32) -> Result<(), WhoamiError> {
    let map = ebpf
        .map_mut("SENSOR_TGID")
        .ok_or(WhoamiError::Missing("map SENSOR_TGID"))?;
    Array::<_, u32>::try_from(map)
        .and_then(|mut a| a.set(0, tgid, 0))
        .map_err(|e| WhoamiError::Map(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_sign_of_another_namespace_means_outside() {
        let init = Some(INIT_PID_NS_INODE);
        assert!(in_host_namespace(42, Some(42), init, Some(42)));
        // Nothing known but our pid: the old assumption stands.
        assert!(in_host_namespace(42, None, None, None));
        // A container: pid 1 here, 4242 on the host.
        assert!(!in_host_namespace(1, Some(4242), Some(4026532288), Some(1)));
        // The numbers happen to agree, the namespace does not.
        assert!(!in_host_namespace(42, Some(42), Some(4026532288), Some(42)));
        // No program could tell, but the namespace inode can.
        assert!(!in_host_namespace(1, None, Some(4026532288), Some(1)));
        // Host namespace, but a /proc mounted for another one.
        assert!(!in_host_namespace(42, Some(42), init, Some(7)));
    }

    #[test]
    fn this_test_runs_in_the_namespace_it_reports() {
        let ns = PidNamespace::locate(None);
        let inode = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).ok();
        assert_eq!(ns.host, inode.is_none_or(|i| i == INIT_PID_NS_INODE));
        assert_eq!(ns.own_tgid(), std::process::id());
        let query = whoami_query();
        assert_eq!(query.local_pid, std::process::id());
        assert_eq!(Some(query.pidns_ino), inode);
    }
}
