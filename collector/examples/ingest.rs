//! `cargo xtask bench` helper (F): the collector's ingest rate end to end (sensor-role clients
//! publishing batches over mutually authenticated QUIC to an in-process collector, each acked
//! after its SQLite commit) against publishing the same batches straight into a [`Store`].
//! Batches have the sensor's size and each sender has one in flight, as the sensor's telemetry
//! lane does. Two shapes: `SENSORS` senders at once (a collector serving several sensors; the
//! figure issue 7's goal is about) and one lane alone (latency bound: one commit per batch).
//!
//! `ingest BATCHES [SENSORS] [ROUNDS]` runs ROUNDS rounds of four runs of BATCHES batches each
//! (end to end and direct alternating, so both see the same machine), and prints one line per
//! run: `LABEL ROWS rows SECONDS s RATE rows/s`, labels `end-to-end`, `direct`,
//! `end-to-end-lane`, `direct-lane`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use anyhow::{bail, Context};
use support::{event, Peer, Pki, Running};
use tokio::sync::broadcast;
use vigil_collector::store::{self, Store, StoreTarget};
use vigil_proto::transport::Role;
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

/// `count` batches split between `senders`, each its own sequence numbers.
fn split(count: usize, senders: usize) -> Vec<Vec<Batch>> {
    (0..senders)
        .map(|s| batches(count / senders + usize::from(s < count % senders), 1))
        .collect()
}

fn report(label: &str, rows: usize, seconds: f64) {
    println!(
        "{label} {rows} rows {seconds:.3} s {:.1} rows/s",
        rows as f64 / seconds
    );
}

fn sensor_name(index: usize) -> String {
    format!("bench-sensor-{index}")
}

/// Publishes `count` batches over QUIC from `senders` sensors at once; returns the seconds.
async fn end_to_end(pki: &Pki, count: usize, senders: usize) -> anyhow::Result<f64> {
    let collector = Running::start(pki).await;
    let mut peers = Vec::with_capacity(senders);
    for s in 0..senders {
        peers.push(Peer::connect(collector.addr, &pki.files(&sensor_name(s))).await);
    }
    let work = split(count, senders);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (peer, work) in peers.into_iter().zip(work) {
        tasks.spawn(async move {
            for batch in work {
                let seq = batch.seq;
                match peer.ask(&Request::Publish(batch)).await {
                    Reply::Ack { seq: acked } if acked == seq => {}
                    other => bail!("batch {seq}: expected an ack, got {other:?}"),
                }
            }
            Ok(peer)
        });
    }
    let mut peers = Vec::new();
    while let Some(done) = tasks.join_next().await {
        peers.push(done.context("a sender panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows = count * BATCH_EVENTS;
    let stored = collector.count("SELECT COUNT(*) FROM events");
    if stored != rows as i64 {
        bail!("the collector stored {stored} events, expected {rows}");
    }
    drop(peers);
    collector.stop().await;
    Ok(seconds)
}

/// Publishes `count` batches straight into a fresh store from `senders` tasks at once.
async fn direct(count: usize, senders: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let (alerts, _) = broadcast::channel(16);
    let path = dir.path().join("direct.db");
    let (store, closer) = store::open(&StoreTarget::Sqlite(path), alerts).await?;
    let work = split(count, senders);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (s, work) in work.into_iter().enumerate() {
        let store: Store = store.clone();
        tasks.spawn(async move {
            for batch in work {
                store.publish(sensor_name(s), batch).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a publisher panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(store);
    closer.close().await;
    Ok(seconds)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = |n: usize, default: usize, what: &str| -> anyhow::Result<usize> {
        match std::env::args().nth(n) {
            Some(v) => v
                .parse()
                .with_context(|| format!("{what} must be a number")),
            None => Ok(default),
        }
    };
    let count = arg(1, 100, "BATCHES")?;
    let senders = arg(2, 4, "SENSORS")?.max(1);
    let rounds = arg(3, 1, "ROUNDS")?.max(1);
    let rows = count * BATCH_EVENTS;

    let pki = Pki::new();
    for s in 0..senders {
        pki.issue(Role::Sensor, &sensor_name(s));
    }
    for _ in 0..rounds {
        report("end-to-end", rows, end_to_end(&pki, count, senders).await?);
        report("direct", rows, direct(count, senders).await?);
        report("end-to-end-lane", rows, end_to_end(&pki, count, 1).await?);
        report("direct-lane", rows, direct(count, 1).await?);
    }
    Ok(())
}
