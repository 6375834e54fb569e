//! Produce (served: v3-v11, RecordBatch v2 only; v0-v2 are advertised for old
//! librdkafka's feature detection and refused). Records travel to their
//! owning shards as slices of the request, or as the landings a large
//! request's batches were received into (`produce_frame`), with no copy,
//! through the same path as the native protocol; `acks=0` gets no response.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use sluice_protocol::batch;
use sluice_protocol::native::{self, Acks, ProducePartition};
use sluice_protocol::ErrorCode;

use super::{decode, respond};
use crate::kafka::versions::PRODUCE_VERSION_MIN_SERVED;
use crate::kafka::KafkaRequest;
use crate::shard::Shard;

/// NOT_ENOUGH_REPLICAS: `acks=all` with `min.insync.replicas` above 1.
const NOT_ENOUGH_REPLICAS: i16 = 19;

/// Produce v8 added `error_message` to each partition's answer.
const ERROR_MESSAGE_SINCE: i16 = 8;

/// One partition of the request, in request order, with what is known
/// before it is appended.
struct Slot {
    topic: usize,
    partition: i32,
    early_error: Option<Refusal>,
    append_time: i64,
}

/// A partition refused before it reaches its shard: the code, and what the
/// producer is told about it (`error_message`, v8+).
struct Refusal {
    code: i16,
    message: Option<String>,
}

impl Refusal {
    fn new(code: i16, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: Some(message.into()),
        }
    }
}

pub async fn handle(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    if req.version < PRODUCE_VERSION_MIN_SERVED {
        return refuse_old(req);
    }
    let mut r: ProduceRequest = decode(req)?;
    if let Some(records) = &req.records {
        // Read apart (`produce_frame`): put each records field back.
        let mut fields = records.iter();
        for p in r
            .topic_data
            .iter_mut()
            .flat_map(|t| t.partition_data.iter_mut())
        {
            p.records = fields
                .next()
                .ok_or_else(|| {
                    "malformed Produce: fewer records fields than partitions".to_string()
                })?
                .clone();
        }
        if fields.next().is_some() {
            return Err("malformed Produce: more records fields than partitions".into());
        }
    }
    let acks = match r.acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    };
    let mut slots = Vec::new();
    let mut parts = Vec::new();
    for (t, topic) in r.topic_data.iter().enumerate() {
        let name = topic.name.0.as_str();
        for p in &topic.partition_data {
            let (early_error, append_time, part) =
                prepare(shard, name, p.index, &p.records, r.acks, acks);
            slots.push(Slot {
                topic: t,
                partition: p.index,
                early_error,
                append_time,
            });
            parts.extend(part);
        }
    }
    let request = native::ProduceRequest {
        acks: acks.unwrap_or(Acks::Leader),
        timeout_ms: r.timeout_ms.max(0) as u32,
        partitions: parts,
    };
    let mut results = crate::handlers::produce(shard, request)
        .await
        .partitions
        .into_iter();
    if r.acks == 0 {
        return Ok(None);
    }
    let mut topics: Vec<TopicProduceResponse> = r
        .topic_data
        .iter()
        .map(|t| TopicProduceResponse::default().with_name(TopicName(t.name.0.clone())))
        .collect();
    for slot in slots {
        let mut p = PartitionProduceResponse::default()
            .with_index(slot.partition)
            .with_base_offset(-1)
            .with_log_append_time_ms(-1);
        let message = match slot.early_error {
            Some(refusal) => {
                p.error_code = refusal.code;
                refusal.message
            }
            None => match results.next() {
                Some(res) => {
                    p.error_code = res.error.0;
                    if res.error.is_ok() {
                        p.base_offset = res.base_offset;
                        p.log_append_time_ms = slot.append_time;
                        if req.version >= 5 {
                            p.log_start_offset = res.log_start_offset;
                        }
                    }
                    res.error_message
                }
                None => {
                    p.error_code = ErrorCode::UNKNOWN_SERVER_ERROR.0;
                    None
                }
            },
        };
        if req.version >= ERROR_MESSAGE_SINCE {
            p.error_message = message.map(Into::into);
        }
        topics[slot.topic].partition_responses.push(p);
    }
    respond(req, &ProduceResponse::default().with_responses(topics))
}

/// Produce v0-v2 (message formats v0/v1): every partition is refused with
/// UNSUPPORTED_VERSION, in the request's own (hand-decoded) shape:
///
/// ```text
/// request  v0-v2: acks i16 | timeout i32 | [topic string | [partition i32 | records bytes]]
/// response v0:    [topic string | [partition i32 | error i16 | base_offset i64
///                                  | log_append_time i64 (v2)]] | throttle i32 (v1+)
/// ```
fn refuse_old(req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    use bytes::{Buf, BufMut};
    let mut b = req.body.clone();
    let bad = || format!("malformed Produce v{}", req.version);
    let count = |b: &mut Bytes| -> Result<i32, String> {
        if b.remaining() < 4 {
            return Err(bad());
        }
        let n = b.get_i32();
        // Each element takes at least one byte: a larger count is a lie.
        if n < 0 || n as usize > b.remaining() {
            return Err(bad());
        }
        Ok(n)
    };
    if b.remaining() < 6 {
        return Err(bad());
    }
    let acks = b.get_i16();
    b.advance(4);
    let mut out = BytesMut::new();
    let topics = count(&mut b)?;
    out.put_i32(topics);
    for _ in 0..topics {
        if b.remaining() < 2 {
            return Err(bad());
        }
        let len = b.get_i16();
        if len < 0 || len as usize > b.remaining() {
            return Err(bad());
        }
        let name = b.split_to(len as usize);
        out.put_i16(len);
        out.put_slice(&name);
        let parts = count(&mut b)?;
        out.put_i32(parts);
        for _ in 0..parts {
            if b.remaining() < 8 {
                return Err(bad());
            }
            let index = b.get_i32();
            let records = b.get_i32().max(0) as usize;
            if b.remaining() < records {
                return Err(bad());
            }
            b.advance(records);
            out.put_i32(index);
            out.put_i16(ErrorCode::UNSUPPORTED_VERSION.0);
            out.put_i64(-1);
            if req.version >= 2 {
                out.put_i64(-1);
            }
        }
    }
    if req.version >= 1 {
        out.put_i32(0);
    }
    if acks == 0 {
        return Ok(None);
    }
    let mut frame = BytesMut::with_capacity(out.len() + 8);
    frame.put_i32((out.len() + 4) as i32);
    frame.put_i32(req.header.correlation_id);
    frame.put_slice(&out);
    Ok(Some(vec![frame.freeze()]))
}

/// Checks one partition before it is appended: the refusal that answers it
/// at once, the append time it is stamped with (-1: CreateTime), and the
/// part to append. `raw_acks` is the request's field, `acks` what it means.
fn prepare(
    shard: &Shard,
    topic: &str,
    partition: i32,
    records: &Option<Bytes>,
    raw_acks: i16,
    acks: Option<Acks>,
) -> (Option<Refusal>, i64, Option<ProducePartition>) {
    let refuse = |code: i16, message: String| (Some(Refusal::new(code, message)), -1, None);
    let Some(acks) = acks else {
        return refuse(
            ErrorCode::INVALID_REQUIRED_ACKS.0,
            format!("acks must be -1 (all), 0 or 1, not {raw_acks}"),
        );
    };
    let meta = shard.topics.borrow().get(topic).cloned();
    let Some(meta) = meta else {
        return refuse(
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
            format!("no topic {topic:?}"),
        );
    };
    if partition < 0 || partition as u32 >= meta.partitions {
        return refuse(
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
            format!(
                "topic {topic:?} has partitions 0 to {}, not {partition}",
                i64::from(meta.partitions) - 1
            ),
        );
    }
    let Some(records) = records.clone() else {
        return refuse(
            ErrorCode::CORRUPT_MESSAGE.0,
            "the records field is null".into(),
        );
    };
    if acks == Acks::All && meta.min_insync_replicas() > 1 {
        return refuse(
            NOT_ENOUGH_REPLICAS,
            format!(
                "acks=all needs min.insync.replicas = {} in-sync replicas; this partition has 1",
                meta.min_insync_replicas()
            ),
        );
    }
    let (records, append_time) = match meta.log_append_time() {
        false => (records, -1),
        true => match stamp_append_time(&records) {
            Ok(stamped) => stamped,
            Err(e) => return refuse(e.error_code().0, format!("invalid batch: {e}")),
        },
    };
    let part = ProducePartition {
        topic: topic.to_string(),
        partition: partition as u32,
        records,
    };
    (None, append_time, Some(part))
}

/// `message.timestamp.type=LogAppendTime`: every batch gets the broker's
/// clock as its max timestamp and the log-append-time flag, with a fresh
/// CRC. This copies the batches (only for such topics).
fn stamp_append_time(records: &Bytes) -> Result<(Bytes, i64), batch::BatchError> {
    let now = sluice_shard::partition::now_ms();
    let mut out = BytesMut::from(&records[..]);
    let ranges: Vec<_> = batch::split(records)
        .map(|b| b.map(|(range, _)| range))
        .collect::<Result<_, _>>()?;
    for range in ranges {
        let b = &mut out[range];
        batch::validate(b)?;
        set_log_append_time(b, now);
    }
    Ok((out.freeze(), now))
}

/// Byte positions in a RecordBatch v2 header (see `sluice_protocol::batch`).
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const MAX_TIMESTAMP_AT: usize = 35;
/// Attributes bit 3: timestamps are the broker's append time.
const TIMESTAMP_TYPE_LOG_APPEND: i16 = 1 << 3;

/// Marks a validated batch as log-append-time stamped at `now`.
fn set_log_append_time(b: &mut [u8], now: i64) {
    let attributes = i16::from_be_bytes([b[ATTRIBUTES_AT], b[ATTRIBUTES_AT + 1]]);
    let attributes = attributes | TIMESTAMP_TYPE_LOG_APPEND;
    b[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attributes.to_be_bytes());
    b[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8].copy_from_slice(&now.to_be_bytes());
    let crc = batch::compute_crc(b);
    b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
}
