//! Cross-shard messages: the one enum that travels between cores.
//!
//! A request that touches partitions owned by other shards is split by owner;
//! each part travels to its owner as a [`ShardMsg`] over glommio's bounded
//! channel mesh, and the answer comes back on the oneshot carried inside the
//! message. Nothing else crosses cores: no shared partition state, no locks.
//!
//! Each variant says whether a sender may retry it after a failure (the owner
//! stopped, or the reply was dropped).

use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use sluice_protocol::native::{
    CreateTopic, FetchPartition, FetchPartitionResponse, ListOffsetsPartition,
    ListOffsetsPartitionResponse, ProducePartitionResponse, TopicResult,
};
use sluice_shard::partition::Durability;

use crate::kafka::group::{GroupRequest, GroupResponse};
use crate::topics::TopicMeta;

/// Where the answer to a cross-shard message goes.
pub type Reply<T> = oneshot::Sender<T>;

/// Bounded depth of each channel between two shards.
pub const SHARD_CHANNEL_DEPTH: usize = 1024;

/// One partition's records on their way to the owning shard.
#[derive(Debug)]
pub struct ProducePart {
    pub topic: String,
    pub partition: u32,
    pub records: Bytes,
}

/// A change to a topic, decided by the controller.
#[derive(Clone, Debug)]
pub enum TopicChange {
    /// Grow to this many partitions (CreatePartitions).
    Partitions(u32),
    /// Replace every override with these (AlterConfigs).
    ReplaceConfigs(Vec<(String, String)>),
    /// Set (`Some`) or remove (`None`) these overrides (IncrementalAlterConfigs).
    EditConfigs(Vec<(String, Option<String>)>),
}

/// Every message one shard sends another.
pub enum ShardMsg {
    /// Append to partitions the receiver owns. Not retryable: a retry after a
    /// lost reply could append the batches twice (no producer ids yet).
    Produce {
        durability: Durability,
        parts: Vec<ProducePart>,
        reply: Reply<Vec<ProducePartitionResponse>>,
    },
    /// Read from partitions the receiver owns, without waiting. Retryable.
    Fetch {
        parts: Vec<FetchPartition>,
        reply: Reply<Vec<FetchPartitionResponse>>,
    },
    /// Answer when any of these partitions has grown past the given log end
    /// offset, or when `timeout` passes. Retryable.
    WatchAppend {
        parts: Vec<(String, u32, i64)>,
        timeout: Duration,
        reply: Reply<()>,
    },
    /// Offsets of partitions the receiver owns. Retryable.
    ListOffsets {
        parts: Vec<ListOffsetsPartition>,
        reply: Reply<Vec<ListOffsetsPartitionResponse>>,
    },
    /// OffsetForLeaderEpoch for a partition the receiver owns: the epoch and
    /// its end offset, an error code, or `None` for an unknown partition.
    /// Retryable.
    EpochEnd {
        topic: String,
        partition: u32,
        epoch: i32,
        reply: Reply<Option<Result<(i32, i64), i16>>>,
    },
    /// A consumer-group request for a group this shard coordinates. JoinGroup
    /// and SyncGroup wait for the rebalance; OffsetCommit is not retryable
    /// blindly (a retry may commit an older offset after a newer one), the
    /// rest are.
    Group {
        request: GroupRequest,
        reply: Reply<GroupResponse>,
    },
    /// This shard's counters, for a metrics scrape. Retryable.
    Metrics {
        reply: Reply<crate::metrics::ShardMetrics>,
    },
    /// To shard 0, the controller: create topics. Retryable (a topic that
    /// exists is reported as TOPIC_ALREADY_EXISTS, never created twice).
    CreateTopics {
        topics: Vec<CreateTopic>,
        reply: Reply<Vec<TopicResult>>,
    },
    /// To shard 0, the controller: delete topics. Retryable.
    DeleteTopics {
        names: Vec<String>,
        reply: Reply<Vec<TopicResult>>,
    },
    /// To shard 0, the controller: change a topic (partition count or
    /// configs). Retryable (the change is absolute, not relative).
    AlterTopic {
        name: String,
        change: TopicChange,
        validate_only: bool,
        reply: Reply<Result<(), (i16, String)>>,
    },
    /// From the controller to every shard: a topic's new metadata; open the
    /// partitions you now own and apply the configs. Retryable (idempotent).
    TopicUpdated {
        meta: TopicMeta,
        reply: Reply<Result<(), String>>,
    },
    /// Delete the records of a partition the receiver owns below an offset
    /// (-1: the high watermark); the new log start offset or an error code.
    /// Retryable.
    DeleteRecords {
        topic: String,
        partition: u32,
        offset: i64,
        reply: Reply<Result<i64, i16>>,
    },
    /// From the controller to every shard: learn a topic and open the
    /// partitions you own. Retryable (idempotent).
    TopicCreated {
        meta: TopicMeta,
        reply: Reply<Result<(), String>>,
    },
    /// From the controller to every shard: forget a topic and delete the
    /// partitions you own. Retryable (idempotent).
    TopicDeleted { name: String, reply: Reply<()> },
}
