//! One consumer: keeps one fetch in flight on each of its connections (one
//! per shard), reads whichever answers first, checks each batch's CRC, and
//! counts records; in an e2e run it also reads each record's stamp and times
//! its end-to-end latency. A generator thread runs several
//! ([`crate::worker`]).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sluice_protocol::batch::{self, BatchError};

use crate::conn::{Conn, Fetched};
use crate::error::BenchError;
use crate::group;
use crate::payload;
use crate::produce::read_stamp;
use crate::report;
use crate::run::{Clock, Progress};
use crate::worker::Step;

/// How long the broker may hold a fetch that finds nothing new.
const FETCH_WAIT_MS: u32 = 100;
/// How often a consumer looks at the stop conditions while it waits.
const IDLE_CHECK: Duration = Duration::from_millis(20);

/// One partition being read.
#[derive(Clone, Copy, Debug)]
pub struct Cursor {
    pub partition: u32,
    /// The next offset to read.
    pub next: i64,
}

/// What one consumer does.
pub struct Plan {
    /// Its connections, and the cursors each one reads.
    pub conns: Vec<(Conn, Vec<Cursor>)>,
    /// Its membership of a coordinated group (`--coordinated-groups`).
    pub member: Option<group::Member>,
}

/// When consumers stop, besides the clock's deadline.
#[derive(Clone, Copy, Debug)]
pub enum Until {
    /// When all threads together have read this many.
    Records(u64),
    /// When the producers are done and everything they wrote is read by
    /// each of this many consumer groups.
    ProducersDone { groups: u32 },
    /// Only the deadline (or the idle timeout) ends the run.
    Deadline,
}

pub struct Outcome {
    pub e2e_us: Option<Histogram<u64>>,
    /// The same latencies, second by second.
    pub e2e_per_s: report::PerSecond,
    pub measured_records: u64,
    pub measured_bytes: u64,
    /// Record-batch bytes read over the whole run, warm-up included.
    pub total_bytes: u64,
    pub last_record: Option<Instant>,
    /// The run ended because nothing arrived for the idle timeout.
    pub idled: bool,
}

pub struct Settings<'a> {
    pub topic: &'a str,
    pub fetch_bytes: u32,
    pub idle_timeout: Duration,
    pub until: Until,
    /// Read stamps and time end-to-end latency (e2e runs only).
    pub stamped: bool,
}

/// One consumer, run by a generator thread beside others
/// ([`crate::worker`]): [`Task::step`] keeps a fetch in flight on each of its
/// connections, [`Task::readable`] takes an answer.
pub struct Task<'a> {
    settings: &'a Settings<'a>,
    clock: &'a Clock,
    progress: &'a Progress,
    member: Option<group::Member>,
    conns: Vec<Conn>,
    cursors: Vec<Vec<Cursor>>,
    waiting: Vec<bool>,
    last_progress: Instant,
    out: Outcome,
}

impl<'a> Task<'a> {
    pub fn new(
        plan: Plan,
        settings: &'a Settings<'a>,
        clock: &'a Clock,
        progress: &'a Progress,
    ) -> Task<'a> {
        let (conns, cursors): (Vec<Conn>, Vec<Vec<Cursor>>) = plan.conns.into_iter().unzip();
        Task {
            settings,
            clock,
            progress,
            member: plan.member,
            waiting: vec![false; conns.len()],
            conns,
            cursors,
            last_progress: Instant::now(),
            out: Outcome {
                e2e_us: settings.stamped.then(report::histogram),
                e2e_per_s: report::PerSecond::default(),
                measured_records: 0,
                measured_bytes: 0,
                total_bytes: 0,
                last_record: None,
                idled: false,
            },
        }
    }

    fn positions(&self) -> Vec<(u32, i64)> {
        self.cursors
            .iter()
            .flatten()
            .map(|c| (c.partition, c.next))
            .collect()
    }

    /// Stops when the run is over; otherwise heartbeats or commits when
    /// due and sends a fetch on each connection without one.
    pub fn step(&mut self) -> Result<Step, BenchError> {
        if done(self.settings.until, self.clock, self.progress) {
            return Ok(Step::Done);
        }
        if self.last_progress.elapsed() >= self.settings.idle_timeout {
            self.out.idled = true;
            return Ok(Step::Done);
        }
        // Positions are gathered only when a heartbeat or commit is due.
        if self.member.as_ref().is_some_and(group::Member::due) {
            let positions = self.positions();
            if let Some(m) = self.member.as_mut() {
                m.tick(&positions)?;
            }
        }
        for (c, conn) in self.conns.iter_mut().enumerate() {
            if !self.waiting[c] {
                conn.send_fetch(
                    self.settings.topic,
                    &self.cursors[c],
                    self.settings.fetch_bytes,
                    FETCH_WAIT_MS,
                )?;
                self.waiting[c] = true;
            }
        }
        Ok(Step::Until(Instant::now() + IDLE_CHECK))
    }

    /// The connections with a fetch in flight, as (index, socket).
    pub fn watched(&self, out: &mut Vec<(usize, std::os::fd::RawFd)>) {
        for (c, conn) in self.conns.iter().enumerate() {
            if self.waiting[c] {
                out.push((c, conn.fd()));
            }
        }
    }

    /// Connection `c` is readable: takes its fetch's answer.
    pub fn readable(&mut self, c: usize) -> Result<(), BenchError> {
        let fetched = self.conns[c]
            .recv_fetch()
            .map_err(|e| e.context("reading a fetch response"))?;
        let received_at = Instant::now();
        self.waiting[c] = false;
        let mut got = 0;
        for partition in &fetched {
            got += absorb(
                self.settings.topic,
                partition,
                &mut self.cursors[c],
                received_at,
                self.clock,
                &mut self.out,
            )?;
        }
        if got > 0 {
            self.progress.consumed.fetch_add(got, Ordering::Relaxed);
            self.last_progress = received_at;
        }
        Ok(())
    }

    /// Leaves its group (committing where it got to); its measurements.
    pub fn finish(self) -> Result<Outcome, BenchError> {
        let positions = self.positions();
        if let Some(m) = self.member {
            m.leave(&positions)?;
        }
        Ok(self.out)
    }
}

fn done(until: Until, clock: &Clock, progress: &Progress) -> bool {
    if clock.deadline.is_some_and(|d| Instant::now() >= d) {
        return true;
    }
    let consumed = progress.consumed.load(Ordering::Relaxed);
    match until {
        Until::Records(n) => consumed >= n,
        Until::ProducersDone { groups } => {
            progress.producers_left.load(Ordering::Acquire) == 0
                && consumed
                    >= progress
                        .produced
                        .load(Ordering::Acquire)
                        .saturating_mul(u64::from(groups))
        }
        Until::Deadline => false,
    }
}

/// Takes one partition's answer: moves its cursor past the whole batches
/// in it and counts their records; returns how many were new.
fn absorb(
    topic: &str,
    response: &Fetched,
    cursors: &mut [Cursor],
    received_at: Instant,
    clock: &Clock,
    out: &mut Outcome,
) -> Result<u64, BenchError> {
    let p = response.partition;
    let where_ = || format!("{topic} partition {p}");
    let Some(cursor) = cursors.iter_mut().find(|c| c.partition == p) else {
        return Err(BenchError::new(format!("{}: not asked for", where_())));
    };
    if let Some(error) = &response.error {
        return Err(BenchError::new(format!(
            "{} at offset {}: {error}",
            where_(),
            cursor.next,
        )));
    }
    let mut got = 0;
    for chunk in &response.chunks {
        got += absorb_chunk(cursor, chunk, received_at, clock, out)
            .map_err(|e| BenchError::new(format!("{}: {e}", where_())))?;
    }
    Ok(got)
}

fn absorb_chunk(
    cursor: &mut Cursor,
    chunk: &[u8],
    received_at: Instant,
    clock: &Clock,
    out: &mut Outcome,
) -> Result<u64, String> {
    let mut got = 0;
    let mut advanced = false;
    for item in batch::split(chunk) {
        let (range, header) = match item {
            Ok(found) => found,
            // A fetch cut at its size bound: the rest comes next time.
            Err(BatchError::Truncated { .. }) if advanced => break,
            Err(BatchError::Truncated { needed, .. }) => {
                return Err(format!(
                    "a batch of {needed} bytes is larger than --fetch-bytes"
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        let last = header.last_offset();
        if last < cursor.next {
            continue;
        }
        advanced = true;
        let bytes = &chunk[range];
        if batch::compute_crc(bytes) != header.crc {
            return Err(format!(
                "batch at offset {} fails its CRC",
                header.base_offset
            ));
        }
        let (new, measured) = if header.is_control() {
            (0, 0)
        } else if let Some(h) = out.e2e_us.as_mut() {
            // Compressed batches are walked decompressed (their CRC, checked
            // above, covers what was sent).
            let plain;
            let walk = if header.compression().is_ok_and(|c| c.id() != 0) {
                plain = payload::decompress_batch(bytes, &header)?;
                &plain[..]
            } else {
                bytes
            };
            stamped_records(walk, cursor.next, received_at, clock, h, &mut out.e2e_per_s)?
        } else {
            let n = u64::try_from(last - cursor.next.max(header.base_offset) + 1).unwrap_or(0);
            (n, n)
        };
        let count = u64::from(header.record_count_u32().max(1));
        out.measured_records += measured;
        out.measured_bytes += bytes.len() as u64 * measured / count;
        out.total_bytes += bytes.len() as u64 * new / count;
        if new > 0 {
            out.last_record = Some(received_at);
        }
        got += new;
        cursor.next = last.saturating_add(1);
    }
    Ok(got)
}

/// Reads the records at or after `from` in an e2e batch, timing those due
/// after the warm-up from their stamps; returns (records read, measured).
fn stamped_records(
    batch_bytes: &[u8],
    from: i64,
    received_at: Instant,
    clock: &Clock,
    e2e_us: &mut Histogram<u64>,
    per_s: &mut report::PerSecond,
) -> Result<(u64, u64), String> {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let received_ns = ns(received_at - clock.start);
    let measure_from_ns = ns(clock.measure_from - clock.start);
    let (mut read, mut measured) = (0, 0);
    // Every record of the batch arrived at the same moment.
    let mut this_second = per_s.at(Duration::from_nanos(received_ns));
    for record in batch::records(batch_bytes).map_err(|e| e.to_string())? {
        let record = record.map_err(|e| e.to_string())?;
        if record.offset < from {
            continue;
        }
        read += 1;
        let value = record.value.unwrap_or_default();
        let Some(stamp_ns) = read_stamp(value) else {
            return Err(format!("record {} has no send-time stamp", record.offset));
        };
        if stamp_ns >= measure_from_ns {
            let latency_ns = received_ns.saturating_sub(stamp_ns);
            report::record(e2e_us, Duration::from_nanos(latency_ns));
            if let Some(h) = this_second.as_deref_mut() {
                report::record(h, Duration::from_nanos(latency_ns));
            }
            measured += 1;
        }
    }
    Ok((read, measured))
}
