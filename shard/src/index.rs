//! Sparse indexes kept beside each segment, and the sans-IO batch scanner
//! that recovery and reads share.
//!
//! ```text
//! <base>.index      entries of 8 bytes:  rel_offset u32 | position u32
//! <base>.timeindex  entries of 16 bytes: max_timestamp_so_far i64 | rel_offset u32 | position u32
//! ```
//! Both big-endian, strictly increasing in offset and position. An entry is
//! added before a batch when at least `index.interval.bytes` of batches were
//! written since the previous entry. The first batch of a segment is always at
//! position 0, so it needs no entry.

use sluice_protocol::batch::{self, BatchHeader, BATCH_HEADER_BYTES};

pub const OFFSET_ENTRY_BYTES: usize = 8;
pub const TIME_ENTRY_BYTES: usize = 16;

/// One entry of the sparse offset index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the batch's first record, relative to the segment base.
    pub rel_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
    /// Largest timestamp of any batch before or at this entry's batch.
    pub max_timestamp: i64,
}

/// The offset index and the time index of one segment (they share entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub entries: Vec<IndexEntry>,
}

impl SegmentIndex {
    /// The position to start scanning from to find `rel_offset`.
    pub fn lookup_offset(&self, rel_offset: u32) -> (u32, u32) {
        let i = self.entries.partition_point(|e| e.rel_offset <= rel_offset);
        match i {
            0 => (0, 0),
            _ => (self.entries[i - 1].rel_offset, self.entries[i - 1].position),
        }
    }

    /// The position to start scanning from to find the first batch whose
    /// max timestamp is at least `timestamp`: every batch before it is older.
    pub fn lookup_timestamp(&self, timestamp: i64) -> (u32, u32) {
        let i = self
            .entries
            .partition_point(|e| e.max_timestamp < timestamp);
        match i {
            0 => (0, 0),
            _ => (self.entries[i - 1].rel_offset, self.entries[i - 1].position),
        }
    }

    pub fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }

    /// Drops entries at or beyond `position` (after a truncation).
    pub fn truncate_to_position(&mut self, position: u64) {
        self.entries.retain(|e| u64::from(e.position) < position);
    }

    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.rel_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.max_timestamp.to_be_bytes());
            out.extend_from_slice(&e.rel_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    /// Decodes both index files; `None` when they are missing, disagree, are
    /// not strictly increasing, or point at or past `segment_bytes`.
    pub fn decode(offsets: &[u8], times: &[u8], segment_bytes: u64) -> Option<SegmentIndex> {
        if !offsets.len().is_multiple_of(OFFSET_ENTRY_BYTES)
            || !times.len().is_multiple_of(TIME_ENTRY_BYTES)
        {
            return None;
        }
        let n = offsets.len() / OFFSET_ENTRY_BYTES;
        if times.len() / TIME_ENTRY_BYTES != n {
            return None;
        }
        let mut entries: Vec<IndexEntry> = Vec::with_capacity(n);
        for (o, t) in offsets
            .chunks_exact(OFFSET_ENTRY_BYTES)
            .zip(times.chunks_exact(TIME_ENTRY_BYTES))
        {
            let e = IndexEntry {
                rel_offset: be_u32(&o[0..4]),
                position: be_u32(&o[4..8]),
                max_timestamp: be_i64(&t[0..8]),
            };
            if be_u32(&t[8..12]) != e.rel_offset || be_u32(&t[12..16]) != e.position {
                return None;
            }
            if u64::from(e.position) >= segment_bytes {
                return None;
            }
            if let Some(prev) = entries.last() {
                let increasing = e.rel_offset > prev.rel_offset && e.position > prev.position;
                if !increasing || e.max_timestamp < prev.max_timestamp {
                    return None;
                }
            }
            entries.push(e);
        }
        Some(SegmentIndex { entries })
    }
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_be_bytes(a)
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    i64::from_be_bytes(a)
}

/// A batch found by [`scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedBatch {
    /// Position of the batch in the segment file.
    pub position: u64,
    pub header: BatchHeader,
}

/// Why a scan stopped before the end of its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanStop {
    /// The input ended inside a batch: read more from `position` (at least
    /// `needed` bytes) and scan again.
    NeedMore { position: u64, needed: usize },
    /// The bytes at `position` are not a valid continuation of the log: a torn
    /// write, corruption, or the zero padding after the last batch.
    Invalid { position: u64, reason: String },
    /// All input consumed exactly.
    End,
}

/// Scans `buf`, which holds the segment bytes starting at file position `start`,
/// checking every batch's header, length, CRC and that offsets start at or
/// after `expected_offset` and strictly increase (the cleaner leaves gaps).
/// Returns the valid batches and why it stopped.
pub fn scan(buf: &[u8], start: u64, expected_offset: i64) -> (Vec<ScannedBatch>, ScanStop) {
    let mut found = Vec::new();
    let mut at = 0usize;
    let mut next = expected_offset;
    loop {
        let position = start + at as u64;
        let rest = &buf[at..];
        if rest.is_empty() {
            return (found, ScanStop::End);
        }
        // Zeros before a 4 KiB (formerly 512-byte) boundary that a landed batch was written
        // at (see `landing`); at the end of the data they are padding.
        match crate::landing::gap_at(rest, position) {
            crate::landing::Gap::Skip(n) => {
                at += n;
                continue;
            }
            crate::landing::Gap::Undecided => {
                let needed = crate::landing::gap_len(position) + BATCH_HEADER_BYTES;
                return (found, ScanStop::NeedMore { position, needed });
            }
            _ => {}
        }
        if rest.len() < BATCH_HEADER_BYTES {
            // Too short to tell: even all zeros may be the start of a batch
            // (a base offset's high bytes) cut by the end of this read, not
            // padding. The caller, who knows where the file ends, decides.
            return (
                found,
                ScanStop::NeedMore {
                    position,
                    needed: BATCH_HEADER_BYTES,
                },
            );
        }
        let header = match BatchHeader::parse(rest) {
            Ok(h) => h,
            Err(e) => {
                return (
                    found,
                    ScanStop::Invalid {
                        position,
                        reason: e.to_string(),
                    },
                )
            }
        };
        let total = header.total_bytes();
        // Compacted segments have gaps between batches: offsets need only
        // increase. Appends are checked for contiguity when they are written.
        if header.base_offset < next || header.last_offset_delta < 0 {
            let reason = format!(
                "batch at offset {} where at least {} was expected",
                header.base_offset, next
            );
            return (found, ScanStop::Invalid { position, reason });
        }
        if rest.len() < total {
            return (
                found,
                ScanStop::NeedMore {
                    position,
                    needed: total,
                },
            );
        }
        let computed = batch::compute_crc(&rest[..total]);
        if computed != header.crc {
            let reason = format!(
                "crc mismatch (stored {:#x}, computed {computed:#x})",
                header.crc
            );
            return (found, ScanStop::Invalid { position, reason });
        }
        found.push(ScannedBatch { position, header });
        next = header.last_offset() + 1;
        at += total;
    }
}

/// A short tail is either the start of a batch cut by the end of the read, or
/// padding/garbage. Zeros mean padding; anything else is read again whole.
#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch::BatchBuilder;

    fn batch_at(offset: i64, records: usize, ts: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new(ts);
        for i in 0..records {
            let v = format!("value-{offset}-{i}");
            b.push(ts, None, Some(v.as_bytes()), &[]);
        }
        let mut bytes = b.finish();
        batch::stamp(&mut bytes, offset, 0);
        bytes
    }

    #[test]
    fn scan_accepts_a_valid_log_and_stops_at_padding() {
        let mut log = batch_at(10, 3, 1000);
        log.extend(batch_at(13, 2, 1001));
        let valid = log.len() as u64;
        log.extend(vec![0u8; 100]);
        let (found, stop) = scan(&log, 0, 10);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].header.base_offset, 13);
        // Zeros that may be a gap before a landed batch: the caller, who
        // knows where the file ends, decides they are padding.
        match stop {
            ScanStop::Invalid { position, .. } | ScanStop::NeedMore { position, .. } => {
                assert_eq!(position, valid)
            }
            other => panic!("unexpected stop {other:?}"),
        }
    }

    #[test]
    fn scan_steps_over_a_gap_before_a_landed_batch() {
        let mut log = batch_at(10, 3, 1000);
        let end = log.len() as u64;
        let gap = crate::landing::gap_len(end);
        assert!(gap >= crate::landing::GAP_MIN);
        log.extend(vec![0u8; gap]);
        assert_eq!(log.len() % crate::landing::LANDING_ALIGN, 0);
        log.extend(batch_at(13, 2, 1001));
        let landed_at = (log.len() - batch_at(13, 2, 1001).len()) as u64;
        log.extend(vec![0u8; 30]);
        let (found, _) = scan(&log, 0, 10);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].position, landed_at);
        assert_eq!(found[1].header.base_offset, 13);
        // A gap cut by the end of the read asks for more.
        let (found, stop) = scan(&log[..end as usize + 5], 0, 10);
        assert_eq!(found.len(), 1);
        assert!(matches!(stop, ScanStop::NeedMore { position, .. } if position == end));
    }

    #[test]
    fn scan_stops_at_a_corrupt_or_discontinuous_batch() {
        let first = batch_at(0, 2, 5);
        let mut log = first.clone();
        let mut second = batch_at(2, 2, 6);
        let last = second.len() - 1;
        second[last] ^= 0xff;
        log.extend(second);
        let (found, stop) = scan(&log, 0, 0);
        assert_eq!(found.len(), 1);
        assert!(
            matches!(stop, ScanStop::Invalid { position, .. } if position == first.len() as u64)
        );

        let mut back = batch_at(0, 2, 5);
        back.extend(batch_at(1, 1, 5));
        let (found, stop) = scan(&back, 0, 0);
        assert_eq!(found.len(), 1, "offsets must increase");
        assert!(matches!(stop, ScanStop::Invalid { .. }));

        let mut gap = batch_at(0, 2, 5);
        gap.extend(batch_at(7, 1, 5));
        let (found, stop) = scan(&gap, 0, 0);
        assert_eq!(found.len(), 2, "a compacted log has gaps");
        assert_eq!(stop, ScanStop::End);
    }

    #[test]
    fn scan_asks_for_more_when_a_batch_is_cut() {
        let log = batch_at(0, 5, 5);
        for cut in 1..log.len() {
            let (found, stop) = scan(&log[..cut], 0, 0);
            assert!(found.is_empty());
            // Even a prefix of zeros (a base offset's high bytes) asks for
            // more: only the end of the file makes zeros padding.
            assert!(
                matches!(stop, ScanStop::NeedMore { position: 0, .. }),
                "cut {cut}: {stop:?}"
            );
        }
    }

    #[test]
    fn index_round_trips_and_rejects_inconsistency() {
        let idx = SegmentIndex {
            entries: vec![
                IndexEntry {
                    rel_offset: 5,
                    position: 4100,
                    max_timestamp: 10,
                },
                IndexEntry {
                    rel_offset: 9,
                    position: 8300,
                    max_timestamp: 12,
                },
            ],
        };
        let (o, t) = (idx.encode_offsets(), idx.encode_times());
        assert_eq!(SegmentIndex::decode(&o, &t, 9000), Some(idx.clone()));
        assert_eq!(
            SegmentIndex::decode(&o, &t, 8300),
            None,
            "entry past the end"
        );
        assert_eq!(SegmentIndex::decode(&o[..7], &t, 9000), None);
        assert_eq!(
            SegmentIndex::decode(&o[..8], &t, 9000),
            None,
            "files disagree"
        );
        assert_eq!(idx.lookup_offset(4), (0, 0));
        assert_eq!(idx.lookup_offset(7), (5, 4100));
        assert_eq!(idx.lookup_offset(100), (9, 8300));
        assert_eq!(idx.lookup_timestamp(11), (5, 4100));
        assert_eq!(idx.lookup_timestamp(3), (0, 0));
    }
}
