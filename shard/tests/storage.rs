//! Storage tests: append, read at every offset, roll, retention, recovery from
//! torn and corrupt tails, and the payload copy counter. Each test runs on a
//! real glommio executor against real direct-I/O files.

mod common;

use common::run;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchBuilder};
use sluice_shard::config::LogConfig;
use sluice_shard::partition::{Durability, Partition, ReadError};
use sluice_shard::store::{partition_dir, ShardStore};

fn make_batch(first: u64, records: u64, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new(ts);
    for i in first..first + records {
        let v = format!("value-{i:08}");
        let k = format!("key-{i}");
        b.push(
            ts + (i - first) as i64,
            Some(k.as_bytes()),
            Some(v.as_bytes()),
            &[],
        );
    }
    Bytes::from(b.finish())
}

/// Every value in `chunks`, with its offset, in order.
fn values(chunks: &[Bytes]) -> Vec<(i64, String)> {
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut out = Vec::new();
    for item in batch::split(&joined) {
        let (range, _) = item.expect("whole batches");
        let bytes = &joined[range];
        batch::validate(bytes).expect("served batches are valid");
        for r in batch::records(bytes).expect("uncompressed") {
            let r = r.expect("record");
            let v = String::from_utf8(r.value.expect("value").to_vec()).expect("utf8");
            out.push((r.offset, v));
        }
    }
    out
}

async fn open(dir: &Path, config: LogConfig) -> (Rc<ShardStore>, Rc<Partition>) {
    open_with_cache(dir, config, 1 << 20).await
}

async fn open_with_cache(
    dir: &Path,
    config: LogConfig,
    cache_bytes: usize,
) -> (Rc<ShardStore>, Rc<Partition>) {
    common::open(dir, config, cache_bytes).await
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

#[test]
fn append_then_read_every_offset_from_cache_and_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        // A cache of 2 KiB: almost every read below goes to the segment files.
        let (store, p) = open_with_cache(&path, small_segments(), 2048).await;
        let mut next = 0u64;
        for i in 0..200 {
            let n = 1 + (i % 7);
            let at = p
                .append(make_batch(next, n, 1000 + i as i64), Durability::Written)
                .await;
            assert_eq!(at.expect("append").base_offset, next as i64);
            next += n;
        }
        assert!(p.segment_count() > 1, "small segments roll");
        let offsets = p.offsets();
        assert_eq!((offsets.log_start, offsets.log_end), (0, next as i64));
        for offset in 0..next as i64 {
            let got = p.read(offset, 1).await.expect("read");
            let vals = values(&got.chunks);
            // The batch containing the offset comes back whole.
            assert!(vals.iter().any(|(o, _)| *o == offset), "offset {offset}");
            assert!(vals[0].0 <= offset);
            let want = format!("value-{offset:08}");
            assert_eq!(
                vals.iter()
                    .find(|(o, _)| *o == offset)
                    .map(|(_, v)| v.clone()),
                Some(want)
            );
        }
        // Reading everything returns every record in order, exactly once.
        let mut offset = 0i64;
        let mut seen = Vec::new();
        while offset < next as i64 {
            let got = p.read(offset, 4096).await.expect("read");
            let vals = values(&got.chunks);
            assert!(!vals.is_empty());
            for (o, v) in vals {
                if o >= offset {
                    seen.push((o, v));
                }
            }
            offset = seen.last().map_or(0, |(o, _)| o + 1);
        }
        assert_eq!(seen.len() as u64, next);
        for (i, (o, v)) in seen.iter().enumerate() {
            assert_eq!(*o, i as i64);
            assert_eq!(*v, format!("value-{i:08}"));
        }
        let past = p.read(next as i64 + 1, 100).await;
        assert!(matches!(past, Err(ReadError::OffsetOutOfRange { .. })));
        assert!(p
            .read(next as i64, 100)
            .await
            .expect("at end")
            .chunks
            .is_empty());
        store.close_all().await.expect("close");
    });
}

#[test]
fn restart_finds_every_record_and_rebuilds_missing_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, small_segments()).await;
        for i in 0..40u64 {
            p.append(make_batch(i * 3, 3, 5000), Durability::Flushed)
                .await
                .expect("append");
        }
        store.close_all().await.expect("close");
        drop((store, p));
        // Remove one index to force a rebuild.
        let pdir = partition_dir(&path, "t", 0);
        let _ = std::fs::remove_file(pdir.join(format!("{:020}.index", 0)));
        let (store, p) = open(&path, small_segments()).await;
        assert_eq!(p.offsets().log_end, 120);
        let vals = values(&p.read(57, 1 << 20).await.expect("read").chunks);
        assert_eq!(vals.first().map(|v| v.0), Some(57));
        assert_eq!(vals.last().map(|v| v.0), Some(119));
        // Appends continue at the right offset after recovery.
        let at = p
            .append(make_batch(120, 2, 6000), Durability::Flushed)
            .await
            .expect("append");
        assert_eq!(at.base_offset, 120);
        store.close_all().await.expect("close");
    });
}

/// Writes 10 batches, lets the test damage the active segment file, and
/// returns what recovery kept.
fn recover_after(damage: impl FnOnce(&Path) + Send + 'static) -> Vec<(i64, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    run(move || async move {
        let (store, p) = open(&path, LogConfig::default()).await;
        for i in 0..10u64 {
            p.append(make_batch(i * 2, 2, 100), Durability::Flushed)
                .await
                .expect("append");
        }
        // No clean close: the indexes are never written, as after a crash.
        drop((store, p));
        damage(&partition_dir(&path, "t", 0).join(format!("{:020}.log", 0)));
        let (store, p) = open(&path, LogConfig::default()).await;
        let end = p.offsets().log_end;
        let got = if end > 0 {
            p.read(0, 1 << 20).await.expect("read").chunks
        } else {
            vec![]
        };
        // The log accepts appends right after what recovery kept.
        let at = p
            .append(make_batch(end as u64, 1, 200), Durability::Flushed)
            .await;
        assert_eq!(at.expect("append after recovery").base_offset, end);
        store.close_all().await.expect("close");
        tx.send(values(&got)).expect("send");
    });
    rx.recv().expect("result")
}

fn batch_len() -> u64 {
    make_batch(0, 2, 100).len() as u64
}

/// A one-record batch of exactly `len` bytes (value padded to fit).
fn batch_of_len(len: usize, ts: i64) -> Bytes {
    for pad in 0..len {
        let mut b = BatchBuilder::new(ts);
        let v = vec![b'p'; pad];
        b.push(ts, None, Some(&v), &[]);
        let bytes = b.finish();
        if bytes.len() == len {
            return Bytes::from(bytes);
        }
        if bytes.len() > len {
            break;
        }
    }
    panic!("no one-record batch of {len} bytes");
}

/// Recovery reads a segment in 1 MiB pieces. A batch that starts a few
/// bytes before a piece ends shows only the high bytes of its base offset,
/// all zeros, in that piece. Recovery once took them for the zero padding
/// after the last batch and cut the log there, losing every record from
/// that batch on, acknowledged or not (the kill -9 test caught it, rarely).
#[test]
fn recovery_keeps_a_batch_that_starts_just_before_a_read_boundary() {
    const PIECE: u64 = 1 << 20;
    for before in [1u64, 5, 8, 30, 60] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        run(move || async move {
            let (store, p) = open(&path, LogConfig::default()).await;
            let mut size = 0u64;
            let mut next = 0u64;
            // Fill to a little short of the boundary with ordinary batches...
            while size + 40_000 < PIECE - before {
                let b = make_batch(next, 500, 100);
                size += b.len() as u64;
                next += 500;
                p.append(b, Durability::Flushed).await.expect("append");
            }
            // ...then one batch that ends exactly `before` bytes short of it.
            let filler = batch_of_len((PIECE - before - size) as usize, 100);
            p.append(filler, Durability::Flushed).await.expect("append");
            let last = p
                .append(make_batch(next + 1, 3, 100), Durability::Flushed)
                .await
                .expect("append")
                .base_offset;
            let end = p.offsets().log_end;
            // A crash: no clean close, so no index files (recovery scans from 0).
            drop((store, p));
            let (store, p) = open(&path, LogConfig::default()).await;
            let recovered = p.offsets().log_end;
            let got = p.read(last, 1 << 20).await.expect("read").chunks;
            store.close_all().await.expect("close");
            let want: Vec<(i64, String)> = (0..3)
                .map(|i| (last + i as i64, format!("value-{:08}", next + 1 + i)))
                .collect();
            tx.send((end, recovered, values(&got), want)).expect("send");
        });
        let (end, recovered, got, want) = rx.recv().expect("result");
        assert_eq!(recovered, end, "{before} bytes before the boundary");
        assert_eq!(got, want, "{before} bytes before the boundary");
    }
}

#[test]
fn recovery_truncates_a_torn_tail() {
    let len = batch_len();
    let kept = recover_after(move |log| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(log)
            .expect("open");
        // Cut the last batch in half, as a crash in mid-write would.
        f.set_len(9 * len + len / 2).expect("truncate");
    });
    assert_eq!(kept.len(), 18, "nine whole batches survive");
    assert_eq!(kept.last().map(|v| v.0), Some(17));
}

#[test]
fn recovery_truncates_at_a_corrupt_batch() {
    let len = batch_len();
    let kept = recover_after(move |log| {
        let mut bytes = std::fs::read(log).expect("read");
        // Flip a payload byte inside the 7th batch: its CRC no longer matches.
        let at = (6 * len + len - 3) as usize;
        bytes[at] ^= 0x55;
        std::fs::write(log, bytes).expect("write");
    });
    assert_eq!(kept.len(), 12, "batches before the corrupt one survive");
    for (i, (o, v)) in kept.iter().enumerate() {
        assert_eq!(
            (*o, v.as_str()),
            (i as i64, format!("value-{i:08}").as_str())
        );
    }
}

#[test]
fn recovery_of_garbage_after_the_log_keeps_everything_before_it() {
    let kept = recover_after(|log| {
        let mut bytes = std::fs::read(log).expect("read");
        bytes.extend_from_slice(b"this is not a record batch at all, not even close........");
        std::fs::write(log, bytes).expect("write");
    });
    assert_eq!(kept.len(), 20);
}

#[test]
fn retention_deletes_whole_segments_by_size_and_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let mut config = small_segments();
        config.retention_bytes = 40 * 1024;
        let (store, p) = open(&path, config.clone()).await;
        for i in 0..400u64 {
            p.append(make_batch(i * 4, 4, 1_000), Durability::Written)
                .await
                .expect("append");
        }
        let before = p.segment_count();
        assert!(p.size_bytes() > 40 * 1024);
        let deleted = store.enforce_retention().await;
        assert!(deleted > 0);
        assert_eq!(p.segment_count(), before - deleted);
        assert!(p.size_bytes() <= 40 * 1024 + config.segment_bytes);
        let start = p.offsets().log_start;
        assert!(start > 0);
        assert!(matches!(
            p.read(start - 1, 100).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            values(&p.read(start, 100).await.expect("read").chunks)[0].0,
            start
        );

        // By age: every record carries timestamp ~1000 ms after the epoch, so
        // with a one-hour retention every segment but the active one goes.
        config.retention_bytes = -1;
        config.retention_ms = 3_600_000;
        p.set_config(config);
        store.enforce_retention().await;
        assert_eq!(p.segment_count(), 1, "the active segment is never deleted");
        assert_eq!(p.offsets().log_end, 1600);
        store.close_all().await.expect("close");
    });
}

#[test]
fn offsets_by_timestamp_find_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, small_segments()).await;
        for i in 0..100u64 {
            // Records i*5 .. i*5+4 have timestamps 10_000 + i*10 + 0..4.
            p.append(
                make_batch(i * 5, 5, 10_000 + i as i64 * 10),
                Durability::Written,
            )
            .await
            .expect("append");
        }
        let at = p
            .offset_for_timestamp(10_000 + 37 * 10 + 2)
            .await
            .expect("lookup");
        assert_eq!(at, Some((37 * 5 + 2, 10_000 + 37 * 10 + 2)));
        let at = p
            .offset_for_timestamp(10_000 + 37 * 10 + 7)
            .await
            .expect("lookup");
        assert_eq!(at, Some((38 * 5, 10_000 + 38 * 10)));
        assert_eq!(
            p.offset_for_timestamp(0).await.expect("lookup"),
            Some((0, 10_000))
        );
        assert_eq!(
            p.offset_for_timestamp(99_999_999).await.expect("lookup"),
            None
        );
        store.close_all().await.expect("close");
    });
}

#[test]
fn invalid_batches_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, LogConfig::default()).await;
        let good = make_batch(0, 3, 1);
        let mut bad = good.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut both = good.to_vec();
        both.extend_from_slice(&bad);
        for input in [
            Bytes::from(bad),
            Bytes::from(both),
            good.slice(..good.len() - 1),
        ] {
            let err = p
                .append(input, Durability::Written)
                .await
                .expect_err("refused");
            assert_eq!(
                err.error_code(),
                sluice_protocol::ErrorCode::CORRUPT_MESSAGE,
                "{err}"
            );
        }
        assert_eq!(
            p.offsets().log_end,
            0,
            "nothing appended from a rejected request"
        );
        p.set_config(LogConfig {
            max_message_bytes: 64,
            ..LogConfig::default()
        });
        let err = p
            .append(good, Durability::Written)
            .await
            .expect_err("too large");
        assert_eq!(
            err.error_code(),
            sluice_protocol::ErrorCode::MESSAGE_TOO_LARGE
        );
        store.close_all().await.expect("close");
    });
}

#[test]
fn produce_copies_each_payload_once_and_tail_reads_copy_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, LogConfig::default()).await;
        let before = sluice_shard::stats::snapshot();
        for i in 0..20u64 {
            p.append(make_batch(i, 1, 1), Durability::Written)
                .await
                .expect("append");
        }
        let after_produce = sluice_shard::stats::snapshot();
        assert_eq!(after_produce.payload_copies - before.payload_copies, 20);
        let got = p.read(0, 1 << 20).await.expect("read");
        assert_eq!(values(&got.chunks).len(), 20);
        let after_read = sluice_shard::stats::snapshot();
        assert_eq!(
            after_read.payload_copies, after_produce.payload_copies,
            "tail read copies"
        );
        assert_eq!(after_read.cache_reads - after_produce.cache_reads, 1);
        store.close_all().await.expect("close");
    });
}

#[test]
fn cold_reads_through_the_side_ring_copy_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        // No tail cache at all: every read goes to the segment files.
        let (store, p) = open_with_cache(&path, small_segments(), 0).await;
        for i in 0..300u64 {
            p.append(make_batch(i * 2, 2, 5), Durability::Written)
                .await
                .expect("append");
        }
        assert!(
            sluice_shard::uring::side_ring().is_some(),
            "the side ring starts here"
        );
        let before = sluice_shard::stats::snapshot();
        let mut offset = 0i64;
        let mut seen = 0usize;
        while offset < 600 {
            let got = p.read(offset, 3000).await.expect("read");
            let vals = values(&got.chunks);
            assert!(!vals.is_empty(), "progress at {offset}");
            seen += vals.iter().filter(|(o, _)| *o >= offset).count();
            offset = vals.last().map_or(offset, |v| v.0 + 1);
        }
        assert_eq!(seen, 600);
        let after = sluice_shard::stats::snapshot();
        assert_eq!(
            after.payload_copies, before.payload_copies,
            "cold reads copied payload"
        );
        assert_eq!(
            after.cache_reads, before.cache_reads,
            "nothing came from the cache"
        );
        store.close_all().await.expect("close");
    });
}

#[test]
fn reads_skip_a_batch_larger_than_one_read_to_reach_a_later_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        // No index entries and no cache: the read scans from the segment start.
        let config = LogConfig {
            index_interval_bytes: 16 * 1024 * 1024,
            ..LogConfig::default()
        };
        let (store, p) = open_with_cache(&path, config, 0).await;
        let mut big = BatchBuilder::new(1);
        big.push(1, None, Some(&vec![b'x'; 200 * 1024]), &[]);
        p.append(Bytes::from(big.finish()), Durability::Written)
            .await
            .expect("big");
        p.append(make_batch(1, 2, 1), Durability::Written)
            .await
            .expect("small");
        let got = p.read(2, 1024).await.expect("read past the big batch");
        assert_eq!(
            values(&got.chunks),
            vec![
                (1, "value-00000001".to_string()),
                (2, "value-00000002".to_string())
            ]
        );
        let whole = p.read(0, 10).await.expect("read the big batch");
        assert_eq!(
            values(&whole.chunks)[0].1.len(),
            200 * 1024,
            "returned whole"
        );
        store.close_all().await.expect("close");
    });
}

#[test]
fn appends_written_while_a_flush_runs_are_all_answered_in_order_and_close_waits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, small_segments()).await;
        // 200 appends in flight at once, most asking for a flush: the writer
        // goes on writing while the flusher flushes, across segment rolls.
        let done = Rc::new(std::cell::Cell::new(0u32));
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let p = p.clone();
                let done = done.clone();
                let durability = match i % 3 {
                    0 => Durability::Written,
                    _ => Durability::Flushed,
                };
                glommio::spawn_local(async move {
                    let at = p
                        .append(make_batch(i * 2, 2, 7000 + i as i64), durability)
                        .await;
                    done.set(done.get() + 1);
                    (i, at.map(|a| a.base_offset))
                })
            })
            .collect();
        // Close while appends are being written and flushed: every append
        // it answers Ok must be on disk when close returns.
        while p.offsets().log_end < 100 {
            glommio::timer::sleep(std::time::Duration::from_micros(100)).await;
        }
        store.close_all().await.expect("close");
        glommio::executor().yield_task_queue_now().await;
        assert_eq!(done.get(), 200, "close left appends unanswered");
        let mut answered = Vec::new();
        for t in tasks {
            let (i, at) = t.await;
            if let Ok(base) = at {
                answered.push((i, base));
            }
        }
        drop((store, p));
        assert!(answered.len() >= 50, "{} answered", answered.len());
        let mut bases: Vec<i64> = answered.iter().map(|(_, b)| *b).collect();
        bases.sort_unstable();
        assert_eq!(
            bases,
            (0..answered.len() as i64)
                .map(|i| i * 2)
                .collect::<Vec<i64>>(),
            "every append has its own offsets, no gap"
        );
        let (store, p) = open(&path, small_segments()).await;
        let end = p.offsets().log_end;
        assert!(end >= 2 * answered.len() as i64, "log end {end}");
        let mut all = Vec::new();
        let mut at = 0;
        while at < end {
            let got = values(&p.read(at, 1 << 20).await.expect("read").chunks);
            at = got.last().map(|v| v.0 + 1).expect("progress");
            all.extend(got);
        }
        for (i, base) in answered {
            let want = format!("value-{:08}", i * 2);
            let got = all.iter().find(|(o, _)| *o == base).map(|(_, v)| v.clone());
            assert_eq!(got, Some(want), "append {i} answered offset {base}");
        }
        store.close_all().await.expect("close");
    });
}

/// A fresh directory holding one 4 KiB file (the directory goes with the
/// first value).
fn one_block_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, vec![7u8; 4096]).expect("file");
    (dir, path)
}

/// A flush through the side ring syncs the file, and reports the kernel's
/// error: `EBADF` for a descriptor that is not open.
#[test]
fn side_ring_fdatasync_syncs_and_reports_errors() {
    let (_dir, path) = one_block_file();
    run(move || async move {
        let ring = sluice_shard::uring::side_ring().expect("a side ring");
        let file = glommio::io::DmaFile::open(&path).await.expect("open");
        sluice_shard::uring::fdatasync(&file)
            .await
            .expect("fdatasync through the side ring");
        // Above any descriptor the process may have open.
        let not_open = 1 << 30;
        let err = ring
            .fdatasync(not_open)
            .await
            .expect_err("no such descriptor");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
        file.close().await.expect("close");
    });
}

/// More flushes in flight on the side ring than its completion queue holds
/// (1,000 partitions of a shard can each have one): every one succeeds.
#[test]
fn side_ring_takes_more_flushes_than_its_queues_hold() {
    let (_dir, path) = one_block_file();
    run(move || async move {
        let file = std::rc::Rc::new(glommio::io::DmaFile::open(&path).await.expect("open"));
        let n = 4 * sluice_shard::uring::SIDE_RING_ENTRIES as usize;
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let file = file.clone();
                glommio::spawn_local(async move { sluice_shard::uring::fdatasync(&file).await })
            })
            .collect();
        // A lost completion shows as a wait for ever: bounded here.
        let all = glommio::timer::timeout(std::time::Duration::from_secs(60), async move {
            for (i, t) in tasks.into_iter().enumerate() {
                t.await.unwrap_or_else(|e| panic!("flush {i} of {n}: {e}"));
            }
            Ok(())
        });
        all.await.expect("every flush answered within 60 s");
    });
}
