//! Nothing lost between sensor and collector, with real processes: the real `vigil-collector`
//! killed with SIGKILL mid-stream, a sensor (`vigil-synthetic-sensor`: the real spool and
//! shipper fed synthetic events) killed with SIGKILL while its spool holds unsent batches, and
//! a network cut between two network namespaces. Every check ends in the collector's SQLite:
//! each event sequence stored exactly once.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_tests::{bin, poll_until, require_root, Proc};

const SYNTHETIC: &str = env!("CARGO_BIN_EXE_vigil-synthetic-sensor");

struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        for args in [
            vec!["init"],
            vec!["issue", "--collector", "collector"],
            vec!["issue", "--sensor", "synthetic"],
        ] {
            let out = Command::new(bin("vigil"))
                .arg("certs")
                .args(&args)
                .arg("--dir")
                .arg(&certs)
                .output()
                .expect("run vigil certs");
            assert!(
                out.status.success(),
                "vigil certs {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Deployment { dir }
    }

    fn pem(&self, name: &str) -> PathBuf {
        self.dir.path().join("certs").join(name)
    }

    fn database(&self) -> PathBuf {
        self.dir.path().join("collector.db")
    }

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// The real collector on `listen`, inside network namespace `netns` if given.
    fn collector(&self, listen: SocketAddr, netns: Option<&str>) -> Proc {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("vigil-collector"));
                c
            }
            None => Command::new(bin("vigil-collector")),
        };
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--database")
            .arg(self.database())
            .arg("--tls-ca")
            .arg(self.pem("ca.pem"))
            .arg("--tls-cert")
            .arg(self.pem("collector.pem"))
            .arg("--tls-key")
            .arg(self.pem("collector-key.pem"))
            .env("NO_COLOR", "1");
        let mut collector = Proc::spawn("vigil-collector", cmd);
        collector.wait_stderr("listening on", Duration::from_secs(20));
        collector
    }

    fn sensor(&self, collector: SocketAddr, netns: Option<&str>, extra: &[String]) -> Proc {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SYNTHETIC]);
                c
            }
            None => Command::new(SYNTHETIC),
        };
        cmd.arg("--collector")
            .arg(collector.to_string())
            .arg("--ca")
            .arg(self.pem("ca.pem"))
            .arg("--cert")
            .arg(self.pem("synthetic.pem"))
            .arg("--key")
            .arg(self.pem("synthetic-key.pem"))
            .arg("--spool-dir")
            .arg(self.spool())
            .args(extra)
            .env("RUST_LOG", "info");
        Proc::spawn("vigil-synthetic-sensor", cmd)
    }

    fn query(&self, sql: &str) -> i64 {
        let db = rusqlite::Connection::open_with_flags(
            self.database(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the collector's database");
        db.busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        db.query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Stored events so far; 0 before the collector made its schema.
    fn stored_events(&self) -> i64 {
        if !self.database().exists() {
            return 0;
        }
        let db = match rusqlite::Connection::open_with_flags(
            self.database(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) {
            Ok(db) => db,
            Err(_) => return 0,
        };
        db.query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
            .unwrap_or(0)
    }

    /// Every event sequence in `0..events` stored exactly once, and every alert likewise.
    fn assert_exactly_once(&self, events: i64, alerts: i64) {
        let seq = "json_extract(json, '$.event.sequence')";
        for (table, expected) in [("events", events), ("alerts", alerts)] {
            let count = self.query(&format!("SELECT COUNT(*) FROM {table}"));
            let distinct = self.query(&format!("SELECT COUNT(DISTINCT {seq}) FROM {table}"));
            let duplicated = self.query(&format!(
                "SELECT COUNT(*) FROM (SELECT {seq} FROM {table} GROUP BY {seq} HAVING COUNT(*) > 1)"
            ));
            let out_of_range = self.query(&format!(
                "SELECT COUNT(*) FROM {table} WHERE {seq} < 0 OR {seq} >= {events}"
            ));
            assert_eq!(
                (count, distinct, duplicated, out_of_range),
                (expected, expected, 0, 0),
                "{table}: (stored, distinct sequences, duplicated sequences, out of range)"
            );
        }
    }
}

/// A free UDP port on loopback, for a collector that must come back on the same address.
fn free_loopback_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP socket")
}

fn args(list: &[(&str, u64)]) -> Vec<String> {
    list.iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.to_string()])
        .collect()
}

#[test]
fn collector_killed_five_times_mid_stream_stores_every_event_exactly_once() {
    const EVENTS: u64 = 100_000;
    const ALERT_EVERY: u64 = 100;
    let deployment = Deployment::new();
    let addr = free_loopback_addr();
    let mut collector = deployment.collector(addr, None);
    // Paced, so the kills land while the sensor is still producing.
    let mut sensor = deployment.sensor(
        addr,
        None,
        &args(&[
            ("events", EVENTS),
            ("alert-every", ALERT_EVERY),
            ("rate", 10_000),
        ]),
    );
    for kill in 1..=5 {
        let threshold = kill * EVENTS as i64 / 7;
        let reached = poll_until(Duration::from_secs(120), || {
            (deployment.stored_events() >= threshold).then_some(())
        });
        assert!(
            reached.is_some(),
            "kill {kill}: fewer than {threshold} events stored after 120 s; sensor:\n{}\ncollector:\n{}",
            sensor.stderr_text(),
            collector.stderr_text()
        );
        collector.kill9();
        collector = deployment.collector(addr, None);
    }
    let status = sensor.wait_exit(Duration::from_secs(300));
    assert!(
        status.success(),
        "sensor failed ({status}):\n{}",
        sensor.stderr_text()
    );
    deployment.assert_exactly_once(EVENTS as i64, (EVENTS / ALERT_EVERY) as i64);
    drop(collector);
}

#[test]
fn sensor_killed_with_unsent_batches_delivers_them_after_restart() {
    const EVENTS: u64 = 5_000;
    let deployment = Deployment::new();
    // Nothing listens here yet: everything stays in the spool.
    let addr = free_loopback_addr();
    let mut sensor = deployment.sensor(addr, None, &args(&[("events", EVENTS)]));
    sensor.wait_stderr(&format!("spooled {EVENTS}"), Duration::from_secs(60));
    sensor.kill9();
    let segments = std::fs::read_dir(deployment.spool())
        .expect("spool dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg"))
        })
        .count();
    assert!(segments >= 2, "the killed sensor left no spool segments");

    let collector = deployment.collector(addr, None);
    let mut restarted = deployment.sensor(addr, None, &[]);
    let status = restarted.wait_exit(Duration::from_secs(60));
    assert!(
        status.success(),
        "restarted sensor failed ({status}):\n{}",
        restarted.stderr_text()
    );
    assert!(
        restarted
            .stderr_text()
            .contains("delivering batches spooled by a previous run"),
        "{}",
        restarted.stderr_text()
    );
    deployment.assert_exactly_once(EVENTS as i64, (EVENTS / 100) as i64);
    drop(collector);
}

/// Two network namespaces joined by a veth pair; deleted on drop, even when the test fails.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let id = std::process::id() % 100_000;
        let names = [format!("vigil-{tag}-c{id}"), format!("vigil-{tag}-s{id}")];
        let netns = Netns { names };
        let [c, s] = &netns.names;
        let (vc, vs) = (format!("vc{id}"), format!("vs{id}"));
        for cmd in [
            vec!["netns", "add", c.as_str()],
            vec!["netns", "add", s.as_str()],
            vec![
                "link", "add", &vc, "netns", c, "type", "veth", "peer", "name", &vs, "netns", s,
            ],
            vec!["-n", c, "addr", "add", "10.203.0.1/24", "dev", &vc],
            vec!["-n", s, "addr", "add", "10.203.0.2/24", "dev", &vs],
            vec!["-n", c, "link", "set", &vc, "up"],
            vec!["-n", s, "link", "set", &vs, "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
            vec!["-n", s, "link", "set", "lo", "up"],
        ] {
            ip(&cmd);
        }
        netns
    }

    fn sensor_link(&self, up: bool) {
        let id = std::process::id() % 100_000;
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.names[1],
            "link",
            "set",
            &format!("vs{id}"),
            state,
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in &self.names {
            // Deleting a namespace deletes its end of the veth pair, and so the pair.
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The spool gauge the synthetic sensor prints every 500 ms.
fn last_spool_bytes(sensor: &Proc) -> u64 {
    sensor
        .stderr_text()
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("spool bytes="))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_thirty_second_link_cut_between_namespaces_loses_nothing() {
    require_root();
    // The full 30 s of the issue: longer than QUIC's 30 s idle timeout, so the connection
    // really dies and the sensor must reconnect, not just retransmit.
    const CUT: Duration = Duration::from_secs(30);
    const EVENTS: u64 = 45_000;
    let deployment = Deployment::new();
    let netns = Netns::create("dl");
    let addr: SocketAddr = "10.203.0.1:7443".parse().expect("address");
    let collector = deployment.collector(addr, Some(&netns.names[0]));
    // 1000 events/s for 45 s: production spans the whole cut.
    let mut sensor = deployment.sensor(
        addr,
        Some(&netns.names[1]),
        &args(&[("events", EVENTS), ("rate", 1_000)]),
    );
    let flowing = poll_until(Duration::from_secs(30), || {
        (deployment.stored_events() >= 2_000).then_some(())
    });
    assert!(
        flowing.is_some(),
        "nothing flowing before the cut; sensor:\n{}",
        sensor.stderr_text()
    );

    netns.sensor_link(false);
    let cut_at = Instant::now();
    let stored_at_cut = deployment.stored_events();
    let spool_at_cut = last_spool_bytes(&sensor);
    let mut peak_spool = spool_at_cut;
    while cut_at.elapsed() < CUT {
        std::thread::sleep(Duration::from_millis(500));
        peak_spool = peak_spool.max(last_spool_bytes(&sensor));
    }
    let stored_during_cut = deployment.stored_events() - stored_at_cut;
    netns.sensor_link(true);
    // Batches in flight at the cut may still land; a whole cut's worth (30 000) may not.
    assert!(
        stored_during_cut < 5_000,
        "{stored_during_cut} events arrived through a cut link"
    );
    assert!(
        peak_spool > spool_at_cut + 1_000_000,
        "the spool gauge did not grow while the link was down ({spool_at_cut} -> {peak_spool})"
    );

    let status = sensor.wait_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "sensor failed ({status}):\n{}",
        sensor.stderr_text()
    );
    deployment.assert_exactly_once(EVENTS as i64, (EVENTS / 100) as i64);
    eprintln!("spool grew to {peak_spool} bytes during the {CUT:?} cut");
    drop(collector);
    drop(netns);
}
