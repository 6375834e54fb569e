//! Malformed input on the native listener, through real sockets against a
//! real `sluice` process.
//!
//! The guarantee (STYLE.md, "bugs stop the process; the environment is
//! handled"): a bad frame or a bad batch is the environment. It gets a clear
//! error (INVALID_REQUEST for a frame whose length is sane, a closed
//! connection for an absurd length, CORRUPT_MESSAGE for a partition whose
//! batch does not validate), nothing of it reaches a log, and every other
//! connection goes on being served. A well-behaved client ("A") keeps one
//! connection open throughout and checks, between every abuse, that its
//! records are all there with the exact bytes at the exact offsets and that
//! its next offsets continue without a gap.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{batch_of, Broker};
use sluice_protocol::client::Client;
use sluice_protocol::native::{
    self, Acks, FetchPartition, FetchRequest, ListOffsetsPartition, MetadataRequest,
    ProducePartition, ProduceRequest, Request, Response, ResponseBody,
};
use sluice_protocol::ErrorCode;

/// Written only by connection A.
const TOPIC_GOOD: &str = "good";
const GOOD_PARTITIONS: u32 = 2;
/// The valid halves of mixed produces: partition `i` belongs to abuser `i`,
/// so each abuser can check its own offsets exactly.
const TOPIC_ABUSE: &str = "abuse";
/// Only ever sent corrupt batches: it must stay empty.
const TOPIC_VICTIM: &str = "victim";
const VICTIM_PARTITIONS: u32 = 2;
/// Abusers that run at once; the sequential phase uses one more partition.
const ABUSERS: u32 = 20;
const ABUSE_ROUNDS: u32 = 5;
/// How long any read on a raw socket may wait.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// The broker's default `max_frame_bytes` (100 MiB), left unchanged.
const MAX_FRAME_BYTES: usize = native::FRAME_BYTES_MAX_DEFAULT;
/// Slow connections that each announce a frame of `MAX_FRAME_BYTES`.
const SLOW_CONNECTIONS: usize = 20;
/// Bound on the broker's RSS growth while the slow connections are open. A
/// broker that allocated (and zeroed) each announced frame up front would
/// need 20 x 100 MiB.
const SLOW_RSS_GROWTH_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// xorshift64*: a fixed-seed generator, so every run sends the same bytes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Every record of `topic`/`partition` from offset 0, fetched in steps.
fn fetch_all(client: &mut Client, topic: &str, partition: u32) -> Vec<(i64, Vec<u8>)> {
    common::fetch_all(client, topic, partition, 0, 64 * 1024, "")
}

/// The latest offset (log end offset) of `topic`/`partition`.
fn log_end(client: &mut Client, topic: &str, partition: u32) -> i64 {
    let r = client
        .list_offsets(vec![ListOffsetsPartition {
            topic: topic.into(),
            partition,
            timestamp: -1,
        }])
        .expect("list offsets");
    assert_eq!(
        r[0].error,
        ErrorCode::NONE,
        "list offsets {topic}/{partition}"
    );
    r[0].offset
}

/// Connection A: produces to every partition of [`TOPIC_GOOD`] and keeps a
/// model of what each partition must hold.
struct GoodClient {
    client: Client,
    expected: Vec<Vec<(i64, Vec<u8>)>>,
    rng: Rng,
    round: u32,
}

impl GoodClient {
    fn new(b: &Broker) -> GoodClient {
        GoodClient {
            client: b.client(),
            expected: vec![Vec::new(); GOOD_PARTITIONS as usize],
            rng: Rng::new(0xA),
            round: 0,
        }
    }

    /// One produce of a batch per partition; each base offset must be the
    /// partition's previous end exactly.
    fn produce(&mut self, after: &str) {
        self.round += 1;
        let mut values_by_partition = Vec::new();
        let mut partitions = Vec::new();
        for p in 0..GOOD_PARTITIONS {
            let count = 1 + self.rng.below(3) as usize;
            let values: Vec<Vec<u8>> = (0..count)
                .map(|i| {
                    let mut v = format!("A-{}-p{p}-r{i}-", self.round).into_bytes();
                    let len = self.rng.below(2000) as usize;
                    v.extend(self.rng.bytes(len));
                    v
                })
                .collect();
            let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            partitions.push(ProducePartition {
                topic: TOPIC_GOOD.into(),
                partition: p,
                records: batch_of(&slices),
            });
            values_by_partition.push(values);
        }
        let r = self
            .client
            .produce(Acks::All, 10_000, partitions)
            .unwrap_or_else(|e| panic!("A's produce after {after}: {e}"));
        assert_eq!(r.len(), GOOD_PARTITIONS as usize, "after {after}");
        for pr in r {
            let model = &mut self.expected[pr.partition as usize];
            let next = model.len() as i64;
            assert_eq!(
                (pr.error, pr.base_offset),
                (ErrorCode::NONE, next),
                "A's produce to {TOPIC_GOOD}/{} after {after}",
                pr.partition
            );
            let values = std::mem::take(&mut values_by_partition[pr.partition as usize]);
            model.extend(
                values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (next + i as i64, v)),
            );
        }
    }

    /// Every record A produced is there, bytes and offsets, and nothing else.
    fn verify(&mut self, after: &str) {
        for p in 0..GOOD_PARTITIONS {
            let got = fetch_all(&mut self.client, TOPIC_GOOD, p);
            let want = &self.expected[p as usize];
            assert_eq!(
                got.len(),
                want.len(),
                "record count of {TOPIC_GOOD}/{p} after {after}"
            );
            assert!(
                got == *want,
                "records of {TOPIC_GOOD}/{p} differ after {after}"
            );
            let end = log_end(&mut self.client, TOPIC_GOOD, p);
            assert_eq!(
                end,
                want.len() as i64,
                "log end of {TOPIC_GOOD}/{p} after {after}"
            );
        }
    }

    fn step(&mut self, after: &str) {
        self.produce(after);
        self.verify(after);
    }
}

fn connect_raw(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect raw");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("write timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// The broker closes `s` (EOF or reset) without sending anything, within
/// [`IO_TIMEOUT`].
fn assert_closed_by_broker(mut s: TcpStream, what: &str) {
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("{what}: the broker sent {n} bytes instead of closing"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("{what}: the broker kept the connection open for {IO_TIMEOUT:?}")
        }
        Err(_) => {} // reset: closed with our bytes unread
    }
}

/// Reads one response frame from a raw socket.
fn read_response(s: &mut TcpStream, what: &str) -> Response {
    let mut prefix = [0u8; native::FRAME_PREFIX_BYTES];
    s.read_exact(&mut prefix)
        .unwrap_or_else(|e| panic!("{what}: no response: {e}"));
    let total = native::frame_len(&prefix, MAX_FRAME_BYTES)
        .unwrap_or_else(|e| panic!("{what}: bad response prefix: {e}"))
        .expect("whole prefix");
    let mut frame = vec![0u8; total];
    frame[..prefix.len()].copy_from_slice(&prefix);
    s.read_exact(&mut frame[prefix.len()..])
        .unwrap_or_else(|e| panic!("{what}: response cut short: {e}"));
    native::decode_response(Bytes::from(frame))
        .unwrap_or_else(|e| panic!("{what}: undecodable response: {e}"))
}

fn send_request(s: &mut TcpStream, correlation_id: u32, request: &Request) {
    s.write_all(&native::encode_request(correlation_id, request).concat())
        .expect("send request");
}

/// Case 1: random bytes, then the client goes. Whatever the broker made of them,
/// it must not matter to anyone else.
fn send_garbage(addr: &str, rng: &mut Rng) {
    let mut s = connect_raw(addr);
    let len = 1024 + rng.below(4096) as usize;
    let _ = s.write_all(&rng.bytes(len));
}

/// Case 2, 3: a length prefix the broker must refuse: it closes the connection.
fn send_bad_prefixes(addr: &str) {
    let over = (MAX_FRAME_BYTES - native::FRAME_PREFIX_BYTES + 1) as u32;
    let cases = [
        (u32::MAX, "length prefix 0xFFFF_FFFF"),
        (0x4000_0000, "length prefix of 1 GiB (over max_frame_bytes)"),
        (over, "length prefix one byte over max_frame_bytes"),
        (0, "length prefix 0 (under the minimum frame)"),
    ];
    for (prefix, what) in cases {
        let mut s = connect_raw(addr);
        // Some bytes after the prefix, as a client that means it would send.
        let mut frame = prefix.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0x5A; 64]);
        let _ = s.write_all(&frame);
        assert_closed_by_broker(s, what);
    }
}

/// A frame of sane length whose header is `header` and whose `header_len`
/// field says `header_len`.
fn frame_with_header(header_len: u32, header: &[u8]) -> Vec<u8> {
    let frame_len = (native::HEADER_LEN_BYTES + header.len()) as u32;
    let mut frame = frame_len.to_be_bytes().to_vec();
    frame.extend_from_slice(&header_len.to_be_bytes());
    frame.extend_from_slice(header);
    frame
}

/// A produce request whose header is valid but whose payload is 10 bytes
/// shorter than its `records_len` claim: undecodable, yet the correlation id
/// is readable.
fn produce_with_short_payload(correlation_id: u32) -> Vec<u8> {
    let request = Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 1000,
        partitions: vec![ProducePartition {
            topic: TOPIC_VICTIM.into(),
            partition: 0,
            records: batch_of(&[b"never appended"]),
        }],
    });
    let mut frame = native::encode_request(correlation_id, &request).concat();
    frame.truncate(frame.len() - 10);
    let frame_len = (frame.len() - native::FRAME_PREFIX_BYTES) as u32;
    frame[..native::FRAME_PREFIX_BYTES].copy_from_slice(&frame_len.to_be_bytes());
    frame
}

/// Case 4: sane lengths, undecodable contents: each gets INVALID_REQUEST (with
/// the correlation id when it is readable), in order, and the same
/// connection then serves a valid request.
fn send_bad_headers(addr: &str, rng: &mut Rng) {
    let mut s = connect_raw(addr);
    let garbage = rng.bytes(64);
    // The root offset 0xFFFF_FFFF points outside the header.
    let all_ones = vec![0xFF; 48];
    let cases: Vec<(Vec<u8>, Option<u32>, &str)> = vec![
        (frame_with_header(64, &garbage), None, "random header"),
        (frame_with_header(48, &all_ones), Some(0), "header of 0xFF"),
        (
            frame_with_header(4096, &garbage),
            Some(0),
            "header_len past the frame",
        ),
        (
            frame_with_header(4, &garbage),
            Some(0),
            "header_len under the minimum",
        ),
        (
            produce_with_short_payload(4242),
            Some(4242),
            "payload shorter than records_len",
        ),
    ];
    for (frame, _, _) in &cases {
        s.write_all(frame).expect("send bad frame");
    }
    for (_, id, what) in &cases {
        let r = read_response(&mut s, what);
        assert_eq!(r.error, ErrorCode::INVALID_REQUEST, "{what}: {}", r.message);
        assert_eq!(r.body, ResponseBody::Error, "{what}");
        assert!(!r.message.is_empty(), "{what}: the error says why");
        if let Some(id) = id {
            assert_eq!(r.correlation_id, *id, "{what}: correlation id");
        }
    }
    send_request(&mut s, 77, &Request::Metadata(MetadataRequest::default()));
    let r = read_response(&mut s, "metadata after bad frames");
    assert_eq!(
        (r.correlation_id, r.error),
        (77, ErrorCode::NONE),
        "{}",
        r.message
    );
    let ResponseBody::Metadata(meta) = r.body else {
        panic!("metadata after bad frames: {:?}", r.body);
    };
    assert!(
        meta.topics.iter().any(|t| t.name == TOPIC_GOOD),
        "metadata lists the topics"
    );
}

/// Case 5: a client that vanishes mid-request: the prefix says 1000 bytes, 10
/// arrive, then the socket closes.
fn send_truncated_frame(addr: &str, rng: &mut Rng) {
    let mut s = connect_raw(addr);
    let mut frame = 1000u32.to_be_bytes().to_vec();
    frame.extend(rng.bytes(10));
    let _ = s.write_all(&frame);
}

/// Case 6: announces a frame of `max_frame_bytes` and sends a little of it; the
/// connection stays open until the returned stream is dropped.
fn open_slow_frame(addr: &str, rng: &mut Rng) -> TcpStream {
    let mut s = connect_raw(addr);
    let prefix = (MAX_FRAME_BYTES - native::FRAME_PREFIX_BYTES) as u32;
    let mut frame = prefix.to_be_bytes().to_vec();
    frame.extend(rng.bytes(100));
    s.write_all(&frame).expect("send slow frame start");
    s
}

fn flip(mut batch: Vec<u8>, at: usize) -> Bytes {
    batch[at] ^= 0x01;
    Bytes::from(batch)
}

/// Case 7, 8: one produce carrying a good batch for `abuse_partition` and, for
/// the victim topic, a batch with a flipped CRC byte, one with a flipped
/// value byte, 10 bytes that are not a batch and a gzip-flagged batch that
/// does not decompress. Only the good one is
/// appended, at `abuse_next`; returns the abuse partition's next offset.
fn produce_corrupt(addr: &str, rng: &mut Rng, abuse_partition: u32, abuse_next: i64) -> i64 {
    let mut c = Client::connect(addr).expect("connect");
    c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let good = batch_of(&[b"good half", b"of a mixed produce"]);
    let crc_flipped = flip(batch_of(&[b"bad crc"]).to_vec(), 17);
    let batch = batch_of(&[b"bad value byte"]);
    let value_flipped = flip(batch.to_vec(), batch.len() - 3);
    let not_a_batch = Bytes::from(rng.bytes(10));
    let part = |topic: &str, partition, records| ProducePartition {
        topic: topic.into(),
        partition,
        records,
    };
    let r = c
        .produce(
            Acks::All,
            10_000,
            vec![
                part(TOPIC_VICTIM, 0, crc_flipped),
                part(TOPIC_ABUSE, abuse_partition, good),
                part(TOPIC_VICTIM, 1, value_flipped),
            ],
        )
        .expect("mixed produce");
    let by_topic: HashMap<(String, u32), (ErrorCode, i64)> = r
        .into_iter()
        .map(|p| ((p.topic, p.partition), (p.error, p.base_offset)))
        .collect();
    let get = |topic: &str, p: u32| by_topic.get(&(topic.to_string(), p)).copied();
    assert_eq!(
        get(TOPIC_VICTIM, 0).map(|r| r.0),
        Some(ErrorCode::CORRUPT_MESSAGE),
        "flipped CRC"
    );
    assert_eq!(
        get(TOPIC_VICTIM, 1).map(|r| r.0),
        Some(ErrorCode::CORRUPT_MESSAGE),
        "flipped value"
    );
    assert_eq!(
        get(TOPIC_ABUSE, abuse_partition),
        Some((ErrorCode::NONE, abuse_next)),
        "good half"
    );
    let r = c
        .produce(
            Acks::Leader,
            10_000,
            vec![part(TOPIC_VICTIM, 0, not_a_batch)],
        )
        .expect("produce of a non-batch");
    assert_eq!(
        r[0].error,
        ErrorCode::CORRUPT_MESSAGE,
        "10 random bytes as records"
    );
    // Flagged gzip with a correct CRC, but the records are not gzip: a
    // consumer could never read them, so the broker refuses the batch.
    let mut fake_gzip = batch_of(&[b"not compressed at all"]).to_vec();
    fake_gzip[22] |= 1;
    let crc = sluice_protocol::batch::compute_crc(&fake_gzip);
    fake_gzip[17..21].copy_from_slice(&crc.to_be_bytes());
    let r = c
        .produce(
            Acks::Leader,
            10_000,
            vec![part(TOPIC_VICTIM, 1, Bytes::from(fake_gzip))],
        )
        .expect("produce of a fake gzip batch");
    assert_eq!(
        r[0].error,
        ErrorCode::INVALID_RECORD,
        "a gzip-flagged batch that does not decompress"
    );
    for p in 0..VICTIM_PARTITIONS {
        assert_eq!(
            log_end(&mut c, TOPIC_VICTIM, p),
            0,
            "nothing appended to {TOPIC_VICTIM}/{p}"
        );
    }
    assert_eq!(
        log_end(&mut c, TOPIC_ABUSE, abuse_partition),
        abuse_next + 2
    );
    abuse_next + 2
}

/// Case 9: one fetch: an unknown topic, an unknown partition and an offset past
/// the end each get their own error code.
fn fetch_bad_positions(addr: &str) {
    let mut c = Client::connect(addr).expect("connect");
    c.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let part = |topic: &str, partition, offset| FetchPartition {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 1024,
    };
    let r = c
        .fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            partitions: vec![
                part("no-such-topic", 0, 0),
                part(TOPIC_GOOD, 0, 1_000_000),
                part(TOPIC_GOOD, 99, 0),
            ],
        })
        .expect("fetch");
    let got: HashMap<(String, u32), ErrorCode> = r
        .into_iter()
        .map(|p| ((p.topic, p.partition), p.error))
        .collect();
    let want: HashMap<(String, u32), ErrorCode> = [
        (
            ("no-such-topic".into(), 0),
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        ),
        ((TOPIC_GOOD.into(), 0), ErrorCode::OFFSET_OUT_OF_RANGE),
        (
            (TOPIC_GOOD.into(), 99),
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
}

/// The broker's resident memory, from /proc.
fn rss_bytes(b: &Broker) -> u64 {
    common::proc_memory_bytes(b.child.as_ref().expect("running").id(), "VmRSS")
}

fn assert_alive(b: &mut Broker) {
    let child = b.child.as_mut().expect("running");
    let status = child.try_wait().expect("try_wait");
    assert!(status.is_none(), "the broker exited: {status:?}");
}

fn start() -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("data"), 2);
    b.create_topic(TOPIC_GOOD, GOOD_PARTITIONS);
    b.create_topic(TOPIC_ABUSE, ABUSERS + 1);
    b.create_topic(TOPIC_VICTIM, VICTIM_PARTITIONS);
    (dir, b)
}

#[test]
fn each_kind_of_bad_input_gets_its_error_and_others_are_still_served() {
    let (_dir, mut b) = start();
    let addr = b.addr();
    let mut a = GoodClient::new(&b);
    let mut rng = Rng::new(1);
    a.step("start");

    send_garbage(&addr, &mut rng);
    a.step("random garbage");
    send_bad_prefixes(&addr);
    a.step("absurd length prefixes");
    send_bad_headers(&addr, &mut rng);
    a.step("garbage headers");
    send_truncated_frame(&addr, &mut rng);
    a.step("a truncated frame");

    let rss_before = rss_bytes(&b);
    let slow: Vec<TcpStream> = (0..SLOW_CONNECTIONS)
        .map(|_| open_slow_frame(&addr, &mut rng))
        .collect();
    // A's round trips on both shards give the broker time to read them all.
    a.step("slow frames announcing max_frame_bytes");
    a.step("slow frames announcing max_frame_bytes, again");
    let growth = rss_bytes(&b).saturating_sub(rss_before);
    assert!(
        growth < SLOW_RSS_GROWTH_BYTES_MAX,
        "{SLOW_CONNECTIONS} slow frames of {MAX_FRAME_BYTES} bytes each grew the broker \
         by {growth} bytes"
    );
    drop(slow);
    a.step("slow frames closed");

    let next = produce_corrupt(&addr, &mut rng, ABUSERS, 0);
    a.step("corrupt batches");
    produce_corrupt(&addr, &mut rng, ABUSERS, next);
    a.step("corrupt batches, again");
    fetch_bad_positions(&addr);
    a.step("fetch of bad positions");
    assert_alive(&mut b);
}

/// One abuser's rounds of 1-9; its slow frame stays open for the round.
fn abuse(addr: &str, worker: u32) {
    let mut rng = Rng::new(1000 + u64::from(worker));
    let mut abuse_next = 0;
    for _ in 0..ABUSE_ROUNDS {
        let slow = open_slow_frame(addr, &mut rng);
        send_garbage(addr, &mut rng);
        send_bad_prefixes(addr);
        send_bad_headers(addr, &mut rng);
        send_truncated_frame(addr, &mut rng);
        abuse_next = produce_corrupt(addr, &mut rng, worker, abuse_next);
        fetch_bad_positions(addr);
        drop(slow);
    }
}

#[test]
fn twenty_abusers_at_once_do_not_disturb_a_producer() {
    let (_dir, mut b) = start();
    let addr = b.addr();
    let mut a = GoodClient::new(&b);
    a.step("start");
    let workers: Vec<_> = (0..ABUSERS)
        .map(|w| {
            let addr = addr.clone();
            std::thread::spawn(move || abuse(&addr, w))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rounds = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        assert!(
            Instant::now() < deadline,
            "abusers still running after 120 s"
        );
        assert!(rounds < 10_000, "A produced 10000 times while abusers ran");
        a.produce("abusers running");
        rounds += 1;
    }
    for w in workers {
        if let Err(panic) = w.join() {
            std::panic::resume_unwind(panic);
        }
    }
    a.verify("abusers done");
    a.step("abusers done");
    let mut c = b.client();
    for p in 0..VICTIM_PARTITIONS {
        assert_eq!(
            fetch_all(&mut c, TOPIC_VICTIM, p),
            vec![],
            "{TOPIC_VICTIM}/{p} empty"
        );
    }
    for w in 0..ABUSERS {
        let want = 2 * i64::from(ABUSE_ROUNDS);
        assert_eq!(log_end(&mut c, TOPIC_ABUSE, w), want, "{TOPIC_ABUSE}/{w}");
    }
    assert!(rounds > 0, "A produced while the abusers ran");
    assert_alive(&mut b);
}
