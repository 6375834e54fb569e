//! Producer-state snapshots on disk, and rebuilding the state at open.
//!
//! A snapshot `<offset>.snapshot` holds the state of every producer after
//! all batches below `offset` (format in `producer::snapshot_format`). One
//! is written when a segment rolls (at the new segment's base) and when the
//! partition closes cleanly (at the log end), each to a temporary file that
//! is flushed and then renamed, so a crash leaves either the old set or the
//! new one. At open, the newest intact snapshot not beyond the recovered log
//! end is loaded and the batches after it are replayed from their headers;
//! snapshots beyond the log end (the log was truncated by recovery) are
//! deleted.

use std::path::{Path, PathBuf};

use glommio::io::BufferedFile;
use sluice_protocol::batch::{BatchHeader, BATCH_HEADER_BYTES};

use crate::limits::{PRODUCER_SCAN_READ_BYTES, PRODUCER_SNAPSHOTS_KEPT};
use crate::partition::{segment_path, Segment, StorageError};
use crate::producer::{snapshot_format, ProducerStates};

const EXT: &str = "snapshot";

/// Offsets of the snapshot files in `dir`, ascending.
fn list(dir: &Path) -> Result<Vec<i64>, StorageError> {
    let entries = std::fs::read_dir(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut offsets = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".snapshot.tmp") {
            // A snapshot whose write a crash interrupted.
            remove(&entry.path());
            continue;
        }
        let Some(stem) = name.strip_suffix(".snapshot") else {
            continue;
        };
        if let Ok(offset) = stem.parse::<i64>() {
            offsets.push(offset);
        }
    }
    offsets.sort_unstable();
    Ok(offsets)
}

fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove snapshot");
        }
    }
}

/// The snapshot of `states` covering the batches below `offset`.
pub(crate) fn encode(states: &ProducerStates, offset: i64) -> Vec<u8> {
    snapshot_format::encode(states, offset)
}

/// Writes an encoded snapshot as `<offset>.snapshot`, then keeps only the
/// newest [`PRODUCER_SNAPSHOTS_KEPT`].
pub(crate) async fn write(dir: &Path, offset: i64, bytes: Vec<u8>) -> Result<(), StorageError> {
    let path = segment_path(dir, offset, EXT);
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let file = BufferedFile::create(&tmp)
        .await
        .map_err(|e| StorageError::io("create", &tmp, e))?;
    file.write_at(bytes, 0)
        .await
        .map_err(|e| StorageError::io("write", &tmp, e))?;
    file.fdatasync()
        .await
        .map_err(|e| StorageError::io("fdatasync", &tmp, e))?;
    file.close()
        .await
        .map_err(|e| StorageError::io("close", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| StorageError::io("rename", &tmp, e))?;
    let offsets = list(dir)?;
    let old = offsets.len().saturating_sub(PRODUCER_SNAPSHOTS_KEPT);
    for stale in &offsets[..old] {
        remove(&segment_path(dir, *stale, EXT));
    }
    Ok(())
}

/// Loads the newest intact snapshot at or below `log_end` (deleting those
/// beyond it and stray temporary files); returns the offset it covers.
fn load_newest(dir: &Path, log_end: i64, states: &mut ProducerStates) -> Result<i64, StorageError> {
    let mut loaded = None;
    for offset in list(dir)?.into_iter().rev() {
        let path = segment_path(dir, offset, EXT);
        if offset > log_end {
            tracing::info!(path = %path.display(), log_end, "snapshot beyond the log end");
            remove(&path);
            continue;
        }
        if loaded.is_some() {
            continue;
        }
        let decoded = std::fs::read(&path)
            .ok()
            .and_then(|b| snapshot_format::decode(&b));
        match decoded {
            Some((at, producers)) if at == offset => {
                for (pid, entry) in producers {
                    states.put(pid, entry);
                }
                loaded = Some(offset);
            }
            _ => tracing::warn!(path = %path.display(), "ignoring a damaged snapshot"),
        }
    }
    Ok(loaded.unwrap_or(0))
}

/// The producer state of a recovered log: the newest snapshot, then every
/// batch header after it, then expiry as of `now_ms`.
pub(crate) async fn rebuild(
    dir: &Path,
    segments: &[Segment],
    log_end: i64,
    now_ms: i64,
    expiration_ms: i64,
) -> Result<ProducerStates, StorageError> {
    let mut states = ProducerStates::default();
    let from = load_newest(dir, log_end, &mut states)?;
    let mut replayed = 0usize;
    for seg in segments.iter().filter(|s| s.last_offset >= from) {
        let rel = u32::try_from(from.saturating_sub(seg.base_offset)).unwrap_or(u32::MAX);
        let (_, pos) = seg.index.lookup_offset(rel);
        replayed += replay_segment(seg, u64::from(pos), from, &mut states).await?;
    }
    states.expire(now_ms, expiration_ms);
    tracing::debug!(dir = %dir.display(), from, replayed, producers = states.len(), "producers");
    Ok(states)
}

/// Replays the headers of the batches of `seg` from `pos` whose base offset
/// is at least `from`; returns how many were idempotent.
async fn replay_segment(
    seg: &Segment,
    mut pos: u64,
    from: i64,
    states: &mut ProducerStates,
) -> Result<usize, StorageError> {
    let mut replayed = 0;
    while pos < seg.size {
        let len = (seg.size - pos).min(PRODUCER_SCAN_READ_BYTES as u64) as usize;
        let data = seg
            .file
            .read_at(pos, len)
            .await
            .map_err(|e| StorageError::io("read", &seg.path, e))?;
        let data = &data[..len.min(data.len())];
        let mut at = 0usize;
        while at + BATCH_HEADER_BYTES <= data.len() {
            match crate::landing::gap_at(&data[at..], pos + at as u64) {
                crate::landing::Gap::Skip(n) => {
                    at += n;
                    continue;
                }
                crate::landing::Gap::Undecided => break,
                crate::landing::Gap::None => {}
            }
            let header = BatchHeader::parse(&data[at..])
                .map_err(|e| StorageError(format!("{}: {e}", seg.path.display())))?;
            if header.base_offset >= from && header.producer_id >= 0 {
                states.replay(&header);
                replayed += 1;
            }
            at += header.total_bytes();
        }
        if at == 0 {
            let msg = format!("{}: truncated batch at {pos}", seg.path.display());
            return Err(StorageError(msg));
        }
        pos += at as u64;
    }
    Ok(replayed)
}
