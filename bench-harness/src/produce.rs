//! One producer: builds batches of stamped records, sends each to the
//! shard that owns its partition, keeps up to `--in-flight` requests
//! outstanding per connection, and times each acknowledgement from the
//! batch's intended send time. A generator thread runs several
//! ([`crate::worker`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hdrhistogram::Histogram;
use sluice_protocol::batch::{BatchBuilder, BATCH_HEADER_BYTES};
use sluice_protocol::native::Acks;

use crate::conn::{Conn, RESPONSE_TIMEOUT};
use crate::error::BenchError;
use crate::payload::{compress_batch, Codec, Payload};
use crate::report;
use crate::run::{Clock, Progress};
use crate::schedule::Schedule;
use crate::worker::Step;
use crate::ProduceOpts;

/// Bytes at the front of each value: its intended send time, nanoseconds
/// after the run's start, big-endian.
pub const STAMP_BYTES: usize = 8;
/// The broker's largest batch (`shard::limits::BATCH_BYTES_MAX`).
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The most a record's framing adds to its value: length, attributes,
/// timestamp and offset deltas, key and value lengths, header count.
const RECORD_OVERHEAD_BYTES_MAX: usize = 5 + 1 + 10 + 5 + 1 + 5 + 1;

/// The smallest `--batch-bytes` that holds one record of `record_bytes`.
#[must_use]
pub fn batch_bytes_min(record_bytes: usize) -> usize {
    BATCH_HEADER_BYTES + RECORD_OVERHEAD_BYTES_MAX + record_bytes
}

/// The stamp at the front of a value, if it has one.
#[must_use]
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    let head: [u8; STAMP_BYTES] = value.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// What one producer does.
pub struct Plan {
    /// Its connections, and the partitions each one writes.
    pub conns: Vec<(Conn, Vec<u32>)>,
    /// Its share of --records (`None`: until the deadline).
    pub records: Option<u64>,
    pub schedule: Schedule,
}

/// What one producer measured.
pub struct Outcome {
    pub ack_us: Histogram<u64>,
    /// The same latencies, second by second.
    pub ack_per_s: report::PerSecond,
    /// Records and record-batch bytes acknowledged (sent, with acks=0)
    /// whose batch was due after the warm-up.
    pub measured_records: u64,
    pub measured_bytes: u64,
    /// Record-batch bytes acknowledged over the whole run, warm-up included.
    pub total_bytes: u64,
    pub last_ack: Option<Instant>,
}

/// A batch sent and not yet acknowledged.
struct Pending {
    intended: Instant,
    records: u64,
    bytes: u64,
}

struct Producer<'a> {
    topic: &'a str,
    opts: &'a ProduceOpts,
    clock: &'a Clock,
    progress: &'a Progress,
    in_flight: Vec<VecDeque<Pending>>,
    out: Outcome,
}

/// One producer, run by a generator thread beside others ([`crate::worker`]):
/// [`Task::step`] sends what is due, [`Task::readable`] takes an answer.
pub struct Task<'a> {
    p: Producer<'a>,
    conns: Vec<Conn>,
    /// Batches go round the partitions, each to its shard's connection.
    targets: Vec<(usize, u32)>,
    records: Option<u64>,
    schedule: Schedule,
    payload: Payload,
    sent: u64,
    batch_no: usize,
    /// The last send or answer: no answer for [`RESPONSE_TIMEOUT`] while
    /// requests are out fails the run.
    last_activity: Instant,
}

impl<'a> Task<'a> {
    pub fn new(
        plan: Plan,
        topic: &'a str,
        opts: &'a ProduceOpts,
        clock: &'a Clock,
        progress: &'a Progress,
    ) -> Task<'a> {
        let Plan {
            conns,
            records,
            schedule,
        } = plan;
        let (conns, partitions): (Vec<Conn>, Vec<Vec<u32>>) = conns.into_iter().unzip();
        let targets: Vec<(usize, u32)> = partitions
            .iter()
            .enumerate()
            .flat_map(|(c, ps)| ps.iter().map(move |&p| (c, p)))
            .collect();
        // Each producer its own sizes and text (its partitions differ).
        let seed = targets.first().map_or(1, |&(_, p)| u64::from(p) + 1);
        let payload = Payload::new(
            opts.record_bytes,
            opts.key_bytes,
            opts.key_space,
            opts.partitions,
            seed,
        );
        Task {
            p: Producer {
                topic,
                opts,
                clock,
                progress,
                in_flight: conns.iter().map(|_| VecDeque::new()).collect(),
                out: Outcome {
                    ack_us: report::histogram(),
                    ack_per_s: report::PerSecond::default(),
                    measured_records: 0,
                    measured_bytes: 0,
                    total_bytes: 0,
                    last_ack: None,
                },
            },
            conns,
            targets,
            records,
            schedule,
            payload,
            sent: 0,
            batch_no: 0,
            last_activity: Instant::now(),
        }
    }

    /// Sends every batch that is due and has a free slot; says when to
    /// come back.
    pub fn step(&mut self) -> Result<Step, BenchError> {
        let in_flight_max = self.p.opts.in_flight as usize;
        let clock = self.p.clock;
        loop {
            let now = Instant::now();
            let due = self
                .schedule
                .due_after(self.sent)
                .map_or(now, |d| clock.start + d);
            let room = self
                .records
                .map_or(u64::MAX, |n| n.saturating_sub(self.sent));
            let sending =
                room > 0 && clock.deadline.is_none_or(|d| due < d) && !self.targets.is_empty();
            let next = self
                .targets
                .get(self.batch_no % self.targets.len().max(1))
                .copied();
            let out = self.p.in_flight.iter().any(|q| !q.is_empty());
            if let (true, Some((c, partition))) = (sending, next) {
                if due <= now && self.p.in_flight[c].len() < in_flight_max {
                    let n = self.schedule.batch_records(room, self.p.opts.linger_ms);
                    let batch = build_batch(
                        &mut self.payload,
                        partition,
                        n,
                        self.p.opts.batch_bytes,
                        due - clock.start,
                        clock.start_wall_ms,
                        self.p.opts.compression,
                    )?;
                    let records = self.p.send(&mut self.conns[c], c, partition, due, batch)?;
                    self.sent += records;
                    self.batch_no += 1;
                    self.last_activity = Instant::now();
                    continue;
                }
            } else if !out {
                return Ok(Step::Done);
            }
            if out && now.duration_since(self.last_activity) >= RESPONSE_TIMEOUT {
                return Err(BenchError::new(format!(
                    "no produce response within {}s",
                    RESPONSE_TIMEOUT.as_secs()
                )));
            }
            // Back when the next batch is due (if it has a free slot to go
            // into), or when an answer arrives.
            let slot_free = next.is_some_and(|(c, _)| self.p.in_flight[c].len() < in_flight_max);
            let answer_by = self.last_activity + RESPONSE_TIMEOUT;
            return Ok(Step::Until(if sending && slot_free {
                due.min(answer_by)
            } else {
                answer_by
            }));
        }
    }

    /// The connections with answers to come, as (index, socket).
    pub fn watched(&self, out: &mut Vec<(usize, std::os::fd::RawFd)>) {
        for (c, conn) in self.conns.iter().enumerate() {
            if !self.p.in_flight[c].is_empty() {
                out.push((c, conn.fd()));
            }
        }
    }

    /// Connection `c` is readable: takes its oldest answer.
    pub fn readable(&mut self, c: usize) -> Result<(), BenchError> {
        self.p.complete(&mut self.conns[c], c)?;
        self.last_activity = Instant::now();
        Ok(())
    }

    /// Its measurements; the run learns one producer fewer is left.
    pub fn finish(self) -> Outcome {
        self.p
            .progress
            .producers_left
            .fetch_sub(1, Ordering::AcqRel);
        self.p.out
    }
}

/// A batch of up to `records` records for `partition`, stamped `due`,
/// filled to at most `batch_bytes` (before compression) and compressed with
/// `codec`; returns it and how many records it holds. Its CreateTime is the
/// wall-clock time the batch was due (`start_wall_ms` + `due`), as a Kafka
/// producer stamps the time of `send()`.
fn build_batch(
    payload: &mut Payload,
    partition: u32,
    records: u64,
    batch_bytes: usize,
    due: std::time::Duration,
    start_wall_ms: i64,
    codec: Codec,
) -> Result<(Vec<u8>, u64), BenchError> {
    let now_ms = start_wall_ms.saturating_add(i64::try_from(due.as_millis()).unwrap_or(i64::MAX));
    let stamp_ns = u64::try_from(due.as_nanos()).unwrap_or(u64::MAX);
    let mut builder = BatchBuilder::with_capacity(now_ms, batch_bytes);
    let mut count = 0u64;
    while count < records {
        let (key, value) = payload.next(partition, stamp_ns);
        let record_bytes = key.map_or(0, <[u8]>::len) + value.len();
        // The first record always fits: validated by `batch_bytes_min`.
        if count > 0
            && builder.size_bytes() + RECORD_OVERHEAD_BYTES_MAX + record_bytes > batch_bytes
        {
            break;
        }
        builder.push(now_ms, key, Some(value), &[]);
        count += 1;
    }
    let batch = compress_batch(builder.finish(), codec).map_err(BenchError::new)?;
    Ok((batch, count))
}

impl Producer<'_> {
    fn send(
        &mut self,
        conn: &mut Conn,
        c: usize,
        partition: u32,
        intended: Instant,
        (batch, records): (Vec<u8>, u64),
    ) -> Result<u64, BenchError> {
        let bytes = batch.len() as u64;
        conn.send_produce(self.topic, partition, self.opts.acks, batch)
            .map_err(|e| e.context("sending a produce"))?;
        if self.opts.acks == Acks::None {
            self.acknowledged(
                &Pending {
                    intended,
                    records,
                    bytes,
                },
                Instant::now(),
            );
        } else {
            let pending = Pending {
                intended,
                records,
                bytes,
            };
            self.in_flight[c].push_back(pending);
        }
        Ok(records)
    }

    /// Reads the oldest answer on connection `c`.
    fn complete(&mut self, conn: &mut Conn, c: usize) -> Result<(), BenchError> {
        let result = conn.recv_produce();
        let acked_at = Instant::now();
        result.map_err(|e| e.context("reading a produce response"))?;
        let Some(pending) = self.in_flight[c].pop_front() else {
            return Err(BenchError::new("a produce response that was not asked for"));
        };
        self.acknowledged(&pending, acked_at);
        Ok(())
    }

    fn acknowledged(&mut self, batch: &Pending, at: Instant) {
        self.progress
            .produced
            .fetch_add(batch.records, Ordering::Release);
        self.out.total_bytes += batch.bytes;
        if batch.intended >= self.clock.measure_from {
            if self.opts.acks != Acks::None {
                report::record(&mut self.out.ack_us, at - batch.intended);
                self.out
                    .ack_per_s
                    .record(at - self.clock.start, at - batch.intended);
            }
            self.out.measured_records += batch.records;
            self.out.measured_bytes += batch.bytes;
            self.out.last_ack = Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::batch;

    fn fixed(n: usize) -> Payload {
        Payload::new(crate::payload::RecordSize::Fixed(n), 0, 1, 1, 1)
    }

    #[test]
    fn stamps_round_trip() {
        let mut p = fixed(16);
        let (_, value) = p.next(0, 123_456_789);
        assert_eq!(read_stamp(value), Some(123_456_789));
        assert_eq!(read_stamp(&value[..7]), None);
    }

    #[test]
    fn batches_stop_at_their_byte_bound() {
        let bytes_max = 4_096;
        let due = std::time::Duration::from_millis(3);
        let (b, n) = build_batch(
            &mut fixed(100),
            0,
            1_000,
            bytes_max,
            due,
            1_000,
            Codec::None,
        )
        .expect("batch");
        assert!(b.len() <= bytes_max, "{} bytes", b.len());
        assert!(n > 20, "{n} records");
        let header = batch::validate(&b).expect("a valid batch");
        assert_eq!(u64::from(header.record_count_u32()), n);
        let first = batch::records(&b).expect("records").next();
        let value = first.and_then(Result::ok).and_then(|r| r.value);
        assert_eq!(value.and_then(read_stamp), Some(3_000_000));
        assert_eq!(header.base_timestamp, 1_003, "CreateTime = start + due");
        let (_, few) =
            build_batch(&mut fixed(100), 0, 5, bytes_max, due, 0, Codec::None).expect("batch");
        assert_eq!(few, 5);
        let (_, one) = build_batch(
            &mut fixed(100),
            0,
            9,
            batch_bytes_min(100),
            due,
            0,
            Codec::None,
        )
        .expect("batch");
        assert_eq!(one, 1);
    }

    /// Varied sizes, keys and compression: every record arrives with its
    /// key and stamp, and the batch's byte bound holds before compression.
    #[test]
    fn keyed_compressed_batches_of_varied_sizes() {
        let size = "uniform:8-600".parse().expect("size");
        let mut p = Payload::new(size, 10, 50, 4, 3);
        let due = std::time::Duration::from_millis(7);
        let (b, n) = build_batch(&mut p, 3, 10_000, 65_536, due, 0, Codec::Zstd).expect("batch");
        assert!(n > 50, "{n} records");
        let header = batch::validate(&b).expect("a valid batch");
        assert_eq!(u64::from(header.record_count_u32()), n);
        let plain = crate::payload::decompress_batch(&b, &header).expect("decompress");
        assert!(plain.len() <= 65_536 && plain.len() > b.len());
        let mut sizes = std::collections::BTreeSet::new();
        for r in batch::records(&plain).expect("records") {
            let r = r.expect("record");
            let key = std::str::from_utf8(r.key.expect("keyed")).expect("ascii");
            let index: u64 = key.trim_start_matches('k').parse().expect("a number");
            assert_eq!(index % 4, 3, "key {key} belongs to partition 3");
            let value = r.value.expect("value");
            assert_eq!(read_stamp(value), Some(7_000_000));
            sizes.insert(value.len());
        }
        assert!(sizes.len() > 20, "sizes vary: {sizes:?}");
    }
}
