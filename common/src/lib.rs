//! The kernel ABI of Vigil: the records the eBPF programs write into the ring buffer and the
//! configuration the loader hands them. Integers and fixed arrays only, explicit padding, sizes
//! asserted, so both sides agree byte for byte. Everything here changes with the binary; the
//! wire schema that must stay compatible lives in `vigil-proto`.
#![no_std]

use core::mem::size_of;

/// Stable record kind ids, grouped in ranges; retired ids are never reused.
/// 1..9: process lifecycle (their own record layouts). 10..63: syscall events, all in
/// [`SyscallRecord`] layout, one id per event class.
pub mod kind {
    pub const EXEC: u32 = 1;
    pub const FORK: u32 = 2;
    pub const EXIT: u32 = 3;

    pub const OPEN: u32 = 10;
    pub const UNLINK: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const CHMOD: u32 = 13;
    pub const CHOWN: u32 = 14;
    pub const TRUNCATE: u32 = 15;
    pub const LINK: u32 = 16;
    pub const SYMLINK: u32 = 17;
    pub const MKDIR: u32 = 18;
    pub const RMDIR: u32 = 19;
    pub const UTIMES: u32 = 20;
    pub const CONNECT: u32 = 21;
    pub const BIND: u32 = 22;
    pub const LISTEN: u32 = 23;
    pub const ACCEPT: u32 = 24;
    pub const SETUID: u32 = 25;
    pub const SETGID: u32 = 26;
    pub const CAPSET: u32 = 27;
    pub const PTRACE: u32 = 28;
    pub const PROCESS_VM_WRITE: u32 = 29;
    pub const KILL: u32 = 30;
    pub const MODULE_LOAD: u32 = 31;
    pub const MODULE_UNLOAD: u32 = 32;
    pub const BPF_LOAD: u32 = 33;
    pub const MOUNT: u32 = 34;
    pub const UMOUNT: u32 = 35;
    pub const UNSHARE: u32 = 36;
    pub const SETNS: u32 = 37;
    pub const MEMFD_CREATE: u32 = 38;
    pub const EXEC_FD: u32 = 39;
    pub const EXEC_MEMORY: u32 = 40;
    /// A DNS message sent or received on a UDP socket whose peer port is 53 (payload attached).
    pub const DNS: u32 = 41;
    /// An io_uring request completed (opcode, fd, result).
    pub const IO_URING: u32 = 42;

    /// First id in [`super::SyscallRecord`] layout.
    pub const FIRST_SYSCALL: u32 = 10;
    /// One past the largest id: the length of per-kind counter arrays.
    pub const COUNT: u32 = 64;
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
    /// The path is listed by a `kill` rule: SIGKILL was sent at exec, before the new image ran.
    pub const KILLED: u32 = 8;
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

/// What the loader tells the programs before they load (read-only globals). The sensor's own
/// tgid is not here: it is the host's TGID, which a sensor in a PID namespace of its own can
/// only learn from a program once loaded (the `SENSOR_TGID` map, written by `whoami` when it
/// sees the process of [`WhoamiQuery`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensorConfig {
    /// Nonzero when the watched-prefix map is in force; zero means every path is of interest.
    pub prefix_filter: u32,
    pub offsets: KernelOffsets,
}
const _: () = assert!(size_of::<SensorConfig>() == 68);

/// Who the sensor is in its own PID namespace, for the `whoami` program (a read-only global):
/// the namespace as `stat` of `/proc/self/ns/pid` gives it and the sensor's pid there. A task
/// whose pid in that namespace (`bpf_get_ns_current_pid_tgid`) is `local_pid` is the sensor,
/// whatever number the host gives it; no other process can claim that pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WhoamiQuery {
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    pub local_pid: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<WhoamiQuery>() == 24);

/// Bytes kept of each path argument of a syscall; longer paths are truncated and flagged.
pub const SYSCALL_STR_CAP: usize = 256;
/// Bytes kept of a socket address (sockaddr_in6 is 28).
pub const SOCKADDR_CAP: usize = 32;
/// Bytes of a path compared against the watched prefixes in the kernel.
pub const PREFIX_KEY_LEN: usize = 64;
/// Bytes of an exec'd path compared against the `kill` paths in the kernel (the LPM trie's
/// largest key). An exact path is stored with its NUL, so it fits in `KILL_PATH_LEN - 1`.
pub const KILL_PATH_LEN: usize = 256;

/// Entries of the per-syscall spec array, indexed by syscall number (x86_64 and aarch64
/// numbers are below 512).
pub const SPEC_SLOTS: u32 = 512;

/// Flags of [`SyscallRecord::flags`].
pub mod syscall_flags {
    pub const STR0_TRUNCATED: u32 = 1;
    pub const STR1_TRUNCATED: u32 = 2;
    pub const STR_UNREADABLE: u32 = 4;
    /// The first data run (`str_len[0]` bytes) is a raw payload, not a string.
    pub const PAYLOAD: u32 = 8;
    /// The payload was longer than [`super::DNS_PAYLOAD_CAP`] and is cut.
    pub const PAYLOAD_TRUNCATED: u32 = 16;
    /// DNS: the message was received (a response); without it, sent (a query).
    pub const RECEIVED: u32 = 32;
    /// DNS: the socket was connected (the peer is the socket's own, `addr` is empty).
    pub const CONNECTED: u32 = 64;
}

/// Bytes kept of a DNS message: a whole classic (512-byte) UDP response and most EDNS ones.
pub const DNS_PAYLOAD_CAP: usize = 1024;

/// Socket types of [`SyscallRecord::sock_type`] (Linux values, all architectures but MIPS).
pub mod sock_type {
    pub const STREAM: u16 = 1;
    pub const DGRAM: u16 = 2;
    pub const RAW: u16 = 3;
}

/// A syscall and its result. Followed in the ring buffer by `str_len[0]` bytes of the first
/// string argument, then `str_len[1]` bytes of the second (both NUL-terminated when present).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRecord {
    pub header: RecordHeader,
    /// Syscall number of this architecture.
    pub nr: u32,
    /// [`syscall_flags`].
    pub flags: u32,
    /// Return value: >= 0 success, -errno failure.
    pub ret: i64,
    /// Raw arguments, as the syscall received them.
    pub args: [u64; 6],
    pub str_len: [u16; 2],
    pub addr_len: u16,
    pub _pad: u16,
    /// A short third string (a file system type), NUL-padded.
    pub small: [u8; 16],
    /// A socket address, as the syscall passed or returned it.
    pub addr: [u8; SOCKADDR_CAP],
    /// For a syscall on a socket fd ([`spec_flags::SOCKET_FD`]): the socket's type
    /// ([`sock_type`]; 0 when unknown) and protocol (`IPPROTO_*`), read from the kernel's socket.
    pub sock_type: u16,
    pub sock_protocol: u16,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<SyscallRecord>() == 208);

/// Per syscall number, what the generic enter/exit programs capture. Filled by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallSpec {
    /// The record kind ([`kind`]) this syscall produces.
    pub kind: u32,
    /// [`spec_flags`].
    pub flags: u32,
    /// Index + 1 of user-string arguments to copy (0: none).
    pub str_args: [u8; 2],
    /// Index + 1 of a short string argument copied into [`SyscallRecord::small`].
    pub small_str_arg: u8,
    /// Index + 1 of a sockaddr pointer argument.
    pub addr_arg: u8,
    /// Index + 1 of the sockaddr length: a value at enter, a `socklen_t *` at exit.
    pub addr_len_arg: u8,
    /// Index + 1 of the argument tested by [`SyscallSpec::filter_value`].
    pub filter_arg: u8,
    pub _pad: [u8; 2],
    /// With `FILTER_MASK`: emit only when `arg & value != 0`. With `FILTER_EQ`: when `arg == value`.
    pub filter_value: u64,
}
const _: () = assert!(size_of::<SyscallSpec>() == 24);

pub mod spec_flags {
    /// Goes to the critical ring buffer (can raise alerts; never crowded out by bulk records).
    pub const CRITICAL: u32 = 1;
    /// The first string is a path subject to the watched-prefix filter.
    pub const PREFIX_FILTER: u32 = 2;
    /// The sockaddr is filled by the kernel: read it at exit.
    pub const ADDR_AT_EXIT: u32 = 4;
    pub const FILTER_MASK: u32 = 8;
    pub const FILTER_EQ: u32 = 16;
    /// Fill the header (credentials) at syscall entry: for credential changes, the record
    /// then says who the process was, and its arguments what it asked to become.
    pub const HEADER_AT_ENTER: u32 = 32;
    /// The first argument is a socket fd: record its type and protocol.
    pub const SOCKET_FD: u32 = 64;
}

/// Offsets of the fields read to get from a file descriptor to its socket (fd table, file,
/// socket, sock), found in BTF by the loader like [`KernelOffsets`]. Separate from those so
/// that the socket readers stay one module.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_type: u32,
    pub socket_file: u32,
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_family` from the start of `struct sock`.
    pub sk_family: u32,
    /// `skc_dport`: the connected peer's port, network order; 0 when not connected.
    pub sk_dport: u32,
    pub sk_protocol: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SocketOffsets>() == 48);

impl SocketOffsets {
    pub const UNAVAILABLE: u32 = u32::MAX;
}

/// [`SyscallRecord::nr`] of records that come from a kernel-function hook rather than a
/// syscall (no real syscall number is that large).
pub mod hook_nr {
    /// An open seen by fentry `security_file_open` or LSM `file_open`.
    pub const FILE_OPEN: u32 = 0xffff_0001;
}

/// Offsets of `struct file` fields the file-open hooks read (see [`KernelOffsets`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    pub file_f_path: u32,
    pub file_f_flags: u32,
}
const _: () = assert!(size_of::<FileOffsets>() == 8);

/// One of the DNS-carrying syscalls, as the loader tells the DNS programs (values of the
/// `DNS_SYSCALLS` map, keyed by syscall number).
pub mod dns_op {
    pub const SENDTO: u32 = 1;
    pub const SENDMSG: u32 = 2;
    pub const SENDMMSG: u32 = 3;
    pub const RECVFROM: u32 = 4;
    pub const RECVMSG: u32 = 5;
    pub const RECVMMSG: u32 = 6;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data: repr(C), integers and byte arrays only, no padding holes.
    unsafe impl aya::Pod for super::SensorConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WhoamiQuery {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallSpec {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SocketOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FileOffsets {}
}
