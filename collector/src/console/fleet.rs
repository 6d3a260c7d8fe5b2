//! The fleet pages' JSON: `/api/sensors` (each sensor's last heartbeat, with silence and drops
//! as the collector judged them) and `/api/rules` (the central rule set being served, what each
//! sensor reports it runs, and how many stored alerts each rule raised).

use std::collections::HashMap;
use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use vigil_proto::{Level, SensorInfo, SignedRuleSet, Timestamp};

use super::api::{api_error, store_failed, AppState};
use super::queries::RuleHits;

#[derive(Serialize)]
struct SensorsView {
    /// The collector's clock, so the page can say "seen 12 s ago" without trusting the browser's.
    now: Timestamp,
    sensors: Vec<SensorInfo>,
}

pub(super) async fn sensors(State(state): State<AppState>) -> Response {
    match state.store.sensors().await {
        Ok(sensors) => Json(SensorsView {
            now: Timestamp::now(),
            sensors,
        })
        .into_response(),
        Err(e) => store_failed("sensor list", &e),
    }
}

/// One rule of the central set.
#[derive(Serialize)]
struct CentralRule {
    id: String,
    title: String,
    level: Level,
    /// The set's file it came from.
    file: String,
}

#[derive(Serialize)]
struct CentralFile {
    name: String,
    bytes: usize,
}

/// The central rule set being served.
#[derive(Serialize)]
struct CentralView {
    version: u64,
    files: Vec<CentralFile>,
    rules: Vec<CentralRule>,
    /// Rules the sensors skip (a Sigma feature Vigil lacks), with why.
    unsupported: Vec<String>,
}

/// What a sensor reports it runs.
#[derive(Serialize)]
struct SensorRules {
    sensor: String,
    host: String,
    /// Digest of its local rule files and how many rules it runs, from its last heartbeat.
    rules_version: String,
    rules: u32,
    /// The central version it said it runs when it last asked for rules; absent when it never
    /// asked (no rules public key configured) or runs none yet.
    central_version: Option<u64>,
    silent: bool,
}

#[derive(Serialize)]
struct RulesView {
    /// False when the collector has no `rules:` section (`vigil rules push` is refused).
    central_configured: bool,
    /// `null` until a set is pushed.
    central: Option<CentralView>,
    sensors: Vec<SensorRules>,
    /// Stored alerts per rule id, the most frequent first (the collector's own health rules
    /// included).
    hits: Vec<RuleHits>,
}

pub(super) async fn rules(State(state): State<AppState>) -> Response {
    let (sensors, hits) = match tokio::try_join!(state.store.sensors(), state.store.rule_hits()) {
        Ok(found) => found,
        Err(e) => return store_failed("rule hits", &e),
    };
    let running = state
        .central
        .as_ref()
        .map(|c| c.running())
        .unwrap_or_default();
    let central = match state.central.as_ref().and_then(|c| c.served()) {
        Some(set) => match tokio::task::spawn_blocking(move || central_view(&set)).await {
            Ok(view) => Some(view),
            Err(e) => {
                tracing::error!("console: compiling the served rule set failed: {e}");
                return api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the collector could not read its rule set",
                );
            }
        },
        None => None,
    };
    Json(RulesView {
        central_configured: state.central.is_some(),
        central,
        sensors: sensor_rules(sensors, &running),
        hits,
    })
    .into_response()
}

fn sensor_rules(
    sensors: Vec<SensorInfo>,
    running: &HashMap<String, Option<u64>>,
) -> Vec<SensorRules> {
    sensors
        .into_iter()
        .map(|info| SensorRules {
            central_version: running.get(&info.sensor).copied().flatten(),
            host: info.status.host,
            rules_version: info.status.rules_version,
            rules: info.status.rules,
            silent: info.silent,
            sensor: info.sensor,
        })
        .collect()
}

/// The served set's rules, compiled as sensors compile them (it was validated at push, so a
/// failure here is unexpected; it is shown, not hidden).
fn central_view(set: &SignedRuleSet) -> CentralView {
    let files = set
        .files
        .iter()
        .map(|(name, text)| CentralFile {
            name: name.clone(),
            bytes: text.len(),
        })
        .collect();
    let sources: Vec<(String, String)> = set
        .files
        .iter()
        .map(|(name, text)| (name.clone(), text.clone()))
        .collect();
    let (rules, unsupported) =
        match vigil_detect::RuleSet::load_with_sources::<&Path>(&[], &sources) {
            Ok(compiled) => (
                compiled
                    .rules()
                    .map(|rule| {
                        let info = rule.info();
                        CentralRule {
                            id: info.id.clone(),
                            title: info.title.clone(),
                            level: info.level,
                            file: rule.origin().to_owned(),
                        }
                    })
                    .collect(),
                compiled
                    .unsupported()
                    .iter()
                    .map(|u| format!("{} ({}): {}", u.title, u.id, u.why))
                    .collect(),
            ),
            Err(e) => (Vec::new(), vec![format!("the set does not compile: {e}")]),
        };
    CentralView {
        version: set.version,
        files,
        rules,
        unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "title: Test rule\nid: t-1\nlevel: high\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  selection:\n    Image|endswith: /nothing\n  condition: selection\n";

    #[test]
    fn the_central_view_lists_each_rule_with_its_file() {
        let set = SignedRuleSet {
            version: 7,
            files: [("a.yml".to_owned(), RULE.to_owned())].into(),
            signature: Vec::new(),
        };
        let view = central_view(&set);
        assert_eq!(view.version, 7);
        assert_eq!(view.files.len(), 1);
        assert_eq!(view.files[0].bytes, RULE.len());
        assert_eq!(view.rules.len(), 1);
        assert_eq!(view.rules[0].id, "t-1");
        assert_eq!(view.rules[0].title, "Test rule");
        assert_eq!(view.rules[0].level, Level::High);
        assert_eq!(view.rules[0].file, "a.yml");
        assert!(view.unsupported.is_empty());
    }
}
