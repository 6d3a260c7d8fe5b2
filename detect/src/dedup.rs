//! Alert deduplication (`vigil.dedup`): at most one alert per rule and key within a window,
//! and nothing vanishes silently. The first match of a key is raised at once; later matches
//! within the window are counted; when the window closes with suppressed matches, a
//! [`DedupSummary`] says how many, with first and last seen. Pure: time is passed in, and
//! memory is bounded (`max_keys`; beyond it, matches are raised rather than dropped).

use std::collections::HashMap;
use std::time::Duration;

use vigil_proto::{Event, Timestamp};

use crate::rule::Rule;

/// What to do with one match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupDecision {
    /// Raise the alert (first of its key in the window, or the rule has no dedup).
    Raise,
    /// Do not raise: already alerted on this key; `count` matches so far in the window.
    Suppress { count: u64 },
}

/// A closed window in which matches were suppressed: the explicit "suppressed N" record.
#[derive(Clone, Debug, PartialEq)]
pub struct DedupSummary {
    pub rule_id: String,
    /// The key values, joined by `\u{1f}` in the order of `vigil.dedup.key`.
    pub key: String,
    /// Every match in the window, the raised one included.
    pub count: u64,
    /// Matches that were not raised (`count - 1`).
    pub suppressed: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// The last suppressed match, so the record shows what was suppressed.
    pub last_event: Option<Box<Event>>,
}

#[derive(Debug)]
struct Window {
    count: u64,
    first_seen: Timestamp,
    last_seen: Timestamp,
    closes: Timestamp,
    /// NB: one event per open window at most, so memory stays bounded by `max_keys`.
    last_event: Option<Box<Event>>,
}

/// Deduplication state for all rules.
#[derive(Debug)]
pub struct Deduplicator {
    windows: HashMap<(String, String), Window>,
    max_keys: usize,
    /// Matches raised without dedup because the table was full.
    overflowed: u64,
}

impl Deduplicator {
    /// `max_keys` bounds the number of open windows across all rules.
    pub fn new(max_keys: usize) -> Self {
        Self {
            windows: HashMap::new(),
            max_keys,
            overflowed: 0,
        }
    }

    /// Decides for one match of `rule` on `event` at `now`.
    pub fn observe(&mut self, rule: &Rule, event: &Event, now: Timestamp) -> DedupDecision {
        let Some(spec) = &rule.options().dedup else {
            return DedupDecision::Raise;
        };
        let key = (rule.info().id.clone(), spec.key_of(event));
        if let Some(window) = self.windows.get_mut(&key) {
            if now < window.closes {
                window.count += 1;
                window.last_seen = now;
                window.last_event = Some(Box::new(event.clone()));
                return DedupDecision::Suppress {
                    count: window.count,
                };
            }
        }
        if !self.windows.contains_key(&key) && self.windows.len() >= self.max_keys {
            // NB: raising is the safe side of a full table: an extra alert, never a lost one.
            self.overflowed += 1;
            return DedupDecision::Raise;
        }
        // A new window; an expired one for the same key is replaced (its summary, if any,
        // is produced by `expire`, which the caller runs before observing).
        self.windows.insert(
            key,
            Window {
                count: 1,
                first_seen: now,
                last_seen: now,
                closes: add(now, spec.window),
                last_event: None,
            },
        );
        DedupDecision::Raise
    }

    /// Closes every window that ended by `now`; returns the summaries of those that
    /// suppressed something. Call it periodically and before `observe`.
    pub fn expire(&mut self, now: Timestamp) -> Vec<DedupSummary> {
        let mut out = Vec::new();
        self.windows.retain(|(rule_id, key), w| {
            if now < w.closes {
                return true;
            }
            if w.count > 1 {
                out.push(DedupSummary {
                    rule_id: rule_id.clone(),
                    key: key.clone(),
                    count: w.count,
                    suppressed: w.count - 1,
                    first_seen: w.first_seen,
                    last_seen: w.last_seen,
                    last_event: w.last_event.take(),
                });
            }
            false
        });
        out.sort_by(|a, b| (a.first_seen, &a.rule_id).cmp(&(b.first_seen, &b.rule_id)));
        out
    }

    /// Open windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Matches raised undeduplicated because `max_keys` windows were open.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    Timestamp::from_unix_nanos(t.unix_nanos().saturating_add(nanos))
}
