//! A real PostgreSQL server for the tests: Debian's `postgresql` binaries, `initdb` into a temp
//! directory, `postgres` on a free loopback port, fast shutdown and removal on drop (also when
//! the test panics).
//!
//! Where the binaries are missing the test says so and skips, unless `VIGIL_REQUIRE_POSTGRES`
//! is set (`cargo xtask test` installs the package and sets it): then a missing server fails.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vigil_collector::store::PostgresUrl;

/// How long the server may take to accept connections (initdb is not counted).
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The role that a TLS server ([`PgServer::start_tls`]) lets in only with a client certificate.
pub const CERT_USER: &str = "vigil_cert";

/// The account the server runs as when the tests run as root (postgres refuses root).
const UNPRIVILEGED: &str = "nobody";

pub struct PgServer {
    child: Child,
    port: u16,
    /// Dropped after the server stopped (field order is irrelevant: `Drop` stops it first).
    dir: TempDir,
}

/// The directory holding `initdb` and `postgres`: `VIGIL_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian puts them there, off PATH).
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VIGIL_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// uid and gid of `name` from /etc/passwd.
fn account(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&name) {
            return None;
        }
        Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
    })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PgServer {
    /// Starts a server, or returns `None` after printing why it cannot run here.
    pub fn start() -> Option<PgServer> {
        Self::start_with(None)
    }

    /// A server with `ssl=on` presenting this certificate (PEM) and key, that takes TCP logins
    /// only over TLS (`hostssl` alone in pg_hba.conf): role [`CERT_USER`] with a client
    /// certificate `client_ca_pem` signed, others without; `None` as for [`Self::start`].
    pub fn start_tls(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> Option<PgServer> {
        Self::start_with(Some((cert_pem, key_pem, client_ca_pem)))
    }

    fn start_with(tls: Option<(&str, &str, &str)>) -> Option<PgServer> {
        let Some(bin) = bin_dir() else {
            let why = "PostgreSQL is not installed (Debian package `postgresql`; `cargo xtask test` installs it)";
            if std::env::var_os("VIGIL_REQUIRE_POSTGRES").is_some() {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("vigil-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        let data = dir.path().join("data");
        // As root, run as nobody: chown the directory it writes (initdb makes `data` itself).
        let user = if nix::unistd::geteuid().is_root() {
            let (uid, gid) = account(UNPRIVILEGED)
                .unwrap_or_else(|| panic!("no `{UNPRIVILEGED}` account to run PostgreSQL as"));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory");
            Some((uid, gid))
        } else {
            None
        };
        let command = |program: &str| {
            let mut command = Command::new(bin.join(program));
            if let Some((uid, gid)) = user {
                command.uid(uid).gid(gid);
            }
            // NB: HOME and the working directory must be readable by the server's user.
            command.current_dir(dir.path()).env("HOME", dir.path());
            command
        };
        let out = command("initdb")
            .args([
                "--auth=trust",
                "--username=vigil",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_owned(),
            "fsync=off".to_owned(),
            "max_connections=100".to_owned(),
        ];
        if let Some((cert, key, client_ca)) = tls {
            // NB: the server refuses a key file others can read, or one owned by someone else.
            for (name, pem) in [
                ("server.crt", cert),
                ("server.key", key),
                ("client-ca.crt", client_ca),
            ] {
                let path = data.join(name);
                std::fs::write(&path, pem).expect("write the server's TLS file");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the server's TLS file");
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .expect("chown the server's TLS file");
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                format!(
                    "local all all trust\n\
                     hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
                     hostssl all all 127.0.0.1/32 trust\n"
                ),
            )
            .expect("write pg_hba.conf");
            settings.extend([
                "ssl=on".to_owned(),
                "ssl_cert_file=server.crt".to_owned(),
                "ssl_key_file=server.key".to_owned(),
                "ssl_ca_file=client-ca.crt".to_owned(),
            ]);
        }
        let port = free_port();
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(settings.iter().flat_map(|setting| ["-c", setting]))
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("server.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start postgres");
        let server = PgServer { child, port, dir };
        server.wait_ready();
        Some(server)
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            assert!(
                started.elapsed() < START_DEADLINE,
                "PostgreSQL did not listen within {START_DEADLINE:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database on this server, as a URL a collector takes.
    pub async fn database(&self) -> PostgresUrl {
        let name = self.create_database().await;
        PostgresUrl::try_from(format!("postgres://vigil@127.0.0.1:{}/{name}", self.port))
            .expect("a valid URL")
    }

    /// An administrator's connection over the server's Unix socket (trusted also where TCP
    /// takes TLS only).
    pub async fn admin(&self, database: &str) -> tokio_postgres::Client {
        let mut admin = tokio_postgres::Config::new();
        admin
            .host_path(self.dir.path())
            .port(self.port)
            .user("vigil")
            .dbname(database);
        // The server accepts TCP a moment before it accepts logins: retry until it does.
        let started = Instant::now();
        loop {
            match admin.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return client;
                }
                Err(e) => {
                    assert!(
                        started.elapsed() < START_DEADLINE,
                        "cannot log in to PostgreSQL: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A new, empty database on this server; its name.
    pub async fn create_database(&self) -> String {
        self.create_database_owned_by("vigil").await
    }

    /// A new, empty database that `owner` (a role made if missing) owns; its name.
    pub async fn create_database_owned_by(&self, owner: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("vigil_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let admin = self.admin("postgres").await;
        if owner != "vigil" {
            // NB: a role is per server, and tests share the server: make it once.
            admin
                .batch_execute(&format!(
                    "DO $$ BEGIN CREATE ROLE {owner} LOGIN; \
                     EXCEPTION WHEN duplicate_object THEN NULL; END $$"
                ))
                .await
                .unwrap_or_else(|e| panic!("create role {owner}: {e}"));
        }
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        name
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends every backend and exits.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
