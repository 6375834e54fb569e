//! Read-ahead for consumers reading segment files in order.
//!
//! Segments are written with direct I/O, so the page cache holds none of
//! them and the kernel's read-ahead never runs. A consumer catching up from
//! cold segments would otherwise wait for the disk on every fetch: read,
//! send, wait for the client's next fetch, read again. So once a fetch has
//! been served from a segment file, the shard starts reading the region
//! that follows it, the size the fetch asked for, while the response is
//! sent and the client works through it. The next fetch that asks for the
//! offset right after takes that read, finished or still in flight.
//!
//! Each read ahead is keyed by partition and the offset it serves: several
//! consumers (groups, followers) reading one partition at different places
//! each have their own. A shard holds at most its budget of bytes read
//! ahead. When it is full, a new read is not started: the reads held are
//! for fetches that come within milliseconds, and pushing them out for a
//! newer one would waste the disk reads already made (a fetch of more
//! partitions than the budget holds would push out its own). Only a read
//! that no fetch took for [`STALE`] is dropped to make room (one still in
//! flight is cancelled; the side ring keeps its buffer until the kernel is
//! done).
//! A read is only used while its segment file is still the one at that
//! place in the log: compaction swaps files, and retention deletes them.
//!
//! The same slots hold bytes a fetch already read and did not send
//! ([`ReadAhead::keep`]): the rest of a region read for a fetch that asked
//! for less than a read's size, or a batch a fetch of many partitions
//! refused because it was larger than that partition's share (see
//! `Partition::read_fitting`). The next fetch at that offset takes them
//! like a read ahead instead of reading the disk again.
//!
//! Bytes read ahead lie below the segment's committed size when the read
//! starts, and committed bytes of a segment never change, so a read taken
//! later holds what a fresh read would.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::io::DmaFile;

use crate::cache::CacheKey;
use crate::partition::ReadError;
use crate::stats;

/// A read ahead that no fetch took for this long is dropped to make room:
/// its consumer stopped, moved, or fell behind.
pub const STALE: Duration = Duration::from_secs(1);

/// A shard's reads ahead.
pub struct ReadAhead {
    budget: usize,
    held: Cell<usize>,
    reads: RefCell<VecDeque<Ahead>>,
}

/// One read ahead: `len` bytes from `pos` of the segment based at
/// `seg_base`, for the fetch of `key` at `offset`.
pub(crate) struct Ahead {
    key: CacheKey,
    offset: i64,
    pub(crate) seg_base: i64,
    pub(crate) file: Weak<DmaFile>,
    pub(crate) pos: u64,
    pub(crate) len: usize,
    pub(crate) read: glommio::Task<Result<Bytes, ReadError>>,
    started: Instant,
}

/// What to read ahead: `len` bytes from `pos` of the segment file based at
/// `seg_base`.
pub(crate) struct Region {
    pub(crate) seg_base: i64,
    pub(crate) file: Rc<DmaFile>,
    pub(crate) path: PathBuf,
    pub(crate) pos: u64,
    pub(crate) len: usize,
}

impl ReadAhead {
    /// Reads ahead holding at most `budget` bytes; 0 turns read-ahead off.
    pub fn new(budget: usize) -> ReadAhead {
        ReadAhead {
            budget,
            held: Cell::new(0),
            reads: RefCell::new(VecDeque::new()),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes of reads ahead held or in flight.
    pub fn held_bytes(&self) -> usize {
        self.held.get()
    }

    /// Reads ahead held or in flight.
    pub fn len(&self) -> usize {
        self.reads.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.reads.borrow().is_empty()
    }

    /// Takes the read ahead for a fetch of `key` at `offset`, if one was
    /// started.
    pub(crate) fn take(&self, key: CacheKey, offset: i64) -> Option<Ahead> {
        let mut reads = self.reads.borrow_mut();
        let i = reads
            .iter()
            .position(|a| a.key == key && a.offset == offset)?;
        let ahead = reads.remove(i)?;
        self.held.set(self.held.get() - ahead.len);
        Some(ahead)
    }

    /// Starts reading `region` for the fetch of `key` at `offset`, unless
    /// the budget cannot hold it next to the reads that are not stale (a
    /// read larger than half the budget is never started).
    pub(crate) fn start(&self, key: CacheKey, offset: i64, region: Region) {
        let Region {
            seg_base,
            file,
            path,
            pos,
            len,
        } = region;
        if !self.admit(key, offset, len) {
            return;
        }
        let reading = file.clone();
        let read = glommio::spawn_local(async move {
            crate::partition::read_region(&reading, &path, pos, len).await
        });
        stats::add_read_ahead_started(len as u64);
        self.hold(Ahead {
            key,
            offset,
            seg_base,
            file: Rc::downgrade(&file),
            pos,
            len,
            read,
            started: Instant::now(),
        });
    }

    /// Keeps `data`, the bytes of the segment based at `seg_base` from
    /// `pos` on that a fetch read and did not send, for the fetch of `key`
    /// at `offset`: taken like a read ahead, so they are not read again.
    /// The same budget applies, counting `data`'s length only: the region
    /// buffer `data` is a slice of stays alive with it, so the part before
    /// it (what the fetch sent, at most one read's size) is held uncounted
    /// until the kept bytes are taken or go stale.
    pub(crate) fn keep(
        &self,
        key: CacheKey,
        offset: i64,
        seg_base: i64,
        file: &Rc<DmaFile>,
        pos: u64,
        data: Bytes,
    ) {
        let len = data.len();
        if !self.admit(key, offset, len) {
            return;
        }
        let read = glommio::spawn_local(async move { Ok(data) });
        stats::add_read_ahead_kept(len as u64);
        self.hold(Ahead {
            key,
            offset,
            seg_base,
            file: Rc::downgrade(file),
            pos,
            len,
            read,
            started: Instant::now(),
        });
    }

    /// Whether a read of `len` bytes for `key` at `offset` may be held:
    /// none is held for that place yet, and the budget has room once stale
    /// reads are dropped.
    fn admit(&self, key: CacheKey, offset: i64, len: usize) -> bool {
        if len == 0 || len > self.budget / 2 {
            return false;
        }
        // A second consumer at the same place: one read serves the next
        // of them to ask.
        if self
            .reads
            .borrow()
            .iter()
            .any(|a| a.key == key && a.offset == offset)
        {
            return false;
        }
        while self.held.get() + len > self.budget {
            let mut reads = self.reads.borrow_mut();
            let stale = reads.front().is_some_and(|a| a.started.elapsed() >= STALE);
            if !stale {
                stats::add_read_ahead_refused(1);
                return false;
            }
            if let Some(old) = reads.pop_front() {
                self.held.set(self.held.get() - old.len);
                stats::add_read_ahead_dropped(1);
            }
        }
        true
    }

    fn hold(&self, ahead: Ahead) {
        self.held.set(self.held.get() + ahead.len);
        self.reads.borrow_mut().push_back(ahead);
    }

    /// Drops every read ahead of `key` (its partition closed, was deleted,
    /// or had segments replaced).
    pub(crate) fn forget(&self, key: CacheKey) {
        let mut reads = self.reads.borrow_mut();
        let before = reads.len();
        let mut freed = 0;
        reads.retain(|a| {
            let keep = a.key != key;
            if !keep {
                freed += a.len;
            }
            keep
        });
        self.held.set(self.held.get() - freed);
        stats::add_read_ahead_dropped((before - reads.len()) as u64);
    }
}
