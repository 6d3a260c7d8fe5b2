//! What each destination receives for one alert. Pure: no I/O, no clock.

use std::fmt::Write;

use serde::Serialize;
use serde_json::{json, Map, Value};
use vigil_proto::{Alert, Level, StoredAlert, Timestamp};

use super::config::Facility;

/// The shape of `vigil tail -o json`: the ECS alert with the collector's `alert_id`, `sensor`
/// and `received` in front. NB: keep in step with the CLI's `output::AlertLine`.
#[derive(Serialize)]
struct AlertLine<'a> {
    alert_id: i64,
    sensor: &'a str,
    received: Timestamp,
    #[serde(flatten)]
    alert: &'a Alert,
}

/// One alert as a single line of JSON (no newline): webhooks (`format: vigil`), files, syslog.
pub fn vigil_json(stored: &StoredAlert) -> String {
    let StoredAlert {
        id,
        sensor,
        received,
        alert,
    } = stored;
    let line = AlertLine {
        alert_id: *id,
        sensor,
        received: *received,
        alert,
    };
    // NB: cannot fail: every field is a string, number, list or map with string keys.
    serde_json::to_string(&line).unwrap_or_else(|e| json!({ "error": e.to_string() }).to_string())
}

/// Falco's priority names, which Falcosidekick filters on (`minimumpriority`).
fn falco_priority(level: Level) -> &'static str {
    match level {
        Level::Critical => "Critical",
        Level::High => "Error",
        Level::Medium => "Warning",
        Level::Low => "Notice",
        Level::Informational => "Informational",
    }
}

/// Falco's JSON output for one alert, so Falcosidekick's `/` endpoint takes it as one of
/// Falco's own. Field names in `output_fields` are Falco's where one exists (`proc.cmdline`),
/// `vigil.*` otherwise.
pub fn falco_json(stored: &StoredAlert) -> String {
    let alert = &stored.alert;
    let event = &alert.event;
    let process = &event.process;
    let user = event
        .user
        .name
        .clone()
        .unwrap_or_else(|| event.user.id.to_string());
    let mut fields = Map::new();
    let mut put = |key: &str, value: Value| {
        fields.insert(key.to_owned(), value);
    };
    put("evt.time", json!(event.timestamp.unix_nanos()));
    put("evt.type", json!(event.event.action.as_str()));
    put("evt.hostname", json!(event.host.name));
    put("proc.pid", json!(process.pid));
    put("proc.name", json!(process.name));
    put("proc.exepath", json!(process.executable));
    put("proc.cmdline", json!(process.command_line));
    if let Some(parent) = &process.parent {
        put("proc.ppid", json!(parent.pid));
        put("proc.pname", json!(parent.name));
        put("proc.pcmdline", json!(parent.command_line));
    }
    put("user.uid", json!(event.user.id));
    put("user.name", json!(user));
    if let Some(container) = &event.container {
        put("container.id", json!(container.id));
    }
    if let Some(file) = &event.file {
        put("fd.name", json!(file.path));
    } else if let Some(dest) = &event.destination {
        put("fd.sip", json!(dest.ip));
        put("fd.sport", json!(dest.port));
    }
    put("vigil.alert_id", json!(stored.id));
    put("vigil.sensor", json!(stored.sensor));
    put("vigil.rule_id", json!(alert.rule.id));
    put("vigil.level", json!(alert.rule.level.as_str()));
    let priority = falco_priority(alert.rule.level);
    let output = format!(
        "{} {priority} {} (user={user} process={} pid={} command={} host={} sensor={})",
        event.timestamp,
        alert.rule.title,
        process.name,
        process.pid,
        process.command_line,
        event.host.name,
        stored.sensor,
    );
    json!({
        "output": output,
        "priority": priority,
        "rule": alert.rule.title,
        "time": event.timestamp,
        "output_fields": fields,
        "source": "syscall",
        "tags": alert.rule.tags,
        "hostname": event.host.name,
    })
    .to_string()
}

/// A Slack incoming-webhook message (`text` in Slack's mrkdwn).
pub fn slack_json(stored: &StoredAlert) -> String {
    let alert = &stored.alert;
    let event = &alert.event;
    let text = format!(
        "*[{}] {}* on `{}` (sensor {})\n`{}` (pid {}, user {})\nrule {}, alert {}",
        alert.rule.level.as_str().to_uppercase(),
        slack_escape(&alert.rule.title),
        slack_escape(&event.host.name),
        slack_escape(&stored.sensor),
        slack_escape(&event.process.command_line),
        event.process.pid,
        slack_escape(
            &event
                .user
                .name
                .clone()
                .unwrap_or_else(|| event.user.id.to_string())
        ),
        slack_escape(&alert.rule.id),
        stored.id,
    );
    json!({ "text": text }).to_string()
}

/// Slack's three control characters in message text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// RFC 5424 severity of a rule level.
fn syslog_severity(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::High => 3,
        Level::Medium => 4,
        Level::Low => 5,
        Level::Informational => 6,
    }
}

/// One RFC 5424 message: HOSTNAME is the monitored host (where it happened), MSGID `alert`,
/// structured data `[vigil@32473 ...]` with the fields a syslog rule routes on, and MSG the
/// JSON line (after a BOM, as RFC 5424 requires of UTF-8 MSG).
///
/// NB: 32473 is the private enterprise number RFC 5612 sets aside for examples; Vigil has none
/// of its own.
pub fn syslog_message(stored: &StoredAlert, facility: Facility, app_name: &str) -> String {
    let alert = &stored.alert;
    let pri = u16::from(facility.0) * 8 + u16::from(syslog_severity(alert.rule.level));
    let time = humantime::format_rfc3339_micros(stored.alert.event.timestamp.into());
    let mut out = format!(
        "<{pri}>1 {time} {} {} - alert ",
        header_field(&alert.event.host.name, 255),
        header_field(app_name, 48),
    );
    out.push_str("[vigil@32473");
    for (name, value) in [
        ("alert_id", stored.id.to_string()),
        ("sensor", stored.sensor.clone()),
        ("rule_id", alert.rule.id.clone()),
        ("level", alert.rule.level.as_str().to_owned()),
        ("title", alert.rule.title.clone()),
    ] {
        let _ = write!(out, " {name}=\"{}\"", sd_escape(&value));
    }
    out.push_str("] \u{feff}");
    out.push_str(&vigil_json(stored));
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` bytes; `-` when empty.
fn header_field(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if cleaned.is_empty() {
        "-".into()
    } else {
        cleaned
    }
}

/// PARAM-VALUE escaping: `"`, `\` and `]` get a backslash.
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::{Event, EventMeta, Host, Process, RuleInfo, UserRef};

    fn stored() -> StoredAlert {
        StoredAlert {
            id: 7,
            sensor: "web-01".into(),
            received: Timestamp(1_700_000_000_500_000_000),
            alert: Alert {
                rule: RuleInfo {
                    id: "r-1".into(),
                    title: "Shell \"quoted\" <b>]".into(),
                    level: Level::High,
                    tags: vec!["attack.execution".into()],
                    description: None,
                    author: None,
                },
                event: Event {
                    timestamp: Timestamp(1_700_000_000_123_456_789),
                    event: EventMeta {
                        kind: "alert".into(),
                        ..Default::default()
                    },
                    host: Host {
                        name: "web 01.example".into(),
                        id: "m".into(),
                    },
                    process: Process {
                        pid: 42,
                        name: "sh".into(),
                        command_line: "sh -c id".into(),
                        ..Default::default()
                    },
                    user: UserRef {
                        id: 0,
                        name: Some("root".into()),
                    },
                    ..Default::default()
                },
                dedup: None,
                correlation: None,
                response: None,
                loss: None,
            },
        }
    }

    #[test]
    fn syslog_messages_follow_rfc_5424() {
        let msg = syslog_message(&stored(), Facility(10), "vigil");
        // authpriv (10) * 8 + err (3) = 83; microseconds; spaces dropped from HOSTNAME.
        let expected_head = "<83>1 2023-11-14T22:13:20.123456Z web01.example vigil - alert \
            [vigil@32473 alert_id=\"7\" sensor=\"web-01\" rule_id=\"r-1\" level=\"high\" \
            title=\"Shell \\\"quoted\\\" <b>\\]\"] \u{feff}{";
        assert!(msg.starts_with(expected_head), "{msg}");
        let json: Value = serde_json::from_str(&msg[expected_head.len() - 1..]).expect("json msg");
        assert_eq!(json["alert_id"], 7);
    }

    #[test]
    fn falco_envelope_has_what_falcosidekick_reads() {
        let json: Value = serde_json::from_str(&falco_json(&stored())).expect("json");
        assert_eq!(json["priority"], "Error");
        assert_eq!(json["rule"], "Shell \"quoted\" <b>]");
        assert_eq!(json["time"], "2023-11-14T22:13:20.123456789Z");
        assert_eq!(json["source"], "syscall");
        assert_eq!(json["hostname"], "web 01.example");
        assert_eq!(json["tags"][0], "attack.execution");
        assert_eq!(json["output_fields"]["proc.cmdline"], "sh -c id");
        assert_eq!(json["output_fields"]["vigil.alert_id"], 7);
        let output = json["output"].as_str().expect("output text");
        assert!(output.contains("Error Shell"), "{output}");
    }

    #[test]
    fn slack_text_escapes_its_control_characters() {
        let json: Value = serde_json::from_str(&slack_json(&stored())).expect("json");
        let text = json["text"].as_str().expect("text");
        assert!(
            text.starts_with("*[HIGH] Shell \"quoted\" &lt;b&gt;]*"),
            "{text}"
        );
    }
}
