//! The partitions one shard owns, and where they live on disk.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sluice_protocol::ShardId;

use crate::cache::TailCache;
use crate::compaction::CleanOutcome;
use crate::config::LogConfig;
use crate::partition::{now_ms, Caches, Partition, StorageError};
use crate::readahead::ReadAhead;

/// The directory of a partition. It depends only on the topic and the
/// partition, never on the shard count, so a restart with a different
/// `--shards` finds every partition.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir
        .join("topics")
        .join(topic)
        .join(partition.to_string())
}

/// The shard that owns a partition: a stable function of the topic, the
/// partition and the shard count. Partitions of one topic are spread round
/// robin, starting at a shard chosen by the topic's name.
pub fn owner_shard(topic: &str, partition: u32, shards: u32) -> ShardId {
    assert!(shards > 0, "a broker has at least one shard");
    let start = u64::from(crc32c::crc32c(topic.as_bytes()));
    ShardId(((start + u64::from(partition)) % u64::from(shards)) as u32)
}

/// A partition by topic and index.
type PartitionKey = (Rc<str>, u32);

/// The partitions owned by one shard (`!Send`: one per shard).
pub struct ShardStore {
    pub shard: ShardId,
    data_dir: PathBuf,
    cache: Rc<TailCache>,
    read_ahead: Rc<ReadAhead>,
    partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    next_cache_key: Cell<u64>,
    /// Where the next [`ShardStore::clean`] starts among the partitions.
    clean_cursor: Cell<usize>,
}

impl ShardStore {
    pub fn new(shard: ShardId, data_dir: PathBuf, cache_bytes: usize) -> Self {
        ShardStore {
            shard,
            data_dir,
            cache: Rc::new(TailCache::new(cache_bytes)),
            read_ahead: Rc::new(ReadAhead::new(0)),
            partitions: RefCell::new(HashMap::new()),
            next_cache_key: Cell::new(0),
            clean_cursor: Cell::new(0),
        }
    }

    /// Reads ahead of consumers reading segment files in order, holding at
    /// most `bytes` (`readahead`); 0 (the default) turns them off.
    #[must_use]
    pub fn with_read_ahead(mut self, bytes: usize) -> Self {
        self.read_ahead = Rc::new(ReadAhead::new(bytes));
        self
    }

    pub fn read_ahead(&self) -> &ReadAhead {
        &self.read_ahead
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn cache(&self) -> &TailCache {
        &self.cache
    }

    /// Opens (recovering) a partition this shard owns.
    pub async fn open_partition(
        &self,
        topic: &str,
        partition: u32,
        config: LogConfig,
        leader_epoch: i32,
    ) -> Result<Rc<Partition>, StorageError> {
        if let Some(p) = self.get(topic, partition) {
            return Ok(p);
        }
        let key = self.next_cache_key.get();
        self.next_cache_key.set(key + 1);
        let topic: Rc<str> = Rc::from(topic);
        let dir = partition_dir(&self.data_dir, &topic, partition);
        let p = Partition::open(
            topic.clone(),
            partition,
            dir,
            config,
            leader_epoch,
            Caches {
                tail: self.cache.clone(),
                key,
                read_ahead: self.read_ahead.clone(),
            },
        )
        .await?;
        self.partitions
            .borrow_mut()
            .insert((topic, partition), p.clone());
        Ok(p)
    }

    pub fn get(&self, topic: &str, partition: u32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(&(Rc::from(topic), partition))
            .cloned()
    }

    pub fn partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    /// Deletes a partition and its files.
    pub async fn delete_partition(&self, topic: &str, partition: u32) -> Result<(), StorageError> {
        let p = self
            .partitions
            .borrow_mut()
            .remove(&(Rc::from(topic), partition));
        match p {
            Some(p) => p.delete().await,
            None => Ok(()),
        }
    }

    /// Runs retention on every partition once; returns segments deleted.
    pub async fn enforce_retention(&self) -> usize {
        let now = now_ms();
        let mut deleted = 0;
        for p in self.partitions() {
            deleted += p.enforce_retention(now).await;
        }
        deleted
    }

    /// Runs the log cleaner on compacted partitions, one partition's worth of
    /// work per call: partitions are visited in turn from where the last
    /// call stopped, until one is rewritten. Returns what that cleaning did;
    /// a partition whose cleaning fails is logged and skipped.
    pub async fn clean(&self) -> Result<CleanOutcome, StorageError> {
        self.clean_at(now_ms()).await
    }

    /// [`ShardStore::clean`] as of `now_ms` (tests move the clock).
    pub async fn clean_at(&self, now_ms: i64) -> Result<CleanOutcome, StorageError> {
        let mut partitions = self.partitions();
        partitions.retain(|p| p.config().cleanup_policy.compacts());
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let n = partitions.len();
        for i in 0..n {
            let turn = (self.clean_cursor.get() + i) % n;
            let p = &partitions[turn];
            match p.clean(now_ms).await {
                Ok(outcome) if outcome.segments_rewritten > 0 => {
                    self.clean_cursor.set(turn + 1);
                    return Ok(outcome);
                }
                Ok(_) => {}
                // One partition's trouble must not stop the others' cleaning.
                Err(e) => {
                    let (topic, partition) = (&p.topic, p.partition);
                    tracing::error!(%topic, partition, error = %e, "cleaning failed")
                }
            }
        }
        Ok(CleanOutcome::default())
    }

    /// Finishes queued appends, flushes and writes indexes of every partition.
    pub async fn close_all(&self) -> Result<(), StorageError> {
        let mut first_error = None;
        for p in self.partitions() {
            if let Err(e) = p.close().await {
                tracing::error!(topic = %p.topic, partition = p.partition, error = %e, "close failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The log configuration broker defaults apply to a topic's overrides.
pub fn topic_log_config(
    defaults: &LogConfig,
    overrides: &[(String, String)],
) -> Result<LogConfig, crate::config::ConfigError> {
    defaults.with_overrides(overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// Opens a non-empty file with direct I/O once, as an executor starts.
///
/// glommio probes whether a device supports polled I/O the first time a
/// `DmaFile` is opened; on virtio disks the probe, when made on an empty file,
/// misreads the device and later direct-I/O reads fail with EOPNOTSUPP.
/// Probing with a real block of data first avoids that.
pub async fn warm_up_direct_io(dir: &Path) -> Result<(), StorageError> {
    // One file per executor thread: shards of one process probe at once.
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".direct-io-probe-{}-{n}", std::process::id()));
    std::fs::write(&path, vec![0u8; crate::limits::BLOCK_BYTES])
        .map_err(|e| StorageError::io("write", &path, e))?;
    let file = glommio::io::DmaFile::open(&path)
        .await
        .map_err(|e| StorageError::io("open with O_DIRECT", &path, e))?;
    let read = file.read_at(0, crate::limits::BLOCK_BYTES).await;
    let _ = file.close().await;
    let _ = std::fs::remove_file(&path);
    read.map(|_| ())
        .map_err(|e| StorageError::io("direct-I/O read", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_is_stable_and_spreads_partitions() {
        for shards in 1..8 {
            let owners: Vec<u32> = (0..64)
                .map(|p| owner_shard("orders", p, shards).0)
                .collect();
            assert!(owners.iter().all(|s| *s < shards));
            let again: Vec<u32> = (0..64)
                .map(|p| owner_shard("orders", p, shards).0)
                .collect();
            assert_eq!(owners, again);
            for s in 0..shards {
                assert!(owners.contains(&s), "shard {s} of {shards} owns nothing");
            }
        }
        assert_eq!(
            partition_dir(Path::new("/d"), "t", 3),
            PathBuf::from("/d/topics/t/3"),
            "layout is independent of the shard count"
        );
    }
}
