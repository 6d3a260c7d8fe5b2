//! The Vigil host agent: kernel capture → decode → enrich → detect → ship.
//!
//! [`run`] wires the stages: one task owns the ring buffer, the process table and the rules
//! (so the table needs no lock), and hands events and alerts to the shipping task through a
//! bounded channel whose drops are counted.

pub mod capture;
pub mod config;
pub mod decode;
pub mod describe;
pub mod dns;
pub mod doctor;
pub mod enrich;
pub mod enroll;
pub mod hashing;
pub mod metrics;
pub mod offsets;
pub mod probe;
pub mod procfs;
pub mod pushdown;
pub mod redact;
pub mod ship;
pub mod spool;
pub mod syscalls;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use vigil_detect::RuleSet;
use vigil_proto::{Alert, Event, EventAction};

use crate::capture::{Capture, CaptureOptions, KernelCounters};
use crate::config::{Output, SensorConfig};
use crate::enrich::Enricher;
use crate::metrics::SensorMetrics;
use crate::ship::{CollectorTarget, Outgoing, ShipStats};

/// Records taken from the ring buffer per wakeup before the loop checks its other duties.
const DRAIN_BUDGET: usize = 4096;
/// Events and alerts between the pipeline and the shipper.
const SHIP_QUEUE: usize = 65_536;
/// How long a stopping sensor keeps trying to deliver what it holds.
const FINAL_FLUSH: Duration = Duration::from_secs(3);

/// Loads the rules, compiling them before anything touches the kernel so a bad rule file fails
/// start-up cleanly.
pub fn load_rules(config: &SensorConfig) -> anyhow::Result<RuleSet> {
    let rules = RuleSet::load(&config.rules).context("loading rules")?;
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
    let ctx = procfs::host_context();
    let view = procfs::ProcFs::new();
    let seed = view.scan(&ctx);
    let plan = pushdown::plan(&config, &rules.kernel_filter());
    for note in &plan.notes {
        tracing::info!("kernel filter: {note}");
    }
    let pushdown::CapturePlan {
        actions,
        file_prefixes,
        notes: _,
    } = plan;
    let mut enricher = Enricher::new(ctx, view).with_file_prefixes(file_prefixes.clone());
    let seeded = seed.len();
    for info in seed {
        enricher.seed(info);
    }
    let options = CaptureOptions {
        exec_hook: config.exec_hook,
        file_prefixes,
        actions: actions.clone(),
        syscalls: config.syscalls,
        critical_ring_bytes: config.critical_ring_bytes,
        bulk_ring_bytes: config.bulk_ring_bytes,
    };
    let mut capture =
        Capture::start(std::process::id(), &options).context("starting kernel capture")?;
    for refused in capture.refused() {
        tracing::info!(event = refused.event, hook = %refused.hook, reason = %refused.reason, "hook refused, fell back");
        metrics.hook(refused.event, &refused.hook, false);
    }
    for hook in capture.hooks() {
        tracing::info!(event = hook.event, hook = %hook.hook, "attached");
        metrics.hook(hook.event, &hook.hook, true);
    }
    tracing::info!(
        rules = rules.len(),
        skipped = rules.unsupported().len(),
        seeded_processes = seeded,
        "sensor running"
    );

    let stats = Arc::new(ShipStats::default());
    let (ship_tx, shipper) = match config.collector.clone() {
        Some(c) => {
            let target = CollectorTarget {
                address: c.address,
                server_name: c.server_name,
                tls: vigil_proto::transport::TlsFiles {
                    ca: c.ca,
                    cert: c.cert,
                    key: c.key,
                },
            };
            // Opened before anything runs, so a bad spool directory fails start-up clearly.
            let spool = spool::Spool::open(&config.spool)
                .with_context(|| format!("opening the spool {}", config.spool.dir.display()))?;
            tracing::info!(collector = %target.address, spool = %config.spool.dir.display(), "shipping to collector");
            let (tx, rx) = mpsc::channel(SHIP_QUEUE);
            let stats = stats.clone();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(async move {
                ship::run(target, spool, rx, stats, async {
                    let _ = stop_rx.await;
                })
                .await
            });
            (Some(tx), Some((handle, stop_tx)))
        }
        None => (None, None),
    };

    let mut reported = Reported::default();
    let mut last_counters = KernelCounters::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    let mut hasher = hashing::Hasher::start();
    // Exec events waiting for their executable's hash, by sequence number, with their age.
    let mut awaiting_hash: HashMap<u64, (Instant, Event)> = HashMap::new();
    let mut out = Outputs {
        stdout: (config.output == Output::Stdout).then(|| std::io::stdout().lock()),
        ship: ship_tx,
        stats: &stats,
    };
    loop {
        let mut events: Vec<Event> = Vec::new();
        tokio::select! {
            () = &mut shutdown => break,
            () = next_hangup(&mut hangup) => {
                if reload_rules(&config, &mut rules, &metrics) {
                    let plan = pushdown::plan(&config, &rules.kernel_filter());
                    if plan.actions != actions {
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
                }
                continue;
            }
            _ = tick.tick() => {
                let losses = report_counters(&capture, &mut last_counters, &stats, &mut reported, &metrics);
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
        for mut event in events {
            metrics.event(event.event.action);
            // Rules see the command line as it was; nothing that leaves the sensor does.
            let mut alerts = detect(&rules, &event);
            redactor.redact_event(&mut event);
            for mut alert in alerts.drain(..) {
                metrics.rule_hit(&alert.rule.id);
                redactor.redact_event(&mut alert.event);
                out.alert(alert);
            }
            // The kernel's exec record, not the execveat syscall record (which names its syscall).
            if event.event.action == EventAction::Exec && !event.details.contains_key("syscall") {
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
    }
    for (_, (_, event)) in awaiting_hash.drain() {
        out.event(event);
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

/// How long an exec event may wait for its executable's hash before it goes without.
const HASH_WAIT: Duration = Duration::from_millis(500);

/// Where finished events and alerts go: local JSON lines and the collector.
struct Outputs<'a> {
    stdout: Option<std::io::StdoutLock<'static>>,
    ship: Option<mpsc::Sender<Outgoing>>,
    stats: &'a ShipStats,
}

impl Outputs<'_> {
    fn alert(&mut self, alert: Alert) {
        if let Some(out) = self.stdout.as_mut() {
            emit_json(out, &alert);
        }
        if let Some(tx) = &self.ship {
            if tx.try_send(Outgoing::Alert(Box::new(alert))).is_err() {
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
        if let Some(tx) = &self.ship {
            if tx.try_send(Outgoing::Event(Box::new(event))).is_err() {
                self.stats
                    .queue_events_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Rule matches of one event, as alerts carrying the whole event.
pub fn detect(rules: &RuleSet, event: &Event) -> Vec<Alert> {
    // Each rule reads only its category's actions: RuleSet::matches indexes by action.
    rules
        .matches(event)
        .into_iter()
        .map(|rule| {
            let mut event = event.clone();
            event.event.kind = "alert".into();
            Alert {
                rule: rule.info().clone(),
                event,
            }
        })
        .collect()
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

/// Swaps in the rules as the configured paths hold them now, or keeps the running set.
/// True when the rules changed.
fn reload_rules(config: &SensorConfig, rules: &mut RuleSet, metrics: &SensorMetrics) -> bool {
    match load_rules(config) {
        Ok(fresh) => {
            tracing::info!(
                rules = fresh.len(),
                previous = rules.len(),
                "SIGHUP: rules reloaded"
            );
            *rules = fresh;
            metrics.rules_loaded(rules.len());
            metrics.rule_reload(true);
            true
        }
        Err(e) => {
            tracing::error!(
                "SIGHUP: rule reload failed, keeping the {} running rules: {e:#}",
                rules.len()
            );
            metrics.rule_reload(false);
            false
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
