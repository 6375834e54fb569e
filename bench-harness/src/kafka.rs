//! A compact blocking Kafka-protocol client over `std::net`, with the
//! `kafka-protocol` crate's codecs: just what the generator needs
//! (ApiVersions, Metadata, CreateTopics, DeleteTopics, Produce v9, Fetch v12 sessionless,
//! ListOffsets), with requests pipelined on one connection.
//!
//! Like the native client it reads straight from the socket (no user-space
//! read-ahead), so "the socket is readable" means "the next response has
//! started to arrive" and one thread can wait on many connections with
//! `ppoll`. Kafka answers the requests of one connection in order, so the
//! answer to read next is always the oldest one in flight.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, FetchResponse,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::error::BenchError;

/// The versions this client speaks: (API, lowest acceptable, preferred).
/// Produce and Fetch are pinned (v9: flexible, no topic ids; v12: the last
/// by-name Fetch with sessions); the others take the broker's highest up to
/// the preferred one.
const WANTED: [(ApiKey, i16, i16); 6] = [
    (ApiKey::Produce, 9, 9),
    (ApiKey::Fetch, 12, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
];
const API_VERSIONS_VERSION: i16 = 3;
/// The largest response accepted (a fetch of many partitions can be big).
const RESPONSE_BYTES_MAX: usize = 512 * 1024 * 1024;
const CLIENT_ID: &str = "sluice-bench";
/// How long a blocking read or write may stall before the run fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Negotiated versions, per API in [`WANTED`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub produce: i16,
    pub fetch: i16,
    pub list_offsets: i16,
    pub metadata: i16,
    pub create_topics: i16,
    pub delete_topics: i16,
}

/// The highest version of `key` both sides speak: the broker's range from
/// `broker` ((api_key, min, max)), this client's `lowest..=preferred`.
fn pick(
    broker: &[(i16, i16, i16)],
    key: ApiKey,
    lowest: i16,
    preferred: i16,
) -> Result<i16, BenchError> {
    let k = key as i16;
    let Some(&(_, min, max)) = broker.iter().find(|(b, _, _)| *b == k) else {
        return Err(BenchError::new(format!(
            "the broker does not offer {key:?} (API key {k})"
        )));
    };
    let v = preferred.min(max);
    if v < lowest || v < min {
        return Err(BenchError::new(format!(
            "no common {key:?} version: the broker offers {min}..={max}, this client {lowest}..={preferred}"
        )));
    }
    Ok(v)
}

/// The version to use of each wanted API, given the broker's ranges
/// `(api_key, min, max)`; an error names the first API with no overlap.
pub fn negotiate(broker: &[(i16, i16, i16)]) -> Result<Versions, BenchError> {
    let mut picked = [0i16; WANTED.len()];
    for (slot, (key, lowest, preferred)) in picked.iter_mut().zip(WANTED) {
        *slot = pick(broker, key, lowest, preferred)?;
    }
    Ok(Versions {
        produce: picked[0],
        fetch: picked[1],
        list_offsets: picked[2],
        metadata: picked[3],
        create_topics: picked[4],
        delete_topics: picked[5],
    })
}

pub struct KafkaClient {
    stream: TcpStream,
    correlation_next: i32,
    /// (correlation id, API, version) of each request awaiting an answer.
    in_flight: VecDeque<(i32, ApiKey, i16)>,
    pub versions: Versions,
    /// The broker's (API key, min, max) from ApiVersions, for APIs
    /// negotiated when first used ([`KafkaClient::call`]).
    ranges: Vec<(i16, i16, i16)>,
}

/// A decoded response.
pub enum Response {
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    Metadata(MetadataResponse),
    CreateTopics(CreateTopicsResponse),
    DeleteTopics(DeleteTopicsResponse),
}

fn codec_error(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::new(format!("{what}: {e}"))
}

impl KafkaClient {
    /// Takes a connected stream and negotiates versions with ApiVersions.
    pub fn from_stream(stream: TcpStream) -> Result<KafkaClient, BenchError> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut client = KafkaClient {
            stream,
            correlation_next: 1,
            in_flight: VecDeque::new(),
            versions: Versions::default(),
            ranges: Vec::new(),
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        client.send_raw(ApiKey::ApiVersions, API_VERSIONS_VERSION, &request)?;
        let mut body = client.read_frame()?;
        client.in_flight.pop_front();
        // The ApiVersions response header is v0 whatever the version.
        ResponseHeader::decode(&mut body, 0).map_err(|e| codec_error("ApiVersions header", e))?;
        let response = ApiVersionsResponse::decode(&mut body, API_VERSIONS_VERSION)
            .map_err(|e| codec_error("ApiVersions response", e))?;
        if response.error_code != 0 {
            return Err(BenchError::new(format!(
                "ApiVersions failed with error {}",
                response.error_code
            )));
        }
        let ranges: Vec<(i16, i16, i16)> = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, k.min_version, k.max_version))
            .collect();
        client.versions = negotiate(&ranges)?;
        client.ranges = ranges;
        Ok(client)
    }

    fn version_of(&self, key: ApiKey) -> i16 {
        match key {
            ApiKey::Produce => self.versions.produce,
            ApiKey::Fetch => self.versions.fetch,
            ApiKey::ListOffsets => self.versions.list_offsets,
            ApiKey::Metadata => self.versions.metadata,
            ApiKey::CreateTopics => self.versions.create_topics,
            ApiKey::DeleteTopics => self.versions.delete_topics,
            _ => 0,
        }
    }

    fn send_raw<M: Encodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        body: &M,
    ) -> Result<(), BenchError> {
        let correlation = self.correlation_next;
        self.correlation_next = correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        // Sized up front: a produce carries a whole batch, and growing the
        // buffer by doubling copied it several times over.
        let header_version = M::header_version(version);
        let size = header
            .compute_size(header_version)
            .and_then(|h| body.compute_size(version).map(|b| h + b))
            .unwrap_or(64);
        let mut buf = BytesMut::with_capacity(4 + size);
        buf.extend_from_slice(&[0; 4]);
        header
            .encode(&mut buf, header_version)
            .map_err(|e| codec_error("encoding a request header", e))?;
        body.encode(&mut buf, version)
            .map_err(|e| codec_error("encoding a request", e))?;
        let len = i32::try_from(buf.len() - 4)
            .map_err(|_| BenchError::new("a request larger than 2 GiB"))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)?;
        self.in_flight.push_back((correlation, key, version));
        Ok(())
    }

    /// Sends a request of the kind `key`; the answer comes from [`recv`].
    ///
    /// [`recv`]: KafkaClient::recv
    pub fn send<M: Encodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        body: &M,
    ) -> Result<(), BenchError> {
        let version = self.version_of(key);
        self.send_raw(key, version, body)
    }

    /// Sends a produce with acks=0: the broker sends no answer.
    pub fn send_unanswered(&mut self, body: &ProduceRequest) -> Result<(), BenchError> {
        self.send(ApiKey::Produce, body)?;
        self.in_flight.pop_back();
        Ok(())
    }

    fn read_frame(&mut self) -> Result<Bytes, BenchError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = usize::try_from(i32::from_be_bytes(len))
            .map_err(|_| BenchError::new("a negative response length"))?;
        if len > RESPONSE_BYTES_MAX {
            return Err(BenchError::new(format!(
                "a response of {len} bytes (more than {RESPONSE_BYTES_MAX})"
            )));
        }
        // Read into spare capacity: zeroing a fetch response first cost the
        // generator a memset of every byte it consumes.
        let mut body = Vec::with_capacity(len);
        (&mut self.stream).take(len as u64).read_to_end(&mut body)?;
        if body.len() != len {
            return Err(BenchError::new(format!(
                "connection closed {} bytes into a {len}-byte response",
                body.len()
            )));
        }
        Ok(Bytes::from(body))
    }

    /// Reads the answer to the oldest request in flight.
    pub fn recv(&mut self) -> Result<Response, BenchError> {
        let Some(&(correlation, key, version)) = self.in_flight.front() else {
            return Err(BenchError::new("reading a response with none in flight"));
        };
        let mut body = self.read_frame()?;
        self.in_flight.pop_front();
        let header_version = match key {
            ApiKey::Produce => ProduceResponse::header_version(version),
            ApiKey::Fetch => FetchResponse::header_version(version),
            ApiKey::ListOffsets => ListOffsetsResponse::header_version(version),
            ApiKey::Metadata => MetadataResponse::header_version(version),
            ApiKey::DeleteTopics => DeleteTopicsResponse::header_version(version),
            _ => CreateTopicsResponse::header_version(version),
        };
        let header = ResponseHeader::decode(&mut body, header_version)
            .map_err(|e| codec_error("a response header", e))?;
        if header.correlation_id != correlation {
            return Err(BenchError::new(format!(
                "response to correlation id {} where {correlation} was next",
                header.correlation_id
            )));
        }
        let what = |e| codec_error(&format!("a {key:?} v{version} response"), e);
        Ok(match key {
            ApiKey::Produce => {
                Response::Produce(ProduceResponse::decode(&mut body, version).map_err(what)?)
            }
            ApiKey::Fetch => {
                Response::Fetch(FetchResponse::decode(&mut body, version).map_err(what)?)
            }
            ApiKey::ListOffsets => Response::ListOffsets(
                ListOffsetsResponse::decode(&mut body, version).map_err(what)?,
            ),
            ApiKey::Metadata => {
                Response::Metadata(MetadataResponse::decode(&mut body, version).map_err(what)?)
            }
            ApiKey::DeleteTopics => Response::DeleteTopics(
                DeleteTopicsResponse::decode(&mut body, version).map_err(what)?,
            ),
            _ => Response::CreateTopics(
                CreateTopicsResponse::decode(&mut body, version).map_err(what)?,
            ),
        })
    }

    /// Metadata for `topics`, without asking the broker to create them.
    pub fn metadata(&mut self, topics: &[&str]) -> Result<MetadataResponse, BenchError> {
        let list = topics
            .iter()
            .map(|t| {
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(topic_name(t)))
            })
            .collect();
        let request = MetadataRequest::default()
            .with_topics(Some(list))
            .with_allow_auto_topic_creation(false);
        self.send(ApiKey::Metadata, &request)?;
        match self.recv()? {
            Response::Metadata(r) => Ok(r),
            _ => Err(BenchError::new("Metadata answered with another response")),
        }
    }

    /// Creates `name` with `partitions` partitions and the broker's default
    /// replication factor; "already exists" counts as success.
    pub fn create_topic(&mut self, name: &str, partitions: u32) -> Result<(), BenchError> {
        let topic = kafka_protocol::messages::create_topics_request::CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(i32::try_from(partitions).unwrap_or(i32::MAX))
            .with_replication_factor(-1);
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(60_000);
        self.send(ApiKey::CreateTopics, &request)?;
        let Response::CreateTopics(r) = self.recv()? else {
            return Err(BenchError::new(
                "CreateTopics answered with another response",
            ));
        };
        match r.topics.first() {
            Some(t) if t.error_code == 0 || t.error_code == TOPIC_ALREADY_EXISTS => Ok(()),
            Some(t) => Err(BenchError::new(format!(
                "creating topic {name}: error {}{}",
                t.error_code,
                t.error_message
                    .as_ref()
                    .map(|m| format!(": {}", m.as_str()))
                    .unwrap_or_default()
            ))),
            None => Err(BenchError::new(format!("creating topic {name}: no result"))),
        }
    }
}

impl KafkaClient {
    /// One request and its answer, alone on the connection, for APIs
    /// outside [`WANTED`] (the group protocol): the version is the broker's
    /// highest up to `preferred`, at least `lowest`, and `body` builds the
    /// request for it (fields differ between versions).
    pub fn call<Q, R>(
        &mut self,
        key: ApiKey,
        (lowest, preferred): (i16, i16),
        body: impl FnOnce(i16) -> Q,
    ) -> Result<(R, i16), BenchError>
    where
        Q: Encodable + HeaderVersion,
        R: Decodable + HeaderVersion,
    {
        if !self.in_flight.is_empty() {
            return Err(BenchError::new(format!(
                "{key:?} sent with other requests in flight"
            )));
        }
        let version = pick(&self.ranges, key, lowest, preferred)?;
        self.send_raw(key, version, &body(version))?;
        let mut frame = self.read_frame()?;
        let Some((correlation, _, _)) = self.in_flight.pop_front() else {
            return Err(BenchError::new("a response with none in flight"));
        };
        let header = ResponseHeader::decode(&mut frame, R::header_version(version))
            .map_err(|e| codec_error("a response header", e))?;
        if header.correlation_id != correlation {
            return Err(BenchError::new(format!(
                "response to correlation id {} where {correlation} was next",
                header.correlation_id
            )));
        }
        let response = R::decode(&mut frame, version)
            .map_err(|e| codec_error(&format!("a {key:?} v{version} response"), e))?;
        Ok((response, version))
    }

    /// Deletes `name` (its data too); "unknown topic" counts as success.
    pub fn delete_topic(&mut self, name: &str) -> Result<(), BenchError> {
        let request = DeleteTopicsRequest::default()
            .with_topic_names(vec![topic_name(name)])
            .with_timeout_ms(60_000);
        self.send(ApiKey::DeleteTopics, &request)?;
        let Response::DeleteTopics(r) = self.recv()? else {
            return Err(BenchError::new(
                "DeleteTopics answered with another response",
            ));
        };
        match r.responses.first() {
            Some(t) if t.error_code == 0 || t.error_code == UNKNOWN_TOPIC_OR_PARTITION => Ok(()),
            Some(t) => Err(BenchError::new(format!(
                "deleting topic {name}: error {}",
                t.error_code
            ))),
            None => Err(BenchError::new(format!("deleting topic {name}: no result"))),
        }
    }
}

/// Kafka's error code for "this topic or partition is unknown".
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// Kafka's error code for "the topic already exists".
pub const TOPIC_ALREADY_EXISTS: i16 = 36;

pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

pub fn broker_id(id: i32) -> BrokerId {
    BrokerId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(min: i16, max: i16) -> Vec<(i16, i16, i16)> {
        [0i16, 1, 2, 3, 19, 20]
            .iter()
            .map(|&k| (k, min, max))
            .collect()
    }

    #[test]
    fn versions_take_the_highest_common_one() {
        let v = negotiate(&all(0, 17)).expect("common versions");
        assert_eq!(
            v,
            Versions {
                produce: 9,
                fetch: 12,
                list_offsets: 7,
                metadata: 12,
                create_topics: 7,
                delete_topics: 5
            }
        );
        let mut older = all(0, 17);
        older[3] = (3, 0, 4); // Metadata up to v4 only
        assert_eq!(negotiate(&older).map(|v| v.metadata).ok(), Some(4));
    }

    #[test]
    fn versions_without_overlap_are_an_error() {
        let mut no_fetch12 = all(0, 17);
        no_fetch12[1] = (1, 0, 11);
        let e = negotiate(&no_fetch12).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("Fetch")));
        let missing: Vec<_> = all(0, 17).into_iter().filter(|r| r.0 != 19).collect();
        assert!(negotiate(&missing).is_err());
    }

    /// A one-connection server on 127.0.0.1: it reads one request frame,
    /// checks that its length prefix covers exactly an ApiVersions request,
    /// then writes `reply` and closes.
    fn serve_once(reply: Vec<u8>) -> (TcpStream, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut len = [0u8; 4];
            conn.read_exact(&mut len).expect("length");
            let mut frame = vec![0u8; i32::from_be_bytes(len) as usize];
            conn.read_exact(&mut frame).expect("frame");
            let mut frame = Bytes::from(frame);
            let header = RequestHeader::decode(&mut frame, 2).expect("header");
            assert_eq!(header.request_api_key, ApiKey::ApiVersions as i16);
            ApiVersionsRequest::decode(&mut frame, API_VERSIONS_VERSION).expect("request");
            assert!(
                frame.is_empty(),
                "the length prefix covers the request exactly"
            );
            conn.write_all(&reply).expect("reply");
        });
        (TcpStream::connect(addr).expect("connect"), server)
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_whole_response_is_read_and_decoded() {
        use kafka_protocol::messages::api_versions_response::ApiVersion;
        let response = ApiVersionsResponse::default().with_api_keys(
            all(0, 17)
                .into_iter()
                .map(|(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(k)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        );
        let mut body = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(1)
            .encode(&mut body, 0)
            .expect("header");
        response
            .encode(&mut body, API_VERSIONS_VERSION)
            .expect("response");
        let (stream, server) = serve_once(framed(&body));
        let client = KafkaClient::from_stream(stream).expect("negotiated");
        server.join().expect("server");
        assert_eq!(client.versions.fetch, 12);
        assert_eq!(client.versions.produce, 9);
    }

    #[test]
    fn a_response_cut_short_is_a_clear_error() {
        let mut reply = 100i32.to_be_bytes().to_vec();
        reply.extend_from_slice(&[0u8; 10]);
        let (stream, server) = serve_once(reply);
        let e = KafkaClient::from_stream(stream)
            .err()
            .map(|e| e.to_string());
        server.join().expect("server");
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("connection closed 10 bytes into a 100-byte response")),
            "{e:?}"
        );
    }

    #[test]
    fn a_produce_request_encodes_with_its_header() {
        use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
        let data = PartitionProduceData::default()
            .with_index(3)
            .with_records(Some(Bytes::from_static(b"abc")));
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(topic_name("t"))
                .with_partition_data(vec![data])]);
        let mut buf = BytesMut::new();
        request.encode(&mut buf, 9).expect("encodes");
        let mut bytes = buf.freeze();
        let back = ProduceRequest::decode(&mut bytes, 9).expect("decodes");
        assert_eq!(back.acks, -1);
        assert_eq!(back.topic_data[0].partition_data[0].index, 3);
        assert_eq!(ProduceRequest::header_version(9), 2);
    }
}
