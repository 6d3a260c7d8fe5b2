//! The console's reads in SQLite's SQL, on the store's read-only connections (`queries` holds
//! what both engines share: the answers' types, paging, the ancestry walk, the process tree;
//! `pg_queries` the same reads for PostgreSQL).

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use vigil_proto::{Alert, Event, Level, StoredAlert, Timestamp};

use super::queries::{
    alert_window, buckets_of, duration_ns, like_escape, newest_in_window, ns, page_of, rule_hit,
    AlertDetail, AlertFilter, AlertPage, Ancestry, CountBucket, Cursor, ProcessNode, RuleHits,
    StoredEvent, ANCESTRY_LOOKBACK, MAX_RULES_LISTED, MAX_WINDOW_EVENTS,
};
use crate::store::StoreError;

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// `WHERE` conditions (joined by AND, possibly none) and their parameters.
fn conditions(filter: &AlertFilter) -> (Vec<&'static str>, Vec<Value>) {
    let AlertFilter {
        from,
        to,
        min_severity,
        rule,
        tag,
        host,
        text,
    } = filter;
    let mut sql = Vec::new();
    let mut values = Vec::new();
    if let Some(from) = from {
        sql.push("received_ns >= ?");
        values.push(Value::Integer(ns(*from)));
    }
    if let Some(to) = to {
        sql.push("received_ns < ?");
        values.push(Value::Integer(ns(*to)));
    }
    if let Some(min) = min_severity {
        let levels = [
            Level::Informational,
            Level::Low,
            Level::Medium,
            Level::High,
            Level::Critical,
        ];
        // Levels are stored as text; five fixed placeholders keep the SQL static.
        sql.push("level IN (?, ?, ?, ?, ?)");
        for level in levels {
            let keep = if level >= *min { level.as_str() } else { "" };
            values.push(Value::Text(keep.to_owned()));
        }
    }
    if let Some(rule) = rule {
        sql.push("rule_id = ?");
        values.push(Value::Text(rule.clone()));
    }
    if let Some(tag) = tag {
        sql.push(
            "EXISTS (SELECT 1 FROM json_each(alerts.json, '$.rule.tags') AS t WHERE t.value = ?)",
        );
        values.push(Value::Text(tag.clone()));
    }
    if let Some(host) = host {
        sql.push("(sensor = ? OR json_extract(json, '$.host.name') = ?)");
        values.push(Value::Text(host.clone()));
        values.push(Value::Text(host.clone()));
    }
    if let Some(text) = text {
        sql.push("json LIKE ? ESCAPE '\\'");
        values.push(Value::Text(format!("%{}%", like_escape(text))));
    }
    (sql, values)
}

fn where_sql(parts: &[&str]) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", parts.join(" AND "))
    }
}

pub(super) fn alert_page(
    conn: &Connection,
    path: &Path,
    filter: &AlertFilter,
    cursor: Cursor,
    limit: u32,
) -> Result<AlertPage, StoreError> {
    let (parts, values) = conditions(filter);
    let total: i64 = conn
        .query_row(
            &format!("SELECT COUNT(*) FROM alerts{}", where_sql(&parts)),
            params_from_iter(values.iter()),
            |row| row.get(0),
        )
        .map_err(sqlite(path))?;
    let mut page_parts = parts.clone();
    let mut page_values = values.clone();
    let order = match cursor {
        Cursor::Before(Some(id)) => {
            page_parts.push("id < ?");
            page_values.push(Value::Integer(id));
            "DESC"
        }
        Cursor::Before(None) => "DESC",
        Cursor::After(id) => {
            page_parts.push("id > ?");
            page_values.push(Value::Integer(id));
            "ASC"
        }
    };
    // One more than asked tells whether another page exists.
    page_values.push(Value::Integer(i64::from(limit) + 1));
    let sql = format!(
        "SELECT id, sensor, received_ns, json FROM alerts{} ORDER BY id {order} LIMIT ?",
        where_sql(&page_parts)
    );
    let mut statement = conn.prepare(&sql).map_err(sqlite(path))?;
    let mut rows = statement
        .query(params_from_iter(page_values.iter()))
        .map_err(sqlite(path))?;
    let mut stored = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite(path))? {
        stored.push(stored_alert(row, path)?);
    }
    Ok(page_of(stored, total, cursor, limit))
}

fn stored_alert(row: &rusqlite::Row<'_>, path: &Path) -> Result<StoredAlert, StoreError> {
    let id: i64 = row.get(0).map_err(sqlite(path))?;
    let sensor: String = row.get(1).map_err(sqlite(path))?;
    let received_ns: i64 = row.get(2).map_err(sqlite(path))?;
    let json: String = row.get(3).map_err(sqlite(path))?;
    let alert: Alert = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
        what: "alert",
        id,
        source,
    })?;
    Ok(StoredAlert {
        id,
        sensor,
        received: Timestamp(u64::try_from(received_ns).unwrap_or(0)),
        alert,
    })
}

pub(super) fn alert_detail(
    conn: &Connection,
    path: &Path,
    id: i64,
    before: std::time::Duration,
    after: std::time::Duration,
) -> Result<Option<AlertDetail>, StoreError> {
    let alert = conn
        .query_row(
            "SELECT id, sensor, received_ns, json FROM alerts WHERE id = ?1",
            params![id],
            |row| Ok(stored_alert(row, path)),
        )
        .optional()
        .map_err(sqlite(path))?
        .transpose()?;
    let Some(alert) = alert else {
        return Ok(None);
    };
    let (window_from, window_to) = alert_window(&alert, before, after);
    let mut statement = conn
        .prepare_cached(
            "SELECT id, json FROM events WHERE sensor = ?1 AND ts_ns >= ?2 AND ts_ns <= ?3
             ORDER BY ts_ns, id LIMIT ?4",
        )
        .map_err(sqlite(path))?;
    let mut rows = statement
        .query(params![
            alert.sensor,
            ns(window_from),
            ns(window_to),
            MAX_WINDOW_EVENTS
        ])
        .map_err(sqlite(path))?;
    let mut window = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite(path))? {
        let event_id: i64 = row.get(0).map_err(sqlite(path))?;
        let json: String = row.get(1).map_err(sqlite(path))?;
        // A stored event that no longer parses is skipped, not fatal: the alert is still
        // worth showing.
        if let Ok(event) = serde_json::from_str::<Event>(&json) {
            window.push(StoredEvent {
                id: Some(event_id),
                event,
            });
        }
    }
    let lookback_from = Timestamp(
        window_from
            .unix_nanos()
            .saturating_sub(duration_ns(ANCESTRY_LOOKBACK)),
    );
    let ancestry = ancestry(conn, path, &alert, &window, (lookback_from, window_to))?;
    Ok(Some(AlertDetail::assemble(
        alert,
        ancestry,
        window,
        (window_from, window_to),
    )))
}

/// The alert's process and its ancestors. The window's events are looked at first (already
/// read); older ancestors are looked up in `range` (the LIKE is a cheap prefilter, the
/// json_extract the exact test).
fn ancestry(
    conn: &Connection,
    path: &Path,
    alert: &StoredAlert,
    window: &[StoredEvent],
    range: (Timestamp, Timestamp),
) -> Result<Vec<ProcessNode>, StoreError> {
    let newest = newest_in_window(window);
    let mut statement = conn
        .prepare_cached(
            "SELECT json FROM events WHERE sensor = ?1 AND ts_ns >= ?2 AND ts_ns <= ?3
               AND json LIKE ?4 ESCAPE '\\'
               AND json_extract(json, '$.process.entity_id') = ?5
             ORDER BY ts_ns DESC LIMIT 1",
        )
        .map_err(sqlite(path))?;
    let mut walk = Ancestry::new(&alert.alert.event.process);
    while let Some(p) = walk.next_wanted() {
        let found = match newest.get(p.entity_id.as_str()) {
            Some(event) => Some((*event).clone()),
            None => {
                let pattern = format!("%\"entity_id\":\"{}\"%", like_escape(&p.entity_id));
                let json: Option<String> = statement
                    .query_row(
                        params![alert.sensor, ns(range.0), ns(range.1), pattern, p.entity_id],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(sqlite(path))?;
                json.and_then(|j| serde_json::from_str::<Event>(&j).ok())
            }
        };
        walk.found(&p, found);
    }
    Ok(walk.into_chain())
}

pub(super) fn counts(
    conn: &Connection,
    path: &Path,
    filter: &AlertFilter,
    bucket: std::time::Duration,
) -> Result<Vec<CountBucket>, StoreError> {
    let (parts, mut values) = conditions(filter);
    let width = i64::try_from(bucket.as_nanos()).unwrap_or(i64::MAX).max(1);
    let sql = format!(
        "SELECT (received_ns / ?) * ? AS bucket, level, COUNT(*) FROM alerts{}
         GROUP BY bucket, level ORDER BY bucket",
        where_sql(&parts)
    );
    values.insert(0, Value::Integer(width));
    values.insert(0, Value::Integer(width));
    let mut statement = conn.prepare(&sql).map_err(sqlite(path))?;
    let mut rows = statement
        .query(params_from_iter(values.iter()))
        .map_err(sqlite(path))?;
    let mut counted = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite(path))? {
        counted.push((
            row.get(0).map_err(sqlite(path))?,
            row.get(1).map_err(sqlite(path))?,
            row.get(2).map_err(sqlite(path))?,
        ));
    }
    Ok(buckets_of(counted))
}

pub(super) fn rule_hits(conn: &Connection, path: &Path) -> Result<Vec<RuleHits>, StoreError> {
    // NB: with a single max() aggregate, SQLite takes the bare columns (title, level,
    // received_ns) from the row holding the max: the rule's latest alert. One pass, no JSON.
    let mut statement = conn
        .prepare_cached(
            "SELECT rule_id, COUNT(*) AS hits, MAX(id), title, level, received_ns FROM alerts
             GROUP BY rule_id ORDER BY hits DESC, rule_id LIMIT ?1",
        )
        .map_err(sqlite(path))?;
    let mut rows = statement
        .query(params![MAX_RULES_LISTED])
        .map_err(sqlite(path))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite(path))? {
        out.push(rule_hit(
            row.get(0).map_err(sqlite(path))?,
            row.get(1).map_err(sqlite(path))?,
            row.get(2).map_err(sqlite(path))?,
            row.get(3).map_err(sqlite(path))?,
            row.get(4).map_err(sqlite(path))?,
            row.get(5).map_err(sqlite(path))?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_escape_like_wildcards() {
        let (sql, values) = conditions(&AlertFilter {
            text: Some("50%_off\\".into()),
            min_severity: Some(Level::High),
            ..AlertFilter::default()
        });
        assert_eq!(sql.len(), 2);
        assert_eq!(values[0], Value::Text(String::new()));
        assert_eq!(values[3], Value::Text("high".into()));
        assert_eq!(values[5], Value::Text("%50\\%\\_off\\\\%".into()));
    }
}
