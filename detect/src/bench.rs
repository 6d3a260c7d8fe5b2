//! A micro-benchmark of the match path without a benchmark framework, so `cargo xtask bench`
//! (or `cargo run --release -p vigil-detect --example bench`) can report ns per event for
//! rule sets of 10, 100 and 1000 rules and for SigmaHQ's process_creation rules, in one run.
//! Not a test: timings depend on the machine and are reported, never asserted.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use vigil_proto::{Event, EventAction};

use crate::embedded::sample_event;
use crate::ruleset::RuleSet;

/// One measurement.
#[derive(Clone, Debug)]
pub struct BenchResult {
    pub label: String,
    pub rules: usize,
    pub events: usize,
    pub ns_per_event: f64,
    /// Matches over all events of one pass (a sanity check that rules do fire).
    pub matches_per_pass: usize,
}

/// `n` synthetic rules shaped like real ones: an executable suffix and a command-line
/// substring for process creation, a path prefix for file events, a port for connections,
/// a domain suffix for DNS, in the proportions 4:2:1:1.
pub fn synthetic_rules(n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        let body = match i % 8 {
            0..=3 => format!(
                "logsource: {{category: process_creation}}\ndetection: {{s: {{Image|endswith: /tool{i}, CommandLine|contains: ' --flag{i}'}}, f: {{User: root}}, condition: s and not f}}\n"
            ),
            4 | 5 => format!(
                "logsource: {{category: file_event}}\ndetection: {{s: {{TargetFilename|startswith: /etc/app{i}/}}, condition: s}}\n"
            ),
            6 => format!(
                "logsource: {{category: network_connection}}\ndetection: {{s: {{DestinationPort: {}, Initiated: 'true'}}, condition: s}}\n",
                10_000 + i
            ),
            _ => format!(
                "logsource: {{category: dns_query}}\ndetection: {{s: {{QueryName|endswith: .bad{i}.example}}, condition: s}}\n"
            ),
        };
        text.push_str(&format!(
            "title: synthetic {i}\nid: synthetic-{i}\n{body}---\n"
        ));
    }
    text
}

/// A mix of events like a busy build host: mostly execs and file opens, some connections
/// and lookups; a few match synthetic rules.
pub fn event_mix() -> Vec<Event> {
    let mut events = Vec::new();
    let execs: [&[(&str, &str)]; 6] = [
        &[
            ("Image", "/usr/bin/cc"),
            ("CommandLine", "cc -O2 -c main.c -o main.o"),
            ("ParentImage", "/usr/bin/make"),
            ("User", "dev"),
        ],
        &[
            ("Image", "/home/dev/.cargo/bin/rustc"),
            (
                "CommandLine",
                "rustc --crate-name detect --edition=2021 src/lib.rs --crate-type lib",
            ),
            ("ParentImage", "/home/dev/.cargo/bin/cargo"),
            ("User", "dev"),
        ],
        &[
            ("Image", "/usr/bin/git"),
            ("CommandLine", "git status --porcelain"),
            ("ParentImage", "/bin/bash"),
            ("User", "dev"),
        ],
        &[
            ("Image", "/bin/sh"),
            ("CommandLine", "sh -c 'ls -la /tmp'"),
            ("ParentImage", "/usr/bin/python3"),
            ("User", "dev"),
        ],
        &[
            ("Image", "/usr/bin/tool3"),
            ("CommandLine", "tool3 --flag3 x"),
            ("ParentImage", "/bin/bash"),
            ("User", "dev"),
        ],
        &[
            ("Image", "/usr/bin/curl"),
            (
                "CommandLine",
                "curl -fsSL https://static.rust-lang.org/dist/channel.toml",
            ),
            ("ParentImage", "/bin/bash"),
            ("User", "dev"),
        ],
    ];
    for fields in execs {
        if let Ok(e) = sample_event(EventAction::Exec, fields) {
            events.push(e);
        }
    }
    let others: [(EventAction, &[(&str, &str)]); 6] = [
        (
            EventAction::Open,
            &[
                ("Image", "/usr/bin/cc"),
                ("TargetFilename", "/tmp/cc1234.o"),
                ("file.flags", "write,create"),
            ],
        ),
        (
            EventAction::Open,
            &[
                ("Image", "/home/dev/.cargo/bin/rustc"),
                ("TargetFilename", "/work/target/debug/deps/libdetect.rlib"),
                ("file.flags", "write,create,truncate"),
            ],
        ),
        (
            EventAction::Open,
            &[
                ("Image", "/usr/bin/vim"),
                ("TargetFilename", "/etc/app4/config"),
                ("file.flags", "write"),
            ],
        ),
        (
            EventAction::Connect,
            &[
                ("Image", "/usr/bin/curl"),
                ("DestinationIp", "151.101.1.1"),
                ("DestinationPort", "443"),
            ],
        ),
        (
            EventAction::DnsQuery,
            &[
                ("Image", "/usr/bin/curl"),
                ("QueryName", "static.rust-lang.org"),
            ],
        ),
        (EventAction::Exit, &[("Image", "/usr/bin/cc")]),
    ];
    for (action, fields) in others {
        if let Ok(e) = sample_event(action, fields) {
            events.push(e);
        }
    }
    events
}

/// CPU time this thread has used: unlike wall time, it does not count the time other
/// processes held the CPU, which on a shared 2-core machine can be most of a round.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec it is given a valid pointer to.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Rounds per measurement; the median round is reported, so that another process taking
/// the CPU for part of the run (these machines are shared) moves the figure little.
const ROUNDS: usize = 9;
/// Minimum length of one round.
const ROUND: Duration = Duration::from_millis(40);

/// Matches every event of `events` against `rules`, in [`ROUNDS`] rounds of at least
/// [`ROUND`] of CPU time each, and returns the median CPU time per event. The match buffer is reused, as
/// the sensor would.
pub fn measure(label: &str, rules: &RuleSet, events: &[Event]) -> BenchResult {
    let mut out = Vec::with_capacity(64);
    let mut matches_per_pass = 0;
    for event in events {
        out.clear();
        rules.matches_into(event, &mut out);
        matches_per_pass += out.len();
    }
    let mut pass = |passes: usize| {
        let start = thread_cpu_time();
        for _ in 0..passes {
            for event in events {
                out.clear();
                rules.matches_into(black_box(event), &mut out);
                black_box(out.len());
            }
        }
        thread_cpu_time().saturating_sub(start)
    };
    // Calibrate: double the passes until one round lasts long enough.
    let mut passes = 1;
    while pass(passes) < ROUND && passes < 1 << 30 {
        passes *= 2;
    }
    let mut per_event: Vec<f64> = (0..ROUNDS)
        .map(|_| pass(passes).as_nanos() as f64 / (passes * events.len()).max(1) as f64)
        .collect();
    per_event.sort_by(f64::total_cmp);
    BenchResult {
        label: label.to_owned(),
        rules: rules.len(),
        events: events.len(),
        ns_per_event: per_event[ROUNDS / 2],
        matches_per_pass,
    }
}

/// The whole benchmark: synthetic 10/100/1000-rule sets over [`event_mix`], and SigmaHQ's
/// process_creation rules (from `sigma_process_creation`, when given and present) over the
/// exec events of the mix.
pub fn run(sigma_process_creation: Option<&Path>) -> Vec<BenchResult> {
    let events = event_mix();
    let mut results = Vec::new();
    for n in [10, 100, 1000] {
        let Ok(set) = RuleSet::parse(&synthetic_rules(n), "<synthetic>") else {
            continue;
        };
        results.push(measure(&format!("synthetic {n}"), &set, &events));
    }
    if let Some(dir) = sigma_process_creation.filter(|d| d.is_dir()) {
        if let Ok(set) = RuleSet::load(&[dir]) {
            let execs: Vec<Event> = events
                .iter()
                .filter(|e| e.event.action == EventAction::Exec)
                .cloned()
                .collect();
            results.push(measure(
                "SigmaHQ process_creation (exec events)",
                &set,
                &execs,
            ));
        }
    }
    results
}
