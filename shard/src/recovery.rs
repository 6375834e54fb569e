//! Crash recovery of a partition's segments.
//!
//! Every segment is checked from its last trustworthy index entry to its end:
//! each batch's header, length, CRC and that offsets increase (strictly, with
//! gaps where the cleaner removed batches). Segments follow each other with
//! no gap: the cleaner keeps every segment's last batch, emptied if need be.
//! A `<base>.cleaned` file is a compaction a crash interrupted; it is removed. The first torn or
//! corrupt batch ends the log — the segment is truncated there and any later
//! segment is removed — so nothing corrupt is ever served. An index that is
//! missing or disagrees with the log is rebuilt by scanning the whole segment.
//!
//! Only the tail after the last index entry is scanned when the index is
//! good, so recovery costs a few kilobytes per segment after a clean run.

use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use crate::index::{scan, IndexEntry, ScanStop, SegmentIndex};
use crate::limits::{BLOCK_BYTES, INDEX_INTERVAL_BYTES_DEFAULT};
use crate::partition::{segment_path as path_of, Segment, StorageError};

/// Bytes read at a time while scanning.
const SCAN_READ_BYTES: usize = 1024 * 1024;

/// Base offsets of the `*.log` files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<i64>, StorageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".cleaned") {
            // A compaction that a crash interrupted before its swap: the
            // original segment is still in place and whole.
            tracing::info!(path = %entry.path().display(), "removing an unfinished cleaning");
            std::fs::remove_file(entry.path())
                .map_err(|e| StorageError::io("remove", &entry.path(), e))?;
            continue;
        }
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<i64>() {
                if base >= 0 {
                    bases.push(base);
                }
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Opens and checks every segment in `dir`; returns them ready to append to.
pub(crate) async fn recover_segments(dir: &Path) -> Result<Vec<Segment>, StorageError> {
    let bases = list_segments(dir)?;
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
    for (i, &base) in bases.iter().enumerate() {
        if let Some(prev) = segments.last() {
            if prev.last_offset + 1 != base {
                tracing::error!(
                    dir = %dir.display(), expected = prev.last_offset + 1, found = base,
                    "log ends before this segment: removing it and every later segment"
                );
                remove_segments(dir, &bases[i..]);
                break;
            }
        }
        let (seg, clean) = recover_one(dir, base).await?;
        segments.push(seg);
        if !clean && i + 1 < bases.len() {
            tracing::error!(
                dir = %dir.display(), base,
                "corrupt batch inside an older segment: the log ends there"
            );
            remove_segments(dir, &bases[i + 1..]);
            break;
        }
    }
    Ok(segments)
}

fn remove_segments(dir: &Path, bases: &[i64]) {
    for &base in bases {
        for ext in ["log", "index", "timeindex"] {
            let _ = std::fs::remove_file(path_of(dir, base, ext));
        }
    }
}

/// Recovers one segment. The flag is false when data after the valid end
/// was something other than the zero padding a direct-I/O write leaves.
async fn recover_one(dir: &Path, base: i64) -> Result<(Segment, bool), StorageError> {
    let path = path_of(dir, base, "log");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(|e| StorageError::io("open", &path, e))?;
    let file = Rc::new(file);
    let file_size = file
        .file_size()
        .await
        .map_err(|e| StorageError::io("stat", &path, e))?;
    let index = load_index(dir, base, file_size);
    let mut seg = Segment::new(base, path.clone(), file.clone());
    let start = match index.as_ref().and_then(|i| i.last()) {
        Some(entry) => {
            let mut index = index.clone().unwrap_or_default();
            index.entries.retain(|e| e.position < entry.position);
            seg.index = index;
            Some(entry)
        }
        None => None,
    };
    let mut outcome = scan_segment(&mut seg, start, file_size).await?;
    if start.is_some() && outcome.found_none_at_start {
        // The index points at something that is not the batch it names.
        tracing::warn!(path = %path.display(), "index disagrees with the log: rebuilding it");
        seg = Segment::new(base, path.clone(), file.clone());
        outcome = scan_segment(&mut seg, None, file_size).await?;
    }
    if outcome.torn {
        tracing::warn!(
            path = %path.display(), valid_bytes = seg.size, file_bytes = file_size,
            reason = %outcome.reason, "truncating a torn or corrupt tail"
        );
    }
    if file_size != seg.size {
        file.truncate(seg.size)
            .await
            .map_err(|e| StorageError::io("truncate", &path, e))?;
    }
    seg.tail = read_tail(&file, &path, seg.size).await?;
    Ok((seg, !outcome.torn))
}

fn load_index(dir: &Path, base: i64, file_size: u64) -> Option<SegmentIndex> {
    let offsets = std::fs::read(path_of(dir, base, "index")).ok()?;
    let times = std::fs::read(path_of(dir, base, "timeindex")).ok()?;
    SegmentIndex::decode(&offsets, &times, file_size)
}

struct ScanOutcome {
    torn: bool,
    found_none_at_start: bool,
    reason: String,
}

/// Scans from `start` (an index entry) or from position 0 to the end of the
/// file, noting every valid batch in `seg`.
async fn scan_segment(
    seg: &mut Segment,
    start: Option<IndexEntry>,
    file_size: u64,
) -> Result<ScanOutcome, StorageError> {
    let (mut pos, mut expected) = match start {
        Some(e) => {
            seg.max_timestamp = e.max_timestamp;
            seg.last_offset = seg.base_offset + i64::from(e.rel_offset) - 1;
            (
                u64::from(e.position),
                seg.base_offset + i64::from(e.rel_offset),
            )
        }
        None => (0, seg.base_offset),
    };
    let scan_start = pos;
    seg.size = pos;
    let mut want = SCAN_READ_BYTES;
    loop {
        if pos >= file_size {
            return Ok(ScanOutcome {
                torn: false,
                found_none_at_start: false,
                reason: String::new(),
            });
        }
        let len = (file_size - pos).min(want as u64) as usize;
        let data = seg
            .file
            .read_at(pos, len)
            .await
            .map_err(|e| StorageError::io("read", &seg.path, e))?;
        let (found, stop) = scan(&data[..len.min(data.len())], pos, expected);
        for b in &found {
            seg.note_batch(b.position, &b.header, INDEX_INTERVAL_BYTES_DEFAULT);
            seg.size = b.position + b.header.total_bytes() as u64;
            expected = b.header.last_offset() + 1;
        }
        match stop {
            ScanStop::End => {
                pos += len as u64;
                want = SCAN_READ_BYTES;
            }
            ScanStop::NeedMore { position, needed } if position + (needed as u64) <= file_size => {
                pos = position;
                want = needed.max(SCAN_READ_BYTES);
            }
            ScanStop::NeedMore { position, .. } => {
                // Cut by the end of the file: zeros from here to the end are
                // the padding after the last batch, anything else a torn
                // write. Read to the end: this read may have stopped short.
                let rest = seg
                    .file
                    .read_at(position, (file_size - position) as usize)
                    .await
                    .map_err(|e| StorageError::io("read", &seg.path, e))?;
                let padding = rest.iter().all(|b| *b == 0);
                return Ok(ScanOutcome {
                    torn: !padding,
                    found_none_at_start: position == scan_start && (!padding || scan_start > 0),
                    reason: if padding {
                        "zero padding".into()
                    } else {
                        "batch cut by the end of the file".into()
                    },
                });
            }
            ScanStop::Invalid { position, reason } => {
                let padding = reason == "zero padding" || is_zero_tail(&data, position - pos);
                return Ok(ScanOutcome {
                    torn: !padding,
                    found_none_at_start: position == scan_start && scan_start > 0,
                    reason,
                });
            }
        }
    }
}

/// Whether everything from `from` to the end of `data` is zero (the padding
/// after the last batch of a direct-I/O write).
fn is_zero_tail(data: &[u8], from: u64) -> bool {
    let from = from as usize;
    from <= data.len() && data[from..].iter().all(|b| *b == 0)
}

async fn read_tail(file: &DmaFile, path: &Path, size: u64) -> Result<Vec<u8>, StorageError> {
    let partial = (size % BLOCK_BYTES as u64) as usize;
    if partial == 0 {
        return Ok(Vec::new());
    }
    let from = size - partial as u64;
    let data = file
        .read_at(from, partial)
        .await
        .map_err(|e| StorageError::io("read", path, e))?;
    if data.len() < partial {
        return Err(StorageError(format!(
            "short read of the tail of {}",
            path.display()
        )));
    }
    Ok(data[..partial].to_vec())
}
