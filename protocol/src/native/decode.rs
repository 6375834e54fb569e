//! Verified FlatBuffers headers to owned messages.
//!
//! The verifier has already checked every offset, string and required field,
//! so reading the header cannot fail; what can still be wrong is what the
//! schema cannot say: a missing or unknown body, an unknown `acks`, and
//! `records_len` that do not add up to the payload.

use bytes::Bytes;
use flatbuffers::{Follow, ForwardsUOffset, Vector};

use super::codec::DecodeErrorKind;
use super::fb;
use super::message::*;
use crate::ErrorCode;

type TableVec<'a, T> = Option<Vector<'a, ForwardsUOffset<T>>>;

pub(super) fn request(
    header: &fb::Request<'_>,
    payload: Bytes,
) -> Result<Request, DecodeErrorKind> {
    let body_type = header.body_type();
    if body_type == fb::RequestBody::ProduceRequest {
        let body = header
            .body_as_produce_request()
            .ok_or(DecodeErrorKind::BodyMissing)?;
        return produce_request(&body, payload).map(Request::Produce);
    }
    payload_empty(&payload)?;
    let missing = DecodeErrorKind::BodyMissing;
    let request = match body_type {
        fb::RequestBody::FetchRequest => Request::Fetch(fetch_request(
            &header.body_as_fetch_request().ok_or(missing)?,
        )),
        fb::RequestBody::ListOffsetsRequest => {
            let body = header.body_as_list_offsets_request().ok_or(missing)?;
            Request::ListOffsets(list_offsets_request(&body))
        }
        fb::RequestBody::CreateTopicsRequest => {
            let body = header.body_as_create_topics_request().ok_or(missing)?;
            Request::CreateTopics(create_topics_request(&body))
        }
        fb::RequestBody::DeleteTopicsRequest => {
            let body = header.body_as_delete_topics_request().ok_or(missing)?;
            Request::DeleteTopics(DeleteTopicsRequest {
                names: strings(body.names()),
            })
        }
        fb::RequestBody::MetadataRequest => {
            let body = header.body_as_metadata_request().ok_or(missing)?;
            Request::Metadata(MetadataRequest {
                topics: strings(body.topics()),
            })
        }
        fb::RequestBody::NONE => return Err(missing),
        unknown => return Err(DecodeErrorKind::BodyUnknown { tag: unknown.0 }),
    };
    Ok(request)
}

pub(super) fn response(
    header: &fb::Response<'_>,
    payload: Bytes,
) -> Result<Response, DecodeErrorKind> {
    let body = if header.body_type() == fb::ResponseBody::FetchResponse {
        let body = header
            .body_as_fetch_response()
            .ok_or(DecodeErrorKind::BodyMissing)?;
        ResponseBody::Fetch(fetch_response(&body, payload)?)
    } else {
        payload_empty(&payload)?;
        response_body(header)?
    };
    Ok(Response {
        correlation_id: header.correlation_id(),
        error: ErrorCode(header.error()),
        message: header.message().unwrap_or_default().to_owned(),
        body,
    })
}

/// Every body but Fetch, which has a payload.
fn response_body(header: &fb::Response<'_>) -> Result<ResponseBody, DecodeErrorKind> {
    let missing = DecodeErrorKind::BodyMissing;
    let body = match header.body_type() {
        fb::ResponseBody::ProduceResponse => ResponseBody::Produce(produce_response(
            &header.body_as_produce_response().ok_or(missing)?,
        )),
        fb::ResponseBody::ListOffsetsResponse => {
            let body = header.body_as_list_offsets_response().ok_or(missing)?;
            ResponseBody::ListOffsets(list_offsets_response(&body))
        }
        fb::ResponseBody::CreateTopicsResponse => {
            let body = header.body_as_create_topics_response().ok_or(missing)?;
            ResponseBody::CreateTopics(CreateTopicsResponse {
                topics: topic_results(body.topics()),
            })
        }
        fb::ResponseBody::DeleteTopicsResponse => {
            let body = header.body_as_delete_topics_response().ok_or(missing)?;
            ResponseBody::DeleteTopics(DeleteTopicsResponse {
                topics: topic_results(body.topics()),
            })
        }
        fb::ResponseBody::MetadataResponse => ResponseBody::Metadata(metadata_response(
            &header.body_as_metadata_response().ok_or(missing)?,
        )),
        fb::ResponseBody::NONE => ResponseBody::Error,
        unknown => return Err(DecodeErrorKind::BodyUnknown { tag: unknown.0 }),
    };
    Ok(body)
}

/// Converts each element of an optional vector; absent reads as empty. The
/// verifier bounded the vector's length by the header's, so the allocation is
/// bounded too.
fn list<'a, T, U>(v: Option<Vector<'a, T>>, convert: impl FnMut(T::Inner) -> U) -> Vec<U>
where
    T: Follow<'a> + 'a,
{
    v.map(|v| v.iter().map(convert).collect())
        .unwrap_or_default()
}

fn strings(v: TableVec<'_, &str>) -> Vec<String> {
    list(v, str::to_owned)
}

fn configs(v: TableVec<'_, fb::Config<'_>>) -> Vec<(String, String)> {
    list(v, |c| (c.key().to_owned(), c.value().to_owned()))
}

fn payload_empty(payload: &Bytes) -> Result<(), DecodeErrorKind> {
    if payload.is_empty() {
        return Ok(());
    }
    Err(DecodeErrorKind::PayloadLength {
        declared_bytes: 0,
        actual_bytes: payload.len(),
    })
}

/// Hands out consecutive slices of a payload whose length has been checked
/// against the sum of the slices' lengths.
struct Payload {
    bytes: Bytes,
    position: usize,
}

impl Payload {
    /// Checks that `lens` add up to exactly the payload's length.
    fn new(bytes: Bytes, lens: impl Iterator<Item = u32>) -> Result<Payload, DecodeErrorKind> {
        let declared_bytes: u64 = lens.map(u64::from).sum();
        if declared_bytes != bytes.len() as u64 {
            let actual_bytes = bytes.len();
            return Err(DecodeErrorKind::PayloadLength {
                declared_bytes,
                actual_bytes,
            });
        }
        Ok(Payload { bytes, position: 0 })
    }

    /// The next `len` bytes, uncopied. Clamped to the payload, though
    /// [`Payload::new`] has made that unnecessary.
    fn take(&mut self, len: u32) -> Bytes {
        let end = self
            .position
            .saturating_add(len as usize)
            .min(self.bytes.len());
        let chunk = self.bytes.slice(self.position..end);
        self.position = end;
        chunk
    }
}

fn acks(acks: fb::Acks) -> Result<Acks, DecodeErrorKind> {
    match acks {
        fb::Acks::None => Ok(Acks::None),
        fb::Acks::Leader => Ok(Acks::Leader),
        fb::Acks::All => Ok(Acks::All),
        unknown => Err(DecodeErrorKind::AcksUnknown { acks: unknown.0 }),
    }
}

fn produce_request(
    r: &fb::ProduceRequest<'_>,
    payload: Bytes,
) -> Result<ProduceRequest, DecodeErrorKind> {
    let lens = r
        .partitions()
        .into_iter()
        .flatten()
        .map(|p| p.records_len());
    let mut payload = Payload::new(payload, lens)?;
    let partitions = list(r.partitions(), |p| ProducePartition {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        records: payload.take(p.records_len()),
    });
    Ok(ProduceRequest {
        acks: acks(r.acks())?,
        timeout_ms: r.timeout_ms(),
        partitions,
    })
}

fn produce_response(r: &fb::ProduceResponse<'_>) -> ProduceResponse {
    let partitions = list(r.partitions(), |p| ProducePartitionResponse {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        error: ErrorCode(p.error()),
        base_offset: p.base_offset(),
        log_start_offset: p.log_start_offset(),
    });
    ProduceResponse { partitions }
}

fn fetch_request(r: &fb::FetchRequest<'_>) -> FetchRequest {
    let partitions = list(r.partitions(), |p| FetchPartition {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        offset: p.offset(),
        max_bytes: p.max_bytes(),
    });
    FetchRequest {
        max_wait_ms: r.max_wait_ms(),
        min_bytes: r.min_bytes(),
        max_bytes: r.max_bytes(),
        partitions,
    }
}

fn fetch_response(
    r: &fb::FetchResponse<'_>,
    payload: Bytes,
) -> Result<FetchResponse, DecodeErrorKind> {
    let lens = r
        .partitions()
        .into_iter()
        .flatten()
        .map(|p| p.records_len());
    let mut payload = Payload::new(payload, lens)?;
    let partitions = list(r.partitions(), |p| {
        let records = payload.take(p.records_len());
        FetchPartitionResponse {
            topic: p.topic().to_owned(),
            partition: p.partition(),
            error: ErrorCode(p.error()),
            high_watermark: p.high_watermark(),
            log_start_offset: p.log_start_offset(),
            log_end_offset: p.log_end_offset(),
            records: if records.is_empty() {
                Vec::new()
            } else {
                vec![records]
            },
        }
    });
    Ok(FetchResponse { partitions })
}

fn list_offsets_request(r: &fb::ListOffsetsRequest<'_>) -> ListOffsetsRequest {
    let partitions = list(r.partitions(), |p| ListOffsetsPartition {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        timestamp: p.timestamp(),
    });
    ListOffsetsRequest { partitions }
}

fn list_offsets_response(r: &fb::ListOffsetsResponse<'_>) -> ListOffsetsResponse {
    let partitions = list(r.partitions(), |p| ListOffsetsPartitionResponse {
        topic: p.topic().to_owned(),
        partition: p.partition(),
        error: ErrorCode(p.error()),
        offset: p.offset(),
        timestamp: p.timestamp(),
    });
    ListOffsetsResponse { partitions }
}

fn create_topics_request(r: &fb::CreateTopicsRequest<'_>) -> CreateTopicsRequest {
    let topics = list(r.topics(), |t| CreateTopic {
        name: t.name().to_owned(),
        partitions: t.partitions(),
        configs: configs(t.configs()),
    });
    CreateTopicsRequest { topics }
}

fn topic_results(v: TableVec<'_, fb::TopicResult<'_>>) -> Vec<TopicResult> {
    list(v, |t| TopicResult {
        name: t.name().to_owned(),
        error: ErrorCode(t.error()),
        message: t.message().unwrap_or_default().to_owned(),
    })
}

fn metadata_response(r: &fb::MetadataResponse<'_>) -> MetadataResponse {
    let shards = list(r.shards(), |s| ShardAddress {
        shard: s.shard(),
        host: s.host().to_owned(),
        port: s.port(),
    });
    let topics = list(r.topics(), |t| TopicMetadata {
        name: t.name().to_owned(),
        error: ErrorCode(t.error()),
        partitions: list(t.partitions(), |p| PartitionMetadata {
            partition: p.partition(),
            shard: p.shard(),
            leader_epoch: p.leader_epoch(),
            error: ErrorCode(p.error()),
        }),
        configs: configs(t.configs()),
    });
    MetadataResponse {
        node_id: r.node_id(),
        bootstrap_host: r.bootstrap_host().unwrap_or_default().to_owned(),
        bootstrap_port: r.bootstrap_port(),
        shards,
        topics,
    }
}
