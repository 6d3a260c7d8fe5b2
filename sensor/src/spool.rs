//! The bounded on-disk spool: every batch is written here before it is sent, and deleted once
//! the collector acks it, so a collector outage or a sensor crash (even SIGKILL) loses nothing
//! that fits in the spool.
//!
//! Layout of the directory:
//! - `alerts-<first seq>.seg`, `events-<first seq>.seg`: append-only segment files of records
//!   (see [`record`]), one class per file so that telemetry can be dropped a segment at a time
//!   without touching alerts, and alerts can be sent from their own queue first;
//! - `state`: JSON with the sequence ceiling and the running loss totals.
//!
//! Sequence numbers are handed out from blocks: the ceiling of the current block is persisted
//! before any number in it is used, so a restart (even after SIGKILL) continues above every
//! number the previous run may have sent. A restart never appends to an old segment; old
//! segments are only read and then deleted once every record in them is acked.
//!
//! All I/O here is blocking and short (one write, sometimes an fsync); the shipper calls it
//! from its tasks while holding the spool's lock.

// Public so the fuzz targets (fuzz/) can reach `record::scan`.
pub mod record;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vigil_proto::{Alert, Batch, Event, Loss};

use crate::config::{Fsync, SpoolConfig};
use record::RecordMeta;

/// Sequence numbers reserved per write of the state file.
const SEQ_BLOCK: u64 = 1 << 16;
/// With `fsync: batch`, data reaches the disk at most this long after it was appended.
pub const BATCH_SYNC_INTERVAL: Duration = Duration::from_millis(200);
const STATE_FILE: &str = "state";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The directory or a file in it could not be created, read or written.
    #[error("spool {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A batch could not be encoded (a bug, not outside input).
    #[error("cannot encode a batch for the spool: {0}")]
    Encode(#[source] vigil_proto::FrameError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which queue a batch belongs to. Alerts are sent first and dropped last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Alerts = 0,
    Telemetry = 1,
}

impl Class {
    fn prefix(self) -> &'static str {
        match self {
            Class::Alerts => "alerts",
            Class::Telemetry => "events",
        }
    }
}

/// What became of an appended batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    Spooled {
        seq: u64,
    },
    /// It could not fit even after dropping all it may drop; it is counted as lost.
    Dropped,
}

/// A batch read back from the spool, to send until acked.
#[derive(Debug)]
pub struct Pending {
    pub class: Class,
    pub batch: Batch,
}

/// A batch read back from the spool as its record body: a versioned MessagePack
/// [`Batch`] with its checksum verified (see [`record`]).
#[derive(Debug)]
pub struct RawPending {
    pub class: Class,
    pub seq: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    seq_ceiling: u64,
    loss: Loss,
}

struct Segment {
    path: PathBuf,
    bytes: u64,
    records: Vec<RecordMeta>,
    /// Records handed out for sending (a prefix).
    sent: usize,
    /// Records acked or skipped (a prefix; the shipper acks in the order it was handed them).
    acked: usize,
    file: Option<File>,
}

#[derive(Default)]
struct Lane {
    segments: VecDeque<Segment>,
    /// Appends go to the last segment while this is true; a new run starts a new one.
    writing: bool,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    fsync: Fsync,
    lanes: [Lane; 2],
    next_seq: u64,
    seq_ceiling: u64,
    loss: Loss,
    bytes: u64,
    unsynced: bool,
    last_sync: Instant,
}

impl Spool {
    /// Opens (creating if needed) the spool directory and takes stock of what a previous run
    /// left: intact records become pending again, damaged ones are counted and cut out.
    pub fn open(config: &SpoolConfig) -> Result<Spool, SpoolError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let state = read_state(&dir);
        let mut spool = Spool {
            max_bytes: config.max_bytes,
            // Small enough that dropping one segment frees only part of the spool, large
            // enough that rotation is rare.
            segment_bytes: (config.max_bytes / 16).clamp(64 * 1024, 16 * 1024 * 1024),
            fsync: config.fsync,
            lanes: [Lane::default(), Lane::default()],
            next_seq: 0,
            seq_ceiling: 0,
            loss: state.loss,
            bytes: 0,
            unsynced: false,
            last_sync: Instant::now(),
            dir,
        };
        let mut corrupt = 0;
        let mut files: Vec<(Class, u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&spool.dir).map_err(io(&spool.dir))? {
            let path = entry.map_err(io(&spool.dir))?.path();
            if let Some((class, id)) = segment_name(&path) {
                files.push((class, id, path));
            }
        }
        files.sort_by_key(|(_, id, _)| *id);
        let mut max_seq = 0;
        let mut damaged = Vec::new();
        for (class, _, path) in files {
            let bytes = fs::read(&path).map_err(io(&path))?;
            let scan = record::scan(&bytes);
            corrupt += scan.corrupt;
            if scan.records.is_empty() {
                fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            max_seq = scan.records.iter().map(|r| r.seq).fold(max_seq, u64::max);
            let len = bytes.len() as u64;
            if scan.corrupt > 0 {
                damaged.push((path.clone(), bytes));
            }
            spool.bytes += len;
            spool.lanes[class as usize].segments.push_back(Segment {
                path,
                bytes: len,
                records: scan.records,
                sent: 0,
                acked: 0,
                file: None,
            });
        }
        spool.next_seq = state
            .seq_ceiling
            .max(max_seq.saturating_add(1))
            .max(crate::ship::first_sequence());
        spool.seq_ceiling = spool.next_seq;
        if corrupt > 0 {
            tracing::warn!(corrupt, dir = %spool.dir.display(), "damaged spool records skipped");
            spool.loss.corrupt_records += corrupt;
            // NB: count first, then cut the damage out: a crash in between counts it twice,
            // the other order could lose the count.
            spool.write_state()?;
            for (path, bytes) in damaged {
                spool.rewrite_clean(&path, &bytes)?;
            }
        }
        Ok(spool)
    }

    /// Spools a batch of one class under a new sequence number, making room first by dropping
    /// the oldest telemetry (and, for an incoming alert with no telemetry left, the oldest
    /// alerts).
    pub fn append(
        &mut self,
        class: Class,
        events: Vec<Event>,
        alerts: Vec<Alert>,
    ) -> Result<Appended, SpoolError> {
        let (n_events, n_alerts) = (events.len() as u32, alerts.len() as u32);
        let seq = self.take_seq()?;
        let batch = Batch {
            seq,
            events,
            alerts,
            loss: Loss::default(),
        };
        let body = vigil_proto::encode(&batch).map_err(SpoolError::Encode)?;
        let bytes = record::encode(seq, n_events, n_alerts, &body);
        if !self.make_room(class, bytes.len() as u64)? {
            self.count_dropped(u64::from(n_events), u64::from(n_alerts))?;
            return Ok(Appended::Dropped);
        }
        let lane = class as usize;
        let rotate = match self.lanes[lane].segments.back() {
            Some(last) if self.lanes[lane].writing => {
                last.bytes + bytes.len() as u64 > self.segment_bytes
            }
            _ => true,
        };
        if rotate {
            self.start_segment(class, seq)?;
        }
        let Some(segment) = self.lanes[lane].segments.back_mut() else {
            unreachable!("start_segment pushed a segment");
        };
        let file = open_segment(segment)?;
        file.write_all(&bytes).map_err(io(&segment.path))?;
        segment.records.push(RecordMeta {
            seq,
            events: n_events,
            alerts: n_alerts,
            offset: segment.bytes,
            body_len: (bytes.len() - record::HEADER_BYTES) as u32,
        });
        segment.bytes += bytes.len() as u64;
        self.bytes += bytes.len() as u64;
        self.unsynced = true;
        match self.fsync {
            Fsync::Always => self.sync()?,
            // The caller flushes when `sync_due` says so, outside its lock on the spool.
            Fsync::Batch | Fsync::Never => {}
        }
        Ok(Appended::Spooled { seq })
    }

    /// The oldest batch of `class` not yet handed out, read back and checked. A record that
    /// fails its check now (the disk changed under us) is counted and skipped.
    pub fn next_unsent(&mut self, class: Class) -> Option<Pending> {
        loop {
            let raw = self.next_unsent_raw(class)?;
            match decode_body(&raw.body, raw.seq) {
                Some(batch) => return Some(Pending { class, batch }),
                None => {
                    tracing::warn!(seq = raw.seq, "undecodable spool record skipped");
                    self.skip_corrupt(class, raw.seq);
                }
            }
        }
    }

    /// Like [`Spool::next_unsent`], but the record's body as it is on disk (its checksum
    /// verified, not decoded): the shipper sends its events without decoding and re-encoding
    /// them (see `ship::publish_frame`).
    pub fn next_unsent_raw(&mut self, class: Class) -> Option<RawPending> {
        loop {
            let lane = &mut self.lanes[class as usize];
            let segment = lane
                .segments
                .iter_mut()
                .find(|s| s.sent < s.records.len())?;
            let meta = segment.records[segment.sent];
            segment.sent += 1;
            match read_body(segment, &meta) {
                Some(body) => {
                    return Some(RawPending {
                        class,
                        seq: meta.seq,
                        body,
                    })
                }
                None => {
                    tracing::warn!(seq = meta.seq, path = %segment.path.display(), "unreadable spool record skipped");
                    self.skip_corrupt(class, meta.seq);
                }
            }
        }
    }

    /// Counts a handed-out record that turned out unreadable as corrupt and forgets it.
    pub fn skip_corrupt(&mut self, class: Class, seq: u64) {
        self.loss.corrupt_records += 1;
        self.ack(class, seq);
        if let Err(e) = self.write_state() {
            tracing::warn!(error = %e, "cannot persist spool loss totals");
        }
    }

    /// The collector has `seq`: forget it, and delete segments with nothing left to send.
    pub fn ack(&mut self, class: Class, seq: u64) {
        let lane = &mut self.lanes[class as usize];
        // A batch whose segment was dropped for room while in flight is simply not found.
        if let Some(segment) = lane.segments.iter_mut().find(|s| s.acked < s.sent) {
            if segment.records[segment.acked].seq == seq {
                segment.acked += 1;
            }
        }
        while let Some(front) = lane.segments.front() {
            if front.acked < front.records.len() {
                break;
            }
            if lane.segments.len() == 1 {
                lane.writing = false;
            }
            if let Some(done) = lane.segments.pop_front() {
                self.bytes -= done.bytes;
                if let Err(e) = fs::remove_file(&done.path) {
                    tracing::warn!(path = %done.path.display(), error = %e, "cannot delete acked spool segment");
                }
            }
        }
    }

    /// Running totals to report to the collector.
    pub fn loss(&self) -> Loss {
        self.loss
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Batches not yet acked, of both classes.
    pub fn pending(&self) -> usize {
        self.lanes
            .iter()
            .flat_map(|l| &l.segments)
            .map(|s| s.records.len() - s.acked)
            .sum()
    }

    /// Counts events and alerts lost before they reached the spool (or refused by it).
    pub fn count_dropped(&mut self, events: u64, alerts: u64) -> Result<(), SpoolError> {
        if events == 0 && alerts == 0 {
            return Ok(());
        }
        self.loss.events_dropped += events;
        self.loss.alerts_dropped += alerts;
        self.write_state()
    }

    /// Flushes appended records to the disk (`fsync: batch` calls this on a timer).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        for (path, file) in self.unsynced_files()? {
            file.sync_data().map_err(io(&path))?;
        }
        Ok(())
    }

    /// With `fsync: batch`: appended records have waited [`BATCH_SYNC_INTERVAL`] for a flush.
    pub fn sync_due(&self) -> bool {
        self.fsync == Fsync::Batch
            && self.unsynced
            && self.last_sync.elapsed() >= BATCH_SYNC_INTERVAL
    }

    /// The files a flush must reach, as handles of their own, so that the caller can flush
    /// them without holding the spool: an fsync took tens of milliseconds here under load, and
    /// both lanes need the spool between batches (an alert waited behind it). The records are
    /// counted as flushed; the caller reports a flush that fails.
    pub fn unsynced_files(&mut self) -> Result<Vec<(PathBuf, File)>, SpoolError> {
        self.last_sync = Instant::now();
        if !std::mem::take(&mut self.unsynced) || self.fsync == Fsync::Never {
            return Ok(Vec::new());
        }
        let mut files = Vec::new();
        for lane in &mut self.lanes {
            if let Some(segment) = lane.segments.back().filter(|_| lane.writing) {
                if let Some(file) = &segment.file {
                    let own = file.try_clone().map_err(io(&segment.path))?;
                    files.push((segment.path.clone(), own));
                }
            }
        }
        Ok(files)
    }

    fn take_seq(&mut self) -> Result<u64, SpoolError> {
        if self.next_seq >= self.seq_ceiling {
            self.seq_ceiling = self.next_seq + SEQ_BLOCK;
            self.write_state()?;
        }
        self.next_seq += 1;
        Ok(self.next_seq - 1)
    }

    /// Drops oldest segments until `len` more bytes fit; false if they cannot.
    fn make_room(&mut self, class: Class, len: u64) -> Result<bool, SpoolError> {
        if len > self.max_bytes {
            return Ok(false);
        }
        while self.bytes + len > self.max_bytes {
            let victim = if !self.lanes[Class::Telemetry as usize].segments.is_empty() {
                Class::Telemetry
            } else if class == Class::Alerts && !self.lanes[Class::Alerts as usize].is_empty() {
                Class::Alerts
            } else {
                return Ok(false);
            };
            self.drop_oldest(victim)?;
        }
        Ok(true)
    }

    fn drop_oldest(&mut self, class: Class) -> Result<(), SpoolError> {
        let lane = &mut self.lanes[class as usize];
        let Some(segment) = lane.segments.pop_front() else {
            return Ok(());
        };
        if lane.segments.is_empty() {
            lane.writing = false;
        }
        let (events, alerts) = segment.records[segment.acked..]
            .iter()
            .fold((0u64, 0u64), |(e, a), r| {
                (e + u64::from(r.events), a + u64::from(r.alerts))
            });
        tracing::warn!(
            events,
            alerts,
            path = %segment.path.display(),
            "spool full: dropped its oldest {} segment",
            class.prefix()
        );
        self.bytes -= segment.bytes;
        fs::remove_file(&segment.path).map_err(io(&segment.path))?;
        self.count_dropped(events, alerts)
    }

    fn start_segment(&mut self, class: Class, id: u64) -> Result<(), SpoolError> {
        self.sync()?;
        let path = self.dir.join(format!("{}-{id:020}.seg", class.prefix()));
        let mut segment = Segment {
            path,
            bytes: 0,
            records: Vec::new(),
            sent: 0,
            acked: 0,
            file: None,
        };
        if self.fsync == Fsync::Always {
            // The new file's name must be on disk too, or a power loss orphans its records.
            open_segment(&mut segment)?;
            sync_dir(&self.dir)?;
        }
        let lane = &mut self.lanes[class as usize];
        lane.writing = true;
        lane.segments.push_back(segment);
        Ok(())
    }

    /// Replaces a damaged segment with a copy of its intact records.
    fn rewrite_clean(&mut self, path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
        let Some(segment) = self
            .lanes
            .iter_mut()
            .flat_map(|l| l.segments.iter_mut())
            .find(|s| s.path == path)
        else {
            return Ok(());
        };
        let mut clean = Vec::with_capacity(bytes.len());
        for r in &mut segment.records {
            let start = r.offset as usize;
            clean.extend_from_slice(&bytes[start..start + r.len() as usize]);
            r.offset = (clean.len() as u64) - r.len();
        }
        let tmp = path.with_extension("tmp");
        write_durably(&tmp, &clean)?;
        fs::rename(&tmp, path).map_err(io(path))?;
        self.bytes = self.bytes - segment.bytes + clean.len() as u64;
        segment.bytes = clean.len() as u64;
        Ok(())
    }

    fn write_state(&self) -> Result<(), SpoolError> {
        let state = State {
            seq_ceiling: self.seq_ceiling,
            loss: self.loss,
        };
        let json = serde_json::to_vec(&state).unwrap_or_default();
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join("state.tmp");
        write_durably(&tmp, &json)?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
}

fn segment_name(path: &Path) -> Option<(Class, u64)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".seg")?;
    let (prefix, id) = name.split_once('-')?;
    let class = match prefix {
        "alerts" => Class::Alerts,
        "events" => Class::Telemetry,
        _ => return None,
    };
    Some((class, id.parse().ok()?))
}

fn read_state(dir: &Path) -> State {
    let path = dir.join(STATE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            // Sequence numbers stay safe without it (they also start above the clock and
            // every spooled record); only earlier loss totals are forgotten.
            tracing::warn!(path = %path.display(), error = %e, "unreadable spool state; starting over");
            State::default()
        }),
        Err(_) => State::default(),
    }
}

fn open_segment(segment: &mut Segment) -> Result<&mut File, SpoolError> {
    match &mut segment.file {
        Some(file) => Ok(file),
        slot => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&segment.path)
                .map_err(io(&segment.path))?;
            Ok(slot.insert(file))
        }
    }
}

/// The body of the record `meta` describes, if it is whole, its checksum holds and it carries
/// the expected sequence number.
fn read_body(segment: &mut Segment, meta: &RecordMeta) -> Option<Vec<u8>> {
    let path = segment.path.clone();
    let file = open_segment(segment).ok()?;
    let mut buf = vec![0u8; meta.len() as usize];
    if let Err(e) = file.read_exact_at(&mut buf, meta.offset) {
        tracing::warn!(path = %path.display(), error = %e, "cannot read spool record");
        return None;
    }
    let (found, body) = record::parse(&buf)?;
    if found.seq != meta.seq {
        return None;
    }
    let body_len = body.len();
    // The body is the tail of the record: drop the header in place rather than copy.
    buf.drain(..buf.len() - body_len);
    Some(buf)
}

/// A record body as a batch; `None` if it does not decode.
pub fn decode_body(body: &[u8], seq: u64) -> Option<Batch> {
    let mut batch: Batch = vigil_proto::decode(body).ok()?;
    batch.seq = seq;
    Some(batch)
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

#[cfg(test)]
#[path = "spool/tests.rs"]
mod tests;
