//! One spool record on disk, and the scan that finds the intact ones in a damaged file.
//!
//! ```text
//! magic "VSR1" | body_len u32 LE | crc u32 LE | seq u64 LE | events u32 LE | alerts u32 LE | body
//! ```
//!
//! The CRC32 covers everything but the magic and itself (length, seq, counts, body), so a flipped
//! length is caught as surely as a flipped body byte. The body is a versioned MessagePack
//! [`vigil_proto::Batch`], exactly as `vigil_proto::encode` makes it. The magic lets a reader
//! find the next record after a damaged one instead of giving up on the rest of the file.

use vigil_proto::MAX_FRAME_BYTES;

pub const MAGIC: [u8; 4] = *b"VSR1";
pub const HEADER_BYTES: usize = 28;
/// A body larger than a frame could never be sent, so a larger length is damage.
pub const MAX_BODY_BYTES: usize = MAX_FRAME_BYTES;

/// Where a record is and what it holds, known without decoding its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    pub seq: u64,
    pub events: u32,
    pub alerts: u32,
    /// Offset of the header in its segment file.
    pub offset: u64,
    pub body_len: u32,
}

impl RecordMeta {
    /// Bytes the record takes on disk, header included.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a record is never empty: the header alone is 28 bytes"
    )]
    pub fn len(&self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.body_len)
    }
}

/// Header and body of one record, ready to append.
pub fn encode(seq: u64, events: u32, alerts: u32, body: &[u8]) -> Vec<u8> {
    // Callers never pass more than a frame; saturating keeps this total, and such a record
    // would then fail its check on read rather than corrupt its neighbours.
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out.extend_from_slice(&alerts.to_le_bytes());
    out.extend_from_slice(body);
    let crc = checksum(&out);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

fn checksum(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[4..8]);
    hasher.update(&record[12..]);
    hasher.finalize()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// The record starting at `bytes[0]`, if it is whole and its checksum holds.
pub fn parse(bytes: &[u8]) -> Option<(RecordMeta, &[u8])> {
    if bytes.len() < HEADER_BYTES || bytes[..4] != MAGIC {
        return None;
    }
    let body_len = u32_at(bytes, 4);
    let len = HEADER_BYTES + body_len as usize;
    if body_len as usize > MAX_BODY_BYTES || bytes.len() < len {
        return None;
    }
    let record = &bytes[..len];
    if checksum(record) != u32_at(record, 8) {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&record[12..20]);
    let meta = RecordMeta {
        seq: u64::from_le_bytes(seq),
        events: u32_at(record, 20),
        alerts: u32_at(record, 24),
        offset: 0,
        body_len,
    };
    Some((meta, &record[HEADER_BYTES..]))
}

/// What a segment file holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<RecordMeta>,
    /// Damaged stretches: each is at least one lost record (a torn tail counts as one).
    pub corrupt: u64,
}

/// Finds every intact record in `bytes`, skipping damage by searching for the next magic.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut pos = 0usize;
    let mut in_damage = false;
    while pos < bytes.len() {
        match parse(&bytes[pos..]) {
            Some((mut meta, _)) => {
                meta.offset = pos as u64;
                pos += meta.len() as usize;
                scan.records.push(meta);
                in_damage = false;
            }
            None => {
                if !in_damage {
                    scan.corrupt += 1;
                    in_damage = true;
                }
                // NB: a byte at a time, not a record length: the length is what may be wrong.
                pos += match bytes[pos + 1..].windows(4).position(|w| w == MAGIC) {
                    Some(skip) => skip + 1,
                    None => bytes.len() - pos,
                };
            }
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(records: &[(u64, &[u8])]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|(seq, body)| encode(*seq, 1, 0, body))
            .collect()
    }

    #[test]
    fn intact_records_are_found_in_order() {
        let bytes = file(&[(1, b"one"), (2, b"two two"), (3, b"")]);
        let scan = scan(&bytes);
        assert_eq!(scan.corrupt, 0);
        let seqs: Vec<u64> = scan.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(scan.records[1].offset, (HEADER_BYTES + 3) as u64);
    }

    #[test]
    fn a_flipped_body_byte_loses_that_record_only() {
        let mut bytes = file(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        let second = HEADER_BYTES + 3;
        bytes[second + HEADER_BYTES + 1] ^= 0x40;
        let scan = scan(&bytes);
        let seqs: Vec<u64> = scan.records.iter().map(|r| r.seq).collect();
        assert_eq!((seqs, scan.corrupt), (vec![1, 3], 1));
    }

    #[test]
    fn a_flipped_length_is_caught_and_the_next_record_still_found() {
        let mut bytes = file(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        // A length pointing far past the end of the file, then one merely wrong.
        bytes[5] ^= 0xff;
        let third = 2 * (HEADER_BYTES + 3);
        bytes[third + 4] ^= 0x01;
        let scan = scan(&bytes);
        let seqs: Vec<u64> = scan.records.iter().map(|r| r.seq).collect();
        assert_eq!((seqs, scan.corrupt), (vec![2], 2));
    }

    #[test]
    fn a_torn_tail_counts_once_and_keeps_what_came_before() {
        let bytes = file(&[(1, b"one"), (2, b"two"), (3, b"three")]);
        for cut in 1..HEADER_BYTES + 5 {
            let scan = scan(&bytes[..bytes.len() - cut]);
            let seqs: Vec<u64> = scan.records.iter().map(|r| r.seq).collect();
            assert_eq!((seqs, scan.corrupt), (vec![1, 2], 1), "cut {cut}");
        }
    }

    #[test]
    fn garbage_is_one_damaged_stretch_and_never_panics() {
        let mut bytes: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&[0xff; 3]);
        let scan = scan(&bytes);
        assert!(scan.records.is_empty());
        assert_eq!(scan.corrupt, 1);
        assert_eq!(super::scan(&[]), Scan::default());
    }
}
