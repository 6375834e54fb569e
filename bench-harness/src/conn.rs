//! A connection the generator can wait on: a blocking client (native
//! [`Client`] or [`KafkaClient`]) plus its socket's descriptor, so one
//! thread can wait for whichever of its connections answers first (`ppoll`)
//! and time each answer when it arrives, not when the thread gets round to
//! it.
//!
//! Both clients read straight from the socket (no user-space buffer), so
//! "readable" means the next response has started to arrive.
//!
//! The produce, fetch and list-offsets calls here are the only places that
//! know which protocol is spoken: the producer and consumer threads see
//! record batches and partition numbers only.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{fetch_request, list_offsets_request, produce_request, ApiKey};
use sluice_protocol::client::{Client, CONNECT_TIMEOUT};
use sluice_protocol::native::{
    Acks, FetchPartition, FetchRequest, ListOffsetsPartition, ProducePartition, ProduceRequest,
    Request, ResponseBody,
};

use crate::consume::Cursor;
use crate::error::{kafka_error, BenchError};
use crate::kafka::{self, KafkaClient};
use crate::Protocol;

/// How long a broker may wait before answering a produce.
const PRODUCE_TIMEOUT_MS: u32 = 30_000;

/// The longest a thread waits for any response before it gives up.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

enum Wire {
    Native(Box<Client>),
    Kafka(Box<KafkaClient>),
}

pub struct Conn {
    wire: Wire,
    fd: RawFd,
}

impl Conn {
    /// The socket, to wait on.
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

/// One partition's part of a fetch response.
pub struct Fetched {
    pub partition: u32,
    /// Why the partition could not be read, if it could not.
    pub error: Option<String>,
    /// Record batches, concatenated; the last may be cut short.
    pub chunks: Vec<Bytes>,
}

/// A TCP connection to the first address `addr` resolves to that answers.
pub fn connect_stream(addr: &str) -> Result<TcpStream, BenchError> {
    let failed = |e: std::io::Error| BenchError::new(format!("connecting to {addr}: {e}"));
    let mut last = None;
    for socket_addr in addr.to_socket_addrs().map_err(failed)? {
        match TcpStream::connect_timeout(&socket_addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    let e = last.unwrap_or_else(|| std::io::Error::other("resolves to nothing"));
    Err(failed(e))
}

impl Conn {
    pub fn connect(addr: &str, protocol: Protocol) -> Result<Conn, BenchError> {
        let stream = connect_stream(addr)?;
        let fd = stream.as_raw_fd();
        let wire = match protocol {
            Protocol::Native => Wire::Native(Box::new(Client::from_stream(stream)?)),
            Protocol::Kafka => Wire::Kafka(Box::new(
                KafkaClient::from_stream(stream)
                    .map_err(|e| e.context(&format!("Kafka handshake with {addr}")))?,
            )),
        };
        Ok(Conn { wire, fd })
    }

    /// Sends one record batch to `partition`. With acks=0 no answer comes.
    pub fn send_produce(
        &mut self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: Vec<u8>,
    ) -> Result<(), BenchError> {
        match &mut self.wire {
            Wire::Native(client) => {
                let request = Request::Produce(ProduceRequest {
                    acks,
                    timeout_ms: PRODUCE_TIMEOUT_MS,
                    partitions: vec![ProducePartition {
                        topic: topic.to_owned(),
                        partition,
                        records: Bytes::from(batch),
                    }],
                });
                client.send(&request)?;
                Ok(())
            }
            Wire::Kafka(client) => {
                let data = produce_request::PartitionProduceData::default()
                    .with_index(i32::try_from(partition).unwrap_or(i32::MAX))
                    .with_records(Some(Bytes::from(batch)));
                let request = kafka_protocol::messages::ProduceRequest::default()
                    .with_acks(kafka_acks(acks))
                    .with_timeout_ms(i32::try_from(PRODUCE_TIMEOUT_MS).unwrap_or(i32::MAX))
                    .with_topic_data(vec![produce_request::TopicProduceData::default()
                        .with_name(kafka::topic_name(topic))
                        .with_partition_data(vec![data])]);
                if acks == Acks::None {
                    client.send_unanswered(&request)
                } else {
                    client.send(ApiKey::Produce, &request)
                }
            }
        }
    }

    /// Reads the oldest produce answer; an error if any partition failed.
    pub fn recv_produce(&mut self) -> Result<(), BenchError> {
        match &mut self.wire {
            Wire::Native(client) => {
                let response = client.recv()?;
                if !response.error.is_ok() {
                    return Err(BenchError::new(format!(
                        "produce failed: {}: {}",
                        response.error, response.message
                    )));
                }
                let ResponseBody::Produce(body) = response.body else {
                    return Err(BenchError::new(
                        "a produce was answered with another response",
                    ));
                };
                match body.partitions.iter().find(|r| !r.error.is_ok()) {
                    Some(failed) => Err(BenchError::new(format!(
                        "produce to {} partition {}: {}",
                        failed.topic, failed.partition, failed.error
                    ))),
                    None => Ok(()),
                }
            }
            Wire::Kafka(client) => {
                let kafka::Response::Produce(body) = client.recv()? else {
                    return Err(BenchError::new(
                        "a produce was answered with another response",
                    ));
                };
                for t in &body.responses {
                    for p in &t.partition_responses {
                        if p.error_code != 0 {
                            return Err(BenchError::new(format!(
                                "produce to {} partition {}: {}{}",
                                t.name.0.as_str(),
                                p.index,
                                kafka_error(p.error_code),
                                p.error_message
                                    .as_ref()
                                    .map(|m| format!(" ({})", m.as_str()))
                                    .unwrap_or_default()
                            )));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Sends a fetch of every cursor's partition from its next offset
    /// (Kafka: sessionless, session id 0 and epoch -1).
    pub fn send_fetch(
        &mut self,
        topic: &str,
        cursors: &[Cursor],
        fetch_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<(), BenchError> {
        let parts = u32::try_from(cursors.len()).unwrap_or(u32::MAX);
        // At most 64 MiB in all, however many partitions.
        let max_bytes = fetch_bytes.saturating_mul(parts).min(64 << 20);
        match &mut self.wire {
            Wire::Native(client) => {
                let partitions = cursors
                    .iter()
                    .map(|c| FetchPartition {
                        topic: topic.to_owned(),
                        partition: c.partition,
                        offset: c.next,
                        max_bytes: fetch_bytes,
                    })
                    .collect();
                client.send(&Request::Fetch(FetchRequest {
                    max_wait_ms,
                    min_bytes: 1,
                    max_bytes,
                    partitions,
                }))?;
                Ok(())
            }
            Wire::Kafka(client) => {
                let partitions = cursors
                    .iter()
                    .map(|c| {
                        fetch_request::FetchPartition::default()
                            .with_partition(i32::try_from(c.partition).unwrap_or(i32::MAX))
                            .with_current_leader_epoch(-1)
                            .with_fetch_offset(c.next)
                            .with_last_fetched_epoch(-1)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(
                                i32::try_from(fetch_bytes).unwrap_or(i32::MAX),
                            )
                    })
                    .collect();
                let request = kafka_protocol::messages::FetchRequest::default()
                    .with_replica_id(kafka::broker_id(-1))
                    .with_max_wait_ms(i32::try_from(max_wait_ms).unwrap_or(i32::MAX))
                    .with_min_bytes(1)
                    .with_max_bytes(i32::try_from(max_bytes).unwrap_or(i32::MAX))
                    .with_isolation_level(0)
                    .with_session_id(0)
                    .with_session_epoch(-1)
                    .with_topics(vec![fetch_request::FetchTopic::default()
                        .with_topic(kafka::topic_name(topic))
                        .with_partitions(partitions)]);
                client.send(ApiKey::Fetch, &request)
            }
        }
    }

    /// Reads the oldest fetch answer.
    pub fn recv_fetch(&mut self) -> Result<Vec<Fetched>, BenchError> {
        match &mut self.wire {
            Wire::Native(client) => {
                let response = client.recv()?;
                if !response.error.is_ok() {
                    return Err(BenchError::new(format!(
                        "fetch failed: {}: {}",
                        response.error, response.message
                    )));
                }
                let ResponseBody::Fetch(body) = response.body else {
                    return Err(BenchError::new(
                        "a fetch was answered with another response",
                    ));
                };
                Ok(body
                    .partitions
                    .into_iter()
                    .map(|p| Fetched {
                        partition: p.partition,
                        error: (!p.error.is_ok()).then(|| p.error.to_string()),
                        chunks: p.records,
                    })
                    .collect())
            }
            Wire::Kafka(client) => {
                let kafka::Response::Fetch(body) = client.recv()? else {
                    return Err(BenchError::new(
                        "a fetch was answered with another response",
                    ));
                };
                if body.error_code != 0 {
                    return Err(BenchError::new(format!(
                        "fetch failed: {}",
                        kafka_error(body.error_code)
                    )));
                }
                let mut out = Vec::new();
                for t in body.responses {
                    for p in t.partitions {
                        out.push(Fetched {
                            partition: u32::try_from(p.partition_index).map_err(|_| {
                                BenchError::new("a fetch answer for a negative partition")
                            })?,
                            error: (p.error_code != 0).then(|| kafka_error(p.error_code)),
                            chunks: p.records.into_iter().collect(),
                        });
                    }
                }
                Ok(out)
            }
        }
    }

    /// The offsets of `partitions` at `timestamp` (earliest -2 or latest
    /// -1), in order.
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[u32],
        timestamp: i64,
    ) -> Result<Vec<i64>, BenchError> {
        let listed: Vec<(u32, Result<i64, String>)> = match &mut self.wire {
            Wire::Native(client) => {
                let request = partitions.iter().map(|&partition| ListOffsetsPartition {
                    topic: topic.to_owned(),
                    partition,
                    timestamp,
                });
                client
                    .list_offsets(request.collect())?
                    .into_iter()
                    .map(|o| {
                        let r = if o.error.is_ok() {
                            Ok(o.offset)
                        } else {
                            Err(o.error.to_string())
                        };
                        (o.partition, r)
                    })
                    .collect()
            }
            Wire::Kafka(client) => {
                let ps = partitions
                    .iter()
                    .map(|&p| {
                        list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(i32::try_from(p).unwrap_or(i32::MAX))
                            .with_current_leader_epoch(-1)
                            .with_timestamp(timestamp)
                    })
                    .collect();
                let request = kafka_protocol::messages::ListOffsetsRequest::default()
                    .with_replica_id(kafka::broker_id(-1))
                    .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                        .with_name(kafka::topic_name(topic))
                        .with_partitions(ps)]);
                client.send(ApiKey::ListOffsets, &request)?;
                let kafka::Response::ListOffsets(body) = client.recv()? else {
                    return Err(BenchError::new(
                        "ListOffsets answered with another response",
                    ));
                };
                body.topics
                    .into_iter()
                    .flat_map(|t| t.partitions)
                    .map(|p| {
                        let r = if p.error_code == 0 {
                            Ok(p.offset)
                        } else {
                            Err(kafka_error(p.error_code))
                        };
                        (u32::try_from(p.partition_index).unwrap_or(u32::MAX), r)
                    })
                    .collect()
            }
        };
        partitions
            .iter()
            .map(|&p| match listed.iter().find(|(q, _)| *q == p) {
                Some((_, Ok(offset))) => Ok(*offset),
                Some((_, Err(e))) => Err(BenchError::new(format!("{topic} partition {p}: {e}"))),
                None => Err(BenchError::new(format!(
                    "{topic} partition {p}: no offset listed"
                ))),
            })
            .collect()
    }
}

fn kafka_acks(acks: Acks) -> i16 {
    match acks {
        Acks::None => 0,
        Acks::Leader => 1,
        Acks::All => -1,
    }
}

/// Waits until any of `fds` is readable, or `timeout` passes; returns the
/// indexes (into `fds`) of the readable ones, empty on timeout. With
/// nothing to watch it just sleeps.
pub fn wait_readable(fds: &[RawFd], timeout: Duration) -> Result<Vec<usize>, BenchError> {
    if fds.is_empty() {
        std::thread::sleep(timeout);
        return Ok(Vec::new());
    }
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos() as libc::c_long, // < 10^9: fits
    };
    // SAFETY: `polled` is a live, exclusively borrowed array of
    // `polled.len()` pollfds and `ts` a valid timespec; a null sigmask
    // leaves the signal mask unchanged. The descriptors belong to clients
    // the caller holds, which outlive the call.
    let n = unsafe {
        libc::ppoll(
            polled.as_mut_ptr(),
            polled.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(BenchError::new(format!("ppoll: {e}")));
    }
    // POLLHUP and POLLERR count as readable: the read then reports why.
    Ok(polled
        .iter()
        .enumerate()
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect())
}
