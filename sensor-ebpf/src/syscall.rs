//! Generic syscall capture: one enter and one exit program, attached by the loader to the
//! `syscalls/sys_enter_*` / `sys_exit_*` tracepoints of every syscall it wants. Both share the
//! stable layout of those tracepoints (`__syscall_nr` at 8; args or `ret` at 16), and a
//! per-syscall [`SyscallSpec`] says what to copy: user strings (paths) and socket addresses are
//! read at enter, while the caller's memory still holds them; the record is completed with
//! the result and sent at exit, so every event carries success or its errno.
//!
//! Filters run at enter, before anything is copied to a ring buffer: the watched-path prefix
//! trie for file events, and an argument test (e.g. `mprotect` only with PROT_EXEC).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray},
    programs::TracePointContext,
    EbpfContext,
};
use vigil_common::{
    spec_flags, syscall_flags, SyscallRecord, SyscallSpec, PREFIX_KEY_LEN, SOCKADDR_CAP,
    SPEC_SLOTS, SYSCALL_STR_CAP,
};

use crate::{bump, emit, fill_header, is_sensor, task::Task, BULK, CONFIG, EVENTS, FAULTS};

/// A syscall record being assembled: the fixed part, then both strings packed back to back.
#[repr(C)]
pub struct Pending {
    record: SyscallRecord,
    data: [u8; 2 * SYSCALL_STR_CAP],
}

/// What to capture per syscall number (filled by the loader; `kind` 0: not captured). An
/// array indexed by number rather than a hash map: the verifier inlines an array lookup into
/// a bounds check and an add, where a hash lookup hashes and walks a bucket on every enter
/// and every exit of every attached syscall.
#[map]
static SPECS: Array<SyscallSpec> = Array::with_max_entries(SPEC_SLOTS, 0);

/// The spec of syscall `nr`, if it is captured.
#[inline(always)]
fn spec_of(nr: u32) -> Option<SyscallSpec> {
    let spec = *SPECS.get(nr)?;
    (spec.kind != 0).then_some(spec)
}

/// A field of the tracepoint record. NB: a direct load, not `bpf_probe_read`: the verifier
/// allows tracepoint programs plain reads of their context at constant, size-aligned offsets
/// of at least 8, and a helper call per field was a measurable part of every event. Only for
/// offsets inside every attached record (`__syscall_nr` at 8, `ret` at 16): attaching fails
/// for a tracepoint whose record is shorter than the furthest direct read.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: callers pass constant offsets inside the sys_enter/sys_exit record layouts.
    unsafe { *(ctx.as_ptr() as *const u8).add(offset).cast::<T>() }
}

/// Watched path prefixes (value unused). Longest-prefix match on the first bytes of a path.
#[map]
static PREFIXES: LpmTrie<[u8; PREFIX_KEY_LEN], u8> = LpmTrie::with_max_entries(1024, 0);

/// Syscalls between enter and exit, by thread id. LRU: a thread that never returns (killed
/// mid-syscall) cannot fill the map.
#[map]
static PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(8192, 0);

#[map]
static SCRATCH: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

#[map]
static PREFIX_SCRATCH: PerCpuArray<Key<[u8; PREFIX_KEY_LEN]>> = PerCpuArray::with_max_entries(1, 0);

/// The argument in `slot` (index + 1). NB: a match with constant offsets, not an index: the
/// verifier loses the bound of a computed index into the record.
#[inline(always)]
fn arg(args: &[u64; 6], slot: u8) -> Option<u64> {
    match slot {
        1 => Some(args[0]),
        2 => Some(args[1]),
        3 => Some(args[2]),
        4 => Some(args[3]),
        5 => Some(args[4]),
        6 => Some(args[5]),
        _ => None,
    }
}

#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

#[inline(always)]
fn try_enter(ctx: &TracePointContext) -> Option<()> {
    // Offset 8 is `__syscall_nr` in every sys_enter_* format.
    let nr = field::<i32>(ctx, 8) as u32;
    let spec = spec_of(nr)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_sensor((pid_tgid >> 32) as u32) {
        return None;
    }
    let pending = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    let record = &mut pending.record;
    record.nr = nr;
    record.flags = 0;
    record.ret = 0;
    record.addr_len = 0;
    record.str_len = [0, 0];
    record.small = [0; 16];
    record.sock_type = 0;
    record.sock_protocol = 0;
    // Args are u64 slots from offset 16 in every sys_enter_* format, as many as the syscall
    // has. NB: one probe read of all six, not direct loads: the kernel refuses to attach a
    // program whose direct context reads reach past the tracepoint's record (EACCES from
    // bpf_link_create), and most syscalls have fewer than six arguments. Slots past the
    // record read as whatever follows it; no spec names them.
    // SAFETY: a probe read of the tracepoint buffer.
    record.args = unsafe { ctx.read_at::<[u64; 6]>(16) }.unwrap_or([0; 6]);
    if let Some(arg) = arg(&record.args, spec.filter_arg) {
        let keep = if spec.flags & spec_flags::FILTER_EQ != 0 {
            arg == spec.filter_value
        } else {
            arg & spec.filter_value != 0
        };
        if !keep {
            return None;
        }
    }

    if spec.flags & spec_flags::SOCKET_FD != 0 {
        if let Some(socket) = crate::socket::of_fd(record.args[0]) {
            record.sock_type = socket.sock_type;
            record.sock_protocol = socket.protocol;
        }
    }

    let path_arg = arg(&record.args, spec.str_args[0]);
    if let Some(ptr) = path_arg {
        if spec.flags & spec_flags::PREFIX_FILTER != 0 && !watched_user(ptr) {
            return None;
        }
    }
    let (first, second) = pending.data.split_at_mut(SYSCALL_STR_CAP);
    let mut len0 = 0usize;
    if let Some(ptr) = path_arg {
        // SAFETY: a probe read of the caller's memory into a bounded buffer.
        match unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, first) } {
            Ok(bytes) => {
                len0 = bytes.len() + 1;
                if bytes.len() >= SYSCALL_STR_CAP - 1 {
                    record.flags |= syscall_flags::STR0_TRUNCATED;
                }
            }
            Err(_) => record.flags |= syscall_flags::STR_UNREADABLE,
        }
    }
    let len0 = len0.min(SYSCALL_STR_CAP) & (SYSCALL_STR_CAP * 2 - 1);
    record.str_len[0] = len0 as u16;
    if let Some(ptr) = arg(&pending.record.args, spec.str_args[1]) {
        // Packed right after the first string; `second` is only the spare room it leaves.
        let _ = second;
        let dst = pending
            .data
            .as_mut_ptr()
            .wrapping_add(len0 & (SYSCALL_STR_CAP - 1));
        // SAFETY: dst..dst+SYSCALL_STR_CAP lies within `data` (len0 < SYSCALL_STR_CAP).
        let room = unsafe { core::slice::from_raw_parts_mut(dst, SYSCALL_STR_CAP) };
        let record = &mut pending.record;
        match unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, room) } {
            Ok(bytes) => {
                record.str_len[1] = (bytes.len() + 1).min(SYSCALL_STR_CAP) as u16;
                if bytes.len() >= SYSCALL_STR_CAP - 1 {
                    record.flags |= syscall_flags::STR1_TRUNCATED;
                }
            }
            Err(_) => record.flags |= syscall_flags::STR_UNREADABLE,
        }
    }
    let record = &mut pending.record;
    if let Some(ptr) = arg(&record.args, spec.small_str_arg) {
        // SAFETY: bounded probe read.
        let _ = unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut record.small) };
    }
    if spec.flags & spec_flags::ADDR_AT_EXIT == 0 {
        if let (Some(ptr), Some(len)) = (
            arg(&record.args, spec.addr_arg),
            arg(&record.args, spec.addr_len_arg),
        ) {
            read_sockaddr(record, ptr, len);
        }
    }
    if spec.flags & spec_flags::HEADER_AT_ENTER != 0 {
        // SAFETY: the helper has no preconditions.
        let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
        if !fill_header(&mut pending.record.header, spec.kind, 0, task) {
            bump(&FAULTS, spec.kind);
        }
    }
    let tid = pid_tgid as u32;
    PENDING.insert(&tid, pending, 0).ok()
}

#[inline(always)]
pub(crate) fn read_sockaddr(record: &mut SyscallRecord, ptr: u64, len: u64) {
    let len = if len as usize > SOCKADDR_CAP {
        SOCKADDR_CAP
    } else {
        len as usize
    };
    if ptr == 0 || len == 0 {
        return;
    }
    // SAFETY: bounded probe read of the caller's sockaddr.
    let rc = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            record.addr.as_mut_ptr().cast(),
            (len & (SOCKADDR_CAP * 2 - 1)) as u32,
            ptr as *const core::ffi::c_void,
        )
    };
    if rc == 0 {
        record.addr_len = len as u16;
    }
}

/// True when `path` (NUL-terminated or filling the slice) is relative (resolved and
/// filtered in userspace) or starts with a watched prefix.
#[inline(always)]
pub(crate) fn watched(path: &[u8]) -> bool {
    if CONFIG.load().prefix_filter == 0 {
        return true;
    }
    if path.first() != Some(&b'/') {
        return true;
    }
    let Some(key) = PREFIX_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the per-CPU slot is ours for this program run.
    let key = unsafe { &mut *key };
    let mut data = [0u8; PREFIX_KEY_LEN];
    let mut len = 0usize;
    for i in 0..PREFIX_KEY_LEN {
        let byte = path.get(i).copied().unwrap_or(0);
        if byte == 0 {
            break;
        }
        data[i] = byte;
        len = i + 1;
    }
    key.prefix_len = (len * 8) as u32;
    key.data = data;
    PREFIXES.get(&*key).is_some()
}

/// [`watched`] for the path at `ptr` in the caller's memory, also true when it is unreadable
/// (userspace reports it so). Reads at most the key's length straight into the trie key,
/// before the full path is copied: an open of an unwatched path costs one short read and one
/// trie lookup, and no copy of the whole path.
#[inline(always)]
fn watched_user(ptr: u64) -> bool {
    if CONFIG.load().prefix_filter == 0 {
        return true;
    }
    let Some(key) = PREFIX_SCRATCH.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: the per-CPU slot is ours for this program run.
    let key = unsafe { &mut *key };
    // SAFETY: a probe read of the caller's memory into a bounded buffer.
    let len = match unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut key.data) } {
        Ok(path) if path.first() == Some(&b'/') => path.len(),
        _ => return true,
    };
    // NB: the read keeps room for the NUL, so a key holds at most PREFIX_KEY_LEN - 1 path
    // bytes; the loader cuts longer prefixes to that (userspace then checks whole paths).
    key.prefix_len = (len * 8) as u32;
    PREFIXES.get(&*key).is_some()
}

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Option<()> {
    // Offset 16 is `ret` in every sys_exit_* format.
    let ret = field::<i64>(ctx, 16);
    complete(bpf_get_current_pid_tgid() as u32, ret)
}

/// A successful execve/execveat never reaches its syscall-exit tracepoint with the pending
/// record intact (the image it was entered from is gone), so the exec program completes it
/// here with success; a failed one still completes at exit with its errno.
#[inline(always)]
pub fn complete_exec(tid: u32) {
    let _ = complete(tid, 0);
}

#[inline(always)]
fn complete(tid: u32, ret: i64) -> Option<()> {
    let pending = PENDING.get_ptr_mut(&tid)?;
    // SAFETY: the entry is this thread's own; no other program touches it concurrently.
    let pending = unsafe { &mut *pending };
    let _ = PENDING.remove(&tid);
    let spec = spec_of(pending.record.nr)?;
    pending.record.ret = ret;
    if spec.flags & spec_flags::ADDR_AT_EXIT != 0 && pending.record.ret >= 0 {
        let args = &pending.record.args;
        if let (Some(ptr), Some(len_ptr)) = (arg(args, spec.addr_arg), arg(args, spec.addr_len_arg))
        {
            // accept(fd, NULL, NULL) asks for no address: a probe read of address 0 takes a
            // page fault to fail (~1 us per accept here), so it is not tried.
            if ptr != 0 {
                // SAFETY: probe read of the caller's socklen_t.
                let len = unsafe { bpf_probe_read_user(len_ptr as *const u32) }.unwrap_or(0);
                read_sockaddr(&mut pending.record, ptr, len as u64);
            }
        }
    }
    // SAFETY: the helper has no preconditions.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    let len0 = pending.record.str_len[0] as usize & (SYSCALL_STR_CAP - 1 + SYSCALL_STR_CAP);
    let len1 = pending.record.str_len[1] as usize & (SYSCALL_STR_CAP * 2 - 1);
    let size = core::mem::size_of::<SyscallRecord>() + len0 + len1;
    if spec.flags & spec_flags::HEADER_AT_ENTER != 0 {
        pending.record.header.size = size as u32;
    } else if !fill_header(&mut pending.record.header, spec.kind, size as u32, task) {
        bump(&FAULTS, spec.kind);
    }
    // NB: masked behind a volatile read for older verifiers (see emit_exec).
    // SAFETY: reading a local.
    let size = unsafe { core::ptr::read_volatile(&size) } & 0x7ff;
    if size > core::mem::size_of::<Pending>() {
        return None;
    }
    // SAFETY: `size` is within the pending value (checked just above).
    let bytes =
        unsafe { core::slice::from_raw_parts(pending as *const Pending as *const u8, size) };
    let lane = if spec.flags & spec_flags::CRITICAL != 0 {
        &EVENTS
    } else {
        &BULK
    };
    emit::<[u8]>(lane, bytes, spec.kind);
    Some(())
}
