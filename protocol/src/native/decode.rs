//! Verified FlatBuffers headers to owned messages.
//!
//! The verifier has already checked every offset, string and required field,
//! so reading the header cannot fail; what can still be wrong is what the
//! schema cannot say: a missing or unknown body, an unknown `acks`, and
//! `records_len` that do not add up to the payload.

use bytes::Bytes;
use flatbuffers::{Follow, ForwardsUOffset, Vector};

use super::codec::DecodeErrorKind;
use super::fb;
use super::message::*;
use crate::ErrorCode;

type TableVec<'a, T> = Option<Vector<'a, ForwardsUOffset<T>>>;

pub(super) fn request(
    header: &fb::Request<'_>,
    payload: Bytes,
) -> Result<Request, DecodeErrorKind> {
    let body_type = header.body_type();
    if body_type == fb::RequestBody::ProduceRequest {
        let body = header
            .body_as_produce_request()
            .ok_or(DecodeErrorKind::BodyMissing)?;
        return produce_request(&body, payload).map(Request::Produce);
    }
    payload_empty(&payload)?;
    let missing = DecodeErrorKind::BodyMissing;
    let request = match body_type {
        fb::RequestBody::FetchRequest => Request::Fetch(fetch_request(
            &header.body_as_fetch_request().ok_or(missing)?,
        )),
        fb::RequestBody::ListOffsetsRequest => {
            let body = header.body_as_list_offsets_request().ok_or(missing)?;
            Request::ListOffsets(list_offsets_request(&body))
        }
        fb::RequestBody::CreateTopicsRequest => {
            let body = header.body_as_create_topics_request().ok_or(missing)?;
            Request::CreateTopics(create_topics_request(&body))
        }
        fb::RequestBody::DeleteTopicsRequest => {
            let body = header.body_as_delete_topics_request().ok_or(missing)?;
            Request::DeleteTopics(DeleteTopicsRequest {
                names: strings(body.names()),
            })
        }
        fb::RequestBody::MetadataRequest => {
            let body = header.body_as_metadata_request().ok_or(missing)?;
            Request::Metadata(MetadataRequest {
                topics: strings(body.topics()),
            })
        }
        fb::RequestBody::NONE => return Err(missing),
        other => return group_request(header, other),
    };
    Ok(request)
}

/// The consumer-group bodies, which have no payload.
fn group_request(
    header: &fb::Request<'_>,
    body_type: fb::RequestBody,
) -> Result<Request, DecodeErrorKind> {
    let missing = DecodeErrorKind::BodyMissing;
    let request = match body_type {
        fb::RequestBody::JoinGroupRequest => Request::JoinGroup(join_group_request(
            &header.body_as_join_group_request().ok_or(missing)?,
        )),
        fb::RequestBody::SyncGroupRequest => Request::SyncGroup(sync_group_request(
            &header.body_as_sync_group_request().ok_or(missing)?,
        )),
        fb::RequestBody::HeartbeatRequest => {
            let r = header.body_as_heartbeat_request().ok_or(missing)?;
            Request::Heartbeat(HeartbeatRequest {
                group_id: r.group_id().to_owned(),
                generation_id: r.generation_id(),
                member_id: string(r.member_id()),
                group_instance_id: optional_string(r.group_instance_id()),
            })
        }
        fb::RequestBody::LeaveGroupRequest => {
            let r = header.body_as_leave_group_request().ok_or(missing)?;
            Request::LeaveGroup(LeaveGroupRequest {
                group_id: r.group_id().to_owned(),
                members: list(r.members(), |m| LeavingMember {
                    member_id: string(m.member_id()),
                    group_instance_id: optional_string(m.group_instance_id()),
                }),
            })
        }
        fb::RequestBody::OffsetCommitRequest => Request::OffsetCommit(offset_commit_request(
            &header.body_as_offset_commit_request().ok_or(missing)?,
        )),
        fb::RequestBody::OffsetFetchRequest => {
            let r = header.body_as_offset_fetch_request().ok_or(missing)?;
            Request::OffsetFetch(OffsetFetchRequest {
                group_id: r.group_id().to_owned(),
                partitions: list(r.partitions(), |p| OffsetFetchPartition {
                    topic: p.topic().to_owned(),
                    partition: p.partition(),
                }),
                require_stable: r.require_stable(),
            })
        }
        unknown => return Err(DecodeErrorKind::BodyUnknown { tag: unknown.0 }),
    };
    Ok(request)
}

pub(super) fn response(
    header: &fb::Response<'_>,
    payload: Bytes,
) -> Result<Response, DecodeErrorKind> {
    let body = if header.body_type() == fb::ResponseBody::FetchResponse {
        let body = header
            .body_as_fetch_response()
            .ok_or(DecodeErrorKind::BodyMissing)?;
        ResponseBody::Fetch(fetch_response(&body, payload)?)
    } else {
        payload_empty(&payload)?;
        response_body(header)?
    };
    Ok(Response {
        correlation_id: header.correlation_id(),
        error: ErrorCode(header.error()),
        message: header.message().unwrap_or_default().to_owned(),
        body,
    })
}

/// Every body but Fetch, which has a payload.
fn response_body(header: &fb::Response<'_>) -> Result<ResponseBody, DecodeErrorKind> {
    let missing = DecodeErrorKind::BodyMissing;
    let body = match header.body_type() {
        fb::ResponseBody::ProduceResponse => ResponseBody::Produce(produce_response(
            &header.body_as_produce_response().ok_or(missing)?,
        )),
        fb::ResponseBody::ListOffsetsResponse => {
            let body = header.body_as_list_offsets_response().ok_or(missing)?;
            ResponseBody::ListOffsets(list_offsets_response(&body))
        }
        fb::ResponseBody::CreateTopicsResponse => {
            let body = header.body_as_create_topics_response().ok_or(missing)?;
            ResponseBody::CreateTopics(CreateTopicsResponse {
                topics: topic_results(body.topics()),
            })
        }
        fb::ResponseBody::DeleteTopicsResponse => {
            let body = header.body_as_delete_topics_response().ok_or(missing)?;
            ResponseBody::DeleteTopics(DeleteTopicsResponse {
                topics: topic_results(body.topics()),
            })
        }
        fb::ResponseBody::MetadataResponse => ResponseBody::Metadata(metadata_response(
            &header.body_as_metadata_response().ok_or(missing)?,
        )),
        fb::ResponseBody::NONE => ResponseBody::Error,
        other => return group_response(header, other),
    };
    Ok(body)
}

/// The consumer-group bodies.
fn group_response(
    header: &fb::Response<'_>,
    body_type: fb::ResponseBody,
) -> Result<ResponseBody, DecodeErrorKind> {
    let missing = DecodeErrorKind::BodyMissing;
    let body = match body_type {
        fb::ResponseBody::JoinGroupResponse => ResponseBody::JoinGroup(join_group_response(
            &header.body_as_join_group_response().ok_or(missing)?,
        )),
        fb::ResponseBody::SyncGroupResponse => {
            let r = header.body_as_sync_group_response().ok_or(missing)?;
            ResponseBody::SyncGroup(SyncGroupResponse {
                error: ErrorCode(r.error()),
                protocol_type: string(r.protocol_type()),
                protocol_name: string(r.protocol_name()),
                assignment: bytes(r.assignment()),
            })
        }
        fb::ResponseBody::HeartbeatResponse => {
            let r = header.body_as_heartbeat_response().ok_or(missing)?;
            ResponseBody::Heartbeat(HeartbeatResponse {
                error: ErrorCode(r.error()),
            })
        }
        fb::ResponseBody::LeaveGroupResponse => {
            let r = header.body_as_leave_group_response().ok_or(missing)?;
            ResponseBody::LeaveGroup(LeaveGroupResponse {
                error: ErrorCode(r.error()),
                members: list(r.members(), |m| LeavingMemberResponse {
                    member_id: string(m.member_id()),
                    group_instance_id: optional_string(m.group_instance_id()),
                    error: ErrorCode(m.error()),
                }),
            })
        }
        fb::ResponseBody::OffsetCommitResponse => {
            let r = header.body_as_offset_commit_response().ok_or(missing)?;
            ResponseBody::OffsetCommit(OffsetCommitResponse {
                partitions: list(r.partitions(), |p| OffsetCommitPartitionResponse {
                    topic: p.topic().to_owned(),
                    partition: p.partition(),
                    error: ErrorCode(p.error()),
                }),
            })
        }
        fb::ResponseBody::OffsetFetchResponse => ResponseBody::OffsetFetch(offset_fetch_response(
            &header.body_as_offset_fetch_response().ok_or(missing)?,
        )),
        unknown => return Err(DecodeErrorKind::BodyUnknown { tag: unknown.0 }),
    };
    Ok(body)
}

/// Converts each element of an optional vector; absent reads as empty. The
/// verifier bounded the vector's length by the header's, so the allocation is
/// bounded too.
fn list<'a, T, U>(v: Option<Vector<'a, T>>, convert: impl FnMut(T::Inner) -> U) -> Vec<U>
where
    T: Follow<'a> + 'a,
{
    v.map(|v| v.iter().map(convert).collect())
        .unwrap_or_default()
}

fn strings(v: TableVec<'_, &str>) -> Vec<String> {
    list(v, str::to_owned)
}

/// An absent string reads as empty.
fn string(s: Option<&str>) -> String {
    s.unwrap_or_default().to_owned()
}

fn optional_string(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

/// A copy: these bytes are member metadata and assignments, small and rare,
/// and a copy keeps the decoded message independent of the frame.
fn bytes(v: Option<Vector<'_, u8>>) -> Bytes {
    v.map(|v| Bytes::copy_from_slice(v.bytes()))
        .unwrap_or_default()
}

fn configs(v: TableVec<'_, fb::Config<'_>>) -> Vec<(String, String)> {
    list(v, |c| (c.key().to_owned(), c.value().to_owned()))
}

fn payload_empty(payload: &Bytes) -> Result<(), DecodeErrorKind> {
    if payload.is_empty() {
        return Ok(());
    }
    Err(DecodeErrorKind::PayloadLength {
        declared_bytes: 0,
        actual_bytes: payload.len(),
    })
}

/// Hands out consecutive slices of a payload whose length has been checked
/// against the sum of the slices' lengths.
struct Payload {
    bytes: Bytes,
    position: usize,
}

impl Payload {
    /// Checks that `lens` add up to exactly the payload's length.
    fn new(bytes: Bytes, lens: impl Iterator<Item = u32>) -> Result<Payload, DecodeErrorKind> {
        let declared_bytes: u64 = lens.map(u64::from).sum();
        if declared_bytes != bytes.len() as u64 {
            let actual_bytes = bytes.len();
            return Err(DecodeErrorKind::PayloadLength {
                declared_bytes,
                actual_bytes,
            });
        }
        Ok(Payload { bytes, position: 0 })
    }

    /// The next `len` bytes, uncopied. Clamped to the payload, though
    /// [`Payload::new`] has made that unnecessary.
    fn take(&mut self, len: u32) -> Bytes {
        let end = self
            .position
            .saturating_add(len as usize)
            .min(self.bytes.len());
        let chunk = self.bytes.slice(self.position..end);
        self.position = end;
        chunk
    }
}

fn acks(acks: fb::Acks) -> Result<Acks, DecodeErrorKind> {
    match acks {
        fb::Acks::None => Ok(Acks::None),
        fb::Acks::Leader => Ok(Acks::Leader),
        fb::Acks::All => Ok(Acks::All),
        unknown => Err(DecodeErrorKind::AcksUnknown { acks: unknown.0 }),
    }
}

fn produce_request(
    r: &fb::ProduceRequest<'_>,
    payload: Bytes,
) -> Result<ProduceRequest, DecodeErrorKind> {
    let lens = r
        .partitions()
        .into_iter()
        .flatten()
        .map(|p| p.records_len());
    let mut payload = Payload::new(payload, lens)?;
    let partitions = list(r.partitions(), |p| ProducePartition {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        records: payload.take(p.records_len()),
    });
    Ok(ProduceRequest {
        acks: acks(r.acks())?,
        timeout_ms: r.timeout_ms(),
        partitions,
    })
}

fn produce_response(r: &fb::ProduceResponse<'_>) -> ProduceResponse {
    let partitions = list(r.partitions(), |p| ProducePartitionResponse {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        error: ErrorCode(p.error()),
        base_offset: p.base_offset(),
        log_start_offset: p.log_start_offset(),
        error_message: p.error_message().map(str::to_owned),
    });
    ProduceResponse { partitions }
}

fn fetch_request(r: &fb::FetchRequest<'_>) -> FetchRequest {
    let partitions = list(r.partitions(), |p| FetchPartition {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        offset: p.offset(),
        max_bytes: p.max_bytes(),
    });
    FetchRequest {
        max_wait_ms: r.max_wait_ms(),
        min_bytes: r.min_bytes(),
        max_bytes: r.max_bytes(),
        partitions,
    }
}

fn fetch_response(
    r: &fb::FetchResponse<'_>,
    payload: Bytes,
) -> Result<FetchResponse, DecodeErrorKind> {
    let lens = r
        .partitions()
        .into_iter()
        .flatten()
        .map(|p| p.records_len());
    let mut payload = Payload::new(payload, lens)?;
    let partitions = list(r.partitions(), |p| {
        let records = payload.take(p.records_len());
        FetchPartitionResponse {
            topic: p.topic().to_owned(),
            partition: p.partition(),
            error: ErrorCode(p.error()),
            high_watermark: p.high_watermark(),
            log_start_offset: p.log_start_offset(),
            log_end_offset: p.log_end_offset(),
            records: if records.is_empty() {
                Vec::new()
            } else {
                vec![records]
            },
        }
    });
    Ok(FetchResponse { partitions })
}

fn list_offsets_request(r: &fb::ListOffsetsRequest<'_>) -> ListOffsetsRequest {
    let partitions = list(r.partitions(), |p| ListOffsetsPartition {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        timestamp: p.timestamp(),
    });
    ListOffsetsRequest { partitions }
}

fn list_offsets_response(r: &fb::ListOffsetsResponse<'_>) -> ListOffsetsResponse {
    let partitions = list(r.partitions(), |p| ListOffsetsPartitionResponse {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        error: ErrorCode(p.error()),
        offset: p.offset(),
        timestamp: p.timestamp(),
    });
    ListOffsetsResponse { partitions }
}

fn create_topics_request(r: &fb::CreateTopicsRequest<'_>) -> CreateTopicsRequest {
    let topics = list(r.topics(), |t| CreateTopic {
        name: t.name().to_owned(),
        partitions: t.partitions(),
        configs: configs(t.configs()),
    });
    CreateTopicsRequest { topics }
}

fn topic_results(v: TableVec<'_, fb::TopicResult<'_>>) -> Vec<TopicResult> {
    list(v, |t| TopicResult {
        name: t.name().to_owned(),
        error: ErrorCode(t.error()),
        message: t.message().unwrap_or_default().to_owned(),
    })
}

fn metadata_response(r: &fb::MetadataResponse<'_>) -> MetadataResponse {
    let shards = list(r.shards(), |s| ShardAddress {
        shard: s.shard(),
        host: s.host().to_owned(),
        port: s.port(),
    });
    let topics = list(r.topics(), |t| TopicMetadata {
        name: t.name().to_owned(),
        error: ErrorCode(t.error()),
        partitions: list(t.partitions(), |p| PartitionMetadata {
            partition: p.partition(),
            shard: p.shard(),
            leader_epoch: p.leader_epoch(),
            error: ErrorCode(p.error()),
        }),
        configs: configs(t.configs()),
    });
    MetadataResponse {
        node_id: r.node_id(),
        bootstrap_host: r.bootstrap_host().unwrap_or_default().to_owned(),
        bootstrap_port: r.bootstrap_port(),
        shards,
        topics,
    }
}

fn join_group_request(r: &fb::JoinGroupRequest<'_>) -> JoinGroupRequest {
    JoinGroupRequest {
        group_id: r.group_id().to_owned(),
        session_timeout_ms: r.session_timeout_ms(),
        rebalance_timeout_ms: r.rebalance_timeout_ms(),
        member_id: string(r.member_id()),
        group_instance_id: optional_string(r.group_instance_id()),
        protocol_type: string(r.protocol_type()),
        protocols: list(r.protocols(), |p| GroupProtocol {
            name: p.name().to_owned(),
            metadata: bytes(p.metadata()),
        }),
        client_id: string(r.client_id()),
    }
}

fn join_group_response(r: &fb::JoinGroupResponse<'_>) -> JoinGroupResponse {
    JoinGroupResponse {
        error: ErrorCode(r.error()),
        generation_id: r.generation_id(),
        protocol_type: string(r.protocol_type()),
        protocol_name: string(r.protocol_name()),
        leader: string(r.leader()),
        member_id: string(r.member_id()),
        members: list(r.members(), |m| JoinGroupMember {
            member_id: m.member_id().to_owned(),
            group_instance_id: optional_string(m.group_instance_id()),
            metadata: bytes(m.metadata()),
        }),
    }
}

fn sync_group_request(r: &fb::SyncGroupRequest<'_>) -> SyncGroupRequest {
    SyncGroupRequest {
        group_id: r.group_id().to_owned(),
        generation_id: r.generation_id(),
        member_id: string(r.member_id()),
        group_instance_id: optional_string(r.group_instance_id()),
        protocol_type: string(r.protocol_type()),
        protocol_name: string(r.protocol_name()),
        assignments: list(r.assignments(), |a| GroupAssignment {
            member_id: a.member_id().to_owned(),
            assignment: bytes(a.assignment()),
        }),
    }
}

fn offset_commit_request(r: &fb::OffsetCommitRequest<'_>) -> OffsetCommitRequest {
    OffsetCommitRequest {
        group_id: r.group_id().to_owned(),
        generation_id: r.generation_id(),
        member_id: string(r.member_id()),
        group_instance_id: optional_string(r.group_instance_id()),
        partitions: list(r.partitions(), |p| OffsetCommitPartition {
            topic: p.topic().to_owned(),
            partition: p.partition(),
            offset: p.offset(),
            leader_epoch: p.leader_epoch(),
            metadata: string(p.metadata()),
        }),
    }
}

fn offset_fetch_response(r: &fb::OffsetFetchResponse<'_>) -> OffsetFetchResponse {
    OffsetFetchResponse {
        error: ErrorCode(r.error()),
        partitions: list(r.partitions(), |p| OffsetFetchPartitionResponse {
            topic: p.topic().to_owned(),
            partition: p.partition(),
            error: ErrorCode(p.error()),
            offset: p.offset(),
            leader_epoch: p.leader_epoch(),
            metadata: string(p.metadata()),
        }),
    }
}
