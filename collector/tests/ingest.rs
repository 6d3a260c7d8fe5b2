//! Ingest over real QUIC: storage and dedup, role enforcement, and malformed requests.

mod support;

use support::{batch, within, Peer, Pki, Running};
use vigil_proto::transport::Role;
use vigil_proto::{
    read_frame, AlertQuery, Loss, Reply, Request, Subscribe, Timestamp, MAX_FRAME_BYTES,
};

#[tokio::test]
async fn a_batch_is_stored_acked_and_a_resent_batch_is_not_stored_twice() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;

    let first = batch(7, "marker-ingest-1", 1);
    let reply = sensor.ask(&Request::Publish(first.clone())).await;
    assert_eq!(reply, Reply::Ack { seq: 7 });

    // Acked means committed: the rows are there now, under the certificate's name.
    assert_eq!(
        collector.count("SELECT COUNT(*) FROM events WHERE sensor = 'sensor-1'"),
        2
    );
    assert_eq!(
        collector.count("SELECT COUNT(*) FROM batches WHERE sensor = 'sensor-1' AND seq = 7"),
        1
    );
    let (rule_id, level, title, json): (String, String, String, String) = collector
        .db()
        .query_row(
            "SELECT rule_id, level, title, json FROM alerts WHERE sensor = 'sensor-1'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )
        .expect("one stored alert");
    assert_eq!((rule_id.as_str(), level.as_str()), ("test-rule", "high"));
    assert_eq!(title, "Test rule marker-ingest-1");
    assert!(json.contains("sh -c marker-ingest-1"), "{json}");
    let actions = collector.count(
        "SELECT COUNT(*) FROM events WHERE action = 'exec' AND json LIKE '%marker-ingest-1%'",
    );
    assert_eq!(actions, 2);

    // A resend (the sensor never saw the ack) is acked again and stored once.
    let reply = sensor.ask(&Request::Publish(first)).await;
    assert_eq!(reply, Reply::Ack { seq: 7 });
    assert_eq!(collector.count("SELECT COUNT(*) FROM events"), 2);
    assert_eq!(collector.count("SELECT COUNT(*) FROM alerts"), 1);

    // The same seq from another sensor is another batch.
    let other = Peer::connect(collector.addr, &pki.issue(Role::Sensor, "sensor-2")).await;
    let reply = other
        .ask(&Request::Publish(batch(7, "marker-ingest-2", 1)))
        .await;
    assert_eq!(reply, Reply::Ack { seq: 7 });
    assert_eq!(collector.count("SELECT COUNT(*) FROM alerts"), 2);
    assert_eq!(
        collector.count("SELECT COUNT(*) FROM alerts WHERE sensor = 'sensor-2'"),
        1
    );

    collector.stop().await;
}

#[tokio::test]
async fn loss_totals_are_kept_per_sensor_and_never_go_backwards() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let with_loss = |seq, events_dropped, corrupt_records| {
        let mut b = batch(seq, "marker-loss", 0);
        b.loss = Loss {
            events_dropped,
            alerts_dropped: 0,
            corrupt_records,
        };
        b
    };
    for (seq, events, corrupt) in [(1, 10, 1), (2, 25, 1), (1, 30, 2)] {
        let reply = sensor
            .ask(&Request::Publish(with_loss(seq, events, corrupt)))
            .await;
        assert_eq!(reply, Reply::Ack { seq });
    }
    // Totals travel on every batch; an older batch arriving late must not lower them, and a
    // duplicate (seq 1 again) still brings its newer totals.
    let stored_batch = with_loss(3, 5, 0);
    assert_eq!(
        sensor.ask(&Request::Publish(stored_batch)).await,
        Reply::Ack { seq: 3 }
    );
    let (events, corrupt): (i64, i64) = collector
        .db()
        .query_row(
            "SELECT events_dropped, corrupt_records FROM sensor_loss WHERE sensor = 'sensor-1'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("a loss row for sensor-1");
    assert_eq!((events, corrupt), (30, 2));
    collector.stop().await;
}

#[tokio::test]
async fn roles_decide_who_may_publish_and_who_may_read() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;

    let query = Request::QueryAlerts(AlertQuery {
        since: Timestamp(0),
        limit: 10,
    });
    for request in [
        Request::Subscribe(Subscribe { after_id: None }),
        query.clone(),
    ] {
        match sensor.ask(&request).await {
            Reply::Refused { reason } => assert!(reason.contains("sensor"), "{reason}"),
            other => panic!("a sensor was answered {other:?} to {request:?}"),
        }
    }
    match operator
        .ask(&Request::Publish(batch(1, "marker-roles", 1)))
        .await
    {
        Reply::Refused { reason } => assert!(reason.contains("operator"), "{reason}"),
        other => panic!("an operator's publish was answered {other:?}"),
    }
    assert_eq!(collector.count("SELECT COUNT(*) FROM alerts"), 0);
    assert_eq!(collector.count("SELECT COUNT(*) FROM batches"), 0);

    // Each may still do what its role allows, on the same connections.
    assert_eq!(
        sensor
            .ask(&Request::Publish(batch(1, "marker-roles", 1)))
            .await,
        Reply::Ack { seq: 1 }
    );
    match operator.ask(&query).await {
        Reply::Alerts(alerts) => {
            assert_eq!(alerts.len(), 1);
            assert_eq!(alerts[0].sensor, "sensor-1");
        }
        other => panic!("an operator's query was answered {other:?}"),
    }

    // A collector certificate is not a client role.
    let imposter = Peer::connect(collector.addr, &pki.files("collector")).await;
    assert!(matches!(
        imposter
            .ask(&Request::Publish(batch(2, "marker-roles", 1)))
            .await,
        Reply::Refused { .. }
    ));

    collector.stop().await;
}

/// Writes raw bytes as a request and returns whatever comes back: a reply, or the error.
async fn send_raw(peer: &Peer, bytes: &[u8]) -> Result<Option<Reply>, vigil_proto::FrameError> {
    within("an answer to raw bytes", async {
        let (mut send, mut recv) = peer.conn.open_bi().await.expect("open stream");
        // The collector may stop the stream before we finish writing: that is an answer too.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        read_frame::<_, Reply>(&mut recv, MAX_FRAME_BYTES).await
    })
    .await
}

#[tokio::test]
async fn malformed_requests_are_refused_and_the_collector_keeps_serving() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;

    let garbage: &[&[u8]] = &[
        // A length, then bytes that are not MessagePack.
        &[0, 0, 0, 3, 0xc1, 0xc1, 0xc1],
        // A length beyond any limit.
        &[0xff, 0xff, 0xff, 0xff, 0, 0],
        // A frame cut short.
        &[0, 0, 0, 100, 0x81],
        // Valid MessagePack of the wrong shape.
        &[0, 0, 0, 1, 0x2a],
    ];
    for bytes in garbage {
        for peer in [&sensor, &operator] {
            match send_raw(peer, bytes).await {
                Ok(Some(Reply::Refused { reason })) => {
                    assert!(reason.contains("malformed"), "{reason}")
                }
                other => panic!("{bytes:?} was answered {other:?}"),
            }
        }
    }
    // An operator's request is small: a large one is refused before it is buffered (the
    // refusal may arrive, or the stream be stopped while we are still writing).
    let mut big = 200_000u32.to_be_bytes().to_vec();
    big.extend(std::iter::repeat_n(0x90, 200_000));
    let reply = send_raw(&operator, &big).await;
    assert!(!matches!(reply, Ok(Some(Reply::Alerts(_)))), "{reply:?}");

    // Both connections still work, and so do new ones.
    assert_eq!(
        sensor
            .ask(&Request::Publish(batch(1, "marker-garbage", 1)))
            .await,
        Reply::Ack { seq: 1 }
    );
    let fresh = Peer::connect(collector.addr, &pki.files("alice")).await;
    for peer in [&operator, &fresh] {
        let reply = peer
            .ask(&Request::QueryAlerts(AlertQuery {
                since: Timestamp(0),
                limit: 10,
            }))
            .await;
        assert!(
            matches!(&reply, Reply::Alerts(a) if a.len() == 1),
            "{reply:?}"
        );
    }
    collector.stop().await;
}
