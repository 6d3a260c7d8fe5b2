//! The console's reads in PostgreSQL's SQL, over the same tables as SQLite's (`queries` holds
//! the SQLite ones and everything both share: the answers' types, paging, the ancestry walk,
//! the process tree). The same HTTP tests run against both engines.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use vigil_proto::{Alert, Event, Level, StoredAlert, Timestamp};

use super::queries::{
    alert_window, buckets_of, duration_ns, like_escape, newest_in_window, ns, page_of, rule_hit,
    AlertDetail, AlertFilter, AlertPage, Ancestry, CountBucket, Cursor, RuleHits, StoredEvent,
    ANCESTRY_LOOKBACK, MAX_RULES_LISTED, MAX_WINDOW_EVENTS,
};
use crate::store::{PgStore, StoreError};

/// A bound parameter of a query being built.
enum Param {
    Int(i64),
    Text(String),
}

/// `WHERE` conditions with `$n` placeholders and their parameters, in order.
#[derive(Default)]
struct Sql {
    conditions: Vec<String>,
    params: Vec<Param>,
}

impl Sql {
    /// Adds a parameter; returns its placeholder.
    fn bind(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("${}", self.params.len())
    }

    fn where_sql(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.conditions.join(" AND "))
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| match p {
                Param::Int(i) => i as &(dyn ToSql + Sync),
                Param::Text(t) => t as &(dyn ToSql + Sync),
            })
            .collect()
    }
}

/// The filter as PostgreSQL conditions: the same meaning as SQLite's (`queries::conditions`).
fn conditions(filter: &AlertFilter) -> Sql {
    let AlertFilter {
        from,
        to,
        min_severity,
        rule,
        tag,
        host,
        text,
    } = filter;
    let mut sql = Sql::default();
    if let Some(from) = from {
        let p = sql.bind(Param::Int(ns(*from)));
        sql.conditions.push(format!("received_ns >= {p}"));
    }
    if let Some(to) = to {
        let p = sql.bind(Param::Int(ns(*to)));
        sql.conditions.push(format!("received_ns < {p}"));
    }
    if let Some(min) = min_severity {
        let levels: Vec<String> = [
            Level::Informational,
            Level::Low,
            Level::Medium,
            Level::High,
            Level::Critical,
        ]
        .into_iter()
        .filter(|level| level >= min)
        .map(|level| sql.bind(Param::Text(level.as_str().to_owned())))
        .collect();
        sql.conditions
            .push(format!("level IN ({})", levels.join(", ")));
    }
    if let Some(rule) = rule {
        let p = sql.bind(Param::Text(rule.clone()));
        sql.conditions.push(format!("rule_id = {p}"));
    }
    if let Some(tag) = tag {
        let p = sql.bind(Param::Text(tag.clone()));
        sql.conditions
            .push(format!("(json::jsonb -> 'rule' -> 'tags') ? {p}"));
    }
    if let Some(host) = host {
        let p = sql.bind(Param::Text(host.clone()));
        sql.conditions.push(format!(
            "(sensor = {p} OR json::jsonb #>> '{{host,name}}' = {p})"
        ));
    }
    if let Some(text) = text {
        // NB: ILIKE, as SQLite's LIKE ignores ASCII case.
        let p = sql.bind(Param::Text(format!("%{}%", like_escape(text))));
        sql.conditions.push(format!("json ILIKE {p} ESCAPE '\\'"));
    }
    sql
}

fn stored_alert(row: &Row, pg: &PgStore) -> Result<StoredAlert, StoreError> {
    let err = pg.error();
    let id: i64 = row.try_get(0).map_err(&err)?;
    let received_ns: i64 = row.try_get(2).map_err(&err)?;
    let json: &str = row.try_get(3).map_err(&err)?;
    let alert: Alert = serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        what: "alert",
        id,
        source,
    })?;
    Ok(StoredAlert {
        id,
        sensor: row.try_get(1).map_err(&err)?,
        received: Timestamp(u64::try_from(received_ns).unwrap_or(0)),
        alert,
    })
}

pub(super) async fn alert_page(
    pg: &PgStore,
    filter: &AlertFilter,
    cursor: Cursor,
    limit: u32,
) -> Result<AlertPage, StoreError> {
    let err = pg.error();
    let client = pg.client().await?;
    let mut sql = conditions(filter);
    let total: i64 = client
        .query_one(
            &format!("SELECT COUNT(*) FROM alerts{}", sql.where_sql()),
            &sql.params(),
        )
        .await
        .map_err(&err)?
        .try_get(0)
        .map_err(&err)?;
    let order = match cursor {
        Cursor::Before(Some(id)) => {
            let p = sql.bind(Param::Int(id));
            sql.conditions.push(format!("id < {p}"));
            "DESC"
        }
        Cursor::Before(None) => "DESC",
        Cursor::After(id) => {
            let p = sql.bind(Param::Int(id));
            sql.conditions.push(format!("id > {p}"));
            "ASC"
        }
    };
    let limit_p = sql.bind(Param::Int(i64::from(limit) + 1));
    let rows = client
        .query(
            &format!(
                "SELECT id, sensor, received_ns, json FROM alerts{} ORDER BY id {order} LIMIT {limit_p}",
                sql.where_sql()
            ),
            &sql.params(),
        )
        .await
        .map_err(&err)?;
    let stored = rows
        .iter()
        .map(|row| stored_alert(row, pg))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(page_of(stored, total, cursor, limit))
}

pub(super) async fn alert_detail(
    pg: &PgStore,
    id: i64,
    before: std::time::Duration,
    after: std::time::Duration,
) -> Result<Option<AlertDetail>, StoreError> {
    let err = pg.error();
    let client = pg.client().await?;
    let Some(row) = client
        .query_opt(
            "SELECT id, sensor, received_ns, json FROM alerts WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(&err)?
    else {
        return Ok(None);
    };
    let alert = stored_alert(&row, pg)?;
    let (window_from, window_to) = alert_window(&alert, before, after);
    let rows = client
        .query(
            "SELECT id, json FROM events WHERE sensor = $1 AND ts_ns >= $2 AND ts_ns <= $3
             ORDER BY ts_ns, id LIMIT $4",
            &[
                &alert.sensor,
                &ns(window_from),
                &ns(window_to),
                &i64::from(MAX_WINDOW_EVENTS),
            ],
        )
        .await
        .map_err(&err)?;
    let mut window = Vec::with_capacity(rows.len());
    for row in &rows {
        let event_id: i64 = row.try_get(0).map_err(&err)?;
        let json: &str = row.try_get(1).map_err(&err)?;
        // As in SQLite: an event that no longer parses is skipped, the alert still shown.
        if let Ok(event) = serde_json::from_str::<Event>(json) {
            window.push(StoredEvent {
                id: Some(event_id),
                event,
            });
        }
    }
    let lookback_from = ns(Timestamp(
        window_from
            .unix_nanos()
            .saturating_sub(duration_ns(ANCESTRY_LOOKBACK)),
    ));
    let newest = newest_in_window(&window);
    let mut walk = Ancestry::new(&alert.alert.event.process);
    while let Some(wanted) = walk.next_wanted() {
        let found = match newest.get(wanted.entity_id.as_str()) {
            Some(event) => Some((*event).clone()),
            None => {
                let pattern = format!("%\"entity_id\":\"{}\"%", like_escape(&wanted.entity_id));
                let row = client
                    .query_opt(
                        "SELECT json FROM events WHERE sensor = $1 AND ts_ns >= $2 AND ts_ns <= $3
                           AND json LIKE $4 ESCAPE '\\'
                           AND json::jsonb #>> '{process,entity_id}' = $5
                         ORDER BY ts_ns DESC LIMIT 1",
                        &[
                            &alert.sensor,
                            &lookback_from,
                            &ns(window_to),
                            &pattern,
                            &wanted.entity_id,
                        ],
                    )
                    .await
                    .map_err(&err)?;
                match row {
                    Some(row) => {
                        let json: &str = row.try_get(0).map_err(&err)?;
                        serde_json::from_str::<Event>(json).ok()
                    }
                    None => None,
                }
            }
        };
        walk.found(&wanted, found);
    }
    let ancestry = walk.into_chain();
    Ok(Some(AlertDetail::assemble(
        alert,
        ancestry,
        window,
        (window_from, window_to),
    )))
}

pub(super) async fn counts(
    pg: &PgStore,
    filter: &AlertFilter,
    bucket: std::time::Duration,
) -> Result<Vec<CountBucket>, StoreError> {
    let err = pg.error();
    let client = pg.client().await?;
    let mut sql = conditions(filter);
    let width = sql.bind(Param::Int(
        i64::try_from(bucket.as_nanos()).unwrap_or(i64::MAX).max(1),
    ));
    let rows = client
        .query(
            &format!(
                "SELECT (received_ns / {width}) * {width} AS bucket, level, COUNT(*) FROM alerts{}
                 GROUP BY bucket, level ORDER BY bucket",
                sql.where_sql()
            ),
            &sql.params(),
        )
        .await
        .map_err(&err)?;
    let mut counted = Vec::with_capacity(rows.len());
    for row in &rows {
        counted.push((
            row.try_get::<_, i64>(0).map_err(&err)?,
            row.try_get::<_, String>(1).map_err(&err)?,
            row.try_get::<_, i64>(2).map_err(&err)?,
        ));
    }
    Ok(buckets_of(counted))
}

pub(super) async fn rule_hits(pg: &PgStore) -> Result<Vec<RuleHits>, StoreError> {
    let err = pg.error();
    let client = pg.client().await?;
    let rows = client
        .query(
            "SELECT a.rule_id, g.hits, a.id, a.title, a.level, a.received_ns
             FROM (SELECT rule_id, COUNT(*) AS hits, MAX(id) AS last FROM alerts GROUP BY rule_id) g
             JOIN alerts a ON a.id = g.last
             ORDER BY g.hits DESC, a.rule_id LIMIT $1",
            &[&i64::from(MAX_RULES_LISTED)],
        )
        .await
        .map_err(&err)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(rule_hit(
            row.try_get(0).map_err(&err)?,
            row.try_get(1).map_err(&err)?,
            row.try_get(2).map_err(&err)?,
            row.try_get(3).map_err(&err)?,
            row.try_get(4).map_err(&err)?,
            row.try_get(5).map_err(&err)?,
        ));
    }
    Ok(out)
}
