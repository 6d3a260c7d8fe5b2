//! The `vigil` binary end to end: it makes the certificates, a collector (in this process) is
//! started with them, a sensor publishes, and `vigil alerts` / `vigil tail` print the alert.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;
use vigil_collector::{Collector, CollectorConfig, TlsConfig};
use vigil_proto::transport::{self, TlsFiles};
use vigil_proto::{
    read_frame, write_frame, Alert, Batch, Event, EventAction, EventMeta, Host, Level, Process,
    Reply, Request, RuleInfo, Timestamp, UserRef, MAX_FRAME_BYTES,
};

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

fn vigil() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
    for var in [
        "VIGIL_COLLECTOR",
        "VIGIL_SERVER_NAME",
        "VIGIL_CA",
        "VIGIL_CERT",
        "VIGIL_KEY",
        "VIGIL_LOG",
    ] {
        command.env_remove(var);
    }
    command.stdin(Stdio::null()).kill_on_drop(true);
    command
}

async fn run(command: &mut Command) -> Output {
    within("vigil to finish", command.output())
        .await
        .expect("run vigil")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a `vigil certs ...` command that must succeed.
async fn certs(args: &[&str]) {
    let out = run(vigil().arg("certs").args(args)).await;
    assert!(
        out.status.success(),
        "vigil certs {args:?}: {}",
        text(&out.stderr)
    );
}

/// A collector in this process; `stop` shuts it down and waits.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(dir: &Path, listen: SocketAddr) -> Self {
        let config = CollectorConfig {
            listen,
            database: dir.join("collector.db"),
            tls: TlsConfig {
                ca: dir.join("ca.pem"),
                cert: dir.join("collector.pem"),
                key: dir.join("collector-key.pem"),
            },
            revoked: None,
            enroll: None,
            console: None,
        };
        // A restarted collector wants its old port back; the old socket may take a moment.
        let collector = within("the collector to bind", async {
            loop {
                match Collector::bind(&config).await {
                    Ok(collector) => break collector,
                    Err(e) if listen.port() != 0 => {
                        eprintln!("bind {listen}: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("bind collector: {e}"),
                }
            }
        })
        .await;
        let addr = collector.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            collector
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("collector run failed");
        });
        Self { addr, stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within("the collector to stop", self.task)
            .await
            .expect("collector task panicked");
    }
}

fn alert(marker: &str) -> Alert {
    Alert {
        rule: RuleInfo {
            id: "e2e-rule".into(),
            title: format!("E2E {marker}"),
            level: Level::Critical,
            tags: vec![],
            description: None,
            author: None,
        },
        event: Event {
            timestamp: Timestamp::now(),
            event: EventMeta {
                kind: "alert".into(),
                action: EventAction::Exec,
                sequence: 1,
                boot_ns: 1,
            },
            host: Host {
                name: "e2e-host".into(),
                id: "machine".into(),
            },
            process: Process {
                pid: 777,
                executable: "/usr/bin/curl".into(),
                args: vec!["curl".into(), marker.into()],
                command_line: format!("curl {marker}"),
                ..Default::default()
            },
            user: UserRef {
                id: 1000,
                name: Some("bob".into()),
            },
            audit_user: None,
            container: None,
            ..Default::default()
        },
    }
}

/// Publishes one alert as sensor `s1` and waits for the ack.
async fn publish(addr: SocketAddr, dir: &Path, seq: u64, marker: &str) {
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("s1.pem"),
        key: dir.join("s1-key.pem"),
    };
    within("a publish to be acked", async {
        let endpoint = transport::client_endpoint(&files).expect("sensor endpoint");
        let conn = transport::connect(&endpoint, addr, "localhost")
            .await
            .expect("sensor connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
        let batch = Batch {
            seq,
            events: vec![],
            alerts: vec![alert(marker)],
            loss: Default::default(),
        };
        write_frame(&mut send, &Request::Publish(batch))
            .await
            .expect("send batch");
        send.finish().expect("finish");
        let reply: Reply = read_frame(&mut recv, MAX_FRAME_BYTES)
            .await
            .expect("read ack")
            .expect("an ack");
        assert_eq!(reply, Reply::Ack { seq });
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
    })
    .await;
}

fn operator_flags(addr: SocketAddr, dir: &Path) -> Vec<String> {
    vec![
        "--collector".into(),
        addr.to_string(),
        "--ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        dir.join("alice.pem").display().to_string(),
        "--key".into(),
        dir.join("alice-key.pem").display().to_string(),
    ]
}

async fn make_pki(dir: &Path) {
    let d = dir.to_str().expect("utf-8 temp path");
    certs(&["init", "--dir", d]).await;
    certs(&["issue", "--dir", d, "--collector", "collector"]).await;
    certs(&["issue", "--dir", d, "--sensor", "s1"]).await;
    certs(&["issue", "--dir", d, "--operator", "alice"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_then_alerts_prints_the_published_alert_as_json() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path()).await;
    let out = run(vigil().args(["certs", "init", "--dir"]).arg(dir.path())).await;
    assert!(!out.status.success(), "a second init replaced the CA");
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );

    let collector = Running::start(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let marker = format!("e2e-{}", std::process::id());
    publish(collector.addr, dir.path(), 1, &marker).await;

    let out = run(vigil()
        .args(operator_flags(collector.addr, dir.path()))
        .args(["alerts", "--since", "10m", "-o", "json"]))
    .await;
    assert!(out.status.success(), "vigil alerts: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with(r#"{"alert_id":1,"sensor":"s1","received":""#),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(lines[0]).expect("a JSON line");
    assert_eq!(json["rule"]["title"], format!("E2E {marker}"));
    assert_eq!(json["rule"]["level"], "critical");
    assert_eq!(json["process"]["command_line"], format!("curl {marker}"));
    assert_eq!(json["host"]["name"], "e2e-host");
    assert_eq!(json["user"]["name"], "bob");
    assert!(json["@timestamp"].is_string(), "{json}");

    // The same through the environment, flags after the subcommand, and a table.
    let out = run(vigil()
        .env("VIGIL_CA", dir.path().join("ca.pem"))
        .env("VIGIL_CERT", dir.path().join("alice.pem"))
        .env("VIGIL_KEY", dir.path().join("alice-key.pem"))
        .args(["alerts", "--since", "1h", "-o", "table", "--collector"])
        .arg(collector.addr.to_string()))
    .await;
    assert!(out.status.success(), "vigil alerts: {}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("TIME"), "{table}");
    assert!(
        table.contains("critical") && table.contains(&format!("curl {marker}")),
        "{table}"
    );

    // A sensor certificate (given after the subcommand, overriding the operator's) may not
    // read: one line on stderr, non-zero exit.
    let out = run(vigil()
        .args(operator_flags(collector.addr, dir.path()))
        .arg("alerts")
        .arg("--cert")
        .arg(dir.path().join("s1.pem"))
        .arg("--key")
        .arg(dir.path().join("s1-key.pem")))
    .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("vigil: the collector refused: a sensor"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    collector.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_from_outside_are_one_line_and_a_failure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["alerts".into()], "no --ca given"),
        (
            vec![
                "--ca".into(),
                "/nonexistent/ca.pem".into(),
                "--cert".into(),
                "c".into(),
                "--key".into(),
                "k".into(),
                "alerts".into(),
            ],
            "cannot read CA certificate /nonexistent/ca.pem",
        ),
        (
            vec![
                "certs".into(),
                "issue".into(),
                "--dir".into(),
                dir.path().display().to_string(),
                "--sensor".into(),
                "s".into(),
            ],
            "ca-key.pem",
        ),
        (
            vec!["alerts".into(), "--since".into(), "yesterday-ish".into()],
            "neither a duration",
        ),
    ];
    for (args, expected) in cases {
        let out = run(vigil().args(&args)).await;
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_live_alerts_and_resumes_after_a_collector_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    make_pki(dir.path()).await;
    let collector = Running::start(dir.path(), SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let addr = collector.addr;
    let mut tail = vigil()
        .args(operator_flags(addr, dir.path()))
        .args(["tail", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vigil tail");
    let mut lines = BufReader::new(tail.stdout.take().expect("piped stdout")).lines();
    let mut next_line = async || -> serde_json::Value {
        let line = within("a line from vigil tail", lines.next_line())
            .await
            .expect("read tail output")
            .expect("vigil tail exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };

    // Tail follows live alerts only, from whenever its subscription starts: publish until one
    // shows up.
    let mut seq = 0;
    let first = within("vigil tail to print an alert", async {
        loop {
            seq += 1;
            publish(addr, dir.path(), seq, &format!("tail-{seq}")).await;
            if let Ok(line) = tokio::time::timeout(Duration::from_millis(300), next_line()).await {
                break line;
            }
        }
    })
    .await;
    let mut last_id = first["alert_id"].as_i64().expect("alert_id");
    // Drain what was published while tail was starting, so the next line is known.
    while last_id < seq as i64 {
        let line = next_line().await;
        assert_eq!(line["alert_id"].as_i64(), Some(last_id + 1), "{line}");
        last_id += 1;
    }

    // The collector goes away and comes back on the same address; alerts stored before tail
    // reconnects are replayed, the rest arrive live: each exactly once, in order.
    collector.stop().await;
    let collector = Running::start(dir.path(), addr).await;
    for _ in 0..2 {
        seq += 1;
        publish(addr, dir.path(), seq, &format!("tail-{seq}")).await;
    }
    for _ in 0..2 {
        let line = next_line().await;
        last_id += 1;
        assert_eq!(line["alert_id"].as_i64(), Some(last_id), "{line}");
        assert_eq!(line["sensor"], "s1");
    }
    tail.start_kill().expect("stop vigil tail");
    let _ = tail.wait().await;
    collector.stop().await;
}
