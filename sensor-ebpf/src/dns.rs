//! DNS over UDP: the payload of datagrams a process sends to, or receives from, port 53.
//!
//! Attached by the loader to the enter/exit tracepoints of sendto, sendmsg, sendmmsg, recvfrom,
//! recvmsg and recvmmsg (the `DNS_SYSCALLS` map says which syscall number is which). At enter,
//! the fd must be a datagram IP socket that is either unconnected or connected to port 53
//! (glibc's resolver connects, then send/sendmmsg + recvfrom); everything else stops there,
//! after a few kernel reads and no copy. A query's payload is copied at enter, a response's at
//! exit, from the first message (sendmmsg/recvmmsg) and its first iovec, at most
//! `DNS_PAYLOAD_CAP` bytes; userspace parses them. Records go to the critical lane, with
//! connects: userspace names a connect after an earlier answer, which it must have read
//! first. Userspace merges the lanes by time (sensor/src/merge.rs), but past its bound a
//! flooded bulk lane falls behind, and lookups are few next to file events.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use vigil_common::{dns_op, kind, sock_type, syscall_flags, SyscallRecord, DNS_PAYLOAD_CAP};

use crate::{
    bump, emit, fill_header, is_sensor, syscall::read_sockaddr, task::Task, EVENTS, FAULTS,
};

/// A DNS record being assembled: the fixed part, then the payload.
#[repr(C)]
pub struct DnsPending {
    record: SyscallRecord,
    data: [u8; DNS_PAYLOAD_CAP],
}

/// Syscall number -> [`dns_op`] (filled by the loader).
#[map]
static DNS_SYSCALLS: HashMap<u32, u32> = HashMap::with_max_entries(16, 0);

/// Datagram syscalls between enter and exit, by thread id.
#[map]
static DNS_PENDING: LruHashMap<u32, DnsPending> = LruHashMap::with_max_entries(1024, 0);

#[map]
static DNS_SCRATCH: PerCpuArray<DnsPending> = PerCpuArray::with_max_entries(1, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Port 53 as `skc_dport` and a sockaddr hold it: network byte order.
const PORT_53_BE: u16 = 53u16.to_be();

#[tracepoint]
pub fn dns_enter(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[tracepoint]
pub fn dns_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[inline(always)]
fn user<T: Copy>(address: u64) -> Option<T> {
    if address == 0 {
        return None;
    }
    // SAFETY: a probe read of the caller's memory; a bad address fails the helper.
    unsafe { bpf_probe_read_user(address as *const T) }.ok()
}

/// `struct msghdr` (64-bit): the name, its length and the first iovec's base and length.
#[inline(always)]
fn msghdr(address: u64) -> Option<(u64, u32, u64, u64)> {
    let name: u64 = user(address)?;
    let name_len: u32 = user(address + 8)?;
    let iov: u64 = user(address + 16)?;
    let iov_len: u64 = user(address + 24)?;
    let (base, len) = if iov_len > 0 {
        (user::<u64>(iov)?, user::<u64>(iov + 8)?)
    } else {
        (0, 0)
    };
    Some((name, name_len, base, len))
}

#[inline(always)]
fn peer_is_53(record: &SyscallRecord) -> bool {
    record.addr_len >= 4 && u16::from_ne_bytes([record.addr[2], record.addr[3]]) == PORT_53_BE
}

#[inline(always)]
fn copy_payload(pending: &mut DnsPending, buf: u64, len: u64) {
    let mut n = len as usize;
    if len > DNS_PAYLOAD_CAP as u64 {
        pending.record.flags |= syscall_flags::PAYLOAD_TRUNCATED;
        n = DNS_PAYLOAD_CAP;
    }
    // NB: masked behind a volatile read for older verifiers (see emit_exec).
    // SAFETY: reading a local.
    let n = unsafe { core::ptr::read_volatile(&n) } & (DNS_PAYLOAD_CAP * 2 - 1);
    if n == 0 || n > DNS_PAYLOAD_CAP || buf == 0 {
        return;
    }
    // SAFETY: bounded probe read of the caller's buffer into `data` (n <= its length).
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            pending.data.as_mut_ptr().cast(),
            n as u32,
            buf as *const core::ffi::c_void,
        )
    };
    if rc == 0 {
        pending.record.str_len[0] = n as u16;
    }
}

#[inline(always)]
fn try_enter(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_sensor((pid_tgid >> 32) as u32) {
        return None;
    }
    // SAFETY: offset 8 is `__syscall_nr` in every sys_enter_* format.
    let nr = unsafe { ctx.read_at::<i32>(8) }.ok()? as u32;
    // SAFETY: map values are only read here.
    let op = *unsafe { DNS_SYSCALLS.get(&nr) }?;
    // SAFETY: args are u64 slots from offset 16.
    let fd = unsafe { ctx.read_at::<u64>(16) }.ok()?;
    let socket = crate::socket::of_fd(fd)?;
    if socket.sock_type != sock_type::DGRAM
        || (socket.family != AF_INET && socket.family != AF_INET6)
    {
        return None;
    }
    let connected = socket.dport_be != 0;
    if connected && socket.dport_be != PORT_53_BE {
        return None;
    }
    let pending = unsafe { &mut *DNS_SCRATCH.get_ptr_mut(0)? };
    let record = &mut pending.record;
    record.nr = nr;
    record.flags = syscall_flags::PAYLOAD;
    if connected {
        record.flags |= syscall_flags::CONNECTED;
    }
    record.ret = 0;
    record.addr_len = 0;
    record.str_len = [0, 0];
    record.small = [0; 16];
    record.sock_type = socket.sock_type;
    record.sock_protocol = socket.protocol;
    for i in 0..6 {
        // SAFETY: args are u64 slots from offset 16 in every sys_enter_* format.
        record.args[i] = unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0);
    }
    if op <= dns_op::SENDMMSG {
        let (name, name_len, buf, len) = if op == dns_op::SENDTO {
            (
                record.args[4],
                record.args[5] as u32,
                record.args[1],
                record.args[2],
            )
        } else {
            // sendmmsg's first `struct mmsghdr` starts with its msghdr.
            msghdr(record.args[1])?
        };
        if !connected {
            if name == 0 {
                return None;
            }
            read_sockaddr(record, name, u64::from(name_len));
            if !peer_is_53(record) {
                return None;
            }
        }
        copy_payload(pending, buf, len);
    }
    let tid = pid_tgid as u32;
    DNS_PENDING.insert(&tid, pending, 0).ok()
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offset 16 is `ret` in every sys_exit_* format.
    let ret = unsafe { ctx.read_at::<i64>(16) }.unwrap_or(0);
    let tid = bpf_get_current_pid_tgid() as u32;
    let pending = DNS_PENDING.get_ptr_mut(&tid)?;
    // SAFETY: the entry is this thread's own; no other program touches it concurrently.
    let pending = unsafe { &mut *pending };
    let _ = DNS_PENDING.remove(&tid);
    let nr = pending.record.nr;
    // SAFETY: map values are only read here.
    let op = *unsafe { DNS_SYSCALLS.get(&nr) }?;
    pending.record.ret = ret;
    if op >= dns_op::RECVFROM {
        // A failed or empty receive (EAGAIN on a non-blocking socket, mostly) says nothing.
        if ret <= 0 {
            return None;
        }
        let args = pending.record.args;
        let (name, name_len, buf, len) = match op {
            dns_op::RECVFROM => {
                let name_len = user::<u32>(args[5]).unwrap_or(0);
                (args[4], name_len, args[1], ret as u64)
            }
            dns_op::RECVMSG => {
                let (name, name_len, buf, _) = msghdr(args[1])?;
                (name, name_len, buf, ret as u64)
            }
            _ => {
                // recvmmsg returns a message count; the first message's length follows its msghdr.
                let (name, name_len, buf, _) = msghdr(args[1])?;
                (name, name_len, buf, u64::from(user::<u32>(args[1] + 56)?))
            }
        };
        // The sender's address, when the caller asked for it (a connected socket's too).
        if name != 0 {
            read_sockaddr(&mut pending.record, name, u64::from(name_len));
        }
        let connected = pending.record.flags & syscall_flags::CONNECTED != 0;
        if !connected && !peer_is_53(&pending.record) {
            return None;
        }
        pending.record.flags |= syscall_flags::RECEIVED;
        copy_payload(pending, buf, len);
    }
    let len = pending.record.str_len[0] as usize & (DNS_PAYLOAD_CAP * 2 - 1);
    let size = core::mem::size_of::<SyscallRecord>() + len;
    // SAFETY: the helper has no preconditions.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    if !fill_header(&mut pending.record.header, kind::DNS, size as u32, task) {
        bump(&FAULTS, kind::DNS);
    }
    // SAFETY: reading a local (see emit_exec for why).
    let size = unsafe { core::ptr::read_volatile(&size) } & 0x7ff;
    if size > core::mem::size_of::<DnsPending>() {
        return None;
    }
    // SAFETY: `size` is within the pending value (checked just above).
    let bytes =
        unsafe { core::slice::from_raw_parts(pending as *const DnsPending as *const u8, size) };
    emit::<[u8]>(&EVENTS, bytes, kind::DNS);
    Some(())
}
