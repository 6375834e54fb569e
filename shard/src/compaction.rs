//! The log cleaner: compaction of partitions whose `cleanup.policy` includes
//! `compact`. Runs on the partition's shard, driven by
//! [`crate::store::ShardStore::clean`], which the broker calls periodically.
//!
//! What a cleaning promises:
//! - Only closed segments are cleaned (never the active one), and only those
//!   whose newest record is at least `min.compaction.lag.ms` old; they form a
//!   prefix of the log. A cleaning runs when the bytes not yet cleaned are at
//!   least `min.cleanable.dirty.ratio` of that prefix. Where the clean part
//!   ends (the cleaner checkpoint) is kept in the partition directory's
//!   `cleaner-checkpoint` file, so a restart does not clean it all again.
//! - For every key, only the record with the highest offset in the cleaned
//!   prefix is kept; records without a key are dropped. A tombstone (null
//!   value) that is the newest of its key is dropped once its batch's max
//!   timestamp is older than `delete.retention.ms` — Kafka counts from when
//!   the tombstone's segment was first cleaned; the batch timestamp needs no
//!   extra state and is never later than that. A tombstone whose segment is
//!   not cleaned again (no new dirty bytes) stays until the next cleaning.
//! - Offsets never change. The survivors of each batch become one
//!   uncompressed batch with the original base offset, `lastOffsetDelta`,
//!   producer id, epoch and base sequence, record offsets and timestamps; a
//!   batch that loses nothing is kept byte for byte (compression included).
//!   A batch that loses every record is dropped, except the last batch of a
//!   segment, kept empty (count 0) so that every segment still ends at its
//!   last offset and recovery can check segments follow each other. Kafka
//!   also keeps the last batch of each producer for its sequence state; this
//!   cleaner does not (a producer whose batches were all removed is
//!   forgotten by a restart, and then accepted at any sequence).
//! - The swap is crash-safe: the survivors are written to `<base>.cleaned`
//!   and flushed, the old indexes are removed, the file is renamed over
//!   `<base>.log` and the directory flushed, then the indexes are rebuilt.
//!   Recovery removes a stray `.cleaned` file (the original is intact) and
//!   rebuilds missing indexes.
//!
//! Bounds: one cleaning at a time per partition; the key map stops growing
//! after the segment that takes it past [`CLEANER_KEY_BYTES_MAX`] bytes of
//! keys (later segments wait for a later cleaning); the cleaner yields to the shard's other tasks
//! between batches, so appends and fetches keep being served.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use sluice_protocol::batch::{self, BatchHeader, Record, BATCH_HEADER_BYTES};

use crate::config::LogConfig;
use crate::limits::{CLEANER_KEY_BYTES_MAX, CLEANER_WRITE_BYTES, SEGMENT_BYTES_MAX};
use crate::partition::{
    read_offset_file, segment_path, write_index_files, write_offset_file, Partition, Segment,
    StorageError,
};

/// What the cleaner remembers of a partition between cleanings.
#[derive(Debug, Default)]
pub(crate) struct CleanerState {
    /// Offsets below this are clean (the cleaner checkpoint).
    clean_before: i64,
    running: bool,
}

/// The file, in a partition's directory, that keeps the cleaner checkpoint.
pub const CHECKPOINT_FILE: &str = "cleaner-checkpoint";

impl CleanerState {
    /// The state a partition starts with: the checkpoint left in `dir`, if
    /// any and inside the recovered log (ending at `log_end`). A checkpoint
    /// that is too low only costs a cleaning; one past the log is ignored.
    pub(crate) fn load(dir: &Path, log_end: i64) -> CleanerState {
        let clean_before = read_offset_file(dir, CHECKPOINT_FILE)
            .filter(|o| (0..=log_end).contains(o))
            .unwrap_or(0);
        CleanerState {
            clean_before,
            running: false,
        }
    }
}

/// Writes the checkpoint (write, flush, rename: a crash leaves the old or the
/// new one). A failure is logged: the next start cleans more, nothing else.
fn save_checkpoint(dir: &Path, clean_before: i64) {
    if let Err(e) = write_offset_file(dir, CHECKPOINT_FILE, clean_before) {
        tracing::warn!(error = %e, "cannot save the cleaner checkpoint");
    }
}

/// What one cleaning did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanOutcome {
    pub segments_rewritten: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
}

/// A closed segment to clean, as it was when the cleaning started.
struct Target {
    base_offset: i64,
    last_offset: i64,
    file: Rc<DmaFile>,
    path: PathBuf,
    size: u64,
}

/// Cleans `p` once if its policy and dirty ratio call for it.
pub(crate) async fn clean(p: &Partition, now_ms: i64) -> Result<CleanOutcome, StorageError> {
    if std::mem::replace(&mut p.cleaner.borrow_mut().running, true) {
        return Ok(CleanOutcome::default());
    }
    let result = clean_once(p, now_ms).await;
    p.cleaner.borrow_mut().running = false;
    result
}

async fn clean_once(p: &Partition, now_ms: i64) -> Result<CleanOutcome, StorageError> {
    let (config, targets) = cleanable(p, now_ms);
    let clean_before = p.cleaner.borrow().clean_before;
    if !config.cleanup_policy.compacts() || !dirty_enough(&targets, clean_before, &config) {
        return Ok(CleanOutcome::default());
    }
    let (keys, covered) = build_key_map(&targets).await?;
    let mut outcome = CleanOutcome::default();
    for target in &targets[..covered] {
        if p.state.borrow().closed {
            break;
        }
        rewrite(p, target, &keys, now_ms, &config, &mut outcome).await?;
    }
    if let Some(last) = targets[..covered].last() {
        let clean_before = {
            let mut cleaner = p.cleaner.borrow_mut();
            cleaner.clean_before = cleaner.clean_before.max(last.last_offset + 1);
            cleaner.clean_before
        };
        save_checkpoint(&p.dir, clean_before);
    }
    Ok(outcome)
}

/// Bytes of closed segments at or past the cleaner checkpoint.
pub(crate) fn dirty_bytes(p: &Partition) -> u64 {
    let clean_before = p.cleaner.borrow().clean_before;
    let s = p.state.borrow();
    let closed = s.segments.len().saturating_sub(1);
    s.segments[..closed]
        .iter()
        .filter(|seg| seg.last_offset >= clean_before)
        .map(|seg| seg.size)
        .sum()
}

/// The configuration and the closed segments old enough to clean.
fn cleanable(p: &Partition, now_ms: i64) -> (LogConfig, Vec<Target>) {
    let s = p.state.borrow();
    let closed = s.segments.len().saturating_sub(1);
    let lag_ms = s.config.min_compaction_lag_ms;
    let targets = s.segments[..closed]
        .iter()
        .take_while(|seg| seg.max_timestamp <= now_ms.saturating_sub(lag_ms))
        .filter(|seg| seg.size > 0)
        .map(|seg| Target {
            base_offset: seg.base_offset,
            last_offset: seg.last_offset,
            file: seg.file.clone(),
            path: seg.path.clone(),
            size: seg.size,
        })
        .collect();
    (s.config.clone(), targets)
}

fn dirty_enough(targets: &[Target], clean_before: i64, config: &LogConfig) -> bool {
    let total: u64 = targets.iter().map(|t| t.size).sum();
    let dirty: u64 = targets
        .iter()
        .filter(|t| t.last_offset >= clean_before)
        .map(|t| t.size)
        .sum();
    let ratio_ppm = u128::from(config.min_cleanable_dirty_ratio_ppm);
    total > 0 && u128::from(dirty) * 1_000_000 >= ratio_ppm * u128::from(total)
}

/// The offset of the newest record of every key in `targets`, and how many
/// of the targets it covers (fewer when the keys outgrow the bound).
async fn build_key_map(targets: &[Target]) -> Result<(HashMap<Vec<u8>, i64>, usize), StorageError> {
    let mut keys: HashMap<Vec<u8>, i64> = HashMap::new();
    let mut key_bytes = 0usize;
    for (i, target) in targets.iter().enumerate() {
        let mut batches = SegmentBatches::new(target);
        while let Some(bytes) = batches.next().await? {
            let records = batch::records_owned(&bytes).map_err(|e| corrupt(target, &e))?;
            for record in records.iter() {
                let record = record.map_err(|e| corrupt(target, &e))?;
                let Some(key) = record.key else { continue };
                if keys.insert(key.to_vec(), record.offset).is_none() {
                    key_bytes += key.len();
                }
            }
            glommio::yield_if_needed().await;
        }
        // Keys of later segments only ever remove more: cleaning the
        // segments read so far with this map is right, just less thorough.
        if key_bytes > CLEANER_KEY_BYTES_MAX {
            return Ok((keys, i + 1));
        }
    }
    Ok((keys, targets.len()))
}

fn corrupt(target: &Target, e: &dyn std::fmt::Display) -> StorageError {
    StorageError(format!("cleaner: {}: {e}", target.path.display()))
}

/// What becomes of one batch.
enum Retained {
    /// Kept byte for byte.
    Same,
    /// Replaced by this batch.
    Rewritten(Vec<u8>, u64),
    /// Removed (every record superseded).
    Dropped(u64),
}

/// Decides one batch's survivors.
fn retain(
    bytes: &[u8],
    keys: &HashMap<Vec<u8>, i64>,
    tombstones_before: i64,
    last_of_segment: bool,
) -> Result<Retained, batch::BatchError> {
    let records = batch::records_owned(bytes)?;
    let header = *records.header();
    let mut kept: Vec<Record<'_>> = Vec::new();
    let mut total = 0u64;
    for record in records.iter() {
        let record = record?;
        total += 1;
        let Some(key) = record.key else { continue };
        let newest = keys.get(key) == Some(&record.offset);
        let expired = record.value.is_none() && header.max_timestamp < tombstones_before;
        if newest && !expired {
            kept.push(record);
        }
    }
    let removed = total - kept.len() as u64;
    Ok(match (removed, kept.is_empty() && !last_of_segment) {
        (0, _) => Retained::Same,
        (_, true) => Retained::Dropped(removed),
        (_, false) => Retained::Rewritten(batch::encode_retained(&header, &kept), removed),
    })
}

/// Writes the survivors of `target` to `<base>.cleaned` and swaps it in.
async fn rewrite(
    p: &Partition,
    target: &Target,
    keys: &HashMap<Vec<u8>, i64>,
    now_ms: i64,
    config: &LogConfig,
    outcome: &mut CleanOutcome,
) -> Result<(), StorageError> {
    let cleaned = segment_path(&p.dir, target.base_offset, "cleaned");
    let tombstones_before = now_ms.saturating_sub(config.delete_retention_ms);
    let mut out = CleanedFile::create(&cleaned).await?;
    let mut batches = SegmentBatches::new(target);
    let mut removed = 0u64;
    while let Some(bytes) = batches.next().await? {
        let header = BatchHeader::parse(&bytes).map_err(|e| corrupt(target, &e))?;
        let last = header.last_offset() == target.last_offset;
        match retain(&bytes, keys, tombstones_before, last).map_err(|e| corrupt(target, &e))? {
            Retained::Same => out.push(bytes).await?,
            Retained::Rewritten(new, n) => {
                removed += n;
                out.push(new).await?;
            }
            Retained::Dropped(n) => removed += n,
        }
        glommio::yield_if_needed().await;
    }
    if removed == 0 || out.size > SEGMENT_BYTES_MAX {
        // Nothing to gain (or survivors no longer fit a segment once
        // decompressed): the original stays.
        out.discard().await;
        return Ok(());
    }
    let (size, headers) = out.finish().await?;
    if swap(p, target, &cleaned, size, &headers, config).await? {
        outcome.segments_rewritten += 1;
        outcome.bytes_before += target.size;
        outcome.bytes_after += size;
        outcome.records_removed += removed;
    }
    Ok(())
}

/// Renames `<base>.cleaned` over `<base>.log` and puts the new segment in
/// place of the old one. False when the segment went away meanwhile.
async fn swap(
    p: &Partition,
    target: &Target,
    cleaned: &Path,
    size: u64,
    headers: &[(u64, BatchHeader)],
    config: &LogConfig,
) -> Result<bool, StorageError> {
    let base = target.base_offset;
    let present = |p: &Partition| {
        let s = p.state.borrow();
        !s.closed
            && s.segments[..s.segments.len().saturating_sub(1)]
                .iter()
                .any(|seg| seg.base_offset == base)
    };
    // No await from the check to the rename: retention cannot delete the
    // segment in between (its files would come back).
    if !present(p) {
        let _ = std::fs::remove_file(cleaned);
        return Ok(false);
    }
    for ext in ["index", "timeindex"] {
        let path = segment_path(&p.dir, base, ext);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(StorageError::io("remove", &path, e));
            }
        }
    }
    std::fs::rename(cleaned, &target.path).map_err(|e| StorageError::io("rename", cleaned, e))?;
    sync_dir(&p.dir)?;
    let seg = open_cleaned(target, size, headers, config.index_interval_bytes).await?;
    write_index_files(&p.dir, base, &seg.index).await?;
    let mut s = p.state.borrow_mut();
    let Some(slot) = s.segments.iter_mut().find(|seg| seg.base_offset == base) else {
        return Ok(false);
    };
    assert_eq!(
        slot.last_offset, seg.last_offset,
        "cleaning kept the segment's end"
    );
    *slot = seg;
    drop(s);
    // The tail cache may hold batches the cleaner just removed.
    p.cache.remove(p.cache_key);
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("fsync", dir, e))
}

/// The in-memory segment for a cleaned file: its index rebuilt from the
/// batches written.
async fn open_cleaned(
    target: &Target,
    size: u64,
    headers: &[(u64, BatchHeader)],
    interval: u32,
) -> Result<Segment, StorageError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&target.path)
        .await
        .map_err(|e| StorageError::io("open", &target.path, e))?;
    let mut seg = Segment::new(target.base_offset, target.path.clone(), Rc::new(file));
    for (position, header) in headers {
        seg.note_batch(*position, header, interval);
    }
    seg.size = size;
    Ok(seg)
}

/// The `.cleaned` file being written: batches are gathered and written in
/// pieces of [`CLEANER_WRITE_BYTES`].
struct CleanedFile {
    path: PathBuf,
    file: BufferedFile,
    pending: Vec<u8>,
    written: u64,
    size: u64,
    headers: Vec<(u64, BatchHeader)>,
}

impl CleanedFile {
    async fn create(path: &Path) -> Result<CleanedFile, StorageError> {
        let file = BufferedFile::create(path)
            .await
            .map_err(|e| StorageError::io("create", path, e))?;
        Ok(CleanedFile {
            path: path.to_path_buf(),
            file,
            pending: Vec::new(),
            written: 0,
            size: 0,
            headers: Vec::new(),
        })
    }

    async fn push(&mut self, batch: Vec<u8>) -> Result<(), StorageError> {
        let header = BatchHeader::parse(&batch).map_err(|e| StorageError(e.to_string()))?;
        self.headers.push((self.size, header));
        self.size += batch.len() as u64;
        self.pending.extend_from_slice(&batch);
        if self.pending.len() >= CLEANER_WRITE_BYTES {
            self.flush_pending().await?;
        }
        Ok(())
    }

    async fn flush_pending(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.pending);
        let n = data.len() as u64;
        self.file
            .write_at(data, self.written)
            .await
            .map_err(|e| StorageError::io("write", &self.path, e))?;
        self.written += n;
        Ok(())
    }

    /// Writes what is left and flushes the file to the device.
    async fn finish(mut self) -> Result<(u64, Vec<(u64, BatchHeader)>), StorageError> {
        self.flush_pending().await?;
        let path = self.path.clone();
        self.file
            .fdatasync()
            .await
            .map_err(|e| StorageError::io("fdatasync", &path, e))?;
        self.file
            .close()
            .await
            .map_err(|e| StorageError::io("close", &path, e))?;
        Ok((self.size, self.headers))
    }

    async fn discard(self) {
        let _ = self.file.close().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads the whole batches of a segment in order, a large read at a time.
struct SegmentBatches<'a> {
    target: &'a Target,
    /// File position of `buf[0]`.
    pos: u64,
    buf: Vec<u8>,
    at: usize,
}

impl<'a> SegmentBatches<'a> {
    fn new(target: &'a Target) -> Self {
        SegmentBatches {
            target,
            pos: 0,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// The next whole batch, or `None` at the end of the segment.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        let mut position = self.pos + self.at as u64;
        if position >= self.target.size {
            return Ok(None);
        }
        // Skip a gap before a landed batch (see `landing`).
        let mut refilled = false;
        loop {
            match crate::landing::gap_at(&self.buf[self.at..], position) {
                crate::landing::Gap::Skip(n) => {
                    self.at += n;
                    position += n as u64;
                }
                crate::landing::Gap::Undecided if !refilled => {
                    let need = crate::landing::gap_len(position) + BATCH_HEADER_BYTES;
                    self.refill(position, need).await?;
                    refilled = true;
                    continue;
                }
                _ => {}
            }
            break;
        }
        if position >= self.target.size {
            return Ok(None);
        }
        let mut need = self.whole_batch_bytes()?;
        if self.buf.len() - self.at < need {
            self.refill(position, need).await?;
            need = self.whole_batch_bytes()?;
            if self.buf.len() < need {
                let msg = format!("cut batch at {position}");
                return Err(corrupt(self.target, &msg));
            }
        }
        let bytes = self.buf[self.at..self.at + need].to_vec();
        self.at += need;
        Ok(Some(bytes))
    }

    /// Bytes of the batch at `at` (just the header's when it is not all here).
    fn whole_batch_bytes(&self) -> Result<usize, StorageError> {
        let rest = &self.buf[self.at..];
        if rest.len() < BATCH_HEADER_BYTES {
            return Ok(BATCH_HEADER_BYTES);
        }
        BatchHeader::parse(rest)
            .map(|h| h.total_bytes())
            .map_err(|e| corrupt(self.target, &e))
    }

    async fn refill(&mut self, position: u64, need: usize) -> Result<(), StorageError> {
        let left = self.target.size - position;
        let len = (need.max(CLEANER_WRITE_BYTES) as u64).min(left) as usize;
        let data = self
            .target
            .file
            .read_at(position, len)
            .await
            .map_err(|e| StorageError::io("read", &self.target.path, e))?;
        self.buf = data[..len.min(data.len())].to_vec();
        self.pos = position;
        self.at = 0;
        Ok(())
    }
}
