//! Trust over real QUIC: every refusal issue 5 lists, enrollment with one-time tokens,
//! renewal, revocation of live connections, and rotation of the collector's certificate.

mod support;

use std::time::{Duration, SystemTime};

use support::{batch, within, Peer, Pki, Running};
use vigil_cli::{certs, enrollment};
use vigil_collector::{CollectorConfig, EnrollConfig};
use vigil_proto::transport::{self, Role, TlsFiles};
use vigil_proto::{read_frame, write_frame, AlertQuery, Reply, Request, Timestamp};

fn query() -> Request {
    Request::QueryAlerts(AlertQuery {
        since: Timestamp(0),
        limit: 10,
    })
}

/// True when the collector refuses `endpoint`'s connection, at the handshake or at the first
/// request. NB: in TLS 1.3 the client may finish its handshake before the server has checked
/// its certificate, so either is a refusal.
async fn refused(endpoint: &quinn::Endpoint, addr: std::net::SocketAddr) -> bool {
    let conn = match transport::connect(endpoint, addr, "localhost").await {
        Err(_) => return true,
        Ok(conn) => conn,
    };
    let outcome = within("the refusal", async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, &query()).await?;
        let _ = send.finish();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            read_frame::<_, Reply>(&mut recv, 1 << 20).await?,
        )
    })
    .await;
    !matches!(outcome, Ok(Some(Reply::Alerts(_))))
}

/// A collector that enrolls sensors, with a revocation list in the PKI directory.
async fn start_enrolling(pki: &Pki, validity_secs: u64) -> (Running, CollectorConfig) {
    let data = tempfile::tempdir().expect("temp dir for the database");
    let mut config = pki.collector_config(data.path().join("collector.db"));
    config.revoked = Some(enrollment::revoked_path(pki.dir()));
    config.enroll = Some(EnrollConfig {
        ca_key: certs::ca_paths(pki.dir()).key,
        tokens: enrollment::tokens_path(pki.dir()),
        cert_validity_secs: validity_secs,
    });
    (Running::start_with(config.clone(), data).await, config)
}

fn expect_refused(
    reply: Result<TlsFiles, vigil_sensor::enroll::EnrollError>,
    what: &str,
) -> String {
    match reply {
        Err(vigil_sensor::enroll::EnrollError::Refused(reason)) => reason,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let ca = pki.files("alice").ca;
    let anonymous =
        vigil_proto::trust::anonymous_endpoint(&ca, vigil_proto::ALPN).expect("endpoint");
    assert!(
        refused(&anonymous, collector.addr).await,
        "served without a certificate"
    );
    // Nor may it publish or query on the enrollment ALPN.
    let enroll = vigil_proto::trust::enroll_endpoint(&ca).expect("endpoint");
    assert!(
        refused(&enroll, collector.addr).await,
        "enroll ALPN served a query"
    );
    let stats = collector.stats.snapshot();
    assert!(stats.refused_connections >= 1, "{stats:?}");
    collector.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let other = Pki::new();
    let mut mallory = other.issue(Role::Operator, "mallory");
    mallory.ca = pki.files("alice").ca;
    let endpoint = transport::client_endpoint(&mallory).expect("endpoint");
    assert!(
        refused(&endpoint, collector.addr).await,
        "another CA's certificate was served"
    );
    collector.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let now = SystemTime::now();
    let day = Duration::from_secs(24 * 3600);
    certs::issue_for_period(
        pki.dir(),
        Role::Operator,
        "old",
        &[],
        false,
        now - 3 * day,
        now - day,
    )
    .expect("issue an expired certificate");
    let endpoint = transport::client_endpoint(&pki.files("old")).expect("endpoint");
    assert!(
        refused(&endpoint, collector.addr).await,
        "an expired certificate was served"
    );
    collector.stop().await;
}

#[tokio::test]
async fn a_sensor_certificate_may_not_make_operator_requests() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    for request in [query(), Request::Stats] {
        match sensor.ask(&request).await {
            Reply::Refused { reason } => assert!(reason.contains("sensor"), "{reason}"),
            other => panic!("a sensor got {other:?} for {request:?}"),
        }
    }
    let operator = Peer::connect(collector.addr, &pki.files("alice")).await;
    match operator.ask(&Request::Stats).await {
        Reply::Stats(stats) => assert_eq!(stats.refused_requests, 2, "{stats:?}"),
        other => panic!("an operator got {other:?} for stats"),
    }
    collector.stop().await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_and_its_live_connection_closed() {
    let pki = Pki::new();
    let (collector, _config) = start_enrolling(&pki, 3600).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let bystander = Peer::connect(collector.addr, &pki.files("alice")).await;
    assert_eq!(
        sensor
            .ask(&Request::Publish(batch(1, "before-revocation", 0)))
            .await,
        Reply::Ack { seq: 1 }
    );
    enrollment::revoke(pki.dir(), "sensor-1").expect("revoke");
    // The collector notices the changed file by itself (no SIGHUP needed) and closes the
    // live connection.
    let closed = within(
        "the revoked sensor's connection to close",
        sensor.conn.closed(),
    )
    .await;
    assert!(closed.to_string().contains("revoked"), "{closed}");
    let endpoint = transport::client_endpoint(&pki.files("sensor-1")).expect("endpoint");
    assert!(
        refused(&endpoint, collector.addr).await,
        "a revoked certificate was served"
    );
    assert!(
        matches!(bystander.ask(&query()).await, Reply::Alerts(_)),
        "bystander dropped"
    );
    collector.stop().await;
}

#[tokio::test]
async fn a_sensor_enrolls_once_per_token_and_renews_over_mtls() {
    let pki = Pki::new();
    let (collector, _config) = start_enrolling(&pki, 3600).await;
    let ca = pki.files("alice").ca;
    let state = tempfile::tempdir().expect("state dir");
    let token =
        enrollment::make_token(pki.dir(), "web-7", Duration::from_secs(600)).expect("token");

    let files = vigil_sensor::enroll::ensure_enrolled(
        &token,
        collector.addr,
        "localhost",
        &ca,
        state.path(),
    )
    .await
    .expect("enroll with a fresh token");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&files.key)
            .expect("key file")
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let sensor = Peer::connect(collector.addr, &files).await;
    assert_eq!(
        sensor.ask(&Request::Publish(batch(1, "enrolled", 0))).await,
        Reply::Ack { seq: 1 }
    );
    assert_eq!(
        collector.count("SELECT COUNT(*) FROM events WHERE sensor = 'web-7'"),
        2
    );

    // The same token again, from another host: refused.
    let other = tempfile::tempdir().expect("state dir");
    let again = vigil_sensor::enroll::ensure_enrolled(
        &token,
        collector.addr,
        "localhost",
        &ca,
        other.path(),
    )
    .await;
    let reason = expect_refused(again, "a reused token");
    assert!(reason.contains("already used"), "{reason}");

    // An expired token: refused.
    let stale = enrollment::make_token(pki.dir(), "web-8", Duration::ZERO).expect("token");
    let late = vigil_sensor::enroll::ensure_enrolled(
        &stale,
        collector.addr,
        "localhost",
        &ca,
        other.path(),
    )
    .await;
    let reason = expect_refused(late, "an expired token");
    assert!(reason.contains("expired"), "{reason}");

    // Renewal: a new certificate (new serial) for the same name and key.
    let before = std::fs::read(&files.cert).expect("cert");
    vigil_sensor::enroll::renew_once(&files, collector.addr, "localhost")
        .await
        .expect("renew");
    let after = std::fs::read(&files.cert).expect("cert");
    assert_ne!(before, after, "renewal wrote the same certificate");
    let renewed = Peer::connect(collector.addr, &files).await;
    assert_eq!(
        renewed.ask(&Request::Publish(batch(2, "renewed", 0))).await,
        Reply::Ack { seq: 2 }
    );
    let stats = collector.stats.snapshot();
    assert_eq!(
        (stats.certificates_issued, stats.refused_enrollments),
        (2, 2),
        "{stats:?}"
    );
    collector.stop().await;
}

#[tokio::test]
async fn the_collector_rotates_its_certificate_without_dropping_sensors() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let old = std::fs::read(pki.files("collector").cert).expect("cert");
    certs::issue(pki.dir(), Role::Collector, "collector", &[], true).expect("reissue");
    collector.reload.reload();
    // New connections get the new certificate; poll, since the reload is asynchronous.
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    loop {
        let fresh = Peer::connect(collector.addr, &pki.files("alice")).await;
        let presented = fresh
            .conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .expect("the collector's certificate");
        if !pem_contains(&old, presented[0].as_ref()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector kept its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The sensor connected before the rotation is still connected and delivering.
    assert_eq!(
        sensor
            .ask(&Request::Publish(batch(5, "after-rotation", 0)))
            .await,
        Reply::Ack { seq: 5 }
    );
    collector.stop().await;
}

fn pem_contains(pem: &[u8], der: &[u8]) -> bool {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .flatten()
        .any(|c| c.as_ref() == der)
}
