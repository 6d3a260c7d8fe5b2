//! Loads the kernel programs, picks a hook per event kind by trying the best first, and hands
//! out ring-buffer records as they arrive. Dropping [`Capture`] detaches every program and
//! frees every map: the kernel keeps nothing of ours once the sensor is gone.

use std::os::fd::AsRawFd;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use vigil_common::{kind, SensorConfig};

use crate::config::ExecHook;
use crate::offsets::{self, OffsetError};

/// The kernel programs, embedded at build time by `cargo xtask build` (see build.rs).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vigil-sensor.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this vigil-sensor was built without its kernel programs; build it with `cargo xtask build`")]
    NoObject,
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    #[error("cannot mount tracefs at /sys/kernel/tracing (needed to attach tracepoints): {0}")]
    Tracefs(#[source] nix::Error),
    #[error("the kernel refused to load the programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {program} is missing from the object")]
    MissingProgram { program: &'static str },
    #[error("no hook for {event} could be attached: {reasons}")]
    Attach {
        event: &'static str,
        reasons: String,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("ring buffer poll registration: {0}")]
    Poll(#[source] std::io::Error),
}

/// Which hook carries an event kind on this host, for start-up logs and `doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookChoice {
    pub event: &'static str,
    pub hook: String,
}

/// Per-kind totals over all CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records the ring buffer had no room for.
    pub lost: [u64; kind::COUNT as usize],
    /// Records sent with a field the kernel could not read.
    pub faults: [u64; kind::COUNT as usize],
}

pub struct Capture {
    // NB: field order is drop order: the ring buffer's fd goes before the object owning the
    // programs, so nothing is left half-attached.
    ring: AsyncFd<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
    faults: PerCpuArray<MapData, u64>,
    hooks: Vec<HookChoice>,
    _ebpf: Ebpf,
}

impl Capture {
    /// Loads and attaches everything. `sensor_tgid` is skipped by every program.
    pub fn start(sensor_tgid: u32, exec_hook: ExecHook) -> Result<Self, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        ensure_tracefs()?;
        let config = SensorConfig {
            sensor_tgid,
            _pad: 0,
            offsets: offsets::kernel_offsets(Path::new(offsets::KERNEL_BTF))?,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(EBPF_OBJECT)
            .map_err(|e| CaptureError::Load(Box::new(e)))?;
        let hooks = vec![
            attach_exec(&mut ebpf, exec_hook)?,
            attach_raw(&mut ebpf, "fork", "sched_process_fork", "fork")?,
            attach_tracepoint(&mut ebpf, "exit", "sched", "sched_process_exit", "exit")?,
        ];
        let ring = take_map(&mut ebpf, "EVENTS")?;
        // SAFETY: the RingBuf owns its map fd and keeps it open until AsyncFd drops it.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| CaptureError::Poll(e.into()))?;
        let lost = take_map(&mut ebpf, "LOST")?;
        let faults = take_map(&mut ebpf, "FAULTS")?;
        Ok(Self {
            ring,
            lost,
            faults,
            hooks,
            _ebpf: ebpf,
        })
    }

    pub fn hooks(&self) -> &[HookChoice] {
        &self.hooks
    }

    /// Waits until records are ready, then passes each to `sink` (at most `budget` of them, so
    /// one busy burst cannot starve the rest of the sensor). Returns how many it passed.
    pub async fn drain(
        &mut self,
        budget: usize,
        mut sink: impl FnMut(&[u8]),
    ) -> std::io::Result<usize> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut passed = 0;
        while passed < budget {
            let Some(record) = ring.next() else { break };
            sink(&record);
            passed += 1;
        }
        if passed < budget {
            // Empty: wait for the next wakeup. With records left, stay ready and come back.
            guard.clear_ready();
        }
        Ok(passed)
    }

    pub fn counters(&self) -> KernelCounters {
        let mut counters = KernelCounters::default();
        for record_kind in 0..kind::COUNT {
            let sum = |map: &PerCpuArray<MapData, u64>| {
                map.get(&record_kind, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0)
            };
            counters.lost[record_kind as usize] = sum(&self.lost);
            counters.faults[record_kind as usize] = sum(&self.faults);
        }
        counters
    }

    /// The ring buffer's fd, for tests that check it is really polled.
    pub fn ring_fd(&self) -> i32 {
        self.ring.get_ref().as_raw_fd()
    }
}

fn take_map<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let raw = ebpf
        .take_map(map)
        .ok_or(CaptureError::MissingProgram { program: map })?;
    T::try_from(raw).map_err(|source| CaptureError::Map {
        map,
        source: Box::new(source),
    })
}

/// Exec: by default the BTF tracepoint where the kernel allows it (typed `linux_binprm`), else the stable
/// tracepoint. Each failure is kept so the final error says why every option failed.
fn attach_exec(ebpf: &mut Ebpf, preference: ExecHook) -> Result<HookChoice, CaptureError> {
    let mut reasons = Vec::new();
    if preference == ExecHook::Tracepoint {
        reasons.push("tp_btf/sched_process_exec: not tried (exec_hook: tracepoint)".to_owned());
    } else {
        match Btf::from_sys_fs() {
            Ok(btf) => {
                let attached = (|| -> Result<(), String> {
                    let program: &mut BtfTracePoint = ebpf
                        .program_mut("exec_btf")
                        .ok_or("program exec_btf missing")?
                        .try_into()
                        .map_err(|e| format!("{e}"))?;
                    program
                        .load("sched_process_exec", &btf)
                        .map_err(|e| format!("load: {e}"))?;
                    program.attach().map_err(|e| format!("attach: {e}"))?;
                    Ok(())
                })();
                match attached {
                    Ok(()) => {
                        return Ok(HookChoice {
                            event: "exec",
                            hook: "tp_btf/sched_process_exec".into(),
                        })
                    }
                    Err(reason) => reasons.push(format!("tp_btf/sched_process_exec: {reason}")),
                }
            }
            Err(e) => reasons.push(format!("tp_btf/sched_process_exec: no kernel BTF: {e}")),
        }
        if preference == ExecHook::Btf {
            return Err(CaptureError::Attach {
                event: "exec",
                reasons: reasons.join("; "),
            });
        }
    }
    match attach_tracepoint(ebpf, "exec_tp", "sched", "sched_process_exec", "exec") {
        Ok(choice) => {
            tracing::info!(fallback_reason = %reasons.join("; "), "exec falls back to the plain tracepoint");
            Ok(choice)
        }
        Err(CaptureError::Attach { reasons: last, .. }) => {
            reasons.push(last);
            Err(CaptureError::Attach {
                event: "exec",
                reasons: reasons.join("; "),
            })
        }
        Err(other) => Err(other),
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
    event: &'static str,
) -> Result<HookChoice, CaptureError> {
    let hook = format!("tracepoint/{category}/{name}");
    let result = (|| -> Result<(), String> {
        let prog: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| format!("program {program} missing"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load().map_err(|e| format!("load: {e}"))?;
        prog.attach(category, name)
            .map_err(|e| format!("attach: {e}"))?;
        Ok(())
    })();
    result
        .map(|()| HookChoice {
            event,
            hook: hook.clone(),
        })
        .map_err(|reason| CaptureError::Attach {
            event,
            reasons: format!("{hook}: {reason}"),
        })
}

fn attach_raw(
    ebpf: &mut Ebpf,
    program: &'static str,
    name: &str,
    event: &'static str,
) -> Result<HookChoice, CaptureError> {
    let hook = format!("raw_tracepoint/{name}");
    let result = (|| -> Result<(), String> {
        let prog: &mut RawTracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| format!("program {program} missing"))?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load().map_err(|e| format!("load: {e}"))?;
        prog.attach(name).map_err(|e| format!("attach: {e}"))?;
        Ok(())
    })();
    result
        .map(|()| HookChoice {
            event,
            hook: hook.clone(),
        })
        .map_err(|reason| CaptureError::Attach {
            event,
            reasons: format!("{hook}: {reason}"),
        })
}

/// Tracepoint attachment reads event ids from tracefs; some hosts do not mount it.
fn ensure_tracefs() -> Result<(), CaptureError> {
    let candidates = [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ];
    if candidates.iter().any(|p| Path::new(p).is_dir()) {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(CaptureError::Tracefs)?;
    tracing::info!("mounted tracefs at /sys/kernel/tracing");
    Ok(())
}
