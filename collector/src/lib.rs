//! Vigil's collector: the central server sensors publish to and operators read from.
//!
//! It owns the collector side of the pipeline: mutually authenticated QUIC ingest (only peers
//! whose certificate chains to the deployment CA get in, and the certificate's role decides
//! what they may ask), durable storage (embedded SQLite, or PostgreSQL shared by several collectors) with per-sensor dedup (a batch is acked only
//! after it is committed), and alert fan-out to subscribed operators with replay from the
//! store, so `vigil tail` can resume without gaps.
//!
//! Tests and embedders use [`Collector::bind`] (port 0 works) and [`Collector::run`]; the
//! binary calls [`run`].

mod central_rules;
pub mod config;
mod console;
pub mod enroll;
pub mod health;
mod limits;
pub mod metrics;
pub mod outputs;
mod reload;
mod server;
pub mod store;

pub use config::{
    CentralRulesConfig, CollectorConfig, ConfigError, ConsoleConfig, EnrollConfig, TlsConfig,
};
pub use console::ConsoleError;
pub use limits::Stats;
pub use reload::ReloadHandle;
pub use server::{run, Collector, CollectorError};
pub use store::{Published, Store, StoreError};
