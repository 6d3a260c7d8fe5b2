//! TLS to the PostgreSQL store, against a real server started with `ssl=on`, a certificate this
//! test issues from its own CA, and TCP logins over TLS only (`hostssl` in pg_hba.conf).

mod support;

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::postgres::{PgServer, CERT_USER};
use support::{batch, within};
use tempfile::TempDir;
use tokio::sync::broadcast;
use vigil_collector::store::{self, PostgresUrl, Published, StoreTarget};
use vigil_proto::Timestamp;

/// In every URL, so every error can be checked for it.
const PASSWORD: &str = "hunter2";

/// The server (whose certificate names `localhost` only), the CA that signed it, a CA that did
/// not, and a client certificate for [`CERT_USER`] from the first.
struct Fixture {
    server: PgServer,
    ca: PathBuf,
    other_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    _files: TempDir,
}

/// A CA: its certificate (PEM) and what signs with it.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert.pem(), Issuer::new(params, key))
}

fn fixture() -> Option<Fixture> {
    let files = tempfile::tempdir().expect("temp dir");
    let (ca_pem, issuer) = ca("vigil test PostgreSQL CA");
    let (other_pem, _) = ca("some other CA");
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("sign the server's certificate");
    let client_key = KeyPair::generate().expect("client key");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    // The server maps a certificate to the role named by its CN.
    client_params
        .distinguished_name
        .push(DnType::CommonName, CERT_USER);
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .expect("sign the client's certificate");
    let server = PgServer::start_tls(&server_cert.pem(), &server_key.serialize_pem(), &ca_pem)?;
    let write = |name: &str, pem: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, pem).expect("write a CA file");
        path
    };
    Some(Fixture {
        ca: write("ca.pem", &ca_pem),
        other_ca: write("other-ca.pem", &other_pem),
        client_cert: write("client.pem", &client_cert.pem()),
        client_key: write("client-key.pem", &client_key.serialize_pem()),
        server,
        _files: files,
    })
}

impl Fixture {
    /// A fresh database, reached at `host` (which always means 127.0.0.1, where the server
    /// listens: `hostaddr`), with `query` appended; the URL and the database's name.
    async fn url(&self, host: &str, query: &str) -> (PostgresUrl, String) {
        self.url_as("vigil", host, query).await
    }

    /// As [`Self::url`], logging in as `user` (who owns the database).
    async fn url_as(&self, user: &str, host: &str, query: &str) -> (PostgresUrl, String) {
        let name = self.server.create_database_owned_by(user).await;
        let port = self.server.port();
        let url = PostgresUrl::try_from(format!(
            "postgres://{user}:{PASSWORD}@{host}:{port}/{name}?hostaddr=127.0.0.1&{query}"
        ))
        .unwrap_or_else(|e| panic!("{query}: {e}"));
        (url, name)
    }

    /// How many sessions on `database` are encrypted, and how many there are.
    async fn sessions(&self, database: &str) -> (i64, i64) {
        let row = self
            .server
            .admin("postgres")
            .await
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE s.ssl), COUNT(*)
                 FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = $1",
                &[&database],
            )
            .await
            .expect("read pg_stat_ssl");
        (row.get(0), row.get(1))
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Opens the store at `url`, stores a batch and reads it back; proves every session is TLS.
async fn works(fixture: &Fixture, (url, database): (PostgresUrl, String)) {
    let (alerts, _feed) = broadcast::channel(16);
    let target = StoreTarget::Postgres(url.clone());
    let (store, closer) = within("opening the store", store::open(&target, alerts))
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    let published = store
        .publish("sensor-tls".into(), batch(1, "m-tls", 1))
        .await
        .expect("publish over TLS");
    assert!(
        matches!(&published, Published::Stored { alerts } if alerts.len() == 1),
        "{published:?}"
    );
    let events = store
        .events_since(Timestamp(0), 0, 10)
        .await
        .expect("read back over TLS");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events
        .iter()
        .all(|e| e.event.process.command_line == "sh -c m-tls"));
    let (encrypted, sessions) = fixture.sessions(&database).await;
    assert!(
        sessions >= 4,
        "the collector's pool is connected: {sessions}"
    );
    assert_eq!(encrypted, sessions, "every session of {url} uses TLS");
    drop(store);
    closer.close().await;
}

/// The error opening the store at `url` (which must fail), checked to keep the password out.
async fn fails((url, _): (PostgresUrl, String)) -> String {
    let (alerts, _feed) = broadcast::channel(16);
    let target = StoreTarget::Postgres(url.clone());
    let Err(err) = within("opening the store", store::open(&target, alerts)).await else {
        panic!("{url} was accepted");
    };
    let text = err.to_string();
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    eprintln!("refused as expected: {text}");
    text
}

#[tokio::test]
async fn verify_full_stores_and_reads_back_over_tls() {
    let Some(fixture) = fixture() else {
        return;
    };
    let query = format!("sslmode=verify-full&sslrootcert={}", path(&fixture.ca));
    works(&fixture, fixture.url("localhost", &query).await).await;
}

#[tokio::test]
async fn each_sslmode_checks_what_libpq_checks() {
    let Some(fixture) = fixture() else {
        return;
    };
    let (ca, other_ca) = (path(&fixture.ca), path(&fixture.other_ca));

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca (the
    // chain only) accepts.
    let err = fails(
        fixture
            .url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            )
            .await,
    )
    .await;
    assert!(
        err.contains("does not match the host name") && err.contains("127.0.0.1"),
        "{err}"
    );
    works(
        &fixture,
        fixture
            .url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))
            .await,
    )
    .await;

    // A CA that did not sign the server's certificate.
    for mode in ["verify-full", "verify-ca", "require"] {
        let err = fails(
            fixture
                .url(
                    "localhost",
                    &format!("sslmode={mode}&sslrootcert={other_ca}"),
                )
                .await,
        )
        .await;
        assert!(
            err.contains("not signed by the CA in sslrootcert"),
            "{mode}: {err}"
        );
    }

    // require without a root certificate: encrypted, not verified (libpq's meaning).
    works(&fixture, fixture.url("127.0.0.1", "sslmode=require").await).await;
    // No sslmode is libpq's prefer: TLS when the server offers it.
    works(&fixture, fixture.url("127.0.0.1", "").await).await;

    // disable against a server that takes TCP logins over TLS only: its refusal, passed on.
    let err = fails(fixture.url("127.0.0.1", "sslmode=disable").await).await;
    assert!(
        err.contains("no pg_hba.conf entry") && err.contains("no encryption"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_the_server_asks() {
    let Some(fixture) = fixture() else {
        return;
    };
    let verified = format!("sslmode=verify-full&sslrootcert={}", path(&fixture.ca));
    let with_cert = format!(
        "{verified}&sslcert={}&sslkey={}",
        path(&fixture.client_cert),
        path(&fixture.client_key)
    );
    works(
        &fixture,
        fixture.url_as(CERT_USER, "localhost", &with_cert).await,
    )
    .await;
    let err = fails(fixture.url_as(CERT_USER, "localhost", &verified).await).await;
    assert!(err.contains("requires a valid client certificate"), "{err}");
}
