//! Alert outputs against real local receivers: an HTTP server on loopback (webhook, Falco
//! envelope, Slack), syslog listeners on UDP, TCP and a unix socket, and a file. Each output
//! delivers exactly what its filter admits, in order; receivers down for 30 s get the backlog
//! afterwards while ingest goes on; a full queue drops the oldest and counts it.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::receivers::{Inbox, Receiver};
use support::{eventually, one_alert_batch, within, Peer, Pki, Running, DEADLINE};
use vigil_collector::CollectorConfig;
use vigil_proto::{Alert, Level, Reply, Request};

fn alert_with(marker: &str, level: Level, tags: &[&str]) -> Alert {
    let mut alert = support::alert(marker, 1);
    alert.rule.title = marker.to_owned();
    alert.rule.level = level;
    alert.rule.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    alert
}

/// `config` with the `outputs:` section parsed from YAML, as collector.yaml would give it.
fn with_outputs(mut config: CollectorConfig, yaml: &str) -> CollectorConfig {
    config.outputs = CollectorConfig::from_yaml_str(yaml)
        .unwrap_or_else(|e| panic!("outputs config: {e}\n{yaml}"))
        .outputs;
    config
}

/// The rule titles (our markers) in what a receiver got, by format.
fn titles(messages: &[String], format: &str) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            let json: Value = match format {
                // "PATH BODY"
                "http" => serde_json::from_str(m.split_once(' ').expect("path body").1),
                // RFC 5424: the JSON follows the BOM.
                "syslog" => serde_json::from_str(m.split_once('\u{feff}').expect("BOM").1),
                _ => serde_json::from_str(m),
            }
            .unwrap_or_else(|e| panic!("not JSON ({e}): {m}"));
            let title = json["rule"]["title"]
                .as_str()
                .or_else(|| json["rule"].as_str())
                .or_else(|| {
                    json["text"]
                        .as_str()
                        .and_then(|t| t.split("] ").nth(1))
                        .and_then(|t| t.split('*').next())
                });
            title.expect("a rule title").to_owned()
        })
        .collect()
}

fn metric(name: &str, output: &str) -> f64 {
    let metrics = vigil_collector::metrics::collector_metrics().expect("metrics");
    metrics
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .find(|m| m.get_label().iter().any(|l| l.value() == output))
        // A series is a counter or a gauge; the other part reads 0.
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .unwrap_or(0.0)
}

fn file_lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_output_delivers_what_its_filter_admits_in_order() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let inbox = |_: &str| Inbox::default();
    let (http_in, udp_in, tcp_in, unix_in) = (inbox("h"), inbox("u"), inbox("t"), inbox("x"));
    let (http, http_addr) = Receiver::http("127.0.0.1:0".parse().expect("addr"), http_in);
    let (udp, udp_addr) = Receiver::udp("127.0.0.1:0".parse().expect("addr"), udp_in);
    let (tcp, tcp_addr) = Receiver::tcp("127.0.0.1:0".parse().expect("addr"), tcp_in);
    let socket = data.path().join("log.sock");
    let unix = Receiver::unix(&socket, unix_in);
    let file = data.path().join("alerts.jsonl");
    let none_file = data.path().join("none.jsonl");
    let yaml = format!(
        "outputs:
  all-webhook:
    to: {{webhook: {{url: 'http://{http_addr}/vigil'}}}}
  falco-high:
    to: {{webhook: {{url: 'http://{http_addr}/falco', format: falco}}}}
    filter: {{min_severity: high}}
  slack-execution:
    to: {{slack: {{url: 'http://{http_addr}/slack'}}}}
    filter: {{tags: [attack.execution]}}
  syslog-udp:
    to: {{syslog: {{address: 'udp://{udp_addr}'}}}}
  syslog-tcp:
    to: {{syslog: {{address: 'tcp://{tcp_addr}', facility: local3}}}}
    filter: {{hosts: ['sensor-*']}}
  syslog-unix:
    to: {{syslog: {{address: 'unix://{}'}}}}
    filter: {{hosts: ['test-h*']}}
  archive:
    to: {{file: {{path: '{}'}}}}
    filter: {{min_severity: low}}
  nobody:
    to: {{file: {{path: '{}'}}}}
    filter: {{hosts: ['db-*']}}
",
        socket.display(),
        file.display(),
        none_file.display()
    );
    let config = with_outputs(pki.collector_config(data.path().join("c.db")), &yaml);
    let collector = Running::start_with(config, tempfile::tempdir().expect("dir")).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let alerts = [
        alert_with("first-high", Level::High, &["attack.execution"]),
        alert_with("second-low", Level::Low, &[]),
        alert_with("third-critical", Level::Critical, &["attack.execution"]),
    ];
    for (seq, alert) in (1..).zip(alerts) {
        let reply = sensor
            .ask(&Request::Publish(one_alert_batch(seq, alert)))
            .await;
        assert_eq!(reply, Reply::Ack { seq });
    }
    let all = ["first-high", "second-low", "third-critical"].map(String::from);
    let high = ["first-high", "third-critical"].map(String::from);
    // Each route delivers in order, so once the last alert a route admits is there, every
    // earlier one it admits is too, and nothing it refuses is.
    let expect_http = |path: &str, want: &[String]| {
        let got: Vec<String> = http
            .messages()
            .into_iter()
            .filter(|m| m.starts_with(path))
            .collect();
        titles(&got, "http") == want
    };
    eventually("every route's alerts", DEADLINE, || {
        expect_http("/vigil ", &all)
            && expect_http("/falco ", &high)
            && expect_http("/slack ", &high)
            && titles(&udp.messages(), "syslog") == all
            && titles(&tcp.messages(), "syslog") == all
            && titles(&unix.messages(), "syslog") == all
            && titles(&file_lines(&file), "file") == all
    })
    .await;
    assert!(
        file_lines(&none_file).is_empty(),
        "the db-* route took an alert"
    );

    // Exact shapes: the vigil line, Falco's envelope, Slack's text, RFC 5424 headers.
    let bodies = http.messages();
    let vigil: Value = serde_json::from_str(
        bodies
            .iter()
            .find_map(|m| m.strip_prefix("/vigil "))
            .expect("a vigil body"),
    )
    .expect("json");
    assert_eq!(vigil["sensor"], "sensor-1");
    assert_eq!(vigil["alert_id"], 1);
    assert_eq!(vigil["host"]["name"], "test-host");
    let falco: Value = serde_json::from_str(
        bodies
            .iter()
            .find_map(|m| m.strip_prefix("/falco "))
            .expect("a falco body"),
    )
    .expect("json");
    assert_eq!(falco["priority"], "Error");
    assert_eq!(falco["source"], "syscall");
    assert_eq!(falco["output_fields"]["vigil.sensor"], "sensor-1");
    let slack = bodies
        .iter()
        .find_map(|m| m.strip_prefix("/slack "))
        .expect("a slack body");
    let slack: Value = serde_json::from_str(slack).expect("json");
    assert!(
        slack["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("*[HIGH] first-high* on `test-host` (sensor sensor-1)")),
        "{slack}"
    );
    // authpriv.err = 10 * 8 + 3; local3.crit = 19 * 8 + 2.
    assert!(
        udp.messages()[0].starts_with("<83>1 "),
        "{:?}",
        udp.messages()
    );
    assert!(
        tcp.messages()[2].starts_with("<154>1 "),
        "{:?}",
        tcp.messages()
    );
    assert!(unix.messages()[1].contains(" test-host vigil - alert [vigil@32473 alert_id=\"2\""));
    collector.stop().await;
    for r in [http, udp, tcp, unix] {
        r.stop();
    }
}

/// The outage: 30 s is what a receiver restart or a short network partition looks
/// like. The retry cap is 2 s so the backlog arrives soon after, not up to a minute later.
const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_down_for_30_seconds_get_the_backlog_and_ingest_goes_on() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let (http_in, tcp_in, unix_in) = (Inbox::default(), Inbox::default(), Inbox::default());
    let (http, http_addr) = Receiver::http("127.0.0.1:0".parse().expect("addr"), http_in.clone());
    let (tcp, tcp_addr) = Receiver::tcp("127.0.0.1:0".parse().expect("addr"), tcp_in.clone());
    let socket = data.path().join("log.sock");
    let unix = Receiver::unix(&socket, unix_in.clone());
    let retry = "retry: {initial: 100ms, max: 2s}";
    let yaml = format!(
        "outputs:
  outage-webhook:
    to: {{webhook: {{url: 'http://{http_addr}/vigil', timeout: 2s}}}}
    {retry}
  outage-slack:
    to: {{slack: {{url: 'http://{http_addr}/slack', timeout: 2s}}}}
    {retry}
  outage-tcp:
    to: {{syslog: {{address: 'tcp://{tcp_addr}'}}}}
    {retry}
  outage-unix:
    to: {{syslog: {{address: 'unix://{}'}}}}
    {retry}
",
        socket.display()
    );
    let config = with_outputs(pki.collector_config(data.path().join("c.db")), &yaml);
    let collector = Running::start_with(config, tempfile::tempdir().expect("dir")).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let publish = |seq: u64| {
        let alert = alert_with(&format!("outage-{seq}"), Level::High, &["attack.execution"]);
        let sensor = &sensor;
        async move {
            let reply = sensor
                .ask(&Request::Publish(one_alert_batch(seq, alert)))
                .await;
            assert_eq!(reply, Reply::Ack { seq }, "ingest must go on");
        }
    };
    let titles_of = |inbox: &Inbox, format: &str, path: &str| {
        let got: Vec<String> = inbox
            .lock()
            .expect("inbox")
            .iter()
            .filter(|m| m.starts_with(path))
            .cloned()
            .collect();
        titles(&got, format)
    };
    let upto = |n: u64| (1..=n).map(|i| format!("outage-{i}")).collect::<Vec<_>>();
    publish(1).await;
    eventually("the first alert everywhere", DEADLINE, || {
        titles_of(&http_in, "http", "/vigil ") == upto(1)
            && titles_of(&http_in, "http", "/slack ") == upto(1)
            && titles_of(&tcp_in, "syslog", "") == upto(1)
            && titles_of(&unix_in, "syslog", "") == upto(1)
    })
    .await;

    http.stop();
    tcp.stop();
    unix.stop();
    let failures_before = metric("vigil_collector_output_failures_total", "outage-tcp");
    let down_since = Instant::now();
    for seq in 2..=6 {
        within("an ack while every output is down", publish(seq)).await;
    }
    // NB: a deliberate wait, not a poll: the outage itself is what is under test.
    tokio::time::sleep(OUTAGE.saturating_sub(down_since.elapsed())).await;
    for output in [
        "outage-webhook",
        "outage-slack",
        "outage-tcp",
        "outage-unix",
    ] {
        assert_eq!(
            metric("vigil_collector_output_queued", output),
            5.0,
            "{output} holds the backlog"
        );
    }
    assert!(
        metric("vigil_collector_output_failures_total", "outage-tcp") > failures_before + 5.0,
        "failed attempts are counted and retried"
    );

    let (http, _) = Receiver::http(http_addr, http_in.clone());
    let (tcp, _) = Receiver::tcp(tcp_addr, tcp_in.clone());
    let unix = Receiver::unix(&socket, unix_in.clone());
    let back = Instant::now();
    eventually("the backlog after the outage", DEADLINE, || {
        titles_of(&http_in, "http", "/vigil ") == upto(6)
            && titles_of(&http_in, "http", "/slack ") == upto(6)
            && titles_of(&tcp_in, "syslog", "") == upto(6)
            && titles_of(&unix_in, "syslog", "") == upto(6)
    })
    .await;
    eprintln!(
        "backlog delivered {:?} after the receivers came back",
        back.elapsed()
    );
    for output in [
        "outage-webhook",
        "outage-slack",
        "outage-tcp",
        "outage-unix",
    ] {
        assert_eq!(
            metric("vigil_collector_output_queued", output),
            0.0,
            "{output}"
        );
        assert_eq!(
            metric("vigil_collector_output_dropped_total", output),
            0.0,
            "{output}"
        );
    }
    collector.stop().await;
    for r in [http, tcp, unix] {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_and_counts_the_drops() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir");
    // A port with nothing on it yet: connections are refused until the receiver starts.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let yaml = format!(
        "outputs:
  small-queue:
    to: {{syslog: {{address: 'tcp://{port}'}}}}
    queue: 2
    retry: {{initial: 50ms, max: 200ms}}
"
    );
    let config = with_outputs(pki.collector_config(data.path().join("c.db")), &yaml);
    let collector = Running::start_with(config, tempfile::tempdir().expect("dir")).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    for seq in 1..=5 {
        let alert = alert_with(&format!("queued-{seq}"), Level::High, &[]);
        let reply = sensor
            .ask(&Request::Publish(one_alert_batch(seq, alert)))
            .await;
        assert_eq!(reply, Reply::Ack { seq });
    }
    eventually("three drops counted", DEADLINE, || {
        metric("vigil_collector_output_dropped_total", "small-queue") == 3.0
    })
    .await;
    let inbox = Inbox::default();
    let (tcp, _) = Receiver::tcp(port, inbox.clone());
    let newest = vec!["queued-4".to_owned(), "queued-5".to_owned()];
    eventually("the two newest alerts", DEADLINE, || {
        titles(&inbox.lock().expect("inbox"), "syslog") == newest
    })
    .await;
    collector.stop().await;
    tcp.stop();
}

#[test]
fn file_output_rotates_and_keeps_the_configured_number() {
    // Runs the file sink through a collector like the others, with a tiny rotation size.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let pki = Pki::new();
        let data = tempfile::tempdir().expect("temp dir");
        let path: PathBuf = data.path().join("alerts.jsonl");
        let yaml = format!(
            "outputs:\n  rotating:\n    to: {{file: {{path: '{}', max_bytes: 1500, keep: 2}}}}\n",
            path.display()
        );
        let config = with_outputs(pki.collector_config(data.path().join("c.db")), &yaml);
        let collector = Running::start_with(config, tempfile::tempdir().expect("dir")).await;
        let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
        for seq in 1..=30 {
            let alert = alert_with(&format!("rotated-{seq}"), Level::High, &[]);
            let reply = sensor
                .ask(&Request::Publish(one_alert_batch(seq, alert)))
                .await;
            assert_eq!(reply, Reply::Ack { seq });
        }
        eventually("the last alert in the file", DEADLINE, || {
            titles(&file_lines(&path), "file")
                .last()
                .map(String::as_str)
                == Some("rotated-30")
        })
        .await;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        // Every file within the limit, two rotated files kept and older ones deleted, and
        // the alerts kept are the newest, in order across the files.
        for p in [path.clone(), numbered(1), numbered(2)] {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0 && len <= 1500, "{}: {len} bytes", p.display());
        }
        assert!(!numbered(3).exists(), "only two rotated files are kept");
        let kept: Vec<String> = [numbered(2), numbered(1), path.clone()]
            .iter()
            .flat_map(|p| titles(&file_lines(p), "file"))
            .collect();
        let first = 31 - kept.len();
        assert!(kept.len() >= 3 && kept.len() < 30, "{kept:?}");
        let newest: Vec<String> = (first..=30).map(|i| format!("rotated-{i}")).collect();
        assert_eq!(kept, newest);
        collector.stop().await;
    });
}
