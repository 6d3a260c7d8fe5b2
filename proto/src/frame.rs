//! Requests and replies on QUIC bidirectional streams.
//!
//! One request per stream: a sensor opens a stream per batch (so alerts never queue behind a
//! bulk batch on the same stream) and waits for its [`Reply::Ack`]; an operator opens one
//! stream per query or subscription. Who may send what is decided by the certificate role,
//! never by anything inside a frame.

use serde::{Deserialize, Serialize};

use crate::{Alert, Event, Timestamp, PROTOCOL_VERSION};

/// Every frame on the wire is wrapped in a versioned envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub version: u16,
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(body: T) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            body,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Sensor role: store these, then ack `seq`.
    Publish(Batch),
    /// Operator role: stream alerts stored after `after_id`, then live ones, until the stream closes.
    Subscribe(Subscribe),
    /// Operator role: stored alerts matching the query, as one [`Reply::Alerts`].
    QueryAlerts(AlertQuery),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Per sensor, strictly increasing across restarts of the collector; the collector stores a
    /// (sensor, seq) once and acks duplicates without storing them again.
    pub seq: u64,
    pub events: Vec<Event>,
    pub alerts: Vec<Alert>,
    /// What this sensor has lost so far, as running totals. Totals rather than deltas, so a
    /// resent or deduplicated batch can neither double-count nor lose a count: the collector
    /// keeps the largest value it has seen. Absent from older sensors' batches.
    #[serde(default)]
    pub loss: Loss,
}

/// A sensor's loss totals since its spool was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    /// Events dropped before reaching the collector (spool over its size limit, queue full).
    #[serde(default)]
    pub events_dropped: u64,
    /// Alerts dropped likewise (only when no telemetry was left to drop first).
    #[serde(default)]
    pub alerts_dropped: u64,
    /// Spool records found damaged (torn write, flipped bytes) and skipped; each may have held
    /// many events.
    #[serde(default)]
    pub corrupt_records: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Replay stored alerts with a larger id first; `None` means live alerts only.
    pub after_id: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertQuery {
    /// Alerts received at or after this time.
    pub since: Timestamp,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
#[expect(
    clippy::large_enum_variant,
    reason = "replies are built once and written at once; boxing buys nothing"
)]
pub enum Reply {
    /// The batch with this sequence number is durably stored (or was already).
    Ack { seq: u64 },
    /// One alert of a subscription.
    Alert(StoredAlert),
    /// The answer to a query, oldest first.
    Alerts(Vec<StoredAlert>),
    /// The request was refused; the reason is safe to show the peer.
    Refused { reason: String },
}

/// An alert as the collector stored it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAlert {
    /// Collector-assigned, increasing: what `vigil tail` resumes from.
    pub id: i64,
    /// The sensor's certificate name, as the collector authenticated it.
    pub sensor: String,
    pub received: Timestamp,
    pub alert: Alert,
}
