//! One outputs leader among the collectors sharing a PostgreSQL database.
//!
//! Every collector with outputs keeps a session of its own ([`LeaderSession`]) and tries, every
//! [`LEADER_CHECK`], to take the leadership lock; the one that holds it runs the routes (a
//! [`Term`]) from their cursors, and checks its session as often. A leader whose session fails
//! or stops answering ends its term at once: the server has released (or is about to release)
//! its lock, and another collector takes over from the cursors it recorded. Collectors without
//! outputs do not compete, so they can never hold the lead and forward nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use tracing::{debug, info, warn};
use vigil_proto::StoredAlert;

use super::{Cursors, RouteConfig, Term};
use crate::store::{LeaderSession, Store, StoreError};

/// How often a leader checks its session and a follower tries to take the lead: what a
/// takeover waits, at most, after the server released the old leader's lock.
pub(super) const LEADER_CHECK: Duration = Duration::from_secs(1);

/// A check, connect or cursor read that takes longer than this counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Competes for the lead until `stop`, forwarding while it holds it.
pub(super) async fn lead(
    routes: BTreeMap<String, RouteConfig>,
    live: broadcast::Receiver<StoredAlert>,
    after_id: i64,
    store: Store,
    mut stop: watch::Receiver<bool>,
) {
    let names: Vec<String> = routes.keys().cloned().collect();
    let trouble = Arc::new(Notify::new());
    let mut session: Option<Arc<LeaderSession>> = None;
    let mut term: Option<Term> = None;
    let mut follower = Follower::default();
    set_gauge(false);
    let mut tick = tokio::time::interval(LEADER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        match (session.clone(), term.is_some()) {
            (Some(held), true) => {
                if let Err(why) = within(held.check()).await {
                    if let Some(term) = term.take() {
                        term.stop().await;
                    }
                    session = None;
                    set_gauge(false);
                    warn!("outputs leader: no (its database session failed: {why}); another collector takes over where it stopped");
                }
            }
            _ => match take_lead(&store, &mut session).await {
                Ok(Some(held)) => match within(held.cursors(&names, after_id)).await {
                    Ok(starts) => {
                        let cursors = Cursors {
                            session: held.clone(),
                            trouble: trouble.clone(),
                        };
                        term = Some(Term::start(
                            &routes,
                            &starts,
                            live.resubscribe(),
                            store.clone(),
                            Some(cursors),
                        ));
                        set_gauge(true);
                        follower = Follower::default();
                        let resume: Vec<String> = names
                            .iter()
                            .zip(&starts)
                            .map(|(name, id)| format!("{name} after alert {id}"))
                            .collect();
                        info!(
                            "outputs leader: yes (this collector forwards the alerts of every collector on the database; resuming {})",
                            resume.join(", ")
                        );
                    }
                    // Dropping the session releases the lock for another collector (or this
                    // one, next time).
                    Err(why) => {
                        session = None;
                        follower.trouble(&why);
                    }
                },
                Ok(None) => follower.waiting(),
                Err(why) => follower.trouble(&why),
            },
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = trouble.notified() => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(term) = term.take() {
        term.stop().await;
        info!("outputs leader: no (stopping); another collector takes over where this one stopped");
    }
    set_gauge(false);
    drop(session);
}

/// Opens a session if there is none (or it died) and tries the lock: `Some` when this
/// collector now leads.
async fn take_lead(
    store: &Store,
    session: &mut Option<Arc<LeaderSession>>,
) -> Result<Option<Arc<LeaderSession>>, String> {
    if session.as_ref().is_none_or(|s| s.is_closed()) {
        *session = None;
        let Some(pg) = store.as_postgres() else {
            return Err("the store is not PostgreSQL".into());
        };
        *session = Some(Arc::new(within(pg.leader_session()).await?));
    }
    let Some(held) = session.clone() else {
        return Ok(None);
    };
    match within(held.try_lead()).await {
        Ok(true) => Ok(Some(held)),
        Ok(false) => Ok(None),
        Err(why) => {
            *session = None;
            Err(why)
        }
    }
}

/// A database call bounded by [`CHECK_TIMEOUT`].
async fn within<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

fn set_gauge(leads: bool) {
    if let Some(m) = crate::metrics::collector_metrics() {
        m.outputs_leader(leads);
    }
}

/// What a collector that does not lead has said, so that it says each thing once.
#[derive(Default)]
struct Follower {
    said_waiting: bool,
    last_trouble: Option<String>,
}

impl Follower {
    fn waiting(&mut self) {
        if !self.said_waiting {
            info!("outputs leader: no (another collector on this database forwards the alerts; this one takes over if it goes away)");
            self.said_waiting = true;
            self.last_trouble = None;
        }
    }

    fn trouble(&mut self, why: &str) {
        if self.last_trouble.as_deref() == Some(why) {
            debug!("outputs leader: no (cannot compete for the lead: {why})");
        } else {
            warn!("outputs leader: no (cannot compete for the lead: {why}; retrying every {LEADER_CHECK:?})");
            self.last_trouble = Some(why.to_owned());
            self.said_waiting = false;
        }
    }
}
