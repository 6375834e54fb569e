//! # sluice-replication
//!
//! Copies of partitions on other brokers arrive in a later release. What this
//! crate holds now is what replication will need from every log written
//! before it exists: the per-partition **leader-epoch history**, kept beside
//! each log, so followers can later be truncated by leader epoch (KIP-101)
//! without a change of on-disk format.
//!
//! Every batch carries the leader epoch it was written under
//! (`partitionLeaderEpoch`); the history maps each epoch to the first offset
//! written under it. On a single node an epoch begins each time the broker
//! starts and takes leadership of its partitions.
//!
//! [`EpochHistory`] is plain data plus a file; it is used only by the shard
//! that owns the partition.

use std::io;
use std::path::{Path, PathBuf};

/// The file beside a partition's segments that holds its epoch history.
pub const EPOCH_HISTORY_FILE: &str = "leader-epoch-checkpoint";

/// Format version written on the first line.
const FORMAT_VERSION: u32 = 0;

/// Entries kept at most; older epochs are merged away (they can no longer
/// matter once their offsets are gone from every replica).
pub const EPOCH_ENTRIES_MAX: usize = 1024;

/// One epoch and the first offset written under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: i32,
    pub start_offset: i64,
}

/// A partition's leader-epoch history (`!Sync` by use: one owner shard).
#[derive(Debug)]
pub struct EpochHistory {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl EpochHistory {
    /// Loads the history beside a partition's log, or starts an empty one.
    /// A damaged file is an error: the caller decides (the log itself is
    /// still the source of truth for offsets).
    pub fn load(partition_dir: &Path) -> io::Result<EpochHistory> {
        let path = partition_dir.join(EPOCH_HISTORY_FILE);
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => parse(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(EpochHistory { path, entries })
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Records that `epoch` begins at `start_offset` and persists the history.
    /// Epochs only grow; an epoch not above the latest is refused.
    pub fn begin_epoch(&mut self, epoch: i32, start_offset: i64) -> io::Result<()> {
        if let Some(last) = self.latest() {
            if epoch <= last.epoch || start_offset < last.start_offset {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "epoch {epoch}@{start_offset} does not follow {}@{}",
                        last.epoch, last.start_offset
                    ),
                ));
            }
            // An epoch under which nothing was written is superseded.
            if last.start_offset == start_offset {
                self.entries.pop();
            }
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        if self.entries.len() > EPOCH_ENTRIES_MAX {
            self.entries.remove(0);
        }
        self.persist()
    }

    /// Forgets epochs that start beyond `log_end` (after recovery truncated
    /// the log) and persists the result.
    pub fn truncate_to(&mut self, log_end: i64) -> io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset <= log_end);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// For OffsetForLeaderEpoch: the largest epoch not above `epoch`, and the
    /// offset where the epoch after it begins (or `log_end` for the latest).
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> Option<(i32, i64)> {
        let i = self.entries.partition_point(|e| e.epoch <= epoch);
        if i == 0 {
            return None;
        }
        let found = self.entries[i - 1];
        let end = self
            .entries
            .get(i)
            .map_or(log_end, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// Writes the history atomically: a temporary file, fsync, rename.
    fn persist(&self) -> io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("tmp");
        let mut text = format!("{FORMAT_VERSION}\n{}\n", self.entries.len());
        for e in &self.entries {
            text.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)
    }
}

fn parse(text: &str) -> Result<Vec<EpochEntry>, String> {
    let mut lines = text.lines();
    let version = lines.next().ok_or("empty file")?;
    if version.trim() != FORMAT_VERSION.to_string() {
        return Err(format!("unknown format version {version:?}"));
    }
    let count: usize = lines
        .next()
        .ok_or("missing entry count")?
        .trim()
        .parse()
        .map_err(|_| "bad entry count")?;
    if count > EPOCH_ENTRIES_MAX {
        return Err(format!("{count} entries is more than {EPOCH_ENTRIES_MAX}"));
    }
    let mut entries: Vec<EpochEntry> = Vec::with_capacity(count);
    for _ in 0..count {
        let line = lines.next().ok_or("fewer entries than the count says")?;
        let mut parts = line.split_whitespace();
        let epoch = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or("bad epoch")?;
        let start_offset = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or("bad offset")?;
        if let Some(prev) = entries.last() {
            if epoch <= prev.epoch || start_offset < prev.start_offset {
                return Err(format!("entry {epoch} {start_offset} is out of order"));
            }
        }
        entries.push(EpochEntry {
            epoch,
            start_offset,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_persists_and_answers_end_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = EpochHistory::load(dir.path()).expect("load");
        assert_eq!(h.latest(), None);
        h.begin_epoch(1, 0).expect("epoch 1");
        h.begin_epoch(2, 100).expect("epoch 2");
        h.begin_epoch(3, 100)
            .expect("epoch 3 replaces the empty epoch 2");
        h.begin_epoch(5, 250).expect("epoch 5");
        assert!(h.begin_epoch(4, 300).is_err(), "epochs only grow");
        let h = EpochHistory::load(dir.path()).expect("reload");
        assert_eq!(
            h.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 3,
                    start_offset: 100
                },
                EpochEntry {
                    epoch: 5,
                    start_offset: 250
                }
            ]
        );
        assert_eq!(h.end_offset_for(1, 400), Some((1, 100)));
        assert_eq!(
            h.end_offset_for(2, 400),
            Some((1, 100)),
            "epoch 2 never wrote"
        );
        assert_eq!(h.end_offset_for(4, 400), Some((3, 250)));
        assert_eq!(h.end_offset_for(9, 400), Some((5, 400)));
        assert_eq!(h.end_offset_for(0, 400), None);
    }

    #[test]
    fn truncation_drops_epochs_past_the_log_end_and_damage_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = EpochHistory::load(dir.path()).expect("load");
        h.begin_epoch(1, 0).expect("1");
        h.begin_epoch(2, 50).expect("2");
        h.truncate_to(40).expect("truncate");
        let h = EpochHistory::load(dir.path()).expect("reload");
        assert_eq!(
            h.latest(),
            Some(EpochEntry {
                epoch: 1,
                start_offset: 0
            })
        );
        std::fs::write(dir.path().join(EPOCH_HISTORY_FILE), "0\n2\n1 0\n").expect("write");
        assert!(EpochHistory::load(dir.path()).is_err());
        std::fs::write(dir.path().join(EPOCH_HISTORY_FILE), "0\n2\n3 0\n2 9\n").expect("write");
        assert!(EpochHistory::load(dir.path()).is_err());
    }
}
