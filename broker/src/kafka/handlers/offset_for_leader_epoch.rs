//! OffsetForLeaderEpoch (v2-v4): for each partition, the largest epoch not
//! above the one asked and the offset where the epoch after it began (or the
//! log end for the current epoch), from the partition's epoch history. The
//! Java consumer uses it to validate its position after a leader change.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use sluice_protocol::ErrorCode;

use super::{decode, respond};
use crate::kafka::KafkaRequest;
use crate::router::ShardMsg;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: OffsetForLeaderEpochRequest = decode(req)?;
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let name = t.topic.0.as_str().to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut out = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            let found = match p.partition {
                i if i < 0 => None,
                i => end_offset(shard, &name, i as u32, p.leader_epoch).await,
            };
            match found {
                Some(Ok((epoch, end))) => {
                    out.leader_epoch = epoch;
                    out.end_offset = end;
                }
                Some(Err(code)) => out.error_code = code,
                None => out.error_code = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
            }
            partitions.push(out);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions),
        );
    }
    respond(
        req,
        &OffsetForLeaderEpochResponse::default().with_topics(topics),
    )
}

/// The owning shard's answer: `None` for an unknown partition.
async fn end_offset(
    shard: &Rc<Shard>,
    topic: &str,
    partition: u32,
    epoch: i32,
) -> Option<Result<(i32, i64), i16>> {
    let owner = shard.owner(topic, partition);
    if owner == shard.id {
        return shard.local_epoch_end(topic, partition, epoch);
    }
    let msg = |reply| ShardMsg::EpochEnd {
        topic: topic.to_string(),
        partition,
        epoch,
        reply,
    };
    match shard.ask(owner, msg).await {
        Some(answer) => answer,
        None => Some(Err(ErrorCode::NOT_LEADER_OR_FOLLOWER.0)),
    }
}
