//! Puts the records of the two ring buffers (lanes) back in the order they happened, by the
//! kernel time in each record's header, before enrichment sees them.
//!
//! The kernel writes exec, exit, credential changes and the like to the critical lane and file
//! and other high-volume I/O to the bulk lane, so that a flood of opens can never cost an exec.
//! Each ring keeps its own order, but nothing orders one against the other: read lane by lane,
//! a process's exit was enriched before the open it made just before exiting (and the open then
//! found no process in the table), and an open made just before an exec was attributed to the
//! new image. [`LaneMerge`] passes on, at each step, the older of the two lanes' next records.
//!
//! # When a record may go
//!
//! A ring hands out records only by consuming them, so "the next record" of a lane is one taken
//! out and, when it must wait for the other lane, copied and held here (at most one record is
//! held). A record may go once the other lane cannot still hold an older record that happened
//! before it: either the other lane's next record is newer, or the other lane was looked at
//! *after* this record was taken and was empty. The second rule is sound because one thread's
//! records are committed in program order: everything a thread committed before this record was
//! stamped is in its ring before this record is taken out of its own.
//!
//! Records of different CPUs are stamped a little before they are committed, so a ring's order
//! and its stamps can disagree by that much; the merge keeps each ring's order and only
//! interleaves the two. A record passed on after a newer record of the other lane is **late**:
//! it is still passed on (never dropped) and counted per lane.
//!
//! # The bound: a flooded bulk lane never holds critical records back for long
//!
//! A critical record waits for the bulk records committed before it, and for at most
//! `max_bulk_ahead` of them (see [`LaneMerge::new`]; the sensor uses [`MAX_BULK_AHEAD`]). Past
//! that bound it goes first, and the older bulk records still in the ring follow it, late. So
//! with the bulk ring full (a flood the sensor cannot keep up with), an exec waits behind at
//! most 1024 opens, not behind a whole ring of them; while the sensor keeps up, the bulk ring
//! holds far fewer, the bound is not reached, and each thread's records come in the order the
//! thread made them. Bulk records wait for older critical records without a
//! bound: that lane is the one meant to yield.

use std::ops::Deref;

/// Bulk records passed ahead of one waiting critical record at most: about 7 ms of enrichment at
/// the 7.3 µs per event measured for the release build (README, Performance).
pub const MAX_BULK_AHEAD: usize = 1024;

/// Which ring a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaneId {
    Critical = 0,
    Bulk = 1,
}

impl LaneId {
    fn other(self) -> Self {
        match self {
            Self::Critical => Self::Bulk,
            Self::Bulk => Self::Critical,
        }
    }
}

/// A source of records in commit order, each consumed when the returned value is dropped (what
/// an `aya` ring buffer does).
pub trait Lane {
    type Record<'a>: Deref<Target = [u8]>
    where
        Self: 'a;

    fn next(&mut self) -> Option<Self::Record<'_>>;
}

impl Lane for aya::maps::RingBuf<aya::maps::MapData> {
    type Record<'a> = aya::maps::ring_buf::RingBufItem<'a>;

    fn next(&mut self) -> Option<Self::Record<'_>> {
        aya::maps::RingBuf::next(self)
    }
}

/// The kernel time a record was stamped with (`RecordHeader::boot_ns`); 0 for a record too
/// short to hold one (it goes at once, and decoding rejects it).
pub fn stamp(record: &[u8]) -> u64 {
    record
        .get(8..16)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Records passed on after a newer record of the other lane, per lane (since start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LateCounts {
    pub critical: u64,
    pub bulk: u64,
}

/// The merge of the two lanes; see the module documentation for the order and its bound.
#[derive(Debug)]
pub struct LaneMerge {
    /// The one record taken out of its ring that waits for the other lane: its lane and stamp.
    held: Option<(LaneId, u64)>,
    /// Its bytes (the buffer is kept between records: holding one allocates nothing).
    held_bytes: Vec<u8>,
    /// Bulk records passed while the held critical record waited.
    bulk_ahead: usize,
    max_bulk_ahead: usize,
    /// The newest stamp passed on, per lane.
    newest: [u64; 2],
    late: [u64; 2],
}

impl LaneMerge {
    /// `max_bulk_ahead`: how many bulk records at most may pass a waiting critical record.
    pub fn new(max_bulk_ahead: usize) -> Self {
        Self {
            held: None,
            held_bytes: Vec::new(),
            bulk_ahead: 0,
            max_bulk_ahead,
            newest: [0; 2],
            late: [0; 2],
        }
    }

    pub fn late(&self) -> LateCounts {
        LateCounts {
            critical: self.late[LaneId::Critical as usize],
            bulk: self.late[LaneId::Bulk as usize],
        }
    }

    /// Whether a record is held for the next call (only after a call's `budget` ran out).
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// Passes records of both lanes to `sink` in time order until both are empty or `budget`
    /// records went. Returns how many went.
    pub fn drain<C: Lane, B: Lane>(
        &mut self,
        critical: &mut C,
        bulk: &mut B,
        budget: usize,
        mut sink: impl FnMut(LaneId, &[u8]),
    ) -> usize {
        let mut passed = 0;
        while passed < budget {
            // The other lane is looked at now, after the held record was taken: if it is empty,
            // nothing it could still receive happened before the held one.
            match self.held {
                Some((LaneId::Critical, _)) => {
                    let fresh = bulk.next();
                    self.against_held(LaneId::Bulk, fresh.as_deref(), &mut sink);
                }
                Some((LaneId::Bulk, _)) => {
                    let fresh = critical.next();
                    self.against_held(LaneId::Critical, fresh.as_deref(), &mut sink);
                }
                None => {
                    // Critical first, then bulk: a bulk record committed before a critical
                    // record taken here is in the bulk ring by the time that is looked at.
                    if let Some(c) = critical.next() {
                        match bulk.next() {
                            // The bulk lane was looked at after `c` was taken.
                            None => self.pass(LaneId::Critical, &c, &mut sink),
                            Some(b) => self.pick_fresh(&c, &b, &mut sink),
                        }
                        passed += 1;
                        continue;
                    }
                    let Some(b) = bulk.next() else { break };
                    // The critical lane was looked at before `b` was taken and may have
                    // received an older record since: look again.
                    match critical.next() {
                        None => self.pass(LaneId::Bulk, &b, &mut sink),
                        Some(c) => self.pick_fresh(&c, &b, &mut sink),
                    }
                }
            }
            passed += 1;
        }
        passed
    }

    /// Whether the bulk record goes before the critical one: the older first, the bulk one on a
    /// tie (critical records are the ones that change the process table, and a tie within one
    /// thread can only be an act followed by its exit or exec), unless the critical record has
    /// already waited for `max_bulk_ahead` bulk records.
    fn bulk_first(&self, critical_stamp: u64, bulk_stamp: u64, waited: usize) -> bool {
        bulk_stamp <= critical_stamp && waited < self.max_bulk_ahead
    }

    /// Two records just taken, one from each lane: passes one and holds the other.
    fn pick_fresh(&mut self, c: &[u8], b: &[u8], sink: &mut impl FnMut(LaneId, &[u8])) {
        if self.bulk_first(stamp(c), stamp(b), 0) {
            self.hold(LaneId::Critical, c);
            self.pass(LaneId::Bulk, b, sink);
        } else {
            self.pass(LaneId::Critical, c, sink);
            self.hold(LaneId::Bulk, b);
        }
    }

    /// The held record against the other lane's next one (`None`: that lane is empty).
    fn against_held(
        &mut self,
        fresh_lane: LaneId,
        fresh: Option<&[u8]>,
        sink: &mut impl FnMut(LaneId, &[u8]),
    ) {
        let (Some((held_lane, held_stamp)), Some(fresh)) = (self.held, fresh) else {
            self.pass_held(sink);
            return;
        };
        debug_assert_eq!(held_lane, fresh_lane.other());
        let bulk_first = match held_lane {
            LaneId::Critical => self.bulk_first(held_stamp, stamp(fresh), self.bulk_ahead),
            LaneId::Bulk => self.bulk_first(stamp(fresh), held_stamp, 0),
        };
        if bulk_first == (fresh_lane == LaneId::Bulk) {
            self.pass(fresh_lane, fresh, sink);
        } else {
            self.pass_held(sink);
            self.hold(fresh_lane, fresh);
        }
    }

    /// Keeps a copy of a record that must wait (the ring consumes it once it is dropped).
    fn hold(&mut self, lane: LaneId, record: &[u8]) {
        self.held = Some((lane, stamp(record)));
        self.held_bytes.clear();
        self.held_bytes.extend_from_slice(record);
        if lane == LaneId::Critical {
            self.bulk_ahead = 0;
        }
    }

    fn pass_held(&mut self, sink: &mut impl FnMut(LaneId, &[u8])) {
        if let Some((lane, record_stamp)) = self.held.take() {
            self.account(lane, record_stamp);
            sink(lane, &self.held_bytes);
        }
    }

    fn pass(&mut self, lane: LaneId, record: &[u8], sink: &mut impl FnMut(LaneId, &[u8])) {
        self.account(lane, stamp(record));
        sink(lane, record);
    }

    fn account(&mut self, lane: LaneId, record_stamp: u64) {
        if record_stamp < self.newest[lane.other() as usize] {
            self.late[lane as usize] += 1;
        }
        let newest = &mut self.newest[lane as usize];
        *newest = (*newest).max(record_stamp);
        match lane {
            LaneId::Bulk => self.bulk_ahead += 1,
            LaneId::Critical => self.bulk_ahead = 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A record as the kernel lays it out: kind, size, then the stamp; `id` names it in tests.
    fn record(boot_ns: u64, id: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&20u32.to_ne_bytes());
        bytes.extend_from_slice(&boot_ns.to_ne_bytes());
        bytes.extend_from_slice(&id.to_ne_bytes());
        bytes
    }

    fn id(record: &[u8]) -> u32 {
        u32::from_ne_bytes(record[16..20].try_into().expect("test record"))
    }

    /// A ring in a test: records in commit order, some committed only after the lane has been
    /// looked at a number of times (another CPU committing while the consumer reads).
    #[derive(Default)]
    struct TestLane {
        ready: VecDeque<Vec<u8>>,
        /// (looks after which it is committed, record)
        later: Vec<(usize, Vec<u8>)>,
        looks: usize,
    }

    impl TestLane {
        fn of(stamps: &[(u64, u32)]) -> Self {
            Self {
                ready: stamps.iter().map(|&(s, i)| record(s, i)).collect(),
                ..Self::default()
            }
        }
    }

    impl Lane for TestLane {
        type Record<'a> = Vec<u8>;

        fn next(&mut self) -> Option<Vec<u8>> {
            self.looks += 1;
            let looks = self.looks;
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
                .into_iter()
                .partition(|(after, _)| *after < looks);
            self.later = rest;
            self.ready.extend(due.into_iter().map(|(_, r)| r));
            self.ready.pop_front()
        }
    }

    fn drain_all(
        merge: &mut LaneMerge,
        c: &mut TestLane,
        b: &mut TestLane,
        budget: usize,
    ) -> Vec<(LaneId, u32)> {
        let mut out = Vec::new();
        loop {
            let passed = merge.drain(c, b, budget, |lane, r| out.push((lane, id(r))));
            if passed < budget {
                break;
            }
        }
        assert!(!merge.holds(), "a record left held after the lanes emptied");
        out
    }

    use LaneId::{Bulk as B, Critical as C};

    #[test]
    fn records_of_both_lanes_go_in_time_order() {
        let mut merge = LaneMerge::new(MAX_BULK_AHEAD);
        let mut critical = TestLane::of(&[(10, 1), (30, 3), (31, 4), (70, 7)]);
        let mut bulk = TestLane::of(&[(20, 2), (40, 5), (60, 6), (80, 8), (90, 9)]);
        let out = drain_all(&mut merge, &mut critical, &mut bulk, 4096);
        assert_eq!(
            out,
            [
                (C, 1),
                (B, 2),
                (C, 3),
                (C, 4),
                (B, 5),
                (B, 6),
                (C, 7),
                (B, 8),
                (B, 9)
            ]
        );
        assert_eq!(merge.late(), LateCounts::default());
    }

    #[test]
    fn a_tie_goes_to_the_bulk_record_first() {
        let mut merge = LaneMerge::new(MAX_BULK_AHEAD);
        // An open and the exit of the same thread, stamped in the same nanosecond.
        let mut critical = TestLane::of(&[(50, 2), (60, 4)]);
        let mut bulk = TestLane::of(&[(50, 1), (60, 3)]);
        let out = drain_all(&mut merge, &mut critical, &mut bulk, 4096);
        assert_eq!(out, [(B, 1), (C, 2), (B, 3), (C, 4)]);
        assert_eq!(merge.late(), LateCounts::default());
    }

    #[test]
    fn one_lane_empty_passes_the_other_in_its_own_order() {
        let mut merge = LaneMerge::new(MAX_BULK_AHEAD);
        // A ring's order is kept even where stamps of different CPUs disagree with it.
        let mut critical = TestLane::of(&[(10, 1), (5, 2), (20, 3)]);
        let out = drain_all(&mut merge, &mut critical, &mut TestLane::default(), 4096);
        assert_eq!(out, [(C, 1), (C, 2), (C, 3)]);
        let mut bulk = TestLane::of(&[(10, 4), (5, 5), (20, 6)]);
        let out = drain_all(&mut merge, &mut TestLane::default(), &mut bulk, 4096);
        assert_eq!(out, [(B, 4), (B, 5), (B, 6)]);
        // 4 and 5 went after critical 20, though older: late.
        assert_eq!(
            merge.late(),
            LateCounts {
                critical: 0,
                bulk: 2
            }
        );
    }

    #[test]
    fn a_late_bulk_record_is_passed_on_and_counted_never_dropped() {
        let mut merge = LaneMerge::new(MAX_BULK_AHEAD);
        let mut critical = TestLane::of(&[(100, 1)]);
        let mut bulk = TestLane::default();
        assert_eq!(
            drain_all(&mut merge, &mut critical, &mut bulk, 4096),
            [(C, 1)]
        );
        // Committed after the critical record went, though stamped before it.
        bulk.ready.push_back(record(50, 2));
        bulk.ready.push_back(record(150, 3));
        critical.ready.push_back(record(120, 4));
        let out = drain_all(&mut merge, &mut critical, &mut bulk, 4096);
        assert_eq!(out, [(B, 2), (C, 4), (B, 3)]);
        assert_eq!(
            merge.late(),
            LateCounts {
                critical: 0,
                bulk: 1
            }
        );
    }

    #[test]
    fn a_critical_record_committed_while_the_bulk_lane_is_read_still_goes_first() {
        // The critical lane is empty when first looked at; by the time a bulk record stamped
        // after it is taken, an older critical record (another CPU) has been committed.
        let mut merge = LaneMerge::new(MAX_BULK_AHEAD);
        let mut critical = TestLane {
            later: vec![(1, record(15, 1))],
            ..TestLane::default()
        };
        let mut bulk = TestLane::of(&[(20, 2)]);
        let out = drain_all(&mut merge, &mut critical, &mut bulk, 4096);
        assert_eq!(out, [(C, 1), (B, 2)]);
        assert_eq!(merge.late(), LateCounts::default());
    }

    #[test]
    fn a_flooded_bulk_lane_holds_a_critical_record_back_for_at_most_the_bound() {
        let mut merge = LaneMerge::new(3);
        let mut critical = TestLane::of(&[(100, 0)]);
        let mut bulk = TestLane::of(&(1..=6).map(|i| (i, i as u32)).collect::<Vec<_>>());
        let out = drain_all(&mut merge, &mut critical, &mut bulk, 4096);
        assert_eq!(
            out,
            [(B, 1), (B, 2), (B, 3), (C, 0), (B, 4), (B, 5), (B, 6)]
        );
        assert_eq!(
            merge.late(),
            LateCounts {
                critical: 0,
                bulk: 3
            }
        );
    }

    #[test]
    fn a_budget_splits_the_work_without_changing_the_order() {
        let stamps_c = [(10, 1), (30, 3), (50, 5), (70, 7)];
        let stamps_b = [(20, 2), (40, 4), (60, 6), (80, 8)];
        let whole = drain_all(
            &mut LaneMerge::new(MAX_BULK_AHEAD),
            &mut TestLane::of(&stamps_c),
            &mut TestLane::of(&stamps_b),
            4096,
        );
        for budget in 1..=3 {
            let mut merge = LaneMerge::new(MAX_BULK_AHEAD);
            let split = drain_all(
                &mut merge,
                &mut TestLane::of(&stamps_c),
                &mut TestLane::of(&stamps_b),
                budget,
            );
            assert_eq!(split, whole, "budget {budget}");
        }
        assert_eq!(whole.len(), 8);
    }

    #[test]
    fn a_record_too_short_for_a_stamp_goes_at_once() {
        assert_eq!(stamp(&[1, 2, 3]), 0);
        assert_eq!(stamp(&record(42, 0)), 42);
    }
}
