//! `vigil-synthetic-sensor`: the sensor's real spool and shipper fed with synthetic events
//! instead of the kernel, so delivery tests can kill and restart a "sensor" process freely.
//!
//! Event `n` (0-based, from `--first`) carries `event.sequence = n`; every `--alert-every`th
//! event also raises an alert with the same sequence. Prints `spooled N` once all are handed
//! over, `spool bytes=.. batches=..` every 500 ms, and `all delivered` before exiting 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use vigil_proto::{Alert, Event, Level, RuleInfo, SensorStatus};
use vigil_sensor::config::{Fsync, SpoolConfig};
use vigil_sensor::ship::{self, CollectorTarget, Outgoing, ShipStats};
use vigil_sensor::spool::Spool;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    collector: SocketAddr,
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    #[arg(long)]
    spool_dir: PathBuf,
    #[arg(long, default_value_t = 256 << 20)]
    spool_max_bytes: u64,
    /// Events to produce (0: only deliver what the spool holds).
    #[arg(long, default_value_t = 0)]
    events: u64,
    #[arg(long, default_value_t = 0)]
    first: u64,
    #[arg(long, default_value_t = 100)]
    alert_every: u64,
    /// Events per second; 0 for as fast as the queue takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Send a heartbeat this often (seconds); 0 for none.
    #[arg(long, default_value_t = 0)]
    heartbeat_secs: u64,
    /// Kernel drops the heartbeats report.
    #[arg(long, default_value_t = 0)]
    kernel_drops: u64,
}

fn event(n: u64) -> Event {
    let mut event = Event::default();
    event.event.sequence = n;
    event.event.kind = "event".into();
    event.process.pid = 4242;
    event.process.executable = "/usr/bin/synthetic".into();
    event.process.args = vec!["synthetic".into(), format!("n{n}")];
    event.process.command_line = format!("synthetic n{n}");
    event
}

fn alert(n: u64) -> Alert {
    let mut event = event(n);
    event.event.kind = "alert".into();
    Alert {
        rule: RuleInfo {
            id: "synthetic".into(),
            title: "Synthetic alert".into(),
            level: Level::High,
            tags: Vec::new(),
            description: None,
            author: None,
        },
        event,
        dedup: None,
        correlation: None,
        response: None,
        loss: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    let spool = Spool::open(&SpoolConfig {
        dir: args.spool_dir.clone(),
        max_bytes: args.spool_max_bytes,
        fsync: Fsync::Batch,
    })?;
    // Reported in heartbeats; the producer counts its events in like kernel records.
    let (status_tx, status_rx) = tokio::sync::watch::channel(SensorStatus {
        host: "synthetic-host".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        rules_version: "synthetic".into(),
        hooks: vec!["exec:synthetic".into()],
        kernel_drops: args.kernel_drops,
        ..Default::default()
    });
    let target = CollectorTarget {
        address: args.collector,
        failover: Vec::new(),
        server_name: "localhost".into(),
        tls: vigil_proto::transport::TlsFiles {
            ca: args.ca.clone(),
            cert: args.cert.clone(),
            key: args.key.clone(),
        },
        heartbeat: (args.heartbeat_secs > 0).then(|| ship::Heartbeat {
            every: Duration::from_secs(args.heartbeat_secs),
            status: status_rx,
        }),
    };
    let stats = Arc::new(ShipStats::default());
    let (tx, rx) = tokio::sync::mpsc::channel(65_536);
    let reporter = {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                eprintln!(
                    "spool bytes={} batches={} acked={}",
                    stats.spool_bytes.load(Ordering::Relaxed),
                    stats.spool_batches.load(Ordering::Relaxed),
                    stats.batches_acked.load(Ordering::Relaxed)
                );
            }
        })
    };
    let producer = tokio::spawn(async move {
        let started = Instant::now();
        for i in 0..args.events {
            let n = args.first + i;
            if args.alert_every > 0 && n % args.alert_every == 0 {
                tx.send(Outgoing::Alert(Box::new(alert(n)))).await?;
            }
            tx.send(Outgoing::Event(Box::new(event(n)))).await?;
            status_tx.send_modify(|s| s.events_total = i + 1);
            if args.rate > 0 {
                let due = started + Duration::from_secs_f64((i + 1) as f64 / args.rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
        }
        anyhow::Ok(())
    });
    // "spooled" means on disk, which is what a test may then SIGKILL us for.
    let expected = args.events;
    let watcher = {
        let stats = stats.clone();
        tokio::spawn(async move {
            while stats.events_spooled.load(Ordering::Relaxed) < expected {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!("spooled {expected}");
        })
    };
    ship::run(target, spool, rx, stats, std::future::pending()).await?;
    producer.await??;
    reporter.abort();
    watcher.abort();
    eprintln!("all delivered");
    Ok(())
}
