//! The A series' workloads: syscall-heavy loops timed in ns per operation.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// An unwatched path for A2: `/var/lib/` is outside the sensor's `DEFAULT_FILE_PREFIXES`.
pub(super) const UNWATCHED_DIR: &str = "/var/lib/vigil-bench";

/// Sizes of one measurement round; `--quick` shrinks them for CI.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    pub(super) rounds: usize,
    getppid_calls: usize,
    open_close: usize,
    tcp_connects: usize,
    spawns: usize,
}

impl Plan {
    pub(super) fn new(quick: bool) -> Self {
        if quick {
            Self {
                rounds: 2,
                getppid_calls: 500_000,
                open_close: 50_000,
                tcp_connects: 1_000,
                spawns: 100,
            }
        } else {
            Self {
                rounds: 10,
                getppid_calls: 3_000_000,
                open_close: 300_000,
                tcp_connects: 10_000,
                spawns: 400,
            }
        }
    }
}

/// Slices per workload per phase (see [`fastest_chunk`]).
pub(super) const CHUNKS: usize = 5;

impl Plan {
    /// The same plan with every count divided by `n`.
    pub(super) fn slice(&self, n: usize) -> Self {
        let Self {
            rounds,
            getppid_calls,
            open_close,
            tcp_connects,
            spawns,
        } = *self;
        Self {
            rounds,
            getppid_calls: (getppid_calls / n).max(1),
            open_close: (open_close / n).max(1),
            tcp_connects: (tcp_connects / n).max(1),
            spawns: (spawns / n).max(1),
        }
    }
}

/// One workload of the A series: a name, a goal on the attached/detached ratio, and the loop.
pub(super) struct Workload {
    pub(super) name: &'static str,
    pub(super) what: &'static str,
    pub(super) goal: f64,
    pub(super) run: fn(&Plan) -> anyhow::Result<Timing>,
}

/// One slice's cost per operation, by two clocks.
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    /// CPU time of the loop's thread plus its reaped children (A4's `/bin/true`s), per op: the
    /// time the kernel and the loop itself spent, unaffected by other processes taking the
    /// CPU away. The figure the A ratios are quoted on: with 2 cores shared by several
    /// compiles (load average above 10) wall time per op varied 8x between runs.
    pub(super) cpu_ns: f64,
    /// Wall time per op: also counts the sensor's userspace work when it competes for a core
    /// (and everyone else's); reported beside the CPU figure.
    pub(super) wall_ns: f64,
}

pub(super) const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "A1",
        what: "getppid loop",
        goal: 1.10,
        run: getppid_loop,
    },
    Workload {
        name: "A2",
        what: "open+close, unwatched path",
        goal: 1.10,
        run: open_close_loop,
    },
    Workload {
        name: "A3",
        what: "loopback TCP connect+accept+close",
        goal: 1.05,
        run: tcp_loop,
    },
    Workload {
        name: "A4",
        what: "fork+exec /bin/true+wait",
        goal: 1.05,
        run: spawn_loop,
    },
];

/// Runs a workload in [`CHUNKS`] slices and keeps the fastest slice's figures: other work on
/// the same 2 cores only ever adds time, so the minimum is the figure least disturbed by it.
pub(super) fn fastest_chunk(w: &Workload, plan: &Plan) -> anyhow::Result<Timing> {
    let slice = plan.slice(CHUNKS);
    let mut best = Timing {
        cpu_ns: f64::INFINITY,
        wall_ns: f64::INFINITY,
    };
    for _ in 0..CHUNKS {
        let t = (w.run)(&slice).with_context(|| format!("{} ({})", w.name, w.what))?;
        best.cpu_ns = best.cpu_ns.min(t.cpu_ns);
        best.wall_ns = best.wall_ns.min(t.wall_ns);
    }
    Ok(best)
}

/// A point on both clocks.
struct Stopwatch {
    wall: Instant,
    cpu_ns: u128,
}

impl Stopwatch {
    fn start() -> anyhow::Result<Self> {
        Ok(Self {
            wall: Instant::now(),
            cpu_ns: cpu_now()?,
        })
    }

    fn per_op(&self, ops: usize) -> anyhow::Result<Timing> {
        let ops = ops.max(1) as f64;
        Ok(Timing {
            cpu_ns: cpu_now()?.saturating_sub(self.cpu_ns) as f64 / ops,
            wall_ns: self.wall.elapsed().as_nanos() as f64 / ops,
        })
    }
}

/// This thread's CPU time plus that of every reaped child, in ns.
fn cpu_now() -> anyhow::Result<u128> {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::time::{clock_gettime, ClockId};
    let thread = Duration::from(clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)?);
    let children = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u128 * 1_000_000 + t.tv_usec() as u128;
    let child_us = micros(children.user_time()) + micros(children.system_time());
    Ok(thread.as_nanos() + child_us * 1_000)
}

fn getppid_loop(plan: &Plan) -> anyhow::Result<Timing> {
    let started = Stopwatch::start()?;
    for _ in 0..plan.getppid_calls {
        // NB: glibc does not cache getppid: every call is a real syscall.
        std::hint::black_box(nix::unistd::getppid());
    }
    started.per_op(plan.getppid_calls)
}

pub(super) fn unwatched_file() -> PathBuf {
    Path::new(UNWATCHED_DIR).join("probe")
}

fn open_close_loop(plan: &Plan) -> anyhow::Result<Timing> {
    let path = unwatched_file();
    let started = Stopwatch::start()?;
    for _ in 0..plan.open_close {
        drop(File::open(&path).with_context(|| format!("opening {}", path.display()))?);
    }
    started.per_op(plan.open_close)
}

fn tcp_loop(plan: &Plan) -> anyhow::Result<Timing> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let started = Stopwatch::start()?;
    for _ in 0..plan.tcp_connects {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        // The server side closes first, so TIME_WAIT does not pin the client's ports.
        drop(server);
        drop(client);
    }
    started.per_op(plan.tcp_connects)
}

fn spawn_loop(plan: &Plan) -> anyhow::Result<Timing> {
    let started = Stopwatch::start()?;
    for _ in 0..plan.spawns {
        let status = Command::new("/bin/true").status()?;
        if !status.success() {
            bail!("/bin/true failed ({status})");
        }
    }
    started.per_op(plan.spawns)
}
