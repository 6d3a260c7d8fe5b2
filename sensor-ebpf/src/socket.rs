//! From a file descriptor of the current task to its socket: `task->files->fdt->fd[fd]`, the
//! file's `private_data`, then `struct socket` and its `struct sock`. Offsets come from the
//! loader (BTF), in their own read-only global so this module stays apart from the process
//! programs. A file is taken for a socket only when `socket->file` points back at it: a
//! regular file's `private_data` is something else entirely.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    Global,
};
use vigil_common::SocketOffsets;

/// Set by the loader before load.
#[no_mangle]
static SOCKET_OFFSETS: Global<SocketOffsets> = Global::new(SocketOffsets {
    task_files: u32::MAX,
    files_fdt: u32::MAX,
    fdt_max_fds: u32::MAX,
    fdt_fd: u32::MAX,
    file_private_data: u32::MAX,
    socket_type: u32::MAX,
    socket_file: u32::MAX,
    socket_sk: u32::MAX,
    sk_family: u32::MAX,
    sk_dport: u32::MAX,
    sk_protocol: u32::MAX,
    _pad: 0,
});

/// What the programs need to know of a socket.
#[derive(Clone, Copy, Default)]
pub struct SocketInfo {
    pub sock_type: u16,
    pub protocol: u16,
    pub family: u16,
    /// The connected peer's port in network byte order; 0 when unconnected.
    pub dport_be: u16,
}

#[inline(always)]
fn read<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    if offset == u32::MAX || base.is_null() {
        return None;
    }
    // SAFETY: a probe read of kernel memory; a bad address fails the helper, nothing else.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.ok()
}

#[inline(always)]
fn read_ptr(base: *const u8, offset: u32) -> Option<*const u8> {
    read::<*const u8>(base, offset).filter(|p| !p.is_null())
}

/// The socket behind `fd` of the current task, or `None` when `fd` is not an open socket.
#[inline(always)]
pub fn of_fd(fd: u64) -> Option<SocketInfo> {
    let o = SOCKET_OFFSETS.load();
    let fd = fd as u32 as i32;
    if fd < 0 {
        return None;
    }
    // SAFETY: the helper has no preconditions.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files = read_ptr(task, o.task_files)?;
    let fdt = read_ptr(files, o.files_fdt)?;
    let max_fds: u32 = read(fdt, o.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return None;
    }
    let table = read_ptr(fdt, o.fdt_fd)?;
    let file = read_ptr(table, (fd as u32).wrapping_mul(8))?;
    let socket = read_ptr(file, o.file_private_data)?;
    if read_ptr(socket, o.socket_file)? != file {
        return None;
    }
    let sock_type: i16 = read(socket, o.socket_type)?;
    let sk = read_ptr(socket, o.socket_sk)?;
    Some(SocketInfo {
        sock_type: sock_type as u16,
        protocol: read(sk, o.sk_protocol).unwrap_or(0),
        family: read(sk, o.sk_family).unwrap_or(0),
        dport_be: read(sk, o.sk_dport).unwrap_or(0),
    })
}
