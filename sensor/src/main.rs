//! `vigil-sensor`: the host agent. Parses flags and config, sets up logging, runs the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vigil_sensor::config::{CollectorConfig, ExecHook, Output, SensorConfig};

/// Vigil host sensor: captures process activity with eBPF, matches Sigma rules, ships events
/// and alerts to a collector. Runs as root (or with CAP_BPF, CAP_PERFMON, CAP_SYS_RESOURCE).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// YAML config file (keys: rules, output, collector{address, failover, server_name, ca, cert, key},
    /// spool{dir, max_bytes, fsync: always|batch|never}, exec_hook).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Rule file or directory; repeatable. Replaces `rules` from the config file.
    #[arg(long = "rules")]
    rules: Vec<PathBuf>,
    /// Local output of events and alerts: none, or stdout as ECS JSON lines.
    #[arg(long, value_enum)]
    output: Option<Output>,
    /// Collector address (host:port). Requires --ca, --cert and --key.
    #[arg(long)]
    collector: Option<std::net::SocketAddr>,
    /// Another collector sharing the first one's PostgreSQL store, tried when the current one
    /// is unreachable (repeatable) [key: collector.failover]
    #[arg(long, value_name = "ADDR", requires = "collector")]
    failover: Vec<std::net::SocketAddr>,
    /// Name the collector's certificate must carry.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Deployment CA certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This sensor's certificate (PEM), issued by `vigil certs issue --sensor NAME`.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This sensor's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Run the rule set pushed to the collector, signed by this Ed25519 public key (64 hex
    /// digits, the collector's signing.pub). Replaces `collector.rules_public_key`.
    #[arg(long, value_name = "HEX", requires = "collector")]
    rules_public_key: Option<vigil_sensor::central_rules::RulesPublicKey>,
    /// Exec hook: auto (BTF tracepoint, else the plain tracepoint), btf, or tracepoint.
    #[arg(long, value_enum)]
    exec_hook: Option<ExecHook>,
    /// One-time enrollment token from `vigil certs token`: make a key in --state-dir, get a
    /// certificate from --collector (needs --ca), and renew it before it expires. Ignored once
    /// --state-dir holds a certificate.
    #[arg(long, value_name = "TOKEN", requires_all = ["state_dir", "collector", "ca"], conflicts_with_all = ["cert", "key"])]
    enroll: Option<String>,
    /// Where enrollment keeps this sensor's key (mode 0600) and certificate.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// Spool directory: batches wait here for the collector's ack (default /var/lib/vigil/spool).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Check the configuration (with its .conf.d drop-ins) and rules, then exit.
    #[arg(long)]
    check_config: bool,
    /// Load the kernel programs as the sensor would, print per event kind the hook in use and
    /// why better ones were refused, detach and exit.
    #[arg(long)]
    probe: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check this host and the configured collector: kernel, BTF, hooks, lockdown, cgroup v2,
    /// clock, connectivity and certificates, with a verdict per line. Exits non-zero on a FAIL.
    Doctor,
}

/// The merged config and the files it came from.
fn build_config(args: Args) -> anyhow::Result<(SensorConfig, Vec<PathBuf>)> {
    let (mut config, files) = match &args.config {
        Some(path) => {
            let layered = SensorConfig::load_layered(path)?;
            (layered.value, layered.files)
        }
        None => (SensorConfig::default(), Vec::new()),
    };
    if !args.rules.is_empty() {
        config.rules = args.rules;
    }
    if let Some(output) = args.output {
        config.output = output;
    }
    if let Some(dir) = args.spool_dir {
        config.spool.dir = dir;
    }
    if let Some(hook) = args.exec_hook {
        config.exec_hook = hook;
    }
    if let Some(address) = args.collector {
        let (cert, key) = match (&args.state_dir, args.cert, args.key) {
            (_, Some(cert), Some(key)) => (cert, key),
            (Some(dir), None, None) => {
                let files = vigil_sensor::enroll::state_files(dir, std::path::Path::new(""));
                (files.cert, files.key)
            }
            _ => anyhow::bail!("--collector needs --cert and --key, or --state-dir"),
        };
        let Some(ca) = args.ca else {
            anyhow::bail!("--collector needs --ca");
        };
        let from_file = config.collector.as_ref().and_then(|c| c.rules_public_key);
        config.collector = Some(CollectorConfig {
            address,
            failover: args.failover,
            heartbeat_secs: vigil_sensor::status::DEFAULT_HEARTBEAT_SECS,
            server_name: args.server_name,
            ca,
            cert,
            key,
            rules_public_key: args.rules_public_key.or(from_file),
        });
    }
    Ok((config, files))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = async {
        let args = Args::parse();
        let check_only = args.check_config;
        let doctor = matches!(args.command, Some(Command::Doctor));
        let probe = args.probe;
        let enroll = args.enroll.clone();
        let (config, files) = build_config(args)?;
        if doctor {
            return vigil_sensor::doctor::run(&config).await;
        }
        if probe {
            return vigil_sensor::probe::run(&config);
        }
        if let Some(collector) = config.collector.as_ref().filter(|_| !check_only) {
            enroll_and_renew(enroll.as_deref(), collector).await?;
        }
        if check_only {
            let rules = vigil_sensor::load_rules(&config)?;
            for file in &files {
                println!("read {}", file.display());
            }
            println!("configuration ok: {} rules", rules.len());
            return Ok(());
        }
        vigil_sensor::run(config, shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-sensor: {}", vigil_ops::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// With a token, enrolls unless already enrolled; then renews in the background whenever the
/// certificate is one that enrollment made (a hand-issued certificate is left alone).
async fn enroll_and_renew(token: Option<&str>, collector: &CollectorConfig) -> anyhow::Result<()> {
    use vigil_sensor::enroll;
    let state_dir = collector.cert.parent().unwrap_or(std::path::Path::new("."));
    let files = enroll::state_files(state_dir, &collector.ca);
    if files.cert != collector.cert {
        return Ok(());
    }
    if let Some(token) = token {
        enroll::ensure_enrolled(
            token,
            collector.address,
            &collector.server_name,
            &collector.ca,
            state_dir,
        )
        .await?;
    }
    tokio::spawn(enroll::renew_forever(
        files,
        collector.address,
        collector.server_name.clone(),
    ));
    Ok(())
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled: a SIGTERM that arrives while the sensor is still starting must
/// stop it cleanly (detaching its programs), not kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            // Without signal handlers we can only run until killed.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
