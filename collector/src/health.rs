//! Fleet health: sensors' heartbeats, and the alerts the collector raises about sensors
//! themselves. A sensor that goes quiet beyond its heartbeat window (a stopped sensor is a
//! classic attacker move) or that reports kernel drops (events it never saw) raises an alert
//! like any rule would, stored and streamed to `vigil tail` through the same path.
//!
//! Each alert is stored as a batch of the sensor's own with a sequence number sensors never
//! use (the top bit set; theirs are milliseconds << 20, below 2^63 until the year 2250), so
//! dedup by (sensor, seq) keeps two collectors from storing the same health alert twice.

use std::time::Duration;

use vigil_proto::{
    Alert, Batch, Event, EventAction, EventMeta, Host, Level, RuleInfo, SensorStatus, Timestamp,
};

use crate::store::{Store, StoreError, SILENT_AFTER_HEARTBEATS};

/// How often the collector looks for silent sensors.
pub const SILENCE_CHECK: Duration = Duration::from_secs(1);

/// Rule id of the alert raised for a silent sensor.
pub const SENSOR_SILENT: &str = "vigil-sensor-silent";
/// Rule id of the alert raised for a sensor that reports kernel drops.
pub const SENSOR_DROPS: &str = "vigil-sensor-kernel-drops";

const HEALTH_SEQ: u64 = 1 << 63;
/// Below [`HEALTH_SEQ`], the kind of health alert (so the two kinds never share a seq).
const SILENT_SEQ: u64 = 1 << 62;

/// Records a heartbeat and raises a drops alert when the sensor lost kernel records since its
/// previous one.
pub async fn heartbeat(
    store: &Store,
    sensor: &str,
    status: SensorStatus,
) -> Result<(), StoreError> {
    let now = Timestamp::now();
    let new_drops = store
        .record_status(sensor.to_owned(), status.clone(), now)
        .await?;
    if new_drops > 0 {
        tracing::warn!(
            sensor,
            new_drops,
            total = status.kernel_drops,
            "sensor {sensor} reports kernel drops"
        );
        let mut details = std::collections::BTreeMap::new();
        details.insert("lost.records".to_owned(), new_drops.to_string());
        details.insert("lost.total".to_owned(), status.kernel_drops.to_string());
        let alert = health_alert(
            RuleInfo {
                id: SENSOR_DROPS.into(),
                title: "Sensor dropping kernel events".into(),
                level: Level::Medium,
                tags: vec!["attack.defense-evasion".into(), "attack.t1562".into()],
                description: Some(format!(
                    "{sensor} lost {new_drops} kernel records since its previous heartbeat ({} in all): its ring buffers overflowed, so activity on the host went unseen",
                    status.kernel_drops
                )),
                author: Some("Vigil collector".into()),
            },
            &status.host,
            now,
            details,
        );
        // The running total identifies this report: a resent heartbeat is a duplicate.
        let seq = HEALTH_SEQ | (status.kernel_drops & (SILENT_SEQ - 1));
        store_alert(store, sensor, seq, alert).await?;
    }
    Ok(())
}

/// Raises a "sensor silent" alert for every sensor past its heartbeat window, every
/// [`SILENCE_CHECK`], until the collector stops.
pub async fn watch_silence(store: Store) {
    // NB: a sensor's window starts no earlier than this: while the collector was down its
    // sensors could not be heard, and calling them all silent at start would bury a real one.
    let watching_since = Timestamp::now();
    let mut tick = tokio::time::interval(SILENCE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Timestamp::now();
        let silent = match store.claim_silent(now, watching_since).await {
            Ok(silent) => silent,
            Err(e) => {
                tracing::warn!("cannot check for silent sensors: {e}");
                continue;
            }
        };
        for info in silent {
            let window = u64::from(info.status.heartbeat_secs.max(1)) * SILENT_AFTER_HEARTBEATS;
            tracing::warn!(sensor = %info.sensor, last_seen = %info.last_seen, "sensor {} silent for over {window} s", info.sensor);
            let mut details = std::collections::BTreeMap::new();
            details.insert("sensor.last_seen".to_owned(), info.last_seen.to_string());
            details.insert("sensor.window_secs".to_owned(), window.to_string());
            let alert = health_alert(
                RuleInfo {
                    id: SENSOR_SILENT.into(),
                    title: "Sensor silent".into(),
                    level: Level::High,
                    tags: vec!["attack.defense-evasion".into(), "attack.t1562.001".into()],
                    description: Some(format!(
                        "{} sent no heartbeat since {} ({window} s allowed): stopped, killed, cut off, or its host is down",
                        info.sensor, info.last_seen
                    )),
                    author: Some("Vigil collector".into()),
                },
                &info.status.host,
                now,
                details,
            );
            let last_seen_ms = info.last_seen.unix_nanos() / 1_000_000;
            let seq = HEALTH_SEQ | SILENT_SEQ | (last_seen_ms & (SILENT_SEQ - 1));
            if let Err(e) = store_alert(&store, &info.sensor, seq, alert).await {
                tracing::error!(sensor = %info.sensor, "cannot store the sensor-silent alert: {e}");
            }
        }
    }
}

fn health_alert(
    rule: RuleInfo,
    host: &str,
    now: Timestamp,
    details: std::collections::BTreeMap<String, String>,
) -> Alert {
    Alert::new(
        rule,
        Event {
            timestamp: now,
            event: EventMeta {
                kind: "alert".into(),
                // The nearest action: telemetry from the host was lost.
                action: EventAction::Lost,
                sequence: 0,
                boot_ns: 0,
            },
            host: Host {
                name: host.to_owned(),
                id: String::new(),
            },
            details,
            ..Event::default()
        },
    )
}

async fn store_alert(
    store: &Store,
    sensor: &str,
    seq: u64,
    alert: Alert,
) -> Result<(), StoreError> {
    let batch = Batch {
        seq,
        events: Vec::new(),
        alerts: vec![alert],
        loss: Default::default(),
    };
    store.publish(sensor.to_owned(), batch).await.map(|_| ())
}
