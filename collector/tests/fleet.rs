//! Several collectors on one PostgreSQL server: a sensor failing over from one to the other
//! while alerts flow stores every alert once, and `vigil tail` on the other collector shows
//! them all, in order, without duplicates.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use support::postgres::PgServer;
use support::{alert, batch, next_alert, within, Peer, Pki, Running};
use tokio::sync::mpsc;
use vigil_proto::{Reply, Request};
use vigil_sensor::config::{Fsync, SpoolConfig};
use vigil_sensor::ship::{self, CollectorTarget, Outgoing, ShipStats};
use vigil_sensor::spool::Spool;

/// Alerts the sensor raises; the first collector stops after [`FAIL_AFTER`] of them.
const ALERTS: usize = 60;
const FAIL_AFTER: usize = 20;

async fn start_on(pki: &Pki, url: &vigil_collector::store::PostgresUrl) -> Running {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = pki.collector_config(data.path().join("enroll.db"));
    config.store = Some(url.clone());
    Running::start_with(config, data).await
}

#[tokio::test]
async fn a_sensor_failing_over_between_collectors_on_one_postgres_loses_and_repeats_nothing() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database().await;
    let pki = Pki::new();
    let first = start_on(&pki, &url).await;
    let second = start_on(&pki, &url).await;

    // Dedup holds across collectors: a batch stored through one is a duplicate at the other.
    let direct = pki.issue(vigil_proto::transport::Role::Sensor, "sensor-direct");
    for addr in [first.addr, second.addr] {
        let peer = Peer::connect(addr, &direct).await;
        assert_eq!(
            peer.ask(&Request::Publish(batch(7, "m-direct", 1))).await,
            Reply::Ack { seq: 7 }
        );
    }

    // The operator follows the second collector from the start of history.
    let operator = Peer::connect(second.addr, &pki.files("alice")).await;
    let (_send, mut tail) = operator.subscribe(Some(0)).await;
    let direct_alert = next_alert(&mut tail).await;
    assert_eq!(direct_alert.sensor, "sensor-direct");

    // The sensor ships to the first collector, with the second as its failover.
    let spool_dir = tempfile::tempdir().expect("temp dir");
    let spool = Spool::open(&SpoolConfig {
        dir: spool_dir.path().to_owned(),
        max_bytes: 64 << 20,
        fsync: Fsync::Batch,
    })
    .expect("open spool");
    let target = CollectorTarget {
        address: first.addr,
        failover: vec![second.addr],
        server_name: "localhost".into(),
        tls: pki.files("sensor-1"),
        heartbeat: None,
    };
    let (tx, rx) = mpsc::channel(ALERTS);
    let stats = Arc::new(ShipStats::default());
    let shipper = tokio::spawn(ship::run(
        target,
        spool,
        rx,
        stats.clone(),
        std::future::pending(),
    ));

    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    let mut last_id = direct_alert.id;
    let mut take = |alert: vigil_proto::StoredAlert, seen: &mut BTreeMap<String, i64>| {
        assert!(
            alert.id > last_id,
            "tail out of order: {} after {last_id}",
            alert.id
        );
        last_id = alert.id;
        let marker = alert.alert.event.process.command_line.clone();
        if let Some(before) = seen.insert(marker.clone(), alert.id) {
            panic!("{marker} shown twice (ids {before} and {})", alert.id);
        }
    };
    for n in 0..FAIL_AFTER {
        send_alert(&tx, n).await;
    }
    // Everything so far reached the first collector (and, through PostgreSQL, the tail on
    // the second); then the first goes away while more alerts come.
    while seen.len() < FAIL_AFTER {
        let alert = next_alert(&mut tail).await;
        take(alert, &mut seen);
    }
    first.stop().await;
    for n in FAIL_AFTER..ALERTS {
        send_alert(&tx, n).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(tx);
    while seen.len() < ALERTS {
        let alert = next_alert(&mut tail).await;
        take(alert, &mut seen);
    }
    within("the sensor to deliver everything", shipper)
        .await
        .expect("shipper panicked")
        .expect("shipper failed");
    let expected: Vec<String> = (0..ALERTS).map(marker).collect();
    let mut shown: Vec<String> = seen.keys().cloned().collect();
    shown.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(shown, sorted);
    // The tail showed them in the order the sensor raised them (one sensor, one lane).
    let mut by_id: Vec<(i64, String)> = seen.iter().map(|(m, id)| (*id, m.clone())).collect();
    by_id.sort();
    let order: Vec<String> = by_id.into_iter().map(|(_, m)| m).collect();
    assert_eq!(order, expected);

    // Stored once each: the database holds exactly these alerts and the direct one.
    let (client, connection) = tokio_postgres::connect(url.as_str(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let stored: i64 = client
        .query_one("SELECT COUNT(*) FROM alerts", &[])
        .await
        .expect("count alerts")
        .get(0);
    assert_eq!(stored, ALERTS as i64 + 1);
    let distinct: i64 = client
        .query_one("SELECT COUNT(DISTINCT json) FROM alerts", &[])
        .await
        .expect("count distinct alerts")
        .get(0);
    assert_eq!(distinct, stored, "an alert was stored twice");
    second.stop().await;
}

fn marker(n: usize) -> String {
    format!("sh -c m-fleet-{n:03}")
}

async fn send_alert(tx: &mpsc::Sender<Outgoing>, n: usize) {
    let alert = alert(&format!("m-fleet-{n:03}"), n as u64);
    tx.send(Outgoing::Alert(Box::new(alert)))
        .await
        .expect("the shipper takes alerts");
}
