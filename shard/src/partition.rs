//! One partition's log: segments on direct I/O, group-committed appends,
//! reads by offset and by time, retention, and crash recovery.
//!
//! A `Partition` is `!Send`: it lives on its owning shard and nothing else
//! touches it. Appends are queued and written by one writer task per
//! partition; every append queued while the previous write was in flight goes
//! into the next single write (group commit). When any of them asks for
//! durability, the written group goes to the partition's flusher task, which
//! answers it after an `fdatasync` that began once the write was done; the
//! writer meanwhile goes on with the next group, and groups written during
//! one flush share the next. A landed write needing its own flush carries
//! it linked behind it in the side ring (`uring`), so the flush starts in
//! the kernel as the write completes; the flusher then only waits for it,
//! and it covers everything the partition wrote before. Offsets are
//! assigned by the writer, so a failed
//! write consumes none. The writer also checks idempotent producers'
//! sequences as it assigns offsets (`producer`), in queue order: a retried
//! batch is answered with its original offset and not written again, and an
//! out-of-sequence or fenced one refuses its whole append. Transactional and
//! control batches are refused (INVALID_RECORD): transactions are not
//! supported.
//!
//! What the offsets mean on a single node:
//! - log end offset: one past the last batch whose direct-I/O write completed;
//! - high watermark: the same (the data is on the device; a process crash
//!   cannot lose it), and consumers read up to it;
//! - log start offset: the base offset of the oldest retained segment.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::{BufferedFile, DmaBuffer, DmaFile, OpenOptions};
use glommio::sync::{Semaphore, StaticPermit};
use sluice_protocol::batch::{self, BatchError, BatchHeader};
use sluice_protocol::ErrorCode;

use crate::cache::{CacheKey, CachedBatch, TailCache, STAMPED_PREFIX_BYTES};
use crate::config::LogConfig;
use crate::index::{IndexEntry, SegmentIndex};
use crate::limits::{
    APPEND_QUEUE_DEPTH, BLOCK_BYTES, FETCH_PARTITION_BYTES_MAX, FETCH_READ_BYTES_MIN,
    WRITE_BYTES_MAX,
};
use crate::producer::{self, ProducerChanges, ProducerError, ProducerStates, Verdict};
use crate::{snapshot, stats};

/// A failure of the disk or the file system (Kafka: KAFKA_STORAGE_ERROR).
#[derive(Debug, Clone)]
pub struct StorageError(pub String);

impl StorageError {
    pub(crate) fn io(op: &str, path: &Path, e: impl Into<io::Error>) -> Self {
        StorageError(format!("{op} {}: {}", path.display(), e.into()))
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an append was refused. Nothing of a refused append is written.
#[derive(Debug, Clone)]
pub enum AppendError {
    /// A batch failed validation (CRC, length, count, magic).
    Batch(BatchError),
    /// A batch is larger than the topic's `max.message.bytes`.
    TooLarge { bytes: usize, max: usize },
    /// A well-formed batch this log does not accept: a transactional or
    /// control batch (transactions are not supported), or a record without a
    /// key on a compacted topic (Kafka: INVALID_RECORD).
    InvalidRecord(String),
    /// An idempotent producer's batch is out of sequence or fenced.
    Producer(ProducerError),
    /// The write or the flush failed; retryable once the disk recovers.
    Storage(StorageError),
    /// The partition was deleted or the shard is stopping.
    Closed,
}

impl AppendError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            AppendError::Batch(e) => e.error_code(),
            AppendError::TooLarge { .. } => ErrorCode::MESSAGE_TOO_LARGE,
            AppendError::InvalidRecord(_) => ErrorCode::INVALID_RECORD,
            AppendError::Producer(e) => e.error_code(),
            AppendError::Storage(_) => ErrorCode::KAFKA_STORAGE_ERROR,
            AppendError::Closed => ErrorCode::NOT_LEADER_OR_FOLLOWER,
        }
    }

    /// What a producer is told beyond the error code: which check a batch
    /// failed, or which limit or sequence it broke. `None` for storage
    /// errors (the broker's log names the file and the cause; clients are
    /// not told the broker's paths) and for a closed partition, whose code
    /// says all a client acts on.
    pub fn client_message(&self) -> Option<String> {
        match self {
            AppendError::Storage(_) | AppendError::Closed => None,
            AppendError::Batch(_)
            | AppendError::TooLarge { .. }
            | AppendError::InvalidRecord(_)
            | AppendError::Producer(_) => Some(self.to_string()),
        }
    }
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Batch(e) => write!(f, "invalid batch: {e}"),
            AppendError::TooLarge { bytes, max } => {
                write!(f, "batch of {bytes} bytes exceeds max.message.bytes {max}")
            }
            AppendError::InvalidRecord(why) => write!(f, "invalid record: {why}"),
            AppendError::Producer(e) => write!(f, "{e}"),
            AppendError::Storage(e) => write!(f, "storage error: {e}"),
            AppendError::Closed => f.write_str("partition closed"),
        }
    }
}

/// Why a read was refused.
#[derive(Debug, Clone)]
pub enum ReadError {
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    Storage(StorageError),
}

impl ReadError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            ReadError::OffsetOutOfRange { .. } => ErrorCode::OFFSET_OUT_OF_RANGE,
            ReadError::Storage(_) => ErrorCode::KAFKA_STORAGE_ERROR,
        }
    }
}

/// The exact offsets of a partition at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub log_start: i64,
    pub high_watermark: i64,
    pub log_end: i64,
}

/// What a successful append reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record of the first batch of the append.
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// Batches read from a partition, ready for a vectored write.
#[derive(Debug, Default)]
pub struct ReadBatches {
    pub chunks: Vec<Bytes>,
    pub bytes: usize,
    /// Set by [`Partition::read_fitting`] when nothing was read because the
    /// first batch at the offset is larger than the limit: its size.
    pub next_batch_bytes: Option<usize>,
}

/// The shard's memory a partition reads through: its tail cache (with the
/// partition's key in it) and its reads ahead of consumers.
pub struct Caches {
    pub tail: Rc<TailCache>,
    pub key: CacheKey,
    pub read_ahead: Rc<crate::readahead::ReadAhead>,
}

/// Where the fetch after a read from segment files would start: the offset
/// after its last batch, at `pos` of the segment based at `seg_base`.
struct Resume {
    offset: i64,
    seg_base: i64,
    file: Rc<DmaFile>,
    pos: u64,
    /// The segment's bytes from `pos` on that this read already holds and
    /// did not return: kept for that fetch rather than read again.
    rest: Option<Bytes>,
}

/// How durable an append must be before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The direct-I/O write has completed (`acks=0`, `acks=1`).
    Written,
    /// The write is also flushed with `fdatasync` (`acks=all`).
    Flushed,
}

pub(crate) struct Segment {
    pub(crate) base_offset: i64,
    pub(crate) path: PathBuf,
    pub(crate) file: Rc<DmaFile>,
    /// Logical length: the end of the last valid batch.
    pub(crate) size: u64,
    /// Bytes of the last partial block, rewritten by the next write.
    pub(crate) tail: Vec<u8>,
    /// The file's length as this shard preallocated it ([`preallocate`]); 0
    /// when unknown.
    pub(crate) allocated: u64,
    /// The file holds zeros (written by this shard) from `size` up to here:
    /// a landed write may start past them without rewriting the last block.
    pub(crate) zeroed_to: u64,
    /// Where the last zero fill ([`fill_ahead`]) ended: the next one starts
    /// there, while that is far enough ahead of the data.
    pub(crate) filled_to: u64,
    /// Where the run of zero fills ending at `filled_to` began.
    pub(crate) fill_from: u64,
    /// The prefix of the file whose blocks were written, inside its size,
    /// before an `fdatasync` of it began and finished: a write below it
    /// changes no metadata, so a device flush shared with other partitions
    /// makes it durable (`flush`).
    pub(crate) stable_to: u64,
    /// The device this file's flushes may be shared on
    /// ([`crate::flush::shared_flush_device`]).
    pub(crate) flush_dev: Option<u64>,
    pub(crate) index: SegmentIndex,
    pub(crate) bytes_since_index: u32,
    pub(crate) max_timestamp: i64,
    /// Offset of the last record, or `base_offset - 1` when empty.
    pub(crate) last_offset: i64,
    pub(crate) created: Instant,
}

pub(crate) struct State {
    pub(crate) segments: Vec<Segment>,
    pub(crate) log_start: i64,
    log_end: i64,
    leader_epoch: i32,
    pub(crate) config: LogConfig,
    last_flush: Instant,
    pub(crate) closed: bool,
    /// Idempotent producers' sequences: changed only by the writer task.
    producers: ProducerStates,
}

/// Where the writer puts one batch of an append.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Written with this base offset.
    Write(i64),
    /// A producer's retry of a batch already at this base offset: not written.
    Duplicate(i64),
}

impl Slot {
    fn base_offset(self) -> i64 {
        match self {
            Slot::Write(o) | Slot::Duplicate(o) => o,
        }
    }
}

struct PendingAppend {
    batches: Vec<(Bytes, BatchHeader)>,
    /// One per batch, decided by the writer as it assigns offsets.
    slots: Vec<Slot>,
    bytes: usize,
    durability: Durability,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
    _permit: StaticPermit,
}

/// One partition's log, owned by one shard (`!Send`).
pub struct Partition {
    pub topic: Rc<str>,
    pub partition: u32,
    pub(crate) dir: PathBuf,
    pub(crate) cache_key: CacheKey,
    pub(crate) cache: Rc<TailCache>,
    /// The shard's reads ahead of consumers (`readahead`).
    pub(crate) read_ahead: Rc<crate::readahead::ReadAhead>,
    pub(crate) state: RefCell<State>,
    /// What the log cleaner knows of this partition (`compaction.rs`).
    pub(crate) cleaner: RefCell<crate::compaction::CleanerState>,
    queue: RefCell<VecDeque<PendingAppend>>,
    queue_slots: Rc<Semaphore>,
    doorbell: LocalSender<()>,
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    appended_batches: Cell<u64>,
    /// Written groups waiting for their flush (`flusher_loop`).
    flushes: RefCell<VecDeque<PendingFlush>>,
    flush_doorbell: LocalSender<()>,
    /// The flusher is flushing (its group is out of `flushes`).
    flushing: Cell<bool>,
    /// Woken each time the flusher runs out of work.
    flush_idle: RefCell<Vec<oneshot::Sender<()>>>,
    /// The range of the active segment being zero-filled now ([`fill_ahead`]).
    filling: Cell<Option<(u64, u64)>>,
    /// Woken when that fill completes.
    fill_idle: RefCell<Vec<oneshot::Sender<()>>>,
    /// This partition, for the tasks it spawns.
    me: Weak<Partition>,
}

/// A written group whose appends asked for durability: answered once a
/// flush that began after the write completed has finished.
struct PendingFlush {
    file: Rc<DmaFile>,
    path: PathBuf,
    answers: Vec<Answered>,
    /// The write lay below the segment's `stable_to`: a device flush shared
    /// with other partitions on this device covers it.
    shared: Option<u64>,
    /// The `fdatasync` the kernel started behind the write itself, and how
    /// far the active segment is known written once it is done.
    /// When the write completed (and so the linked flush began).
    linked: Option<(crate::uring::LinkedSync, Option<u64>, Instant)>,
}

/// How far the file behind `seg` is known written (by this shard's writes
/// and fills, all completed) from its start, inside its size.
fn written_prefix(seg: &Segment) -> u64 {
    let mut to = seg.zeroed_to;
    if seg.fill_from <= to && seg.filled_to > to {
        to = seg.filled_to;
    }
    to.min(seg.allocated)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn segment_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

fn align_down(v: u64) -> u64 {
    v - v % BLOCK_BYTES as u64
}

fn align_up(v: usize) -> usize {
    v.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

impl Partition {
    /// Opens (recovering) or creates the log in `dir` and starts its writer.
    pub async fn open(
        topic: Rc<str>,
        partition: u32,
        dir: PathBuf,
        config: LogConfig,
        leader_epoch: i32,
        caches: Caches,
    ) -> Result<Rc<Partition>, StorageError> {
        let Caches {
            tail: cache,
            key: cache_key,
            read_ahead,
        } = caches;
        std::fs::create_dir_all(&dir).map_err(|e| StorageError::io("create", &dir, e))?;
        let segments = crate::recovery::recover_segments(&dir).await?;
        let segments = match segments.is_empty() {
            true => vec![Segment::create(&dir, 0).await?],
            false => segments,
        };
        let log_start = segments.first().map_or(0, |s| s.base_offset);
        let log_end = segments.last().map_or(0, |s| s.last_offset + 1);
        let log_start = read_log_start(&dir, log_start, log_end);
        let expiration_ms = config.producer_id_expiration_ms;
        let producers =
            snapshot::rebuild(&dir, &segments, log_end, now_ms(), expiration_ms).await?;
        let (doorbell, rx) = local_channel::new_bounded(1);
        let (flush_doorbell, flush_rx) = local_channel::new_bounded(1);
        let cleaner_dir = dir.clone();
        let p = Rc::new_cyclic(|me| Partition {
            me: me.clone(),
            filling: Cell::new(None),
            fill_idle: RefCell::new(Vec::new()),
            topic,
            partition,
            dir,
            cache_key,
            cache,
            read_ahead,
            state: RefCell::new(State {
                segments,
                log_start,
                log_end,
                leader_epoch,
                config,
                last_flush: Instant::now(),
                closed: false,
                producers,
            }),
            queue: RefCell::new(VecDeque::new()),
            queue_slots: Rc::new(Semaphore::new(APPEND_QUEUE_DEPTH as u64)),
            doorbell,
            waiters: RefCell::new(Vec::new()),
            appended_batches: Cell::new(0),
            cleaner: RefCell::new(crate::compaction::CleanerState::load(&cleaner_dir, log_end)),
            flushes: RefCell::new(VecDeque::new()),
            flush_doorbell,
            flushing: Cell::new(false),
            flush_idle: RefCell::new(Vec::new()),
        });
        glommio::spawn_local(writer_loop(Rc::downgrade(&p), rx)).detach();
        glommio::spawn_local(flusher_loop(Rc::downgrade(&p), flush_rx)).detach();
        Ok(p)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn offsets(&self) -> Offsets {
        let s = self.state.borrow();
        Offsets {
            log_start: s.log_start,
            high_watermark: s.log_end,
            log_end: s.log_end,
        }
    }

    /// The largest timestamp of any record in the log (-1 when empty).
    pub fn max_timestamp(&self) -> i64 {
        self.state
            .borrow()
            .segments
            .iter()
            .map(|s| s.max_timestamp)
            .max()
            .unwrap_or(-1)
    }

    pub fn leader_epoch(&self) -> i32 {
        self.state.borrow().leader_epoch
    }

    pub fn set_leader_epoch(&self, epoch: i32) {
        self.state.borrow_mut().leader_epoch = epoch;
    }

    pub fn config(&self) -> LogConfig {
        self.state.borrow().config.clone()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.state.borrow_mut().config = config;
    }

    /// Number of segments (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.iter().map(|s| s.size).sum()
    }

    /// Validates every batch of `records` (one or more batches back to back)
    /// and appends them as one unit. Nothing is written unless all are valid.
    pub async fn append(
        &self,
        records: Bytes,
        durability: Durability,
    ) -> Result<Appended, AppendError> {
        let (max, compact) = {
            let config = &self.state.borrow().config;
            (config.max_message_bytes, config.cleanup_policy.compacts())
        };
        let batches = validate_all(&records, max)?;
        if compact {
            check_keys(&batches)?;
        }
        let bytes = records.len();
        let permit = self
            .queue_slots
            .acquire_static_permit(1)
            .await
            .map_err(|_| AppendError::Closed)?;
        if self.state.borrow().closed {
            return Err(AppendError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        let pending = PendingAppend {
            batches,
            slots: Vec::new(),
            bytes,
            durability,
            reply,
            _permit: permit,
        };
        self.queue.borrow_mut().push_back(pending);
        let _ = self.doorbell.try_send(());
        answer.await.unwrap_or(Err(AppendError::Closed))
    }

    /// A future that completes at the next append (or when the partition closes).
    pub fn append_waiter(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters.borrow_mut();
        // Waiters whose fetch gave up (timed out) are dropped here, so a
        // partition that sees no appends holds no more than the live ones.
        waiters.retain(|w| !w.is_canceled());
        waiters.push(tx);
        rx
    }

    fn wake_waiters(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// Reads batches starting with the one that contains `offset`, up to
    /// `max_bytes` (the first batch is returned whole even when larger).
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadBatches, ReadError> {
        self.read_limited(offset, max_bytes, usize::MAX).await
    }

    /// Like [`Partition::read`], but a first batch larger than both
    /// `max_bytes` and `whole_up_to` is not returned: the result is empty
    /// and says the batch's size in `next_batch_bytes`. For a fetch of many
    /// partitions, where only the first non-empty one may go past its
    /// share (Kafka's rule): a batch read and then cut from the response
    /// would be read again by the next fetch. What was read of it is kept
    /// for the next fetch at `offset`.
    pub async fn read_fitting(
        &self,
        offset: i64,
        max_bytes: usize,
        whole_up_to: usize,
    ) -> Result<ReadBatches, ReadError> {
        self.read_limited(offset, max_bytes, whole_up_to).await
    }

    async fn read_limited(
        &self,
        offset: i64,
        max_bytes: usize,
        whole_up_to: usize,
    ) -> Result<ReadBatches, ReadError> {
        let max_bytes = max_bytes.min(FETCH_PARTITION_BYTES_MAX);
        let offsets = self.offsets();
        if offset < offsets.log_start || offset > offsets.log_end {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                log_start: offsets.log_start,
                log_end: offsets.log_end,
            });
        }
        if offset == offsets.log_end {
            return Ok(ReadBatches::default());
        }
        if let Some(cached) = self.cache.read(self.cache_key, offset, max_bytes) {
            stats::add_cache_reads(1);
            let mut out = ReadBatches::default();
            match cached.first() {
                Some(b) if b.len() > max_bytes.max(whole_up_to) => {
                    out.next_batch_bytes = Some(b.len());
                    return Ok(out);
                }
                _ => {}
            }
            for b in cached {
                out.bytes += b.len();
                out.chunks.push(b.prefix);
                out.chunks.push(b.body);
            }
            stats::add_bytes_read(out.bytes as u64);
            return Ok(out);
        }
        let out = self
            .read_from_segments(offset, max_bytes, offsets.log_end, whole_up_to)
            .await?;
        stats::add_bytes_read(out.bytes as u64);
        Ok(out)
    }

    async fn read_from_segments(
        &self,
        offset: i64,
        max_bytes: usize,
        log_end: i64,
        whole_up_to: usize,
    ) -> Result<ReadBatches, ReadError> {
        let want = max_bytes.max(FETCH_READ_BYTES_MIN);
        let ahead = self.read_ahead.take(self.cache_key, offset);
        let (out, resume) =
            Box::pin(self.read_segments_from(offset, max_bytes, log_end, ahead, whole_up_to))
                .await?;
        if let Some(r) = resume {
            // A refused batch: read ahead at least all of it.
            let want = want.max(out.next_batch_bytes.unwrap_or(0));
            self.read_ahead_from(r, want);
        }
        Ok(out)
    }

    /// Reads batches from the segment holding `offset` (or the one `ahead`
    /// was read from, starting with its bytes); also says where the next
    /// fetch in order would start.
    async fn read_segments_from(
        &self,
        offset: i64,
        max_bytes: usize,
        log_end: i64,
        ahead: Option<crate::readahead::Ahead>,
        whole_up_to: usize,
    ) -> Result<(ReadBatches, Option<Resume>), ReadError> {
        let (file, path, seg_base, seg_size, start_pos, mut ahead) = {
            let s = self.state.borrow();
            // A read ahead is used while its file is still the segment at
            // its place; otherwise it is dropped and the index says where
            // to start.
            let ahead = ahead.filter(|a| {
                let current = s.segments.iter().any(|seg| {
                    seg.base_offset == a.seg_base
                        && a.file.upgrade().is_some_and(|f| Rc::ptr_eq(&f, &seg.file))
                });
                if !current {
                    stats::add_read_ahead_dropped(1);
                }
                current
            });
            let seg = match &ahead {
                Some(a) => s.segments.iter().find(|seg| seg.base_offset == a.seg_base),
                None => None,
            };
            let seg = match seg {
                Some(seg) => seg,
                None => {
                    let i = s
                        .segments
                        .partition_point(|seg| seg.base_offset <= offset)
                        .saturating_sub(1);
                    &s.segments[i]
                }
            };
            let pos = match &ahead {
                Some(a) => a.pos,
                None => {
                    let rel = u32::try_from(offset - seg.base_offset).unwrap_or(u32::MAX);
                    u64::from(seg.index.lookup_offset(rel).1)
                }
            };
            (
                seg.file.clone(),
                seg.path.clone(),
                seg.base_offset,
                seg.size,
                pos,
                ahead,
            )
        };
        let mut out = ReadBatches::default();
        let mut pos = start_pos;
        let mut next = offset;
        let want = max_bytes.max(FETCH_READ_BYTES_MIN);
        let resume = |out: ReadBatches, next: i64, pos: u64, rest: Option<Bytes>| {
            let resume = Resume {
                offset: next,
                seg_base,
                file: file.clone(),
                pos,
                rest,
            };
            Ok((out, Some(resume)))
        };
        while pos < seg_size {
            let mut len = (seg_size - pos).min(want as u64) as usize;
            let taken = match ahead.take() {
                Some(a) => match a.read.await {
                    Ok(data) => {
                        stats::add_read_ahead_hits(1);
                        Some(data)
                    }
                    // Read again below: the error, if it lasts, is the
                    // fetch's own.
                    Err(_) => None,
                },
                None => None,
            };
            let data = match taken {
                Some(data) => {
                    len = data.len();
                    data
                }
                None => {
                    len = self.batch_aligned_read(seg_base, pos, len);
                    read_region(&file, &path, pos, len).await?
                }
            };
            let buf: &[u8] = &data;
            let mut at = 0usize;
            let mut need_more = None;
            while at < buf.len() {
                match crate::landing::gap_at(&buf[at..], pos + at as u64) {
                    crate::landing::Gap::Skip(n) => {
                        at += n;
                        continue;
                    }
                    // Cut by this read: the next one starts at the gap.
                    crate::landing::Gap::Undecided if at > 0 => break,
                    _ => {}
                }
                let header = match BatchHeader::parse(&buf[at..]) {
                    Ok(h) => h,
                    Err(_) if buf.len() - at < batch::BATCH_HEADER_BYTES => {
                        need_more = Some(batch::BATCH_HEADER_BYTES);
                        break;
                    }
                    Err(e) => {
                        let msg = format!(
                            "bad batch at {} in {}: {e}",
                            pos + at as u64,
                            path.display()
                        );
                        return Err(ReadError::Storage(StorageError(msg)));
                    }
                };
                let total = header.total_bytes();
                if header.base_offset >= log_end {
                    return Ok((out, None));
                }
                if header.last_offset() < offset {
                    // Skipped whole, even when it runs past this read.
                    at += total;
                    continue;
                }
                // A first batch within `whole_up_to` is returned whole
                // (below), even past the limit.
                let whole_first = out.chunks.is_empty() && total <= whole_up_to;
                if out.bytes + total > max_bytes && !whole_first {
                    if out.chunks.is_empty() {
                        out.next_batch_bytes = Some(total);
                    }
                    // Kept when it holds what the next fetch here would
                    // take (this batch, or as much as this fetch asked
                    // for): a fetch asking for less than a read, or one
                    // this batch was refused to.
                    let rest = data.slice(at..);
                    let rest = (rest.len() >= max_bytes.max(total)).then_some(rest);
                    return resume(out, next, pos + at as u64, rest);
                }
                if buf.len() - at < total {
                    need_more = Some(total);
                    break;
                }
                // A slice of the read buffer: no copy.
                out.chunks.push(data.slice(at..at + total));
                out.bytes += total;
                next = header.last_offset() + 1;
                at += total;
            }
            pos += at as u64;
            match need_more {
                Some(n) if at == 0 && n > len => {
                    // The next batch is larger than one read: read it whole.
                    let data = read_region(&file, &path, pos, n).await?;
                    if data.len() < n {
                        let msg = format!("truncated batch at {pos} in {}", path.display());
                        return Err(ReadError::Storage(StorageError(msg)));
                    }
                    if let Ok(header) = BatchHeader::parse(&data) {
                        next = header.last_offset() + 1;
                    }
                    out.chunks.push(data);
                    out.bytes += n;
                    pos += n as u64;
                    if out.bytes >= max_bytes {
                        return resume(out, next, pos, None);
                    }
                }
                _ if at == 0 && need_more.is_some() => {
                    let msg = format!("truncated batch at {pos} in {}", path.display());
                    return Err(ReadError::Storage(StorageError(msg)));
                }
                _ => {}
            }
            if out.bytes >= max_bytes {
                return resume(out, next, pos, None);
            }
        }
        // The segment ended: continue in the next one if it exists.
        if out.chunks.is_empty() {
            let next_base = {
                let s = self.state.borrow();
                s.segments
                    .iter()
                    .find(|seg| seg.base_offset > seg_base)
                    .map(|seg| seg.base_offset)
            };
            if let Some(next) = next_base {
                return Box::pin(self.read_segments_from(
                    next.max(offset),
                    max_bytes,
                    log_end,
                    None,
                    whole_up_to,
                ))
                .await;
            }
        }
        resume(out, next, pos, None)
    }

    /// [`batch_aligned_len`] for a read of the segment based at `seg_base`.
    fn batch_aligned_read(&self, seg_base: i64, pos: u64, len: usize) -> usize {
        let s = self.state.borrow();
        let interval = u64::from(s.config.index_interval_bytes);
        let i = s.segments.partition_point(|seg| seg.base_offset < seg_base);
        match s.segments.get(i).filter(|seg| seg.base_offset == seg_base) {
            Some(seg) => batch_aligned_len(seg, interval, pos, len),
            None => len,
        }
    }

    /// Starts reading ahead for the fetch that would come next in order,
    /// when it would read from a segment file: `want` bytes from where the
    /// last one stopped, or from the start of the next segment. When the
    /// read already holds what that fetch would take (`rest`), those bytes
    /// are kept instead.
    fn read_ahead_from(&self, mut r: Resume, want: usize) {
        if self.read_ahead.budget() == 0 || self.cache.holds(self.cache_key, r.offset) {
            return;
        }
        let target = {
            let s = self.state.borrow();
            if s.closed || r.offset >= s.log_end {
                return;
            }
            if let Some(rest) = r.rest.take() {
                let (key, offset, base, pos) = (self.cache_key, r.offset, r.seg_base, r.pos);
                drop(s);
                self.read_ahead.keep(key, offset, base, &r.file, pos, rest);
                return;
            }
            let Some(i) = s
                .segments
                .iter()
                .position(|seg| seg.base_offset == r.seg_base)
            else {
                return;
            };
            let seg = &s.segments[i];
            if !Rc::ptr_eq(&seg.file, &r.file) {
                return;
            }
            let interval = u64::from(s.config.index_interval_bytes);
            let (seg, pos) = match (r.pos < seg.size, s.segments.get(i + 1)) {
                (true, _) => (seg, r.pos),
                (false, Some(n)) => (n, 0),
                (false, None) => return,
            };
            let len = (seg.size - pos).min(want as u64) as usize;
            let len = batch_aligned_len(seg, interval, pos, len);
            (
                seg.base_offset,
                seg.file.clone(),
                seg.path.clone(),
                pos,
                len,
            )
        };
        let (base, file, path, pos, len) = target;
        let region = crate::readahead::Region {
            seg_base: base,
            file,
            path,
            pos,
            len,
        };
        self.read_ahead.start(self.cache_key, r.offset, region);
    }

    /// The offset of the first record whose timestamp is at least `timestamp`,
    /// with that record's timestamp; `None` when every record is older.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<(i64, i64)>, ReadError> {
        let found = {
            let s = self.state.borrow();
            s.segments
                .iter()
                .find(|seg| seg.max_timestamp >= timestamp)
                .map(|seg| {
                    let (_, pos) = seg.index.lookup_timestamp(timestamp);
                    (seg.file.clone(), seg.path.clone(), u64::from(pos), seg.size)
                })
        };
        let Some((file, path, mut pos, size)) = found else {
            return Ok(None);
        };
        while pos < size {
            let len = (size - pos).min(FETCH_READ_BYTES_MIN as u64) as usize;
            let data = file
                .read_at(pos, len)
                .await
                .map_err(|e| ReadError::Storage(StorageError::io("read", &path, e)))?;
            if let crate::landing::Gap::Skip(n) = crate::landing::gap_at(&data, pos) {
                pos += n as u64;
                continue;
            }
            let header = BatchHeader::parse(&data).map_err(|e| {
                ReadError::Storage(StorageError(format!("{}: {e}", path.display())))
            })?;
            if header.max_timestamp >= timestamp {
                let total = header.total_bytes();
                let whole = match data.len() >= total {
                    true => data[..total].to_vec(),
                    false => file
                        .read_at(pos, total)
                        .await
                        .map_err(|e| ReadError::Storage(StorageError::io("read", &path, e)))?
                        .to_vec(),
                };
                return Ok(Some(first_record_at_or_after(&whole, &header, timestamp)));
            }
            pos += header.total_bytes() as u64;
        }
        Ok(None)
    }

    /// Deletes whole segments past `retention.ms` (by their newest record) or
    /// beyond `retention.bytes`. The active segment is never deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> usize {
        let doomed = {
            let mut s = self.state.borrow_mut();
            let count = retention_victims(&s.segments, &s.config, now_ms);
            let doomed: Vec<Segment> = s.segments.drain(..count).collect();
            if let Some(first) = s.segments.first() {
                s.log_start = s.log_start.max(first.base_offset);
            }
            doomed
        };
        let n = doomed.len();
        for seg in doomed {
            tracing::info!(topic = %self.topic, partition = self.partition, base = seg.base_offset, "retention deletes segment");
            seg.remove_files().await;
        }
        self.expire_producers(now_ms);
        n
    }

    /// Forgets idempotent producers idle for `producer.id.expiration.ms`
    /// (by their newest batch's timestamp, as Kafka counts it).
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        let mut s = self.state.borrow_mut();
        let expiration_ms = s.config.producer_id_expiration_ms;
        s.producers.expire(now_ms, expiration_ms)
    }

    /// Idempotent producers this partition tracks (for tests and metrics).
    pub fn producer_count(&self) -> usize {
        self.state.borrow().producers.len()
    }

    /// DeleteRecords: makes `offset` the log start offset (records below it
    /// are no longer served) and deletes the segments entirely below it. The
    /// new log start is kept beside the segments, so a restart keeps it.
    pub async fn delete_records_before(&self, offset: i64) -> Result<i64, StorageError> {
        let doomed: Vec<Segment> = {
            let mut s = self.state.borrow_mut();
            if offset <= s.log_start {
                return Ok(s.log_start);
            }
            let offset = offset.min(s.log_end);
            s.log_start = offset;
            let mut count = 0;
            while count + 1 < s.segments.len() && s.segments[count + 1].base_offset <= offset {
                count += 1;
            }
            s.segments.drain(..count).collect()
        };
        let start = self.state.borrow().log_start;
        write_log_start(&self.dir, start)?;
        for seg in doomed {
            seg.remove_files().await;
        }
        Ok(start)
    }

    /// Waits until no zero fill reaches below `limit` (0: until none is in
    /// flight): a write there could otherwise land before the zeros.
    async fn fill_clear(&self, limit: u64) {
        while let Some((start, _)) = self.filling.get() {
            if limit != 0 && start >= limit {
                return;
            }
            let (tx, rx) = oneshot::channel();
            self.fill_idle.borrow_mut().push(tx);
            let _ = rx.await;
        }
    }

    /// Waits until every written group handed to the flusher is answered.
    async fn flushes_done(&self) {
        while self.flushing.get() || !self.flushes.borrow().is_empty() {
            let (tx, rx) = oneshot::channel();
            self.flush_idle.borrow_mut().push(tx);
            let _ = self.flush_doorbell.try_send(());
            let _ = rx.await;
        }
    }

    /// Stops accepting appends, waits for queued ones, writes the indexes and
    /// flushes the active segment.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.state.borrow_mut().closed = true;
        // Wait until the writer drained the queue and the flusher answered
        // every group it was given.
        let _ = self.queue_slots.acquire(APPEND_QUEUE_DEPTH as u64).await;
        self.queue_slots.close();
        self.flushes_done().await;
        self.fill_clear(0).await;
        let (file, path) = {
            let s = self.state.borrow();
            match s.segments.last() {
                Some(seg) => (seg.file.clone(), seg.path.clone()),
                None => return Ok(()),
            }
        };
        file.fdatasync()
            .await
            .map_err(|e| StorageError::io("fdatasync", &path, e))?;
        let indexes: Vec<(i64, SegmentIndex)> = {
            let s = self.state.borrow();
            s.segments
                .iter()
                .map(|seg| (seg.base_offset, seg.index.clone()))
                .collect()
        };
        for (base, idx) in indexes {
            write_index_files(&self.dir, base, &idx).await?;
        }
        self.snapshot_producers().await?;
        self.cache.remove(self.cache_key);
        self.read_ahead.forget(self.cache_key);
        self.wake_waiters();
        Ok(())
    }

    /// Closes the log and removes its directory (topic deletion).
    pub async fn delete(&self) -> Result<(), StorageError> {
        self.state.borrow_mut().closed = true;
        self.queue_slots.close();
        self.cache.remove(self.cache_key);
        self.read_ahead.forget(self.cache_key);
        self.wake_waiters();
        let segments: Vec<Segment> = self.state.borrow_mut().segments.drain(..).collect();
        drop(segments);
        std::fs::remove_dir_all(&self.dir).map_err(|e| StorageError::io("remove", &self.dir, e))
    }

    /// Writes the producer state as of the log end (no append is in flight:
    /// the caller is the writer task or `close` after the queue drained).
    async fn snapshot_producers(&self) -> Result<(), StorageError> {
        let (offset, bytes) = {
            let s = self.state.borrow();
            (s.log_end, snapshot::encode(&s.producers, s.log_end))
        };
        snapshot::write(&self.dir, offset, bytes).await
    }

    /// Compacts this partition's closed segments if its `cleanup.policy`
    /// asks for it and enough of it is dirty (see `compaction`).
    pub async fn clean(
        &self,
        now_ms: i64,
    ) -> Result<crate::compaction::CleanOutcome, StorageError> {
        crate::compaction::clean(self, now_ms).await
    }

    /// Bytes of closed segments the cleaner has not cleaned yet (ignoring
    /// `min.compaction.lag.ms`).
    pub fn dirty_bytes(&self) -> u64 {
        crate::compaction::dirty_bytes(self)
    }

    /// Batches appended since the partition was opened.
    pub fn appended_batches(&self) -> u64 {
        self.appended_batches.get()
    }
}

/// The file beside the segments holding a log start offset set by
/// DeleteRecords (retention needs none: it deletes whole segments).
const LOG_START_FILE: &str = "log-start-offset";

fn write_log_start(dir: &Path, offset: i64) -> Result<(), StorageError> {
    write_offset_file(dir, LOG_START_FILE, offset)
}

/// Writes `offset` as the text of `dir/name`: written beside it, flushed,
/// then renamed over it, so a crash leaves the old value or the new one.
pub(crate) fn write_offset_file(dir: &Path, name: &str, offset: i64) -> Result<(), StorageError> {
    use std::io::Write;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let write = || -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("{offset}\n").as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| StorageError::io("write", &path, e))
}

/// The offset [`write_offset_file`] left in `dir/name`, if any.
pub(crate) fn read_offset_file(dir: &Path, name: &str) -> Option<i64> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
}

/// The log start offset DeleteRecords left, if any and if it is inside the
/// recovered log.
fn read_log_start(dir: &Path, first: i64, end: i64) -> i64 {
    read_offset_file(dir, LOG_START_FILE)
        .filter(|o| *o > first && *o <= end)
        .unwrap_or(first)
}

/// Reads `len` bytes of a segment at `pos` as `Bytes` (shorter at the end of
/// the file). Through the shard's side ring the device writes straight into
/// the returned buffer and nothing is copied; without one (the ring could
/// not be set up), glommio's read is copied once and counted.
pub(crate) async fn read_region(
    file: &DmaFile,
    path: &Path,
    pos: u64,
    len: usize,
) -> Result<Bytes, ReadError> {
    use std::os::fd::AsRawFd;
    let storage = |e: io::Error| ReadError::Storage(StorageError::io("read", path, e));
    if let Some(ring) = crate::uring::side_ring() {
        let start = align_down(pos);
        let skip = (pos - start) as usize;
        let data = ring
            .read_direct(file.as_raw_fd(), start, skip + len)
            .await
            .map_err(storage)?;
        stats::add_segment_bytes_read(data.len() as u64);
        let end = data.len().min(skip + len);
        return Ok(data.slice(skip.min(end)..end));
    }
    let data = file
        .read_at(pos, len)
        .await
        .map_err(|e| storage(e.into()))?;
    stats::add_segment_bytes_read(data.len() as u64);
    stats::add_payload_copies(1);
    Ok(Bytes::copy_from_slice(&data[..len.min(data.len())]))
}

/// How many bytes a segment read at `pos` that wants `len` (inside the
/// segment) should take. A read that would end part-way into a batch reads
/// those bytes again with the next read, which starts at that batch. So
/// when the sparse index shows that the batch the read would cut begins
/// well before the read's end, the read stops at that batch, taking only
/// its header (enough for a fetch to see the batch does not fit, without a
/// second read). Index entries lie at most `interval` bytes of batches
/// apart, so with no entry in the last `interval` bytes before the end, the
/// batch at the last entry runs past it. Where the index cannot show that
/// (small batches, the segment's first one), `len` stands.
fn batch_aligned_len(seg: &Segment, interval: u64, pos: u64, len: usize) -> usize {
    let end = pos + len as u64;
    if end >= seg.size {
        return len;
    }
    let entries = &seg.index.entries;
    let i = entries.partition_point(|e| u64::from(e.position) <= end);
    let Some(last) = i.checked_sub(1).map(|i| u64::from(entries[i].position)) else {
        return len;
    };
    let header = batch::BATCH_HEADER_BYTES as u64;
    let worth = interval.max(2 * BLOCK_BYTES as u64);
    if last <= pos || end - last < worth {
        return len;
    }
    (last - pos + header) as usize
}

/// Validates a produce payload: one or more whole batches, each within `max`.
fn validate_all(records: &Bytes, max: usize) -> Result<Vec<(Bytes, BatchHeader)>, AppendError> {
    let mut out = Vec::new();
    for item in batch::split(records) {
        let (range, _) = item.map_err(AppendError::Batch)?;
        let bytes = records.slice(range);
        if bytes.len() > max {
            return Err(AppendError::TooLarge {
                bytes: bytes.len(),
                max,
            });
        }
        let header = batch::validate(&bytes).map_err(AppendError::Batch)?;
        if header.is_transactional() || header.is_control() {
            return Err(AppendError::InvalidRecord(
                "transactional and control batches are not supported by this broker".into(),
            ));
        }
        out.push((bytes, header));
    }
    if out.is_empty() {
        return Err(AppendError::Batch(BatchError::Truncated {
            needed: 61,
            available: 0,
        }));
    }
    Ok(out)
}

/// Refuses a batch with a record without a key: a compacted topic keeps the
/// newest record of each key, so a keyless record has no meaning there
/// (Kafka: INVALID_RECORD). Compressed batches are streamed through their decoder to check.
fn check_keys(batches: &[(Bytes, BatchHeader)]) -> Result<(), AppendError> {
    for (bytes, _) in batches {
        if let Some(delta) = batch::first_keyless_record(bytes).map_err(AppendError::Batch)? {
            return Err(AppendError::InvalidRecord(format!(
                "record at offset delta {delta} has no key: a compacted topic needs keys"
            )));
        }
    }
    Ok(())
}

/// The first record at or after `timestamp` in a batch whose max timestamp is
/// at or after it. Compressed batches are not decoded: their base offset and
/// max timestamp answer, as a conservative position to start reading from.
fn first_record_at_or_after(
    batch_bytes: &[u8],
    header: &BatchHeader,
    timestamp: i64,
) -> (i64, i64) {
    if let Ok(records) = batch::records(batch_bytes) {
        for r in records.flatten() {
            if r.timestamp >= timestamp {
                return (r.offset, r.timestamp);
            }
        }
    }
    (header.base_offset, header.max_timestamp)
}

/// How many of the oldest segments retention deletes.
fn retention_victims(segments: &[Segment], config: &LogConfig, now_ms: i64) -> usize {
    let deletable = segments.len().saturating_sub(1);
    let mut count = 0;
    if !config.cleanup_policy.deletes() {
        return 0;
    }
    if config.retention_ms >= 0 {
        while count < deletable
            && segments[count].size > 0
            && segments[count].max_timestamp < now_ms - config.retention_ms
        {
            count += 1;
        }
    }
    if config.retention_bytes >= 0 {
        let mut total: u64 = segments[count..].iter().map(|s| s.size).sum();
        while count < deletable && total > config.retention_bytes as u64 {
            total -= segments[count].size;
            count += 1;
        }
    }
    count
}

pub(crate) async fn write_index_files(
    dir: &Path,
    base: i64,
    idx: &SegmentIndex,
) -> Result<(), StorageError> {
    for (ext, bytes) in [
        ("index", idx.encode_offsets()),
        ("timeindex", idx.encode_times()),
    ] {
        let path = segment_path(dir, base, ext);
        let file = BufferedFile::create(&path)
            .await
            .map_err(|e| StorageError::io("create", &path, e))?;
        if !bytes.is_empty() {
            file.write_at(bytes, 0)
                .await
                .map_err(|e| StorageError::io("write", &path, e))?;
        }
        file.close()
            .await
            .map_err(|e| StorageError::io("close", &path, e))?;
    }
    Ok(())
}

impl Segment {
    async fn create(dir: &Path, base_offset: i64) -> Result<Segment, StorageError> {
        let path = segment_path(dir, base_offset, "log");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await
            .map_err(|e| StorageError::io("create", &path, e))?;
        for ext in ["index", "timeindex"] {
            let _ = std::fs::remove_file(segment_path(dir, base_offset, ext));
        }
        Ok(Segment::new(base_offset, path, Rc::new(file)))
    }

    pub(crate) fn new(base_offset: i64, path: PathBuf, file: Rc<DmaFile>) -> Segment {
        let flush_dev = crate::flush::shared_flush_device(&file);
        Segment {
            fill_from: 0,
            stable_to: 0,
            flush_dev,
            base_offset,
            path,
            file,
            size: 0,
            tail: Vec::new(),
            allocated: 0,
            zeroed_to: 0,
            filled_to: 0,
            index: SegmentIndex::default(),
            bytes_since_index: 0,
            max_timestamp: -1,
            last_offset: base_offset - 1,
            created: Instant::now(),
        }
    }

    pub(crate) async fn remove_files(self) {
        for ext in ["log", "index", "timeindex"] {
            let path = segment_path(
                self.path.parent().unwrap_or_else(|| Path::new(".")),
                self.base_offset,
                ext,
            );
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove");
                }
            }
        }
    }

    /// Records a batch just written at `position` in the in-memory index.
    pub(crate) fn note_batch(&mut self, position: u64, header: &BatchHeader, interval: u32) {
        let total = header.total_bytes() as u32;
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        if position > 0 && self.bytes_since_index >= interval {
            self.index.entries.push(IndexEntry {
                rel_offset: (header.base_offset - self.base_offset) as u32,
                position: position as u32,
                max_timestamp: self.max_timestamp,
            });
            self.bytes_since_index = 0;
        }
        self.bytes_since_index = self.bytes_since_index.saturating_add(total);
        self.last_offset = header.last_offset();
    }
}

/// The writer task: drains the queue and writes each group with one write;
/// answers the group, or hands it to the flusher when it asked for a flush.
async fn writer_loop(partition: Weak<Partition>, doorbell: LocalReceiver<()>) {
    while doorbell.recv().await.is_some() {
        let Some(p) = partition.upgrade() else { return };
        loop {
            let group = take_group(&p);
            if group.is_empty() {
                break;
            }
            write_group(&p, group).await;
        }
    }
}

/// Takes queued appends, in order, up to one write's worth of bytes.
fn take_group(p: &Partition) -> Vec<PendingAppend> {
    let mut queue = p.queue.borrow_mut();
    let mut group = Vec::new();
    let mut bytes = 0usize;
    while let Some(front) = queue.front() {
        if !group.is_empty() && bytes + front.bytes > WRITE_BYTES_MAX {
            break;
        }
        bytes += front.bytes;
        if let Some(item) = queue.pop_front() {
            group.push(item);
        }
    }
    group
}

async fn write_group(p: &Partition, group: Vec<PendingAppend>) {
    let mut rest = group;
    while !rest.is_empty() {
        if let Err(e) = maybe_roll(p, rest[0].bytes).await {
            fail_all(rest, &e);
            return;
        }
        // Appends that fit in the active segment go in this write.
        let room = {
            let s = p.state.borrow();
            let seg = s.segments.last().map_or(0, |seg| seg.size);
            s.config.segment_bytes.saturating_sub(seg)
        };
        let mut take = 0;
        let mut bytes = 0u64;
        while take < rest.len() && (take == 0 || bytes + rest[take].bytes as u64 <= room) {
            bytes += rest[take].bytes as u64;
            take += 1;
        }
        let now: Vec<PendingAppend> = rest.drain(..take).collect();
        write_to_active(p, now).await;
    }
}

fn fail_all(group: Vec<PendingAppend>, e: &StorageError) {
    for pending in group {
        let _ = pending.reply.send(Err(AppendError::Storage(e.clone())));
    }
}

/// Rolls to a new segment when the next append would overflow the active
/// one, or when it is older than `segment.ms`.
async fn maybe_roll(p: &Partition, next_bytes: usize) -> Result<(), StorageError> {
    let (base, old) = {
        let s = p.state.borrow();
        let Some(seg) = s.segments.last() else {
            return Err(StorageError("partition has no segment".into()));
        };
        let full = seg.size > 0 && seg.size + next_bytes as u64 > s.config.segment_bytes;
        let old =
            seg.size > 0 && seg.created.elapsed() > Duration::from_millis(s.config.segment_ms);
        if !(full || old) {
            return Ok(());
        }
        (
            s.log_end,
            (
                seg.base_offset,
                seg.index.clone(),
                seg.file.clone(),
                seg.path.clone(),
                seg.size,
                seg.allocated,
            ),
        )
    };
    let (old_base, old_index, old_file, old_path, old_size, old_allocated) = old;
    // No zeros may land in the old file after it is cut back.
    p.fill_clear(0).await;
    if old_allocated > old_size {
        // The preallocated space it will not use (the flush below makes
        // the new length durable).
        old_file
            .truncate(old_size)
            .await
            .map_err(|e| StorageError::io("truncate", &old_path, e))?;
    }
    old_file
        .fdatasync()
        .await
        .map_err(|e| StorageError::io("fdatasync", &old_path, e))?;
    write_index_files(&p.dir, old_base, &old_index).await?;
    let seg = Segment::create(&p.dir, base).await?;
    tracing::debug!(topic = %p.topic, partition = p.partition, base, "rolled segment");
    p.state.borrow_mut().segments.push(seg);
    // The state covers exactly the batches below the new segment's base.
    p.snapshot_producers().await
}

/// Decides, in queue order, where each batch of `group` goes: idempotent
/// batches are checked against their producer's sequence (as changed by the
/// appends before them), offsets are assigned. A refused append is answered
/// here and none of its batches is written.
fn admit(p: &Partition, group: Vec<PendingAppend>) -> (Vec<PendingAppend>, ProducerChanges) {
    let s = p.state.borrow();
    let mut next = s.log_end;
    let mut changes = ProducerChanges::default();
    let mut admitted = Vec::with_capacity(group.len());
    for mut pending in group {
        match assign_slots(&s.producers, &changes, &mut pending, next) {
            Ok((own, end)) => {
                changes.merge(own);
                next = end;
                admitted.push(pending);
            }
            Err(e) => {
                let _ = pending.reply.send(Err(AppendError::Producer(e)));
            }
        }
    }
    (admitted, changes)
}

/// Fills `pending.slots` from offset `next`; returns the producer changes of
/// this append alone and the next free offset after it.
fn assign_slots(
    states: &ProducerStates,
    earlier: &ProducerChanges,
    pending: &mut PendingAppend,
    mut next: i64,
) -> Result<(ProducerChanges, i64), ProducerError> {
    let mut own = ProducerChanges::default();
    pending.slots.clear();
    for (_, header) in &pending.batches {
        let pid = header.producer_id;
        let verdict = match pid >= 0 {
            true => {
                let known = own
                    .get(pid)
                    .or_else(|| earlier.get(pid))
                    .or_else(|| states.get(pid))
                    .cloned();
                let verdict = producer::check(known.as_ref(), header)?;
                if verdict == Verdict::Append {
                    own.add(known.as_ref(), header, next);
                }
                verdict
            }
            false => Verdict::Append,
        };
        match verdict {
            Verdict::Append => {
                pending.slots.push(Slot::Write(next));
                next += i64::from(header.last_offset_delta) + 1;
            }
            Verdict::Duplicate { base_offset } => pending.slots.push(Slot::Duplicate(base_offset)),
        }
    }
    Ok((own, next))
}

/// Copies the batches to write into `out` (after `at` bytes of the old
/// tail), stamping their offsets; returns where each went.
fn place_batches(
    out: &mut [u8],
    mut at: usize,
    group: &[PendingAppend],
    write_pos: u64,
    epoch: i32,
) -> Vec<(u64, BatchHeader, Bytes)> {
    let mut placed = Vec::new();
    for pending in group {
        for ((bytes, header), slot) in pending.batches.iter().zip(&pending.slots) {
            let Slot::Write(offset) = *slot else { continue };
            let n = bytes.len();
            // The one copy of a payload that did not land (see `landing`).
            out[at..at + n].copy_from_slice(bytes);
            stats::add_payload_copies(1);
            batch::stamp(&mut out[at..at + n], offset, epoch);
            let mut stamped = *header;
            stamped.base_offset = offset;
            placed.push((write_pos + at as u64, stamped, bytes.clone()));
            at += n;
        }
    }
    out[at..].fill(0);
    placed
}

/// Writes a group whose every batch was received into a landing (see
/// `landing`) straight from those landings, with one `writev` through the
/// side ring: no user-space copy of the payload. The write starts at the
/// first batch's 4 KiB boundary when the file already holds zeros from the
/// end of the log (`size`) up to there (`zeroed_to`, what the last write
/// left); otherwise at the 4 KiB block holding `size`, rewriting that
/// block's live bytes (from `tail`, the bytes of the log's last partial
/// 4 KiB block) and the zero gap up to the first batch. `None`: not such a
/// group, or no side ring; the caller copies instead.
async fn write_landed(
    file: &Rc<DmaFile>,
    size: u64,
    zeroed_to: u64,
    tail: &[u8],
    group: &[PendingAppend],
    epoch: i32,
    link_sync_past: Option<u64>,
) -> Option<Written> {
    use crate::landing::{gap_len, lookup, LandingMem, LANDING_ALIGN};
    use std::sync::Arc;
    // At most this many iovecs per write (the kernel's IOV_MAX is 1024).
    const LANDED_BATCHES_MAX: usize = 1000;
    // The batches to write, in order, with the landing each arrived in.
    let mut batches = Vec::new();
    for pending in group {
        for ((bytes, header), slot) in pending.batches.iter().zip(&pending.slots) {
            if let Slot::Write(offset) = *slot {
                batches.push((bytes, *header, offset, lookup(bytes)));
            }
        }
    }
    // Decided before anything is copied: a group with no landed batch (every
    // native-protocol write, small Kafka batches) takes the caller's path.
    let landed = batches.iter().filter(|b| b.3.is_some()).count();
    if landed == 0 || 2 * landed + 1 > LANDED_BATCHES_MAX {
        return None;
    }
    // Each write segment: its memory and the batches in it (bytes, header,
    // offset, position in the segment). Batches that were not landed are
    // copied, once, a run of them into one landing of their own.
    type Part = (Arc<LandingMem>, Vec<(Bytes, BatchHeader, i64, usize)>);
    let mut parts: Vec<Part> = Vec::new();
    let mut copied = 0u64;
    let mut i = 0;
    while i < batches.len() {
        if let Some(mem) = batches[i].3.clone() {
            let (bytes, header, offset, _) = &batches[i];
            parts.push((mem, vec![((*bytes).clone(), *header, *offset, 0)]));
            i += 1;
            continue;
        }
        let run_end = (i..batches.len())
            .find(|&j| batches[j].3.is_some())
            .unwrap_or(batches.len());
        let run = &batches[i..run_end];
        let mut copy = crate::landing::Landing::new(run.iter().map(|b| b.0.len()).sum())?;
        let mut placed_run = Vec::with_capacity(run.len());
        let mut within = 0;
        for (bytes, header, offset, _) in run {
            copy.fill_from(bytes);
            placed_run.push(((*bytes).clone(), *header, *offset, within));
            within += bytes.len();
        }
        copied += run.len() as u64;
        let copy = copy.freeze()?;
        parts.push((lookup(&copy)?, placed_run));
        i = run_end;
    }
    let ring = crate::uring::side_ring()?;
    // The head block: the log's live bytes in its last 4 KiB block, then
    // zeros up to where the first batch goes; not written again when the
    // last write left zeros there (so this one covers only blocks it has
    // to itself, which ext4 issues without blocking when preallocated).
    let first_at = size + gap_len(size) as u64;
    let head_from = match zeroed_to >= first_at {
        true => first_at,
        false => size - size % LANDING_ALIGN as u64,
    };
    let head_len = (first_at - head_from) as usize;
    let live = size.saturating_sub(head_from) as usize;
    if live > tail.len() {
        return None;
    }
    let mut head = crate::uring::AlignedBuf::new(head_len.max(1))?;
    let head_bytes = head.as_mut_slice(head_len);
    head_bytes[..live].copy_from_slice(&tail[tail.len() - live..]);
    let mut segments: Vec<(*const u8, usize)> = Vec::with_capacity(parts.len() + 1);
    if head_len > 0 {
        segments.push((head.as_ptr(), head_len));
    }
    let mut placed = Vec::new();
    let mut at = first_at;
    let mut end = first_at;
    for (mem, batches) in &parts {
        for (bytes, header, offset, within) in batches {
            // SAFETY: this shard received (or just copied) the batch and has
            // not published this memory: a landed batch reaches the tail
            // cache and the producer only after this write.
            unsafe {
                mem.stamp_in_place(|b| {
                    batch::stamp(&mut b[*within..*within + bytes.len()], *offset, epoch)
                })
            };
            let mut stamped = *header;
            stamped.base_offset = *offset;
            placed.push((at + *within as u64, stamped, bytes.clone()));
        }
        segments.push((mem.as_ptr(), mem.padded_len()));
        end = at + mem.len() as u64;
        at += mem.padded_len() as u64;
    }
    let expected: usize = segments.iter().map(|s| s.1).sum();
    // The new tail: the log's bytes from the last 4 KiB boundary to `end`.
    let tail_from = align_down(end);
    let mut new_tail = Vec::with_capacity((end - tail_from) as usize);
    let mut pos = head_from;
    for &(ptr, len) in &segments {
        let (from, to) = (pos.max(tail_from), (pos + len as u64).min(end));
        if from < to {
            // SAFETY: `ptr` is valid for `len` bytes (a landing or `head`).
            let seg = unsafe { std::slice::from_raw_parts(ptr, len) };
            new_tail.extend_from_slice(&seg[(from - pos) as usize..(to - pos) as usize]);
        }
        pos += len as u64;
    }
    let keep: Box<dyn std::any::Any> = Box::new((head, parts));
    let fd = std::os::fd::AsRawFd::as_raw_fd(file.as_ref());
    let mut sync = None;
    let written = match link_sync_past.filter(|&past| head_from + expected as u64 > past) {
        Some(_) if linked_sync_enabled() => ring
            .write_vectored_then_sync(fd, head_from, &segments, keep)
            .await
            .and_then(|(written, linked)| {
                sync = Some(linked);
                written
            }),
        _ => ring.write_vectored(fd, head_from, &segments, keep).await,
    };
    let result = match written {
        Ok(n) if n == expected => Ok(()),
        Ok(n) => Err(format!("short write of {n}/{expected} bytes")),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            // The side ring is full: nothing was written; copy instead.
            return None;
        }
        Err(e) => Err(e.to_string()),
    };
    stats::add_payload_copies(copied);
    Some(Written {
        result,
        placed,
        end,
        tail: new_tail,
        zeroed_to: head_from + expected as u64,
        sync,
    })
}

/// Whether a landed write that needs its own flush carries it linked
/// behind it. Setting `SLUICE_LINKED_SYNC=0` in the environment turns it
/// off (the flusher then starts each flush), to measure one against the
/// other.
fn linked_sync_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SLUICE_LINKED_SYNC").map_or(true, |v| v != "0"))
}

/// What one write of a group did.
struct Written {
    result: Result<(), String>,
    /// Each batch written: its position, header (as stamped) and bytes.
    placed: Vec<(u64, BatchHeader, Bytes)>,
    /// The segment's new logical size.
    end: u64,
    /// The log's bytes from the last 4 KiB boundary to `end`.
    tail: Vec<u8>,
    /// The write left zeros from `end` up to here.
    zeroed_to: u64,
    /// The flush linked behind the write, if it has one.
    sync: Option<crate::uring::LinkedSync>,
}

fn payload_bytes(group: &[PendingAppend]) -> usize {
    let written = |p: &PendingAppend| -> usize {
        let slots = p.batches.iter().zip(&p.slots);
        slots
            .filter(|(_, slot)| matches!(slot, Slot::Write(_)))
            .map(|((b, _), _)| b.len())
            .sum()
    };
    group.iter().map(written).sum()
}

thread_local! {
    /// Cleared once the filesystem refuses to preallocate.
    static PREALLOCATE: Cell<bool> = const { Cell::new(true) };
}

/// The first preallocation of a segment, and the most added at once: it
/// doubles in between, and stops at `segment.bytes`.
const PREALLOCATE_MIN: u64 = 1 << 20;
const PREALLOCATE_MAX: u64 = 64 << 20;

/// Makes the active segment's file at least `need` bytes long with its
/// blocks allocated (`fallocate`), ahead of the writes. A landed write there
/// covers whole allocated blocks, which ext4 issues from the shard thread.
/// Past the end of the file, each write would instead go to an io-wq worker
/// that sleeps until the device is done (see the shard crate's docs for what
/// that costs). Best effort: on a filesystem that cannot preallocate, or a
/// full disk, writes extend the file as before. The space a segment does not
/// use is given back when it rolls; recovery cuts the zeros after the last
/// batch.
async fn preallocate(p: &Partition, file: &Rc<DmaFile>, path: &Path, need: u64) {
    if !PREALLOCATE.get() {
        return;
    }
    let (allocated, cap) = {
        let s = p.state.borrow();
        let Some(seg) = s.segments.last() else { return };
        (seg.allocated, s.config.segment_bytes)
    };
    if need <= allocated {
        return;
    }
    let step = allocated.clamp(PREALLOCATE_MIN, PREALLOCATE_MAX);
    let target = (allocated + step).min(cap).max(need);
    let target = align_down(target + BLOCK_BYTES as u64 - 1);
    match file.pre_allocate(target, false).await {
        Ok(()) => {
            let mut s = p.state.borrow_mut();
            if let Some(seg) = s.segments.last_mut() {
                if Rc::ptr_eq(&seg.file, file) {
                    seg.allocated = seg.allocated.max(target);
                }
            }
        }
        Err(e) => {
            let e: io::Error = e.into();
            if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP)) {
                tracing::info!(path = %path.display(), "the filesystem cannot preallocate: segments grow with each write");
                PREALLOCATE.set(false);
            } else {
                tracing::debug!(path = %path.display(), error = %e, "preallocation failed");
            }
        }
    }
}

/// How far past the log's end zeros are kept written, in steps of
/// [`FILL_STEP`]; a shard writes at most [`FILL_RATE_DEFAULT`] of zeros a
/// second unless told otherwise ([`fill_rate`]), with a burst of
/// [`FILL_BURST`].
///
/// A device flush that lands while a fill is in flight waits for it, so the
/// step sets the tail of acks=all acknowledgements at a steady rate: at
/// 50 MB/s in 1 ms batches, 1 MiB steps gave a produce-ack p99 of
/// 1.36–1.71 ms, 512 KiB steps 1.09–1.50 ms at the same CPU, and 256 KiB
/// steps 1.14–1.16 ms at about 3% more CPU (docs/benchmarks.md,
/// 2026-12-08).
const FILL_AHEAD: u64 = 2 << 20;
const FILL_GAP: u64 = 256 << 10;
const FILL_STEP: u64 = 512 << 10;
const FILL_MIN: u64 = 64 << 10;
pub const FILL_RATE_DEFAULT: u64 = 128 << 20;
const FILL_BURST: u64 = 4 << 20;
/// Over how long a shard's rate of flushed appends is measured
/// ([`note_flushed_append`]).
const APPEND_RATE_WINDOW: Duration = Duration::from_millis(100);

thread_local! {
    /// The shard's zero-fill budget: bytes it may write now, and when it
    /// was last topped up.
    static FILL_BUDGET: Cell<(u64, Option<Instant>)> = const { Cell::new((FILL_BURST, None)) };
    /// Bytes of zeros a second the shard may write ([`set_zero_fill_rate`]).
    static FILL_RATE: Cell<u64> = const { Cell::new(FILL_RATE_DEFAULT) };
    /// The shard's flushed appends: bytes in the window under way, when it
    /// began, and the bytes a second of the last whole window.
    static FLUSHED_APPENDS: Cell<(u64, Option<Instant>, u64)> = const { Cell::new((0, None, 0)) };
}

/// Sets how many bytes of zeros a second the calling shard may write ahead
/// of its partitions' appends (see the crate docs); 0 turns filling off.
pub fn set_zero_fill_rate(bytes_per_s: u64) {
    FILL_RATE.set(bytes_per_s);
}

/// Counts `bytes` of flushed appends, written at `now`, toward the shard's
/// append rate (the write's own completion time: no clock read of its own).
fn note_flushed_append(bytes: u64, now: Instant) {
    FLUSHED_APPENDS.with(|c| {
        let (sum, began, rate) = c.get();
        let sum = sum + bytes;
        match began {
            Some(t) if now.duration_since(t) >= APPEND_RATE_WINDOW => {
                let ns = now.duration_since(t).as_nanos().max(1);
                let rate = (u128::from(sum) * 1_000_000_000 / ns).min(u128::from(u64::MAX)) as u64;
                c.set((0, Some(now), rate));
            }
            Some(_) => c.set((sum, began, rate)),
            None => c.set((sum, Some(now), rate)),
        }
    });
}

/// The rate of zeros a shard writes: its whole `cap` while its flushed
/// appends come no faster than that (the fills keep ahead of every such
/// partition, so each append is an overwrite and its flush can be shared),
/// a quarter of it once they outrun it. Flat out the fills cannot keep
/// ahead, zeros the appends soon overwrite only double the bytes written,
/// and the disk is what such a shard waits on.
fn fill_rate(cap: u64, appending: u64) -> u64 {
    match appending > cap {
        true => cap / 4,
        false => cap,
    }
}

/// Takes `n` bytes from the shard's zero-fill budget, if it holds them.
fn take_fill_budget(n: u64) -> bool {
    let rate = fill_rate(FILL_RATE.get(), FLUSHED_APPENDS.get().2);
    FILL_BUDGET.with(|b| {
        let (tokens, last) = b.get();
        let now = Instant::now();
        let earned = last.map_or(0, |t| {
            let ns = now.duration_since(t).as_nanos();
            (ns * u128::from(rate) / 1_000_000_000).min(u128::from(FILL_BURST)) as u64
        });
        let tokens = (tokens + earned).min(FILL_BURST);
        let granted = tokens >= n;
        b.set((if granted { tokens - n } else { tokens }, Some(now)));
        granted
    })
}

/// Writes zeros into the preallocated space ahead of the active segment's
/// data, in the background. `fallocate` leaves its blocks *unwritten*: the
/// first write to each converts it, which makes the next `fdatasync` write
/// the extent metadata synchronously, more device round trips (at 50 MB/s
/// in 1 ms batches that was a tenth of the broker's CPU). Over zeros already
/// written, an append is a pure overwrite and its `fdatasync` has no extent
/// to convert. Fills run from [`FILL_GAP`] past the data to [`FILL_AHEAD`]
/// past it, so the next write does not wait for one (an append that would
/// reach a fill in flight does wait). The zeros cost disk bandwidth equal
/// to what they cover, so a shard writes a bounded rate of them
/// ([`set_zero_fill_rate`], [`fill_rate`]): a partition appending at a
/// moderate rate is covered whole, one appending flat out mostly is not,
/// and none is filled while appends are queued. Only
/// partitions whose writes are flushed are filled: without the `fdatasync`
/// there is nothing to save (at 100 B records with acks=1 the fills cost
/// about 5% of broker CPU per GB and of throughput).
fn fill_ahead(p: &Partition) {
    // Appends already queued: the partition is busy, and a fill just past
    // its data would hold up the next write.
    if p.filling.get().is_some() || FILL_RATE.get() == 0 || !p.queue.borrow().is_empty() {
        return;
    }
    let (file, path, start, end) = {
        let s = p.state.borrow();
        let Some(seg) = s.segments.last() else { return };
        // Where the last fill ended, unless the data came within FILL_GAP
        // of it: then a gap ahead, so the next write does not wait.
        let start = match seg.filled_to >= seg.size + FILL_GAP {
            true => seg.filled_to,
            false => align_down(seg.size + FILL_GAP),
        };
        if start >= seg.size + FILL_AHEAD || seg.allocated == 0 {
            return;
        }
        let end = align_down(s.config.segment_bytes).min(start + FILL_STEP);
        if end < start + FILL_MIN {
            return;
        }
        (seg.file.clone(), seg.path.clone(), start, end)
    };
    if !take_fill_budget(end - start) {
        return;
    }
    p.filling.set(Some((start, end)));
    glommio::spawn_local(fill_zeros(p.me.clone(), file, path, start, end)).detach();
}

thread_local! {
    /// [`FILL_STEP`] bytes of zeros that every full-step fill of this shard
    /// writes (`zeros`).
    static FILL_ZEROS: RefCell<Option<Rc<DmaBuffer>>> = const { RefCell::new(None) };
}

/// `len` bytes of zeros to write from. A full step's buffer is made once
/// per shard and shared by every fill, in flight together or not: before,
/// each fill allocated a fresh MiB and zeroed it, 1.7% of the broker's CPU
/// at 50 MB/s (`perf record --call-graph dwarf`, 2026-12-07). Shorter fills
/// (a segment's last) get their own.
fn zeros(file: &DmaFile, len: usize) -> Rc<DmaBuffer> {
    let make = || {
        let mut buf = file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0);
        Rc::new(buf)
    };
    if len as u64 != FILL_STEP {
        return make();
    }
    FILL_ZEROS.with(|z| z.borrow_mut().get_or_insert_with(make).clone())
}

async fn fill_zeros(
    partition: Weak<Partition>,
    file: Rc<DmaFile>,
    path: PathBuf,
    start: u64,
    end: u64,
) {
    let Some(p) = partition.upgrade() else { return };
    // Zeros go into allocated space only (a write past the end of the file
    // would be the blocking kind again).
    preallocate(&p, &file, &path, end).await;
    let allocated =
        p.state
            .borrow()
            .segments
            .last()
            .map_or(0, |seg| match Rc::ptr_eq(&seg.file, &file) {
                true => seg.allocated,
                false => 0,
            });
    let result = match allocated >= end {
        true => {
            let len = (end - start) as usize;
            file.write_rc_at(zeros(&file, len), start)
                .await
                .map(|n| n == len)
        }
        false => Ok(false),
    };
    match result {
        Ok(true) => {
            stats::add_zeros_filled(end - start);
            if let Some(seg) = p.state.borrow_mut().segments.last_mut() {
                if Rc::ptr_eq(&seg.file, &file) {
                    if start > seg.filled_to {
                        seg.fill_from = start;
                    }
                    seg.filled_to = seg.filled_to.max(end);
                }
            }
        }
        Ok(false) => tracing::debug!(topic = %p.topic, start, end, "zero fill left out"),
        Err(e) => tracing::debug!(topic = %p.topic, error = %e, "zero fill failed"),
    }
    p.filling.set(None);
    for w in p.fill_idle.borrow_mut().drain(..) {
        let _ = w.send(());
    }
}

/// One aligned direct-I/O write of `group` at the end of the active segment.
async fn write_to_active(p: &Partition, group: Vec<PendingAppend>) {
    let (group, changes) = admit(p, group);
    if group.is_empty() {
        return;
    }
    let payload = payload_bytes(&group);
    if payload == 0 {
        // Every batch was a duplicate: nothing to write, answer at once.
        let end = {
            let s = p.state.borrow();
            let seg = s.segments.last();
            seg.map_or((0, Vec::new()), |seg| (seg.size, seg.tail.clone()))
        };
        for (reply, appended) in commit_group(p, group, changes, vec![], end) {
            let _ = reply.send(Ok(appended));
        }
        return;
    }
    // Room for the write: its bytes, a gap before each batch, the head block.
    let batches: usize = group.iter().map(|g| g.batches.len()).sum();
    let room = (payload + (batches + 2) * 2 * crate::landing::LANDING_ALIGN) as u64;
    let reach = p.state.borrow().segments.last().map_or(0, |seg| seg.size) + room;
    p.fill_clear(reach).await;
    let (file, path, write_pos, tail, epoch, zeroed_to) = {
        let s = p.state.borrow();
        let Some(seg) = s.segments.last() else { return };
        let (file, path) = (seg.file.clone(), seg.path.clone());
        (
            file,
            path,
            align_down(seg.size),
            seg.tail.clone(),
            s.leader_epoch,
            seg.zeroed_to,
        )
    };
    let needs_flush = group.iter().any(|g| g.durability == Durability::Flushed) || {
        let s = p.state.borrow();
        s.config
            .flush_ms
            .is_some_and(|ms| s.last_flush.elapsed() >= Duration::from_millis(ms))
    };
    let size = write_pos + tail.len() as u64;
    preallocate(p, &file, &path, size + room).await;
    // A write that will not be covered by a shared device flush gets its
    // own flush linked behind it; what was written and filled before it
    // (all of it complete) is covered too.
    let (link_sync_past, written_before) = match needs_flush {
        true => {
            let s = p.state.borrow();
            let seg = s.segments.last();
            let shareable =
                crate::flush::enabled() && seg.is_some_and(|seg| seg.flush_dev.is_some());
            let past = match (shareable, seg) {
                (true, Some(seg)) => seg.stable_to,
                _ => 0,
            };
            (
                Some(past),
                seg.map(|seg| (seg.fill_from, seg.filled_to, seg.allocated)),
            )
        }
        false => (None, None),
    };
    // Held until the group is with the flusher: a shared flush round waits
    // for it (`flush`).
    let _in_flight = needs_flush.then(crate::flush::WriteInFlight::begin);
    let write_started = Instant::now();
    let written = match write_landed(&file, size, zeroed_to, &tail, &group, epoch, link_sync_past)
        .await
    {
        Some(written) => written,
        None => {
            let mut buf = file.alloc_dma_buffer(align_up(tail.len() + payload));
            buf.as_bytes_mut()[..tail.len()].copy_from_slice(&tail);
            let placed = place_batches(buf.as_bytes_mut(), tail.len(), &group, write_pos, epoch);
            // Zeros after the data, so the next landed write can start past them.
            buf.as_bytes_mut()[tail.len() + payload..].fill(0);
            let end = write_pos + (tail.len() + payload) as u64;
            let new_tail = {
                let from = (align_down(end) - write_pos) as usize;
                buf.as_bytes()[from..tail.len() + payload].to_vec()
            };
            let expected = buf.len();
            let result = match file.write_at(buf, write_pos).await {
                Ok(n) if n == expected => Ok(()),
                Ok(n) => Err(format!("short write of {n}/{expected} bytes")),
                Err(e) => Err(e.to_string()),
            };
            Written {
                result,
                placed,
                end,
                tail: new_tail,
                zeroed_to: write_pos + expected as u64,
                sync: None,
            }
        }
    };
    let written_at = Instant::now();
    stats::record_write(written_at - write_started);
    let result = written
        .result
        .map_err(|e| StorageError(format!("write to {}: {e}", path.display())));
    if let Err(e) = result {
        tracing::error!(topic = %p.topic, partition = p.partition, error = %e, "append failed");
        // Cut anything a partial write left behind the logical end (and
        // with it the preallocation).
        p.fill_clear(0).await;
        let size = p.state.borrow().segments.last().map_or(0, |s| s.size);
        let _ = file.truncate(size).await;
        if let Some(seg) = p.state.borrow_mut().segments.last_mut() {
            seg.allocated = 0;
            seg.zeroed_to = seg.size;
            seg.filled_to = 0;
            seg.fill_from = 0;
            seg.stable_to = seg.stable_to.min(align_down(seg.size));
        }
        fail_all(group, &e);
        return;
    }
    let (placed, end, new_tail) = (written.placed, written.end, written.tail);
    let linked_sync = written.sync;
    let written_to = written.zeroed_to;
    // The write is on the device: consumers may read it now (a process
    // crash cannot lose it). Appends that asked for durability are answered
    // only once a flush has made it survive a power loss too. The flusher
    // does that while the writer goes on with the next group: a slow flush
    // delays the acknowledgements it covers, not the next write (nor the
    // consumers waiting for it).
    let answers = commit_group(p, group, changes, placed, (end, new_tail));
    if let Some(seg) = p.state.borrow_mut().segments.last_mut() {
        // Zeros filled ahead past this write's end are still there.
        seg.zeroed_to = seg.zeroed_to.max(written.zeroed_to);
    }
    if needs_flush {
        let shared = match crate::flush::enabled() {
            true => p.state.borrow().segments.last().and_then(|seg| {
                let stable = Rc::ptr_eq(&seg.file, &file) && written_to <= seg.stable_to;
                seg.flush_dev.filter(|_| stable)
            }),
            false => None,
        };
        // What the linked flush makes stable: the segment as written once
        // this write completed, with the fills complete before it began.
        let linked = linked_sync.map(|sync| {
            let s = p.state.borrow();
            let prefix = s
                .segments
                .last()
                .filter(|seg| Rc::ptr_eq(&seg.file, &file))
                .and_then(|seg| {
                    let (fill_from, filled_to, allocated) = written_before?;
                    let mut to = seg.zeroed_to;
                    if fill_from <= to && filled_to > to {
                        to = filled_to;
                    }
                    Some(to.min(allocated))
                });
            (sync, prefix, written_at)
        });
        // Only flushed writes gain from it (see `fill_ahead`).
        note_flushed_append(payload as u64, written_at);
        fill_ahead(p);
        p.flushes.borrow_mut().push_back(PendingFlush {
            file,
            path,
            answers,
            shared,
            linked,
        });
        let _ = p.flush_doorbell.try_send(());
        return;
    }
    for (reply, appended) in answers {
        let _ = reply.send(Ok(appended));
    }
}

/// The flusher task: takes every written group waiting for durability,
/// flushes their files once each (one `fdatasync` covers every write that
/// completed before it began, so groups written during a flush share the
/// next one), then answers them.
async fn flusher_loop(partition: Weak<Partition>, doorbell: LocalReceiver<()>) {
    while doorbell.recv().await.is_some() {
        let Some(p) = partition.upgrade() else { return };
        loop {
            let mut groups: Vec<PendingFlush> = p.flushes.borrow_mut().drain(..).collect();
            if groups.is_empty() {
                break;
            }
            p.flushing.set(true);
            let all_linked = groups.iter().all(|g| g.linked.is_some());
            let failed = match groups.iter().map(|g| g.shared).collect::<Option<Vec<_>>>() {
                // Every write carries its own flush, already under way.
                _ if all_linked => linked_flush(&p, &mut groups).await.err(),
                // Every write lay below `stable_to` on one device: a device
                // flush shared with the shard's other partitions covers them.
                Some(devs) if devs.windows(2).all(|w| w[0] == w[1]) && !devs.is_empty() => {
                    let (file, path) = (groups[0].file.clone(), groups[0].path.clone());
                    crate::flush::flush_device(devs[0], file, path).await.err()
                }
                _ => own_flush(&p, &groups).await.err(),
            };
            if let Some(e) = &failed {
                tracing::error!(topic = %p.topic, partition = p.partition, error = %e, "flush failed");
            }
            if failed.is_none() {
                p.state.borrow_mut().last_flush = Instant::now();
            }
            for (reply, appended) in groups.into_iter().flat_map(|g| g.answers) {
                let _ = reply.send(match &failed {
                    None => Ok(appended),
                    Some(e) => Err(AppendError::Storage(e.clone())),
                });
            }
            p.flushing.set(false);
        }
        for w in p.flush_idle.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }
}

/// Waits for the flushes linked behind the groups' writes, in order; each
/// covers its write and everything written before it.
async fn linked_flush(p: &Partition, groups: &mut [PendingFlush]) -> Result<(), StorageError> {
    for g in groups.iter_mut() {
        let Some((sync, prefix, began)) = g.linked.take() else {
            continue;
        };
        let result = sync.wait().await;
        stats::record_flush(began.elapsed());
        stats::add_fdatasyncs(1);
        stats::add_linked_flushes(1);
        result.map_err(|e| StorageError::io("fdatasync", &g.path, e))?;
        if let (Some(prefix), Some(seg)) = (prefix, p.state.borrow_mut().segments.last_mut()) {
            if Rc::ptr_eq(&seg.file, &g.file) {
                seg.stable_to = seg.stable_to.max(prefix);
            }
        }
    }
    Ok(())
}

/// Flushes each file the groups were written to with its own `fdatasync`.
/// Each commits the file's metadata as well, so what was written of the
/// active segment before it began is stable once it is done.
async fn own_flush(p: &Partition, groups: &[PendingFlush]) -> Result<(), StorageError> {
    let mut files: Vec<(&Rc<DmaFile>, &Path)> = Vec::new();
    for g in groups {
        if !files.iter().any(|(f, _)| Rc::ptr_eq(f, &g.file)) {
            files.push((&g.file, &g.path));
        }
    }
    for (file, path) in files {
        let active = |seg: &Segment| Rc::ptr_eq(&seg.file, file);
        let prefix = {
            let s = p.state.borrow();
            s.segments
                .last()
                .filter(|seg| active(seg))
                .map(written_prefix)
        };
        let began = Instant::now();
        let result = crate::uring::fdatasync(file).await;
        stats::record_flush(began.elapsed());
        stats::add_fdatasyncs(1);
        result.map_err(|e| StorageError::io("fdatasync", path, e))?;
        if let (Some(prefix), Some(seg)) = (prefix, p.state.borrow_mut().segments.last_mut()) {
            if active(seg) {
                seg.stable_to = seg.stable_to.max(prefix);
            }
        }
    }
    Ok(())
}

/// A reply to an append, and what it will say.
type Answered = (oneshot::Sender<Result<Appended, AppendError>>, Appended);

/// Makes a completed write visible: offsets, index, producer state, cache,
/// waiters. `end` is the segment's new size and partial last block. Returns
/// the replies to send once the write is as durable as they asked.
fn commit_group(
    p: &Partition,
    group: Vec<PendingAppend>,
    changes: ProducerChanges,
    placed: Vec<(u64, BatchHeader, Bytes)>,
    end: (u64, Vec<u8>),
) -> Vec<Answered> {
    let log_start = {
        let mut s = p.state.borrow_mut();
        let interval = s.config.index_interval_bytes;
        let Some(seg) = s.segments.last_mut() else {
            return Vec::new();
        };
        for (pos, header, _) in &placed {
            assert_eq!(
                header.base_offset,
                seg.last_offset + 1,
                "offsets must be contiguous"
            );
            seg.note_batch(*pos, header, interval);
        }
        (seg.size, seg.tail) = end;
        let last = seg.last_offset;
        s.log_end = last + 1;
        if !changes.is_empty() {
            s.producers.apply(changes);
        }
        s.log_start
    };
    let appended = !placed.is_empty();
    cache_placed(p, placed);
    if appended {
        p.wake_waiters();
    }
    group
        .into_iter()
        .map(|pending| {
            let base_offset = pending.slots.first().map_or(-1, |slot| slot.base_offset());
            (
                pending.reply,
                Appended {
                    base_offset,
                    log_start_offset: log_start,
                },
            )
        })
        .collect()
}

/// Puts batches just written into the tail cache.
fn cache_placed(p: &Partition, placed: Vec<(u64, BatchHeader, Bytes)>) {
    let epoch = p.leader_epoch();
    for (_, header, bytes) in placed {
        // A landed batch keeps its whole landing alive: padding and slack
        // count against the cache's budget too.
        let overhead_bytes = crate::landing::lookup(&bytes)
            .map_or(0, |mem| mem.allocated_bytes().saturating_sub(bytes.len()));
        let mut prefix = Vec::with_capacity(STAMPED_PREFIX_BYTES);
        prefix.extend_from_slice(&header.base_offset.to_be_bytes());
        prefix.extend_from_slice(&header.batch_length.to_be_bytes());
        prefix.extend_from_slice(&epoch.to_be_bytes());
        p.cache.insert(
            p.cache_key,
            CachedBatch {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                max_timestamp: header.max_timestamp,
                prefix: Bytes::from(prefix),
                body: bytes.slice(STAMPED_PREFIX_BYTES..),
                overhead_bytes,
            },
        );
        p.appended_batches.set(p.appended_batches.get() + 1);
        stats::add_bytes_appended(bytes.len() as u64);
    }
}

#[cfg(test)]
mod fill_rate_tests {
    use super::*;

    #[test]
    fn fills_run_at_the_cap_until_flushed_appends_outrun_it() {
        let cap = 128 << 20;
        assert_eq!(fill_rate(cap, 0), cap);
        assert_eq!(fill_rate(cap, 100 << 20), cap);
        assert_eq!(fill_rate(cap, cap), cap);
        assert_eq!(fill_rate(cap, cap + 1), cap / 4);
        assert_eq!(fill_rate(cap, 500 << 20), cap / 4);
        assert_eq!(fill_rate(0, 1 << 20), 0, "0 keeps filling off");
    }

    #[test]
    fn the_append_rate_is_measured_over_whole_windows() {
        // Each test runs on its own thread, so the shard's counters start empty.
        note_flushed_append(1 << 20, Instant::now());
        note_flushed_append(1 << 20, Instant::now());
        assert_eq!(FLUSHED_APPENDS.get().2, 0, "no window has closed yet");
        std::thread::sleep(APPEND_RATE_WINDOW + Duration::from_millis(10));
        note_flushed_append(1 << 20, Instant::now());
        // 3 MiB over at least one window, and (on any machine) under 10 s.
        let rate = FLUSHED_APPENDS.get().2;
        let most = (3u64 << 20) * 1000 / APPEND_RATE_WINDOW.as_millis() as u64;
        assert!(rate <= most && rate >= (3 << 20) / 10, "rate {rate}");
        assert_eq!(FLUSHED_APPENDS.get().0, 0, "a new window began");
    }
}
