//! One storage suite, two engines: every promise the server relies on, checked against
//! embedded SQLite and against a real PostgreSQL server started by the test.

mod support;

use std::time::Duration;

use support::postgres::PgServer;
use support::{batch, within};
use tokio::sync::broadcast;
use vigil_collector::store::{self, Published, Retention, Store, StoreTarget};
use vigil_proto::{Loss, SensorStatus, StoredAlert, Timestamp};

const DAY: Duration = Duration::from_secs(86_400);

async fn open(target: &StoreTarget) -> (Store, store::Closer, broadcast::Receiver<StoredAlert>) {
    let (alerts, feed) = broadcast::channel(4096);
    let (store, closer) = store::open(target, alerts)
        .await
        .unwrap_or_else(|e| panic!("open {target}: {e}"));
    (store, closer, feed)
}

/// The next alert on the feed, within the deadline.
async fn fed(feed: &mut broadcast::Receiver<StoredAlert>) -> StoredAlert {
    within("an alert on the store's feed", feed.recv())
        .await
        .expect("the feed is open and not lagging")
}

async fn all_events(store: &Store) -> Vec<store::StoredEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .events_since(Timestamp(0), after, 100)
            .await
            .expect("read events");
        let Some(last) = page.last() else {
            return out;
        };
        after = last.id;
        out.extend(page);
    }
}

/// Every check, in order, against one fresh store.
async fn storage_suite(target: StoreTarget) {
    let (store, closer, mut feed) = open(&target).await;
    assert_eq!(store.last_alert_id().await.expect("last id"), 0);

    // A batch is stored whole, its alerts get increasing ids and reach the feed after commit.
    let Published::Stored { alerts } = store
        .publish("sensor-1".into(), batch(1, "m-first", 2))
        .await
        .expect("publish")
    else {
        panic!("a new batch was taken for a duplicate");
    };
    assert_eq!(alerts.len(), 2);
    assert!(alerts[0].id < alerts[1].id, "{alerts:?}");
    for stored in &alerts {
        assert_eq!(&fed(&mut feed).await, stored);
    }
    let events = all_events(&store).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e.sensor == "sensor-1" && e.event.process.command_line == "sh -c m-first"));
    assert_eq!(store.last_alert_id().await.expect("last id"), alerts[1].id);

    // The same (sensor, seq) again is a duplicate and writes nothing; the same seq from
    // another sensor is news.
    assert_eq!(
        store
            .publish("sensor-1".into(), batch(1, "m-resent", 2))
            .await
            .expect("publish duplicate"),
        Published::Duplicate
    );
    assert_eq!(all_events(&store).await.len(), 2);
    let Published::Stored { alerts: other } = store
        .publish("sensor-2".into(), batch(1, "m-other", 1))
        .await
        .expect("publish")
    else {
        panic!("sensor-2's seq 1 was taken for sensor-1's");
    };
    assert_eq!(fed(&mut feed).await, other[0]);
    assert_eq!(all_events(&store).await.len(), 4);

    // Loss totals ride along, even on a duplicate, without breaking anything.
    let mut lossy = batch(1, "m-lossy", 0);
    lossy.loss = Loss {
        events_dropped: 5,
        alerts_dropped: 0,
        corrupt_records: 1,
    };
    assert_eq!(
        store
            .publish("sensor-2".into(), lossy)
            .await
            .expect("publish"),
        Published::Duplicate
    );

    // Reading back: after an id, and since a time, in id order, within a byte budget.
    let after_first = store
        .alerts_after(alerts[0].id, 10)
        .await
        .expect("alerts after");
    assert_eq!(after_first, vec![alerts[1].clone(), other[0].clone()]);
    let since = store
        .alerts_since(Timestamp(0), 10, usize::MAX)
        .await
        .expect("alerts since");
    assert_eq!(since.len(), 3);
    let budgeted = store
        .alerts_since(Timestamp(0), 10, 1)
        .await
        .expect("alerts since");
    assert_eq!(
        budgeted.len(),
        1,
        "a budget smaller than one alert still returns one"
    );
    let future = Timestamp(Timestamp::now().unix_nanos() + 3_600_000_000_000);
    assert!(store
        .alerts_since(future, 10, usize::MAX)
        .await
        .expect("alerts since")
        .is_empty());

    // Concurrent publishers: every batch stored once, every alert on the feed once, in id order.
    let tasks: Vec<_> = (0..8u64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                for seq in 0..5 {
                    let published = store
                        .publish(
                            format!("busy-{n}"),
                            batch(seq, &format!("m-busy-{n}-{seq}"), 1),
                        )
                        .await
                        .expect("publish");
                    assert!(matches!(published, Published::Stored { .. }));
                }
            })
        })
        .collect();
    for task in tasks {
        within("concurrent publishers", task)
            .await
            .expect("publisher panicked");
    }
    let mut last = other[0].id;
    for _ in 0..40 {
        let alert = fed(&mut feed).await;
        assert!(
            alert.id > last,
            "feed out of order: {} after {last}",
            alert.id
        );
        last = alert.id;
    }
    assert_eq!(store.last_alert_id().await.expect("last id"), last);
    assert_eq!(all_events(&store).await.len(), 4 + 80);

    // Retention: nothing young goes; events past their week go, alerts stay until theirs.
    let retention = Retention::default();
    let now = Timestamp::now();
    store.maintain(now, retention).await.expect("maintain now");
    assert_eq!(all_events(&store).await.len(), 84);
    let in_8_days = Timestamp(now.unix_nanos() + 8 * DAY.as_nanos() as u64);
    store
        .maintain(in_8_days, retention)
        .await
        .expect("maintain +8d");
    assert!(
        all_events(&store).await.is_empty(),
        "events older than 7 days remain"
    );
    assert_eq!(
        store.alerts_after(0, 100).await.expect("alerts").len(),
        43,
        "alerts went with the events"
    );
    let in_91_days = Timestamp(now.unix_nanos() + 91 * DAY.as_nanos() as u64);
    store
        .maintain(in_91_days, retention)
        .await
        .expect("maintain +91d");
    assert!(store.alerts_after(0, 100).await.expect("alerts").is_empty());
    // Dedup records went with them, and ids are never handed out again.
    let Published::Stored { alerts: again } = store
        .publish("sensor-1".into(), batch(1, "m-after-retention", 1))
        .await
        .expect("publish")
    else {
        panic!("a batch older than retention still counts as a duplicate");
    };
    assert!(
        again[0].id > last,
        "alert id {} reused (last was {last})",
        again[0].id
    );
    assert_eq!(fed(&mut feed).await, again[0]);
    assert_eq!(
        all_events(&store).await.len(),
        2,
        "ingest works after retention"
    );

    health_checks(&store).await;

    drop(store);
    within("the store to close", closer.close()).await;

    // Reopening keeps everything and migrates nothing twice.
    let (store, closer, _feed) = open(&target).await;
    assert_eq!(store.last_alert_id().await.expect("last id"), again[0].id);
    drop(store);
    within("the store to close", closer.close()).await;
}

/// Many batches at once, as from a fleet: SQLite stores whatever queued during a commit in one
/// transaction (group commit), PostgreSQL in concurrent transactions. Either way every batch is
/// answered only once stored, a (sensor, seq) sent twice in the same burst is stored once, and
/// the feed carries every acked alert, in increasing id order.
async fn concurrent_batches(target: StoreTarget) {
    let (store, closer, mut feed) = open(&target).await;
    let sensors = 4;
    let per_sensor = 12u64;
    let publishes = (0..sensors).flat_map(|s| {
        let store = store.clone();
        (1..=per_sensor).flat_map(move |seq| {
            let sensor = format!("burst-{s}");
            // Every third batch is sent twice in the same burst, as after a lost ack.
            let copies = if seq % 3 == 0 { 2 } else { 1 };
            let store = store.clone();
            (0..copies).map(move |_| {
                let (store, sensor) = (store.clone(), sensor.clone());
                async move {
                    let outcome = store
                        .publish(sensor.clone(), batch(seq, &format!("m-{sensor}-{seq}"), 1))
                        .await
                        .unwrap_or_else(|e| panic!("publish {sensor} {seq}: {e}"));
                    (sensor, seq, outcome)
                }
            })
        })
    });
    let outcomes = within("a burst of batches", futures::future::join_all(publishes)).await;

    let mut stored = std::collections::BTreeMap::new();
    let mut acked_alerts = Vec::new();
    for (sensor, seq, outcome) in outcomes {
        if let Published::Stored { alerts } = outcome {
            assert_eq!(alerts.len(), 1, "{sensor} {seq}");
            assert!(
                stored.insert((sensor.clone(), seq), ()).is_none(),
                "{sensor} {seq} stored twice"
            );
            acked_alerts.extend(alerts);
        }
    }
    let batches = sensors as usize * per_sensor as usize;
    assert_eq!(stored.len(), batches, "every (sensor, seq) stored once");
    assert_eq!(all_events(&store).await.len(), 2 * batches);
    let mut from_feed = Vec::new();
    for _ in 0..batches {
        from_feed.push(fed(&mut feed).await);
    }
    assert!(
        from_feed.windows(2).all(|w| w[0].id < w[1].id),
        "the feed is out of order: {:?}",
        from_feed.iter().map(|a| a.id).collect::<Vec<_>>()
    );
    acked_alerts.sort_by_key(|a| a.id);
    assert_eq!(from_feed, acked_alerts);
    drop(store);
    within("the store to close", closer.close()).await;
}

fn at(t: Timestamp, secs: u64) -> Timestamp {
    Timestamp(t.unix_nanos() + secs * 1_000_000_000)
}

/// Heartbeats: the sensor list, its event rate, new kernel drops, silence claimed once.
async fn health_checks(store: &Store) {
    let t0 = Timestamp::now();
    let mut status = SensorStatus {
        host: "web-01".into(),
        version: "0.1.0".into(),
        rules_version: "abc".into(),
        rules: 55,
        hooks: vec!["exec:tracepoint".into()],
        events_total: 100,
        heartbeat_secs: 10,
        ..Default::default()
    };
    let record = |status: SensorStatus, t: Timestamp| async move {
        store
            .record_status("sensor-1".into(), status, t)
            .await
            .expect("record status")
    };
    assert_eq!(record(status.clone(), t0).await, 0);
    status.events_total = 600;
    status.kernel_drops = 7;
    status.spool_batches = 3;
    assert_eq!(
        record(status.clone(), at(t0, 10)).await,
        7,
        "new kernel drops"
    );
    let sensors = store.sensors().await.expect("sensors");
    assert_eq!(sensors.len(), 1, "{sensors:?}");
    assert_eq!(sensors[0].sensor, "sensor-1");
    assert_eq!(sensors[0].status, status);
    assert_eq!(sensors[0].last_seen, at(t0, 10));
    assert!(
        (sensors[0].events_per_sec - 50.0).abs() < 1e-9,
        "{sensors:?}"
    );
    assert!(!sensors[0].silent);

    // Silent after three heartbeats (30 s here), claimed exactly once.
    // A collector that started watching late gives the sensor a whole window from then.
    let late = store
        .claim_silent(at(t0, 10 + 31), at(t0, 10 + 20))
        .await
        .expect("claim silent");
    assert!(
        late.is_empty(),
        "silent before a window passed since watching began"
    );
    let claim = |t| async move { store.claim_silent(t, t0).await.expect("claim silent") };
    assert!(claim(at(t0, 10 + 29)).await.is_empty(), "silent too early");
    let silent = claim(at(t0, 10 + 31)).await;
    assert_eq!(silent.len(), 1, "{silent:?}");
    assert_eq!(silent[0].sensor, "sensor-1");
    assert!(claim(at(t0, 10 + 60)).await.is_empty(), "claimed twice");
    assert!(store.sensors().await.expect("sensors")[0].silent);

    // A heartbeat ends the silence; the same total is no news; a restart's counts are.
    assert_eq!(record(status.clone(), at(t0, 80)).await, 0);
    assert!(!store.sensors().await.expect("sensors")[0].silent);
    status.kernel_drops = 3;
    assert_eq!(
        record(status.clone(), at(t0, 90)).await,
        3,
        "drops after a restart"
    );
}

#[tokio::test]
async fn sqlite_passes_the_storage_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    storage_suite(StoreTarget::Sqlite(dir.path().join("collector.db"))).await;
    concurrent_batches(StoreTarget::Sqlite(dir.path().join("burst.db"))).await;
}

#[tokio::test]
async fn postgres_passes_the_storage_suite() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database().await;
    storage_suite(StoreTarget::Postgres(url)).await;
    concurrent_batches(StoreTarget::Postgres(server.database().await)).await;
}

#[tokio::test]
async fn postgres_events_live_in_daily_partitions_and_old_days_are_dropped() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database().await;
    let (store, closer, _feed) = open(&StoreTarget::Postgres(url.clone())).await;
    store
        .publish("sensor-1".into(), batch(1, "m-part", 0))
        .await
        .expect("publish");
    let (client, connection) = tokio_postgres::connect(url.as_str(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let partitions = || async {
        let rows = client
            .query(
                "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'events'::regclass ORDER BY 1",
                &[],
            )
            .await
            .expect("list partitions");
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let before = partitions().await;
    // Today and the two days ahead exist from the start.
    assert_eq!(before.len(), 3, "{before:?}");
    let today_rows: i64 = client
        .query_one(&format!("SELECT COUNT(*) FROM {}", before[0]), &[])
        .await
        .expect("count today's partition")
        .get(0);
    assert_eq!(today_rows, 2, "today's events are in today's partition");
    // Eight days on, today's partition is past retention and gone; later days were created.
    let in_8_days = Timestamp(Timestamp::now().unix_nanos() + 8 * DAY.as_nanos() as u64);
    store
        .maintain(in_8_days, Retention::default())
        .await
        .expect("maintain");
    let after = partitions().await;
    assert!(!after.contains(&before[0]), "{after:?}");
    assert!(after.len() >= 3, "{after:?}");
    drop(store);
    within("the store to close", closer.close()).await;
}

#[tokio::test]
async fn postgres_refuses_a_schema_from_a_newer_collector() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let url = server.database().await;
    let (client, connection) = tokio_postgres::connect(url.as_str(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE vigil_schema (version INTEGER NOT NULL);
             INSERT INTO vigil_schema VALUES (99);",
        )
        .await
        .expect("fake a newer schema");
    let (alerts, _) = broadcast::channel(1);
    let Err(err) = store::open(&StoreTarget::Postgres(url), alerts).await else {
        panic!("a database from the future was opened");
    };
    assert!(
        matches!(
            err,
            vigil_collector::StoreError::NewerSchema { found: 99, .. }
        ),
        "{err}"
    );
}
