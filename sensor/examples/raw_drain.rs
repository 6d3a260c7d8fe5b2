//! `cargo xtask bench` helper (B's raw drain rate): the sensor's kernel programs and ring-buffer
//! consumer with a sink that only counts, so the bench can compare the full pipeline's lossless
//! rate with what the ring buffer alone carries. `raw_drain PREFIX` watches file events under
//! PREFIX only; prints `draining` once attached and, after SIGTERM or SIGINT,
//! `received=N lost=M` (open records taken off the ring, open records the kernel dropped).

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use vigil_common::kind;
use vigil_sensor::capture::{Capture, CaptureOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let prefix = std::env::args()
        .nth(1)
        .context("usage: raw_drain PREFIX (a watched path prefix, e.g. /var/lib/bench/)")?;
    let options = CaptureOptions {
        file_prefixes: Some(vec![prefix]),
        syscalls: true,
        ..Default::default()
    };
    let mut capture = Capture::start(&options).context("starting kernel capture")?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    println!("draining");
    let mut opens = 0u64;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            drained = capture.drain(4096, |bytes| {
                if bytes.get(..4) == Some(&kind::OPEN.to_ne_bytes()[..]) {
                    opens += 1;
                }
            }) => { drained.context("reading the ring buffer")?; }
        }
    }
    let lost = capture.counters().lost[kind::OPEN as usize];
    println!("received={opens} lost={lost}");
    Ok(())
}
