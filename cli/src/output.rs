//! How alerts are printed: one JSON object per line for machines, a table for people.
//!
//! The JSON line is the ECS alert as the sensor produced it (`@timestamp`, `rule`, `event`,
//! `process`, `user`, `host`, ...) with the collector's `alert_id`, `sensor` and `received`
//! in front, so SIEM pipelines can take it as is and `vigil tail` output can be resumed by id.

use std::io::{self, Write};

use serde::Serialize;
use vigil_proto::{Alert, Level, SensorInfo, StoredAlert, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// The JSON shape of one alert line.
#[derive(Serialize)]
struct AlertLine<'a> {
    alert_id: i64,
    sensor: &'a str,
    received: Timestamp,
    #[serde(flatten)]
    alert: &'a Alert,
}

/// One alert as a single line of JSON (no trailing newline).
pub fn alert_json(alert: &StoredAlert) -> String {
    let StoredAlert {
        id,
        sensor,
        received,
        alert,
    } = alert;
    let line = AlertLine {
        alert_id: *id,
        sensor,
        received: *received,
        alert,
    };
    // NB: cannot fail: every field is a string, number, list or map with string keys.
    serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Writes alerts one per line and flushes each, so `vigil tail | jq` sees them at once.
pub struct AlertPrinter<W: Write> {
    out: W,
    format: Format,
    header_written: bool,
}

const COLUMNS: [(&str, usize); 6] = [
    ("TIME", 20),
    ("LEVEL", 8),
    ("RULE", 36),
    ("HOST", 16),
    ("PID", 7),
    ("EXECUTABLE", 28),
];

impl<W: Write> AlertPrinter<W> {
    pub fn new(out: W, format: Format) -> Self {
        Self {
            out,
            format,
            header_written: false,
        }
    }

    pub fn print(&mut self, alert: &StoredAlert) -> io::Result<()> {
        match self.format {
            Format::Json => writeln!(self.out, "{}", alert_json(alert))?,
            Format::Table => {
                if !self.header_written {
                    self.header()?;
                }
                let a = &alert.alert;
                let time = humantime::format_rfc3339_seconds(a.event.timestamp.into()).to_string();
                let cells = [
                    time,
                    level_name(a.rule.level).to_owned(),
                    a.rule.title.clone(),
                    a.event.host.name.clone(),
                    a.event.process.pid.to_string(),
                    a.event.process.executable.clone(),
                ];
                let mut line = String::new();
                for (cell, (_, width)) in cells.iter().zip(COLUMNS) {
                    line.push_str(&fit(&printable(cell), width));
                    line.push(' ');
                }
                line.push_str(&printable(&a.event.process.command_line));
                writeln!(self.out, "{}", line.trim_end())?;
            }
        }
        self.out.flush()
    }

    fn header(&mut self) -> io::Result<()> {
        let mut line = String::new();
        for (name, width) in COLUMNS {
            line.push_str(&fit(name, width));
            line.push(' ');
        }
        line.push_str("COMMAND LINE");
        writeln!(self.out, "{line}")?;
        self.header_written = true;
        Ok(())
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        // The only level longer than its column.
        Level::Informational => "info",
        other => other.as_str(),
    }
}

/// Pads or cuts `text` to exactly `width` characters, marking a cut with `…`.
fn fit(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        format!("{text:<width$}")
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// NB: command lines and paths come from whatever ran on the watched host, an attacker
/// included: control characters are escaped so they cannot drive the operator's terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `vigil sensors`: one JSON object per sensor (the [`SensorInfo`] as the collector sent it),
/// or a table with how long ago each was last seen as of `now`.
pub fn print_sensors<W: Write>(
    mut out: W,
    format: Format,
    sensors: &[SensorInfo],
    now: Timestamp,
) -> io::Result<()> {
    if format == Format::Json {
        for sensor in sensors {
            let line = serde_json::to_string(sensor).map_err(io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        return out.flush();
    }
    writeln!(
        out,
        "{:<20} {:<16} {:<8} {:<14} {:>9} {:>8} {:>8} {:>8} {:>8}  {:<7} HOOKS",
        "SENSOR",
        "HOST",
        "VERSION",
        "RULES",
        "LAST SEEN",
        "EVENTS/S",
        "K-DROPS",
        "D-DROPS",
        "SPOOL",
        "STATE"
    )?;
    for info in sensors {
        let SensorInfo {
            sensor,
            status,
            last_seen,
            events_per_sec,
            silent,
        } = info;
        let ago = now.unix_nanos().saturating_sub(last_seen.unix_nanos()) / 1_000_000_000;
        writeln!(
            out,
            "{:<20} {:<16} {:<8} {:<14} {:>8}s {:>8.1} {:>8} {:>8} {:>8}  {:<7} {}",
            sensor,
            status.host,
            status.version,
            format!("{} ({})", status.rules_version, status.rules),
            ago,
            events_per_sec,
            status.kernel_drops,
            status.delivery_drops,
            status.spool_batches,
            if *silent { "SILENT" } else { "ok" },
            status.hooks.join(",")
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_proto::{Event, EventAction, EventMeta, Host, Process, RuleInfo, UserRef};

    fn stored() -> StoredAlert {
        StoredAlert {
            id: 42,
            sensor: "web-1".into(),
            received: Timestamp(1_764_255_600_000_000_000),
            alert: Alert {
                rule: RuleInfo {
                    id: "r1".into(),
                    title: "Shell spawned by web server".into(),
                    level: Level::High,
                    tags: vec![],
                    description: None,
                    author: None,
                },
                event: Event {
                    timestamp: Timestamp(1_764_255_599_000_000_000),
                    event: EventMeta {
                        kind: "alert".into(),
                        action: EventAction::Exec,
                        sequence: 1,
                        boot_ns: 2,
                    },
                    host: Host {
                        name: "web-1".into(),
                        id: "m".into(),
                    },
                    process: Process {
                        pid: 4242,
                        executable: "/bin/sh".into(),
                        command_line: "sh -c \u{1b}[2Jid".into(),
                        ..Default::default()
                    },
                    user: UserRef::default(),
                    audit_user: None,
                    container: None,
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
    fn json_lines_put_the_collector_fields_first_and_flatten_the_alert() {
        let line = alert_json(&stored());
        assert!(
            line.starts_with(
                r#"{"alert_id":42,"sensor":"web-1","received":"2025-11-27T15:00:00.000000000Z","rule":{"#
            ),
            "{line}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(value["@timestamp"], "2025-11-27T14:59:59.000000000Z");
        assert_eq!(value["process"]["pid"], 4242);
        assert_eq!(value["host"]["name"], "web-1");
        assert_eq!(value["event"]["action"], "exec");
    }

    #[test]
    fn table_rows_escape_control_characters() {
        let mut printer = AlertPrinter::new(Vec::new(), Format::Table);
        printer.print(&stored()).expect("print to memory");
        let text = String::from_utf8(printer.out).expect("utf-8");
        assert!(text.starts_with("TIME "), "{text}");
        assert!(text.contains("high"), "{text}");
        assert!(text.contains(r"sh -c \u{1b}[2Jid"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }
}
