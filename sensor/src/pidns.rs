//! Where the sensor stands relative to the host's PID namespace.
//!
//! Kernel records number processes as the host does (`bpf_get_current_pid_tgid`, `task->tgid`).
//! A sensor in a PID namespace of its own (a container without `--pid=host` / `hostPID`) knows
//! itself by another number, and its /proc numbers processes the container's way: host PID N
//! there is missing, or is a different process. So the sensor learns its host TGID from a
//! program of its own ([`learn_host_tgid`]: every program skips that TGID) and, when it is not
//! in the host's namespace, never looks a record's PID up in /proc ([`PidNamespace::host`]).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::Array;
use aya::programs::uprobe::UProbeScope;
use aya::programs::UProbe;
use aya::Ebpf;

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

/// Probed by the `whoami` program, and called once at start: a function of this binary, so
/// that a uprobe on it runs in the sensor's own context. NB: `no_mangle` and a call through
/// `black_box` keep the function and the call in the binary.
#[no_mangle]
#[inline(never)]
pub extern "C" fn vigil_sensor_whoami(token: u64) -> u64 {
    std::hint::black_box(token)
}

/// Why the host TGID could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum WhoamiError {
    /// The object has no `whoami` program or `SENSOR_TGID` map (a mismatched build).
    #[error("{0} is missing from the kernel object")]
    Missing(&'static str),
    /// Our own code could not be located in the binary's mapping.
    #[error("locating vigil_sensor_whoami in /proc/self/maps: {0}")]
    Locate(String),
    /// The kernel refused the uprobe (no CONFIG_UPROBES, a seccomp filter...).
    #[error("uprobe {step}: {source}")]
    Uprobe {
        step: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The map could not be read back.
    #[error("reading SENSOR_TGID: {0}")]
    Map(#[source] Box<aya::maps::MapError>),
    /// The probe was attached and the function called, yet nothing was recorded.
    #[error("the whoami probe did not fire")]
    Silent,
}

/// Learns this process's TGID as the kernel numbers it, and leaves it in the programs'
/// `SENSOR_TGID` map: attaches `whoami` to [`vigil_sensor_whoami`] for this process only,
/// calls it, reads the map, detaches. Must run before any other program is attached, so that
/// none of them ever sees the sensor unrecognised.
pub fn learn_host_tgid(ebpf: &mut Ebpf) -> Result<u32, WhoamiError> {
    let address =
        std::hint::black_box(vigil_sensor_whoami as extern "C" fn(u64) -> u64) as usize as u64;
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| WhoamiError::Locate(e.to_string()))?;
    let offset = file_offset(&maps, address).ok_or_else(|| {
        WhoamiError::Locate(format!("no file mapping holds address {address:#x}"))
    })?;
    let uprobe = |step, source| WhoamiError::Uprobe {
        step,
        source: Box::new(source),
    };
    let program: &mut UProbe = ebpf
        .program_mut("whoami")
        .ok_or(WhoamiError::Missing("program whoami"))?
        .try_into()
        .map_err(|e| uprobe("type", e))?;
    program.load().map_err(|e| uprobe("load", e))?;
    // /proc/self/exe names our own image whatever path (or mount namespace) started it.
    let link = program
        .attach(
            offset,
            Path::new("/proc/self/exe"),
            UProbeScope::CallingProcess,
        )
        .map_err(|e| uprobe("attach", e))?;
    let token = vigil_sensor_whoami(std::hint::black_box(u64::from(std::process::id())));
    std::hint::black_box(token);
    let detached = program.detach(link);
    let map = ebpf
        .map("SENSOR_TGID")
        .ok_or(WhoamiError::Missing("map SENSOR_TGID"))?;
    let tgid = Array::<_, u32>::try_from(map)
        .and_then(|a| a.get(&0, 0))
        .map_err(|e| WhoamiError::Map(Box::new(e)))?;
    detached.map_err(|e| uprobe("detach", e))?;
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

/// The offset in its file of `address`, from the text of /proc/self/maps
/// (`start-end perms offset dev inode path`).
fn file_offset(maps: &str, address: u64) -> Option<u64> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (
            u64::from_str_radix(start, 16).ok()?,
            u64::from_str_radix(end, 16).ok()?,
        );
        let _perms = fields.next()?;
        let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
        (start..end)
            .contains(&address)
            .then(|| address - start + offset)
    })
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
    fn file_offset_is_relative_to_the_mapping_holding_the_address() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 1234 /usr/bin/vigil-sensor
55d0c0100000-55d0c0900000 r-xp 00100000 08:01 1234 /usr/bin/vigil sensor (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(file_offset(maps, 0x55d0_c010_2340), Some(0x10_2340));
        assert_eq!(file_offset(maps, 0x55d0_c000_0010), Some(0x10));
        assert_eq!(file_offset(maps, 0x1000), None);
        assert_eq!(file_offset("garbage\n", 0x1000), None);
    }

    #[test]
    fn our_own_function_is_found_in_our_own_maps() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let address = vigil_sensor_whoami as extern "C" fn(u64) -> u64 as usize as u64;
        assert!(file_offset(&maps, address).is_some());
    }

    #[test]
    fn this_test_runs_in_the_namespace_it_reports() {
        let ns = PidNamespace::locate(None);
        let inode = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).ok();
        assert_eq!(ns.host, inode.is_none_or(|i| i == INIT_PID_NS_INODE));
        assert_eq!(ns.own_tgid(), std::process::id());
    }
}
