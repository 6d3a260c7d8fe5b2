//! Performs one real operation an attacker might, so the kernel tier can check that the sensor
//! sees it exactly. `vigil-actor OP ARGS...`; prints `ready` on stdout before acting when asked
//! to wait (`VIGIL_ACTOR_WAIT=1`), and exits 0 when the operation was attempted (its result,
//! success or errno, is what the sensor must report).

use std::ffi::CString;
use std::io::Write;
use std::process::ExitCode;

use nix::sys::ptrace;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let result = match arg(0) {
        "open-write" => std::fs::write(arg(1), b"vigil").map_err(|e| e.to_string()),
        "open-missing" => std::fs::File::open(arg(1)).map(drop).or(Ok(())),
        "open-many" => open_many(arg(1), arg(2).parse().unwrap_or(0)),
        "rename" => std::fs::rename(arg(1), arg(2)).map_err(|e| e.to_string()),
        "chmod" => {
            use std::os::unix::fs::PermissionsExt;
            let mode = u32::from_str_radix(arg(2), 8).unwrap_or(0o644);
            std::fs::set_permissions(arg(1), std::fs::Permissions::from_mode(mode))
                .map_err(|e| e.to_string())
        }
        "unlink" => std::fs::remove_file(arg(1)).map_err(|e| e.to_string()),
        "connect" => std::net::TcpStream::connect(arg(1))
            .map(drop)
            .map_err(|e| e.to_string()),
        "setuid" => {
            nix::unistd::setuid(nix::unistd::Uid::from_raw(arg(1).parse().unwrap_or(65534)))
                .map_err(|e| e.to_string())
        }
        "ptrace-attach" => ptrace_attach(),
        "kill-child" => kill_child(),
        "init-module" => {
            // A bogus image: the kernel refuses it, and the refusal is what must be seen.
            let image = [0u8; 64];
            let params = CString::new("vigil_param=1").unwrap_or_default();
            // SAFETY: a plain syscall with valid pointers.
            unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    image.as_ptr(),
                    image.len(),
                    params.as_ptr(),
                )
            };
            Ok(())
        }
        "mount-tmpfs" => mount_tmpfs(arg(1)),
        "memfd-exec" => memfd_exec(),
        "mprotect-exec" => mprotect_exec(),
        "resolve-connect" => resolve_connect(arg(1), arg(2)),
        "dns-sendto" => dns_sendto(arg(1), arg(2)),
        "exec-as-nobody" => exec_as_nobody(arg(1), arg(2)),
        "open-then-exec" => open_then_exec(arg(1), arg(2), arg(3)),
        "uring-write-read" => uring_write_read(arg(1)),
        other => Err(format!("unknown operation {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-actor {}: {e}", arg(0));
            ExitCode::FAILURE
        }
    }
}

fn open_many(path: &str, count: u64) -> Result<(), String> {
    for _ in 0..count {
        drop(std::fs::File::open(path).map_err(|e| e.to_string())?);
    }
    Ok(())
}

/// Forks a child that sleeps, attaches to it with PTRACE_ATTACH, detaches, reaps it.
fn ptrace_attach() -> Result<(), String> {
    // SAFETY: the child only sleeps, then exits.
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => {
            std::thread::sleep(std::time::Duration::from_secs(5));
            std::process::exit(0)
        }
        ForkResult::Parent { child } => {
            println!("target {child}");
            let _ = std::io::stdout().flush();
            let attached = ptrace::attach(child).map_err(|e| e.to_string());
            if attached.is_ok() {
                let _ = waitpid(child, None);
                let _ = ptrace::detach(child, None);
            }
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            attached
        }
    }
}

fn kill_child() -> Result<(), String> {
    // SAFETY: the child only sleeps.
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => {
            std::thread::sleep(std::time::Duration::from_secs(5));
            std::process::exit(0)
        }
        ForkResult::Parent { child } => {
            println!("target {child}");
            let _ = std::io::stdout().flush();
            kill(child, Signal::SIGUSR1).map_err(|e| e.to_string())?;
            let _ = waitpid(child, None);
            Ok(())
        }
    }
}

/// In a private mount namespace, so the host's mounts are untouched.
fn mount_tmpfs(dir: &str) -> Result<(), String> {
    use nix::mount::{mount, umount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| e.to_string())?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| e.to_string())?;
    mount(
        Some("vigil-tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| e.to_string())?;
    umount(dir).map_err(|e| e.to_string())
}

/// memfd_create, copy /bin/true into it, execveat(fd, "", AT_EMPTY_PATH): fileless execution.
fn memfd_exec() -> Result<(), String> {
    let name = CString::new("vigil-memfd").unwrap_or_default();
    // SAFETY: plain syscalls with valid arguments.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err("memfd_create failed".into());
    }
    let image = std::fs::read("/bin/true").map_err(|e| e.to_string())?;
    // SAFETY: writing our own buffer to our own fd.
    let written = unsafe { libc::write(fd, image.as_ptr().cast(), image.len()) };
    if written != image.len() as isize {
        return Err("short write to memfd".into());
    }
    let empty = CString::new("").unwrap_or_default();
    let argv0 = CString::new("vigil-fileless").unwrap_or_default();
    let argv = [argv0.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: execveat with valid, NUL-terminated arrays; on success it does not return.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err("execveat returned".into())
}

fn mprotect_exec() -> Result<(), String> {
    // SAFETY: an anonymous private mapping we own and unmap.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return Err("mmap failed".into());
        }
        let rc = libc::mprotect(page, 4096, libc::PROT_READ | libc::PROT_EXEC);
        libc::munmap(page, 4096);
        if rc != 0 {
            return Err("mprotect failed".into());
        }
    }
    Ok(())
}

/// Resolves NAME through the C library (getaddrinfo: /etc/resolv.conf, UDP port 53, as any
/// program does), then connects to the first IPv4 answer on PORT. Prints the address.
fn resolve_connect(name: &str, port: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let port: u16 = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
    let address = (name, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {name}: {e}"))?
        .find(std::net::SocketAddr::is_ipv4)
        .ok_or_else(|| format!("{name} has no IPv4 address"))?;
    println!("resolved {address}");
    let _ = std::io::stdout().flush();
    std::net::TcpStream::connect(address)
        .map(drop)
        .map_err(|e| format!("connecting to {address}: {e}"))
}

/// Opens PATH (an ordinary openat), then writes "vigil-uring" and reads it back through
/// io_uring (IORING_OP_WRITE and IORING_OP_READ on the fd): no write or read syscall.
fn uring_write_read(path: &str) -> Result<(), String> {
    use io_uring::{opcode, types, IoUring};
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let fd = types::Fd(file.as_raw_fd());
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let text = b"vigil-uring";
    let mut back = [0u8; 11];
    let write = opcode::Write::new(fd, text.as_ptr(), text.len() as u32)
        .offset(0)
        .build()
        .user_data(1);
    let read = opcode::Read::new(fd, back.as_mut_ptr(), back.len() as u32)
        .offset(0)
        .build()
        .user_data(2);
    for entry in [write, read] {
        // SAFETY: the buffers outlive the request: it completes before the next one is pushed.
        unsafe { ring.submission().push(&entry) }.map_err(|e| e.to_string())?;
        ring.submit_and_wait(1).map_err(|e| e.to_string())?;
        let cqe = ring.completion().next().ok_or("no completion")?;
        if cqe.result() < 0 {
            return Err(format!(
                "request {} failed: {}",
                cqe.user_data(),
                cqe.result()
            ));
        }
    }
    if &back != text {
        return Err(format!("read back {back:?}"));
    }
    println!("uring ok");
    Ok(())
}

/// Sends one A query for NAME from an unconnected UDP socket to RESOLVER (sendto with an
/// address, recvfrom naming the sender: the other way programs talk DNS) and waits for the
/// answer.
fn dns_sendto(resolver: &str, name: &str) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    // Header: id 0x5647, RD, one question; then the name as labels, type A, class IN.
    let mut query = vec![0x56, 0x47, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket
        .send_to(&query, resolver)
        .map_err(|e| format!("sendto {resolver}: {e}"))?;
    let mut answer = [0u8; 512];
    let (len, from) = socket
        .recv_from(&mut answer)
        .map_err(|e| format!("recvfrom: {e}"))?;
    println!("answer {len} bytes from {from}");
    Ok(())
}

/// Drops every uid to 65534 (nobody), then execs PATH with one argument, MARKER: with a
/// set-user-ID root PATH, the exec makes the process root again.
/// Opens `path`, then at once replaces itself with `program` (argv: `program marker`).
fn open_then_exec(path: &str, program: &str, marker: &str) -> Result<(), String> {
    drop(std::fs::File::open(path).map_err(|e| e.to_string())?);
    let program = CString::new(program).map_err(|e| e.to_string())?;
    let marker = CString::new(marker).map_err(|e| e.to_string())?;
    nix::unistd::execv(&program, &[program.clone(), marker]).map_err(|e| e.to_string())?;
    Ok(())
}

fn exec_as_nobody(path: &str, marker: &str) -> Result<(), String> {
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::setresuid(nobody, nobody, nobody).map_err(|e| e.to_string())?;
    let path = CString::new(path).map_err(|e| e.to_string())?;
    let marker = CString::new(marker).map_err(|e| e.to_string())?;
    nix::unistd::execv(&path, &[path.clone(), marker]).map_err(|e| e.to_string())?;
    Ok(())
}
