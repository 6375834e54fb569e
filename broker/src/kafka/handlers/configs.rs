//! DescribeConfigs (v1-v4), AlterConfigs (v0-v2), IncrementalAlterConfigs
//! (v0-v1) for topics; broker configs can be described (read-only).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::ErrorCode;

use super::admin::alter_topic;
use super::{decode, respond};
use crate::kafka::KafkaRequest;
use crate::router::TopicChange;
use crate::shard::Shard;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config sources (DescribeConfigs v1+).
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub fn describe(shard: &Shard, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: DescribeConfigsRequest = decode(req)?;
    let results = r
        .resources
        .iter()
        .map(|res| describe_one(shard, res))
        .collect();
    respond(
        req,
        &DescribeConfigsResponse::default().with_results(results),
    )
}

fn describe_one(
    shard: &Shard,
    res: &kafka_protocol::messages::describe_configs_request::DescribeConfigsResource,
) -> DescribeConfigsResult {
    let name = res.resource_name.as_str();
    let mut out = DescribeConfigsResult::default()
        .with_resource_type(res.resource_type)
        .with_resource_name(res.resource_name.clone());
    let entries: Vec<(String, String, i8, bool)> = match res.resource_type {
        RESOURCE_TOPIC => match shard.topics.borrow().get(name) {
            Some(meta) => meta
                .effective_configs(&shard.log_defaults)
                .into_iter()
                .map(|(k, v, o)| {
                    (
                        k,
                        v,
                        if o {
                            SOURCE_DYNAMIC_TOPIC
                        } else {
                            SOURCE_DEFAULT
                        },
                        false,
                    )
                })
                .collect(),
            None => {
                out.error_code = ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0;
                out.error_message = Some(s(format!("no topic {name:?}")));
                return out;
            }
        },
        RESOURCE_BROKER => broker_configs(shard),
        other => {
            out.error_code = ErrorCode::INVALID_REQUEST.0;
            out.error_message = Some(s(format!("resource type {other} is not supported")));
            return out;
        }
    };
    let wanted = res.configuration_keys.as_ref();
    out.configs = entries
        .into_iter()
        .filter(|(k, _, _, _)| wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == k)))
        .map(|(k, v, source, read_only)| {
            DescribeConfigsResourceResult::default()
                .with_name(s(k))
                .with_value(Some(s(v)))
                .with_read_only(read_only)
                .with_config_source(source)
        })
        .collect();
    out
}

/// The broker settings a client may read (all read-only here).
fn broker_configs(shard: &Shard) -> Vec<(String, String, i8, bool)> {
    let b = &shard.config.broker;
    let l = &shard.config.log;
    [
        ("broker.id", b.node_id.to_string()),
        ("num.partitions", b.default_partitions.to_string()),
        (
            "auto.create.topics.enable",
            b.auto_create_topics.to_string(),
        ),
        (
            "offsets.topic.num.partitions",
            b.offsets_topic_partitions.to_string(),
        ),
        ("log.segment.bytes", l.segment_bytes.to_string()),
        ("log.retention.ms", l.retention_ms.to_string()),
        ("log.retention.bytes", l.retention_bytes.to_string()),
        ("message.max.bytes", l.max_message_bytes.to_string()),
        ("socket.request.max.bytes", b.max_frame_bytes.to_string()),
        ("default.replication.factor", "1".to_string()),
        ("min.insync.replicas", "1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v, SOURCE_STATIC_BROKER, true))
    .collect()
}

fn refused(code: ErrorCode, message: String) -> Result<(), (i16, String)> {
    Err((code.0, message))
}

pub async fn alter(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: AlterConfigsRequest = decode(req)?;
    let mut responses = Vec::with_capacity(r.resources.len());
    for res in &r.resources {
        let outcome = match res.resource_type {
            RESOURCE_TOPIC => {
                let configs = res
                    .configs
                    .iter()
                    .filter_map(|c| {
                        c.value
                            .as_ref()
                            .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
                    })
                    .collect();
                let change = TopicChange::ReplaceConfigs(configs);
                alter_topic(shard, res.resource_name.as_str(), change, r.validate_only).await
            }
            _ => refused(
                ErrorCode::INVALID_REQUEST,
                "only topic configs can be altered".into(),
            ),
        };
        let mut out = alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        if let Err((code, msg)) = outcome {
            out.error_code = code;
            out.error_message = Some(s(msg));
        }
        responses.push(out);
    }
    respond(
        req,
        &AlterConfigsResponse::default().with_responses(responses),
    )
}

pub async fn incremental_alter(
    shard: &Rc<Shard>,
    req: &KafkaRequest,
) -> Result<Option<Vec<Bytes>>, String> {
    let r: IncrementalAlterConfigsRequest = decode(req)?;
    let mut responses = Vec::with_capacity(r.resources.len());
    for res in &r.resources {
        let outcome = match res.resource_type {
            RESOURCE_TOPIC => match edits(&res.configs) {
                Ok(edits) => {
                    let change = TopicChange::EditConfigs(edits);
                    alter_topic(shard, res.resource_name.as_str(), change, r.validate_only).await
                }
                Err(e) => Err(e),
            },
            _ => refused(
                ErrorCode::INVALID_REQUEST,
                "only topic configs can be altered".into(),
            ),
        };
        let mut out = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        if let Err((code, msg)) = outcome {
            out.error_code = code;
            out.error_message = Some(s(msg));
        }
        responses.push(out);
    }
    respond(
        req,
        &IncrementalAlterConfigsResponse::default().with_responses(responses),
    )
}

/// A setting to set (`Some`) or remove (`None`).
type ConfigEdit = (String, Option<String>);

/// SET and DELETE; APPEND and SUBTRACT (for list-valued settings) are refused.
fn edits(
    configs: &[incremental_alter_configs_request::AlterableConfig],
) -> Result<Vec<ConfigEdit>, (i16, String)> {
    configs
        .iter()
        .map(|c| {
            let key = c.name.as_str().to_string();
            match (c.config_operation, &c.value) {
                (OP_SET, Some(v)) => Ok((key, Some(v.as_str().to_string()))),
                (OP_DELETE, _) => Ok((key, None)),
                (op, _) => Err((
                    ErrorCode::INVALID_CONFIG.0,
                    format!("{key}: operation {op} is not supported (SET and DELETE are)"),
                )),
            }
        })
        .collect()
}
