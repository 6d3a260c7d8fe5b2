//! `vigil rules check`: loads each given rule file or directory with `vigil-detect` and says,
//! per path, either where the first problem is (`path:line:column: reason`, on stderr) or how
//! many rules compiled. Every path is checked, so one run reports one problem per bad path.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use vigil_detect::RuleSet;

/// Checks every path; exit status 1 if any failed to load. `Err` only when stdout or stderr
/// cannot be written.
pub fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let mut failed = false;
    for path in paths {
        match RuleSet::load(std::slice::from_ref(path)) {
            Ok(set) => {
                writeln!(
                    stdout,
                    "{}: {} rules ok, {} unsupported",
                    path.display(),
                    set.len(),
                    set.unsupported().len()
                )?;
                // A kill the kernel cannot enforce at exec still works, later: say so.
                for rule in set.rules() {
                    if let Some(how) = rule.kill_enforcement() {
                        writeln!(stdout, "  kill {}: {how}", rule.info().id)?;
                    }
                }
            }
            Err(error) => {
                // The error already reads `path:line:column: reason`.
                writeln!(stderr, "{error}")?;
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_paths_are_all_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("good.yml");
        let bad = dir.path().join("bad.yml");
        std::fs::write(
            &good,
            "title: t\nlogsource: {category: process_creation}\ndetection: {s: {Image: x}, condition: s}\n",
        )
        .expect("write good rule");
        std::fs::write(&bad, "title: t\nlogsource: {category: process_creation}\ndetection: {s: {Image|foo: x}, condition: s}\n")
            .expect("write bad rule");
        let all_good = check(std::slice::from_ref(&good)).expect("stdout is writable");
        assert_eq!(all_good, ExitCode::SUCCESS, "a valid rule passes");
        let mixed = check(&[bad, good]).expect("stdout is writable");
        assert_eq!(mixed, ExitCode::FAILURE, "one bad path fails the run");
    }
}
