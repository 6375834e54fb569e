//! Native consumer-group requests: each becomes the coordinator's
//! [`GroupRequest`] (a Kafka request struct at a fixed version), runs on the
//! shard that coordinates the group, exactly as the Kafka listener routes it
//! (`kafka/handlers/groups.rs`), and its answer is turned back into the
//! native response.
//!
//! Both listeners share one coordinator, so a group may mix native and Kafka
//! members, and offsets committed through either are read through both.
//! When the coordinating shard cannot be reached every member of the answer
//! gets COORDINATOR_NOT_AVAILABLE, which a client retries.

use std::collections::HashMap;
use std::rc::Rc;

use kafka_protocol::messages as km;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{GroupId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::native::{
    HeartbeatRequest, HeartbeatResponse, JoinGroupMember, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, LeavingMemberResponse, OffsetCommitPartitionResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchPartitionResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
};
use sluice_protocol::ErrorCode;

use crate::kafka::group::{code, FetchedOffset, GroupRequest, GroupResponse};
use crate::shard::Shard;

/// The Kafka versions the native requests are translated to: the newest the
/// coordinator serves for the classic protocol, whose fields the native
/// tables mirror. OffsetCommit v8, not v9: v9 means KIP-848 member epochs.
pub const JOIN_GROUP_VERSION: i16 = 9;
pub const SYNC_GROUP_VERSION: i16 = 5;
pub const HEARTBEAT_VERSION: i16 = 4;
pub const LEAVE_GROUP_VERSION: i16 = 5;
pub const OFFSET_COMMIT_VERSION: i16 = 8;

const COORDINATOR_NOT_AVAILABLE: ErrorCode = ErrorCode(code::COORDINATOR_NOT_AVAILABLE);

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// Empty means absent, for Kafka's nullable strings.
fn text_or_none(s: &str) -> Option<StrBytes> {
    (!s.is_empty()).then(|| text(s))
}

fn owned(s: &StrBytes) -> String {
    s.as_str().to_owned()
}

/// Runs a group request on its coordinating shard (the routing the Kafka
/// listener uses); `None` when that shard is not running or dropped it.
async fn call(shard: &Rc<Shard>, group: &str, request: GroupRequest) -> Option<GroupResponse> {
    crate::kafka::handlers::groups::call(shard, group, request)
        .await
        .map_err(|e| tracing::warn!(shard = shard.id, error = %e, "group request"))
        .ok()
}

pub(crate) async fn join(shard: &Rc<Shard>, req: JoinGroupRequest) -> JoinGroupResponse {
    let protocols = req.protocols.iter().map(|p| {
        JoinGroupRequestProtocol::default()
            .with_name(text(&p.name))
            .with_metadata(p.metadata.clone())
    });
    // -1 (or any negative): the session timeout, as Kafka's v0 implies.
    let rebalance_timeout_ms = match req.rebalance_timeout_ms {
        ms if ms < 0 => req.session_timeout_ms,
        ms => ms,
    };
    let kafka = km::JoinGroupRequest::default()
        .with_group_id(GroupId(text(&req.group_id)))
        .with_session_timeout_ms(req.session_timeout_ms)
        .with_rebalance_timeout_ms(rebalance_timeout_ms)
        .with_member_id(text(&req.member_id))
        .with_group_instance_id(req.group_instance_id.as_deref().map(text))
        .with_protocol_type(text(&req.protocol_type))
        .with_protocols(protocols.collect());
    let request = GroupRequest::Join(kafka, JOIN_GROUP_VERSION, req.client_id);
    match call(shard, &req.group_id, request).await {
        Some(GroupResponse::Join(r)) => join_response(r),
        _ => JoinGroupResponse {
            error: COORDINATOR_NOT_AVAILABLE,
            generation_id: -1,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: String::new(),
            member_id: req.member_id,
            members: Vec::new(),
        },
    }
}

fn join_response(r: km::JoinGroupResponse) -> JoinGroupResponse {
    let members = r.members.iter().map(|m| JoinGroupMember {
        member_id: owned(&m.member_id),
        group_instance_id: m.group_instance_id.as_ref().map(owned),
        metadata: m.metadata.clone(),
    });
    JoinGroupResponse {
        error: ErrorCode(r.error_code),
        generation_id: r.generation_id,
        protocol_type: r.protocol_type.as_ref().map(owned).unwrap_or_default(),
        protocol_name: r.protocol_name.as_ref().map(owned).unwrap_or_default(),
        leader: owned(&r.leader),
        member_id: owned(&r.member_id),
        members: members.collect(),
    }
}

pub(crate) async fn sync(shard: &Rc<Shard>, req: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = req.assignments.iter().map(|a| {
        SyncGroupRequestAssignment::default()
            .with_member_id(text(&a.member_id))
            .with_assignment(a.assignment.clone())
    });
    let kafka = km::SyncGroupRequest::default()
        .with_group_id(GroupId(text(&req.group_id)))
        .with_generation_id(req.generation_id)
        .with_member_id(text(&req.member_id))
        .with_group_instance_id(req.group_instance_id.as_deref().map(text))
        .with_protocol_type(text_or_none(&req.protocol_type))
        .with_protocol_name(text_or_none(&req.protocol_name))
        .with_assignments(assignments.collect());
    let request = GroupRequest::Sync(kafka, SYNC_GROUP_VERSION);
    match call(shard, &req.group_id, request).await {
        Some(GroupResponse::Sync(r)) => SyncGroupResponse {
            error: ErrorCode(r.error_code),
            protocol_type: r.protocol_type.as_ref().map(owned).unwrap_or_default(),
            protocol_name: r.protocol_name.as_ref().map(owned).unwrap_or_default(),
            assignment: r.assignment,
        },
        _ => SyncGroupResponse {
            error: COORDINATOR_NOT_AVAILABLE,
            protocol_type: String::new(),
            protocol_name: String::new(),
            assignment: bytes::Bytes::new(),
        },
    }
}

pub(crate) async fn heartbeat(shard: &Rc<Shard>, req: HeartbeatRequest) -> HeartbeatResponse {
    let kafka = km::HeartbeatRequest::default()
        .with_group_id(GroupId(text(&req.group_id)))
        .with_generation_id(req.generation_id)
        .with_member_id(text(&req.member_id))
        .with_group_instance_id(req.group_instance_id.as_deref().map(text));
    let request = GroupRequest::Heartbeat(kafka, HEARTBEAT_VERSION);
    let error = match call(shard, &req.group_id, request).await {
        Some(GroupResponse::Heartbeat(r)) => ErrorCode(r.error_code),
        _ => COORDINATOR_NOT_AVAILABLE,
    };
    HeartbeatResponse { error }
}

pub(crate) async fn leave(shard: &Rc<Shard>, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let members = req.members.iter().map(|m| {
        MemberIdentity::default()
            .with_member_id(text(&m.member_id))
            .with_group_instance_id(m.group_instance_id.as_deref().map(text))
    });
    let kafka = km::LeaveGroupRequest::default()
        .with_group_id(GroupId(text(&req.group_id)))
        .with_members(members.collect());
    let request = GroupRequest::Leave(kafka, LEAVE_GROUP_VERSION);
    match call(shard, &req.group_id, request).await {
        Some(GroupResponse::Leave(r)) => {
            let members = r.members.iter().map(|m| LeavingMemberResponse {
                member_id: owned(&m.member_id),
                group_instance_id: m.group_instance_id.as_ref().map(owned),
                error: ErrorCode(m.error_code),
            });
            LeaveGroupResponse {
                error: ErrorCode(r.error_code),
                members: members.collect(),
            }
        }
        _ => LeaveGroupResponse {
            error: COORDINATOR_NOT_AVAILABLE,
            members: Vec::new(),
        },
    }
}

/// Kafka nests partitions in topics; the native list is flat. Topics keep
/// the order they are first named in.
fn nest<T>(items: impl Iterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut nested: Vec<(String, Vec<T>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (topic, item) in items {
        match index.get(&topic) {
            Some(&i) => nested[i].1.push(item),
            None => {
                index.insert(topic.clone(), nested.len());
                nested.push((topic, vec![item]));
            }
        }
    }
    nested
}

pub(crate) async fn offset_commit(
    shard: &Rc<Shard>,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    // A partition beyond Kafka's i32 cannot exist: it is answered here.
    let valid = req
        .partitions
        .iter()
        .filter_map(|p| i32::try_from(p.partition).ok().map(|i| (p, i)));
    let topics = nest(valid.map(|(p, index)| {
        let partition = OffsetCommitRequestPartition::default()
            .with_partition_index(index)
            .with_committed_offset(p.offset)
            .with_committed_leader_epoch(p.leader_epoch)
            .with_committed_metadata(Some(text(&p.metadata)));
        (p.topic.clone(), partition)
    }));
    let topics = topics.into_iter().map(|(name, partitions)| {
        OffsetCommitRequestTopic::default()
            .with_name(TopicName(text(&name)))
            .with_partitions(partitions)
    });
    let kafka = km::OffsetCommitRequest::default()
        .with_group_id(GroupId(text(&req.group_id)))
        .with_generation_id_or_member_epoch(req.generation_id)
        .with_member_id(text(&req.member_id))
        .with_group_instance_id(req.group_instance_id.as_deref().map(text))
        .with_topics(topics.collect());
    let request = GroupRequest::OffsetCommit(kafka, OFFSET_COMMIT_VERSION);
    let mut codes: HashMap<(String, i32), i16> = HashMap::new();
    let answered = match call(shard, &req.group_id, request).await {
        Some(GroupResponse::OffsetCommit(r)) => {
            for t in &r.topics {
                for p in &t.partitions {
                    codes.insert((owned(&t.name.0), p.partition_index), p.error_code);
                }
            }
            true
        }
        _ => false,
    };
    let partitions = req.partitions.into_iter().map(|p| {
        let error = match i32::try_from(p.partition) {
            Err(_) => ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
            Ok(_) if !answered => COORDINATOR_NOT_AVAILABLE,
            Ok(index) => codes
                .get(&(p.topic.clone(), index))
                .map_or(ErrorCode::UNKNOWN_SERVER_ERROR, |&c| ErrorCode(c)),
        };
        OffsetCommitPartitionResponse {
            topic: p.topic,
            partition: p.partition,
            error,
        }
    });
    OffsetCommitResponse {
        partitions: partitions.collect(),
    }
}

pub(crate) async fn offset_fetch(
    shard: &Rc<Shard>,
    req: OffsetFetchRequest,
) -> OffsetFetchResponse {
    // Partitions beyond i32 are never committed; asking for one asks nothing.
    let asked = req.partitions.iter().filter_map(|p| {
        let index = i32::try_from(p.partition).ok()?;
        Some((p.topic.clone(), index))
    });
    let topics = (!req.partitions.is_empty()).then(|| nest(asked));
    let request = GroupRequest::OffsetFetch {
        group_id: req.group_id.clone(),
        topics,
        require_stable: req.require_stable,
    };
    let (error, offsets) = match call(shard, &req.group_id, request).await {
        Some(GroupResponse::OffsetFetch(Ok(offsets))) => (ErrorCode::NONE, offsets),
        Some(GroupResponse::OffsetFetch(Err(code))) => (ErrorCode(code), Vec::new()),
        _ => (COORDINATOR_NOT_AVAILABLE, Vec::new()),
    };
    OffsetFetchResponse {
        error,
        partitions: offsets.into_iter().filter_map(fetched).collect(),
    }
}

/// A committed offset as the native protocol reports it; `None` for a
/// negative partition (committed through the Kafka listener), which the
/// native protocol cannot name.
fn fetched(o: FetchedOffset) -> Option<OffsetFetchPartitionResponse> {
    Some(OffsetFetchPartitionResponse {
        partition: u32::try_from(o.partition).ok()?,
        topic: o.topic,
        error: ErrorCode(o.error),
        offset: o.offset,
        leader_epoch: o.leader_epoch,
        metadata: o.metadata.unwrap_or_default(),
    })
}
