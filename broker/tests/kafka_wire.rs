//! The Kafka listener at the wire level, with the reference codec
//! (`kafka-protocol`) as the client: version negotiation, errors per
//! partition, idempotent producer rules, and malformed input that must not
//! disturb anyone else. Real clients (kcat, the Java client, franz-go,
//! kafka-python) are exercised by scripts/client-tests.sh.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::Broker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_protocol::batch::BatchBuilder;

struct Conn {
    stream: TcpStream,
    next_id: i32,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Conn { stream, next_id: 1 }
    }

    fn send<R: Encodable + HeaderVersionOf>(&mut self, key: ApiKey, version: i16, body: &R) -> i32 {
        self.send_as(key, version, version, body)
    }

    /// Sends `body` encoded at `body_version` under a header claiming `version`.
    fn send_as<R: Encodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        body_version: i16,
        body: &R,
    ) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("wire-test")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, key.request_header_version(body_version))
            .expect("header");
        body.encode(&mut buf, body_version).expect("body");
        let size = (buf.len() - 4) as i32;
        buf[0..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).expect("write");
        id
    }

    fn recv<R: Decodable>(&mut self, key: ApiKey, version: i16, id: i32) -> R {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).expect("response size");
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut body).expect("response body");
        let mut body = Bytes::from(body);
        let header_version = if key == ApiKey::ApiVersions {
            0
        } else {
            key.response_header_version(version)
        };
        let header = ResponseHeader::decode(&mut body, header_version).expect("response header");
        assert_eq!(header.correlation_id, id, "responses in request order");
        R::decode(&mut body, version).expect("response body")
    }

    fn call<Q: Encodable + HeaderVersionOf, R: Decodable>(
        &mut self,
        key: ApiKey,
        v: i16,
        body: &Q,
    ) -> R {
        let id = self.send(key, v, body);
        self.recv(key, v, id)
    }

    /// Whether the broker closed the connection (EOF) within the timeout.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// Marker so `send` only takes request types.
trait HeaderVersionOf {}
impl<T: kafka_protocol::protocol::Request> HeaderVersionOf for T {}

fn kafka_broker(dir: &std::path::Path) -> (Broker, u16) {
    let base = dir.join("data");
    let b = Broker::start_with(&base, 2, "group_initial_rebalance_delay_ms = 0\n");
    let port = b.kafka_port;
    (b, port)
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    let part = produce_request::PartitionProduceData::default()
        .with_index(partition)
        .with_records(Some(records));
    let data = produce_request::TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![part]);
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![data])
}

fn batch(values: &[&str], producer: Option<(i64, i16, i32)>) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for v in values {
        b.push(1_700_000_000_000, Some(b"k"), Some(v.as_bytes()), &[]);
    }
    if let Some((id, epoch, seq)) = producer {
        b.set_producer(id, epoch, seq);
    }
    Bytes::from(b.finish())
}

fn create(conn: &mut Conn, topic: &str, partitions: i32) {
    let t = create_topics_request::CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1);
    let r: CreateTopicsResponse = conn.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![t])
            .with_timeout_ms(5000),
    );
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
}

/// One Produce v9 of `records` to one partition, on `conn`.
fn produce_v9(
    conn: &mut Conn,
    topic: &str,
    partition: i32,
    records: Bytes,
    acks: i16,
) -> ProduceResponse {
    conn.call(
        ApiKey::Produce,
        9,
        &produce_request(topic, partition, records, acks),
    )
}

fn partition_result(r: &ProduceResponse) -> (i16, i64) {
    let p = &r.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// The first partition's `error_message` (Produce v8+).
fn partition_message(r: &ProduceResponse) -> String {
    let p = &r.responses[0].partition_responses[0];
    p.error_message
        .as_ref()
        .map(|m| m.to_string())
        .unwrap_or_default()
}

#[test]
fn api_versions_negotiation_and_old_produce_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_b, port) = kafka_broker(dir.path());
    let mut c = Conn::open(port);
    let r: ApiVersionsResponse = c.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(r.error_code, 0);
    let produce = r
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .expect("Produce");
    assert_eq!(
        produce.min_version, 0,
        "advertised from v0 for old librdkafka"
    );
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::InitProducerId as i16));
    assert!(r
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::JoinGroup as i16));

    // A version newer than ours: UNSUPPORTED_VERSION with a v0 body.
    let id = c.send_as(ApiKey::ApiVersions, 9, 3, &ApiVersionsRequest::default());
    let r: ApiVersionsResponse = c.recv(ApiKey::ApiVersions, 0, id);
    assert_eq!(r.error_code, 35);
    assert!(!r.api_keys.is_empty());

    // Produce v2 (message format v1): refused per partition, not dropped.
    let mut body = BytesMut::new();
    body.put_i16(1); // acks
    body.put_i32(1000);
    body.put_i32(1); // topics
    body.put_i16(1);
    body.put_slice(b"t");
    body.put_i32(1); // partitions
    body.put_i32(0);
    body.put_i32(3);
    body.put_slice(b"abc");
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(2)
        .with_correlation_id(77);
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header.encode(&mut frame, 1).expect("header");
    frame.put_slice(&body);
    let size = (frame.len() - 4) as i32;
    frame[0..4].copy_from_slice(&size.to_be_bytes());
    c.stream.write_all(&frame).expect("write");
    let mut size = [0u8; 4];
    c.stream.read_exact(&mut size).expect("size");
    let mut resp = vec![0u8; i32::from_be_bytes(size) as usize];
    c.stream.read_exact(&mut resp).expect("body");
    let mut resp = Bytes::from(resp);
    assert_eq!(resp.get_i32(), 77);
    assert_eq!(resp.get_i32(), 1); // topics
    resp.advance(2 + 1);
    assert_eq!(resp.get_i32(), 1); // partitions
    assert_eq!(resp.get_i32(), 0);
    assert_eq!(resp.get_i16(), 35, "UNSUPPORTED_VERSION");
}

#[test]
fn produce_fetch_errors_and_idempotence_at_the_wire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_b, port) = kafka_broker(dir.path());
    let mut c = Conn::open(port);
    create(&mut c, "w", 2);
    let r = produce_v9(&mut c, "w", 0, batch(&["a", "b", "c"], None), -1);
    assert_eq!(partition_result(&r), (0, 0));
    let r = produce_v9(&mut c, "nope", 0, batch(&["a"], None), 1);
    assert_eq!(partition_result(&r).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(partition_message(&r), "no topic \"nope\"");
    let r = produce_v9(&mut c, "w", 2, batch(&["a"], None), 1);
    assert_eq!(partition_result(&r).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert_eq!(
        partition_message(&r),
        "topic \"w\" has partitions 0 to 1, not 2"
    );
    let mut corrupt = batch(&["x"], None).to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let corrupt = Bytes::from(corrupt);
    let r = produce_v9(&mut c, "w", 0, corrupt.clone(), 1);
    assert_eq!(partition_result(&r).0, 2, "CORRUPT_MESSAGE");
    let why = partition_message(&r);
    assert!(
        why.starts_with("invalid batch: CRC mismatch: stored 0x"),
        "the producer is told which check failed: {why:?}"
    );
    // Before v8 the field does not exist: the same refusal, without it.
    let r: ProduceResponse = c.call(ApiKey::Produce, 7, &produce_request("w", 0, corrupt, 1));
    assert_eq!(partition_result(&r).0, 2, "CORRUPT_MESSAGE at v7");
    assert_eq!(partition_message(&r), "");
    let r = produce_v9(&mut c, "w", 0, batch(&["d"], None), 7);
    assert_eq!(partition_result(&r).0, 21, "INVALID_REQUIRED_ACKS");
    assert_eq!(
        partition_message(&r),
        "acks must be -1 (all), 0 or 1, not 7"
    );

    // A refusal from the partition's own checks carries its reason too.
    let config = create_topics_request::CreatableTopicConfig::default()
        .with_name(StrBytes::from_static_str("max.message.bytes"))
        .with_value(Some(StrBytes::from_static_str("100")));
    let small = create_topics_request::CreatableTopic::default()
        .with_name(name("small"))
        .with_num_partitions(1)
        .with_replication_factor(1)
        .with_configs(vec![config]);
    let created: CreateTopicsResponse = c.call(
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_topics(vec![small])
            .with_timeout_ms(5000),
    );
    assert_eq!(created.topics[0].error_code, 0);
    let big = batch(&["0123456789"; 10], None);
    let r = produce_v9(&mut c, "small", 0, big.clone(), -1);
    assert_eq!(partition_result(&r).0, 10, "MESSAGE_TOO_LARGE");
    assert_eq!(
        partition_message(&r),
        format!("batch of {} bytes exceeds max.message.bytes 100", big.len())
    );

    // Idempotent producer: duplicates get the original offset, gaps are refused.
    let init: InitProducerIdResponse = c.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60000),
    );
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid >= 0);
    let first = batch(&["i0", "i1"], Some((pid, epoch, 0)));
    let r = produce_v9(&mut c, "w", 1, first.clone(), -1);
    assert_eq!(partition_result(&r), (0, 0));
    let r = produce_v9(&mut c, "w", 1, first, -1);
    assert_eq!(
        partition_result(&r),
        (0, 0),
        "a duplicate is answered with its original offset"
    );
    let gap = batch(&["i5"], Some((pid, epoch, 5)));
    let r = produce_v9(&mut c, "w", 1, gap, -1);
    assert_eq!(partition_result(&r).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    assert_eq!(
        partition_message(&r),
        format!(
            "producer {pid} epoch {epoch}: sequence 5 does not follow 1, the last this partition has"
        )
    );
    let next = batch(&["i2"], Some((pid, epoch, 2)));
    let r = produce_v9(&mut c, "w", 1, next, -1);
    assert_eq!(partition_result(&r), (0, 2));

    // Fetch from the middle of a batch, and out of range.
    let fetch = |offset: i64| {
        let p = fetch_request::FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(offset)
            .with_partition_max_bytes(1 << 20);
        let t = fetch_request::FetchTopic::default()
            .with_topic(name("w"))
            .with_partitions(vec![p]);
        FetchRequest::default()
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![t])
            .with_session_epoch(-1)
    };
    for version in [4i16, 11, 12] {
        let r: FetchResponse = c.call(ApiKey::Fetch, version, &fetch(1));
        let p = &r.responses[0].partitions[0];
        assert_eq!((p.error_code, p.high_watermark), (0, 3), "v{version}");
        let records = p.records.clone().expect("records");
        let vals: Vec<String> = sluice_protocol::batch::records(&records)
            .expect("batch")
            .map(|r| {
                String::from_utf8_lossy(r.expect("record").value.unwrap_or_default()).into_owned()
            })
            .collect();
        assert_eq!(vals, ["a", "b", "c"], "the whole batch containing offset 1");
        let r: FetchResponse = c.call(ApiKey::Fetch, version, &fetch(9));
        assert_eq!(
            r.responses[0].partitions[0].error_code, 1,
            "OFFSET_OUT_OF_RANGE"
        );
    }
}

#[test]
fn fetches_with_nothing_to_wait_for_are_answered_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_b, port) = kafka_broker(dir.path());
    let mut c = Conn::open(port);
    create(&mut c, "idle", 2);
    // Each fetch asks to wait 30 s for a byte; the connection gives up
    // after 20 s, so a broker that waits (or spins) fails the call.
    let long_poll = |topics: Vec<fetch_request::FetchTopic>| {
        FetchRequest::default()
            .with_max_wait_ms(30_000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(topics)
            .with_session_epoch(-1)
    };
    // No partitions at all: what the Java consumer sends to close its
    // fetch session. Kafka answers it at once.
    for version in [4i16, 11, 12] {
        let r: FetchResponse = c.call(ApiKey::Fetch, version, &long_poll(vec![]));
        assert_eq!(r.error_code, 0, "v{version}");
        assert!(r.responses.is_empty(), "v{version}");
    }
    // One partition fenced by a leader epoch from the future, one at its
    // log end: the error is answered at once, with the other partition.
    let part = |index: i32, epoch: i32| {
        fetch_request::FetchPartition::default()
            .with_partition(index)
            .with_current_leader_epoch(epoch)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20)
    };
    let topics = vec![fetch_request::FetchTopic::default()
        .with_topic(name("idle"))
        .with_partitions(vec![part(0, 1_000_000), part(1, -1)])];
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &long_poll(topics));
    let codes: Vec<i16> = r.responses[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(codes, [75, 0], "UNKNOWN_LEADER_EPOCH, then nothing yet");
    // The connection still serves: a produce and a fetch that finds it.
    let r = produce_v9(&mut c, "idle", 0, batch(&["x"], None), -1);
    assert_eq!(partition_result(&r), (0, 0));
    let topics = vec![fetch_request::FetchTopic::default()
        .with_topic(name("idle"))
        .with_partitions(vec![part(0, -1)])];
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &long_poll(topics));
    assert!(r.responses[0].partitions[0].records.is_some());
}

#[test]
fn malformed_kafka_requests_close_only_their_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_b, port) = kafka_broker(dir.path());
    let mut good = Conn::open(port);
    create(&mut good, "m", 1);
    let abuses: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff],       // negative size
        vec![0x7f, 0xff, 0xff, 0xff, 0, 0], // beyond max_frame_bytes
        vec![0, 0, 0, 12, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], // unknown API key
        vec![0, 0, 0, 3, 1, 2, 3],          // too small
    ];
    for bytes in abuses {
        let mut bad = Conn::open(port);
        bad.stream.write_all(&bytes).expect("write");
        assert!(bad.closed(), "{bytes:?} closes the connection");
    }
    // A truncated request followed by a vanished client.
    let mut gone = Conn::open(port);
    gone.stream.write_all(&[0, 0, 1, 0, 0, 3]).expect("write");
    drop(gone);
    let r = produce_v9(&mut good, "m", 0, batch(&["still here"], None), -1);
    assert_eq!(partition_result(&r), (0, 0));
    let all = MetadataRequest::default().with_topics(None);
    let r: MetadataResponse = good.call(ApiKey::Metadata, 12, &all);
    assert!(r
        .topics
        .iter()
        .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "m")));
}

#[test]
fn an_array_claiming_two_billion_elements_does_not_stop_the_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut b, port) = kafka_broker(dir.path());
    let mut good = Conn::open(port);
    create(&mut good, "big", 1);
    for (key, version) in [
        (ApiKey::Metadata, 1i16),
        (ApiKey::Produce, 7),
        (ApiKey::Fetch, 11),
    ] {
        let mut bad = Conn::open(port);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(1);
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, key.request_header_version(version))
            .expect("header");
        match key {
            ApiKey::Produce => {
                frame.put_i16(-1); // transactional id: null
                frame.put_i16(1);
                frame.put_i32(1000);
            }
            ApiKey::Fetch => {
                frame.put_i32(-1);
                frame.put_i32(100);
                frame.put_i32(1);
                frame.put_i32(1 << 20);
                frame.put_i8(0);
                frame.put_i32(0);
                frame.put_i32(-1);
            }
            _ => {}
        }
        frame.put_i32(i32::MAX); // the array count
        frame.put_slice(&[0u8; 16]);
        let size = (frame.len() - 4) as i32;
        frame[0..4].copy_from_slice(&size.to_be_bytes());
        bad.stream.write_all(&frame).expect("write");
        std::thread::sleep(Duration::from_millis(200));
        let alive = b
            .child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("wait")
            .is_none();
        assert!(
            alive,
            "{key:?} with a two-billion-element array stopped the broker"
        );
    }
    let r = produce_v9(&mut good, "big", 0, batch(&["ok"], None), -1);
    assert_eq!(partition_result(&r), (0, 0));
}

#[test]
fn committed_offsets_survive_a_broker_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut b, port) = kafka_broker(dir.path());
    let mut c = Conn::open(port);
    create(&mut c, "durable", 3);
    let partitions = (0..3)
        .map(|p| {
            offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(p)
                .with_committed_offset(100 + i64::from(p))
                .with_committed_metadata(Some(StrBytes::from_static_str("meta")))
        })
        .collect();
    let topic = offset_commit_request::OffsetCommitRequestTopic::default()
        .with_name(name("durable"))
        .with_partitions(partitions);
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("restart-group")))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(vec![topic]);
    let r: OffsetCommitResponse = c.call(ApiKey::OffsetCommit, 8, &commit);
    assert!(
        r.topics[0].partitions.iter().all(|p| p.error_code == 0),
        "{r:?}"
    );
    assert!(b.terminate().success());
    b.spawn();
    let mut c = Conn::open(port);
    let fetch = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("restart-group")))
        .with_topics(None);
    let mut got = None;
    // The coordinator may still be loading right after start (error 14).
    for _ in 0..50 {
        let r: OffsetFetchResponse = c.call(ApiKey::OffsetFetch, 7, &fetch);
        if r.error_code == 0 {
            got = Some(r);
            break;
        }
        assert_eq!(
            r.error_code, 14,
            "only COORDINATOR_LOAD_IN_PROGRESS is expected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = got.expect("offsets after restart");
    let mut offsets: Vec<(i32, i64)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.committed_offset))
        .collect();
    offsets.sort();
    assert_eq!(offsets, vec![(0, 100), (1, 101), (2, 102)]);
}

/// A batch of `n` records whose values are `size` bytes of `fill`.
fn big_batch(n: usize, size: usize, fill: u8) -> Bytes {
    let mut b = BatchBuilder::new(1_700_000_000_000);
    for i in 0..n {
        let mut v = vec![fill; size];
        v[..4].copy_from_slice(&(i as u32).to_be_bytes());
        b.push(1_700_000_000_000, Some(b"k"), Some(&v), &[]);
    }
    Bytes::from(b.finish())
}

/// Every record value of `records` (batches back to back).
fn all_values(records: &Bytes) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for item in sluice_protocol::batch::split(records) {
        let (range, _) = item.expect("whole batches");
        for r in sluice_protocol::batch::records(&records[range]).expect("batch") {
            out.push(r.expect("record").value.unwrap_or_default().to_vec());
        }
    }
    out
}

/// Large Produce requests are parsed as they arrive and their batches
/// received straight into write memory. Every served version, with several
/// topics and partitions, large and small batches, a null records field,
/// tagged fields and a request dribbled a few bytes at a time, reads back
/// exactly.
#[test]
fn large_produce_requests_of_every_version_read_back_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One shard: every partition is local to the connection, so every large
    // batch is written from where it was received.
    let b = Broker::start_with(&dir.path().join("data"), 1, "");
    let metrics_port = b.kafka_port + 1;
    let mut c = Conn::open(b.kafka_port);
    create(&mut c, "big-a", 2);
    create(&mut c, "big-b", 2);
    let mut expected: std::collections::BTreeMap<(String, i32), Vec<Vec<u8>>> =
        std::collections::BTreeMap::new();
    let copies_before = common::scrape(metrics_port, "sluice_payload_copies_total");
    let registered_before = common::scrape(metrics_port, "sluice_registered_writes_total");
    let produces_before = common::scrape(metrics_port, "sluice_produce_latency_seconds_count");
    let fetches_before = common::scrape(metrics_port, "sluice_fetch_latency_seconds_count");
    for version in 3i16..=11 {
        let fill = b'a' + version as u8;
        let large = big_batch(12, 700, fill);
        let small = big_batch(2, 30, fill);
        let part = |index: i32, records: Option<Bytes>| {
            let mut p = produce_request::PartitionProduceData::default()
                .with_index(index)
                .with_records(records);
            if version >= 9 {
                let tags = [(7, Bytes::from_static(b"tag"))].into_iter().collect();
                p = p.with_unknown_tagged_fields(tags);
            }
            p
        };
        let a = produce_request::TopicProduceData::default()
            .with_name(name("big-a"))
            .with_partition_data(vec![
                part(0, Some(large.clone())),
                part(1, Some(small.clone())),
            ]);
        let b = produce_request::TopicProduceData::default()
            .with_name(name("big-b"))
            .with_partition_data(vec![part(0, Some(large.clone())), part(1, None)]);
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![a, b]);
        let id = if version == 10 {
            // Dribbled: the broker's reads stop everywhere in the frame.
            let mut buf = BytesMut::new();
            buf.put_i32(0);
            let header = RequestHeader::default()
                .with_request_api_key(ApiKey::Produce as i16)
                .with_request_api_version(version)
                .with_correlation_id(999)
                .with_client_id(Some(StrBytes::from_static_str("dribbler")));
            header
                .encode(&mut buf, ApiKey::Produce.request_header_version(version))
                .expect("header");
            req.encode(&mut buf, version).expect("body");
            let size = (buf.len() - 4) as i32;
            buf[0..4].copy_from_slice(&size.to_be_bytes());
            for piece in buf.chunks(97) {
                c.stream.write_all(piece).expect("write");
                c.stream.flush().expect("flush");
                std::thread::sleep(Duration::from_millis(1));
            }
            999
        } else {
            c.send(ApiKey::Produce, version, &req)
        };
        let r: ProduceResponse = c.recv(ApiKey::Produce, version, id);
        let codes: Vec<(String, i32, i16)> = r
            .responses
            .iter()
            .flat_map(|t| {
                t.partition_responses
                    .iter()
                    .map(move |p| (t.name.0.to_string(), p.index, p.error_code))
            })
            .collect();
        assert_eq!(
            codes,
            [
                ("big-a".to_string(), 0, 0),
                ("big-a".to_string(), 1, 0),
                ("big-b".to_string(), 0, 0),
                ("big-b".to_string(), 1, 2), // a null records field: CORRUPT_MESSAGE
            ],
            "v{version}"
        );
        for (topic, p, batch) in [
            ("big-a", 0, &large),
            ("big-a", 1, &small),
            ("big-b", 0, &large),
        ] {
            let want = expected.entry((topic.to_string(), p)).or_default();
            want.extend(all_values(batch));
        }
    }
    let copies = common::scrape(metrics_port, "sluice_payload_copies_total") - copies_before;
    assert_eq!(copies, 9, "one copy per small batch; the large ones none");
    // The 18 large batches landed in the broker's arena (the embedded
    // default `registered_landings = true`); the small ones went through
    // glommio's own buffers. A ring registers a chunk's first 64 KiB once
    // landings reach them, and more as they grow by a quarter, so of these
    // few small writes some, not all, go out from registered memory (the
    // shard crate's `arena` test checks a filled arena writes them all).
    let registered =
        common::scrape(metrics_port, "sluice_registered_writes_total") - registered_before;
    match sluice_shard::uring::writev_fixed_supported() {
        true => assert!(
            (1..=18).contains(&registered),
            "{registered} of 18 landed writes from registered memory"
        ),
        false => assert_eq!(registered, 0, "no WRITEV_FIXED in this kernel"),
    }
    // Each answered Produce, and nothing else, was timed in the broker.
    let timed = |name: &str, before: u64| common::scrape(metrics_port, name) - before;
    let produces = "sluice_produce_latency_seconds_count";
    assert_eq!(timed(produces, produces_before), 9, "one per version");
    assert_eq!(
        timed("sluice_fetch_latency_seconds_count", fetches_before),
        0
    );
    // Read everything back.
    let mut fetches = 0;
    for ((topic, p), want) in &expected {
        let mut got = Vec::new();
        let mut offset = 0i64;
        while got.len() < want.len() {
            let fp = fetch_request::FetchPartition::default()
                .with_partition(*p)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1 << 20);
            let t = fetch_request::FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![fp]);
            let req = FetchRequest::default()
                .with_max_wait_ms(0)
                .with_min_bytes(0)
                .with_max_bytes(1 << 22)
                .with_topics(vec![t])
                .with_session_epoch(-1);
            let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req);
            fetches += 1;
            let part = &r.responses[0].partitions[0];
            assert_eq!(part.error_code, 0);
            let records = part.records.clone().expect("records");
            let values = all_values(&records);
            assert!(!values.is_empty(), "{topic}/{p} at {offset}");
            got.extend(values);
            offset = got.len() as i64;
        }
        assert_eq!(&got, want, "{topic}/{p}");
    }
    assert_eq!(
        timed("sluice_fetch_latency_seconds_count", fetches_before),
        fetches
    );
    assert_eq!(timed(produces, produces_before), 9);
}
