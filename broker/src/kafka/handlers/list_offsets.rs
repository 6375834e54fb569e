//! ListOffsets (v1-v8): latest (-1), earliest (-2), max timestamp (-3,
//! KIP-734), earliest local (-4, the log start here), or the first offset
//! whose timestamp is at least the one asked. No record at or after the
//! timestamp: offset -1 and timestamp -1, as Kafka answers.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, TopicName};
use sluice_protocol::native;
use sluice_protocol::ErrorCode;

use super::{decode, respond};
use crate::kafka::KafkaRequest;
use crate::shard::Shard;

pub async fn handle(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: ListOffsetsRequest = decode(req)?;
    let mut parts = Vec::new();
    for t in &r.topics {
        for p in t.partitions.iter().filter(|p| p.partition_index >= 0) {
            parts.push(native::ListOffsetsPartition {
                topic: t.name.0.as_str().to_string(),
                partition: p.partition_index as u32,
                timestamp: p.timestamp,
            });
        }
    }
    let request = native::ListOffsetsRequest { partitions: parts };
    let mut answers = crate::handlers::list_offsets(shard, request)
        .await
        .partitions
        .into_iter();
    let topics = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut out = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_offset(-1)
                        .with_timestamp(-1);
                    if req.version >= 4 {
                        out.leader_epoch = shard.generation;
                    }
                    match (p.partition_index >= 0).then(|| answers.next()).flatten() {
                        Some(a) => {
                            out.error_code = a.error.0;
                            out.offset = a.offset;
                            out.timestamp = a.timestamp;
                        }
                        None => out.error_code = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
                    }
                    out
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(TopicName(t.name.0.clone()))
                .with_partitions(partitions)
        })
        .collect();
    respond(req, &ListOffsetsResponse::default().with_topics(topics))
}
