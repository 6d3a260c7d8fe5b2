//! Alert outputs: committed alerts, filtered per route, delivered to webhooks, Slack, syslog
//! and files.
//!
//! A dispatcher follows the store's broadcast, which carries each alert only after its batch
//! is committed (and catches up from the store if it falls behind, as `vigil tail` does). It
//! offers every alert to each route whose filter admits it. A route holds a bounded queue and
//! one delivery task: the head of the queue is retried with doubling backoff until it is
//! delivered; when the queue is full the oldest alert is dropped and counted. Nothing here
//! ever waits on ingest's path: the broadcast does not block its sender and the queues do not
//! block the dispatcher, so a down endpoint costs memory up to its bound, never throughput.
//!
//! Who forwards: with SQLite, the one collector, from the alerts stored after it started.
//! With PostgreSQL, every collector's broadcast carries every collector's alerts, so only one
//! of them, the outputs leader ([`leader`]), runs the dispatcher and the routes; each route
//! records in the database how far it got (its cursor), and a collector that takes the lead
//! resumes each route from there. Forwarding is at least once: a failover repeats at most the
//! one alert per route that was being delivered when the leader went away.

pub mod config;
mod format;
mod leader;
mod sink;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};
use vigil_proto::StoredAlert;

pub use self::config::RouteConfig;
use self::config::{AlertFilter, RetryConfig};
use self::sink::Sink;
use crate::store::{LeaderSession, Store};

/// Alerts read from the store per query when the dispatcher catches up after lagging.
const CATCH_UP_PAGE: u32 = 256;

/// Failed attempts in a row logged at warn level before the rest go to debug (the counter
/// still counts every one); the recovery is logged again.
const WARN_FAILURES: u64 = 3;

/// How often an idle route records a cursor that moved past alerts its filter refused.
const IDLE_CURSOR_SAVE: Duration = Duration::from_secs(1);

/// A cursor write that takes longer than this counts as failed (and is retried).
const CURSOR_SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The running outputs; [`Outputs::stop`] ends their tasks.
pub struct Outputs {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Outputs {
    /// Starts forwarding the alerts stored after `after_id` (the last one stored when `live`
    /// was joined: outputs carry what happens from now on, not the history). With PostgreSQL
    /// this collector forwards only while it leads the outputs, and resumes each route from
    /// its cursor; routes no collector forwarded before start after `after_id`.
    pub fn start(
        routes: &BTreeMap<String, RouteConfig>,
        live: broadcast::Receiver<StoredAlert>,
        after_id: i64,
        store: Store,
    ) -> Outputs {
        let (stop, stopped) = watch::channel(false);
        if routes.is_empty() {
            return Outputs { stop, task: None };
        }
        for (name, route) in routes {
            if let Some(m) = crate::metrics::collector_metrics() {
                m.output_registered(name);
            }
            info!(output = %name, kind = route.to.kind(), "alert output {name} ({})", route.to.kind());
        }
        let routes = routes.clone();
        let task = if store.as_postgres().is_some() {
            tokio::spawn(leader::lead(routes, live, after_id, store, stopped))
        } else {
            tokio::spawn(forward_alone(routes, live, after_id, store, stopped))
        };
        Outputs {
            stop,
            task: Some(task),
        }
    }

    /// Stops every output task and waits for them. Undelivered alerts stay in the store.
    pub async fn stop(self) {
        let Self { stop, task } = self;
        let _ = stop.send(true);
        if let Some(task) = task {
            if let Err(e) = task.await {
                if e.is_panic() {
                    error!("the alert outputs panicked: {e}");
                }
            }
        }
    }
}

/// SQLite: this collector is the only one on its database, so it forwards until stopped.
async fn forward_alone(
    routes: BTreeMap<String, RouteConfig>,
    live: broadcast::Receiver<StoredAlert>,
    after_id: i64,
    store: Store,
    mut stop: watch::Receiver<bool>,
) {
    info!("outputs leader: yes (the only collector on this database)");
    if let Some(m) = crate::metrics::collector_metrics() {
        m.outputs_leader(true);
    }
    let starts = vec![after_id; routes.len()];
    let term = Term::start(&routes, &starts, live, store, None);
    let _ = stop.changed().await;
    term.stop().await;
}

/// Where a leader's routes record their cursors, and whom they tell when that fails.
#[derive(Clone)]
struct Cursors {
    session: Arc<LeaderSession>,
    /// Wakes the leader to check its session at once.
    trouble: Arc<Notify>,
}

/// One stretch of forwarding: a dispatcher and a delivery task per route, each route starting
/// after its own id. A leader runs one term per stretch of leadership.
struct Term {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    queues: Vec<Arc<RouteQueue>>,
}

impl Term {
    /// `starts[i]` is the last alert id route `i` (in `routes`' order) is done with.
    fn start(
        routes: &BTreeMap<String, RouteConfig>,
        starts: &[i64],
        live: broadcast::Receiver<StoredAlert>,
        store: Store,
        cursors: Option<Cursors>,
    ) -> Term {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut queues = Vec::new();
        for ((name, route), &start) in routes.iter().zip(starts) {
            let RouteConfig {
                to,
                filter,
                queue,
                retry,
            } = route;
            let queue = Arc::new(RouteQueue {
                name: name.clone(),
                filter: filter.clone(),
                capacity: queue.get(),
                state: Mutex::new(QueueState {
                    alerts: VecDeque::new(),
                    offered: start,
                }),
                saved: AtomicI64::new(start),
                wake: Notify::new(),
            });
            tasks.spawn(deliver_loop(
                queue.clone(),
                Sink::new(to),
                *retry,
                cursors.clone(),
                stopped.clone(),
            ));
            queues.push(queue);
        }
        let from = starts.iter().copied().min().unwrap_or(0);
        tasks.spawn(dispatch(live, from, store, queues.clone(), stopped));
        Term {
            stop,
            tasks,
            queues,
        }
    }

    /// Ends the term; what its queues held stays in the store (and, for a leader, after the
    /// routes' cursors, where the next leader starts).
    async fn stop(self) {
        let Self {
            stop,
            mut tasks,
            queues,
        } = self;
        let _ = stop.send(true);
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    error!("an output task panicked: {e}");
                }
            }
        }
        if let Some(m) = crate::metrics::collector_metrics() {
            for queue in &queues {
                m.output_queued(&queue.name, 0);
            }
        }
    }
}

/// One route's filter and its bounded queue of alerts waiting for delivery.
struct RouteQueue {
    name: String,
    filter: AlertFilter,
    capacity: usize,
    state: Mutex<QueueState>,
    /// The last cursor recorded in the database (leaders only).
    saved: AtomicI64,
    /// Wakes the delivery task when the queue gains an alert.
    wake: Notify,
}

struct QueueState {
    alerts: VecDeque<StoredAlert>,
    /// The id of the last alert offered to this route, admitted or not.
    offered: i64,
}

impl RouteQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last alert id this route is done with: every alert up to it was delivered, refused
    /// by the filter, or dropped from a full queue (and counted).
    fn cursor(&self) -> i64 {
        let state = self.lock();
        match state.alerts.front() {
            Some(head) => head.id - 1,
            None => state.offered,
        }
    }

    /// Queues `alert` if it is new to this route and the filter admits it, dropping the oldest
    /// when full.
    fn offer(&self, alert: &StoredAlert) {
        let (dropped, len) = {
            let mut state = self.lock();
            if alert.id <= state.offered {
                return;
            }
            state.offered = alert.id;
            if !self.filter.admits(alert) {
                return;
            }
            let dropped = if state.alerts.len() >= self.capacity {
                state.alerts.pop_front()
            } else {
                None
            };
            state.alerts.push_back(alert.clone());
            (dropped, state.alerts.len())
        };
        if let Some(m) = crate::metrics::collector_metrics() {
            m.output_queued(&self.name, len);
            if dropped.is_some() {
                m.output_dropped(&self.name);
            }
        }
        if let Some(old) = dropped {
            debug!(output = %self.name, alert_id = old.id, "output queue full: dropped alert {}", old.id);
        }
        self.wake.notify_one();
    }

    /// Records the route's cursor if it moved, retrying until it is recorded or the term ends
    /// (false): a leader delivers nothing more on a route whose progress it cannot record.
    async fn save_cursor(&self, cursors: &Cursors, stop: &mut watch::Receiver<bool>) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let cursor = self.cursor();
            if cursor <= self.saved.load(Ordering::Relaxed) {
                return true;
            }
            // NB: bounded, and given up at the end of the term: a leader cut off from the
            // database must not hang here while its term is being ended.
            let write = tokio::time::timeout(
                CURSOR_SAVE_TIMEOUT,
                cursors.session.save_cursor(&self.name, cursor),
            );
            let why = tokio::select! {
                written = write => match written {
                    Ok(Ok(())) => {
                        self.saved.fetch_max(cursor, Ordering::Relaxed);
                        return true;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {CURSOR_SAVE_TIMEOUT:?}"),
                },
                _ = stop.changed() => return false,
            };
            warn!(output = %self.name, "output {} cannot record how far it got: {why}", self.name);
            cursors.trouble.notify_one();
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Follows committed alerts and offers each, once and in id order, to every route.
async fn dispatch(
    mut live: broadcast::Receiver<StoredAlert>,
    after_id: i64,
    store: Store,
    routes: Vec<Arc<RouteQueue>>,
    mut stop: watch::Receiver<bool>,
) {
    // What was committed before `live` was joined is in the store.
    let Some(mut last) = catch_up(&store, after_id, &routes, &mut stop).await else {
        return;
    };
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(alert) => {
                    if alert.id > last {
                        last = alert.id;
                        for route in &routes {
                            route.offer(&alert);
                        }
                    }
                }
                // Everything missed is committed, so the store has it.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    debug!(missed, "alert outputs lagged; catching up from the store");
                    match catch_up(&store, last, &routes, &mut stop).await {
                        Some(caught_up) => last = caught_up,
                        None => return,
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Offers every stored alert after `after`; returns the last id offered, or `None` when
/// stopped first. A store that cannot be read is retried: skipping would lose those alerts for
/// good once a route's cursor moves past them.
async fn catch_up(
    store: &Store,
    after: i64,
    routes: &[Arc<RouteQueue>],
    stop: &mut watch::Receiver<bool>,
) -> Option<i64> {
    let mut last = after;
    let mut backoff = Duration::from_millis(100);
    loop {
        let page = tokio::select! {
            page = store.alerts_after(last, CATCH_UP_PAGE) => page,
            _ = stop.changed() => return None,
        };
        match page {
            Ok(page) => {
                let full = page.len() == CATCH_UP_PAGE as usize;
                for alert in page {
                    last = alert.id;
                    for route in routes {
                        route.offer(&alert);
                    }
                }
                if !full {
                    return Some(last);
                }
            }
            Err(e) => {
                error!(retry_in = ?backoff, "alert outputs cannot catch up from the store: {e}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Delivers the route's queue head until it succeeds, then the next, backing off on failure;
/// a leader records the route's cursor after each delivery, before the next.
async fn deliver_loop(
    route: Arc<RouteQueue>,
    mut sink: Sink,
    retry: RetryConfig,
    cursors: Option<Cursors>,
    mut stop: watch::Receiver<bool>,
) {
    let RetryConfig { initial, max } = retry;
    let max = max.max(initial);
    let mut backoff = initial;
    let mut failures: u64 = 0;
    loop {
        let head = route.lock().alerts.front().cloned();
        let Some(alert) = head else {
            // Idle: the cursor may still have moved past alerts the filter refused.
            let idle_save = async {
                match &cursors {
                    Some(_) => tokio::time::sleep(IDLE_CURSOR_SAVE).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // NB: notify_one stores a permit when nobody waits, so an alert queued
                // between the check above and this wait is not missed.
                () = route.wake.notified() => continue,
                () = idle_save => {
                    if let Some(cursors) = &cursors {
                        if !route.save_cursor(cursors, &mut stop).await {
                            return;
                        }
                    }
                    continue;
                }
                _ = stop.changed() => return,
            }
        };
        let outcome = tokio::select! {
            outcome = sink.deliver(&alert) => outcome,
            _ = stop.changed() => return,
        };
        let metrics = crate::metrics::collector_metrics();
        match outcome {
            Ok(()) => {
                let len = {
                    let mut state = route.lock();
                    // The head may have been dropped meanwhile by a full queue.
                    if state.alerts.front().map(|a| a.id) == Some(alert.id) {
                        state.alerts.pop_front();
                    }
                    state.alerts.len()
                };
                if let Some(m) = metrics {
                    m.output_delivered(&route.name);
                    m.output_queued(&route.name, len);
                }
                if failures > 0 {
                    info!(output = %route.name, failures, "output {} delivers again after {failures} failed attempts", route.name);
                }
                failures = 0;
                backoff = initial;
                if let Some(cursors) = &cursors {
                    if !route.save_cursor(cursors, &mut stop).await {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if let Some(m) = metrics {
                    m.output_failed(&route.name);
                }
                if failures <= WARN_FAILURES {
                    warn!(output = %route.name, alert_id = alert.id, retry_in = ?backoff, "output {} failed: {e}", route.name);
                } else {
                    debug!(output = %route.name, alert_id = alert.id, retry_in = ?backoff, "output {} failed: {e}", route.name);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::{Alert, Level, RuleInfo, Timestamp};

    fn alert(id: i64, level: Level) -> StoredAlert {
        StoredAlert {
            id,
            sensor: "web-01".into(),
            received: Timestamp(0),
            alert: Alert {
                rule: RuleInfo {
                    id: "r-1".into(),
                    title: format!("alert {id}"),
                    level,
                    tags: Vec::new(),
                    description: None,
                    author: None,
                },
                event: Default::default(),
                dedup: None,
                correlation: None,
                response: None,
                loss: None,
            },
        }
    }

    /// A route for high alerts that holds two, done with everything up to `start`.
    fn route(start: i64) -> RouteQueue {
        RouteQueue {
            name: "test".into(),
            filter: AlertFilter {
                min_severity: Some(Level::High),
                ..Default::default()
            },
            capacity: 2,
            state: Mutex::new(QueueState {
                alerts: VecDeque::new(),
                offered: start,
            }),
            saved: AtomicI64::new(start),
            wake: Notify::new(),
        }
    }

    fn deliver_head(route: &RouteQueue) -> Option<i64> {
        route.lock().alerts.pop_front().map(|a| a.id)
    }

    #[test]
    fn a_cursor_never_passes_an_alert_still_waiting_for_delivery() {
        let route = route(10);
        assert_eq!(route.cursor(), 10);
        // Refused by the filter: done with it at once.
        route.offer(&alert(11, Level::Low));
        assert_eq!(route.cursor(), 11);
        // Queued: the cursor waits for it, whatever comes after.
        route.offer(&alert(12, Level::High));
        route.offer(&alert(13, Level::Low));
        assert_eq!(route.cursor(), 11);
        // Already passed (a catch-up overlapping the live feed): not queued again.
        route.offer(&alert(12, Level::High));
        route.offer(&alert(9, Level::High));
        assert_eq!(route.lock().alerts.len(), 1);
        // A full queue drops its oldest, which counts as done with (the drop is counted).
        route.offer(&alert(14, Level::High));
        route.offer(&alert(15, Level::Critical));
        assert_eq!(route.cursor(), 13);
        assert_eq!(deliver_head(&route), Some(14));
        assert_eq!(route.cursor(), 14);
        assert_eq!(deliver_head(&route), Some(15));
        assert_eq!(route.cursor(), 15);
    }
}
