//! Metadata (v0-v12): this broker, every topic (or the requested ones, by
//! name or by id), each partition led by this node. Unknown topics are
//! created when the client allows it and the broker's
//! `auto_create_topics` is on (Kafka's `auto.create.topics.enable`).

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_protocol::native::{CreateTopic, CreateTopicsRequest};
use sluice_protocol::ErrorCode;

use super::{decode, respond};
use crate::kafka::KafkaRequest;
use crate::shard::Shard;
use crate::topics::TopicMeta;

pub async fn handle(shard: &Rc<Shard>, req: &KafkaRequest) -> Result<Option<Vec<Bytes>>, String> {
    let r: MetadataRequest = decode(req)?;
    let auto_create =
        shard.config.broker.auto_create_topics && (req.version < 4 || r.allow_auto_topic_creation);
    let wanted: Option<Vec<Wanted>> = r.topics.map(|topics| {
        topics
            .into_iter()
            .map(|t| match t.name {
                Some(name) => Wanted::Name(name.0.as_str().to_string()),
                None => Wanted::Id(t.topic_id),
            })
            .collect()
    });
    if auto_create {
        create_missing(shard, wanted.as_deref().unwrap_or(&[])).await;
    }
    let node = BrokerId(shard.kafka_broker_id(0));
    let brokers = shard
        .kafka_brokers()
        .into_iter()
        .map(|(id, host, port)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(host))
                .with_port(i32::from(port))
        })
        .collect();
    let v = req.version;
    let topics = match wanted {
        None => shard
            .topics
            .borrow()
            .all()
            .map(|m| topic(shard, m, v))
            .collect(),
        Some(w) => w.iter().map(|w| wanted_topic(shard, w, v)).collect(),
    };
    let mut resp = MetadataResponse::default()
        .with_brokers(brokers)
        .with_topics(topics);
    if v >= 1 {
        resp.controller_id = node;
    }
    if v >= 2 {
        resp.cluster_id = Some(StrBytes::from_string(shard.cluster_id()));
    }
    respond(req, &resp)
}

enum Wanted {
    Name(String),
    Id(uuid::Uuid),
}

async fn create_missing(shard: &Rc<Shard>, wanted: &[Wanted]) {
    let missing: Vec<CreateTopic> = wanted
        .iter()
        .filter_map(|w| match w {
            Wanted::Name(n) if shard.topics.borrow().get(n).is_none() => Some(CreateTopic {
                name: n.clone(),
                partitions: shard.config.broker.default_partitions,
                configs: Vec::new(),
            }),
            _ => None,
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let created =
        crate::handlers::create_topics(shard, CreateTopicsRequest { topics: missing }).await;
    for t in created.topics.iter().filter(|t| !t.error.is_ok()) {
        tracing::info!(topic = %t.name, error = %t.error, "auto-create refused: {}", t.message);
    }
}

fn wanted_topic(shard: &Shard, w: &Wanted, version: i16) -> MetadataResponseTopic {
    let table = shard.topics.borrow();
    let found = match w {
        Wanted::Name(n) => table.get(n).cloned(),
        Wanted::Id(id) => table.all().find(|m| m.uuid() == *id).cloned(),
    };
    match (found, w) {
        (Some(m), _) => topic(shard, &m, version),
        (None, Wanted::Name(n)) => unknown(Some(n.clone()), uuid::Uuid::nil()),
        (None, Wanted::Id(id)) => unknown(None, *id),
    }
}

fn unknown(name: Option<String>, id: uuid::Uuid) -> MetadataResponseTopic {
    let code = match name.as_deref().map(crate::topics::validate_name) {
        Some(Err(_)) => ErrorCode::INVALID_TOPIC_EXCEPTION.0,
        _ => ErrorCode::UNKNOWN_TOPIC_OR_PARTITION.0,
    };
    MetadataResponseTopic::default()
        .with_error_code(code)
        .with_name(name.map(|n| TopicName(StrBytes::from_string(n))))
        .with_topic_id(id)
}

/// A topic as `version` can carry it (the codec refuses fields a version
/// lacks: leader epochs from v7, internal flags from v1, ids from v10).
fn topic(shard: &Shard, meta: &TopicMeta, version: i16) -> MetadataResponseTopic {
    let partitions = (0..meta.partitions)
        .map(|p| {
            let node = BrokerId(shard.kafka_broker_id(shard.owner(&meta.name, p)));
            let mut part = MetadataResponsePartition::default()
                .with_partition_index(p as i32)
                .with_leader_id(node)
                .with_replica_nodes(vec![node])
                .with_isr_nodes(vec![node]);
            if version >= 7 {
                part.leader_epoch = shard.generation;
            }
            part
        })
        .collect();
    let mut t = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(meta.name.clone()))))
        .with_partitions(partitions);
    if version >= 1 {
        t.is_internal = meta.is_internal();
    }
    if version >= 10 {
        t.topic_id = meta.uuid();
    }
    t
}
