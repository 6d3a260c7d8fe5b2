//! io_uring: requests bypass the syscalls they replace (an IORING_OP_WRITE never enters
//! `write`), so the syscall programs do not see them. Three stable tracepoints of the
//! `io_uring` group follow a request by its kernel address: `io_uring_submit_req` (opcode,
//! who submitted it: the header is filled there, in the submitter's context),
//! `io_uring_file_get` (the fd it resolved, for requests on a normal fd) and
//! `io_uring_complete` (the result), where the record is sent. Only the opcodes the loader
//! marks in `URING_OPS` (file and network operations) are followed.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use vigil_common::{kind, SyscallRecord};

use crate::{bump, emit, fill_header, is_sensor, task::Task, BULK, FAULTS};

/// Opcode -> nonzero when requests of that opcode are reported (filled by the loader).
#[map]
static URING_OPS: Array<u32> = Array::with_max_entries(256, 0);

/// Requests between submission and completion, by the request's kernel address. LRU: a
/// request cancelled with its ring never completes and must not fill the map.
#[map]
static URING_PENDING: LruHashMap<u64, SyscallRecord> = LruHashMap::with_max_entries(4096, 0);

#[map]
static URING_SCRATCH: PerCpuArray<SyscallRecord> = PerCpuArray::with_max_entries(1, 0);

/// No fd known (a registered "fixed" file, or an operation that takes none).
const NO_FD: u64 = u64::MAX;

#[tracepoint]
pub fn uring_submit(ctx: TracePointContext) -> u32 {
    let _ = try_submit(&ctx);
    0
}

#[tracepoint]
pub fn uring_file(ctx: TracePointContext) -> u32 {
    let _ = try_file(&ctx);
    0
}

#[tracepoint]
pub fn uring_complete(ctx: TracePointContext) -> u32 {
    let _ = try_complete(&ctx);
    0
}

/// `io_uring_submit_req`: req at 16, user_data at 24, opcode (u8) at 32, flags at 40.
#[inline(always)]
fn try_submit(ctx: &TracePointContext) -> Option<()> {
    if is_sensor((bpf_get_current_pid_tgid() >> 32) as u32) {
        return None;
    }
    // SAFETY: offsets of the io_uring_submit_req format (stable since 6.0).
    let (req, user_data, opcode, flags) = unsafe {
        (
            ctx.read_at::<u64>(16).ok()?,
            ctx.read_at::<u64>(24).ok()?,
            ctx.read_at::<u8>(32).ok()?,
            ctx.read_at::<u64>(40).ok()?,
        )
    };
    if *URING_OPS.get(u32::from(opcode))? == 0 {
        return None;
    }
    let record = unsafe { &mut *URING_SCRATCH.get_ptr_mut(0)? };
    record.nr = u32::from(opcode);
    record.flags = 0;
    record.ret = 0;
    record.args = [NO_FD, user_data, flags, 0, 0, 0];
    record.str_len = [0, 0];
    record.addr_len = 0;
    record.small = [0; 16];
    record.sock_type = 0;
    record.sock_protocol = 0;
    // SAFETY: the helper has no preconditions.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    if !fill_header(
        &mut record.header,
        kind::IO_URING,
        core::mem::size_of::<SyscallRecord>() as u32,
        task,
    ) {
        bump(&FAULTS, kind::IO_URING);
    }
    URING_PENDING.insert(&req, record, 0).ok()
}

/// `io_uring_file_get`: req at 16, fd (int) at 32.
#[inline(always)]
fn try_file(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offsets of the io_uring_file_get format.
    let (req, fd) = unsafe { (ctx.read_at::<u64>(16).ok()?, ctx.read_at::<i32>(32).ok()?) };
    let record = URING_PENDING.get_ptr_mut(&req)?;
    // SAFETY: the entry is updated in place; a request is handled by one context at a time.
    unsafe { (*record).args[0] = fd as u32 as u64 };
    Some(())
}

/// `io_uring_complete`: req at 16, res (int) at 32.
#[inline(always)]
fn try_complete(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: offsets of the io_uring_complete format.
    let (req, res) = unsafe { (ctx.read_at::<u64>(16).ok()?, ctx.read_at::<i32>(32).ok()?) };
    let record = URING_PENDING.get_ptr_mut(&req)?;
    // SAFETY: as above; removed right after the copy below.
    let record = unsafe { &mut *record };
    record.ret = i64::from(res);
    emit(&BULK, &*record, kind::IO_URING);
    let _ = URING_PENDING.remove(&req);
    Some(())
}
