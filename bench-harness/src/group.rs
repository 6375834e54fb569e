//! Consumer groups through the broker's group coordinator (Kafka protocol,
//! `--coordinated-groups`): what a Kafka consumer does, so the broker pays
//! for group membership as it would in production.
//!
//! Each member finds the coordinator (FindCoordinator), joins (JoinGroup,
//! answering MEMBER_ID_REQUIRED), and the leader assigns the partitions in
//! ranges, as Kafka's range assignor does, through SyncGroup. Members start
//! from their committed offsets (OffsetFetch), else from `--from`; during
//! the run they heartbeat every 3 s and commit their positions every 5 s
//! (Kafka's auto-commit default); at the end they commit and leave.
//!
//! All members of a group join before the clock starts, and the join
//! repeats until every member holds the same generation and the group's
//! assignment covers each partition once. A rebalance during the run (a
//! heartbeat answered REBALANCE_IN_PROGRESS) ends the run with an error:
//! the generator does not re-assign partitions mid-measurement.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::conn;
use crate::error::BenchError;
use crate::kafka::{topic_name, KafkaClient};

const SESSION_TIMEOUT_MS: i32 = 30_000;
const REBALANCE_TIMEOUT_MS: i32 = 60_000;
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
pub const COMMIT_EVERY: Duration = Duration::from_secs(5);
/// How long joining may take before the run gives up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
const ASSIGNOR: &str = "range";
/// The embedded consumer protocol's version for subscriptions and
/// assignments (topics and partitions only).
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

// Kafka error codes met while joining.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

/// One member of a joined group, on its own connection to the coordinator.
pub struct Member {
    client: KafkaClient,
    group: String,
    topic: String,
    member_id: String,
    generation: i32,
    /// The partitions the leader gave this member.
    pub partitions: Vec<u32>,
    last_heartbeat: Instant,
    last_commit: Instant,
}

fn group_id(g: &str) -> GroupId {
    GroupId(StrBytes::from_string(g.to_owned()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn failed(what: &str, group: &str, code: i16) -> BenchError {
    BenchError::new(format!(
        "{what} for group {group}: {}",
        crate::error::kafka_error(code)
    ))
}

/// A member's generation and partitions once synced (`None`: joining).
type Synced = Option<(i32, Vec<u32>)>;

/// Joins `members` members to `group` together (one thread each) and
/// returns them once they agree on a generation and an assignment.
pub fn join_all(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: u32,
    members: u32,
) -> Result<Vec<Member>, BenchError> {
    let n = members as usize;
    // Each member's latest synced generation, and its partitions.
    let synced: Arc<Mutex<Vec<Synced>>> = Arc::new(Mutex::new(vec![None; n]));
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let settled = |table: &[Synced]| -> bool {
        let Some(Some((generation, _))) = table.first() else {
            return false;
        };
        if !table
            .iter()
            .all(|m| m.as_ref().is_some_and(|(g, _)| g == generation))
        {
            return false;
        }
        let mut all: Vec<u32> = table
            .iter()
            .flatten()
            .flat_map(|(_, ps)| ps.clone())
            .collect();
        all.sort_unstable();
        all == (0..partitions).collect::<Vec<u32>>()
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let synced = synced.clone();
                s.spawn(move || -> Result<Member, BenchError> {
                    let mut m = Member::connect(bootstrap, group, topic)?;
                    loop {
                        m.join_and_sync(partitions)?;
                        set(&synced, i, Some((m.generation, m.partitions.clone())));
                        // Wait for the others, heartbeating: a late joiner
                        // starts a rebalance that this member must rejoin.
                        loop {
                            if settled(&lock(&synced)) {
                                return Ok(m);
                            }
                            if Instant::now() >= deadline {
                                return Err(BenchError::new(format!(
                                    "group {group}: its {n} members did not settle within {}s",
                                    JOIN_TIMEOUT.as_secs()
                                )));
                            }
                            std::thread::sleep(Duration::from_millis(50));
                            match m.heartbeat_code()? {
                                0 => {}
                                REBALANCE_IN_PROGRESS => break,
                                code => return Err(failed("Heartbeat", group, code)),
                            }
                        }
                        set(&synced, i, None);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| BenchError::new("a group member thread panicked"))?
            })
            .collect()
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set<T>(table: &Mutex<Vec<T>>, i: usize, value: T) {
    if let Some(slot) = lock(table).get_mut(i) {
        *slot = value;
    }
}

impl Member {
    /// Finds the group's coordinator and connects to it.
    fn connect(bootstrap: &str, group: &str, topic: &str) -> Result<Member, BenchError> {
        let mut client = KafkaClient::from_stream(conn::connect_stream(bootstrap)?)?;
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let address = loop {
            let (r, _): (FindCoordinatorResponse, i16) =
                client.call(ApiKey::FindCoordinator, (1, 3), |_| {
                    FindCoordinatorRequest::default()
                        .with_key(str_bytes(group))
                        .with_key_type(0)
                })?;
            match r.error_code {
                0 => break format!("{}:{}", r.host.as_str(), r.port),
                COORDINATOR_NOT_AVAILABLE | COORDINATOR_LOAD_IN_PROGRESS
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                code => return Err(failed("FindCoordinator", group, code)),
            }
        };
        let client = KafkaClient::from_stream(conn::connect_stream(&address)?)
            .map_err(|e| e.context(&format!("connecting to the coordinator {address}")))?;
        Ok(Member {
            client,
            group: group.to_owned(),
            topic: topic.to_owned(),
            member_id: String::new(),
            generation: -1,
            partitions: Vec::new(),
            last_heartbeat: Instant::now(),
            last_commit: Instant::now(),
        })
    }

    /// JoinGroup (again until it is not asked to retry), then SyncGroup;
    /// the leader hands out the partitions.
    fn join_and_sync(&mut self, partitions: u32) -> Result<(), BenchError> {
        let deadline = Instant::now() + JOIN_TIMEOUT;
        loop {
            let subscription = embedded(
                &ConsumerProtocolSubscription::default().with_topics(vec![str_bytes(&self.topic)]),
            )?;
            let protocol = JoinGroupRequestProtocol::default()
                .with_name(str_bytes(ASSIGNOR))
                .with_metadata(subscription);
            let request = JoinGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_session_timeout_ms(SESSION_TIMEOUT_MS)
                .with_rebalance_timeout_ms(REBALANCE_TIMEOUT_MS)
                .with_member_id(str_bytes(&self.member_id))
                .with_protocol_type(str_bytes("consumer"))
                .with_protocols(vec![protocol]);
            let (join, _): (JoinGroupResponse, i16) =
                self.client.call(ApiKey::JoinGroup, (4, 7), |_| request)?;
            match join.error_code {
                0 => {}
                MEMBER_ID_REQUIRED => {
                    self.member_id = join.member_id.as_str().to_owned();
                    continue;
                }
                UNKNOWN_MEMBER_ID => {
                    self.member_id.clear();
                    continue;
                }
                REBALANCE_IN_PROGRESS | COORDINATOR_LOAD_IN_PROGRESS | NOT_COORDINATOR
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                code => return Err(failed("JoinGroup", &self.group, code)),
            }
            self.member_id = join.member_id.as_str().to_owned();
            self.generation = join.generation_id;
            let assignments = if join.leader == join.member_id {
                let mut ids: Vec<&str> =
                    join.members.iter().map(|m| m.member_id.as_str()).collect();
                ids.sort_unstable();
                let mut out = Vec::with_capacity(ids.len());
                for (i, id) in ids.iter().enumerate() {
                    let assignment = ConsumerProtocolAssignment::default()
                        .with_assigned_partitions(vec![AssignedTopic::default()
                            .with_topic(topic_name(&self.topic))
                            .with_partitions(
                                range_of(i, ids.len(), partitions)
                                    .into_iter()
                                    .filter_map(|p| i32::try_from(p).ok())
                                    .collect(),
                            )]);
                    out.push(
                        SyncGroupRequestAssignment::default()
                            .with_member_id(str_bytes(id))
                            .with_assignment(embedded(&assignment)?),
                    );
                }
                out
            } else {
                Vec::new()
            };
            let request = SyncGroupRequest::default()
                .with_group_id(group_id(&self.group))
                .with_generation_id(self.generation)
                .with_member_id(str_bytes(&self.member_id))
                .with_assignments(assignments);
            let (sync, _): (SyncGroupResponse, i16) =
                self.client.call(ApiKey::SyncGroup, (3, 5), |v| {
                    if v >= 5 {
                        request
                            .with_protocol_type(Some(str_bytes("consumer")))
                            .with_protocol_name(Some(str_bytes(ASSIGNOR)))
                    } else {
                        request
                    }
                })?;
            match sync.error_code {
                0 => {}
                REBALANCE_IN_PROGRESS if Instant::now() < deadline => continue,
                code => return Err(failed("SyncGroup", &self.group, code)),
            }
            self.partitions = assigned(&sync.assignment, &self.topic)?;
            self.last_heartbeat = Instant::now();
            return Ok(());
        }
    }

    fn heartbeat_code(&mut self) -> Result<i16, BenchError> {
        let request = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(str_bytes(&self.member_id));
        let (r, _): (HeartbeatResponse, i16) =
            self.client.call(ApiKey::Heartbeat, (3, 4), |_| request)?;
        self.last_heartbeat = Instant::now();
        Ok(r.error_code)
    }

    /// The committed offset of each of `partitions` (-1: none).
    pub fn committed(&mut self, partitions: &[u32]) -> Result<Vec<i64>, BenchError> {
        let request = OffsetFetchRequest::default()
            .with_group_id(group_id(&self.group))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(topic_name(&self.topic))
                .with_partition_indexes(
                    partitions
                        .iter()
                        .filter_map(|&p| i32::try_from(p).ok())
                        .collect(),
                )]));
        let (r, _): (OffsetFetchResponse, i16) =
            self.client.call(ApiKey::OffsetFetch, (1, 7), |_| request)?;
        if r.error_code != 0 {
            return Err(failed("OffsetFetch", &self.group, r.error_code));
        }
        let found = r.topics.iter().flat_map(|t| &t.partitions);
        let found: Vec<(i32, i64, i16)> = found
            .map(|p| (p.partition_index, p.committed_offset, p.error_code))
            .collect();
        partitions
            .iter()
            .map(|&p| match found.iter().find(|(i, _, _)| *i as u32 == p) {
                Some(&(_, _, code)) if code != 0 => Err(failed("OffsetFetch", &self.group, code)),
                Some(&(_, offset, _)) => Ok(offset),
                None => Ok(-1),
            })
            .collect()
    }

    /// Whether a heartbeat or a commit is due ([`Member::tick`]).
    #[must_use]
    pub fn due(&self) -> bool {
        self.last_heartbeat.elapsed() >= HEARTBEAT_EVERY
            || self.last_commit.elapsed() >= COMMIT_EVERY
    }

    /// What a consumer does between fetches: heartbeat when due, commit
    /// `positions` ((partition, next offset)) when due.
    pub fn tick(&mut self, positions: &[(u32, i64)]) -> Result<(), BenchError> {
        if self.last_heartbeat.elapsed() >= HEARTBEAT_EVERY {
            match self.heartbeat_code()? {
                0 => {}
                REBALANCE_IN_PROGRESS => {
                    return Err(BenchError::new(format!(
                        "group {}: a rebalance started during the run (a member joined or left)",
                        self.group
                    )))
                }
                code => return Err(failed("Heartbeat", &self.group, code)),
            }
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit(positions)?;
        }
        Ok(())
    }

    /// Commits `positions` ((partition, next offset)).
    pub fn commit(&mut self, positions: &[(u32, i64)]) -> Result<(), BenchError> {
        let partitions: Vec<OffsetCommitRequestPartition> = positions
            .iter()
            .filter_map(|&(p, offset)| {
                Some(
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(i32::try_from(p).ok()?)
                        .with_committed_offset(offset),
                )
            })
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(str_bytes(&self.member_id))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(&self.topic))
                .with_partitions(partitions)]);
        let (r, _): (OffsetCommitResponse, i16) =
            self.client
                .call(ApiKey::OffsetCommit, (7, 8), |_| request)?;
        self.last_commit = Instant::now();
        let codes = r.topics.iter().flat_map(|t| &t.partitions);
        match codes.map(|p| p.error_code).find(|&c| c != 0) {
            None => Ok(()),
            Some(code) => Err(failed("OffsetCommit", &self.group, code)),
        }
    }

    /// Commits `positions` and leaves the group.
    pub fn leave(mut self, positions: &[(u32, i64)]) -> Result<(), BenchError> {
        self.commit(positions)?;
        let request = LeaveGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_members(vec![
                MemberIdentity::default().with_member_id(str_bytes(&self.member_id))
            ]);
        let (r, _): (LeaveGroupResponse, i16) =
            self.client.call(ApiKey::LeaveGroup, (3, 4), |_| request)?;
        match r.error_code {
            0 => Ok(()),
            code => Err(failed("LeaveGroup", &self.group, code)),
        }
    }
}

/// Partitions of member `i` of `n` (sorted by member id): contiguous
/// ranges, the first `partitions % n` members one longer (Kafka's range
/// assignor for one topic).
#[must_use]
pub fn range_of(i: usize, n: usize, partitions: u32) -> Vec<u32> {
    let (n, i) = (n.max(1) as u32, i as u32);
    let base = partitions / n;
    let extra = partitions % n;
    let start = i * base + i.min(extra);
    let len = base + u32::from(i < extra);
    (start..start + len).collect()
}

/// A consumer-protocol message with its version in front.
fn embedded<M: Encodable>(m: &M) -> Result<Bytes, BenchError> {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    m.encode(&mut buf, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| BenchError::new(format!("encoding consumer protocol data: {e}")))?;
    Ok(buf.freeze())
}

/// The partitions of `topic` in a SyncGroup assignment.
fn assigned(bytes: &Bytes, topic: &str) -> Result<Vec<u32>, BenchError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = bytes.clone();
    let version = i16::from_be_bytes(
        buf.get(..2)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BenchError::new("an assignment shorter than its version"))?,
    );
    let mut body = buf.split_off(2);
    let a = ConsumerProtocolAssignment::decode(&mut body, version.clamp(0, 3))
        .map_err(|e| BenchError::new(format!("decoding an assignment: {e}")))?;
    Ok(a.assigned_partitions
        .iter()
        .filter(|t| t.topic.0.as_str() == topic)
        .flat_map(|t| t.partitions.iter().filter_map(|&p| u32::try_from(p).ok()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_partition_once() {
        for n in 1..6 {
            for partitions in [1u32, 7, 8, 1000] {
                let all: Vec<u32> = (0..n).flat_map(|i| range_of(i, n, partitions)).collect();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>(), "{n} members");
            }
        }
        assert_eq!(range_of(0, 3, 8), [0, 1, 2]);
        assert_eq!(range_of(2, 3, 8), [6, 7]);
        assert!(range_of(3, 4, 3).is_empty());
    }

    #[test]
    fn assignments_round_trip() {
        let a = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
            AssignedTopic::default()
                .with_topic(topic_name("t"))
                .with_partitions(vec![3, 4]),
            AssignedTopic::default()
                .with_topic(topic_name("other"))
                .with_partitions(vec![0]),
        ]);
        let bytes = embedded(&a).expect("encodes");
        assert_eq!(&bytes[..2], &[0, 0], "version 0 in front");
        assert_eq!(assigned(&bytes, "t").expect("decodes"), [3, 4]);
        assert!(assigned(&Bytes::new(), "t").expect("empty").is_empty());
        assert!(assigned(&Bytes::from_static(&[0]), "t").is_err());
    }
}
