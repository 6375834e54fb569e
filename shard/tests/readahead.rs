//! Read-ahead for consumers of cold segments (`sluice_shard::readahead`):
//! every fetch in order after the first finds its bytes already read, the
//! records are exactly those of the log, several consumers of one partition
//! each keep their own read, the budget holds, and a read of a segment file
//! that compaction replaced is never served.

mod common;

use common::run;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::batch::BatchBuilder;
use sluice_shard::config::{CleanupPolicy, LogConfig};
use sluice_shard::partition::{now_ms, Durability, Partition};
use sluice_shard::stats;
use sluice_shard::store::ShardStore;

/// Opens `t`/0 with no tail cache (every read goes to the segment files)
/// and reads ahead holding at most `budget` bytes.
async fn open(dir: &Path, config: LogConfig, budget: usize) -> (Rc<ShardStore>, Rc<Partition>) {
    common::open_with(dir, config, 0, budget).await
}

fn unique(i: i64, j: i64) -> String {
    format!("key-{i}-{j}")
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// Appends `batches` batches of three records, record `j` of batch `i`
/// keyed `key(i, j)`; returns the records.
async fn fill(
    p: &Partition,
    batches: i64,
    key: impl Fn(i64, i64) -> String,
) -> Vec<(i64, String, Option<String>)> {
    fill_with(p, batches, 3, key, |i, j| format!("value-{i}-{j}")).await
}

/// Appends `batches` batches of `records` records, record `j` of batch `i`
/// keyed `key(i, j)` with value `value(i, j)`; returns the records.
async fn fill_with(
    p: &Partition,
    batches: i64,
    records: i64,
    key: impl Fn(i64, i64) -> String,
    value: impl Fn(i64, i64) -> String,
) -> Vec<(i64, String, Option<String>)> {
    let mut written = Vec::new();
    for i in 0..batches {
        let mut b = BatchBuilder::new(now_ms() - 1000);
        let recs: Vec<(String, String)> = (0..records).map(|j| (key(i, j), value(i, j))).collect();
        for (k, v) in &recs {
            b.push(now_ms() - 1000, Some(k.as_bytes()), Some(v.as_bytes()), &[]);
        }
        let at = p
            .append(Bytes::from(b.finish()), Durability::Written)
            .await
            .expect("append");
        for (j, (k, v)) in recs.into_iter().enumerate() {
            written.push((at.base_offset + j as i64, k, Some(v)));
        }
    }
    written
}

/// A consumer: fetches of `max_bytes` from its offset, as clients do.
struct Consumer {
    offset: i64,
    seen: Vec<(i64, String, Option<String>)>,
    fetches: u64,
}

impl Consumer {
    fn at(offset: i64) -> Consumer {
        Consumer {
            offset,
            seen: Vec::new(),
            fetches: 0,
        }
    }

    /// One fetch; false once the consumer is at the log end.
    async fn fetch(&mut self, p: &Partition, max_bytes: usize) -> bool {
        if self.offset >= p.offsets().log_end {
            return false;
        }
        let got = p.read(self.offset, max_bytes).await.expect("read");
        self.fetches += 1;
        let (records, next) = common::records_from(&got.chunks, self.offset);
        self.seen.extend(records);
        assert!(
            next > self.offset,
            "a fetch at {} makes progress",
            self.offset
        );
        self.offset = next;
        true
    }
}

#[test]
fn every_fetch_in_order_after_the_first_finds_its_read_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, small_segments(), 1 << 20).await;
        let empty = stats::snapshot();
        let written = fill(&p, 1500, unique).await;
        assert!(p.segment_count() > 8, "reads cross many segments");
        let before = stats::snapshot();
        let log_bytes = before.bytes_appended - empty.bytes_appended;
        let mut c = Consumer::at(0);
        while c.fetch(&p, 3000).await {}
        let after = stats::snapshot();
        assert_eq!(c.seen, written, "every record, in order, exactly once");
        // Each read takes the rest of a segment (up to 64 KiB), more than a
        // fetch of 3000 bytes sends: what it does not send is kept for the
        // fetches after it, not read again by each of them.
        let from_disk = after.segment_bytes_read - before.segment_bytes_read;
        assert!(
            from_disk < log_bytes * 3 / 2,
            "{from_disk} bytes read from segments for {log_bytes} of log"
        );
        assert!(after.read_ahead_kept > before.read_ahead_kept);
        assert_eq!(after.cache_reads, before.cache_reads, "all cold");
        // The first fetch had nothing read ahead; every later one did,
        // across segment ends too.
        assert_eq!(
            after.read_ahead_hits - before.read_ahead_hits,
            c.fetches - 1
        );
        assert_eq!(after.read_ahead_dropped, before.read_ahead_dropped);
        assert_eq!(after.payload_copies, before.payload_copies, "no copies");
        // Caught up: nothing is left read ahead, and closing drops all.
        assert!(store.read_ahead().held_bytes() <= store.read_ahead().budget());
        store.close_all().await.expect("close");
        assert_eq!(store.read_ahead().held_bytes(), 0);
        assert!(store.read_ahead().is_empty());
    });
}

#[test]
fn consumers_at_different_places_keep_their_own_reads_within_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        // Room for two reads of a 16 KiB segment's rest, not always for
        // three.
        let budget = 32 * 1024;
        let (store, p) = open(&path, small_segments(), budget).await;
        let written = fill(&p, 1500, unique).await;
        let end = written.len() as i64;
        let before = stats::snapshot();
        let (mut a, mut b) = (Consumer::at(0), Consumer::at(end / 2));
        loop {
            let more_a = a.fetch(&p, 3000).await;
            let more_b = b.fetch(&p, 3000).await;
            assert!(store.read_ahead().held_bytes() <= budget);
            if !more_a && !more_b {
                break;
            }
        }
        assert_eq!(a.seen, written);
        assert_eq!(b.seen, written[(end / 2) as usize..]);
        let mid = stats::snapshot();
        let fetches = a.fetches + b.fetches;
        assert_eq!(mid.read_ahead_hits - before.read_ahead_hits, fetches - 2);

        // A third consumer: now the budget is sometimes full and a new read
        // is not started (the ones held are taken next), and still every
        // consumer gets exactly the log.
        let (mut a, mut b, mut c) = (
            Consumer::at(0),
            Consumer::at(end / 3),
            Consumer::at(end / 2),
        );
        loop {
            let more = [
                a.fetch(&p, 3000).await,
                b.fetch(&p, 3000).await,
                c.fetch(&p, 3000).await,
            ];
            assert!(store.read_ahead().held_bytes() <= budget);
            if more.iter().all(|m| !m) {
                break;
            }
        }
        assert_eq!(a.seen, written);
        assert_eq!(b.seen, written[(end / 3) as usize..]);
        assert_eq!(c.seen, written[(end / 2) as usize..]);
        let after = stats::snapshot();
        assert!(
            after.read_ahead_refused > mid.read_ahead_refused,
            "the budget refused some reads"
        );
        assert_eq!(
            after.read_ahead_dropped, mid.read_ahead_dropped,
            "fresh reads are never pushed out"
        );
        store.close_all().await.expect("close");
    });
}

#[test]
fn a_read_ahead_of_a_segment_that_compaction_replaced_is_not_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            cleanup_policy: CleanupPolicy::Compact,
            min_cleanable_dirty_ratio_ppm: 0,
            ..small_segments()
        };
        let (store, p) = open(&path, config, 1 << 20).await;
        // Each batch's first record has one of 5 keys, written over and
        // over; the other two are unique. Compaction removes nearly every
        // first record, so the survivors move to other file positions.
        let written = fill(&p, 600, |i, j| match j {
            0 => format!("dup-{}", i % 5),
            _ => format!("key-{i}-{j}"),
        })
        .await;
        // One fetch from the start: the next region is read ahead.
        let mut c = Consumer::at(0);
        c.fetch(&p, 3000).await;
        assert!(!store.read_ahead().is_empty(), "a read ahead is held");
        let resume = c.offset;
        let dropped = stats::snapshot().read_ahead_dropped;

        let outcome = store.clean().await.expect("clean");
        assert!(outcome.segments_rewritten > 1, "{outcome:?}");

        // What the log holds now from `resume`: the newest record of each
        // key below the active segment, everything in it.
        let active = p.offsets().log_end - 1;
        let active_base = *common::segment_bases(&path).last().expect("a segment");
        assert!(active_base <= active);
        let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
        for (o, k, _) in written.iter().filter(|w| w.0 < active_base) {
            newest.insert(k, *o);
        }
        let want: Vec<_> = written
            .iter()
            .filter(|(o, k, _)| {
                *o >= resume && (*o >= active_base || newest.get(k.as_str()) == Some(o))
            })
            .cloned()
            .collect();
        assert!(want.len() < written.len() * 3 / 4);
        while c.fetch(&p, 3000).await {}
        assert_eq!(
            c.seen[c
                .seen
                .iter()
                .position(|s| s.0 >= resume)
                .unwrap_or(c.seen.len())..],
            want[..],
            "the fetch after compaction reads the new file, not the old bytes"
        );
        assert!(
            stats::snapshot().read_ahead_dropped > dropped,
            "the stale read was dropped"
        );
        store.close_all().await.expect("close");
    });
}

#[test]
fn a_store_without_read_ahead_reads_nothing_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = common::open(&path, small_segments(), 0).await;
        let written = fill(&p, 300, unique).await;
        let before = stats::snapshot();
        let mut c = Consumer::at(0);
        while c.fetch(&p, 3000).await {}
        let after = stats::snapshot();
        assert_eq!(c.seen, written);
        assert!(c.fetches > 10);
        assert_eq!(after.read_ahead_bytes, before.read_ahead_bytes);
        assert_eq!(after.read_ahead_hits, before.read_ahead_hits);
        assert!(store.read_ahead().is_empty());
        store.close_all().await.expect("close");
    });
}

#[test]
fn a_full_budget_refuses_new_reads_until_one_goes_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        // Two reads of the rest of a 16 KiB segment fit, three do not.
        let budget = 28 * 1024;
        let (store, p) = open(&path, small_segments(), budget).await;
        let written = fill(&p, 1500, unique).await;
        let bases = common::segment_bases(&path);
        assert!(bases.len() > 4);
        let before = stats::snapshot();
        // Each first fetch starts at a segment's base: its read ahead is
        // the rest of that segment.
        let mut a = Consumer::at(bases[1]);
        let mut b = Consumer::at(bases[2]);
        let mut c = Consumer::at(bases[3]);
        a.fetch(&p, 3000).await;
        b.fetch(&p, 3000).await;
        assert_eq!(store.read_ahead().len(), 2);
        c.fetch(&p, 3000).await;
        let full = stats::snapshot();
        assert_eq!(
            store.read_ahead().len(),
            2,
            "the third read was not started"
        );
        assert_eq!(full.read_ahead_refused - before.read_ahead_refused, 1);
        assert_eq!(full.read_ahead_dropped, before.read_ahead_dropped);
        assert!(store.read_ahead().held_bytes() <= budget);

        // A's read goes stale; C's next fetch (cold) pushes it out to make
        // room for its own, and B's read is still there for B.
        glommio::timer::sleep(sluice_shard::readahead::STALE + Duration::from_millis(100)).await;
        c.fetch(&p, 3000).await;
        let later = stats::snapshot();
        assert_eq!(later.read_ahead_dropped - full.read_ahead_dropped, 1);
        assert_eq!(later.read_ahead_hits, full.read_ahead_hits, "C had none");
        b.fetch(&p, 3000).await;
        a.fetch(&p, 3000).await;
        c.fetch(&p, 3000).await;
        let last = stats::snapshot();
        assert_eq!(
            last.read_ahead_hits - later.read_ahead_hits,
            2,
            "B and C found theirs, A's was dropped"
        );
        for (consumer, base) in [(&a, bases[1]), (&b, bases[2]), (&c, bases[3])] {
            let from = written.iter().position(|w| w.0 == base).expect("base");
            assert_eq!(consumer.seen, written[from..from + consumer.seen.len()]);
        }
        store.close_all().await.expect("close");
    });
}

/// Appends one batch holding one value of `len` bytes; returns its size.
async fn append_value(p: &Partition, len: usize) -> usize {
    let mut b = BatchBuilder::new(now_ms());
    b.push(now_ms(), Some(b"k"), Some(&vec![b'v'; len]), &[]);
    let batch = Bytes::from(b.finish());
    let size = batch.len();
    p.append(batch, Durability::Written).await.expect("append");
    size
}

/// `read_fitting` (a fetch's read of a partition that may not go past its
/// share) returns nothing for a first batch larger than its limit, and
/// says the batch's size. From a segment file, what it read is kept: the
/// fetch that then asks for the batch takes it without reading the disk.
/// From the tail cache, it reads nothing.
#[test]
fn a_batch_refused_for_its_size_is_kept_for_the_read_that_asks_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            index_interval_bytes: 256,
            ..LogConfig::default()
        };
        let (store, p) = open(&path, config.clone(), 1 << 20).await;
        let mut sizes = Vec::new();
        for len in [20_000, 30_000, 5_000] {
            sizes.push(append_value(&p, len).await);
        }
        let before = stats::snapshot();
        let refused = p.read_fitting(0, 10_000, 0).await.expect("read");
        let after_refusal = stats::snapshot();
        assert!(refused.chunks.is_empty() && refused.bytes == 0);
        assert_eq!(refused.next_batch_bytes, Some(sizes[0]));
        assert!(after_refusal.segment_bytes_read > before.segment_bytes_read);
        assert!(after_refusal.read_ahead_kept > before.read_ahead_kept);

        let got = p.read_fitting(0, sizes[0], 0).await.expect("read");
        let after = stats::snapshot();
        assert_eq!((got.bytes, got.next_batch_bytes), (sizes[0], None));
        let (records, next) = common::records_from(&got.chunks, 0);
        assert_eq!((records.len(), next), (1, 1));
        assert_eq!(after.read_ahead_hits - after_refusal.read_ahead_hits, 1);
        assert_eq!(
            after.segment_bytes_read, after_refusal.segment_bytes_read,
            "served from the bytes the refused read kept"
        );
        // Batches that fit are returned, up to the one that does not.
        let two = p
            .read_fitting(1, sizes[1] + sizes[2], 0)
            .await
            .expect("read");
        assert_eq!(
            (two.bytes, two.next_batch_bytes),
            (sizes[1] + sizes[2], None)
        );
        let one = p.read_fitting(1, sizes[1] + 10, 0).await.expect("read");
        assert_eq!((one.bytes, one.next_batch_bytes), (sizes[1], None));
        // Past the limit but within `whole_up_to`: whole.
        let within = p.read_fitting(1, 10, sizes[1]).await.expect("read");
        assert_eq!((within.bytes, within.next_batch_bytes), (sizes[1], None));
        let past = p.read_fitting(1, 10, sizes[1] - 1).await.expect("read");
        assert_eq!((past.bytes, past.next_batch_bytes), (0, Some(sizes[1])));
        // `read` returns the first batch whole, past the limit.
        assert_eq!(p.read(1, 10).await.expect("read").bytes, sizes[1]);
        store.close_all().await.expect("close");

        // The same from the tail cache.
        let cached = path.join("cached");
        std::fs::create_dir_all(&cached).expect("dir");
        let (store, p) = common::open_with(&cached, config, 1 << 20, 1 << 20).await;
        let size = append_value(&p, 20_000).await;
        let before = stats::snapshot();
        let refused = p.read_fitting(0, 10_000, 0).await.expect("read");
        let after = stats::snapshot();
        assert_eq!((refused.bytes, refused.next_batch_bytes), (0, Some(size)));
        assert_eq!(after.cache_reads - before.cache_reads, 1);
        assert_eq!(after.segment_bytes_read, before.segment_bytes_read);
        assert_eq!(p.read_fitting(0, size, 0).await.expect("read").bytes, size);
        store.close_all().await.expect("close");
    });
}

/// A read that would end part-way into a large batch stops at that batch's
/// header instead, so a consumer reading cold segments in order reads each
/// byte of the log from the disk about once: before, the part of the batch
/// each read cut was read again by the next one (up to a batch per fetch).
#[test]
fn cold_reads_in_order_do_not_read_the_batch_they_cut_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 8 << 20,
            ..LogConfig::default()
        };
        let (store, p) = open(&path, config, 4 << 20).await;
        let empty = stats::snapshot();
        // Batches of about 45 KiB: a 256 KiB fetch cuts one in most reads.
        let pad = "x".repeat(1000);
        let written = fill_with(&p, 300, 44, unique, |i, j| format!("{pad}-{i}-{j}")).await;
        let before = stats::snapshot();
        let log_bytes = before.bytes_appended - empty.bytes_appended;
        let mut c = Consumer::at(0);
        while c.fetch(&p, 256 << 10).await {}
        let after = stats::snapshot();
        assert_eq!(c.seen, written, "every record, in order, exactly once");
        assert_eq!(after.payload_copies, before.payload_copies, "no copies");
        assert_eq!(
            after.read_ahead_hits - before.read_ahead_hits,
            c.fetches - 1,
            "every fetch after the first found its read ahead"
        );
        // Each read may take up to a block before its start and the header
        // block of the batch it stops at again: 8 KiB a read at most.
        let from_disk = after.segment_bytes_read - before.segment_bytes_read;
        let slack = c.fetches * 8192;
        assert!(
            from_disk <= log_bytes + slack,
            "{from_disk} bytes read from segments for {log_bytes} of log in {} fetches",
            c.fetches
        );
        store.close_all().await.expect("close");
    });
}
