//! The A series' floor: a BPF program that does nothing, attached to every tracepoint the
//! sensor attaches to. What it costs is the kernel's dispatch to BPF on those hooks (for a
//! syscall tracepoint: the slow syscall path, building the tracepoint's record, running the
//! program), which no program body can avoid; the sensor's figure less this one is what its
//! own programs cost.
//!
//! Loaded with raw `bpf(2)` and `perf_event_open(2)`, the way aya attaches a tracepoint
//! program, so that the bench needs no eBPF object of its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context};
use nix::libc;

/// Every syscall whose enter and exit tracepoints the sensor attaches to (the generic
/// syscall programs and the DNS programs; `xtask`'s tests check this against the sensor's
/// tables).
pub(super) const SENSOR_SYSCALLS: [&str; 62] = [
    "openat",
    "open",
    "creat",
    "openat2",
    "unlinkat",
    "unlink",
    "renameat2",
    "renameat",
    "rename",
    "fchmodat",
    "chmod",
    "fchmod",
    "fchownat",
    "chown",
    "lchown",
    "fchown",
    "truncate",
    "linkat",
    "link",
    "symlinkat",
    "symlink",
    "mkdirat",
    "mkdir",
    "rmdir",
    "utimensat",
    "utimes",
    "connect",
    "bind",
    "listen",
    "accept4",
    "accept",
    "setuid",
    "setreuid",
    "setresuid",
    "setfsuid",
    "setgid",
    "setregid",
    "setresgid",
    "setfsgid",
    "capset",
    "ptrace",
    "process_vm_writev",
    "kill",
    "tkill",
    "tgkill",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "mount",
    "umount",
    "unshare",
    "setns",
    "memfd_create",
    "execveat",
    "mprotect",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
];

/// The sensor's other plain tracepoints: process exit and io_uring.
const OTHER_TRACEPOINTS: [&str; 4] = [
    "sched/sched_process_exit",
    "io_uring/io_uring_submit_req",
    "io_uring/io_uring_file_get",
    "io_uring/io_uring_complete",
];

/// The sensor's raw (or BTF-typed, the same dispatch) tracepoints: exec and fork.
const RAW_TRACEPOINTS: [&core::ffi::CStr; 2] = [c"sched_process_exec", c"sched_process_fork"];

const TRACEFS_EVENTS: &str = "/sys/kernel/tracing/events";

/// The no-op program attached to every sensor tracepoint this kernel has, until dropped.
pub(super) struct EmptyPrograms {
    /// Perf events with the program set and raw tracepoint links; closing them detaches.
    _attachments: Vec<OwnedFd>,
}

impl EmptyPrograms {
    pub(super) fn attach() -> anyhow::Result<Self> {
        let program = load_noop_program(BPF_PROG_TYPE_TRACEPOINT)?;
        let raw_program = load_noop_program(BPF_PROG_TYPE_RAW_TRACEPOINT)?;
        let mut events = Vec::new();
        let syscall_points = SENSOR_SYSCALLS.iter().flat_map(|name| {
            ["enter", "exit"].map(move |side| format!("syscalls/sys_{side}_{name}"))
        });
        for point in syscall_points.chain(OTHER_TRACEPOINTS.iter().map(|p| p.to_string())) {
            let id_file = format!("{TRACEFS_EVENTS}/{point}/id");
            // A tracepoint this kernel lacks (init_module's on 6.18) is skipped, as the
            // sensor skips it.
            let Ok(id) = std::fs::read_to_string(&id_file) else {
                continue;
            };
            let id: u64 = id
                .trim()
                .parse()
                .with_context(|| format!("reading {id_file}"))?;
            events.push(
                attach_to_tracepoint(&program, id)
                    .with_context(|| format!("attaching to {point}"))?,
            );
        }
        if events.is_empty() {
            bail!("no sensor tracepoint found under {TRACEFS_EVENTS} (is tracefs mounted?)");
        }
        for name in RAW_TRACEPOINTS {
            events.push(
                attach_raw(&raw_program, name)
                    .with_context(|| format!("attaching to raw tracepoint {name:?}"))?,
            );
        }
        // The attachments hold the programs; their own descriptors can go.
        Ok(Self {
            _attachments: events,
        })
    }
}

/// The head of `union bpf_attr` for BPF_PROG_LOAD; the kernel takes a shorter attr and
/// treats the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;

/// `union bpf_attr` for BPF_RAW_TRACEPOINT_OPEN.
#[repr(C)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

fn attach_raw(program: &OwnedFd, name: &core::ffi::CStr) -> anyhow::Result<OwnedFd> {
    let attr = RawTracepointAttr {
        name: name.as_ptr() as u64,
        prog_fd: program.as_raw_fd() as u32,
        _pad: 0,
    };
    bpf(BPF_RAW_TRACEPOINT_OPEN, &attr).context("BPF_RAW_TRACEPOINT_OPEN")
}

/// `bpf(2)` for a command that returns a new descriptor.
fn bpf<T>(command: libc::c_long, attr: &T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` and the buffers it points to outlive the call; the size is its type's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load_noop_program(prog_type: u32) -> anyhow::Result<OwnedFd> {
    // `r0 = 0; exit`: opcodes BPF_ALU64|BPF_MOV|BPF_K and BPF_JMP|BPF_EXIT, registers and
    // immediates zero.
    let insns: [u64; 2] = [0xb7, 0x95];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &attr).context("loading a no-op program")
}

/// `struct perf_event_attr` as of PERF_ATTR_SIZE_VER0; the kernel accepts this size.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_SAMPLE_RAW: u64 = 1 << 10;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
/// `_IOW('$', 8, u32)` and `_IO('$', 0)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;

fn attach_to_tracepoint(program: &OwnedFd, id: u64) -> anyhow::Result<OwnedFd> {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_TRACEPOINT,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        sample_type: PERF_SAMPLE_RAW,
        wakeup_events: 1,
        ..Default::default()
    };
    // SAFETY: `attr` outlives the call. pid -1 with cpu 0: every task, as aya attaches (the
    // program runs on every CPU whatever the event's CPU).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("perf_event_open");
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let event = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for (request, arg) in [
        (PERF_EVENT_IOC_SET_BPF, program.as_raw_fd()),
        (PERF_EVENT_IOC_ENABLE, 0),
    ] {
        // SAFETY: perf ioctls on a perf event descriptor we own.
        if unsafe { libc::ioctl(event.as_raw_fd(), request as _, arg) } < 0 {
            return Err(std::io::Error::last_os_error()).context("perf event ioctl");
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_attaches_where_the_sensor_does() {
        let mut sensor: Vec<&str> = vigil_sensor::syscalls::table()
            .iter()
            .map(|c| c.name)
            .chain(vigil_sensor::syscalls::dns_syscalls().iter().map(|d| d.0))
            .collect();
        let mut floor = SENSOR_SYSCALLS.to_vec();
        sensor.sort_unstable();
        floor.sort_unstable();
        assert_eq!(floor, sensor);
    }
}
