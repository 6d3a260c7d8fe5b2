//! Alert fan-out over real QUIC: live delivery, replay then live without gaps or duplicates,
//! a subscriber that falls behind, and shutdown with subscribers attached.

mod support;

use std::time::Duration;

use support::{batch, next_alert, within, Peer, Pki, Running};
use vigil_proto::{read_frame, Reply, Request, MAX_FRAME_BYTES};

#[tokio::test]
async fn a_live_subscriber_receives_new_alerts_as_they_are_stored() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    let (_send, mut live) = operator.subscribe(None).await;

    // A live-only subscription starts when the collector processes it, which the protocol
    // does not acknowledge: publish until the first alert comes through.
    let mut seq = 0;
    let first = within("the subscription to go live", async {
        loop {
            seq += 1;
            let reply = sensor
                .ask(&Request::Publish(batch(
                    seq,
                    &format!("marker-live-{seq}"),
                    1,
                )))
                .await;
            assert_eq!(reply, Reply::Ack { seq });
            if let Ok(alert) =
                tokio::time::timeout(Duration::from_millis(200), next_alert(&mut live)).await
            {
                break alert;
            }
        }
    })
    .await;
    assert_eq!(first.sensor, "sensor-1");
    assert!(
        first.alert.rule.title.starts_with("Test rule marker-live-"),
        "{first:?}"
    );

    // From now on every alert arrives, in order, once.
    let mut expected = first.id;
    // Alerts published while we waited may still be in flight: take them first.
    let stored_last = collector.count("SELECT MAX(id) FROM alerts");
    while expected < stored_last {
        let alert = next_alert(&mut live).await;
        expected += 1;
        assert_eq!(alert.id, expected);
    }
    for _ in 0..3 {
        seq += 1;
        let marker = format!("marker-live-{seq}");
        assert_eq!(
            sensor.ask(&Request::Publish(batch(seq, &marker, 1))).await,
            Reply::Ack { seq }
        );
        let alert = next_alert(&mut live).await;
        expected += 1;
        assert_eq!(alert.id, expected, "{alert:?}");
        assert_eq!(alert.alert.rule.title, format!("Test rule {marker}"));
    }
    collector.stop().await;
}

#[tokio::test]
async fn a_subscriber_with_after_id_gets_replay_then_live_without_duplicates() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    for seq in 1..=3 {
        assert_eq!(
            sensor
                .ask(&Request::Publish(batch(seq, "marker-replay", 1)))
                .await,
            Reply::Ack { seq }
        );
    }
    let (_send, mut sub) = operator.subscribe(Some(1)).await;
    assert_eq!(next_alert(&mut sub).await.id, 2);
    assert_eq!(next_alert(&mut sub).await.id, 3);
    for seq in 4..=5 {
        sensor
            .ask(&Request::Publish(batch(seq, "marker-replay", 1)))
            .await;
        assert_eq!(next_alert(&mut sub).await.id, seq as i64);
    }
    collector.stop().await;
}

#[tokio::test]
async fn subscribing_while_alerts_pour_in_loses_and_repeats_nothing() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    const BATCHES: u64 = 60;
    const PER_BATCH: usize = 5;
    let addr = collector.addr;
    let sensor_files = pki.files("sensor-1");
    let publisher = tokio::spawn(async move {
        let sensor = Peer::connect(addr, &sensor_files).await;
        for seq in 1..=BATCHES {
            let reply = sensor
                .ask(&Request::Publish(batch(seq, "marker-race", PER_BATCH)))
                .await;
            assert_eq!(reply, Reply::Ack { seq });
        }
    });
    // Subscribe somewhere in the middle of the stream of commits.
    within("some alerts to be stored", async {
        while collector.count("SELECT COUNT(*) FROM alerts") < 20 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (_send, mut sub) = operator.subscribe(Some(0)).await;
    let total = BATCHES as i64 * PER_BATCH as i64;
    for expected in 1..=total {
        assert_eq!(next_alert(&mut sub).await.id, expected);
    }
    within("the publisher", publisher)
        .await
        .expect("publisher panicked");
    collector.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_catches_up_from_the_store() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    assert_eq!(
        sensor
            .ask(&Request::Publish(batch(1, "marker-lag", 1)))
            .await,
        Reply::Ack { seq: 1 }
    );
    let (_send, mut sub) = operator.subscribe(Some(0)).await;
    assert_eq!(next_alert(&mut sub).await.id, 1);

    // More alerts than the stream's flow-control window and the live buffer together hold,
    // while the subscriber reads nothing. Ingest must not wait for it: every publish is acked.
    const PER_BATCH: usize = 1500;
    for seq in 2..=4 {
        let reply = sensor
            .ask(&Request::Publish(batch(seq, "marker-lag", PER_BATCH)))
            .await;
        assert_eq!(reply, Reply::Ack { seq });
    }
    for expected in 2..=(1 + 3 * PER_BATCH as i64) {
        assert_eq!(next_alert(&mut sub).await.id, expected);
    }
    collector.stop().await;
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_returns() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    let (_send, mut sub) = operator.subscribe(None).await;
    let (_send2, mut replayed) = operator.subscribe(Some(0)).await;
    collector.stop().await;
    for recv in [&mut sub, &mut replayed] {
        let end = within(
            "the subscription to end",
            read_frame::<_, Reply>(recv, MAX_FRAME_BYTES),
        )
        .await;
        assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    }
    let closed = within("the connection to close", operator.conn.closed()).await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(_)),
        "{closed}"
    );
}
