//! The alerting stage: rule matches of one event → the alerts that leave the sensor.
//!
//! It owns the state that spans events: deduplication windows (`vigil.dedup`) and correlation
//! groups (Sigma `correlation:` rules). Both are bounded, and both are pure given time, which
//! the caller passes in. Nothing vanishes silently: a suppressed match is counted into the
//! end-of-window summary alert, and a match the bounded tables could not hold is raised (dedup)
//! or counted (correlation) rather than lost without trace.

use vigil_detect::{
    CorrelationEngine, DedupDecision, DedupSummary, Deduplicator, Rule, RuleAction, RuleSet,
};
use vigil_proto::{Alert, CorrelationInfo, DedupInfo, Event, Timestamp};

/// Open dedup windows, over all rules and keys (one event each at most).
const MAX_DEDUP_KEYS: usize = 16_384;
/// Correlation groups per correlation rule.
const MAX_CORRELATION_GROUPS: usize = 4_096;
/// Remembered matches per correlation group.
const MAX_GROUP_ENTRIES: usize = 256;

/// What one event raised.
#[derive(Debug, Default)]
pub struct Outcome {
    pub alerts: Vec<Alert>,
    /// Indices into `alerts` of the alerts of `kill` rules, to be marked with what was done.
    pub kill_alerts: Vec<usize>,
    /// A `kill` rule matched (even if its alert was deduplicated): the process must die.
    pub kill: bool,
}

/// Dedup and correlation state for the running rule set.
#[derive(Debug)]
pub struct Alerter {
    dedup: Deduplicator,
    correlation: CorrelationEngine,
}

impl Default for Alerter {
    fn default() -> Self {
        Self::new()
    }
}

impl Alerter {
    pub fn new() -> Self {
        Self {
            dedup: Deduplicator::new(MAX_DEDUP_KEYS),
            correlation: CorrelationEngine::new(MAX_CORRELATION_GROUPS, MAX_GROUP_ENTRIES),
        }
    }

    /// The alerts `event` raises at `now`: the rules it matches (less those a dedup window
    /// suppresses) and the correlations it completes. Closed dedup windows are summarised
    /// first, so a summary always precedes the next window's first alert.
    pub fn on_event(&mut self, rules: &RuleSet, event: &Event, now: Timestamp) -> Outcome {
        let mut alerts = self.expire(rules, now);
        let mut kill_alerts = Vec::new();
        let mut kill = false;
        let matched = rules.matches(event);
        for rule in &matched {
            let kills = rule.options().action == RuleAction::Kill;
            kill |= kills;
            match self.dedup.observe(rule, event, now) {
                DedupDecision::Raise => {
                    if kills {
                        kill_alerts.push(alerts.len());
                    }
                    alerts.push(raised(rule, event, now));
                }
                DedupDecision::Suppress { .. } => {}
            }
        }
        for hit in self
            .correlation
            .observe(rules.correlations(), &matched, event, now)
        {
            let Some(corr) = rules
                .correlations()
                .iter()
                .find(|c| c.info().id == hit.correlation_id)
            else {
                continue;
            };
            let mut alert = Alert::new(corr.info().clone(), alert_event(event));
            alert.correlation = Some(CorrelationInfo {
                kind: corr.kind().as_str().to_owned(),
                rules: corr.rule_ids().to_vec(),
                group: hit.group,
                count: hit.count,
                first_seen: hit.first_seen,
                last_seen: hit.last_seen,
            });
            alerts.push(alert);
        }
        Outcome {
            alerts,
            kill_alerts,
            kill,
        }
    }

    /// Summary alerts of the dedup windows closed by `now`; run it periodically so a window
    /// closes even when its rule never matches again.
    pub fn expire(&mut self, rules: &RuleSet, now: Timestamp) -> Vec<Alert> {
        self.dedup
            .expire(now)
            .into_iter()
            .filter_map(|summary| summary_alert(rules, summary))
            .collect()
    }

    /// A new rule set: open windows are summarised against the rules that opened them
    /// (`previous`), and correlation state, indexed by the old set's correlations, restarts.
    pub fn replace_rules(&mut self, previous: &RuleSet) -> Vec<Alert> {
        let far_future = Timestamp::from_unix_nanos(u64::MAX);
        let summaries = self.expire(previous, far_future);
        *self = Self::new();
        summaries
    }

    /// Matches raised undeduplicated because the dedup table was full.
    pub fn dedup_overflowed(&self) -> u64 {
        self.dedup.overflowed()
    }

    /// Matches a correlation could not remember because a bound was reached.
    pub fn correlation_dropped(&self) -> u64 {
        self.correlation.dropped()
    }
}

/// The event as it appears inside an alert.
fn alert_event(event: &Event) -> Event {
    let mut event = event.clone();
    event.event.kind = "alert".into();
    event
}

fn raised(rule: &Rule, event: &Event, now: Timestamp) -> Alert {
    let mut alert = Alert::new(rule.info().clone(), alert_event(event));
    if let Some(spec) = &rule.options().dedup {
        alert.dedup = Some(DedupInfo {
            count: 1,
            suppressed: 0,
            first_seen: now,
            last_seen: now,
            key: spec.key_of(event),
            summary: false,
        });
    }
    alert
}

fn summary_alert(rules: &RuleSet, summary: DedupSummary) -> Option<Alert> {
    let DedupSummary {
        rule_id,
        key,
        count,
        suppressed,
        first_seen,
        last_seen,
        last_event,
    } = summary;
    let Some(rule) = rules.rules().find(|r| r.info().id == rule_id) else {
        tracing::warn!(rule = %rule_id, suppressed, "dedup summary of a rule no longer loaded");
        return None;
    };
    let event = last_event.map_or_else(Event::default, |e| alert_event(&e));
    let mut alert = Alert::new(rule.info().clone(), event);
    alert.dedup = Some(DedupInfo {
        count,
        suppressed,
        first_seen,
        last_seen,
        key,
        summary: true,
    });
    Some(alert)
}
