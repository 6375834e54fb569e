//! Landings from the registered arena (`sluice_shard::arena`): appends are
//! written from registered memory (`WRITEV_FIXED`), read back byte for byte
//! from the cache, the segment files and after a restart, and the arena's
//! pages come back when the landings go. A full arena hands out heap
//! landings, which write the same way without registration.
//!
//! Its own test binary: the arena is installed once per process.

mod common;

use common::{open, run};
use std::sync::Mutex;

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchBuilder};
use sluice_shard::arena;
use sluice_shard::config::LogConfig;
use sluice_shard::landing;
use sluice_shard::partition::{Durability, Partition};

/// Arena size for this process: two chunks.
const ARENA_BYTES: usize = 2 * arena::CHUNK_BYTES;

/// The tests count the arena's pages in use: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn make_batch(first: u64, records: u64, value_bytes: usize) -> Vec<u8> {
    let ts = 1000 + first as i64;
    let mut b = BatchBuilder::new(ts);
    for i in first..first + records {
        let mut v = format!("value-{i:08}-").into_bytes();
        v.resize(value_bytes.max(v.len()), (i % 251) as u8);
        b.push(ts + (i - first) as i64, None, Some(&v), &[]);
    }
    b.finish()
}

/// Reads the log from 0 to `end`; checks every offset and value byte.
async fn check_all(p: &Partition, end: u64, value_bytes: usize) {
    let mut offset = 0u64;
    while offset < end {
        let got = p.read(offset as i64, 1 << 20).await.expect("read");
        let joined: Vec<u8> = got.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert!(!joined.is_empty(), "progress at {offset}");
        for item in batch::split(&joined) {
            let (range, _) = item.expect("whole batches");
            for r in batch::records(&joined[range]).expect("uncompressed") {
                let r = r.expect("record");
                if (r.offset as u64) < offset {
                    continue;
                }
                assert_eq!(r.offset as u64, offset, "in order, none missing");
                let mut want = format!("value-{offset:08}-").into_bytes();
                want.resize(value_bytes.max(want.len()), (offset % 251) as u8);
                assert_eq!(r.value, Some(&want[..]), "value of {offset}");
                offset += 1;
            }
        }
    }
}

/// Runs `test` on a shard executor with the process's arena installed and
/// a fresh directory, one such test at a time; afterwards every landing's
/// pages must be back in the arena.
fn with_arena<F, Fut>(test: F)
where
    F: FnOnce(std::path::PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = arena::install(ARENA_BYTES).expect("arena");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || test(path));
    assert_eq!(a.used_pages(), 0, "every landing's pages came back");
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 20,
        index_interval_bytes: 4096,
        ..LogConfig::default()
    }
}

#[test]
fn appends_from_the_arena_are_written_from_registered_memory_and_read_back() {
    with_arena(|path| async move {
        // A ring registers what landings were given of a chunk, again as
        // that grows by a quarter: fill the whole arena once, as a broker's
        // traffic soon does, so every write below is from registered memory.
        let mut fill = Vec::new();
        loop {
            let l = landing::land(&vec![0u8; 1 << 20]).expect("landed");
            if !landing::lookup(&l).is_some_and(|m| m.in_arena()) {
                break;
            }
            fill.push(l);
        }
        assert!(fill.len() >= 30, "{} landings of 1 MiB", fill.len());
        drop(fill);
        let (store, p) = open(&path, config(), 1 << 20).await;
        let before = sluice_shard::stats::snapshot();
        let mut end = 0u64;
        for round in 0..40u64 {
            let records = 20 + round % 7;
            let bytes = landing::land(&make_batch(end, records, 900)).expect("landed");
            let mem = landing::lookup(&bytes).expect("a landing");
            assert!(mem.in_arena(), "from the arena while it has room");
            let durability = match round % 2 {
                0 => Durability::Flushed,
                _ => Durability::Written,
            };
            let at = p.append(bytes, durability).await.expect("append");
            assert_eq!(at.base_offset, end as i64);
            end += records;
        }
        let after = sluice_shard::stats::snapshot();
        let registered = after.registered_writes - before.registered_writes;
        let writes = after.write_latency.count() - before.write_latency.count();
        assert!(writes >= 40, "one write per append: {writes}");
        match sluice_shard::uring::writev_fixed_supported() {
            true => assert_eq!(registered, writes, "every write from registered memory"),
            // An older kernel: the same writes, from unregistered memory.
            false => assert_eq!(registered, 0),
        }
        assert_eq!(after.payload_copies, before.payload_copies, "no copies");
        check_all(&p, end, 900).await;
        store.close_all().await.expect("close");
        drop((store, p));
        // From the segment files, after a restart (no tail cache).
        let (store, p) = open(&path, config(), 0).await;
        assert_eq!(p.offsets().log_end, end as i64);
        check_all(&p, end, 900).await;
        store.close_all().await.expect("close");
    });
}

#[test]
fn a_full_arena_hands_out_heap_landings_that_write_the_same() {
    with_arena(|path| async move {
        // Batches of about 1 MiB, held until all are landed: more than the
        // arena's 32 MiB.
        let value = 1000;
        let records = 1000u64;
        let mut held: Vec<Bytes> = Vec::new();
        let mut end = 0u64;
        for _ in 0..40 {
            held.push(landing::land(&make_batch(end, records, value)).expect("landed"));
            end += records;
        }
        let in_arena = held
            .iter()
            .filter(|b| landing::lookup(b).is_some_and(|m| m.in_arena()))
            .count();
        assert!(
            in_arena > 0 && in_arena < held.len(),
            "{in_arena} of 40 in the arena"
        );
        let (store, p) = open(&path, config(), 0).await;
        for (i, bytes) in held.drain(..).enumerate() {
            let at = p.append(bytes, Durability::Flushed).await.expect("append");
            assert_eq!(at.base_offset, i as i64 * records as i64);
        }
        check_all(&p, end, value).await;
        store.close_all().await.expect("close");
    });
}
