//! ApiVersions (v0-v4). The response header is always v0. A request newer
//! than we speak gets UNSUPPORTED_VERSION with a v0 body listing our ranges,
//! and the client retries at a version we share.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use sluice_protocol::ErrorCode;

use super::respond;
use crate::kafka::{encode_response, versions, KafkaRequest};

pub fn handle(req: &KafkaRequest) -> Option<Vec<Bytes>> {
    let keys = versions::ADVERTISED
        .iter()
        .map(|a| {
            ApiVersion::default()
                .with_api_key(a.key as i16)
                .with_min_version(a.min)
                .with_max_version(a.max)
        })
        .collect();
    let mut body = ApiVersionsResponse::default().with_api_keys(keys);
    if req.version > versions::API_VERSIONS_MAX {
        body.error_code = ErrorCode::UNSUPPORTED_VERSION.0;
        return encode_response(ApiKey::ApiVersions, 0, req.header.correlation_id, &body).ok();
    }
    // Optional fields keep their defaults so they are not written as tagged
    // fields: librdkafka 2.0.2 rejects a reply that carries them all.
    match respond(req, &body) {
        Ok(chunks) => chunks,
        Err(e) => {
            tracing::warn!(error = %e, "ApiVersions");
            None
        }
    }
}
