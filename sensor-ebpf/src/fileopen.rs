//! File opens through kernel-function hooks, the preferred hooks where the kernel allows
//! them: fentry on `security_file_open(struct file *file)` and the BPF LSM hook `file_open`
//! (same prototype). Both see the opened `struct file` itself, so the path is the kernel's
//! own resolution (`bpf_d_path`: no cwd or dirfd to resolve, no symlink games) and the
//! syscall programs need not run for opens at all. The loader tries them in that order and
//! falls back to the `openat`-family syscall tracepoints (see `syscall.rs`) when the kernel
//! refuses them (EPERM here: trampolines are forbidden).
//!
//! NB: the hook runs once the kernel has found the file and checked its permissions: failed
//! opens (ENOENT, EACCES) never reach it. The record says `ret = 0`.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{fentry, lsm, map},
    maps::PerCpuArray,
    programs::{FEntryContext, LsmContext},
    Global,
};
use vigil_common::{hook_nr, kind, syscall_flags, FileOffsets, SyscallRecord, SYSCALL_STR_CAP};

use crate::{bump, emit, fill_header, is_sensor, syscall::watched, task::Task, BULK, FAULTS};

/// Set by the loader before load.
#[no_mangle]
static FILE_OFFSETS: Global<FileOffsets> = Global::new(FileOffsets {
    file_f_path: u32::MAX,
    file_f_flags: u32::MAX,
});

#[repr(C)]
pub struct OpenScratch {
    record: SyscallRecord,
    data: [u8; SYSCALL_STR_CAP],
}

#[map]
static OPEN_SCRATCH: PerCpuArray<OpenScratch> = PerCpuArray::with_max_entries(1, 0);

#[fentry(function = "security_file_open")]
pub fn file_open_fentry(ctx: FEntryContext) -> i32 {
    let _ = emit_open(ctx.arg::<*const u8>(0));
    0
}

/// Returns 0: the hook observes, it never denies an open.
#[lsm(hook = "file_open")]
pub fn file_open_lsm(ctx: LsmContext) -> i32 {
    let _ = emit_open(ctx.arg::<*const u8>(0));
    0
}

#[inline(always)]
fn emit_open(file: *const u8) -> Option<()> {
    if is_sensor((bpf_get_current_pid_tgid() >> 32) as u32) || file.is_null() {
        return None;
    }
    let offsets = FILE_OFFSETS.load();
    if offsets.file_f_path == u32::MAX || offsets.file_f_flags == u32::MAX {
        return None;
    }
    // SAFETY: the per-CPU slot is ours for this program run.
    let scratch = unsafe { &mut *OPEN_SCRATCH.get_ptr_mut(0)? };
    // SAFETY: `&file->f_path`, a `struct path` inside the traced file (the verifier checks
    // the type at that offset); d_path writes at most SYSCALL_STR_CAP bytes.
    let len = unsafe {
        aya_ebpf::helpers::generated::bpf_d_path(
            file.wrapping_add(offsets.file_f_path as usize) as *mut _,
            scratch.data.as_mut_ptr().cast(),
            SYSCALL_STR_CAP as u32,
        )
    };
    let record = &mut scratch.record;
    record.nr = hook_nr::FILE_OPEN;
    record.flags = 0;
    record.ret = 0;
    record.addr_len = 0;
    record.small = [0; 16];
    record.sock_type = 0;
    record.sock_protocol = 0;
    record.str_len = [0, 0];
    // SAFETY: a probe read of the traced file's flags.
    let f_flags = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(
            file.wrapping_add(offsets.file_f_flags as usize) as *const u32
        )
    }
    .unwrap_or(0);
    record.args = [0, u64::from(f_flags), 0, 0, 0, 0];
    if len <= 0 {
        record.flags |= syscall_flags::STR_UNREADABLE;
    } else {
        if !watched(&scratch.data) {
            return None;
        }
        scratch.record.str_len[0] = (len as usize).min(SYSCALL_STR_CAP) as u16;
    }
    let len0 = scratch.record.str_len[0] as usize & (SYSCALL_STR_CAP * 2 - 1);
    let size = core::mem::size_of::<SyscallRecord>() + len0;
    // SAFETY: the helper has no preconditions.
    let task = Task::from_ptr(unsafe { bpf_get_current_task() } as *const u8);
    if !fill_header(&mut scratch.record.header, kind::OPEN, size as u32, task) {
        bump(&FAULTS, kind::OPEN);
    }
    // SAFETY: reading a local (see emit_exec for why).
    let size = unsafe { core::ptr::read_volatile(&size) } & 0x7ff;
    if size > core::mem::size_of::<OpenScratch>() {
        return None;
    }
    // SAFETY: `size` is within the scratch value (checked just above).
    let bytes =
        unsafe { core::slice::from_raw_parts(scratch as *const OpenScratch as *const u8, size) };
    emit::<[u8]>(&BULK, bytes, kind::OPEN);
    Some(())
}
