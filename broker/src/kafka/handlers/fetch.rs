//! Fetch (v4-v12). Sessionless: a client asking for a new incremental fetch
//! session (KIP-227) gets session id 0, which tells it the broker made none,
//! and it goes on with full fetches; an incremental request for a session id
//! we never gave gets FETCH_SESSION_ID_NOT_FOUND. Long polls, `min_bytes`,
//! `max_bytes` (the first batch is always returned whole) and per-partition
//! errors work as for the native protocol; the response framing is written
//! around the raw batches (see `fetch_encode`), so no payload is copied.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use sluice_protocol::native;
use sluice_protocol::ErrorCode;

use super::decode;
use crate::kafka::fetch_encode::{encode_fetch_response, FetchTop, FetchedPartition, FetchedTopic};
use crate::kafka::KafkaRequest;
use crate::shard::Shard;

const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const READ_COMMITTED: i8 = 1;

pub async fn handle(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: FetchRequest = decode(req)?;
    let mut top = FetchTop {
        correlation_id: req.header.correlation_id,
        read_committed: r.isolation_level == READ_COMMITTED,
        ..FetchTop::default()
    };
    if r.session_id != 0 {
        top.error = FETCH_SESSION_ID_NOT_FOUND;
        return Ok(Some(encode_fetch_response(req.version, top, &[])));
    }
    // Partitions refused before reading (epoch checks), by (topic, index).
    let mut refused = Vec::new();
    let mut parts = Vec::new();
    for t in &r.topics {
        let name = t.topic.0.as_str();
        for p in &t.partitions {
            match epoch_error(shard, p.current_leader_epoch).or_else(|| index_error(p.partition)) {
                Some(code) => refused.push((name.to_string(), p.partition, code)),
                None => parts.push(native::FetchPartition {
                    topic: name.to_string(),
                    partition: p.partition as u32,
                    offset: p.fetch_offset,
                    max_bytes: p.partition_max_bytes.max(0) as u32,
                }),
            }
        }
    }
    let request = native::FetchRequest {
        // A partition refused with an error is answered at once, as Kafka
        // answers a fetch with any partition in error without waiting.
        max_wait_ms: match refused.is_empty() {
            true => r.max_wait_ms.max(0) as u32,
            false => 0,
        },
        min_bytes: r.min_bytes.max(0) as u32,
        max_bytes: if req.version >= 3 {
            r.max_bytes.max(0) as u32
        } else {
            i32::MAX as u32
        },
        partitions: parts,
    };
    let (response, held) = crate::handlers::fetch(shard, request).await;
    req.memory.borrow_mut().absorb(held);
    let mut fetched = response.partitions.into_iter();
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let name = t.topic.0.as_str();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let early = refused
                .iter()
                .find(|(n, i, _)| n == name && *i == p.partition);
            partitions.push(match early {
                Some((_, _, code)) => failed(p.partition, *code),
                None => fetched
                    .next()
                    .map_or_else(|| failed(p.partition, -1), converted),
            });
        }
        topics.push(FetchedTopic {
            name: name.to_string(),
            partitions,
        });
    }
    Ok(Some(encode_fetch_response(req.version, top, &topics)))
}

/// Leader epoch fencing (KIP-320): a client that knows an older epoch must
/// refresh its metadata; one that knows a newer epoch is ahead of us.
fn epoch_error(shard: &Shard, current_leader_epoch: i32) -> Option<i16> {
    match current_leader_epoch {
        -1 => None,
        e if e < shard.generation => Some(FENCED_LEADER_EPOCH),
        e if e > shard.generation => Some(UNKNOWN_LEADER_EPOCH),
        _ => None,
    }
}

fn index_error(partition: i32) -> Option<i16> {
    (partition < 0).then_some(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0)
}

fn failed(partition: i32, error: i16) -> FetchedPartition {
    FetchedPartition {
        partition,
        error,
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        records: Vec::new(),
    }
}

fn converted(f: native::FetchPartitionResponse) -> FetchedPartition {
    FetchedPartition {
        partition: f.partition as i32,
        error: f.error.0,
        high_watermark: f.high_watermark,
        // No transactions: everything below the high watermark is stable.
        last_stable_offset: f.high_watermark,
        log_start_offset: f.log_start_offset,
        records: f.records,
    }
}
