//! Events and alerts to the collector over mutually authenticated QUIC, through the spool.
//!
//! A batcher groups telemetry (up to [`MAX_BATCH_EVENTS`] or [`BATCH_WINDOW`]) and writes each
//! batch to the [`Spool`]; each alert is spooled alone at once. Two lanes then deliver from the
//! spool, one batch per QUIC stream each, retrying a batch until the collector acks it: the
//! alert lane and the telemetry lane run side by side on one connection, so an alert never
//! waits behind a bulk batch. Only an ack removes a batch from the spool, so a collector
//! outage or a sensor crash loses nothing that fits in it; what does not fit is counted, and
//! the running loss totals ride on every batch to the collector.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use vigil_proto::transport::{self, TlsFiles};
use vigil_proto::Request;
use vigil_proto::{read_frame, write_frame, Alert, Batch, Event, Reply, SensorStatus};

use crate::spool::{Appended, Class, Spool};

pub const MAX_BATCH_EVENTS: usize = 512;
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Replies are tiny; anything larger is a broken peer.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// How often gauges are refreshed, queue drops folded into the spool's totals, and (with
/// `fsync: batch`) the spool flushed.
const HOUSEKEEPING: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub enum Outgoing {
    Event(Box<Event>),
    Alert(Box<Alert>),
}

#[derive(Clone, Debug)]
pub struct CollectorTarget {
    pub address: SocketAddr,
    /// More collectors of the same deployment (sharing one PostgreSQL store), tried in turn
    /// when the current one cannot be reached; the collectors' dedup makes a batch resent to
    /// another collector harmless.
    pub failover: Vec<SocketAddr>,
    pub server_name: String,
    pub tls: TlsFiles,
    /// What to report to the collector, and how often; `None` sends no heartbeats.
    pub heartbeat: Option<Heartbeat>,
}

/// The sensor's periodic report to the collector, which calls the sensor silent when three
/// in a row are missing.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    pub every: Duration,
    /// The sensor's latest view of itself; the spool and delivery figures are filled in here.
    pub status: tokio::sync::watch::Receiver<SensorStatus>,
}

/// Counters and gauges of delivery, read by the sensor's periodic report.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Added to by whoever fails to hand an event to the shipper (a full queue); moved into the
    /// spool's persistent totals by the shipper.
    pub queue_events_dropped: AtomicU64,
    pub queue_alerts_dropped: AtomicU64,
    /// Running totals of everything lost (spool and queue), as reported to the collector.
    pub events_dropped: AtomicU64,
    pub alerts_dropped: AtomicU64,
    pub corrupt_records: AtomicU64,
    pub batches_acked: AtomicU64,
    /// Events and alerts written to the spool.
    pub events_spooled: AtomicU64,
    pub alerts_spooled: AtomicU64,
    /// Gauges: what the spool holds now.
    pub spool_bytes: AtomicU64,
    pub spool_batches: AtomicU64,
}

/// Sequence numbers must grow across sensor restarts (the collector drops a (sensor, seq) it
/// has seen); the spool persists its own, and starts no lower than this, so that even a
/// wiped spool directory continues above the last run (as long as the clock does).
pub fn first_sequence() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    ms << 20
}

/// What the batcher and both lanes share.
struct Shared {
    spool: Mutex<Spool>,
    /// Wakes a lane when its class has something new (index: [`Class`]).
    wake: [Notify; 2],
    /// Set when the batcher has spooled its last batch.
    producing: std::sync::atomic::AtomicBool,
    stats: Arc<ShipStats>,
}

impl Shared {
    fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock leaves the spool as consistent as its files are:
        // keep going rather than take the sensor down.
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh_gauges(&self, spool: &Spool) {
        let loss = spool.loss();
        let s = &self.stats;
        s.events_dropped
            .store(loss.events_dropped, Ordering::Relaxed);
        s.alerts_dropped
            .store(loss.alerts_dropped, Ordering::Relaxed);
        s.corrupt_records
            .store(loss.corrupt_records, Ordering::Relaxed);
        s.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        s.spool_batches
            .store(spool.pending() as u64, Ordering::Relaxed);
    }
}

/// Delivers what a previous run left in `spool`, then everything from `rx`. Returns once `rx`
/// is closed and the spool is empty, or when `give_up` fires (the spool keeps the rest for
/// the next run).
pub async fn run(
    target: CollectorTarget,
    spool: Spool,
    rx: mpsc::Receiver<Outgoing>,
    stats: Arc<ShipStats>,
    give_up: impl std::future::Future<Output = ()>,
) -> Result<(), transport::TransportError> {
    let endpoint = transport::client_endpoint(&target.tls)?;
    let pending = spool.pending();
    if pending > 0 {
        tracing::info!(
            batches = pending,
            bytes = spool.bytes(),
            "delivering batches spooled by a previous run"
        );
    }
    let shared = Shared {
        spool: Mutex::new(spool),
        wake: [Notify::new(), Notify::new()],
        producing: true.into(),
        stats,
    };
    shared.refresh_gauges(&shared.spool());
    let heartbeat = target.heartbeat.clone();
    let link = Link {
        endpoint: endpoint.clone(),
        target,
        conn: tokio::sync::Mutex::new(None),
        preferred: std::sync::atomic::AtomicUsize::new(0),
    };
    let work = async {
        tokio::join!(
            batch(&shared, rx),
            lane(&shared, &link, Class::Alerts),
            lane(&shared, &link, Class::Telemetry),
        )
    };
    tokio::select! {
        _ = work => {}
        () = send_heartbeats(&shared, &link, heartbeat) => {}
        () = give_up => tracing::warn!("delivery stopped; the spool keeps the rest for the next run"),
    }
    let mut spool = shared.spool();
    if let Err(e) = spool.sync() {
        tracing::warn!(error = %e, "cannot flush the spool");
    }
    shared.refresh_gauges(&spool);
    endpoint.close(0u32.into(), b"sensor stopping");
    Ok(())
}

/// Groups telemetry into batches and spools them; spools each alert at once.
async fn batch(shared: &Shared, mut rx: mpsc::Receiver<Outgoing>) {
    let mut events = Vec::new();
    let mut deadline = Instant::now() + BATCH_WINDOW;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            () = tokio::time::sleep_until(deadline), if !events.is_empty() => {
                spool(shared, Class::Telemetry, std::mem::take(&mut events), Vec::new());
                continue;
            }
            _ = housekeeping.tick() => {
                housekeep(shared);
                continue;
            }
        };
        match item {
            Some(Outgoing::Alert(alert)) => {
                spool(shared, Class::Alerts, Vec::new(), vec![*alert]);
            }
            Some(Outgoing::Event(event)) => {
                if events.is_empty() {
                    deadline = Instant::now() + BATCH_WINDOW;
                }
                events.push(*event);
                if events.len() >= MAX_BATCH_EVENTS {
                    spool(
                        shared,
                        Class::Telemetry,
                        std::mem::take(&mut events),
                        Vec::new(),
                    );
                }
            }
            None => {
                if !events.is_empty() {
                    spool(shared, Class::Telemetry, events, Vec::new());
                }
                housekeep(shared);
                shared.producing.store(false, Ordering::Release);
                for wake in &shared.wake {
                    wake.notify_one();
                }
                return;
            }
        }
    }
}

fn spool(shared: &Shared, class: Class, events: Vec<Event>, alerts: Vec<Alert>) {
    let (n_events, n_alerts) = (events.len() as u64, alerts.len() as u64);
    let mut spool = shared.spool();
    match spool.append(class, events, alerts) {
        Ok(Appended::Spooled { .. }) => {
            let stats = &shared.stats;
            stats.events_spooled.fetch_add(n_events, Ordering::Relaxed);
            stats.alerts_spooled.fetch_add(n_alerts, Ordering::Relaxed);
            shared.wake[class as usize].notify_one();
        }
        Ok(Appended::Dropped) => {}
        Err(e) => {
            // The disk failed us (full, read-only, gone): count the loss and keep running.
            tracing::error!(error = %e, events = n_events, alerts = n_alerts, "cannot spool a batch; dropped");
            if let Err(e) = spool.count_dropped(n_events, n_alerts) {
                tracing::error!(error = %e, "cannot persist loss totals");
            }
        }
    }
}

fn housekeep(shared: &Shared) {
    let stats = &shared.stats;
    let events = stats.queue_events_dropped.swap(0, Ordering::Relaxed);
    let alerts = stats.queue_alerts_dropped.swap(0, Ordering::Relaxed);
    let mut spool = shared.spool();
    if let Err(e) = spool.count_dropped(events, alerts) {
        tracing::error!(error = %e, "cannot persist loss totals");
    }
    if let Err(e) = spool.sync() {
        tracing::error!(error = %e, "cannot flush the spool");
    }
    shared.refresh_gauges(&spool);
}

/// Delivers one class from the spool, oldest first, one batch at a time until acked.
async fn lane(shared: &Shared, link: &Link, class: Class) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let next = shared.spool().next_unsent(class);
        let Some(pending) = next else {
            if !shared.producing.load(Ordering::Acquire) {
                return;
            }
            // NB: notify_one keeps a permit when no one waits, so a batch spooled between
            // the check above and this wait still wakes us.
            shared.wake[class as usize].notified().await;
            continue;
        };
        let mut batch = pending.batch;
        loop {
            // Totals as of now, so even a resend carries the newest counts.
            batch.loss = shared.spool().loss();
            let conn = link.connection().await;
            match deliver(&conn, &batch).await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    let mut spool = shared.spool();
                    spool.ack(class, batch.seq);
                    shared.stats.batches_acked.fetch_add(1, Ordering::Relaxed);
                    shared.refresh_gauges(&spool);
                    break;
                }
                Err(reason) => {
                    tracing::warn!(seq = batch.seq, ?class, %reason, "batch not acked; will resend");
                    link.broken(&conn).await;
                    sleep_backoff(&mut backoff).await;
                }
            }
        }
    }
}

/// The one connection both lanes share, reconnected on demand.
struct Link {
    endpoint: quinn::Endpoint,
    target: CollectorTarget,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    /// Index (into `address` then `failover`) of the collector dialed first: the last one that
    /// answered, so a working failover is kept rather than abandoned at each reconnect.
    preferred: std::sync::atomic::AtomicUsize,
}

impl Link {
    /// A live connection, dialing (with backoff) until there is one. The lock is held while
    /// dialing so that both lanes wait for the same new connection.
    async fn connection(&self) -> quinn::Connection {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| c.close_reason().is_none()) {
            return c.clone();
        }
        let target = &self.target;
        let addresses: Vec<SocketAddr> = std::iter::once(target.address)
            .chain(target.failover.iter().copied())
            .collect();
        let mut backoff = BACKOFF_MIN;
        loop {
            // One round over every collector, from the preferred one, before backing off.
            let first = self.preferred.load(Ordering::Relaxed) % addresses.len();
            for index in (first..addresses.len()).chain(0..first) {
                let address = addresses[index];
                match transport::connect(&self.endpoint, address, &target.server_name).await {
                    Ok(c) => {
                        tracing::info!(collector = %address, "connected to collector");
                        self.preferred.store(index, Ordering::Relaxed);
                        *slot = Some(c.clone());
                        return c;
                    }
                    Err(e) => {
                        tracing::warn!(collector = %address, error = %e, "collector unreachable");
                    }
                }
            }
            tracing::warn!(collectors = addresses.len(), retry_in = ?backoff, "no collector reachable");
            sleep_backoff(&mut backoff).await;
        }
    }

    /// Forgets `conn` if it is still the current one (the other lane may have replaced it).
    async fn broken(&self, conn: &quinn::Connection) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().map(|c| c.stable_id()) == Some(conn.stable_id()) {
            conn.close(0u32.into(), b"no ack");
            *slot = None;
        }
    }
}

/// Sends a heartbeat every `heartbeat.every` over the lanes' connection; never returns (with
/// no heartbeat configured it just waits). A failed heartbeat is only logged: the next one
/// goes out on time, and batches carry on regardless.
async fn send_heartbeats(shared: &Shared, link: &Link, heartbeat: Option<Heartbeat>) {
    let Some(Heartbeat { every, status }) = heartbeat else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut report = status.borrow().clone();
        let stats = &shared.stats;
        report.spool_batches = stats.spool_batches.load(Ordering::Relaxed);
        report.spool_bytes = stats.spool_bytes.load(Ordering::Relaxed);
        report.delivery_drops = stats.events_dropped.load(Ordering::Relaxed)
            + stats.alerts_dropped.load(Ordering::Relaxed);
        report.heartbeat_secs = u32::try_from(every.as_secs().max(1)).unwrap_or(u32::MAX);
        let conn = link.connection().await;
        let sent = tokio::time::timeout(every.max(Duration::from_secs(1)), async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, &Request::Heartbeat(report))
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            match read_frame::<_, Reply>(&mut recv, MAX_REPLY_BYTES).await {
                Ok(Some(Reply::StatusRecorded)) => Ok(()),
                Ok(Some(Reply::Refused { reason })) => Err(format!("refused: {reason}")),
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => tracing::debug!(%reason, "heartbeat not recorded"),
            Err(_) => tracing::debug!("heartbeat timed out"),
        }
    }
}

async fn deliver(conn: &quinn::Connection, batch: &Batch) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, &RequestRef::Publish(batch))
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    match read_frame::<_, Reply>(&mut recv, MAX_REPLY_BYTES).await {
        Ok(Some(Reply::Ack { seq })) if seq == batch.seq => Ok(()),
        Ok(Some(Reply::Refused { reason })) => {
            Err(format!("collector refused the batch: {reason}"))
        }
        Ok(Some(other)) => Err(format!("unexpected reply {other:?}")),
        Ok(None) => Err("collector closed the stream without a reply".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Serializes exactly like [`Request::Publish`] without cloning the batch.
#[derive(serde::Serialize)]
enum RequestRef<'a> {
    Publish(&'a Batch),
}

async fn sleep_backoff(backoff: &mut Duration) {
    // Jitter spreads reconnects of a fleet after a collector restart.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos() as u64;
    let jitter = Duration::from_nanos(nanos % (backoff.as_nanos() as u64 / 2 + 1));
    tokio::time::sleep(*backoff / 2 + jitter).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_publish_frame_is_a_publish_request() {
        let batch = Batch {
            seq: 42,
            events: Vec::new(),
            alerts: Vec::new(),
            loss: vigil_proto::Loss {
                events_dropped: 3,
                alerts_dropped: 0,
                corrupt_records: 1,
            },
        };
        let bytes = vigil_proto::encode(&RequestRef::Publish(&batch)).unwrap();
        assert_eq!(
            vigil_proto::decode::<Request>(&bytes).unwrap(),
            Request::Publish(batch)
        );
    }

    #[test]
    fn sequence_numbers_grow_across_restarts() {
        let first = first_sequence();
        std::thread::sleep(Duration::from_millis(2));
        // A restart a moment later starts above anything the previous run could have used
        // in its first million batches.
        assert!(first_sequence() >= first + (1 << 20));
    }
}
