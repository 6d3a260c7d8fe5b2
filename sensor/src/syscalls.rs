//! The syscalls the generic enter/exit programs capture, what each copies, and how a captured
//! record becomes an ECS event. x86_64 numbers come from libc's constants; a syscall whose
//! tracepoint a kernel lacks is skipped at attach time and reported.

use vigil_common::{dns_op, kind, spec_flags, SyscallSpec};
use vigil_proto::EventAction;

/// One captured syscall: its tracepoint name and what to copy.
#[derive(Clone, Copy, Debug)]
pub struct Captured {
    pub name: &'static str,
    pub nr: i64,
    pub spec: SyscallSpec,
}

const fn spec(kind: u32, flags: u32, str_args: [u8; 2]) -> SyscallSpec {
    SyscallSpec {
        kind,
        flags,
        str_args,
        small_str_arg: 0,
        addr_arg: 0,
        addr_len_arg: 0,
        filter_arg: 0,
        _pad: [0; 2],
        filter_value: 0,
    }
}

const FILE: u32 = spec_flags::PREFIX_FILTER;
const CRIT: u32 = spec_flags::CRITICAL;
/// Network syscalls on a socket fd: critical, with the socket's type and protocol.
const SOCK: u32 = spec_flags::CRITICAL | spec_flags::SOCKET_FD;
/// Credential changes: the header says who the process was before.
const CRED: u32 = spec_flags::CRITICAL | spec_flags::HEADER_AT_ENTER;

const fn with_addr(mut s: SyscallSpec, addr_arg: u8, len_arg: u8) -> SyscallSpec {
    s.addr_arg = addr_arg;
    s.addr_len_arg = len_arg;
    s
}

const fn with_filter(mut s: SyscallSpec, arg: u8, value: u64, eq: bool) -> SyscallSpec {
    s.filter_arg = arg;
    s.filter_value = value;
    s.flags |= if eq {
        spec_flags::FILTER_EQ
    } else {
        spec_flags::FILTER_MASK
    };
    s
}

const fn with_small(mut s: SyscallSpec, arg: u8) -> SyscallSpec {
    s.small_str_arg = arg;
    s
}

/// `AT_EMPTY_PATH`: execveat of the fd itself, the mark of fileless execution.
const EMPTY_PATH_FLAG: u64 = 0x1000;
const PROT_EXEC_BIT: u64 = 0x4;
const BPF_PROG_LOAD_CMD: u64 = 5;

/// Everything captured, in attach order. Argument slots are index + 1.
pub fn table() -> Vec<Captured> {
    use libc::*;
    let c = |name, nr: c_long, spec| Captured { name, nr, spec };
    vec![
        // Files: bulk lane, path-prefix filtered in the kernel.
        c("openat", SYS_openat, spec(kind::OPEN, FILE, [2, 0])),
        c("open", SYS_open, spec(kind::OPEN, FILE, [1, 0])),
        c("creat", SYS_creat, spec(kind::OPEN, FILE, [1, 0])),
        c("openat2", SYS_openat2, spec(kind::OPEN, FILE, [2, 0])),
        c("unlinkat", SYS_unlinkat, spec(kind::UNLINK, FILE, [2, 0])),
        c("unlink", SYS_unlink, spec(kind::UNLINK, FILE, [1, 0])),
        c("renameat2", SYS_renameat2, spec(kind::RENAME, FILE, [2, 4])),
        c("renameat", SYS_renameat, spec(kind::RENAME, FILE, [2, 4])),
        c("rename", SYS_rename, spec(kind::RENAME, FILE, [1, 2])),
        c("fchmodat", SYS_fchmodat, spec(kind::CHMOD, FILE, [2, 0])),
        c("chmod", SYS_chmod, spec(kind::CHMOD, FILE, [1, 0])),
        c("fchmod", SYS_fchmod, spec(kind::CHMOD, 0, [0, 0])),
        c("fchownat", SYS_fchownat, spec(kind::CHOWN, FILE, [2, 0])),
        c("chown", SYS_chown, spec(kind::CHOWN, FILE, [1, 0])),
        c("lchown", SYS_lchown, spec(kind::CHOWN, FILE, [1, 0])),
        c("fchown", SYS_fchown, spec(kind::CHOWN, 0, [0, 0])),
        c("truncate", SYS_truncate, spec(kind::TRUNCATE, FILE, [1, 0])),
        c("linkat", SYS_linkat, spec(kind::LINK, FILE, [2, 4])),
        c("link", SYS_link, spec(kind::LINK, FILE, [1, 2])),
        c("symlinkat", SYS_symlinkat, spec(kind::SYMLINK, 0, [1, 3])),
        c("symlink", SYS_symlink, spec(kind::SYMLINK, 0, [1, 2])),
        c("mkdirat", SYS_mkdirat, spec(kind::MKDIR, FILE, [2, 0])),
        c("mkdir", SYS_mkdir, spec(kind::MKDIR, FILE, [1, 0])),
        c("rmdir", SYS_rmdir, spec(kind::RMDIR, FILE, [1, 0])),
        c("utimensat", SYS_utimensat, spec(kind::UTIMES, FILE, [2, 0])),
        c("utimes", SYS_utimes, spec(kind::UTIMES, FILE, [1, 0])),
        // Network: the critical lane (connects can alert on their own).
        c(
            "connect",
            SYS_connect,
            with_addr(spec(kind::CONNECT, SOCK, [0, 0]), 2, 3),
        ),
        c(
            "bind",
            SYS_bind,
            with_addr(spec(kind::BIND, SOCK, [0, 0]), 2, 3),
        ),
        c("listen", SYS_listen, spec(kind::LISTEN, SOCK, [0, 0])),
        c(
            "accept4",
            SYS_accept4,
            with_addr(
                spec(kind::ACCEPT, SOCK | spec_flags::ADDR_AT_EXIT, [0, 0]),
                2,
                3,
            ),
        ),
        c(
            "accept",
            SYS_accept,
            with_addr(
                spec(kind::ACCEPT, SOCK | spec_flags::ADDR_AT_EXIT, [0, 0]),
                2,
                3,
            ),
        ),
        // Privilege.
        c("setuid", SYS_setuid, spec(kind::SETUID, CRED, [0, 0])),
        c("setreuid", SYS_setreuid, spec(kind::SETUID, CRED, [0, 0])),
        c("setresuid", SYS_setresuid, spec(kind::SETUID, CRED, [0, 0])),
        c("setfsuid", SYS_setfsuid, spec(kind::SETUID, CRED, [0, 0])),
        c("setgid", SYS_setgid, spec(kind::SETGID, CRED, [0, 0])),
        c("setregid", SYS_setregid, spec(kind::SETGID, CRED, [0, 0])),
        c("setresgid", SYS_setresgid, spec(kind::SETGID, CRED, [0, 0])),
        c("setfsgid", SYS_setfsgid, spec(kind::SETGID, CRED, [0, 0])),
        c("capset", SYS_capset, spec(kind::CAPSET, CRED, [0, 0])),
        // Process tampering.
        c("ptrace", SYS_ptrace, spec(kind::PTRACE, CRIT, [0, 0])),
        c(
            "process_vm_writev",
            SYS_process_vm_writev,
            spec(kind::PROCESS_VM_WRITE, CRIT, [0, 0]),
        ),
        c("kill", SYS_kill, spec(kind::KILL, 0, [0, 0])),
        c("tkill", SYS_tkill, spec(kind::KILL, 0, [0, 0])),
        c("tgkill", SYS_tgkill, spec(kind::KILL, 0, [0, 0])),
        // Kernel and system.
        c(
            "init_module",
            SYS_init_module,
            spec(kind::MODULE_LOAD, CRIT, [3, 0]),
        ),
        c(
            "finit_module",
            SYS_finit_module,
            spec(kind::MODULE_LOAD, CRIT, [2, 0]),
        ),
        c(
            "delete_module",
            SYS_delete_module,
            spec(kind::MODULE_UNLOAD, CRIT, [1, 0]),
        ),
        c(
            "bpf",
            SYS_bpf,
            with_filter(
                spec(kind::BPF_LOAD, CRIT, [0, 0]),
                1,
                BPF_PROG_LOAD_CMD,
                true,
            ),
        ),
        c(
            "mount",
            SYS_mount,
            with_small(spec(kind::MOUNT, CRIT, [1, 2]), 3),
        ),
        // NB: the x86_64 syscall is umount2, its tracepoints are named after `umount`.
        c("umount", SYS_umount2, spec(kind::UMOUNT, CRIT, [1, 0])),
        c("unshare", SYS_unshare, spec(kind::UNSHARE, CRIT, [0, 0])),
        c("setns", SYS_setns, spec(kind::SETNS, CRIT, [0, 0])),
        c(
            "memfd_create",
            SYS_memfd_create,
            spec(kind::MEMFD_CREATE, CRIT, [1, 0]),
        ),
        c(
            "execveat",
            SYS_execveat,
            with_filter(spec(kind::EXEC_FD, CRIT, [2, 0]), 5, EMPTY_PATH_FLAG, false),
        ),
        c(
            "mprotect",
            SYS_mprotect,
            with_filter(spec(kind::EXEC_MEMORY, 0, [0, 0]), 3, PROT_EXEC_BIT, false),
        ),
    ]
}

/// Default watched prefixes for file events: where persistence, credentials, binaries and
/// staging live. Opens elsewhere never leave the kernel.
pub const DEFAULT_FILE_PREFIXES: &[&str] = &[
    "/etc/",
    "/root/",
    "/home/",
    "/boot/",
    "/bin/",
    "/sbin/",
    "/usr/bin/",
    "/usr/sbin/",
    "/usr/local/bin/",
    "/usr/lib/systemd/",
    "/lib/systemd/",
    "/usr/lib/modules/",
    "/lib/modules/",
    "/var/spool/cron/",
    "/var/log/",
    "/tmp/",
    "/dev/shm/",
    "/var/tmp/",
];

/// The syscalls that carry DNS over UDP, and which of them each number is.
pub fn dns_syscalls() -> [(&'static str, i64, u32); 6] {
    [
        ("sendto", libc::SYS_sendto, dns_op::SENDTO),
        ("sendmsg", libc::SYS_sendmsg, dns_op::SENDMSG),
        ("sendmmsg", libc::SYS_sendmmsg, dns_op::SENDMMSG),
        ("recvfrom", libc::SYS_recvfrom, dns_op::RECVFROM),
        ("recvmsg", libc::SYS_recvmsg, dns_op::RECVMSG),
        ("recvmmsg", libc::SYS_recvmmsg, dns_op::RECVMMSG),
    ]
}

/// io_uring opcodes (the stable `IORING_OP_*` uapi values) whose requests are reported: those
/// that touch files or the network.
pub const URING_OPS: &[(u8, &str)] = &[
    (1, "READV"),
    (2, "WRITEV"),
    (4, "READ_FIXED"),
    (5, "WRITE_FIXED"),
    (9, "SENDMSG"),
    (10, "RECVMSG"),
    (13, "ACCEPT"),
    (16, "CONNECT"),
    (17, "FALLOCATE"),
    (18, "OPENAT"),
    (22, "READ"),
    (23, "WRITE"),
    (26, "SEND"),
    (27, "RECV"),
    (28, "OPENAT2"),
    (30, "SPLICE"),
    (35, "RENAMEAT"),
    (36, "UNLINKAT"),
    (37, "MKDIRAT"),
    (38, "SYMLINKAT"),
    (39, "LINKAT"),
    (45, "SOCKET"),
    (53, "SEND_ZC"),
    (54, "SENDMSG_ZC"),
    (55, "READ_MULTISHOT"),
    (56, "WAITID"),
    (58, "FTRUNCATE"),
    (59, "BIND"),
    (60, "LISTEN"),
];

/// The name of an io_uring opcode, as `io_uring_submit_req` prints it.
pub fn uring_op_name(opcode: u32) -> Option<&'static str> {
    URING_OPS
        .iter()
        .find(|(op, _)| u32::from(*op) == opcode)
        .map(|(_, name)| *name)
}

/// The actions records of a kind can become (an unlinkat may be an rmdir).
pub fn actions_of(record_kind: u32) -> &'static [EventAction] {
    use EventAction as A;
    match record_kind {
        kind::OPEN => &[A::Open],
        kind::UNLINK => &[A::Unlink, A::Rmdir],
        kind::RENAME => &[A::Rename],
        kind::CHMOD => &[A::Chmod],
        kind::CHOWN => &[A::Chown],
        kind::TRUNCATE => &[A::Truncate],
        kind::LINK => &[A::Link],
        kind::SYMLINK => &[A::Symlink],
        kind::MKDIR => &[A::Mkdir],
        kind::RMDIR => &[A::Rmdir],
        kind::UTIMES => &[A::Utimes],
        kind::CONNECT => &[A::Connect],
        kind::BIND => &[A::Bind],
        kind::LISTEN => &[A::Listen],
        kind::ACCEPT => &[A::Accept],
        kind::SETUID => &[A::SetUid],
        kind::SETGID => &[A::SetGid],
        kind::CAPSET => &[A::Capset],
        kind::PTRACE => &[A::Ptrace],
        kind::PROCESS_VM_WRITE => &[A::ProcessVmWrite],
        kind::KILL => &[A::Kill],
        kind::MODULE_LOAD => &[A::ModuleLoad],
        kind::MODULE_UNLOAD => &[A::ModuleUnload],
        kind::BPF_LOAD => &[A::BpfLoad],
        kind::MOUNT => &[A::Mount],
        kind::UMOUNT => &[A::Umount],
        kind::UNSHARE => &[A::Unshare],
        kind::SETNS => &[A::Setns],
        kind::MEMFD_CREATE => &[A::MemfdCreate],
        kind::EXEC_FD => &[A::Exec],
        kind::EXEC_MEMORY => &[A::ExecMemory],
        kind::DNS => &[A::DnsQuery],
        kind::IO_URING => &[A::IoUring],
        _ => &[],
    }
}
