//! Per-shard debug counters (thread-local: each shard counts its own).
//!
//! `payload_copies` counts every user-space copy of record bytes: one per
//! batch on the produce path (socket buffer to the aligned write buffer) and
//! one per batch served from a segment file by the copying read path. Tests
//! assert it, so a new copy on a hot path shows up as a failing test.

use std::cell::Cell;

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
}

pub fn add_linked_flushes(n: u64) {
    LINKED_FLUSHES.with(|c| c.set(c.get() + n));
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
    }
}
