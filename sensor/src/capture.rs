//! Loads the kernel programs, picks a hook per event kind by trying the best first, and hands
//! out ring-buffer records as they arrive. Dropping [`Capture`] detaches every program and
//! frees every map: the kernel keeps nothing of ours once the sensor is gone.

use std::collections::HashSet;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as AyaHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::trace_point::TracePointLink;
use aya::programs::{BtfTracePoint, FEntry, Lsm, RawTracePoint, TracePoint};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use vigil_common::{kind, SensorConfig, SocketOffsets, SyscallSpec, KILL_PATH_LEN, PREFIX_KEY_LEN};
use vigil_proto::EventAction;

use crate::config::ExecHook;
use crate::merge::{LaneMerge, LateCounts, MAX_BULK_AHEAD};
use crate::offsets::{self, OffsetError};
use crate::pidns::{self, PidNamespace};
use crate::syscalls;

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
    #[error("the programs cannot be told the sensor's own pid: {0}")]
    OwnTgid(#[source] pidns::WhoamiError),
    #[error("ring buffer poll registration: {0}")]
    Poll(#[source] std::io::Error),
}

/// Which hook carries an event kind on this host, for start-up logs and `doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookChoice {
    pub event: &'static str,
    pub hook: String,
}

/// A hook tried for an event kind and refused by the kernel (or not tried, and why), ahead of
/// the one in use: the probe's report of the fallback chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookRefusal {
    pub event: &'static str,
    pub hook: String,
    /// Why: the errno by name first where the kernel gave one (`EPERM: ...`).
    pub reason: String,
}

/// An error's text, led by the errno of the first OS error in its chain.
fn refusal(error: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut errno = None;
    let mut text = error.to_string();
    while let Some(e) = source {
        if let Some(code) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            errno = Some(format!("{:?}", nix::errno::Errno::from_raw(code)));
            if !text.contains(&e.to_string()) {
                text = format!("{text}: {e}");
            }
            break;
        }
        source = e.source();
    }
    // aya ends a load error with the verifier's log, empty when the kernel refused before
    // verifying.
    let text = text
        .trim_end()
        .trim_end_matches("Verifier output:")
        .trim_end();
    match errno {
        Some(errno) => format!("{errno}: {text}"),
        None => text.to_owned(),
    }
}

/// Per-kind totals over all CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelCounters {
    /// Records the programs put in a ring buffer.
    pub sent: [u64; kind::COUNT as usize],
    /// Records userspace took out of a ring buffer.
    pub received: [u64; kind::COUNT as usize],
    /// Records the ring buffer had no room for.
    pub lost: [u64; kind::COUNT as usize],
    /// Records sent with a field the kernel could not read.
    pub faults: [u64; kind::COUNT as usize],
}

impl Default for KernelCounters {
    fn default() -> Self {
        Self {
            sent: [0; kind::COUNT as usize],
            received: [0; kind::COUNT as usize],
            lost: [0; kind::COUNT as usize],
            faults: [0; kind::COUNT as usize],
        }
    }
}

/// An executable path whose exec the kernel kills at once (from a `kill` rule).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KillPath {
    pub path: String,
    /// A prefix of the path rather than the whole path.
    pub prefix: bool,
}

impl KillPath {
    /// The trie key: an exact path keeps its NUL so that only the whole path matches it.
    /// `None` when the path does not fit the kernel's key.
    fn key(&self) -> Option<Key<[u8; KILL_PATH_LEN]>> {
        let mut bytes = self.path.as_bytes().to_vec();
        if !self.prefix {
            bytes.push(0);
        }
        if bytes.is_empty() || bytes.len() > KILL_PATH_LEN || self.path.contains('\0') {
            return None;
        }
        let mut data = [0u8; KILL_PATH_LEN];
        data[..bytes.len()].copy_from_slice(&bytes);
        Some(Key::new((bytes.len() * 8) as u32, data))
    }

    /// Whether the kernel can hold this path (see [`vigil_common::KILL_PATH_LEN`]).
    pub fn fits(&self) -> bool {
        self.key().is_some()
    }
}

/// What to capture beyond process lifecycle.
#[derive(Clone, Debug, Default)]
pub struct CaptureOptions {
    pub exec_hook: ExecHook,
    /// Watched prefixes for file events; `None` means every path.
    pub file_prefixes: Option<Vec<String>>,
    /// Capture syscalls (files, network, privilege, kernel); off leaves only exec/fork/exit.
    pub syscalls: bool,
    /// Actions to capture (see [`crate::pushdown`]); `None`: every kind. Exec, fork and exit
    /// are always attached.
    pub actions: Option<HashSet<EventAction>>,
    /// Ring buffer sizes in bytes (power of two, multiple of the page size); `None`: built-in.
    pub critical_ring_bytes: Option<u32>,
    pub bulk_ring_bytes: Option<u32>,
}

pub struct Capture {
    // NB: field order is drop order: the ring buffers' fds go before the object owning the
    // programs, so nothing is left half-attached.
    critical: AsyncFd<RingBuf<MapData>>,
    bulk: AsyncFd<RingBuf<MapData>>,
    /// Puts the two lanes' records in time order.
    merge: LaneMerge,
    /// The last drain stopped at its budget with records left: do not wait for a wakeup.
    backlog: bool,
    /// The kernel's `POLLING` flag: while set, producers write without waking us and we poll
    /// every [`POLL_INTERVAL`]; cleared once a poll finds nothing, and we sleep until woken.
    polling: Array<MapData, u32>,
    /// What `polling` holds, so it is written only on a change.
    is_polling: bool,
    sent: PerCpuArray<MapData, u64>,
    lost: PerCpuArray<MapData, u64>,
    faults: PerCpuArray<MapData, u64>,
    kill_paths: LpmTrie<MapData, [u8; KILL_PATH_LEN], u8>,
    /// What `kill_paths` holds now, so an update removes exactly what is gone.
    kill_loaded: Vec<KillPath>,
    received: [u64; kind::COUNT as usize],
    hooks: Vec<HookChoice>,
    refused: Vec<HookRefusal>,
    /// Syscall tracepoint links, owned here so that [`Drop`] can detach them in parallel.
    syscall_links: Vec<TracePointLink>,
    ebpf: Ebpf,
    /// The sensor's own numbers, host and local, and whether /proc speaks the host's.
    namespace: PidNamespace,
    /// Whether the kernel's prefix filter is in force (fixed at load: a read-only global).
    prefix_filter: bool,
}

impl Capture {
    /// Loads and attaches everything. Every program skips the sensor's own process, known by
    /// its host TGID (see [`crate::pidns`]).
    pub fn start(options: &CaptureOptions) -> Result<Self, CaptureError> {
        if EBPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        ensure_tracefs()?;
        let config = SensorConfig {
            prefix_filter: u32::from(options.file_prefixes.is_some()),
            offsets: offsets::kernel_offsets(Path::new(offsets::KERNEL_BTF))?,
        };
        // Without them DNS is not captured and sockets have no transport: worth a warning,
        // not a refusal to start.
        let socket_offsets = offsets::socket_offsets(Path::new(offsets::KERNEL_BTF))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "socket fields not found: no DNS capture, no socket types");
                SocketOffsets {
                    task_files: SocketOffsets::UNAVAILABLE,
                    files_fdt: SocketOffsets::UNAVAILABLE,
                    fdt_max_fds: SocketOffsets::UNAVAILABLE,
                    fdt_fd: SocketOffsets::UNAVAILABLE,
                    file_private_data: SocketOffsets::UNAVAILABLE,
                    socket_type: SocketOffsets::UNAVAILABLE,
                    socket_file: SocketOffsets::UNAVAILABLE,
                    socket_sk: SocketOffsets::UNAVAILABLE,
                    sk_family: SocketOffsets::UNAVAILABLE,
                    sk_dport: SocketOffsets::UNAVAILABLE,
                    sk_protocol: SocketOffsets::UNAVAILABLE,
                    _pad: 0,
                }
            });
        let mut loader = EbpfLoader::new();
        loader.override_global("CONFIG", &config, true);
        loader.override_global("SOCKET_OFFSETS", &socket_offsets, true);
        let whoami = pidns::whoami_query();
        loader.override_global("WHOAMI", &whoami, true);
        let file_offsets = offsets::file_offsets(Path::new(offsets::KERNEL_BTF));
        if let Ok(file_offsets) = &file_offsets {
            loader.override_global("FILE_OFFSETS", file_offsets, true);
        }
        if let Some(bytes) = options.critical_ring_bytes {
            loader.map_max_entries("EVENTS", bytes);
        }
        if let Some(bytes) = options.bulk_ring_bytes {
            loader.map_max_entries("BULK", bytes);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| CaptureError::Load(Box::new(e)))?;
        // Before any other program is attached, so that none sees the sensor unrecognised.
        let namespace = learn_own_tgid(&mut ebpf)?;
        let mut syscall_links = Vec::new();
        let mut refused = Vec::new();
        let mut hooks = vec![
            attach_exec(&mut ebpf, options.exec_hook)?,
            attach_raw(&mut ebpf, "fork", "sched_process_fork", "fork")?,
            attach_tracepoint(&mut ebpf, "exit", "sched", "sched_process_exit", "exit")?,
        ];
        if options.syscalls {
            if let Some(prefixes) = &options.file_prefixes {
                load_prefixes(&mut ebpf, prefixes)?;
            }
            let wants = |action: EventAction| {
                options
                    .actions
                    .as_ref()
                    .is_none_or(|actions| actions.contains(&action))
            };
            // File opens: a kernel-function hook where the kernel allows one, else the
            // syscall tracepoints (which then carry opens with the other syscalls).
            let open_hook = if wants(EventAction::Open) {
                let chosen = match &file_offsets {
                    Ok(_) => attach_file_open(&mut ebpf, &mut refused),
                    Err(e) => {
                        for hook in FILE_OPEN_HOOKS {
                            refused.push(HookRefusal {
                                event: "file open",
                                hook: hook.1.into(),
                                reason: format!("not tried: {e}"),
                            });
                        }
                        None
                    }
                };
                hooks.push(chosen.clone().unwrap_or(HookChoice {
                    event: "file open",
                    hook: "tracepoint/syscalls/sys_{enter,exit}_{openat,open,creat,openat2}".into(),
                }));
                chosen
            } else {
                None
            };
            let (choice, links) = attach_syscalls(&mut ebpf, &|action| {
                wants(action) && !(action == EventAction::Open && open_hook.is_some())
            })?;
            hooks.push(choice);
            syscall_links = links;
            // DNS answers also name later connects.
            if wants(EventAction::DnsQuery) || wants(EventAction::Connect) {
                let (choice, links) = attach_dns(&mut ebpf)?;
                hooks.push(choice);
                syscall_links.extend(links);
            }
            if wants(EventAction::IoUring) {
                match attach_uring(&mut ebpf) {
                    Ok((choice, links)) => {
                        hooks.push(choice);
                        syscall_links.extend(links);
                    }
                    // A kernel without io_uring (or with it compiled out) has nothing to watch.
                    Err(e) => tracing::warn!(error = %e, "io_uring is not watched"),
                }
            }
        }
        let polling = take_map(&mut ebpf, "POLLING")?;
        let critical = register(take_map(&mut ebpf, "EVENTS")?)?;
        let bulk = register(take_map(&mut ebpf, "BULK")?)?;
        let sent = take_map(&mut ebpf, "SENT")?;
        let lost = take_map(&mut ebpf, "LOST")?;
        let faults = take_map(&mut ebpf, "FAULTS")?;
        let kill_paths = take_map(&mut ebpf, "KILL_PATHS")?;
        Ok(Self {
            critical,
            bulk,
            merge: LaneMerge::new(MAX_BULK_AHEAD),
            backlog: false,
            polling,
            is_polling: false,
            sent,
            lost,
            faults,
            kill_paths,
            kill_loaded: Vec::new(),
            received: [0; kind::COUNT as usize],
            syscall_links,
            hooks,
            refused,
            ebpf,
            namespace,
            prefix_filter: options.file_prefixes.is_some(),
        })
    }

    /// Where the sensor stands relative to the host's PID namespace.
    pub fn pid_namespace(&self) -> PidNamespace {
        self.namespace
    }

    pub fn hooks(&self) -> &[HookChoice] {
        &self.hooks
    }

    /// Replaces the watched prefixes in the running kernel filter, without reloading a
    /// program: new ones are added before stale ones go, so no watched path is missed on the
    /// way. Switching the filter on or off needs a restart (it is fixed at load).
    pub fn set_file_prefixes(&mut self, prefixes: Option<&[String]>) -> Result<(), CaptureError> {
        let Some(prefixes) = prefixes else {
            if self.prefix_filter {
                tracing::warn!("file_prefixes now admit every path: restart the sensor to lift the kernel filter");
            }
            return Ok(());
        };
        if !self.prefix_filter {
            tracing::warn!("a kernel prefix filter needs a restart to come into force");
            return Ok(());
        }
        load_prefixes(&mut self.ebpf, prefixes)?;
        let map = self
            .ebpf
            .map_mut("PREFIXES")
            .ok_or(CaptureError::MissingProgram {
                program: "PREFIXES",
            })?;
        let mut trie: LpmTrie<_, [u8; PREFIX_KEY_LEN], u8> =
            LpmTrie::try_from(map).map_err(map_error("PREFIXES"))?;
        let wanted: HashSet<(u32, [u8; PREFIX_KEY_LEN])> = prefixes
            .iter()
            .map(|p| prefix_key(p))
            .map(|k| (k.prefix_len(), k.data()))
            .collect();
        let stale: Vec<Key<[u8; PREFIX_KEY_LEN]>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale {
            trie.remove(&key).map_err(map_error("PREFIXES"))?;
        }
        Ok(())
    }

    /// Hooks the kernel refused, in the order they were tried, before the ones in use.
    pub fn refused(&self) -> &[HookRefusal] {
        &self.refused
    }

    /// Makes the kernel kill at exec exactly the executables of `paths` (new ones are added
    /// before old ones go, so a reload never opens a gap for a path both sets hold). A path
    /// too long for the kernel's key is skipped; the caller checks [`KillPath::fits`].
    pub fn set_kill_paths(&mut self, paths: &[KillPath]) -> Result<(), CaptureError> {
        let map_error = |source| CaptureError::Map {
            map: "KILL_PATHS",
            source: Box::new(source),
        };
        let mut wanted: Vec<KillPath> = paths.iter().filter(|p| p.fits()).cloned().collect();
        wanted.sort();
        wanted.dedup();
        for path in &wanted {
            if let Some(key) = path.key() {
                self.kill_paths.insert(&key, 1, 0).map_err(map_error)?;
            }
        }
        for gone in self.kill_loaded.iter().filter(|p| !wanted.contains(p)) {
            if let Some(key) = gone.key() {
                self.kill_paths.remove(&key).map_err(map_error)?;
            }
        }
        self.kill_loaded = wanted;
        Ok(())
    }

    /// Waits until records are ready, then passes them to `sink` in the order they happened
    /// (both lanes merged by kernel time, see [`crate::merge`]), at most `budget` (so one burst
    /// cannot starve the rest of the sensor). Returns how many it passed.
    ///
    /// Wakes adaptively: while records keep coming it polls every [`POLL_INTERVAL`] and the
    /// programs write without waking it (one wakeup per record capped a ring buffer at ~0.8 M
    /// records/s here and cost every producing syscall an interrupt); after a poll that finds
    /// nothing it sleeps until a record wakes it, so an idle host costs nothing and the first
    /// record after a quiet spell (an alert, typically) is seen at once.
    pub async fn drain(
        &mut self,
        budget: usize,
        mut sink: impl FnMut(&[u8]),
    ) -> std::io::Result<usize> {
        if !self.backlog {
            if self.is_polling {
                tokio::time::sleep(POLL_INTERVAL).await;
            } else {
                // Readiness is cleared before reading: a record that lands while we drain raises
                // a fresh wakeup instead of being missed. NB: a record written by a producer that
                // read the flag just before we cleared it wakes nobody; the timeout bounds its wait.
                tokio::select! {
                    biased;
                    guard = self.critical.readable_mut() => guard?.clear_ready(),
                    guard = self.bulk.readable_mut() => guard?.clear_ready(),
                    () = tokio::time::sleep(SLEEP_AT_MOST) => {}
                }
            }
        }
        let received = &mut self.received;
        let passed = self.merge.drain(
            self.critical.get_mut(),
            self.bulk.get_mut(),
            budget,
            |_, record| {
                if let Some(kind_bytes) = record.get(..4) {
                    let record_kind = u32::from_ne_bytes([
                        kind_bytes[0],
                        kind_bytes[1],
                        kind_bytes[2],
                        kind_bytes[3],
                    ]);
                    if let Some(slot) = received.get_mut(record_kind as usize) {
                        *slot += 1;
                    }
                }
                sink(record);
            },
        );
        // A record held by the merge (the budget ran out) must not wait for a wakeup.
        self.backlog = passed >= budget || self.merge.holds();
        match (passed > 0, self.is_polling) {
            (true, false) => self.set_polling(true),
            (false, true) => {
                // Ask for wakeups again, then look once more without waiting: a record written
                // before the flag changed woke nobody.
                self.set_polling(false);
                self.backlog = true;
            }
            _ => {}
        }
        Ok(passed)
    }

    fn set_polling(&mut self, on: bool) {
        match self.polling.set(0, u32::from(on), 0) {
            Ok(()) => self.is_polling = on,
            // Without the flag the programs keep waking us for every record: slower, not wrong.
            Err(e) => tracing::debug!(error = %e, "cannot switch ring-buffer wakeups"),
        }
    }

    pub fn counters(&self) -> KernelCounters {
        let mut counters = KernelCounters::default();
        for record_kind in 0..kind::COUNT {
            let sum = |map: &PerCpuArray<MapData, u64>| {
                map.get(&record_kind, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0)
            };
            counters.sent[record_kind as usize] = sum(&self.sent);
            counters.lost[record_kind as usize] = sum(&self.lost);
            counters.faults[record_kind as usize] = sum(&self.faults);
        }
        counters.received = self.received;
        counters
    }

    /// Records passed on after a newer record of the other lane (see [`crate::merge`]).
    pub fn late(&self) -> LateCounts {
        self.merge.late()
    }
}

impl Drop for Capture {
    /// Each syscall tracepoint detach waits for an RCU grace period in the kernel (syscall
    /// tracepoints are faultable since 6.13); one after the other, the ~100 links took 7.7 s
    /// to stop here. Part of each wait overlaps across threads: in parallel it is ~3.5 s.
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.syscall_links);
        let per_thread = links.len().div_ceil(DETACH_THREADS).max(1);
        let mut links = links.into_iter().peekable();
        std::thread::scope(|scope| {
            while links.peek().is_some() {
                let chunk: Vec<TracePointLink> = links.by_ref().take(per_thread).collect();
                scope.spawn(move || drop(chunk));
            }
        });
    }
}

const DETACH_THREADS: usize = 32;

/// How often the consumer looks at the ring buffers while records keep coming: the longest a
/// record waits in the kernel under load (tokio's timer rounds it up to the next millisecond).
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// The longest the consumer sleeps without looking, in case a record woke nobody (see
/// [`Capture::drain`]).
const SLEEP_AT_MOST: std::time::Duration = std::time::Duration::from_millis(100);

/// The sensor's host TGID, from its own program; failing that (no syscall tracepoints, no
/// `bpf_get_ns_current_pid_tgid`), its pid: right in the host's namespace, the best there is outside.
fn learn_own_tgid(ebpf: &mut Ebpf) -> Result<PidNamespace, CaptureError> {
    match pidns::learn_host_tgid(ebpf) {
        Ok(tgid) => Ok(PidNamespace::locate(Some(tgid))),
        Err(e) => {
            let namespace = PidNamespace::locate(None);
            if namespace.host {
                tracing::debug!(error = %refusal(&e), "host pid not learned from the kernel; using getpid()");
            } else {
                tracing::warn!(error = %refusal(&e), "cannot learn the sensor's host pid: its own activity is not told apart from the host's");
            }
            pidns::set_own_tgid(ebpf, namespace.own_tgid()).map_err(CaptureError::OwnTgid)?;
            Ok(namespace)
        }
    }
}

fn register(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>, CaptureError> {
    // SAFETY: the RingBuf owns its map fd and keeps it open until AsyncFd drops it.
    unsafe { AsyncFd::register(ring) }.map_err(|e| CaptureError::Poll(e.into()))
}

/// A prefix as the trie's key. Longer prefixes are cut to the key length: the kernel then
/// over-approximates and userspace checks the whole path.
fn prefix_key(prefix: &str) -> Key<[u8; PREFIX_KEY_LEN]> {
    // Longer prefixes are cut to what a key holds of a path (the kernel's string read keeps a
    // byte for the NUL): the kernel then over-approximates and userspace checks the whole path.
    let bytes = &prefix.as_bytes()[..prefix.len().min(PREFIX_KEY_LEN - 1)];
    let mut data = [0u8; PREFIX_KEY_LEN];
    data[..bytes.len()].copy_from_slice(bytes);
    Key::new((bytes.len() * 8) as u32, data)
}

fn load_prefixes(ebpf: &mut Ebpf, prefixes: &[String]) -> Result<(), CaptureError> {
    let map = ebpf
        .map_mut("PREFIXES")
        .ok_or(CaptureError::MissingProgram {
            program: "PREFIXES",
        })?;
    let mut trie: LpmTrie<_, [u8; PREFIX_KEY_LEN], u8> =
        LpmTrie::try_from(map).map_err(|source| CaptureError::Map {
            map: "PREFIXES",
            source: Box::new(source),
        })?;
    for prefix in prefixes {
        trie.insert(&prefix_key(prefix), 1, 0)
            .map_err(|source| CaptureError::Map {
                map: "PREFIXES",
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// Attaches the generic enter/exit programs to every syscall of [`syscalls::table`] this
/// kernel has, and fills the spec map. A syscall without tracepoints is reported, not fatal.
fn attach_syscalls(
    ebpf: &mut Ebpf,
    wants: &dyn Fn(EventAction) -> bool,
) -> Result<(HookChoice, Vec<TracePointLink>), CaptureError> {
    let (table, unwanted): (Vec<_>, Vec<_>) = syscalls::table().into_iter().partition(|c| {
        syscalls::actions_of(c.spec.kind)
            .iter()
            .any(|action| wants(*action))
    });
    if !unwanted.is_empty() {
        let mut names: Vec<&str> = unwanted.iter().map(|c| c.name).collect();
        names.dedup();
        tracing::info!(
            syscalls = %names.join(","),
            "not attached: no rule or setting selects their events"
        );
    }
    {
        let map = ebpf
            .map_mut("SPECS")
            .ok_or(CaptureError::MissingProgram { program: "SPECS" })?;
        let mut specs: Array<_, SyscallSpec> =
            Array::try_from(map).map_err(|source| CaptureError::Map {
                map: "SPECS",
                source: Box::new(source),
            })?;
        for captured in &table {
            specs
                .set(captured.nr as u32, captured.spec, 0)
                .map_err(|source| CaptureError::Map {
                    map: "SPECS",
                    source: Box::new(source),
                })?;
        }
    }
    let mut attached = Vec::new();
    let mut missing = Vec::new();
    let mut links = Vec::new();
    for (program, phase) in [("sys_enter", "enter"), ("sys_exit", "exit")] {
        let prog: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or(CaptureError::MissingProgram { program })?
            .try_into()
            .map_err(|e| CaptureError::Attach {
                event: "syscalls",
                reasons: format!("{program}: {e}"),
            })?;
        prog.load().map_err(|e| CaptureError::Attach {
            event: "syscalls",
            reasons: format!("{program}: load: {e}"),
        })?;
        for captured in &table {
            let name = format!("sys_{phase}_{}", captured.name);
            match prog.attach("syscalls", &name) {
                Ok(id) => {
                    if phase == "enter" {
                        attached.push(captured.name);
                    }
                    if let Ok(link) = prog.take_link(id) {
                        links.push(link);
                    }
                }
                Err(e) => missing.push(format!("{name}: {e}")),
            }
        }
    }
    if !missing.is_empty() {
        tracing::info!(missing = %missing.join("; "), "syscall tracepoints this kernel lacks");
    }
    let choice = HookChoice {
        event: "syscalls",
        hook: format!(
            "tracepoint/syscalls/sys_{{enter,exit}}_* ({} syscalls)",
            attached.len()
        ),
    };
    Ok((choice, links))
}

fn map_error(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map {
        map,
        source: Box::new(source),
    }
}

/// Loads a tracepoint program and attaches it to every `(category, name)`; returns the links
/// and the tracepoints that could not be attached, with why.
fn attach_each(
    ebpf: &mut Ebpf,
    program: &'static str,
    event: &'static str,
    tracepoints: &[(&str, String)],
) -> Result<(Vec<TracePointLink>, Vec<String>), CaptureError> {
    let prog: &mut TracePoint = find(ebpf, program).map_err(|reasons| CaptureError::Attach {
        event,
        reasons: format!("{program}: {reasons}"),
    })?;
    prog.load().map_err(|e| CaptureError::Attach {
        event,
        reasons: format!("{program}: load: {e}"),
    })?;
    let mut links = Vec::new();
    let mut missing = Vec::new();
    for (category, name) in tracepoints {
        match prog.attach(category, name) {
            Ok(id) => {
                if let Ok(link) = prog.take_link(id) {
                    links.push(link);
                }
            }
            Err(e) => missing.push(format!("{category}/{name}: {e}")),
        }
    }
    Ok((links, missing))
}

/// DNS over UDP: its own enter/exit programs on the datagram syscalls (see sensor-ebpf's dns.rs).
fn attach_dns(ebpf: &mut Ebpf) -> Result<(HookChoice, Vec<TracePointLink>), CaptureError> {
    {
        let map = ebpf
            .map_mut("DNS_SYSCALLS")
            .ok_or(CaptureError::MissingProgram {
                program: "DNS_SYSCALLS",
            })?;
        let mut ops: AyaHashMap<_, u32, u32> =
            AyaHashMap::try_from(map).map_err(map_error("DNS_SYSCALLS"))?;
        for (_, nr, op) in syscalls::dns_syscalls() {
            ops.insert(nr as u32, op, 0)
                .map_err(map_error("DNS_SYSCALLS"))?;
        }
    }
    let mut links = Vec::new();
    let mut missing = Vec::new();
    for (program, phase) in [("dns_enter", "enter"), ("dns_exit", "exit")] {
        let tracepoints: Vec<(&str, String)> = syscalls::dns_syscalls()
            .iter()
            .map(|(name, _, _)| ("syscalls", format!("sys_{phase}_{name}")))
            .collect();
        let (l, m) = attach_each(ebpf, program, "dns", &tracepoints)?;
        links.extend(l);
        missing.extend(m);
    }
    if !missing.is_empty() {
        tracing::info!(missing = %missing.join("; "), "DNS tracepoints this kernel lacks");
    }
    Ok((
        HookChoice {
            event: "dns",
            hook: "tracepoint/syscalls/sys_{enter,exit}_{sendto,sendmsg,sendmmsg,recvfrom,recvmsg,recvmmsg} (UDP, port 53)".into(),
        },
        links,
    ))
}

/// io_uring requests: submission, file lookup and completion tracepoints (see uring.rs).
fn attach_uring(ebpf: &mut Ebpf) -> Result<(HookChoice, Vec<TracePointLink>), CaptureError> {
    {
        let map = ebpf
            .map_mut("URING_OPS")
            .ok_or(CaptureError::MissingProgram {
                program: "URING_OPS",
            })?;
        let mut ops: Array<_, u32> = Array::try_from(map).map_err(map_error("URING_OPS"))?;
        for (op, _) in syscalls::URING_OPS {
            ops.set(u32::from(*op), 1, 0)
                .map_err(map_error("URING_OPS"))?;
        }
    }
    let mut links = Vec::new();
    for (program, tracepoint) in [
        ("uring_submit", "io_uring_submit_req"),
        ("uring_file", "io_uring_file_get"),
        ("uring_complete", "io_uring_complete"),
    ] {
        let (l, missing) = attach_each(
            ebpf,
            program,
            "io_uring",
            &[("io_uring", tracepoint.to_owned())],
        )?;
        if let Some(reason) = missing.into_iter().next() {
            return Err(CaptureError::Attach {
                event: "io_uring",
                reasons: reason,
            });
        }
        links.extend(l);
    }
    Ok((
        HookChoice {
            event: "io_uring",
            hook: "tracepoint/io_uring/io_uring_{submit_req,file_get,complete}".into(),
        },
        links,
    ))
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
    choose(event, hook, || {
        let prog: &mut TracePoint = find(ebpf, program)?;
        prog.load().map_err(|e| format!("load: {e}"))?;
        prog.attach(category, name)
            .map_err(|e| format!("attach: {e}"))?;
        Ok(())
    })
}

fn attach_raw(
    ebpf: &mut Ebpf,
    program: &'static str,
    name: &str,
    event: &'static str,
) -> Result<HookChoice, CaptureError> {
    choose(event, format!("raw_tracepoint/{name}"), || {
        let prog: &mut RawTracePoint = find(ebpf, program)?;
        prog.load().map_err(|e| format!("load: {e}"))?;
        prog.attach(name).map_err(|e| format!("attach: {e}"))?;
        Ok(())
    })
}

/// The program of that name, as the program type the caller expects.
fn find<'a, P>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
    <&'a mut P as TryFrom<&'a mut aya::programs::Program>>::Error: std::fmt::Display,
{
    ebpf.program_mut(program)
        .ok_or_else(|| format!("program {program} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))
}

/// Runs one attach attempt and names its hook in the choice or in the error.
fn choose(
    event: &'static str,
    hook: String,
    attempt: impl FnOnce() -> Result<(), String>,
) -> Result<HookChoice, CaptureError> {
    match attempt() {
        Ok(()) => Ok(HookChoice { event, hook }),
        Err(reason) => Err(CaptureError::Attach {
            event,
            reasons: format!("{hook}: {reason}"),
        }),
    }
}

/// The kernel-function hooks for file opens, best first: (program, hook name).
const FILE_OPEN_HOOKS: [(&str, &str); 2] = [
    ("file_open_fentry", "fentry/security_file_open"),
    ("file_open_lsm", "lsm/file_open"),
];

/// Tries fentry `security_file_open`, then LSM `file_open`; the first that loads and attaches
/// carries file opens. Each refusal is kept with its errno.
fn attach_file_open(ebpf: &mut Ebpf, refused: &mut Vec<HookRefusal>) -> Option<HookChoice> {
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            for (_, hook) in FILE_OPEN_HOOKS {
                refused.push(HookRefusal {
                    event: "file open",
                    hook: hook.into(),
                    reason: format!("not tried: no kernel BTF: {}", refusal(&e)),
                });
            }
            return None;
        }
    };
    for (program, hook) in FILE_OPEN_HOOKS {
        let attempt = (|| -> Result<(), String> {
            let found = ebpf
                .program_mut(program)
                .ok_or_else(|| format!("program {program} missing"))?;
            if program == "file_open_fentry" {
                let prog: &mut FEntry = found.try_into().map_err(|e| refusal(&e))?;
                prog.load("security_file_open", &btf)
                    .map_err(|e| format!("load: {}", refusal(&e)))?;
                prog.attach()
                    .map_err(|e| format!("attach: {}", refusal(&e)))?;
            } else {
                let prog: &mut Lsm = found.try_into().map_err(|e| refusal(&e))?;
                prog.load("file_open", &btf)
                    .map_err(|e| format!("load: {}", refusal(&e)))?;
                prog.attach()
                    .map_err(|e| format!("attach: {}", refusal(&e)))?;
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => {
                return Some(HookChoice {
                    event: "file open",
                    hook: hook.into(),
                })
            }
            Err(reason) => {
                tracing::info!(hook, %reason, "file open hook refused, trying the next");
                refused.push(HookRefusal {
                    event: "file open",
                    hook: hook.into(),
                    reason,
                });
            }
        }
    }
    None
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
