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

/// A request's body; the correlation id travels beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    Metadata(MetadataRequest),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
    Metadata(MetadataResponse),
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
