//! 10 000 malformed frames from an authenticated sensor while another sensor keeps publishing:
//! the collector stays up, memory stays bounded, every rejection is counted.

mod support;

use std::sync::Arc;

use support::{batch, within, Peer, Pki, Running};
use vigil_proto::{read_frame, Reply, Request, MAX_FRAME_BYTES};

const FRAMES: usize = 10_000;
const CONCURRENCY: usize = 32;

/// Resident set of this process (collector and clients both live here), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/self/status"))
}

/// The i-th malformed frame: five kinds, in turn.
fn malformed(i: usize) -> Vec<u8> {
    let framed = |body: &[u8]| {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    };
    match i % 5 {
        // Truncated MessagePack: a map promising 3 entries, then one key.
        0 => framed(&[0x83, 0xa7, b'v', b'e', b'r']),
        // Deep nesting: 5 000 nested arrays.
        1 => {
            let mut body = vec![0x81, 0xa7];
            body.extend_from_slice(b"version");
            body.extend(std::iter::repeat_n(0x91, 5_000));
            body.push(1);
            framed(&body)
        }
        // A huge length prefix and a few bytes.
        2 => vec![0x7f, 0xff, 0xff, 0xff, 1, 2, 3],
        // A well-formed envelope of another protocol version.
        3 => framed(
            &rmp_serde::to_vec_named(&vigil_proto::Envelope {
                version: 999u16,
                body: Request::Stats,
            })
            .expect("encode"),
        ),
        // Random bytes (xorshift, seeded by i), with a correct length.
        _ => {
            let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let body: Vec<u8> = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // NB: never 0x80..=0x8f/0xde/0xdf first, which could start a valid map.
                    (x as u8) | 0xc1
                })
                .collect();
            framed(&body)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_frames_are_counted_and_a_good_sensor_keeps_delivering() {
    let pki = Pki::new();
    let collector = Running::start(&pki).await;
    let attacker = Arc::new(Peer::connect(collector.addr, &pki.files("sensor-1")).await);
    let good = Peer::connect(
        collector.addr,
        &pki.issue(vigil_proto::transport::Role::Sensor, "good"),
    )
    .await;
    // Warm up both paths before taking the baseline.
    assert_eq!(
        good.ask(&Request::Publish(batch(1, "flood-0", 1))).await,
        Reply::Ack { seq: 1 }
    );
    let rss_before = rss_kib();

    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let attacker = attacker.clone();
        senders.spawn(async move {
            for i in (worker..FRAMES).step_by(CONCURRENCY) {
                let (mut send, mut recv) = attacker.conn.open_bi().await.expect("open stream");
                // The collector may stop the stream before we finish: that is an answer too.
                let _ = send.write_all(&malformed(i)).await;
                let _ = send.finish();
                let _ = read_frame::<_, Reply>(&mut recv, MAX_FRAME_BYTES).await;
            }
        });
    }
    let flood_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let joiner = {
        let flood_done = flood_done.clone();
        tokio::spawn(async move {
            while let Some(done) = senders.join_next().await {
                done.expect("sender panicked");
            }
            flood_done.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let publisher = async {
        let mut seq = 2;
        while !flood_done.load(std::sync::atomic::Ordering::SeqCst) {
            let request = Request::Publish(batch(seq, "flood", 1));
            let reply = good.ask(&request).await;
            assert_eq!(
                reply,
                Reply::Ack { seq },
                "the good sensor was refused mid-flood"
            );
            seq += 1;
        }
        joiner.await.expect("joiner");
        seq - 2
    };
    let delivered = within("the flood", async {
        tokio::time::timeout(std::time::Duration::from_secs(120), publisher)
            .await
            .expect("the flood finished within 120 s")
    })
    .await;
    let rss_after = rss_kib();
    let stats = collector.stats.snapshot();
    eprintln!(
        "flood: {FRAMES} frames, {} rejected, {delivered} good batches delivered meanwhile, RSS {} -> {} MiB",
        stats.rejected_frames,
        rss_before / 1024,
        rss_after / 1024
    );
    assert_eq!(stats.rejected_frames, FRAMES as u64, "{stats:?}");
    assert!(
        delivered > 0,
        "no good batch was delivered during the flood"
    );
    assert_eq!(
        collector.count("SELECT COUNT(*) FROM batches WHERE sensor = 'good'"),
        delivered as i64 + 1
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Still serving after the flood.
    assert_eq!(
        good.ask(&Request::Publish(batch(1_000_000, "after", 0)))
            .await,
        Reply::Ack { seq: 1_000_000 }
    );
    collector.stop().await;
}
