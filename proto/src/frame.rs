//! Requests and replies on QUIC bidirectional streams.
//!
//! One request per stream: a sensor opens a stream per batch (so alerts never queue behind a
//! bulk batch on the same stream) and waits for its [`Reply::Ack`]; an operator opens one
//! stream per query or subscription. Who may send what is decided by the certificate role,
//! never by anything inside a frame.

use serde::{Deserialize, Serialize};

use crate::{Alert, Event, RuleFetch, RulePush, SignedRuleSet, Timestamp, PROTOCOL_VERSION};

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
    /// No certificate, [`crate::ENROLL_ALPN`] only: a one-time token and a CSR; answered with
    /// [`Reply::Certificate`] for the name the token was issued for.
    Enroll(Enroll),
    /// Sensor role: a fresh certificate for the same name and key, before the current expires.
    Renew(Renew),
    /// Operator role: the collector's counters, as one [`Reply::Stats`].
    Stats,
    /// Operator role: a one-time sign-in link to the web console, as one [`Reply::ConsoleLogin`].
    ConsoleLogin,
    /// Operator role: validate, version and sign a rule set and serve it to sensors;
    /// answered with [`Reply::RulesPushed`].
    PushRules(RulePush),
    /// Sensor role: the central rule set, once there is one newer than the sensor has seen;
    /// answered with [`Reply::Rules`] (the stream stays open until then).
    FetchRules(RuleFetch),
    /// Operator role: a page of stored events, as one [`Reply::Events`] (what `vigil rules
    /// backtest` runs rules over).
    QueryEvents(EventQuery),
    /// Sensor role: how the sensor is doing, sent every `heartbeat_secs`; answered with
    /// [`Reply::StatusRecorded`]. A sensor silent for three heartbeats raises an alert.
    Heartbeat(SensorStatus),
    /// Operator role: every sensor that has sent a heartbeat, as one [`Reply::Sensors`].
    ListSensors,
}

/// What a sensor reports about itself. Every field defaults, so fields can be added.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SensorStatus {
    /// The host's name.
    pub host: String,
    /// The sensor's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// A digest of the rule files loaded (changes when any rule changes).
    pub rules_version: String,
    /// Rules loaded.
    pub rules: u32,
    /// `event:hook` for each attached kernel hook (e.g. `exec:tp_btf/sched_process_exec`).
    pub hooks: Vec<String>,
    /// Kernel records received since the sensor started.
    pub events_total: u64,
    /// Kernel records lost (ring buffer full) since the sensor started.
    pub kernel_drops: u64,
    /// Events and alerts dropped before reaching the collector (spool full, queue full).
    pub delivery_drops: u64,
    /// What the spool holds, waiting for acks.
    pub spool_batches: u64,
    pub spool_bytes: u64,
    /// Seconds between heartbeats; the collector calls the sensor silent after three.
    pub heartbeat_secs: u32,
}

/// A sensor as the collector knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SensorInfo {
    /// The sensor's certificate name.
    pub sensor: String,
    pub status: SensorStatus,
    /// When its last heartbeat arrived.
    pub last_seen: Timestamp,
    /// Kernel records per second between its last two heartbeats.
    pub events_per_sec: f64,
    /// Past its heartbeat window (a "sensor silent" alert was raised).
    pub silent: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventQuery {
    /// Events received at or after this time.
    pub since: Timestamp,
    /// Only events with a larger id: 0 first, then the last id of the previous page.
    pub after_id: i64,
    /// Most events in the page; the collector may return fewer (an empty page is the end).
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Enroll {
    /// As printed by `vigil certs token`; the collector stores only its hash.
    pub token: String,
    /// PKCS#10 request in PEM, signed by the key the sensor made (and keeps) for itself.
    pub csr_pem: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Renew {
    /// PKCS#10 request in PEM; its subject is ignored, the name comes from the peer's certificate.
    pub csr_pem: String,
}

/// Counters an operator can read; every peer-controlled limit that refuses something counts here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorStats {
    /// Requests refused because their frame was too large, truncated, undecodable, too deep,
    /// of another protocol version, or over the batch limit.
    pub rejected_frames: u64,
    /// Connections refused or closed: no/revoked/unusable certificate, or over a limit.
    pub refused_connections: u64,
    /// Requests refused because the peer's role may not make them.
    pub refused_requests: u64,
    /// Certificates issued by enrollment and renewal.
    pub certificates_issued: u64,
    /// Enrollment attempts refused (unknown, reused or expired token, bad CSR).
    pub refused_enrollments: u64,
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
    /// The first frame of every subscription: alerts with a larger id follow. For a live-only
    /// subscription it is the newest id stored when it began, so a client that loses the
    /// connection before it has seen any alert can still resume without a gap.
    Subscribed { after_id: i64 },
    /// One alert of a subscription.
    Alert(StoredAlert),
    /// The answer to a query, oldest first.
    Alerts(Vec<StoredAlert>),
    /// The request was refused; the reason is safe to show the peer.
    Refused { reason: String },
    /// An issued certificate (PEM) and the CA that signed it (PEM).
    Certificate { cert_pem: String, ca_pem: String },
    /// The answer to [`Request::Stats`].
    Stats(CollectorStats),
    /// The answer to [`Request::ConsoleLogin`]: open `url` in a browser within
    /// `expires_in_secs`; it signs in once, as the operator who asked.
    ConsoleLogin { url: String, expires_in_secs: u64 },
    /// The pushed set is stored and served as this version.
    RulesPushed { version: u64 },
    /// The central rule set, signed by the collector.
    Rules(SignedRuleSet),
    /// The answer to [`Request::QueryEvents`], in id order.
    Events(Vec<StoredEvent>),
    /// The heartbeat is recorded.
    StatusRecorded,
    /// The answer to [`Request::ListSensors`], by name.
    Sensors(Vec<SensorInfo>),
}

/// An event as the collector stored it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Collector-assigned, increasing: what the next page starts after.
    pub id: i64,
    /// The sensor's certificate name, as the collector authenticated it.
    pub sensor: String,
    pub received: Timestamp,
    pub event: Event,
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
