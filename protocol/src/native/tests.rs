//! Round trips of every message, truncated and corrupted frames, length
//! bounds, and property tests that no input makes a decoder panic.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer};
use proptest::prelude::*;

use super::*;
use crate::ErrorCode;

fn concat(chunks: &[Bytes]) -> Bytes {
    Bytes::from(chunks.concat())
}

fn frame_from_parts(header: &[u8], payload: &[u8]) -> Bytes {
    let frame_len = (HEADER_LEN_BYTES + header.len() + payload.len()) as u32;
    let mut frame = frame_len.to_be_bytes().to_vec();
    frame.extend_from_slice(&(header.len() as u32).to_be_bytes());
    frame.extend_from_slice(header);
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

fn produce_request() -> Request {
    Request::Produce(ProduceRequest {
        acks: Acks::All,
        timeout_ms: 1500,
        partitions: vec![
            ProducePartition {
                topic: "a".into(),
                partition: 0,
                records: Bytes::from("xyz"),
            },
            ProducePartition {
                topic: "b".into(),
                partition: 7,
                records: Bytes::new(),
            },
            ProducePartition {
                topic: "a".into(),
                partition: 1,
                records: Bytes::from("0123"),
            },
        ],
    })
}

fn sample_requests() -> Vec<Request> {
    let fetch = FetchPartition {
        topic: "t".into(),
        partition: 3,
        offset: 42,
        max_bytes: 1 << 20,
    };
    let list = ListOffsetsPartition {
        topic: "t".into(),
        partition: 1,
        timestamp: -2,
    };
    let create = CreateTopic {
        name: "orders".into(),
        partitions: 12,
        configs: vec![("retention.ms".into(), "60000".into())],
    };
    vec![
        produce_request(),
        Request::Produce(ProduceRequest {
            acks: Acks::None,
            ..ProduceRequest::default()
        }),
        Request::Fetch(FetchRequest {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 50 << 20,
            partitions: vec![fetch],
        }),
        Request::ListOffsets(ListOffsetsRequest {
            partitions: vec![list],
        }),
        Request::CreateTopics(CreateTopicsRequest {
            topics: vec![create],
        }),
        Request::DeleteTopics(DeleteTopicsRequest {
            names: vec!["x".into(), "y".into()],
        }),
        Request::Metadata(MetadataRequest::default()),
        Request::Metadata(MetadataRequest {
            topics: vec!["orders".into()],
        }),
    ]
    .into_iter()
    .chain(group_requests())
    .collect()
}

fn group_requests() -> Vec<Request> {
    let protocol = |name: &str, metadata: &'static [u8]| GroupProtocol {
        name: name.into(),
        metadata: Bytes::from_static(metadata),
    };
    let join = JoinGroupRequest {
        group_id: "g".into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 30_000,
        member_id: String::new(),
        group_instance_id: Some("i-1".into()),
        protocol_type: "consumer".into(),
        protocols: vec![protocol("range", b"\x00\x01t"), protocol("none", b"")],
        client_id: "sluice-consume".into(),
    };
    let sync = SyncGroupRequest {
        group_id: "g".into(),
        generation_id: 3,
        member_id: "m-1".into(),
        group_instance_id: None,
        protocol_type: "consumer".into(),
        protocol_name: "range".into(),
        assignments: vec![GroupAssignment {
            member_id: "m-1".into(),
            assignment: Bytes::from_static(b"\x00\x02"),
        }],
    };
    let commit = OffsetCommitPartition {
        topic: "t".into(),
        partition: 2,
        offset: 99,
        leader_epoch: -1,
        metadata: "note".into(),
    };
    vec![
        Request::JoinGroup(join),
        Request::JoinGroup(JoinGroupRequest {
            group_id: String::new(),
            ..JoinGroupRequest::default()
        }),
        Request::SyncGroup(sync),
        Request::Heartbeat(HeartbeatRequest {
            group_id: "g".into(),
            generation_id: 3,
            member_id: "m-1".into(),
            group_instance_id: Some(String::new()),
        }),
        Request::LeaveGroup(LeaveGroupRequest {
            group_id: "g".into(),
            members: vec![LeavingMember {
                member_id: "m-1".into(),
                group_instance_id: None,
            }],
        }),
        Request::OffsetCommit(OffsetCommitRequest {
            group_id: "g".into(),
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            partitions: vec![commit],
        }),
        Request::OffsetFetch(OffsetFetchRequest {
            group_id: "g".into(),
            partitions: vec![OffsetFetchPartition {
                topic: "t".into(),
                partition: 2,
            }],
            require_stable: true,
        }),
        Request::OffsetFetch(OffsetFetchRequest::default()),
    ]
}

fn group_bodies() -> Vec<ResponseBody> {
    let member = JoinGroupMember {
        member_id: "m-1".into(),
        group_instance_id: None,
        metadata: Bytes::from_static(b"meta"),
    };
    let join = JoinGroupResponse {
        error: ErrorCode::NONE,
        generation_id: 4,
        protocol_type: "consumer".into(),
        protocol_name: "range".into(),
        leader: "m-1".into(),
        member_id: "m-1".into(),
        members: vec![member],
    };
    let fetched = OffsetFetchPartitionResponse {
        topic: "t".into(),
        partition: 1,
        error: ErrorCode::NONE,
        offset: 1234,
        leader_epoch: 2,
        metadata: String::new(),
    };
    vec![
        ResponseBody::JoinGroup(join),
        ResponseBody::JoinGroup(JoinGroupResponse {
            error: ErrorCode(79),
            generation_id: -1,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: String::new(),
            member_id: "new-id".into(),
            members: vec![],
        }),
        ResponseBody::SyncGroup(SyncGroupResponse {
            error: ErrorCode::NONE,
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            assignment: Bytes::from_static(b"\x00\x00\x00\x01"),
        }),
        ResponseBody::Heartbeat(HeartbeatResponse {
            error: ErrorCode(27),
        }),
        ResponseBody::LeaveGroup(LeaveGroupResponse {
            error: ErrorCode::NONE,
            members: vec![LeavingMemberResponse {
                member_id: "m-1".into(),
                group_instance_id: Some("i".into()),
                error: ErrorCode(25),
            }],
        }),
        ResponseBody::OffsetCommit(OffsetCommitResponse {
            partitions: vec![OffsetCommitPartitionResponse {
                topic: "t".into(),
                partition: 0,
                error: ErrorCode(22),
            }],
        }),
        ResponseBody::OffsetFetch(OffsetFetchResponse {
            error: ErrorCode::NONE,
            partitions: vec![fetched],
        }),
    ]
}

fn fetch_response() -> ResponseBody {
    let partition = |partition: u32, records: Vec<Bytes>| FetchPartitionResponse {
        topic: "t".into(),
        partition,
        error: ErrorCode::NONE,
        high_watermark: 10,
        log_start_offset: 0,
        log_end_offset: 11,
        records,
    };
    ResponseBody::Fetch(FetchResponse {
        partitions: vec![
            partition(0, vec![Bytes::from("abc")]),
            partition(1, vec![]),
            partition(2, vec![Bytes::from("de"), Bytes::new(), Bytes::from("fgh")]),
        ],
    })
}

fn metadata_response() -> ResponseBody {
    let partition = PartitionMetadata {
        partition: 0,
        shard: 3,
        leader_epoch: 2,
        error: ErrorCode::NONE,
    };
    ResponseBody::Metadata(MetadataResponse {
        node_id: 1,
        bootstrap_host: "localhost".into(),
        bootstrap_port: 9192,
        shards: vec![ShardAddress {
            shard: 3,
            host: "10.0.0.1".into(),
            port: 9195,
        }],
        topics: vec![TopicMetadata {
            name: "t".into(),
            error: ErrorCode::NONE,
            partitions: vec![partition],
            configs: vec![("cleanup.policy".into(), "delete".into())],
        }],
    })
}

fn sample_bodies() -> Vec<ResponseBody> {
    let produced = ProducePartitionResponse {
        topic: "t".into(),
        partition: 2,
        error: ErrorCode::NONE,
        base_offset: 100,
        log_start_offset: 0,
        error_message: None,
    };
    let listed = ListOffsetsPartitionResponse {
        topic: "t".into(),
        partition: 2,
        error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
        offset: -1,
        timestamp: -1,
    };
    let result = |error, message: &str| TopicResult {
        name: "t".into(),
        error,
        message: message.into(),
    };
    vec![
        ResponseBody::Produce(ProduceResponse {
            partitions: vec![
                produced.clone(),
                ProducePartitionResponse {
                    partition: 3,
                    error: ErrorCode::CORRUPT_MESSAGE,
                    base_offset: -1,
                    error_message: Some("invalid batch: CRC mismatch".into()),
                    ..produced
                },
            ],
        }),
        fetch_response(),
        ResponseBody::ListOffsets(ListOffsetsResponse {
            partitions: vec![listed],
        }),
        ResponseBody::CreateTopics(CreateTopicsResponse {
            topics: vec![
                result(ErrorCode::TOPIC_ALREADY_EXISTS, "exists"),
                result(ErrorCode::NONE, ""),
            ],
        }),
        ResponseBody::DeleteTopics(DeleteTopicsResponse {
            topics: vec![result(ErrorCode::NONE, "")],
        }),
        metadata_response(),
        ResponseBody::Metadata(MetadataResponse::default()),
    ]
    .into_iter()
    .chain(group_bodies())
    .collect()
}

fn sample_responses() -> Vec<Response> {
    let mut responses: Vec<Response> = sample_bodies()
        .into_iter()
        .enumerate()
        .map(|(i, body)| Response {
            correlation_id: i as u32 + 1,
            error: ErrorCode::NONE,
            message: String::new(),
            body,
        })
        .collect();
    responses.push(Response::error(
        99,
        ErrorCode::INVALID_REQUEST,
        "bad header",
    ));
    responses
}

/// A decoded fetch response has one chunk per partition with records: the
/// encoder's chunks, joined.
fn normalise(response: &Response) -> Response {
    let mut response = response.clone();
    if let ResponseBody::Fetch(fetch) = &mut response.body {
        for p in &mut fetch.partitions {
            let joined = concat(&p.records);
            p.records = if joined.is_empty() {
                vec![]
            } else {
                vec![joined]
            };
        }
    }
    response
}

fn sample_frames() -> Vec<Bytes> {
    let requests = sample_requests()
        .into_iter()
        .map(|r| concat(&encode_request(5, &r)));
    let responses = sample_responses()
        .into_iter()
        .map(|r| concat(&encode_response(&r)));
    requests.chain(responses).collect()
}

#[test]
fn every_request_type_round_trips() {
    for (i, request) in sample_requests().into_iter().enumerate() {
        let frame = concat(&encode_request(i as u32, &request));
        assert_eq!(decode_request(frame), Ok((i as u32, request)));
    }
}

#[test]
fn every_response_type_round_trips() {
    for response in sample_responses() {
        let frame = concat(&encode_response(&response));
        assert_eq!(decode_response(frame), Ok(normalise(&response)));
    }
}

#[test]
fn error_response_has_no_body() {
    let frame = concat(&encode_error_response(8, ErrorCode::INVALID_REQUEST, "why"));
    let expected = Response::error(8, ErrorCode::INVALID_REQUEST, "why");
    assert_eq!(decode_response(frame), Ok(expected));
}

#[test]
fn smallest_frames_are_above_the_minimum() {
    let request = Request::Metadata(MetadataRequest::default());
    let frames = [
        concat(&encode_request(0, &request)),
        concat(&encode_error_response(0, ErrorCode::NONE, "")),
    ];
    for frame in frames {
        assert!(frame.len() >= FRAME_BYTES_MIN, "{} bytes", frame.len());
    }
}

#[test]
fn produce_records_are_slices_of_the_frame_not_copies() {
    let frame = concat(&encode_request(1, &produce_request()));
    let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    let Ok((_, Request::Produce(produce))) = decode_request(frame.clone()) else {
        panic!("not a produce request");
    };
    for p in produce.partitions.iter().filter(|p| !p.records.is_empty()) {
        assert!(frame_range.contains(&(p.records.as_ptr() as usize)));
    }
}

#[test]
fn encoded_records_are_the_callers_chunks_not_copies() {
    let response = Response {
        correlation_id: 1,
        error: ErrorCode::NONE,
        message: String::new(),
        body: fetch_response(),
    };
    let chunks = encode_response(&response);
    let ResponseBody::Fetch(fetch) = &response.body else {
        unreachable!()
    };
    let given: Vec<&Bytes> = fetch
        .partitions
        .iter()
        .flat_map(|p| &p.records)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(chunks.len(), 1 + given.len());
    for (sent, given) in chunks[1..].iter().zip(given) {
        assert_eq!(sent.as_ptr(), given.as_ptr());
    }
}

#[test]
fn every_truncation_of_a_valid_frame_is_an_error() {
    for frame in sample_frames() {
        for cut in 0..frame.len() {
            let truncated = frame.slice(..cut);
            assert!(decode_request(truncated.clone()).is_err(), "cut at {cut}");
            assert!(decode_response(truncated).is_err(), "cut at {cut}");
        }
    }
}

/// A truncation whose length fields are rewritten to agree reaches the
/// verifier and the payload checks rather than the frame checks.
#[test]
fn every_truncated_header_with_consistent_lengths_is_an_error_or_a_value() {
    for frame in sample_frames() {
        let header_len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
        let header = &frame[8..8 + header_len];
        for cut in 0..header.len() {
            let truncated = frame_from_parts(&header[..cut], &frame[8 + header_len..]);
            // Either result is fine; reaching here without a panic is the test.
            let _ = decode_request(truncated.clone());
            let _ = decode_response(truncated);
        }
    }
}

#[test]
fn frame_len_waits_for_the_whole_prefix() {
    assert_eq!(frame_len(&[], FRAME_BYTES_MAX_DEFAULT), Ok(None));
    assert_eq!(frame_len(&[0, 0, 1], FRAME_BYTES_MAX_DEFAULT), Ok(None));
    assert_eq!(
        frame_len(&[0, 0, 1, 0], FRAME_BYTES_MAX_DEFAULT),
        Ok(Some(256 + 4))
    );
    assert_eq!(
        frame_len(&[0, 0, 1, 0, 9, 9], FRAME_BYTES_MAX_DEFAULT),
        Ok(Some(260))
    );
}

#[test]
fn frame_len_rejects_absurd_lengths() {
    let min = FRAME_BYTES_MIN;
    let too_small = ((min - FRAME_PREFIX_BYTES - 1) as u32).to_be_bytes();
    let e = FrameError::TooSmall {
        frame_bytes: min - 1,
        min,
    };
    assert_eq!(frame_len(&too_small, FRAME_BYTES_MAX_DEFAULT), Err(e));
    assert!(frame_len(&[0, 0, 0, 0], FRAME_BYTES_MAX_DEFAULT).is_err());
    let smallest = ((min - FRAME_PREFIX_BYTES) as u32).to_be_bytes();
    assert_eq!(frame_len(&smallest, FRAME_BYTES_MAX_DEFAULT), Ok(Some(min)));

    let huge = u32::MAX.to_be_bytes();
    let e = FrameError::TooLarge {
        frame_bytes: FRAME_BYTES_MAX_FORMAT,
        max: 1000,
    };
    assert_eq!(frame_len(&huge, 1000), Err(e));
    let at_max = ((1000 - FRAME_PREFIX_BYTES) as u32).to_be_bytes();
    assert_eq!(frame_len(&at_max, 1000), Ok(Some(1000)));
    let over_max = ((1001 - FRAME_PREFIX_BYTES) as u32).to_be_bytes();
    assert!(matches!(
        frame_len(&over_max, 1000),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn frame_whose_prefix_disagrees_with_its_length_is_an_error() {
    let frame = concat(&encode_request(3, &produce_request()));
    let mut longer = frame.to_vec();
    longer.push(0);
    let e = decode_request(Bytes::from(longer)).err();
    assert!(matches!(
        e.map(|e| e.kind),
        Some(DecodeErrorKind::FrameLength { .. })
    ));
}

#[test]
fn header_len_past_the_frame_is_an_error() {
    let mut frame = concat(&encode_request(3, &produce_request())).to_vec();
    frame[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = decode_request(Bytes::from(frame)).err();
    assert!(matches!(
        e.map(|e| e.kind),
        Some(DecodeErrorKind::HeaderLength { .. })
    ));
}

fn header_and_payload(frame: &Bytes) -> (Bytes, Bytes) {
    let header_len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    (
        frame.slice(8..8 + header_len),
        frame.slice(8 + header_len..),
    )
}

#[test]
fn produce_payload_longer_or_shorter_than_records_len_is_an_error() {
    let (header, payload) = header_and_payload(&concat(&encode_request(4, &produce_request())));
    let mut longer = payload.to_vec();
    longer.push(1);
    for bad in [&payload[..payload.len() - 1], &longer[..], &[][..]] {
        let e = decode_request(frame_from_parts(&header, bad)).err();
        let e = e.map(|e| (e.correlation_id, e.kind));
        assert!(
            matches!(e, Some((Some(4), DecodeErrorKind::PayloadLength { .. }))),
            "{e:?}"
        );
    }
}

#[test]
fn fetch_payload_longer_or_shorter_than_records_len_is_an_error() {
    let response = Response {
        correlation_id: 6,
        error: ErrorCode::NONE,
        message: String::new(),
        body: fetch_response(),
    };
    let (header, payload) = header_and_payload(&concat(&encode_response(&response)));
    let mut longer = payload.to_vec();
    longer.push(1);
    for bad in [&payload[..payload.len() - 1], &longer[..]] {
        let e = decode_response(frame_from_parts(&header, bad)).err();
        assert!(matches!(
            e.map(|e| e.kind),
            Some(DecodeErrorKind::PayloadLength { .. })
        ));
    }
}

#[test]
fn payload_on_a_request_without_records_is_an_error() {
    let request = Request::Metadata(MetadataRequest::default());
    let (header, _) = header_and_payload(&concat(&encode_request(2, &request)));
    let e = decode_request(frame_from_parts(&header, b"junk")).err();
    assert!(matches!(
        e.map(|e| e.kind),
        Some(DecodeErrorKind::PayloadLength { .. })
    ));
}

fn finish_request(fbb: &mut FlatBufferBuilder<'_>, body_type: fb::RequestBody, body: bool) {
    let body = body.then(|| {
        let args = fb::MetadataRequestArgs { topics: None };
        fb::MetadataRequest::create(fbb, &args).as_union_value()
    });
    let root = fb::Request::create(
        fbb,
        &fb::RequestArgs {
            correlation_id: 77,
            body_type,
            body,
        },
    );
    fbb.finish(root, None);
}

#[test]
fn unknown_body_type_is_unsupported_with_its_correlation_id() {
    let mut fbb = FlatBufferBuilder::new();
    finish_request(&mut fbb, fb::RequestBody(200), true);
    let e = decode_request(frame_from_parts(fbb.finished_data(), b"")).err();
    let e = e.map(|e| (e.correlation_id, e.error_code(), e.kind));
    let want = (
        Some(77),
        ErrorCode::UNSUPPORTED_VERSION,
        DecodeErrorKind::BodyUnknown { tag: 200 },
    );
    assert_eq!(e, Some(want));
}

#[test]
fn missing_body_is_invalid_with_its_correlation_id() {
    let mut fbb = FlatBufferBuilder::new();
    finish_request(&mut fbb, fb::RequestBody::NONE, false);
    let e = decode_request(frame_from_parts(fbb.finished_data(), b"")).err();
    let e = e.map(|e| (e.correlation_id, e.error_code(), e.kind));
    let want = (
        Some(77),
        ErrorCode::INVALID_REQUEST,
        DecodeErrorKind::BodyMissing,
    );
    assert_eq!(e, Some(want));
}

/// A body type without its body fails verification; the id survives.
#[test]
fn body_type_without_body_is_invalid_with_its_correlation_id() {
    let mut fbb = FlatBufferBuilder::new();
    finish_request(&mut fbb, fb::RequestBody::MetadataRequest, false);
    let e = decode_request(frame_from_parts(fbb.finished_data(), b"")).err();
    let e = e.map(|e| (e.correlation_id, e.error_code()));
    assert_eq!(e, Some((Some(77), ErrorCode::INVALID_REQUEST)));
}

#[test]
fn unknown_acks_is_invalid_required_acks() {
    let mut fbb = FlatBufferBuilder::new();
    let args = fb::ProduceRequestArgs {
        acks: fb::Acks(5),
        timeout_ms: 0,
        partitions: None,
    };
    let body = fb::ProduceRequest::create(&mut fbb, &args).as_union_value();
    let body_type = fb::RequestBody::ProduceRequest;
    let args = fb::RequestArgs {
        correlation_id: 12,
        body_type,
        body: Some(body),
    };
    let root = fb::Request::create(&mut fbb, &args);
    fbb.finish(root, None);
    let e = decode_request(frame_from_parts(fbb.finished_data(), b"")).err();
    assert_eq!(
        e.as_ref().map(DecodeError::error_code),
        Some(ErrorCode::INVALID_REQUIRED_ACKS)
    );
    assert_eq!(e.and_then(|e| e.correlation_id), Some(12));
}

/// A body that fails verification (here a topic that is not UTF-8) still
/// gives the correlation id, so the server can answer INVALID_REQUEST.
#[test]
fn header_failing_verification_still_gives_its_correlation_id() {
    let mut fbb = FlatBufferBuilder::new();
    let not_utf8 = fbb.create_vector(&[0xffu8, 0xfe, 0]);
    let topic = Some(flatbuffers::WIPOffset::new(not_utf8.value()));
    let partition = fb::ProducePartitionArgs {
        topic,
        partition: 0,
        records_len: 0,
    };
    let partition = fb::ProducePartition::create(&mut fbb, &partition);
    let partitions = Some(fbb.create_vector(&[partition]));
    let args = fb::ProduceRequestArgs {
        acks: fb::Acks::Leader,
        timeout_ms: 0,
        partitions,
    };
    let body = fb::ProduceRequest::create(&mut fbb, &args).as_union_value();
    let body_type = fb::RequestBody::ProduceRequest;
    let args = fb::RequestArgs {
        correlation_id: 31,
        body_type,
        body: Some(body),
    };
    let root = fb::Request::create(&mut fbb, &args);
    fbb.finish(root, None);
    let e = decode_request(frame_from_parts(fbb.finished_data(), b"")).err();
    assert!(matches!(
        e,
        Some(DecodeError {
            correlation_id: Some(31),
            kind: DecodeErrorKind::Header(_)
        })
    ));
}

/// A header whose vector points many times at one long string would decode
/// into far more memory than it occupies; the verifier's apparent-size bound
/// rejects it.
#[test]
fn header_of_shared_references_cannot_amplify_allocation() {
    let mut fbb = FlatBufferBuilder::new();
    let long = fbb.create_string(&"x".repeat(10_000));
    let topics = Some(fbb.create_vector(&vec![long; 10_000]));
    let body = fb::MetadataRequest::create(&mut fbb, &fb::MetadataRequestArgs { topics });
    let body_type = fb::RequestBody::MetadataRequest;
    let args = fb::RequestArgs {
        correlation_id: 1,
        body_type,
        body: Some(body.as_union_value()),
    };
    let root = fb::Request::create(&mut fbb, &args);
    fbb.finish(root, None);
    let header = fbb.finished_data();
    assert!(header.len() < 100_000, "the header itself is small");
    let e = decode_request(frame_from_parts(header, b"")).err();
    let kind = e.map(|e| e.kind);
    assert_eq!(
        kind,
        Some(DecodeErrorKind::Header(
            InvalidFlatbuffer::ApparentSizeTooLarge
        ))
    );
}

/// Many small tables, legitimately sharing one vtable, stay under the bound.
#[test]
fn large_valid_metadata_response_round_trips() {
    let partitions: Vec<PartitionMetadata> = (0..20_000)
        .map(|partition| PartitionMetadata {
            partition,
            shard: 0,
            leader_epoch: 0,
            error: ErrorCode::NONE,
        })
        .collect();
    let topic = TopicMetadata {
        name: "t".into(),
        error: ErrorCode::NONE,
        partitions,
        configs: vec![],
    };
    let body = ResponseBody::Metadata(MetadataResponse {
        topics: vec![topic],
        ..MetadataResponse::default()
    });
    let response = Response {
        correlation_id: 1,
        error: ErrorCode::NONE,
        message: String::new(),
        body,
    };
    let frame = concat(&encode_response(&response));
    assert_eq!(decode_response(frame), Ok(response));
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_acks() -> impl Strategy<Value = Acks> {
    prop_oneof![Just(Acks::None), Just(Acks::Leader), Just(Acks::All)]
}

fn arb_produce() -> impl Strategy<Value = Request> {
    let partition =
        (".{0,12}", any::<u32>(), arb_bytes(64)).prop_map(|(topic, partition, records)| {
            ProducePartition {
                topic,
                partition,
                records,
            }
        });
    (
        arb_acks(),
        any::<u32>(),
        proptest::collection::vec(partition, 0..6),
    )
        .prop_map(|(acks, timeout_ms, partitions)| {
            Request::Produce(ProduceRequest {
                acks,
                timeout_ms,
                partitions,
            })
        })
}

fn arb_fetch_response() -> impl Strategy<Value = Response> {
    let chunks = proptest::collection::vec(arb_bytes(32), 0..3);
    let partition = (
        ".{0,12}",
        any::<u32>(),
        any::<i16>(),
        any::<[i64; 3]>(),
        chunks,
    )
        .prop_map(
            |(
                topic,
                partition,
                error,
                [high_watermark, log_start_offset, log_end_offset],
                records,
            )| {
                FetchPartitionResponse {
                    topic,
                    partition,
                    error: ErrorCode(error),
                    high_watermark,
                    log_start_offset,
                    log_end_offset,
                    records,
                }
            },
        );
    (any::<u32>(), proptest::collection::vec(partition, 0..6)).prop_map(
        |(correlation_id, partitions)| Response {
            correlation_id,
            error: ErrorCode::NONE,
            message: String::new(),
            body: ResponseBody::Fetch(FetchResponse { partitions }),
        },
    )
}

fn arb_optional_string() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(".{0,8}")
}

fn arb_join_group() -> impl Strategy<Value = Request> {
    let protocol =
        (".{0,8}", arb_bytes(16)).prop_map(|(name, metadata)| GroupProtocol { name, metadata });
    let ids = (
        ".{0,8}",
        ".{0,8}",
        arb_optional_string(),
        ".{0,8}",
        ".{0,8}",
    );
    let timeouts = any::<[i32; 2]>();
    let protocols = proptest::collection::vec(protocol, 0..4);
    (ids, timeouts, protocols).prop_map(
        |((group_id, member_id, group_instance_id, protocol_type, client_id), t, protocols)| {
            Request::JoinGroup(JoinGroupRequest {
                group_id,
                session_timeout_ms: t[0],
                rebalance_timeout_ms: t[1],
                member_id,
                group_instance_id,
                protocol_type,
                protocols,
                client_id,
            })
        },
    )
}

fn arb_offset_commit() -> impl Strategy<Value = Request> {
    let partition = (".{0,8}", any::<u32>(), any::<i64>(), any::<i32>(), ".{0,8}").prop_map(
        |(topic, partition, offset, leader_epoch, metadata)| OffsetCommitPartition {
            topic,
            partition,
            offset,
            leader_epoch,
            metadata,
        },
    );
    let ids = (".{0,8}", any::<i32>(), ".{0,8}", arb_optional_string());
    (ids, proptest::collection::vec(partition, 0..6)).prop_map(
        |((group_id, generation_id, member_id, group_instance_id), partitions)| {
            Request::OffsetCommit(OffsetCommitRequest {
                group_id,
                generation_id,
                member_id,
                group_instance_id,
                partitions,
            })
        },
    )
}

fn arb_join_group_response() -> impl Strategy<Value = Response> {
    let member = (".{0,8}", arb_optional_string(), arb_bytes(16)).prop_map(
        |(member_id, group_instance_id, metadata)| JoinGroupMember {
            member_id,
            group_instance_id,
            metadata,
        },
    );
    let names = (".{0,8}", ".{0,8}", ".{0,8}", ".{0,8}");
    let members = proptest::collection::vec(member, 0..4);
    (any::<u32>(), any::<i16>(), any::<i32>(), names, members).prop_map(
        |(correlation_id, error, generation_id, names, members)| {
            let (protocol_type, protocol_name, leader, member_id) = names;
            Response {
                correlation_id,
                error: ErrorCode::NONE,
                message: String::new(),
                body: ResponseBody::JoinGroup(JoinGroupResponse {
                    error: ErrorCode(error),
                    generation_id,
                    protocol_type,
                    protocol_name,
                    leader,
                    member_id,
                    members,
                }),
            }
        },
    )
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in arb_bytes(512)) {
        let _ = decode_request(bytes.clone());
        let _ = decode_response(bytes);
    }

    /// Random headers behind consistent length fields reach the verifier.
    #[test]
    fn random_headers_never_panic(header in arb_bytes(512), payload in arb_bytes(16)) {
        let frame = frame_from_parts(&header, &payload);
        let _ = decode_request(frame.clone());
        let _ = decode_response(frame);
    }

    /// Valid frames with bytes overwritten explore near-valid headers.
    #[test]
    fn corrupted_frames_never_panic(
        index in 0..sample_frames().len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut frame = sample_frames()[index].to_vec();
        for (at, byte) in edits {
            let len = frame.len();
            frame[at % len] = byte;
        }
        let _ = decode_request(Bytes::from(frame.clone()));
        let _ = decode_response(Bytes::from(frame));
    }

    #[test]
    fn random_produce_requests_round_trip(id in any::<u32>(), request in arb_produce()) {
        let frame = concat(&encode_request(id, &request));
        prop_assert_eq!(decode_request(frame), Ok((id, request)));
    }

    #[test]
    fn random_group_requests_round_trip(
        id in any::<u32>(),
        request in prop_oneof![arb_join_group(), arb_offset_commit()],
    ) {
        let frame = concat(&encode_request(id, &request));
        prop_assert_eq!(decode_request(frame), Ok((id, request)));
    }

    #[test]
    fn random_join_group_responses_round_trip(response in arb_join_group_response()) {
        let frame = concat(&encode_response(&response));
        prop_assert_eq!(decode_response(frame), Ok(response));
    }

    #[test]
    fn random_fetch_responses_round_trip(response in arb_fetch_response()) {
        let frame = concat(&encode_response(&response));
        prop_assert_eq!(decode_response(frame), Ok(normalise(&response)));
    }
}
