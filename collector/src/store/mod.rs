//! Storage behind one interface, two engines: embedded SQLite (the default, one collector) and
//! PostgreSQL (`store: postgres://...`, a fleet with several collectors on one database).
//!
//! Both keep the same promises, checked by one test suite (`collector/tests/storage.rs`):
//! a batch is stored in one transaction and only then acknowledged; a (sensor, seq) is stored
//! once, even when two collectors receive it; alert ids only grow and are never reused, and an
//! alert with a larger id is never visible before a smaller one (what `vigil tail` resumes
//! from); schema migrations are versioned and run at open; retention prunes old rows without
//! holding ingest back.
//!
//! Each engine also feeds the live alert broadcast, in id order and only after commit: SQLite
//! from its writer thread, PostgreSQL from a LISTEN connection that reads what any collector
//! committed.

mod leadership;
pub mod pg_tls;
mod postgres;
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
pub use vigil_proto::StoredEvent;
use vigil_proto::{Alert, Batch, Loss, SensorInfo, SensorStatus, StoredAlert, Timestamp};

pub use leadership::LeaderSession;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// What a storage call returns: boxed so that [`Storage`] can be a trait object chosen at start.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// The storage interface the server uses; each engine implements it.
pub trait Storage: Send + Sync {
    /// Stores a batch from `sensor` in one transaction; returns once it is committed.
    fn publish(&self, sensor: String, batch: Batch) -> StoreFuture<'_, Published>;
    /// Up to `limit` alerts with an id above `after_id`, in id order.
    fn alerts_after(&self, after_id: i64, limit: u32) -> StoreFuture<'_, Vec<StoredAlert>>;
    /// Up to `limit` alerts received at or after `since`, in id order, stopping early once their
    /// JSON passes `byte_budget` (so the answer fits in one frame).
    fn alerts_since(
        &self,
        since: Timestamp,
        limit: u32,
        byte_budget: usize,
    ) -> StoreFuture<'_, Vec<StoredAlert>>;
    /// The largest alert id stored so far (0 when there is none).
    fn last_alert_id(&self) -> StoreFuture<'_, i64>;
    /// Up to `limit` events received at or after `since` with an id above `after_id`, in id
    /// order (paging: pass the last id seen).
    fn events_since(
        &self,
        since: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<StoredEvent>>;
    /// Housekeeping as of `now`: prepares what ingest will need next (PostgreSQL: the coming
    /// days' event partitions) and deletes what `retention` no longer keeps. Works in small
    /// steps so that ingest runs between them.
    fn maintain(&self, now: Timestamp, retention: Retention) -> StoreFuture<'_, ()>;
    /// Records `sensor`'s heartbeat, received at `now`, and clears its silence; returns how many
    /// kernel drops it reports beyond its previous heartbeat (all of them after a restart).
    fn record_status(
        &self,
        sensor: String,
        status: SensorStatus,
        now: Timestamp,
    ) -> StoreFuture<'_, u64>;
    /// Marks as silent every sensor whose heartbeat window ended before `now` and returns the
    /// ones it marked: each silent spell is claimed once, by one collector. The window counts
    /// from `watching_since` at the earliest: heartbeats a stopped collector could not receive
    /// are not the sensor's silence.
    fn claim_silent(
        &self,
        now: Timestamp,
        watching_since: Timestamp,
    ) -> StoreFuture<'_, Vec<SensorInfo>>;
    /// Every sensor that sent a heartbeat, by name.
    fn sensors(&self) -> StoreFuture<'_, Vec<SensorInfo>>;
    /// The SQLite engine behind this store, for readers that speak its SQL (the web console);
    /// `None` for other engines.
    fn as_sqlite(&self) -> Option<&SqliteStore> {
        None
    }
    /// The PostgreSQL engine behind this store, for readers that speak its SQL (the web
    /// console); `None` for other engines.
    fn as_postgres(&self) -> Option<&PgStore> {
        None
    }
}

/// Heartbeats a sensor may miss before it counts as silent.
pub const SILENT_AFTER_HEARTBEATS: u64 = 3;

/// When a sensor that reported `status` at `now` becomes silent, as stored nanoseconds.
pub(crate) fn silent_after_ns(status: &SensorStatus, now: Timestamp) -> i64 {
    let window = u64::from(status.heartbeat_secs.max(1)) * SILENT_AFTER_HEARTBEATS * 1_000_000_000;
    to_sql_ns(now).saturating_add(i64::try_from(window).unwrap_or(i64::MAX))
}

/// New kernel drops between two running totals; a smaller total means the sensor restarted.
pub(crate) fn new_drops(before: Option<i64>, now: u64) -> u64 {
    let before = before.and_then(|b| u64::try_from(b).ok());
    match before {
        Some(before) if now >= before => now - before,
        _ => now,
    }
}

/// A sensor row as both engines store it.
pub(crate) struct SensorRow {
    pub sensor: String,
    pub status_json: String,
    pub last_seen_ns: i64,
    pub events_total: i64,
    pub prev_events_total: i64,
    pub prev_seen_ns: i64,
    pub silent: i64,
}

impl SensorRow {
    pub fn into_info(self) -> Result<SensorInfo, StoreError> {
        let SensorRow {
            sensor,
            status_json,
            last_seen_ns,
            events_total,
            prev_events_total,
            prev_seen_ns,
            silent,
        } = self;
        let status: SensorStatus =
            serde_json::from_str(&status_json).map_err(|source| StoreError::Corrupt {
                what: "sensor status",
                id: 0,
                source,
            })?;
        let seconds = (last_seen_ns - prev_seen_ns) as f64 / 1e9;
        let events = events_total.saturating_sub(prev_events_total);
        let events_per_sec = if seconds > 0.0 && events >= 0 {
            events as f64 / seconds
        } else {
            0.0
        };
        Ok(SensorInfo {
            sensor,
            status,
            last_seen: from_sql_ns(last_seen_ns),
            events_per_sec,
            silent: silent != 0,
        })
    }
}

/// A batch turned into the rows both engines write: each event and alert encoded to JSON once,
/// by the connection that received it, so the single SQLite writer (or the PostgreSQL
/// transaction) only inserts.
pub(crate) struct EncodedBatch {
    pub seq: u64,
    pub loss: Loss,
    pub events: Vec<EventRow>,
    pub alerts: Vec<AlertRow>,
}

/// An event as stored: the columns it is found by, and its JSON.
pub(crate) struct EventRow {
    pub ts_ns: i64,
    pub action: &'static str,
    pub json: String,
}

/// An alert and its JSON.
pub(crate) struct AlertRow {
    pub alert: Alert,
    pub json: String,
}

impl EncodedBatch {
    pub fn encode(batch: Batch) -> Result<Self, StoreError> {
        let Batch {
            seq,
            events,
            alerts,
            loss,
        } = batch;
        let events = events
            .iter()
            .map(|event| {
                Ok(EventRow {
                    ts_ns: to_sql_ns(event.timestamp),
                    action: event.event.action.as_str(),
                    json: serde_json::to_string(event).map_err(StoreError::Encode)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let alerts = alerts
            .into_iter()
            .map(|alert| {
                let json = serde_json::to_string(&alert).map_err(StoreError::Encode)?;
                Ok(AlertRow { alert, json })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            seq,
            loss,
            events,
            alerts,
        })
    }
}

/// What became of a published batch.
#[derive(Debug, PartialEq)]
pub enum Published {
    /// Committed now, with these alerts (ids assigned). NB: outputs and `vigil tail` do not
    /// hook in here but follow the store's feed, which also carries alerts other collectors
    /// stored; with several collectors, one of them leads the outputs (`crate::outputs`).
    Stored { alerts: Vec<StoredAlert> },
    /// This (sensor, seq) was stored before; nothing was written.
    Duplicate,
}

/// Where the collector keeps its data.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// An SQLite file, created with its directory and schema when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (`postgres://user@host:port/db`).
    Postgres(PostgresUrl),
}

/// A PostgreSQL URL; Debug and Display leave out the password. libpq's TLS keys (`sslmode`,
/// `sslrootcert`, `sslcert`, `sslkey`) are taken out and kept apart (see [`pg_tls`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PostgresUrl {
    /// As written (what the config serializes back to).
    text: String,
    /// Without the TLS keys: what tokio-postgres parses.
    rest: String,
    tls: pg_tls::TlsParams,
}

impl PostgresUrl {
    /// The URL as written, TLS keys included.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The TLS settings.
    pub fn tls(&self) -> &pg_tls::TlsParams {
        &self.tls
    }

    pub(crate) fn config(&self) -> tokio_postgres::Config {
        // Checked when the value was made.
        let mut config: tokio_postgres::Config = self.rest.parse().unwrap_or_default();
        config.ssl_mode(self.tls.tokio_mode());
        config
    }
}

impl TryFrom<String> for PostgresUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(format!(
                "expected a postgres://user@host:port/database URL, got {:?} (leave `store` out to use SQLite at `database`)",
                redact(&text)
            ));
        }
        let (rest, tls) = pg_tls::split_url(&text)
            .map_err(|e| format!("bad PostgreSQL URL {:?}: {e}", redact(&text)))?;
        match rest.parse::<tokio_postgres::Config>() {
            Ok(_) => Ok(Self { text, rest, tls }),
            Err(e) => Err(format!("bad PostgreSQL URL {:?}: {e}", redact(&text))),
        }
    }
}

impl From<PostgresUrl> for String {
    fn from(url: PostgresUrl) -> String {
        url.text
    }
}

/// The URL without a password (`postgres://user:secret@host` -> `postgres://user:***@host`, and
/// `?password=secret` -> `?password=***`).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<&str> = query
                .split('&')
                .map(|pair| {
                    if pair.starts_with("password=") {
                        "password=***"
                    } else {
                        pair
                    }
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.text))
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

impl fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreTarget::Sqlite(path) => write!(f, "sqlite {}", path.display()),
            StoreTarget::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl fmt::Debug for StoreTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How long each table keeps its rows (`retention: {events: 7d, alerts: 90d}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Events are bulky; a week covers an investigation's look back. PostgreSQL drops whole
    /// days (partitions), so an event may outlive this by up to a day.
    #[serde(with = "human_duration")]
    pub events: Duration,
    /// Alerts are few and are the record of what happened.
    #[serde(with = "human_duration")]
    pub alerts: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            events: Duration::from_secs(7 * 86_400),
            alerts: Duration::from_secs(90 * 86_400),
        }
    }
}

impl Retention {
    /// Dedup records must outlive every row a resent batch could duplicate.
    pub(crate) fn batches(&self) -> Duration {
        self.events.max(self.alerts)
    }
}

/// `7d`, `36h`, `90days` in YAML (humantime's syntax).
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        let duration = humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("bad duration {text:?} (e.g. 7d, 36h): {e}"))
        })?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "a retention of 0 would delete everything as it arrives",
            ));
        }
        Ok(duration)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, permissions, corruption...).
    #[error("database {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL failed or could not be reached.
    #[error("{target}: {}", postgres::describe(source))]
    Postgres {
        /// The URL, without its password.
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A file named by the store URL's TLS keys (`sslrootcert`...) cannot be used.
    #[error(transparent)]
    PostgresTls(#[from] pg_tls::TlsFileError),
    /// The database's directory could not be created.
    #[error("cannot create database directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer collector; refusing beats corrupting it.
    #[error("database {target} has schema version {found}, newer than the {supported} this collector knows")]
    NewerSchema {
        target: String,
        found: i64,
        supported: usize,
    },
    /// A stored alert's or event's JSON no longer parses: a bug or outside tampering.
    #[error("stored {what} {id} is unreadable: {source}")]
    Corrupt {
        what: &'static str,
        id: i64,
        #[source]
        source: serde_json::Error,
    },
    /// An event or alert could not be turned into JSON (cannot happen for these types).
    #[error("cannot encode for storage: {0}")]
    Encode(#[source] serde_json::Error),
    /// The writer thread could not be started.
    #[error("cannot start the storage writer thread: {0}")]
    SpawnWriter(#[source] std::io::Error),
    /// Work on a blocking thread (opening, a read) panicked or was cancelled: a bug.
    #[error("a storage task failed unexpectedly")]
    TaskFailed,
    /// The writer thread is gone (it only stops at shutdown, or after a panic).
    #[error("the storage writer has stopped")]
    WriterGone,
    /// A reader that knows neither engine's SQL was used with this store.
    #[error("{what} does not work with this store")]
    Unsupported { what: &'static str },
}

/// A cheap handle to the store: clone it into every connection.
#[derive(Clone)]
pub struct Store(Arc<dyn Storage>);

impl std::ops::Deref for Store {
    type Target = dyn Storage;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Store {
    /// Stores a batch, counting it in the collector's metrics.
    pub async fn publish_measured(
        &self,
        sensor: String,
        batch: Batch,
    ) -> Result<Published, StoreError> {
        let started = std::time::Instant::now();
        let (events, alerts) = (batch.events.len(), batch.alerts.len());
        let metric_sensor = crate::metrics::collector_metrics().map(|_| sensor.clone());
        let result = self.0.publish(sensor, batch).await;
        if let (Some(metrics), Some(sensor)) = (crate::metrics::collector_metrics(), metric_sensor)
        {
            let outcome = match &result {
                Ok(Published::Stored { .. }) => "stored",
                Ok(Published::Duplicate) => "duplicate",
                Err(_) => "failed",
            };
            metrics.batch(&sensor, outcome, events, alerts, started.elapsed());
        }
        result
    }
}

/// What stops the engine's background work; call [`Closer::close`] after every [`Store`] handle
/// is dropped, so queued batches are committed before the process exits.
pub struct Closer(CloserKind);

enum CloserKind {
    Sqlite(sqlite::Writer),
    Postgres(postgres::Background),
}

impl Closer {
    pub async fn close(self) {
        match self.0 {
            CloserKind::Sqlite(writer) => {
                if tokio::task::spawn_blocking(move || writer.join())
                    .await
                    .is_err()
                {
                    tracing::error!("storage writer could not be joined");
                }
            }
            CloserKind::Postgres(background) => background.stop().await,
        }
    }
}

/// Opens (creating and migrating if needed) the store at `target`. Committed alerts are sent on
/// `alerts`, in id order.
pub async fn open(
    target: &StoreTarget,
    alerts: broadcast::Sender<StoredAlert>,
) -> Result<(Store, Closer), StoreError> {
    match target {
        StoreTarget::Sqlite(path) => {
            let path = path.clone();
            let (store, writer) =
                tokio::task::spawn_blocking(move || SqliteStore::open(&path, alerts))
                    .await
                    .map_err(|_| StoreError::TaskFailed)??;
            Ok((Store(Arc::new(store)), Closer(CloserKind::Sqlite(writer))))
        }
        StoreTarget::Postgres(url) => {
            let (store, background) = PgStore::open(url, alerts).await?;
            Ok((
                Store(store as Arc<dyn Storage>),
                Closer(CloserKind::Postgres(background)),
            ))
        }
    }
}

/// Nanoseconds since 1970 as the databases' signed 64-bit integers; fits until 2262, clamps after.
pub(crate) fn to_sql_ns(t: Timestamp) -> i64 {
    i64::try_from(t.unix_nanos()).unwrap_or(i64::MAX)
}

pub(crate) fn from_sql_ns(ns: i64) -> Timestamp {
    Timestamp(u64::try_from(ns).unwrap_or(0))
}

/// `now - keep`, as stored nanoseconds (0 when `keep` reaches before 1970).
pub(crate) fn cutoff_ns(now: Timestamp, keep: Duration) -> i64 {
    let keep = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
    to_sql_ns(now).saturating_sub(keep).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        let url = PostgresUrl::try_from("postgres://vigil:hunter2@db:5432/vigil".to_owned())
            .expect("valid url");
        assert_eq!(url.to_string(), "postgres://vigil:***@db:5432/vigil");
        assert!(!format!("{url:?}").contains("hunter2"));
        let plain = PostgresUrl::try_from("postgresql://vigil@db/vigil".to_owned()).expect("ok");
        assert_eq!(plain.to_string(), "postgresql://vigil@db/vigil");
    }

    #[test]
    fn a_store_that_is_not_a_postgres_url_is_refused() {
        let err = PostgresUrl::try_from("mysql://x".to_owned()).expect_err("not postgres");
        assert!(err.contains("postgres://"), "{err}");
    }

    #[test]
    fn bad_tls_keys_are_refused_without_showing_the_password() {
        for url in [
            "postgres://vigil:hunter2@db/vigil?sslmode=strict",
            "postgres://vigil@db/vigil?password=hunter2&sslmode=verify-full",
        ] {
            let err = PostgresUrl::try_from(url.to_owned()).expect_err(url);
            assert!(err.contains("sslmode"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let url = PostgresUrl::try_from(
            "postgres://vigil@db/vigil?password=hunter2&sslmode=require".to_owned(),
        )
        .expect("valid");
        assert_eq!(
            url.to_string(),
            "postgres://vigil@db/vigil?password=***&sslmode=require"
        );
        assert_eq!(
            url.config().get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }
}
