//! The collector's Prometheus metrics: what sensors deliver, how fast it is stored, who is
//! delivering.
//!
//! NB: one process-wide instance ([`collector_metrics`]) rather than a value threaded through
//! [`crate::Collector::bind`]: the store is opened inside the server, whose connection handling
//! is being reworked separately, and a counter needs no ownership. The instance is created on
//! first use, not filled by start-up side effects; tests embedding several collectors in one
//! process share it, which only makes the counters sums.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use vigil_ops::metrics_endpoint::{EndpointError, MetricsConfig, MetricsEndpoint, RunningEndpoint};

/// A sensor that published within this window counts as connected.
const ACTIVE_WINDOW: Duration = Duration::from_secs(60);

pub struct CollectorMetrics {
    registry: Registry,
    ingested: IntCounterVec,
    batches: IntCounterVec,
    store_seconds: Histogram,
    sensors: ActiveSensors,
    outputs: OutputMetrics,
    rules_version: IntGauge,
    sensor_rules_version: IntGaugeVec,
    outputs_leader: IntGauge,
}

/// Per alert output (label `output`: the route's name in collector.yaml).
struct OutputMetrics {
    delivered: IntCounterVec,
    failed: IntCounterVec,
    dropped: IntCounterVec,
    queued: IntGaugeVec,
}

/// The process's metrics; `None` only if registering them failed (a programming error that is
/// logged rather than allowed to stop ingest).
pub fn collector_metrics() -> Option<&'static CollectorMetrics> {
    static METRICS: OnceLock<Option<CollectorMetrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match CollectorMetrics::new() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "collector metrics unavailable");
                None
            }
        })
        .as_ref()
}

impl CollectorMetrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let ingested = IntCounterVec::new(
            Opts::new(
                "vigil_collector_ingested_total",
                "Records stored, by type (event, alert); rate() of it is the ingest rate.",
            ),
            &["type"],
        )?;
        let batches = IntCounterVec::new(
            Opts::new(
                "vigil_collector_batches_total",
                "Batches received, by outcome (stored, duplicate, failed).",
            ),
            &["outcome"],
        )?;
        let store_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "vigil_collector_store_seconds",
                "Time from a batch's arrival to its commit (what a sensor waits for its ack).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        let sensors = ActiveSensors::new()?;
        let outputs = OutputMetrics {
            delivered: IntCounterVec::new(
                Opts::new(
                    "vigil_collector_output_delivered_total",
                    "Alerts delivered, by output.",
                ),
                &["output"],
            )?,
            failed: IntCounterVec::new(
                Opts::new(
                    "vigil_collector_output_failures_total",
                    "Failed delivery attempts (each retried with backoff), by output.",
                ),
                &["output"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "vigil_collector_output_dropped_total",
                    "Alerts dropped from a full output queue (still in the store), by output.",
                ),
                &["output"],
            )?,
            queued: IntGaugeVec::new(
                Opts::new(
                    "vigil_collector_output_queued",
                    "Alerts waiting for delivery, by output.",
                ),
                &["output"],
            )?,
        };
        registry.register(Box::new(outputs.delivered.clone()))?;
        registry.register(Box::new(outputs.failed.clone()))?;
        registry.register(Box::new(outputs.dropped.clone()))?;
        registry.register(Box::new(outputs.queued.clone()))?;
        let rules_version = IntGauge::new(
            "vigil_collector_rules_version",
            "Version of the central rule set being served (0: none pushed).",
        )?;
        let sensor_rules_version = IntGaugeVec::new(
            Opts::new(
                "vigil_collector_sensor_rules_version",
                "Central rule set version each sensor last reported running (0: none).",
            ),
            &["sensor"],
        )?;
        let outputs_leader = IntGauge::new(
            "vigil_collector_outputs_leader",
            "1 while this collector forwards alerts to the outputs: always with SQLite; with \
             PostgreSQL, the one collector of those sharing the database that holds the lead.",
        )?;
        registry.register(Box::new(outputs_leader.clone()))?;
        registry.register(Box::new(rules_version.clone()))?;
        registry.register(Box::new(sensor_rules_version.clone()))?;
        registry.register(Box::new(ingested.clone()))?;
        registry.register(Box::new(batches.clone()))?;
        registry.register(Box::new(store_seconds.clone()))?;
        registry.register(Box::new(sensors.clone_handle()))?;
        for outcome in ["stored", "duplicate", "failed"] {
            batches.with_label_values(&[outcome]);
        }
        Ok(Self {
            registry,
            ingested,
            batches,
            store_seconds,
            sensors,
            outputs,
            rules_version,
            sensor_rules_version,
            outputs_leader,
        })
    }

    pub fn central_rules_version(&self, version: u64) {
        self.rules_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    pub fn sensor_rules_version(&self, sensor: &str, version: Option<u64>) {
        self.sensor_rules_version
            .with_label_values(&[sensor])
            .set(version.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX)));
    }

    pub fn outputs_leader(&self, leads: bool) {
        self.outputs_leader.set(i64::from(leads));
    }

    /// Makes every series of output `name` visible (at zero) from the start.
    pub fn output_registered(&self, name: &str) {
        let OutputMetrics {
            delivered,
            failed,
            dropped,
            queued,
        } = &self.outputs;
        delivered.with_label_values(&[name]);
        failed.with_label_values(&[name]);
        dropped.with_label_values(&[name]);
        queued.with_label_values(&[name]);
    }

    pub fn output_delivered(&self, name: &str) {
        self.outputs.delivered.with_label_values(&[name]).inc();
    }

    pub fn output_failed(&self, name: &str) {
        self.outputs.failed.with_label_values(&[name]).inc();
    }

    pub fn output_dropped(&self, name: &str) {
        self.outputs.dropped.with_label_values(&[name]).inc();
    }

    pub fn output_queued(&self, name: &str, len: usize) {
        self.outputs
            .queued
            .with_label_values(&[name])
            .set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// A batch from `sensor` of `events` and `alerts` took `elapsed` to reach `outcome`.
    pub fn batch(
        &self,
        sensor: &str,
        outcome: &str,
        events: usize,
        alerts: usize,
        elapsed: Duration,
    ) {
        self.batches.with_label_values(&[outcome]).inc();
        self.store_seconds.observe(elapsed.as_secs_f64());
        if outcome == "stored" {
            self.ingested
                .with_label_values(&["event"])
                .inc_by(events as u64);
            self.ingested
                .with_label_values(&["alert"])
                .inc_by(alerts as u64);
        }
        self.sensors.seen(sensor);
    }
}

/// Binds and spawns the scrape endpoint when the config asks for one.
pub async fn start_endpoint(
    config: Option<&MetricsConfig>,
) -> Result<Option<RunningEndpoint>, EndpointError> {
    let Some(MetricsConfig { listen }) = config else {
        return Ok(None);
    };
    let registry = collector_metrics()
        .map(CollectorMetrics::registry)
        .unwrap_or_default();
    let endpoint = MetricsEndpoint::bind(*listen, registry).await?;
    tracing::info!(listen = ?endpoint.local_addr(), "serving metrics at /metrics");
    Ok(Some(endpoint.spawn()))
}

/// `vigil_collector_connected_sensors`, computed when scraped from the last delivery of each
/// sensor, so it falls when sensors go quiet even if nothing else happens.
struct ActiveSensors {
    last_seen: std::sync::Arc<Mutex<HashMap<String, Instant>>>,
    gauge: IntGauge,
}

impl ActiveSensors {
    fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            last_seen: Default::default(),
            gauge: IntGauge::new(
                "vigil_collector_connected_sensors",
                "Sensors that delivered a batch in the last 60 seconds.",
            )?,
        })
    }

    fn clone_handle(&self) -> Self {
        Self {
            last_seen: self.last_seen.clone(),
            gauge: self.gauge.clone(),
        }
    }

    fn seen(&self, sensor: &str) {
        if let Ok(mut map) = self.last_seen.lock() {
            match map.get_mut(sensor) {
                Some(at) => *at = Instant::now(),
                None => {
                    map.insert(sensor.to_owned(), Instant::now());
                }
            }
        }
    }
}

impl Collector for ActiveSensors {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Ok(mut map) = self.last_seen.lock() {
            map.retain(|_, at| at.elapsed() < ACTIVE_WINDOW);
            self.gauge.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_show_up_in_the_exposition() {
        let metrics = CollectorMetrics::new().expect("metrics register");
        metrics.batch("web-01", "stored", 10, 2, Duration::from_millis(3));
        metrics.batch("web-02", "duplicate", 10, 0, Duration::from_millis(1));
        let text = vigil_ops::metrics_endpoint::exposition(&metrics.registry()).expect("encode");
        for line in [
            "vigil_collector_ingested_total{type=\"event\"} 10",
            "vigil_collector_ingested_total{type=\"alert\"} 2",
            "vigil_collector_batches_total{outcome=\"duplicate\"} 1",
            "vigil_collector_batches_total{outcome=\"failed\"} 0",
            "vigil_collector_store_seconds_count 2",
            "vigil_collector_connected_sensors 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
