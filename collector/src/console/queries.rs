//! What the console reads from the store, and nothing else: filtered pages of alerts, one
//! alert with its process ancestry and the events around it, alert counts over time, hits per
//! rule, the sensors.
//!
//! [`ConsoleStore`] is the narrow interface the HTTP handlers use. It runs SQL on the SQLite
//! store's read-only connections (`sqlite_queries`) or on the PostgreSQL store's pool
//! (`pg_queries`); what the two share (the answers' types, paging, the ancestry walk, the
//! process tree) lives here, so both engines answer alike. Paging is by id (keyset), never by offset, so page N costs
//! what page 1 costs however many alerts are stored.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use vigil_proto::{Event, Level, ParentProcess, StoredAlert, Timestamp};

use super::{pg_queries, sqlite_queries};
use crate::store::{PgStore, SqliteStore, Store, StoreError};

/// How far before the window an ancestor's newest event is looked for. Bounded because a
/// process with no stored event at all (started before the sensor) costs a scan of this range:
/// the events table has no index by process.
pub(super) const ANCESTRY_LOOKBACK: std::time::Duration = std::time::Duration::from_secs(3600);
/// Deepest ancestry walked: past this it is a loop in bad data, not a real process tree.
const MAX_ANCESTRY: usize = 64;
/// Events read from the window around an alert; the answer says when it was cut.
pub(super) const MAX_WINDOW_EVENTS: u32 = 50_000;
/// Events of the alert's process tree returned.
const MAX_TREE_EVENTS: usize = 2_000;

/// Which alerts; every field narrows, `None` does not.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct AlertFilter {
    /// Received at or after.
    pub from: Option<Timestamp>,
    /// Received before.
    pub to: Option<Timestamp>,
    /// This level and above.
    pub min_severity: Option<Level>,
    /// Rule id, exactly.
    pub rule: Option<String>,
    /// One of the rule's tags, exactly (`attack.t1003`).
    pub tag: Option<String>,
    /// The sensor's certificate name or the event's host name, exactly.
    pub host: Option<String>,
    /// Anywhere in the alert's JSON, case-insensitive for ASCII.
    pub text: Option<String>,
}

/// Where a page starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Cursor {
    /// Newest first, ids below this (the first page: `None`).
    Before(Option<i64>),
    /// Oldest first, ids above this: what the live table polls for.
    After(i64),
}

/// One row of the alerts table.
#[derive(Clone, Debug, Serialize)]
pub(super) struct AlertSummary {
    pub id: i64,
    pub sensor: String,
    pub received: Timestamp,
    #[serde(rename = "@timestamp")]
    pub timestamp: Timestamp,
    pub rule: vigil_proto::RuleInfo,
    pub host: String,
    pub action: vigil_proto::EventAction,
    pub process: ProcessNode,
}

#[derive(Clone, Debug, Serialize)]
pub(super) struct AlertPage {
    pub alerts: Vec<AlertSummary>,
    /// Matching alerts in all pages.
    pub total: u64,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// A process as the console shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct ProcessNode {
    pub entity_id: String,
    pub pid: u32,
    pub name: String,
    pub executable: String,
    pub command_line: String,
    pub start: Timestamp,
    /// Effective user name (or id), when an event of this process was stored.
    pub user: Option<String>,
    pub parent_entity_id: Option<String>,
    /// False when all that is known comes from a child's `process.parent` (no stored event of
    /// this process itself).
    pub seen: bool,
}

impl ProcessNode {
    fn of(process: &vigil_proto::Process) -> Self {
        let user = &process.user;
        Self {
            entity_id: process.entity_id.clone(),
            pid: process.pid,
            name: process.name.clone(),
            executable: process.executable.clone(),
            command_line: process.command_line.clone(),
            start: process.start,
            user: Some(user.name.clone().unwrap_or_else(|| user.id.to_string())),
            parent_entity_id: process.parent.as_ref().map(|p| p.entity_id.clone()),
            seen: true,
        }
    }

    fn of_parent(parent: &vigil_proto::ParentProcess) -> Self {
        Self {
            entity_id: parent.entity_id.clone(),
            pid: parent.pid,
            name: parent.name.clone(),
            executable: parent.executable.clone(),
            command_line: parent.command_line.clone(),
            start: parent.start,
            user: None,
            parent_entity_id: None,
            seen: false,
        }
    }
}

/// One stored event.
#[derive(Clone, Debug, Serialize)]
pub(super) struct StoredEvent {
    /// The row id; `None` for the alert's own event when its telemetry copy is not stored (yet:
    /// the sensor sends alerts at once and telemetry in batches, after hashing the executable).
    pub id: Option<i64>,
    #[serde(flatten)]
    pub event: Event,
}

/// An alert with what it takes to investigate it.
#[derive(Clone, Debug, Serialize)]
pub(super) struct AlertDetail {
    pub alert: StoredAlert,
    /// The alert's process first, then its parent, grandparent... as far as known.
    pub ancestry: Vec<ProcessNode>,
    /// The alert's process and every descendant seen in the window (each names its parent).
    pub tree: Vec<ProcessNode>,
    /// Events of the processes in `tree` within the window, oldest first.
    pub events: Vec<StoredEvent>,
    pub window_from: Timestamp,
    pub window_to: Timestamp,
    /// True when the window held more events than were read, or the tree more than returned.
    pub truncated: bool,
}

impl AlertDetail {
    /// What both engines answer once they have read the alert's window (at most
    /// [`MAX_WINDOW_EVENTS`], oldest first) and walked its ancestry: the process tree and its
    /// events from the window, the alert's own event among them.
    pub(super) fn assemble(
        alert: StoredAlert,
        ancestry: Vec<ProcessNode>,
        window: Vec<StoredEvent>,
        (window_from, window_to): (Timestamp, Timestamp),
    ) -> Self {
        let read_all = window.len() < MAX_WINDOW_EVENTS as usize;
        let (tree, mut events, tree_complete) = process_tree(&alert.alert.event.process, window);
        with_alert_event(&mut events, &alert.alert.event);
        AlertDetail {
            alert,
            ancestry,
            tree,
            events,
            window_from,
            window_to,
            truncated: !(read_all && tree_complete),
        }
    }
}

/// Alerts per time bucket, by level.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(super) struct CountBucket {
    pub start: Timestamp,
    pub total: u64,
    pub by_level: std::collections::BTreeMap<Level, u64>,
}

/// How many stored alerts one rule raised, and its latest.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub(super) struct RuleHits {
    pub id: String,
    /// As the latest alert carried it (a rule's title may change between versions).
    pub title: String,
    pub level: Option<Level>,
    pub hits: u64,
    pub last_hit: Timestamp,
    pub last_alert_id: i64,
}

/// Most rules the hit table lists (the most frequent first): bounds the answer.
pub(super) const MAX_RULES_LISTED: u32 = 5_000;

/// Which engine answers.
enum Engine<'a> {
    Sqlite(&'a SqliteStore),
    Postgres(&'a PgStore),
}

/// The console's view of the store.
#[derive(Clone)]
pub(super) struct ConsoleStore {
    store: Store,
}

impl ConsoleStore {
    pub(super) fn new(store: Store) -> Self {
        Self { store }
    }

    fn engine(&self) -> Result<Engine<'_>, StoreError> {
        if let Some(sqlite) = self.store.as_sqlite() {
            return Ok(Engine::Sqlite(sqlite));
        }
        self.store
            .as_postgres()
            .map(Engine::Postgres)
            .ok_or(StoreError::Unsupported {
                what: "the web console",
            })
    }

    /// One page of matching alerts (`limit` rows at most) and how many match in all.
    pub(super) async fn alerts(
        &self,
        filter: AlertFilter,
        cursor: Cursor,
        limit: u32,
    ) -> Result<AlertPage, StoreError> {
        match self.engine()? {
            Engine::Sqlite(db) => {
                db.read(move |conn, path| {
                    sqlite_queries::alert_page(conn, path, &filter, cursor, limit)
                })
                .await
            }
            Engine::Postgres(pg) => pg_queries::alert_page(pg, &filter, cursor, limit).await,
        }
    }

    /// The alert with this id and its context: ancestry from stored events, and the events of
    /// its process tree from `before` ahead of the alert to `after` past it.
    pub(super) async fn alert_detail(
        &self,
        id: i64,
        before: std::time::Duration,
        after: std::time::Duration,
    ) -> Result<Option<AlertDetail>, StoreError> {
        match self.engine()? {
            Engine::Sqlite(db) => {
                db.read(move |conn, path| {
                    sqlite_queries::alert_detail(conn, path, id, before, after)
                })
                .await
            }
            Engine::Postgres(pg) => pg_queries::alert_detail(pg, id, before, after).await,
        }
    }

    /// Matching alerts counted per `bucket` of receive time, oldest bucket first; empty buckets
    /// are left out.
    pub(super) async fn counts(
        &self,
        filter: AlertFilter,
        bucket: std::time::Duration,
    ) -> Result<Vec<CountBucket>, StoreError> {
        match self.engine()? {
            Engine::Sqlite(db) => {
                db.read(move |conn, path| sqlite_queries::counts(conn, path, &filter, bucket))
                    .await
            }
            Engine::Postgres(pg) => pg_queries::counts(pg, &filter, bucket).await,
        }
    }

    /// Every sensor that sent a heartbeat (both engines answer this one).
    pub(super) async fn sensors(&self) -> Result<Vec<vigil_proto::SensorInfo>, StoreError> {
        self.store.sensors().await
    }

    /// Stored alerts per rule id, the most frequent first.
    pub(super) async fn rule_hits(&self) -> Result<Vec<RuleHits>, StoreError> {
        match self.engine()? {
            Engine::Sqlite(db) => db.read(sqlite_queries::rule_hits).await,
            Engine::Postgres(pg) => pg_queries::rule_hits(pg).await,
        }
    }
}

/// Nanoseconds as SQLite's i64, clamped (as the store does).
pub(super) fn ns(t: Timestamp) -> i64 {
    i64::try_from(t.unix_nanos()).unwrap_or(i64::MAX)
}

/// `text` as a literal inside a LIKE pattern with `ESCAPE '\'`.
pub(super) fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// A page from up to `limit + 1` alerts in page order (one more than shown tells whether
/// another page exists) and the count of all matches.
pub(super) fn page_of(
    stored: Vec<StoredAlert>,
    total: i64,
    cursor: Cursor,
    limit: u32,
) -> AlertPage {
    let more = stored.len() > limit as usize;
    let alerts: Vec<AlertSummary> = stored
        .into_iter()
        .take(limit as usize)
        .map(summary)
        .collect();
    let next_before = match cursor {
        Cursor::Before(_) if more => alerts.last().map(|a| a.id),
        _ => None,
    };
    AlertPage {
        alerts,
        total: u64::try_from(total).unwrap_or(0),
        next_before,
    }
}

fn summary(stored: StoredAlert) -> AlertSummary {
    let StoredAlert {
        id,
        sensor,
        received,
        alert,
    } = stored;
    AlertSummary {
        id,
        sensor,
        received,
        timestamp: alert.event.timestamp,
        host: alert.event.host.name.clone(),
        action: alert.event.event.action,
        process: ProcessNode::of(&alert.event.process),
        rule: alert.rule,
    }
}

/// The stretch of time around an alert whose events its page shows.
pub(super) fn alert_window(
    alert: &StoredAlert,
    before: std::time::Duration,
    after: std::time::Duration,
) -> (Timestamp, Timestamp) {
    let at = alert.alert.event.timestamp.unix_nanos();
    (
        Timestamp(at.saturating_sub(duration_ns(before))),
        Timestamp(at.saturating_add(duration_ns(after))),
    )
}

/// Puts the alert's own event in the timeline, in time order, unless its telemetry copy (same
/// process, same sensor sequence number) is already there.
pub(super) fn with_alert_event(events: &mut Vec<StoredEvent>, alerted: &Event) {
    let same = |e: &StoredEvent| {
        e.event.event.sequence == alerted.event.sequence
            && e.event.process.entity_id == alerted.process.entity_id
    };
    if events.iter().any(same) {
        return;
    }
    let at = events.partition_point(|e| e.event.timestamp <= alerted.timestamp);
    let mut event = alerted.clone();
    // Stored as an alert, the event says so; in the timeline it is what happened.
    event.event.kind = "event".into();
    events.insert(at, StoredEvent { id: None, event });
}

pub(super) fn duration_ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The newest event of each process in the window (events are oldest first).
pub(super) fn newest_in_window(window: &[StoredEvent]) -> HashMap<&str, &Event> {
    window
        .iter()
        .map(|e| (e.event.process.entity_id.as_str(), &e.event))
        .collect()
}

/// The walk up from the alert's process: each parent from the newest stored event of that
/// parent when there is one (full facts and the next parent up), else from what its child's
/// event said. Each engine finds the events; this decides where to stop (an empty id, a loop
/// in bad data, [`MAX_ANCESTRY`]).
pub(super) struct Ancestry {
    chain: Vec<ProcessNode>,
    parent: Option<ParentProcess>,
    seen: HashSet<String>,
}

impl Ancestry {
    pub(super) fn new(process: &vigil_proto::Process) -> Self {
        Self {
            chain: vec![ProcessNode::of(process)],
            parent: process.parent.as_deref().cloned(),
            seen: HashSet::from([process.entity_id.clone()]),
        }
    }

    /// The next ancestor to look up, or `None` when the walk is over.
    pub(super) fn next_wanted(&mut self) -> Option<ParentProcess> {
        let p = self.parent.take()?;
        if p.entity_id.is_empty()
            || !self.seen.insert(p.entity_id.clone())
            || self.chain.len() >= MAX_ANCESTRY
        {
            return None;
        }
        Some(p)
    }

    /// What the lookup of `wanted` found: its newest event, or nothing.
    pub(super) fn found(&mut self, wanted: &ParentProcess, event: Option<Event>) {
        match event {
            Some(event) => {
                self.chain.push(ProcessNode::of(&event.process));
                self.parent = event.process.parent.map(|b| *b);
            }
            None => self.chain.push(ProcessNode::of_parent(wanted)),
        }
    }

    pub(super) fn into_chain(self) -> Vec<ProcessNode> {
        self.chain
    }
}

/// From the window's events (oldest first), the alert's process and its descendants (a child
/// joins when an event names a member as its parent), and the events of those processes.
/// Pure: unit-tested without a database. The flag is false when events were cut.
pub(super) fn process_tree(
    root: &vigil_proto::Process,
    window: Vec<StoredEvent>,
) -> (Vec<ProcessNode>, Vec<StoredEvent>, bool) {
    let mut members: Vec<ProcessNode> = vec![ProcessNode::of(root)];
    let mut index = std::collections::HashMap::from([(root.entity_id.clone(), 0usize)]);
    let mut events = Vec::new();
    let mut complete = true;
    for stored in window {
        let process = &stored.event.process;
        let parent_in_tree = process
            .parent
            .as_ref()
            .is_some_and(|p| index.contains_key(&p.entity_id));
        match index.get(&process.entity_id) {
            // The latest facts win (an exec replaces the name and command line of a fork).
            Some(&i) => {
                if let Some(node) = members.get_mut(i) {
                    *node = ProcessNode::of(process);
                }
            }
            None if parent_in_tree => {
                index.insert(process.entity_id.clone(), members.len());
                members.push(ProcessNode::of(process));
            }
            None => continue,
        }
        if events.len() < MAX_TREE_EVENTS {
            events.push(stored);
        } else {
            complete = false;
        }
    }
    (members, events, complete)
}

/// Buckets from (bucket start ns, level, count) rows ordered by bucket.
pub(super) fn buckets_of(rows: Vec<(i64, String, i64)>) -> Vec<CountBucket> {
    let mut out: Vec<CountBucket> = Vec::new();
    for (start, level, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        let start = Timestamp(u64::try_from(start).unwrap_or(0));
        if out.last().map(|b| b.start) != Some(start) {
            out.push(CountBucket {
                start,
                total: 0,
                by_level: Default::default(),
            });
        }
        if let Some(last) = out.last_mut() {
            last.total += n;
            if let Ok(level) = serde_json::from_value::<Level>(serde_json::Value::String(level)) {
                *last.by_level.entry(level).or_default() += n;
            }
        }
    }
    out
}

/// One row of the hit table from (rule id, hits, latest alert id, its title, its level, its
/// receive time).
pub(super) fn rule_hit(
    id: String,
    hits: i64,
    last_alert_id: i64,
    title: String,
    level: String,
    received_ns: i64,
) -> RuleHits {
    RuleHits {
        id,
        title,
        level: serde_json::from_value(serde_json::Value::String(level)).ok(),
        hits: u64::try_from(hits).unwrap_or(0),
        last_hit: Timestamp(u64::try_from(received_ns).unwrap_or(0)),
        last_alert_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::{ParentProcess, Process};

    fn process(entity: &str, pid: u32, parent: Option<&str>) -> Process {
        Process {
            pid,
            entity_id: entity.into(),
            name: format!("p{pid}"),
            parent: parent.map(|p| {
                Box::new(ParentProcess {
                    entity_id: p.into(),
                    ..ParentProcess::default()
                })
            }),
            ..Process::default()
        }
    }

    fn stored(id: i64, process: Process) -> StoredEvent {
        StoredEvent {
            id: Some(id),
            event: Event {
                process,
                ..Event::default()
            },
        }
    }

    #[test]
    fn the_tree_holds_descendants_and_only_their_events() {
        let root = process("r", 10, Some("shell"));
        let window = vec![
            stored(1, process("shell", 5, Some("init"))),
            stored(2, root.clone()),
            stored(3, process("c1", 11, Some("r"))),
            stored(4, process("other", 99, Some("shell"))),
            stored(5, process("g1", 12, Some("c1"))),
            stored(6, process("c1", 11, Some("r"))),
        ];
        let (tree, events, complete) = process_tree(&root, window);
        let ids: Vec<_> = tree.iter().map(|n| n.entity_id.as_str()).collect();
        assert_eq!(ids, ["r", "c1", "g1"]);
        assert_eq!(tree[2].parent_entity_id.as_deref(), Some("c1"));
        let event_ids: Vec<_> = events.iter().map(|e| e.id).collect();
        assert_eq!(event_ids, [Some(2), Some(3), Some(5), Some(6)]);
        assert!(complete);
    }

    #[test]
    fn the_alerts_own_event_is_in_the_timeline_once() {
        let at = |ns: u64, seq: u64, entity: &str| {
            let mut e = stored(0, process(entity, 1, None)).event;
            e.timestamp = Timestamp(ns);
            e.event.sequence = seq;
            e
        };
        let mut events = vec![
            StoredEvent {
                id: Some(1),
                event: at(10, 1, "r"),
            },
            StoredEvent {
                id: Some(2),
                event: at(30, 3, "r"),
            },
        ];
        with_alert_event(&mut events, &at(20, 2, "r"));
        let ids: Vec<_> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [Some(1), None, Some(2)]);
        with_alert_event(&mut events, &at(30, 3, "r"));
        assert_eq!(events.len(), 3, "already there as telemetry");
    }
}
