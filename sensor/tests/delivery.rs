//! Delivery through the spool against a real collector in this process (real QUIC, real
//! SQLite, certificates from `vigil certs`' own code), with synthetic events: no kernel needed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vigil_cli::certs;
use vigil_collector::{Collector, CollectorConfig, TlsConfig};
use vigil_proto::transport::Role;
use vigil_proto::{Alert, Event, Level, Loss, RuleInfo};
use vigil_sensor::config::{Fsync, SpoolConfig};
use vigil_sensor::ship::{self, CollectorTarget, Outgoing, ShipStats};
use vigil_sensor::spool::{Class, Spool};

const DEADLINE: Duration = Duration::from_secs(30);

fn event(sequence: u64) -> Event {
    let mut event = Event::default();
    event.event.sequence = sequence;
    event.event.kind = "event".into();
    event.process.executable = "/usr/bin/synthetic".into();
    event.process.args = vec!["synthetic".into(), format!("n{sequence:06}")];
    event
}

fn alert(sequence: u64) -> Alert {
    let mut event = event(sequence);
    event.event.kind = "alert".into();
    Alert {
        rule: RuleInfo {
            id: "synthetic".into(),
            title: "Synthetic".into(),
            level: Level::High,
            tags: Vec::new(),
            description: None,
            author: None,
        },
        event,
    }
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = dir.path().join("pki");
        certs::init_ca(&pki, false).expect("make CA");
        for (role, name) in [(Role::Collector, "collector"), (Role::Sensor, "sensor-1")] {
            certs::issue(&pki, role, name, &[], false)
                .unwrap_or_else(|e| panic!("issue {name}: {e}"));
        }
        Setup { dir }
    }

    fn spool_config(&self) -> SpoolConfig {
        SpoolConfig {
            dir: self.dir.path().join("spool"),
            max_bytes: 64 << 20,
            fsync: Fsync::Batch,
        }
    }

    fn database(&self) -> std::path::PathBuf {
        self.dir.path().join("collector.db")
    }

    async fn collector(&self) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let files = certs::tls_files(&self.dir.path().join("pki"), "collector");
        let config = CollectorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: self.database(),
            tls: TlsConfig {
                ca: files.ca,
                cert: files.cert,
                key: files.key,
            },
            revoked: None,
            enroll: None,
            console: None,
        };
        let collector = Collector::bind(&config).await.expect("bind collector");
        let addr = collector.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            collector
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .expect("collector run");
        });
        (addr, stop, task)
    }

    fn target(&self, address: SocketAddr) -> CollectorTarget {
        CollectorTarget {
            address,
            server_name: "localhost".into(),
            tls: certs::tls_files(&self.dir.path().join("pki"), "sensor-1"),
        }
    }

    fn query<T: rusqlite::types::FromSql>(&self, sql: &str) -> T {
        let db = rusqlite::Connection::open_with_flags(
            self.database(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the collector's database");
        db.query_row(sql, [], |row| row.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// Runs the shipper over `items` until it has delivered everything.
async fn ship_all(setup: &Setup, addr: SocketAddr, items: Vec<Outgoing>) -> Arc<ShipStats> {
    let spool = Spool::open(&setup.spool_config()).expect("open spool");
    let (tx, rx) = mpsc::channel(items.len().max(1));
    for item in items {
        tx.try_send(item).expect("queue has room");
    }
    drop(tx);
    let stats = Arc::new(ShipStats::default());
    let run = ship::run(
        setup.target(addr),
        spool,
        rx,
        stats.clone(),
        std::future::pending(),
    );
    tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("not everything was delivered within {DEADLINE:?}"))
        .expect("ship run");
    stats
}

fn damage(segment: &Path, records: usize) {
    let mut bytes = std::fs::read(segment).expect("read segment");
    let record_len = bytes.len() / records;
    // A flipped byte inside record 1 and a torn last record.
    bytes[record_len + 40] ^= 0x08;
    bytes.truncate(bytes.len() - record_len / 3);
    std::fs::write(segment, bytes).expect("write damaged segment");
}

#[tokio::test]
async fn a_damaged_spool_from_a_previous_run_is_delivered_first_and_its_loss_reported() {
    let setup = Setup::new();
    // A previous run spooled 6 batches of 3 events and one alert, then died before sending.
    let mut spool = Spool::open(&setup.spool_config()).expect("open spool");
    for b in 0..6u64 {
        spool
            .append(
                Class::Telemetry,
                (0..3).map(|i| event(b * 3 + i)).collect(),
                Vec::new(),
            )
            .expect("append");
    }
    spool
        .append(Class::Alerts, Vec::new(), vec![alert(1000)])
        .expect("append alert");
    drop(spool);
    let segments: Vec<_> = std::fs::read_dir(&setup.spool_config().dir)
        .expect("spool dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events-"))
        })
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    damage(&segments[0], 6);

    let (addr, stop, task) = setup.collector().await;
    // This run adds events of its own; the old ones go first.
    let stats = ship_all(
        &setup,
        addr,
        (100..110)
            .map(|n| Outgoing::Event(Box::new(event(n))))
            .collect(),
    )
    .await;
    let _ = stop.send(());
    task.await.expect("collector task");

    // Batches 0, 2, 3, 4 were intact (1 flipped, 5 torn): 12 old events, plus 10 new ones.
    let stored: String = setup.query(
        "SELECT group_concat(s, ',') FROM (SELECT json_extract(json, '$.event.sequence') AS s FROM events ORDER BY s)",
    );
    assert_eq!(
        stored,
        "0,1,2,6,7,8,9,10,11,12,13,14,100,101,102,103,104,105,106,107,108,109"
    );
    assert_eq!(setup.query::<i64>("SELECT COUNT(*) FROM alerts"), 1);
    let corrupt: i64 =
        setup.query("SELECT corrupt_records FROM sensor_loss WHERE sensor = 'sensor-1'");
    assert_eq!(
        corrupt, 2,
        "both damaged records are counted at the collector"
    );
    assert_eq!(
        stats
            .corrupt_records
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // Nothing is left behind once everything is acked.
    let spool = Spool::open(&setup.spool_config()).expect("reopen spool");
    assert_eq!((spool.pending(), spool.bytes()), (0, 0));
    assert_eq!(
        spool.loss(),
        Loss {
            corrupt_records: 2,
            ..Loss::default()
        }
    );
}
