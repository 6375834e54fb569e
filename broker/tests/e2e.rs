//! End-to-end tests through real sockets against a real `sluice` process.

mod common;

use std::time::{Duration, Instant};

use common::{batch_of, decode_values, scrape, Broker};
use sluice_protocol::client::Client;
use sluice_protocol::native::{
    Acks, CreateTopic, FetchPartition, FetchRequest, LeaveGroupRequest, LeavingMember,
    ListOffsetsPartition, ProducePartition,
};
use sluice_protocol::ErrorCode;

fn fetch_all(b: &Broker, topic: &str, partition: u32, from: i64) -> Vec<(i64, Vec<u8>)> {
    common::fetch_all(&mut b.client(), topic, partition, from, 64 * 1024, "")
}

#[test]
fn produce_fetch_list_offsets_across_shards_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("events", 6);
    let mut c = b.client();
    // One request touching every partition: the shards split and gather it.
    let parts = (0..6)
        .map(|p| ProducePartition {
            topic: "events".into(),
            partition: p,
            records: batch_of(&[format!("p{p}-a").as_bytes(), format!("p{p}-b").as_bytes()]),
        })
        .collect();
    let r = c.produce(Acks::All, 5000, parts).expect("produce");
    assert_eq!(r.len(), 6);
    for (p, pr) in r.iter().enumerate() {
        assert_eq!(
            (pr.partition, pr.error, pr.base_offset),
            (p as u32, ErrorCode::NONE, 0)
        );
    }
    for acks in [Acks::Leader, Acks::All] {
        let r = c
            .produce(
                acks,
                5000,
                vec![ProducePartition {
                    topic: "events".into(),
                    partition: 3,
                    records: batch_of(&[b"more"]),
                }],
            )
            .expect("produce");
        assert_eq!(r[0].error, ErrorCode::NONE);
    }
    // acks=0 gets no response; the next request's response still matches.
    let zero = ProducePartition {
        topic: "events".into(),
        partition: 4,
        records: batch_of(&[b"z"]),
    };
    c.send(&sluice_protocol::native::Request::Produce(
        sluice_protocol::native::ProduceRequest {
            acks: Acks::None,
            timeout_ms: 1000,
            partitions: vec![zero],
        },
    ))
    .expect("send acks=0");
    let meta = c.metadata(vec![]).expect("metadata after acks=0");
    let names: Vec<&str> = meta.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["__consumer_offsets", "events"],
        "every topic, internal ones included"
    );
    assert_eq!(meta.shards.len(), 2);
    let events = &meta.topics[1];
    let owners: Vec<u32> = events.partitions.iter().map(|p| p.shard).collect();
    assert!(
        owners.contains(&0) && owners.contains(&1),
        "both shards own partitions"
    );

    let vals = fetch_all(&b, "events", 3, 0);
    let want: Vec<(i64, Vec<u8>)> = vec![
        (0, b"p3-a".to_vec()),
        (1, b"p3-b".to_vec()),
        (2, b"more".to_vec()),
        (3, b"more".to_vec()),
    ];
    assert_eq!(vals, want);
    // Fetch from the middle of a batch: the batch comes back, the client skips.
    assert_eq!(fetch_all(&b, "events", 3, 1)[0], (1, b"p3-b".to_vec()));
    assert_eq!(
        fetch_all(&b, "events", 4, 0).len(),
        3,
        "the acks=0 record is there"
    );

    let offs = c
        .list_offsets(vec![
            ListOffsetsPartition {
                topic: "events".into(),
                partition: 3,
                timestamp: -2,
            },
            ListOffsetsPartition {
                topic: "events".into(),
                partition: 3,
                timestamp: -1,
            },
            ListOffsetsPartition {
                topic: "events".into(),
                partition: 3,
                timestamp: 0,
            },
            ListOffsetsPartition {
                topic: "events".into(),
                partition: 3,
                timestamp: i64::MAX - 1,
            },
            ListOffsetsPartition {
                topic: "nope".into(),
                partition: 0,
                timestamp: -1,
            },
        ])
        .expect("list offsets");
    let got: Vec<(ErrorCode, i64)> = offs.iter().map(|o| (o.error, o.offset)).collect();
    assert_eq!(
        got,
        vec![
            (ErrorCode::NONE, 0),
            (ErrorCode::NONE, 4),
            (ErrorCode::NONE, 0),
            (ErrorCode::NONE, -1),
            (ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, -1)
        ]
    );

    // A clean stop (SIGTERM) exits 0; the restart (with another shard count:
    // ownership moves, directories do not) finds everything.
    let status = b.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    b.shards = 3;
    b.spawn();
    assert_eq!(fetch_all(&b, "events", 3, 0), want);
    for p in 0..6 {
        let vals = fetch_all(&b, "events", p, 0);
        assert_eq!(vals[0].1, format!("p{p}-a").into_bytes());
    }
    let r = b
        .client()
        .produce(
            Acks::All,
            1000,
            vec![ProducePartition {
                topic: "events".into(),
                partition: 3,
                records: batch_of(&[b"after restart"]),
            }],
        )
        .expect("produce");
    assert_eq!(r[0].base_offset, 4);
}

#[test]
fn errors_for_unknown_topics_partitions_and_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("t", 2);
    let mut c = b.client();
    let r = c
        .produce(
            Acks::All,
            1000,
            vec![
                ProducePartition {
                    topic: "missing".into(),
                    partition: 0,
                    records: batch_of(&[b"x"]),
                },
                ProducePartition {
                    topic: "t".into(),
                    partition: 9,
                    records: batch_of(&[b"x"]),
                },
                ProducePartition {
                    topic: "t".into(),
                    partition: 1,
                    records: batch_of(&[b"ok"]),
                },
            ],
        )
        .expect("produce");
    let codes: Vec<ErrorCode> = r.iter().map(|p| p.error).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            ErrorCode::NONE
        ]
    );
    let f = c
        .fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1000,
            partitions: vec![FetchPartition {
                topic: "t".into(),
                partition: 1,
                offset: 5,
                max_bytes: 100,
            }],
        })
        .expect("fetch");
    assert_eq!(f[0].error, ErrorCode::OFFSET_OUT_OF_RANGE);
    assert_eq!((f[0].log_start_offset, f[0].high_watermark), (0, 1));

    let created = c
        .create_topics(vec![
            CreateTopic {
                name: "t".into(),
                partitions: 1,
                configs: vec![],
            },
            CreateTopic {
                name: "bad name".into(),
                partitions: 1,
                configs: vec![],
            },
            CreateTopic {
                name: "zero".into(),
                partitions: 0,
                configs: vec![],
            },
            CreateTopic {
                name: "cfg".into(),
                partitions: 1,
                configs: vec![("retention.ms".into(), "soon".into())],
            },
        ])
        .expect("create");
    let codes: Vec<ErrorCode> = created.iter().map(|t| t.error).collect();
    assert_eq!(
        codes,
        vec![
            ErrorCode::TOPIC_ALREADY_EXISTS,
            ErrorCode::INVALID_TOPIC_EXCEPTION,
            ErrorCode::INVALID_PARTITIONS,
            ErrorCode::INVALID_CONFIG
        ]
    );
    let deleted = c
        .delete_topics(vec!["t".into(), "missing".into()])
        .expect("delete");
    assert_eq!(deleted[0].error, ErrorCode::NONE);
    assert_eq!(deleted[1].error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    let meta = c.metadata(vec!["t".into()]).expect("metadata");
    assert_eq!(meta.topics[0].error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
    assert!(
        !b.data_dir.join("topics").join("t").exists(),
        "files removed"
    );
}

#[test]
fn long_poll_fetch_is_woken_by_an_append_on_another_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("lp", 4);
    let addr = b.addr();
    let waiter = std::thread::spawn(move || {
        let mut c = sluice_protocol::client::Client::connect(&addr).expect("connect");
        let started = Instant::now();
        let parts = (0..4)
            .map(|p| FetchPartition {
                topic: "lp".into(),
                partition: p,
                offset: 0,
                max_bytes: 1 << 20,
            })
            .collect();
        let r = c
            .fetch(FetchRequest {
                max_wait_ms: 20_000,
                min_bytes: 1,
                max_bytes: 1 << 20,
                partitions: parts,
            })
            .expect("fetch");
        (started.elapsed(), r)
    });
    std::thread::sleep(Duration::from_millis(300));
    let r = b
        .client()
        .produce(
            Acks::Leader,
            1000,
            vec![ProducePartition {
                topic: "lp".into(),
                partition: 2,
                records: batch_of(&[b"wake up"]),
            }],
        )
        .expect("produce");
    assert_eq!(r[0].error, ErrorCode::NONE);
    let (waited, resp) = waiter.join().expect("waiter");
    assert!(
        waited < Duration::from_secs(15),
        "woken by the append, not by max_wait ({waited:?})"
    );
    let p2 = resp.iter().find(|p| p.partition == 2).expect("partition 2");
    assert_eq!(
        decode_values(&p2.records, 0),
        vec![(0, b"wake up".to_vec())]
    );

    // With nothing to read, the fetch waits max_wait and answers empty.
    let started = Instant::now();
    let r = b
        .client()
        .fetch(FetchRequest {
            max_wait_ms: 300,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partitions: vec![FetchPartition {
                topic: "lp".into(),
                partition: 0,
                offset: 0,
                max_bytes: 100,
            }],
        })
        .expect("fetch");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(r[0].records.is_empty() && r[0].error == ErrorCode::NONE);
}

/// Appends `records` to `topic`/`partition` with acks=all.
fn produce_to(c: &mut Client, topic: &str, partition: u32, records: bytes::Bytes) {
    let r = c
        .produce(
            Acks::All,
            1000,
            vec![ProducePartition {
                topic: topic.into(),
                partition,
                records,
            }],
        )
        .expect("produce");
    assert_eq!(r[0].error, ErrorCode::NONE);
}

/// One fetch without waiting of partitions 0.. of `topic`, partition `p`
/// from `offsets[p]`, each asking for `partition_max` bytes.
fn fetch_from(
    c: &mut Client,
    topic: &str,
    offsets: &[i64],
    max_bytes: usize,
    partition_max: u32,
) -> Vec<sluice_protocol::native::FetchPartitionResponse> {
    c.fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: max_bytes as u32,
        partitions: (0..offsets.len() as u32)
            .map(|p| FetchPartition {
                topic: topic.into(),
                partition: p,
                offset: offsets[p as usize],
                max_bytes: partition_max,
            })
            .collect(),
    })
    .expect("fetch")
}

/// Each record of `records` as (offset, length, first byte): what a test
/// compares, short enough to print when it fails.
fn summary(records: &[bytes::Bytes]) -> Vec<(i64, usize, u8)> {
    decode_values(records, 0)
        .into_iter()
        .map(|(o, v)| (o, v.len(), v.first().copied().unwrap_or(0)))
        .collect()
}

#[test]
fn fetch_max_bytes_returns_the_first_batch_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 1);
    b.create_topic("big", 2);
    let mut c = b.client();
    let large = vec![b'x'; 10_000];
    for p in 0..2 {
        produce_to(&mut c, "big", p, batch_of(&[&large]));
    }
    let r = fetch_from(&mut c, "big", &[0, 0], 100, 100);
    assert_eq!(
        decode_values(&r[0].records, 0)[0].1.len(),
        10_000,
        "first batch whole"
    );
    assert!(
        r[1].records.is_empty(),
        "response max_bytes stops the second partition"
    );
}

/// Eight partitions of one 10,000-byte-value batch each, fetched with a
/// `max_bytes` that holds three of them: the response has the first three
/// partitions' batches (Kafka fills a fetch partition after partition), and
/// the broker read those three and no other (a batch read only to be cut
/// from the response would be read again by the next fetch). Fetching on
/// from the offsets each answer gave reads every record exactly once.
#[test]
fn a_fetch_of_many_partitions_reads_only_the_batches_it_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("wide", 8);
    let metrics_port = b.kafka_port + 1;
    let mut c = b.client();
    let mut lens = [0usize; 8];
    for round in 0..2u8 {
        for p in 0..8u32 {
            let records = batch_of(&[&vec![b'a' + round; 10_000 + p as usize]]);
            lens[p as usize] = records.len();
            produce_to(&mut c, "wide", p, records);
        }
    }
    let max_bytes = lens[0] + lens[1] + lens[2] + lens[3] / 2;
    let read_before = scrape(metrics_port, "sluice_bytes_read_total");
    let mut r = fetch_from(&mut c, "wide", &[0; 8], max_bytes, 1 << 20);
    let read = scrape(metrics_port, "sluice_bytes_read_total") - read_before;
    let sent: Vec<usize> = r
        .iter()
        .map(|p| p.records.iter().map(|c| c.len()).sum())
        .collect();
    for (p, &n) in sent.iter().enumerate() {
        assert_eq!(r[p].error, ErrorCode::NONE);
        match p < 3 {
            true => assert_eq!(n, lens[p], "partition {p}: its first batch"),
            false => assert_eq!(n, 0, "partition {p}: past max_bytes"),
        }
    }
    assert_eq!(
        read,
        sent.iter().sum::<usize>() as u64,
        "the broker read what it sent and nothing more"
    );
    // Consume the rest, each fetch from where the last one left off.
    let mut offsets = [0i64; 8];
    let mut seen: Vec<Vec<(i64, Vec<u8>)>> = vec![Vec::new(); 8];
    for _ in 0..20 {
        for (p, part) in r.iter().enumerate() {
            let values = decode_values(&part.records, offsets[p]);
            if let Some(last) = values.last() {
                offsets[p] = last.0 + 1;
            }
            seen[p].extend(values);
        }
        if offsets.iter().all(|&o| o == 2) {
            break;
        }
        r = fetch_from(&mut c, "wide", &offsets, max_bytes, 1 << 20);
    }
    for (p, values) in seen.iter().enumerate() {
        let expected: Vec<(i64, Vec<u8>)> = (0..2u8)
            .map(|round| (i64::from(round), vec![b'a' + round; 10_000 + p]))
            .collect();
        assert_eq!(
            values, &expected,
            "partition {p}: every record once, in order"
        );
    }
}

/// A fetch whose first partition is empty and whose second holds a batch
/// larger than both its own limit and the fetch's: the batch comes back
/// whole, as the first non-empty partition's (else the consumer could
/// never get past it).
#[test]
fn a_large_batch_behind_an_empty_partition_is_returned_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("gap", 3);
    let mut c = b.client();
    let large = vec![b'z'; 50_000];
    for p in [1u32, 2] {
        produce_to(&mut c, "gap", p, batch_of(&[&large]));
    }
    let r = fetch_from(&mut c, "gap", &[0, 0, 0], 1000, 1000);
    assert!(r[0].records.is_empty());
    assert_eq!(decode_values(&r[1].records, 0), vec![(0, large.clone())]);
    assert!(
        r[2].records.is_empty(),
        "the fetch is full after partition 1"
    );
}

/// A fetch fills in the request's order, as Kafka's does: a partition whose
/// batch is larger than its share of the fetch is not passed over for the
/// smaller batches of the partitions after it. (Before, a client that sent
/// its partitions in the same order each time got partition 1 only once
/// every later partition had run dry.)
#[test]
fn a_large_batch_is_not_passed_over_for_later_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("order", 8);
    let mut c = b.client();
    let large = vec![b'L'; 20_000];
    produce_to(&mut c, "order", 1, batch_of(&[&large]));
    for p in 2..8u32 {
        for i in 0..3u8 {
            produce_to(&mut c, "order", p, batch_of(&[&vec![b'a' + i; 1_000]]));
        }
    }
    let max_bytes = 24_000;
    let r = fetch_from(&mut c, "order", &[0; 8], max_bytes, 1 << 20);
    assert!(r[0].records.is_empty());
    assert_eq!(
        summary(&r[1].records),
        vec![(0, large.len(), b'L')],
        "partition 1 is the first with data: its batch whole"
    );
    let sizes: Vec<usize> = r
        .iter()
        .map(|p| p.records.iter().map(|c| c.len()).sum())
        .collect();
    assert!(sizes[2] > 0, "partition 2 fills what is left: {sizes:?}");
    assert!(sizes.iter().sum::<usize>() <= max_bytes, "{sizes:?}");
    // Whatever a later partition sent starts at its first record.
    for part in r.iter().skip(2) {
        for (i, (offset, value)) in decode_values(&part.records, 0).into_iter().enumerate() {
            assert_eq!(offset, i as i64);
            assert_eq!(value, vec![b'a' + i as u8; 1_000]);
        }
    }
}

/// Past the first partition with data, a batch larger than its partition's
/// own limit (`partition_max_bytes`) is not sent, even when the fetch has
/// room for it, as Kafka does; it comes back whole once its partition is
/// the first with data.
#[test]
fn a_batch_past_its_partition_limit_waits_until_it_is_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("limit", 2);
    let mut c = b.client();
    let small = vec![b's'; 1_000];
    let large = vec![b'L'; 5_000];
    produce_to(&mut c, "limit", 0, batch_of(&[&small]));
    produce_to(&mut c, "limit", 1, batch_of(&[&large]));
    let r = fetch_from(&mut c, "limit", &[0, 0], 1 << 20, 4_000);
    assert_eq!(summary(&r[0].records), vec![(0, small.len(), b's')]);
    assert!(
        r[1].records.is_empty(),
        "5,000 bytes are past partition 1's limit of 4,000"
    );
    let r = fetch_from(&mut c, "limit", &[1, 0], 1 << 20, 4_000);
    assert!(r[0].records.is_empty());
    assert_eq!(
        summary(&r[1].records),
        vec![(0, large.len(), b'L')],
        "the first partition with data: whole"
    );
}

#[test]
fn cli_produces_and_consumes_every_line_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    let out = b.run_cli(&["topic", "create", "lines", "--partitions", "4"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut input = Vec::new();
    for i in 0..20_000 {
        input.extend_from_slice(format!("key{}:value-{i:06}\n", i % 37).as_bytes());
    }
    let out = b.run_cli(
        &["produce", "lines", "--acks", "all", "--key-separator", ":"],
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in 0..4u32 {
        let out = b.run_cli(
            &[
                "consume",
                "lines",
                "--partition",
                &p.to_string(),
                "--from",
                "earliest",
                "--timeout-ms",
                "2000",
            ],
            b"",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<&str> = std::str::from_utf8(&out.stdout)
            .expect("utf8")
            .lines()
            .collect();
        // Exactly the lines whose key hashes to p, in the order they were written.
        let want: Vec<String> = (0..20_000)
            .filter(|i| {
                let key = format!("key{}", i % 37);
                sluice_protocol::partitioner::partition_for_key(key.as_bytes(), 4) == p
            })
            .map(|i| format!("value-{i:06}"))
            .collect();
        assert_eq!(got, want, "partition {p}");
    }
    let out = b.run_cli(
        &["consume", "lines", "--count", "20000", "--from", "earliest"],
        b"",
    );
    assert!(out.status.success());
    assert_eq!(out.stdout.iter().filter(|c| **c == b'\n').count(), 20_000);
    let out = b.run_cli(&["topic", "describe", "lines"], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("partition 3"),
        "{text}"
    );
    let out = b.run_cli(&["topic", "list"], b"");
    assert!(String::from_utf8_lossy(&out.stdout).contains("lines"));
    let out = b.run_cli(&["topic", "delete", "lines"], b"");
    assert!(out.status.success());
    let out = b.run_cli(&["consume", "lines", "--count", "1"], b"");
    assert!(!out.status.success(), "consuming a deleted topic fails");
}

#[test]
fn startup_errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 1);
    // Same address: refused.
    let out = std::process::Command::new(common::SLUICE)
        .args(["serve", "--native-addr", &b.addr(), "--data-dir"])
        .arg(dir.path().join("other"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot listen"),
        "{out:?}"
    );
    // Same data directory: refused.
    let out = std::process::Command::new(common::SLUICE)
        .args(["serve", "--native-addr", "127.0.0.1:0", "--data-dir"])
        .arg(&b.data_dir)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{out:?}"
    );
    // A data directory that is a file: refused.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let out = std::process::Command::new(common::SLUICE)
        .args(["serve", "--data-dir"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data directory"),
        "{out:?}"
    );
}

/// Runs `sluice serve` on a fresh data dir with `prepare` applied to the
/// command, expecting it to refuse to start; returns its stderr.
fn refused_start(prepare: impl FnOnce(&mut std::process::Command)) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(common::SLUICE);
    cmd.args([
        "serve",
        "--shards",
        "2",
        "--native-addr",
        "127.0.0.1:29911",
        "--data-dir",
    ])
    .arg(dir.path().join("data"));
    prepare(&mut cmd);
    let out = cmd.output().expect("run");
    assert!(!out.status.success(), "must not start: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn startup_refuses_too_little_locked_memory() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: dropping CAP_IPC_LOCK needs root");
        return;
    }
    // Without CAP_IPC_LOCK and with a 64 KiB hard limit nothing can raise it.
    let err = refused_start(|cmd| {
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        *cmd = std::process::Command::new("prlimit");
        cmd.args([
            "--memlock=65536:65536",
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
            "--",
        ])
        .arg(program)
        .args(args);
    });
    assert!(
        err.contains("locked-memory limit is too low") && err.contains("ulimit -l"),
        "{err}"
    );
}

/// A seccomp filter that makes io_uring_setup fail with EPERM, as Docker's
/// default profile does.
#[cfg(target_arch = "x86_64")]
fn deny_io_uring_setup() -> std::io::Result<()> {
    const SYS_IO_URING_SETUP: u32 = 425;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let ld_arch = libc::sock_filter {
        code: 0x20,
        jt: 0,
        jf: 0,
        k: 4,
    };
    let jeq_arch = libc::sock_filter {
        code: 0x15,
        jt: 1,
        jf: 0,
        k: AUDIT_ARCH_X86_64,
    };
    let allow = libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x7fff_0000,
    };
    let ld_nr = libc::sock_filter {
        code: 0x20,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let jeq_nr = libc::sock_filter {
        code: 0x15,
        jt: 0,
        jf: 1,
        k: SYS_IO_URING_SETUP,
    };
    let eperm = libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k: 0x0005_0000 | libc::EPERM as u32,
    };
    let mut filter = [ld_arch, jeq_arch, allow, ld_nr, jeq_nr, eperm, allow];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls in the child between fork and exec; `prog`
    // outlives them.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const _,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[test]
fn startup_refuses_when_seccomp_blocks_io_uring() {
    use std::os::unix::process::CommandExt;
    let err = refused_start(|cmd| {
        // SAFETY: the closure only makes async-signal-safe prctl calls.
        unsafe {
            cmd.pre_exec(deny_io_uring_setup);
        }
    });
    assert!(
        err.contains("io_uring is unavailable") && err.contains("seccomp"),
        "{err}"
    );
}

#[test]
fn metrics_count_bytes_and_prove_one_payload_copy_per_produced_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic("m", 4);
    let metrics_port = b.kafka_port + 1;
    let copies_before = scrape(metrics_port, "sluice_payload_copies_total");
    let mut c = b.client();
    for i in 0..40u32 {
        let part = ProducePartition {
            topic: "m".into(),
            partition: i % 4,
            records: batch_of(&[format!("record {i}").as_bytes()]),
        };
        assert_eq!(
            c.produce(Acks::All, 1000, vec![part]).expect("produce")[0].error,
            ErrorCode::NONE
        );
    }
    for p in 0..4 {
        assert_eq!(fetch_all(&b, "m", p, 0).len(), 10);
    }
    let copies = scrape(metrics_port, "sluice_payload_copies_total") - copies_before;
    assert_eq!(
        copies, 40,
        "one copy per produced batch, none on the fetch path"
    );
    assert!(scrape(metrics_port, "sluice_bytes_appended_total") > 0);
    assert!(scrape(metrics_port, "sluice_bytes_read_total") > 0);
    assert!(scrape(metrics_port, "sluice_partitions") >= 4);
    // Each acknowledged acks=all produce here was written on its own and
    // flushed: every write and every fdatasync is in the latency histograms.
    assert!(scrape(metrics_port, "sluice_write_latency_seconds_count") >= 40);
    // Every answered Produce and Fetch was timed, from its last byte in to
    // its response's last byte out.
    assert_eq!(
        scrape(metrics_port, "sluice_produce_latency_seconds_count"),
        40
    );
    assert!(scrape(metrics_port, "sluice_fetch_latency_seconds_count") >= 4);
    let fdatasyncs = scrape(metrics_port, "sluice_fdatasyncs_total");
    assert!(fdatasyncs >= 1);
    assert_eq!(
        scrape(metrics_port, "sluice_flush_latency_seconds_count"),
        fdatasyncs
    );
    // Zeros are written ahead of these slow partitions in the background
    // (the embedded default zero_fill_bytes_per_s); wait a bounded while.
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(metrics_port, "sluice_zeros_filled_bytes_total") < 1 << 20 {
        assert!(
            Instant::now() < deadline,
            "no zeros filled ahead of the appends"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Voluntary context switches so far of each thread of process `pid`, by
/// thread id (threads come and go: io_uring's workers exit when idle).
fn voluntary_switches(pid: u32) -> std::collections::HashMap<String, u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let status = std::fs::read_to_string(t.path().join("status")).ok()?;
            let n = status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse::<u64>()
                .ok()?;
            Some((t.file_name().to_string_lossy().into_owned(), n))
        })
        .collect()
}

/// One member joins `group`, syncs and leaves: the group is left Empty,
/// with no offsets.
fn join_and_leave(c: &mut Client, group: &str) {
    let joined = common::join_alone(c, group, 10_000);
    let left = c
        .leave_group(LeaveGroupRequest {
            group_id: group.into(),
            members: vec![LeavingMember {
                member_id: joined.member_id,
                group_instance_id: None,
            }],
        })
        .expect("leave");
    assert_eq!(left.error, ErrorCode::NONE);
}

/// An idle broker sleeps: its shards await the stop signal, the listeners'
/// shutdown and the group coordinator's next deadline instead of polling
/// them. Before, each shard woke about fifty times a second with nothing to
/// do (1.1% of a core, and the fixed cost under every light load); now only
/// the log cleaner's once a second is left. That holds after a consumer
/// group has come and gone too: the Empty group it leaves has only its
/// removal, minutes away, for the coordinator to wake for.
#[test]
fn an_idle_broker_does_not_wake_on_a_timer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Broker::start_with(
        &dir.path().join("data"),
        2,
        "group_initial_rebalance_delay_ms = 0\n",
    );
    b.create_topic("quiet", 4);
    let mut c = b.client();
    for p in 0..4u32 {
        produce_to(&mut c, "quiet", p, batch_of(&[b"one record"]));
    }
    join_and_leave(&mut c, "passing");
    drop(c);
    let pid = b.child.as_ref().expect("running").id();
    // Past start-up and the first coordinator ticks.
    std::thread::sleep(Duration::from_millis(1500));
    let before = voluntary_switches(pid);
    let window = Duration::from_secs(4);
    std::thread::sleep(window);
    let woke: u64 = voluntary_switches(pid)
        .iter()
        .map(|(tid, n)| n.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    // The cleaner: once a second on each of 2 shards, with room to spare;
    // polling every 50 to 100 ms was over 300 in this window, and the
    // coordinator ticking for the Empty group alone another 40.
    assert!(woke <= 30, "{woke} wake-ups in {window:?} of idleness");
    // SIGTERM now reaches the shards through their eventfds: the broker
    // still stops cleanly, and what it acknowledged is there after a start.
    assert!(b.terminate().success());
    let b = Broker::start_with(
        &dir.path().join("data"),
        2,
        "group_initial_rebalance_delay_ms = 0\n",
    );
    for p in 0..4u32 {
        assert_eq!(
            fetch_all(&b, "quiet", p, 0),
            vec![(0, b"one record".to_vec())]
        );
    }
}
