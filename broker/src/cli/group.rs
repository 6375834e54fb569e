//! `sluice consume --group`: one member of a consumer group, over the native
//! protocol's group requests.
//!
//! The member joins with protocol type `"consumer"` and one protocol,
//! `"range"`; the leader assigns each subscribed topic's partitions in
//! contiguous ranges over the members subscribed to it, sorted by member id
//! (Kafka's RangeAssignor). Metadata and assignments use Kafka's consumer
//! protocol, version 0, so the bytes mean the same to a Java consumer:
//!
//! ```text
//! subscription  version: i16 = 0 | topics: i32 n, n x string | user_data: bytes
//! assignment    version: i16 = 0 | topics: i32 n, n x (topic: string,
//!               partitions: i32 k, k x i32) | user_data: bytes
//! string        i16 length, UTF-8        bytes  i32 length (-1: null), bytes
//! ```
//!
//! All integers are big-endian. Decoders read version 0 and every later
//! version (which only append fields) and never panic on bad input.
//!
//! [`Member`] is the blocking state machine around one connection:
//! [`Member::join`] (JoinGroup, then SyncGroup, retried across
//! MEMBER_ID_REQUIRED and rebalances), [`Member::heartbeat`],
//! [`Member::commit`] and [`Member::leave`]. A [`Rejoin`] from heartbeat or
//! commit means the generation is over: join again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_protocol::client::Client;
use sluice_protocol::native::{
    GroupAssignment, GroupProtocol, HeartbeatRequest, JoinGroupMember, JoinGroupRequest,
    LeaveGroupRequest, LeavingMember, OffsetCommitPartition, OffsetCommitRequest,
    OffsetFetchPartition, OffsetFetchRequest, SyncGroupRequest,
};
use sluice_protocol::ErrorCode;

use super::CliError;

/// The protocol type of every consumer, Kafka's or ours.
pub const PROTOCOL_TYPE: &str = "consumer";
/// The one assignment strategy this member offers.
pub const PROTOCOL_RANGE: &str = "range";
/// Prefixes the member ids the coordinator gives out.
pub const CLIENT_ID: &str = "sluice-consume";
/// How long the coordinator waits for a heartbeat before evicting us.
pub const SESSION_TIMEOUT_MS: i32 = 10_000;
/// How long a rebalance may wait for us to rejoin; a JoinGroup may be held
/// this long, under the CLI's response wait.
pub const REBALANCE_TIMEOUT_MS: i32 = 30_000;
/// A third of the session, as Kafka's consumers heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(SESSION_TIMEOUT_MS as u64 / 3);
/// Retriable answers (a coordinator loading or moving) a join tolerates in
/// a row before giving up, and the pause between them.
const JOIN_RETRIES_MAX: u32 = 50;
const JOIN_RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Kafka's consumer protocol version we write.
const CONSUMER_PROTOCOL_VERSION: i16 = 0;

const _: () = assert!(
    (REBALANCE_TIMEOUT_MS as u64) < super::RESPONSE_WAIT_MAX.as_millis() as u64,
    "a held JoinGroup must be answered before the client gives up on it"
);

/// Kafka's codes the member acts on (see `ErrorCode` for the rest).
pub mod code {
    use sluice_protocol::ErrorCode;

    pub const COORDINATOR_LOAD_IN_PROGRESS: ErrorCode = ErrorCode(14);
    pub const COORDINATOR_NOT_AVAILABLE: ErrorCode = ErrorCode(15);
    pub const NOT_COORDINATOR: ErrorCode = ErrorCode(16);
    pub const ILLEGAL_GENERATION: ErrorCode = ErrorCode(22);
    pub const UNKNOWN_MEMBER_ID: ErrorCode = ErrorCode(25);
    pub const REBALANCE_IN_PROGRESS: ErrorCode = ErrorCode(27);
    pub const MEMBER_ID_REQUIRED: ErrorCode = ErrorCode(79);
}

/// The generation is over: the caller must stop consuming and join again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejoin;

/// Why a generation ended, from a heartbeat or commit answer: `Some` for the
/// codes that mean "join again".
fn rejoin_for(error: ErrorCode) -> Option<Rejoin> {
    let again = [
        code::REBALANCE_IN_PROGRESS,
        code::ILLEGAL_GENERATION,
        code::UNKNOWN_MEMBER_ID,
    ];
    again.contains(&error).then_some(Rejoin)
}

fn retriable(error: ErrorCode) -> bool {
    [
        code::COORDINATOR_LOAD_IN_PROGRESS,
        code::COORDINATOR_NOT_AVAILABLE,
        code::NOT_COORDINATOR,
        code::REBALANCE_IN_PROGRESS,
    ]
    .contains(&error)
}

/// Gives the partition count of each named topic (the leader needs them
/// to assign); a topic it does not know is left out.
pub type PartitionCounts<'a> =
    &'a mut dyn FnMut(&[String]) -> Result<BTreeMap<String, u32>, CliError>;

/// One group member over its own connection.
pub struct Member {
    client: Client,
    group: String,
    topic: String,
    member_id: String,
    generation: i32,
    heartbeat_last: Instant,
}

/// What [`Member::join`] ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub generation: i32,
    pub member_id: String,
    /// This member's partitions of its topic, ascending.
    pub partitions: Vec<u32>,
}

impl Member {
    pub fn new(client: Client, group: String, topic: String) -> Member {
        Member {
            client,
            group,
            topic,
            member_id: String::new(),
            generation: -1,
            heartbeat_last: Instant::now(),
        }
    }

    /// Joins the group and syncs; `partitions_of` gives a topic's partition
    /// count when this member leads and must assign.
    pub fn join(&mut self, partitions_of: PartitionCounts<'_>) -> Result<Joined, CliError> {
        let mut retries = 0;
        loop {
            let step = self.join_once(partitions_of)?;
            match step {
                Ok(joined) => return Ok(joined),
                Err(error) if retries < JOIN_RETRIES_MAX => {
                    retries += 1;
                    if retriable(error) {
                        std::thread::sleep(JOIN_RETRY_BACKOFF);
                    }
                }
                Err(error) => {
                    return Err(CliError(format!("group {}: join: {error}", self.group)));
                }
            }
        }
    }

    /// One JoinGroup and SyncGroup. `Ok(Err(code))`: try again (the member
    /// id and generation have been updated as the code asks); `Err`: give up.
    fn join_once(
        &mut self,
        partitions_of: PartitionCounts<'_>,
    ) -> Result<Result<Joined, ErrorCode>, CliError> {
        let joined = self.client.join_group(JoinGroupRequest {
            group_id: self.group.clone(),
            session_timeout_ms: SESSION_TIMEOUT_MS,
            rebalance_timeout_ms: REBALANCE_TIMEOUT_MS,
            member_id: self.member_id.clone(),
            group_instance_id: None,
            protocol_type: PROTOCOL_TYPE.into(),
            protocols: vec![GroupProtocol {
                name: PROTOCOL_RANGE.into(),
                metadata: encode_subscription(&[self.topic.as_str()]),
            }],
            client_id: CLIENT_ID.into(),
        })?;
        match joined.error {
            ErrorCode::NONE => {}
            code::MEMBER_ID_REQUIRED => {
                self.member_id = joined.member_id;
                return Ok(Err(code::MEMBER_ID_REQUIRED));
            }
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                return Ok(Err(code::UNKNOWN_MEMBER_ID));
            }
            e if retriable(e) => return Ok(Err(e)),
            e => return Err(CliError(format!("group {}: join: {e}", self.group))),
        }
        self.member_id = joined.member_id;
        self.generation = joined.generation_id;
        let assignments = if joined.leader == self.member_id {
            assign(&joined.members, partitions_of)?
        } else {
            Vec::new()
        };
        let synced = self.client.sync_group(SyncGroupRequest {
            group_id: self.group.clone(),
            generation_id: self.generation,
            member_id: self.member_id.clone(),
            group_instance_id: None,
            protocol_type: PROTOCOL_TYPE.into(),
            protocol_name: joined.protocol_name,
            assignments,
        })?;
        self.heartbeat_last = Instant::now();
        match synced.error {
            ErrorCode::NONE => {}
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                return Ok(Err(code::UNKNOWN_MEMBER_ID));
            }
            e if rejoin_for(e).is_some() || retriable(e) => return Ok(Err(e)),
            e => return Err(CliError(format!("group {}: sync: {e}", self.group))),
        }
        let partitions = decode_assignment(&synced.assignment)
            .map_err(|e| CliError(format!("group {}: assignment: {e}", self.group)))?
            .into_iter()
            .filter(|(topic, _)| *topic == self.topic)
            .flat_map(|(_, partitions)| partitions)
            .collect::<std::collections::BTreeSet<u32>>();
        Ok(Ok(Joined {
            generation: self.generation,
            member_id: self.member_id.clone(),
            partitions: partitions.into_iter().collect(),
        }))
    }

    /// How long until the next heartbeat is due.
    pub fn heartbeat_in(&self) -> Duration {
        HEARTBEAT_INTERVAL.saturating_sub(self.heartbeat_last.elapsed())
    }

    /// Heartbeats if one is due.
    pub fn heartbeat(&mut self) -> Result<Option<Rejoin>, CliError> {
        if !self.heartbeat_in().is_zero() {
            return Ok(None);
        }
        let answer = self.client.heartbeat(HeartbeatRequest {
            group_id: self.group.clone(),
            generation_id: self.generation,
            member_id: self.member_id.clone(),
            group_instance_id: None,
        })?;
        self.heartbeat_last = Instant::now();
        self.outcome("heartbeat", answer.error)
    }

    fn outcome(&mut self, what: &str, error: ErrorCode) -> Result<Option<Rejoin>, CliError> {
        if error == code::UNKNOWN_MEMBER_ID {
            self.member_id.clear();
        }
        match (error, rejoin_for(error)) {
            (ErrorCode::NONE, _) => Ok(None),
            (_, Some(rejoin)) => Ok(Some(rejoin)),
            (e, None) => Err(CliError(format!("group {}: {what}: {e}", self.group))),
        }
    }

    /// The committed offsets of `partitions`, in order; `None` where nothing
    /// is committed.
    pub fn committed(&mut self, partitions: &[u32]) -> Result<Vec<Option<i64>>, CliError> {
        let asked = partitions.iter().map(|&partition| OffsetFetchPartition {
            topic: self.topic.clone(),
            partition,
        });
        let answer = self.client.offset_fetch(OffsetFetchRequest {
            group_id: self.group.clone(),
            partitions: asked.collect(),
            require_stable: true,
        })?;
        if !answer.error.is_ok() {
            let group = &self.group;
            return Err(CliError(format!(
                "group {group}: offset fetch: {}",
                answer.error
            )));
        }
        let offset_of = |partition: u32| {
            let found = answer
                .partitions
                .iter()
                .find(|p| p.topic == self.topic && p.partition == partition);
            match found {
                Some(p) if !p.error.is_ok() => Err(CliError(format!(
                    "group {} partition {partition}: offset fetch: {}",
                    self.group, p.error
                ))),
                Some(p) if p.offset >= 0 => Ok(Some(p.offset)),
                _ => Ok(None),
            }
        };
        partitions.iter().map(|&p| offset_of(p)).collect()
    }

    /// Commits `(partition, next offset)` pairs for this generation.
    pub fn commit(&mut self, offsets: &[(u32, i64)]) -> Result<Option<Rejoin>, CliError> {
        if offsets.is_empty() {
            return Ok(None);
        }
        let partitions = offsets
            .iter()
            .map(|&(partition, offset)| OffsetCommitPartition {
                topic: self.topic.clone(),
                partition,
                offset,
                leader_epoch: -1,
                metadata: String::new(),
            });
        let answers = self.client.offset_commit(OffsetCommitRequest {
            group_id: self.group.clone(),
            generation_id: self.generation,
            member_id: self.member_id.clone(),
            group_instance_id: None,
            partitions: partitions.collect(),
        })?;
        // A commit also proves we are alive.
        self.heartbeat_last = Instant::now();
        let error = answers
            .iter()
            .map(|p| p.error)
            .find(|e| !e.is_ok())
            .unwrap_or(ErrorCode::NONE);
        self.outcome("commit", error)
    }

    /// Leaves the group so the others take our partitions at once instead of
    /// after our session times out. Best effort: failures are only logged.
    pub fn leave(&mut self) {
        if self.member_id.is_empty() {
            return;
        }
        let request = LeaveGroupRequest {
            group_id: self.group.clone(),
            members: vec![LeavingMember {
                member_id: self.member_id.clone(),
                group_instance_id: None,
            }],
        };
        match self.client.leave_group(request) {
            Ok(r) if r.error.is_ok() => {}
            Ok(r) => eprintln!("sluice consume: group {}: leave: {}", self.group, r.error),
            Err(e) => eprintln!("sluice consume: group {}: leave: {e}", self.group),
        }
        self.member_id.clear();
    }
}

/// The leader's range assignment of every member's subscribed topics.
fn assign(
    members: &[JoinGroupMember],
    partitions_of: PartitionCounts<'_>,
) -> Result<Vec<GroupAssignment>, CliError> {
    let mut subscriptions = BTreeMap::new();
    for m in members {
        // A member whose metadata we cannot read is assigned nothing.
        let topics = decode_subscription(&m.metadata).unwrap_or_else(|e| {
            eprintln!("sluice consume: member {}: subscription: {e}", m.member_id);
            Vec::new()
        });
        subscriptions.insert(m.member_id.clone(), topics);
    }
    let mut topics: Vec<String> = subscriptions.values().flatten().cloned().collect();
    topics.sort();
    topics.dedup();
    let counts = partitions_of(&topics)?;
    let plan = range_assign(&subscriptions, &counts);
    let assignments = subscriptions.keys().map(|member| GroupAssignment {
        member_id: member.clone(),
        assignment: encode_assignment(plan.get(member).map_or(&[][..], Vec::as_slice)),
    });
    Ok(assignments.collect())
}

/// Kafka's RangeAssignor: per topic, the subscribed members in member-id
/// order each take a contiguous range; the first `n % m` take one extra.
pub fn range_assign(
    subscriptions: &BTreeMap<String, Vec<String>>,
    partitions: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<(String, Vec<u32>)>> {
    let mut plan: BTreeMap<String, Vec<(String, Vec<u32>)>> = BTreeMap::new();
    for (topic, &n) in partitions {
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(member, _)| member)
            .collect();
        let Ok(m) = u32::try_from(members.len()) else {
            continue;
        };
        if m == 0 {
            continue;
        }
        let (each, extra) = (n / m, n % m);
        for (i, member) in (0u32..).zip(members) {
            let start = i * each + i.min(extra);
            let len = each + u32::from(i < extra);
            let range: Vec<u32> = (start..start + len).collect();
            plan.entry(member.clone())
                .or_default()
                .push((topic.clone(), range));
        }
    }
    plan
}

fn put_string(buf: &mut BytesMut, s: &str) {
    let len = i16::try_from(s.len()).unwrap_or(i16::MAX);
    buf.put_i16(len);
    buf.put_slice(&s.as_bytes()[..len as usize]);
}

fn put_len(buf: &mut BytesMut, n: usize) {
    buf.put_i32(i32::try_from(n).unwrap_or(i32::MAX));
}

/// Kafka's consumer protocol Subscription v0 for `topics`, no user data.
pub fn encode_subscription(topics: &[&str]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    put_len(&mut buf, topics.len());
    for topic in topics {
        put_string(&mut buf, topic);
    }
    buf.put_i32(-1);
    buf.freeze()
}

/// Kafka's consumer protocol Assignment v0, no user data.
pub fn encode_assignment(topics: &[(String, Vec<u32>)]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(CONSUMER_PROTOCOL_VERSION);
    put_len(&mut buf, topics.len());
    for (topic, partitions) in topics {
        put_string(&mut buf, topic);
        put_len(&mut buf, partitions.len());
        for &p in partitions {
            buf.put_i32(i32::try_from(p).unwrap_or(i32::MAX));
        }
    }
    buf.put_i32(-1);
    buf.freeze()
}

/// A bounds-checked reader over untrusted bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.bytes.len() {
            return Err(format!(
                "truncated: {n} bytes wanted, {} left",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array's length; each element takes at least `element_bytes_min`,
    /// so a lying length fails before anything is allocated for it.
    fn len(&mut self, element_bytes_min: usize) -> Result<usize, String> {
        let n = self.i32()?;
        let n = usize::try_from(n).map_err(|_| format!("negative length {n}"))?;
        if n.saturating_mul(element_bytes_min) > self.bytes.len() {
            return Err(format!("length {n} runs past the end"));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| format!("negative string length {n}"))?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_owned())
    }

    fn version(&mut self) -> Result<(), String> {
        match self.i16()? {
            v if v >= 0 => Ok(()),
            v => Err(format!("version {v}")),
        }
    }
}

/// The topics of a Subscription of any version (later versions' extra
/// fields are ignored).
pub fn decode_subscription(bytes: &[u8]) -> Result<Vec<String>, String> {
    let mut c = Cursor { bytes };
    c.version()?;
    let n = c.len(2)?;
    (0..n).map(|_| c.string()).collect()
}

/// The topics and partitions of an Assignment of any version. Empty bytes
/// (a member the leader left out) are an empty assignment.
pub fn decode_assignment(bytes: &[u8]) -> Result<Vec<(String, Vec<u32>)>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = Cursor { bytes };
    c.version()?;
    let n = c.len(6)?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = c.string()?;
        let k = c.len(4)?;
        let mut partitions = Vec::with_capacity(k);
        for _ in 0..k {
            let p = c.i32()?;
            partitions.push(u32::try_from(p).map_err(|_| format!("partition {p}"))?);
        }
        topics.push((topic, partitions));
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subs(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        let to_owned = |(m, ts): &(&str, &[&str])| {
            let topics = ts.iter().map(|t| (*t).to_owned()).collect();
            ((*m).to_owned(), topics)
        };
        pairs.iter().map(to_owned).collect()
    }

    fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
    }

    #[test]
    fn range_splits_contiguously_with_the_remainder_first() {
        let plan = range_assign(&subs(&[("b", &["t"]), ("a", &["t"])]), &counts(&[("t", 5)]));
        assert_eq!(plan["a"], vec![("t".to_owned(), vec![0, 1, 2])]);
        assert_eq!(plan["b"], vec![("t".to_owned(), vec![3, 4])]);
    }

    #[test]
    fn range_covers_every_partition_once_for_any_member_count() {
        for members in 1..7 {
            for n in 0..13 {
                let names: Vec<String> = (0..members).map(|i| format!("m{i}")).collect();
                let subscribed: Vec<(&str, &[&str])> =
                    names.iter().map(|m| (m.as_str(), &["t"][..])).collect();
                let plan = range_assign(&subs(&subscribed), &counts(&[("t", n)]));
                let mut all: Vec<u32> = plan.values().flatten().flat_map(|t| t.1.clone()).collect();
                all.sort_unstable();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "{members} members, {n}");
            }
        }
    }

    #[test]
    fn range_assigns_a_topic_only_to_its_subscribers() {
        let s = subs(&[("a", &["t"]), ("b", &["u"])]);
        let plan = range_assign(&s, &counts(&[("t", 2), ("u", 1)]));
        assert_eq!(plan["a"], vec![("t".to_owned(), vec![0, 1])]);
        assert_eq!(plan["b"], vec![("u".to_owned(), vec![0])]);
    }

    #[test]
    fn subscription_and_assignment_round_trip() {
        let bytes = encode_subscription(&["orders", "t"]);
        assert_eq!(
            decode_subscription(&bytes),
            Ok(vec!["orders".into(), "t".into()])
        );
        let topics = vec![("t".to_owned(), vec![0, 3]), ("u".to_owned(), vec![])];
        assert_eq!(decode_assignment(&encode_assignment(&topics)), Ok(topics));
        assert_eq!(decode_assignment(&[]), Ok(vec![]));
    }

    /// The bytes Kafka's ConsumerProtocol writes for Subscription v0 of
    /// ["t"] with null user data.
    #[test]
    fn subscription_matches_kafkas_v0_layout() {
        let bytes = encode_subscription(&["t"]);
        assert_eq!(
            &bytes[..],
            &[0, 0, 0, 0, 0, 1, 0, 1, b't', 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let topics = vec![("t".to_owned(), vec![0, 1, 2])];
        let assignment = encode_assignment(&topics);
        for cut in 1..assignment.len() - 4 {
            assert!(
                decode_assignment(&assignment[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let subscription = encode_subscription(&["t"]);
        for cut in 0..subscription.len() - 4 {
            assert!(
                decode_subscription(&subscription[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn lying_lengths_are_errors() {
        let huge = [0, 0, 0x7f, 0xff, 0xff, 0xff];
        assert!(decode_subscription(&huge).is_err());
        assert!(decode_assignment(&huge).is_err());
        let negative_partition = [
            0, 0, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(decode_assignment(&negative_partition).is_err());
    }

    #[test]
    fn rejoin_codes() {
        assert_eq!(rejoin_for(code::REBALANCE_IN_PROGRESS), Some(Rejoin));
        assert_eq!(rejoin_for(code::ILLEGAL_GENERATION), Some(Rejoin));
        assert_eq!(rejoin_for(code::UNKNOWN_MEMBER_ID), Some(Rejoin));
        assert_eq!(rejoin_for(ErrorCode::NONE), None);
        assert_eq!(rejoin_for(ErrorCode::UNKNOWN_SERVER_ERROR), None);
    }
}
