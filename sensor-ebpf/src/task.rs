//! Typed access to `task_struct`, `cred` and `mm_struct` through the offsets the loader found in
//! this kernel's BTF. Every read goes through `bpf_probe_read_kernel` and can fail; an offset of
//! `KernelOffsets::UNAVAILABLE` reads as a failure.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use vigil_common::KernelOffsets;

#[derive(Clone, Copy)]
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn from_ptr(ptr: *const u8) -> Self {
        Self(ptr)
    }

    #[inline(always)]
    fn read<T: Copy>(self, offset: u32) -> Option<T> {
        if offset == KernelOffsets::UNAVAILABLE || self.0.is_null() {
            return None;
        }
        // SAFETY: a probe read of kernel memory; a bad address fails the helper, nothing else.
        unsafe { bpf_probe_read_kernel(self.0.wrapping_add(offset as usize).cast::<T>()) }.ok()
    }

    #[inline(always)]
    pub fn read_u32(self, offset: u32) -> Option<u32> {
        self.read(offset)
    }

    #[inline(always)]
    pub fn read_u64(self, offset: u32) -> Option<u64> {
        self.read(offset)
    }

    #[inline(always)]
    pub fn read_ptr(self, offset: u32) -> Option<*const u8> {
        self.read::<*const u8>(offset).filter(|p| !p.is_null())
    }

    #[inline(always)]
    pub fn real_parent(self, offsets: &KernelOffsets) -> Option<Task> {
        self.read_ptr(offsets.task_real_parent).map(Task)
    }

    /// The task's credentials; reads of `cred` fields go through the same offset reader.
    #[inline(always)]
    pub fn cred(self, offsets: &KernelOffsets) -> Option<Task> {
        self.read_ptr(offsets.task_cred).map(Task)
    }

    /// User-space addresses of the argument strings of the task's current image.
    #[inline(always)]
    pub fn argv_span(self, offsets: &KernelOffsets) -> Option<(u64, u64)> {
        let mm = Task(self.read_ptr(offsets.task_mm)?);
        Some((
            mm.read_u64(offsets.mm_arg_start)?,
            mm.read_u64(offsets.mm_arg_end)?,
        ))
    }
}
