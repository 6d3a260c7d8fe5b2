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

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
title: kill nc
id: kill-nc
logsource: {category: process_creation}
detection: {s: {Image|endswith: /nc}, condition: s}
vigil:
  action: kill
  dedup: {window: 10s, key: [Image]}
---
title: nc thrice
id: nc-thrice
correlation:
  type: event_count
  rules: [kill-nc]
  group-by: [User]
  timespan: 1m
  condition: {gte: 3}
"#;

    fn at(seconds: u64) -> Timestamp {
        Timestamp::from_unix_nanos(1_700_000_000_000_000_000 + seconds * 1_000_000_000)
    }

    #[test]
    fn a_suppressed_kill_still_kills_and_every_match_is_accounted_for() {
        let rules = RuleSet::parse(RULES, "<inline>").unwrap_or_else(|e| panic!("{e}"));
        let nc = vigil_detect::sample_exec_event(&[("Image", "/usr/bin/nc"), ("User", "eve")])
            .expect("event");
        let mut alerter = Alerter::new();

        let first = alerter.on_event(&rules, &nc, at(0));
        assert!(first.kill);
        assert_eq!(first.kill_alerts, vec![0]);
        assert_eq!(first.alerts.len(), 1);
        let dedup = first.alerts[0].dedup.as_ref().expect("dedup info");
        assert_eq!((dedup.count, dedup.summary), (1, false));

        let second = alerter.on_event(&rules, &nc, at(1));
        assert!(second.kill, "a deduplicated kill rule still kills");
        assert!(second.alerts.is_empty(), "the alert is suppressed");

        let third = alerter.on_event(&rules, &nc, at(2));
        assert_eq!(
            third.alerts.len(),
            1,
            "only the correlation: {:?}",
            third.alerts
        );
        let corr = third.alerts[0].correlation.as_ref().expect("correlation");
        assert_eq!(third.alerts[0].rule.id, "nc-thrice");
        assert_eq!((corr.kind.as_str(), corr.count), ("event_count", 3));
        assert_eq!(corr.group, "eve");
        assert!(
            third.kill_alerts.is_empty(),
            "a correlation alert is not a kill"
        );

        assert!(
            alerter.expire(&rules, at(5)).is_empty(),
            "window still open"
        );
        let summaries = alerter.expire(&rules, at(11));
        assert_eq!(summaries.len(), 1);
        let summary = summaries[0].dedup.as_ref().expect("dedup info");
        assert_eq!(
            (summary.count, summary.suppressed, summary.summary),
            (3, 2, true)
        );
        assert_eq!((summary.first_seen, summary.last_seen), (at(0), at(2)));
        assert_eq!(summaries[0].event.process.executable, "/usr/bin/nc");
    }

    #[test]
    fn a_reload_summarises_the_open_windows_of_the_old_rules() {
        let rules = RuleSet::parse(RULES, "<inline>").unwrap_or_else(|e| panic!("{e}"));
        let nc = vigil_detect::sample_exec_event(&[("Image", "/bin/nc")]).expect("event");
        let mut alerter = Alerter::new();
        alerter.on_event(&rules, &nc, at(0));
        alerter.on_event(&rules, &nc, at(1));
        let summaries = alerter.replace_rules(&rules);
        assert_eq!(summaries.len(), 1, "the suppressed match is reported");
        assert_eq!(summaries[0].dedup.as_ref().map(|d| d.suppressed), Some(1));
        assert!(
            alerter.replace_rules(&rules).is_empty(),
            "state started over"
        );
    }
}
