//! `cargo xtask bench` helper (F): the collector's ingest rate end to end (a sensor-role client
//! publishing batches over mutually authenticated QUIC to an in-process collector, each acked
//! after its SQLite commit) against inserting the same batches straight into a [`Store`]. Both
//! run one batch at a time, as the sensor's telemetry lane does, in batches of the sensor's
//! size. `ingest BATCHES` prints one line per path: `LABEL ROWS rows SECONDS s RATE rows/s`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use anyhow::{bail, Context};
use support::{event, Peer, Pki, Running};
use tokio::sync::broadcast;
use vigil_collector::store::{self, StoreTarget};
use vigil_proto::{Batch, Reply, Request};

/// The sensor's `MAX_BATCH_EVENTS`.
const BATCH_EVENTS: usize = 512;

fn batches(count: usize, first_seq: u64) -> Vec<Batch> {
    (0..count)
        .map(|b| Batch {
            seq: first_seq + b as u64,
            events: (0..BATCH_EVENTS)
                .map(|i| event("vigil-bench-ingest", (b * BATCH_EVENTS + i) as u64))
                .collect(),
            alerts: Vec::new(),
            loss: Default::default(),
        })
        .collect()
}

fn report(label: &str, rows: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{label} {rows} rows {seconds:.3} s {:.1} rows/s",
        rows as f64 / seconds
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("BATCHES must be a number")?,
        None => 100,
    };
    let rows = count * BATCH_EVENTS;

    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let sensor = Peer::connect(collector.addr, &pki.files("sensor-1")).await;
    let work = batches(count, 1);
    let started = Instant::now();
    for batch in work {
        let seq = batch.seq;
        match sensor.ask(&Request::Publish(batch)).await {
            Reply::Ack { seq: acked } if acked == seq => {}
            other => bail!("batch {seq}: expected an ack, got {other:?}"),
        }
    }
    report("end-to-end", rows, started);
    let stored = collector.count("SELECT COUNT(*) FROM events");
    if stored != rows as i64 {
        bail!("the collector stored {stored} events, expected {rows}");
    }
    collector.stop().await;

    let dir = tempfile::tempdir()?;
    let (alerts, _) = broadcast::channel(16);
    let path = dir.path().join("direct.db");
    let (store, closer) = store::open(&StoreTarget::Sqlite(path), alerts).await?;
    let work = batches(count, 1);
    let started = Instant::now();
    for batch in work {
        store.publish("sensor-1".into(), batch).await?;
    }
    report("direct", rows, started);
    drop(store);
    closer.close().await;
    Ok(())
}
