//! One JSON object and one table row per metric, and the median the ratios are quoted as.

use std::fmt::Write as _;
use std::time::Duration;

use super::workload::{Plan, CHUNKS};

/// One reported metric: one JSON object and one table row.
pub(super) struct Metric {
    pub(super) name: String,
    pub(super) baseline: Option<f64>,
    pub(super) treatment: f64,
    pub(super) ratio: Option<f64>,
    pub(super) unit: &'static str,
    pub(super) drops: Option<u64>,
    /// The issue's goal, in words, and whether the figure meets it.
    pub(super) goal: String,
    pub(super) met: bool,
    /// Every per-pair ratio, so the spread is visible next to the median.
    pub(super) pair_ratios: Vec<f64>,
}

pub(super) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn json_number(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.4}"),
        _ => "null".into(),
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn to_json(m: &Metric) -> String {
    let Metric {
        name,
        baseline,
        treatment,
        ratio,
        unit,
        drops,
        goal,
        met,
        pair_ratios,
    } = m;
    let pairs: Vec<String> = pair_ratios.iter().map(|r| json_number(Some(*r))).collect();
    format!(
        "{{\"name\":{},\"baseline\":{},\"treatment\":{},\"ratio\":{},\"unit\":{},\"drops\":{},\"goal\":{},\"met\":{},\"pair_ratios\":[{}]}}",
        json_string(name),
        json_number(*baseline),
        json_number(Some(*treatment)),
        json_number(*ratio),
        json_string(unit),
        drops.map_or("null".into(), |d| d.to_string()),
        json_string(goal),
        met,
        pairs.join(","),
    )
}

/// The JSON line of a series that broke.
pub(super) fn failure_json(series: &str, error: &anyhow::Error) -> String {
    format!(
        "{{\"name\":{},\"failed\":{}}}",
        json_string(series),
        json_string(&format!("{error:#}"))
    )
}

pub(super) fn to_table(metrics: &[Metric], plan: &Plan, took: Duration) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<52} {:>10} {:>10} {:>7} {:<9} {:>5}  {:<16} met",
        "metric", "baseline", "treatment", "ratio", "unit", "drops", "goal"
    );
    for m in metrics {
        let cell = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
        let _ = writeln!(
            t,
            "{:<52} {:>10} {:>10} {:>7} {:<9} {:>5}  {:<16} {}",
            m.name,
            cell(m.baseline),
            format!("{:.1}", m.treatment),
            m.ratio.map_or("-".into(), |r| format!("{r:.3}")),
            m.unit,
            m.drops.map_or("-".into(), |d| d.to_string()),
            m.goal,
            if m.met { "yes" } else { "NO" },
        );
    }
    let has = |series: &[char]| {
        metrics
            .iter()
            .any(|m| m.name.starts_with(|c| series.contains(&c)))
    };
    if has(&['A']) {
        let _ = writeln!(
        t,
        "A: baseline = sensor detached, treatment = `vigil-sensor --output none --rules rules/` (the shipped pack) attached; empty programs = no sensor, a BPF program that does nothing attached to every tracepoint the sensor uses (the kernel's dispatch to BPF on those hooks: the least any sensor on them costs); ratio = median of {} per-round ratios (ABCCBA order), each side the fastest of {CHUNKS} slices; CPU = the loop thread's CPU time plus its reaped children's (the goal's figure), wall = elapsed time (also charges the sensor's and everyone else's use of the 2 cores); drops = kernel records the sensor logged lost. Took {:.0} s.",
        plan.rounds,
        took.as_secs_f64()
    );
    }
    if has(&['B', 'C', 'D', 'F']) {
        let _ = writeln!(
        t,
        "B-D: release collector (SQLite) + sensor shipping every event over QUIC, 100 rules, file prefix = the bench directory only. \
B: open/close generator doubling its rate, a step is lossless when no sensor drop counter moved and sensor and collector saw every open (lossless = generator max: the generator, one thread of a debug build, was the limit); \
raw drain = the same kernel programs drained by a consumer that only counts. C: open of a file a rule names -> line printed by `vigil tail -o json`. \
D: CPU = sum of the sensor's threads' schedstat over the step and its settling second, per generated event: total = all of it (the goal's figure; it includes the sensor's work for the rest of the host), less host background = minus its CPU rate in an idle window just before (noisy: the host's load moves by the second). F: 512-event batches one at a time, as the sensor's lane sends them."
    );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_series_is_one_json_line_naming_it_and_why() {
        let error = anyhow::anyhow!("no alert for \"/tmp/p\" within 30s").context("C latency");
        assert_eq!(
            failure_json("C", &error),
            r#"{"name":"C","failed":"C latency: no alert for \"/tmp/p\" within 30s"}"#
        );
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
