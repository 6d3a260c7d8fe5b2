//! What the network tests share: a PKI made with `vigil certs`' own code, an in-process
//! collector on 127.0.0.1:0, QUIC clients of each role, and sample batches.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod postgres;
pub mod process;
pub mod receivers;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::oneshot;
use vigil_cli::certs;
use vigil_collector::{Collector, CollectorConfig, CollectorError, TlsConfig};
use vigil_proto::transport::{self, Role, TlsFiles};
use vigil_proto::{
    read_frame, write_frame, Alert, Batch, Event, EventAction, EventMeta, Host, Level, Process,
    Reply, Request, RuleInfo, Timestamp, UserRef, MAX_FRAME_BYTES,
};

/// Generous: CI machines are shared. Tests wait this long for what should take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {DEADLINE:?} waiting for {what}"),
    }
}

/// Polls until `check` holds, failing with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CA plus a collector (`collector`), a sensor (`sensor-1`) and an operator (`alice`).
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        certs::init_ca(dir.path(), false).expect("make CA");
        for (role, name) in [
            (Role::Collector, "collector"),
            (Role::Sensor, "sensor-1"),
            (Role::Operator, "alice"),
        ] {
            certs::issue(dir.path(), role, name, &[], false)
                .unwrap_or_else(|e| panic!("issue {name}: {e}"));
        }
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues one more certificate from this CA.
    pub fn issue(&self, role: Role, name: &str) -> TlsFiles {
        certs::issue(self.dir(), role, name, &[], false)
            .unwrap_or_else(|e| panic!("issue {name}: {e}"));
        self.files(name)
    }

    pub fn files(&self, name: &str) -> TlsFiles {
        certs::tls_files(self.dir(), name)
    }

    pub fn collector_config(&self, database: PathBuf) -> CollectorConfig {
        let files = self.files("collector");
        CollectorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database,
            tls: TlsConfig {
                ca: files.ca,
                cert: files.cert,
                key: files.key,
            },
            revoked: None,
            enroll: None,
            ..Default::default()
        }
    }
}

/// A collector serving in this process until [`Running::stop`].
pub struct Running {
    pub addr: SocketAddr,
    pub stats: std::sync::Arc<vigil_collector::Stats>,
    pub reload: vigil_collector::ReloadHandle,
    pub database: PathBuf,
    _data: TempDir,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), CollectorError>>,
}

impl Running {
    pub async fn start(pki: &Pki) -> Self {
        let data = tempfile::tempdir().expect("temp dir for the database");
        let database = data.path().join("collector.db");
        Self::start_with(pki.collector_config(database), data).await
    }

    /// Starts a collector with `config`, whose database lives in `data`.
    pub async fn start_with(config: CollectorConfig, data: TempDir) -> Self {
        let database = config.database.clone();
        let collector = Collector::bind(&config).await.expect("bind collector");
        let addr = collector.local_addr();
        let stats = collector.stats();
        let reload = collector.reload_handle();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(collector.run(async {
            let _ = stop.await;
        }));
        Self {
            addr,
            stats,
            reload,
            database,
            _data: data,
            shutdown,
            task,
        }
    }

    /// Shuts down and checks that `run` returned cleanly.
    pub async fn stop(self) {
        let Self { shutdown, task, .. } = self;
        let _ = shutdown.send(());
        within("the collector to shut down", task)
            .await
            .expect("collector task panicked")
            .expect("collector run failed");
    }

    /// A read-only view of the collector's database.
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            &self.database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the collector's database")
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db()
            .query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// A connected client with some certificate.
pub struct Peer {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
}

impl Peer {
    pub async fn connect(addr: SocketAddr, files: &TlsFiles) -> Self {
        let endpoint = transport::client_endpoint(files).expect("client endpoint");
        let conn = within(
            "the handshake",
            transport::connect(&endpoint, addr, "localhost"),
        )
        .await
        .expect("connect to the collector");
        Self { endpoint, conn }
    }

    /// Sends one request on a new stream and reads its one reply.
    pub async fn ask(&self, request: &Request) -> Reply {
        within("a reply", async {
            let (mut send, mut recv) = self.conn.open_bi().await.expect("open stream");
            write_frame(&mut send, request).await.expect("send request");
            send.finish().expect("finish request");
            read_frame(&mut recv, MAX_FRAME_BYTES)
                .await
                .expect("read reply")
                .expect("a reply before the stream ended")
        })
        .await
    }

    /// Opens a subscription stream; read it with [`next_alert`].
    pub async fn subscribe(&self, after_id: Option<i64>) -> (quinn::SendStream, quinn::RecvStream) {
        let (mut send, recv) = self.conn.open_bi().await.expect("open stream");
        let request = Request::Subscribe(vigil_proto::Subscribe { after_id });
        write_frame(&mut send, &request)
            .await
            .expect("send subscribe");
        let mut recv = recv;
        let first = within(
            "the subscription's first frame",
            read_frame::<_, Reply>(&mut recv, MAX_FRAME_BYTES),
        )
        .await
        .expect("read subscription")
        .expect("subscription ended");
        match (first, after_id) {
            (Reply::Subscribed { after_id: start }, Some(asked)) => assert_eq!(start, asked),
            (Reply::Subscribed { .. }, None) => {}
            (other, _) => panic!("expected Subscribed first, got {other:?}"),
        }
        (send, recv)
    }
}

/// The next reply on a subscription, which must be an alert.
pub async fn next_alert(recv: &mut quinn::RecvStream) -> vigil_proto::StoredAlert {
    let reply = within(
        "the next alert",
        read_frame::<_, Reply>(recv, MAX_FRAME_BYTES),
    )
    .await
    .expect("read subscription")
    .expect("subscription ended");
    match reply {
        Reply::Alert(alert) => alert,
        other => panic!("expected an alert, got {other:?}"),
    }
}

pub fn event(marker: &str, sequence: u64) -> Event {
    Event {
        timestamp: Timestamp::now(),
        event: EventMeta {
            kind: "event".into(),
            action: EventAction::Exec,
            sequence,
            boot_ns: sequence,
        },
        host: Host {
            name: "test-host".into(),
            id: "machine-id".into(),
        },
        process: Process {
            pid: 4242,
            executable: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), marker.into()],
            command_line: format!("sh -c {marker}"),
            ..Default::default()
        },
        user: UserRef {
            id: 0,
            name: Some("root".into()),
        },
        audit_user: None,
        container: None,
        ..Default::default()
    }
}

pub fn alert(marker: &str, sequence: u64) -> Alert {
    let mut event = event(marker, sequence);
    event.event.kind = "alert".into();
    Alert {
        rule: RuleInfo {
            id: "test-rule".into(),
            title: format!("Test rule {marker}"),
            level: Level::High,
            tags: vec!["attack.execution".into()],
            description: None,
            author: None,
        },
        event,
        dedup: None,
        correlation: None,
        response: None,
        loss: None,
    }
}

/// A batch of two events and `alerts` alerts, all carrying `marker`.
pub fn batch(seq: u64, marker: &str, alerts: usize) -> Batch {
    Batch {
        seq,
        events: vec![event(marker, 1), event(marker, 2)],
        alerts: (0..alerts).map(|i| alert(marker, 3 + i as u64)).collect(),
        loss: Default::default(),
    }
}

/// A batch of just `alert`, no events.
pub fn one_alert_batch(seq: u64, alert: Alert) -> Batch {
    let mut b = batch(seq, "unused", 0);
    b.alerts = vec![alert];
    b
}
