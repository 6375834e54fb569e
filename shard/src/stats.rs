//! Per-shard debug counters (thread-local: each shard counts its own).
//!
//! `payload_copies` counts every user-space copy of record bytes: one per
//! batch on the produce path (socket buffer to the aligned write buffer) and
//! one per batch served from a segment file by the copying read path. Tests
//! assert it, so a new copy on a hot path shows up as a failing test.
//!
//! Two latency histograms say where an acknowledged append's time goes on
//! the disk: each segment write from submission to completion, and each
//! flush (a partition's own `fdatasync`, one shared by the shard's
//! partitions, or one linked behind its write, timed from the write's
//! completion) until it is done. Two more time the broker's whole part in
//! a Produce and a Fetch: from the request's last byte received to its
//! response's last byte handed to the socket (a fetch's wait for data
//! included), so a client's latency can be split into the broker's and
//! the rest.

use std::cell::Cell;
use std::thread::LocalKey;
use std::time::Duration;

/// Upper bounds of the latency histograms' buckets, in microseconds; a last
/// bucket holds everything slower. Finer below 2.5 ms, where a low-latency
/// client's median and 99th percentile lie.
pub const LATENCY_BUCKETS_US: [u64; 19] = [
    25, 50, 100, 175, 250, 375, 500, 750, 1_000, 1_500, 2_500, 5_000, 10_000, 25_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000,
];

/// Counts of durations by bucket of [`LATENCY_BUCKETS_US`] (not cumulative:
/// each duration counts once, in the first bucket whose bound it does not
/// pass; the last entry counts those slower than every bound), and their sum.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub counts: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub sum_us: u64,
}

impl LatencyHistogram {
    pub fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(bound in us, durations at or below it)` for every bound, then
    /// `(None, all)`: the cumulative form Prometheus histograms use.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        let mut out: Vec<(Option<u64>, u64)> = LATENCY_BUCKETS_US
            .iter()
            .zip(self.counts.iter())
            .map(|(&bound, &n)| {
                total += n;
                (Some(bound), total)
            })
            .collect();
        out.push((None, self.count()));
        out
    }
}

thread_local! {
    static PAYLOAD_COPIES: Cell<u64> = const { Cell::new(0) };
    static CACHE_READS: Cell<u64> = const { Cell::new(0) };
    static BYTES_APPENDED: Cell<u64> = const { Cell::new(0) };
    static BYTES_READ: Cell<u64> = const { Cell::new(0) };
    static ZEROS_FILLED: Cell<u64> = const { Cell::new(0) };
    static FDATASYNCS: Cell<u64> = const { Cell::new(0) };
    static SHARED_FLUSHES: Cell<u64> = const { Cell::new(0) };
    static ANCHORED_FLUSHES: Cell<u64> = const { Cell::new(0) };
    static LINKED_FLUSHES: Cell<u64> = const { Cell::new(0) };
    static REGISTERED_WRITES: Cell<u64> = const { Cell::new(0) };
    static READ_AHEAD_BYTES: Cell<u64> = const { Cell::new(0) };
    static READ_AHEAD_HITS: Cell<u64> = const { Cell::new(0) };
    static READ_AHEAD_DROPPED: Cell<u64> = const { Cell::new(0) };
    static READ_AHEAD_REFUSED: Cell<u64> = const { Cell::new(0) };
    static READ_AHEAD_KEPT: Cell<u64> = const { Cell::new(0) };
    static SEGMENT_BYTES_READ: Cell<u64> = const { Cell::new(0) };
    static WRITE_LATENCY: Cell<LatencyHistogram> = const { Cell::new(LatencyHistogram { counts: [0; LATENCY_BUCKETS_US.len() + 1], sum_us: 0 }) };
    static FLUSH_LATENCY: Cell<LatencyHistogram> = const { Cell::new(LatencyHistogram { counts: [0; LATENCY_BUCKETS_US.len() + 1], sum_us: 0 }) };
    static PRODUCE_LATENCY: Cell<LatencyHistogram> = const { Cell::new(LatencyHistogram { counts: [0; LATENCY_BUCKETS_US.len() + 1], sum_us: 0 }) };
    static FETCH_LATENCY: Cell<LatencyHistogram> = const { Cell::new(LatencyHistogram { counts: [0; LATENCY_BUCKETS_US.len() + 1], sum_us: 0 }) };
}

/// The requests whose time in the broker is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimedRequest {
    Produce,
    Fetch,
}

/// Records how long one answered request spent in the broker: from its
/// last byte received to its response's last byte sent.
pub fn record_request(kind: TimedRequest, took: Duration) {
    let cell = match kind {
        TimedRequest::Produce => &PRODUCE_LATENCY,
        TimedRequest::Fetch => &FETCH_LATENCY,
    };
    record_into(cell, took);
}

fn record_into(cell: &'static LocalKey<Cell<LatencyHistogram>>, took: Duration) {
    cell.with(|c| {
        let mut h = c.get();
        h.record(took);
        c.set(h);
    });
}

/// Records how long one segment write took, submission to completion.
pub fn record_write(took: Duration) {
    record_into(&WRITE_LATENCY, took);
}

/// Records how long one flush of appends took until it was done.
pub fn record_flush(took: Duration) {
    record_into(&FLUSH_LATENCY, took);
}

pub fn add_linked_flushes(n: u64) {
    LINKED_FLUSHES.with(|c| c.set(c.get() + n));
}

pub fn add_registered_writes(n: u64) {
    REGISTERED_WRITES.with(|c| c.set(c.get() + n));
}

/// A read ahead of `bytes` was started (`readahead`).
pub fn add_read_ahead_started(bytes: u64) {
    READ_AHEAD_BYTES.with(|c| c.set(c.get() + bytes));
}

/// A fetch found its read ahead (started by the fetch before it).
pub fn add_read_ahead_hits(n: u64) {
    READ_AHEAD_HITS.with(|c| c.set(c.get() + n));
}

/// A read ahead was not started: the budget was full of fresh reads.
pub fn add_read_ahead_refused(n: u64) {
    READ_AHEAD_REFUSED.with(|c| c.set(c.get() + n));
}

/// Bytes a fetch had read but did not send, kept for the fetch that comes
/// next at that offset (`readahead`).
pub fn add_read_ahead_kept(bytes: u64) {
    READ_AHEAD_KEPT.with(|c| c.set(c.get() + bytes));
}

/// Bytes read from segment files (the disk, for reads and reads ahead).
pub fn add_segment_bytes_read(bytes: u64) {
    SEGMENT_BYTES_READ.with(|c| c.set(c.get() + bytes));
}

/// Reads ahead dropped unused (stale, partition closed, file gone).
pub fn add_read_ahead_dropped(n: u64) {
    READ_AHEAD_DROPPED.with(|c| c.set(c.get() + n));
}

pub fn add_anchored_flushes(n: u64) {
    ANCHORED_FLUSHES.with(|c| c.set(c.get() + n));
}

pub fn add_fdatasyncs(n: u64) {
    FDATASYNCS.with(|c| c.set(c.get() + n));
}

pub fn add_shared_flushes(n: u64) {
    SHARED_FLUSHES.with(|c| c.set(c.get() + n));
}

pub fn add_zeros_filled(n: u64) {
    ZEROS_FILLED.with(|c| c.set(c.get() + n));
}

pub fn add_bytes_appended(n: u64) {
    BYTES_APPENDED.with(|c| c.set(c.get() + n));
}

pub fn add_bytes_read(n: u64) {
    BYTES_READ.with(|c| c.set(c.get() + n));
}

pub fn add_payload_copies(n: u64) {
    PAYLOAD_COPIES.with(|c| c.set(c.get() + n));
}

pub fn add_cache_reads(n: u64) {
    CACHE_READS.with(|c| c.set(c.get() + n));
}

/// Counters of the calling shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    pub payload_copies: u64,
    pub cache_reads: u64,
    /// Bytes of batches written to segment files.
    pub bytes_appended: u64,
    /// Bytes of batches returned by reads (cache and segments).
    pub bytes_read: u64,
    /// Bytes of zeros written ahead of the appends (see `partition::fill_ahead`).
    pub zeros_filled: u64,
    /// `fdatasync`s issued to answer flushed appends: each partition's own
    /// and each shared device flush (`flush`).
    pub fdatasyncs: u64,
    /// Flushes of written groups answered by a shared device flush.
    pub shared_flushes: u64,
    /// Shared device flushes issued as an `fdatasync` of the shard's empty
    /// anchor file (`flush::prepare_anchor`), not of a waiting segment.
    pub anchored_flushes: u64,
    /// Of `fdatasyncs`, those linked behind their write in the side ring
    /// (started by the kernel as the write completed).
    pub linked_flushes: u64,
    /// Segment writes of appends from registered buffers (the arena's
    /// chunks, `WRITEV_FIXED`): no pages pinned per write.
    pub registered_writes: u64,
    /// Bytes of segment files read ahead of consumers (`readahead`).
    pub read_ahead_bytes: u64,
    /// Fetches that found their read ahead.
    pub read_ahead_hits: u64,
    /// Reads ahead dropped before any fetch took them.
    pub read_ahead_dropped: u64,
    /// Reads ahead not started because the budget was full.
    pub read_ahead_refused: u64,
    /// Bytes already read that a fetch left unsent, kept in memory for the
    /// next fetch at their offset instead of being read again.
    pub read_ahead_kept: u64,
    /// Bytes read from segment files, by fetches and reads ahead.
    pub segment_bytes_read: u64,
    /// Segment writes of appends, submission to completion.
    pub write_latency: LatencyHistogram,
    /// Flushes of appends (each `fdatasync` counted in `fdatasyncs`).
    pub flush_latency: LatencyHistogram,
    /// Answered Produce requests, last byte in to last byte out.
    pub produce_latency: LatencyHistogram,
    /// Answered Fetch requests, last byte in to last byte out.
    pub fetch_latency: LatencyHistogram,
}

pub fn snapshot() -> ShardCounters {
    ShardCounters {
        payload_copies: PAYLOAD_COPIES.with(Cell::get),
        cache_reads: CACHE_READS.with(Cell::get),
        bytes_appended: BYTES_APPENDED.with(Cell::get),
        bytes_read: BYTES_READ.with(Cell::get),
        zeros_filled: ZEROS_FILLED.with(Cell::get),
        fdatasyncs: FDATASYNCS.with(Cell::get),
        shared_flushes: SHARED_FLUSHES.with(Cell::get),
        anchored_flushes: ANCHORED_FLUSHES.with(Cell::get),
        linked_flushes: LINKED_FLUSHES.with(Cell::get),
        registered_writes: REGISTERED_WRITES.with(Cell::get),
        read_ahead_bytes: READ_AHEAD_BYTES.with(Cell::get),
        read_ahead_hits: READ_AHEAD_HITS.with(Cell::get),
        read_ahead_dropped: READ_AHEAD_DROPPED.with(Cell::get),
        read_ahead_refused: READ_AHEAD_REFUSED.with(Cell::get),
        read_ahead_kept: READ_AHEAD_KEPT.with(Cell::get),
        segment_bytes_read: SEGMENT_BYTES_READ.with(Cell::get),
        write_latency: WRITE_LATENCY.with(Cell::get),
        flush_latency: FLUSH_LATENCY.with(Cell::get),
        produce_latency: PRODUCE_LATENCY.with(Cell::get),
        fetch_latency: FETCH_LATENCY.with(Cell::get),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_in_the_first_bucket_whose_bound_they_do_not_pass() {
        let mut h = LatencyHistogram::default();
        for us in [0, 50, 51, 999, 1_000, 1_001, 2_000_000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum_us, 50 + 51 + 999 + 1_000 + 1_001 + 2_000_000);
        // 0 in the 25-us bucket, 50 in the 50-us one, 51 in the 100-us one,
        // 999 and 1,000 in the 1-ms one, 1,001 in the 1.5-ms one, 2 s above
        // all.
        let cumulative = h.cumulative();
        let at = |bound: u64| {
            cumulative
                .iter()
                .find(|(b, _)| *b == Some(bound))
                .map(|(_, n)| *n)
        };
        assert_eq!(at(50), Some(2));
        assert_eq!(at(100), Some(3));
        assert_eq!(at(500), Some(3));
        assert_eq!(at(1_000), Some(5));
        assert_eq!(at(2_500), Some(6));
        assert_eq!(at(1_000_000), Some(6));
        assert_eq!(cumulative.last(), Some(&(None, 7)));
        assert!(cumulative.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn each_shard_thread_records_its_own() {
        record_write(Duration::from_micros(300));
        record_flush(Duration::from_millis(3));
        let before = snapshot();
        record_request(TimedRequest::Produce, Duration::from_micros(420));
        let here = snapshot();
        assert!(here.write_latency.count() >= 1);
        assert!(here.flush_latency.count() >= 1);
        assert_eq!(
            here.produce_latency.count(),
            before.produce_latency.count() + 1
        );
        assert_eq!(here.fetch_latency, before.fetch_latency, "a produce only");
        let elsewhere = std::thread::spawn(snapshot).join().expect("thread");
        assert_eq!(elsewhere.write_latency, LatencyHistogram::default());
        assert_eq!(elsewhere.flush_latency, LatencyHistogram::default());
        assert_eq!(elsewhere.produce_latency, LatencyHistogram::default());
    }
}
