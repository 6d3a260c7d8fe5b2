//! Noise of a rule pack on this machine: samples /proc every 20 ms for SECONDS, turns each
//! new process (pid + start time) into an exec event (executable, command line, working
//! directory, effective user, parent) and counts the alerts the pack raises. Only
//! `process_creation` rules can fire from a /proc sample, and processes shorter than the
//! sampling interval are missed; the sensor's own recording is the complete measurement.
//!
//! `cargo run --release -p vigil-detect --example noise -- RULES_DIR SECONDS`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::time::{Duration, Instant};

use vigil_detect::{sample_exec_event, RuleSet};

fn main() {
    let mut args = std::env::args().skip(1);
    let rules = args.next().unwrap_or_else(|| "rules".into());
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let set = match RuleSet::load(&[&rules]) {
        Ok(set) => set,
        Err(e) => {
            eprintln!("noise: {e}");
            std::process::exit(2);
        }
    };
    let users = users();
    let mut seen = HashSet::new();
    let mut alerts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let Ok(dir) = fs::read_dir("/proc") else {
            break;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Some(start) = stat_field(pid, 21) else {
                continue;
            };
            if !seen.insert((pid, start)) {
                continue;
            }
            let Some(fields) = process_fields(pid, &users) else {
                continue;
            };
            let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let Ok(event) = sample_exec_event(&refs) else {
                continue;
            };
            for rule in set.matches(&event) {
                alerts
                    .entry(rule.info().title.clone())
                    .or_default()
                    .push(event.process.command_line.chars().take(120).collect());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let total: usize = alerts.values().map(Vec::len).sum();
    println!(
        "{} processes sampled over {seconds} s, {} rules, {total} alerts",
        seen.len(),
        set.len()
    );
    for (title, lines) in &alerts {
        println!("  {} x {title}", lines.len());
        for line in lines.iter().take(3) {
            println!("      {line}");
        }
    }
}

fn users() -> HashMap<u32, String> {
    fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(':');
            let name = parts.next()?;
            let uid = parts.nth(1)?.parse().ok()?;
            Some((uid, name.to_owned()))
        })
        .collect()
}

/// Field `index` (0-based) of /proc/PID/stat, counted after the parenthesised comm.
fn stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(index - 2).map(str::to_owned)
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    Some(text.trim_end_matches('\0').replace('\0', " "))
}

fn exe(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

fn process_fields(pid: u32, users: &HashMap<u32, String>) -> Option<Vec<(&'static str, String)>> {
    let image = exe(pid)?;
    let mut fields = vec![
        ("Image", image),
        ("CommandLine", cmdline(pid)?),
        ("ProcessId", pid.to_string()),
    ];
    if let Ok(cwd) = fs::read_link(format!("/proc/{pid}/cwd")) {
        fields.push(("CurrentDirectory", cwd.display().to_string()));
    }
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let euid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())?;
    fields.push((
        "User",
        users
            .get(&euid)
            .cloned()
            .unwrap_or_else(|| euid.to_string()),
    ));
    let ppid: u32 = stat_field(pid, 3)?.parse().ok()?;
    if let (Some(pimage), Some(pcmd)) = (exe(ppid), cmdline(ppid)) {
        fields.push(("ParentImage", pimage));
        fields.push(("ParentCommandLine", pcmd));
        fields.push(("ParentProcessId", ppid.to_string()));
    }
    Some(fields)
}
