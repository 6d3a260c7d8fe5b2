//! SQLite storage, the default engine. One writer thread owns the only writing connection;
//! readers open their own read-only connections on blocking threads (WAL lets them run beside
//! the writer). Nothing here ever blocks the async runtime.
//!
//! Group commit: every commit waits for an fsync (`synchronous = FULL`, what an ack promises),
//! which costs this machine's disk a few milliseconds whatever the size of the write. So the
//! writer stores all the batches that queued up while the previous commit was syncing in one
//! transaction, and answers each of them only after that transaction is committed. One batch at
//! a time still commits alone, at once; several sensors (or lanes) share each fsync.
//!
//! The writer is also where new alerts enter the fan-out: it broadcasts a batch's alerts right
//! after the commit, in commit order, so subscribers see ids in increasing order and never an
//! alert that is not yet stored.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};
use vigil_proto::{Alert, Batch, Event, Loss, SensorInfo, SensorStatus, StoredAlert, Timestamp};

use super::{
    cutoff_ns, from_sql_ns, new_drops, silent_after_ns, to_sql_ns, EncodedBatch, EventRow,
    Published, Retention, SensorRow, Storage, StoreError, StoreFuture, StoredEvent,
};

/// The columns [`SensorRow`] is read from, in its order.
const SENSOR_COLUMNS: &str =
    "sensor, status, last_seen_ns, events_total, prev_events_total, prev_seen_ns, silent";

/// Batches waiting for the writer. Ingest waits for room, so a slow disk slows sensors down
/// (they keep spooling) instead of growing memory here.
const WRITE_QUEUE: usize = 64;

/// Rows one group commit gathers at most before it commits: bounds how long the first batch of
/// a group waits for the rest (a few milliseconds of inserts) and the transaction's size.
const GROUP_ROWS: usize = 4_096;

/// Events inserted per `INSERT` statement: one statement step per row costs more than the row.
/// 3 parameters a row, well under SQLite's limit of 32 766.
const EVENTS_PER_INSERT: usize = 64;

/// The writer's page cache, in KiB (negative `cache_size`): the indexes' hot pages stay in
/// memory across commits instead of being read back from the OS.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Rows deleted per retention transaction: small enough that a batch waiting behind it is
/// stored within milliseconds.
const PRUNE_CHUNK: i64 = 5_000;

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
    // v3. Retention deletes events by when they arrived (a sensor's clock may be wrong); rows
    // from before this version count as received when they happened.
    "ALTER TABLE events ADD COLUMN received_ns INTEGER NOT NULL DEFAULT 0;
     UPDATE events SET received_ns = ts_ns;
     CREATE INDEX events_received ON events (received_ns);
     CREATE INDEX batches_received ON batches (received_ns);",
    // v4. Fleet health: each sensor's last heartbeat and the one before (for its event rate).
    "CREATE TABLE sensors (
         sensor TEXT PRIMARY KEY,
         status TEXT NOT NULL,
         last_seen_ns INTEGER NOT NULL,
         silent_after_ns INTEGER NOT NULL,
         events_total INTEGER NOT NULL,
         kernel_drops INTEGER NOT NULL,
         prev_events_total INTEGER NOT NULL,
         prev_seen_ns INTEGER NOT NULL,
         silent INTEGER NOT NULL
     ) WITHOUT ROWID;",
];

/// Work for the writer thread, done in arrival order.
enum WriteRequest {
    Publish(PendingBatch),
    /// Deletes up to [`PRUNE_CHUNK`] rows of `table` received before `cutoff_ns`; replies with
    /// how many went.
    Prune {
        table: PrunedTable,
        cutoff_ns: i64,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Any other write, run on the writer's connection between batches.
    Job(WriteJob),
}

/// A batch waiting for its group's commit.
struct PendingBatch {
    sensor: String,
    batch: EncodedBatch,
    reply: oneshot::Sender<Result<Published, StoreError>>,
}

impl PendingBatch {
    fn rows(&self) -> usize {
        self.batch.events.len() + self.batch.alerts.len() + 1
    }
}

/// A write the writer thread runs for someone else; it sends its own answer.
type WriteJob = Box<dyn FnOnce(&mut Connection, &Path) + Send>;

#[derive(Clone, Copy, Debug)]
enum PrunedTable {
    Events,
    Alerts,
    Batches,
}

impl PrunedTable {
    fn delete_sql(self) -> &'static str {
        // NB: a rowid range, not `DELETE ... LIMIT` (only in SQLite builds with that option).
        match self {
            PrunedTable::Events => {
                "DELETE FROM events WHERE id IN
                     (SELECT id FROM events WHERE received_ns < ?1 LIMIT ?2)"
            }
            PrunedTable::Alerts => {
                "DELETE FROM alerts WHERE id IN
                     (SELECT id FROM alerts WHERE received_ns < ?1 LIMIT ?2)"
            }
            PrunedTable::Batches => {
                "DELETE FROM batches WHERE (sensor, seq) IN
                     (SELECT sensor, seq FROM batches WHERE received_ns < ?1 LIMIT ?2)"
            }
        }
    }
}

/// The SQLite engine: a handle on the writer thread's queue plus the file readers open.
#[derive(Clone)]
pub struct SqliteStore {
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

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database and starts the writer thread.
    /// Blocking: call from a blocking context.
    pub fn open(
        path: &Path,
        alerts: broadcast::Sender<StoredAlert>,
    ) -> Result<(SqliteStore, Writer), StoreError> {
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
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(sqlite)?;
        migrate(&mut conn, path)?;

        let path: Arc<Path> = Arc::from(path);
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-store".into())
            .spawn(move || write_loop(conn, &thread_path, queue, alerts))
            .map_err(StoreError::SpawnWriter)?;
        Ok((SqliteStore { path, writes }, Writer(thread)))
    }

    async fn publish_batch(&self, sensor: String, batch: Batch) -> Result<Published, StoreError> {
        // Encoded here, on the connection's task, so that the one writer thread only inserts.
        let batch = EncodedBatch::encode(batch)?;
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteRequest::Publish(PendingBatch {
                sensor,
                batch,
                reply,
            }))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Deletes `table`'s rows received before `cutoff_ns`, a chunk per writer turn so that
    /// batches queued meanwhile are stored between chunks.
    async fn prune_table(&self, table: PrunedTable, cutoff_ns: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let (reply, answer) = oneshot::channel();
            self.writes
                .send(WriteRequest::Prune {
                    table,
                    cutoff_ns,
                    reply,
                })
                .await
                .map_err(|_| StoreError::WriterGone)?;
            let deleted = answer.await.map_err(|_| StoreError::WriterGone)??;
            total += deleted;
            if deleted < PRUNE_CHUNK as usize {
                return Ok(total);
            }
        }
    }

    /// Runs `job` on the writer thread, in turn with batches.
    async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriteRequest::Job(Box::new(move |conn, path| {
                let _ = reply.send(job(conn, path));
            })))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    async fn record_status(
        &self,
        sensor: String,
        status: SensorStatus,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let json = serde_json::to_string(&status).map_err(StoreError::Encode)?;
        let silent_after = silent_after_ns(&status, now);
        self.write(move |conn, path| {
            let sqlite = |source| StoreError::Sqlite {
                path: path.to_owned(),
                source,
            };
            let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sqlite)?;
            let before: Option<i64> = tx
                .query_row(
                    "SELECT kernel_drops FROM sensors WHERE sensor = ?1",
                    params![sensor],
                    |row| row.get(0),
                )
                .optional()
                .map_err(sqlite)?;
            tx.execute(
                "INSERT INTO sensors (sensor, status, last_seen_ns, silent_after_ns, events_total,
                                      kernel_drops, prev_events_total, prev_seen_ns, silent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, ?3, 0)
                 ON CONFLICT (sensor) DO UPDATE SET
                     status = excluded.status,
                     prev_events_total = sensors.events_total,
                     prev_seen_ns = sensors.last_seen_ns,
                     last_seen_ns = excluded.last_seen_ns,
                     silent_after_ns = excluded.silent_after_ns,
                     events_total = excluded.events_total,
                     kernel_drops = excluded.kernel_drops,
                     silent = 0",
                params![
                    sensor,
                    json,
                    to_sql_ns(now),
                    silent_after,
                    clamp(status.events_total),
                    clamp(status.kernel_drops)
                ],
            )
            .map_err(sqlite)?;
            tx.commit().map_err(sqlite)?;
            Ok(new_drops(before, status.kernel_drops))
        })
        .await
    }

    async fn claim_silent(
        &self,
        now: Timestamp,
        watching_since: Timestamp,
    ) -> Result<Vec<SensorInfo>, StoreError> {
        self.write(move |conn, path| {
            let sqlite = |source| StoreError::Sqlite {
                path: path.to_owned(),
                source,
            };
            let sql = format!(
                "UPDATE sensors SET silent = 1
                 WHERE silent = 0 AND silent_after_ns < ?1
                     AND ?2 + (silent_after_ns - last_seen_ns) < ?1
                 RETURNING {SENSOR_COLUMNS}"
            );
            let mut statement = conn.prepare_cached(&sql).map_err(sqlite)?;
            let rows = statement
                .query_map(
                    params![to_sql_ns(now), to_sql_ns(watching_since)],
                    sensor_row,
                )
                .map_err(sqlite)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(sqlite)?.into_info()?);
            }
            Ok(out)
        })
        .await
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StoreError> {
        self.read(|conn, path| {
            let sqlite = |source| StoreError::Sqlite {
                path: path.to_owned(),
                source,
            };
            let sql = format!("SELECT {SENSOR_COLUMNS} FROM sensors ORDER BY sensor");
            let mut statement = conn.prepare_cached(&sql).map_err(sqlite)?;
            let rows = statement.query_map([], sensor_row).map_err(sqlite)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(sqlite)?.into_info()?);
            }
            Ok(out)
        })
        .await
    }

    async fn alerts_after(
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

    async fn alerts_since(
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

    async fn last_alert_id(&self) -> Result<i64, StoreError> {
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

    async fn events_since(
        &self,
        since: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |conn, path| {
            let sqlite = |source| StoreError::Sqlite {
                path: path.to_owned(),
                source,
            };
            let mut statement = conn
                .prepare_cached(
                    "SELECT id, sensor, received_ns, json FROM events
                     WHERE received_ns >= ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(sqlite)?;
            let mut rows = statement
                .query(params![to_sql_ns(since), after_id, limit])
                .map_err(sqlite)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(sqlite)? {
                let id: i64 = row.get(0).map_err(sqlite)?;
                let json: String = row.get(3).map_err(sqlite)?;
                let event: Event =
                    serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                        what: "event",
                        id,
                        source,
                    })?;
                out.push(StoredEvent {
                    id,
                    sensor: row.get(1).map_err(sqlite)?,
                    received: from_sql_ns(row.get(2).map_err(sqlite)?),
                    event,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn maintain(&self, now: Timestamp, retention: Retention) -> Result<(), StoreError> {
        let events = self
            .prune_table(PrunedTable::Events, cutoff_ns(now, retention.events))
            .await?;
        let alerts = self
            .prune_table(PrunedTable::Alerts, cutoff_ns(now, retention.alerts))
            .await?;
        let batches = self
            .prune_table(PrunedTable::Batches, cutoff_ns(now, retention.batches()))
            .await?;
        if events + alerts + batches > 0 {
            tracing::info!(events, alerts, batches, "retention deleted old rows");
        }
        Ok(())
    }

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

impl Storage for SqliteStore {
    fn as_sqlite(&self) -> Option<&SqliteStore> {
        Some(self)
    }

    fn publish(&self, sensor: String, batch: Batch) -> StoreFuture<'_, Published> {
        Box::pin(self.publish_batch(sensor, batch))
    }

    fn alerts_after(&self, after_id: i64, limit: u32) -> StoreFuture<'_, Vec<StoredAlert>> {
        Box::pin(SqliteStore::alerts_after(self, after_id, limit))
    }

    fn alerts_since(
        &self,
        since: Timestamp,
        limit: u32,
        byte_budget: usize,
    ) -> StoreFuture<'_, Vec<StoredAlert>> {
        Box::pin(SqliteStore::alerts_since(self, since, limit, byte_budget))
    }

    fn last_alert_id(&self) -> StoreFuture<'_, i64> {
        Box::pin(SqliteStore::last_alert_id(self))
    }

    fn events_since(
        &self,
        since: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(SqliteStore::events_since(self, since, after_id, limit))
    }

    fn maintain(&self, now: Timestamp, retention: Retention) -> StoreFuture<'_, ()> {
        Box::pin(SqliteStore::maintain(self, now, retention))
    }

    fn record_status(
        &self,
        sensor: String,
        status: SensorStatus,
        now: Timestamp,
    ) -> StoreFuture<'_, u64> {
        Box::pin(SqliteStore::record_status(self, sensor, status, now))
    }

    fn claim_silent(
        &self,
        now: Timestamp,
        watching_since: Timestamp,
    ) -> StoreFuture<'_, Vec<SensorInfo>> {
        Box::pin(SqliteStore::claim_silent(self, now, watching_since))
    }

    fn sensors(&self) -> StoreFuture<'_, Vec<SensorInfo>> {
        Box::pin(SqliteStore::sensors(self))
    }
}

fn sensor_row(row: &rusqlite::Row<'_>) -> Result<SensorRow, rusqlite::Error> {
    Ok(SensorRow {
        sensor: row.get(0)?,
        status_json: row.get(1)?,
        last_seen_ns: row.get(2)?,
        events_total: row.get(3)?,
        prev_events_total: row.get(4)?,
        prev_seen_ns: row.get(5)?,
        silent: row.get(6)?,
    })
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
            target: path.display().to_string(),
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
    // A request taken off the queue while gathering a group, to run right after it.
    let mut next = None;
    loop {
        let request = match next.take() {
            Some(request) => request,
            None => match queue.blocking_recv() {
                Some(request) => request,
                None => break,
            },
        };
        match request {
            WriteRequest::Publish(first) => {
                let mut rows = first.rows();
                let mut group = vec![first];
                // Whatever queued meanwhile shares this commit; arrival order is kept, so
                // alert ids still follow the order batches reached the writer.
                while rows < GROUP_ROWS {
                    match queue.try_recv() {
                        Ok(WriteRequest::Publish(pending)) => {
                            rows += pending.rows();
                            group.push(pending);
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                commit_group(&mut conn, path, group, &alerts);
            }
            WriteRequest::Job(job) => job(&mut conn, path),
            WriteRequest::Prune {
                table,
                cutoff_ns,
                reply,
            } => {
                let result = conn
                    .prepare_cached(table.delete_sql())
                    .and_then(|mut delete| delete.execute(params![cutoff_ns, PRUNE_CHUNK]))
                    .map_err(|source| StoreError::Sqlite {
                        path: path.to_owned(),
                        source,
                    });
                let _ = reply.send(result);
            }
        }
    }
}

/// Stores `group` in one transaction, then answers each batch and broadcasts the alerts, in
/// order. If the transaction fails, each batch is retried in a transaction of its own, so each
/// gets its own answer (and one bad batch cannot fail the others).
fn commit_group(
    conn: &mut Connection,
    path: &Path,
    group: Vec<PendingBatch>,
    alerts: &broadcast::Sender<StoredAlert>,
) {
    let received = Timestamp::now();
    let outcomes = match store_group(conn, path, &group, received) {
        Ok(outcomes) => outcomes,
        Err(e) if group.len() == 1 => {
            if let Some(pending) = group.into_iter().next() {
                let _ = pending.reply.send(Err(e));
            }
            return;
        }
        Err(e) => {
            tracing::warn!(
                batches = group.len(),
                "a group commit failed ({e}); storing its batches one by one"
            );
            for pending in group {
                commit_group(conn, path, vec![pending], alerts);
            }
            return;
        }
    };
    for (pending, alert_ids) in group.into_iter().zip(outcomes) {
        let PendingBatch {
            sensor,
            batch,
            reply,
        } = pending;
        let published = match alert_ids {
            None => Published::Duplicate,
            Some(ids) => {
                let stored: Vec<StoredAlert> = batch
                    .alerts
                    .into_iter()
                    .zip(ids)
                    .map(|(row, id)| StoredAlert {
                        id,
                        sensor: sensor.clone(),
                        received,
                        alert: row.alert,
                    })
                    .collect();
                for alert in &stored {
                    // No subscriber is not an error: the alert is stored either way.
                    let _ = alerts.send(alert.clone());
                }
                Published::Stored { alerts: stored }
            }
        };
        // The publisher may have gone (connection lost); the batch is committed regardless
        // and its resend will be acked as a duplicate.
        let _ = reply.send(Ok(published));
    }
}

/// Stores every batch of `group` in one transaction; for each, the ids its alerts got, or
/// `None` when its (sensor, seq) was stored before (or earlier in the group).
fn store_group(
    conn: &mut Connection,
    path: &Path,
    group: &[PendingBatch],
    received: Timestamp,
) -> Result<Vec<Option<Vec<i64>>>, StoreError> {
    let sqlite = |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let received_ns = to_sql_ns(received);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sqlite)?;
    let mut outcomes = Vec::with_capacity(group.len());
    for pending in group {
        outcomes
            .push(store_batch(&tx, &pending.sensor, &pending.batch, received_ns).map_err(sqlite)?);
    }
    tx.commit().map_err(sqlite)?;
    Ok(outcomes)
}

/// Writes one batch inside `tx`; `None` when (sensor, seq) was stored before.
fn store_batch(
    tx: &rusqlite::Transaction<'_>,
    sensor: &str,
    batch: &EncodedBatch,
    received_ns: i64,
) -> Result<Option<Vec<i64>>, rusqlite::Error> {
    let EncodedBatch {
        seq,
        loss,
        events,
        alerts,
    } = batch;
    // Before the duplicate check: a resent batch may carry newer totals, and taking the
    // maximum makes recording them idempotent (committed even for a duplicate).
    if *loss != Loss::default() {
        record_loss(tx, sensor, *loss, received_ns)?;
    }
    // Bit-preserving: only equality of sequence numbers matters here.
    let seq_sql = *seq as i64;
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO batches (sensor, seq, received_ns) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![sensor, seq_sql, received_ns])?;
    if inserted == 0 {
        return Ok(None);
    }
    insert_events(tx, sensor, events, received_ns)?;
    let mut ids = Vec::with_capacity(alerts.len());
    if !alerts.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO alerts (sensor, received_ns, rule_id, level, title, json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for row in alerts {
            let rule = &row.alert.rule;
            insert.execute(params![
                sensor,
                received_ns,
                rule.id,
                rule.level.as_str(),
                rule.title,
                row.json
            ])?;
            ids.push(tx.last_insert_rowid());
        }
    }
    Ok(Some(ids))
}

/// Inserts `events`, [`EVENTS_PER_INSERT`] rows per statement (the rest one by one, so only
/// two statements are ever cached).
fn insert_events(
    tx: &rusqlite::Transaction<'_>,
    sensor: &str,
    events: &[EventRow],
    received_ns: i64,
) -> Result<(), rusqlite::Error> {
    let mut chunks = events.chunks_exact(EVENTS_PER_INSERT);
    if events.len() >= EVENTS_PER_INSERT {
        let mut insert = tx.prepare_cached(multi_row_insert_sql())?;
        for chunk in &mut chunks {
            insert.raw_bind_parameter(1, sensor)?;
            insert.raw_bind_parameter(2, received_ns)?;
            for (i, event) in chunk.iter().enumerate() {
                let first = 3 + 3 * i;
                insert.raw_bind_parameter(first, event.ts_ns)?;
                insert.raw_bind_parameter(first + 1, event.action)?;
                insert.raw_bind_parameter(first + 2, event.json.as_str())?;
            }
            insert.raw_execute()?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (sensor, received_ns, ts_ns, action, json)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for event in rest {
            insert.execute(params![
                sensor,
                received_ns,
                event.ts_ns,
                event.action,
                event.json
            ])?;
        }
    }
    Ok(())
}

/// `INSERT INTO events ... VALUES (?1, ?2, ?3, ?4, ?5), (?1, ?2, ?6, ?7, ?8), ...` for
/// [`EVENTS_PER_INSERT`] rows: the sensor and arrival time bound once, three values per row.
fn multi_row_insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows: Vec<String> = (0..EVENTS_PER_INSERT)
            .map(|i| {
                let first = 3 + 3 * i;
                format!("(?1, ?2, ?{}, ?{}, ?{})", first, first + 1, first + 2)
            })
            .collect();
        format!(
            "INSERT INTO events (sensor, received_ns, ts_ns, action, json) VALUES {}",
            rows.join(", ")
        )
    })
}

fn record_loss(
    tx: &rusqlite::Transaction<'_>,
    sensor: &str,
    loss: Loss,
    received_ns: i64,
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
        received_ns
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
        let alert: Alert = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
            what: "alert",
            id,
            source,
        })?;
        out.push(StoredAlert {
            id,
            sensor,
            received: from_sql_ns(received_ns),
            alert,
        });
    }
    Ok(out)
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
        let Err(err) = SqliteStore::open(&path, alerts) else {
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
            let (store, writer) = SqliteStore::open(&path, alerts).expect("open store");
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
