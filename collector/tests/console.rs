//! The web console over real HTTPS: a collector with `console:` configured, an operator
//! certificate asking for a sign-in link over QUIC, and an HTTPS client (hyper over rustls,
//! trusting only the deployment CA) doing what a browser does: open the link, keep the cookie,
//! call the JSON API, sign out.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::postgres::PgServer;
use support::{within, Peer, Pki, Running};
use vigil_collector::store::PostgresUrl;
use vigil_collector::ConsoleConfig;
use vigil_proto::transport::Role;
use vigil_proto::{
    Alert, Batch, Event, EventAction, EventMeta, Host, Level, ParentProcess, Process, Reply,
    Request, RuleInfo, Timestamp, UserRef,
};

/// A collector config with the console on 127.0.0.1:0: on SQLite in `data`, or on `postgres`.
fn console_config(
    pki: &Pki,
    data: &std::path::Path,
    postgres: Option<&PostgresUrl>,
    link_ttl_secs: u64,
) -> vigil_collector::CollectorConfig {
    let mut config = pki.collector_config(data.join("collector.db"));
    config.store = postgres.cloned();
    config.console = Some(ConsoleConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        url: None,
        link_ttl_secs,
        session_ttl_secs: 3600,
    });
    config
}

/// A collector with the console on 127.0.0.1:0 (SQLite, or `postgres`).
async fn start_on(pki: &Pki, postgres: Option<&PostgresUrl>) -> Running {
    let data = tempfile::tempdir().expect("temp dir for the database");
    let config = console_config(pki, data.path(), postgres, 300);
    Running::start_with(config, data).await
}

/// A collector with the console on 127.0.0.1:0 over SQLite.
async fn start(pki: &Pki, link_ttl_secs: u64) -> Running {
    let data = tempfile::tempdir().expect("temp dir for the database");
    let config = console_config(pki, data.path(), None, link_ttl_secs);
    Running::start_with(config, data).await
}

/// Asks for a sign-in link as `operator`; returns the console's address and the link's path.
async fn login_link(collector: &Running, pki: &Pki, operator: &str) -> (SocketAddr, String) {
    let peer = Peer::connect(collector.addr, &pki.files(operator)).await;
    let reply = peer.ask(&Request::ConsoleLogin).await;
    let Reply::ConsoleLogin {
        url,
        expires_in_secs,
    } = reply
    else {
        panic!("expected a sign-in link, got {reply:?}");
    };
    assert!(expires_in_secs > 0);
    let rest = url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("not an https link: {url}"));
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    assert!(path.starts_with("/login?token="), "{url}");
    (
        host.parse().expect("the link names host:port"),
        path.to_owned(),
    )
}

/// What came back from one HTTPS request.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

/// An HTTPS client that trusts only the deployment CA and checks the name `localhost`.
struct Browser {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    cookie: Option<String>,
}

impl Browser {
    fn new(pki: &Pki, addr: SocketAddr) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pki.files("alice").ca).expect("read CA") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, &[]).await
    }

    async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        within(&format!("{method} {path}"), async {
            let tcp = tokio::net::TcpStream::connect(self.addr)
                .await
                .expect("connect to the console");
            let name = ServerName::try_from("localhost").expect("server name");
            let tls = self.tls.connect(name, tcp).await.expect("TLS handshake");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("HTTP handshake");
            tokio::spawn(conn);
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", format!("localhost:{}", self.addr.port()));
            if let Some(cookie) = &self.cookie {
                request = request.header("cookie", cookie);
            }
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = sender
                .send_request(request.body(Empty::<Bytes>::new()).expect("request"))
                .await
                .expect("response");
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        })
        .await
    }

    /// Opens a sign-in link and keeps the session cookie it sets.
    async fn sign_in(&mut self, link: &str) -> Answer {
        let answer = self.get(link).await;
        if answer.status == StatusCode::SEE_OTHER {
            let set = answer.header("set-cookie");
            let pair = set.split(';').next().expect("cookie pair");
            self.cookie = Some(pair.to_owned());
        }
        answer
    }
}

#[tokio::test]
async fn an_operator_signs_in_once_with_a_link_reads_alerts_and_signs_out() {
    let pki = Pki::new();
    let collector = start(&pki, 300).await;
    let (addr, link) = login_link(&collector, &pki, "alice").await;
    let mut browser = Browser::new(&pki, addr);

    // Nothing under /api/ answers without a session, known path or not.
    for path in ["/api/alerts", "/api/session", "/api/nope", "/api/alerts/1"] {
        let answer = browser.get(path).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            answer.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("vigil console login")),
            "{}",
            answer.body
        );
    }

    let signed_in = browser.sign_in(&link).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    assert_eq!(signed_in.header("location"), "/");
    let cookie = signed_in.header("set-cookie");
    assert!(cookie.starts_with("__Host-vigil_session="), "{cookie}");
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=3600",
    ] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    // The link is spent.
    let again = Browser::new(&pki, addr).sign_in(&link).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    assert!(again.body.contains("vigil console login"), "{}", again.body);

    // The page and its security headers.
    let page = browser.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-type").starts_with("text/html"));
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("referrer-policy"), "no-referrer");

    let session = browser.get("/api/session").await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    assert_eq!(session.header("cache-control"), "no-store");
    let session = session.json();
    assert_eq!(session["operator"], "alice");
    let csrf = session["csrf_token"]
        .as_str()
        .expect("csrf token")
        .to_owned();

    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let reply = sensor
        .ask(&Request::Publish(support::batch(1, "marker-console", 2)))
        .await;
    assert_eq!(reply, Reply::Ack { seq: 1 });
    let alerts = browser.get("/api/alerts").await;
    assert_eq!(alerts.status, StatusCode::OK, "{}", alerts.body);
    let alerts = alerts.json();
    assert_eq!(alerts["total"], 2);
    assert_eq!(alerts["alerts"][0]["id"], 2, "newest first: {alerts}");
    assert_eq!(
        alerts["alerts"][0]["rule"]["title"],
        "Test rule marker-console"
    );
    assert_eq!(alerts["alerts"][0]["sensor"], "sensor-1");
    assert_eq!(alerts["alerts"][0]["host"], "test-host");

    // Sign-out changes state: without the CSRF token it is refused and the session lives on.
    let forged = browser.send(Method::POST, "/api/logout", &[]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    let wrong = browser
        .send(Method::POST, "/api/logout", &[("x-csrf-token", "0000")])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(browser.get("/api/session").await.status, StatusCode::OK);
    let out = browser
        .send(Method::POST, "/api/logout", &[("x-csrf-token", &csrf)])
        .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    // The old cookie is dead even if a browser kept it.
    assert_eq!(
        browser.get("/api/alerts").await.status,
        StatusCode::UNAUTHORIZED
    );
    collector.stop().await;
}

#[tokio::test]
async fn an_expired_link_and_a_guessed_one_are_refused() {
    let pki = Pki::new();
    let collector = start(&pki, 1).await;
    let (addr, link) = login_link(&collector, &pki, "alice").await;
    let mut browser = Browser::new(&pki, addr);
    let guessed = browser
        .sign_in(&format!("/login?token={}", "ab".repeat(32)))
        .await;
    assert_eq!(guessed.status, StatusCode::FORBIDDEN);
    assert_eq!(
        browser.sign_in("/login").await.status,
        StatusCode::FORBIDDEN
    );
    // NB: time has to pass for a link to expire; the TTL is 1 s (expiry itself is unit-tested
    // with an injected clock in console::auth).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let late = browser.sign_in(&link).await;
    assert_eq!(late.status, StatusCode::FORBIDDEN, "{}", late.body);
    assert!(browser.cookie.is_none());
    collector.stop().await;
}

#[tokio::test]
async fn only_an_operator_gets_a_link_and_only_from_a_collector_with_a_console() {
    let pki = Pki::new();
    let collector = start(&pki, 300).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let reply = sensor.ask(&Request::ConsoleLogin).await;
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("sensor certificate may not")),
        "{reply:?}"
    );
    collector.stop().await;

    let plain = Running::start(&pki).await;
    let operator = Peer::connect(plain.addr, &pki.files("alice")).await;
    let reply = operator.ask(&Request::ConsoleLogin).await;
    assert!(
        matches!(&reply, Reply::Refused { reason } if reason.contains("no web console")),
        "{reply:?}"
    );
    plain.stop().await;
}

fn process(pid: u32, name: &str, parent: Option<(u32, &str)>) -> Process {
    Process {
        pid,
        entity_id: format!("e-{pid}"),
        name: name.into(),
        executable: format!("/usr/bin/{name}"),
        args: vec![name.into()],
        command_line: format!("{name} --pid {pid}"),
        start: Timestamp::now(),
        user: UserRef {
            id: 1000,
            name: Some("dev".into()),
        },
        parent: parent.map(|(ppid, pname)| {
            Box::new(ParentProcess {
                pid: ppid,
                entity_id: format!("e-{ppid}"),
                name: pname.into(),
                executable: format!("/usr/bin/{pname}"),
                args: vec![pname.into()],
                command_line: format!("{pname} --pid {ppid}"),
                start: Timestamp::now(),
            })
        }),
        ..Process::default()
    }
}

fn event(sequence: u64, host: &str, action: EventAction, process: Process) -> Event {
    Event {
        timestamp: Timestamp::now(),
        event: EventMeta {
            kind: "event".into(),
            action,
            sequence,
            boot_ns: sequence,
        },
        host: Host {
            name: host.into(),
            id: "machine".into(),
        },
        process,
        ..Event::default()
    }
}

fn alert(rule: &str, level: Level, tags: &[&str], event: Event) -> Alert {
    let mut event = event;
    event.event.kind = "alert".into();
    Alert::new(
        RuleInfo {
            id: rule.into(),
            title: format!("Rule {rule}"),
            level,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            description: None,
            author: None,
        },
        event,
    )
}

/// Signs `alice` in and returns the browser.
async fn signed_in(collector: &Running, pki: &Pki) -> Browser {
    let (addr, link) = login_link(collector, pki, "alice").await;
    let mut browser = Browser::new(pki, addr);
    assert_eq!(browser.sign_in(&link).await.status, StatusCode::SEE_OTHER);
    browser
}

#[tokio::test]
async fn an_alert_page_has_its_ancestry_its_descendants_and_only_their_events() {
    alert_page_has_ancestry_descendants_and_events(None).await;
}

/// The console over PostgreSQL answers as it does over SQLite: the same scenarios, on one
/// server (a database each).
#[tokio::test]
async fn on_postgres_the_console_answers_as_on_sqlite() {
    let Some(server) = PgServer::start() else {
        return;
    };
    alert_page_has_ancestry_descendants_and_events(Some(&server.database().await)).await;
    alert_list_filters_pages_and_counts(Some(&server.database().await)).await;
    sensors_and_rules_pages(Some(&server.database().await)).await;
}

async fn alert_page_has_ancestry_descendants_and_events(postgres: Option<&PostgresUrl>) {
    let pki = Pki::new();
    let collector = start_on(&pki, postgres).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    // init(1) ─ bash(100) ─ sh(200) ─ cat(300) ─ helper(301); unrelated(900) under bash.
    // No event of init itself is stored: it is known only as bash's parent.
    let bash = process(100, "bash", Some((1, "init")));
    let sh = process(200, "sh", Some((100, "bash")));
    let cat = process(300, "cat", Some((200, "sh")));
    let helper = process(301, "helper", Some((300, "cat")));
    let unrelated = process(900, "unrelated", Some((100, "bash")));
    // Made in this order, so their timestamps increase in this order.
    let mut events = vec![
        event(1, "web-01", EventAction::Exec, bash),
        event(2, "web-01", EventAction::Exec, sh),
        event(3, "web-01", EventAction::Exec, cat.clone()),
        event(4, "web-01", EventAction::Exec, unrelated),
        event(5, "web-01", EventAction::Exec, helper.clone()),
    ];
    let mut open = event(6, "web-01", EventAction::Open, helper);
    open.file = Some(vigil_proto::File {
        path: "/etc/shadow".into(),
        ..Default::default()
    });
    events.push(open);
    let alert = alert(
        "shadow-read",
        Level::High,
        &["attack.t1003"],
        event(3, "web-01", EventAction::Exec, cat),
    );
    let batch = Batch {
        seq: 1,
        events,
        alerts: vec![alert],
        loss: Default::default(),
    };
    assert_eq!(
        sensor.ask(&Request::Publish(batch)).await,
        Reply::Ack { seq: 1 }
    );
    let browser = signed_in(&collector, &pki).await;
    let detail = browser.get("/api/alerts/1").await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    let detail = detail.json();
    let ids = |key: &str| -> Vec<String> {
        detail[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} in {detail}"))
            .iter()
            .map(|n| n["entity_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(ids("ancestry"), ["e-300", "e-200", "e-100", "e-1"]);
    assert_eq!(detail["ancestry"][1]["command_line"], "sh --pid 200");
    assert_eq!(detail["ancestry"][1]["user"], "dev");
    assert_eq!(detail["ancestry"][3]["seen"], false, "init has no event");
    assert_eq!(ids("tree"), ["e-300", "e-301"]);
    assert_eq!(detail["tree"][1]["parent_entity_id"], "e-300");
    let events: Vec<(String, String)> = detail["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["process"]["entity_id"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                e["event"]["action"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("e-300".into(), "exec".into()),
            ("e-301".into(), "exec".into()),
            ("e-301".into(), "open".into())
        ]
    );
    assert_eq!(detail["events"][2]["file"]["path"], "/etc/shadow");
    assert_eq!(detail["truncated"], false);
    // With an empty window the ancestors come from the lookback query instead: same chain.
    let narrow = browser
        .get("/api/alerts/1?before_secs=0&after_secs=0")
        .await
        .json();
    let narrow_ids: Vec<&str> = narrow["ancestry"]
        .as_array()
        .expect("ancestry")
        .iter()
        .map(|n| n["entity_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(narrow_ids, ["e-300", "e-200", "e-100", "e-1"], "{narrow}");
    assert_eq!(narrow["ancestry"][2]["command_line"], "bash --pid 100");
    assert_eq!(narrow["ancestry"][2]["seen"], true);
    assert_eq!(
        browser.get("/api/alerts/99").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        browser.get("/api/alerts/x").await.status,
        StatusCode::BAD_REQUEST
    );
    collector.stop().await;
}

#[tokio::test]
async fn the_alert_list_filters_pages_and_counts_on_the_server() {
    alert_list_filters_pages_and_counts(None).await;
}

async fn alert_list_filters_pages_and_counts(postgres: Option<&PostgresUrl>) {
    let pki = Pki::new();
    let collector = start_on(&pki, postgres).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    // Ten alerts: ids 1..=10; even ids high on web-01, odd ids low on db-01; every third
    // carries a tag; id 7 mentions a needle in its command line.
    let alerts: Vec<Alert> = (1..=10u32)
        .map(|i| {
            let host = if i % 2 == 0 { "web-01" } else { "db-01" };
            let level = if i % 2 == 0 { Level::High } else { Level::Low };
            let tags: &[&str] = if i % 3 == 0 { &["attack.t1059"] } else { &[] };
            let mut p = process(1000 + i, "sh", Some((1, "init")));
            if i == 7 {
                p.command_line = "sh -c NeedleInHay_100%".into();
            }
            let rule = if i % 2 == 0 { "rule-even" } else { "rule-odd" };
            alert(
                rule,
                level,
                tags,
                event(u64::from(i), host, EventAction::Exec, p),
            )
        })
        .collect();
    let batch = Batch {
        seq: 1,
        events: vec![],
        alerts,
        loss: Default::default(),
    };
    assert_eq!(
        sensor.ask(&Request::Publish(batch)).await,
        Reply::Ack { seq: 1 }
    );
    let browser = signed_in(&collector, &pki).await;
    let ids = |page: &Value| -> Vec<i64> {
        page["alerts"]
            .as_array()
            .unwrap_or_else(|| panic!("alerts in {page}"))
            .iter()
            .map(|a| a["id"].as_i64().unwrap_or_default())
            .collect()
    };
    let get = |query: String| {
        let browser = &browser;
        async move {
            let answer = browser.get(&format!("/api/alerts?{query}")).await;
            assert_eq!(answer.status, StatusCode::OK, "{query}: {}", answer.body);
            answer.json()
        }
    };
    let high = get("min_severity=high".into()).await;
    assert_eq!(ids(&high), [10, 8, 6, 4, 2]);
    assert_eq!(high["total"], 5);
    assert_eq!(ids(&get("rule=rule-odd&limit=2".into()).await), [9, 7]);
    assert_eq!(ids(&get("tag=attack.t1059".into()).await), [9, 6, 3]);
    assert_eq!(
        ids(&get("host=db-01&tag=attack.t1059".into()).await),
        [9, 3]
    );
    assert_eq!(ids(&get("host=sensor-1&limit=1".into()).await), [10]);
    // Free text is case-insensitive and its % is literal, not a wildcard.
    assert_eq!(ids(&get("q=needleinhay_100%25".into()).await), [7]);
    assert_eq!(ids(&get("q=needle%25hay".into()).await), Vec::<i64>::new());
    let now = Timestamp::now().to_string();
    assert_eq!(get(format!("to={now}")).await["total"], 10);
    assert_eq!(get(format!("from={now}")).await["total"], 0);

    // Keyset paging: newest first, following next_before to the end.
    let mut seen = Vec::new();
    let mut query = "limit=4".to_owned();
    loop {
        let page = get(query.clone()).await;
        assert_eq!(page["total"], 10);
        seen.extend(ids(&page));
        match page["next_before"].as_i64() {
            Some(before) => query = format!("limit=4&before={before}"),
            None => break,
        }
    }
    assert_eq!(seen, (1..=10).rev().collect::<Vec<i64>>());
    // What the live table polls with: newer than the newest it has, oldest first.
    assert_eq!(ids(&get("after=8".into()).await), [9, 10]);

    let counts = browser.get("/api/counts?bucket_secs=86400").await;
    assert_eq!(counts.status, StatusCode::OK, "{}", counts.body);
    let counts = counts.json();
    let buckets = counts["buckets"].as_array().expect("buckets");
    let total: u64 = buckets
        .iter()
        .map(|b| b["total"].as_u64().unwrap_or(0))
        .sum();
    let high: u64 = buckets
        .iter()
        .map(|b| b["by_level"]["high"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!((total, high), (10, 5), "{counts}");

    // Bad input is a clear 400, not a 500.
    for bad in [
        "/api/alerts?min_severity=urgent",
        "/api/alerts?from=yesterday",
        "/api/alerts?before=3&after=1",
        "/api/alerts?colour=red",
        "/api/counts?bucket_secs=1&from=2000-01-01T00:00:00Z",
    ] {
        let answer = browser.get(bad).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {}",
            answer.body
        );
        assert!(answer.json()["error"].is_string(), "{bad}");
    }
    collector.stop().await;
}

#[tokio::test]
async fn a_second_operator_certificate_gets_its_own_session() {
    let pki = Pki::new();
    pki.issue(Role::Operator, "bob");
    let collector = start(&pki, 300).await;
    let (addr, link) = login_link(&collector, &pki, "bob").await;
    let mut browser = Browser::new(&pki, addr);
    assert_eq!(browser.sign_in(&link).await.status, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/api/session").await.json()["operator"], "bob");
    collector.stop().await;
}

/// The issue asks that pages stay responsive with 100 000 stored alerts. Measured, printed, not
/// a gate (this is a debug build on a shared machine): the answers must be right, and the
/// times are reported in the test output.
#[tokio::test]
async fn a_hundred_thousand_stored_alerts_are_paged_on_the_server() {
    const ALERTS: u32 = 100_000;
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir for the database");
    let database = data.path().join("collector.db");
    // The collector makes the schema; the alerts then go straight into SQLite in one
    // transaction (publishing 100 000 over QUIC would measure ingest, not the console).
    let first = Running::start_with(
        pki.collector_config(database.clone()),
        tempfile::tempdir().expect("spare dir"),
    )
    .await;
    first.stop().await;
    let started = std::time::Instant::now();
    {
        let mut db = rusqlite::Connection::open(&database).expect("open database");
        let tx = db.transaction().expect("transaction");
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO alerts (sensor, received_ns, rule_id, level, title, json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .expect("prepare");
            let now = Timestamp::now().unix_nanos() as i64;
            for i in 0..ALERTS {
                let level =
                    [Level::Low, Level::Medium, Level::High, Level::Critical][i as usize % 4];
                let host = format!("host-{:03}", i % 500);
                let mut p = process(10_000 + i, "sh", Some((1, "init")));
                p.command_line = format!("sh -c job-{i}");
                let rule = format!("rule-{}", i % 40);
                let a = alert(
                    &rule,
                    level,
                    &["attack.execution"],
                    event(u64::from(i), &host, EventAction::Exec, p),
                );
                let json = serde_json::to_string(&a).expect("alert JSON");
                // Spread over the last 24 hours, oldest first.
                let received = now - i64::from(ALERTS - i) * 864_000_000;
                insert
                    .execute(rusqlite::params![
                        "sensor-1",
                        received,
                        a.rule.id,
                        level.as_str(),
                        a.rule.title,
                        json
                    ])
                    .expect("insert alert");
            }
        }
        tx.commit().expect("commit");
    }
    eprintln!("stored {ALERTS} alerts in {:.1?}", started.elapsed());
    let mut config = pki.collector_config(database);
    config.console = Some(ConsoleConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        url: None,
        link_ttl_secs: 300,
        session_ttl_secs: 3600,
    });
    let collector = Running::start_with(config, data).await;
    let browser = signed_in(&collector, &pki).await;
    let mut timings = Vec::new();
    for (what, path, total) in [
        (
            "first page",
            "/api/alerts?limit=50".to_owned(),
            Some(u64::from(ALERTS)),
        ),
        (
            "page 1000 (keyset)",
            "/api/alerts?limit=50&before=50001".to_owned(),
            Some(u64::from(ALERTS)),
        ),
        (
            "severity filter",
            "/api/alerts?min_severity=critical".to_owned(),
            Some(u64::from(ALERTS / 4)),
        ),
        (
            "host + rule filter",
            "/api/alerts?host=host-007&rule=rule-7".to_owned(),
            Some(u64::from(ALERTS / 1000)),
        ),
        ("free text", "/api/alerts?q=job-99999".to_owned(), Some(1)),
        (
            "live poll",
            format!("/api/alerts?after={}", ALERTS - 5),
            Some(u64::from(ALERTS)),
        ),
        (
            "hourly counts",
            "/api/counts?bucket_secs=3600".to_owned(),
            None,
        ),
        ("alert detail", "/api/alerts/99999".to_owned(), None),
    ] {
        let started = std::time::Instant::now();
        let answer = browser.get(&path).await;
        let took = started.elapsed();
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        if let Some(total) = total {
            assert_eq!(answer.json()["total"], total, "{path}");
        }
        timings.push(format!("{what}: {took:.1?}"));
    }
    eprintln!(
        "console API with {ALERTS} stored alerts (debug build): {}",
        timings.join(", ")
    );
    collector.stop().await;
}

const CENTRAL_RULE: &str = "title: Central test rule
id: central-1
level: medium
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    Image|endswith: /never-run-this
  condition: selection
";

#[tokio::test]
async fn the_sensors_and_rules_pages_show_heartbeats_drops_central_sets_and_hits() {
    sensors_and_rules_pages(None).await;
}

async fn sensors_and_rules_pages(postgres: Option<&PostgresUrl>) {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir for the database");
    let mut config = console_config(&pki, data.path(), postgres, 300);
    config.rules = Some(vigil_collector::CentralRulesConfig {
        dir: data.path().join("rules"),
    });
    let collector = Running::start_with(config, data).await;
    let browser = signed_in(&collector, &pki).await;
    for path in ["/api/sensors", "/api/rules"] {
        let anonymous = Browser::new(&pki, browser.addr).get(path).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let empty = browser.get("/api/rules").await.json();
    assert_eq!(empty["central_configured"], true);
    assert_eq!(empty["central"], Value::Null);
    assert_eq!(empty["hits"], serde_json::json!([]));

    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let status = vigil_proto::SensorStatus {
        host: "web-01".into(),
        version: "9.9.9".into(),
        rules_version: "d1g35t".into(),
        rules: 2,
        hooks: vec!["exec:tp_btf/sched_process_exec".into()],
        events_total: 1000,
        kernel_drops: 3,
        heartbeat_secs: 30,
        ..Default::default()
    };
    assert_eq!(
        sensor.ask(&Request::Heartbeat(status)).await,
        Reply::StatusRecorded
    );
    let shell = || process(200, "sh", Some((100, "bash")));
    let alerts = vec![
        alert(
            "rule-a",
            Level::High,
            &[],
            event(1, "web-01", EventAction::Exec, shell()),
        ),
        alert(
            "rule-a",
            Level::High,
            &[],
            event(2, "web-01", EventAction::Exec, shell()),
        ),
        alert(
            "rule-b",
            Level::Low,
            &[],
            event(3, "web-01", EventAction::Exec, shell()),
        ),
    ];
    let batch = Batch {
        seq: 1,
        events: Vec::new(),
        alerts,
        loss: Default::default(),
    };
    assert_eq!(
        sensor.ask(&Request::Publish(batch)).await,
        Reply::Ack { seq: 1 }
    );
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    let pushed = operator
        .ask(&Request::PushRules(vigil_proto::RulePush {
            files: [("central.yml".to_owned(), CENTRAL_RULE.to_owned())].into(),
        }))
        .await;
    assert!(
        matches!(pushed, Reply::RulesPushed { version: 1 }),
        "{pushed:?}"
    );

    let sensors = browser.get("/api/sensors").await;
    assert_eq!(sensors.status, StatusCode::OK, "{}", sensors.body);
    let sensors = sensors.json();
    let list = sensors["sensors"].as_array().expect("sensors");
    assert_eq!(list.len(), 1, "{sensors}");
    assert_eq!(list[0]["sensor"], "sensor-1");
    assert_eq!(list[0]["status"]["host"], "web-01");
    assert_eq!(list[0]["status"]["kernel_drops"], 3);
    assert_eq!(list[0]["silent"], false);
    assert!(sensors["now"].is_string(), "{sensors}");

    let rules = browser.get("/api/rules").await;
    assert_eq!(rules.status, StatusCode::OK, "{}", rules.body);
    let rules = rules.json();
    assert_eq!(rules["central"]["version"], 1, "{rules}");
    assert_eq!(rules["central"]["files"][0]["name"], "central.yml");
    assert_eq!(rules["central"]["rules"][0]["id"], "central-1");
    assert_eq!(rules["central"]["rules"][0]["title"], "Central test rule");
    assert_eq!(rules["sensors"][0]["sensor"], "sensor-1");
    assert_eq!(rules["sensors"][0]["rules_version"], "d1g35t");
    assert_eq!(rules["sensors"][0]["rules"], 2);
    // The drops in the heartbeat raised the collector's own alert, counted like any rule's.
    let hits: Vec<(String, u64)> = rules["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| {
            (
                h["id"].as_str().expect("id").to_owned(),
                h["hits"].as_u64().expect("hits"),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            ("rule-a".to_owned(), 2),
            ("rule-b".to_owned(), 1),
            ("vigil-sensor-kernel-drops".to_owned(), 1)
        ]
    );
    assert_eq!(rules["hits"][0]["level"], "high");
    // The drops alert came first (id 1), then rule-a's two (2, 3).
    assert_eq!(rules["hits"][0]["last_alert_id"], 3);
    assert_eq!(rules["hits"][0]["title"], "Rule rule-a");
    collector.stop().await;
}
