//! The Vigil host agent: kernel capture → decode → enrich → detect → ship.
//!
//! [`run`] wires the stages: one task owns the ring buffer, the process table and the rules
//! (so the table needs no lock), and hands events and alerts to the shipping task through a
//! bounded channel whose drops are counted.

pub mod capture;
pub mod config;
pub mod decode;
pub mod doctor;
pub mod enrich;
pub mod metrics;
pub mod offsets;
pub mod procfs;
pub mod ship;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use vigil_detect::RuleSet;
use vigil_proto::{Alert, Event, EventAction};

use crate::capture::{Capture, KernelCounters};
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
    let mut enricher = Enricher::new(ctx, view);
    let seeded = seed.len();
    for info in seed {
        enricher.seed(info);
    }
    let mut capture =
        Capture::start(std::process::id(), config.exec_hook).context("starting kernel capture")?;
    for hook in capture.hooks() {
        tracing::info!(event = hook.event, hook = %hook.hook, "attached");
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
            tracing::info!(collector = %target.address, "shipping to collector");
            let (tx, rx) = mpsc::channel(SHIP_QUEUE);
            let stats = stats.clone();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(async move {
                ship::run(target, rx, stats, async {
                    let _ = stop_rx.await;
                })
                .await
            });
            (Some(tx), Some((handle, stop_tx)))
        }
        None => (None, None),
    };

    let pipeline_drops = AtomicU64::new(0);
    let mut stdout = std::io::stdout().lock();
    let mut last_counters = KernelCounters::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        let mut events: Vec<Event> = Vec::new();
        tokio::select! {
            () = &mut shutdown => break,
            () = next_hangup(&mut hangup) => {
                reload_rules(&config, &mut rules, &metrics);
                continue;
            }
            _ = tick.tick() => {
                report_counters(&capture, &mut last_counters, &stats, &pipeline_drops, &metrics);
                continue;
            }
            drained = capture.drain(DRAIN_BUDGET, |bytes| match decode::decode(bytes) {
                Ok(raw) => events.push(enricher.enrich(raw)),
                Err(e) => tracing::warn!(error = %e, "undecodable kernel record"),
            }) => { drained.context("reading the ring buffer")?; }
        }
        for event in events {
            metrics.event(event.event.action);
            let alerts = detect(&rules, &event);
            for alert in &alerts {
                metrics.rule_hit(&alert.rule.id);
            }
            if config.output == Output::Stdout {
                emit_json(&mut stdout, &event);
                for alert in &alerts {
                    emit_json(&mut stdout, alert);
                }
            }
            if let Some(tx) = &ship_tx {
                for alert in alerts {
                    if tx.try_send(Outgoing::Alert(Box::new(alert))).is_err() {
                        pipeline_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if tx.try_send(Outgoing::Event(Box::new(event))).is_err() {
                    pipeline_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    tracing::info!("stopping: detaching kernel programs");
    drop(capture);
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
    Ok(())
}

/// Rule matches of one event, as alerts carrying the whole event.
pub fn detect(rules: &RuleSet, event: &Event) -> Vec<Alert> {
    if event.event.action != EventAction::Exec {
        return Vec::new();
    }
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
fn reload_rules(config: &SensorConfig, rules: &mut RuleSet, metrics: &SensorMetrics) {
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
        }
        Err(e) => {
            tracing::error!(
                "SIGHUP: rule reload failed, keeping the {} running rules: {e:#}",
                rules.len()
            );
            metrics.rule_reload(false);
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

fn report_counters(
    capture: &Capture,
    last: &mut KernelCounters,
    stats: &ShipStats,
    pipeline_drops: &AtomicU64,
    metrics: &SensorMetrics,
) {
    let now = capture.counters();
    for (kind, (&total, &before)) in now.lost.iter().zip(last.lost.iter()).enumerate() {
        if total > before {
            metrics.dropped("kernel", "ringbuf_full", total - before);
            tracing::warn!(
                kind,
                lost = total - before,
                total,
                "kernel records lost: ring buffer full"
            );
        }
    }
    for (kind, (&total, &before)) in now.faults.iter().zip(last.faults.iter()).enumerate() {
        if total > before {
            tracing::debug!(kind, faults = total - before, "kernel reads failed");
        }
    }
    *last = now;
    let pipeline = pipeline_drops.swap(0, Ordering::Relaxed);
    let shipping = stats.events_dropped.swap(0, Ordering::Relaxed)
        + stats.alerts_dropped.swap(0, Ordering::Relaxed);
    metrics.dropped("pipeline", "queue_full", pipeline);
    metrics.dropped("ship", "queue_full", shipping);
    metrics.batches_acked(stats.batches_acked.load(Ordering::Relaxed));
    let dropped = pipeline + shipping;
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "events dropped on the way to the collector (queues full)"
        );
    }
}
