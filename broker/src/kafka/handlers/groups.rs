//! Consumer-group APIs: JoinGroup (v0-v9), SyncGroup (v0-v5), Heartbeat
//! (v0-v4), LeaveGroup (v0-v5), OffsetCommit (v2-v9), OffsetFetch (v1-v9),
//! DescribeGroups (v0-v5), ListGroups (v0-v4), DeleteGroups (v0-v2),
//! OffsetDelete (v0).
//!
//! Each group lives on the shard that owns its partition of
//! `__consumer_offsets`; requests are routed there whole (one group) or split
//! by group (OffsetFetch v8+, DescribeGroups, DeleteGroups) and gathered.
//! ListGroups asks every shard.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::{client_id, decode, respond};
use crate::kafka::group::{
    code, offsets_partition_for, FetchedOffset, GroupRequest, GroupResponse, OFFSETS_TOPIC,
};
use crate::kafka::KafkaRequest;
use crate::router::ShardMsg;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let v = req.version;
    match req.api_key {
        ApiKey::JoinGroup => {
            let r: JoinGroupRequest = decode(req)?;
            let group = r.group_id.0.as_str().to_string();
            match call(shard, &group, GroupRequest::Join(r, v, client_id(req))).await? {
                GroupResponse::Join(resp) => respond(req, &resp),
                _ => Err("coordinator answered another request".into()),
            }
        }
        ApiKey::SyncGroup => {
            let r: SyncGroupRequest = decode(req)?;
            let group = r.group_id.0.as_str().to_string();
            match call(shard, &group, GroupRequest::Sync(r, v)).await? {
                GroupResponse::Sync(resp) => respond(req, &resp),
                _ => Err("coordinator answered another request".into()),
            }
        }
        ApiKey::Heartbeat => {
            let r: HeartbeatRequest = decode(req)?;
            let group = r.group_id.0.as_str().to_string();
            match call(shard, &group, GroupRequest::Heartbeat(r, v)).await? {
                GroupResponse::Heartbeat(resp) => respond(req, &resp),
                _ => Err("coordinator answered another request".into()),
            }
        }
        ApiKey::LeaveGroup => {
            let r: LeaveGroupRequest = decode(req)?;
            let group = r.group_id.0.as_str().to_string();
            match call(shard, &group, GroupRequest::Leave(r, v)).await? {
                GroupResponse::Leave(resp) => respond(req, &resp),
                _ => Err("coordinator answered another request".into()),
            }
        }
        ApiKey::OffsetCommit => {
            let r: OffsetCommitRequest = decode(req)?;
            let group = r.group_id.0.as_str().to_string();
            match call(shard, &group, GroupRequest::OffsetCommit(r, v)).await? {
                GroupResponse::OffsetCommit(resp) => respond(req, &resp),
                _ => Err("coordinator answered another request".into()),
            }
        }
        ApiKey::OffsetDelete => {
            let r: OffsetDeleteRequest = decode(req)?;
            let group = r.group_id.0.as_str().to_string();
            match call(shard, &group, GroupRequest::OffsetDelete(r, v)).await? {
                GroupResponse::OffsetDelete(resp) => respond(req, &resp),
                _ => Err("coordinator answered another request".into()),
            }
        }
        ApiKey::OffsetFetch => offset_fetch(shard, req).await,
        ApiKey::DescribeGroups => describe_groups(shard, req).await,
        ApiKey::DeleteGroups => delete_groups(shard, req).await,
        ApiKey::ListGroups => list_groups(shard, req).await,
        other => Err(format!("{other:?} is not a group API")),
    }
}

/// The shard coordinating `group`.
pub(crate) fn coordinator_shard(shard: &Shard, group: &str) -> u32 {
    let partition = offsets_partition_for(group, shard.config.broker.offsets_topic_partitions);
    shard.owner(OFFSETS_TOPIC, partition)
}

/// Runs a group request on its coordinating shard.
pub(crate) async fn call(
    shard: &Rc<Shard>,
    group: &str,
    request: GroupRequest,
) -> Result<GroupResponse, String> {
    run_on(shard, coordinator_shard(shard, group), request).await
}

async fn run_on(
    shard: &Rc<Shard>,
    owner: u32,
    request: GroupRequest,
) -> Result<GroupResponse, String> {
    if owner == shard.id {
        return Ok(shard.groups.handle(request).await);
    }
    let (reply, answer) = crate::router::reply_channel();
    if !shard.send(owner, ShardMsg::Group { request, reply }).await {
        return Err(format!("coordinator shard {owner} is not running"));
    }
    answer
        .await
        .map_err(|_| format!("coordinator shard {owner} dropped the request"))
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// One group's offsets, or its error code.
async fn fetch_group(
    shard: &Rc<Shard>,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> Result<Result<Vec<FetchedOffset>, i16>, String> {
    let request = GroupRequest::OffsetFetch {
        group_id: group.to_string(),
        topics,
        require_stable,
    };
    match call(shard, group, request).await? {
        GroupResponse::OffsetFetch(r) => Ok(r),
        _ => Err("coordinator answered another request".into()),
    }
}

/// Groups fetched offsets by topic, in first-seen order.
fn by_topic(offsets: Vec<FetchedOffset>) -> Vec<(String, Vec<FetchedOffset>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<FetchedOffset>> = BTreeMap::new();
    for o in offsets {
        if !map.contains_key(&o.topic) {
            order.push(o.topic.clone());
        }
        map.entry(o.topic.clone()).or_default().push(o);
    }
    order
        .into_iter()
        .map(|t| (t.clone(), map.remove(&t).unwrap_or_default()))
        .collect()
}

async fn offset_fetch(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: OffsetFetchRequest = decode(req)?;
    if req.version < 8 {
        let topics = r.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                .collect()
        });
        let group = r.group_id.0.as_str().to_string();
        let mut resp = OffsetFetchResponse::default();
        match fetch_group(shard, &group, topics, r.require_stable).await? {
            Ok(offsets) => {
                resp.topics = by_topic(offsets)
                    .into_iter()
                    .map(|(name, ps)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(text(&name)))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|o| old_partition(o, req.version))
                                    .collect(),
                            )
                    })
                    .collect();
            }
            Err(code) if req.version >= 2 => resp.error_code = code,
            // v1 has no group-level error: put it on every partition asked.
            Err(code) => tracing::debug!(group, code, "OffsetFetch v1 group error"),
        }
        return respond(req, &resp);
    }
    let mut groups = Vec::with_capacity(r.groups.len());
    for g in r.groups {
        let name = g.group_id.0.as_str().to_string();
        let topics = g.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                .collect()
        });
        let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
        match fetch_group(shard, &name, topics, r.require_stable).await? {
            Ok(offsets) => {
                out.topics = by_topic(offsets)
                    .into_iter()
                    .map(|(name, ps)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(text(&name)))
                            .with_partitions(ps.into_iter().map(new_partition).collect())
                    })
                    .collect();
            }
            Err(code) => out.error_code = code,
        }
        groups.push(out);
    }
    respond(req, &OffsetFetchResponse::default().with_groups(groups))
}

fn old_partition(o: FetchedOffset, version: i16) -> OffsetFetchResponsePartition {
    let mut p = OffsetFetchResponsePartition::default()
        .with_partition_index(o.partition)
        .with_committed_offset(o.offset)
        .with_metadata(o.metadata.map(StrBytes::from_string))
        .with_error_code(o.error);
    if version >= 5 {
        p.committed_leader_epoch = o.leader_epoch;
    }
    p
}

fn new_partition(o: FetchedOffset) -> OffsetFetchResponsePartitions {
    OffsetFetchResponsePartitions::default()
        .with_partition_index(o.partition)
        .with_committed_offset(o.offset)
        .with_committed_leader_epoch(o.leader_epoch)
        .with_metadata(o.metadata.map(StrBytes::from_string))
        .with_error_code(o.error)
}

/// Group ids by coordinating shard.
fn split_by_shard(shard: &Shard, groups: &[String]) -> BTreeMap<u32, Vec<String>> {
    let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for g in groups {
        out.entry(coordinator_shard(shard, g))
            .or_default()
            .push(g.clone());
    }
    out
}

async fn describe_groups(
    shard: &Rc<Shard>,
    req: &KafkaRequest,
) -> Result<Option<Vec<Bytes>>, String> {
    let r: DescribeGroupsRequest = decode(req)?;
    let names: Vec<String> = r.groups.iter().map(|g| g.0.as_str().to_string()).collect();
    let mut found = Vec::new();
    for (owner, groups) in split_by_shard(shard, &names) {
        match run_on(shard, owner, GroupRequest::Describe(groups)).await? {
            GroupResponse::Describe(d) => found.extend(d),
            _ => return Err("coordinator answered another request".into()),
        }
    }
    // Answer in request order.
    let groups = names
        .iter()
        .filter_map(|n| found.iter().find(|d| d.group_id.0.as_str() == n).cloned())
        .collect();
    respond(req, &DescribeGroupsResponse::default().with_groups(groups))
}

async fn delete_groups(
    shard: &Rc<Shard>,
    req: &KafkaRequest,
) -> Result<Option<Vec<Bytes>>, String> {
    let r: DeleteGroupsRequest = decode(req)?;
    let names: Vec<String> = r
        .groups_names
        .iter()
        .map(|g| g.0.as_str().to_string())
        .collect();
    let mut results = Vec::new();
    for (owner, groups) in split_by_shard(shard, &names) {
        match run_on(shard, owner, GroupRequest::Delete(groups)).await? {
            GroupResponse::Delete(d) => results.extend(d),
            _ => return Err("coordinator answered another request".into()),
        }
    }
    let results = results
        .into_iter()
        .map(|(g, error)| {
            delete_groups_response::DeletableGroupResult::default()
                .with_group_id(GroupId(text(&g)))
                .with_error_code(error)
        })
        .collect();
    respond(req, &DeleteGroupsResponse::default().with_results(results))
}

async fn list_groups(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: ListGroupsRequest = decode(req)?;
    let states: Vec<String> = r
        .states_filter
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let mut groups = Vec::new();
    for owner in 0..shard.count {
        match run_on(
            shard,
            owner,
            GroupRequest::List {
                states_filter: states.clone(),
            },
        )
        .await
        {
            Ok(GroupResponse::List(l)) => groups.extend(l),
            Ok(_) => return Err("coordinator answered another request".into()),
            Err(e) => {
                let mut resp = ListGroupsResponse::default();
                resp.error_code = code::COORDINATOR_NOT_AVAILABLE;
                tracing::warn!(error = %e, "ListGroups");
                return respond(req, &resp);
            }
        }
    }
    respond(req, &ListGroupsResponse::default().with_groups(groups))
}
