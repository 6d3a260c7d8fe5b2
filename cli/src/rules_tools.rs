//! `vigil rules test|list|explain`: run rules' embedded test cases, list what is loaded,
//! and explain per rule what the kernel evaluates (attached event kinds, pushed-down paths,
//! kill at exec) and what is left to userspace.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use vigil_cli::backtest::{backtest as run_backtest, BacktestMatch};
use vigil_cli::client::{Client, ConnectOptions};
use vigil_cli::output::{AlertPrinter, Format};
use vigil_detect::{RuleAction, RuleSet};
use vigil_proto::{StoredAlert, Timestamp};

/// The rule files directly in `dir` (*.yml, *.yaml; subdirectories are not read), by name,
/// checked here first so that a bad rule is reported as `DIR/file:line:column` before
/// anything is sent.
pub fn read_rule_dir(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .path();
        let is_rule = path.extension().is_some_and(|e| e == "yml" || e == "yaml");
        if !is_rule || !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("{}: the file name is not UTF-8", path.display()))?
            .to_owned();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        files.insert(name, text);
    }
    vigil_proto::SignedRuleSet::check_files(&files)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(name, text)| (dir.join(name).display().to_string(), text.clone()))
        .collect();
    let set =
        RuleSet::load_with_sources::<&Path>(&[], &sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(first) = set.run_embedded_tests().first() {
        anyhow::bail!("{}: a rule's own test fails: {first}", dir.display());
    }
    Ok(files)
}

fn load(paths: &[PathBuf]) -> anyhow::Result<RuleSet> {
    // The error already reads `path:line:column: reason`.
    RuleSet::load(paths).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs every rule's cases; exit status 1 when any case fails or nothing was tested.
pub fn test(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let set = load(paths)?;
    let mut out = std::io::stdout().lock();
    let cases: usize = set.rules().map(|r| r.test_cases().len()).sum();
    let failures = set.run_embedded_tests();
    for failure in &failures {
        writeln!(out, "FAIL {failure}")?;
    }
    let untested = set.rules().filter(|r| r.test_cases().is_empty()).count();
    writeln!(
        out,
        "{} rules, {cases} cases, {} failed, {untested} rules without cases",
        set.len(),
        failures.len()
    )?;
    Ok(if failures.is_empty() && cases > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn list(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let set = load(paths)?;
    let mut out = std::io::stdout().lock();
    for rule in set.rules() {
        let info = rule.info();
        writeln!(
            out,
            "{}  {:<13} {:<18} {:<5} {}",
            info.id,
            info.level.as_str(),
            rule.category().name,
            action_name(rule.options().action),
            info.title
        )?;
    }
    for skipped in set.unsupported() {
        writeln!(
            out,
            "{}  unsupported: {} ({})",
            skipped.id, skipped.title, skipped.why
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `vigil rules backtest`: prints each match as it is found, then a summary on stderr.
pub fn backtest(
    paths: &[PathBuf],
    since: Timestamp,
    format: Format,
    options: &ConnectOptions,
) -> anyhow::Result<ExitCode> {
    let set = load(paths)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let client = Client::connect(options).await?;
        let stdout = std::io::stdout();
        let mut table = AlertPrinter::new(stdout.lock(), Format::Table);
        let print = |found: BacktestMatch| -> std::io::Result<()> {
            match format {
                Format::Json => {
                    let line = serde_json::to_string(&found).map_err(std::io::Error::other)?;
                    let mut out = stdout.lock();
                    writeln!(out, "{line}")?;
                    out.flush()
                }
                Format::Table => table.print(&StoredAlert {
                    id: found.event_id,
                    sensor: found.sensor,
                    received: found.received,
                    alert: found.alert,
                }),
            }
        };
        let summary = run_backtest(&client, &set, since, print).await;
        client.close().await;
        let summary = summary?;
        eprintln!(
            "{} rules over {} events received since {since}: {} matches",
            set.len(),
            summary.events,
            summary.matches
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn action_name(action: RuleAction) -> &'static str {
    match action {
        RuleAction::Alert => "alert",
        RuleAction::Kill => "kill",
    }
}

pub fn explain(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let set = load(paths)?;
    let mut out = std::io::stdout().lock();
    for rule in set.rules() {
        let info = rule.info();
        let pd = rule.pushdown();
        writeln!(out, "{} ({})", info.title, info.id)?;
        let kinds: Vec<&str> = pd.actions.iter().map(|a| a.as_str()).collect();
        writeln!(
            out,
            "  kernel: attach {} ({})",
            kinds.join(", "),
            rule.category().name
        )?;
        match (&pd.paths, pd.path_field) {
            (Some(paths), Some(field)) => {
                let shown: Vec<String> = paths.iter().map(ToString::to_string).collect();
                writeln!(
                    out,
                    "  kernel: only events whose {field} is {}",
                    shown.join(" | ")
                )?;
            }
            (None, Some(field)) => writeln!(
                out,
                "  kernel: every event (no {field} test every match must pass)"
            )?,
            (_, None) => writeln!(out, "  kernel: every event (no path field to filter on)")?,
        }
        if let Some(how) = rule.kill_enforcement() {
            writeln!(out, "  kill: {how}")?;
        }
        writeln!(
            out,
            "  userspace: the full condition, on every event the kernel delivers"
        )?;
        if let Some(dedup) = &rule.options().dedup {
            writeln!(
                out,
                "  dedup: one alert per {} within {:?}",
                if dedup.key.is_empty() {
                    "rule".to_owned()
                } else {
                    dedup.key.join("+")
                },
                dedup.window
            )?;
        }
    }
    let filter = set.kernel_filter();
    let kinds: Vec<&str> = filter.actions.iter().map(|(a, _)| a.as_str()).collect();
    writeln!(
        out,
        "set: attach {}; {} kills at exec",
        kinds.join(", "),
        filter.exec_kill.len()
    )
    .context("writing stdout")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        path
    }

    #[test]
    fn test_exits_1_on_a_failing_case_and_0_when_all_pass() {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = "title: t\nlogsource: {category: process_creation}\ndetection: {s: {Image|endswith: /sh}, condition: s}\n";
        let good = write(
            dir.path(),
            "good.yml",
            &format!("{base}vigil:\n  tests:\n    match: [{{Image: /bin/sh}}]\n    no_match: [{{Image: /bin/ls}}]\n"),
        );
        let bad = write(
            dir.path(),
            "bad.yml",
            &format!(
                "{}vigil:\n  tests:\n    match: [{{Image: /bin/ls}}]\n",
                base.replace("title: t", "title: u\nid: other")
            ),
        );
        assert_eq!(
            test(std::slice::from_ref(&good)).expect("loads"),
            ExitCode::SUCCESS,
            "passing cases"
        );
        assert_eq!(
            test(&[good, bad]).expect("loads"),
            ExitCode::FAILURE,
            "a failing case fails the run"
        );
    }

    #[test]
    fn list_and_explain_run_on_the_default_pack() {
        let pack = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../rules");
        assert_eq!(
            list(std::slice::from_ref(&pack)).expect("pack loads"),
            ExitCode::SUCCESS
        );
        assert_eq!(explain(&[pack]).expect("pack loads"), ExitCode::SUCCESS);
    }
}
