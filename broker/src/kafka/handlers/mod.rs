//! One file per Kafka API. Each declares the versions it serves (see
//! [`super::versions`]) and has one `handle` function; a failure for one
//! partition or topic is that item's error code, never a failure of the
//! whole request.

mod admin;
mod api_versions;
mod configs;
mod fetch;
mod find_coordinator;
pub(crate) mod groups;
mod init_producer_id;
mod list_offsets;
mod metadata;
mod offset_for_leader_epoch;
mod produce;

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::{encode_response, versions, KafkaRequest};
use crate::shard::Shard;

/// Answers one request: the response frame as chunks, or `None` when no
/// response is sent (`acks=0`, or a request that cannot be answered: it is
/// logged and the client times out, as with Kafka).
pub async fn dispatch(shard: &Rc<Shard>, req: KafkaRequest) -> Option<Vec<Bytes>> {
    let served = versions::advertised(req.api_key)
        .is_some_and(|a| a.min <= req.version && req.version <= a.max);
    if req.api_key == ApiKey::ApiVersions {
        return api_versions::handle(&req);
    }
    if !served {
        tracing::info!(api = ?req.api_key, version = req.version, "unsupported API version");
        return None;
    }
    let result = match req.api_key {
        ApiKey::Produce => produce::handle(shard, &req).await,
        ApiKey::Fetch => fetch::handle(shard, &req).await,
        ApiKey::ListOffsets => list_offsets::handle(shard, &req).await,
        ApiKey::Metadata => metadata::handle(shard, &req).await,
        ApiKey::OffsetForLeaderEpoch => offset_for_leader_epoch::handle(shard, &req).await,
        ApiKey::FindCoordinator => find_coordinator::handle(shard, &req),
        ApiKey::InitProducerId => init_producer_id::handle(shard, &req).await,
        ApiKey::CreateTopics => admin::create_topics(shard, &req).await,
        ApiKey::DeleteTopics => admin::delete_topics(shard, &req).await,
        ApiKey::CreatePartitions => admin::create_partitions(shard, &req).await,
        ApiKey::DeleteRecords => admin::delete_records(shard, &req).await,
        ApiKey::DescribeCluster => admin::describe_cluster(shard, &req),
        ApiKey::DescribeConfigs => configs::describe(shard, &req),
        ApiKey::AlterConfigs => configs::alter(shard, &req).await,
        ApiKey::IncrementalAlterConfigs => configs::incremental_alter(shard, &req).await,
        _ => groups::handle(shard, &req).await,
    };
    match result {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(api = ?req.api_key, version = req.version, error = %e, "request not answered");
            None
        }
    }
}

/// Decodes a request body of type `T` at the request's version.
pub(crate) fn decode<T: Decodable>(req: &KafkaRequest) -> Result<T, String> {
    let mut body = req.body.clone();
    T::decode(&mut body, req.version)
        .map_err(|e| format!("malformed {:?} v{}: {e}", req.api_key, req.version))
}

/// Encodes `body` as the response to `req`.
pub(crate) fn respond<R: Encodable>(
    req: &KafkaRequest,
    body: &R,
) -> Result<Option<Vec<Bytes>>, String> {
    encode_response(req.api_key, req.version, req.header.correlation_id, body).map(Some)
}

/// The client id of a request, for logs and member ids.
pub(crate) fn client_id(req: &KafkaRequest) -> String {
    req.header
        .client_id
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default()
}
