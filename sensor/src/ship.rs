//! Events and alerts to the collector over mutually authenticated QUIC.
//!
//! A batcher groups telemetry (up to [`MAX_BATCH_EVENTS`] or [`BATCH_WINDOW`]) and sends each
//! alert alone at once; a sender delivers batches one stream each, alerts before telemetry,
//! retrying a batch until the collector acks it (so a collector restart loses nothing that the
//! bounded queues still hold), reconnecting with jittered exponential backoff. Every queue is
//! bounded and every drop is counted in [`ShipStats`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;
use vigil_proto::transport::{self, TlsFiles};
#[cfg(test)]
use vigil_proto::Request;
use vigil_proto::{read_frame, write_frame, Alert, Batch, Event, Reply};

pub const MAX_BATCH_EVENTS: usize = 512;
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// Batches waiting for the collector, per class, before the oldest new ones are dropped.
pub const QUEUE_BATCHES: usize = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Replies are tiny; anything larger is a broken peer.
const MAX_REPLY_BYTES: usize = 64 * 1024;

#[derive(Debug)]
pub enum Outgoing {
    Event(Box<Event>),
    Alert(Box<Alert>),
}

#[derive(Clone, Debug)]
pub struct CollectorTarget {
    pub address: SocketAddr,
    pub server_name: String,
    pub tls: TlsFiles,
}

#[derive(Debug, Default)]
pub struct ShipStats {
    pub events_dropped: AtomicU64,
    pub alerts_dropped: AtomicU64,
    pub batches_acked: AtomicU64,
}

/// Sequence numbers must grow across sensor restarts (the collector drops a (sensor, seq) it
/// has seen), so they start from the start time in ms shifted above a per-run counter.
pub fn first_sequence() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    ms << 20
}

/// Runs until `rx` closes and everything queued is delivered, or `give_up` fires.
pub async fn run(
    target: CollectorTarget,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<ShipStats>,
    give_up: impl std::future::Future<Output = ()>,
) -> Result<(), transport::TransportError> {
    let endpoint = transport::client_endpoint(&target.tls)?;
    let (alert_tx, alert_rx) = mpsc::channel::<Batch>(QUEUE_BATCHES);
    let (event_tx, event_rx) = mpsc::channel::<Batch>(QUEUE_BATCHES);
    let batch_stats = stats.clone();
    let batcher = async move {
        let mut seq = first_sequence();
        let mut next_seq = move || {
            seq += 1;
            seq
        };
        let mut events = Vec::new();
        let mut deadline = Instant::now() + BATCH_WINDOW;
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                () = tokio::time::sleep_until(deadline), if !events.is_empty() => {
                    flush(&mut events, &event_tx, next_seq(), &batch_stats);
                    continue;
                }
            };
            match item {
                Some(Outgoing::Alert(alert)) => {
                    let batch = Batch {
                        seq: next_seq(),
                        events: Vec::new(),
                        alerts: vec![*alert],
                    };
                    if alert_tx.try_send(batch).is_err() {
                        batch_stats.alerts_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Outgoing::Event(event)) => {
                    if events.is_empty() {
                        deadline = Instant::now() + BATCH_WINDOW;
                    }
                    events.push(*event);
                    if events.len() >= MAX_BATCH_EVENTS {
                        flush(&mut events, &event_tx, next_seq(), &batch_stats);
                    }
                }
                None => {
                    if !events.is_empty() {
                        flush(&mut events, &event_tx, next_seq(), &batch_stats);
                    }
                    return;
                }
            }
        }
    };
    let sender = send_loop(&endpoint, &target, alert_rx, event_rx, &stats);
    tokio::select! {
        ((), ()) = async { tokio::join!(batcher, sender) } => {}
        () = give_up => tracing::warn!("delivery stopped before the queue emptied"),
    }
    endpoint.close(0u32.into(), b"sensor stopping");
    Ok(())
}

fn flush(events: &mut Vec<Event>, tx: &mpsc::Sender<Batch>, seq: u64, stats: &ShipStats) {
    let events = std::mem::take(events);
    let count = events.len() as u64;
    let batch = Batch {
        seq,
        events,
        alerts: Vec::new(),
    };
    if tx.try_send(batch).is_err() {
        stats.events_dropped.fetch_add(count, Ordering::Relaxed);
    }
}

async fn send_loop(
    endpoint: &quinn::Endpoint,
    target: &CollectorTarget,
    mut alerts: mpsc::Receiver<Batch>,
    mut events: mpsc::Receiver<Batch>,
    stats: &ShipStats,
) {
    let mut conn: Option<quinn::Connection> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        // Alerts first, always: they never wait behind telemetry.
        let batch = tokio::select! {
            biased;
            Some(batch) = alerts.recv() => batch,
            Some(batch) = events.recv() => batch,
            else => return,
        };
        loop {
            let live = match &conn {
                Some(c) if c.close_reason().is_none() => c.clone(),
                _ => {
                    match transport::connect(endpoint, target.address, &target.server_name).await {
                        Ok(c) => {
                            tracing::info!(collector = %target.address, "connected to collector");
                            backoff = BACKOFF_MIN;
                            conn = Some(c.clone());
                            c
                        }
                        Err(e) => {
                            tracing::warn!(collector = %target.address, error = %e, retry_in = ?backoff, "collector unreachable");
                            sleep_backoff(&mut backoff).await;
                            continue;
                        }
                    }
                }
            };
            match deliver(&live, &batch).await {
                Ok(()) => {
                    stats.batches_acked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(reason) => {
                    tracing::warn!(seq = batch.seq, %reason, "batch not acked; will resend");
                    conn = None;
                    sleep_backoff(&mut backoff).await;
                }
            }
        }
    }
}

async fn deliver(conn: &quinn::Connection, batch: &Batch) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    // NB: the request is cloned into the frame by reference only; the batch stays ours to
    // resend until acked.
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
