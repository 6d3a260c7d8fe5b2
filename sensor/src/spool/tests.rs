use super::*;

fn config(dir: &Path, max_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        max_bytes,
        fsync: Fsync::Never,
    }
}

fn event(sequence: u64) -> Event {
    let mut event = Event::default();
    event.event.sequence = sequence;
    event.process.executable = "/usr/bin/true".into();
    event
}

fn alert(sequence: u64) -> Alert {
    Alert {
        rule: vigil_proto::RuleInfo {
            id: "r".into(),
            title: "t".into(),
            level: vigil_proto::Level::High,
            tags: Vec::new(),
            description: None,
            author: None,
        },
        event: event(sequence),
        dedup: None,
        correlation: None,
        response: None,
        loss: None,
    }
}

fn spooled(outcome: Appended) -> u64 {
    match outcome {
        Appended::Spooled { seq } => seq,
        Appended::Dropped => panic!("the batch was dropped"),
    }
}

fn drain(spool: &mut Spool, class: Class) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(p) = spool.next_unsent(class) {
        spool.ack(class, p.batch.seq);
        out.push(p.batch);
    }
    out
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read spool dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| segment_name(p).is_some())
        .collect();
    files.sort();
    files
}

#[test]
fn unacked_batches_survive_a_restart_and_sequence_numbers_keep_growing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool = Spool::open(&config(dir.path(), 1 << 20)).expect("open spool");
    let first = spooled(
        spool
            .append(Class::Telemetry, vec![event(1), event(2)], vec![])
            .expect("append"),
    );
    let alert_seq = spooled(
        spool
            .append(Class::Alerts, vec![], vec![alert(3)])
            .expect("append"),
    );
    assert!(alert_seq > first);
    // Handed out but never acked: a crash now must resend it.
    assert!(spool.next_unsent(Class::Telemetry).is_some());
    drop(spool);

    let mut spool = Spool::open(&config(dir.path(), 1 << 20)).expect("reopen spool");
    assert_eq!(spool.pending(), 2);
    let alerts = drain(&mut spool, Class::Alerts);
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].seq, alerts[0].alerts[0].event.event.sequence),
        (alert_seq, 3)
    );
    let events = drain(&mut spool, Class::Telemetry);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, first);
    assert_eq!(events[0].events.len(), 2);
    let next = spooled(
        spool
            .append(Class::Telemetry, vec![event(4)], vec![])
            .expect("append"),
    );
    assert!(next > alert_seq, "{next} must exceed {alert_seq}");
    assert_eq!(spool.loss(), Loss::default());
}

#[test]
fn acked_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Segments of 64 KiB: 200 batches span several.
    let mut spool = Spool::open(&config(dir.path(), 1 << 20)).expect("open spool");
    for i in 0..200 {
        spool
            .append(
                Class::Telemetry,
                (0..10).map(|j| event(i * 10 + j)).collect(),
                vec![],
            )
            .expect("append");
    }
    assert!(segment_files(dir.path()).len() > 2, "rotation happened");
    let batches = drain(&mut spool, Class::Telemetry);
    let sequences: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.events.iter().map(|e| e.event.sequence))
        .collect();
    assert_eq!(sequences, (0..2000).collect::<Vec<_>>());
    assert!(
        segment_files(dir.path()).is_empty(),
        "{:?}",
        segment_files(dir.path())
    );
    assert_eq!((spool.bytes(), spool.pending()), (0, 0));
}

#[test]
fn a_full_spool_drops_oldest_telemetry_before_any_alert_and_counts_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool = Spool::open(&config(dir.path(), 256 * 1024)).expect("open spool");
    let mut alert_seqs = Vec::new();
    for i in 0..40u64 {
        alert_seqs.push(spooled(
            spool
                .append(Class::Alerts, vec![], vec![alert(i)])
                .expect("append alert"),
        ));
    }
    let mut appended_events = 0u64;
    for i in 0..400u64 {
        let batch = (0..20).map(|j| event(i * 20 + j)).collect();
        if let Appended::Spooled { .. } = spool
            .append(Class::Telemetry, batch, vec![])
            .expect("append")
        {
            appended_events += 20;
        }
        assert!(
            spool.bytes() <= 256 * 1024,
            "over the limit: {}",
            spool.bytes()
        );
    }
    let loss = spool.loss();
    assert_eq!(
        loss.alerts_dropped, 0,
        "an alert was dropped while telemetry remained"
    );
    assert!(loss.events_dropped > 0, "the spool never filled up");
    let alerts = drain(&mut spool, Class::Alerts);
    assert_eq!(alerts.iter().map(|b| b.seq).collect::<Vec<_>>(), alert_seqs);
    let kept: u64 = drain(&mut spool, Class::Telemetry)
        .iter()
        .map(|b| b.events.len() as u64)
        .sum();
    // Every event is either still here or counted as dropped.
    assert_eq!(kept + loss.events_dropped, appended_events);
    // The newest telemetry survived, the oldest went.
    assert!(kept > 0);

    // With telemetry gone, alerts make room for newer alerts, and telemetry never displaces
    // an alert.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool = Spool::open(&config(dir.path(), 128 * 1024)).expect("open spool");
    let mut i = 0;
    while spool.loss().alerts_dropped == 0 {
        spool
            .append(Class::Alerts, vec![], vec![alert(i)])
            .expect("append alert");
        i += 1;
        assert!(i < 100_000, "alerts were never dropped");
    }
    let before = spool.pending();
    let outcome = spool
        .append(Class::Telemetry, (0..2000).map(event).collect(), vec![])
        .expect("append");
    if outcome == Appended::Dropped {
        assert_eq!(spool.loss().events_dropped, 2000);
        assert_eq!(spool.pending(), before);
    }
    let persisted = spool.loss();
    drop(spool);
    let spool = Spool::open(&config(dir.path(), 128 * 1024)).expect("reopen");
    assert_eq!(spool.loss(), persisted, "loss totals survive a restart");
}

#[test]
fn flipped_bytes_and_a_torn_tail_lose_only_the_damaged_records_counted_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool = Spool::open(&config(dir.path(), 1 << 20)).expect("open spool");
    for i in 0..10u64 {
        spool
            .append(Class::Telemetry, vec![event(i)], vec![])
            .expect("append");
    }
    drop(spool);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    let mut bytes = fs::read(&files[0]).expect("read segment");
    let record_len = bytes.len() / 10;
    // Flip a byte in the bodies of records 2 and 5, and tear record 9 in half.
    bytes[2 * record_len + record::HEADER_BYTES + 3] ^= 0x20;
    bytes[5 * record_len + record::HEADER_BYTES + 7] ^= 0x01;
    bytes.truncate(9 * record_len + record_len / 2);
    fs::write(&files[0], &bytes).expect("damage segment");

    for _ in 0..2 {
        let mut spool = Spool::open(&config(dir.path(), 1 << 20)).expect("open damaged spool");
        assert_eq!(
            spool.loss().corrupt_records,
            3,
            "counted once, not per open"
        );
        assert_eq!(spool.pending(), 7);
        let mut sequences = Vec::new();
        while let Some(p) = spool.next_unsent(Class::Telemetry) {
            sequences.extend(p.batch.events.iter().map(|e| e.event.sequence));
        }
        assert_eq!(sequences, [0, 1, 3, 4, 6, 7, 8]);
    }
}

/// A measurement, not a check: `cargo test -p vigil-sensor --lib spool_write_rate -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; prints events/s and bytes per event"]
fn spool_write_rate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut spool = Spool::open(&config(dir.path(), 1 << 30)).expect("open spool");
    let batches = 200u64;
    let started = Instant::now();
    for b in 0..batches {
        let events = (0..512).map(|i| {
            let mut e = event(b * 512 + i);
            e.process.args = vec!["sh".into(), "-c".into(), format!("echo {i}")];
            e.process.command_line = format!("sh -c echo {i}");
            e
        });
        spool
            .append(Class::Telemetry, events.collect(), vec![])
            .expect("append");
    }
    spool.sync().expect("sync");
    let n = batches * 512;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "spool: {:.0} events/s, {:.0} bytes/event on disk (fsync: never)",
        n as f64 / secs,
        spool.bytes() as f64 / n as f64
    );
}
