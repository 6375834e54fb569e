//! Idempotent producers (KIP-98), as Apache Kafka 4.x brokers enforce them:
//! duplicates of the last five batches answer their original offsets and are
//! not written again, sequence gaps and stale epochs are refused, and the
//! state survives a clean close and a crash.

mod common;

use common::run;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchBuilder, BatchHeader};
use sluice_protocol::ErrorCode;
use sluice_shard::config::LogConfig;
use sluice_shard::partition::{Durability, Partition};
use sluice_shard::store::ShardStore;

/// A batch of `records` records from producer `pid`, epoch `epoch`, whose
/// first sequence is `seq`.
fn idem(pid: i64, epoch: i16, seq: i32, records: i32) -> Bytes {
    let ts = partition_now();
    let mut b = BatchBuilder::new(ts);
    for i in 0..records {
        let v = format!("p{pid}-e{epoch}-s{}", seq + i);
        b.push(ts, Some(b"k"), Some(v.as_bytes()), &[]);
    }
    b.set_producer(pid, epoch, seq);
    Bytes::from(b.finish())
}

fn partition_now() -> i64 {
    sluice_shard::partition::now_ms()
}

fn segments_of(config_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes: config_bytes,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

async fn open(dir: &Path, config: LogConfig) -> (Rc<ShardStore>, Rc<Partition>) {
    common::open(dir, config, 1 << 20).await
}

async fn append(p: &Partition, bytes: Bytes) -> Result<i64, ErrorCode> {
    p.append(bytes, Durability::Written)
        .await
        .map(|a| a.base_offset)
        .map_err(|e| e.error_code())
}

/// Appends five 3-record batches of producer 7 epoch 0; returns their offsets.
async fn five_batches(p: &Partition) -> Vec<i64> {
    let mut offsets = Vec::new();
    for i in 0..5 {
        offsets.push(append(p, idem(7, 0, i * 3, 3)).await.expect("append"));
    }
    offsets
}

#[test]
fn kip98_duplicates_of_the_last_five_batches_answer_their_original_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, LogConfig::default()).await;
        append(&p, idem(-1, -1, -1, 2)).await.expect("plain batch");
        let offsets = five_batches(&p).await;
        assert_eq!(offsets, vec![2, 5, 8, 11, 14]);
        let end = p.offsets().log_end;
        let batches = p.appended_batches();
        for (i, want) in offsets.iter().enumerate() {
            let again = append(&p, idem(7, 0, i as i32 * 3, 3)).await;
            assert_eq!(again, Ok(*want), "retry of batch {i}");
        }
        assert_eq!(p.offsets().log_end, end, "duplicates are not written");
        assert_eq!(p.appended_batches(), batches);
        // The sixth batch pushes the first out of the remembered five.
        assert_eq!(append(&p, idem(7, 0, 15, 3)).await, Ok(17));
        let stale = append(&p, idem(7, 0, 0, 3)).await;
        assert_eq!(stale, Err(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(append(&p, idem(7, 0, 3, 3)).await, Ok(5));
        store.close_all().await.expect("close");
    });
}

#[test]
fn kip98_out_of_order_sequences_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, LogConfig::default()).await;
        // An unknown producer may start anywhere (Kafka 2.5+, KIP-360).
        assert_eq!(append(&p, idem(9, 0, 40, 2)).await, Ok(0));
        let gap = append(&p, idem(9, 0, 43, 1)).await;
        assert_eq!(gap, Err(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(p.offsets().log_end, 2);
        // Two batches in one append: the second is out of order, so neither
        // is written, and the producer's sequence is unchanged.
        let mut both = idem(9, 0, 42, 1).to_vec();
        both.extend_from_slice(&idem(9, 0, 50, 1));
        let refused = append(&p, Bytes::from(both)).await;
        assert_eq!(refused, Err(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(p.offsets().log_end, 2);
        assert_eq!(append(&p, idem(9, 0, 42, 1)).await, Ok(2));
        // Appends queued together are checked in order against each other.
        let queued = futures_lite::future::zip(
            futures_lite::future::zip(append(&p, idem(9, 0, 43, 2)), append(&p, idem(9, 0, 43, 2))),
            append(&p, idem(9, 0, 45, 1)),
        );
        let ((a, b), c) = queued.await;
        assert_eq!((a, b, c), (Ok(3), Ok(3), Ok(5)), "retry in the same group");
        assert_eq!(p.offsets().log_end, 6);
        store.close_all().await.expect("close");
    });
}

#[test]
fn kip98_an_older_epoch_is_fenced_and_a_newer_one_starts_at_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, LogConfig::default()).await;
        assert_eq!(append(&p, idem(5, 1, 0, 1)).await, Ok(0));
        let zombie = append(&p, idem(5, 0, 1, 1)).await;
        assert_eq!(zombie, Err(ErrorCode::INVALID_PRODUCER_EPOCH));
        let not_zero = append(&p, idem(5, 2, 7, 1)).await;
        assert_eq!(not_zero, Err(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER));
        assert_eq!(append(&p, idem(5, 2, 0, 1)).await, Ok(1));
        let old = append(&p, idem(5, 1, 1, 1)).await;
        assert_eq!(old, Err(ErrorCode::INVALID_PRODUCER_EPOCH));
        assert_eq!(p.offsets().log_end, 2);
        store.close_all().await.expect("close");
    });
}

#[test]
fn transactional_batches_are_refused_as_invalid_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (store, p) = open(&path, LogConfig::default()).await;
        let mut bytes = idem(3, 0, 0, 1).to_vec();
        let mut header = BatchHeader::parse(&bytes).expect("header");
        header.attributes |= 1 << 4;
        header.write_to(&mut bytes);
        header.crc = batch::compute_crc(&bytes);
        header.write_to(&mut bytes);
        batch::validate(&bytes).expect("a valid batch");
        let refused = append(&p, Bytes::from(bytes)).await;
        assert_eq!(refused, Err(ErrorCode::INVALID_RECORD));
        assert_eq!(p.offsets().log_end, 0);
        store.close_all().await.expect("close");
    });
}

/// Batches written before the restart: about three 16 KiB segments.
const BATCHES: i32 = 400;

/// Writes batches of two producers across several segments, restarts
/// (cleanly or not), and checks the state came back.
fn state_survives_restart(clean: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = segments_of(16 * 1024);
        let (store, p) = open(&path, config.clone()).await;
        let mut last = 0;
        for i in 0..BATCHES {
            last = append(&p, idem(11, 0, i * 3, 3)).await.expect("append");
        }
        assert!(p.segment_count() > 2, "snapshots are written at rolls");
        append(&p, idem(12, 4, 0, 1)).await.expect("append");
        let end = p.offsets().log_end;
        if clean {
            store.close_all().await.expect("close");
        }
        drop((store, p));
        let (store, p) = open(&path, config).await;
        assert_eq!(p.offsets().log_end, end);
        assert_eq!(p.producer_count(), 2);
        assert_eq!(
            append(&p, idem(11, 0, (BATCHES - 1) * 3, 3)).await,
            Ok(last)
        );
        assert_eq!(append(&p, idem(12, 4, 0, 1)).await, Ok(end - 1));
        let gap = append(&p, idem(11, 0, BATCHES * 3 + 1, 1)).await;
        assert_eq!(gap, Err(ErrorCode::OUT_OF_ORDER_SEQUENCE_NUMBER));
        let zombie = append(&p, idem(12, 3, 1, 1)).await;
        assert_eq!(zombie, Err(ErrorCode::INVALID_PRODUCER_EPOCH));
        assert_eq!(p.offsets().log_end, end);
        assert_eq!(append(&p, idem(11, 0, BATCHES * 3, 1)).await, Ok(end));
        store.close_all().await.expect("close");
    });
}

#[test]
fn kip98_producer_state_survives_a_clean_restart() {
    state_survives_restart(true);
}

#[test]
fn kip98_producer_state_survives_a_crash() {
    state_survives_restart(false);
}

#[test]
fn producer_state_expires_after_producer_id_expiration_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let config = LogConfig::default()
            .with_overrides([("producer.id.expiration.ms", "60000")])
            .expect("valid");
        let (store, p) = open(&path, config).await;
        append(&p, idem(21, 0, 0, 1)).await.expect("append");
        assert_eq!(p.expire_producers(partition_now()), 0);
        assert_eq!(p.expire_producers(partition_now() + 61_000), 1);
        // Forgotten: any sequence is accepted again.
        assert_eq!(append(&p, idem(21, 0, 77, 1)).await, Ok(1));
        store.close_all().await.expect("close");
    });
}
