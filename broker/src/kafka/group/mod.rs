//! The consumer-group coordinator for Kafka's classic rebalance protocol (JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) and committed offsets (OffsetCommit, OffsetFetch,
//! OffsetDelete), with DescribeGroups, ListGroups and DeleteGroups.
//!
//! # Where it lives
//! One [`GroupCoordinator`] per shard: it is `!Send` and lives on that shard's glommio
//! executor. A group belongs to the shard that owns its partition of the compacted
//! internal topic [`OFFSETS_TOPIC`] ([`offsets_partition_for`], Kafka's own mapping), and
//! the Kafka listener routes every group request to that shard.
//!
//! # Layers
//! - [`state`]: the sans-IO core. Inputs (requests, ticks) and a `now` go in; replies to
//!   waiting requests and records to persist come out. All rebalance logic is here and is
//!   unit-tested without sockets, disks or executors.
//! - [`coordinator`]: the async shell. It turns requests into core inputs, parks JoinGroup
//!   and SyncGroup requests on oneshot channels until the core answers them, runs a timer
//!   task for session, join and sync deadlines, and appends records to the offsets log.
//! - [`records`]: the `__consumer_offsets` key/value schema (Kafka's).
//!
//! # What it promises
//! - An OffsetCommit is acknowledged only after its records are durable in the log.
//! - A restart replays the log ([`GroupCoordinator::load`]): committed offsets, groups
//!   and their last stable generation (members included, as Kafka restores them) return.
//! - Every collection is bounded ([`GroupConfig`]); at a bound the client gets an error.

pub mod coordinator;
pub mod ops;
pub mod records;
pub mod state;
#[cfg(test)]
mod tests;

use kafka_protocol::messages::{
    describe_groups_response, list_groups_response, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    SyncGroupRequest, SyncGroupResponse,
};

pub use coordinator::{GroupCoordinator, LocalBoxFuture, OffsetsLog, OffsetsStore};

/// The internal compacted topic that holds committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Kafka's `group.initial.rebalance.delay.ms` default.
pub const INITIAL_REBALANCE_DELAY_MS_DEFAULT: u64 = 3_000;
/// Kafka's `group.min.session.timeout.ms` default.
pub const SESSION_TIMEOUT_MS_MIN_DEFAULT: i32 = 6_000;
/// Kafka's `group.max.session.timeout.ms` default.
pub const SESSION_TIMEOUT_MS_MAX_DEFAULT: i32 = 1_800_000;
/// Members (joined or pending) per group; Kafka's `group.max.size` is unbounded.
pub const MEMBERS_PER_GROUP_MAX_DEFAULT: usize = 1_000;
/// Groups per shard.
pub const GROUPS_MAX_DEFAULT: usize = 100_000;
/// Committed partitions per group.
pub const OFFSETS_PER_GROUP_MAX_DEFAULT: usize = 100_000;
/// Kafka's `offset.metadata.max.bytes` default.
pub const METADATA_BYTES_MAX_DEFAULT: usize = 4_096;
/// How long an Empty group without offsets is kept before it is removed (Kafka's
/// `offsets.retention.check.interval.ms`, the period of its cleanup pass).
pub const EMPTY_GROUP_RETENTION_MS_DEFAULT: u64 = 600_000;
/// Kafka's `offsets.retention.minutes` default (7 days), in milliseconds.
pub const OFFSETS_RETENTION_MS_DEFAULT: u64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's `offsets.retention.check.interval.ms` default.
pub const OFFSETS_RETENTION_CHECK_MS_DEFAULT: u64 = 600_000;
/// How often the timer task checks session, join and sync deadlines.
pub const TICK_MS: u64 = 100;
/// Bytes read from the offsets log per step while loading.
pub const LOAD_READ_BYTES: usize = 1 << 20;

const _: () = assert!(SESSION_TIMEOUT_MS_MIN_DEFAULT <= SESSION_TIMEOUT_MS_MAX_DEFAULT);
const _: () = assert!(TICK_MS < SESSION_TIMEOUT_MS_MIN_DEFAULT as u64);

/// The coordinator's limits and timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    pub initial_rebalance_delay_ms: u64,
    pub session_timeout_ms_min: i32,
    pub session_timeout_ms_max: i32,
    pub members_per_group_max: usize,
    pub groups_max: usize,
    pub offsets_per_group_max: usize,
    pub metadata_bytes_max: usize,
    pub empty_group_retention_ms: u64,
    /// Committed offsets expire this long after their group became Empty (or, for
    /// a group that only commits, after their commit; for a Stable consumer group,
    /// after the commit of a topic no member subscribes to any more).
    pub offsets_retention_ms: u64,
    pub offsets_retention_check_ms: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: INITIAL_REBALANCE_DELAY_MS_DEFAULT,
            session_timeout_ms_min: SESSION_TIMEOUT_MS_MIN_DEFAULT,
            session_timeout_ms_max: SESSION_TIMEOUT_MS_MAX_DEFAULT,
            members_per_group_max: MEMBERS_PER_GROUP_MAX_DEFAULT,
            groups_max: GROUPS_MAX_DEFAULT,
            offsets_per_group_max: OFFSETS_PER_GROUP_MAX_DEFAULT,
            metadata_bytes_max: METADATA_BYTES_MAX_DEFAULT,
            empty_group_retention_ms: EMPTY_GROUP_RETENTION_MS_DEFAULT,
            offsets_retention_ms: OFFSETS_RETENTION_MS_DEFAULT,
            offsets_retention_check_ms: OFFSETS_RETENTION_CHECK_MS_DEFAULT,
        }
    }
}

/// One group request, already routed to the shard that coordinates the group.
///
/// Versions are carried for every request, also where the answer does not depend on
/// them yet (Heartbeat, OffsetCommit, OffsetDelete), and `require_stable` is accepted
/// though no transactional offsets are ever pending here.
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub enum GroupRequest {
    /// The request, its version, and the client id from the request header.
    Join(JoinGroupRequest, i16, String),
    Sync(SyncGroupRequest, i16),
    Heartbeat(HeartbeatRequest, i16),
    Leave(LeaveGroupRequest, i16),
    OffsetCommit(OffsetCommitRequest, i16),
    /// One group's part of an OffsetFetch (v0-7 carry one group; v8+ a list: the lead
    /// splits by group). `topics: None` asks for every committed partition.
    OffsetFetch {
        group_id: String,
        topics: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    },
    Describe(Vec<String>),
    Delete(Vec<String>),
    OffsetDelete(OffsetDeleteRequest, i16),
    /// ListGroups for this shard's groups; an empty filter lists every state.
    List {
        states_filter: Vec<String>,
    },
}

/// The answer to a [`GroupRequest`], shaped for the request's version.
#[derive(Clone, Debug, PartialEq)]
pub enum GroupResponse {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    Leave(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    /// The partitions' offsets, or a group-level error code.
    OffsetFetch(Result<Vec<FetchedOffset>, i16>),
    Describe(Vec<DescribedGroup>),
    /// Per group: its id and an error code.
    Delete(Vec<(String, i16)>),
    OffsetDelete(OffsetDeleteResponse),
    List(Vec<ListedGroup>),
}

/// One partition of an OffsetFetch answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedOffset {
    pub topic: String,
    pub partition: i32,
    /// -1: nothing committed.
    pub offset: i64,
    /// -1: unknown.
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub error: i16,
}

/// DescribeGroups' per-group entry, valid for every version: `error_message` is left
/// None and `group_instance_id` is only set for static members (encoded from v4 on,
/// ignored by older versions' encoders). An unknown group is described as state "Dead"
/// with error 0, as Kafka does before v6; for v6 the lead may turn that into
/// GROUP_ID_NOT_FOUND (69).
pub type DescribedGroup = describe_groups_response::DescribedGroup;

/// ListGroups' per-group entry: `group_state` (v4+) and `group_type` ("classic", v5+) are
/// filled; older versions' encoders skip them.
pub type ListedGroup = list_groups_response::ListedGroup;

/// Kafka's `Utils.abs(groupId.hashCode()) % partitions`: Java's `String.hashCode` over
/// UTF-16 code units, with `Utils.abs` mapping `i32::MIN` to 0.
///
/// # Panics
/// If `partitions` is 0 (a configuration bug).
pub fn offsets_partition_for(group_id: &str, partitions: u32) -> u32 {
    assert!(
        partitions > 0,
        "__consumer_offsets has at least one partition"
    );
    let hash = group_id.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs.unsigned_abs() % partitions
}

/// Kafka's error codes used by the coordinator.
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}
