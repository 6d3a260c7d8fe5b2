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
    /// Events handed over together (what one ring-buffer drain produced): one channel
    /// operation and one wakeup for many events. Counted in [`ShipStats::queued_events`] by
    /// the sender, who bounds the queue by events rather than by messages.
    Events(Vec<Event>),
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
    /// Events sent as [`Outgoing::Events`] and not yet taken by the shipper.
    pub queued_events: AtomicU64,
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
    let (_, alerts) = mpsc::channel(1);
    run_with_alerts(target, spool, alerts, rx, stats, give_up).await
}

/// [`run`], with alerts on a channel of their own that is always read first, so an alert never
/// queues behind the telemetry handed over before it.
pub async fn run_with_alerts(
    target: CollectorTarget,
    spool: Spool,
    alerts: mpsc::Receiver<Box<Alert>>,
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
            batch(&shared, alerts, rx),
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
async fn batch(
    shared: &Shared,
    alerts: mpsc::Receiver<Box<Alert>>,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let mut alerts = Some(alerts);
    let mut events = Vec::new();
    let mut deadline = Instant::now() + BATCH_WINDOW;
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    loop {
        let item = tokio::select! {
            biased;
            alert = next_alert(&mut alerts) => {
                match alert {
                    Some(alert) => spool(shared, Class::Alerts, Vec::new(), vec![*alert]),
                    None => alerts = None,
                }
                continue;
            }
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
        let mut add = |event: Event, events: &mut Vec<Event>| {
            if events.is_empty() {
                deadline = Instant::now() + BATCH_WINDOW;
            }
            events.push(event);
            if events.len() >= MAX_BATCH_EVENTS {
                spool(shared, Class::Telemetry, std::mem::take(events), Vec::new());
            }
        };
        match item {
            Some(Outgoing::Alert(alert)) => {
                spool(shared, Class::Alerts, Vec::new(), vec![*alert]);
            }
            Some(Outgoing::Event(event)) => add(*event, &mut events),
            Some(Outgoing::Events(chunk)) => {
                shared
                    .stats
                    .queued_events
                    .fetch_sub(chunk.len() as u64, Ordering::Relaxed);
                for event in chunk {
                    add(event, &mut events);
                }
            }
            None => {
                // The sensor is stopping: what alerts are still queued go first.
                if let Some(alerts) = alerts.as_mut() {
                    while let Some(alert) = alerts.recv().await {
                        spool(shared, Class::Alerts, Vec::new(), vec![*alert]);
                    }
                }
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

/// The next alert; never, once the channel is gone (`None` is returned once when it closes).
async fn next_alert(alerts: &mut Option<mpsc::Receiver<Box<Alert>>>) -> Option<Box<Alert>> {
    match alerts {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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
            if spool.sync_due() {
                flush_unlocked(spool);
            }
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
    shared.refresh_gauges(&spool);
    flush_unlocked(spool);
}

/// Flushes what the spool has appended, after letting go of it (see `Spool::unsynced_files`).
fn flush_unlocked(mut spool: MutexGuard<'_, Spool>) {
    let files = spool.unsynced_files();
    drop(spool);
    let flushed = files.and_then(|files| {
        for (path, file) in files {
            file.sync_data()
                .map_err(|source| crate::spool::SpoolError::Io { path, source })?;
        }
        Ok(())
    });
    if let Err(e) = flushed {
        tracing::error!(error = %e, "cannot flush the spool");
    }
}

/// Delivers one class from the spool, oldest first, one batch at a time until acked.
async fn lane(shared: &Shared, link: &Link, class: Class) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let next = shared.spool().next_unsent_raw(class);
        let Some(pending) = next else {
            if !shared.producing.load(Ordering::Acquire) {
                return;
            }
            // NB: notify_one keeps a permit when no one waits, so a batch spooled between
            // the check above and this wait still wakes us.
            shared.wake[class as usize].notified().await;
            continue;
        };
        let seq = pending.seq;
        let body = pending.body;
        loop {
            // Totals as of now, so even a resend carries the newest counts.
            let loss = shared.spool().loss();
            let Some(frame) = publish_frame(seq, &body, loss) else {
                tracing::warn!(seq, "undecodable spool record skipped");
                shared.spool().skip_corrupt(class, seq);
                break;
            };
            let conn = link.connection().await;
            match deliver(&conn, seq, &frame).await {
                Ok(()) => {
                    backoff = BACKOFF_MIN;
                    let mut spool = shared.spool();
                    spool.ack(class, seq);
                    shared.stats.batches_acked.fetch_add(1, Ordering::Relaxed);
                    shared.refresh_gauges(&spool);
                    break;
                }
                Err(reason) => {
                    tracing::warn!(seq, ?class, %reason, "batch not acked; will resend");
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

/// Sends one publish frame (as [`publish_frame`] made it) and waits for the ack of `seq`.
async fn deliver(conn: &quinn::Connection, seq: u64, frame: &[u8]) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let len = u32::try_from(frame.len())
        .ok()
        .filter(|&len| len as usize <= vigil_proto::MAX_FRAME_BYTES)
        .ok_or_else(|| format!("a batch of {} bytes exceeds the frame limit", frame.len()))?;
    send.write_all(&len.to_be_bytes())
        .await
        .map_err(|e| e.to_string())?;
    send.write_all(frame).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    match read_frame::<_, Reply>(&mut recv, MAX_REPLY_BYTES).await {
        Ok(Some(Reply::Ack { seq: acked })) if acked == seq => Ok(()),
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

/// What `"events": [], "alerts": []` is in MessagePack with named fields: the two fields of a
/// [`Batch`] between its sequence number and its loss totals.
const EMPTY_LISTS: &[u8] = b"\xa6events\x90\xa6alerts\x90";

/// An encoded batch without events or alerts, split around [`EMPTY_LISTS`]: what comes before
/// the events and after the alerts.
fn split_template(template: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = template
        .windows(EMPTY_LISTS.len())
        .position(|w| w == EMPTY_LISTS)?;
    Some((&template[..at], &template[at + EMPTY_LISTS.len()..]))
}

/// The frame body of `Request::Publish` for the spooled batch `seq` whose record body is `body`
/// (a versioned [`Batch`] with default loss, as [`Spool::append`] writes it), carrying `loss`.
///
/// With named fields a struct is its fields' encodings one after the other, so the events and
/// alerts are copied from the record as they are: the spool's encoding is reused instead of
/// decoding ~500 events and encoding them again for every batch. The bytes are exactly
/// `vigil_proto::encode(&Request::Publish(batch))` (see the tests). A body of another shape
/// (written by another version) is decoded and encoded; `None` when it does not decode.
fn publish_frame(seq: u64, body: &[u8], loss: vigil_proto::Loss) -> Option<Vec<u8>> {
    let empty = |loss| Batch {
        seq,
        events: Vec::new(),
        alerts: Vec::new(),
        loss,
    };
    let spooled = vigil_proto::encode(&empty(vigil_proto::Loss::default())).ok()?;
    let request = vigil_proto::encode(&RequestRef::Publish(&empty(loss))).ok()?;
    if let (Some((head, tail)), Some((frame_head, frame_tail))) =
        (split_template(&spooled), split_template(&request))
    {
        if body.len() >= head.len() + tail.len() && body.starts_with(head) && body.ends_with(tail) {
            let lists = &body[head.len()..body.len() - tail.len()];
            let mut frame = Vec::with_capacity(frame_head.len() + lists.len() + frame_tail.len());
            frame.extend_from_slice(frame_head);
            frame.extend_from_slice(lists);
            frame.extend_from_slice(frame_tail);
            return Some(frame);
        }
    }
    let mut batch = crate::spool::decode_body(body, seq)?;
    batch.loss = loss;
    vigil_proto::encode(&RequestRef::Publish(&batch)).ok()
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

    fn sample_event(n: u64) -> Event {
        let mut event = Event::default();
        event.event.sequence = n;
        event.process.executable = format!("/usr/bin/tool{n}");
        event.process.args = vec!["tool".into(), format!("--n={n}")];
        event
    }

    #[test]
    fn publish_frames_from_spooled_bodies_are_the_publish_request() {
        let loss = vigil_proto::Loss {
            events_dropped: 7,
            alerts_dropped: 1,
            corrupt_records: u64::MAX,
        };
        let alert = Alert::new(
            vigil_proto::RuleInfo {
                id: "r".into(),
                title: "t".into(),
                level: vigil_proto::Level::High,
                tags: Vec::new(),
                description: None,
                author: None,
            },
            sample_event(99),
        );
        for (seq, events, alerts) in [
            (
                first_sequence(),
                (0..3).map(sample_event).collect(),
                Vec::new(),
            ),
            (1, Vec::new(), vec![alert.clone()]),
            (u64::MAX, Vec::new(), Vec::new()),
            (0, vec![sample_event(5)], vec![alert]),
        ] {
            let spooled = Batch {
                seq,
                events,
                alerts,
                loss: vigil_proto::Loss::default(),
            };
            let body = vigil_proto::encode(&spooled).unwrap();
            let frame = publish_frame(seq, &body, loss).expect("frame");
            let sent = Batch { loss, ..spooled };
            assert_eq!(
                frame,
                vigil_proto::encode(&RequestRef::Publish(&sent)).unwrap()
            );
            assert_eq!(
                vigil_proto::decode::<Request>(&frame).unwrap(),
                Request::Publish(sent)
            );
        }
    }

    #[test]
    fn a_body_of_another_shape_is_re_encoded_or_refused() {
        // Loss totals that are not the default: not what this version spools, still sent.
        let odd = Batch {
            seq: 3,
            events: vec![sample_event(1)],
            alerts: Vec::new(),
            loss: vigil_proto::Loss {
                events_dropped: 2,
                ..Default::default()
            },
        };
        let body = vigil_proto::encode(&odd).unwrap();
        let frame = publish_frame(3, &body, vigil_proto::Loss::default()).expect("frame");
        assert_eq!(
            vigil_proto::decode::<Request>(&frame).unwrap(),
            Request::Publish(Batch {
                loss: vigil_proto::Loss::default(),
                ..odd
            })
        );
        assert!(publish_frame(3, b"\x81\xa7version\x01", vigil_proto::Loss::default()).is_none());
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
