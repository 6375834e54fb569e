//! Topic administration: CreateTopics (v2-v7), DeleteTopics (v1-v5),
//! CreatePartitions (v0-v3), DeleteRecords (v0-v2), DescribeCluster (v0-v1).
//! Topic changes go to shard 0, the controller, which persists them and
//! tells every shard.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::native::{self, CreateTopic};
use sluice_protocol::ErrorCode;

use super::{decode, respond};
use crate::kafka::KafkaRequest;
use crate::router::{ShardMsg, TopicChange};
use crate::shard::Shard;

/// INVALID_REPLICATION_FACTOR: this single node holds one replica.
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;

fn text(s: impl Into<String>) -> Option<StrBytes> {
    Some(StrBytes::from_string(s.into()))
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    req: &KafkaRequest,
) -> Result<Option<Vec<Bytes>>, String> {
    let r: CreateTopicsRequest = decode(req)?;
    let mut results = Vec::with_capacity(r.topics.len());
    let mut wanted = Vec::new();
    for t in &r.topics {
        let name = t.name.0.as_str().to_string();
        let partitions = match t.num_partitions {
            -1 => shard.config.broker.default_partitions as i32,
            n => n,
        };
        let mut result = CreatableTopicResult::default().with_name(t.name.clone());
        if req.version >= 5 {
            result.num_partitions = partitions;
            result.replication_factor = 1;
        }
        if t.replication_factor != -1 && t.replication_factor != 1 {
            result.error_code = INVALID_REPLICATION_FACTOR;
            result.error_message =
                text("this broker is a single node: replication factor 1 (or -1)");
        } else if !t.assignments.is_empty() {
            result.error_code = INVALID_REPLICA_ASSIGNMENT;
            result.error_message = text("manual replica assignment is not supported");
        } else if partitions <= 0 {
            result.error_code = ErrorCode::INVALID_PARTITIONS.0;
            result.error_message = text("partitions must be positive");
        } else {
            let configs = t
                .configs
                .iter()
                .filter_map(|c| {
                    c.value
                        .as_ref()
                        .map(|v| (c.name.as_str().to_string(), v.as_str().to_string()))
                })
                .collect();
            wanted.push((
                results.len(),
                CreateTopic {
                    name,
                    partitions: partitions as u32,
                    configs,
                },
            ));
        }
        results.push(result);
    }
    if r.validate_only {
        for (i, t) in &wanted {
            let meta =
                crate::topics::TopicMeta::new(t.name.clone(), t.partitions, t.configs.clone());
            if let Err((code, msg)) = crate::topics::validate_new(&meta, &shard.log_defaults) {
                results[*i].error_code = code.0;
                results[*i].error_message = text(msg);
            } else if shard.topics.borrow().get(&t.name).is_some() {
                results[*i].error_code = ErrorCode::TOPIC_ALREADY_EXISTS.0;
            }
        }
        return respond(req, &CreateTopicsResponse::default().with_topics(results));
    }
    let (slots, topics): (Vec<usize>, Vec<CreateTopic>) = wanted.into_iter().unzip();
    let created =
        crate::handlers::create_topics(shard, native::CreateTopicsRequest { topics }).await;
    for (i, t) in slots.into_iter().zip(created.topics) {
        results[i].error_code = t.error.0;
        if !t.error.is_ok() {
            results[i].error_message = text(t.message);
        } else if let Some(meta) = shard
            .topics
            .borrow()
            .get(&t.name)
            .filter(|_| req.version >= 7)
        {
            results[i].topic_id = meta.uuid();
        }
    }
    respond(req, &CreateTopicsResponse::default().with_topics(results))
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    req: &KafkaRequest,
) -> Result<Option<Vec<Bytes>>, String> {
    let r: DeleteTopicsRequest = decode(req)?;
    // v0-v5 name topics in `topic_names`; v6 in `topics` (by name or id).
    let mut names: Vec<String> = r
        .topic_names
        .iter()
        .map(|n| n.0.as_str().to_string())
        .collect();
    for t in &r.topics {
        match &t.name {
            Some(n) => names.push(n.0.as_str().to_string()),
            None => {
                let table = shard.topics.borrow();
                let found = table
                    .all()
                    .find(|m| m.uuid() == t.topic_id)
                    .map(|m| m.name.clone());
                names.push(found.unwrap_or_default());
            }
        }
    }
    let deleted =
        crate::handlers::delete_topics(shard, native::DeleteTopicsRequest { names }).await;
    let responses = deleted
        .topics
        .into_iter()
        .map(|t| {
            let mut out = DeletableTopicResult::default()
                .with_name(Some(TopicName(StrBytes::from_string(t.name))))
                .with_error_code(t.error.0);
            if !t.error.is_ok() && req.version >= 5 {
                out.error_message = text(t.message);
            }
            out
        })
        .collect();
    respond(
        req,
        &DeleteTopicsResponse::default().with_responses(responses),
    )
}

/// Sends a topic change to the controller (shard 0).
pub async fn alter_topic(
    shard: &Rc<Shard>,
    name: &str,
    change: TopicChange,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    if shard.id == 0 {
        return shard.controller_alter(name, change, validate_only).await;
    }
    let (reply, answer) = crate::router::reply_channel();
    let msg = ShardMsg::AlterTopic {
        name: name.to_string(),
        change,
        validate_only,
        reply,
    };
    if !shard.send(0, msg).await {
        return Err((
            ErrorCode::REQUEST_TIMED_OUT.0,
            "the controller shard is not running".into(),
        ));
    }
    answer
        .await
        .unwrap_or(Err((ErrorCode::REQUEST_TIMED_OUT.0, "no answer".into())))
}

pub async fn create_partitions(
    shard: &Rc<Shard>,
    req: &KafkaRequest,
) -> Result<Option<Vec<Bytes>>, String> {
    let r: CreatePartitionsRequest = decode(req)?;
    let mut results = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let mut out = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let outcome = match (t.count, &t.assignments) {
            (_, Some(_)) => Err((
                INVALID_REPLICA_ASSIGNMENT,
                "manual assignment is not supported".into(),
            )),
            (n, None) if n <= 0 => Err((
                ErrorCode::INVALID_PARTITIONS.0,
                "count must be positive".into(),
            )),
            (n, None) => {
                let change = TopicChange::Partitions(n as u32);
                alter_topic(shard, t.name.0.as_str(), change, r.validate_only).await
            }
        };
        if let Err((code, msg)) = outcome {
            out.error_code = code;
            out.error_message = text(msg);
        }
        results.push(out);
    }
    respond(
        req,
        &CreatePartitionsResponse::default().with_results(results),
    )
}

pub async fn delete_records(
    shard: &Rc<Shard>,
    req: &KafkaRequest,
) -> Result<Option<Vec<Bytes>>, String> {
    let r: DeleteRecordsRequest = decode(req)?;
    let mut topics = Vec::with_capacity(r.topics.len());
    for t in &r.topics {
        let name = t.name.0.as_str();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut out = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            match delete_one(shard, name, p.partition_index, p.offset).await {
                Ok(start) => out.low_watermark = start,
                Err(code) => out.error_code = code,
            }
            partitions.push(out);
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(partitions),
        );
    }
    respond(req, &DeleteRecordsResponse::default().with_topics(topics))
}

async fn delete_one(
    shard: &Rc<Shard>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<i64, i16> {
    if partition < 0 {
        return Err(ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0);
    }
    let partition = partition as u32;
    let owner = shard.owner(topic, partition);
    if owner == shard.id {
        return shard.local_delete_records(topic, partition, offset).await;
    }
    let msg = |reply| ShardMsg::DeleteRecords {
        topic: topic.to_string(),
        partition,
        offset,
        reply,
    };
    shard
        .ask(owner, msg)
        .await
        .unwrap_or(Err(ErrorCode::NOT_LEADER_OR_FOLLOWER.0))
}

pub fn describe_cluster(shard: &Shard, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let _: DescribeClusterRequest = decode(req)?;
    let brokers = shard
        .kafka_brokers()
        .into_iter()
        .map(|(id, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        })
        .collect();
    let resp = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(shard.cluster_id()))
        .with_controller_id(BrokerId(shard.kafka_broker_id(0)))
        .with_brokers(brokers);
    respond(req, &resp)
}
