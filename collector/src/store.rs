//! SQLite storage. One writer thread owns the only writing connection and commits each batch in
//! its own transaction; readers open their own read-only connections on blocking threads (WAL
//! lets them run beside the writer). Nothing here ever blocks the async runtime.
//!
//! The writer is also where new alerts enter the fan-out: it broadcasts a batch's alerts right
//! after the commit, in commit order, so subscribers see ids in increasing order and never an
//! alert that is not yet stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};
use vigil_proto::{Alert, Batch, Loss, StoredAlert, Timestamp};

/// Batches waiting for the writer. Ingest waits for room, so a slow disk slows sensors down
/// (they keep spooling) instead of growing memory here.
const WRITE_QUEUE: usize = 64;

/// How long a reader waits for a lock (WAL readers only contend during checkpoints).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // v1. AUTOINCREMENT so that alert ids are never reused, even after old alerts are deleted:
    // `vigil tail` resumes from an id and must not skip a newer alert that got an old id.
    "CREATE TABLE batches (
         sensor TEXT NOT NULL,
         seq INTEGER NOT NULL,
         received_ns INTEGER NOT NULL,
         PRIMARY KEY (sensor, seq)
     ) WITHOUT ROWID;
     CREATE TABLE events (
         id INTEGER PRIMARY KEY,
         sensor TEXT NOT NULL,
         ts_ns INTEGER NOT NULL,
         action TEXT NOT NULL,
         json TEXT NOT NULL
     );
     CREATE INDEX events_sensor_ts ON events (sensor, ts_ns);
     CREATE TABLE alerts (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         sensor TEXT NOT NULL,
         received_ns INTEGER NOT NULL,
         rule_id TEXT NOT NULL,
         level TEXT NOT NULL,
         title TEXT NOT NULL,
         json TEXT NOT NULL
     );
     CREATE INDEX alerts_received ON alerts (received_ns);",
    // v2. Loss totals each sensor reports (running totals: the largest value seen wins).
    "CREATE TABLE sensor_loss (
         sensor TEXT PRIMARY KEY,
         events_dropped INTEGER NOT NULL,
         alerts_dropped INTEGER NOT NULL,
         corrupt_records INTEGER NOT NULL,
         updated_ns INTEGER NOT NULL
     ) WITHOUT ROWID;",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, permissions, corruption...).
    #[error("database {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    /// The database's directory could not be created.
    #[error("cannot create database directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer collector; refusing beats corrupting it.
    #[error("database {} has schema version {found}, newer than the {supported} this collector knows", path.display())]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: usize,
    },
    /// A stored alert's JSON no longer parses: a bug or outside tampering.
    #[error("stored alert {id} is unreadable: {source}")]
    CorruptAlert {
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
}

/// What became of a published batch.
#[derive(Debug, PartialEq)]
pub enum Published {
    /// Committed now; this many alerts were stored (and broadcast).
    Stored { alerts: usize },
    /// This (sensor, seq) was stored before; nothing was written.
    Duplicate,
}

struct WriteRequest {
    sensor: String,
    batch: Batch,
    reply: oneshot::Sender<Result<Published, StoreError>>,
}

/// A cheap handle to the store: clone it into every connection.
#[derive(Clone)]
pub struct Store {
    path: Arc<Path>,
    writes: mpsc::Sender<WriteRequest>,
}

/// The writer thread; join it after every [`Store`] handle is dropped, so queued batches are
/// committed before the process exits.
pub struct Writer(JoinHandle<()>);

impl Writer {
    /// Blocks until the writer has drained its queue and closed the database.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("storage writer thread panicked");
        }
    }
}

impl Store {
    /// Opens (creating and migrating if needed) the database and starts the writer thread.
    /// Blocking: call from a blocking context.
    pub fn open(
        path: &Path,
        alerts: broadcast::Sender<StoredAlert>,
    ) -> Result<(Store, Writer), StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.to_owned(),
            source,
        };
        // A fresh install has no /var/lib/vigil yet; SQLite creates the file but not its directory.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                dir: dir.to_owned(),
                source,
            })?;
        }
        let mut conn = Connection::open(path).map_err(sqlite)?;
        // WAL: readers never block the writer. FULL: a commit is on disk when it returns,
        // which is what an ack promises the sensor.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
        migrate(&mut conn, path)?;

        let path: Arc<Path> = Arc::from(path);
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-store".into())
            .spawn(move || write_loop(conn, &thread_path, queue, alerts))
            .map_err(StoreError::SpawnWriter)?;
        Ok((Store { path, writes }, Writer(thread)))
    }

    /// Stores a batch from `sensor` in one transaction; returns once it is committed.
    pub async fn publish(&self, sensor: String, batch: Batch) -> Result<Published, StoreError> {
        let started = std::time::Instant::now();
        let (events, alerts) = (batch.events.len(), batch.alerts.len());
        let metric_sensor = crate::metrics::collector_metrics().map(|_| sensor.clone());
        let result = self.publish_unmeasured(sensor, batch).await;
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

    async fn publish_unmeasured(
        &self,
        sensor: String,
        batch: Batch,
    ) -> Result<Published, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteRequest {
                sensor,
                batch,
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Up to `limit` alerts with an id above `after_id`, in id order.
    pub async fn alerts_after(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        self.read(move |conn, path| {
            select_alerts(
                conn,
                path,
                "SELECT id, sensor, received_ns, json FROM alerts WHERE id > ?1 ORDER BY id LIMIT ?2",
                after_id,
                limit,
                usize::MAX,
            )
        })
        .await
    }

    /// Up to `limit` alerts received at or after `since`, oldest first, stopping early once
    /// their JSON passes `byte_budget` (so the answer fits in one frame).
    pub async fn alerts_since(
        &self,
        since: Timestamp,
        limit: u32,
        byte_budget: usize,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        self.read(move |conn, path| {
            select_alerts(
                conn,
                path,
                "SELECT id, sensor, received_ns, json FROM alerts WHERE received_ns >= ?1 ORDER BY id LIMIT ?2",
                to_sql_ns(since),
                limit,
                byte_budget,
            )
        })
        .await
    }

    /// The largest alert id stored so far (0 when there is none).
    pub async fn last_alert_id(&self) -> Result<i64, StoreError> {
        self.read(|conn, path| {
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM alerts", [], |row| {
                row.get(0)
            })
            .map_err(|source| StoreError::Sqlite {
                path: path.to_owned(),
                source,
            })
        })
        .await
    }

    /// Runs `query` on a read-only connection on a blocking thread. Crate-visible so that the
    /// console's queries (collector/src/console/queries.rs) stay out of this file.
    pub(crate) async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|conn| conn.busy_timeout(BUSY_TIMEOUT).map(|()| conn))
            .map_err(|source| StoreError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
            query(&conn, &path)
        })
        .await
        // A panic in a query is a bug; report it as a storage failure rather than unwinding
        // through the connection task.
        .map_err(|_| StoreError::TaskFailed)?
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(sqlite)?;
    let applied = usize::try_from(version).unwrap_or(usize::MAX);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction().map_err(sqlite)?;
        tx.execute_batch(sql).map_err(sqlite)?;
        tx.pragma_update(None, "user_version", index + 1)
            .map_err(sqlite)?;
        tx.commit().map_err(sqlite)?;
        tracing::info!(database = %path.display(), version = index + 1, "migrated database schema");
    }
    Ok(())
}

fn write_loop(
    mut conn: Connection,
    path: &Path,
    mut queue: mpsc::Receiver<WriteRequest>,
    alerts: broadcast::Sender<StoredAlert>,
) {
    while let Some(WriteRequest {
        sensor,
        batch,
        reply,
    }) = queue.blocking_recv()
    {
        let result = store_batch(&mut conn, path, &sensor, batch).map(|stored| match stored {
            None => Published::Duplicate,
            Some(stored) => {
                let count = stored.len();
                for alert in stored {
                    // No subscriber is not an error: the alert is stored either way.
                    let _ = alerts.send(alert);
                }
                Published::Stored { alerts: count }
            }
        });
        // The publisher may have gone (connection lost); the batch is committed regardless
        // and its resend will be acked as a duplicate.
        let _ = reply.send(result);
    }
}

/// Stores one batch in one transaction; `None` when (sensor, seq) was stored before.
fn store_batch(
    conn: &mut Connection,
    path: &Path,
    sensor: &str,
    batch: Batch,
) -> Result<Option<Vec<StoredAlert>>, StoreError> {
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let Batch {
        seq,
        events,
        alerts,
        loss,
    } = batch;
    let received = Timestamp::now();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite)?;
    // Before the duplicate check: a resent batch may carry newer totals, and taking the
    // maximum makes recording them idempotent.
    if loss != Loss::default() {
        record_loss(&tx, sensor, loss, received).map_err(sqlite)?;
    }
    // Bit-preserving: only equality of sequence numbers matters here.
    let seq_sql = seq as i64;
    let inserted = tx
        .execute(
            "INSERT OR IGNORE INTO batches (sensor, seq, received_ns) VALUES (?1, ?2, ?3)",
            params![sensor, seq_sql, to_sql_ns(received)],
        )
        .map_err(sqlite)?;
    if inserted == 0 {
        // Commit anyway: the loss totals recorded above are news even on a duplicate.
        tx.commit().map_err(sqlite)?;
        return Ok(None);
    }
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (sensor, ts_ns, action, json) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(sqlite)?;
        for event in &events {
            let json = serde_json::to_string(event).map_err(StoreError::Encode)?;
            insert
                .execute(params![
                    sensor,
                    to_sql_ns(event.timestamp),
                    event.event.action.as_str(),
                    json
                ])
                .map_err(sqlite)?;
        }
    }
    let mut stored = Vec::with_capacity(alerts.len());
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO alerts (sensor, received_ns, rule_id, level, title, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(sqlite)?;
        for alert in alerts {
            let json = serde_json::to_string(&alert).map_err(StoreError::Encode)?;
            insert
                .execute(params![
                    sensor,
                    to_sql_ns(received),
                    alert.rule.id,
                    alert.rule.level.as_str(),
                    alert.rule.title,
                    json
                ])
                .map_err(sqlite)?;
            stored.push(StoredAlert {
                id: tx.last_insert_rowid(),
                sensor: sensor.to_owned(),
                received,
                alert,
            });
        }
    }
    tx.commit().map_err(sqlite)?;
    Ok(Some(stored))
}

fn record_loss(
    tx: &rusqlite::Transaction<'_>,
    sensor: &str,
    loss: Loss,
    received: Timestamp,
) -> Result<(), rusqlite::Error> {
    let Loss {
        events_dropped,
        alerts_dropped,
        corrupt_records,
    } = loss;
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    tx.prepare_cached(
        "INSERT INTO sensor_loss (sensor, events_dropped, alerts_dropped, corrupt_records, updated_ns)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sensor) DO UPDATE SET
             events_dropped = MAX(events_dropped, excluded.events_dropped),
             alerts_dropped = MAX(alerts_dropped, excluded.alerts_dropped),
             corrupt_records = MAX(corrupt_records, excluded.corrupt_records),
             updated_ns = excluded.updated_ns",
    )?
    .execute(params![
        sensor,
        clamp(events_dropped),
        clamp(alerts_dropped),
        clamp(corrupt_records),
        to_sql_ns(received)
    ])?;
    Ok(())
}

fn select_alerts(
    conn: &Connection,
    path: &Path,
    sql: &str,
    from: i64,
    limit: u32,
    byte_budget: usize,
) -> Result<Vec<StoredAlert>, StoreError> {
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let mut statement = conn.prepare_cached(sql).map_err(sqlite)?;
    let mut rows = statement.query(params![from, limit]).map_err(sqlite)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(sqlite)? {
        let id: i64 = row.get(0).map_err(sqlite)?;
        let sensor: String = row.get(1).map_err(sqlite)?;
        let received_ns: i64 = row.get(2).map_err(sqlite)?;
        let json: String = row.get(3).map_err(sqlite)?;
        bytes = bytes.saturating_add(json.len());
        if bytes > byte_budget && !out.is_empty() {
            break;
        }
        let alert: Alert = serde_json::from_str(&json)
            .map_err(|source| StoreError::CorruptAlert { id, source })?;
        out.push(StoredAlert {
            id,
            sensor,
            received: Timestamp(u64::try_from(received_ns).unwrap_or(0)),
            alert,
        });
    }
    Ok(out)
}

/// SQLite integers are i64; nanoseconds since 1970 fit until 2262, and clamp after.
fn to_sql_ns(t: Timestamp) -> i64 {
    i64::try_from(t.unix_nanos()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_schema_is_refused_not_rewritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).expect("create db");
        conn.pragma_update(None, "user_version", 99)
            .expect("set version");
        drop(conn);
        let (alerts, _) = broadcast::channel(1);
        let Err(err) = Store::open(&path, alerts) else {
            panic!("a database from the future was opened");
        };
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_missing_directory_is_created_and_reopening_keeps_the_schema_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("var/lib/vigil/c.db");
        for _ in 0..2 {
            let (alerts, _) = broadcast::channel(1);
            let (store, writer) = Store::open(&path, alerts).expect("open store");
            drop(store);
            writer.join();
        }
        let conn = Connection::open(&path).expect("open db");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("read version");
        assert_eq!(version, MIGRATIONS.len() as i64);
    }
}
