//! Ring-buffer bytes to typed raw events. Pure: no I/O, no clock; every length the kernel wrote
//! is checked against the bytes actually present, so a short or corrupt record is an error,
//! never a panic or an out-of-bounds read.

use std::mem::size_of;

use vigil_common::{
    exec_flags, kind, syscall_flags, ExecRecord, ExitRecord, RecordHeader, SyscallRecord, COMM_LEN,
};

/// The header fields userspace uses, copied out of the kernel layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub euid: u32,
    pub egid: u32,
    /// `None` when the task never logged in.
    pub loginuid: Option<u32>,
    pub cgroup_id: u64,
    pub start_boot_ns: u64,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawEvent {
    Exec {
        subject: Subject,
        /// The path as passed to exec, possibly relative.
        filename: String,
        args: Vec<String>,
        args_truncated: bool,
        /// A `kill` rule listed the path: the kernel sent SIGKILL at exec.
        killed_at_exec: bool,
    },
    Fork {
        child: Subject,
    },
    Exit {
        subject: Subject,
        /// Raw wait status: code in bits 8..16, signal in bits 0..7.
        status: u32,
    },
    Syscall(Box<SyscallEvent>),
}

/// A syscall and its result, as the generic enter/exit programs captured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    pub subject: Subject,
    /// One of `vigil_common::kind` (>= FIRST_SYSCALL).
    pub kind: u32,
    pub nr: u32,
    /// >= 0 success, -errno failure.
    pub ret: i64,
    pub args: [u64; 6],
    pub strings: [Option<String>; 2],
    pub truncated: bool,
    pub small: Option<String>,
    pub addr: Vec<u8>,
    /// Raw bytes the kernel copied (a DNS message), when the record carries a payload.
    pub payload: Vec<u8>,
    /// `vigil_common::syscall_flags` as the kernel set them.
    pub flags: u32,
    /// The socket's type (`SOCK_STREAM`...) and protocol, 0 when not a socket syscall or unknown.
    pub sock_type: u16,
    pub sock_protocol: u16,
}

impl RawEvent {
    pub fn subject(&self) -> &Subject {
        match self {
            RawEvent::Exec { subject, .. } | RawEvent::Exit { subject, .. } => subject,
            RawEvent::Fork { child } => child,
            RawEvent::Syscall(event) => &event.subject,
        }
    }
}

/// A record kind's name, for logs and loss reports.
pub fn kind_name(record_kind: u32) -> &'static str {
    match record_kind {
        kind::EXEC => "exec",
        kind::FORK => "fork",
        kind::EXIT => "exit",
        kind::OPEN => "open",
        kind::UNLINK => "unlink",
        kind::RENAME => "rename",
        kind::CHMOD => "chmod",
        kind::CHOWN => "chown",
        kind::TRUNCATE => "truncate",
        kind::LINK => "link",
        kind::SYMLINK => "symlink",
        kind::MKDIR => "mkdir",
        kind::RMDIR => "rmdir",
        kind::UTIMES => "utimes",
        kind::CONNECT => "connect",
        kind::BIND => "bind",
        kind::LISTEN => "listen",
        kind::ACCEPT => "accept",
        kind::SETUID => "setuid",
        kind::SETGID => "setgid",
        kind::CAPSET => "capset",
        kind::PTRACE => "ptrace",
        kind::PROCESS_VM_WRITE => "process_vm_write",
        kind::KILL => "kill",
        kind::MODULE_LOAD => "module_load",
        kind::MODULE_UNLOAD => "module_unload",
        kind::BPF_LOAD => "bpf_load",
        kind::MOUNT => "mount",
        kind::UMOUNT => "umount",
        kind::UNSHARE => "unshare",
        kind::SETNS => "setns",
        kind::MEMFD_CREATE => "memfd_create",
        kind::EXEC_FD => "exec_fd",
        kind::EXEC_MEMORY => "exec_memory",
        kind::DNS => "dns",
        kind::IO_URING => "io_uring",
        _ => "unknown",
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte layout")]
    Short { len: usize, need: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("record declares {declared} bytes but {len} arrived")]
    SizeMismatch { declared: usize, len: usize },
}

pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    let header: RecordHeader = read_pod(bytes)?;
    let declared = header.size as usize;
    if declared > bytes.len() {
        return Err(DecodeError::SizeMismatch {
            declared,
            len: bytes.len(),
        });
    }
    let bytes = &bytes[..declared];
    let subject = subject(&header);
    match header.kind {
        kind::EXEC => {
            let record: ExecRecord = read_pod(bytes)?;
            let filename_len = usize::from(record.filename_len);
            let argv_len = usize::from(record.argv_len);
            let need = size_of::<ExecRecord>() + filename_len + argv_len;
            let tail = bytes
                .get(size_of::<ExecRecord>()..need)
                .ok_or(DecodeError::Short {
                    len: bytes.len(),
                    need,
                })?;
            let (filename, argv) = tail.split_at(filename_len);
            Ok(RawEvent::Exec {
                subject,
                filename: c_string(filename),
                args: split_argv(argv),
                args_truncated: record.flags & exec_flags::ARGS_TRUNCATED != 0,
                killed_at_exec: record.flags & exec_flags::KILLED != 0,
            })
        }
        kind::FORK => Ok(RawEvent::Fork { child: subject }),
        kind::EXIT => {
            let record: ExitRecord = read_pod(bytes)?;
            Ok(RawEvent::Exit {
                subject,
                status: record.exit_status,
            })
        }
        k if (kind::FIRST_SYSCALL..kind::COUNT).contains(&k) => {
            let record: SyscallRecord = read_pod(bytes)?;
            let len0 = usize::from(record.str_len[0]);
            let len1 = usize::from(record.str_len[1]);
            let start = size_of::<SyscallRecord>();
            let need = start + len0 + len1;
            let tail = bytes.get(start..need).ok_or(DecodeError::Short {
                len: bytes.len(),
                need,
            })?;
            let (first, second) = tail.split_at(len0);
            let text = |b: &[u8]| (!b.is_empty()).then(|| c_string(b));
            let addr_len = usize::from(record.addr_len).min(record.addr.len());
            let (first, payload) = if record.flags & syscall_flags::PAYLOAD != 0 {
                (&[][..], first.to_vec())
            } else {
                (first, Vec::new())
            };
            Ok(RawEvent::Syscall(Box::new(SyscallEvent {
                subject,
                kind: k,
                nr: record.nr,
                ret: record.ret,
                args: record.args,
                strings: [text(first), text(second)],
                truncated: record.flags
                    & (syscall_flags::STR0_TRUNCATED | syscall_flags::STR1_TRUNCATED)
                    != 0,
                small: text(&record.small).filter(|s| !s.is_empty()),
                addr: record.addr[..addr_len].to_vec(),
                payload,
                flags: record.flags,
                sock_type: record.sock_type,
                sock_protocol: record.sock_protocol,
            })))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn subject(header: &RecordHeader) -> Subject {
    let RecordHeader {
        kind: _,
        size: _,
        boot_ns,
        pid,
        tgid,
        ppid,
        uid,
        gid,
        euid,
        egid,
        loginuid,
        cgroup_id,
        start_boot_ns,
        comm,
    } = *header;
    Subject {
        boot_ns,
        pid,
        tgid,
        ppid,
        uid,
        gid,
        euid,
        egid,
        loginuid: (loginuid != vigil_common::NO_LOGIN_UID).then_some(loginuid),
        cgroup_id,
        start_boot_ns,
        comm: c_string(&comm[..COMM_LEN]),
    }
}

/// Copies a `repr(C)` record out of possibly unaligned bytes.
fn read_pod<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need: size_of::<T>(),
        });
    }
    // SAFETY: length checked above; T is one of the integer-only records of vigil-common,
    // valid for any bit pattern; read_unaligned copes with the ring buffer's 8-byte alignment
    // not matching T's.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Text up to the first NUL, with invalid UTF-8 replaced rather than dropped.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// argv as the kernel lays it out: NUL-terminated strings back to back.
fn split_argv(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u32, size: usize) -> RecordHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..2].copy_from_slice(b"sh");
        RecordHeader {
            kind,
            size: size as u32,
            boot_ns: 5,
            pid: 100,
            tgid: 100,
            ppid: 99,
            uid: 1000,
            gid: 1000,
            euid: 0,
            egid: 0,
            loginuid: vigil_common::NO_LOGIN_UID,
            cgroup_id: 7,
            start_boot_ns: 4,
            comm,
        }
    }

    fn as_bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) integer record.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn exec_bytes(filename: &[u8], argv: &[u8], flags: u32) -> Vec<u8> {
        let size = size_of::<ExecRecord>() + filename.len() + argv.len();
        let record = ExecRecord {
            header: header(kind::EXEC, size),
            filename_len: filename.len() as u16,
            argv_len: argv.len() as u16,
            flags,
        };
        let mut bytes = as_bytes(&record);
        bytes.extend_from_slice(filename);
        bytes.extend_from_slice(argv);
        bytes
    }

    #[test]
    fn exec_record_decodes_path_and_argv() {
        let bytes = exec_bytes(
            b"/tmp/x/sh\0",
            b"sh\0-c\0echo hi\0",
            exec_flags::ARGS_TRUNCATED,
        );
        let RawEvent::Exec {
            subject,
            filename,
            args,
            args_truncated,
            killed_at_exec,
        } = decode(&bytes).unwrap()
        else {
            panic!("not an exec")
        };
        assert_eq!(filename, "/tmp/x/sh");
        assert_eq!(args, ["sh", "-c", "echo hi"]);
        assert!(args_truncated);
        assert!(!killed_at_exec);
        assert_eq!(subject.comm, "sh");
        assert_eq!(subject.loginuid, None);
        assert_eq!(
            (subject.pid, subject.ppid, subject.uid, subject.euid),
            (100, 99, 1000, 0)
        );
    }

    #[test]
    fn empty_argument_survives_and_empty_argv_is_empty() {
        let bytes = exec_bytes(b"/bin/x\0", b"x\0\0last\0", 0);
        let RawEvent::Exec { args, .. } = decode(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(args, ["x", "", "last"]);
        let bytes = exec_bytes(b"/bin/x\0", b"", 0);
        let RawEvent::Exec { args, .. } = decode(&bytes).unwrap() else {
            panic!()
        };
        assert!(args.is_empty());
    }

    #[test]
    fn truncated_and_lying_records_are_errors() {
        let bytes = exec_bytes(b"/bin/x\0", b"x\0", 0);
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::SizeMismatch { .. })
        ));
        assert!(matches!(
            decode(&bytes[..10]),
            Err(DecodeError::Short { .. })
        ));
        // Header claims more argv than the record holds.
        let mut lying = bytes.clone();
        lying[82..84].copy_from_slice(&500u16.to_ne_bytes());
        assert!(matches!(decode(&lying), Err(DecodeError::Short { .. })));
        let unknown = as_bytes(&header(99, size_of::<RecordHeader>()));
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn exit_status_is_carried_raw() {
        let record = ExitRecord {
            header: header(kind::EXIT, size_of::<ExitRecord>()),
            exit_status: 3 << 8,
            _pad: 0,
        };
        assert!(matches!(
            decode(&as_bytes(&record)),
            Ok(RawEvent::Exit { status: 768, .. })
        ));
    }
}
