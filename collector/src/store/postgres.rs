//! PostgreSQL storage, for a fleet: several collectors write to one database at once.
//!
//! - Dedup across collectors: the `batches` primary key. Two collectors inserting the same
//!   (sensor, seq) serialize on it; the second finds the row and acks a duplicate.
//! - Alert ids in commit order: a transaction that stores alerts first takes one advisory lock
//!   and holds it until commit, so ids are handed out and made visible in the same order.
//!   Without it, id 7 could commit before id 6 and a reader resuming after 7 would never see
//!   6. Only batches carrying alerts take the lock; alerts are few next to events.
//! - Live alerts on every collector: a commit with alerts sends `NOTIFY vigil_alerts`; each
//!   collector LISTENs on its own connection and feeds its subscribers from the table, in id
//!   order (a poll every second covers a notification lost while reconnecting).
//! - Events live in daily partitions by arrival time (native range partitioning), created
//!   ahead by [`Storage::maintain`]; retention detaches old days `CONCURRENTLY` and drops
//!   them, which never waits for or blocks inserts. Alerts are deleted in small chunks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch, Mutex};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;
use vigil_proto::{Alert, Batch, Event, Loss, SensorInfo, SensorStatus, StoredAlert, Timestamp};

use super::{
    cutoff_ns, from_sql_ns, new_drops, silent_after_ns, to_sql_ns, AlertRow, EncodedBatch,
    EventRow, PostgresUrl, Published, Retention, SensorRow, Storage, StoreError, StoreFuture,
    StoredEvent,
};

/// Connections each collector keeps for ingest and queries; a transaction holds one.
const POOL_SIZE: usize = 4;

/// Advisory lock keys (one namespace per database: they only need to differ from each other).
const MIGRATION_LOCK: i64 = 0x7669_6769_6c00_0001;
const ALERT_ORDER_LOCK: i64 = 0x7669_6769_6c00_0002;
const PARTITION_LOCK: i64 = 0x7669_6769_6c00_0003;
/// Held, session-level, by the one collector that forwards alerts to the outputs.
pub(super) const OUTPUTS_LEADER_LOCK: i64 = 0x7669_6769_6c00_0004;

/// The channel committed alerts are announced on.
const ALERT_CHANNEL: &str = "vigil_alerts";

/// How often the alert feed looks for alerts even without a notification.
const FEED_POLL: Duration = Duration::from_secs(1);

/// Alerts read per query by the feed.
const FEED_PAGE: u32 = 512;

/// Rows deleted per retention statement.
const PRUNE_CHUNK: i64 = 5_000;

/// Days of event partitions created ahead of today (clocks drift, midnight comes).
const DAYS_AHEAD: i64 = 2;

const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// Schema migrations, in order; `vigil_schema.version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // v1.
    "CREATE TABLE batches (
         sensor TEXT NOT NULL,
         seq BIGINT NOT NULL,
         received_ns BIGINT NOT NULL,
         PRIMARY KEY (sensor, seq)
     );
     CREATE INDEX batches_received ON batches (received_ns);
     CREATE SEQUENCE events_id_seq;
     CREATE TABLE events (
         id BIGINT NOT NULL DEFAULT nextval('events_id_seq'),
         sensor TEXT NOT NULL,
         received_ns BIGINT NOT NULL,
         ts_ns BIGINT NOT NULL,
         action TEXT NOT NULL,
         json TEXT NOT NULL
     ) PARTITION BY RANGE (received_ns);
     CREATE INDEX events_id ON events (id);
     CREATE INDEX events_sensor_ts ON events (sensor, ts_ns);
     -- NB: BIGSERIAL, never reset: `vigil tail` resumes from an id and must not skip a newer
     -- alert that got an old id after retention deleted the old ones.
     CREATE TABLE alerts (
         id BIGSERIAL PRIMARY KEY,
         sensor TEXT NOT NULL,
         received_ns BIGINT NOT NULL,
         rule_id TEXT NOT NULL,
         level TEXT NOT NULL,
         title TEXT NOT NULL,
         json TEXT NOT NULL
     );
     CREATE INDEX alerts_received ON alerts (received_ns);
     CREATE TABLE sensor_loss (
         sensor TEXT PRIMARY KEY,
         events_dropped BIGINT NOT NULL,
         alerts_dropped BIGINT NOT NULL,
         corrupt_records BIGINT NOT NULL,
         updated_ns BIGINT NOT NULL
     );",
    // v2. Fleet health: each sensor's last heartbeat and the one before (for its event rate).
    "CREATE TABLE sensors (
         sensor TEXT PRIMARY KEY,
         status TEXT NOT NULL,
         last_seen_ns BIGINT NOT NULL,
         silent_after_ns BIGINT NOT NULL,
         events_total BIGINT NOT NULL,
         kernel_drops BIGINT NOT NULL,
         prev_events_total BIGINT NOT NULL,
         prev_seen_ns BIGINT NOT NULL,
         silent BIGINT NOT NULL
     );",
    // v3. Alert outputs shared by a fleet: how far each output (by its name in collector.yaml)
    // has forwarded, so that the collector that leads the outputs next resumes there.
    "CREATE TABLE output_cursors (
         output TEXT PRIMARY KEY,
         last_id BIGINT NOT NULL,
         updated_ns BIGINT NOT NULL
     );",
];

/// The columns [`SensorRow`] is read from, in its order.
const SENSOR_COLUMNS: &str =
    "sensor, status, last_seen_ns, events_total, prev_events_total, prev_seen_ns, silent";

/// Describes a PostgreSQL error with the server's own message when there is one
/// (tokio-postgres' Display says only "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => super::pg_tls::explain(e),
    }
}

/// The PostgreSQL engine.
pub struct PgStore {
    pub(super) url: PostgresUrl,
    /// TLS as the URL's `sslmode`/`sslrootcert` say; files read once, at open.
    pub(super) tls: MakeRustlsConnect,
    pool: Vec<Mutex<Client>>,
    next: AtomicUsize,
    /// Days whose event partition exists (this collector made sure of it).
    partitions: std::sync::Mutex<BTreeSet<i64>>,
}

/// The alert feed task; stopped at shutdown.
pub struct Background {
    stop: watch::Sender<bool>,
    feed: JoinHandle<()>,
}

impl Background {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if self.feed.await.is_err() {
            tracing::error!("the PostgreSQL alert feed panicked");
        }
    }
}

impl PgStore {
    /// Connects, migrates the schema, creates the coming days' partitions and starts the alert
    /// feed, which sends every alert committed from now on (by any collector) on `alerts`.
    pub async fn open(
        url: &PostgresUrl,
        alerts: broadcast::Sender<StoredAlert>,
    ) -> Result<(Arc<PgStore>, Background), StoreError> {
        let tls = super::pg_tls::connector(url.tls())?;
        let mut pool = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            pool.push(Mutex::new(connect(url, &tls).await?));
        }
        let store = Arc::new(PgStore {
            url: url.clone(),
            tls,
            pool,
            next: AtomicUsize::new(0),
            partitions: std::sync::Mutex::default(),
        });
        store.migrate().await?;
        store.ensure_partitions(Timestamp::now()).await?;
        let start = store.last_alert_id().await?;
        let (stop, stopped) = watch::channel(false);
        let feed = tokio::spawn(feed_alerts(store.clone(), alerts, start, stopped));
        tracing::info!(store = %url, "using PostgreSQL");
        Ok((store, Background { stop, feed }))
    }

    pub(crate) fn error(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |source| StoreError::Postgres {
            target: self.url.to_string(),
            source,
        }
    }

    /// A connection of the pool, reconnected if the server closed it.
    pub(crate) async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Client>, StoreError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut client = self.pool[index].lock().await;
        if client.is_closed() {
            tracing::warn!(store = %self.url, "PostgreSQL connection lost; reconnecting");
            *client = connect(&self.url, &self.tls).await?;
        }
        Ok(client)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let err = self.error();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(&err)?;
        // Collectors starting together: one migrates, the others wait and find it done.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(&err)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS vigil_schema (version INTEGER NOT NULL)")
            .await
            .map_err(&err)?;
        let version: i32 = tx
            .query_one("SELECT COALESCE(MAX(version), 0) FROM vigil_schema", &[])
            .await
            .map_err(&err)?
            .get(0);
        let applied = usize::try_from(version).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(StoreError::NewerSchema {
                target: self.url.to_string(),
                found: i64::from(version),
                supported: MIGRATIONS.len(),
            });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            tx.batch_execute(sql).await.map_err(&err)?;
            let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
            tx.execute("DELETE FROM vigil_schema", &[])
                .await
                .map_err(&err)?;
            tx.execute(
                "INSERT INTO vigil_schema (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(&err)?;
            tracing::info!(store = %self.url, version, "migrated database schema");
        }
        tx.commit().await.map_err(&err)
    }

    /// Creates the event partitions from today to [`DAYS_AHEAD`] days on.
    async fn ensure_partitions(&self, now: Timestamp) -> Result<(), StoreError> {
        let today = to_sql_ns(now) / DAY_NS;
        let mut client = self.client().await?;
        for day in today..=today + DAYS_AHEAD {
            self.ensure_partition(&mut client, day).await?;
        }
        Ok(())
    }

    async fn ensure_partition(&self, client: &mut Client, day: i64) -> Result<(), StoreError> {
        if self.known_partition(day) {
            return Ok(());
        }
        let err = self.error();
        let tx = client.transaction().await.map_err(&err)?;
        // NB: IF NOT EXISTS is not safe against a concurrent create (a unique violation in the
        // catalog); collectors take turns instead.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
            .await
            .map_err(&err)?;
        let (from, to) = (day * DAY_NS, (day + 1) * DAY_NS);
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ({from}) TO ({to})",
            partition_name(day)
        ))
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        if let Ok(mut known) = self.partitions.lock() {
            known.insert(day);
        }
        Ok(())
    }

    fn known_partition(&self, day: i64) -> bool {
        self.partitions
            .lock()
            .map(|known| known.contains(&day))
            .unwrap_or(false)
    }

    async fn publish_batch(&self, sensor: String, batch: Batch) -> Result<Published, StoreError> {
        let err = self.error();
        let EncodedBatch {
            seq,
            loss,
            events,
            alerts,
        } = EncodedBatch::encode(batch)?;
        let received = Timestamp::now();
        let received_ns = to_sql_ns(received);
        let mut event_ts = Vec::with_capacity(events.len());
        let mut event_action = Vec::with_capacity(events.len());
        let mut event_json = Vec::with_capacity(events.len());
        for EventRow {
            ts_ns,
            action,
            json,
        } in events
        {
            event_ts.push(ts_ns);
            event_action.push(action);
            event_json.push(json);
        }

        let mut client = self.client().await?;
        if !event_json.is_empty() {
            self.ensure_partition(&mut client, received_ns / DAY_NS)
                .await?;
        }
        let tx = client.transaction().await.map_err(&err)?;
        // Before the duplicate check: a resent batch may carry newer totals, and taking the
        // maximum makes recording them idempotent.
        if loss != Loss::default() {
            record_loss(&tx, &sensor, loss, received_ns)
                .await
                .map_err(&err)?;
        }
        // Bit-preserving: only equality of sequence numbers matters here.
        let seq_sql = seq as i64;
        let inserted = tx
            .execute(
                "INSERT INTO batches (sensor, seq, received_ns) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&sensor, &seq_sql, &received_ns],
            )
            .await
            .map_err(&err)?;
        if inserted == 0 {
            tx.commit().await.map_err(&err)?;
            return Ok(Published::Duplicate);
        }
        if !event_json.is_empty() {
            // One statement for the whole batch: arrays in, one round trip.
            tx.execute(
                "INSERT INTO events (sensor, received_ns, ts_ns, action, json)
                 SELECT $1, $2, ts, action, json
                 FROM unnest($3::BIGINT[], $4::TEXT[], $5::TEXT[]) AS e (ts, action, json)",
                &[&sensor, &received_ns, &event_ts, &event_action, &event_json],
            )
            .await
            .map_err(&err)?;
        }
        let mut stored = Vec::with_capacity(alerts.len());
        if !alerts.is_empty() {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ALERT_ORDER_LOCK])
                .await
                .map_err(&err)?;
            let insert = tx
                .prepare(
                    "INSERT INTO alerts (sensor, received_ns, rule_id, level, title, json)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .await
                .map_err(&err)?;
            for AlertRow { alert, json } in alerts {
                let id: i64 = tx
                    .query_one(
                        &insert,
                        &[
                            &sensor,
                            &received_ns,
                            &alert.rule.id,
                            &alert.rule.level.as_str(),
                            &alert.rule.title,
                            &json,
                        ],
                    )
                    .await
                    .map_err(&err)?
                    .get(0);
                stored.push(StoredAlert {
                    id,
                    sensor: sensor.clone(),
                    received,
                    alert,
                });
            }
            // Delivered to listeners at commit, not before.
            let last = stored.last().map(|a| a.id.to_string()).unwrap_or_default();
            tx.execute("SELECT pg_notify($1, $2)", &[&ALERT_CHANNEL, &last])
                .await
                .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        Ok(Published::Stored { alerts: stored })
    }

    async fn select_alerts(
        &self,
        sql: &str,
        from: i64,
        limit: u32,
        byte_budget: usize,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        let err = self.error();
        let client = self.client().await?;
        let rows = client
            .query(sql, &[&from, &i64::from(limit)])
            .await
            .map_err(&err)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut bytes = 0usize;
        for row in rows {
            let id: i64 = row.try_get(0).map_err(&err)?;
            let json: &str = row.try_get(3).map_err(&err)?;
            bytes = bytes.saturating_add(json.len());
            if bytes > byte_budget && !out.is_empty() {
                break;
            }
            let alert: Alert =
                serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
                    what: "alert",
                    id,
                    source,
                })?;
            out.push(StoredAlert {
                id,
                sensor: row.try_get(1).map_err(&err)?,
                received: from_sql_ns(row.try_get(2).map_err(&err)?),
                alert,
            });
        }
        Ok(out)
    }

    async fn alerts_after(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        self.select_alerts(
            "SELECT id, sensor, received_ns, json FROM alerts WHERE id > $1 ORDER BY id LIMIT $2",
            after_id,
            limit,
            usize::MAX,
        )
        .await
    }

    async fn last_alert_id(&self) -> Result<i64, StoreError> {
        let err = self.error();
        let client = self.client().await?;
        let row = client
            .query_one("SELECT COALESCE(MAX(id), 0) FROM alerts", &[])
            .await
            .map_err(&err)?;
        row.try_get(0).map_err(&err)
    }

    async fn events_since(
        &self,
        since: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let err = self.error();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, sensor, received_ns, json FROM events
                 WHERE received_ns >= $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&to_sql_ns(since), &after_id, &i64::from(limit)],
            )
            .await
            .map_err(&err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get(0).map_err(&err)?;
            let json: &str = row.try_get(3).map_err(&err)?;
            let event: Event =
                serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
                    what: "event",
                    id,
                    source,
                })?;
            out.push(StoredEvent {
                id,
                sensor: row.try_get(1).map_err(&err)?,
                received: from_sql_ns(row.try_get(2).map_err(&err)?),
                event,
            });
        }
        Ok(out)
    }

    async fn maintain(&self, now: Timestamp, retention: Retention) -> Result<(), StoreError> {
        let err = self.error();
        self.ensure_partitions(now).await?;
        let dropped = self
            .drop_partitions_before(cutoff_ns(now, retention.events))
            .await?;
        let mut deleted = [0u64; 2];
        for (count, (table, keep)) in deleted.iter_mut().zip([
            ("alerts", retention.alerts),
            ("batches", retention.batches()),
        ]) {
            let cutoff = cutoff_ns(now, keep);
            // Chunks by physical row address: short transactions, whatever the key.
            let sql = format!(
                "DELETE FROM {table} WHERE ctid IN
                     (SELECT ctid FROM {table} WHERE received_ns < $1 LIMIT $2)"
            );
            loop {
                let client = self.client().await?;
                let n = client
                    .execute(&sql, &[&cutoff, &PRUNE_CHUNK])
                    .await
                    .map_err(&err)?;
                *count += n;
                if n < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        let [alerts, batches] = deleted;
        if dropped + alerts + batches > 0 {
            tracing::info!(
                event_days = dropped,
                alerts,
                batches,
                "retention removed old data"
            );
        }
        Ok(())
    }

    async fn record_status(
        &self,
        sensor: String,
        status: SensorStatus,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let err = self.error();
        let json = serde_json::to_string(&status).map_err(StoreError::Encode)?;
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(&err)?;
        let before: Option<i64> = tx
            .query_opt(
                "SELECT kernel_drops FROM sensors WHERE sensor = $1 FOR UPDATE",
                &[&sensor],
            )
            .await
            .map_err(&err)?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(&err)?;
        tx.execute(
            "INSERT INTO sensors (sensor, status, last_seen_ns, silent_after_ns, events_total,
                                  kernel_drops, prev_events_total, prev_seen_ns, silent)
             VALUES ($1, $2, $3, $4, $5, $6, $5, $3, 0)
             ON CONFLICT (sensor) DO UPDATE SET
                 status = EXCLUDED.status,
                 prev_events_total = sensors.events_total,
                 prev_seen_ns = sensors.last_seen_ns,
                 last_seen_ns = EXCLUDED.last_seen_ns,
                 silent_after_ns = EXCLUDED.silent_after_ns,
                 events_total = EXCLUDED.events_total,
                 kernel_drops = EXCLUDED.kernel_drops,
                 silent = 0",
            &[
                &sensor,
                &json,
                &to_sql_ns(now),
                &silent_after_ns(&status, now),
                &clamp(status.events_total),
                &clamp(status.kernel_drops),
            ],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        Ok(new_drops(before, status.kernel_drops))
    }

    async fn claim_silent(
        &self,
        now: Timestamp,
        watching_since: Timestamp,
    ) -> Result<Vec<SensorInfo>, StoreError> {
        // One statement: row locks make a second collector's UPDATE see `silent = 1` and
        // skip the row, so each silent spell is claimed once.
        let sql = format!(
            "UPDATE sensors SET silent = 1
             WHERE silent = 0 AND silent_after_ns < $1
                 AND $2 + (silent_after_ns - last_seen_ns) < $1
             RETURNING {SENSOR_COLUMNS}"
        );
        self.sensor_rows(&sql, &[&to_sql_ns(now), &to_sql_ns(watching_since)])
            .await
    }

    async fn sensors(&self) -> Result<Vec<SensorInfo>, StoreError> {
        let sql = format!("SELECT {SENSOR_COLUMNS} FROM sensors ORDER BY sensor");
        self.sensor_rows(&sql, &[]).await
    }

    async fn sensor_rows(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<SensorInfo>, StoreError> {
        let err = self.error();
        let client = self.client().await?;
        let rows = client.query(sql, params).await.map_err(&err)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(
                SensorRow {
                    sensor: row.try_get(0).map_err(&err)?,
                    status_json: row.try_get(1).map_err(&err)?,
                    last_seen_ns: row.try_get(2).map_err(&err)?,
                    events_total: row.try_get(3).map_err(&err)?,
                    prev_events_total: row.try_get(4).map_err(&err)?,
                    prev_seen_ns: row.try_get(5).map_err(&err)?,
                    silent: row.try_get(6).map_err(&err)?,
                }
                .into_info()?,
            );
        }
        Ok(out)
    }

    /// Detaches and drops every event partition that ends at or before `cutoff_ns`.
    async fn drop_partitions_before(&self, cutoff_ns: i64) -> Result<u64, StoreError> {
        let err = self.error();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'events'::regclass",
                &[],
            )
            .await
            .map_err(&err)?;
        let mut dropped = 0;
        for row in rows {
            let name: &str = row.try_get(0).map_err(&err)?;
            let Some(day) = partition_day(name) else {
                continue;
            };
            if (day + 1) * DAY_NS > cutoff_ns {
                continue;
            }
            // NB: CONCURRENTLY waits for queries using the partition instead of locking the
            // parent, so inserts into today's partition go on. It cannot run in a transaction
            // block, hence two statements. Another collector may be doing the same: its
            // detach then fails and the partition is gone either way.
            let detach = format!("ALTER TABLE events DETACH PARTITION {name} CONCURRENTLY");
            if let Err(e) = client.batch_execute(&detach).await {
                tracing::debug!(partition = name, "detach failed: {}", describe(&e));
                continue;
            }
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                .await
                .map_err(&err)?;
            if let Ok(mut known) = self.partitions.lock() {
                known.remove(&day);
            }
            dropped += 1;
        }
        Ok(dropped)
    }
}

impl Storage for PgStore {
    fn as_postgres(&self) -> Option<&PgStore> {
        Some(self)
    }

    fn publish(&self, sensor: String, batch: Batch) -> StoreFuture<'_, Published> {
        Box::pin(self.publish_batch(sensor, batch))
    }

    fn alerts_after(&self, after_id: i64, limit: u32) -> StoreFuture<'_, Vec<StoredAlert>> {
        Box::pin(PgStore::alerts_after(self, after_id, limit))
    }

    fn alerts_since(
        &self,
        since: Timestamp,
        limit: u32,
        byte_budget: usize,
    ) -> StoreFuture<'_, Vec<StoredAlert>> {
        Box::pin(self.select_alerts(
            "SELECT id, sensor, received_ns, json FROM alerts WHERE received_ns >= $1
             ORDER BY id LIMIT $2",
            to_sql_ns(since),
            limit,
            byte_budget,
        ))
    }

    fn last_alert_id(&self) -> StoreFuture<'_, i64> {
        Box::pin(PgStore::last_alert_id(self))
    }

    fn events_since(
        &self,
        since: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<StoredEvent>> {
        Box::pin(PgStore::events_since(self, since, after_id, limit))
    }

    fn maintain(&self, now: Timestamp, retention: Retention) -> StoreFuture<'_, ()> {
        Box::pin(PgStore::maintain(self, now, retention))
    }

    fn record_status(
        &self,
        sensor: String,
        status: SensorStatus,
        now: Timestamp,
    ) -> StoreFuture<'_, u64> {
        Box::pin(PgStore::record_status(self, sensor, status, now))
    }

    fn claim_silent(
        &self,
        now: Timestamp,
        watching_since: Timestamp,
    ) -> StoreFuture<'_, Vec<SensorInfo>> {
        Box::pin(PgStore::claim_silent(self, now, watching_since))
    }

    fn sensors(&self) -> StoreFuture<'_, Vec<SensorInfo>> {
        Box::pin(PgStore::sensors(self))
    }
}

pub(super) async fn connect(
    url: &PostgresUrl,
    tls: &MakeRustlsConnect,
) -> Result<Client, StoreError> {
    let (client, connection) =
        url.config()
            .connect(tls.clone())
            .await
            .map_err(|source| StoreError::Postgres {
                target: url.to_string(),
                source,
            })?;
    let target = url.to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(store = %target, "PostgreSQL connection ended: {}", describe(&e));
        }
    });
    Ok(client)
}

async fn record_loss(
    tx: &tokio_postgres::Transaction<'_>,
    sensor: &str,
    loss: Loss,
    received_ns: i64,
) -> Result<u64, tokio_postgres::Error> {
    let Loss {
        events_dropped,
        alerts_dropped,
        corrupt_records,
    } = loss;
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    tx.execute(
        "INSERT INTO sensor_loss (sensor, events_dropped, alerts_dropped, corrupt_records, updated_ns)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (sensor) DO UPDATE SET
             events_dropped = GREATEST(sensor_loss.events_dropped, EXCLUDED.events_dropped),
             alerts_dropped = GREATEST(sensor_loss.alerts_dropped, EXCLUDED.alerts_dropped),
             corrupt_records = GREATEST(sensor_loss.corrupt_records, EXCLUDED.corrupt_records),
             updated_ns = EXCLUDED.updated_ns",
        &[
            &sensor,
            &clamp(events_dropped),
            &clamp(alerts_dropped),
            &clamp(corrupt_records),
            &received_ns,
        ],
    )
    .await
}

/// `events_20261127` for the day starting at `day * DAY_NS`.
fn partition_name(day: i64) -> String {
    let start = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(day.max(0)).unwrap_or(0) * 86_400);
    let date = humantime::format_rfc3339_seconds(start).to_string();
    format!("events_{}", date.get(..10).unwrap_or("").replace('-', ""))
}

/// The day a partition name stands for; `None` for a table that is not one of ours.
fn partition_day(name: &str) -> Option<i64> {
    let digits = name.strip_prefix("events_")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let text = format!(
        "{}-{}-{}T00:00:00Z",
        digits.get(..4)?,
        digits.get(4..6)?,
        digits.get(6..)?
    );
    let start = humantime::parse_rfc3339(&text).ok()?;
    let secs = start.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs / 86_400).ok()
}

/// Sends every alert committed after `last` on `alerts`, in id order, woken by NOTIFY and by a
/// poll; reconnects its LISTEN connection when it drops.
async fn feed_alerts(
    store: Arc<PgStore>,
    alerts: broadcast::Sender<StoredAlert>,
    mut last: i64,
    mut stop: watch::Receiver<bool>,
) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut poll = tokio::time::interval(FEED_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listener: Option<(Client, JoinHandle<()>)> = None;
    loop {
        if listener
            .as_ref()
            .is_none_or(|(client, _)| client.is_closed())
        {
            listener = listen(&store.url, &store.tls, wake.clone()).await;
        }
        match store.alerts_after(last, FEED_PAGE).await {
            Ok(page) => {
                let full = page.len() == FEED_PAGE as usize;
                for alert in page {
                    last = alert.id;
                    // No subscriber is not an error.
                    let _ = alerts.send(alert);
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!("alert feed cannot read the store: {e}"),
        }
        tokio::select! {
            () = wake.notified() => {}
            _ = poll.tick() => {}
            _ = stop.changed() => break,
        }
    }
    if let Some((_, task)) = listener {
        task.abort();
    }
}

/// A connection that LISTENs on [`ALERT_CHANNEL`] and wakes `wake` on each notification;
/// `None` (logged) when the server cannot be reached, and the poll carries on alone.
async fn listen(
    url: &PostgresUrl,
    tls: &MakeRustlsConnect,
    wake: Arc<tokio::sync::Notify>,
) -> Option<(Client, JoinHandle<()>)> {
    let (client, mut connection) = match url.config().connect(tls.clone()).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(store = %url, "alert feed cannot connect: {}", describe(&e));
            return None;
        }
    };
    let task = tokio::spawn(async move {
        // The connection's messages are where notifications arrive; polling it also drives
        // the client's queries.
        let messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        futures::pin_mut!(messages);
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("alert feed connection ended: {}", describe(&e));
                    break;
                }
            }
        }
    });
    if let Err(e) = client
        .batch_execute(&format!("LISTEN {ALERT_CHANNEL}"))
        .await
    {
        tracing::warn!(store = %url, "alert feed cannot LISTEN: {}", describe(&e));
        task.abort();
        return None;
    }
    Some((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_to_their_day() {
        // 2026-11-27 is day 20_784 since 1970.
        assert_eq!(partition_name(20_784), "events_20261127");
        assert_eq!(partition_day("events_20261127"), Some(20_784));
        assert_eq!(partition_day("events_default"), None);
        assert_eq!(partition_day("events_2026112"), None);
    }
}
