//! `vigil-sensor --probe`: which kernel hook carries each event kind on this host, and why the
//! better ones were refused. It runs the sensor's own start-up (rules, capture plan, hook
//! chains), so the table is the choice the sensor makes here, not a guess; then it detaches.

use std::fmt::Write;

use anyhow::Context;

use crate::capture::{Capture, CaptureOptions, HookChoice, HookRefusal};
use crate::config::SensorConfig;

pub fn run(config: &SensorConfig) -> anyhow::Result<()> {
    let rules = crate::load_rules(config)?;
    let plan = crate::pushdown::plan(config, &rules.kernel_filter());
    let options = CaptureOptions {
        exec_hook: config.exec_hook,
        file_prefixes: plan.file_prefixes,
        actions: plan.actions,
        syscalls: config.syscalls,
        critical_ring_bytes: config.critical_ring_bytes,
        bulk_ring_bytes: config.bulk_ring_bytes,
    };
    let capture = Capture::start(&options).context("probing kernel hooks")?;
    print!("{}", table(capture.hooks(), capture.refused()));
    println!("\npid namespace: {}", capture.pid_namespace().describe());
    Ok(())
}

/// One row per hook tried: per event kind, the refused ones in the order tried, then the one
/// in use.
pub fn table(in_use: &[HookChoice], refused: &[HookRefusal]) -> String {
    let mut rows: Vec<(&str, &str, String)> = Vec::new();
    for choice in in_use {
        for r in refused.iter().filter(|r| r.event == choice.event) {
            rows.push((r.event, &r.hook, format!("refused: {}", r.reason)));
        }
        rows.push((choice.event, &choice.hook, "in use".to_owned()));
    }
    for r in refused
        .iter()
        .filter(|r| !in_use.iter().any(|c| c.event == r.event))
    {
        rows.push((r.event, &r.hook, format!("refused: {}", r.reason)));
    }
    let kind_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let hook_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:kind_width$}  {:hook_width$}  STATUS",
        "KIND", "HOOK"
    );
    for (kind, hook, status) in rows {
        let _ = writeln!(out, "{kind:kind_width$}  {hook:hook_width$}  {status}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_come_before_the_hook_in_use_of_their_kind() {
        let in_use = [
            HookChoice {
                event: "exec",
                hook: "tp_btf/sched_process_exec".into(),
            },
            HookChoice {
                event: "file open",
                hook: "tracepoint/x".into(),
            },
        ];
        let refused = [HookRefusal {
            event: "file open",
            hook: "fentry/security_file_open".into(),
            reason: "EPERM: load".into(),
        }];
        let text = table(&in_use, &refused);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("KIND"));
        assert!(lines[1].starts_with("exec") && lines[1].ends_with("in use"));
        assert!(
            lines[2].contains("fentry/security_file_open")
                && lines[2].ends_with("refused: EPERM: load")
        );
        assert!(lines[3].contains("tracepoint/x") && lines[3].ends_with("in use"));
    }
}
