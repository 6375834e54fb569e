//! Owned messages to FlatBuffers headers. Each function builds one table and
//! returns its offset; `request` and `response` also finish the buffer and
//! hand back the record chunks that follow the header on the wire.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use super::fb;
use super::message::*;

type Fbb<'a> = FlatBufferBuilder<'a>;
type TableVec<'a, T> = WIPOffset<Vector<'a, ForwardsUOffset<T>>>;

/// Builds the `Request` root; returns the records that follow the header.
pub(super) fn request(fbb: &mut Fbb<'_>, correlation_id: u32, request: &Request) -> Vec<Bytes> {
    let mut records = Vec::new();
    let (body_type, body) = match request {
        Request::Produce(r) => {
            records.extend(r.partitions.iter().map(|p| p.records.clone()));
            (
                fb::RequestBody::ProduceRequest,
                produce_request(fbb, r).as_union_value(),
            )
        }
        Request::Fetch(r) => (
            fb::RequestBody::FetchRequest,
            fetch_request(fbb, r).as_union_value(),
        ),
        Request::ListOffsets(r) => (
            fb::RequestBody::ListOffsetsRequest,
            list_offsets_request(fbb, r).as_union_value(),
        ),
        Request::CreateTopics(r) => (
            fb::RequestBody::CreateTopicsRequest,
            create_topics_request(fbb, r).as_union_value(),
        ),
        Request::DeleteTopics(r) => (
            fb::RequestBody::DeleteTopicsRequest,
            delete_topics_request(fbb, r).as_union_value(),
        ),
        Request::Metadata(r) => (
            fb::RequestBody::MetadataRequest,
            metadata_request(fbb, r).as_union_value(),
        ),
        group => group_request(fbb, group),
    };
    let args = fb::RequestArgs {
        correlation_id,
        body_type,
        body: Some(body),
    };
    let root = fb::Request::create(fbb, &args);
    fbb.finish(root, None);
    records
}

/// Builds the `Response` root; returns the records that follow the header.
pub(super) fn response(fbb: &mut Fbb<'_>, response: &Response) -> Vec<Bytes> {
    let mut records = Vec::new();
    let (body_type, body) = match response_body(fbb, &response.body, &mut records) {
        Some((body_type, body)) => (body_type, Some(body)),
        None => (fb::ResponseBody::NONE, None),
    };
    let message = optional_string(fbb, &response.message);
    let args = fb::ResponseArgs {
        correlation_id: response.correlation_id,
        error: response.error.0,
        message,
        body_type,
        body,
    };
    let root = fb::Response::create(fbb, &args);
    fbb.finish(root, None);
    records
}

fn response_body(
    fbb: &mut Fbb<'_>,
    body: &ResponseBody,
    records: &mut Vec<Bytes>,
) -> Option<(fb::ResponseBody, WIPOffset<UnionWIPOffset>)> {
    let built = match body {
        ResponseBody::Produce(r) => (
            fb::ResponseBody::ProduceResponse,
            produce_response(fbb, r).as_union_value(),
        ),
        ResponseBody::Fetch(r) => {
            for p in &r.partitions {
                records.extend(p.records.iter().cloned());
            }
            (
                fb::ResponseBody::FetchResponse,
                fetch_response(fbb, r).as_union_value(),
            )
        }
        ResponseBody::ListOffsets(r) => (
            fb::ResponseBody::ListOffsetsResponse,
            list_offsets_response(fbb, r).as_union_value(),
        ),
        ResponseBody::CreateTopics(r) => {
            let topics = Some(topic_results(fbb, &r.topics));
            let args = fb::CreateTopicsResponseArgs { topics };
            let body = fb::CreateTopicsResponse::create(fbb, &args);
            (
                fb::ResponseBody::CreateTopicsResponse,
                body.as_union_value(),
            )
        }
        ResponseBody::DeleteTopics(r) => {
            let topics = Some(topic_results(fbb, &r.topics));
            let args = fb::DeleteTopicsResponseArgs { topics };
            let body = fb::DeleteTopicsResponse::create(fbb, &args);
            (
                fb::ResponseBody::DeleteTopicsResponse,
                body.as_union_value(),
            )
        }
        ResponseBody::Metadata(r) => (
            fb::ResponseBody::MetadataResponse,
            metadata_response(fbb, r).as_union_value(),
        ),
        ResponseBody::Error => return None,
        group => group_response(fbb, group)?,
    };
    Some(built)
}

/// The consumer-group requests, which have no payload.
///
/// # Panics
///
/// On a request that is not a group request: [`request`] handles the rest.
fn group_request(
    fbb: &mut Fbb<'_>,
    request: &Request,
) -> (fb::RequestBody, WIPOffset<UnionWIPOffset>) {
    match request {
        Request::JoinGroup(r) => (
            fb::RequestBody::JoinGroupRequest,
            join_group_request(fbb, r).as_union_value(),
        ),
        Request::SyncGroup(r) => (
            fb::RequestBody::SyncGroupRequest,
            sync_group_request(fbb, r).as_union_value(),
        ),
        Request::Heartbeat(r) => (
            fb::RequestBody::HeartbeatRequest,
            heartbeat_request(fbb, r).as_union_value(),
        ),
        Request::LeaveGroup(r) => (
            fb::RequestBody::LeaveGroupRequest,
            leave_group_request(fbb, r).as_union_value(),
        ),
        Request::OffsetCommit(r) => (
            fb::RequestBody::OffsetCommitRequest,
            offset_commit_request(fbb, r).as_union_value(),
        ),
        Request::OffsetFetch(r) => (
            fb::RequestBody::OffsetFetchRequest,
            offset_fetch_request(fbb, r).as_union_value(),
        ),
        other => unreachable!("not a group request: {other:?}"),
    }
}

/// The consumer-group responses; `None` for any other body.
fn group_response(
    fbb: &mut Fbb<'_>,
    body: &ResponseBody,
) -> Option<(fb::ResponseBody, WIPOffset<UnionWIPOffset>)> {
    let built = match body {
        ResponseBody::JoinGroup(r) => (
            fb::ResponseBody::JoinGroupResponse,
            join_group_response(fbb, r).as_union_value(),
        ),
        ResponseBody::SyncGroup(r) => (
            fb::ResponseBody::SyncGroupResponse,
            sync_group_response(fbb, r).as_union_value(),
        ),
        ResponseBody::Heartbeat(r) => {
            let args = fb::HeartbeatResponseArgs { error: r.error.0 };
            (
                fb::ResponseBody::HeartbeatResponse,
                fb::HeartbeatResponse::create(fbb, &args).as_union_value(),
            )
        }
        ResponseBody::LeaveGroup(r) => (
            fb::ResponseBody::LeaveGroupResponse,
            leave_group_response(fbb, r).as_union_value(),
        ),
        ResponseBody::OffsetCommit(r) => (
            fb::ResponseBody::OffsetCommitResponse,
            offset_commit_response(fbb, r).as_union_value(),
        ),
        ResponseBody::OffsetFetch(r) => (
            fb::ResponseBody::OffsetFetchResponse,
            offset_fetch_response(fbb, r).as_union_value(),
        ),
        _ => return None,
    };
    Some(built)
}

/// The length of a partition's records as the header's u32.
///
/// # Panics
///
/// Over 4 GiB, which no frame can carry.
fn records_len(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or_else(|_| panic!("records of {bytes} bytes exceed a frame"))
}

fn optional_string<'a>(fbb: &mut Fbb<'a>, s: &str) -> Option<WIPOffset<&'a str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

fn some_string<'a>(fbb: &mut Fbb<'a>, s: Option<&str>) -> Option<WIPOffset<&'a str>> {
    s.map(|s| fbb.create_string(s))
}

/// Empty bytes are left out; they decode as empty.
fn optional_bytes<'a>(fbb: &mut Fbb<'a>, b: &Bytes) -> Option<WIPOffset<Vector<'a, u8>>> {
    (!b.is_empty()).then(|| fbb.create_vector(&b[..]))
}

/// Builds one table per item, then the vector of them.
fn table_vec<'a, X, T>(
    fbb: &mut Fbb<'a>,
    items: &[X],
    mut build: impl FnMut(&mut Fbb<'a>, &X) -> WIPOffset<T>,
) -> TableVec<'a, T> {
    let offsets: Vec<WIPOffset<T>> = items.iter().map(|item| build(fbb, item)).collect();
    fbb.create_vector(&offsets)
}

fn string_vec<'a>(fbb: &mut Fbb<'a>, items: &[String]) -> TableVec<'a, &'a str> {
    table_vec(fbb, items, |fbb, s| fbb.create_string(s))
}

fn configs<'a>(fbb: &mut Fbb<'a>, configs: &[(String, String)]) -> TableVec<'a, fb::Config<'a>> {
    table_vec(fbb, configs, |fbb, (key, value)| {
        let key = Some(fbb.create_string(key));
        let value = Some(fbb.create_string(value));
        fb::Config::create(fbb, &fb::ConfigArgs { key, value })
    })
}

fn acks(acks: Acks) -> fb::Acks {
    match acks {
        Acks::None => fb::Acks::None,
        Acks::Leader => fb::Acks::Leader,
        Acks::All => fb::Acks::All,
    }
}

fn produce_request<'a>(fbb: &mut Fbb<'a>, r: &ProduceRequest) -> WIPOffset<fb::ProduceRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::ProducePartitionArgs {
            topic,
            partition: p.partition,
            records_len: records_len(p.records.len()),
        };
        fb::ProducePartition::create(fbb, &args)
    });
    let args = fb::ProduceRequestArgs {
        acks: acks(r.acks),
        timeout_ms: r.timeout_ms,
        partitions: Some(partitions),
    };
    fb::ProduceRequest::create(fbb, &args)
}

fn produce_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &ProduceResponse,
) -> WIPOffset<fb::ProduceResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let error_message = p.error_message.as_deref().map(|m| fbb.create_string(m));
        let args = fb::ProducePartitionResponseArgs {
            topic,
            partition: p.partition,
            error: p.error.0,
            base_offset: p.base_offset,
            log_start_offset: p.log_start_offset,
            log_append_time: -1,
            error_message,
        };
        fb::ProducePartitionResponse::create(fbb, &args)
    });
    let args = fb::ProduceResponseArgs {
        partitions: Some(partitions),
    };
    fb::ProduceResponse::create(fbb, &args)
}

fn fetch_request<'a>(fbb: &mut Fbb<'a>, r: &FetchRequest) -> WIPOffset<fb::FetchRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::FetchPartitionArgs {
            topic,
            partition: p.partition,
            offset: p.offset,
            max_bytes: p.max_bytes,
        };
        fb::FetchPartition::create(fbb, &args)
    });
    let args = fb::FetchRequestArgs {
        max_wait_ms: r.max_wait_ms,
        min_bytes: r.min_bytes,
        max_bytes: r.max_bytes,
        partitions: Some(partitions),
    };
    fb::FetchRequest::create(fbb, &args)
}

fn fetch_response<'a>(fbb: &mut Fbb<'a>, r: &FetchResponse) -> WIPOffset<fb::FetchResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::FetchPartitionResponseArgs {
            topic,
            partition: p.partition,
            error: p.error.0,
            high_watermark: p.high_watermark,
            log_start_offset: p.log_start_offset,
            log_end_offset: p.log_end_offset,
            records_len: records_len(p.records_len()),
        };
        fb::FetchPartitionResponse::create(fbb, &args)
    });
    let args = fb::FetchResponseArgs {
        partitions: Some(partitions),
    };
    fb::FetchResponse::create(fbb, &args)
}

fn list_offsets_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &ListOffsetsRequest,
) -> WIPOffset<fb::ListOffsetsRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::ListOffsetsPartitionArgs {
            topic,
            partition: p.partition,
            timestamp: p.timestamp,
        };
        fb::ListOffsetsPartition::create(fbb, &args)
    });
    let args = fb::ListOffsetsRequestArgs {
        partitions: Some(partitions),
    };
    fb::ListOffsetsRequest::create(fbb, &args)
}

fn list_offsets_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &ListOffsetsResponse,
) -> WIPOffset<fb::ListOffsetsResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::ListOffsetsPartitionResponseArgs {
            topic,
            partition: p.partition,
            error: p.error.0,
            offset: p.offset,
            timestamp: p.timestamp,
        };
        fb::ListOffsetsPartitionResponse::create(fbb, &args)
    });
    let args = fb::ListOffsetsResponseArgs {
        partitions: Some(partitions),
    };
    fb::ListOffsetsResponse::create(fbb, &args)
}

fn create_topics_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &CreateTopicsRequest,
) -> WIPOffset<fb::CreateTopicsRequest<'a>> {
    let topics = table_vec(fbb, &r.topics, |fbb, t| {
        let name = Some(fbb.create_string(&t.name));
        let configs = Some(configs(fbb, &t.configs));
        let args = fb::CreateTopicArgs {
            name,
            partitions: t.partitions,
            configs,
        };
        fb::CreateTopic::create(fbb, &args)
    });
    let args = fb::CreateTopicsRequestArgs {
        topics: Some(topics),
    };
    fb::CreateTopicsRequest::create(fbb, &args)
}

fn topic_results<'a>(
    fbb: &mut Fbb<'a>,
    results: &[TopicResult],
) -> TableVec<'a, fb::TopicResult<'a>> {
    table_vec(fbb, results, |fbb, t| {
        let name = Some(fbb.create_string(&t.name));
        let message = optional_string(fbb, &t.message);
        let args = fb::TopicResultArgs {
            name,
            error: t.error.0,
            message,
        };
        fb::TopicResult::create(fbb, &args)
    })
}

fn delete_topics_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &DeleteTopicsRequest,
) -> WIPOffset<fb::DeleteTopicsRequest<'a>> {
    let names = Some(string_vec(fbb, &r.names));
    fb::DeleteTopicsRequest::create(fbb, &fb::DeleteTopicsRequestArgs { names })
}

fn metadata_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &MetadataRequest,
) -> WIPOffset<fb::MetadataRequest<'a>> {
    let topics = Some(string_vec(fbb, &r.topics));
    fb::MetadataRequest::create(fbb, &fb::MetadataRequestArgs { topics })
}

fn metadata_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &MetadataResponse,
) -> WIPOffset<fb::MetadataResponse<'a>> {
    let shards = table_vec(fbb, &r.shards, |fbb, s| {
        let host = Some(fbb.create_string(&s.host));
        let args = fb::ShardAddressArgs {
            shard: s.shard,
            host,
            port: s.port,
        };
        fb::ShardAddress::create(fbb, &args)
    });
    let topics = table_vec(fbb, &r.topics, topic_metadata);
    let bootstrap_host = optional_string(fbb, &r.bootstrap_host);
    let args = fb::MetadataResponseArgs {
        node_id: r.node_id,
        bootstrap_host,
        bootstrap_port: r.bootstrap_port,
        shards: Some(shards),
        topics: Some(topics),
    };
    fb::MetadataResponse::create(fbb, &args)
}

fn topic_metadata<'a>(fbb: &mut Fbb<'a>, t: &TopicMetadata) -> WIPOffset<fb::TopicMetadata<'a>> {
    let name = Some(fbb.create_string(&t.name));
    let partitions = table_vec(fbb, &t.partitions, |fbb, p| {
        let args = fb::PartitionMetadataArgs {
            partition: p.partition,
            shard: p.shard,
            leader_epoch: p.leader_epoch,
            error: p.error.0,
        };
        fb::PartitionMetadata::create(fbb, &args)
    });
    let configs = Some(configs(fbb, &t.configs));
    let args = fb::TopicMetadataArgs {
        name,
        error: t.error.0,
        partitions: Some(partitions),
        configs,
    };
    fb::TopicMetadata::create(fbb, &args)
}

fn join_group_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &JoinGroupRequest,
) -> WIPOffset<fb::JoinGroupRequest<'a>> {
    let protocols = table_vec(fbb, &r.protocols, |fbb, p| {
        let name = Some(fbb.create_string(&p.name));
        let metadata = optional_bytes(fbb, &p.metadata);
        fb::GroupProtocol::create(fbb, &fb::GroupProtocolArgs { name, metadata })
    });
    let args = fb::JoinGroupRequestArgs {
        group_id: Some(fbb.create_string(&r.group_id)),
        session_timeout_ms: r.session_timeout_ms,
        rebalance_timeout_ms: r.rebalance_timeout_ms,
        member_id: optional_string(fbb, &r.member_id),
        group_instance_id: some_string(fbb, r.group_instance_id.as_deref()),
        protocol_type: optional_string(fbb, &r.protocol_type),
        protocols: Some(protocols),
        client_id: optional_string(fbb, &r.client_id),
    };
    fb::JoinGroupRequest::create(fbb, &args)
}

fn join_group_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &JoinGroupResponse,
) -> WIPOffset<fb::JoinGroupResponse<'a>> {
    let members = table_vec(fbb, &r.members, |fbb, m| {
        let args = fb::JoinGroupMemberArgs {
            member_id: Some(fbb.create_string(&m.member_id)),
            group_instance_id: some_string(fbb, m.group_instance_id.as_deref()),
            metadata: optional_bytes(fbb, &m.metadata),
        };
        fb::JoinGroupMember::create(fbb, &args)
    });
    let args = fb::JoinGroupResponseArgs {
        error: r.error.0,
        generation_id: r.generation_id,
        protocol_type: optional_string(fbb, &r.protocol_type),
        protocol_name: optional_string(fbb, &r.protocol_name),
        leader: optional_string(fbb, &r.leader),
        member_id: optional_string(fbb, &r.member_id),
        members: Some(members),
    };
    fb::JoinGroupResponse::create(fbb, &args)
}

fn sync_group_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &SyncGroupRequest,
) -> WIPOffset<fb::SyncGroupRequest<'a>> {
    let assignments = table_vec(fbb, &r.assignments, |fbb, a| {
        let args = fb::GroupAssignmentArgs {
            member_id: Some(fbb.create_string(&a.member_id)),
            assignment: optional_bytes(fbb, &a.assignment),
        };
        fb::GroupAssignment::create(fbb, &args)
    });
    let args = fb::SyncGroupRequestArgs {
        group_id: Some(fbb.create_string(&r.group_id)),
        generation_id: r.generation_id,
        member_id: optional_string(fbb, &r.member_id),
        group_instance_id: some_string(fbb, r.group_instance_id.as_deref()),
        protocol_type: optional_string(fbb, &r.protocol_type),
        protocol_name: optional_string(fbb, &r.protocol_name),
        assignments: Some(assignments),
    };
    fb::SyncGroupRequest::create(fbb, &args)
}

fn sync_group_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &SyncGroupResponse,
) -> WIPOffset<fb::SyncGroupResponse<'a>> {
    let args = fb::SyncGroupResponseArgs {
        error: r.error.0,
        protocol_type: optional_string(fbb, &r.protocol_type),
        protocol_name: optional_string(fbb, &r.protocol_name),
        assignment: optional_bytes(fbb, &r.assignment),
    };
    fb::SyncGroupResponse::create(fbb, &args)
}

fn heartbeat_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &HeartbeatRequest,
) -> WIPOffset<fb::HeartbeatRequest<'a>> {
    let args = fb::HeartbeatRequestArgs {
        group_id: Some(fbb.create_string(&r.group_id)),
        generation_id: r.generation_id,
        member_id: optional_string(fbb, &r.member_id),
        group_instance_id: some_string(fbb, r.group_instance_id.as_deref()),
    };
    fb::HeartbeatRequest::create(fbb, &args)
}

fn leave_group_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &LeaveGroupRequest,
) -> WIPOffset<fb::LeaveGroupRequest<'a>> {
    let members = table_vec(fbb, &r.members, |fbb, m| {
        let args = fb::LeavingMemberArgs {
            member_id: optional_string(fbb, &m.member_id),
            group_instance_id: some_string(fbb, m.group_instance_id.as_deref()),
        };
        fb::LeavingMember::create(fbb, &args)
    });
    let args = fb::LeaveGroupRequestArgs {
        group_id: Some(fbb.create_string(&r.group_id)),
        members: Some(members),
    };
    fb::LeaveGroupRequest::create(fbb, &args)
}

fn leave_group_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &LeaveGroupResponse,
) -> WIPOffset<fb::LeaveGroupResponse<'a>> {
    let members = table_vec(fbb, &r.members, |fbb, m| {
        let args = fb::LeavingMemberResponseArgs {
            member_id: optional_string(fbb, &m.member_id),
            group_instance_id: some_string(fbb, m.group_instance_id.as_deref()),
            error: m.error.0,
        };
        fb::LeavingMemberResponse::create(fbb, &args)
    });
    let args = fb::LeaveGroupResponseArgs {
        error: r.error.0,
        members: Some(members),
    };
    fb::LeaveGroupResponse::create(fbb, &args)
}

fn offset_commit_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &OffsetCommitRequest,
) -> WIPOffset<fb::OffsetCommitRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let args = fb::OffsetCommitPartitionArgs {
            topic: Some(fbb.create_string(&p.topic)),
            partition: p.partition,
            offset: p.offset,
            leader_epoch: p.leader_epoch,
            metadata: optional_string(fbb, &p.metadata),
        };
        fb::OffsetCommitPartition::create(fbb, &args)
    });
    let args = fb::OffsetCommitRequestArgs {
        group_id: Some(fbb.create_string(&r.group_id)),
        generation_id: r.generation_id,
        member_id: optional_string(fbb, &r.member_id),
        group_instance_id: some_string(fbb, r.group_instance_id.as_deref()),
        partitions: Some(partitions),
    };
    fb::OffsetCommitRequest::create(fbb, &args)
}

fn offset_commit_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &OffsetCommitResponse,
) -> WIPOffset<fb::OffsetCommitResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let args = fb::OffsetCommitPartitionResponseArgs {
            topic: Some(fbb.create_string(&p.topic)),
            partition: p.partition,
            error: p.error.0,
        };
        fb::OffsetCommitPartitionResponse::create(fbb, &args)
    });
    let args = fb::OffsetCommitResponseArgs {
        partitions: Some(partitions),
    };
    fb::OffsetCommitResponse::create(fbb, &args)
}

fn offset_fetch_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &OffsetFetchRequest,
) -> WIPOffset<fb::OffsetFetchRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let args = fb::OffsetFetchPartitionArgs {
            topic: Some(fbb.create_string(&p.topic)),
            partition: p.partition,
        };
        fb::OffsetFetchPartition::create(fbb, &args)
    });
    let args = fb::OffsetFetchRequestArgs {
        group_id: Some(fbb.create_string(&r.group_id)),
        partitions: Some(partitions),
        require_stable: r.require_stable,
    };
    fb::OffsetFetchRequest::create(fbb, &args)
}

fn offset_fetch_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &OffsetFetchResponse,
) -> WIPOffset<fb::OffsetFetchResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let args = fb::OffsetFetchPartitionResponseArgs {
            topic: Some(fbb.create_string(&p.topic)),
            partition: p.partition,
            error: p.error.0,
            offset: p.offset,
            leader_epoch: p.leader_epoch,
            metadata: optional_string(fbb, &p.metadata),
        };
        fb::OffsetFetchPartitionResponse::create(fbb, &args)
    });
    let args = fb::OffsetFetchResponseArgs {
        error: r.error.0,
        partitions: Some(partitions),
    };
    fb::OffsetFetchResponse::create(fbb, &args)
}
