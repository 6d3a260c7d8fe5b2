//! The act stage: what the sensor does to a process that a `kill` rule matched.
//!
//! Where the rule reduces to tests on the executable path, the kernel has already killed the
//! process at exec (the exec event says so; see [`crate::enrich::KILLED_DETAIL`]). Otherwise
//! the sensor kills it now, through a pidfd so that a pid reused since the event can never
//! be hit, and the alert records how long after the event that was.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vigil_detect::{KillEnforcement, PathMatch, RuleSet};
use vigil_proto::{Event, Response, Timestamp};

use crate::capture::KillPath;
use crate::enrich::{HostContext, KILLED_DETAIL};

/// The executable paths the kernel kills at exec for `rules`.
pub fn kill_paths(rules: &RuleSet) -> Vec<KillPath> {
    let mut paths = Vec::new();
    for rule in rules.rules() {
        let patterns = match rule.kill_enforcement() {
            Some(KillEnforcement::Kernel(p)) => p,
            Some(KillEnforcement::Partial { kernel, .. }) => kernel,
            _ => continue,
        };
        for pattern in patterns {
            let prefix = match pattern.kind {
                PathMatch::Exact => false,
                PathMatch::Prefix => true,
                PathMatch::FileName => continue,
            };
            paths.push(KillPath {
                path: pattern.text,
                prefix,
            });
        }
    }
    paths
}

/// Carries out kills from userspace when the kernel did not.
#[derive(Debug)]
pub struct Responder {
    ctx: HostContext,
    /// Whether the sensor can address host pids (see [`crate::pidns::PidNamespace::host`]).
    host_pids: bool,
}

impl Responder {
    pub fn new(ctx: HostContext, host_pids: bool) -> Self {
        Self { ctx, host_pids }
    }

    /// Kills the process of `event` unless the kernel already did, and says what happened.
    pub fn kill(&self, event: &Event) -> Response {
        if event.details.get(KILLED_DETAIL).map(String::as_str) == Some("kernel") {
            return Response {
                action: "killed".into(),
                by: "kernel".into(),
                after_ns: 0,
                error: None,
            };
        }
        let result = self.kill_from_userspace(event);
        let after_ns = Timestamp::now()
            .unix_nanos()
            .saturating_sub(event.timestamp.unix_nanos());
        match result {
            Ok(()) => Response {
                action: "killed".into(),
                by: "userspace".into(),
                after_ns,
                error: None,
            },
            Err(reason) => Response {
                action: "kill_failed".into(),
                by: "userspace".into(),
                after_ns,
                error: Some(reason),
            },
        }
    }

    fn kill_from_userspace(&self, event: &Event) -> Result<(), String> {
        let pid = event.process.pid;
        if !self.host_pids {
            // The pid is the host's number: here it names another process, or none.
            return Err(format!(
                "the sensor runs outside the host PID namespace: pid {pid} is not addressable \
                 from here (run it with --pid=host / hostPID)"
            ));
        }
        let pidfd = pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => "the process had already exited".to_owned(),
            _ => format!("pidfd_open({pid}): {e}"),
        })?;
        // The pidfd pins the process: if it is the one of the event now, it stays so.
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
        let stat = crate::procfs::parse_stat(&stat)
            .ok_or_else(|| format!("/proc/{pid}/stat is unreadable"))?;
        let tick_ns = 1_000_000_000 / self.ctx.clock_ticks_per_sec.max(1);
        if self.ctx.entity_id(pid, stat.start_ticks * tick_ns) != event.process.entity_id {
            return Err(format!(
                "pid {pid} now belongs to another process: the matched one had exited"
            ));
        }
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "pidfd_send_signal: {}",
                std::io::Error::last_os_error()
            ))
        }
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
