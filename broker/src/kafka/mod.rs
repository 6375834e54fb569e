//! The Kafka wire protocol: every existing Kafka client works against Sluice
//! unchanged.
//!
//! ```text
//! request:  size i32 | api_key i16 | api_version i16 | correlation_id i32 |
//!           client_id nullable string | [tagged fields, flexible versions] | body
//! response: size i32 | correlation_id i32 | [tagged fields] | body
//! ```
//!
//! Every shard listens on the Kafka address (SO_REUSEPORT), beside the native
//! listener, sharing the same shards, logs and coordinators. Message codecs
//! come from the `kafka-protocol` crate, except the Fetch response, whose
//! framing is written here around the raw record batches so they reach the
//! socket without being copied into an encode buffer (see [`fetch_encode`]).
//! Requests on one connection are answered in order, even when their
//! partitions live on different shards.

pub mod fetch_encode;
pub mod group;
pub mod handlers;
pub mod offsets_log;
pub mod produce_frame;
pub mod versions;

use std::cell::RefCell;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::io::AsyncReadExt;
use glommio::channels::local_channel::LocalSender;
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use sluice_shard::stats::TimedRequest;

use crate::memory::Reservation;
use crate::native::{read_frame_body, Answer, Incoming};
use crate::shard::Shard;

/// Smallest request: size, api key, version, correlation id, client id length.
const REQUEST_BYTES_MIN: usize = 4 + 2 + 2 + 4 + 2;

/// The Kafka protocol's [`crate::native::ServeFn`].
pub fn serve_kafka(
    shard: Rc<Shard>,
    stream: TcpStream,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    Box::pin(serve(shard, stream))
}

async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    crate::native::serve_connection(
        shard,
        stream,
        "kafka",
        |shard, incoming, queue| async move { read_requests(&shard, incoming, queue).await },
    )
    .await;
}

/// The size of the next frame, prefix included, or why the connection closes.
fn frame_total(prefix: [u8; 4], max: usize) -> Result<usize, String> {
    let size = i32::from_be_bytes(prefix);
    if size < (REQUEST_BYTES_MIN - 4) as i32 {
        return Err(format!("request size {size} is too small"));
    }
    let total = size as usize + 4;
    if total > max {
        return Err(format!(
            "request of {total} bytes exceeds max_frame_bytes {max}"
        ));
    }
    Ok(total)
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut incoming: Incoming,
    queue: LocalSender<Answer>,
) -> Result<(), String> {
    let max = shard.config.broker.max_frame_bytes;
    loop {
        let mut prefix = [0u8; 4];
        match incoming.reader.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("read failed: {e}")),
        }
        let total = frame_total(prefix, max)?;
        let pool = &shard.request_memory;
        let (request, memory) = if total >= produce_frame::FRAME_MIN_BYTES
            && produce_frame::enabled()
        {
            // Large enough to be a Produce worth receiving in place.
            let mut head = [0u8; 8];
            head[..4].copy_from_slice(&prefix);
            incoming
                .reader
                .read_exact(&mut head[4..])
                .await
                .map_err(|e| format!("connection lost mid-frame: {e}"))?;
            let key = i16::from_be_bytes([head[4], head[5]]);
            let version = i16::from_be_bytes([head[6], head[7]]);
            if key == ApiKey::Produce as i16 && produce_frame::VERSIONS.contains(&version) {
                let f = produce_frame::read(&mut incoming, &head, total, version, pool).await?;
                let memory = Rc::new(RefCell::new(f.memory));
                let mut request = parse_request(f.skeleton, memory.clone())?;
                request.records = Some(f.records);
                (request, memory)
            } else {
                let (frame, memory) = read_frame_body(&mut incoming, &head, total, pool).await?;
                let memory = Rc::new(RefCell::new(memory));
                (parse_request(frame, memory.clone())?, memory)
            }
        } else {
            let (frame, memory) = read_frame_body(&mut incoming, &prefix, total, pool).await?;
            let memory = Rc::new(RefCell::new(memory));
            (parse_request(frame, memory.clone())?, memory)
        };
        let shard = shard.clone();
        let kind = match request.api_key {
            ApiKey::Produce => Some(TimedRequest::Produce),
            ApiKey::Fetch => Some(TimedRequest::Fetch),
            _ => None,
        };
        let answer = Answer::spawn(memory, async move {
            shard.in_flight.set(shard.in_flight.get() + 1);
            let chunks = handlers::dispatch(&shard, request).await;
            shard.in_flight.set(shard.in_flight.get() - 1);
            chunks
        })
        .timed(kind);
        if queue.send(answer).await.is_err() {
            return Err("writer stopped".into());
        }
    }
}

/// A request whose header was decoded; the body is decoded by its handler.
pub struct KafkaRequest {
    pub api_key: ApiKey,
    pub version: i16,
    pub header: RequestHeader,
    pub body: Bytes,
    /// The request memory held for this request; a fetch adds what its
    /// response holds.
    pub memory: Rc<RefCell<Reservation>>,
    /// A Produce read apart (`produce_frame`): its records fields, in
    /// order, received outside `body`, where each is a null.
    pub records: Option<Vec<Option<Bytes>>>,
}

/// Decodes the header. An unknown API key or a header that does not decode
/// closes the connection (there is no way to answer in a format the client
/// expects); a known API at an unsupported version is answered by the
/// handler (ApiVersions) or refused there.
fn parse_request(frame: Bytes, memory: Rc<RefCell<Reservation>>) -> Result<KafkaRequest, String> {
    let mut buf = frame.slice(4..);
    if buf.len() < REQUEST_BYTES_MIN - 4 {
        return Err("request too short".into());
    }
    let key = (&buf[0..2]).get_i16();
    let version = (&buf[2..4]).get_i16();
    let api_key = ApiKey::try_from(key).map_err(|_| format!("unknown API key {key}"))?;
    let header_version = if api_key == ApiKey::ApiVersions && version > versions::API_VERSIONS_MAX {
        // A client newer than us: read its header as the oldest flexible one
        // so we can answer with the versions we do support.
        2
    } else {
        api_key.request_header_version(version)
    };
    let header = RequestHeader::decode(&mut buf, header_version)
        .map_err(|e| format!("bad {api_key:?} v{version} request header: {e}"))?;
    Ok(KafkaRequest {
        api_key,
        version,
        header,
        body: buf,
        memory,
        records: None,
    })
}

/// Encodes a response: size, header (v0 for ApiVersions always), body.
pub fn encode_response<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Vec<Bytes>, String> {
    let header_version = match api_key {
        ApiKey::ApiVersions => 0,
        _ => api_key.response_header_version(version),
    };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = BytesMut::with_capacity(256);
    buf.extend_from_slice(&[0u8; 4]);
    header
        .encode(&mut buf, header_version)
        .and_then(|_| body.encode(&mut buf, version))
        .map_err(|e| format!("encoding {api_key:?} v{version} response: {e}"))?;
    let size = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(vec![buf.freeze()])
}
