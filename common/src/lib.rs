//! The kernel ABI of Vigil: the records the eBPF programs write into the ring buffer and the
//! configuration the loader hands them. Integers and fixed arrays only, explicit padding, sizes
//! asserted, so both sides agree byte for byte. Everything here changes with the binary; the
//! wire schema that must stay compatible lives in `vigil-proto`.
#![no_std]

use core::mem::size_of;

/// Stable record kind ids. Retired ids are never reused.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;
    /// One past the largest id: the length of per-kind counter arrays.
    pub const COUNT: u32 = 4;
}

pub const COMM_LEN: usize = 16;
/// Bytes of the exec'd path kept; longer paths are truncated and flagged.
pub const FILENAME_CAP: usize = 512;
/// Bytes of argv (NUL-separated, as in the process's memory) kept; more is truncated and flagged.
pub const ARGV_CAP: usize = 4096;

/// Flags of [`ExecRecord::flags`].
pub mod exec_flags {
    pub const ARGS_TRUNCATED: u32 = 1;
    pub const FILENAME_TRUNCATED: u32 = 2;
    /// The kernel could not read argv at all (e.g. the pages were not resident).
    pub const ARGS_UNREADABLE: u32 = 4;
}

/// `loginuid` of a task that never logged in (the kernel's `INVALID_UID`).
pub const NO_LOGIN_UID: u32 = u32::MAX;

/// First bytes of every record: who did it and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Whole record length in bytes, header included.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns`: includes suspend, so it matches the clock of process start times.
    pub boot_ns: u64,
    /// Thread id of the subject task.
    pub pid: u32,
    /// Process id (thread group id) of the subject task.
    pub tgid: u32,
    /// Thread group id of the subject's real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    /// Audit login uid, [`NO_LOGIN_UID`] when unset.
    pub loginuid: u32,
    pub cgroup_id: u64,
    /// The subject's `start_boottime` in ns: with (host, tgid) it names the process uniquely.
    pub start_boot_ns: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<RecordHeader>() == 80);

/// A successful exec. Followed in the ring buffer by `filename_len` bytes of path, then
/// `argv_len` bytes of NUL-separated arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub filename_len: u16,
    pub argv_len: u16,
    /// [`exec_flags`].
    pub flags: u32,
}
const _: () = assert!(size_of::<ExecRecord>() == 88);

/// A new process (not a thread): the header describes the child.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkRecord {
    pub header: RecordHeader,
}
const _: () = assert!(size_of::<ForkRecord>() == 80);

/// A process (its thread group leader) ended.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    pub header: RecordHeader,
    /// The kernel's wait status: exit code in bits 8..16, terminating signal in bits 0..7.
    pub exit_status: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExitRecord>() == 88);

/// Offsets of the kernel struct fields the programs read, found by the loader in the running
/// kernel's BTF. Rust eBPF has no CO-RE relocations, so this is how one object serves every
/// kernel layout. `UNAVAILABLE` marks a field this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_cred: u32,
    pub task_loginuid: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub task_start_boottime: u32,
    pub cred_uid: u32,
    pub cred_gid: u32,
    pub cred_euid: u32,
    pub cred_egid: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub bprm_filename: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 64);

impl KernelOffsets {
    pub const UNAVAILABLE: u32 = u32::MAX;
}

/// What the loader tells the programs before they load (read-only globals).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensorConfig {
    /// The sensor's own tgid: every program skips it first, so the sensor never records itself.
    pub sensor_tgid: u32,
    pub _pad: u32,
    pub offsets: KernelOffsets,
}
const _: () = assert!(size_of::<SensorConfig>() == 72);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: repr(C), integers and byte arrays only, no padding holes.
    unsafe impl aya::Pod for super::SensorConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
}
