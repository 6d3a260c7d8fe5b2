//! The Vigil host agent: kernel capture → decode → enrich → detect → ship.
//!
//! [`run`] wires the stages: one task owns the ring buffer, the process table and the rules
//! (so the table needs no lock), and hands events and alerts to the shipping task through a
//! bounded channel whose drops are counted.

pub mod alerting;
pub mod capture;
pub mod central_rules;
pub mod config;
pub mod decode;
pub mod describe;
pub mod dns;
pub mod doctor;
pub mod enrich;
pub mod enroll;
pub mod hashing;
pub mod merge;
pub mod metrics;
pub mod offsets;
pub mod pidns;
pub mod probe;
pub mod procfs;
pub mod pushdown;
pub mod redact;
pub mod respond;
pub mod rules_watch;
pub mod ship;
pub mod spool;
pub mod status;
pub mod syscalls;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use vigil_detect::RuleSet;
use vigil_proto::{Alert, Event, EventAction, SignedRuleSet};

use crate::capture::{Capture, CaptureOptions, KernelCounters};
use crate::config::{Output, SensorConfig};
use crate::enrich::Enricher;
use crate::metrics::SensorMetrics;
use crate::ship::{CollectorTarget, Outgoing, ShipStats};

/// Records taken from the ring buffer per wakeup before the loop checks its other duties.
const DRAIN_BUDGET: usize = 4096;
/// Events between the pipeline and the shipper.
const SHIP_QUEUE: usize = 65_536;
/// Alerts between the pipeline and the shipper (their own queue, read first).
const ALERT_QUEUE: usize = 4096;
/// How long a stopping sensor keeps trying to deliver what it holds.
const FINAL_FLUSH: Duration = Duration::from_secs(3);

/// Loads the rules, compiling them before anything touches the kernel so a bad rule file fails
/// start-up cleanly.
pub fn load_rules(config: &SensorConfig) -> anyhow::Result<RuleSet> {
    load_rules_with(config, None)
}

/// The local rules plus, when there is one, the set pushed from the collector.
fn load_rules_with(
    config: &SensorConfig,
    central: Option<&SignedRuleSet>,
) -> anyhow::Result<RuleSet> {
    let sources = central.map(central_rules::sources).unwrap_or_default();
    let rules = RuleSet::load_with_sources(&config.rules, &sources).context("loading rules")?;
    for skipped in rules.unsupported() {
        tracing::debug!(?skipped, "rule not loaded: unsupported log source");
    }
    Ok(rules)
}

/// Runs the sensor until `shutdown` completes, then detaches and flushes. SIGHUP reloads the
/// rules from the configured paths; a set that fails to load is logged and the running one stays.
pub async fn run(
    config: SensorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut rules = load_rules(&config)?;
    // The collector's set in force, if any; kept to recompile with the local rules on SIGHUP.
    let mut central: Option<Arc<SignedRuleSet>> = None;
    let rules_state = watch::Sender::new(central_rules::RulesState::default());
    let rules_key = config.collector.as_ref().and_then(|c| c.rules_public_key);
    let rules_cache = central_rules::cache_path(&config.spool.dir);
    if let Some(cached) = rules_key
        .as_ref()
        .and_then(|key| central_rules::load_cached(&rules_cache, key))
    {
        // Run what the collector last gave us until it can be asked again.
        match load_rules_with(&config, Some(&cached)) {
            Ok(fresh) => {
                let version = cached.version;
                tracing::info!(
                    version,
                    "running the collector's rule set version {version} (cached)"
                );
                rules = fresh;
                central = Some(Arc::new(cached));
                rules_state.send_modify(|s| {
                    s.running = Some(version);
                    s.seen = Some(version);
                });
            }
            Err(e) => tracing::warn!("the cached central rule set does not load: {e:#}"),
        }
    }
    let redactor = redact::Redactor::new(&config.redact).context("redaction patterns")?;
    let mut metrics = SensorMetrics::new()?;
    metrics.rules_loaded(rules.len());
    let metrics_endpoint = match &config.metrics {
        Some(m) => {
            let endpoint =
                vigil_ops::metrics_endpoint::MetricsEndpoint::bind(m.listen, metrics.registry())
                    .await?;
            tracing::info!(listen = ?endpoint.local_addr(), "serving metrics at /metrics");
            Some(endpoint.spawn())
        }
        None => None,
    };
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler: rule reload disabled"))
        .ok();
    let mut rule_watcher = match rules_watch::RuleWatcher::start(&config.rules) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the rule paths: reload on SIGHUP only");
            None
        }
    };
    let plan = pushdown::plan(&config, &rules.kernel_filter());
    for note in &plan.notes {
        tracing::info!("kernel filter: {note}");
    }
    let pushdown::CapturePlan {
        actions,
        file_prefixes,
        notes: _,
    } = plan;
    let options = CaptureOptions {
        exec_hook: config.exec_hook,
        file_prefixes: file_prefixes.clone(),
        actions: actions.clone(),
        syscalls: config.syscalls,
        critical_ring_bytes: config.critical_ring_bytes,
        bulk_ring_bytes: config.bulk_ring_bytes,
    };
    let mut capture = Capture::start(&options).context("starting kernel capture")?;
    for refused in capture.refused() {
        tracing::info!(event = refused.event, hook = %refused.hook, reason = %refused.reason, "hook refused, fell back");
        metrics.hook(refused.event, &refused.hook, false);
    }
    for hook in capture.hooks() {
        tracing::info!(event = hook.event, hook = %hook.hook, "attached");
        metrics.hook(hook.event, &hook.hook, true);
    }
    // Outside the host's PID namespace a record's pid names another process (or none) in our
    // /proc: nothing is looked up by it, and the operator is told once, here.
    let namespace = capture.pid_namespace();
    metrics.pid_namespace(namespace.host);
    if namespace.host {
        tracing::info!(pid = namespace.own_tgid(), "in the host PID namespace");
    } else {
        tracing::warn!("{}", namespace.describe());
    }
    let ctx = procfs::host_context();
    let host_name = ctx.host.name.clone();
    let view = procfs::ProcFs::new(namespace.host);
    // Seeded once the programs run, so that a process started meanwhile is in one or the other.
    let seed = view.scan(&ctx);
    let responder = respond::Responder::new(ctx.clone(), namespace.host);
    let mut enricher = Enricher::new(ctx, view).with_file_prefixes(file_prefixes);
    let seeded = seed.len();
    for info in seed {
        enricher.seed(info);
    }
    apply_kill_paths(&mut capture, &rules)?;
    // Loading parsed the kernel's BTF (tens of MB, freed by now).
    release_free_memory();
    tracing::info!(
        rules = rules.len(),
        skipped = rules.unsupported().len(),
        seeded_processes = seeded,
        "sensor running"
    );

    let (status_tx, status_rx) = tokio::sync::watch::channel(status::initial(
        &host_name,
        rules.len(),
        status::rules_version(&config.rules),
        capture.hooks(),
    ));
    let stats = Arc::new(ShipStats::default());
    let (ship_tx, shipper) = match config.collector.clone() {
        Some(c) => {
            let target = CollectorTarget {
                address: c.address,
                failover: c.failover,
                server_name: c.server_name,
                tls: vigil_proto::transport::TlsFiles {
                    ca: c.ca,
                    cert: c.cert,
                    key: c.key,
                },
                heartbeat: Some(ship::Heartbeat {
                    every: Duration::from_secs(u64::from(c.heartbeat_secs.max(1))),
                    status: status_rx,
                }),
            };
            // Opened before anything runs, so a bad spool directory fails start-up clearly.
            let spool = spool::Spool::open(&config.spool)
                .with_context(|| format!("opening the spool {}", config.spool.dir.display()))?;
            tracing::info!(collector = %target.address, spool = %config.spool.dir.display(), "shipping to collector");
            // Bounded by events through `ShipStats::queued_events`; chunks hold one drain each.
            let (tx, rx) = mpsc::channel(SHIP_QUEUE);
            let (alert_tx, alert_rx) = mpsc::channel(ALERT_QUEUE);
            let stats = stats.clone();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(async move {
                ship::run_with_alerts(target, spool, alert_rx, rx, stats, async {
                    let _ = stop_rx.await;
                })
                .await
            });
            (Some((tx, alert_tx)), Some((handle, stop_tx)))
        }
        None => (None, None),
    };

    if let Some(set) = &central {
        metrics.central_rules_version(set.version);
    }
    let (central_tx, mut central_rx) = mpsc::channel::<Arc<SignedRuleSet>>(1);
    let follower = match config.collector.as_ref().and_then(|c| {
        c.rules_public_key.map(|key| central_rules::RulesSource {
            address: c.address,
            server_name: c.server_name.clone(),
            tls: vigil_proto::transport::TlsFiles {
                ca: c.ca.clone(),
                cert: c.cert.clone(),
                key: c.key.clone(),
            },
            key,
        })
    }) {
        Some(source) => {
            tracing::info!(collector = %source.address, "following the collector's rule set");
            let refusals = metrics.central_refusals();
            Some(tokio::spawn(central_rules::follow(
                source,
                rules_state.subscribe(),
                central_tx,
                move |refusal| {
                    let reason = match refusal {
                        central_rules::Refusal::BadSignature { .. } => "bad_signature",
                        central_rules::Refusal::NotNewer { .. } => "not_newer",
                    };
                    refusals.with_label_values(&[reason]).inc();
                },
            )))
        }
        None => None,
    };
    let mut reported = Reported::default();
    let mut last_counters = KernelCounters::default();
    // Losses the last tick reported: alerts until the next tick carry them.
    let mut previous_losses: Vec<(u32, u64)> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    let mut hasher = hashing::Hasher::start();
    // Exec events waiting for their executable's hash, by sequence number, with their age.
    let mut awaiting_hash: HashMap<u64, (Instant, Event)> = HashMap::new();
    let mut alerter = alerting::Alerter::new();
    let mut out = Outputs {
        stdout: (config.output == Output::Stdout).then(|| std::io::stdout().lock()),
        ship: ship_tx,
        stats: &stats,
        pending: Vec::new(),
    };
    loop {
        // What a `continue` below left (a hashed exec) goes before the loop waits again.
        out.flush();
        let mut events: Vec<Event> = Vec::new();
        tokio::select! {
            () = &mut shutdown => break,
            trigger = async {
                tokio::select! {
                    () = next_hangup(&mut hangup) => "SIGHUP",
                    () = next_rule_change(&mut rule_watcher) => "rule files changed",
                }
            } => {
                if let Some(summaries) = reload_rules(&config, central.as_deref(), &mut rules, &mut alerter, &metrics, trigger) {
                    for alert in summaries {
                        emit_alert(alert, &redactor, &metrics, &mut out);
                    }
                    adopt_rules(&config, &rules, actions.as_ref(), &mut capture, &mut enricher, &status_tx);
                }
                continue;
            }
            Some(set) = central_rx.recv() => {
                if let Some(summaries) = apply_central(&config, &mut rules, &mut alerter, &mut central, set, &metrics, &rules_state) {
                    for alert in summaries {
                        emit_alert(alert, &redactor, &metrics, &mut out);
                    }
                    adopt_rules(&config, &rules, actions.as_ref(), &mut capture, &mut enricher, &status_tx);
                    if let Some(set) = central.as_deref() {
                        if let Err(e) = central_rules::save_cached(&rules_cache, set) {
                            tracing::warn!(path = %rules_cache.display(), "cannot cache the central rule set: {e}");
                        }
                    }
                }
                continue;
            }
            _ = tick.tick() => {
                release_free_memory();
                for alert in alerter.expire(&rules, vigil_proto::Timestamp::now()) {
                    emit_alert(alert, &redactor, &metrics, &mut out);
                }
                let losses = report_counters(&capture, &mut last_counters, &stats, &mut reported, &metrics);
                previous_losses.clone_from(&losses);
                status_tx.send_modify(|s| status::update_counters(s, &last_counters));
                events.extend(losses.into_iter().map(|(kind, lost)| {
                    enricher.loss_event(decode::kind_name(kind), lost, vigil_proto::Timestamp::now())
                }));
                // Hashing must never hold an event back for long: send it without.
                let stale: Vec<u64> = awaiting_hash
                    .iter()
                    .filter(|(_, (since, _))| since.elapsed() > HASH_WAIT)
                    .map(|(seq, _)| *seq)
                    .collect();
                for seq in stale {
                    if let Some((_, event)) = awaiting_hash.remove(&seq) {
                        out.event(event);
                    }
                }
            }
            Some((seq, digest)) = hasher.answered() => {
                if let Some((_, mut event)) = awaiting_hash.remove(&seq) {
                    event.process.hash = digest.map(|sha256| vigil_proto::Hash { sha256 });
                    out.event(event);
                }
                continue;
            }
            drained = capture.drain(DRAIN_BUDGET, |bytes| match decode::decode(bytes) {
                Ok(raw) => events.extend(enricher.enrich(raw)),
                Err(e) => tracing::warn!(error = %e, "undecodable kernel record"),
            }) => { drained.context("reading the ring buffer")?; }
        }
        // Read the kernel's loss counters at most once per batch, and only if it alerts.
        let mut loss: Option<Option<vigil_proto::LossContext>> = None;
        for mut event in events {
            metrics.event(event.event.action);
            // Rules see the command line as it was; nothing that leaves the sensor does.
            let alerting::Outcome {
                mut alerts,
                kill_alerts,
                kill,
            } = alerter.on_event(&rules, &event, event.timestamp);
            if kill {
                let response = responder.kill(&event);
                if response.error.is_some() {
                    tracing::warn!(pid = event.process.pid, ?response, "kill failed");
                }
                for i in kill_alerts {
                    if let Some(alert) = alerts.get_mut(i) {
                        alert.response = Some(response.clone());
                    }
                }
            }
            redactor.redact_event(&mut event);
            if !alerts.is_empty() {
                let loss = loss.get_or_insert_with(|| {
                    loss_context(&capture, &last_counters, &previous_losses)
                });
                for alert in &mut alerts {
                    alert.loss.clone_from(loss);
                }
            }
            for alert in alerts {
                emit_alert(alert, &redactor, &metrics, &mut out);
            }
            // The kernel's exec record, not the execveat syscall record (which names its syscall).
            // Outside the host's PID namespace neither the pid's /proc link nor the path (in
            // our mount namespace, perhaps not the process's) is known to be its image.
            if namespace.host
                && event.event.action == EventAction::Exec
                && !event.details.contains_key("syscall")
            {
                // The running image first (a file replaced since exec is not it); the path
                // when the process is already gone.
                let candidates = [
                    PathBuf::from(format!("/proc/{}/exe", event.process.pid)),
                    PathBuf::from(&event.process.executable),
                ];
                match hasher.lookup(event.event.sequence, &candidates) {
                    hashing::Lookup::Hit(sha256) => {
                        event.process.hash = Some(vigil_proto::Hash { sha256 });
                    }
                    hashing::Lookup::Pending => {
                        awaiting_hash.insert(event.event.sequence, (Instant::now(), event));
                        continue;
                    }
                    hashing::Lookup::Unavailable => {}
                }
            }
            out.event(event);
        }
        out.flush();
    }
    for (_, (_, event)) in awaiting_hash.drain() {
        out.event(event);
    }
    out.flush();
    if let Some(follower) = follower {
        follower.abort();
    }
    let ship_tx = out.ship.take();
    tracing::info!("stopping: detaching kernel programs");
    // Detaching takes seconds (an RCU grace period per tracepoint): it runs while the
    // shipper delivers what is queued, so that both fit in the 5 s a service stop allows.
    let detach = tokio::task::spawn_blocking(move || drop(capture));
    drop(ship_tx);
    if let Some((handle, stop)) = shipper {
        // Give delivery a bounded time to empty the queue, then stop it.
        if tokio::time::timeout(
            FINAL_FLUSH,
            &mut Box::pin(async {
                while !handle.is_finished() {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
            }),
        )
        .await
        .is_err()
        {
            let _ = stop.send(());
        }
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "collector transport failed"),
            Err(e) => tracing::warn!(error = %e, "shipping task failed"),
        }
    }
    if let Some(endpoint) = metrics_endpoint {
        endpoint.stop().await;
    }
    if let Err(e) = detach.await {
        tracing::warn!(error = %e, "detaching the kernel programs failed");
    }
    Ok(())
}

/// Gives the C allocator's free memory back to the system. glibc keeps what it has freed
/// (start-up's BTF parsing, a burst's batches) in its heaps, where it counted as the sensor's
/// resident memory for good; trimming once a second costs well under a millisecond.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How long an exec event may wait for its executable's hash before it goes without.
const HASH_WAIT: Duration = Duration::from_millis(500);

/// Where finished events and alerts go: local JSON lines and the collector.
struct Outputs<'a> {
    stdout: Option<std::io::StdoutLock<'static>>,
    /// The shipper's event and alert queues.
    ship: Option<(mpsc::Sender<Outgoing>, mpsc::Sender<Box<Alert>>)>,
    stats: &'a ShipStats,
    /// Events for the shipper, handed over together by [`Outputs::flush`].
    pending: Vec<Event>,
}

impl Outputs<'_> {
    fn alert(&mut self, alert: Alert) {
        if let Some(out) = self.stdout.as_mut() {
            emit_json(out, &alert);
        }
        if let Some((_, tx)) = &self.ship {
            if tx.try_send(Box::new(alert)).is_err() {
                self.stats
                    .queue_alerts_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn event(&mut self, event: Event) {
        if let Some(out) = self.stdout.as_mut() {
            emit_json(out, &event);
        }
        if self.ship.is_some() {
            self.pending.push(event);
        }
    }

    /// Hands the events gathered since the last call to the shipper at once; what does not
    /// fit in its queue (counted in events) is counted as dropped.
    fn flush(&mut self) {
        let Some((tx, _)) = &self.ship else { return };
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len() as u64;
        let queued = self.stats.queued_events.load(Ordering::Relaxed);
        let fits = queued + n <= SHIP_QUEUE as u64;
        if fits {
            self.stats.queued_events.fetch_add(n, Ordering::Relaxed);
            let chunk = std::mem::take(&mut self.pending);
            if tx.try_send(Outgoing::Events(chunk)).is_ok() {
                return;
            }
            self.stats.queued_events.fetch_sub(n, Ordering::Relaxed);
        }
        self.pending.clear();
        self.stats
            .queue_events_dropped
            .fetch_add(n, Ordering::Relaxed);
    }
}

/// The kernel records lost in the window around now: since the last tick, plus what that
/// tick reported (so an alert just after a loss report is marked too). `None` without loss.
fn loss_context(
    capture: &Capture,
    at_last_tick: &KernelCounters,
    previous: &[(u32, u64)],
) -> Option<vigil_proto::LossContext> {
    let now = capture.counters();
    let mut lost = std::collections::BTreeMap::new();
    for (kind, (&total, &before)) in now.lost.iter().zip(at_last_tick.lost.iter()).enumerate() {
        if total > before {
            *lost
                .entry(decode::kind_name(kind as u32).to_owned())
                .or_insert(0) += total - before;
        }
    }
    for &(kind, count) in previous {
        *lost.entry(decode::kind_name(kind).to_owned()).or_insert(0) += count;
    }
    (!lost.is_empty()).then_some(vigil_proto::LossContext { lost })
}

/// Tells the kernel which executables the rules kill at exec.
fn apply_kill_paths(capture: &mut Capture, rules: &RuleSet) -> anyhow::Result<()> {
    let paths = respond::kill_paths(rules);
    for path in paths.iter().filter(|p| !p.fits()) {
        tracing::warn!(path = %path.path, "kill path too long for the kernel: killed from userspace after the match");
    }
    capture
        .set_kill_paths(&paths)
        .context("loading the kill paths into the kernel")?;
    if !paths.is_empty() {
        tracing::info!(paths = paths.len(), "kill at exec enforced in the kernel");
    }
    Ok(())
}

/// Counts, redacts and sends one alert.
fn emit_alert(
    mut alert: Alert,
    redactor: &redact::Redactor,
    metrics: &SensorMetrics,
    out: &mut Outputs<'_>,
) {
    metrics.rule_hit(&alert.rule.id);
    redactor.redact_event(&mut alert.event);
    out.alert(alert);
}

/// Completes when the rule files changed and settled; never, without a watcher.
async fn next_rule_change(watcher: &mut Option<rules_watch::RuleWatcher>) {
    match watcher {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// Completes on the next SIGHUP; never, without a handler.
async fn next_hangup(hangup: &mut Option<tokio::signal::unix::Signal>) {
    let Some(signal) = hangup else {
        return std::future::pending().await;
    };
    if signal.recv().await.is_none() {
        // The handler is gone; stop polling it rather than spin.
        *hangup = None;
        std::future::pending::<()>().await;
    }
}

/// Compiles the local rules with a verified set from the collector and swaps them in,
/// returning the summaries of the dedup windows the old set had open; or keeps the running
/// rules (`None`). Either way records what became of the set for the follower.
fn apply_central(
    config: &SensorConfig,
    rules: &mut RuleSet,
    alerter: &mut alerting::Alerter,
    central: &mut Option<Arc<SignedRuleSet>>,
    set: Arc<SignedRuleSet>,
    metrics: &SensorMetrics,
    state: &watch::Sender<central_rules::RulesState>,
) -> Option<Vec<Alert>> {
    let version = set.version;
    match load_rules_with(config, Some(&set)) {
        Ok(fresh) => {
            tracing::info!(
                version,
                rules = fresh.len(),
                previous = rules.len(),
                "running the collector's rule set version {version}"
            );
            let summaries = alerter.replace_rules(rules);
            *rules = fresh;
            *central = Some(set);
            metrics.rules_loaded(rules.len());
            metrics.central_rules_version(version);
            state.send_modify(|s| {
                s.running = Some(version);
                s.seen = Some(version);
            });
            Some(summaries)
        }
        Err(e) => {
            tracing::error!(
                version,
                "the collector's rule set version {version} does not load here; keeping the {} running rules: {e:#}",
                rules.len()
            );
            metrics
                .central_refusals()
                .with_label_values(&["invalid"])
                .inc();
            state.send_modify(|s| s.seen = Some(version));
            None
        }
    }
}

/// Brings the kernel side in line with a newly swapped-in rule set: kill paths, the path
/// prefix filter, and what the sensor reports about its rules.
fn adopt_rules<V: enrich::SystemView>(
    config: &SensorConfig,
    rules: &RuleSet,
    attached: Option<&std::collections::HashSet<EventAction>>,
    capture: &mut Capture,
    enricher: &mut Enricher<V>,
    status_tx: &watch::Sender<vigil_proto::SensorStatus>,
) {
    if let Err(e) = apply_kill_paths(capture, rules) {
        tracing::error!("{e:#}: kills of the new rules run from userspace");
    }
    let plan = pushdown::plan(config, &rules.kernel_filter());
    if plan.actions.as_ref() != attached {
        tracing::warn!("the reloaded rules read other event kinds: restart the sensor to attach or detach their hooks");
    }
    for note in &plan.notes {
        tracing::info!("kernel filter: {note}");
    }
    match capture.set_file_prefixes(plan.file_prefixes.as_deref()) {
        Ok(()) => tracing::info!(prefixes = ?plan.file_prefixes, "kernel prefix filter updated"),
        Err(e) => tracing::error!(error = %e, "updating the kernel prefix filter failed"),
    }
    enricher.set_file_prefixes(plan.file_prefixes);
    status_tx.send_modify(|s| {
        s.rules = u32::try_from(rules.len()).unwrap_or(u32::MAX);
        s.rules_version = status::rules_version(&config.rules);
    });
}

/// Swaps in the rules as the configured paths hold them now (with the collector's set in
/// force), or keeps the running set. On a swap, returns the summaries of the dedup windows the
/// old set had open; `None` when the running set stays.
fn reload_rules(
    config: &SensorConfig,
    central: Option<&SignedRuleSet>,
    rules: &mut RuleSet,
    alerter: &mut alerting::Alerter,
    metrics: &SensorMetrics,
    trigger: &str,
) -> Option<Vec<Alert>> {
    match load_rules_with(config, central) {
        Ok(fresh) => {
            tracing::info!(
                rules = fresh.len(),
                previous = rules.len(),
                "{trigger}: rules reloaded"
            );
            let summaries = alerter.replace_rules(rules);
            *rules = fresh;
            metrics.rules_loaded(rules.len());
            metrics.rule_reload(true);
            Some(summaries)
        }
        Err(e) => {
            tracing::error!(
                "{trigger}: rule reload failed, keeping the {} running rules: {e:#}",
                rules.len()
            );
            metrics.rule_reload(false);
            None
        }
    }
}

fn emit_json<T: serde::Serialize>(out: &mut impl Write, value: &T) {
    // A closed stdout (the reader went away) must not stop the sensor.
    if serde_json::to_writer(&mut *out, value).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

/// Logs what changed since the last report and returns the new losses per record kind.
fn report_counters(
    capture: &Capture,
    last: &mut KernelCounters,
    stats: &ShipStats,
    reported: &mut Reported,
    metrics: &SensorMetrics,
) -> Vec<(u32, u64)> {
    let now = capture.counters();
    let mut losses = Vec::new();
    for kind in 0..now.sent.len() {
        if (now.sent[kind], now.lost[kind], now.received[kind])
            != (last.sent[kind], last.lost[kind], last.received[kind])
        {
            tracing::debug!(
                kind = decode::kind_name(kind as u32),
                sent = now.sent[kind],
                lost = now.lost[kind],
                received = now.received[kind],
                "kernel record counters"
            );
        }
    }
    for (kind, (&total, &before)) in now.lost.iter().zip(last.lost.iter()).enumerate() {
        if total > before {
            metrics.dropped("kernel", "ringbuf_full", total - before);
            tracing::warn!(
                kind = decode::kind_name(kind as u32),
                lost = total - before,
                total,
                "kernel records lost: ring buffer full"
            );
            losses.push((kind as u32, total - before));
        }
    }
    for (kind, (&total, &before)) in now.faults.iter().zip(last.faults.iter()).enumerate() {
        if total > before {
            tracing::debug!(kind, faults = total - before, "kernel reads failed");
        }
    }
    *last = now;
    metrics.dropped(
        "pipeline",
        "queue_full",
        stats.queue_events_dropped.load(Ordering::Relaxed)
            + stats.queue_alerts_dropped.load(Ordering::Relaxed),
    );
    metrics.batches_acked(stats.batches_acked.load(Ordering::Relaxed));
    let late = capture.late();
    metrics.late_records("critical", late.critical);
    metrics.late_records("bulk", late.bulk);
    let now = Reported {
        events_dropped: stats.events_dropped.load(Ordering::Relaxed),
        alerts_dropped: stats.alerts_dropped.load(Ordering::Relaxed),
        corrupt_records: stats.corrupt_records.load(Ordering::Relaxed),
    };
    if now != *reported {
        tracing::warn!(
            events_dropped = now.events_dropped,
            alerts_dropped = now.alerts_dropped,
            corrupt_spool_records = now.corrupt_records,
            "loss on the way to the collector (totals; the collector receives them too)"
        );
        *reported = now;
    }
    let spool_bytes = stats.spool_bytes.load(Ordering::Relaxed);
    if spool_bytes > 0 {
        tracing::debug!(
            spool_bytes,
            spool_batches = stats.spool_batches.load(Ordering::Relaxed),
            "spool"
        );
    }
    losses
}

/// Loss totals last logged, so that only changes are.
#[derive(Debug, Default, PartialEq)]
struct Reported {
    events_dropped: u64,
    alerts_dropped: u64,
    corrupt_records: u64,
}
