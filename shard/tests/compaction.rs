//! Log compaction (`cleanup.policy=compact`): the newest record of each key
//! survives at its original offset, tombstones go after
//! `delete.retention.ms`, keyless records are refused, compressed batches are
//! cleaned, and a crash in the middle of a cleaning loses nothing.

mod common;

use common::run;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchBuilder, BatchHeader};
use sluice_protocol::ErrorCode;
use sluice_shard::config::{CleanupPolicy, LogConfig};
use sluice_shard::partition::{now_ms, Durability, Partition};
use sluice_shard::store::{partition_dir, ShardStore};

fn compacted() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        index_interval_bytes: 256,
        cleanup_policy: CleanupPolicy::Compact,
        ..LogConfig::default()
    }
}

async fn open(dir: &Path, config: LogConfig) -> (Rc<ShardStore>, Rc<Partition>) {
    common::open(dir, config, 1 << 20).await
}

type Rec = (String, Option<String>);

fn keyed(ts: i64, records: &[Rec]) -> Vec<u8> {
    let mut b = BatchBuilder::new(ts);
    for (k, v) in records {
        b.push(ts, Some(k.as_bytes()), v.as_deref().map(str::as_bytes), &[]);
    }
    b.finish()
}

/// The same batch with its records section gzip-compressed.
fn gzipped(plain: &[u8]) -> Bytes {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain[batch::BATCH_HEADER_BYTES..])
        .expect("gzip");
    let mut out = plain[..batch::BATCH_HEADER_BYTES].to_vec();
    out.extend_from_slice(&gz.finish().expect("gzip"));
    let mut header = BatchHeader::parse(&out).expect("header");
    header.attributes |= 1;
    header.batch_length = (out.len() - batch::BATCH_OVERHEAD_BYTES) as i32;
    header.write_to(&mut out);
    header.crc = batch::compute_crc(&out);
    header.write_to(&mut out);
    batch::validate(&out).expect("a valid gzip batch");
    Bytes::from(out)
}

/// Every record of the log, (offset, key, value), read from `from`.
async fn read_all(p: &Partition, from: i64) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut offset = from;
    let end = p.offsets().log_end;
    while offset < end {
        let got = p.read(offset, 4096).await.expect("read");
        let (records, next) = common::records_from(&got.chunks, offset);
        out.extend(records);
        assert!(next > offset, "a read at {offset} makes progress");
        offset = next;
    }
    out
}

/// Appends 600 two-record batches over 20 keys; returns the log as written.
async fn fill(p: &Partition, ts: i64) -> Vec<(i64, String, Option<String>)> {
    let mut written = Vec::new();
    for i in 0..600i64 {
        let recs: Vec<Rec> = (0..2)
            .map(|j| {
                (
                    format!("key-{}", (i * 2 + j) % 20),
                    Some(format!("v{}", i * 2 + j)),
                )
            })
            .collect();
        let bytes = Bytes::from(keyed(ts, &recs));
        let at = p.append(bytes, Durability::Written).await.expect("append");
        for (j, (k, v)) in recs.into_iter().enumerate() {
            written.push((at.base_offset + j as i64, k, v));
        }
    }
    written
}

/// What compaction of everything below `clean_end` must leave.
fn expected(
    written: &[(i64, String, Option<String>)],
    clean_end: i64,
) -> Vec<(i64, String, Option<String>)> {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for (o, k, _) in written.iter().filter(|(o, _, _)| *o < clean_end) {
        newest.insert(k, *o);
    }
    let survives = |(o, k, _): &&(i64, String, Option<String>)| {
        *o >= clean_end || newest.get(k.as_str()) == Some(o)
    };
    written.iter().filter(survives).cloned().collect()
}

/// The first offset of the active segment: everything below was cleanable.
fn active_base(dir: &Path) -> i64 {
    *common::segment_bases(dir).last().expect("a segment")
}

#[test]
fn compaction_keeps_the_newest_value_of_each_key_at_its_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, compacted()).await;
        let written = fill(&p, now_ms() - 1000).await;
        let before = p.size_bytes();
        let end = p.offsets().log_end;
        let outcome = store.clean().await.expect("clean");
        assert!(outcome.segments_rewritten > 1, "{outcome:?}");
        assert!(p.size_bytes() < before);
        assert_eq!(p.offsets().log_end, end, "offsets never change");
        let want = expected(&written, active_base(&path));
        assert!(want.len() < written.len() / 2);
        assert_eq!(read_all(&p, 0).await, want);
        // A read at a removed offset starts at the next survivor.
        let removed = written.iter().find(|w| !want.contains(w)).expect("removed");
        let got = read_all(&p, removed.0).await;
        assert!(got.first().is_some_and(|g| g.0 > removed.0));
        // Appends continue at the log end.
        let more = Bytes::from(keyed(now_ms(), &[("key-0".into(), Some("last".into()))]));
        let at = p.append(more, Durability::Written).await.expect("append");
        assert_eq!(at.base_offset, end);
        let mut want = want;
        want.push((end, "key-0".into(), Some("last".into())));

        // Restart cleanly, then after a crash (no close): same records.
        store.close_all().await.expect("close");
        drop((store, p));
        let (store, p) = open(&path, compacted()).await;
        assert_eq!(read_all(&p, 0).await, want);
        drop((store, p));
        let (store, p) = open(&path, compacted()).await;
        assert_eq!(read_all(&p, 0).await, want);
        assert_eq!(p.offsets().log_end, end + 1);
        store.close_all().await.expect("close");
    });
}

#[test]
fn compaction_removes_tombstones_after_delete_retention_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig {
            delete_retention_ms: 60_000,
            min_cleanable_dirty_ratio_ppm: 0,
            ..compacted()
        };
        let (store, p) = open(&path, config).await;
        let ts = now_ms();
        let recs = [("gone".to_string(), Some("x".to_string()))];
        p.append(Bytes::from(keyed(ts, &recs)), Durability::Written)
            .await
            .expect("append");
        let tombstone = [("gone".to_string(), None)];
        p.append(Bytes::from(keyed(ts, &tombstone)), Durability::Written)
            .await
            .expect("append");
        fill(&p, ts).await;
        store.clean_at(ts + 1000).await.expect("clean");
        let log = read_all(&p, 0).await;
        let gone: Vec<_> = log.iter().filter(|r| r.1 == "gone").collect();
        assert_eq!(gone, vec![&(1, "gone".to_string(), None)], "tombstone kept");
        store.clean_at(ts + 61_000).await.expect("clean");
        let log = read_all(&p, 0).await;
        assert!(log.iter().all(|r| r.1 != "gone"), "tombstone removed");
        store.close_all().await.expect("close");
    });
}

#[test]
fn compacted_topics_refuse_records_without_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, compacted()).await;
        let mut b = BatchBuilder::new(now_ms());
        b.push(now_ms(), Some(b"k"), Some(b"v"), &[]);
        b.push(now_ms(), None, Some(b"v"), &[]);
        let plain = b.finish();
        for bytes in [Bytes::from(plain.clone()), gzipped(&plain)] {
            let err = p
                .append(bytes, Durability::Written)
                .await
                .expect_err("refused");
            assert_eq!(err.error_code(), ErrorCode::INVALID_RECORD, "{err}");
            assert!(
                err.to_string().contains("offset delta 1 has no key"),
                "{err}"
            );
        }
        assert_eq!(p.offsets().log_end, 0);
        store.close_all().await.expect("close");
    });
}

#[test]
fn compaction_cleans_gzip_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, compacted()).await;
        let ts = now_ms() - 1000;
        let recs: Vec<Rec> = (0..10)
            .map(|i| (format!("key-{}", i % 4), Some(format!("z{i}"))))
            .collect();
        p.append(gzipped(&keyed(ts, &recs)), Durability::Written)
            .await
            .expect("gzip append");
        let mut written: Vec<_> = recs
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| (i as i64, k, v))
            .collect();
        let base = p.offsets().log_end;
        for (o, k, v) in fill(&p, ts).await {
            written.push((o, k, v));
        }
        assert_eq!(written[10].0, base);
        let outcome = store.clean().await.expect("clean");
        assert!(outcome.segments_rewritten > 0);
        assert_eq!(
            read_all(&p, 0).await,
            expected(&written, active_base(&path))
        );
        store.close_all().await.expect("close");
    });
}

#[test]
fn a_crash_during_cleaning_leaves_a_consistent_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, compacted()).await;
        let written = fill(&p, now_ms() - 1000).await;
        store.close_all().await.expect("close");
        drop((store, p));
        // A cleaning interrupted before its rename: a partial `.cleaned` file.
        let pdir = partition_dir(&path, "t", 0);
        let stray = pdir.join(format!("{:020}.cleaned", 0));
        std::fs::write(&stray, b"half a cleaned segment").expect("write");
        let (store, p) = open(&path, compacted()).await;
        assert!(!stray.exists(), "recovery removes the stray file");
        assert_eq!(read_all(&p, 0).await, written);
        // Interrupted after the rename, before the indexes were rebuilt.
        store.clean().await.expect("clean");
        let want = expected(&written, active_base(&path));
        drop((store, p));
        for entry in std::fs::read_dir(&pdir).expect("dir") {
            let entry = entry.expect("entry");
            if entry.file_name().to_string_lossy().ends_with("index") {
                std::fs::remove_file(entry.path()).expect("remove index");
            }
        }
        let (store, p) = open(&path, compacted()).await;
        assert_eq!(read_all(&p, 0).await, want);
        store.close_all().await.expect("close");
    });
}

#[test]
fn the_cleaner_checkpoint_is_kept_on_disk_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let checkpoint =
            partition_dir(&path, "t", 0).join(sluice_shard::compaction::CHECKPOINT_FILE);
        let (store, p) = open(&path, compacted()).await;
        fill(&p, now_ms() - 1000).await;
        assert!(!checkpoint.exists(), "no cleaning yet");
        let first = store.clean().await.expect("clean");
        assert!(first.segments_rewritten > 1, "{first:?}");
        // Everything below the active segment was cleaned.
        let saved = std::fs::read_to_string(&checkpoint).expect("checkpoint written");
        assert_eq!(saved.trim().parse::<i64>().ok(), Some(active_base(&path)));
        assert_eq!(p.dirty_bytes(), 0);
        store.close_all().await.expect("close");
        drop((store, p));

        // After a restart the clean prefix is still known.
        let (store, p) = open(&path, compacted()).await;
        assert_eq!(p.dirty_bytes(), 0, "nothing to clean after a restart");
        store.close_all().await.expect("close");
        drop((store, p));

        // A checkpoint beyond the log (a log cut short) is ignored.
        std::fs::write(&checkpoint, "999999999\n").expect("write");
        let (store, p) = open(&path, compacted()).await;
        assert!(p.dirty_bytes() > 0, "everything counts as dirty");
        store.close_all().await.expect("close");
    });
}
