//! The built .deb packages, installed into a scratch root: files where the issue says, /etc
//! files as conffiles, units that `systemd-analyze verify` accepts, and exposure scores within
//! budget. `cargo xtask test` builds the packages and sets `VIGIL_DEB_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

use vigil_tests::deb_dir;

/// Exposure budgets from `systemd-analyze security` (0 = locked down, 10 = fully exposed).
const SENSOR_EXPOSURE_MAX: f64 = 4.0;
const COLLECTOR_EXPOSURE_MAX: f64 = 2.5;

fn deb(name: &str) -> PathBuf {
    let dir = deb_dir();
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
        .unwrap_or_else(|| panic!("no {name}_*.deb in {}", dir.display()))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// A scratch root with the three packages unpacked, plus systemd's own units and /bin/kill,
/// standing in for the systemd package that a real host has.
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("scratch root");
    for name in ["vigil-cli", "vigil-sensor", "vigil-collector"] {
        run(Command::new("dpkg")
            .arg("-x")
            .arg(deb(name))
            .arg(root.path()));
    }
    let units = root.path().join("usr/lib/systemd/system");
    run(Command::new("cp")
        .arg("-rn")
        .arg("/usr/lib/systemd/system/.")
        .arg(&units));
    std::fs::create_dir_all(root.path().join("bin")).expect("mkdir bin");
    std::fs::copy("/bin/kill", root.path().join("bin/kill")).expect("copy /bin/kill");
    root
}

fn conffiles(deb: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --ctrl-tarfile '{}' | tar -xO ./conffiles",
            deb.display()
        ))
        .output()
        .expect("read conffiles");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exposure(root: &Path, unit: &str) -> f64 {
    let text = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(unit));
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    line.split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse().ok())
        .unwrap_or_else(|| panic!("unparsable exposure line {line:?}"))
}

#[test]
fn packages_install_into_a_scratch_root_with_files_conffiles_and_hardened_units() {
    let root = scratch_root();
    let r = root.path();
    for file in [
        "usr/bin/vigil",
        "usr/bin/vigil-sensor",
        "usr/bin/vigil-collector",
        // cargo-deb installs units under /usr/lib (Debian's merged /usr: the same as /lib).
        "usr/lib/systemd/system/vigil-sensor.service",
        "usr/lib/systemd/system/vigil-collector.service",
        "etc/vigil/sensor.yaml",
        "etc/vigil/collector.yaml",
        "etc/vigil/sensor.conf.d",
        "etc/vigil/collector.conf.d",
        "etc/vigil/rules.d",
        "usr/share/vigil/rules/reverse_shell.yml",
    ] {
        assert!(r.join(file).exists(), "{file} is not in the packages");
    }
    let sensor_conffiles = conffiles(&deb("vigil-sensor"));
    assert!(
        sensor_conffiles.contains("/etc/vigil/sensor.yaml"),
        "{sensor_conffiles}"
    );
    let collector_conffiles = conffiles(&deb("vigil-collector"));
    assert!(
        collector_conffiles.contains("/etc/vigil/collector.yaml"),
        "{collector_conffiles}"
    );

    // The packaged binary accepts the packaged config with the packaged rule pack.
    let check = run(Command::new(r.join("usr/bin/vigil-sensor"))
        .arg("--config")
        .arg(r.join("etc/vigil/sensor.yaml"))
        .arg("--rules")
        .arg(r.join("usr/share/vigil/rules"))
        .arg("--rules")
        .arg(r.join("etc/vigil/rules.d"))
        .arg("--check-config"));
    assert!(check.contains("configuration ok"), "{check}");

    run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .args(["vigil-sensor.service", "vigil-collector.service"]));

    let sensor = exposure(r, "vigil-sensor.service");
    let collector = exposure(r, "vigil-collector.service");
    println!("exposure: vigil-sensor.service {sensor}, vigil-collector.service {collector}");
    assert!(
        sensor <= SENSOR_EXPOSURE_MAX,
        "vigil-sensor.service exposure {sensor} > {SENSOR_EXPOSURE_MAX}"
    );
    assert!(
        collector <= COLLECTOR_EXPOSURE_MAX,
        "vigil-collector.service exposure {collector} > {COLLECTOR_EXPOSURE_MAX}"
    );
}

/// The capabilities the packaged unit leaves the sensor are enough to attach and capture: the
/// packaged binary runs with exactly the unit's bounding set (setpriv, as root) and reports a
/// marked exec. (The syscall filter and namespaces need systemd as PID 1, which this tier lacks.)
#[test]
fn the_packaged_sensor_captures_with_only_the_units_capabilities() {
    vigil_tests::require_root();
    let root = scratch_root();
    let r = root.path();
    let unit = std::fs::read_to_string(r.join("usr/lib/systemd/system/vigil-sensor.service"))
        .expect("read packaged unit");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit sets CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty(), "empty CapabilityBoundingSet in:\n{unit}");
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg(r.join("usr/bin/vigil-sensor"))
        .arg("--rules")
        .arg(r.join("usr/share/vigil/rules"))
        .args(["--output", "stdout"])
        .env("NO_COLOR", "1");
    let mut sensor = vigil_tests::Proc::spawn("vigil-sensor (unit capabilities)", cmd);
    sensor.wait_stderr("sensor running", std::time::Duration::from_secs(30));
    let marker = vigil_tests::marker("caps");
    let status = Command::new("/bin/sh")
        .args(["-c", "exit 0", &marker])
        .status()
        .expect("run marked sh");
    assert!(status.success());
    let seen = vigil_tests::poll_until(std::time::Duration::from_secs(5), || {
        sensor
            .stdout_lines()
            .iter()
            .any(|l| l.contains(&marker))
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "the sensor with capabilities {caps:?} reported no exec of {marker}; stderr:\n{}",
        sensor.stderr_text()
    );
    println!("sensor captured with only {caps:?}");
}
