//! Fleet health with real processes: the real `vigil-collector`, a sensor process
//! (`vigil-synthetic-sensor`: the real shipper and heartbeats, synthetic events) and the real
//! `vigil` CLI. `vigil sensors` lists the sensor as it reports itself; a sensor that reports
//! kernel drops raises an alert; a sensor stopped with SIGKILL raises "sensor silent" within
//! its window (three heartbeats) and not before.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_tests::{bin, poll_until, start_collector, Proc};

const SYNTHETIC: &str = env!("CARGO_BIN_EXE_vigil-synthetic-sensor");

/// Heartbeat period of the sensor under test; the collector allows three.
const HEARTBEAT_SECS: u64 = 1;
const WINDOW: Duration = Duration::from_secs(3 * HEARTBEAT_SECS);
/// The collector looks for silent sensors every second; the rest is this machine being busy.
const SLACK: Duration = Duration::from_secs(3);

struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        let dir = tempfile::tempdir().expect("tempdir");
        for args in [
            vec!["init"],
            vec!["issue", "--collector", "collector"],
            vec!["issue", "--sensor", "web-01"],
            vec!["issue", "--operator", "alice"],
        ] {
            vigil_tests::certs(&dir.path().join("certs"), &args);
        }
        Deployment { dir }
    }

    fn pem(&self, name: &str) -> PathBuf {
        self.dir.path().join("certs").join(name)
    }

    fn collector(&self) -> (Proc, String) {
        let mut cmd = Command::new(bin("vigil-collector"));
        cmd.args(["--listen", "127.0.0.1:0", "--database"])
            .arg(self.dir.path().join("collector.db"))
            .arg("--tls-ca")
            .arg(self.pem("ca.pem"))
            .arg("--tls-cert")
            .arg(self.pem("collector.pem"))
            .arg("--tls-key")
            .arg(self.pem("collector-key.pem"));
        start_collector(cmd)
    }

    fn sensor(&self, collector: &str, kernel_drops: u64) -> Proc {
        let mut cmd = Command::new(SYNTHETIC);
        cmd.args(["--collector", collector, "--ca"])
            .arg(self.pem("ca.pem"))
            .arg("--cert")
            .arg(self.pem("web-01.pem"))
            .arg("--key")
            .arg(self.pem("web-01-key.pem"))
            .arg("--spool-dir")
            .arg(self.dir.path().join("spool"))
            .args(["--heartbeat-secs", &HEARTBEAT_SECS.to_string()])
            .args(["--kernel-drops", &kernel_drops.to_string()])
            // Keeps running (and heartbeating) until killed.
            .args(["--events", "1000000", "--rate", "50"])
            .env("RUST_LOG", "info");
        Proc::spawn("vigil-synthetic-sensor", cmd)
    }

    /// Runs `vigil --collector ADDR ... ARGS -o json` and returns its JSON lines.
    fn vigil(&self, collector: &str, args: &[&str]) -> Vec<serde_json::Value> {
        let out = Command::new(bin("vigil"))
            .args(["--collector", collector, "--ca"])
            .arg(self.pem("ca.pem"))
            .arg("--cert")
            .arg(self.pem("alice.pem"))
            .arg("--key")
            .arg(self.pem("alice-key.pem"))
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("run vigil");
        assert!(
            out.status.success(),
            "vigil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    fn alerts_of_rule(&self, collector: &str, rule: &str) -> Vec<serde_json::Value> {
        self.vigil(collector, &["alerts", "--since", "10m"])
            .into_iter()
            .filter(|a| a["rule"]["id"] == rule)
            .collect()
    }
}

#[test]
fn a_sensor_killed_with_sigkill_raises_sensor_silent_within_its_window() {
    let deployment = Deployment::new();
    let (_collector, addr) = deployment.collector();
    let mut sensor = deployment.sensor(&addr, 5);

    // `vigil sensors` shows it as it reports itself, with its event rate once two heartbeats
    // are in.
    let listed = poll_until(Duration::from_secs(20), || {
        deployment
            .vigil(&addr, &["sensors"])
            .into_iter()
            .find(|s| s["sensor"] == "web-01" && s["events_per_sec"].as_f64() > Some(0.0))
    })
    .unwrap_or_else(|| panic!("web-01 never listed: {}", sensor.stderr_text()));
    assert_eq!(listed["status"]["host"], "synthetic-host");
    assert_eq!(listed["status"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(listed["status"]["rules_version"], "synthetic");
    assert_eq!(listed["status"]["hooks"][0], "exec:synthetic");
    assert_eq!(listed["status"]["heartbeat_secs"], HEARTBEAT_SECS);
    assert_eq!(listed["status"]["kernel_drops"], 5);
    assert!(listed["status"]["spool_batches"].is_u64(), "{listed}");
    assert_eq!(listed["silent"], false);

    // Its kernel drops raised one alert (later heartbeats report the same total).
    let drops = poll_until(Duration::from_secs(10), || {
        let found = deployment.alerts_of_rule(&addr, "vigil-sensor-kernel-drops");
        (!found.is_empty()).then_some(found)
    })
    .expect("no kernel-drops alert");
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert_eq!(drops[0]["sensor"], "web-01");
    assert_eq!(drops[0]["host"]["name"], "synthetic-host");

    // Alive past a whole window: no silence alert.
    std::thread::sleep(WINDOW + Duration::from_secs(1));
    assert!(
        deployment
            .alerts_of_rule(&addr, "vigil-sensor-silent")
            .is_empty(),
        "a live sensor was called silent"
    );

    sensor.kill9();
    let killed = Instant::now();
    let silent = poll_until(WINDOW + SLACK + Duration::from_secs(5), || {
        let found = deployment.alerts_of_rule(&addr, "vigil-sensor-silent");
        (!found.is_empty()).then_some(found)
    })
    .expect("no sensor-silent alert after SIGKILL");
    let elapsed = killed.elapsed();
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0]["sensor"], "web-01");
    assert_eq!(silent[0]["rule"]["level"], "high");
    assert!(
        elapsed <= WINDOW + SLACK,
        "sensor-silent came {elapsed:?} after the kill (window {WINDOW:?})"
    );
    let sensors = deployment.vigil(&addr, &["sensors"]);
    assert_eq!(sensors[0]["silent"], true, "{sensors:?}");
    eprintln!("sensor-silent alert {elapsed:?} after SIGKILL (window {WINDOW:?})");
}
