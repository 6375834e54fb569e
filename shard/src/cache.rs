//! The per-shard tail cache: recently written batches, served to consumers at
//! the tail without touching the disk.
//!
//! A cached batch holds the producer's bytes as they arrived (a slice of the
//! request frame, never copied) plus a fresh 16-byte prefix carrying the
//! stamped `baseOffset`, `batchLength` and `partitionLeaderEpoch`. Serving it
//! is two chunks in a vectored write: no payload byte is copied in user space.
//!
//! The cache is `!Send` and lives on one shard. Its byte budget is shared by
//! every partition of the shard; the oldest batches are evicted first.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// Bytes of the batch prefix the broker rewrites: baseOffset, batchLength,
/// partitionLeaderEpoch.
pub const STAMPED_PREFIX_BYTES: usize = 16;

/// A batch held in the cache.
#[derive(Clone, Debug)]
pub struct CachedBatch {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    /// baseOffset | batchLength | partitionLeaderEpoch, as stamped.
    pub prefix: Bytes,
    /// The rest of the batch, from `magic` on, as the producer sent it.
    pub body: Bytes,
    /// Memory the entry keeps alive beyond `len()`, charged to the cache's
    /// budget with it: a landed batch's zero padding and its landing's
    /// alignment slack (`landing::LandingMem::allocated_bytes`).
    pub overhead_bytes: usize,
}

impl CachedBatch {
    pub fn len(&self) -> usize {
        self.prefix.len() + self.body.len()
    }

    /// What the cache's budget is charged for this entry.
    pub fn charged_bytes(&self) -> usize {
        self.len() + self.overhead_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Identifies a partition within one shard's cache.
pub type CacheKey = u64;

/// The per-shard tail cache (`!Send`: one per shard).
pub struct TailCache {
    inner: RefCell<Inner>,
}

struct Inner {
    budget_bytes: usize,
    used_bytes: usize,
    /// Every cached batch in insertion order: (partition, base offset, bytes).
    order: VecDeque<(CacheKey, i64, usize)>,
    partitions: HashMap<CacheKey, VecDeque<CachedBatch>>,
}

impl TailCache {
    pub fn new(budget_bytes: usize) -> Self {
        TailCache {
            inner: RefCell::new(Inner {
                budget_bytes,
                used_bytes: 0,
                order: VecDeque::new(),
                partitions: HashMap::new(),
            }),
        }
    }

    pub fn used_bytes(&self) -> usize {
        self.inner.borrow().used_bytes
    }

    /// Adds a batch just written at the end of `key`'s log.
    pub fn insert(&self, key: CacheKey, batch: CachedBatch) {
        let mut inner = self.inner.borrow_mut();
        let len = batch.charged_bytes();
        if len > inner.budget_bytes {
            return;
        }
        let q = inner.partitions.entry(key).or_default();
        if let Some(last) = q.back() {
            // A gap (after a failed write) breaks contiguity: start afresh.
            if last.last_offset + 1 != batch.base_offset {
                let dropped: usize = q.drain(..).map(|b| b.charged_bytes()).sum();
                inner.used_bytes -= dropped;
                inner.order.retain(|(k, _, _)| *k != key);
            }
        }
        inner.order.push_back((key, batch.base_offset, len));
        inner.partitions.entry(key).or_default().push_back(batch);
        inner.used_bytes += len;
        while inner.used_bytes > inner.budget_bytes {
            inner.evict_oldest();
        }
    }

    /// Batches of `key` starting with the one that contains `offset`, up to
    /// `max_bytes` (the first batch is always returned whole), or `None` when
    /// `offset` is older than what the cache holds.
    pub fn read(&self, key: CacheKey, offset: i64, max_bytes: usize) -> Option<Vec<CachedBatch>> {
        let inner = self.inner.borrow();
        let q = inner.partitions.get(&key)?;
        let first = q.front()?;
        if offset < first.base_offset {
            return None;
        }
        let start = q.partition_point(|b| b.last_offset < offset);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for b in q.iter().skip(start) {
            if !out.is_empty() && bytes + b.len() > max_bytes {
                break;
            }
            bytes += b.len();
            out.push(b.clone());
        }
        Some(out)
    }

    /// Whether a read of `key` at `offset` would be served from the cache.
    pub fn holds(&self, key: CacheKey, offset: i64) -> bool {
        let inner = self.inner.borrow();
        inner
            .partitions
            .get(&key)
            .and_then(|q| q.front())
            .is_some_and(|first| offset >= first.base_offset)
    }

    /// Forgets every batch of `key` (partition deleted or truncated).
    pub fn remove(&self, key: CacheKey) {
        let mut inner = self.inner.borrow_mut();
        if let Some(q) = inner.partitions.remove(&key) {
            let bytes: usize = q.iter().map(|b| b.charged_bytes()).sum();
            inner.used_bytes -= bytes;
            inner.order.retain(|(k, _, _)| *k != key);
        }
    }
}

impl Inner {
    fn evict_oldest(&mut self) {
        let Some((key, base, len)) = self.order.pop_front() else {
            return;
        };
        self.used_bytes -= len;
        if let Some(q) = self.partitions.get_mut(&key) {
            let front = q.pop_front();
            assert_eq!(
                front.map(|b| b.base_offset),
                Some(base),
                "tail cache order broken"
            );
            if q.is_empty() {
                self.partitions.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, count: i64, len: usize) -> CachedBatch {
        CachedBatch {
            base_offset: base,
            last_offset: base + count - 1,
            max_timestamp: 0,
            prefix: Bytes::from(vec![0u8; STAMPED_PREFIX_BYTES]),
            body: Bytes::from(vec![1u8; len - STAMPED_PREFIX_BYTES]),
            overhead_bytes: 0,
        }
    }

    #[test]
    fn reads_from_the_batch_containing_the_offset() {
        let cache = TailCache::new(10_000);
        cache.insert(1, batch(0, 5, 100));
        cache.insert(1, batch(5, 5, 100));
        cache.insert(1, batch(10, 5, 100));
        let got = cache.read(1, 7, 1000).expect("cached");
        assert_eq!(
            got.iter().map(|b| b.base_offset).collect::<Vec<_>>(),
            vec![5, 10]
        );
        let one = cache.read(1, 7, 10).expect("cached");
        assert_eq!(
            one.len(),
            1,
            "the first batch is returned even when larger than max"
        );
        assert!(cache.read(1, 15, 1000).expect("cached").is_empty());
        assert!(cache.read(2, 0, 1000).is_none());
    }

    #[test]
    fn evicts_oldest_first_within_budget() {
        let cache = TailCache::new(250);
        cache.insert(1, batch(0, 1, 100));
        cache.insert(2, batch(0, 1, 100));
        cache.insert(1, batch(1, 1, 100));
        assert!(cache.used_bytes() <= 250);
        assert!(cache.read(1, 0, 1000).is_none(), "oldest evicted");
        assert_eq!(cache.read(1, 1, 1000).map(|v| v.len()), Some(1));
        assert_eq!(cache.read(2, 0, 1000).map(|v| v.len()), Some(1));
        cache.remove(2);
        assert!(cache.read(2, 0, 1000).is_none());
        assert_eq!(cache.used_bytes(), 100);
    }
}
