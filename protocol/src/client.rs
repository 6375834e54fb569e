//! A blocking client for the native protocol, used by the `sluice` CLI,
//! `sluice-bench` and the tests.
//!
//! One [`Client`] is one TCP connection (with `TCP_NODELAY`). Correlation ids
//! increase from 1; the broker answers a connection's requests in the order
//! they were sent, so [`Client::send`] and [`Client::recv`] pipeline: send
//! several, then receive as many, and each response is checked against the
//! id it should carry. [`Client::call`] and the typed helpers do one round
//! trip each.
//!
//! Frames are read with a bound ([`Client::set_max_frame_bytes`]) and into a
//! buffer that grows only as bytes arrive, so a lying length prefix costs
//! nothing. After an I/O or decode error the connection's framing is lost and
//! every later call fails: make a new client.
//!
//! ```no_run
//! use bytes::Bytes;
//! use sluice_protocol::client::Client;
//! use sluice_protocol::native::{Acks, ProducePartition};
//!
//! let mut client = Client::connect("127.0.0.1:9192")?;
//! let batch = Bytes::new(); // Kafka record batches, e.g. from `batch`
//! let records = vec![ProducePartition { topic: "t".into(), partition: 0, records: batch }];
//! let results = client.produce(Acks::Leader, 5_000, records)?;
//! println!("base offset {}", results[0].base_offset);
//! # Ok::<(), sluice_protocol::client::ClientError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::Bytes;

use crate::native::{
    self, Acks, CreateTopic, CreateTopicsRequest, DeleteTopicsRequest, FetchPartitionResponse,
    FetchRequest, ListOffsetsPartition, ListOffsetsPartitionResponse, ListOffsetsRequest,
    MetadataRequest, MetadataResponse, ProducePartition, ProducePartitionResponse,
    ProduceRequest, Request, Response, ResponseBody, TopicResult,
};
use crate::ErrorCode;

/// How long [`Client::connect`] waits for each address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum ClientError {
    /// The connection failed, timed out or closed.
    Io(io::Error),
    /// A frame from the server could not be decoded, or answered the wrong
    /// request.
    Decode(String),
    /// The server failed the whole request.
    Server { code: ErrorCode, message: String },
    /// The response's body is not for the kind of request sent.
    UnexpectedResponse,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "connection: {e}"),
            ClientError::Decode(e) => write!(f, "bad response: {e}"),
            ClientError::Server { code, message } => write!(f, "server: {code}: {message}"),
            ClientError::UnexpectedResponse => f.write_str("response is for another request"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// One connection to a broker's native listener.
pub struct Client {
    stream: TcpStream,
    correlation_id_next: u32,
    /// Ids sent and not yet answered, oldest first.
    in_flight: VecDeque<u32>,
    max_frame_bytes: usize,
    /// Set after an error that loses the stream's framing.
    broken: bool,
}

impl Client {
    /// Connects to `addr` (`host:port`), trying each address it resolves to
    /// for up to [`CONNECT_TIMEOUT`].
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        let mut last_error = None;
        for socket_addr in addr.to_socket_addrs()? {
            match TcpStream::connect_timeout(&socket_addr, CONNECT_TIMEOUT) {
                Ok(stream) => return Client::from_stream(stream),
                Err(e) => last_error = Some(e),
            }
        }
        let e = last_error.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{addr} resolves to nothing"))
        });
        Err(ClientError::Io(e))
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: TcpStream) -> Result<Client, ClientError> {
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            correlation_id_next: 1,
            in_flight: VecDeque::new(),
            max_frame_bytes: native::FRAME_BYTES_MAX_DEFAULT,
            broken: false,
        })
    }

    /// Bounds how long a read may wait (`None`: forever, the default). A
    /// timeout is an [`ClientError::Io`] and breaks the connection.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Bounds the size of a response frame (default
    /// [`native::FRAME_BYTES_MAX_DEFAULT`]).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Sends a request and receives its response; a whole-request error is
    /// [`ClientError::Server`].
    pub fn call(&mut self, request: &Request) -> Result<ResponseBody, ClientError> {
        self.send(request)?;
        let response = self.recv()?;
        if !response.error.is_ok() {
            let message = response.message;
            return Err(ClientError::Server { code: response.error, message });
        }
        Ok(response.body)
    }

    /// Sends a request without waiting for its response; returns its
    /// correlation id.
    pub fn send(&mut self, request: &Request) -> Result<u32, ClientError> {
        self.check_usable()?;
        let id = self.correlation_id_next;
        self.correlation_id_next = id.wrapping_add(1);
        let chunks = native::encode_request(id, request);
        if let Err(e) = write_all_chunks(&mut self.stream, &chunks) {
            self.broken = true;
            return Err(e.into());
        }
        self.in_flight.push_back(id);
        Ok(id)
    }

    /// Receives the response to the oldest request sent and not yet
    /// received.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        self.check_usable()?;
        let Some(&expected) = self.in_flight.front() else {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "no request in flight");
            return Err(ClientError::Io(e));
        };
        let result = self.read_response(expected);
        if result.is_err() {
            self.broken = true;
        }
        self.in_flight.pop_front();
        result
    }

    fn read_response(&mut self, expected: u32) -> Result<Response, ClientError> {
        let frame = read_frame(&mut self.stream, self.max_frame_bytes)?;
        let response =
            native::decode_response(frame).map_err(|e| ClientError::Decode(e.to_string()))?;
        if response.correlation_id != expected {
            let got = response.correlation_id;
            return Err(ClientError::Decode(format!("correlation id {got}, expected {expected}")));
        }
        Ok(response)
    }

    fn check_usable(&self) -> Result<(), ClientError> {
        if self.broken {
            let e = io::Error::new(io::ErrorKind::NotConnected, "connection broken by an error");
            return Err(ClientError::Io(e));
        }
        Ok(())
    }

    pub fn produce(
        &mut self,
        acks: Acks,
        timeout_ms: u32,
        partitions: Vec<ProducePartition>,
    ) -> Result<Vec<ProducePartitionResponse>, ClientError> {
        let request = Request::Produce(ProduceRequest { acks, timeout_ms, partitions });
        match self.call(&request)? {
            ResponseBody::Produce(r) => Ok(r.partitions),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    pub fn fetch(
        &mut self,
        request: FetchRequest,
    ) -> Result<Vec<FetchPartitionResponse>, ClientError> {
        match self.call(&Request::Fetch(request))? {
            ResponseBody::Fetch(r) => Ok(r.partitions),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    pub fn list_offsets(
        &mut self,
        partitions: Vec<ListOffsetsPartition>,
    ) -> Result<Vec<ListOffsetsPartitionResponse>, ClientError> {
        match self.call(&Request::ListOffsets(ListOffsetsRequest { partitions }))? {
            ResponseBody::ListOffsets(r) => Ok(r.partitions),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    pub fn create_topics(
        &mut self,
        topics: Vec<CreateTopic>,
    ) -> Result<Vec<TopicResult>, ClientError> {
        match self.call(&Request::CreateTopics(CreateTopicsRequest { topics }))? {
            ResponseBody::CreateTopics(r) => Ok(r.topics),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    pub fn delete_topics(&mut self, names: Vec<String>) -> Result<Vec<TopicResult>, ClientError> {
        match self.call(&Request::DeleteTopics(DeleteTopicsRequest { names }))? {
            ResponseBody::DeleteTopics(r) => Ok(r.topics),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    /// Metadata of `topics`, or of every topic when `topics` is empty.
    pub fn metadata(&mut self, topics: Vec<String>) -> Result<MetadataResponse, ClientError> {
        match self.call(&Request::Metadata(MetadataRequest { topics }))? {
            ResponseBody::Metadata(r) => Ok(r),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }
}

/// Writes every chunk, with as few system calls as the kernel allows.
pub(crate) fn write_all_chunks(stream: &mut impl Write, chunks: &[Bytes]) -> io::Result<()> {
    let mut index = 0; // the first chunk not wholly written
    let mut offset = 0; // bytes of chunks[index] already written
    while index < chunks.len() {
        let mut slices = Vec::with_capacity(chunks.len() - index);
        slices.push(IoSlice::new(&chunks[index][offset..]));
        slices.extend(chunks[index + 1..].iter().map(|c| IoSlice::new(c)));
        let mut written = match stream.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while index < chunks.len() && written >= chunks[index].len() - offset {
            written -= chunks[index].len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    stream.flush()
}

/// Reads one whole frame (prefix included) of at most `max_frame_bytes`.
/// The buffer grows only as bytes arrive, whatever the prefix claims.
pub(crate) fn read_frame(stream: &mut impl Read, max_frame_bytes: usize) -> io::Result<Bytes> {
    let mut prefix = [0u8; native::FRAME_PREFIX_BYTES];
    stream.read_exact(&mut prefix)?;
    let frame_bytes = match native::frame_len(&prefix, max_frame_bytes) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(io::ErrorKind::UnexpectedEof.into()),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let mut frame = Vec::with_capacity(frame_bytes.min(FRAME_READ_RESERVE_BYTES));
    frame.extend_from_slice(&prefix);
    let rest = (frame_bytes - prefix.len()) as u64;
    let read = stream.take(rest).read_to_end(&mut frame)?;
    if read as u64 != rest {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from(frame))
}

/// What a frame's buffer starts with before bytes arrive.
const FRAME_READ_RESERVE_BYTES: usize = 64 * 1024;

#[cfg(test)]
mod tests;
