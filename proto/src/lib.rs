//! The wire schema shared by the sensor, the collector and the CLI.
//!
//! Three things live here and nowhere else: the enriched, ECS-shaped [`Event`] and [`Alert`]
//! (serialized as JSON at the edges and as MessagePack maps on the wire, so fields can be added
//! without breaking older peers), the request/reply [`Frame`]s exchanged over QUIC streams, and
//! the length-prefixed codec that carries them. Nothing here knows the kernel record layout.

mod codec;
mod event;
mod frame;
mod rules;
mod time;
#[cfg(feature = "transport")]
pub mod transport;
#[cfg(feature = "transport")]
pub mod trust;

pub use codec::{decode, encode, read_frame, write_frame, FrameError, MAX_FRAME_BYTES};
pub use event::{
    Alert, Container, CorrelationInfo, DedupInfo, Dns, DnsQuestion, Endpoint, ErrorInfo, Event,
    EventAction, EventMeta, File, Hash, Host, Level, LossContext, Network, ParentProcess, Process,
    Response, RuleInfo, Target, UserRef,
};
pub use frame::{
    AlertQuery, Batch, CollectorStats, Enroll, Envelope, EventQuery, Loss, Renew, Reply, Request,
    SensorInfo, SensorStatus, StoredAlert, StoredEvent, Subscribe,
};
pub use rules::{
    RuleFetch, RulePush, RuleSetShapeError, SignedRuleSet, MAX_RULE_FILES, MAX_RULE_SET_BYTES,
};
pub use time::Timestamp;

/// Bumped when a frame changes incompatibly; peers refuse envelopes of another version.
pub const PROTOCOL_VERSION: u16 = 1;

/// The QUIC ALPN token of this protocol version.
pub const ALPN: &[u8] = b"vigil/1";

/// The ALPN of enrollment: the only connections a client may make without a certificate, on
/// which the collector serves one [`Request::Enroll`] and nothing else.
pub const ENROLL_ALPN: &[u8] = b"vigil-enroll/1";
