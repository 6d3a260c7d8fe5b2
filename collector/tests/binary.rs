//! The real `vigil-collector` binary: YAML config, refusing a certificate from another CA (and
//! saying so in its log), logging malformed requests, and a clean exit on SIGTERM.

mod support;

use std::net::SocketAddr;
use std::process::Command;

use support::process::Process;
use support::{Peer, Pki};
use vigil_cli::certs;
use vigil_proto::transport::{self, Role};
use vigil_proto::{AlertQuery, Reply, Request, Timestamp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_foreign_certificates_logs_why_and_stops_on_sigterm() {
    let pki = Pki::new();
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("collector.yaml");
    let files = pki.files("collector");
    std::fs::write(
        &config,
        format!(
            "# written by the test\nlisten: 127.0.0.1:0\ndatabase: {}\ntls:\n  ca: {}\n  cert: {}\n  key: {}\n",
            data.path().join("collector.db").display(),
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        ),
    )
    .expect("write config");
    let mut collector = Process::with_config(&config);
    let addr: SocketAddr = collector.listen_addr();

    // A certificate from another CA, with a role and name that would otherwise be accepted.
    let other_ca = tempfile::tempdir().expect("temp dir");
    certs::init_ca(other_ca.path(), false).expect("make other CA");
    certs::issue(other_ca.path(), Role::Operator, "mallory", &[], false).expect("issue");
    let mut mallory = certs::tls_files(other_ca.path(), "mallory");
    // Mallory trusts the real collector, so only the collector's check can stop her.
    mallory.ca = files.ca.clone();
    let endpoint = transport::client_endpoint(&mallory).expect("endpoint");
    let query = Request::QueryAlerts(AlertQuery {
        since: Timestamp(0),
        limit: 10,
    });
    // NB: in TLS 1.3 the client may finish its side of the handshake before the server has
    // checked its certificate, so the refusal can surface at connect or at the first request.
    let refused = match transport::connect(&endpoint, addr, "localhost").await {
        Err(_) => true,
        Ok(conn) => {
            let peer = Peer {
                endpoint: endpoint.clone(),
                conn,
            };
            let outcome = tokio::time::timeout(support::DEADLINE, async {
                let (mut send, mut recv) = peer.conn.open_bi().await?;
                vigil_proto::write_frame(&mut send, &query).await?;
                let _ = send.finish();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    vigil_proto::read_frame::<_, Reply>(&mut recv, 1 << 20).await?,
                )
            })
            .await
            .expect("the refusal within the deadline");
            outcome.is_err()
        }
    };
    assert!(refused, "a certificate from another CA was served");
    let line = collector.wait_for_line(&["refused connection from 127.0.0.1:", "UnknownIssuer"]);
    assert!(line.contains("WARN"), "{line}");

    // A malformed request is logged with who sent it; the real operator is still served.
    let alice = Peer::connect(addr, &pki.files("alice")).await;
    let (mut send, mut recv) = alice.conn.open_bi().await.expect("open stream");
    send.write_all(&[0, 0, 0, 2, 0xc1, 0xc1])
        .await
        .expect("write garbage");
    send.finish().expect("finish");
    let reply = vigil_proto::read_frame::<_, Reply>(&mut recv, 1 << 20).await;
    assert!(
        matches!(reply, Ok(Some(Reply::Refused { .. }))),
        "{reply:?}"
    );
    collector.wait_for_line(&["malformed request from alice (operator)"]);
    assert!(matches!(alice.ask(&query).await, Reply::Alerts(_)));

    let pid = collector.pid().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success(), "kill -TERM {pid} failed");
    let status = collector.wait_for_exit();
    assert!(
        status.success(),
        "collector exited with {status} after SIGTERM"
    );
    collector.wait_for_line(&["stopped"]);
}

#[test]
fn a_bad_config_is_one_line_naming_file_line_and_key() {
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("collector.yaml");
    std::fs::write(&config, "listen: 127.0.0.1:0\ndatabse: /tmp/x.db\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-collector"))
        .args(["--config", config.to_str().expect("utf-8 path")])
        .output()
        .expect("run vigil-collector");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:2:1: databse: Unknown field `databse`", config.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn a_bad_store_url_is_refused_without_showing_its_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-collector"))
        .args([
            "--store",
            "postgres://vigil:hunter2@db/vigil?sslmode=strict",
        ])
        .output()
        .expect("run vigil-collector");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--store: bad PostgreSQL URL")
            && stderr.contains("unknown sslmode \"strict\""),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
