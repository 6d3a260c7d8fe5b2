//! Vigil's kernel programs: process lifecycle (exec, fork, exit) into one ring buffer.
//!
//! Every program skips the sensor's own process first, reads kernel structs through offsets the
//! loader found in this kernel's BTF (see `vigil_common::KernelOffsets`), writes a
//! variable-length record with `bpf_ringbuf_output`, and counts every record it could not
//! deliver in a per-CPU counter per kind, so loss is never silent.
#![no_std]
#![no_main]

mod dns;
mod fileopen;
mod socket;
mod syscall;
mod task;
mod uring;

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel_str_bytes, bpf_send_signal,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
    EbpfContext, Global,
};
use vigil_common::{
    exec_flags, kind, ExecRecord, ExitRecord, ForkRecord, RecordHeader, SensorConfig, ARGV_CAP,
    FILENAME_CAP, KILL_PATH_LEN,
};

use crate::task::Task;

/// Set by the loader before load; read-only to the programs.
#[no_mangle]
static CONFIG: Global<SensorConfig> = Global::new(SensorConfig {
    prefix_filter: 0,
    offsets: vigil_common::KernelOffsets {
        task_real_parent: u32::MAX,
        task_tgid: u32::MAX,
        task_pid: u32::MAX,
        task_cred: u32::MAX,
        task_loginuid: u32::MAX,
        task_mm: u32::MAX,
        task_exit_code: u32::MAX,
        task_start_boottime: u32::MAX,
        cred_uid: u32::MAX,
        cred_gid: u32::MAX,
        cred_euid: u32::MAX,
        cred_egid: u32::MAX,
        mm_arg_start: u32::MAX,
        mm_arg_end: u32::MAX,
        bprm_filename: u32::MAX,
        _pad: 0,
    },
});

/// The critical lane: process lifecycle and every record that can raise an alert on its own.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// The bulk lane: file opens and other high-volume records, so that a flood of them can never
/// cost an exec record its place.
#[map]
static BULK: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Records that did not fit in the ring buffer, per CPU, indexed by record kind.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT, 0);

/// Records delivered to a ring buffer, per CPU, indexed by record kind: with LOST, what the
/// programs produced, so that produced = delivered + lost can be checked end to end.
#[map]
static SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT, 0);

/// 1 while the consumer polls the ring buffers on its own clock, 0 (the initial value) while
/// it sleeps until woken; written by the sensor, read by every emit. A wakeup costs the
/// producing task an interrupt and a scheduler wakeup, and the consumer a context switch,
/// per record when the consumer keeps up: while it polls, records are written without one;
/// while it sleeps, every record wakes it at once (forced, so a record written just as it
/// went to sleep is never left waiting behind records that did not wake it).
#[map]
static POLLING: Array<u32> = Array::with_max_entries(1, 0);

/// The sensor's own tgid as the kernel numbers it (the host's PID namespace), which every
/// program skips first so the sensor never records itself. Written by [`whoami`] before any
/// other program is attached; 0 until then. NB: a map, not a read-only global, because a
/// sensor in a PID namespace of its own (a container) knows only its namespaced pid before
/// a program of ours has run in its context.
#[map]
static SENSOR_TGID: Array<u32> = Array::with_max_entries(1, 0);

/// The sensor as its own PID namespace knows it (set by the loader; see `WhoamiQuery`).
#[no_mangle]
static WHOAMI: Global<vigil_common::WhoamiQuery> = Global::new(vigil_common::WhoamiQuery {
    pidns_dev: 0,
    pidns_ino: 0,
    local_pid: 0,
    _pad: 0,
});

/// Attached by the sensor for a moment at start to a syscall tracepoint it then enters itself
/// (`getpgid`): the task that is `local_pid` in the sensor's PID namespace is the sensor, and
/// its tgid here is the host's number for it. NB: not a uprobe on the sensor's own code: perf
/// uprobes need CAP_SYS_ADMIN on current kernels (a 2025 fix took them from CAP_PERFMON),
/// which the service does not have; syscall tracepoints need only CAP_PERFMON.
#[tracepoint]
pub fn whoami(_ctx: TracePointContext) -> u32 {
    let query = WHOAMI.load();
    let mut ns = aya_ebpf::bindings::bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: the helper writes at most `size` bytes into `ns`, which is that large.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_get_ns_current_pid_tgid(
            query.pidns_dev,
            query.pidns_ino,
            &mut ns,
            core::mem::size_of::<aya_ebpf::bindings::bpf_pidns_info>() as u32,
        )
    };
    if rc == 0 && ns.tgid == query.local_pid {
        if let Some(slot) = SENSOR_TGID.get_ptr_mut(0) {
            // SAFETY: a one-entry array slot, written only by this program.
            unsafe { *slot = current_tgid() };
        }
    }
    0
}

/// Outputs a record to a lane, counting it as sent or lost.
#[inline(always)]
pub(crate) fn emit<T: ?Sized>(lane: &RingBuf, record: &T, record_kind: u32) {
    let flags = match POLLING.get(0) {
        Some(&1) => BPF_RB_NO_WAKEUP,
        _ => BPF_RB_FORCE_WAKEUP,
    };
    if lane.output::<T>(record, u64::from(flags)).is_ok() {
        bump(&SENT, record_kind);
    } else {
        bump(&LOST, record_kind);
    }
}

/// Kernel reads that failed (the record was still sent, with the field zeroed), per kind.
#[map]
static FAULTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kind::COUNT, 0);

/// Scratch space to assemble an exec record: too large for the 512-byte BPF stack.
#[repr(C)]
pub struct ExecScratch {
    record: ExecRecord,
    data: [u8; FILENAME_CAP + ARGV_CAP],
}

#[map]
static EXEC_SCRATCH: PerCpuArray<ExecScratch> = PerCpuArray::with_max_entries(1, 0);

/// Executable paths of `kill` rules (filled by the loader from the compiled rules): an exact
/// path is stored with its terminating NUL, a prefix without, so one longest-prefix lookup on
/// the NUL-terminated exec'd path answers both. The value is unused.
#[map]
static KILL_PATHS: LpmTrie<[u8; KILL_PATH_LEN], u8> = LpmTrie::with_max_entries(1024, 0);

#[map]
static KILL_SCRATCH: PerCpuArray<Key<[u8; KILL_PATH_LEN]>> = PerCpuArray::with_max_entries(1, 0);

/// Whether a `kill` rule lists `filename`: then the process gets SIGKILL now, at exec, so it
/// dies before its first instruction (a pending SIGKILL is taken on the way back to user mode).
#[inline(always)]
fn kill_at_exec(filename: *const u8) -> bool {
    let Some(key) = KILL_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: the per-CPU slot is ours for the duration of this program.
    let key = unsafe { &mut *key };
    // NB: the bytes after the NUL are stale, and need not be cleared: every stored key either
    // ends in a NUL (exact) or holds none (prefix), so no stored key can match past the NUL.
    key.prefix_len = (KILL_PATH_LEN * 8) as u32;
    // SAFETY: reading a kernel string into a bounded buffer.
    if unsafe { bpf_probe_read_kernel_str_bytes(filename, &mut key.data) }.is_err() {
        return false;
    }
    if KILL_PATHS.get(&*key).is_none() {
        return false;
    }
    // SAFETY: the helper signals the current task, the one that just exec'd.
    unsafe { bpf_send_signal(9) == 0 }
}

#[inline(always)]
pub(crate) fn bump(counters: &PerCpuArray<u64>, record_kind: u32) {
    if let Some(slot) = counters.get_ptr_mut(record_kind) {
        // SAFETY: per-CPU slot, programs on one CPU do not preempt each other.
        unsafe { *slot += 1 };
    }
}

/// Fills the common header for `task` (the subject of the record, not always current).
#[inline(always)]
pub(crate) fn fill_header(
    header: &mut RecordHeader,
    record_kind: u32,
    size: u32,
    task: Task,
) -> bool {
    let config = CONFIG.load();
    let offsets = &config.offsets;
    header.kind = record_kind;
    header.size = size;
    // SAFETY: helpers without preconditions.
    header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.comm = bpf_get_current_comm().unwrap_or_default();
    let mut complete = true;
    let mut take = |value: Option<u32>| match value {
        Some(v) => v,
        None => {
            complete = false;
            0
        }
    };
    header.pid = take(task.read_u32(offsets.task_pid));
    header.tgid = take(task.read_u32(offsets.task_tgid));
    header.ppid = take(
        task.real_parent(offsets)
            .and_then(|p| p.read_u32(offsets.task_tgid)),
    );
    header.loginuid = task
        .read_u32(offsets.task_loginuid)
        .unwrap_or(vigil_common::NO_LOGIN_UID);
    header.start_boot_ns = task.read_u64(offsets.task_start_boottime).unwrap_or(0);
    match task.cred(offsets) {
        Some(cred) => {
            header.uid = take(cred.read_u32(offsets.cred_uid));
            header.gid = take(cred.read_u32(offsets.cred_gid));
            header.euid = take(cred.read_u32(offsets.cred_euid));
            header.egid = take(cred.read_u32(offsets.cred_egid));
        }
        None => complete = false,
    }
    complete
}

#[inline(always)]
pub(crate) fn is_sensor(tgid: u32) -> bool {
    SENSOR_TGID.get(0) == Some(&tgid)
}

#[inline(always)]
pub(crate) fn current_tgid() -> u32 {
    (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
}

/// Builds and sends an exec record. `filename` is a kernel pointer to the path as exec'd.
#[inline(always)]
fn emit_exec(filename: *const u8) -> u32 {
    if is_sensor(current_tgid()) {
        return 0;
    }
    syscall::complete_exec(aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32);
    let Some(scratch) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU slot is ours for the duration of this program.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: the helper has no preconditions; the pointer names the current task.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    let offsets = CONFIG.load().offsets;
    let mut flags = 0u32;
    let mut faulted = !fill_header(&mut scratch.record.header, kind::EXEC, 0, task);

    let (head, tail) = scratch.data.split_at_mut(FILENAME_CAP);
    // SAFETY: reading a kernel string into a bounded buffer.
    let filename_len = match unsafe { bpf_probe_read_kernel_str_bytes(filename, head) } {
        Ok(bytes) => bytes.len(),
        Err(_) => {
            faulted = true;
            0
        }
    };
    if filename_len >= FILENAME_CAP - 1 {
        flags |= exec_flags::FILENAME_TRUNCATED;
    }
    if kill_at_exec(filename) {
        flags |= exec_flags::KILLED;
    }
    // Pack argv right after the filename so the record is only as long as its contents.
    let filename_len = filename_len & (FILENAME_CAP - 1);
    let argv_len = match task.argv_span(&offsets) {
        Some((start, end)) => {
            let mut len = end.saturating_sub(start) as usize;
            if len > ARGV_CAP - 1 {
                len = ARGV_CAP - 1;
                flags |= exec_flags::ARGS_TRUNCATED;
            }
            let len = len & (ARGV_CAP - 1);
            let dst = head.as_mut_ptr().wrapping_add(filename_len);
            // SAFETY: dst..dst+len lies inside `data` (filename_len < FILENAME_CAP, len < ARGV_CAP).
            let rc = unsafe {
                aya_ebpf::helpers::generated::bpf_probe_read_user(
                    dst.cast(),
                    len as u32,
                    start as *const core::ffi::c_void,
                )
            };
            if rc == 0 {
                len
            } else {
                flags |= exec_flags::ARGS_UNREADABLE;
                0
            }
        }
        None => {
            flags |= exec_flags::ARGS_UNREADABLE;
            0
        }
    };
    let _ = tail;
    if faulted {
        bump(&FAULTS, kind::EXEC);
    }
    let size = core::mem::size_of::<ExecRecord>() + filename_len + (argv_len & (ARGV_CAP - 1));
    scratch.record.header.size = size as u32;
    scratch.record.filename_len = filename_len as u16;
    scratch.record.argv_len = argv_len as u16;
    scratch.record.flags = flags;
    let bytes = scratch as *const ExecScratch as *const u8;
    // NB: older verifiers (6.1) lose the bound LLVM proved from the sums above and see an
    // unbounded size. The volatile read hides the value from LLVM so the mask it would drop
    // as redundant stays, and the mask is a bound every verifier tracks.
    // SAFETY: reading a local.
    let size = unsafe { core::ptr::read_volatile(&size) } & 0x1fff;
    if size > core::mem::size_of::<ExecScratch>() {
        return 0;
    }
    // SAFETY: `size` is within the scratch value (checked just above).
    let record = unsafe { core::slice::from_raw_parts(bytes, size) };
    emit::<[u8]>(&EVENTS, record, kind::EXEC);
    0
}

/// Preferred exec hook: BTF-typed, gives `struct linux_binprm *` directly.
/// Prototype relied on: `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn exec_btf(ctx: BtfTracePointContext) -> i32 {
    let bprm: *const u8 = ctx.arg(2);
    let offsets = CONFIG.load().offsets;
    let filename = Task::from_ptr(bprm)
        .read_ptr(offsets.bprm_filename)
        .unwrap_or(core::ptr::null());
    emit_exec(filename) as i32
}

/// Fallback exec hook for kernels without BTF tracepoints: the stable tracepoint format,
/// whose `filename` is a `__data_loc` string inside the tracepoint record.
#[tracepoint]
pub fn exec_tp(ctx: TracePointContext) -> u32 {
    // SAFETY: offset 8 holds the __data_loc of `filename` in sched_process_exec's format.
    let Ok(loc) = (unsafe { ctx.read_at::<u32>(8) }) else {
        return 0;
    };
    let filename = (ctx.as_ptr() as *const u8).wrapping_add((loc & 0xffff) as usize);
    emit_exec(filename)
}

/// A new process. Raw tracepoint so the child's task is at hand on every kernel with
/// raw tracepoints (4.17+). Prototype: `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn fork(ctx: RawTracePointContext) -> i32 {
    let child = Task::from_ptr(ctx.arg::<*const u8>(1));
    let offsets = CONFIG.load().offsets;
    let parent_tgid = current_tgid();
    if is_sensor(parent_tgid) {
        return 0;
    }
    // A thread shares its parent's tgid: not a new process.
    match (
        child.read_u32(offsets.task_pid),
        child.read_u32(offsets.task_tgid),
    ) {
        (Some(pid), Some(tgid)) if pid == tgid => {}
        _ => return 0,
    }
    let mut record = ForkRecord::default();
    if !fill_header(
        &mut record.header,
        kind::FORK,
        core::mem::size_of::<ForkRecord>() as u32,
        child,
    ) {
        bump(&FAULTS, kind::FORK);
    }
    emit(&EVENTS, &record, kind::FORK);
    0
}

/// A thread exits; we report the process when its thread group leader does.
#[tracepoint]
pub fn exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let (tgid, pid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if pid != tgid || is_sensor(tgid) {
        return 0;
    }
    // SAFETY: the helper has no preconditions.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    let offsets = CONFIG.load().offsets;
    let mut record = ExitRecord::default();
    let mut complete = fill_header(
        &mut record.header,
        kind::EXIT,
        core::mem::size_of::<ExitRecord>() as u32,
        task,
    );
    match task.read_u32(offsets.task_exit_code) {
        Some(status) => record.exit_status = status,
        None => complete = false,
    }
    if !complete {
        bump(&FAULTS, kind::EXIT);
    }
    emit(&EVENTS, &record, kind::EXIT);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program with a reachable loop like this, so a program that
    // could panic never loads: this handler is never run.
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
