//! `vigil rules backtest`: runs rules over the events the collector stored and reports what
//! they would have matched — how a rule author checks a new rule against real history before
//! deploying it.
//!
//! Matching is the sensor's own: [`RuleSet::matches`] on each stored event, one alert per
//! matching rule. What a backtest cannot see is what was never stored: the sensor ships the
//! events its running rules asked the kernel for, so a rule about another kind of event finds
//! nothing until sensors collect it.

use serde::Serialize;
use vigil_detect::RuleSet;
use vigil_proto::{Alert, EventQuery, StoredEvent, Timestamp};

use crate::client::{Client, ClientError};

/// Events asked for per page (the collector may cap it lower).
const PAGE: u32 = 1_000;

/// One event a rule would have matched.
#[derive(Debug, Serialize)]
pub struct BacktestMatch {
    /// The stored event's id at the collector.
    pub event_id: i64,
    pub sensor: String,
    pub received: Timestamp,
    /// The alert the rule would have raised, ECS-shaped as live alerts are.
    #[serde(flatten)]
    pub alert: Alert,
}

/// What a backtest went through.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub matches: u64,
}

/// Runs `rules` over every event received since `since`, oldest first, handing each match to
/// `on_match` as it is found (a long history is never held in memory).
pub async fn backtest<E>(
    client: &Client,
    rules: &RuleSet,
    since: Timestamp,
    mut on_match: impl FnMut(BacktestMatch) -> Result<(), E>,
) -> Result<Summary, BacktestError<E>> {
    let mut summary = Summary::default();
    let mut after_id = 0;
    loop {
        let page = client
            .query_events(EventQuery {
                since,
                after_id,
                limit: PAGE,
            })
            .await
            .map_err(BacktestError::Client)?;
        let Some(last) = page.last() else {
            return Ok(summary);
        };
        after_id = last.id;
        for stored in page {
            summary.events += 1;
            let StoredEvent {
                id,
                sensor,
                received,
                event,
            } = stored;
            for rule in rules.matches(&event) {
                let mut event = event.clone();
                event.event.kind = "alert".into();
                summary.matches += 1;
                on_match(BacktestMatch {
                    event_id: id,
                    sensor: sensor.clone(),
                    received,
                    alert: Alert::new(rule.info().clone(), event),
                })
                .map_err(BacktestError::Output)?;
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError<E> {
    /// The collector could not be asked or refused.
    #[error(transparent)]
    Client(ClientError),
    /// A match could not be written out.
    #[error("cannot write a match: {0}")]
    Output(E),
}
