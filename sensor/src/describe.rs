//! A captured syscall as ECS fields: which action it was, the file, the endpoints, the target
//! process, and the facts without an ECS home. Pure: paths relative to a directory fd are
//! resolved through the closure the caller passes (enrichment owns the host view).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use vigil_common::kind;
use vigil_proto::{Dns, DnsQuestion, Endpoint, ErrorInfo, EventAction, File, Network, Target};

use crate::decode::SyscallEvent;

/// `AT_FDCWD` as the syscall received it (an int in a 64-bit slot).
pub const AT_FDCWD: i32 = -100;

/// What enrichment adds to the common process fields for a syscall record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Described {
    pub action: EventAction,
    pub file: Option<File>,
    pub destination: Option<Endpoint>,
    pub source: Option<Endpoint>,
    pub network: Option<Network>,
    pub dns: Option<Dns>,
    pub target: Option<Target>,
    pub error: Option<ErrorInfo>,
    pub details: BTreeMap<String, String>,
}

/// Resolves a path argument: `(dirfd, path)` to an absolute path; `(fd, None)` to what the fd
/// refers to.
pub trait PathResolver {
    fn resolve(&self, dirfd: i32, path: Option<&str>) -> Option<String>;
}

fn arg_i32(value: u64) -> i32 {
    value as u32 as i32
}

fn name(nr: u32) -> &'static str {
    if nr == vigil_common::hook_nr::FILE_OPEN {
        return "security_file_open";
    }
    // NB: built once: building the syscall table for every record was a measurable share of
    // the sensor's time per event.
    static NAMES: std::sync::OnceLock<std::collections::HashMap<i64, &'static str>> =
        std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let mut names = std::collections::HashMap::new();
        let dns = crate::syscalls::dns_syscalls()
            .into_iter()
            .map(|(name, nr, _)| (name, nr));
        // The first of a number wins, as the search this replaces found it.
        for (name, nr) in crate::syscalls::table()
            .into_iter()
            .map(|c| (c.name, c.nr))
            .chain(dns)
        {
            names.entry(nr).or_insert(name);
        }
        names
    });
    names.get(&i64::from(nr)).copied().unwrap_or("unknown")
}

/// ECS `network.transport` from the socket's type and protocol, as far as they tell it.
fn transport(sock_type: u16, protocol: u16) -> String {
    use vigil_common::sock_type;
    match (i32::from(protocol), sock_type) {
        (libc::IPPROTO_TCP, _) | (0, sock_type::STREAM) => "tcp".into(),
        (libc::IPPROTO_UDP, _) | (0, sock_type::DGRAM) => "udp".into(),
        (libc::IPPROTO_ICMP, _) => "icmp".into(),
        (libc::IPPROTO_ICMPV6, _) => "ipv6-icmp".into(),
        (libc::IPPROTO_SCTP, _) => "sctp".into(),
        (libc::IPPROTO_MPTCP, _) => "mptcp".into(),
        (0, 0) => "unknown".into(),
        (p, _) => p.to_string(),
    }
}

/// `None` when the record is not worth an event (a socket family that is not IP).
pub fn describe(event: &SyscallEvent, paths: &dyn PathResolver) -> Option<Described> {
    let SyscallEvent {
        kind: record_kind,
        nr,
        ret,
        args,
        strings,
        small,
        addr,
        ..
    } = event;
    let syscall = if *record_kind == kind::IO_URING {
        "io_uring"
    } else {
        name(*nr)
    };
    let str0 = strings[0].as_deref();
    let str1 = strings[1].as_deref();
    let at = |dirfd: u64, path: Option<&str>| paths.resolve(arg_i32(dirfd), path);
    let cwd = |path: Option<&str>| paths.resolve(AT_FDCWD, path);
    let mut d = Described {
        error: (*ret < 0).then(|| errno(*ret)),
        ..Described::default()
    };
    d.details.insert("syscall".into(), syscall.into());
    let file = |path: Option<String>| File {
        path: path.unwrap_or_default(),
        ..File::default()
    };
    match *record_kind {
        kind::OPEN => {
            d.action = EventAction::Open;
            let (path, flags, mode) = match syscall {
                "openat" => (at(args[0], str0), Some(args[2]), args[3]),
                "openat2" => (at(args[0], str0), None, 0),
                "creat" => (cwd(str0), Some(0o1101), args[1]),
                _ => (cwd(str0), Some(args[1]), args[2]),
            };
            let mut f = file(path);
            if let Some(flags) = flags {
                f.flags = open_flags(flags);
                if flags & 0o100 != 0 {
                    f.mode = Some(format!("{:04o}", mode & 0o7777));
                }
            }
            d.file = Some(f);
        }
        kind::UNLINK => {
            let (path, flags) = match syscall {
                "unlinkat" => (at(args[0], str0), args[2]),
                _ => (cwd(str0), 0),
            };
            // unlinkat(AT_REMOVEDIR) is rmdir.
            d.action = if flags & 0x200 != 0 {
                EventAction::Rmdir
            } else {
                EventAction::Unlink
            };
            d.file = Some(file(path));
        }
        kind::RENAME | kind::LINK => {
            d.action = if *record_kind == kind::RENAME {
                EventAction::Rename
            } else {
                EventAction::Link
            };
            let (old, new) = match syscall {
                "rename" | "link" => (cwd(str0), cwd(str1)),
                _ => (at(args[0], str0), at(args[2], str1)),
            };
            // A rename acts on the old name; a link creates the new one.
            let (path, target) = if *record_kind == kind::RENAME {
                (old, new)
            } else {
                (new, old)
            };
            d.file = Some(File {
                target_path: target,
                ..file(path)
            });
        }
        kind::SYMLINK => {
            d.action = EventAction::Symlink;
            let link = match syscall {
                "symlinkat" => at(args[1], str1),
                _ => cwd(str1),
            };
            d.file = Some(File {
                target_path: str0.map(str::to_owned),
                ..file(link)
            });
        }
        kind::CHMOD => {
            d.action = EventAction::Chmod;
            let (path, mode) = match syscall {
                "fchmodat" => (at(args[0], str0), args[2]),
                "fchmod" => (paths.resolve(arg_i32(args[0]), None), args[1]),
                _ => (cwd(str0), args[1]),
            };
            d.file = Some(File {
                mode: Some(format!("{:04o}", mode & 0o7777)),
                ..file(path)
            });
        }
        kind::CHOWN => {
            d.action = EventAction::Chown;
            let (path, uid, gid) = match syscall {
                "fchownat" => (at(args[0], str0), args[2], args[3]),
                "fchown" => (paths.resolve(arg_i32(args[0]), None), args[1], args[2]),
                _ => (cwd(str0), args[1], args[2]),
            };
            d.file = Some(File {
                uid: Some(uid as u32),
                gid: Some(gid as u32),
                ..file(path)
            });
        }
        kind::TRUNCATE => {
            d.action = EventAction::Truncate;
            d.file = Some(file(cwd(str0)));
            d.details.insert("length".into(), args[1].to_string());
        }
        kind::MKDIR | kind::RMDIR => {
            d.action = if *record_kind == kind::MKDIR {
                EventAction::Mkdir
            } else {
                EventAction::Rmdir
            };
            let (path, mode) = match syscall {
                "mkdirat" => (at(args[0], str0), Some(args[2])),
                "mkdir" => (cwd(str0), Some(args[1])),
                _ => (cwd(str0), None),
            };
            d.file = Some(File {
                mode: mode.map(|m| format!("{:04o}", m & 0o7777)),
                ..file(path)
            });
        }
        kind::UTIMES => {
            d.action = EventAction::Utimes;
            let path = match syscall {
                // utimensat(fd, NULL, ...) is futimens on the fd itself.
                "utimensat" => at(args[0], str0),
                _ => cwd(str0),
            };
            d.file = Some(file(path));
        }
        kind::CONNECT | kind::BIND | kind::ACCEPT => {
            let (endpoint, ip_kind) = sockaddr(addr)?;
            let direction = match *record_kind {
                kind::CONNECT => {
                    d.action = EventAction::Connect;
                    d.destination = Some(endpoint);
                    "egress"
                }
                kind::BIND => {
                    d.action = EventAction::Bind;
                    d.source = Some(endpoint);
                    "listen"
                }
                _ => {
                    d.action = EventAction::Accept;
                    d.source = Some(endpoint);
                    "ingress"
                }
            };
            d.network = Some(Network {
                transport: transport(event.sock_type, event.sock_protocol),
                kind: ip_kind.into(),
                direction: direction.into(),
            });
            d.details.insert("fd".into(), arg_i32(args[0]).to_string());
        }
        kind::LISTEN => {
            d.action = EventAction::Listen;
            if event.sock_type != 0 {
                d.details.insert(
                    "network.transport".into(),
                    transport(event.sock_type, event.sock_protocol),
                );
            }
            d.details.insert("fd".into(), arg_i32(args[0]).to_string());
            d.details
                .insert("backlog".into(), arg_i32(args[1]).to_string());
        }
        kind::SETUID | kind::SETGID => {
            let (action, prefix) = if *record_kind == kind::SETUID {
                (EventAction::SetUid, "uid")
            } else {
                (EventAction::SetGid, "gid")
            };
            d.action = action;
            let names: &[&str] = match syscall {
                "setreuid" | "setregid" => &["real", "effective"],
                "setresuid" | "setresgid" => &["real", "effective", "saved"],
                "setfsuid" | "setfsgid" => &["fs"],
                _ => &["new"],
            };
            for (i, which) in names.iter().enumerate() {
                // -1 leaves an id unchanged; say so rather than print 4294967295.
                let id = args[i] as u32;
                if id != u32::MAX {
                    d.details
                        .insert(format!("{prefix}.{which}"), id.to_string());
                }
            }
            // The id the process switches to, as rules ask for it: the effective one where the
            // call sets several, else the only one.
            let becomes = if names.len() == 1 || args[1] as u32 == u32::MAX {
                args[0] as u32
            } else {
                args[1] as u32
            };
            if becomes != u32::MAX {
                d.details
                    .insert(format!("new_{prefix}"), becomes.to_string());
            }
        }
        kind::CAPSET => d.action = EventAction::Capset,
        kind::PTRACE => {
            d.action = EventAction::Ptrace;
            d.target = Some(Target {
                pid: args[1] as u32,
                ptrace_request: Some(args[0] as i64),
                ..Target::default()
            });
            d.details
                .insert("ptrace.request".into(), ptrace_request(args[0]).into());
        }
        kind::PROCESS_VM_WRITE => {
            d.action = EventAction::ProcessVmWrite;
            d.target = Some(Target {
                pid: args[0] as u32,
                ..Target::default()
            });
        }
        kind::KILL => {
            d.action = EventAction::Kill;
            let (pid, signal) = match syscall {
                "tgkill" => (args[1], args[2]),
                _ => (args[0], args[1]),
            };
            d.target = Some(Target {
                pid: arg_i32(pid) as u32,
                signal: Some(arg_i32(signal)),
                ..Target::default()
            });
        }
        kind::MODULE_LOAD => {
            d.action = EventAction::ModuleLoad;
            if syscall == "finit_module" {
                d.file = Some(file(paths.resolve(arg_i32(args[0]), None)));
            } else {
                d.details
                    .insert("module.image_bytes".into(), args[1].to_string());
            }
            if let Some(params) = str0.filter(|p| !p.is_empty()) {
                d.details.insert("module.params".into(), params.into());
            }
        }
        kind::MODULE_UNLOAD => {
            d.action = EventAction::ModuleUnload;
            d.details
                .insert("module.name".into(), str0.unwrap_or_default().into());
        }
        kind::BPF_LOAD => {
            d.action = EventAction::BpfLoad;
            d.details.insert("bpf.cmd".into(), "BPF_PROG_LOAD".into());
        }
        kind::MOUNT => {
            d.action = EventAction::Mount;
            d.file = Some(file(cwd(str1)));
            d.details
                .insert("mount.source".into(), str0.unwrap_or_default().into());
            d.details
                .insert("mount.fstype".into(), small.clone().unwrap_or_default());
            d.details
                .insert("mount.flags".into(), format!("{:#x}", args[3]));
        }
        kind::UMOUNT => {
            d.action = EventAction::Umount;
            d.file = Some(file(cwd(str0)));
            d.details
                .insert("umount.flags".into(), format!("{:#x}", args[1]));
        }
        kind::UNSHARE | kind::SETNS => {
            d.action = if *record_kind == kind::UNSHARE {
                EventAction::Unshare
            } else {
                EventAction::Setns
            };
            let flags = if *record_kind == kind::UNSHARE {
                args[0]
            } else {
                args[1]
            };
            d.details
                .insert("namespaces".into(), namespace_flags(flags));
        }
        kind::MEMFD_CREATE => {
            d.action = EventAction::MemfdCreate;
            d.file = Some(file(Some(format!("memfd:{}", str0.unwrap_or_default()))));
            d.details
                .insert("memfd.flags".into(), format!("{:#x}", args[1]));
        }
        kind::EXEC_FD => {
            d.action = EventAction::Exec;
            d.file = Some(file(paths.resolve(arg_i32(args[0]), None)));
            d.details.insert("exec.fileless".into(), "true".into());
            d.details
                .insert("exec.fd".into(), arg_i32(args[0]).to_string());
        }
        kind::EXEC_MEMORY => {
            d.action = EventAction::ExecMemory;
            d.details
                .insert("memory.address".into(), format!("{:#x}", args[0]));
            d.details
                .insert("memory.length".into(), args[1].to_string());
            d.details.insert("prot".into(), protection(args[2]));
        }
        kind::DNS => {
            // Not DNS after all (port 53 carries other things): no event.
            let message = crate::dns::parse(&event.payload).ok()?;
            d.action = EventAction::DnsQuery;
            let received = event.flags & vigil_common::syscall_flags::RECEIVED != 0;
            let (peer, ip_kind) = match sockaddr(addr) {
                Some((endpoint, ip_kind)) => (Some(endpoint), ip_kind),
                None => (None, "unknown"),
            };
            // The resolver is the far end whichever way the message went.
            d.destination = peer;
            d.network = Some(Network {
                transport: transport(event.sock_type, event.sock_protocol),
                kind: ip_kind.into(),
                direction: if received { "ingress" } else { "egress" }.into(),
            });
            d.dns = Some(Dns {
                kind: if message.response { "answer" } else { "query" }.into(),
                id: message.id,
                response_code: message.rcode,
                question: DnsQuestion {
                    name: message.name,
                    kind: message.qtype,
                },
                resolved_ip: message.addresses.iter().map(|a| a.to_string()).collect(),
            });
            if event.flags & vigil_common::syscall_flags::PAYLOAD_TRUNCATED != 0 {
                d.details.insert("dns.truncated".into(), "true".into());
            }
        }
        kind::IO_URING => {
            d.action = EventAction::IoUring;
            let op = crate::syscalls::uring_op_name(*nr).unwrap_or("unknown");
            d.details.insert("io_uring.opcode".into(), op.into());
            d.details
                .insert("io_uring.user_data".into(), format!("{:#x}", args[1]));
            let fd = args[0] as u32 as i32;
            // An open through io_uring names its file by the fd it returns.
            let fd = if matches!(op, "OPENAT" | "OPENAT2") {
                (*ret >= 0).then_some(*ret as i32)
            } else {
                (args[0] != u64::MAX).then_some(fd)
            };
            match fd {
                Some(fd) => {
                    d.details.insert("io_uring.fd".into(), fd.to_string());
                    d.file = Some(file(paths.resolve(fd, None)));
                }
                None => {
                    d.details
                        .insert("io_uring.fixed_file".into(), "true".into());
                }
            }
            if *ret >= 0 && !matches!(op, "OPENAT" | "OPENAT2") {
                d.details.insert("io_uring.result".into(), ret.to_string());
            }
        }
        _ => return None,
    }
    Some(d)
}

fn errno(ret: i64) -> ErrorInfo {
    let code = i32::try_from(-ret).unwrap_or(i32::MAX);
    ErrorInfo {
        code,
        message: format!("{:?}", nix::errno::Errno::from_raw(code)),
    }
}

/// Open flags by name, in the order `open(2)` lists them.
pub fn open_flags(flags: u64) -> Vec<String> {
    let mut names = Vec::new();
    match flags & 0o3 {
        0 => names.push("read"),
        1 => names.push("write"),
        _ => names.extend(["read", "write"]),
    }
    for (bit, name) in [
        (0o100, "create"),
        (0o200, "exclusive"),
        (0o1000, "truncate"),
        (0o2000, "append"),
        (0o200000, "directory"),
        (0o20000000, "tmpfile"),
    ] {
        if flags & bit != 0 && !(name == "directory" && flags & 0o20000000 != 0) {
            names.push(name);
        }
    }
    names.into_iter().map(str::to_owned).collect()
}

/// IP socket addresses only; other families (unix, netlink) are not network events.
fn sockaddr(addr: &[u8]) -> Option<(Endpoint, &'static str)> {
    let family = u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]);
    let port = u16::from_be_bytes([*addr.get(2)?, *addr.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = addr.get(4..8)?.try_into().ok()?;
            Some((
                Endpoint {
                    ip: Ipv4Addr::from(ip).to_string(),
                    port,
                    domain: None,
                },
                "ipv4",
            ))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = addr.get(8..24)?.try_into().ok()?;
            Some((
                Endpoint {
                    ip: Ipv6Addr::from(ip).to_string(),
                    port,
                    domain: None,
                },
                "ipv6",
            ))
        }
        _ => None,
    }
}

fn ptrace_request(request: u64) -> &'static str {
    match request {
        0 => "PTRACE_TRACEME",
        1 | 2 => "PTRACE_PEEKTEXT",
        4 => "PTRACE_POKETEXT",
        5 => "PTRACE_POKEDATA",
        6 => "PTRACE_POKEUSER",
        13 => "PTRACE_SETREGS",
        16 => "PTRACE_ATTACH",
        17 => "PTRACE_DETACH",
        0x4206 => "PTRACE_SEIZE",
        _ => "other",
    }
}

fn namespace_flags(flags: u64) -> String {
    let names: Vec<&str> = [
        (0x0002_0000, "mnt"),
        (0x0200_0000, "cgroup"),
        (0x0400_0000, "uts"),
        (0x0800_0000, "ipc"),
        (0x1000_0000, "user"),
        (0x2000_0000, "pid"),
        (0x4000_0000, "net"),
        (0x0000_0080, "time"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| n)
    .collect();
    if names.is_empty() {
        format!("{flags:#x}")
    } else {
        names.join(",")
    }
}

fn protection(prot: u64) -> String {
    let mut text = String::new();
    for (bit, c) in [(1, 'r'), (2, 'w'), (4, 'x')] {
        text.push(if prot & bit != 0 { c } else { '-' });
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Subject;

    struct Cwd;
    impl PathResolver for Cwd {
        fn resolve(&self, dirfd: i32, path: Option<&str>) -> Option<String> {
            match (dirfd, path) {
                (_, Some(p)) if p.starts_with('/') => Some(p.to_owned()),
                (AT_FDCWD, Some(p)) => Some(format!("/work/{p}")),
                (3, Some(p)) => Some(format!("/dir3/{p}")),
                (3, None) => Some("/dir3".into()),
                _ => None,
            }
        }
    }

    fn event(
        kind: u32,
        nr: i64,
        ret: i64,
        args: [u64; 6],
        strings: [Option<&str>; 2],
    ) -> SyscallEvent {
        SyscallEvent {
            subject: Subject {
                boot_ns: 0,
                pid: 1,
                tgid: 1,
                ppid: 0,
                uid: 0,
                gid: 0,
                euid: 0,
                egid: 0,
                loginuid: None,
                cgroup_id: 0,
                start_boot_ns: 0,
                comm: "t".into(),
            },
            kind,
            nr: nr as u32,
            ret,
            args,
            strings: strings.map(|s| s.map(str::to_owned)),
            truncated: false,
            small: None,
            addr: Vec::new(),
            payload: Vec::new(),
            flags: 0,
            sock_type: 0,
            sock_protocol: 0,
        }
    }

    #[test]
    fn openat_relative_to_cwd_with_flags_and_mode() {
        let e = event(
            kind::OPEN,
            libc::SYS_openat,
            3,
            [(-100i64) as u64, 0, 0o1101, 0o644, 0, 0],
            [Some("x.txt"), None],
        );
        let d = describe(&e, &Cwd).unwrap();
        let f = d.file.unwrap();
        assert_eq!(d.action, EventAction::Open);
        assert_eq!(f.path, "/work/x.txt");
        assert_eq!(f.flags, ["write", "create", "truncate"]);
        assert_eq!(f.mode.as_deref(), Some("0644"));
        assert!(d.error.is_none());
    }

    #[test]
    fn failures_carry_the_errno_by_name() {
        let e = event(
            kind::OPEN,
            libc::SYS_openat,
            -13,
            [3, 0, 0, 0, 0, 0],
            [Some("secret"), None],
        );
        let d = describe(&e, &Cwd).unwrap();
        assert_eq!(d.file.unwrap().path, "/dir3/secret");
        assert_eq!(
            d.error,
            Some(ErrorInfo {
                code: 13,
                message: "EACCES".into()
            })
        );
    }

    #[test]
    fn connect_v4_and_v6_addresses_decode_and_unix_sockets_are_not_network() {
        let mut e = event(
            kind::CONNECT,
            libc::SYS_connect,
            0,
            [5, 0, 16, 0, 0, 0],
            [None, None],
        );
        e.addr = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let d = describe(&e, &Cwd).unwrap();
        assert_eq!(
            d.destination.as_ref().map(|x| (x.ip.as_str(), x.port)),
            Some(("127.0.0.1", 8080))
        );
        assert_eq!(d.network.unwrap().kind, "ipv4");
        e.sock_type = vigil_common::sock_type::STREAM;
        e.sock_protocol = libc::IPPROTO_TCP as u16;
        assert_eq!(
            describe(&e, &Cwd).unwrap().network.unwrap().transport,
            "tcp"
        );
        e.sock_type = vigil_common::sock_type::DGRAM;
        e.sock_protocol = 0;
        assert_eq!(
            describe(&e, &Cwd).unwrap().network.unwrap().transport,
            "udp"
        );
        let mut v6 = vec![10, 0, 0, 80, 0, 0, 0, 0];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 0, 0, 0]);
        e.addr = v6;
        let d = describe(&e, &Cwd).unwrap();
        assert_eq!(d.destination.unwrap().ip, "::1");
        e.addr = vec![1, 0, b'/', b'r'];
        assert!(describe(&e, &Cwd).is_none());
    }

    #[test]
    fn setresuid_reports_only_changed_ids() {
        let e = event(
            kind::SETUID,
            libc::SYS_setresuid,
            0,
            [u32::MAX as u64, 0, u32::MAX as u64, 0, 0, 0],
            [None, None],
        );
        let d = describe(&e, &Cwd).unwrap();
        assert_eq!(
            d.details.get("uid.effective").map(String::as_str),
            Some("0")
        );
        assert_eq!(d.details.get("new_uid").map(String::as_str), Some("0"));
        assert!(!d.details.contains_key("uid.real"));
    }

    #[test]
    fn unlinkat_with_removedir_is_rmdir_and_rename_keeps_both_names() {
        let e = event(
            kind::UNLINK,
            libc::SYS_unlinkat,
            0,
            [(-100i64) as u64, 0, 0x200, 0, 0, 0],
            [Some("d"), None],
        );
        assert_eq!(describe(&e, &Cwd).unwrap().action, EventAction::Rmdir);
        let e = event(
            kind::RENAME,
            libc::SYS_rename,
            0,
            [0; 6],
            [Some("a"), Some("/etc/b")],
        );
        let f = describe(&e, &Cwd).unwrap().file.unwrap();
        assert_eq!(
            (f.path.as_str(), f.target_path.as_deref()),
            ("/work/a", Some("/etc/b"))
        );
    }

    #[test]
    fn namespace_and_protection_flags_read_as_names() {
        assert_eq!(namespace_flags(0x2002_0000), "mnt,pid");
        assert_eq!(protection(5), "r-x");
    }
}
