//! The per-request entry points of the sans-IO [`Core`]: each takes a request and a
//! [`Now`] and returns its answer and/or [`Effects`].

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::DescribedGroupMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::records::{self, OffsetValue, RecordKey};
use super::state::{
    join_error, subscribed_topics, sync_error, Committed, Core, Ctx, Effects, Group, GroupState,
    JoinArgs, LogRecord, Now, WaiterId, Waiting,
};
use super::{code, DescribedGroup, FetchedOffset, GroupResponse, ListedGroup};

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

/// The validated part of an OffsetCommit: per-partition codes in request order, and
/// the offsets to persist (whose code stays NONE only once they are durable).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitPlan {
    pub group_id: String,
    pub partition: u32,
    pub topics: Vec<(String, Vec<(i32, i16)>)>,
    pub accepted: Vec<(String, i32, OffsetValue)>,
}

impl CommitPlan {
    /// The records that make `accepted` durable.
    pub fn records(&self) -> Vec<LogRecord> {
        let to_record = |(topic, partition, value): &(String, i32, OffsetValue)| LogRecord {
            partition: self.partition,
            key: records::offset_key(&self.group_id, topic, *partition),
            value: Some(records::offset_value(value)),
        };
        self.accepted.iter().map(to_record).collect()
    }

    /// The answer, with `failed` as the code of every accepted partition if the append
    /// did not become durable.
    pub fn response(&self, failed: Option<i16>) -> OffsetCommitResponse {
        let topics = self.topics.iter().map(|(name, partitions)| {
            let partitions = partitions.iter().map(|&(index, error)| {
                let error = match failed {
                    Some(failed) if error == code::NONE => failed,
                    _ => error,
                };
                OffsetCommitResponsePartition::default()
                    .with_partition_index(index)
                    .with_error_code(error)
            });
            OffsetCommitResponseTopic::default()
                .with_name(TopicName(str_bytes(name)))
                .with_partitions(partitions.collect())
        });
        OffsetCommitResponse::default().with_topics(topics.collect())
    }
}

impl Core {
    /// Runs `f` on the group with a context for its partition, then drops the group if
    /// the request that created it left nothing in it.
    fn with_group<R>(
        &mut self,
        group_id: &str,
        now: Now,
        fx: &mut Effects,
        f: impl FnOnce(&mut Group, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let partition = self.partition_of(group_id);
        let group = self.groups.get_mut(group_id)?;
        let mut cx = Ctx {
            config: &self.config,
            now,
            partition,
            fx,
        };
        let result = f(group, &mut cx);
        if group.is_unused() {
            self.groups.remove(group_id);
        }
        Some(result)
    }

    /// Creates an Empty group if there is room (COORDINATOR_NOT_AVAILABLE otherwise:
    /// a retriable push-back).
    fn ensure_group(&mut self, group_id: &str, now: Now) -> Result<(), i16> {
        if self.groups.contains_key(group_id) {
            return Ok(());
        }
        if self.groups.len() >= self.config.groups_max {
            return Err(code::COORDINATOR_NOT_AVAILABLE);
        }
        self.groups
            .insert(group_id.to_owned(), Group::new(group_id, now));
        Ok(())
    }

    pub fn join(
        &mut self,
        req: &JoinGroupRequest,
        version: i16,
        client_id: &str,
        waiter: WaiterId,
        now: Now,
    ) -> Effects {
        let mut fx = Effects::default();
        let wait = Waiting { waiter, version };
        let group_id = req.group_id.0.as_str();
        let member_id = req.member_id.as_str();
        let session = req.session_timeout_ms;
        let error = self.precheck(group_id).or_else(|| {
            let ok = (self.config.session_timeout_ms_min..=self.config.session_timeout_ms_max)
                .contains(&session);
            (!ok).then_some(code::INVALID_SESSION_TIMEOUT)
        });
        let error = error.or_else(|| match self.groups.contains_key(group_id) {
            true => None,
            false if !member_id.is_empty() => Some(code::UNKNOWN_MEMBER_ID),
            false => self.ensure_group(group_id, now).err(),
        });
        if let Some(error) = error {
            let response = join_error(version, member_id, error);
            fx.reply(waiter, GroupResponse::Join(response));
            return fx;
        }
        let protocols = req
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_owned(), p.metadata.clone()))
            .collect();
        let args = JoinArgs {
            req,
            wait,
            client_id,
            protocols,
        };
        self.with_group(group_id, now, &mut fx, |g, cx| g.join(cx, args));
        fx
    }

    pub fn sync(
        &mut self,
        req: &SyncGroupRequest,
        version: i16,
        waiter: WaiterId,
        now: Now,
    ) -> Effects {
        let mut fx = Effects::default();
        let group_id = req.group_id.0.as_str();
        let error = self.precheck(group_id);
        let error =
            error.or((!self.groups.contains_key(group_id)).then_some(code::UNKNOWN_MEMBER_ID));
        if let Some(error) = error {
            fx.reply(waiter, GroupResponse::Sync(sync_error(error)));
            return fx;
        }
        let wait = Waiting { waiter, version };
        self.with_group(group_id, now, &mut fx, |g, cx| g.sync(cx, req, wait));
        fx
    }

    pub fn heartbeat(&mut self, req: &HeartbeatRequest, now: Now) -> i16 {
        let group_id = req.group_id.0.as_str();
        if let Some(error) = self.precheck(group_id) {
            return error;
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let instance = req.group_instance_id.as_ref().map(|s| s.as_str());
        group.heartbeat(now, req.member_id.as_str(), instance, req.generation_id)
    }

    pub fn leave(
        &mut self,
        req: &LeaveGroupRequest,
        version: i16,
        now: Now,
    ) -> (LeaveGroupResponse, Effects) {
        let mut fx = Effects::default();
        let leaving: Vec<(String, Option<String>)> = if version <= 2 {
            vec![(req.member_id.as_str().to_owned(), None)]
        } else {
            let to_pair = |m: &kafka_protocol::messages::leave_group_request::MemberIdentity| {
                let instance = m.group_instance_id.as_ref().map(|s| s.as_str().to_owned());
                (m.member_id.as_str().to_owned(), instance)
            };
            req.members.iter().map(to_pair).collect()
        };
        let group_id = req.group_id.0.as_str();
        if let Some(error) = self.precheck(group_id) {
            return (LeaveGroupResponse::default().with_error_code(error), fx);
        }
        let codes: Vec<i16> = self
            .with_group(group_id, now, &mut fx, |g, cx| {
                let leave = |(id, instance): &(String, Option<String>)| {
                    leave_one(g, cx, id, instance.as_deref())
                };
                leaving.iter().map(leave).collect()
            })
            .unwrap_or_else(|| vec![code::UNKNOWN_MEMBER_ID; leaving.len()]);
        (leave_response(version, &leaving, &codes), fx)
    }

    /// Validates an OffsetCommit. The offsets become visible through
    /// [`Core::apply_commit`] once durable.
    pub fn plan_commit(&mut self, req: &OffsetCommitRequest, now: Now) -> CommitPlan {
        let group_id = req.group_id.0.as_str().to_owned();
        let group_error = self
            .precheck(&group_id)
            .or_else(|| self.validate_commit(req, now).err());
        let mut plan = CommitPlan {
            partition: self.partition_of_checked(&group_id),
            group_id,
            ..CommitPlan::default()
        };
        let stored = self
            .groups
            .get(&plan.group_id)
            .map_or(0, |g| g.offsets.len());
        for topic in &req.topics {
            let name = topic.name.0.as_str();
            let mut codes = Vec::with_capacity(topic.partitions.len());
            for p in &topic.partitions {
                let metadata = p.committed_metadata.as_ref().map_or("", |m| m.as_str());
                let error = group_error.or_else(|| {
                    if metadata.len() > self.config.metadata_bytes_max {
                        Some(code::OFFSET_METADATA_TOO_LARGE)
                    } else if stored + plan.accepted.len() >= self.config.offsets_per_group_max {
                        Some(code::INVALID_COMMIT_OFFSET_SIZE)
                    } else {
                        None
                    }
                });
                if error.is_none() {
                    let value = OffsetValue {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: metadata.to_owned(),
                        commit_timestamp_ms: now.wall_ms,
                    };
                    plan.accepted
                        .push((name.to_owned(), p.partition_index, value));
                }
                codes.push((p.partition_index, error.unwrap_or(code::NONE)));
            }
            plan.topics.push((name.to_owned(), codes));
        }
        self.track_pending(&plan, true);
        plan
    }

    /// Marks (or, once applied or failed, unmarks) `plan`'s offsets as being
    /// committed.
    fn track_pending(&mut self, plan: &CommitPlan, pending: bool) {
        let Some(group) = self.groups.get_mut(&plan.group_id) else {
            return;
        };
        for (topic, partition, _) in &plan.accepted {
            let key = (topic.clone(), *partition);
            if pending {
                *group.pending_commits.entry(key).or_default() += 1;
            } else if let Some(n) = group.pending_commits.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    group.pending_commits.remove(&key);
                }
            }
        }
    }

    /// A commit that could not be made durable: its offsets are no longer pending.
    pub fn abort_commit(&mut self, plan: &CommitPlan) {
        self.track_pending(plan, false);
    }

    fn partition_of_checked(&self, group_id: &str) -> u32 {
        if group_id.is_empty() {
            0
        } else {
            self.partition_of(group_id)
        }
    }

    /// Kafka's commit validation for the classic protocol.
    fn validate_commit(&mut self, req: &OffsetCommitRequest, now: Now) -> Result<(), i16> {
        let group_id = req.group_id.0.as_str();
        let generation = req.generation_id_or_member_epoch;
        if !self.groups.contains_key(group_id) {
            if generation >= 0 {
                return Err(code::ILLEGAL_GENERATION);
            }
            // A consumer that assigns partitions itself: the group exists for offsets.
            return self.ensure_group(group_id, now);
        }
        let Some(group) = self.groups.get_mut(group_id) else {
            return Err(code::COORDINATOR_NOT_AVAILABLE);
        };
        if generation < 0 && group.state == GroupState::Empty {
            return Ok(());
        }
        let member_id = req.member_id.as_str();
        let instance = req.group_instance_id.as_ref().map(|s| s.as_str());
        if let Some(error) = group.check_member(member_id, instance) {
            return Err(error);
        }
        if generation != group.generation {
            return Err(code::ILLEGAL_GENERATION);
        }
        if group.state == GroupState::CompletingRebalance {
            return Err(code::REBALANCE_IN_PROGRESS);
        }
        if let Some(member) = group.members.get_mut(member_id) {
            let session = u64::try_from(member.session_timeout_ms).unwrap_or(0);
            member.heartbeat_deadline_ms = now.ms.saturating_add(session);
        }
        Ok(())
    }

    /// Makes a durable commit visible; `base_log_offset` is where its first record was
    /// appended.
    pub fn apply_commit(&mut self, plan: &CommitPlan, base_log_offset: i64, now: Now) {
        self.track_pending(plan, false);
        let group = self
            .groups
            .entry(plan.group_id.clone())
            .or_insert_with(|| Group::new(&plan.group_id, now));
        for (i, (topic, partition, value)) in plan.accepted.iter().enumerate() {
            let log_offset = base_log_offset.saturating_add(i64::try_from(i).unwrap_or(0));
            store_offset(group, topic, *partition, value.clone(), log_offset);
        }
    }

    pub fn fetch(
        &self,
        group_id: &str,
        topics: Option<&[(String, Vec<i32>)]>,
    ) -> Result<Vec<FetchedOffset>, i16> {
        if let Some(error) = self.precheck(group_id) {
            return Err(error);
        }
        let group = self.groups.get(group_id);
        let Some(topics) = topics else {
            let all = group.map(|g| g.offsets.iter().map(|((t, p), c)| fetched(t, *p, Some(c))));
            return Ok(all.map(Iterator::collect).unwrap_or_default());
        };
        let mut out = Vec::new();
        for (topic, partitions) in topics {
            for &p in partitions {
                let committed = group.and_then(|g| g.offsets.get(&(topic.clone(), p)));
                out.push(fetched(topic, p, committed));
            }
        }
        Ok(out)
    }

    pub fn describe(&self, group_ids: &[String]) -> Vec<DescribedGroup> {
        group_ids.iter().map(|id| self.describe_one(id)).collect()
    }

    fn describe_one(&self, group_id: &str) -> DescribedGroup {
        let base = DescribedGroup::default().with_group_id(GroupId(str_bytes(group_id)));
        if let Some(error) = self.precheck(group_id) {
            return base.with_error_code(error);
        }
        let Some(group) = self.groups.get(group_id) else {
            return base.with_group_state(StrBytes::from_static_str("Dead"));
        };
        let stable = group.state == GroupState::Stable;
        let protocol = group
            .protocol
            .clone()
            .filter(|_| stable)
            .unwrap_or_default();
        let members = group.members.values().map(|m| {
            let member = DescribedGroupMember::default()
                .with_member_id(str_bytes(&m.id))
                .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                .with_client_id(str_bytes(&m.client_id))
                .with_client_host(str_bytes(&m.client_host));
            if !stable {
                return member;
            }
            let metadata = m.protocols.iter().find(|(n, _)| *n == protocol);
            member
                .with_member_metadata(metadata.map(|(_, b)| b.clone()).unwrap_or_default())
                .with_member_assignment(m.assignment.clone())
        });
        base.with_group_state(StrBytes::from_static_str(group.state.name()))
            .with_protocol_type(str_bytes(
                group.protocol_type.as_deref().unwrap_or_default(),
            ))
            .with_protocol_data(str_bytes(&protocol))
            .with_members(members.collect())
    }

    pub fn list(&self, states_filter: &[String]) -> Vec<ListedGroup> {
        let wanted = |state: GroupState| {
            states_filter.is_empty()
                || states_filter
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(state.name()))
        };
        let mut ids: Vec<&String> = self
            .groups
            .iter()
            .filter(|(id, g)| self.precheck(id).is_none() && wanted(g.state))
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        let to_listed = |id: &&String| {
            let group = self.groups.get(*id);
            let kind = group
                .and_then(|g| g.protocol_type.as_deref())
                .unwrap_or_default();
            let state = group.map_or("Dead", |g| g.state.name());
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_protocol_type(str_bytes(kind))
                .with_group_state(StrBytes::from_static_str(state))
                .with_group_type(StrBytes::from_static_str("classic"))
        };
        ids.iter().map(to_listed).collect()
    }

    /// DeleteGroups: Empty groups are removed at once and their tombstones returned;
    /// the answer should wait for them to be durable.
    pub fn delete(&mut self, group_ids: &[String]) -> (Vec<(String, i16)>, Vec<LogRecord>) {
        let mut records = Vec::new();
        let mut codes = Vec::with_capacity(group_ids.len());
        for id in group_ids {
            let error = self.precheck(id).or_else(|| match self.groups.get(id) {
                None => Some(code::GROUP_ID_NOT_FOUND),
                Some(g) if g.state != GroupState::Empty => Some(code::NON_EMPTY_GROUP),
                Some(_) => None,
            });
            if error.is_none() {
                records.extend(self.remove_group(id));
            }
            codes.push((id.clone(), error.unwrap_or(code::NONE)));
        }
        (codes, records)
    }

    /// Forgets a group and returns the tombstones for its offsets and metadata.
    fn remove_group(&mut self, group_id: &str) -> Vec<LogRecord> {
        let partition = self.partition_of(group_id);
        let Some(group) = self.groups.remove(group_id) else {
            return Vec::new();
        };
        let tombstone = |key| LogRecord {
            partition,
            key,
            value: None,
        };
        let offsets = group
            .offsets
            .keys()
            .map(|(t, p)| records::offset_key(group_id, t, *p));
        let mut out: Vec<LogRecord> = offsets.map(tombstone).collect();
        out.push(tombstone(records::group_key(group_id)));
        out
    }

    /// OffsetDelete: an Empty group's offsets can all be deleted; a Stable "consumer"
    /// group's offsets for topics no member subscribes to; any other group refuses
    /// with NON_EMPTY_GROUP (as Kafka does).
    pub fn offset_delete(
        &mut self,
        req: &OffsetDeleteRequest,
    ) -> (OffsetDeleteResponse, Vec<LogRecord>) {
        let group_id = req.group_id.0.as_str();
        let error = self
            .precheck(group_id)
            .or_else(|| match self.groups.get(group_id) {
                None => Some(code::GROUP_ID_NOT_FOUND),
                Some(g) => match g.state {
                    GroupState::Empty => None,
                    GroupState::Stable if g.protocol_type.as_deref() == Some("consumer") => None,
                    _ => Some(code::NON_EMPTY_GROUP),
                },
            });
        let partition = self.partition_of_checked(group_id);
        let (Some(group), None) = (self.groups.get_mut(group_id), error) else {
            let error = error.unwrap_or(code::GROUP_ID_NOT_FOUND);
            return (
                OffsetDeleteResponse::default().with_error_code(error),
                Vec::new(),
            );
        };
        let subscribed = subscriptions(group);
        let mut records = Vec::new();
        let topics = req.topics.iter().map(|topic| {
            let name = topic.name.0.as_str();
            let busy = match &subscribed {
                None => false,
                Some(None) => true,
                Some(Some(topics)) => topics.contains(name),
            };
            let partitions = topic.partitions.iter().map(|p| {
                let error = if busy {
                    code::GROUP_SUBSCRIBED_TO_TOPIC
                } else {
                    let key = (name.to_owned(), p.partition_index);
                    if group.offsets.remove(&key).is_some() {
                        let key = records::offset_key(group_id, name, p.partition_index);
                        records.push(LogRecord {
                            partition,
                            key,
                            value: None,
                        });
                    }
                    code::NONE
                };
                OffsetDeleteResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error)
            });
            let partitions = partitions.collect();
            OffsetDeleteResponseTopic::default()
                .with_name(topic.name.clone())
                .with_partitions(partitions)
        });
        let response = OffsetDeleteResponse::default().with_topics(topics.collect());
        (response, records)
    }

    /// Whether any group has a deadline that [`Core::tick`] must watch closely (a
    /// session, join or sync deadline): one that is not Empty, or has requests
    /// pending. Without one, only [`Core::next_idle_deadline_ms`] is due.
    pub fn has_timed_work(&self) -> bool {
        self.groups
            .values()
            .any(|g| g.state != GroupState::Empty || !g.pending.is_empty())
    }

    /// When (on the coordinator's clock) an idle coordinator next has work: the
    /// offsets retention check, or the removal of an Empty group that holds no
    /// offsets (`empty_group_retention_ms` after it became Empty); 0 before the
    /// first tick.
    pub fn next_idle_deadline_ms(&self) -> u64 {
        let Some(last) = self.offsets_checked_ms else {
            return 0;
        };
        let retention = self.config.empty_group_retention_ms;
        let removal = self
            .groups
            .values()
            .filter(|g| g.state == GroupState::Empty && g.size() == 0 && g.offsets.is_empty())
            .map(|g| g.state_since_ms.saturating_add(retention))
            .min();
        let check = last.saturating_add(self.config.offsets_retention_check_ms);
        removal.map_or(check, |r| r.min(check))
    }

    /// Session, join and sync deadlines, and the removal of Empty groups that hold no
    /// offsets (after `empty_group_retention_ms`, with a tombstone).
    pub fn tick(&mut self, now: Now) -> Effects {
        let mut fx = Effects::default();
        let ids: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| {
                g.state != GroupState::Empty || !g.pending.is_empty() || g.offsets.is_empty()
            })
            .map(|(id, _)| id.clone())
            .collect();
        let retention = self.config.empty_group_retention_ms;
        for id in ids {
            if self.precheck(&id).is_some() {
                continue;
            }
            let expired = self.with_group(&id, now, &mut fx, |g, cx| {
                g.expire_sessions(cx);
                g.check_deadline(cx);
                g.state == GroupState::Empty
                    && g.size() == 0
                    && g.offsets.is_empty()
                    && g.state_since_ms.saturating_add(retention) <= now.ms
            });
            if expired == Some(true) {
                fx.records.extend(self.remove_group(&id));
            }
        }
        let every = self.config.offsets_retention_check_ms;
        match self.offsets_checked_ms {
            Some(last) if now.ms < last.saturating_add(every) => {}
            Some(_) => {
                self.offsets_checked_ms = Some(now.ms);
                fx.records.extend(self.expire_offsets(now));
            }
            None => self.offsets_checked_ms = Some(now.ms),
        }
        fx
    }

    /// Removes committed offsets past `offsets_retention_ms` (Kafka's rules, KIP-211):
    /// - a group that only commits (no protocol type): each offset expires that long
    ///   after its last commit;
    /// - an Empty group: all its offsets expire that long after it became Empty;
    /// - a Stable "consumer" group: offsets of topics no member subscribes to expire
    ///   that long after their commit.
    ///
    /// An Empty group left with no offsets goes too. Returns the tombstones.
    pub fn expire_offsets(&mut self, now: Now) -> Vec<LogRecord> {
        let retention = self.config.offsets_retention_ms;
        let retention_wall = i64::try_from(retention).unwrap_or(i64::MAX);
        let old_commit =
            |c: &Committed| now.wall_ms.saturating_sub(c.commit_timestamp_ms) >= retention_wall;
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        let mut out = Vec::new();
        for id in ids {
            if self.precheck(&id).is_some() {
                continue;
            }
            let partition = self.partition_of(&id);
            let Some(group) = self.groups.get_mut(&id) else {
                continue;
            };
            let idle = group.state == GroupState::Empty
                && group.size() == 0
                && group.pending.is_empty()
                && group.pending_commits.is_empty();
            let expired: Vec<(String, i32)> = match (&group.protocol_type, idle) {
                (None, _) => group
                    .offsets
                    .iter()
                    .filter(|(_, c)| old_commit(c))
                    .map(|(k, _)| k.clone())
                    .collect(),
                (Some(_), true) if now.ms.saturating_sub(group.state_since_ms) >= retention => {
                    group.offsets.keys().cloned().collect()
                }
                (Some(kind), false) if kind == "consumer" => match subscriptions(group) {
                    Some(Some(topics)) => group
                        .offsets
                        .iter()
                        .filter(|((t, _), c)| !topics.contains(t) && old_commit(c))
                        .map(|(k, _)| k.clone())
                        .collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let expired: Vec<(String, i32)> = expired
                .into_iter()
                .filter(|k| !group.pending_commits.contains_key(k))
                .collect();
            for (topic, p) in &expired {
                group.offsets.remove(&(topic.clone(), *p));
                out.push(LogRecord {
                    partition,
                    key: records::offset_key(&id, topic, *p),
                    value: None,
                });
            }
            if !expired.is_empty() {
                tracing::info!(group = %id, offsets = expired.len(), "committed offsets expired");
            }
            if idle && group.offsets.is_empty() && !expired.is_empty() {
                out.extend(self.remove_group(&id));
            }
        }
        out
    }

    /// Starts replaying a partition: its groups are forgotten and requests for them
    /// get COORDINATOR_LOAD_IN_PROGRESS until [`Core::end_load`].
    /// Requests parked in a forgotten group are answered COORDINATOR_LOAD_IN_PROGRESS
    /// (clients retry them).
    pub fn begin_load(&mut self, partition: u32) -> Effects {
        self.loading.insert(partition);
        let partitions = self.partitions;
        let mut fx = Effects::default();
        self.groups.retain(|id, group| {
            let keep = super::offsets_partition_for(id, partitions) != partition;
            if !keep {
                group.release_parked(&mut fx, code::COORDINATOR_LOAD_IN_PROGRESS);
            }
            keep
        });
        fx
    }

    /// Applies one record of the partition being loaded.
    pub fn replay(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        log_offset: i64,
        now: Now,
    ) -> Result<(), records::DecodeError> {
        match records::decode_key(key)? {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                let entry = self.groups.entry(group.clone());
                let g = entry.or_insert_with(|| Group::new(&group, now));
                match value {
                    Some(value) => {
                        let value = records::decode_offset_value(value)?;
                        store_offset(g, &topic, partition, value, log_offset);
                    }
                    None => {
                        g.offsets.remove(&(topic, partition));
                    }
                }
            }
            RecordKey::Group { group } => match value {
                Some(value) => {
                    let value = records::decode_group_value(value)?;
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| Group::new(&group, now));
                    g.restore(value, now);
                }
                None => {
                    let offsets = self.groups.remove(&group).map(|g| g.offsets);
                    if let Some(offsets) = offsets.filter(|o| !o.is_empty()) {
                        let mut fresh = Group::new(&group, now);
                        fresh.offsets = offsets;
                        self.groups.insert(group, fresh);
                    }
                }
            },
        }
        Ok(())
    }

    /// Ends a replay: restored members' sessions start now.
    pub fn end_load(&mut self, partition: u32, now: Now) {
        self.loading.remove(&partition);
        let partitions = self.partitions;
        for (id, group) in &mut self.groups {
            if super::offsets_partition_for(id, partitions) != partition {
                continue;
            }
            for member in group.members.values_mut() {
                let session = u64::try_from(member.session_timeout_ms).unwrap_or(0);
                member.heartbeat_deadline_ms = now.ms.saturating_add(session);
            }
        }
    }
}

fn store_offset(
    group: &mut Group,
    topic: &str,
    partition: i32,
    value: OffsetValue,
    log_offset: i64,
) {
    let key = (topic.to_owned(), partition);
    if group
        .offsets
        .get(&key)
        .is_some_and(|c| c.log_offset > log_offset)
    {
        return;
    }
    let committed = Committed {
        offset: value.offset,
        leader_epoch: value.leader_epoch,
        metadata: value.metadata,
        commit_timestamp_ms: value.commit_timestamp_ms,
        log_offset,
    };
    group.offsets.insert(key, committed);
}

fn fetched(topic: &str, partition: i32, committed: Option<&Committed>) -> FetchedOffset {
    FetchedOffset {
        topic: topic.to_owned(),
        partition,
        offset: committed.map_or(-1, |c| c.offset),
        leader_epoch: committed.map_or(-1, |c| c.leader_epoch),
        metadata: Some(committed.map(|c| c.metadata.clone()).unwrap_or_default()),
        error: code::NONE,
    }
}

/// For a Stable consumer group: the union of its members' subscriptions (None inside
/// when one does not parse: every topic then counts as subscribed). None for an Empty
/// group.
fn subscriptions(group: &Group) -> Option<Option<std::collections::HashSet<String>>> {
    if group.state != GroupState::Stable {
        return None;
    }
    let protocol = group.protocol.clone().unwrap_or_default();
    let mut all = std::collections::HashSet::new();
    for member in group.members.values() {
        let metadata = member.protocols.iter().find(|(n, _)| *n == protocol);
        let metadata = metadata.map(|(_, b)| b.clone()).unwrap_or_else(Bytes::new);
        match subscribed_topics(&metadata) {
            Some(topics) => all.extend(topics),
            None => return Some(None),
        }
    }
    Some(Some(all))
}

/// One member of a LeaveGroup (v3+ may name a static member by instance id alone).
fn leave_one(g: &mut Group, cx: &mut Ctx<'_>, member_id: &str, instance: Option<&str>) -> i16 {
    let resolved = match instance.and_then(|i| g.instances.get(i)) {
        Some(current) if member_id.is_empty() => current.clone(),
        Some(current) if current != member_id => return code::FENCED_INSTANCE_ID,
        _ => member_id.to_owned(),
    };
    if g.pending.contains_key(&resolved) {
        g.remove_pending(cx, &resolved);
        return code::NONE;
    }
    if !g.members.contains_key(&resolved) {
        return code::UNKNOWN_MEMBER_ID;
    }
    g.remove_member(cx, &resolved);
    code::NONE
}

fn leave_response(
    version: i16,
    leaving: &[(String, Option<String>)],
    codes: &[i16],
) -> LeaveGroupResponse {
    if version <= 2 {
        let error = codes.first().copied().unwrap_or(code::NONE);
        return LeaveGroupResponse::default().with_error_code(error);
    }
    let members = leaving.iter().zip(codes).map(|((id, instance), error)| {
        MemberResponse::default()
            .with_member_id(str_bytes(id))
            .with_group_instance_id(instance.as_deref().map(str_bytes))
            .with_error_code(*error)
    });
    LeaveGroupResponse::default().with_members(members.collect())
}
