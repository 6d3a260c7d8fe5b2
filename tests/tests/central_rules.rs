//! Rules from the centre, for real: `vigil rules push` to a running collector, which signs the
//! set; a running sensor (real kernel programs) picks it up without a restart and an exec
//! matching the pushed rule raises an alert, beside a local rule that keeps working. Then a
//! collector without the deployment's signing key (a rogue or mis-set-up one, with a valid TLS
//! certificate) serves a set: the sensor refuses its signature and keeps running the old set.
//! Restarted while no collector answers, the sensor runs the set it cached.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vigil_tests::{
    bin, certs, marker, poll_until, require_root, start_collector, start_sensor, Proc,
};

const CENTRAL_RULE: &str = r#"
title: Vigil e2e - central rule NAME
id: ID
level: high
tags: [attack.execution]
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    Image|endswith: /vigil-test-sh
    CommandLine|contains: MARKER
  condition: selection
"#;

fn rule(name: &str, id: &str, marker: &str) -> String {
    CENTRAL_RULE
        .replace("NAME", name)
        .replace("ID", id)
        .replace("MARKER", marker)
}

struct Setup {
    dir: tempfile::TempDir,
    sh: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs_dir = dir.path().join("certs");
        certs(&certs_dir, &["init"]);
        for (role, name) in [
            ("--collector", "collector"),
            ("--sensor", "rules-sensor"),
            ("--operator", "rules-operator"),
        ] {
            certs(&certs_dir, &["issue", role, name]);
        }
        let sh = dir.path().join("vigil-test-sh");
        std::fs::copy("/bin/sh", &sh).expect("copy sh");
        std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self { dir, sh }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn pem(&self, name: &str) -> String {
        self.path("certs").join(name).display().to_string()
    }

    /// A collector serving rules from `rules_dir`, on `listen`.
    fn collector(&self, listen: &str, rules_dir: &str) -> (Proc, String) {
        let config = self.path(&format!("collector-{rules_dir}.yaml"));
        let yaml = format!(
            "listen: {listen}\ndatabase: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\nrules:\n  dir: {}\n",
            self.path("collector.db").display(),
            self.pem("ca.pem"),
            self.pem("collector.pem"),
            self.pem("collector-key.pem"),
            self.path(rules_dir).display(),
        );
        std::fs::write(&config, yaml).expect("write collector config");
        let mut cmd = Command::new(bin("vigil-collector"));
        cmd.arg("--config").arg(&config);
        start_collector(cmd)
    }

    /// `vigil rules push DIR`, which must succeed; returns its stdout.
    fn push(&self, address: &str, dir: &Path) -> String {
        let out = Command::new(bin("vigil"))
            .args(["--collector", address])
            .args(["--ca", &self.pem("ca.pem")])
            .args(["--cert", &self.pem("rules-operator.pem")])
            .args(["--key", &self.pem("rules-operator-key.pem")])
            .args(["rules", "push"])
            .arg(dir)
            .output()
            .expect("run vigil rules push");
        assert!(
            out.status.success(),
            "vigil rules push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn rule_dir(&self, name: &str, files: &[(&str, String)]) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (file, text) in files {
            std::fs::write(dir.join(file), text).expect("write rule");
        }
        dir
    }

    fn exec_marked(&self, marker: &str) {
        let status = Command::new(&self.sh)
            .args(["-c", "exit 0", marker])
            .status()
            .expect("run sh copy");
        assert!(status.success());
    }

    /// Alerts stored for `marker` (in their command line), by rule title.
    fn alert_titles(&self, marker: &str) -> Vec<String> {
        let Ok(db) = rusqlite::Connection::open_with_flags(
            self.path("collector.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return Vec::new();
        };
        let Ok(mut statement) =
            db.prepare("SELECT title FROM alerts WHERE json LIKE ?1 ORDER BY id")
        else {
            return Vec::new();
        };
        statement
            .query_map([format!("%{marker}%")], |row| row.get::<_, String>(0))
            .map(|rows| rows.filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    fn wait_alerts(&self, marker: &str, count: usize, sensor: &Proc) -> Vec<String> {
        poll_until(Duration::from_secs(10), || {
            let titles = self.alert_titles(marker);
            (titles.len() >= count).then_some(titles)
        })
        .unwrap_or_else(|| {
            panic!(
                "no {count} alerts for {marker} within 10 s; sensor:\n{}",
                sensor.stderr_text()
            )
        })
    }
}

#[test]
fn a_pushed_rule_set_fires_on_a_running_sensor_and_a_badly_signed_one_is_refused() {
    require_root();
    let setup = Setup::new();
    let (mut collector, address) = setup.collector("127.0.0.1:0", "rules-a");
    let public_key = std::fs::read_to_string(setup.path("rules-a").join("signing.pub"))
        .expect("the collector writes its public key");
    let (local_marker, central_marker, rogue_marker) =
        (marker("local"), marker("central"), marker("rogue"));
    let spool = setup.path("spool").display().to_string();
    let local = setup.rule_dir(
        "local",
        &[(
            "local.yml",
            rule(
                "local",
                "0b0c7a61-5f3e-4d8e-9d7a-1c2b3a4d5e6f",
                &local_marker,
            ),
        )],
    );
    let sensor_args = [
        "--rules",
        local.to_str().expect("utf-8"),
        "--collector",
        &address,
        "--ca",
        &setup.pem("ca.pem"),
        "--cert",
        &setup.pem("rules-sensor.pem"),
        "--key",
        &setup.pem("rules-sensor-key.pem"),
        "--spool-dir",
        &spool,
        "--rules-public-key",
        public_key.trim(),
    ];
    let mut sensor = start_sensor(&sensor_args);
    collector.wait_stderr(
        "rules-sensor runs no central rule set yet",
        Duration::from_secs(20),
    );
    // Before the push the central marker raises nothing. NB: rules apply to events the
    // sensor processes after the swap, so the push waits until the sensor has processed
    // this exec: the local rule's alert for the next exec is stored.
    setup.exec_marked(&central_marker);
    setup.exec_marked(&local_marker);
    setup.wait_alerts(&local_marker, 1, &sensor);

    let central = setup.rule_dir(
        "central",
        &[(
            "central.yml",
            rule(
                "v1",
                "7c9e4f1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b",
                &central_marker,
            ),
        )],
    );
    let pushed = setup.push(&address, &central);
    assert!(pushed.contains("as rule set version 1"), "{pushed}");
    sensor.wait_stderr(
        "running the collector's rule set version 1",
        Duration::from_secs(20),
    );
    collector.wait_stderr(
        "rules-sensor runs central rule set version 1",
        Duration::from_secs(20),
    );
    setup.exec_marked(&central_marker);
    setup.exec_marked(&local_marker);
    assert_eq!(
        setup.wait_alerts(&local_marker, 2, &sensor),
        [
            "Vigil e2e - central rule local",
            "Vigil e2e - central rule local"
        ],
        "local rules still apply"
    );
    assert_eq!(
        setup.wait_alerts(&central_marker, 1, &sensor),
        ["Vigil e2e - central rule v1"],
        "exactly one alert: the exec after the push, not the one before"
    );

    // A collector whose rules directory has another key, on the same address: the sensor
    // reconnects to it, and it serves a set signed with the wrong key.
    collector.terminate(Duration::from_secs(10));
    let (mut rogue, rogue_address) = setup.collector(&address, "rules-b");
    assert_eq!(rogue_address, address);
    let rogue_rules = setup.rule_dir(
        "rogue-rules",
        &[(
            "rogue.yml",
            rule(
                "rogue",
                "3e2d1c0b-9a8f-4e7d-8c6b-5a4f3e2d1c0b",
                &rogue_marker,
            ),
        )],
    );
    // Version 2 on this collector, so it is newer than the version 1 the sensor runs.
    setup.push(&address, &rogue_rules);
    assert!(setup.push(&address, &rogue_rules).contains("version 2"));
    sensor.wait_stderr(
        "refused the collector's rule set: rule set version 2 has a bad signature",
        Duration::from_secs(30),
    );
    rogue.wait_stderr(
        "rules-sensor runs central rule set version 1",
        Duration::from_secs(20),
    );
    setup.exec_marked(&rogue_marker);
    setup.exec_marked(&central_marker);
    assert_eq!(
        setup.wait_alerts(&central_marker, 2, &sensor),
        ["Vigil e2e - central rule v1", "Vigil e2e - central rule v1"],
        "the old set keeps working"
    );
    assert!(
        setup.alert_titles(&rogue_marker).is_empty(),
        "the refused set's rule fired"
    );

    // Restarted while no collector answers, the sensor runs the set it cached, and what it
    // raises reaches the collector once one is back.
    rogue.terminate(Duration::from_secs(10));
    sensor.terminate(Duration::from_secs(10));
    let mut sensor = start_sensor(&sensor_args);
    sensor.wait_stderr(
        "running the collector's rule set version 1 (cached)",
        Duration::from_secs(5),
    );
    setup.exec_marked(&central_marker);
    let (_collector, _) = setup.collector(&address, "rules-a");
    assert_eq!(
        setup.wait_alerts(&central_marker, 3, &sensor).len(),
        3,
        "the cached set fired after the restart"
    );
    sensor.terminate(Duration::from_secs(10));
}
