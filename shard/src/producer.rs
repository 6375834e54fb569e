//! Idempotent producers (KIP-98): the per-partition state that turns a
//! producer's retries into exactly-once appends. Sans-IO: the writer task
//! asks [`ProducerStates`] about each batch as it assigns offsets, and the
//! snapshot codec here is written to and read from disk by `snapshot.rs`.
//!
//! What is enforced, as Apache Kafka 4.x brokers do for a batch whose
//! `producerId >= 0`:
//! - the same (producer id, epoch, first and last sequence) as one of the
//!   producer's last [`PRODUCER_BATCHES_KEPT`] batches is a duplicate: it is
//!   not written again and the append answers with the original base offset;
//! - an epoch older than the producer's current one: `INVALID_PRODUCER_EPOCH`;
//! - a newer epoch must start at sequence 0, and within one epoch each batch
//!   must continue where the previous ended (`OUT_OF_ORDER_SEQUENCE_NUMBER`),
//!   with the sequence wrapping from `i32::MAX` to 0;
//! - an unknown producer (never seen, expired, or evicted) may start at any
//!   sequence: Kafka 2.5+ (KIP-360) accepts it and creates the state, rather
//!   than answering `UNKNOWN_PRODUCER_ID`.
//!
//! State expires `producer.id.expiration.ms` after the producer's last batch
//! timestamp (as Kafka measures it), and at most
//! [`PRODUCERS_PER_PARTITION_MAX`] producers are kept: beyond that the least
//! recently appended-to one is forgotten.
//!
//! Transactions are not supported: transactional and control batches are
//! refused before they reach this module.

use std::collections::{BTreeMap, HashMap, VecDeque};

use sluice_protocol::batch::BatchHeader;
use sluice_protocol::ErrorCode;

use crate::limits::{PRODUCERS_PER_PARTITION_MAX, PRODUCER_BATCHES_KEPT};

/// One batch a producer appended, as remembered for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) base_offset: i64,
    pub(crate) last_offset: i64,
    /// The batch's max timestamp.
    pub(crate) timestamp: i64,
}

/// What a partition knows of one producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub(crate) epoch: i16,
    /// The newest batches of `epoch`, oldest first, at most
    /// [`PRODUCER_BATCHES_KEPT`].
    pub(crate) batches: VecDeque<BatchMeta>,
    /// Max timestamp of the newest batch: expiration counts from it.
    pub(crate) last_timestamp: i64,
}

impl ProducerEntry {
    fn new(epoch: i16) -> Self {
        ProducerEntry {
            epoch,
            batches: VecDeque::with_capacity(PRODUCER_BATCHES_KEPT),
            last_timestamp: -1,
        }
    }

    /// Remembers a batch appended at `base_offset` (Kafka's `addBatch`).
    fn add(&mut self, header: &BatchHeader, base_offset: i64) {
        if header.producer_epoch != self.epoch {
            self.epoch = header.producer_epoch;
            self.batches.clear();
        }
        if self.batches.len() == PRODUCER_BATCHES_KEPT {
            self.batches.pop_front();
        }
        self.batches.push_back(BatchMeta {
            first_seq: header.base_sequence,
            last_seq: last_sequence(header),
            base_offset,
            last_offset: base_offset + i64::from(header.last_offset_delta),
            timestamp: header.max_timestamp,
        });
        self.last_timestamp = header.max_timestamp;
    }
}

/// Why an idempotent batch was refused. Nothing of its append is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerError {
    /// The batch's epoch is older than the producer's current one (a zombie).
    InvalidEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    /// The batch does not continue the producer's sequence.
    OutOfOrder {
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: Option<i32>,
    },
    /// `producerId >= 0` with a negative `baseSequence` or epoch.
    InvalidSequence { producer_id: i64 },
}

impl ProducerError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ProducerError::InvalidEpoch { .. } => ErrorCode::INVALID_PRODUCER_EPOCH,
            ProducerError::OutOfOrder { .. } => ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER,
            ProducerError::InvalidSequence { .. } => ErrorCode::INVALID_RECORD,
        }
    }
}

impl std::fmt::Display for ProducerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProducerError::InvalidEpoch {
                producer_id,
                epoch,
                current,
            } => write!(
                f,
                "producer {producer_id}: epoch {epoch} is older than the current {current}"
            ),
            ProducerError::OutOfOrder {
                producer_id,
                epoch,
                first_seq,
                last_seq: Some(last),
            } => write!(
                f,
                "producer {producer_id} epoch {epoch}: sequence {first_seq} does not follow \
                 {last}, the last this partition has"
            ),
            ProducerError::OutOfOrder {
                producer_id,
                epoch,
                first_seq,
                last_seq: None,
            } => write!(
                f,
                "producer {producer_id}: the first batch of its new epoch {epoch} starts at \
                 sequence {first_seq}, not 0"
            ),
            ProducerError::InvalidSequence { producer_id } => {
                write!(f, "producer {producer_id}: negative sequence or epoch")
            }
        }
    }
}

/// What the writer does with one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write it (a non-idempotent batch, or the next in its producer's sequence).
    Append,
    /// Already in the log at this base offset: answer with it, write nothing.
    Duplicate { base_offset: i64 },
}

/// The last sequence of a batch: `baseSequence + lastOffsetDelta`, wrapping
/// past `i32::MAX` to 0 as Kafka's `DefaultRecordBatch.incrementSequence`.
pub(crate) fn last_sequence(header: &BatchHeader) -> i32 {
    let first = i64::from(header.base_sequence);
    let delta = i64::from(header.last_offset_delta.max(0));
    let sum = first + delta;
    match sum > i64::from(i32::MAX) {
        true => (sum - i64::from(i32::MAX) - 1) as i32,
        false => sum as i32,
    }
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    i64::from(next_seq) == i64::from(last_seq) + 1 || (next_seq == 0 && last_seq == i32::MAX)
}

/// Checks one idempotent batch against what is known of its producer.
pub(crate) fn check(
    entry: Option<&ProducerEntry>,
    header: &BatchHeader,
) -> Result<Verdict, ProducerError> {
    let producer_id = header.producer_id;
    if header.base_sequence < 0 || header.producer_epoch < 0 {
        return Err(ProducerError::InvalidSequence { producer_id });
    }
    let Some(entry) = entry else {
        return Ok(Verdict::Append);
    };
    let (epoch, first_seq) = (header.producer_epoch, header.base_sequence);
    let out_of_order = |last_seq| ProducerError::OutOfOrder {
        producer_id,
        epoch,
        first_seq,
        last_seq,
    };
    if epoch < entry.epoch {
        let current = entry.epoch;
        return Err(ProducerError::InvalidEpoch {
            producer_id,
            epoch,
            current,
        });
    }
    if epoch > entry.epoch {
        return match first_seq {
            0 => Ok(Verdict::Append),
            _ => Err(out_of_order(None)),
        };
    }
    let last_seq = last_sequence(header);
    let same = |b: &&BatchMeta| b.first_seq == first_seq && b.last_seq == last_seq;
    if let Some(b) = entry.batches.iter().find(same) {
        return Ok(Verdict::Duplicate {
            base_offset: b.base_offset,
        });
    }
    match entry.batches.back() {
        Some(b) if !in_sequence(b.last_seq, first_seq) => Err(out_of_order(Some(b.last_seq))),
        _ => Ok(Verdict::Append),
    }
}

/// Producer entries changed by appends not yet written: checked against,
/// then applied to [`ProducerStates`] once the write completes.
#[derive(Debug, Default)]
pub(crate) struct ProducerChanges {
    entries: HashMap<i64, ProducerEntry>,
}

impl ProducerChanges {
    pub(crate) fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id)
    }

    /// Notes a batch about to be written at `base_offset`; `known` is the
    /// producer's entry before it (from earlier changes or the state).
    pub(crate) fn add(
        &mut self,
        known: Option<&ProducerEntry>,
        header: &BatchHeader,
        base_offset: i64,
    ) {
        let entry = self.entries.entry(header.producer_id).or_insert_with(|| {
            known
                .cloned()
                .unwrap_or_else(|| ProducerEntry::new(header.producer_epoch))
        });
        entry.add(header, base_offset);
    }

    /// Takes on `later`'s entries (an append that passed every check).
    pub(crate) fn merge(&mut self, later: ProducerChanges) {
        self.entries.extend(later.entries);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Every producer a partition knows, bounded, least recently used evicted.
#[derive(Debug)]
pub(crate) struct ProducerStates {
    entries: HashMap<i64, (ProducerEntry, u64)>,
    /// Use stamp -> producer id, oldest first.
    lru: BTreeMap<u64, i64>,
    clock: u64,
    producers_max: usize,
}

impl Default for ProducerStates {
    fn default() -> Self {
        ProducerStates::with_limit(PRODUCERS_PER_PARTITION_MAX)
    }
}

impl ProducerStates {
    pub(crate) fn with_limit(producers_max: usize) -> Self {
        assert!(
            producers_max > 0,
            "a partition tracks at least one producer"
        );
        ProducerStates {
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            producers_max,
        }
    }

    pub(crate) fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.entries.get(&producer_id).map(|(e, _)| e)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Makes written batches' changes part of the state.
    pub(crate) fn apply(&mut self, changes: ProducerChanges) {
        for (producer_id, entry) in changes.entries {
            self.put(producer_id, entry);
        }
    }

    /// Sets one producer's entry, marking it the most recently used.
    pub(crate) fn put(&mut self, producer_id: i64, entry: ProducerEntry) {
        self.clock += 1;
        let stamp = self.clock;
        if let Some((_, old)) = self.entries.insert(producer_id, (entry, stamp)) {
            self.lru.remove(&old);
        }
        self.lru.insert(stamp, producer_id);
        while self.entries.len() > self.producers_max {
            let Some((_, oldest)) = self.lru.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    /// Notes a batch found in the log (rebuilding the state: no checks).
    pub(crate) fn replay(&mut self, header: &BatchHeader) {
        if header.producer_id < 0 {
            return;
        }
        let mut entry = self
            .get(header.producer_id)
            .cloned()
            .unwrap_or_else(|| ProducerEntry::new(header.producer_epoch));
        entry.add(header, header.base_offset);
        self.put(header.producer_id, entry);
    }

    /// Forgets producers whose newest batch is older than `expiration_ms`.
    pub(crate) fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let doomed: Vec<(i64, u64)> = self
            .entries
            .iter()
            .filter(|(_, (e, _))| now_ms.saturating_sub(e.last_timestamp) >= expiration_ms)
            .map(|(pid, (_, stamp))| (*pid, *stamp))
            .collect();
        for (pid, stamp) in &doomed {
            self.entries.remove(pid);
            self.lru.remove(stamp);
        }
        doomed.len()
    }

    /// Entries in least-recently-used order (for snapshots: reloading them
    /// in this order keeps the eviction order).
    fn in_use_order(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.lru
            .values()
            .filter_map(|pid| self.entries.get(pid).map(|(e, _)| (*pid, e)))
    }
}

/// The snapshot file format (`<offset>.snapshot`, all big-endian):
///
/// ```text
/// magic    4  "SLPS"
/// version  2  1
/// offset   8  the state covers every batch below this offset
/// count    4  producers
/// count x producer:
///   producer_id i64 | epoch i16 | last_timestamp i64 | batches u8 (<= 5)
///   batches x { first_seq i32 | last_seq i32 | base_offset i64 |
///               last_offset i64 | timestamp i64 }
/// crc      4  CRC-32C of everything before it
/// ```
pub(crate) mod snapshot_format {
    use super::*;

    const MAGIC: &[u8; 4] = b"SLPS";
    const VERSION: u16 = 1;
    const HEADER_BYTES: usize = 4 + 2 + 8 + 4;
    const PRODUCER_BYTES: usize = 8 + 2 + 8 + 1;
    const BATCH_BYTES: usize = 4 + 4 + 8 + 8 + 8;
    const CRC_BYTES: usize = 4;

    pub(crate) fn encode(states: &ProducerStates, offset: i64) -> Vec<u8> {
        let n = states.len();
        let mut out = Vec::with_capacity(HEADER_BYTES + n * (PRODUCER_BYTES + 5 * BATCH_BYTES));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(n as u32).to_be_bytes());
        for (pid, e) in states.in_use_order() {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_timestamp.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
                out.extend_from_slice(&b.timestamp.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// The offset a snapshot covers and its producers; `None` when the bytes
    /// are not a whole, intact snapshot.
    pub(crate) fn decode(bytes: &[u8]) -> Option<(i64, Vec<(i64, ProducerEntry)>)> {
        let body_len = bytes.len().checked_sub(CRC_BYTES)?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return None;
        }
        let mut r = Reader(body);
        if r.take(4)? != MAGIC || u16::from_be_bytes(r.array()?) != VERSION {
            return None;
        }
        let offset = i64::from_be_bytes(r.array()?);
        let count = u32::from_be_bytes(r.array()?) as usize;
        let mut producers = Vec::with_capacity(count.min(body.len() / PRODUCER_BYTES));
        for _ in 0..count {
            producers.push(producer(&mut r)?);
        }
        r.0.is_empty().then_some((offset, producers))
    }

    fn producer(r: &mut Reader<'_>) -> Option<(i64, ProducerEntry)> {
        let pid = i64::from_be_bytes(r.array()?);
        let mut entry = ProducerEntry::new(i16::from_be_bytes(r.array()?));
        entry.last_timestamp = i64::from_be_bytes(r.array()?);
        let n = r.take(1)?[0] as usize;
        if n > PRODUCER_BATCHES_KEPT {
            return None;
        }
        for _ in 0..n {
            entry.batches.push_back(BatchMeta {
                first_seq: i32::from_be_bytes(r.array()?),
                last_seq: i32::from_be_bytes(r.array()?),
                base_offset: i64::from_be_bytes(r.array()?),
                last_offset: i64::from_be_bytes(r.array()?),
                timestamp: i64::from_be_bytes(r.array()?),
            });
        }
        Some((pid, entry))
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (head, tail) = self.0.split_at(n);
            self.0 = tail;
            Some(head)
        }

        fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
            self.take(N)?.try_into().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch::{BatchBuilder, BatchHeader};

    fn header(pid: i64, epoch: i16, seq: i32, records: i32) -> BatchHeader {
        let mut b = BatchBuilder::new(1000);
        for _ in 0..records {
            b.push(1000, Some(b"k"), Some(b"v"), &[]);
        }
        b.set_producer(pid, epoch, seq);
        BatchHeader::parse(&b.finish()).expect("header")
    }

    fn write(states: &mut ProducerStates, h: &BatchHeader, base_offset: i64) {
        let mut changes = ProducerChanges::default();
        changes.add(states.get(h.producer_id), h, base_offset);
        states.apply(changes);
    }

    #[test]
    fn sequences_continue_wrap_and_duplicates_are_found() {
        let mut s = ProducerStates::default();
        let first = header(7, 0, 0, 3);
        assert_eq!(check(s.get(7), &first), Ok(Verdict::Append));
        write(&mut s, &first, 100);
        assert_eq!(
            check(s.get(7), &first),
            Ok(Verdict::Duplicate { base_offset: 100 })
        );
        assert!(check(s.get(7), &header(7, 0, 4, 1)).is_err(), "gap");
        assert_eq!(check(s.get(7), &header(7, 0, 3, 1)), Ok(Verdict::Append));
        let wrap = header(8, 0, i32::MAX - 1, 3);
        assert_eq!(last_sequence(&wrap), 0);
        write(&mut s, &wrap, 200);
        assert_eq!(check(s.get(8), &header(8, 0, 1, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut s = ProducerStates::default();
        write(&mut s, &header(7, 3, 0, 1), 0);
        let old = check(s.get(7), &header(7, 2, 1, 1));
        assert!(matches!(old, Err(ProducerError::InvalidEpoch { .. })));
        let new_not_zero = check(s.get(7), &header(7, 4, 5, 1));
        assert!(matches!(
            new_not_zero,
            Err(ProducerError::OutOfOrder { .. })
        ));
        assert_eq!(
            new_not_zero.map_err(|e| e.to_string()),
            Err(
                "producer 7: the first batch of its new epoch 4 starts at sequence 5, not 0".into()
            )
        );
        assert_eq!(check(s.get(7), &header(7, 4, 0, 1)), Ok(Verdict::Append));
        assert_eq!(check(None, &header(9, 0, 42, 1)), Ok(Verdict::Append));
    }

    #[test]
    fn eviction_expiry_and_snapshot_round_trip() {
        let mut s = ProducerStates::with_limit(2);
        for pid in 0..3 {
            write(&mut s, &header(pid, 0, 0, 1), pid * 10);
        }
        assert_eq!(s.len(), 2);
        assert!(s.get(0).is_none(), "least recently used is evicted");
        let bytes = snapshot_format::encode(&s, 30);
        let (offset, producers) = snapshot_format::decode(&bytes).expect("decodes");
        assert_eq!(offset, 30);
        assert_eq!(producers.len(), 2);
        assert_eq!(Some(&producers[1].1), s.get(2));
        for cut in 0..bytes.len() {
            assert!(snapshot_format::decode(&bytes[..cut]).is_none());
        }
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert!(snapshot_format::decode(&bad).is_none());
        assert_eq!(s.expire(1000 + 500, 500), 2);
        assert_eq!(s.len(), 0);
    }
}
