//! InitProducerId (v0-v5): a producer id for an idempotent producer.
//!
//! Ids are unique across shards and restarts without coordination: the high
//! 32 bits are the broker's generation (bumped at every start), the low 32
//! bits count per shard, interleaved by shard index. A producer that already
//! has an id and epoch (v3+, re-initialising after an error) keeps its id and
//! gets the next epoch. Transactional ids are refused: Sluice does not
//! support transactions (Kafka Streams at_least_once does not use them).

use bytes::Bytes;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use super::{decode, respond};
use crate::kafka::KafkaRequest;
use crate::shard::Shard;

/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED: no transactions here.
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;

pub async fn handle(shard: &Shard, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: InitProducerIdRequest = decode(req)?;
    let mut resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        resp.error_code = TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return respond(req, &resp);
    }
    let (id, epoch) = match (r.producer_id.0, r.producer_epoch) {
        (id, epoch) if id >= 0 && (0..i16::MAX).contains(&epoch) => (id, epoch + 1),
        _ => (shard.next_producer_id(), 0),
    };
    resp.producer_id = ProducerId(id);
    resp.producer_epoch = epoch;
    respond(req, &resp)
}
