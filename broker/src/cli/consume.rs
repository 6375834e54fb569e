//! `sluice consume TOPIC`: records to stdout, one value per line.
//!
//! Each round sends one fetch per connection (one per shard, covering that
//! shard's partitions) before reading any answer, so shards serve in
//! parallel. Records are decoded in place from the response's bytes and
//! written to a buffered, locked stdout: nothing is allocated per record.
//!
//! With `--group G` the command is a member of consumer group G
//! ([`super::group`]): it reads only the partitions the group assigns it,
//! starts each at the group's committed offset (or `--from` where nothing is
//! committed), and commits after printing each fetched batch, once stdout
//! has been flushed. So members that end normally print every record exactly
//! once between them; one that dies may have printed records it did not
//! commit, which another prints again (at least once).

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchError};
use sluice_protocol::client::{Client, ClientError};
use sluice_protocol::native::{
    FetchPartition, FetchPartitionResponse, FetchRequest, ListOffsetsPartition, Request,
    ResponseBody,
};
use sluice_protocol::types::list_offsets_timestamp;
use sluice_protocol::ErrorCode;

use super::group::{Member, Rejoin};
use super::{shard_of_partitions, topic_metadata, CliError, ConnectArgs, Connections};

/// How long the broker may hold a fetch waiting for records.
const FETCH_WAIT_MS_MAX: u32 = 500;
/// The most bytes one fetch response may carry, over all its partitions.
const FETCH_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// The most bytes one partition may contribute to a fetch response.
const FETCH_PARTITION_BYTES_MAX: u32 = 1024 * 1024;
/// Stdout's buffer.
const OUTPUT_BUFFER_BYTES: usize = 256 * 1024;

const _: () = assert!(FETCH_PARTITION_BYTES_MAX <= FETCH_BYTES_MAX);

/// Where consumption starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
}

fn parse_start(arg: &str) -> Result<StartAt, String> {
    match arg {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        _ => match arg.parse::<i64>() {
            Ok(offset) if offset >= 0 => Ok(StartAt::Offset(offset)),
            _ => Err(format!(
                "expected earliest, latest or an offset, got {arg:?}"
            )),
        },
    }
}

#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ConsumeArgs {
    /// The topic to read.
    pub topic: String,
    /// Where to start in each partition.
    #[arg(
        long,
        value_name = "earliest|latest|OFFSET",
        default_value = "earliest",
        value_parser = parse_start
    )]
    pub from: StartAt,
    /// Stop after this many records in all.
    #[arg(long)]
    pub count: Option<u64>,
    /// Read only this partition.
    #[arg(long, conflicts_with = "group")]
    pub partition: Option<u32>,
    /// Consume as a member of this consumer group: read the partitions the
    /// group assigns, from its committed offsets, and commit what is printed.
    #[arg(long)]
    pub group: Option<String>,
    /// Stop (successfully) once this long passes with no new record.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print `partition<TAB>offset<TAB>value` instead of the value alone.
    #[arg(long)]
    pub print_offsets: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// One partition being read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    partition: u32,
    /// The next offset to print.
    next: i64,
    /// The connection that reaches the partition's shard.
    conn: usize,
}

impl ConsumeArgs {
    pub fn run(self) -> Result<(), CliError> {
        if self.count == Some(0) {
            return Ok(());
        }
        if let Some(group) = self.group.clone() {
            return self.run_group(group);
        }
        let mut bootstrap = self.connect.connect()?;
        let (topic, metadata) = topic_metadata(&mut bootstrap, &self.topic)?;
        let shard_of = shard_of_partitions(&topic)?;
        let partitions = self.partitions(shard_of.len())?;
        let starts = start_offsets(&mut bootstrap, &self.topic, &partitions, self.from)?;
        drop(bootstrap);
        let shards: Vec<u32> = partitions.iter().map(|&p| shard_of[p as usize]).collect();
        let mut connections = Connections::open(&self.connect, &metadata, &shards)?;
        let cursors = partitions.iter().zip(starts).zip(&shards);
        let cursors = cursors.map(|((&partition, next), &shard)| Cursor {
            partition,
            next,
            conn: connections.index_of(shard),
        });
        let mut reader = Reader::new(self.topic.clone(), cursors.collect(), shard_of.len());
        let stdout = io::stdout();
        let out = BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, stdout.lock());
        let mut printer = Printer::new(out, self.print_offsets, self.count);
        let timeout = self.timeout_ms.map(Duration::from_millis);
        let result = reader.run(&mut connections, &mut printer, timeout);
        printer.flush()?;
        result
    }

    /// The partitions to read, of a topic with `count` partitions.
    fn partitions(&self, count: usize) -> Result<Vec<u32>, CliError> {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        match self.partition {
            Some(p) if p >= count => Err(CliError(format!(
                "partition {p} does not exist: {} has {count}",
                self.topic
            ))),
            Some(p) => Ok(vec![p]),
            None => Ok((0..count).collect()),
        }
    }
}

impl ConsumeArgs {
    /// Consumes as a member of `group` until `--count`, `--timeout-ms` idle
    /// or SIGINT; then leaves the group.
    fn run_group(self, group: String) -> Result<(), CliError> {
        let interrupted = interrupt_flag()?;
        let mut bootstrap = self.connect.connect()?;
        let (topic, metadata) = topic_metadata(&mut bootstrap, &self.topic)?;
        let shard_of = shard_of_partitions(&topic)?;
        let mut connections = Connections::open(&self.connect, &metadata, &shard_of)?;
        let mut member = Member::new(self.connect.connect()?, group, self.topic.clone());
        let stdout = io::stdout();
        let out = BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, stdout.lock());
        let mut session = GroupSession {
            args: &self,
            bootstrap,
            shard_of,
            printer: Printer::new(out, self.print_offsets, self.count),
            last_record_at: Instant::now(),
            interrupted,
        };
        let result = session.run(&mut member, &mut connections);
        let flushed = session.printer.flush();
        member.leave();
        result.and(flushed.map_err(CliError::from))
    }
}

/// Set by SIGINT; a second SIGINT while it is set exits at once.
fn interrupt_flag() -> Result<Arc<AtomicBool>, CliError> {
    let flag = Arc::new(AtomicBool::new(false));
    let sigint = signal_hook::consts::SIGINT;
    signal_hook::flag::register_conditional_shutdown(sigint, 130, flag.clone())?;
    signal_hook::flag::register(sigint, flag.clone())?;
    Ok(flag)
}

/// One `--group` run: generations of join, consume, rejoin.
struct GroupSession<'a, W: Write> {
    args: &'a ConsumeArgs,
    /// For metadata and list offsets.
    bootstrap: Client,
    shard_of: Vec<u32>,
    printer: Printer<W>,
    last_record_at: Instant,
    interrupted: Arc<AtomicBool>,
}

impl<W: Write> GroupSession<'_, W> {
    fn run(&mut self, member: &mut Member, connections: &mut Connections) -> Result<(), CliError> {
        loop {
            let bootstrap = &mut self.bootstrap;
            let joined = member.join(&mut |topics| partition_counts(bootstrap, topics))?;
            let partitions: Vec<String> = joined.partitions.iter().map(u32::to_string).collect();
            eprintln!(
                "sluice consume: group {} generation {} member {}: partitions [{}]",
                self.args.group.as_deref().unwrap_or_default(),
                joined.generation,
                joined.member_id,
                partitions.join(",")
            );
            let mut reader = self.reader(member, &joined.partitions, connections)?;
            if self.consume(member, &mut reader, connections)?.is_none() {
                return Ok(());
            }
        }
    }

    /// A reader of `partitions` from the group's committed offsets.
    fn reader(
        &mut self,
        member: &mut Member,
        partitions: &[u32],
        connections: &Connections,
    ) -> Result<Reader, CliError> {
        let known: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|&p| (p as usize) < self.shard_of.len())
            .collect();
        let committed = member.committed(&known)?;
        let fresh: Vec<u32> = known
            .iter()
            .zip(&committed)
            .filter(|(_, c)| c.is_none())
            .map(|(&p, _)| p)
            .collect();
        let topic = &self.args.topic;
        let starts = start_offsets(&mut self.bootstrap, topic, &fresh, self.args.from)?;
        let mut starts = fresh
            .into_iter()
            .zip(starts)
            .collect::<BTreeMap<u32, i64>>();
        let cursors = known
            .iter()
            .zip(committed)
            .map(|(&partition, committed)| Cursor {
                partition,
                next: committed.or_else(|| starts.remove(&partition)).unwrap_or(0),
                conn: connections.index_of(self.shard_of[partition as usize]),
            });
        Ok(Reader::new(
            topic.clone(),
            cursors.collect(),
            self.shard_of.len(),
        ))
    }

    /// Fetches, prints and commits until the generation ends (`Some`) or
    /// the run is over (`None`).
    fn consume(
        &mut self,
        member: &mut Member,
        reader: &mut Reader,
        connections: &mut Connections,
    ) -> Result<Option<Rejoin>, CliError> {
        let timeout = self.args.timeout_ms.map(Duration::from_millis);
        let mut committed: Vec<i64> = reader.cursors.iter().map(|c| c.next).collect();
        loop {
            let printed_before = self.printer.printed;
            let left = timeout.map(|t| t.saturating_sub(self.last_record_at.elapsed()));
            let wait = fetch_wait_ms(left).min(duration_ms(member.heartbeat_in()));
            if reader.cursors.is_empty() {
                std::thread::sleep(Duration::from_millis(u64::from(wait.clamp(1, 100))));
            } else {
                reader.round(connections, &mut self.printer, wait)?;
            }
            if self.printer.printed > printed_before {
                self.last_record_at = Instant::now();
                // What is committed must have reached stdout first.
                self.printer.flush()?;
            }
            let moved: Vec<(u32, i64)> = reader
                .cursors
                .iter()
                .zip(&committed)
                .filter(|(c, &done)| c.next > done)
                .map(|(c, _)| (c.partition, c.next))
                .collect();
            if let Some(rejoin) = member.commit(&moved)? {
                return Ok(Some(rejoin));
            }
            committed = reader.cursors.iter().map(|c| c.next).collect();
            let idle = timeout.is_some_and(|t| self.last_record_at.elapsed() >= t);
            if self.printer.done() || idle || self.interrupted.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(rejoin) = member.heartbeat()? {
                return Ok(Some(rejoin));
            }
        }
    }
}

fn duration_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The partition counts of `topics` (the leader's view, for assigning).
fn partition_counts(
    client: &mut Client,
    topics: &[String],
) -> Result<BTreeMap<String, u32>, CliError> {
    if topics.is_empty() {
        return Ok(BTreeMap::new());
    }
    let metadata = client.metadata(topics.to_vec())?;
    let known = metadata.topics.into_iter().filter(|t| t.error.is_ok());
    let counts = known.map(|t| {
        let n = u32::try_from(t.partitions.len()).unwrap_or(u32::MAX);
        (t.name, n)
    });
    Ok(counts.collect())
}

/// The first offset to read in each of `partitions`.
fn start_offsets(
    client: &mut Client,
    topic: &str,
    partitions: &[u32],
    start: StartAt,
) -> Result<Vec<i64>, CliError> {
    let timestamp = match start {
        StartAt::Offset(offset) => return Ok(vec![offset; partitions.len()]),
        StartAt::Earliest => list_offsets_timestamp::EARLIEST,
        StartAt::Latest => list_offsets_timestamp::LATEST,
    };
    let request = partitions.iter().map(|&partition| ListOffsetsPartition {
        topic: topic.to_owned(),
        partition,
        timestamp,
    });
    let listed = client.list_offsets(request.collect())?;
    let offset_of = |partition: u32| {
        let found = listed.iter().find(|o| o.partition == partition);
        match found {
            Some(o) if o.error.is_ok() => Ok(o.offset),
            Some(o) => Err(CliError(format!(
                "{topic} partition {partition}: {}",
                o.error
            ))),
            None => Err(CliError(format!(
                "{topic} partition {partition}: no offset listed"
            ))),
        }
    };
    partitions.iter().map(|&p| offset_of(p)).collect()
}

/// Writes records to `out` and counts them.
struct Printer<W: Write> {
    out: W,
    print_offsets: bool,
    printed: u64,
    limit: Option<u64>,
    /// Set when the reader of our output has gone (a closed pipe): stop,
    /// successfully, as `head` expects.
    closed: bool,
}

impl<W: Write> Printer<W> {
    fn new(out: W, print_offsets: bool, limit: Option<u64>) -> Printer<W> {
        Printer {
            out,
            print_offsets,
            printed: 0,
            limit,
            closed: false,
        }
    }

    fn record(&mut self, partition: u32, offset: i64, value: Option<&[u8]>) -> io::Result<()> {
        let result = self.write_record(partition, offset, value.unwrap_or_default());
        self.printed += 1;
        self.closed_is_ok(result)
    }

    fn write_record(&mut self, partition: u32, offset: i64, value: &[u8]) -> io::Result<()> {
        if self.print_offsets {
            write!(self.out, "{partition}\t{offset}\t")?;
        }
        self.out.write_all(value)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.out.flush();
        self.closed_is_ok(result)
    }

    fn closed_is_ok(&mut self, result: io::Result<()>) -> io::Result<()> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            other => other,
        }
    }

    fn done(&self) -> bool {
        self.closed || self.limit.is_some_and(|limit| self.printed >= limit)
    }
}

/// The fetch loop over every cursor.
struct Reader {
    topic: String,
    cursors: Vec<Cursor>,
    /// Indexed by partition: its cursor's index in `cursors`.
    cursor_of: Vec<Option<usize>>,
}

impl Reader {
    fn new(topic: String, cursors: Vec<Cursor>, partitions: usize) -> Reader {
        let mut cursor_of = vec![None; partitions];
        for (i, c) in cursors.iter().enumerate() {
            if let Some(slot) = cursor_of.get_mut(c.partition as usize) {
                *slot = Some(i);
            }
        }
        Reader {
            topic,
            cursors,
            cursor_of,
        }
    }

    /// Fetches until the printer is done or `timeout` passes with no record.
    fn run<W: Write>(
        &mut self,
        connections: &mut Connections,
        printer: &mut Printer<W>,
        timeout: Option<Duration>,
    ) -> Result<(), CliError> {
        let mut last_record_at = Instant::now();
        loop {
            let printed_before = printer.printed;
            let left = timeout.map(|t| t.saturating_sub(last_record_at.elapsed()));
            self.round(connections, printer, fetch_wait_ms(left))?;
            if printer.done() {
                return Ok(());
            }
            if printer.printed > printed_before {
                last_record_at = Instant::now();
                printer.flush()?;
            } else if timeout.is_some_and(|t| last_record_at.elapsed() >= t) {
                return Ok(());
            }
        }
    }

    /// One fetch on every connection, then every answer.
    fn round<W: Write>(
        &mut self,
        connections: &mut Connections,
        printer: &mut Printer<W>,
        wait_ms: u32,
    ) -> Result<(), CliError> {
        let mut sent = Vec::new();
        for (conn, connection) in connections.conns.iter_mut().enumerate() {
            if let Some(request) = self.fetch_request(conn, wait_ms) {
                connection.client.send(&request)?;
                sent.push(conn);
            }
        }
        for conn in sent {
            let response = connections.conns[conn].client.recv()?;
            if !response.error.is_ok() {
                let (error, message) = (response.error, response.message);
                return Err(CliError(format!(
                    "fetch {}: {error}: {message}",
                    self.topic
                )));
            }
            let ResponseBody::Fetch(fetch) = response.body else {
                return Err(ClientError::UnexpectedResponse.into());
            };
            for partition in &fetch.partitions {
                // Once done, the rest is not printed; answers still in
                // flight die with the connections.
                if printer.done() {
                    return Ok(());
                }
                self.absorb(partition, printer)?;
            }
        }
        Ok(())
    }

    /// The fetch for the partitions reached over connection `conn`, if any.
    fn fetch_request(&self, conn: usize, wait_ms: u32) -> Option<Request> {
        let partitions: Vec<FetchPartition> = self
            .cursors
            .iter()
            .filter(|c| c.conn == conn)
            .map(|c| FetchPartition {
                topic: self.topic.clone(),
                partition: c.partition,
                offset: c.next,
                max_bytes: FETCH_PARTITION_BYTES_MAX,
            })
            .collect();
        if partitions.is_empty() {
            return None;
        }
        Some(Request::Fetch(FetchRequest {
            max_wait_ms: wait_ms,
            min_bytes: 1,
            max_bytes: FETCH_BYTES_MAX,
            partitions,
        }))
    }

    /// Prints one partition's new records and moves its cursor past them.
    fn absorb<W: Write>(
        &mut self,
        response: &FetchPartitionResponse,
        printer: &mut Printer<W>,
    ) -> Result<(), CliError> {
        let topic = &self.topic;
        let p = response.partition;
        let index = self.cursor_of.get(p as usize).copied().flatten();
        let Some(cursor) = index.and_then(|i| self.cursors.get_mut(i)) else {
            return Err(CliError(format!(
                "fetch {topic}: partition {p} was not asked for"
            )));
        };
        if response.error == ErrorCode::OFFSET_OUT_OF_RANGE {
            let (start, end) = (response.log_start_offset, response.log_end_offset);
            let next = cursor.next;
            return Err(CliError(format!(
                "{topic} partition {p}: offset {next} is out of range: \
                 valid offsets are {start} to {end}"
            )));
        }
        if !response.error.is_ok() {
            return Err(CliError(format!(
                "{topic} partition {p}: {}",
                response.error
            )));
        }
        for chunk in &response.records {
            absorb_chunk(cursor, chunk, printer)
                .map_err(|e| CliError(format!("{topic} partition {p}: {e}")))?;
        }
        Ok(())
    }
}

/// How long a fetch may wait: the most we ask for, or less when the
/// timeout has only `left` to run.
fn fetch_wait_ms(left: Option<Duration>) -> u32 {
    let left_ms = left.map_or(u128::MAX, |d| d.as_millis());
    u32::try_from(left_ms.min(u128::from(FETCH_WAIT_MS_MAX))).unwrap_or(FETCH_WAIT_MS_MAX)
}

/// Prints the records of `chunk` at or after the cursor, stopping when the
/// printer is done. A partial batch at the end (a fetch cut at its size
/// limit) is left for the next fetch, unless nothing came before it.
fn absorb_chunk<W: Write>(
    cursor: &mut Cursor,
    chunk: &Bytes,
    printer: &mut Printer<W>,
) -> Result<(), String> {
    let next_before = cursor.next;
    for item in batch::split(chunk) {
        let (range, header) = match item {
            Ok(found) => found,
            Err(BatchError::Truncated { needed, .. }) if cursor.next == next_before => {
                return Err(format!("a batch of {needed} bytes is larger than a fetch"));
            }
            Err(BatchError::Truncated { .. }) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        if header.last_offset() < cursor.next {
            continue;
        }
        let bytes = &chunk[range];
        if batch::compute_crc(bytes) != header.crc {
            let offset = header.base_offset;
            return Err(format!("batch at offset {offset} fails its CRC check"));
        }
        if !header.is_control() {
            print_batch(cursor, bytes, printer)?;
            if printer.done() {
                return Ok(());
            }
        }
        cursor.next = cursor.next.max(header.last_offset().saturating_add(1));
    }
    Ok(())
}

/// Prints one batch's records at or after the cursor.
fn print_batch<W: Write>(
    cursor: &mut Cursor,
    batch_bytes: &[u8],
    printer: &mut Printer<W>,
) -> Result<(), String> {
    for record in batch::records(batch_bytes).map_err(|e| e.to_string())? {
        let record = record.map_err(|e| e.to_string())?;
        if record.offset < cursor.next {
            continue;
        }
        printer
            .record(cursor.partition, record.offset, record.value)
            .map_err(|e| format!("writing stdout: {e}"))?;
        cursor.next = record.offset.saturating_add(1);
        if printer.done() {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use sluice_protocol::batch::BatchBuilder;

    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ConsumeArgs,
    }

    fn parse(args: &[&str]) -> Result<ConsumeArgs, clap::Error> {
        let argv = std::iter::once("consume").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.args)
    }

    #[test]
    fn defaults_read_everything_from_the_earliest_offset() {
        let expected = ConsumeArgs {
            topic: "t".into(),
            from: StartAt::Earliest,
            count: None,
            partition: None,
            group: None,
            timeout_ms: None,
            print_offsets: false,
            connect: ConnectArgs {
                bootstrap: "127.0.0.1:9192".into(),
            },
        };
        assert_eq!(parse(&["t"]).expect("parses"), expected);
    }

    #[test]
    fn every_option_parses() {
        let argv = [
            "t",
            "--from",
            "42",
            "--count",
            "10",
            "--partition",
            "2",
            "--timeout-ms",
            "1000",
            "--print-offsets",
            "--bootstrap",
            "h:1",
        ];
        let args = parse(&argv).expect("parses");
        assert_eq!(args.from, StartAt::Offset(42));
        assert_eq!(
            (args.count, args.partition, args.timeout_ms),
            (Some(10), Some(2), Some(1000))
        );
        assert!(args.print_offsets);
        assert_eq!(args.connect.bootstrap, "h:1");
        assert_eq!(
            parse(&["t", "--from", "latest"]).expect("latest").from,
            StartAt::Latest
        );
        assert!(parse(&["t", "--from", "-1"]).is_err());
        assert!(parse(&["t", "--from", "soon"]).is_err());
    }

    #[test]
    fn group_parses_and_excludes_a_single_partition() {
        let args = parse(&["t", "--group", "g", "--from", "latest"]).expect("parses");
        assert_eq!(args.group.as_deref(), Some("g"));
        assert!(parse(&["t", "--group", "g", "--partition", "1"]).is_err());
    }

    /// A batch of `values` starting at `base_offset`.
    fn batch_at(base_offset: i64, values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut builder = BatchBuilder::new(0);
        for value in values {
            builder.push(0, None, *value, &[]);
        }
        let mut bytes = builder.finish();
        batch::stamp(&mut bytes, base_offset, 0);
        bytes
    }

    fn cursor(next: i64) -> Cursor {
        Cursor {
            partition: 3,
            next,
            conn: 0,
        }
    }

    fn printed(printer: Printer<Vec<u8>>) -> String {
        String::from_utf8(printer.out).expect("utf-8")
    }

    #[test]
    fn records_before_the_cursor_are_skipped() {
        let mut chunk = batch_at(0, &[Some(b"a"), Some(b"b"), Some(b"c")]);
        chunk.extend(batch_at(3, &[Some(b"d"), None]));
        let mut c = cursor(2);
        let mut printer = Printer::new(Vec::new(), false, None);
        absorb_chunk(&mut c, &Bytes::from(chunk), &mut printer).expect("absorbs");
        assert_eq!(c.next, 5);
        assert_eq!(printed(printer), "c\nd\n\n");
    }

    #[test]
    fn offsets_are_printed_on_request_and_count_stops_exactly() {
        let chunk = Bytes::from(batch_at(7, &[Some(b"x"), Some(b"y"), Some(b"z")]));
        let mut c = cursor(0);
        let mut printer = Printer::new(Vec::new(), true, Some(2));
        absorb_chunk(&mut c, &chunk, &mut printer).expect("absorbs");
        assert!(printer.done());
        assert_eq!(c.next, 9);
        assert_eq!(printed(printer), "3\t7\tx\n3\t8\ty\n");
    }

    #[test]
    fn a_trailing_partial_batch_waits_for_the_next_fetch() {
        let mut chunk = batch_at(0, &[Some(b"a")]);
        let second = batch_at(1, &[Some(b"b")]);
        chunk.extend_from_slice(&second[..second.len() - 1]);
        let mut c = cursor(0);
        let mut printer = Printer::new(Vec::new(), false, None);
        absorb_chunk(&mut c, &Bytes::from(chunk), &mut printer).expect("absorbs");
        assert_eq!((c.next, printed(printer).as_str()), (1, "a\n"));
        let cut = Bytes::from(second[..second.len() - 1].to_vec());
        let mut printer = Printer::new(Vec::new(), false, None);
        assert!(absorb_chunk(&mut c, &cut, &mut printer).is_err());
    }

    #[test]
    fn a_corrupt_batch_is_an_error() {
        let mut chunk = batch_at(0, &[Some(b"abc")]);
        let last = chunk.len() - 1;
        chunk[last] ^= 0xff;
        let mut printer = Printer::new(Vec::new(), false, None);
        let result = absorb_chunk(&mut cursor(0), &Bytes::from(chunk), &mut printer);
        assert!(result.expect_err("fails").contains("CRC"));
    }

    #[test]
    fn a_closed_pipe_ends_output_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut printer = Printer::new(Closed, false, None);
        assert!(printer.record(0, 0, Some(b"v")).is_ok());
        assert!(printer.done());
    }

    fn fetched(error: ErrorCode, records: Vec<u8>) -> FetchPartitionResponse {
        FetchPartitionResponse {
            topic: "t".into(),
            partition: 3,
            error,
            high_watermark: 10,
            log_start_offset: 4,
            log_end_offset: 10,
            records: vec![Bytes::from(records)],
        }
    }

    #[test]
    fn fetches_wait_no_longer_than_the_timeout_has_left() {
        assert_eq!(fetch_wait_ms(None), FETCH_WAIT_MS_MAX);
        assert_eq!(
            fetch_wait_ms(Some(Duration::from_secs(60))),
            FETCH_WAIT_MS_MAX
        );
        assert_eq!(fetch_wait_ms(Some(Duration::from_millis(120))), 120);
        assert_eq!(fetch_wait_ms(Some(Duration::ZERO)), 0);
    }

    #[test]
    fn out_of_range_names_the_valid_offsets() {
        let mut reader = Reader::new("t".into(), vec![cursor(99)], 4);
        let mut printer = Printer::new(Vec::new(), false, None);
        let response = fetched(ErrorCode::OFFSET_OUT_OF_RANGE, vec![]);
        let e = reader.absorb(&response, &mut printer).expect_err("fails");
        assert_eq!(
            e.0,
            "t partition 3: offset 99 is out of range: valid offsets are 4 to 10"
        );
    }

    #[test]
    fn absorb_moves_the_partitions_cursor() {
        let mut reader = Reader::new("t".into(), vec![cursor(4)], 4);
        let mut printer = Printer::new(Vec::new(), false, None);
        let response = fetched(ErrorCode::NONE, batch_at(4, &[Some(b"v")]));
        reader.absorb(&response, &mut printer).expect("absorbs");
        assert_eq!(reader.cursors[0].next, 5);
        let other = FetchPartitionResponse {
            partition: 1,
            ..response
        };
        assert!(reader.absorb(&other, &mut printer).is_err());
    }
}
