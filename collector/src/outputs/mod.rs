//! Alert outputs: committed alerts, filtered per route, delivered to webhooks, Slack, syslog
//! and files.
//!
//! A dispatcher follows the store writer's broadcast, which carries each alert only after its
//! batch is committed (and catches up from the store if it falls behind, as `vigil tail`
//! does). It offers every alert to each route whose filter admits it. A route holds a bounded
//! queue and one delivery task: the head of the queue is retried with doubling backoff until
//! it is delivered; when the queue is full the oldest alert is dropped and counted. Nothing
//! here ever waits on ingest's path: the broadcast does not block its sender and the queues
//! do not block the dispatcher, so a down endpoint costs memory up to its bound, never
//! throughput.

pub mod config;
mod format;
mod sink;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};
use vigil_proto::StoredAlert;

pub use self::config::RouteConfig;
use self::config::{AlertFilter, RetryConfig};
use self::sink::Sink;
use crate::store::Store;

/// Alerts read from the store per query when the dispatcher catches up after lagging.
const CATCH_UP_PAGE: u32 = 256;

/// Failed attempts in a row logged at warn level before the rest go to debug (the counter
/// still counts every one); the recovery is logged again.
const WARN_FAILURES: u64 = 3;

/// The running outputs; [`Outputs::stop`] ends their tasks.
pub struct Outputs {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Outputs {
    /// Starts one task per route plus the dispatcher, which forwards the alerts after
    /// `after_id` (the last one stored when `live` was joined: outputs carry what happens
    /// from now on, not the history).
    pub fn start(
        routes: &BTreeMap<String, RouteConfig>,
        live: broadcast::Receiver<StoredAlert>,
        after_id: i64,
        store: Store,
    ) -> Outputs {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut queues = Vec::new();
        for (name, route) in routes {
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
                alerts: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
            });
            if let Some(m) = crate::metrics::collector_metrics() {
                m.output_registered(name);
            }
            info!(output = %name, kind = to.kind(), "alert output {name} ({})", to.kind());
            tasks.spawn(deliver_loop(
                queue.clone(),
                Sink::new(to),
                *retry,
                stopped.clone(),
            ));
            queues.push(queue);
        }
        if !queues.is_empty() {
            tasks.spawn(dispatch(live, after_id, store, queues, stopped));
        }
        Outputs { stop, tasks }
    }

    /// Stops every output task and waits for them. Undelivered alerts stay in the store.
    pub async fn stop(self) {
        let Self { stop, mut tasks } = self;
        let _ = stop.send(true);
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                if e.is_panic() {
                    error!("an output task panicked: {e}");
                }
            }
        }
    }
}

/// One route's filter and its bounded queue of alerts waiting for delivery.
struct RouteQueue {
    name: String,
    filter: AlertFilter,
    capacity: usize,
    alerts: Mutex<VecDeque<StoredAlert>>,
    /// Wakes the delivery task when the queue gains an alert.
    wake: Notify,
}

impl RouteQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<StoredAlert>> {
        self.alerts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `alert` if the filter admits it, dropping the oldest when full.
    fn offer(&self, alert: &StoredAlert) {
        if !self.filter.admits(alert) {
            return;
        }
        let (dropped, len) = {
            let mut queue = self.lock();
            let dropped = if queue.len() >= self.capacity {
                queue.pop_front()
            } else {
                None
            };
            queue.push_back(alert.clone());
            (dropped, queue.len())
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
}

/// Follows committed alerts and offers each, once and in id order, to every route.
async fn dispatch(
    mut live: broadcast::Receiver<StoredAlert>,
    after_id: i64,
    store: Store,
    routes: Vec<Arc<RouteQueue>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = after_id;
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
                    last = catch_up(&store, last, &routes).await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Offers every stored alert after `after`; returns the last id offered.
async fn catch_up(store: &Store, after: i64, routes: &[Arc<RouteQueue>]) -> i64 {
    let mut last = after;
    loop {
        match store.alerts_after(last, CATCH_UP_PAGE).await {
            Ok(page) => {
                let full = page.len() == CATCH_UP_PAGE as usize;
                for alert in page {
                    last = alert.id;
                    for route in routes {
                        route.offer(&alert);
                    }
                }
                if !full {
                    return last;
                }
            }
            Err(e) => {
                error!("alert outputs cannot catch up from the store: {e}");
                return last;
            }
        }
    }
}

/// Delivers the route's queue head until it succeeds, then the next, backing off on failure.
async fn deliver_loop(
    route: Arc<RouteQueue>,
    mut sink: Sink,
    retry: RetryConfig,
    mut stop: watch::Receiver<bool>,
) {
    let RetryConfig { initial, max } = retry;
    let max = max.max(initial);
    let mut backoff = initial;
    let mut failures: u64 = 0;
    loop {
        let head = route.lock().front().cloned();
        let Some(alert) = head else {
            tokio::select! {
                // NB: notify_one stores a permit when nobody waits, so an alert queued
                // between the check above and this wait is not missed.
                () = route.wake.notified() => continue,
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
                    let mut queue = route.lock();
                    // The head may have been dropped meanwhile by a full queue.
                    if queue.front().map(|a| a.id) == Some(alert.id) {
                        queue.pop_front();
                    }
                    queue.len()
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
