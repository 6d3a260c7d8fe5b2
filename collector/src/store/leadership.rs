//! The PostgreSQL side of sharing alert outputs among the collectors of one database: a session
//! of its own that may hold the outputs leadership, and the per-output cursors, written through
//! that same session.
//!
//! Leadership is a session-level advisory lock ([`OUTPUTS_LEADER_LOCK`]): the server releases it
//! the moment the session ends, whether the collector stopped, was killed or lost its
//! connection, and no second session can hold it meanwhile. Cursors are written only through
//! the session that holds the lock, which fences a deposed leader: once its session is gone its
//! writes fail, so a new leader, which reads the cursors after taking the lock, sees every
//! cursor the old one wrote and none it could write later.
//!
//! A cursor is one alert id ("done with everything up to here") because alert ids become
//! visible in id order (the alert-order lock in `postgres.rs`): no alert with a smaller id can
//! appear after a route has moved past it.

use tokio_postgres::Client;

use super::postgres::{connect, OUTPUTS_LEADER_LOCK};
use super::{to_sql_ns, PgStore, PostgresUrl, StoreError};

/// How long the server waits on a silent leader before ending its session (and releasing the
/// lock): idle seconds before the first keepalive probe, seconds between probes, probes, and
/// milliseconds unacknowledged data may wait. NB: without these the server would rely on the
/// kernel's defaults (two hours) to notice a leader cut off by the network, and no other
/// collector could forward meanwhile. A leader that is killed or stops closes its socket, which
/// the server notices at once.
const SERVER_KEEPALIVE: &str = "SET tcp_keepalives_idle = 10;
     SET tcp_keepalives_interval = 5;
     SET tcp_keepalives_count = 3;
     SET tcp_user_timeout = 25000;
     SET application_name = 'vigil-collector outputs'";

/// A connection of its own, for the outputs leadership (never one of the pool's: a pooled
/// connection's session outlives whoever borrowed it).
pub struct LeaderSession {
    client: Client,
    url: PostgresUrl,
}

impl PgStore {
    /// Opens a session that can compete for the outputs leadership.
    pub async fn leader_session(&self) -> Result<LeaderSession, StoreError> {
        let client = connect(&self.url, &self.tls).await?;
        let session = LeaderSession {
            client,
            url: self.url.clone(),
        };
        session
            .client
            .batch_execute(SERVER_KEEPALIVE)
            .await
            .map_err(session.error())?;
        Ok(session)
    }
}

impl LeaderSession {
    fn error(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |source| StoreError::Postgres {
            target: self.url.to_string(),
            source,
        }
    }

    /// True once the connection is gone (and with it any leadership it held).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Takes the leadership if no other session holds it; true when this session holds it.
    pub async fn try_lead(&self) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&OUTPUTS_LEADER_LOCK])
            .await
            .map_err(self.error())?;
        row.try_get(0).map_err(self.error())
    }

    /// Succeeds while the session (and so the leadership it holds) is alive.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.client
            .batch_execute("SELECT 1")
            .await
            .map_err(self.error())
    }

    /// The cursor of each output in `names` (the last alert id it has done with), creating the
    /// missing ones at `start`: an output no collector forwarded before begins with what is
    /// stored after `start`, not with the history.
    pub async fn cursors(&self, names: &[String], start: i64) -> Result<Vec<i64>, StoreError> {
        let err = self.error();
        let now = to_sql_ns(vigil_proto::Timestamp::now());
        self.client
            .execute(
                "INSERT INTO output_cursors (output, last_id, updated_ns)
                 SELECT name, $2, $3 FROM unnest($1::TEXT[]) AS n (name)
                 ON CONFLICT DO NOTHING",
                &[&names, &start, &now],
            )
            .await
            .map_err(&err)?;
        let rows = self
            .client
            .query(
                "SELECT output, last_id FROM output_cursors WHERE output = ANY($1)",
                &[&names],
            )
            .await
            .map_err(&err)?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(&err)?;
            let last: i64 = row.try_get(1).map_err(&err)?;
            found.insert(name, last);
        }
        Ok(names
            .iter()
            .map(|name| found.get(name).copied().unwrap_or(start))
            .collect())
    }

    /// Records that `output` is done with every alert up to `last_id`. Never moves a cursor
    /// back; fails once this session is gone, so only the leader's writes land.
    pub async fn save_cursor(&self, output: &str, last_id: i64) -> Result<(), StoreError> {
        let now = to_sql_ns(vigil_proto::Timestamp::now());
        self.client
            .execute(
                "UPDATE output_cursors SET last_id = GREATEST(last_id, $2), updated_ns = $3
                 WHERE output = $1",
                &[&output, &last_id, &now],
            )
            .await
            .map_err(self.error())?;
        Ok(())
    }
}
