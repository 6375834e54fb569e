//! Owned request and response types of the native protocol.
//!
//! The broker decodes into these and encodes from them; so does the
//! [`crate::client`]. Record batches are [`Bytes`]: a decoded frame's records
//! are slices of that frame (no copy), and a fetch response's records are a
//! list of chunks the encoder passes through untouched, for a vectored write.
//!
//! Numbers use the wire's plain integers (`partition: u32`, offsets `i64`);
//! wrap them in [`crate::types`] at the boundary where they gain a meaning.

use bytes::Bytes;

use crate::ErrorCode;

/// How many replicas must have a produced batch before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Acks {
    /// No acknowledgement: the response is sent once the batch is accepted.
    None,
    /// The leader has appended the batch.
    #[default]
    Leader,
    /// Every in-sync replica has the batch.
    All,
}

/// One partition's records in a produce request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducePartition {
    pub topic: String,
    pub partition: u32,
    /// Kafka record batches (v2), concatenated.
    pub records: Bytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceRequest {
    pub acks: Acks,
    pub timeout_ms: u32,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducePartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    /// The offset given to the first record appended; -1 on error.
    pub base_offset: i64,
    pub log_start_offset: i64,
    /// What the broker says about `error` beyond its code (for example
    /// which check a batch failed), if anything.
    pub error_message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProduceResponse {
    pub partitions: Vec<ProducePartitionResponse>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchPartition {
    pub topic: String,
    pub partition: u32,
    /// The first offset wanted.
    pub offset: i64,
    pub max_bytes: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchRequest {
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    pub max_bytes: u32,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
    /// Kafka record batches as chunks, concatenated on the wire. An encoder
    /// passes the chunks through uncopied; a decoder gives one chunk (none
    /// when the partition has no records).
    pub records: Vec<Bytes>,
}

impl FetchPartitionResponse {
    /// The records' total length in bytes, over all chunks.
    #[must_use]
    pub fn records_len(&self) -> usize {
        self.records.iter().map(Bytes::len).sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchResponse {
    pub partitions: Vec<FetchPartitionResponse>,
}

/// `timestamp`: [`crate::types::list_offsets_timestamp::LATEST`] (-1),
/// [`crate::types::list_offsets_timestamp::EARLIEST`] (-2), or else the first
/// offset whose timestamp is at least this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOffsetsPartition {
    pub topic: String,
    pub partition: u32,
    pub timestamp: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOffsetsRequest {
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListOffsetsPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    pub offset: i64,
    pub timestamp: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOffsetsResponse {
    pub partitions: Vec<ListOffsetsPartitionResponse>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateTopic {
    pub name: String,
    pub partitions: u32,
    /// Topic configs as `(key, value)`, e.g. `("retention.ms", "60000")`.
    pub configs: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<CreateTopic>,
}

/// The outcome for one topic of a CreateTopics or DeleteTopics request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicResult {
    pub name: String,
    pub error: ErrorCode,
    /// Why, for a person; empty on success.
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateTopicsResponse {
    pub topics: Vec<TopicResult>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteTopicsResponse {
    pub topics: Vec<TopicResult>,
}

/// Empty `topics`: all topics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataRequest {
    pub topics: Vec<String>,
}

/// Where a shard (one core of the broker) accepts native connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardAddress {
    pub shard: u32,
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// The shard that owns the partition: send its produce and fetch there.
    pub shard: u32,
    pub leader_epoch: i32,
    pub error: ErrorCode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub error: ErrorCode,
    pub partitions: Vec<PartitionMetadata>,
    pub configs: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataResponse {
    pub node_id: i32,
    pub bootstrap_host: String,
    pub bootstrap_port: u16,
    pub shards: Vec<ShardAddress>,
    pub topics: Vec<TopicMetadata>,
}

/// A protocol a group member can use (e.g. `"range"`), with its member
/// metadata: bytes only the members read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupProtocol {
    pub name: String,
    pub metadata: Bytes,
}

/// Kafka's JoinGroup. `member_id` is empty on a first join; the coordinator
/// answers MEMBER_ID_REQUIRED with an id to join again with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinGroupRequest {
    pub group_id: String,
    pub session_timeout_ms: i32,
    /// -1: the session timeout.
    pub rebalance_timeout_ms: i32,
    pub member_id: String,
    /// A static member's id; `None` for a dynamic member.
    pub group_instance_id: Option<String>,
    /// `"consumer"` for consumers.
    pub protocol_type: String,
    pub protocols: Vec<GroupProtocol>,
    /// Prefixes the member id given out (Kafka takes it from its request
    /// header, which the native protocol does not have).
    pub client_id: String,
}

/// A member as the leader sees it in its JoinGroup answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JoinGroupMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// Its metadata for the chosen protocol.
    pub metadata: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinGroupResponse {
    pub error: ErrorCode,
    pub generation_id: i32,
    pub protocol_type: String,
    /// The protocol chosen for the generation.
    pub protocol_name: String,
    pub leader: String,
    /// This member's id (also on MEMBER_ID_REQUIRED).
    pub member_id: String,
    /// Every member, for the leader only; empty for the others.
    pub members: Vec<JoinGroupMember>,
}

/// One member's assignment, as the leader sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupAssignment {
    pub member_id: String,
    pub assignment: Bytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncGroupRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// Empty: not checked against the group's.
    pub protocol_type: String,
    /// Empty: not checked against the group's.
    pub protocol_name: String,
    /// From the leader only.
    pub assignments: Vec<GroupAssignment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncGroupResponse {
    pub error: ErrorCode,
    pub protocol_type: String,
    pub protocol_name: String,
    /// This member's assignment.
    pub assignment: Bytes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub error: ErrorCode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeavingMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaveGroupRequest {
    pub group_id: String,
    pub members: Vec<LeavingMember>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeavingMemberResponse {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub error: ErrorCode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveGroupResponse {
    /// A group-level error; the members' own are beside them.
    pub error: ErrorCode,
    pub members: Vec<LeavingMemberResponse>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetCommitPartition {
    pub topic: String,
    pub partition: u32,
    /// The next offset to consume.
    pub offset: i64,
    /// -1: unknown.
    pub leader_epoch: i32,
    pub metadata: String,
}

/// `generation_id` -1 with an empty `member_id`: a consumer that assigns
/// partitions itself and uses the group for offsets only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub partitions: Vec<OffsetCommitPartition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommitPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetCommitResponse {
    pub partitions: Vec<OffsetCommitPartitionResponse>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetFetchPartition {
    pub topic: String,
    pub partition: u32,
}

/// Empty `partitions`: every partition the group has committed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetFetchRequest {
    pub group_id: String,
    pub partitions: Vec<OffsetFetchPartition>,
    pub require_stable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetFetchPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub error: ErrorCode,
    /// -1: nothing committed.
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetFetchResponse {
    /// A group-level error, e.g. COORDINATOR_LOAD_IN_PROGRESS.
    pub error: ErrorCode,
    pub partitions: Vec<OffsetFetchPartitionResponse>,
}

/// A request's body; the correlation id travels beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    Metadata(MetadataRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
    Metadata(MetadataResponse),
    JoinGroup(JoinGroupResponse),
    SyncGroup(SyncGroupResponse),
    Heartbeat(HeartbeatResponse),
    LeaveGroup(LeaveGroupResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    /// No body: the whole request failed (see [`Response::error`]).
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub correlation_id: u32,
    /// The whole-request error, e.g. INVALID_REQUEST; NONE when the body
    /// carries the per-partition or per-topic results.
    pub error: ErrorCode,
    /// Why the whole request failed, for a person; empty otherwise.
    pub message: String,
    pub body: ResponseBody,
}

impl Response {
    /// A response that fails the whole request, with no body.
    #[must_use]
    pub fn error(correlation_id: u32, error: ErrorCode, message: &str) -> Response {
        Response {
            correlation_id,
            error,
            message: message.to_owned(),
            body: ResponseBody::Error,
        }
    }
}
