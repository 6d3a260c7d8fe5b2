//! `vigil-collector`: reads its config, sets up logging, and serves until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use vigil_collector::CollectorConfig;
use vigil_ops::metrics_endpoint::MetricsConfig;

/// Vigil's central server: receives events and alerts from sensors over mutually authenticated
/// QUIC, stores them in SQLite (or PostgreSQL), and serves alerts to operators (`vigil tail`, `vigil alerts`).
///
/// Settings come from the YAML file given with --config; each flag overrides the file key named
/// in its help. Keys left out keep the defaults shown.
#[derive(Debug, Parser)]
#[command(name = "vigil-collector", version)]
struct Args {
    /// YAML config file (e.g. /etc/vigil/collector.yaml)
    #[arg(long, short = 'c', value_name = "FILE", env = "VIGIL_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on [key: listen] [default: 127.0.0.1:7443]
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// SQLite database file, created if missing [key: database] [default: /var/lib/vigil/collector.db]
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
    /// PostgreSQL URL to store events and alerts in instead of SQLite, e.g.
    /// postgres://vigil@db.example.org/vigil?sslmode=verify-full&sslrootcert=/etc/vigil/pg-ca.pem
    /// [key: store]
    // NB: parsed after clap, whose error for a bad value would print it, password and all.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// CA certificate that client certificates must chain to [key: tls.ca] [default: /etc/vigil/ca.pem]
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The collector's certificate [key: tls.cert] [default: /etc/vigil/collector.pem]
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The collector's private key [key: tls.key] [default: /etc/vigil/collector-key.pem]
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Log filter, in tracing's EnvFilter syntax (e.g. `info`, `vigil_collector=debug`)
    #[arg(long, value_name = "FILTER", env = "VIGIL_LOG", default_value = "info")]
    log: String,
}

impl Args {
    fn into_config(self) -> anyhow::Result<(CollectorConfig, Option<MetricsConfig>)> {
        let Args {
            config,
            listen,
            database,
            store,
            tls_ca,
            tls_cert,
            tls_key,
            log: _,
        } = self;
        let (mut cfg, metrics) = match config {
            Some(path) => CollectorConfig::from_yaml_file_with_metrics(&path)?,
            None => (CollectorConfig::default(), None),
        };
        cfg.listen = listen.unwrap_or(cfg.listen);
        cfg.database = database.unwrap_or(cfg.database);
        if let Some(text) = store {
            cfg.store = Some(
                vigil_collector::store::PostgresUrl::try_from(text)
                    .map_err(|e| anyhow::anyhow!("--store: {e}"))?,
            );
        }
        cfg.tls.ca = tls_ca.unwrap_or(cfg.tls.ca);
        cfg.tls.cert = tls_cert.unwrap_or(cfg.tls.cert);
        cfg.tls.key = tls_key.unwrap_or(cfg.tls.key);
        Ok((cfg, metrics))
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match start(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-collector: {}", vigil_ops::error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(args: Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("bad --log filter {:?}", args.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let (config, metrics_config) = args.into_config()?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot listen for signals")?;
        let metrics = vigil_collector::metrics::start_endpoint(metrics_config.as_ref()).await?;
        let collector = vigil_collector::Collector::bind(&config).await?;
        // SIGHUP: reload certificates and the revocation list (files are also watched).
        let reload = collector.reload_handle();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload.reload();
            }
        });
        collector.run(shutdown).await?;
        if let Some(stop) = metrics {
            stop.stop().await;
        }
        Ok(())
    })
}

/// Completes on the first SIGTERM (systemd stop) or SIGINT (Ctrl-C).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
