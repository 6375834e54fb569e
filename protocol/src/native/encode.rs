//! Owned messages to FlatBuffers headers. Each function builds one table and
//! returns its offset; `request` and `response` also finish the buffer and
//! hand back the record chunks that follow the header on the wire.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, UnionWIPOffset, Vector, WIPOffset};

use super::fb;
use super::message::*;

type Fbb<'a> = FlatBufferBuilder<'a>;
type TableVec<'a, T> = WIPOffset<Vector<'a, ForwardsUOffset<T>>>;

/// Builds the `Request` root; returns the records that follow the header.
pub(super) fn request(fbb: &mut Fbb<'_>, correlation_id: u32, request: &Request) -> Vec<Bytes> {
    let mut records = Vec::new();
    let (body_type, body) = match request {
        Request::Produce(r) => {
            records.extend(r.partitions.iter().map(|p| p.records.clone()));
            (
                fb::RequestBody::ProduceRequest,
                produce_request(fbb, r).as_union_value(),
            )
        }
        Request::Fetch(r) => (
            fb::RequestBody::FetchRequest,
            fetch_request(fbb, r).as_union_value(),
        ),
        Request::ListOffsets(r) => (
            fb::RequestBody::ListOffsetsRequest,
            list_offsets_request(fbb, r).as_union_value(),
        ),
        Request::CreateTopics(r) => (
            fb::RequestBody::CreateTopicsRequest,
            create_topics_request(fbb, r).as_union_value(),
        ),
        Request::DeleteTopics(r) => (
            fb::RequestBody::DeleteTopicsRequest,
            delete_topics_request(fbb, r).as_union_value(),
        ),
        Request::Metadata(r) => (
            fb::RequestBody::MetadataRequest,
            metadata_request(fbb, r).as_union_value(),
        ),
    };
    let args = fb::RequestArgs {
        correlation_id,
        body_type,
        body: Some(body),
    };
    let root = fb::Request::create(fbb, &args);
    fbb.finish(root, None);
    records
}

/// Builds the `Response` root; returns the records that follow the header.
pub(super) fn response(fbb: &mut Fbb<'_>, response: &Response) -> Vec<Bytes> {
    let mut records = Vec::new();
    let (body_type, body) = match response_body(fbb, &response.body, &mut records) {
        Some((body_type, body)) => (body_type, Some(body)),
        None => (fb::ResponseBody::NONE, None),
    };
    let message = optional_string(fbb, &response.message);
    let args = fb::ResponseArgs {
        correlation_id: response.correlation_id,
        error: response.error.0,
        message,
        body_type,
        body,
    };
    let root = fb::Response::create(fbb, &args);
    fbb.finish(root, None);
    records
}

fn response_body(
    fbb: &mut Fbb<'_>,
    body: &ResponseBody,
    records: &mut Vec<Bytes>,
) -> Option<(fb::ResponseBody, WIPOffset<UnionWIPOffset>)> {
    let built = match body {
        ResponseBody::Produce(r) => (
            fb::ResponseBody::ProduceResponse,
            produce_response(fbb, r).as_union_value(),
        ),
        ResponseBody::Fetch(r) => {
            for p in &r.partitions {
                records.extend(p.records.iter().cloned());
            }
            (
                fb::ResponseBody::FetchResponse,
                fetch_response(fbb, r).as_union_value(),
            )
        }
        ResponseBody::ListOffsets(r) => (
            fb::ResponseBody::ListOffsetsResponse,
            list_offsets_response(fbb, r).as_union_value(),
        ),
        ResponseBody::CreateTopics(r) => {
            let topics = Some(topic_results(fbb, &r.topics));
            let args = fb::CreateTopicsResponseArgs { topics };
            let body = fb::CreateTopicsResponse::create(fbb, &args);
            (
                fb::ResponseBody::CreateTopicsResponse,
                body.as_union_value(),
            )
        }
        ResponseBody::DeleteTopics(r) => {
            let topics = Some(topic_results(fbb, &r.topics));
            let args = fb::DeleteTopicsResponseArgs { topics };
            let body = fb::DeleteTopicsResponse::create(fbb, &args);
            (
                fb::ResponseBody::DeleteTopicsResponse,
                body.as_union_value(),
            )
        }
        ResponseBody::Metadata(r) => (
            fb::ResponseBody::MetadataResponse,
            metadata_response(fbb, r).as_union_value(),
        ),
        ResponseBody::Error => return None,
    };
    Some(built)
}

/// The length of a partition's records as the header's u32.
///
/// # Panics
///
/// Over 4 GiB, which no frame can carry.
fn records_len(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or_else(|_| panic!("records of {bytes} bytes exceed a frame"))
}

fn optional_string<'a>(fbb: &mut Fbb<'a>, s: &str) -> Option<WIPOffset<&'a str>> {
    (!s.is_empty()).then(|| fbb.create_string(s))
}

/// Builds one table per item, then the vector of them.
fn table_vec<'a, X, T>(
    fbb: &mut Fbb<'a>,
    items: &[X],
    mut build: impl FnMut(&mut Fbb<'a>, &X) -> WIPOffset<T>,
) -> TableVec<'a, T> {
    let offsets: Vec<WIPOffset<T>> = items.iter().map(|item| build(fbb, item)).collect();
    fbb.create_vector(&offsets)
}

fn string_vec<'a>(fbb: &mut Fbb<'a>, items: &[String]) -> TableVec<'a, &'a str> {
    table_vec(fbb, items, |fbb, s| fbb.create_string(s))
}

fn configs<'a>(fbb: &mut Fbb<'a>, configs: &[(String, String)]) -> TableVec<'a, fb::Config<'a>> {
    table_vec(fbb, configs, |fbb, (key, value)| {
        let key = Some(fbb.create_string(key));
        let value = Some(fbb.create_string(value));
        fb::Config::create(fbb, &fb::ConfigArgs { key, value })
    })
}

fn acks(acks: Acks) -> fb::Acks {
    match acks {
        Acks::None => fb::Acks::None,
        Acks::Leader => fb::Acks::Leader,
        Acks::All => fb::Acks::All,
    }
}

fn produce_request<'a>(fbb: &mut Fbb<'a>, r: &ProduceRequest) -> WIPOffset<fb::ProduceRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::ProducePartitionArgs {
            topic,
            partition: p.partition,
            records_len: records_len(p.records.len()),
        };
        fb::ProducePartition::create(fbb, &args)
    });
    let args = fb::ProduceRequestArgs {
        acks: acks(r.acks),
        timeout_ms: r.timeout_ms,
        partitions: Some(partitions),
    };
    fb::ProduceRequest::create(fbb, &args)
}

fn produce_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &ProduceResponse,
) -> WIPOffset<fb::ProduceResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::ProducePartitionResponseArgs {
            topic,
            partition: p.partition,
            error: p.error.0,
            base_offset: p.base_offset,
            log_start_offset: p.log_start_offset,
            log_append_time: -1,
        };
        fb::ProducePartitionResponse::create(fbb, &args)
    });
    let args = fb::ProduceResponseArgs {
        partitions: Some(partitions),
    };
    fb::ProduceResponse::create(fbb, &args)
}

fn fetch_request<'a>(fbb: &mut Fbb<'a>, r: &FetchRequest) -> WIPOffset<fb::FetchRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::FetchPartitionArgs {
            topic,
            partition: p.partition,
            offset: p.offset,
            max_bytes: p.max_bytes,
        };
        fb::FetchPartition::create(fbb, &args)
    });
    let args = fb::FetchRequestArgs {
        max_wait_ms: r.max_wait_ms,
        min_bytes: r.min_bytes,
        max_bytes: r.max_bytes,
        partitions: Some(partitions),
    };
    fb::FetchRequest::create(fbb, &args)
}

fn fetch_response<'a>(fbb: &mut Fbb<'a>, r: &FetchResponse) -> WIPOffset<fb::FetchResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::FetchPartitionResponseArgs {
            topic,
            partition: p.partition,
            error: p.error.0,
            high_watermark: p.high_watermark,
            log_start_offset: p.log_start_offset,
            log_end_offset: p.log_end_offset,
            records_len: records_len(p.records_len()),
        };
        fb::FetchPartitionResponse::create(fbb, &args)
    });
    let args = fb::FetchResponseArgs {
        partitions: Some(partitions),
    };
    fb::FetchResponse::create(fbb, &args)
}

fn list_offsets_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &ListOffsetsRequest,
) -> WIPOffset<fb::ListOffsetsRequest<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::ListOffsetsPartitionArgs {
            topic,
            partition: p.partition,
            timestamp: p.timestamp,
        };
        fb::ListOffsetsPartition::create(fbb, &args)
    });
    let args = fb::ListOffsetsRequestArgs {
        partitions: Some(partitions),
    };
    fb::ListOffsetsRequest::create(fbb, &args)
}

fn list_offsets_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &ListOffsetsResponse,
) -> WIPOffset<fb::ListOffsetsResponse<'a>> {
    let partitions = table_vec(fbb, &r.partitions, |fbb, p| {
        let topic = Some(fbb.create_string(&p.topic));
        let args = fb::ListOffsetsPartitionResponseArgs {
            topic,
            partition: p.partition,
            error: p.error.0,
            offset: p.offset,
            timestamp: p.timestamp,
        };
        fb::ListOffsetsPartitionResponse::create(fbb, &args)
    });
    let args = fb::ListOffsetsResponseArgs {
        partitions: Some(partitions),
    };
    fb::ListOffsetsResponse::create(fbb, &args)
}

fn create_topics_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &CreateTopicsRequest,
) -> WIPOffset<fb::CreateTopicsRequest<'a>> {
    let topics = table_vec(fbb, &r.topics, |fbb, t| {
        let name = Some(fbb.create_string(&t.name));
        let configs = Some(configs(fbb, &t.configs));
        let args = fb::CreateTopicArgs {
            name,
            partitions: t.partitions,
            configs,
        };
        fb::CreateTopic::create(fbb, &args)
    });
    let args = fb::CreateTopicsRequestArgs {
        topics: Some(topics),
    };
    fb::CreateTopicsRequest::create(fbb, &args)
}

fn topic_results<'a>(
    fbb: &mut Fbb<'a>,
    results: &[TopicResult],
) -> TableVec<'a, fb::TopicResult<'a>> {
    table_vec(fbb, results, |fbb, t| {
        let name = Some(fbb.create_string(&t.name));
        let message = optional_string(fbb, &t.message);
        let args = fb::TopicResultArgs {
            name,
            error: t.error.0,
            message,
        };
        fb::TopicResult::create(fbb, &args)
    })
}

fn delete_topics_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &DeleteTopicsRequest,
) -> WIPOffset<fb::DeleteTopicsRequest<'a>> {
    let names = Some(string_vec(fbb, &r.names));
    fb::DeleteTopicsRequest::create(fbb, &fb::DeleteTopicsRequestArgs { names })
}

fn metadata_request<'a>(
    fbb: &mut Fbb<'a>,
    r: &MetadataRequest,
) -> WIPOffset<fb::MetadataRequest<'a>> {
    let topics = Some(string_vec(fbb, &r.topics));
    fb::MetadataRequest::create(fbb, &fb::MetadataRequestArgs { topics })
}

fn metadata_response<'a>(
    fbb: &mut Fbb<'a>,
    r: &MetadataResponse,
) -> WIPOffset<fb::MetadataResponse<'a>> {
    let shards = table_vec(fbb, &r.shards, |fbb, s| {
        let host = Some(fbb.create_string(&s.host));
        let args = fb::ShardAddressArgs {
            shard: s.shard,
            host,
            port: s.port,
        };
        fb::ShardAddress::create(fbb, &args)
    });
    let topics = table_vec(fbb, &r.topics, topic_metadata);
    let bootstrap_host = optional_string(fbb, &r.bootstrap_host);
    let args = fb::MetadataResponseArgs {
        node_id: r.node_id,
        bootstrap_host,
        bootstrap_port: r.bootstrap_port,
        shards: Some(shards),
        topics: Some(topics),
    };
    fb::MetadataResponse::create(fbb, &args)
}

fn topic_metadata<'a>(fbb: &mut Fbb<'a>, t: &TopicMetadata) -> WIPOffset<fb::TopicMetadata<'a>> {
    let name = Some(fbb.create_string(&t.name));
    let partitions = table_vec(fbb, &t.partitions, |fbb, p| {
        let args = fb::PartitionMetadataArgs {
            partition: p.partition,
            shard: p.shard,
            leader_epoch: p.leader_epoch,
            error: p.error.0,
        };
        fb::PartitionMetadata::create(fbb, &args)
    });
    let configs = Some(configs(fbb, &t.configs));
    let args = fb::TopicMetadataArgs {
        name,
        error: t.error.0,
        partitions: Some(partitions),
        configs,
    };
    fb::TopicMetadata::create(fbb, &args)
}
