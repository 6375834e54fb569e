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
    FetchRequest, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListOffsetsPartition, ListOffsetsPartitionResponse,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetCommitPartitionResponse,
    OffsetCommitRequest, OffsetFetchRequest, OffsetFetchResponse, ProducePartition,
    ProducePartitionResponse, ProduceRequest, Request, Response, ResponseBody, SyncGroupRequest,
    SyncGroupResponse, TopicResult,
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
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr} resolves to nothing"),
            )
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
            return Err(ClientError::Server {
                code: response.error,
                message,
            });
        }
        Ok(response.body)
    }

    /// Sends a request without waiting for its response; returns its
    /// correlation id. An `acks=0` produce has no response: nothing is
    /// expected for it, and the next [`Client::recv`] answers the request
    /// after it.
    pub fn send(&mut self, request: &Request) -> Result<u32, ClientError> {
        self.check_usable()?;
        let id = self.correlation_id_next;
        self.correlation_id_next = id.wrapping_add(1);
        let chunks = native::encode_request(id, request);
        if let Err(e) = write_all_chunks(&mut self.stream, &chunks) {
            self.broken = true;
            return Err(e.into());
        }
        let silent = matches!(request, Request::Produce(p) if p.acks == Acks::None);
        if !silent {
            self.in_flight.push_back(id);
        }
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
            return Err(ClientError::Decode(format!(
                "correlation id {got}, expected {expected}"
            )));
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
        let request = Request::Produce(ProduceRequest {
            acks,
            timeout_ms,
            partitions,
        });
        if acks == Acks::None {
            // The broker does not answer acks=0: nothing to wait for.
            self.send(&request)?;
            return Ok(Vec::new());
        }
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

    /// Joins (or rejoins) a consumer group. The answer's `error` is the
    /// coordinator's: MEMBER_ID_REQUIRED (79) asks to join again with the
    /// `member_id` it carries. The broker holds the answer until the
    /// rebalance completes, up to the rebalance timeout: a read timeout
    /// shorter than that breaks the connection.
    pub fn join_group(
        &mut self,
        request: JoinGroupRequest,
    ) -> Result<JoinGroupResponse, ClientError> {
        match self.call(&Request::JoinGroup(request))? {
            ResponseBody::JoinGroup(r) => Ok(r),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    /// Sends the leader's assignments (or a follower's empty list) and
    /// receives this member's assignment.
    pub fn sync_group(
        &mut self,
        request: SyncGroupRequest,
    ) -> Result<SyncGroupResponse, ClientError> {
        match self.call(&Request::SyncGroup(request))? {
            ResponseBody::SyncGroup(r) => Ok(r),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    /// Keeps a member alive; REBALANCE_IN_PROGRESS (27) says to rejoin.
    pub fn heartbeat(
        &mut self,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        match self.call(&Request::Heartbeat(request))? {
            ResponseBody::Heartbeat(r) => Ok(r),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    pub fn leave_group(
        &mut self,
        request: LeaveGroupRequest,
    ) -> Result<LeaveGroupResponse, ClientError> {
        match self.call(&Request::LeaveGroup(request))? {
            ResponseBody::LeaveGroup(r) => Ok(r),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    /// Commits offsets; acknowledged once they are durable.
    pub fn offset_commit(
        &mut self,
        request: OffsetCommitRequest,
    ) -> Result<Vec<OffsetCommitPartitionResponse>, ClientError> {
        match self.call(&Request::OffsetCommit(request))? {
            ResponseBody::OffsetCommit(r) => Ok(r.partitions),
            _ => Err(ClientError::UnexpectedResponse),
        }
    }

    /// A group's committed offsets (-1 where nothing is committed).
    pub fn offset_fetch(
        &mut self,
        request: OffsetFetchRequest,
    ) -> Result<OffsetFetchResponse, ClientError> {
        match self.call(&Request::OffsetFetch(request))? {
            ResponseBody::OffsetFetch(r) => Ok(r),
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
mod tests {
    //! The client against a fake server: a thread that decodes with
    //! `decode_request` and answers with `encode_response`.

    use std::collections::HashMap;
    use std::net::{TcpListener, TcpStream};
    use std::thread::{self, JoinHandle};

    use super::*;
    use crate::native::{FetchPartition, FetchResponse, ProduceResponse};

    const TEST_TIMEOUT: Duration = Duration::from_secs(5);

    /// What the fake server does with each request: answer it, or not.
    type Behaviour = Box<dyn FnMut(&mut TcpStream, u32, Request) -> bool + Send>;

    /// Serves one connection until `behaviour` says stop or the client goes.
    fn fake_server(mut behaviour: Behaviour) -> (String, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .set_read_timeout(Some(TEST_TIMEOUT))
                .expect("timeout");
            while let Ok(frame) = read_frame(&mut stream, native::FRAME_BYTES_MAX_DEFAULT) {
                let (id, request) = native::decode_request(frame).expect("valid request");
                if !behaviour(&mut stream, id, request) {
                    return;
                }
            }
        });
        (addr, handle)
    }

    fn reply(stream: &mut TcpStream, correlation_id: u32, body: ResponseBody) -> bool {
        let response = Response {
            correlation_id,
            error: ErrorCode::NONE,
            message: String::new(),
            body,
        };
        write_all_chunks(stream, &native::encode_response(&response)).is_ok()
    }

    /// A log per partition: produce appends, fetch returns everything.
    fn log_server() -> Behaviour {
        let mut logs: HashMap<(String, u32), Vec<u8>> = HashMap::new();
        Box::new(move |stream, id, request| {
            let body = match request {
                Request::Produce(r) => ResponseBody::Produce(append(&mut logs, r)),
                Request::Fetch(r) => ResponseBody::Fetch(read(&logs, r)),
                _ => ResponseBody::Metadata(MetadataResponse::default()),
            };
            reply(stream, id, body)
        })
    }

    fn append(logs: &mut HashMap<(String, u32), Vec<u8>>, r: ProduceRequest) -> ProduceResponse {
        let partitions = r.partitions.into_iter().map(|p| {
            let log = logs.entry((p.topic.clone(), p.partition)).or_default();
            let base_offset = log.len() as i64;
            log.extend_from_slice(&p.records);
            ProducePartitionResponse {
                topic: p.topic,
                partition: p.partition,
                error: ErrorCode::NONE,
                base_offset,
                log_start_offset: 0,
                error_message: None,
            }
        });
        ProduceResponse {
            partitions: partitions.collect(),
        }
    }

    fn read(logs: &HashMap<(String, u32), Vec<u8>>, r: FetchRequest) -> FetchResponse {
        let partitions = r.partitions.into_iter().map(|p| {
            let log = logs.get(&(p.topic.clone(), p.partition));
            let (error, records) = match log {
                Some(log) => (ErrorCode::NONE, vec![Bytes::copy_from_slice(log)]),
                None => (ErrorCode::UNKNOWN_TOPIC_OR_PARTITION, vec![]),
            };
            let end = log.map_or(0, |l| l.len() as i64);
            FetchPartitionResponse {
                topic: p.topic,
                partition: p.partition,
                error,
                high_watermark: end,
                log_start_offset: 0,
                log_end_offset: end,
                records,
            }
        });
        FetchResponse {
            partitions: partitions.collect(),
        }
    }

    fn connect(addr: &str) -> Client {
        let client = Client::connect(addr).expect("connect");
        client
            .set_read_timeout(Some(TEST_TIMEOUT))
            .expect("timeout");
        client
    }

    fn fetch_all(topic: &str, partition: u32) -> FetchRequest {
        let p = FetchPartition {
            topic: topic.into(),
            partition,
            offset: 0,
            max_bytes: 1 << 20,
        };
        FetchRequest {
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 1 << 20,
            partitions: vec![p],
        }
    }

    #[test]
    fn produce_then_fetch_round_trips_records() {
        let (addr, server) = fake_server(log_server());
        let mut client = connect(&addr);
        for (i, records) in ["first", "second"].into_iter().enumerate() {
            let records = Bytes::from(records);
            let p = ProducePartition {
                topic: "t".into(),
                partition: 2,
                records,
            };
            let results = client.produce(Acks::All, 1000, vec![p]).expect("produce");
            assert_eq!(results.len(), 1);
            assert_eq!(results[0].base_offset, [0, 5][i]);
        }
        let fetched = client.fetch(fetch_all("t", 2)).expect("fetch");
        assert_eq!(fetched[0].records, vec![Bytes::from("firstsecond")]);
        let missing = client.fetch(fetch_all("nope", 0)).expect("fetch");
        assert_eq!(missing[0].error, ErrorCode::UNKNOWN_TOPIC_OR_PARTITION);
        drop(client);
        server.join().expect("server");
    }

    #[test]
    fn pipelined_responses_arrive_in_request_order() {
        let (addr, server) = fake_server(log_server());
        let mut client = connect(&addr);
        let request = Request::Metadata(MetadataRequest::default());
        let ids: Vec<u32> = (0..3)
            .map(|_| client.send(&request).expect("send"))
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        for id in ids {
            assert_eq!(client.recv().expect("recv").correlation_id, id);
        }
        drop(client);
        server.join().expect("server");
    }

    #[test]
    fn whole_request_error_is_a_server_error() {
        let (addr, server) = fake_server(Box::new(|stream, id, _| {
            let chunks = native::encode_error_response(id, ErrorCode::INVALID_REQUEST, "no");
            write_all_chunks(stream, &chunks).is_ok()
        }));
        let mut client = connect(&addr);
        match client.metadata(vec![]) {
            Err(ClientError::Server { code, message }) => {
                assert_eq!((code, message.as_str()), (ErrorCode::INVALID_REQUEST, "no"));
            }
            other => panic!("{other:?}"),
        }
        drop(client);
        server.join().expect("server");
    }

    #[test]
    fn response_for_another_kind_of_request_is_unexpected() {
        let (addr, server) = fake_server(log_server());
        let mut client = connect(&addr);
        let result = client.list_offsets(vec![]);
        assert!(
            matches!(result, Err(ClientError::UnexpectedResponse)),
            "{result:?}"
        );
        drop(client);
        server.join().expect("server");
    }

    #[test]
    fn server_closing_mid_response_is_an_io_error_not_a_hang() {
        let (addr, server) = fake_server(Box::new(|stream, id, _| {
            let response = Response::error(id, ErrorCode::NONE, "a message long enough");
            let frame = native::encode_response(&response).concat();
            let _ = stream.write_all(&frame[..frame.len() / 2]);
            false
        }));
        let mut client = connect(&addr);
        let result = client.metadata(vec![]);
        assert!(
            matches!(&result, Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
        let again = client.metadata(vec![]);
        assert!(
            matches!(&again, Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::NotConnected)
        );
        server.join().expect("server");
    }

    #[test]
    fn silent_server_times_out() {
        let (addr, server) = fake_server(Box::new(|_, _, _| true));
        let mut client = connect(&addr);
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let result = client.metadata(vec![]);
        assert!(matches!(result, Err(ClientError::Io(_))), "{result:?}");
        drop(client);
        server.join().expect("server");
    }

    #[test]
    fn response_over_the_frame_bound_is_an_error() {
        let (addr, server) = fake_server(log_server());
        let mut client = connect(&addr);
        client.set_max_frame_bytes(native::FRAME_BYTES_MIN);
        let result = client.metadata(vec![]);
        assert!(
            matches!(&result, Err(ClientError::Io(e)) if e.kind() == io::ErrorKind::InvalidData)
        );
        drop(client);
        server.join().expect("server");
    }

    #[test]
    fn write_all_chunks_survives_short_writes() {
        /// Accepts at most 3 bytes a call.
        struct Trickle(Vec<u8>);
        impl Write for Trickle {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(3);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let chunks = [
            Bytes::from("hello"),
            Bytes::new(),
            Bytes::from("wo"),
            Bytes::from("rld"),
        ];
        let mut sink = Trickle(Vec::new());
        write_all_chunks(&mut sink, &chunks).expect("write");
        assert_eq!(sink.0, b"helloworld");
    }
}
