//! The web console in a real browser: a real collector (console on), a real sensor, and
//! Playwright driving Debian's headless chromium through collector/console-ui/e2e. The spec
//! signs in with a link from `vigil console login`, runs a real exec that a rule catches, sees
//! its alert appear live, checks the process tree's parent chain, filters, signs out, and is
//! refused with an expired link and without a session. Screenshots land in
//! target/console-screenshots/.
//!
//! Needs root (the sensor), chromium (`cargo xtask test` installs it) and the front end's npm
//! packages (`cargo xtask console-ui`); without the last two it says so loudly and skips.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use vigil_tests::{bin, certs, marker, require_root, start_collector, start_sensor};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Seconds a sign-in link lives in this test: long enough for the spec to use one right after
/// asking, short enough that waiting one out is quick.
const LINK_TTL_SECS: u64 = 4;

const RULE: &str = r#"
title: Vigil e2e - marked shell copy
id: 0c7d7f0e-52a4-4b8e-a3f5-6f0a2a51c1d2
description: A copy of sh run with the test's marker
author: Vigil tests
level: high
tags:
  - attack.execution
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    Image|endswith: /vigil-test-sh
    CommandLine|contains: MARKER
  condition: selection
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Why the browser test cannot run here, if it cannot.
fn missing(ui: &Path) -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!(
            "{CHROMIUM} is missing (apt package chromium; `cargo xtask test` installs it)"
        ));
    }
    if !ui.join("node_modules/.bin/playwright").exists() {
        return Some("Playwright is not installed: run `cargo xtask console-ui`".into());
    }
    if !ui.join("dist/index.html").exists() {
        return Some("the front end is not built: run `cargo xtask console-ui`".into());
    }
    None
}

#[test]
fn the_console_in_chromium_shows_a_real_alert_live_with_its_process_tree() {
    require_root();
    let ui = workspace().join("collector/console-ui");
    if let Some(why) = missing(&ui) {
        eprintln!("SKIPPED console browser test: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let certs_dir = dir.path().join("certs");
    certs(&certs_dir, &["init"]);
    for (role, name) in [
        ("--collector", "collector"),
        ("--sensor", "e2e-sensor"),
        ("--operator", "e2e-operator"),
    ] {
        certs(&certs_dir, &["issue", role, name]);
    }
    let pem = |n: &str| certs_dir.join(n).display().to_string();
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\ndatabase: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n\
             console:\n  listen: 127.0.0.1:0\n  link_ttl_secs: {LINK_TTL_SECS}\n",
            dir.path().join("collector.db").display(),
            pem("ca.pem"),
            pem("collector.pem"),
            pem("collector-key.pem"),
        ),
    )
    .expect("write collector.yaml");
    let mut cmd = Command::new(bin("vigil-collector"));
    cmd.arg("--config").arg(&config);
    let (collector, address) = start_collector(cmd);

    let marker = marker("console");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).expect("rules dir");
    std::fs::write(rules.join("e2e.yml"), RULE.replace("MARKER", &marker)).expect("write rule");
    let sh = dir.path().join("vigil-test-sh");
    std::fs::copy("/bin/sh", &sh).expect("copy sh");
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sensor = start_sensor(&[
        "--rules",
        rules.to_str().expect("utf-8"),
        "--collector",
        &address,
        "--ca",
        &pem("ca.pem"),
        "--cert",
        &pem("e2e-sensor.pem"),
        "--key",
        &pem("e2e-sensor-key.pem"),
        "--spool-dir",
        &dir.path().join("spool").display().to_string(),
    ]);

    let cli_args = serde_json::json!([
        "--collector",
        address,
        "--ca",
        pem("ca.pem"),
        "--cert",
        pem("e2e-operator.pem"),
        "--key",
        pem("e2e-operator-key.pem"),
    ]);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let shots = target.join("console-screenshots");
    let started = Instant::now();
    let out = Command::new(ui.join("node_modules/.bin/playwright"))
        .arg("test")
        .current_dir(&ui)
        .env("VIGIL_BIN", bin("vigil"))
        .env("VIGIL_CLI_ARGS", cli_args.to_string())
        .env("VIGIL_TEST_SH", &sh)
        .env("VIGIL_MARKER", &marker)
        .env("VIGIL_HARNESS_PID", std::process::id().to_string())
        .env("VIGIL_LINK_TTL_SECS", LINK_TTL_SECS.to_string())
        .env("VIGIL_SCREENSHOT_DIR", &shots)
        .env("VIGIL_CHROMIUM", CHROMIUM)
        .env("VIGIL_PLAYWRIGHT_OUTPUT", target.join("console-playwright"))
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .output()
        .expect("run playwright");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("playwright ({:.1?}):\n{stdout}{stderr}", started.elapsed());
    assert!(
        out.status.success(),
        "the browser test failed ({}).\nsensor:\n{}\ncollector:\n{}",
        out.status,
        sensor.stderr_text(),
        collector.stderr_text()
    );
    for page in [
        "1-alerts",
        "2-alerts-live",
        "3-alert",
        "4-alerts-filtered",
        "5-signed-out",
        "6-expired-link",
    ] {
        let path = shots.join(format!("{page}.png"));
        assert!(path.exists(), "no screenshot {}", path.display());
    }
    drop(sensor);
    drop(collector);
}
