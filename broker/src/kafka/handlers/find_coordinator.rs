//! FindCoordinator (v0-v5): every coordinator is this broker (single node);
//! the group's shard is found when its requests arrive. Transaction
//! coordinators are not offered (transactions are not supported).

use bytes::Bytes;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::ErrorCode;

use super::{decode, respond};
use crate::kafka::KafkaRequest;
use crate::shard::Shard;

/// `key_type` of a group coordinator lookup.
const KEY_TYPE_GROUP: i8 = 0;
/// COORDINATOR_NOT_AVAILABLE: the answer for transaction coordinators.
const COORDINATOR_NOT_AVAILABLE: i16 = 15;

/// The broker (shard) that coordinates `group`.
fn coordinator_of(shard: &Shard, group: &str) -> (i32, String, u16) {
    shard.kafka_broker_of(crate::kafka::handlers::groups::coordinator_shard(
        shard, group,
    ))
}

pub fn handle(shard: &Shard, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: FindCoordinatorRequest = decode(req)?;
    let (id, host, port) = match r.key_type {
        KEY_TYPE_GROUP => coordinator_of(shard, r.key.as_str()),
        _ => shard.kafka_broker_of(0),
    };
    let node = BrokerId(id);
    let error = match r.key_type {
        KEY_TYPE_GROUP => ErrorCode::NONE.0,
        _ => COORDINATOR_NOT_AVAILABLE,
    };
    let mut resp = FindCoordinatorResponse::default();
    if req.version >= 4 {
        let keys = if r.coordinator_keys.is_empty() {
            vec![r.key.clone()]
        } else {
            r.coordinator_keys
        };
        resp.coordinators = keys
            .into_iter()
            .map(|key| {
                let (id, host, port) = match r.key_type {
                    KEY_TYPE_GROUP => coordinator_of(shard, key.as_str()),
                    _ => shard.kafka_broker_of(0),
                };
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(id))
                    .with_host(StrBytes::from_string(host))
                    .with_port(i32::from(port))
                    .with_error_code(error)
            })
            .collect();
    } else {
        resp.error_code = error;
        resp.node_id = node;
        resp.host = StrBytes::from_string(host);
        resp.port = i32::from(port);
    }
    respond(req, &resp)
}
