//! Durability under `kill -9`: producers write with `acks=all` while the
//! broker process is killed at a random moment, many times. After each
//! restart every acknowledged record must be there, at the offset it was
//! acknowledged with, byte for byte, and the log must read cleanly from the
//! first offset to the last with no gap. Producers use both the native
//! protocol and the Kafka protocol (whose large batches are written from
//! where they were received, with zero gaps in the segment files).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{decode_values, Broker};
use sluice_protocol::batch::BatchBuilder;
use sluice_protocol::client::Client;
use sluice_protocol::native::{Acks, FetchPartition, FetchRequest, ProducePartition};
use sluice_protocol::ErrorCode;

const PARTITIONS: u32 = 4;
const ROUNDS: u32 = 20;
const PRODUCERS: u32 = 3;
/// Producers through the Kafka listener, beside the native ones.
const KAFKA_PRODUCERS: u32 = 2;

/// (partition, base offset, values) of one acknowledged batch.
type Acked = (u32, i64, Vec<Vec<u8>>);

/// xorshift64*: deterministic from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn produce_until_error(
    addr: String,
    round: u32,
    thread: u32,
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut client) = Client::connect(&addr) else {
        return;
    };
    let _ = client.set_read_timeout(Some(Duration::from_secs(10)));
    let mut rng = Rng(u64::from(round * 1000 + thread + 1) * 0x9E37_79B9);
    for seq in 0..100_000u64 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let partition = (rng.next() % u64::from(PARTITIONS)) as u32;
        let count = 1 + rng.next() % 20;
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        let mut values = Vec::new();
        for i in 0..count {
            let v = format!("r{round}-t{thread}-s{seq}-i{i}-{:0>60}", rng.next()).into_bytes();
            builder.push(1_700_000_000_000, None, Some(&v), &[]);
            values.push(v);
        }
        let part = ProducePartition {
            topic: "crash".into(),
            partition,
            records: builder.finish().into(),
        };
        match client.produce(Acks::All, 5000, vec![part]) {
            Ok(r) if r.len() == 1 && r[0].error == ErrorCode::NONE => {
                if let Ok(mut a) = acked.lock() {
                    a.push((partition, r[0].base_offset, values));
                }
            }
            _ => return,
        }
    }
}

/// As `produce_until_error`, through the Kafka listener (Produce v9), with
/// batches from 150 bytes to 12 KiB: large requests are read apart and their
/// batches written from where they were received (see `produce_frame`).
fn produce_kafka_until_error(
    port: u16,
    round: u32,
    thread: u32,
    acked: Arc<Mutex<Vec<Acked>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut rng = Rng(u64::from(round * 1000 + thread + 101) * 0x9E37_79B9);
    for seq in 0..100_000i32 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let partition = (rng.next() % u64::from(PARTITIONS)) as u32;
        let count = 1 + rng.next() % 80;
        let mut builder = BatchBuilder::new(1_700_000_000_000);
        let mut values = Vec::new();
        for i in 0..count {
            let v = format!("k{round}-t{thread}-s{seq}-i{i}-{:0>120}", rng.next()).into_bytes();
            builder.push(1_700_000_000_000, None, Some(&v), &[]);
            values.push(v);
        }
        let batch = bytes::Bytes::from(builder.finish());
        let answer =
            common::kafka_produce(&mut stream, seq, "crash", -1, &[(partition as i32, batch)]);
        match answer.as_deref() {
            Some([(_, 0, base)]) => {
                if let Ok(mut a) = acked.lock() {
                    a.push((partition, *base, values));
                }
            }
            _ => return,
        }
    }
}

/// Every record of a partition, checking offsets run 0, 1, 2, ... with no gap.
fn read_partition(b: &Broker, partition: u32) -> Vec<Vec<u8>> {
    let mut client = b.client();
    let mut out: Vec<Vec<u8>> = Vec::new();
    loop {
        let offset = out.len() as i64;
        let r = client
            .fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 4 << 20,
                partitions: vec![FetchPartition {
                    topic: "crash".into(),
                    partition,
                    offset,
                    max_bytes: 1 << 20,
                }],
            })
            .expect("fetch after restart");
        assert_eq!(
            r[0].error,
            ErrorCode::NONE,
            "partition {partition} at {offset}"
        );
        let vals = decode_values(&r[0].records, offset);
        if vals.is_empty() {
            assert_eq!(
                r[0].high_watermark, offset,
                "log ends where the records end"
            );
            return out;
        }
        for (o, v) in vals {
            assert_eq!(o, out.len() as i64, "offsets continue without a gap");
            out.push(v);
        }
    }
}

#[test]
fn kill_dash_nine_during_acks_all_produce_loses_no_acknowledged_record() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("crash", PARTITIONS);
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads: Vec<_> = (0..PRODUCERS)
            .map(|t| {
                let (addr, acked, stop) = (b.addr(), acked.clone(), stop.clone());
                std::thread::spawn(move || produce_until_error(addr, round, t, acked, stop))
            })
            .collect();
        for t in 0..KAFKA_PRODUCERS {
            let (port, acked, stop) = (b.kafka_port, acked.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                produce_kafka_until_error(port, round, t, acked, stop)
            }));
        }
        std::thread::sleep(Duration::from_millis(50 + rng.next() % 400));
        b.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("producer thread");
        }
        b.spawn();
        let logs: Vec<Vec<Vec<u8>>> = (0..PARTITIONS).map(|p| read_partition(&b, p)).collect();
        let acked = acked.lock().expect("acked");
        for (partition, base, values) in acked.iter() {
            for (i, v) in values.iter().enumerate() {
                let at = *base as usize + i;
                let log = &logs[*partition as usize];
                if log.get(at) != Some(v) {
                    // Everything a post-mortem needs: the log's extent, the
                    // broker's own account of recovery, and the files.
                    let broker_log = std::fs::read_to_string(b.data_dir.with_extension("log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = broker_log.lines().rev().take(40).collect();
                    let kept = dir.keep();
                    panic!(
                        "seed {seed} round {round}: acknowledged record {partition}/{at} lost or changed \
                         (the batch acknowledged at {base} has {} records; the partition now holds {}). \
                         Data kept in {}. Broker log, newest first:\n{}",
                        values.len(),
                        log.len(),
                        kept.display(),
                        tail.join("\n")
                    );
                }
            }
        }
        eprintln!(
            "round {round}: {} acknowledged batches all present",
            acked.len()
        );
    }
    let acked = acked.lock().expect("acked");
    assert!(acked.len() > 50, "the producers made progress");
    let through_kafka = acked.iter().filter(|a| a.2[0].starts_with(b"k")).count();
    assert!(
        through_kafka > 20,
        "the Kafka producers made progress: {through_kafka}"
    );
}
