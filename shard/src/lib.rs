//! # sluice-shard: the per-core engine
//!
//! A Sluice broker runs one glommio executor per core, each pinned to its
//! core with its own io_uring rings. This crate is what each of those
//! executors owns:
//!
//! - [`store::ShardStore`]: the partitions the shard owns. Ownership is a
//!   stable function of (topic, partition, shard count)
//!   ([`store::owner_shard`]); nothing else reads or writes those logs, so
//!   partition state needs no locks and no atomics.
//! - [`partition::Partition`]: one partition's log — segments written with
//!   direct I/O from glommio's registered DMA buffers, group-committed appends,
//!   reads by offset and by timestamp, retention, and crash recovery
//!   ([`recovery`]).
//! - [`producer`]: idempotent producers' sequences per partition (KIP-98),
//!   checked by the writer as it assigns offsets, snapshotted beside the log.
//! - [`compaction`]: the log cleaner for `cleanup.policy=compact`, driven by
//!   [`store::ShardStore::clean`].
//! - [`cache::TailCache`]: a bounded per-shard cache of recently written
//!   batches, so consumers at the tail are served from memory without a copy.
//! - [`uring::SideRing`]: a second io_uring ring per shard for cold reads
//!   that land, without a user-space copy, in buffers a response can carry.
//! - [`readahead`]: for consumers reading segment files in order, the
//!   region their next fetch will ask for is read while the last answer is
//!   sent (direct I/O bypasses the page cache, so the kernel reads nothing
//!   ahead).
//!
//! - [`landing`]: batches received from the socket straight into memory
//!   that is written to the segment as it is (4 KiB aligned, zero-padded),
//!   with one `writev` through the side ring per group of appends.
//! - [`arena`]: the memory landings come from, registered with each side
//!   ring, so those writes go out from registered buffers (`WRITEV_FIXED`)
//!   and the kernel does not pin their pages per write.
//!
//! Copies of record payloads in user space: none on the produce path for a
//! batch that landed (the Kafka listener lands every batch of at least
//! 8 KiB in a Produce request of at least 8 KiB; the kernel's copy out of
//! the socket buffer is the only one), one for any other batch (the request
//! buffer into the aligned write buffer), and none on the fetch path (tail
//! cache or side-ring reads, sent with scatter/gather). [`stats`] counts
//! them and the tests assert the count.
//!
//! Segment files: batches back to back, except that a landed batch starts
//! at a 4 KiB boundary, after fewer than 8,192 zero bytes (a *gap*,
//! [`landing::gap_at`]; segments written by earlier versions have gaps to a
//! 512-byte boundary, which readers still step over). Every reader of
//! segment files steps over gaps; fetch responses never contain them.
//!
//! The active segment is preallocated ahead of its data (`fallocate`, from
//! 1 MiB, doubling up to 64 MiB at a time, never past `segment.bytes`), and
//! a landed write starts past the zeros the previous one left. Each landed
//! write then covers whole 4 KiB blocks already allocated, which ext4
//! issues from the shard thread. A write that extends the file, or that
//! shares a block with data already written, is instead handed by io_uring
//! to an io-wq worker that sleeps until the device is done: on the 2-vCPU
//! test machine those workers were a quarter of the broker's CPU at max-rate
//! produce (`perf record`), and their context switches most of the rest of
//! the write path. Measured side by side with the build before (2026-12-05,
//! `scripts/bench-broker-cpu.sh`, docs/benchmarks.md): broker CPU per GB
//! −13% at 100 B records acks=1, −16% at 1 KiB acks=1, −15% at acks=all;
//! the machine's busy CPU per GB (kernel workers included) fell 6–12%, so
//! part of the saving is ext4's unwritten-extent conversion moving to a
//! kernel worker. Rolling a segment gives its unused space back (truncate);
//! after a crash, recovery cuts the zeros after the last batch.
//!
//! `fallocate` leaves blocks *unwritten*: the first write to one converts
//! it, and the `fdatasync` after it must then write the extent metadata
//! synchronously, one more device round trip per acks=all append. So each
//! shard also writes zeros, in the background, from 256 KiB to 2 MiB past
//! the data of its active segments (512 KiB writes, at most
//! `zero_fill_bytes_per_s`, 128 MiB/s by default, a shard, and a quarter of
//! that while the shard's flushed appends come faster: partitions appending
//! at up to that rate are covered whole, ones appending flat out mostly are
//! not, and there the zeros would only double the bytes the disk writes;
//! partitions whose appends are not flushed are not filled at all). An append that
//! would reach a fill in flight waits for it. At 50 MB/s of acks=all
//! appends in 1 ms batches this took broker CPU per GB from 3.64–3.76 to
//! 3.09–3.29 (three alternated pairs, 2026-12-06, docs/benchmarks.md; on
//! the same machine slowed down later, 3.5% on average, within its noise);
//! flat out it changed nothing measurable. What remains of each `fdatasync`
//! on ext4 is the cache flush and, once per clock tick, the inode write for
//! the new mtime (mounting with `lazytime` avoids that write, but made no
//! measurable difference to broker CPU on the test machine).
//!
//! Every type here is `!Send` and lives on one shard. Cross-shard routing is
//! the broker's job; this crate never talks to another core.
//!
//! ## Threading, rings and memlock
//!
//! Each executor has its own io_uring rings; the DMA buffers it writes from
//! are carved from a per-executor arena that glommio registers with the
//! kernel, which needs locked memory (`RLIMIT_MEMLOCK`, or `CAP_IPC_LOCK`).
//! The broker checks the limit at start-up and says what to change.
//!
//! ## Example
//!
//! ```no_run
//! use sluice_shard::{config::LogConfig, partition::Durability, store::ShardStore};
//! use sluice_protocol::{batch::BatchBuilder, ShardId};
//!
//! glommio::LocalExecutor::default().run(async {
//!     let store = ShardStore::new(ShardId(0), "/tmp/sluice-doc".into(), 1 << 20);
//!     let log = store.open_partition("events", 0, LogConfig::default(), 0).await.unwrap();
//!     let mut batch = BatchBuilder::new(0);
//!     batch.push(0, None, Some(b"hello"), &[]);
//!     let at = log.append(batch.finish().into(), Durability::Flushed).await.unwrap();
//!     let read = log.read(at.base_offset, 1 << 20).await.unwrap();
//!     assert!(read.bytes > 0);
//! });
//! ```
//!
//! ## Durability
//!
//! A direct-I/O write bypasses the page cache: once it completes, the data is
//! on the device and survives any crash of the process. `fdatasync` is added
//! for `acks=all` (and by `flush.ms`) so the device's own cache is flushed too.
//!
//! One device cache flush makes every direct-I/O write completed before it
//! durable, whichever file it went to, as long as no file metadata had to be
//! written for it. So a group written over blocks of its segment that were
//! already written and flushed (below `stable_to`) waits for a flush shared
//! with the shard's other partitions on that device (`flush`), and a group
//! that converted unwritten blocks or moved the file's size waits for its
//! own file's `fdatasync`, which makes what was written before it stable.
//! Measured (2026-12-06, docs/benchmarks.md): four partitions appended at
//! once over filled blocks take one `fdatasync` for the four; Kafka's Java
//! producer (16 partitions, acks=all) made 27% fewer `fdatasync`s and cost
//! the broker 5% less CPU per GB. In the benchmark matrix each produce
//! request goes to one partition and a round rarely holds more than one
//! group, so broker CPU per GB there moved within noise.
//!
//! A shared flush syncs an empty *anchor* file of the shard's rather than a
//! segment (`flush::prepare_anchor`), because on ext4 without a journal a
//! segment's `fdatasync` first writes its inode (dirtied by each write's
//! mtime) with a device round trip of its own. At 50 MB/s end to end
//! (docs/benchmarks.md, 2026-12-06) that took broker CPU per GB from
//! 3.02–3.06 to 2.63–2.66 and the median produce acknowledgement from
//! about 655 to 555 us.

pub mod arena;
pub mod cache;
pub mod compaction;
pub mod config;
pub mod flush;
pub mod index;
pub mod landing;
pub mod limits;
pub mod partition;
pub mod producer;
pub mod readahead;
mod recovery;
mod snapshot;
pub mod stats;
pub mod store;
pub mod uring;
