//! `sluice produce TOPIC`: stdin lines become records.
//!
//! Three parts, so the logic can be tested without sockets or a terminal:
//!
//! - a reader thread ([`read_lines`]) sends chunks of lines over a bounded
//!   channel: a chunk ends whenever stdin has nothing more buffered, so an
//!   interactive line is sent at once and a pipe is read in large chunks;
//! - [`Accumulator`] (sans-IO) splits lines into key and value, picks each
//!   record's partition and seals a partition's batch once it is full or its
//!   linger time is up;
//! - [`Sender`] groups sealed batches by the connection that reaches their
//!   owning shard, sends them pipelined, and checks every partition's result.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sluice_protocol::batch::BatchBuilder;
use sluice_protocol::client::ClientError;
use sluice_protocol::native::{
    self, Acks, ProducePartition, ProducePartitionResponse, ProduceRequest, Request, ResponseBody,
};
use sluice_protocol::partitioner::partition_for_key;

use super::{shard_of_partitions, topic_metadata, CliError, ConnectArgs, Connections};

/// The most bytes of batches in one produce request (a single larger batch
/// still goes, alone).
const REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// Produce requests sent on one connection and not yet answered.
const IN_FLIGHT_MAX: usize = 8;
/// How long the broker may take to replicate a batch (acks=all).
const PRODUCE_TIMEOUT_MS: u32 = 30_000;
/// The largest `--batch-bytes` accepted.
const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// A record's encoding beyond its key and value, at most: length, attributes,
/// timestamp delta, offset delta, key and value lengths, header count.
const RECORD_OVERHEAD_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 5 + 5 + 5;
/// The reader's buffer: how much of a pipe one chunk of lines holds.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks of lines read ahead of the sender.
const CHUNKS_QUEUED_MAX: usize = 8;

const _: () = assert!(REQUEST_BYTES_MAX <= native::FRAME_BYTES_MAX_DEFAULT / 2);
const _: () = assert!(BATCH_BYTES_MAX <= native::FRAME_BYTES_MAX_DEFAULT / 2);

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ProduceArgs {
    /// The topic to write to.
    pub topic: String,
    /// Acknowledgement wanted: 0 (none), 1 (the leader) or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    /// Write every record to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Split each line at the first occurrence of this byte into key and value.
    #[arg(long, value_name = "C", value_parser = parse_separator)]
    pub key_separator: Option<u8>,
    /// Seal a partition's batch once it holds this many bytes.
    #[arg(long, default_value_t = 262_144)]
    pub batch_bytes: usize,
    /// Send open batches this long after their first record.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_acks(arg: &str) -> Result<Acks, String> {
    match arg {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        _ => Err(format!("expected 0, 1 or all, got {arg:?}")),
    }
}

/// One byte, given as itself or as `\t`.
fn parse_separator(arg: &str) -> Result<u8, String> {
    match arg.as_bytes() {
        [byte] => Ok(*byte),
        b"\\t" => Ok(b'\t'),
        _ => Err(format!("expected a single byte, got {arg:?}")),
    }
}

impl ProduceArgs {
    pub fn run(self) -> Result<(), CliError> {
        if !(1..=BATCH_BYTES_MAX).contains(&self.batch_bytes) {
            let e = format!("--batch-bytes must be between 1 and {BATCH_BYTES_MAX}");
            return Err(CliError(e));
        }
        let mut bootstrap = self.connect.connect()?;
        let (topic, metadata) = topic_metadata(&mut bootstrap, &self.topic)?;
        drop(bootstrap);
        let shard_of = shard_of_partitions(&topic)?;
        let chooser = Chooser::new(self.partition, shard_of.len())?;
        let connections = Connections::open(&self.connect, &metadata, &shard_of)?;
        let conn_of = shard_of.iter().map(|&s| connections.index_of(s)).collect();
        let mut sender = Sender::new(self.topic.clone(), self.acks, connections, conn_of);
        let accumulator = Accumulator::new(chooser, self.key_separator, self.batch_bytes);
        let linger = Duration::from_millis(self.linger_ms);
        let (records, bytes) = pump(accumulator, &mut sender, linger)?;
        sender.finish()?;
        eprintln!(
            "produced {records} records ({bytes} bytes) to {}",
            self.topic
        );
        Ok(())
    }
}

/// Feeds stdin through `accumulator` into `sender` until EOF; returns the
/// records and key plus value bytes produced.
fn pump(
    mut accumulator: Accumulator,
    sender: &mut Sender,
    linger: Duration,
) -> Result<(u64, u64), CliError> {
    let (tx, rx) = mpsc::sync_channel(CHUNKS_QUEUED_MAX);
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_lines(BufReader::with_capacity(READ_CHUNK_BYTES, io::stdin()), &tx))?;
    loop {
        let message = match accumulator.open_since {
            Some(since) => rx.recv_timeout(linger.saturating_sub(since.elapsed())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match message {
            Ok(Ok(lines)) => {
                let now = now_ms();
                lines.iter().for_each(|line| accumulator.push(line, now));
            }
            Ok(Err(e)) => return Err(CliError(format!("reading stdin: {e}"))),
            Err(RecvTimeoutError::Timeout) => accumulator.seal_all(),
            Err(RecvTimeoutError::Disconnected) => {
                accumulator.seal_all();
                sender.send(accumulator.take_sealed())?;
                return Ok((accumulator.records, accumulator.bytes));
            }
        }
        sender.send(accumulator.take_sealed())?;
    }
}

fn now_ms() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Lines without their line endings, stored end to end.
#[derive(Debug, Default)]
struct Lines {
    data: Vec<u8>,
    /// Where each line ends in `data`.
    ends: Vec<usize>,
}

impl Lines {
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.data[start..end])
    }
}

/// `line` without a trailing `\n`, and without a `\r` before it.
fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads `input` to its end, sending lines in chunks: a chunk goes whenever
/// the reader's buffer is drained (more input would mean waiting) or holds
/// a buffer's worth. Stops quietly if the receiver has gone.
fn read_lines<R: Read>(mut input: BufReader<R>, tx: &SyncSender<io::Result<Lines>>) {
    let mut lines = Lines::default();
    loop {
        let start = lines.data.len();
        match input.read_until(b'\n', &mut lines.data) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
        let len = strip_line_end(&lines.data[start..]).len();
        lines.data.truncate(start + len);
        lines.ends.push(lines.data.len());
        let chunk_ends = input.buffer().is_empty() || lines.data.len() >= READ_CHUNK_BYTES;
        if chunk_ends && tx.send(Ok(std::mem::take(&mut lines))).is_err() {
            return;
        }
    }
    if !lines.ends.is_empty() {
        let _ = tx.send(Ok(lines));
    }
}

/// Splits `line` at the first `separator` into key and value; with no
/// separator (or none in the line) the key is null and the value the line.
fn split_line(line: &[u8], separator: Option<u8>) -> (Option<&[u8]>, &[u8]) {
    let at = separator.and_then(|c| line.iter().position(|&b| b == c));
    match at {
        Some(i) => (Some(&line[..i]), &line[i + 1..]),
        None => (None, line),
    }
}

/// Which partition a record goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chooser {
    /// `--partition P`.
    Fixed(u32),
    /// Keyed records by murmur2 of the key; unkeyed ones to `sticky`, which
    /// moves on each time its batch is sealed.
    Default { partitions: u32, sticky: u32 },
}

impl Chooser {
    fn new(partition: Option<u32>, partitions: usize) -> Result<Chooser, CliError> {
        let partitions = u32::try_from(partitions).unwrap_or(u32::MAX);
        match partition {
            Some(p) if p >= partitions => Err(CliError(format!(
                "partition {p} does not exist: the topic has {partitions}"
            ))),
            Some(p) => Ok(Chooser::Fixed(p)),
            None if partitions == 0 => Err(CliError("the topic has no partitions".into())),
            None => Ok(Chooser::Default {
                partitions,
                sticky: 0,
            }),
        }
    }

    fn choose(&self, key: Option<&[u8]>) -> u32 {
        match (self, key) {
            (Chooser::Fixed(p), _) => *p,
            (Chooser::Default { partitions, .. }, Some(key)) => partition_for_key(key, *partitions),
            (Chooser::Default { sticky, .. }, None) => *sticky,
        }
    }

    fn sealed(&mut self, partition: u32) {
        if let Chooser::Default { partitions, sticky } = self {
            if *sticky == partition {
                *sticky = (*sticky + 1) % *partitions;
            }
        }
    }
}

/// A finished batch and the partition it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sealed {
    partition: u32,
    batch: Vec<u8>,
}

/// Turns lines into sealed batches, one open batch per partition.
struct Accumulator {
    chooser: Chooser,
    key_separator: Option<u8>,
    batch_bytes: usize,
    /// Indexed by partition.
    open: Vec<Option<BatchBuilder>>,
    /// When the oldest open batch got its first record.
    open_since: Option<Instant>,
    sealed: Vec<Sealed>,
    records: u64,
    /// Key and value bytes of every record pushed.
    bytes: u64,
}

impl Accumulator {
    fn new(chooser: Chooser, key_separator: Option<u8>, batch_bytes: usize) -> Accumulator {
        let partitions = match chooser {
            Chooser::Fixed(p) => p as usize + 1,
            Chooser::Default { partitions, .. } => partitions as usize,
        };
        Accumulator {
            chooser,
            key_separator,
            batch_bytes,
            open: (0..partitions).map(|_| None).collect(),
            open_since: None,
            sealed: Vec::new(),
            records: 0,
            bytes: 0,
        }
    }

    fn push(&mut self, line: &[u8], timestamp_ms: i64) {
        let (key, value) = split_line(line, self.key_separator);
        let record_bytes = key.map_or(0, <[u8]>::len) + value.len();
        let partition = self.partition_with_room(key, record_bytes + RECORD_OVERHEAD_BYTES_MAX);
        let batch_bytes = self.batch_bytes;
        let slot = &mut self.open[partition as usize];
        let batch = slot.get_or_insert_with(|| {
            let capacity = batch_bytes.min(READ_CHUNK_BYTES) + RECORD_OVERHEAD_BYTES_MAX;
            BatchBuilder::with_capacity(timestamp_ms, capacity)
        });
        batch.push(timestamp_ms, key, Some(value), &[]);
        let full = batch.size_bytes() >= batch_bytes;
        self.open_since.get_or_insert_with(Instant::now);
        self.records += 1;
        self.bytes += record_bytes as u64;
        if full {
            self.seal(partition);
        }
    }

    /// The partition for a record of `bytes` with `key`, sealing batches that
    /// it would overflow. Ends: each round seals a non-empty batch.
    fn partition_with_room(&mut self, key: Option<&[u8]>, bytes: usize) -> u32 {
        loop {
            let partition = self.chooser.choose(key);
            let open = self.open[partition as usize].as_ref();
            match open {
                Some(b) if !b.is_empty() && b.size_bytes() + bytes > self.batch_bytes => {
                    self.seal(partition);
                }
                _ => return partition,
            }
        }
    }

    fn seal(&mut self, partition: u32) {
        if let Some(batch) = self.open[partition as usize].take() {
            self.sealed.push(Sealed {
                partition,
                batch: batch.finish(),
            });
            self.chooser.sealed(partition);
        }
        if self.open.iter().all(Option::is_none) {
            self.open_since = None;
        }
    }

    fn seal_all(&mut self) {
        for partition in 0..self.open.len() {
            self.seal(partition as u32);
        }
    }

    fn take_sealed(&mut self) -> Vec<Sealed> {
        std::mem::take(&mut self.sealed)
    }
}

/// One produce request's worth of batches for one connection.
#[derive(Debug, PartialEq, Eq)]
struct RequestPlan {
    conn: usize,
    bytes: usize,
    /// One entry per partition: its batches, concatenated in order.
    partitions: Vec<(u32, Vec<u8>)>,
}

/// Groups `sealed` (in order) into requests per connection of at most
/// [`REQUEST_BYTES_MAX`]; a partition's batches keep their order.
fn plan_requests(sealed: Vec<Sealed>, conn_of: &[usize]) -> Vec<RequestPlan> {
    let mut plans: Vec<RequestPlan> = Vec::new();
    let mut open_plan: HashMap<usize, usize> = HashMap::new();
    for Sealed { partition, batch } in sealed {
        let conn = conn_of.get(partition as usize).copied().unwrap_or(0);
        let current = open_plan.get(&conn).copied();
        let index = match current {
            Some(i) if plans[i].bytes + batch.len() <= REQUEST_BYTES_MAX => i,
            _ => {
                plans.push(RequestPlan {
                    conn,
                    bytes: 0,
                    partitions: Vec::new(),
                });
                open_plan.insert(conn, plans.len() - 1);
                plans.len() - 1
            }
        };
        let plan = &mut plans[index];
        plan.bytes += batch.len();
        match plan.partitions.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, records)) => records.extend_from_slice(&batch),
            None => plan.partitions.push((partition, batch)),
        }
    }
    plans
}

/// Sends sealed batches over the connections and checks the results.
struct Sender {
    topic: String,
    acks: Acks,
    connections: Connections,
    /// Indexed by partition: the connection that reaches its shard.
    conn_of: Vec<usize>,
    /// Indexed by connection.
    in_flight: Vec<usize>,
    used: Vec<bool>,
    /// Correlation ids for acks=0 requests, which are never answered.
    unanswered_id_next: u32,
}

impl Sender {
    fn new(topic: String, acks: Acks, connections: Connections, conn_of: Vec<usize>) -> Sender {
        let n = connections.conns.len();
        Sender {
            topic,
            acks,
            connections,
            conn_of,
            in_flight: vec![0; n],
            used: vec![false; n],
            unanswered_id_next: 1,
        }
    }

    fn send(&mut self, sealed: Vec<Sealed>) -> Result<(), CliError> {
        for plan in plan_requests(sealed, &self.conn_of) {
            let partitions =
                plan.partitions
                    .into_iter()
                    .map(|(partition, records)| ProducePartition {
                        topic: self.topic.clone(),
                        partition,
                        records: Bytes::from(records),
                    });
            let request = Request::Produce(ProduceRequest {
                acks: self.acks,
                timeout_ms: PRODUCE_TIMEOUT_MS,
                partitions: partitions.collect(),
            });
            self.send_one(plan.conn, &request)?;
        }
        Ok(())
    }

    fn send_one(&mut self, conn: usize, request: &Request) -> Result<(), CliError> {
        self.used[conn] = true;
        if self.acks == Acks::None {
            // The broker answers no acks=0 produce, so the client's
            // correlation bookkeeping must not see these.
            let id = self.unanswered_id_next;
            self.unanswered_id_next = id.wrapping_add(1);
            let frame = native::encode_request(id, request).concat();
            self.connections.conns[conn].raw.write_all(&frame)?;
            return Ok(());
        }
        if self.in_flight[conn] >= IN_FLIGHT_MAX {
            self.recv_one(conn)?;
        }
        self.connections.conns[conn].client.send(request)?;
        self.in_flight[conn] += 1;
        Ok(())
    }

    fn recv_one(&mut self, conn: usize) -> Result<(), CliError> {
        let response = self.connections.conns[conn].client.recv()?;
        self.in_flight[conn] -= 1;
        if !response.error.is_ok() {
            let (topic, error, message) = (&self.topic, response.error, response.message);
            return Err(CliError(format!("produce to {topic}: {error}: {message}")));
        }
        match response.body {
            ResponseBody::Produce(r) => check_produced(&r.partitions),
            _ => Err(ClientError::UnexpectedResponse.into()),
        }
    }

    /// Waits for every answer; with acks=0, makes one round trip on each
    /// connection used, so the broker has read every request before it.
    fn finish(&mut self) -> Result<(), CliError> {
        for conn in 0..self.in_flight.len() {
            while self.in_flight[conn] > 0 {
                self.recv_one(conn)?;
            }
            if self.acks == Acks::None && self.used[conn] {
                let client = &mut self.connections.conns[conn].client;
                client.metadata(vec![self.topic.clone()])?;
            }
        }
        Ok(())
    }
}

/// The first partition that failed, as an error naming it.
fn check_produced(partitions: &[ProducePartitionResponse]) -> Result<(), CliError> {
    match partitions.iter().find(|p| !p.error.is_ok()) {
        Some(p) => {
            let mut e = format!(
                "produce to {} partition {}: {}",
                p.topic, p.partition, p.error
            );
            if let Some(why) = &p.error_message {
                e.push_str(&format!(" ({why})"));
            }
            Err(CliError(e))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use sluice_protocol::batch;
    use sluice_protocol::ErrorCode;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn parse(args: &[&str]) -> Result<ProduceArgs, clap::Error> {
        let argv = std::iter::once("produce").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn defaults_are_acks_all_256k_batches_5ms_linger() {
        let args = parse(&["t"]).expect("parses");
        let expected = ProduceArgs {
            topic: "t".into(),
            acks: Acks::All,
            partition: None,
            key_separator: None,
            batch_bytes: 262_144,
            linger_ms: 5,
            connect: ConnectArgs {
                bootstrap: "127.0.0.1:9192".into(),
            },
        };
        assert_eq!(args, expected);
    }

    #[test]
    fn every_option_parses() {
        let argv = [
            "t",
            "--acks",
            "0",
            "--partition",
            "3",
            "--key-separator",
            ":",
            "--batch-bytes",
            "1000",
            "--linger-ms",
            "0",
            "--bootstrap",
            "h:9",
        ];
        let args = parse(&argv).expect("parses");
        assert_eq!(args.acks, Acks::None);
        assert_eq!(args.partition, Some(3));
        assert_eq!(args.key_separator, Some(b':'));
        assert_eq!((args.batch_bytes, args.linger_ms), (1000, 0));
        assert_eq!(args.connect.bootstrap, "h:9");
        assert_eq!(parse(&["t", "--acks", "1"]).expect("1").acks, Acks::Leader);
        assert_eq!(
            parse(&["t", "--key-separator", "\\t"])
                .expect("tab")
                .key_separator,
            Some(b'\t')
        );
    }

    #[test]
    fn bad_acks_and_separators_are_rejected() {
        assert!(parse(&["t", "--acks", "2"]).is_err());
        assert!(parse(&["t", "--key-separator", "ab"]).is_err());
        assert!(parse(&["t", "--key-separator", ""]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn line_endings_are_stripped_once() {
        assert_eq!(strip_line_end(b"a\r\n"), b"a");
        assert_eq!(strip_line_end(b"a\n"), b"a");
        assert_eq!(strip_line_end(b"a\n\n"), b"a\n");
        assert_eq!(strip_line_end(b"a\r"), b"a");
        assert_eq!(strip_line_end(b"\xff\xfe"), b"\xff\xfe");
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(
            split_line(b"k:v:w", Some(b':')),
            (Some(&b"k"[..]), &b"v:w"[..])
        );
        assert_eq!(split_line(b":v", Some(b':')), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_line(b"no sep", Some(b':')), (None, &b"no sep"[..]));
        assert_eq!(split_line(b"k:v", None), (None, &b"k:v"[..]));
    }

    fn read_all(input: &[u8], buffer_bytes: usize) -> Vec<Vec<Vec<u8>>> {
        let (tx, rx) = mpsc::sync_channel(1024);
        read_lines(BufReader::with_capacity(buffer_bytes, input), &tx);
        drop(tx);
        let chunk = |lines: io::Result<Lines>| {
            let lines = lines.expect("no read error");
            lines.iter().map(<[u8]>::to_vec).collect()
        };
        rx.into_iter().map(chunk).collect()
    }

    #[test]
    fn reader_sends_every_line_without_its_ending() {
        let chunks = read_all(b"a\r\nbb\n\n\xffc", 1 << 16);
        let lines: Vec<Vec<u8>> = chunks.concat();
        assert_eq!(lines, [&b"a"[..], b"bb", b"", b"\xffc"]);
    }

    #[test]
    fn reader_sends_a_chunk_whenever_its_buffer_drains() {
        // A 4-byte buffer holds two lines at a time.
        let chunks = read_all(b"1\n2\n3\n4\n5\n", 4);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
    }

    #[test]
    fn chooser_checks_the_partition_and_hashes_keys_like_kafka() {
        assert!(Chooser::new(Some(4), 4).is_err());
        assert_eq!(Chooser::new(Some(3), 4).expect("ok").choose(Some(b"k")), 3);
        let chooser = Chooser::new(None, 1000).expect("ok");
        assert_eq!(chooser.choose(Some(b"abc")), 479_470_107 % 1000);
    }

    #[test]
    fn unkeyed_records_stick_to_a_partition_until_its_batch_is_sealed() {
        let mut chooser = Chooser::new(None, 3).expect("ok");
        assert_eq!(chooser.choose(None), 0);
        chooser.sealed(2);
        assert_eq!(chooser.choose(None), 0);
        for expected in [1, 2, 0] {
            let p = chooser.choose(None);
            chooser.sealed(p);
            assert_eq!(chooser.choose(None), expected);
        }
    }

    fn records_of(batches: &[u8]) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
        let mut out = Vec::new();
        for item in batch::split(batches) {
            let (range, _) = item.expect("whole batch");
            batch::validate(&batches[range.clone()]).expect("valid");
            for r in batch::records(&batches[range]).expect("records") {
                let r = r.expect("record");
                let value = r.value.expect("value").to_vec();
                out.push((r.key.map(<[u8]>::to_vec), value));
            }
        }
        out
    }

    #[test]
    fn full_batches_move_unkeyed_records_round_robin() {
        let chooser = Chooser::new(None, 2).expect("ok");
        let mut acc = Accumulator::new(chooser, None, 200);
        for i in 0..10 {
            acc.push(format!("value-{i:040}").as_bytes(), 1_000 + i);
        }
        acc.seal_all();
        let sealed = acc.take_sealed();
        assert!(sealed.len() >= 3, "{} batches", sealed.len());
        for (i, s) in sealed.iter().enumerate() {
            assert!(
                s.batch.len() <= 200,
                "batch {i} has {} bytes",
                s.batch.len()
            );
        }
        let partitions: Vec<u32> = sealed.iter().map(|s| s.partition).collect();
        let alternating: Vec<u32> = (0..sealed.len() as u32).map(|i| i % 2).collect();
        assert_eq!(partitions, alternating);
        let all: Vec<u8> = sealed.iter().flat_map(|s| s.batch.clone()).collect();
        assert_eq!(records_of(&all).len(), 10);
        assert_eq!((acc.records, acc.bytes), (10, 10 * 46));
        assert!(acc.open_since.is_none());
    }

    #[test]
    fn keyed_records_go_to_their_keys_partition_with_their_keys() {
        let chooser = Chooser::new(None, 7).expect("ok");
        let mut acc = Accumulator::new(chooser, Some(b','), 1 << 20);
        acc.push(b"abc,v1", 0);
        acc.push(b"abc,v2", 0);
        acc.push(b"unkeyed", 0);
        acc.seal_all();
        let sealed = acc.take_sealed();
        let keyed = sealed
            .iter()
            .find(|s| s.partition == partition_for_key(b"abc", 7));
        let records = records_of(&keyed.expect("keyed batch").batch);
        let key = Some(b"abc".to_vec());
        assert_eq!(
            records,
            [(key.clone(), b"v1".to_vec()), (key, b"v2".to_vec())]
        );
    }

    #[test]
    fn a_record_larger_than_a_batch_goes_alone() {
        let chooser = Chooser::new(Some(0), 1).expect("ok");
        let mut acc = Accumulator::new(chooser, None, 100);
        acc.push(b"small", 0);
        acc.push(&[b'x'; 500], 0);
        acc.push(b"small", 0);
        acc.seal_all();
        let counts: Vec<usize> = acc
            .take_sealed()
            .iter()
            .map(|s| records_of(&s.batch).len())
            .collect();
        assert_eq!(counts, [1, 1, 1]);
    }

    fn sealed(partition: u32, bytes: usize) -> Sealed {
        Sealed {
            partition,
            batch: vec![partition as u8; bytes],
        }
    }

    #[test]
    fn requests_group_by_connection_and_stay_under_the_limit() {
        let third = REQUEST_BYTES_MAX / 3;
        let conn_of = [0, 1, 1];
        let input = vec![
            sealed(1, third),
            sealed(0, 10),
            sealed(2, third),
            sealed(1, third),
            sealed(2, third),
        ];
        let plans = plan_requests(input, &conn_of);
        let shape: Vec<(usize, Vec<(u32, usize)>)> = plans
            .iter()
            .map(|p| {
                (
                    p.conn,
                    p.partitions.iter().map(|(q, b)| (*q, b.len())).collect(),
                )
            })
            .collect();
        let expected = vec![
            (1, vec![(1, 2 * third), (2, third)]),
            (0, vec![(0, 10)]),
            (1, vec![(2, third)]),
        ];
        assert_eq!(shape, expected);
    }

    #[test]
    fn an_oversized_batch_gets_a_request_of_its_own() {
        let plans = plan_requests(vec![sealed(0, 1), sealed(0, REQUEST_BYTES_MAX + 1)], &[0]);
        assert_eq!(plans.len(), 2);
    }

    #[test]
    fn a_failed_partition_names_topic_partition_and_error() {
        let ok = ProducePartitionResponse {
            topic: "t".into(),
            partition: 0,
            error: ErrorCode::NONE,
            base_offset: 0,
            log_start_offset: 0,
            error_message: None,
        };
        let failed = ProducePartitionResponse {
            partition: 4,
            error: ErrorCode::NOT_LEADER_OR_FOLLOWER,
            ..ok.clone()
        };
        assert!(check_produced(std::slice::from_ref(&ok)).is_ok());
        let e = check_produced(&[ok.clone(), failed]).expect_err("fails");
        assert_eq!(e.0, "produce to t partition 4: NOT_LEADER_OR_FOLLOWER (6)");
        let explained = ProducePartitionResponse {
            partition: 1,
            error: ErrorCode::MESSAGE_TOO_LARGE,
            error_message: Some("batch of 9 bytes exceeds max.message.bytes 8".into()),
            ..ok
        };
        let e = check_produced(&[explained]).expect_err("fails");
        assert_eq!(
            e.0,
            "produce to t partition 1: MESSAGE_TOO_LARGE (10) (batch of 9 bytes exceeds \
             max.message.bytes 8)"
        );
    }
}
