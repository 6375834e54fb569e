//! Tests of the coordinator: the sans-IO core driven directly, then the async shell
//! over an in-memory `__consumer_offsets` (durability, reload, tombstones).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    OffsetCommitRequest, OffsetDeleteRequest, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use sluice_protocol::batch;

use super::state::{Core, Effects, GroupState, Now};
use super::*;

const GROUP: &str = "g";
const OFFSETS_PARTITIONS_DEFAULT: u32 = 50;
const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;
const DELAY_MS: u64 = 3_000;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn config(delay_ms: u64) -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay_ms: delay_ms,
        ..GroupConfig::default()
    }
}

fn protocols(list: &[(&str, &str)]) -> Vec<JoinGroupRequestProtocol> {
    let to_protocol = |(name, meta): &(&str, &str)| {
        JoinGroupRequestProtocol::default()
            .with_name(s(name))
            .with_metadata(Bytes::copy_from_slice(meta.as_bytes()))
    };
    list.iter().map(to_protocol).collect()
}

fn join_req(member: &str, instance: Option<&str>, protos: &[(&str, &str)]) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_session_timeout_ms(SESSION_MS)
        .with_rebalance_timeout_ms(REBALANCE_MS)
        .with_member_id(s(member))
        .with_group_instance_id(instance.map(s))
        .with_protocol_type(s("consumer"))
        .with_protocols(protocols(protos))
}

fn sync_req(member: &str, generation: i32, assignments: &[(&str, &str)]) -> SyncGroupRequest {
    let to_assignment = |(m, a): &(&str, &str)| {
        SyncGroupRequestAssignment::default()
            .with_member_id(s(m))
            .with_assignment(Bytes::copy_from_slice(a.as_bytes()))
    };
    SyncGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_assignments(assignments.iter().map(to_assignment).collect())
}

fn heartbeat_req(member: &str, generation: i32) -> HeartbeatRequest {
    HeartbeatRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id(generation)
        .with_member_id(s(member))
}

fn commit_req(member: &str, generation: i32, offsets: &[(&str, i32, i64)]) -> OffsetCommitRequest {
    let topics = offsets.iter().map(|(topic, partition, offset)| {
        let p = OffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(1)
            .with_committed_metadata(Some(s("meta")));
        OffsetCommitRequestTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![p])
    });
    OffsetCommitRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(topics.collect())
}

/// Drives a [`Core`] with explicit time and collects replies per waiter.
struct Harness {
    core: Core,
    now: u64,
    waiter: u64,
    replies: HashMap<u64, GroupResponse>,
    records: Vec<state::LogRecord>,
}

impl Harness {
    fn new(delay_ms: u64) -> Harness {
        Harness {
            core: Core::new(config(delay_ms), OFFSETS_PARTITIONS_DEFAULT),
            now: 1_000,
            waiter: 0,
            replies: HashMap::new(),
            records: Vec::new(),
        }
    }

    fn absorb(&mut self, fx: Effects) {
        for reply in fx.replies {
            assert!(self.replies.insert(reply.waiter, reply.response).is_none());
        }
        self.records.extend(fx.records);
    }

    fn at(&self) -> Now {
        Now::at(self.now)
    }

    /// Sends a JoinGroup (v5); returns its waiter.
    fn join(&mut self, req: JoinGroupRequest) -> u64 {
        self.join_v(req, 5)
    }

    fn join_v(&mut self, req: JoinGroupRequest, version: i16) -> u64 {
        self.waiter += 1;
        let fx = self
            .core
            .join(&req, version, "client", self.waiter, self.at());
        self.absorb(fx);
        self.waiter
    }

    fn sync(&mut self, req: SyncGroupRequest) -> u64 {
        self.waiter += 1;
        let fx = self.core.sync(&req, 5, self.waiter, self.at());
        self.absorb(fx);
        self.waiter
    }

    fn heartbeat(&mut self, member: &str, generation: i32) -> i16 {
        self.core
            .heartbeat(&heartbeat_req(member, generation), self.at())
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let fx = self.core.tick(self.at());
        self.absorb(fx);
    }

    fn join_reply(&mut self, waiter: u64) -> Option<JoinGroupResponse> {
        match self.replies.remove(&waiter) {
            Some(GroupResponse::Join(r)) => Some(r),
            None => None,
            Some(other) => panic!("not a join reply: {other:?}"),
        }
    }

    fn sync_reply(&mut self, waiter: u64) -> Option<SyncGroupResponse> {
        match self.replies.remove(&waiter) {
            Some(GroupResponse::Sync(r)) => Some(r),
            None => None,
            Some(other) => panic!("not a sync reply: {other:?}"),
        }
    }

    fn state(&self) -> Option<GroupState> {
        self.core.groups.get(GROUP).map(|g| g.state)
    }

    fn generation(&self) -> i32 {
        self.core.groups.get(GROUP).map_or(-1, |g| g.generation)
    }

    /// Lets time pass in initial-delay steps (each new member extends the first
    /// rebalance by one delay, as Kafka's InitialDelayedJoin does) until `waiters` are
    /// answered.
    fn settle(&mut self, waiters: &[u64]) {
        for _ in 0..=(REBALANCE_MS as u64 / DELAY_MS) {
            if waiters.iter().all(|w| self.replies.contains_key(w)) {
                return;
            }
            self.advance(DELAY_MS);
        }
    }

    /// Joins `n` dynamic members with v5 (member id handed out first), waits out the
    /// initial delay and returns their member ids and join answers, leader first.
    fn form_group(&mut self, n: usize) -> Vec<(String, JoinGroupResponse)> {
        let mut waiters = Vec::new();
        for _ in 0..n {
            let first = self.join(join_req("", None, &[("range", "sub")]));
            let id = self.join_reply(first).map(|r| r.member_id.to_string());
            let id = id.unwrap_or_default();
            waiters.push((
                id.clone(),
                self.join(join_req(&id, None, &[("range", "sub")])),
            ));
        }
        let parked: Vec<u64> = waiters.iter().map(|(_, w)| *w).collect();
        self.settle(&parked);
        let mut out: Vec<(String, JoinGroupResponse)> = waiters
            .into_iter()
            .map(|(id, w)| (id, self.join_reply(w).unwrap_or_default()))
            .collect();
        out.sort_by_key(|(id, r)| r.leader.as_str() != id.as_str());
        out
    }

    /// Forms a group and completes its SyncGroup with assignment "a-<id>" each.
    fn stable_group(&mut self, n: usize) -> Vec<String> {
        let joined = self.form_group(n);
        let ids: Vec<String> = joined.iter().map(|(id, _)| id.clone()).collect();
        let generation = self.generation();
        let names: Vec<String> = ids.iter().map(|id| format!("a-{id}")).collect();
        let pairs: Vec<(&str, &str)> = ids
            .iter()
            .map(String::as_str)
            .zip(names.iter().map(String::as_str))
            .collect();
        for id in ids.iter().skip(1) {
            self.sync(sync_req(id, generation, &[]));
        }
        self.sync(sync_req(&ids[0], generation, &pairs));
        self.replies.clear();
        assert_eq!(self.state(), Some(GroupState::Stable));
        ids
    }
}

#[test]
fn offsets_partition_matches_kafka_java_string_hash() {
    assert_eq!(offsets_partition_for("my-group", 50), 12);
    assert_eq!(offsets_partition_for("console-consumer-12345", 50), 6);
    // Surrogate pairs hash as two UTF-16 code units.
    assert_eq!(offsets_partition_for("\u{1F600}", 50), 49);
    // hashCode() == Integer.MIN_VALUE: Utils.abs maps it to 0.
    assert_eq!(offsets_partition_for("polygenelubricants", 50), 0);
    assert_eq!(offsets_partition_for("", 7), 0);
}

#[test]
fn kip394_v4_join_without_member_id_gets_member_id_required() {
    let mut h = Harness::new(DELAY_MS);
    let waiter = h.join_v(join_req("", None, &[("range", "x")]), 4);
    let reply = h.join_reply(waiter).unwrap_or_default();
    assert_eq!(reply.error_code, code::MEMBER_ID_REQUIRED);
    assert!(
        reply.member_id.starts_with("client-"),
        "{}",
        reply.member_id.as_str()
    );
    assert_eq!(reply.member_id.len(), "client-".len() + 36);
    // v3 joins at once, with a member id made for it.
    let waiter = h.join_v(join_req("", None, &[("range", "x")]), 3);
    assert!(
        h.join_reply(waiter).is_none(),
        "parked until the rebalance completes"
    );
}

#[test]
fn three_members_join_one_generation_and_leader_gets_everyones_metadata() {
    let mut h = Harness::new(DELAY_MS);
    let joined = h.form_group(3);
    // Members arrived during the initial delay: it ran once more.
    assert_eq!(h.now, 1_000 + 2 * DELAY_MS);
    let generation = h.generation();
    assert_eq!(generation, 1);
    assert_eq!(h.state(), Some(GroupState::CompletingRebalance));
    let (leader, leader_reply) = &joined[0];
    assert_eq!(leader_reply.leader.as_str(), leader);
    assert_eq!(leader_reply.members.len(), 3);
    assert!(leader_reply
        .members
        .iter()
        .all(|m| m.metadata.as_ref() == b"sub"));
    for (id, reply) in &joined {
        assert_eq!(reply.error_code, code::NONE);
        assert_eq!(reply.generation_id, 1);
        assert_eq!(
            reply.protocol_name.as_ref().map(|p| p.as_str()),
            Some("range")
        );
        assert_eq!(reply.member_id.as_str(), id);
    }
    assert!(joined[1..].iter().all(|(_, r)| r.members.is_empty()));
}

#[test]
fn followers_sync_waits_for_leader_then_each_gets_its_own_assignment() {
    let mut h = Harness::new(DELAY_MS);
    let joined = h.form_group(3);
    let ids: Vec<&str> = joined.iter().map(|(id, _)| id.as_str()).collect();
    let follower = h.sync(sync_req(ids[1], 1, &[]));
    assert!(
        h.sync_reply(follower).is_none(),
        "follower waits for the leader"
    );
    let leader = h.sync(sync_req(
        ids[0],
        1,
        &[(ids[0], "A0"), (ids[1], "A1"), (ids[2], "A2")],
    ));
    assert_eq!(
        h.sync_reply(follower).map(|r| r.assignment),
        Some(Bytes::from("A1"))
    );
    assert_eq!(
        h.sync_reply(leader).map(|r| r.assignment),
        Some(Bytes::from("A0"))
    );
    assert_eq!(h.state(), Some(GroupState::Stable));
    // A follower syncing after the leader gets its stored assignment at once.
    let late = h.sync(sync_req(ids[2], 1, &[]));
    assert_eq!(
        h.sync_reply(late).map(|r| r.assignment),
        Some(Bytes::from("A2"))
    );
    // The stable generation is persisted as group metadata.
    let key = records::group_key(GROUP);
    assert!(h.records.iter().any(|r| r.key == key && r.value.is_some()));
}

#[test]
fn member_joining_stable_group_triggers_rebalance_and_heartbeats_report_it() {
    let mut h = Harness::new(DELAY_MS);
    let ids = h.stable_group(2);
    let newcomer = h.join_v(join_req("", None, &[("range", "sub")]), 3);
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    assert_eq!(h.heartbeat(&ids[0], 1), code::REBALANCE_IN_PROGRESS);
    assert_eq!(h.heartbeat(&ids[1], 1), code::REBALANCE_IN_PROGRESS);
    let w0 = h.join(join_req(&ids[0], None, &[("range", "sub")]));
    assert!(h.join_reply(newcomer).is_none());
    let w1 = h.join(join_req(&ids[1], None, &[("range", "sub")]));
    // Everyone rejoined: the generation completes without waiting for the timeout.
    for w in [newcomer, w0, w1] {
        let reply = h.join_reply(w).unwrap_or_default();
        assert_eq!((reply.error_code, reply.generation_id), (code::NONE, 2));
    }
}

#[test]
fn follower_rejoining_with_changed_metadata_triggers_rebalance() {
    // Cooperative assignors rejoin with their owned partitions in the metadata.
    let mut h = Harness::new(DELAY_MS);
    let ids = h.stable_group(2);
    let w = h.join(join_req(
        &ids[1],
        None,
        &[("cooperative-sticky", "owned"), ("range", "x")],
    ));
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    assert!(h.join_reply(w).is_none());
    assert_eq!(h.heartbeat(&ids[0], 1), code::REBALANCE_IN_PROGRESS);
}

#[test]
fn leaving_member_triggers_rebalance_without_it() {
    let mut h = Harness::new(DELAY_MS);
    let ids = h.stable_group(2);
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_members(vec![MemberIdentity::default().with_member_id(s(&ids[1]))]);
    let (response, _) = h.core.leave(&leave, 3, h.at());
    assert_eq!(response.members[0].error_code, code::NONE);
    assert_eq!(h.state(), Some(GroupState::PreparingRebalance));
    let w = h.join(join_req(&ids[0], None, &[("range", "sub")]));
    let reply = h.join_reply(w).unwrap_or_default();
    assert_eq!((reply.generation_id, reply.members.len()), (2, 1));
    // Leaving an unknown member is answered per member (v3+) or for the group (v0-2).
    let (response, _) = h.core.leave(&leave, 3, h.at());
    assert_eq!(response.members[0].error_code, code::UNKNOWN_MEMBER_ID);
    let old = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_member_id(s("x"));
    assert_eq!(
        h.core.leave(&old, 1, h.at()).0.error_code,
        code::UNKNOWN_MEMBER_ID
    );
}

#[test]
fn session_expiry_removes_member_and_triggers_rebalance() {
    let mut h = Harness::new(DELAY_MS);
    let ids = h.stable_group(2);
    let step = u64::try_from(SESSION_MS).unwrap_or(0) * 2 / 5;
    for _ in 0..2 {
        h.advance(step);
        assert_eq!(h.heartbeat(&ids[0], 1), code::NONE);
    }
    assert_eq!(h.state(), Some(GroupState::Stable));
    h.advance(step);
    assert_eq!(
        h.state(),
        Some(GroupState::PreparingRebalance),
        "silent member expired"
    );
    assert!(!h.core.groups[GROUP].members.contains_key(&ids[1]));
    let w = h.join(join_req(&ids[0], None, &[("range", "sub")]));
    assert_eq!(h.join_reply(w).map(|r| r.members.len()), Some(1));
}

#[test]
fn rebalance_timeout_completes_join_without_members_that_did_not_rejoin() {
    let mut h = Harness::new(DELAY_MS);
    let ids = h.stable_group(2);
    let w = h.join(join_req(&ids[0], None, &[("range", "other-metadata")]));
    assert!(h.join_reply(w).is_none());
    // ids[1] keeps heartbeating but never rejoins.
    let step = 5_000;
    for _ in 0..(REBALANCE_MS as u64 / step) {
        assert_eq!(h.heartbeat(&ids[1], 1), code::REBALANCE_IN_PROGRESS);
        h.advance(step);
    }
    let reply = h.join_reply(w).unwrap_or_default();
    assert_eq!((reply.generation_id, reply.members.len()), (2, 1));
    assert_eq!(h.heartbeat(&ids[1], 2), code::UNKNOWN_MEMBER_ID);
}

#[test]
fn kip345_static_member_rejoin_in_stable_gets_assignment_without_rebalance() {
    let mut h = Harness::new(DELAY_MS);
    let w = h.join(join_req("", Some("inst-1"), &[("range", "sub")]));
    h.advance(DELAY_MS);
    let joined = h.join_reply(w).unwrap_or_default();
    let old_id = joined.member_id.to_string();
    assert!(old_id.starts_with("inst-1-"));
    let sw = h.sync(sync_req(&old_id, 1, &[(&old_id, "A")]));
    assert!(h.sync_reply(sw).is_some());
    // Restarted instance: unknown member id, same instance id.
    let w = h.join(join_req("", Some("inst-1"), &[("range", "sub")]));
    let reply = h.join_reply(w).unwrap_or_default();
    let new_id = reply.member_id.to_string();
    assert_eq!((reply.error_code, reply.generation_id), (code::NONE, 1));
    assert_ne!(new_id, old_id);
    assert_eq!(h.state(), Some(GroupState::Stable), "no rebalance");
    let sw = h.sync(sync_req(&new_id, 1, &[]));
    assert_eq!(
        h.sync_reply(sw).map(|r| r.assignment),
        Some(Bytes::from("A"))
    );
    // The old member id is fenced.
    let mut hb = heartbeat_req(&old_id, 1);
    hb.group_instance_id = Some(s("inst-1"));
    assert_eq!(h.core.heartbeat(&hb, h.at()), code::FENCED_INSTANCE_ID);
    let mut stale = join_req(&old_id, Some("inst-1"), &[("range", "sub")]);
    stale.session_timeout_ms = SESSION_MS;
    let w = h.join(stale);
    assert_eq!(
        h.join_reply(w).map(|r| r.error_code),
        Some(code::FENCED_INSTANCE_ID)
    );
}

#[test]
fn kip345_static_member_replacement_fences_its_parked_join() {
    let mut h = Harness::new(DELAY_MS);
    let first = h.join(join_req("", Some("inst"), &[("range", "sub")]));
    // A second process with the same instance id joins during the delay.
    let second = h.join(join_req("", Some("inst"), &[("range", "sub")]));
    assert_eq!(
        h.join_reply(first).map(|r| r.error_code),
        Some(code::FENCED_INSTANCE_ID)
    );
    h.advance(DELAY_MS);
    assert_eq!(h.join_reply(second).map(|r| r.error_code), Some(code::NONE));
}

#[test]
fn stale_generation_is_illegal_and_unknown_member_is_rejected() {
    let mut h = Harness::new(DELAY_MS);
    let ids = h.stable_group(1);
    assert_eq!(h.heartbeat(&ids[0], 0), code::ILLEGAL_GENERATION);
    assert_eq!(h.heartbeat("nobody", 1), code::UNKNOWN_MEMBER_ID);
    let w = h.sync(sync_req(&ids[0], 7, &[]));
    assert_eq!(
        h.sync_reply(w).map(|r| r.error_code),
        Some(code::ILLEGAL_GENERATION)
    );
    let plan = h
        .core
        .plan_commit(&commit_req(&ids[0], 0, &[("t", 0, 5)]), h.at());
    assert_eq!(plan.topics[0].1[0].1, code::ILLEGAL_GENERATION);
    let plan = h
        .core
        .plan_commit(&commit_req("nobody", 1, &[("t", 0, 5)]), h.at());
    assert_eq!(plan.topics[0].1[0].1, code::UNKNOWN_MEMBER_ID);
    let plan = h
        .core
        .plan_commit(&commit_req(&ids[0], 1, &[("t", 0, 5)]), h.at());
    assert_eq!(
        (plan.topics[0].1[0].1, plan.accepted.len()),
        (code::NONE, 1)
    );
}

#[test]
fn commit_during_completing_rebalance_is_rebalance_in_progress() {
    let mut h = Harness::new(DELAY_MS);
    let joined = h.form_group(1);
    let plan = h
        .core
        .plan_commit(&commit_req(&joined[0].0, 1, &[("t", 0, 1)]), h.at());
    assert_eq!(plan.topics[0].1[0].1, code::REBALANCE_IN_PROGRESS);
}

#[test]
fn simple_consumer_commit_creates_empty_group_and_unknown_group_rejects_generations() {
    let mut h = Harness::new(DELAY_MS);
    let plan = h
        .core
        .plan_commit(&commit_req("", 3, &[("t", 0, 1)]), h.at());
    assert_eq!(plan.topics[0].1[0].1, code::ILLEGAL_GENERATION);
    let plan = h
        .core
        .plan_commit(&commit_req("", -1, &[("t", 0, 1)]), h.at());
    assert_eq!(plan.accepted.len(), 1);
    assert_eq!(h.state(), Some(GroupState::Empty));
}

#[test]
fn protocol_is_chosen_by_vote_among_protocols_all_members_support() {
    let mut h = Harness::new(DELAY_MS);
    let a = h.join_v(join_req("", None, &[("range", "1"), ("sticky", "1")]), 3);
    let b = h.join_v(join_req("", None, &[("sticky", "2"), ("range", "2")]), 3);
    let c = h.join_v(
        join_req("", None, &[("sticky", "3"), ("roundrobin", "3")]),
        3,
    );
    let bad = h.join_v(join_req("", None, &[("roundrobin", "4")]), 3);
    assert_eq!(
        h.join_reply(bad).map(|r| r.error_code),
        Some(code::INCONSISTENT_GROUP_PROTOCOL)
    );
    h.settle(&[a, b, c]);
    for w in [a, b, c] {
        let name = h
            .join_reply(w)
            .and_then(|r| r.protocol_name)
            .map(|p| p.to_string());
        assert_eq!(name.as_deref(), Some("sticky"));
    }
}

#[test]
fn limits_are_enforced_with_kafka_error_codes() {
    let mut h = Harness::new(DELAY_MS);
    h.core.config.members_per_group_max = 2;
    let mut short = join_req("", None, &[("range", "x")]);
    short.session_timeout_ms = SESSION_TIMEOUT_MS_MIN_DEFAULT - 1;
    let w = h.join(short);
    assert_eq!(
        h.join_reply(w).map(|r| r.error_code),
        Some(code::INVALID_SESSION_TIMEOUT)
    );
    assert!(
        h.core.groups.is_empty(),
        "a refused join leaves no group behind"
    );
    for _ in 0..2 {
        let w = h.join(join_req("", None, &[("range", "x")]));
        assert_eq!(
            h.join_reply(w).map(|r| r.error_code),
            Some(code::MEMBER_ID_REQUIRED)
        );
    }
    let w = h.join(join_req("", None, &[("range", "x")]));
    assert_eq!(
        h.join_reply(w).map(|r| r.error_code),
        Some(code::GROUP_MAX_SIZE_REACHED)
    );
    let mut big = commit_req("", -1, &[("t", 0, 1)]);
    big.group_id = GroupId(s("other"));
    big.topics[0].partitions[0].committed_metadata = Some(s(&"m".repeat(5_000)));
    let plan = h.core.plan_commit(&big, h.at());
    assert_eq!(plan.topics[0].1[0].1, code::OFFSET_METADATA_TOO_LARGE);
}

#[test]
fn unused_member_id_expires_and_does_not_block_the_rebalance() {
    let mut h = Harness::new(DELAY_MS);
    let a = h.join(join_req("", None, &[("range", "x")]));
    let a_id = h
        .join_reply(a)
        .map(|r| r.member_id.to_string())
        .unwrap_or_default();
    let _never = h.join(join_req("", None, &[("range", "x")]));
    let a = h.join(join_req(&a_id, None, &[("range", "x")]));
    h.advance(DELAY_MS);
    assert_eq!(h.join_reply(a).map(|r| r.generation_id), Some(1));
    h.advance(u64::try_from(SESSION_MS).unwrap_or(0));
    assert!(h.core.groups[GROUP].pending.is_empty());
}

#[test]
fn describe_and_list_report_kafka_state_names() {
    let mut h = Harness::new(DELAY_MS);
    let ids = h.stable_group(2);
    let described = h.core.describe(&[GROUP.to_owned(), "missing".to_owned()]);
    assert_eq!(described[0].group_state.as_str(), "Stable");
    assert_eq!(described[0].protocol_data.as_str(), "range");
    assert_eq!(described[0].members.len(), 2);
    let first = &described[0].members[0];
    assert_eq!(
        first.member_assignment,
        Bytes::from(format!("a-{}", first.member_id.as_str()))
    );
    assert!(ids.contains(&first.member_id.to_string()));
    assert_eq!(described[1].group_state.as_str(), "Dead");
    assert_eq!(h.core.list(&[]).len(), 1);
    assert_eq!(h.core.list(&["stable".to_owned()]).len(), 1);
    assert!(h.core.list(&["Empty".to_owned()]).is_empty());
}

#[test]
fn delete_groups_only_removes_empty_groups() {
    let mut h = Harness::new(DELAY_MS);
    h.stable_group(1);
    let (codes, records) = h.core.delete(&[GROUP.to_owned(), "missing".to_owned()]);
    assert_eq!(codes[0].1, code::NON_EMPTY_GROUP);
    assert_eq!(codes[1].1, code::GROUP_ID_NOT_FOUND);
    assert!(records.is_empty());
}

#[test]
fn responses_encode_at_every_version_clients_use() {
    let mut h = Harness::new(DELAY_MS);
    let joined = h.form_group(2);
    let join = joined[0].1.clone();
    encodes(&join, 0..=9);
    let error = state::join_error(0, "", code::UNKNOWN_MEMBER_ID);
    encodes(&error, 0..=9);
    let ids: Vec<&str> = joined.iter().map(|(id, _)| id.as_str()).collect();
    let w = h.sync(sync_req(ids[0], 1, &[(ids[0], "A")]));
    let sync = h.sync_reply(w).unwrap_or_default();
    encodes(&sync, 0..=5);
    let described = h.core.describe(&[GROUP.to_owned()]);
    encodes(&described[0], 0..=6);
    let listed = h.core.list(&[]);
    encodes(&listed[0], 0..=5);
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_member_id(s("x"));
    let (left, _) = h.core.leave(&leave, 1, h.at());
    encodes(&left, 0..=2);
    let plan = h
        .core
        .plan_commit(&commit_req(ids[0], 1, &[("t", 0, 1)]), h.at());
    let commit = plan.response(None);
    encodes(&commit, 2..=9);
}

/// Asserts `msg` encodes at every version in `versions`.
fn encodes<T: Encodable>(msg: &T, versions: std::ops::RangeInclusive<i16>) {
    for v in versions {
        let mut buf = BytesMut::new();
        assert!(msg.encode(&mut buf, v).is_ok(), "version {v}");
    }
}

// ---- The async shell over an in-memory __consumer_offsets ----

/// An in-memory partitioned log: batches get consecutive offsets.
#[derive(Default)]
struct FakeLog {
    partitions: RefCell<HashMap<u32, Vec<Bytes>>>,
    next: RefCell<HashMap<u32, i64>>,
    failing: Cell<bool>,
}

impl OffsetsLog for FakeLog {
    fn append(&self, partition: u32, batch: Bytes) -> LocalBoxFuture<'_, Result<i64, String>> {
        Box::pin(async move {
            if self.failing.get() {
                return Err("disk full".to_owned());
            }
            let header = batch::validate(&batch).map_err(|e| e.to_string())?;
            let mut next = self.next.borrow_mut();
            let base = *next.entry(partition).or_default();
            let mut stamped = batch.to_vec();
            batch::stamp(&mut stamped, base, 0);
            next.insert(partition, base + i64::from(header.last_offset_delta) + 1);
            self.partitions
                .borrow_mut()
                .entry(partition)
                .or_default()
                .push(stamped.into());
            Ok(base)
        })
    }

    fn read(&self, partition: u32, offset: i64, _max: usize) -> LocalBoxFuture<'_, ReadResult> {
        Box::pin(async move {
            let end = self.next.borrow().get(&partition).copied().unwrap_or(0);
            let all = self
                .partitions
                .borrow()
                .get(&partition)
                .cloned()
                .unwrap_or_default();
            let from = all
                .into_iter()
                .filter(|b| batch::BatchHeader::parse(b).is_ok_and(|h| h.last_offset() >= offset));
            Ok((from.collect(), end))
        })
    }
}

type ReadResult = Result<(Vec<Bytes>, i64), String>;

fn run_local<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).spawn(f);
    handle
        .expect("executor starts")
        .join()
        .expect("test executor finished");
}

fn coordinator(log: &Rc<FakeLog>) -> Rc<GroupCoordinator> {
    let store = OffsetsStore {
        log: log.clone(),
        partitions: OFFSETS_PARTITIONS_DEFAULT,
    };
    GroupCoordinator::with_config(store, config(0))
}

async fn commit(c: &Rc<GroupCoordinator>, req: OffsetCommitRequest) -> Vec<i16> {
    match c.handle(GroupRequest::OffsetCommit(req, 8)).await {
        GroupResponse::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
            .collect(),
        other => panic!("{other:?}"),
    }
}

async fn fetch_all(c: &Rc<GroupCoordinator>) -> Result<Vec<FetchedOffset>, i16> {
    let req = GroupRequest::OffsetFetch {
        group_id: GROUP.to_owned(),
        topics: None,
        require_stable: true,
    };
    match c.handle(req).await {
        GroupResponse::OffsetFetch(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn committed_offsets_round_trip_and_are_fetched_by_topic_or_all() {
    run_local(|| async {
        let log = Rc::new(FakeLog::default());
        let c = coordinator(&log);
        let codes = commit(&c, commit_req("", -1, &[("t", 0, 10), ("t", 1, 20)])).await;
        assert_eq!(codes, vec![code::NONE, code::NONE]);
        let all = fetch_all(&c).await.unwrap_or_default();
        let got: Vec<(i32, i64, i32)> = all
            .iter()
            .map(|o| (o.partition, o.offset, o.leader_epoch))
            .collect();
        assert_eq!(got, vec![(0, 10, 1), (1, 20, 1)]);
        assert_eq!(all[0].metadata.as_deref(), Some("meta"));
        let some = GroupRequest::OffsetFetch {
            group_id: GROUP.to_owned(),
            topics: Some(vec![("t".to_owned(), vec![1, 9])]),
            require_stable: false,
        };
        let GroupResponse::OffsetFetch(Ok(some)) = c.handle(some).await else {
            panic!("fetch failed");
        };
        let got: Vec<(i32, i64)> = some.iter().map(|o| (o.partition, o.offset)).collect();
        assert_eq!(got, vec![(1, 20), (9, -1)]);
    });
}

#[test]
fn commit_is_acknowledged_only_after_durable_append() {
    run_local(|| async {
        let log = Rc::new(FakeLog::default());
        let c = coordinator(&log);
        log.failing.set(true);
        let codes = commit(&c, commit_req("", -1, &[("t", 0, 10)])).await;
        assert_eq!(codes, vec![code::COORDINATOR_NOT_AVAILABLE]);
        let all = fetch_all(&c).await.unwrap_or_default();
        assert!(all.is_empty(), "a failed commit is not visible: {all:?}");
    });
}

#[test]
fn reload_from_log_restores_offsets_and_group_generation() {
    run_local(|| async {
        let log = Rc::new(FakeLog::default());
        let c = coordinator(&log);
        let join = join_req("", None, &[("range", "sub")]);
        let GroupResponse::Join(joined) = c.handle(GroupRequest::Join(join, 3, "cli".into())).await
        else {
            panic!("join failed");
        };
        let id = joined.member_id.to_string();
        assert_eq!((joined.error_code, joined.generation_id), (code::NONE, 1));
        let sync = sync_req(&id, 1, &[(&id, "A")]);
        c.handle(GroupRequest::Sync(sync, 3)).await;
        let codes = commit(&c, commit_req(&id, 1, &[("t", 0, 5)])).await;
        assert_eq!(codes, vec![code::NONE]);
        commit(&c, commit_req(&id, 1, &[("t", 0, 7)])).await;

        // A fresh coordinator over the same log: a restart.
        let c = coordinator(&log);
        let partition = offsets_partition_for(GROUP, OFFSETS_PARTITIONS_DEFAULT);
        assert_eq!(c.load(partition).await, Ok(()));
        let all = fetch_all(&c).await.unwrap_or_default();
        assert_eq!(all.iter().map(|o| o.offset).collect::<Vec<_>>(), vec![7]);
        // The member carries on in its generation, as with Kafka's coordinator failover.
        let hb = GroupRequest::Heartbeat(heartbeat_req(&id, 1), 3);
        let GroupResponse::Heartbeat(hb) = c.handle(hb).await else {
            panic!("heartbeat failed");
        };
        assert_eq!(hb.error_code, code::NONE);
        let sync = GroupRequest::Sync(sync_req(&id, 1, &[]), 3);
        let GroupResponse::Sync(synced) = c.handle(sync).await else {
            panic!("sync failed");
        };
        assert_eq!(synced.assignment, Bytes::from("A"));
    });
}

#[test]
fn tombstones_delete_offsets_and_groups_across_reload() {
    run_local(|| async {
        let log = Rc::new(FakeLog::default());
        let c = coordinator(&log);
        commit(&c, commit_req("", -1, &[("t", 0, 1), ("u", 0, 2)])).await;
        let delete = OffsetDeleteRequest::default()
            .with_group_id(GroupId(s(GROUP)))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![OffsetDeleteRequestPartition::default()])]);
        let GroupResponse::OffsetDelete(r) = c.handle(GroupRequest::OffsetDelete(delete, 0)).await
        else {
            panic!("offset delete failed");
        };
        assert_eq!(r.error_code, code::NONE);
        let partition = offsets_partition_for(GROUP, OFFSETS_PARTITIONS_DEFAULT);
        let c = coordinator(&log);
        assert_eq!(c.load(partition).await, Ok(()));
        let topics: Vec<String> = fetch_all(&c)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.topic)
            .collect();
        assert_eq!(topics, vec!["u".to_owned()]);

        let GroupResponse::Delete(codes) = c.handle(GroupRequest::Delete(vec![GROUP.into()])).await
        else {
            panic!("delete failed");
        };
        assert_eq!(codes, vec![(GROUP.to_owned(), code::NONE)]);
        let c = coordinator(&log);
        assert_eq!(c.load(partition).await, Ok(()));
        assert_eq!(fetch_all(&c).await, Ok(Vec::new()));
        let GroupResponse::Describe(d) = c.handle(GroupRequest::Describe(vec![GROUP.into()])).await
        else {
            panic!("describe failed");
        };
        assert_eq!(d[0].group_state.as_str(), "Dead");
    });
}

#[test]
fn requests_during_load_get_coordinator_load_in_progress() {
    let mut h = Harness::new(DELAY_MS);
    let partition = h.core.partition_of(GROUP);
    let parked = h.join_v(join_req("", None, &[("range", "x")]), 3);
    let fx = h.core.begin_load(partition);
    h.absorb(fx);
    let error = h.join_reply(parked).map(|r| r.error_code);
    assert_eq!(
        error,
        Some(code::COORDINATOR_LOAD_IN_PROGRESS),
        "parked join released"
    );
    assert_eq!(h.heartbeat("m", 1), code::COORDINATOR_LOAD_IN_PROGRESS);
    assert_eq!(
        h.core.fetch(GROUP, None),
        Err(code::COORDINATOR_LOAD_IN_PROGRESS)
    );
    let w = h.join(join_req("", None, &[("range", "x")]));
    let error = h.join_reply(w).map(|r| r.error_code);
    assert_eq!(error, Some(code::COORDINATOR_LOAD_IN_PROGRESS));
    h.core.end_load(partition, h.at());
    assert_eq!(h.core.fetch(GROUP, None), Ok(Vec::new()));
}

// ---- Committed offsets expire (offsets.retention.minutes, KIP-211) ----

const RETENTION_MS: u64 = 3_600_000;
const CHECK_MS: u64 = 60_000;

fn expiring() -> Harness {
    let mut h = Harness::new(DELAY_MS);
    h.core.config.offsets_retention_ms = RETENTION_MS;
    h.core.config.offsets_retention_check_ms = CHECK_MS;
    // The first tick only starts the clock of the checks.
    h.advance(1);
    h
}

fn commit_now(h: &mut Harness, member: &str, generation: i32, offsets: &[(&str, i32, i64)]) {
    let plan = h
        .core
        .plan_commit(&commit_req(member, generation, offsets), h.at());
    assert_eq!(plan.accepted.len(), offsets.len(), "{plan:?}");
    let at = h.at();
    h.core.apply_commit(&plan, 0, at);
}

fn committed(h: &Harness) -> Vec<(String, i32)> {
    h.core
        .groups
        .get(GROUP)
        .map(|g| g.offsets.keys().cloned().collect())
        .unwrap_or_default()
}

/// Tombstoned `__consumer_offsets` keys so far.
fn tombstones(h: &Harness) -> usize {
    h.records.iter().filter(|r| r.value.is_none()).count()
}

#[test]
fn a_group_that_only_commits_loses_each_offset_retention_after_its_commit() {
    let mut h = expiring();
    commit_now(&mut h, "", -1, &[("t", 0, 5)]);
    h.advance(RETENTION_MS / 2);
    commit_now(&mut h, "", -1, &[("t", 1, 7)]);
    h.advance(RETENTION_MS / 2 + CHECK_MS);
    assert_eq!(
        committed(&h),
        vec![("t".to_owned(), 1)],
        "only the older one expired"
    );
    assert_eq!(tombstones(&h), 1);
    h.advance(RETENTION_MS / 2 + CHECK_MS);
    assert!(committed(&h).is_empty());
    assert!(
        !h.core.groups.contains_key(GROUP),
        "the empty group went with them"
    );
    assert_eq!(tombstones(&h), 3, "two offsets and the group");
    assert!(h.core.fetch(GROUP, None).expect("fetch").is_empty());
}

#[test]
fn an_empty_consumer_group_keeps_its_offsets_for_the_retention_after_it_emptied() {
    let mut h = expiring();
    let ids = h.stable_group(1);
    let generation = h.generation();
    commit_now(&mut h, &ids[0], generation, &[("t", 0, 42)]);
    // Committed long ago, but the group is alive: nothing expires.
    for _ in 0..(RETENTION_MS / (SESSION_MS as u64 / 2)) + 1 {
        assert_eq!(h.heartbeat(&ids[0], generation), code::NONE);
        h.advance(SESSION_MS as u64 / 2);
    }
    assert_eq!(
        committed(&h).len(),
        1,
        "an active group's subscribed offsets stay"
    );
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_member_id(s(&ids[0]));
    let (_, fx) = h.core.leave(&leave, 1, h.at());
    h.absorb(fx);
    assert_eq!(h.state(), Some(GroupState::Empty));
    h.advance(RETENTION_MS - CHECK_MS);
    assert_eq!(
        committed(&h).len(),
        1,
        "not yet: retention counts from emptying"
    );
    h.advance(2 * CHECK_MS);
    assert!(committed(&h).is_empty());
    assert!(!h.core.groups.contains_key(GROUP));
}

#[test]
fn a_stable_consumer_group_loses_only_offsets_of_topics_nobody_subscribes_to() {
    let mut h = expiring();
    // ConsumerProtocolSubscription v0: version, one topic "t".
    let subscription = "\0\0\0\0\0\u{1}\0\u{1}t";
    let first = h.join(join_req("", None, &[("range", subscription)]));
    let id = h
        .join_reply(first)
        .map(|r| r.member_id.to_string())
        .unwrap_or_default();
    let w = h.join(join_req(&id, None, &[("range", subscription)]));
    h.settle(&[w]);
    let generation = h.generation();
    let w = h.sync(sync_req(&id, generation, &[(&id, "a")]));
    assert!(h.sync_reply(w).is_some());
    assert_eq!(h.state(), Some(GroupState::Stable));
    commit_now(&mut h, &id, generation, &[("t", 0, 1), ("old", 0, 2)]);
    for _ in 0..(RETENTION_MS / (SESSION_MS as u64 / 2)) + 2 {
        assert_eq!(h.heartbeat(&id, generation), code::NONE);
        h.advance(SESSION_MS as u64 / 2);
    }
    assert_eq!(committed(&h), vec![("t".to_owned(), 0)]);
    assert_eq!(tombstones(&h), 1);
}

#[test]
fn an_offset_being_committed_does_not_expire_under_the_commit() {
    let mut h = expiring();
    commit_now(&mut h, "", -1, &[("t", 0, 5)]);
    h.advance(RETENTION_MS - CHECK_MS);
    // A new commit of the same offset is on its way to the log when the
    // check runs: the old value must not be tombstoned after it.
    let plan = h
        .core
        .plan_commit(&commit_req("", -1, &[("t", 0, 6)]), h.at());
    h.advance(2 * CHECK_MS);
    assert_eq!(committed(&h), vec![("t".to_owned(), 0)]);
    assert_eq!(tombstones(&h), 0);
    let at = h.at();
    h.core.apply_commit(&plan, 1, at);
    h.advance(RETENTION_MS - 4 * CHECK_MS);
    assert_eq!(
        committed(&h).len(),
        1,
        "the new commit counts from its own time"
    );
    h.advance(2 * CHECK_MS);
    assert!(committed(&h).is_empty());
    // A commit that fails to persist no longer holds the offsets.
    commit_now(&mut h, "", -1, &[("u", 1, 1)]);
    let failed = h
        .core
        .plan_commit(&commit_req("", -1, &[("u", 1, 2)]), h.at());
    h.core.abort_commit(&failed);
    h.advance(RETENTION_MS + CHECK_MS);
    assert!(committed(&h).is_empty());
}

/// What lets the coordinator's timer sleep: a Stable group has deadlines to
/// watch; once its last member leaves, the Empty group (no offsets) has only
/// its removal, `empty_group_retention_ms` later, which is then when the idle
/// coordinator must wake; after the removal only the offsets check is due.
#[test]
fn an_idle_coordinator_knows_its_next_deadline() {
    let mut h = Harness::new(DELAY_MS);
    h.core.config.empty_group_retention_ms = 5_000;
    h.advance(0);
    let check = h.now + h.core.config.offsets_retention_check_ms;
    assert!(!h.core.has_timed_work());
    assert_eq!(h.core.next_idle_deadline_ms(), check);
    let ids = h.stable_group(1);
    assert!(
        h.core.has_timed_work(),
        "a Stable group has sessions to watch"
    );
    let leave = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(GROUP)))
        .with_members(vec![MemberIdentity::default().with_member_id(s(&ids[0]))]);
    h.core.leave(&leave, 3, h.at());
    assert_eq!(h.state(), Some(GroupState::Empty));
    assert!(!h.core.has_timed_work());
    let removal = h.now + h.core.config.empty_group_retention_ms;
    assert!(removal < check);
    assert_eq!(h.core.next_idle_deadline_ms(), removal);
    h.now = removal;
    h.advance(0);
    assert_eq!(h.state(), None, "removed at its deadline");
}
