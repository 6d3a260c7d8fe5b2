//! Bounds on what a peer controls that the transport config cannot express, and the counters
//! every refusal increments (readable by operators with a stats request).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vigil_proto::CollectorStats;

/// Connections one certificate name may hold at once. A sensor needs one (plus one while it
/// reconnects or renews); an operator a few (`vigil tail` and queries). A stolen or buggy
/// certificate cannot take every slot of [`crate::server`]'s global limit.
pub const MAX_CONNECTIONS_PER_PEER: usize = 16;

/// Events plus alerts in one batch. Sensors send at most 512; the frame size bounds the bytes,
/// this bounds the number of rows one commit may be asked to write.
pub const MAX_BATCH_ITEMS: usize = 65_536;

/// Rejections logged in full per connection; after that, one line per [`LOG_EVERY`], so a peer
/// flooding garbage cannot flood the log too (the counter still counts every one).
const LOG_FIRST: u64 = 10;
const LOG_EVERY: u64 = 1000;

/// The collector's counters; every field of [`CollectorStats`] has one here.
#[derive(Debug, Default)]
pub struct Stats {
    rejected_frames: AtomicU64,
    refused_connections: AtomicU64,
    refused_requests: AtomicU64,
    certificates_issued: AtomicU64,
    refused_enrollments: AtomicU64,
}

impl Stats {
    pub fn rejected_frame(&self) {
        self.rejected_frames.fetch_add(1, Ordering::Relaxed);
    }
    pub fn refused_connection(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }
    pub fn refused_request(&self) {
        self.refused_requests.fetch_add(1, Ordering::Relaxed);
    }
    pub fn certificate_issued(&self) {
        self.certificates_issued.fetch_add(1, Ordering::Relaxed);
    }
    pub fn refused_enrollment(&self) {
        self.refused_enrollments.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CollectorStats {
        let Self {
            rejected_frames,
            refused_connections,
            refused_requests,
            certificates_issued,
            refused_enrollments,
        } = self;
        CollectorStats {
            rejected_frames: rejected_frames.load(Ordering::Relaxed),
            refused_connections: refused_connections.load(Ordering::Relaxed),
            refused_requests: refused_requests.load(Ordering::Relaxed),
            certificates_issued: certificates_issued.load(Ordering::Relaxed),
            refused_enrollments: refused_enrollments.load(Ordering::Relaxed),
        }
    }
}

/// Per connection: how many of its frames were rejected, to decide which to log.
#[derive(Debug, Default)]
pub struct RejectLog(AtomicU64);

impl RejectLog {
    /// Counts one rejection; returns the count when this one should be logged.
    pub fn should_log(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= LOG_FIRST || n.is_multiple_of(LOG_EVERY)).then_some(n)
    }
}

/// Open connections per certificate name.
#[derive(Debug, Default)]
pub struct PeerSlots(Mutex<HashMap<String, usize>>);

/// One connection's place in [`PeerSlots`]; dropping it frees the place.
pub struct PeerSlot {
    slots: Arc<PeerSlots>,
    name: String,
}

impl PeerSlots {
    /// Takes a place for `name`, or `None` when it already holds [`MAX_CONNECTIONS_PER_PEER`].
    pub fn try_take(self: &Arc<Self>, name: &str) -> Option<PeerSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(name.to_owned()).or_default();
        if *count >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            slots: self.clone(),
            name: name.to_owned(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.slots.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_its_share_of_slots_and_gets_them_back() {
        let slots = Arc::new(PeerSlots::default());
        let held: Vec<_> = (0..MAX_CONNECTIONS_PER_PEER)
            .map(|_| slots.try_take("web-1").expect("a slot under the limit"))
            .collect();
        assert!(slots.try_take("web-1").is_none(), "over the limit");
        assert!(
            slots.try_take("web-2").is_some(),
            "another peer is not affected"
        );
        drop(held);
        assert!(slots.try_take("web-1").is_some(), "slots come back");
    }

    #[test]
    fn floods_are_logged_sparsely_but_counted_fully() {
        let log = RejectLog::default();
        let logged = (0..10_000).filter(|_| log.should_log().is_some()).count();
        assert_eq!(logged, 10 + 10);
    }
}
