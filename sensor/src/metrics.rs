//! The sensor's Prometheus metrics: what it saw, what it lost and where, what fired.
//!
//! One [`SensorMetrics`] is made at start and owned by the pipeline task (no lock on the hot
//! path beyond the atomic counters themselves); its registry is shared with the scrape endpoint.
//! Counters only go up; the pipeline feeds them deltas of the kernel's and the shipper's totals.

use std::collections::HashMap;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use vigil_proto::EventAction;

/// Registration can only fail on a name clash or a malformed name, both fixed at compile time
/// here; the error is still reported rather than unwrapped.
#[derive(Debug, thiserror::Error)]
#[error("cannot register sensor metric: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

pub struct SensorMetrics {
    registry: Registry,
    events: IntCounterVec,
    /// `events` children by action, so the hot path skips the label hash after the first event.
    events_by_action: HashMap<EventAction, IntCounter>,
    drops: IntCounterVec,
    rule_hits: IntCounterVec,
    rules_loaded: IntGauge,
    rule_reloads: IntCounterVec,
    central_rules_version: IntGauge,
    central_refusals: IntCounterVec,
    batches_acked: IntCounter,
    hooks: IntGaugeVec,
    host_pid_namespace: IntGauge,
    late_records: IntCounterVec,
}

impl SensorMetrics {
    /// Records the hook chosen for an event kind (`in_use`) or one the kernel refused.
    pub fn hook(&self, event: &str, hook: &str, in_use: bool) {
        self.hooks
            .with_label_values(&[event, hook])
            .set(i64::from(in_use));
    }

    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new(
                "vigil_sensor_events_total",
                "Events decoded and enriched, by kind (event.action).",
            ),
            &["kind"],
        )?;
        let drops = IntCounterVec::new(
            Opts::new(
                "vigil_sensor_drops_total",
                "Records lost, by pipeline stage (kernel, pipeline, ship) and reason.",
            ),
            &["stage", "reason"],
        )?;
        let rule_hits = IntCounterVec::new(
            Opts::new("vigil_sensor_rule_hits_total", "Alerts raised, by rule id."),
            &["rule"],
        )?;
        let rules_loaded = IntGauge::new("vigil_sensor_rules_loaded", "Rules in force.")?;
        let rule_reloads = IntCounterVec::new(
            Opts::new(
                "vigil_sensor_rule_reloads_total",
                "SIGHUP rule reloads, by result (ok, failed: the running rules stayed).",
            ),
            &["result"],
        )?;
        let central_rules_version = IntGauge::new(
            "vigil_sensor_central_rules_version",
            "Version of the collector's rule set in force (0: none).",
        )?;
        let central_refusals = IntCounterVec::new(
            Opts::new(
                "vigil_sensor_central_rules_refused_total",
                "Rule sets from the collector not run, by reason (bad_signature, not_newer, \
                 invalid); the running rules stayed.",
            ),
            &["reason"],
        )?;
        for reason in ["bad_signature", "not_newer", "invalid"] {
            central_refusals.with_label_values(&[reason]);
        }
        registry.register(Box::new(central_rules_version.clone()))?;
        registry.register(Box::new(central_refusals.clone()))?;
        let batches_acked = IntCounter::new(
            "vigil_sensor_batches_acked_total",
            "Batches the collector acknowledged as stored.",
        )?;
        let hooks = IntGaugeVec::new(
            Opts::new(
                "vigil_sensor_hook",
                "Kernel hooks per event kind: 1 in use, 0 refused by this kernel (tried first).",
            ),
            &["event", "hook"],
        )?;
        registry.register(Box::new(hooks.clone()))?;
        let host_pid_namespace = IntGauge::new(
            "vigil_sensor_host_pid_namespace",
            "1: the sensor runs in the host's PID namespace; 0: outside it (a container without \
             --pid=host / hostPID), so events carry only what kernel records hold, nothing \
             looked up in /proc by pid.",
        )?;
        registry.register(Box::new(host_pid_namespace.clone()))?;
        let late_records = IntCounterVec::new(
            Opts::new(
                "vigil_sensor_late_records_total",
                "Kernel records enriched after a newer record of the other ring buffer (lane), \
                 by lane: out of time order, still delivered.",
            ),
            &["lane"],
        )?;
        for lane in ["critical", "bulk"] {
            late_records.with_label_values(&[lane]);
        }
        registry.register(Box::new(late_records.clone()))?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(drops.clone()))?;
        registry.register(Box::new(rule_hits.clone()))?;
        registry.register(Box::new(rules_loaded.clone()))?;
        registry.register(Box::new(rule_reloads.clone()))?;
        registry.register(Box::new(batches_acked.clone()))?;
        // Pre-create the drop series an operator alerts on, so they read 0 rather than absent.
        for (stage, reason) in [
            ("kernel", "ringbuf_full"),
            ("pipeline", "queue_full"),
            ("ship", "queue_full"),
        ] {
            drops.with_label_values(&[stage, reason]);
        }
        Ok(Self {
            registry,
            events,
            events_by_action: HashMap::new(),
            hooks,
            drops,
            rule_hits,
            rules_loaded,
            rule_reloads,
            central_rules_version,
            central_refusals,
            batches_acked,
            host_pid_namespace,
            late_records,
        })
    }

    /// Whether the sensor runs in the host's PID namespace (see [`crate::pidns`]).
    pub fn pid_namespace(&self, host: bool) {
        self.host_pid_namespace.set(i64::from(host));
    }

    /// The registry the scrape endpoint serves.
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    pub fn event(&mut self, action: EventAction) {
        let events = &self.events;
        self.events_by_action
            .entry(action)
            .or_insert_with(|| {
                let label = serde_json::to_value(action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "unknown".to_owned());
                events.with_label_values(&[label.as_str()])
            })
            .inc();
    }

    pub fn dropped(&self, stage: &str, reason: &str, count: u64) {
        if count > 0 {
            self.drops.with_label_values(&[stage, reason]).inc_by(count);
        }
    }

    pub fn rule_hit(&self, rule: &str) {
        self.rule_hits.with_label_values(&[rule]).inc();
    }

    pub fn rules_loaded(&self, count: usize) {
        self.rules_loaded
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn rule_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.rule_reloads.with_label_values(&[result]).inc();
    }

    pub fn central_rules_version(&self, version: u64) {
        self.central_rules_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    /// The refusal counter, cloned for the rule follower's task.
    pub fn central_refusals(&self) -> IntCounterVec {
        self.central_refusals.clone()
    }

    /// `total` is the merge's running count for `lane`; only its growth is added.
    pub fn late_records(&self, lane: &str, total: u64) {
        let counter = self.late_records.with_label_values(&[lane]);
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// `total` is the shipper's running count; only its growth is added.
    pub fn batches_acked(&self, total: u64) {
        let seen = self.batches_acked.get();
        if total > seen {
            self.batches_acked.inc_by(total - seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let mut metrics = SensorMetrics::new().expect("metrics register");
        metrics.event(EventAction::Exec);
        metrics.event(EventAction::Exec);
        metrics.event(EventAction::Fork);
        metrics.dropped("kernel", "ringbuf_full", 4);
        metrics.rule_hit("vigil-test-rule");
        metrics.rules_loaded(7);
        metrics.batches_acked(5);
        metrics.batches_acked(3);
        metrics.pid_namespace(false);
        metrics.late_records("bulk", 2);
        let text = vigil_ops::metrics_endpoint::exposition(&metrics.registry()).expect("encode");
        for line in [
            "vigil_sensor_events_total{kind=\"exec\"} 2",
            "vigil_sensor_events_total{kind=\"fork\"} 1",
            "vigil_sensor_drops_total{reason=\"ringbuf_full\",stage=\"kernel\"} 4",
            "vigil_sensor_drops_total{reason=\"queue_full\",stage=\"ship\"} 0",
            "vigil_sensor_rule_hits_total{rule=\"vigil-test-rule\"} 1",
            "vigil_sensor_rules_loaded 7",
            "vigil_sensor_batches_acked_total 5",
            "vigil_sensor_host_pid_namespace 0",
            "vigil_sensor_late_records_total{lane=\"bulk\"} 2",
            "vigil_sensor_late_records_total{lane=\"critical\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
