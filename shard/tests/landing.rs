//! Landed batches (received straight into direct-I/O memory, see
//! `sluice_shard::landing`) are written without a user-space copy, with zero
//! gaps before them in the segment file; every reader of segment files (tail
//! and cold reads, recovery, timestamps, compaction, producer state) steps
//! over those gaps. Landed and copied appends mix freely.

mod common;

use common::{open, run};
use std::rc::Rc;

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchBuilder};
use sluice_shard::config::{CleanupPolicy, LogConfig};
use sluice_shard::landing;
use sluice_shard::partition::{now_ms, Durability, Partition};

/// A batch of `records` records from offset `first` whose values are
/// `value_bytes` long (so the batch can be large enough to land).
fn make_batch(first: u64, records: u64, value_bytes: usize, ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(ts);
    for i in first..first + records {
        let mut v = format!("value-{i:08}-").into_bytes();
        v.resize(value_bytes.max(v.len()), b'x');
        let k = format!("key-{}", i % 17);
        b.push(ts + (i - first) as i64, Some(k.as_bytes()), Some(&v), &[]);
    }
    b.finish()
}

/// Every (offset, value prefix) in `chunks`, in order.
fn values(chunks: &[Bytes]) -> Vec<(i64, String)> {
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut out = Vec::new();
    for item in batch::split(&joined) {
        let (range, _) = item.expect("whole batches, no gap bytes served");
        let bytes = &joined[range];
        // Compaction may leave empty batches (for producer state).
        batch::validate_stored(bytes).expect("served batches are valid");
        for r in batch::records(bytes).expect("uncompressed") {
            let r = r.expect("record");
            let v = r.value.expect("value");
            let text = String::from_utf8_lossy(&v[..15.min(v.len())]).into_owned();
            out.push((r.offset, text));
        }
    }
    out
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 * 1024,
        index_interval_bytes: 1024,
        ..LogConfig::default()
    }
}

/// Reads the whole log from `from` in small fetches; checks order and values.
async fn read_all(p: &Partition, from: i64, end: i64) -> usize {
    let mut offset = from;
    let mut seen = 0usize;
    while offset < end {
        let got = p.read(offset, 3000).await.expect("read");
        let vals = values(&got.chunks);
        assert!(!vals.is_empty(), "progress at {offset}");
        for (o, v) in vals {
            if o >= offset {
                assert_eq!(o, from + seen as i64, "offsets in order, none missing");
                assert_eq!(v, format!("value-{o:08}-"));
                seen += 1;
            }
        }
        offset = from + seen as i64;
    }
    seen
}

/// Appends rounds of concurrent appends (so one write carries several), each
/// round mixing landed batches of uneven sizes with small copied ones.
/// Returns (records, copied batches).
async fn fill(p: &Rc<Partition>, rounds: u64, durability: Durability) -> (u64, u64) {
    let mut next = 0u64;
    let mut copied = 0u64;
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for j in 0..6u64 {
            let small = (round + j) % 3 == 0;
            let (records, value) = match small {
                true => (1 + j % 2, 40),
                false => (8 + (round * 7 + j) % 9, 500 + (j as usize * 37)),
            };
            let bytes = make_batch(next, records, value, 1000 + next as i64);
            let bytes = match small {
                true => {
                    copied += 1;
                    Bytes::from(bytes)
                }
                false => landing::land(&bytes).expect("landed"),
            };
            let want = next as i64;
            next += records;
            let p = p.clone();
            tasks.push(glommio::spawn_local(async move {
                let at = p.append(bytes, durability).await.expect("append");
                assert_eq!(at.base_offset, want);
            }));
        }
        for t in tasks {
            t.await;
        }
    }
    (next, copied)
}

#[test]
fn landed_and_copied_appends_read_back_from_cache_disk_and_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        // No tail cache: every read goes to the segment files.
        let (store, p) = open(&path, config(), 0).await;
        let before = sluice_shard::stats::snapshot();
        let (end, copied) = fill(&p, 60, Durability::Written).await;
        let after = sluice_shard::stats::snapshot();
        assert_eq!(
            after.payload_copies - before.payload_copies,
            copied,
            "only the small batches were copied"
        );
        assert!(p.segment_count() > 1, "segments rolled");
        assert_eq!(read_all(&p, 0, end as i64).await, end as usize);
        assert_eq!(read_all(&p, 301, end as i64).await, end as usize - 301);
        // Timestamps: record i has timestamp 1000 + i.
        let found = p.offset_for_timestamp(1000 + 777).await.expect("ts");
        assert_eq!(found, Some((777, 1000 + 777)));

        // A clean restart, then a crash (no close): recovery keeps every
        // record and appends continue after them.
        store.close_all().await.expect("close");
        drop((store, p));
        let (store, p) = open(&path, config(), 0).await;
        assert_eq!(p.offsets().log_end, end as i64);
        assert_eq!(read_all(&p, 0, end as i64).await, end as usize);
        let more = landing::land(&make_batch(end, 9, 600, 1000 + end as i64)).expect("landed");
        let at = p.append(more, Durability::Flushed).await.expect("append");
        assert_eq!(at.base_offset, end as i64);
        drop((store, p));
        let (store, p) = open(&path, config(), 1 << 20).await;
        assert_eq!(p.offsets().log_end, end as i64 + 9);
        assert_eq!(read_all(&p, 0, end as i64 + 9).await, end as usize + 9);
        store.close_all().await.expect("close");
    });
}

#[test]
fn compaction_and_producer_state_read_over_gaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            cleanup_policy: CleanupPolicy::Compact,
            segment_bytes: 64 * 1024,
            ..config()
        };
        let (store, p) = open(&path, config.clone(), 1 << 20).await;
        let (end, _) = fill(&p, 30, Durability::Written).await;
        let outcome = store.clean_at(now_ms()).await.expect("clean");
        assert!(outcome.segments_rewritten > 0, "{outcome:?}");
        assert_eq!(p.offsets().log_end, end as i64, "offsets never change");
        // 17 keys: after cleaning, the newest record of each key of the
        // cleaned segments survives, in offset order, with its value.
        let mut offset = 0i64;
        let mut last = -1i64;
        let mut survivors = 0;
        while offset < end as i64 {
            let got = p.read(offset, 1 << 16).await.expect("read");
            for (o, v) in values(&got.chunks) {
                assert!(o > last, "offsets increase");
                assert_eq!(v, format!("value-{o:08}-"));
                last = o;
                survivors += 1;
            }
            // Step over batches the cleaner emptied, as consumers do.
            let joined: Vec<u8> = got.chunks.iter().flat_map(|c| c.to_vec()).collect();
            let next = batch::split(&joined)
                .filter_map(Result::ok)
                .map(|(_, h)| h.last_offset() + 1)
                .max()
                .expect("progress");
            assert!(next > offset, "progress at {offset}");
            offset = next;
        }
        assert!(survivors < end / 2, "the cleaner removed records");
        assert_eq!(last, end as i64 - 1, "the newest record survives");
        store.close_all().await.expect("close");
        drop((store, p));
        // Reopening rebuilds producer state and indexes by reading the
        // segments (gaps included).
        let (store, p) = open(&path, config, 1 << 20).await;
        assert_eq!(p.offsets().log_end, end as i64);
        store.close_all().await.expect("close");
    });
}

/// xorshift64*: deterministic from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_mixes_of_landed_and_copied_batches_survive_every_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("landing mix seed {seed}");
        let mut rng = Rng(seed);
        let mut next = 0u64;
        for _round in 0..12 {
            // No close: every reopen recovers the log as after a crash.
            let (_store, p) = open(&path, config(), 1 << 16).await;
            assert_eq!(p.offsets().log_end, next as i64);
            let mut tasks = Vec::new();
            for _ in 0..40 {
                let records = 1 + rng.next() % 80;
                let value = 20 + (rng.next() % 140) as usize;
                let bytes = make_batch(next, records, value, 1000 + next as i64);
                let bytes = match bytes.len() >= landing::LANDING_MIN_BYTES {
                    true => landing::land(&bytes).expect("landed"),
                    false => Bytes::from(bytes),
                };
                let want = next as i64;
                next += records;
                let p = p.clone();
                tasks.push(glommio::spawn_local(async move {
                    let at = p.append(bytes, Durability::Flushed).await.expect("append");
                    assert_eq!(at.base_offset, want);
                }));
                if rng.next().is_multiple_of(4) {
                    glommio::yield_if_needed().await;
                }
            }
            for t in tasks {
                t.await;
            }
            assert_eq!(read_all(&p, 0, next as i64).await, next as usize);
        }
        let (_store, p) = open(&path, config(), 0).await;
        assert_eq!(p.offsets().log_end, next as i64);
        assert_eq!(read_all(&p, 0, next as i64).await, next as usize);
    });
}

/// The tail cache's budget bounds the memory it keeps alive: a landed batch
/// holds its whole landing (zero padding and alignment slack included), so
/// that is what it is charged, not just the batch's bytes.
#[test]
fn the_tail_cache_charges_a_landed_batch_its_whole_landing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, config(), 1 << 20).await;
        let bytes = make_batch(0, 8, 520, 1000);
        let landed = landing::land(&bytes).expect("landed");
        let mem = landing::lookup(&landed).expect("a landing");
        // Padding to 512 bytes plus the alignment slack: always more.
        let allocated = mem.allocated_bytes();
        assert!(allocated >= bytes.len() + landing::LANDING_ALIGN - 1);
        drop(mem);
        p.append(landed, Durability::Written).await.expect("append");
        assert_eq!(store.cache().used_bytes(), allocated);
        // A copied batch is charged its bytes.
        let copied = Bytes::from(make_batch(8, 2, 10, 1001));
        let copied_len = copied.len();
        p.append(copied, Durability::Written).await.expect("append");
        assert_eq!(store.cache().used_bytes(), allocated + copied_len);
        store.close_all().await.expect("close");
    });
}

/// Each segment file, in order: its length and where its last batch ends.
fn segment_files(dir: &std::path::Path) -> Vec<(u64, u64)> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .expect("partition dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .map(|path| {
            let bytes = std::fs::read(path).expect("segment");
            let base: i64 = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
                .expect("named by base offset");
            let (found, _) = sluice_shard::index::scan(&bytes, 0, base);
            let end = found
                .last()
                .map_or(0, |b| b.position + b.header.total_bytes() as u64);
            (bytes.len() as u64, end)
        })
        .collect()
}

/// The active segment is allocated ahead of its data (so landed writes are
/// overwrites ext4 issues without blocking), and the space left over goes
/// back when the segment rolls and when recovery finds the file longer than
/// its data: zeros there are not a torn write, and no record is lost.
#[test]
fn segments_are_preallocated_ahead_and_cut_back_to_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    // Segments of 1 MiB: a fresh one is preallocated whole.
    let config = || LogConfig {
        segment_bytes: 1 << 20,
        ..config()
    };
    run(move || async move {
        let (store, p) = open(&path, config(), 0).await;
        let (end, _) = fill(&p, 120, Durability::Flushed).await;
        let files = segment_files(p.dir());
        assert!(files.len() > 2, "segments rolled: {files:?}");
        let (active, rolled) = files.split_last().expect("segments");
        for (len, data_end) in rolled {
            assert_eq!(len, data_end, "a rolled segment keeps no preallocation");
        }
        let (len, data_end) = *active;
        assert!(data_end > 0);
        assert!(
            len >= 1 << 20 && data_end < 1 << 20,
            "the active segment is allocated ahead: {len} bytes for {data_end} of data"
        );
        // A crash: the file stays longer than its data.
        drop((store, p));
        let (store, p) = open(&path, config(), 0).await;
        assert_eq!(p.offsets().log_end, end as i64);
        let (len, data_end) = *segment_files(p.dir()).last().expect("segments");
        assert_eq!(len, data_end, "recovery cut the zeros after the last batch");
        assert_eq!(read_all(&p, 0, end as i64).await, end as usize);
        // Appends go on, landed and preallocated again.
        let more = landing::land(&make_batch(end, 9, 600, 1000 + end as i64)).expect("landed");
        let at = p.append(more, Durability::Flushed).await.expect("append");
        assert_eq!(at.base_offset, end as i64);
        let (len, data_end) = *segment_files(p.dir()).last().expect("segments");
        assert!(len >= 1 << 20, "{len} bytes for {data_end} of data");
        assert_eq!(read_all(&p, 0, end as i64 + 9).await, end as usize + 9);
        store.close_all().await.expect("close");
    });
}

/// Extents of `path` as (logical start, length, unwritten), from FIEMAP;
/// `None` where the filesystem cannot say.
fn extents(path: &std::path::Path) -> Option<Vec<(u64, u64, bool)>> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const HEADER: usize = 32;
    const EXTENT: usize = 56;
    const COUNT: usize = 64;
    let file = std::fs::File::open(path).ok()?;
    // A u64 buffer keeps the structure aligned; its fields are read by offset.
    let mut buf = vec![0u64; (HEADER + COUNT * EXTENT) / 8];
    let bytes: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), buf.len() * 8) };
    bytes[8..16].copy_from_slice(&u64::MAX.to_ne_bytes()); // fm_length
    bytes[16..20].copy_from_slice(&FIEMAP_FLAG_SYNC.to_ne_bytes()); // fm_flags
    bytes[24..28].copy_from_slice(&(COUNT as u32).to_ne_bytes()); // fm_extent_count
                                                                  // SAFETY: the buffer is a fiemap header followed by COUNT extents.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) };
    let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let mapped = u32_at(20) as usize;
    Some(
        (0..mapped.min(COUNT))
            .map(|i| {
                let e = HEADER + i * EXTENT;
                let flags = u32_at(e + 40);
                (
                    u64_at(e),
                    u64_at(e + 16),
                    flags & FIEMAP_EXTENT_UNWRITTEN != 0,
                )
            })
            .collect(),
    )
}

/// A partition appending slowly gets zeros written ahead of its data in the
/// background, so its appends overwrite written blocks and each `fdatasync`
/// has no extent to convert. The zeros never land on data (every record
/// reads back after a crash), and recovery cuts them.
#[test]
fn zeros_are_filled_ahead_of_slow_appends_and_never_over_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let config = || LogConfig {
        segment_bytes: 8 << 20,
        ..config()
    };
    run(move || async move {
        let (store, p) = open(&path, config(), 0).await;
        let before = sluice_shard::stats::snapshot().zeros_filled;
        let mut end = 0u64;
        for round in 0..40u64 {
            let (records, value) = (5 + round % 7, 300 + (round as usize * 53) % 900);
            let batch = make_batch(end, records, value, 1000 + end as i64);
            let bytes = match round % 4 {
                0 => Bytes::from(batch),
                _ => landing::land(&batch).expect("landed"),
            };
            let at = p.append(bytes, Durability::Flushed).await.expect("append");
            assert_eq!(at.base_offset, end as i64);
            end += records;
            glommio::timer::sleep(std::time::Duration::from_millis(3)).await;
        }
        let filled = sluice_shard::stats::snapshot().zeros_filled - before;
        assert!(filled >= 1 << 20, "zeros written ahead: {filled} bytes");
        let log = std::fs::read_dir(p.dir())
            .expect("partition dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|x| x == "log"))
            .expect("a segment");
        let (len, data_end) = *segment_files(p.dir()).last().expect("segments");
        assert!(
            len > data_end + (1 << 20),
            "{len} bytes for {data_end} of data"
        );
        // What the fills wrote (from one buffer the shard's fills share)
        // is zeros, all of it.
        let bytes = std::fs::read(&log).expect("read the segment");
        let past = &bytes[data_end as usize..];
        assert!(
            past.iter().all(|&b| b == 0),
            "a non-zero byte past the data at {:?}",
            past.iter()
                .position(|&b| b != 0)
                .map(|i| data_end as usize + i)
        );
        if let Some(extents) = extents(&log) {
            // Written (not unwritten) blocks reach at least 1 MiB past the data.
            let written_to = extents
                .iter()
                .filter(|(_, _, unwritten)| !unwritten)
                .map(|(at, len, _)| at + len)
                .max()
                .unwrap_or(0);
            assert!(
                written_to >= data_end + (1 << 20),
                "written to {written_to}, data ends at {data_end}: {extents:?}"
            );
        }
        // A crash: everything reads back from the file, the zeros are cut.
        drop((store, p));
        let (store, p) = open(&path, config(), 0).await;
        assert_eq!(p.offsets().log_end, end as i64);
        let (len, data_end) = *segment_files(p.dir()).last().expect("segments");
        assert_eq!(len, data_end, "recovery cut the zeros after the last batch");
        assert_eq!(read_all(&p, 0, end as i64).await, end as usize);
        store.close_all().await.expect("close");
    });
}

/// Starts an append and returns once the writer has written it (the log end
/// moved), before its flush completes: the writer is then free for the next
/// append while whatever the write set off (a zero fill) is under way.
async fn append_written(p: &Rc<Partition>, batch: Bytes) -> glommio::task::JoinHandle<i64> {
    let before = p.offsets().log_end;
    let q = p.clone();
    let task = glommio::spawn_local(async move {
        q.append(batch, Durability::Flushed)
            .await
            .expect("append")
            .base_offset
    })
    .detach();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.offsets().log_end == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the append was not written"
        );
        glommio::timer::sleep(std::time::Duration::from_micros(20)).await;
    }
    task
}

/// Appends batches of `records` records (1,000-byte values) from `*end`,
/// each started once the one before is written ([`append_written`]); then
/// checks every append got the offset it should have.
async fn append_each_written(p: &Rc<Partition>, end: &mut u64, records: &[u64]) {
    let mut tasks = Vec::new();
    for &n in records {
        let batch = landing::land(&make_batch(*end, n, 1000, 1000 + *end as i64));
        tasks.push((*end, append_written(p, batch.expect("landed")).await));
        *end += n;
    }
    for (want, task) in tasks {
        assert_eq!(task.await, Some(want as i64), "offsets in order");
    }
}

/// A segment that rolls while a zero fill is under way in it is cut back to
/// its data all the same: no zeros land in it after the cut.
#[test]
fn a_segment_rolled_during_a_zero_fill_keeps_no_zeros() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    // Every append after the first rolls (segment.ms = 0), right after the
    // previous one started a fill (which must first allocate: 1 MiB is
    // preallocated, the fill reaches past it).
    let config = || LogConfig {
        segment_bytes: 8 << 20,
        segment_ms: 0,
        ..config()
    };
    run(move || async move {
        let (store, p) = open(&path, config(), 0).await;
        let before = sluice_shard::stats::snapshot().zeros_filled;
        let mut end = 0u64;
        append_each_written(&p, &mut end, &[40; 8]).await;
        store.close_all().await.expect("close");
        let files = segment_files(p.dir());
        assert!(files.len() >= 8, "segments rolled: {files:?}");
        let (_, rolled) = files.split_last().expect("segments");
        for &(len, data_end) in rolled {
            assert_eq!(len, data_end, "a rolled segment holds only its data");
        }
        let filled = sluice_shard::stats::snapshot().zeros_filled - before;
        assert!(filled > 0, "fills were under way");
        drop((store, p));
        let (store, p) = open(&path, config(), 0).await;
        assert_eq!(read_all(&p, 0, end as i64).await, end as usize);
        store.close_all().await.expect("close");
    });
}

/// An append that reaches into a zero fill under way waits for it: the
/// zeros never land over its records.
#[test]
fn an_append_reaching_a_zero_fill_under_way_is_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let config = || LogConfig {
        segment_bytes: 64 << 20,
        ..config()
    };
    run(move || async move {
        let (store, p) = open(&path, config(), 0).await;
        let mut end = 0u64;
        for _ in 0..4u64 {
            // A small append starts a fill 256 KiB past the data; the large
            // one right after it reaches into the fill's range.
            append_each_written(&p, &mut end, &[4, 900]).await;
        }
        store.close_all().await.expect("close");
        drop((store, p));
        // Read back from the file (a fresh partition has an empty cache).
        let (store, p) = open(&path, config(), 0).await;
        assert_eq!(p.offsets().log_end, end as i64);
        assert_eq!(read_all(&p, 0, end as i64).await, end as usize);
        store.close_all().await.expect("close");
    });
}

/// Appends that are not flushed (acks=0/1) get no zero fill: there is no
/// `fdatasync` for it to make cheaper.
#[test]
fn unflushed_appends_get_no_zero_fill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            segment_bytes: 8 << 20,
            ..config()
        };
        let (store, p) = open(&path, config, 0).await;
        let before = sluice_shard::stats::snapshot().zeros_filled;
        let mut end = 0u64;
        for _ in 0..20u64 {
            let batch = landing::land(&make_batch(end, 5, 900, 1000 + end as i64));
            let at = p
                .append(batch.expect("landed"), Durability::Written)
                .await
                .expect("append");
            assert_eq!(at.base_offset, end as i64);
            end += 5;
            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
        }
        assert_eq!(sluice_shard::stats::snapshot().zeros_filled, before);
        assert_eq!(read_all(&p, 0, end as i64).await, end as usize);
        store.close_all().await.expect("close");
    });
}

/// Opens partitions `t`/0..n under `dir` on the calling shard (after the
/// direct-I/O warm-up), with 8 MiB segments.
async fn open_many(
    dir: &std::path::Path,
    n: u32,
) -> (Rc<sluice_shard::store::ShardStore>, Vec<Rc<Partition>>) {
    let (store, first) = open(
        dir,
        LogConfig {
            segment_bytes: 8 << 20,
            ..config()
        },
        0,
    )
    .await;
    let mut parts = vec![first];
    for i in 1..n {
        let config = LogConfig {
            segment_bytes: 8 << 20,
            ..config()
        };
        parts.push(store.open_partition("t", i, config, 0).await.expect("open"));
    }
    (store, parts)
}

/// Appends one 30-record batch (1,000-byte values) to every partition at
/// once, flushed, and checks each got the offset it should have.
async fn append_to_all(parts: &[Rc<Partition>], ends: &mut [u64]) {
    let tasks: Vec<_> = parts
        .iter()
        .zip(ends.iter())
        .map(|(p, &end)| {
            let batch = landing::land(&make_batch(end, 30, 1000, 1000 + end as i64));
            let (p, batch) = (p.clone(), batch.expect("landed"));
            glommio::spawn_local(async move {
                p.append(batch, Durability::Flushed)
                    .await
                    .expect("append")
                    .base_offset
            })
        })
        .collect();
    for (task, end) in tasks.into_iter().zip(ends.iter_mut()) {
        assert_eq!(task.await, *end as i64, "offsets in order");
        *end += 30;
    }
}

/// Runs `rounds` of [`append_to_all`] (each followed by `pause`) and returns
/// how many `fdatasync`s and shared flushes the shard counted meanwhile.
async fn flushes_over(
    parts: &[Rc<Partition>],
    ends: &mut [u64],
    rounds: u64,
    pause: std::time::Duration,
) -> (u64, u64) {
    let before = sluice_shard::stats::snapshot();
    for _ in 0..rounds {
        append_to_all(parts, ends).await;
        if !pause.is_zero() {
            glommio::timer::sleep(pause).await;
        }
    }
    let after = sluice_shard::stats::snapshot();
    (
        after.fdatasyncs - before.fdatasyncs,
        after.shared_flushes - before.shared_flushes,
    )
}

/// Reopens the partitions of [`open_many`] under `dir` (as after a crash)
/// and checks each holds exactly the records appended (`ends`), all
/// readable.
async fn reopen_and_read_all(dir: &std::path::Path, ends: &[u64]) {
    let (store, parts) = open_many(dir, ends.len() as u32).await;
    for (p, &end) in parts.iter().zip(ends) {
        assert_eq!(p.offsets().log_end, end as i64);
        assert_eq!(read_all(p, 0, end as i64).await, end as usize);
    }
    store.close_all().await.expect("close");
}

/// Whether flushes of files in `dir` may be shared on this machine (ext4 or
/// XFS, real direct I/O).
fn shares_flushes(dir: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let probe = dir.join("probe");
    let file = std::fs::File::create(&probe).expect("probe file");
    let shared = sluice_shard::flush::shared_flush_device_of(file.as_raw_fd()).is_some();
    let _ = std::fs::remove_file(probe);
    shared
}

/// Flushed appends written into new blocks (no zeros filled ahead) carry
/// their own `fdatasync`, linked behind the write in the side ring: one per
/// written group, none shared. Every append is answered in order, and after
/// a crash every record reads back.
#[test]
fn flushed_appends_into_new_blocks_carry_linked_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        sluice_shard::partition::set_zero_fill_rate(0);
        let (store, parts) = open_many(&path, 4).await;
        let mut ends = vec![0u64; parts.len()];
        let before = sluice_shard::stats::snapshot();
        let rounds = 10;
        let (syncs, shared) = flushes_over(&parts, &mut ends, rounds, Default::default()).await;
        let linked = sluice_shard::stats::snapshot().linked_flushes - before.linked_flushes;
        let groups = rounds * parts.len() as u64;
        assert_eq!(shared, 0, "nothing lay over stable blocks");
        assert_eq!(linked, groups, "each flushed write carried its own flush");
        assert_eq!(syncs, linked, "no other fdatasync");
        drop((store, parts));
        reopen_and_read_all(&path, &ends).await;
    });
}

/// Flushed appends to several partitions of one shard, written over zeros
/// filled (and flushed) earlier, share device flushes: appends written
/// together make one round, one `fdatasync`. After a crash every record
/// reads back.
#[test]
fn flushed_appends_over_stable_blocks_share_device_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    if !shares_flushes(&path) {
        eprintln!(
            "skipped: {} is not ext4 or XFS with direct I/O",
            path.display()
        );
        return;
    }
    run(move || async move {
        sluice_shard::partition::set_zero_fill_rate(1 << 30);
        let (store, parts) = open_many(&path, 4).await;
        let mut ends = vec![0u64; parts.len()];
        // Past the first fill's gap: the appends then overwrite filled zeros.
        let pause = std::time::Duration::from_millis(2);
        flushes_over(&parts, &mut ends, 16, pause).await;
        let rounds = 20;
        let (syncs, shared) = flushes_over(&parts, &mut ends, rounds, Default::default()).await;
        let groups = rounds * parts.len() as u64;
        assert_eq!(
            shared, groups,
            "every flushed write over filled blocks is shared"
        );
        // One round per batch of appends (20 here), with some slack.
        assert!(
            syncs <= groups / 3,
            "{syncs} fdatasyncs for {groups} flushed writes"
        );
        drop((store, parts));
        reopen_and_read_all(&path, &ends).await;
    });
}

/// With an anchor prepared, every shared round syncs the anchor (an empty
/// file whose inode-table block holds only the anchor files), never a
/// segment, and what was acknowledged reads back after a crash.
#[test]
fn shared_flushes_sync_the_anchor_file() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    if !shares_flushes(&path) {
        eprintln!(
            "skipped: {} is not ext4 or XFS with direct I/O",
            path.display()
        );
        return;
    }
    run(move || async move {
        sluice_shard::partition::set_zero_fill_rate(1 << 30);
        let (store, parts) = open_many(&path, 4).await;
        let anchors = path.join("flush-anchors");
        let made = sluice_shard::flush::prepare_anchor(&anchors)
            .await
            .expect("anchor");
        assert!(made, "an inode block to itself among the anchor files");
        let windows: std::collections::BTreeSet<u64> = std::fs::read_dir(&anchors)
            .expect("anchor dir")
            .map(|e| (e.expect("entry").metadata().expect("stat").ino() - 1) / 16)
            .collect();
        let files = std::fs::read_dir(&anchors).expect("anchor dir").count();
        assert_eq!((files, windows.len()), (16, 1), "one whole block of inodes");
        let mut ends = vec![0u64; parts.len()];
        let pause = std::time::Duration::from_millis(2);
        flushes_over(&parts, &mut ends, 16, pause).await;
        let before = sluice_shard::stats::snapshot();
        let rounds = 20;
        let (syncs, shared) = flushes_over(&parts, &mut ends, rounds, Default::default()).await;
        let anchored = sluice_shard::stats::snapshot().anchored_flushes - before.anchored_flushes;
        assert_eq!(shared, rounds * parts.len() as u64, "all shared");
        assert!(syncs > 0);
        assert_eq!(anchored, syncs, "every round synced the anchor");
        drop((store, parts));
        reopen_and_read_all(&path, &ends).await;
    });
}

/// A write into blocks not yet written and flushed (no zero fill ahead) has
/// metadata to write: each takes its own file's `fdatasync`. So does every
/// write with `shared_flush` off.
#[test]
fn writes_past_stable_blocks_take_their_own_fdatasync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, parts) = open_many(&path, 4).await;
        let mut ends = vec![0u64; parts.len()];
        for (fill_rate, shared_flush) in [(0, true), (1 << 30, false)] {
            sluice_shard::partition::set_zero_fill_rate(fill_rate);
            sluice_shard::flush::set_shared_flush(shared_flush);
            let rounds = 20;
            let pause = std::time::Duration::from_millis(2);
            let (syncs, shared) = flushes_over(&parts, &mut ends, rounds, pause).await;
            let groups = rounds * parts.len() as u64;
            let what = format!("fill rate {fill_rate}, shared_flush {shared_flush}");
            assert_eq!(shared, 0, "{what}");
            assert_eq!(syncs, groups, "{what}");
        }
        for (p, &end) in parts.iter().zip(&ends) {
            assert_eq!(read_all(p, 0, end as i64).await, end as usize);
        }
        store.close_all().await.expect("close");
    });
}

/// Zeros filled ahead with a gap before them (so the next appends do not wait
/// for the fill) do not make that gap stable: appends into it are still
/// first writes of their blocks and take their own `fdatasync`.
#[test]
fn appends_into_the_gap_before_a_fill_take_their_own_fdatasync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        sluice_shard::partition::set_zero_fill_rate(1 << 30);
        let (store, parts) = open_many(&path, 1).await;
        let p = &parts[0];
        let before = sluice_shard::stats::snapshot();
        // 20 x 5 KB: inside the 256 KiB before the first fill.
        let mut end = 0u64;
        for _ in 0..20 {
            let batch = landing::land(&make_batch(end, 5, 1000, 1000 + end as i64));
            let at = p.append(batch.expect("landed"), Durability::Flushed).await;
            assert_eq!(at.expect("append").base_offset, end as i64);
            end += 5;
            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
        }
        let after = sluice_shard::stats::snapshot();
        assert!(after.zeros_filled > before.zeros_filled, "a fill ran");
        assert_eq!(after.shared_flushes, before.shared_flushes);
        assert_eq!(after.fdatasyncs - before.fdatasyncs, 20);
        assert_eq!(read_all(p, 0, end as i64).await, end as usize);
        store.close_all().await.expect("close");
    });
}
