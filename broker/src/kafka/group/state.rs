//! The sans-IO core of the group coordinator: Kafka's classic group state machine.
//!
//! [`Core`] takes requests and ticks with the current time ([`Now`]) and returns
//! [`Effects`]: replies for parked JoinGroup/SyncGroup requests (named by a
//! [`WaiterId`] the caller chose) and records to append to `__consumer_offsets`. It never
//! blocks, sleeps or touches I/O, so every rebalance path is tested by driving it
//! directly.
//!
//! States follow Kafka's `GroupCoordinator`: Empty -> PreparingRebalance (joins are
//! collected) -> CompletingRebalance (the leader computes assignments) -> Stable
//! (the leader's SyncGroup is relayed). A group that is deleted is simply removed; a
//! missing group is described as "Dead".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{
    JoinGroupRequest, JoinGroupResponse, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::records::{self, GroupValue, MemberValue};
use super::{code, offsets_partition_for, GroupConfig, GroupResponse};

/// Names a parked request; chosen by the caller, echoed in [`Reply`].
pub type WaiterId = u64;

/// The time of an input: `ms` is monotonic (deadlines), `wall_ms` is the Unix time in
/// milliseconds (stored in records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub ms: u64,
    pub wall_ms: i64,
}

impl Now {
    /// A time whose wall clock equals its monotonic clock (tests).
    #[cfg(test)]
    pub fn at(ms: u64) -> Now {
        Now {
            ms,
            wall_ms: i64::try_from(ms).unwrap_or(i64::MAX),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The name Kafka's DescribeGroups and ListGroups use.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// The answer to a parked request.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub waiter: WaiterId,
    pub response: GroupResponse,
}

/// One record for `__consumer_offsets` (`value: None` is a tombstone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub partition: u32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// What a step of the core asks the shell to do: append `records` (in order), then
/// deliver `replies`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    pub replies: Vec<Reply>,
    pub records: Vec<LogRecord>,
}

/// A parked request and the version to shape its answer for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub waiter: WaiterId,
    pub version: i16,
}

#[derive(Clone, Debug)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// (protocol name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub(crate) join: Option<Waiting>,
    pub(crate) sync: Option<Waiting>,
    pub heartbeat_deadline_ms: u64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        let found = self.protocols.iter().find(|(name, _)| name == protocol);
        found.map(|(_, meta)| meta.clone()).unwrap_or_default()
    }

    fn refresh(&mut self, now: Now) {
        let session = u64::try_from(self.session_timeout_ms).unwrap_or(0);
        self.heartbeat_deadline_ms = now.ms.saturating_add(session);
    }
}

/// A committed offset as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Where its record sits in `__consumer_offsets`: a record applied late (appends
    /// completing out of order) never overwrites a newer one.
    pub log_offset: i64,
}

#[derive(Clone, Debug)]
pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub state_since_ms: u64,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group_instance_id -> member id, for static members.
    pub instances: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their join deadline.
    pub pending: HashMap<String, u64>,
    /// The join deadline (PreparingRebalance) or the sync deadline (CompletingRebalance).
    pub phase_deadline_ms: Option<u64>,
    /// While the first rebalance of an Empty group waits `initial_rebalance_delay_ms`:
    /// what is left of the rebalance timeout.
    pub initial_remaining_ms: Option<u64>,
    pub new_member_added: bool,
    pub offsets: BTreeMap<(String, i32), Committed>,
    /// Offsets whose commit is being appended to the log (not applied yet):
    /// expiry leaves them alone, as Kafka's pendingOffsetCommits.
    pub pending_commits: HashMap<(String, i32), u32>,
}

/// Everything a group transition needs besides the group.
pub(crate) struct Ctx<'a> {
    pub config: &'a GroupConfig,
    pub now: Now,
    pub partition: u32,
    pub fx: &'a mut Effects,
}

/// The inputs of one JoinGroup.
pub(crate) struct JoinArgs<'a> {
    pub req: &'a JoinGroupRequest,
    pub wait: Waiting,
    pub client_id: &'a str,
    pub protocols: Vec<(String, Bytes)>,
}

impl JoinArgs<'_> {
    fn instance(&self) -> Option<&str> {
        self.req.group_instance_id.as_ref().map(|s| s.as_str())
    }

    fn rebalance_timeout_ms(&self) -> i32 {
        if self.wait.version == 0 {
            self.req.session_timeout_ms
        } else {
            self.req.rebalance_timeout_ms
        }
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// A JoinGroup answer carrying only an error.
pub(crate) fn join_error(version: i16, member_id: &str, error: i16) -> JoinGroupResponse {
    let protocol_name = (version < 7).then(StrBytes::default);
    JoinGroupResponse::default()
        .with_error_code(error)
        .with_generation_id(-1)
        .with_protocol_name(protocol_name)
        .with_member_id(str_bytes(member_id))
}

/// A SyncGroup answer carrying only an error.
pub(crate) fn sync_error(error: i16) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(error)
}

impl Effects {
    pub(crate) fn reply(&mut self, waiter: WaiterId, response: GroupResponse) {
        self.replies.push(Reply { waiter, response });
    }

    fn join_error(&mut self, wait: Waiting, member_id: &str, error: i16) {
        let response = join_error(wait.version, member_id, error);
        self.reply(wait.waiter, GroupResponse::Join(response));
    }

    fn sync_error(&mut self, wait: Waiting, error: i16) {
        self.reply(wait.waiter, GroupResponse::Sync(sync_error(error)));
    }
}

impl Group {
    pub fn new(id: &str, now: Now) -> Group {
        Group {
            id: id.to_owned(),
            state: GroupState::Empty,
            state_since_ms: now.ms,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            instances: HashMap::new(),
            pending: HashMap::new(),
            phase_deadline_ms: None,
            initial_remaining_ms: None,
            new_member_added: false,
            offsets: BTreeMap::new(),
            pending_commits: HashMap::new(),
        }
    }

    fn set_state(&mut self, state: GroupState, now: Now) {
        self.state = state;
        self.state_since_ms = now.ms;
    }

    /// Members joined plus member ids handed out and not yet used.
    pub fn size(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    /// Whether a group created for a request that was then refused holds nothing.
    pub fn is_unused(&self) -> bool {
        self.state == GroupState::Empty
            && self.generation == 0
            && self.size() == 0
            && self.offsets.is_empty()
    }

    fn rebalance_timeout_ms(&self) -> u64 {
        let max = self.members.values().map(|m| m.rebalance_timeout_ms).max();
        u64::try_from(max.unwrap_or(0)).unwrap_or(0)
    }

    /// Kafka's `supportsProtocols`: a first member must name a type and a protocol;
    /// later ones must share the type and one protocol every member supports.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|(name, _)| {
                let count = self.members.values();
                count
                    .filter(|m| m.protocols.iter().any(|(n, _)| n == name))
                    .count()
                    == self.members.len()
            })
    }

    /// The protocol every member supports that most members prefer (ties go to the
    /// protocol listed first by the first member).
    pub fn select_protocol(&self) -> Option<String> {
        let first = self.members.values().next()?;
        let supported_by_all = |name: &str| {
            let mut all = self.members.values();
            all.all(|m| m.protocols.iter().any(|(n, _)| n == name))
        };
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| supported_by_all(n))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for m in self.members.values() {
            let vote = m
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| c == n));
            if let Some(i) = vote {
                votes[i] += 1;
            }
        }
        let best = votes
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)));
        best.map(|(i, _)| candidates[i].to_owned())
    }

    /// Kafka's `isStaticMemberFenced` and membership check, in Kafka's order.
    pub(crate) fn check_member(&self, member_id: &str, instance: Option<&str>) -> Option<i16> {
        if let Some(current) = instance.and_then(|i| self.instances.get(i)) {
            if current != member_id {
                return Some(code::FENCED_INSTANCE_ID);
            }
        }
        if !self.members.contains_key(member_id) {
            return Some(code::UNKNOWN_MEMBER_ID);
        }
        None
    }

    pub(crate) fn join(&mut self, cx: &mut Ctx<'_>, args: JoinArgs<'_>) {
        let member_id = args.req.member_id.as_str().to_owned();
        if !self.supports(args.req.protocol_type.as_str(), &args.protocols) {
            cx.fx
                .join_error(args.wait, &member_id, code::INCONSISTENT_GROUP_PROTOCOL);
            return;
        }
        if member_id.is_empty() {
            self.join_unknown(cx, args);
        } else {
            self.join_known(cx, args, &member_id);
        }
    }

    fn join_unknown(&mut self, cx: &mut Ctx<'_>, args: JoinArgs<'_>) {
        let prefix = args.instance().unwrap_or(args.client_id);
        let new_id = format!("{prefix}-{}", new_uuid());
        if let Some(instance) = args.instance() {
            if self.instances.contains_key(instance) {
                let instance = instance.to_owned();
                return self.replace_static(cx, args, &instance, new_id);
            }
        }
        if self.size() >= cx.config.members_per_group_max {
            cx.fx
                .join_error(args.wait, "", code::GROUP_MAX_SIZE_REACHED);
            return;
        }
        if args.wait.version >= 4 && args.instance().is_none() {
            let session = u64::try_from(args.req.session_timeout_ms).unwrap_or(0);
            self.pending
                .insert(new_id.clone(), cx.now.ms.saturating_add(session));
            cx.fx
                .join_error(args.wait, &new_id, code::MEMBER_ID_REQUIRED);
            return;
        }
        self.add_member(cx, args, new_id);
    }

    fn join_known(&mut self, cx: &mut Ctx<'_>, args: JoinArgs<'_>, member_id: &str) {
        if self.pending.remove(member_id).is_some() {
            return self.add_member(cx, args, member_id.to_owned());
        }
        if let Some(error) = self.check_member(member_id, args.instance()) {
            cx.fx.join_error(args.wait, member_id, error);
            return;
        }
        let unchanged = self
            .members
            .get(member_id)
            .map(|m| m.protocols == args.protocols);
        let is_leader = self.leader.as_deref() == Some(member_id);
        match self.state {
            GroupState::CompletingRebalance if unchanged == Some(true) => {
                // The member lost our answer: send the same one again.
                let response = self.join_success(member_id, args.wait.version, is_leader);
                cx.fx.reply(args.wait.waiter, GroupResponse::Join(response));
            }
            GroupState::Stable if unchanged == Some(true) && !is_leader => {
                let response = self.join_success(member_id, args.wait.version, false);
                cx.fx.reply(args.wait.waiter, GroupResponse::Join(response));
            }
            _ => self.update_member(cx, args, member_id),
        }
    }

    fn new_member(&self, cx: &Ctx<'_>, args: &JoinArgs<'_>, id: String) -> Member {
        let mut member = Member {
            id,
            instance_id: args.instance().map(str::to_owned),
            client_id: args.client_id.to_owned(),
            client_host: String::new(),
            session_timeout_ms: args.req.session_timeout_ms,
            rebalance_timeout_ms: args.rebalance_timeout_ms(),
            protocol_type: args.req.protocol_type.as_str().to_owned(),
            protocols: args.protocols.clone(),
            assignment: Bytes::new(),
            join: Some(args.wait),
            sync: None,
            heartbeat_deadline_ms: 0,
        };
        member.refresh(cx.now);
        member
    }

    fn add_member(&mut self, cx: &mut Ctx<'_>, args: JoinArgs<'_>, id: String) {
        let member = self.new_member(cx, &args, id.clone());
        if self.members.is_empty() {
            self.protocol_type = Some(member.protocol_type.clone());
        }
        if let Some(instance) = &member.instance_id {
            self.instances.insert(instance.clone(), id.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        if self.state == GroupState::PreparingRebalance && self.generation == 0 {
            self.new_member_added = true;
        }
        self.members.insert(id, member);
        self.maybe_prepare_rebalance(cx);
        self.try_complete_join(cx);
    }

    fn update_member(&mut self, cx: &mut Ctx<'_>, args: JoinArgs<'_>, member_id: &str) {
        let Some(member) = self.members.get_mut(member_id) else {
            return;
        };
        member.protocols = args.protocols.clone();
        member.session_timeout_ms = args.req.session_timeout_ms;
        member.rebalance_timeout_ms = args.rebalance_timeout_ms();
        member.refresh(cx.now);
        if let Some(old) = member.join.replace(args.wait) {
            // A second JoinGroup while the first is parked: the first is answered now.
            cx.fx
                .join_error(old, member_id, code::REBALANCE_IN_PROGRESS);
        }
        self.maybe_prepare_rebalance(cx);
        self.try_complete_join(cx);
    }

    /// A known static member rejoined with a new member id: the old id is fenced, and a
    /// Stable group keeps its assignment unless the chosen protocol would change.
    fn replace_static(&mut self, cx: &mut Ctx<'_>, args: JoinArgs<'_>, instance: &str, id: String) {
        let Some(old_id) = self.instances.get(instance).cloned() else {
            return;
        };
        let Some(mut member) = self.members.remove(&old_id) else {
            return;
        };
        if let Some(wait) = member.join.take() {
            cx.fx.join_error(wait, &old_id, code::FENCED_INSTANCE_ID);
        }
        if let Some(wait) = member.sync.take() {
            cx.fx.sync_error(wait, code::FENCED_INSTANCE_ID);
        }
        member.id = id.clone();
        member.protocols = args.protocols.clone();
        member.session_timeout_ms = args.req.session_timeout_ms;
        member.rebalance_timeout_ms = args.rebalance_timeout_ms();
        member.client_id = args.client_id.to_owned();
        member.refresh(cx.now);
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(id.clone());
        }
        self.instances.insert(instance.to_owned(), id.clone());
        self.members.insert(id.clone(), member);
        let same_protocol = self.select_protocol() == self.protocol;
        if self.state == GroupState::Stable && same_protocol {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let skip = is_leader && args.wait.version >= 9;
            let mut response = self.join_success(&id, args.wait.version, skip);
            response.skip_assignment = skip;
            cx.fx.reply(args.wait.waiter, GroupResponse::Join(response));
            cx.fx.records.push(self.metadata_record(cx));
            return;
        }
        if let Some(member) = self.members.get_mut(&id) {
            member.join = Some(args.wait);
        }
        self.maybe_prepare_rebalance(cx);
        self.try_complete_join(cx);
    }

    /// The successful JoinGroup answer for the current generation; the member list is
    /// included when `with_members` (the leader).
    fn join_success(&self, member_id: &str, version: i16, with_members: bool) -> JoinGroupResponse {
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if with_members {
            let to_entry = |m: &Member| {
                JoinGroupResponseMember::default()
                    .with_member_id(str_bytes(&m.id))
                    .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                    .with_metadata(m.metadata_for(&protocol))
            };
            self.members.values().map(to_entry).collect()
        } else {
            Vec::new()
        };
        let protocol_type = self.protocol_type.as_deref().filter(|_| version >= 7);
        JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(protocol_type.map(str_bytes))
            .with_protocol_name(Some(str_bytes(&protocol)))
            .with_leader(str_bytes(self.leader.as_deref().unwrap_or_default()))
            .with_member_id(str_bytes(member_id))
            .with_members(members)
    }

    fn maybe_prepare_rebalance(&mut self, cx: &mut Ctx<'_>) {
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(cx);
        }
    }

    /// Starts collecting joins. Members parked in SyncGroup are told to rejoin.
    pub(crate) fn prepare_rebalance(&mut self, cx: &mut Ctx<'_>) {
        if self.state == GroupState::CompletingRebalance {
            for member in self.members.values_mut() {
                member.assignment = Bytes::new();
                if let Some(wait) = member.sync.take() {
                    cx.fx.sync_error(wait, code::REBALANCE_IN_PROGRESS);
                }
            }
        }
        let timeout = self.rebalance_timeout_ms();
        if self.state == GroupState::Empty {
            let delay = cx.config.initial_rebalance_delay_ms;
            self.phase_deadline_ms = Some(cx.now.ms.saturating_add(delay));
            self.initial_remaining_ms = Some(timeout.saturating_sub(delay));
        } else {
            self.phase_deadline_ms = Some(cx.now.ms.saturating_add(timeout));
            self.initial_remaining_ms = None;
        }
        self.new_member_added = false;
        self.set_state(GroupState::PreparingRebalance, cx.now);
        self.check_deadline(cx);
    }

    /// Completes the join phase once every member rejoined (Kafka's DelayedJoin); the
    /// initial delay always runs to its end.
    fn try_complete_join(&mut self, cx: &mut Ctx<'_>) {
        let all_joined = self.members.values().all(|m| m.join.is_some());
        if self.state == GroupState::PreparingRebalance
            && self.initial_remaining_ms.is_none()
            && all_joined
            && self.pending.is_empty()
        {
            self.complete_join(cx);
        }
    }

    /// Acts on a phase deadline that has passed.
    pub(crate) fn check_deadline(&mut self, cx: &mut Ctx<'_>) {
        match self.phase_deadline_ms {
            Some(deadline) if deadline <= cx.now.ms => {}
            _ => return,
        }
        match self.state {
            GroupState::PreparingRebalance => self.join_deadline(cx),
            GroupState::CompletingRebalance => self.sync_deadline(cx),
            GroupState::Empty | GroupState::Stable => self.phase_deadline_ms = None,
        }
    }

    fn join_deadline(&mut self, cx: &mut Ctx<'_>) {
        if let Some(remaining) = self.initial_remaining_ms {
            if self.new_member_added && remaining > 0 {
                // New members arrived during the delay: wait once more (Kafka's
                // InitialDelayedJoin), never past the rebalance timeout.
                let delay = cx.config.initial_rebalance_delay_ms.min(remaining);
                self.new_member_added = false;
                self.phase_deadline_ms = Some(cx.now.ms.saturating_add(delay));
                self.initial_remaining_ms = Some(remaining - delay);
                return;
            }
        }
        self.complete_join(cx);
    }

    /// The leader did not sync in time: members that did not send SyncGroup are
    /// removed and the group rebalances.
    fn sync_deadline(&mut self, cx: &mut Ctx<'_>) {
        let late: Vec<String> = self
            .members
            .values()
            .filter(|m| m.sync.is_none())
            .map(|m| m.id.clone())
            .collect();
        self.phase_deadline_ms = None;
        for id in late {
            self.remove_member(cx, &id);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, the generation
    /// moves on, a protocol is chosen and every joiner gets its answer.
    fn complete_join(&mut self, cx: &mut Ctx<'_>) {
        let absent: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in &absent {
            self.drop_member(cx, id);
        }
        self.phase_deadline_ms = None;
        self.initial_remaining_ms = None;
        self.generation = self.generation.wrapping_add(1);
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(GroupState::Empty, cx.now);
            cx.fx.records.push(self.metadata_record(cx));
            return;
        }
        self.protocol = self.select_protocol();
        let leader_present = self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l));
        if !leader_present {
            self.leader = self.members.keys().next().cloned();
        }
        self.set_state(GroupState::CompletingRebalance, cx.now);
        let timeout = self.rebalance_timeout_ms();
        self.phase_deadline_ms = Some(cx.now.ms.saturating_add(timeout));
        self.answer_joins(cx);
    }

    fn answer_joins(&mut self, cx: &mut Ctx<'_>) {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let Some(wait) = self.members.get_mut(&id).and_then(|m| m.join.take()) else {
                continue;
            };
            let response = self.join_success(&id, wait.version, is_leader);
            cx.fx.reply(wait.waiter, GroupResponse::Join(response));
            if let Some(member) = self.members.get_mut(&id) {
                member.refresh(cx.now);
            }
        }
    }

    /// Removes a member without moving the group to another state; its parked
    /// requests learn it is gone.
    fn drop_member(&mut self, cx: &mut Ctx<'_>, id: &str) {
        let Some(mut member) = self.members.remove(id) else {
            return;
        };
        if let Some(instance) = &member.instance_id {
            if self.instances.get(instance).map(String::as_str) == Some(id) {
                self.instances.remove(instance);
            }
        }
        if let Some(wait) = member.join.take() {
            cx.fx.join_error(wait, id, code::UNKNOWN_MEMBER_ID);
        }
        if let Some(wait) = member.sync.take() {
            cx.fx.sync_error(wait, code::UNKNOWN_MEMBER_ID);
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self.members.keys().next().cloned();
        }
    }

    /// A member left or expired: the others rebalance without it.
    pub(crate) fn remove_member(&mut self, cx: &mut Ctx<'_>, id: &str) {
        self.drop_member(cx, id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => self.prepare_rebalance(cx),
            GroupState::PreparingRebalance => self.try_complete_join(cx),
            GroupState::Empty => {}
        }
    }

    /// A handed-out member id that was never used expired or left.
    pub(crate) fn remove_pending(&mut self, cx: &mut Ctx<'_>, id: &str) {
        if self.pending.remove(id).is_some() {
            self.try_complete_join(cx);
        }
    }

    pub(crate) fn sync(&mut self, cx: &mut Ctx<'_>, req: &SyncGroupRequest, wait: Waiting) {
        let member_id = req.member_id.as_str();
        let instance = req.group_instance_id.as_ref().map(|s| s.as_str());
        if let Some(error) = self.sync_error_for(req, member_id, instance) {
            return cx.fx.sync_error(wait, error);
        }
        let is_leader = self.leader.as_deref() == Some(member_id);
        let state = self.state;
        let Some(member) = self.members.get_mut(member_id) else {
            return cx.fx.sync_error(wait, code::UNKNOWN_MEMBER_ID);
        };
        member.refresh(cx.now);
        match state {
            GroupState::Empty => cx.fx.sync_error(wait, code::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => cx.fx.sync_error(wait, code::REBALANCE_IN_PROGRESS),
            GroupState::Stable => {
                let assignment = member.assignment.clone();
                let response = self.sync_success(assignment, wait.version);
                cx.fx.reply(wait.waiter, GroupResponse::Sync(response));
            }
            GroupState::CompletingRebalance => {
                if let Some(old) = member.sync.replace(wait) {
                    cx.fx.sync_error(old, code::REBALANCE_IN_PROGRESS);
                }
                if is_leader {
                    self.apply_assignments(cx, req);
                }
            }
        }
    }

    fn sync_error_for(
        &self,
        req: &SyncGroupRequest,
        member: &str,
        inst: Option<&str>,
    ) -> Option<i16> {
        if let Some(error) = self.check_member(member, inst) {
            return Some(error);
        }
        if req.generation_id != self.generation {
            return Some(code::ILLEGAL_GENERATION);
        }
        // SyncGroup v5 names the type and protocol the member expects.
        let differs = |asked: &Option<StrBytes>, ours: &Option<String>| match asked {
            Some(asked) => ours.as_deref() != Some(asked.as_str()),
            None => false,
        };
        let inconsistent = differs(&req.protocol_type, &self.protocol_type)
            || differs(&req.protocol_name, &self.protocol);
        inconsistent.then_some(code::INCONSISTENT_GROUP_PROTOCOL)
    }

    fn sync_success(&self, assignment: Bytes, version: i16) -> SyncGroupResponse {
        let mut response = SyncGroupResponse::default().with_assignment(assignment);
        if version >= 5 {
            response.protocol_type = self.protocol_type.as_deref().map(str_bytes);
            response.protocol_name = self.protocol.as_deref().map(str_bytes);
        }
        response
    }

    /// The leader's SyncGroup: every member's assignment is stored and relayed, and the
    /// group is Stable. Members the leader left out get an empty assignment.
    fn apply_assignments(&mut self, cx: &mut Ctx<'_>, req: &SyncGroupRequest) {
        let given: HashMap<&str, &Bytes> = req
            .assignments
            .iter()
            .map(|a| (a.member_id.as_str(), &a.assignment))
            .collect();
        for member in self.members.values_mut() {
            let assignment = given.get(member.id.as_str()).map(|b| (*b).clone());
            member.assignment = assignment.unwrap_or_default();
        }
        self.phase_deadline_ms = None;
        self.set_state(GroupState::Stable, cx.now);
        cx.fx.records.push(self.metadata_record(cx));
        let waiting: Vec<(Waiting, Bytes)> = self
            .members
            .values_mut()
            .filter_map(|m| m.sync.take().map(|w| (w, m.assignment.clone())))
            .collect();
        for (wait, assignment) in waiting {
            let response = self.sync_success(assignment, wait.version);
            cx.fx.reply(wait.waiter, GroupResponse::Sync(response));
        }
    }

    /// Kafka's HeartbeatRequest handling for an existing group.
    pub(crate) fn heartbeat(
        &mut self,
        now: Now,
        member: &str,
        inst: Option<&str>,
        gen: i32,
    ) -> i16 {
        if self.state == GroupState::Empty {
            return code::UNKNOWN_MEMBER_ID;
        }
        if let Some(error) = self.check_member(member, inst) {
            return error;
        }
        if gen != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        if let Some(m) = self.members.get_mut(member) {
            m.refresh(now);
        }
        match self.state {
            GroupState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// Answers every parked JoinGroup and SyncGroup with `error`.
    pub(crate) fn release_parked(&mut self, fx: &mut Effects, error: i16) {
        for member in self.members.values_mut() {
            if let Some(wait) = member.join.take() {
                fx.join_error(wait, &member.id, error);
            }
            if let Some(wait) = member.sync.take() {
                fx.sync_error(wait, error);
            }
        }
    }

    /// Members whose session ran out (parked members are waiting on us, not late) and
    /// handed-out ids never used.
    pub(crate) fn expire_sessions(&mut self, cx: &mut Ctx<'_>) {
        let now = cx.now.ms;
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| m.join.is_none() && m.sync.is_none() && m.heartbeat_deadline_ms <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            self.remove_member(cx, &id);
        }
        let stale: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            self.remove_pending(cx, &id);
        }
    }

    /// The group metadata record for its current generation (Kafka's value v3).
    pub(crate) fn metadata_record(&self, cx: &Ctx<'_>) -> LogRecord {
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if self.state == GroupState::Empty {
            Vec::new()
        } else {
            self.members
                .values()
                .map(|m| member_value(m, &protocol))
                .collect()
        };
        let value = GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: cx.now.wall_ms,
            members,
        };
        LogRecord {
            partition: cx.partition,
            key: records::group_key(&self.id),
            value: Some(records::group_value(&value)),
        }
    }

    /// Rebuilds the group from its stored metadata (loading): a generation with members
    /// comes back Stable, as in Kafka; the members must heartbeat within their session.
    pub(crate) fn restore(&mut self, value: GroupValue, now: Now) {
        let protocol = value.protocol.clone().unwrap_or_default();
        self.protocol_type = Some(value.protocol_type).filter(|t| !t.is_empty());
        self.generation = value.generation;
        self.protocol = value.protocol;
        self.leader = value.leader;
        self.members.clear();
        self.instances.clear();
        self.pending.clear();
        for m in value.members {
            let member = restored_member(m, &protocol, self.protocol_type.clone(), now);
            if let Some(instance) = &member.instance_id {
                self.instances.insert(instance.clone(), member.id.clone());
            }
            self.members.insert(member.id.clone(), member);
        }
        let state = if self.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        self.set_state(state, now);
    }
}

fn member_value(m: &Member, protocol: &str) -> MemberValue {
    MemberValue {
        member_id: m.id.clone(),
        instance_id: m.instance_id.clone(),
        client_id: m.client_id.clone(),
        client_host: m.client_host.clone(),
        rebalance_timeout_ms: m.rebalance_timeout_ms,
        session_timeout_ms: m.session_timeout_ms,
        subscription: m.metadata_for(protocol),
        assignment: m.assignment.clone(),
    }
}

fn restored_member(m: MemberValue, protocol: &str, kind: Option<String>, now: Now) -> Member {
    let mut member = Member {
        id: m.member_id,
        instance_id: m.instance_id,
        client_id: m.client_id,
        client_host: m.client_host,
        session_timeout_ms: m.session_timeout_ms,
        rebalance_timeout_ms: m.rebalance_timeout_ms,
        protocol_type: kind.unwrap_or_default(),
        protocols: vec![(protocol.to_owned(), m.subscription)],
        assignment: m.assignment,
        join: None,
        sync: None,
        heartbeat_deadline_ms: 0,
    };
    member.refresh(now);
    member
}

/// A random (version 4) UUID in its usual text form, for member ids. Randomness comes
/// from std's per-process hash keys mixed with a counter and the clock: member ids must
/// be unique and hard to guess, not cryptographic.
fn new_uuid() -> String {
    use std::cell::Cell;
    thread_local!(static COUNTER: Cell<u64> = const { Cell::new(0) });
    let count = COUNTER.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut halves = [0u64; 2];
    for (i, half) in halves.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(count);
        h.write_u128(nanos);
        h.write_usize(i);
        *half = h.finish();
    }
    let bits = (u128::from(halves[0]) << 64 | u128::from(halves[1])) & !(0xF << 76) & !(0x3 << 62);
    let bits = bits | (0x4 << 76) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The topics a member of a "consumer" group subscribes to, from its
/// ConsumerProtocolSubscription (i16 version, then an array of i16-length strings in
/// every version). None when the bytes do not parse.
pub(crate) fn subscribed_topics(metadata: &[u8]) -> Option<HashSet<String>> {
    let mut rest = metadata.get(2..)?;
    let count = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    rest = rest.get(4..)?;
    let mut topics = HashSet::new();
    for _ in 0..count.max(0) {
        let len = i16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        topics.insert(name.to_owned());
        rest = rest.get(2 + len..)?;
    }
    Some(topics)
}

/// The shard-local registry of groups: routing checks and the per-request entry points
/// live in `ops.rs`.
pub struct Core {
    pub config: GroupConfig,
    pub partitions: u32,
    pub groups: HashMap<String, Group>,
    /// `__consumer_offsets` partitions being replayed.
    pub loading: HashSet<u32>,
    /// When committed offsets were last checked for expiry (`None`: not yet).
    pub offsets_checked_ms: Option<u64>,
}

impl Core {
    pub fn new(config: GroupConfig, partitions: u32) -> Core {
        Core {
            config,
            partitions,
            groups: HashMap::new(),
            loading: HashSet::new(),
            offsets_checked_ms: None,
        }
    }

    pub fn partition_of(&self, group_id: &str) -> u32 {
        offsets_partition_for(group_id, self.partitions)
    }

    /// INVALID_GROUP_ID or COORDINATOR_LOAD_IN_PROGRESS, if either applies.
    pub fn precheck(&self, group_id: &str) -> Option<i16> {
        if group_id.is_empty() {
            return Some(code::INVALID_GROUP_ID);
        }
        if self.loading.contains(&self.partition_of(group_id)) {
            return Some(code::COORDINATOR_LOAD_IN_PROGRESS);
        }
        None
    }
}
