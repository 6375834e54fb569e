//! Every limit of the storage engine, in one place.
//!
//! Relationships between limits are checked at compile time.

/// Direct I/O alignment: positions and lengths of every write are multiples.
pub const BLOCK_BYTES: usize = 4096;

/// The largest single batch the engine accepts, whatever a topic says.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Bounds on `segment.bytes`. Index entries store 32-bit positions, so a
/// segment must stay below 4 GiB.
pub const SEGMENT_BYTES_MIN: u64 = 16 * 1024;
pub const SEGMENT_BYTES_MAX: u64 = 2 * 1024 * 1024 * 1024;
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Default `max.message.bytes` (Kafka's default: 1 MiB plus the batch overhead).
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1024 * 1024 + 12;

/// One write to a segment file carries at most this many bytes of batches;
/// a larger backlog is written in several turns.
pub const WRITE_BYTES_MAX: usize = 8 * 1024 * 1024;

/// A sparse index entry is written after at least this many bytes of batches.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;

/// Appends queued per partition before producers are pushed back on.
pub const APPEND_QUEUE_DEPTH: usize = 1024;

/// Bytes of recently written batches each shard keeps in memory.
pub const TAIL_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Smallest read from a segment file when serving a fetch.
pub const FETCH_READ_BYTES_MIN: usize = 64 * 1024;

/// Largest `max_bytes` a fetch may ask of one partition (bounds allocation).
pub const FETCH_PARTITION_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Batches remembered per idempotent producer for duplicate detection
/// (Kafka's `ProducerStateEntry.NUM_BATCHES_TO_RETAIN`, matching the
/// client's `max.in.flight.requests.per.connection` limit of 5).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Idempotent producers tracked per partition; beyond it the least recently
/// used one is forgotten (its next batch is accepted as from a new producer).
pub const PRODUCERS_PER_PARTITION_MAX: usize = 100_000;

/// Producer-state snapshots kept per partition (the newest ones).
pub const PRODUCER_SNAPSHOTS_KEPT: usize = 2;

/// Bytes read at a time when rebuilding producer state from batch headers.
pub const PRODUCER_SCAN_READ_BYTES: usize = 1024 * 1024;

/// Bytes of keys the log cleaner's key map grows to before it stops reading
/// further segments in one cleaning.
pub const CLEANER_KEY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The log cleaner reads and writes segments in pieces of this size.
pub const CLEANER_WRITE_BYTES: usize = 1024 * 1024;

const _: () = assert!(BATCH_BYTES_MAX as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(WRITE_BYTES_MAX >= MESSAGE_BYTES_MAX_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_MIN as usize >= BLOCK_BYTES);
const _: () = assert!(FETCH_READ_BYTES_MIN.is_multiple_of(BLOCK_BYTES));
