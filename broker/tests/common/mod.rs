//! A real `sluice` broker process for end-to-end tests: started on free
//! loopback ports with its own data directory, killed or stopped on demand.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_protocol::batch::BatchBuilder;
use sluice_protocol::client::Client;
use sluice_protocol::native::CreateTopic;
use sluice_protocol::ErrorCode;

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

pub struct Broker {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub native_port: u16,
    /// The Kafka listener; the metrics listener is the port after it, and
    /// each shard's own Kafka port follows (up to 8 shards).
    pub kafka_port: u16,
    pub shard_port_base: u16,
    pub shards: u32,
}

/// `count` consecutive free ports, below the kernel's ephemeral range so no
/// client connection can be holding one, and spread by process and time so
/// tests running at once pick different ranges.
fn free_ports(count: u16) -> u16 {
    let seed = std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    for attempt in 0..500u64 {
        let base = 20_000 + ((seed + attempt * 104_729) % 12_000) as u16;
        let held: Vec<_> = (0..count)
            .map_while(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == count as usize {
            return base;
        }
    }
    panic!("no free port range");
}

impl Broker {
    /// Starts a broker with `shards` shards on a fresh data directory.
    pub fn start(data_dir: &Path, shards: u32) -> Broker {
        Self::start_with(data_dir, shards, "")
    }

    /// Starts a broker whose stdout and stderr are `/dev/full`: every write
    /// to them fails with ENOSPC, as when the disk under a redirected log
    /// is full. It is ready once its native listener creates a topic.
    pub fn start_with_unwritable_output(data_dir: &Path, shards: u32) -> Broker {
        let mut b = Self::configure(data_dir, shards, "");
        let full = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("open /dev/full")
        };
        let mut child = b
            .serve_command()
            .stdout(full())
            .stderr(full())
            .spawn()
            .expect("start sluice");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("the broker exited during start-up with its log unwritable: {status}");
            }
            let created = Client::connect(&b.addr()).ok().and_then(|mut c| {
                c.create_topics(vec![CreateTopic {
                    name: "ready".into(),
                    partitions: 1,
                    configs: vec![],
                }])
                .ok()
            });
            if created.is_some_and(|r| r[0].error == ErrorCode::NONE) {
                break;
            }
            assert!(Instant::now() < deadline, "broker not ready within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        b.child = Some(child);
        b
    }

    /// Starts a broker; `extra_toml` is appended to its config file.
    pub fn start_with(data_dir: &Path, shards: u32, extra_toml: &str) -> Broker {
        let mut b = Self::configure(data_dir, shards, extra_toml);
        b.spawn();
        b
    }

    /// A broker's ports and config file, not started.
    fn configure(data_dir: &Path, shards: u32, extra_toml: &str) -> Broker {
        // Room for restarts with up to 8 shards.
        let base = free_ports(20);
        let config = data_dir.with_extension("toml");
        let b = Broker {
            child: None,
            data_dir: data_dir.to_path_buf(),
            config,
            native_port: base,
            kafka_port: base + 9,
            shard_port_base: base + 1,
            shards,
        };
        b.write_config(extra_toml);
        b
    }

    fn write_config(&self, extra: &str) {
        let (broker_extra, log_extra) = extra.split_once("[log]").unwrap_or((extra, ""));
        // Small buffers by default; a test may set its own.
        let small: String = [
            ("tail_cache_bytes", "8388608"),
            ("io_memory_bytes", "4194304"),
            ("shutdown_timeout_ms", "5000"),
        ]
        .iter()
        .filter(|(k, _)| !broker_extra.contains(k))
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
        let text = format!(
            "[broker]\nnative_addr = \"127.0.0.1:{}\"\nnative_shard_port_base = {}\n\
             kafka_addr = \"127.0.0.1:{}\"\nmetrics_addr = \"127.0.0.1:{}\"\n\
             kafka_shard_port_base = {}\n{small}{}\n\
             [log]\n{}\n",
            self.native_port,
            self.shard_port_base,
            self.kafka_port,
            self.kafka_port + 1,
            self.kafka_port + 2,
            broker_extra,
            log_extra
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    /// `sluice serve` with this broker's config, data and shards.
    fn serve_command(&self) -> Command {
        let mut c = Command::new(SLUICE);
        c.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--shards")
            .arg(self.shards.to_string())
            .env("RUST_LOG", "info");
        c
    }

    /// Starts the process and waits for its ready line.
    pub fn spawn(&mut self) {
        let mut child = self
            .serve_command()
            .stdout(Stdio::piped())
            .stderr(self.log_file())
            .spawn()
            .expect("start sluice");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("sluice ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let status = child.wait();
            let log =
                std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
            let ss = Command::new("ss")
                .arg("-tlnp")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            let ss = String::from_utf8_lossy(&ss);
            panic!("broker did not become ready: {status:?}\n{log}\nlisteners:\n{ss}");
        }
        self.child = Some(child);
    }

    /// The broker's log (stderr), appended across restarts.
    fn log_file(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("broker log file")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.native_port)
    }

    pub fn client(&self) -> Client {
        let c = Client::connect(&self.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        c
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "broker ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn create_topic(&self, name: &str, partitions: u32) {
        let r = self
            .client()
            .create_topics(vec![CreateTopic {
                name: name.into(),
                partitions,
                configs: vec![],
            }])
            .expect("create");
        assert_eq!(r[0].error, ErrorCode::NONE, "{}", r[0].message);
    }

    pub fn run_cli(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(SLUICE)
            .args(args)
            .arg("--bootstrap")
            .arg(self.addr())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cli");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("cli output");
        let _ = writer.join();
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One uncompressed batch of `values`, timestamped now.
pub fn batch_of(values: &[&[u8]]) -> bytes::Bytes {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut b = BatchBuilder::new(now);
    for v in values {
        b.push(now, None, Some(v), &[]);
    }
    bytes::Bytes::from(b.finish())
}

/// Every (offset, value) in a fetched chunk list, skipping records before `from`.
pub fn decode_values(chunks: &[bytes::Bytes], from: i64) -> Vec<(i64, Vec<u8>)> {
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut out = Vec::new();
    for item in sluice_protocol::batch::split(&joined) {
        let (range, _) = item.expect("whole batches");
        let batch = &joined[range];
        sluice_protocol::batch::validate(batch).expect("valid batch from the broker");
        for r in sluice_protocol::batch::records(batch).expect("uncompressed") {
            let r = r.expect("record");
            if r.offset >= from {
                out.push((r.offset, r.value.map(|v| v.to_vec()).unwrap_or_default()));
            }
        }
    }
    out
}

/// Sums a metric over the shards (or reads an unlabelled one) from the
/// Prometheus text at `port`.
pub fn scrape(port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()))
        .sum()
}

/// Every (offset, value) of `topic`/`partition` from `from` to the log end,
/// fetched in steps of `step_bytes` per partition; `when` names the moment
/// in failure messages.
pub fn fetch_all(
    client: &mut Client,
    topic: &str,
    partition: u32,
    from: i64,
    step_bytes: u32,
    when: &str,
) -> Vec<(i64, Vec<u8>)> {
    use sluice_protocol::native::{FetchPartition, FetchRequest};
    let mut out = Vec::new();
    let mut offset = from;
    for _ in 0..100_000 {
        let r = client
            .fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: step_bytes.max(1 << 20),
                partitions: vec![FetchPartition {
                    topic: topic.into(),
                    partition,
                    offset,
                    max_bytes: step_bytes,
                }],
            })
            .expect("fetch");
        assert_eq!(
            r[0].error,
            ErrorCode::NONE,
            "fetch {topic}/{partition} at {offset} {when}"
        );
        let values = decode_values(&r[0].records, offset);
        let Some(last) = values.last() else {
            return out;
        };
        offset = last.0 + 1;
        out.extend(values);
    }
    panic!("fetch of {topic}/{partition} did not reach the end {when}");
}

/// A memory figure of process `pid` from /proc/PID/status (`VmRSS`,
/// `VmHWM`), in bytes.
pub fn proc_memory_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib * 1024
}

/// Sends one Produce v9 of `batches` ((partition, batch)) to `topic` over a
/// plain socket to a Kafka listener and returns (partition, error code, base
/// offset) per partition, or `None` if the connection failed or the answer
/// did not decode (the crash test expects that when the broker dies).
pub fn kafka_produce(
    stream: &mut std::net::TcpStream,
    correlation_id: i32,
    topic: &str,
    acks: i16,
    batches: &[(i32, bytes::Bytes)],
) -> Option<Vec<(i32, i16, i64)>> {
    use bytes::BufMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use std::io::{Read, Write};
    let partitions = batches
        .iter()
        .map(|(p, b)| {
            PartitionProduceData::default()
                .with_index(*p)
                .with_records(Some(b.clone()))
        })
        .collect();
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
        .with_partition_data(partitions);
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![topic]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(correlation_id);
    let mut buf = bytes::BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, 2).ok()?;
    request.encode(&mut buf, 9).ok()?;
    let size = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    stream.write_all(&buf).ok()?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    stream.read_exact(&mut body).ok()?;
    let mut body = bytes::Bytes::from(body);
    ResponseHeader::decode(&mut body, 1).ok()?;
    let response = ProduceResponse::decode(&mut body, 9).ok()?;
    let answers = response
        .responses
        .iter()
        .flat_map(|t| &t.partition_responses);
    Some(
        answers
            .map(|p| (p.index, p.error_code, p.base_offset))
            .collect(),
    )
}

/// One member joins `group` over the native protocol (KIP-394: a first join
/// without a member id, then one with the id it was given) with
/// `session_timeout_ms`, and syncs as its leader with no assignments; returns
/// its join answer (member id and generation).
pub fn join_alone(
    c: &mut Client,
    group: &str,
    session_timeout_ms: i32,
) -> sluice_protocol::native::JoinGroupResponse {
    use sluice_protocol::native::{GroupProtocol, JoinGroupRequest, SyncGroupRequest};
    let join = |c: &mut Client, member: &str| {
        c.join_group(JoinGroupRequest {
            group_id: group.into(),
            session_timeout_ms,
            rebalance_timeout_ms: 10_000,
            member_id: member.into(),
            group_instance_id: None,
            protocol_type: "consumer".into(),
            protocols: vec![GroupProtocol {
                name: "range".into(),
                metadata: bytes::Bytes::from_static(b"subscription"),
            }],
            client_id: "join-alone".into(),
        })
        .expect("join")
    };
    let first = join(c, "");
    let joined = join(c, &first.member_id);
    assert_eq!(joined.error, ErrorCode::NONE);
    let synced = c
        .sync_group(SyncGroupRequest {
            group_id: group.into(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            group_instance_id: None,
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            assignments: vec![],
        })
        .expect("sync");
    assert_eq!(synced.error, ErrorCode::NONE);
    joined
}
