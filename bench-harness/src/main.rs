//! `sluice-bench`: a load generator for Sluice over its native protocol or
//! for any Kafka-compatible broker over the Kafka protocol, and (`compare`)
//! a side-by-side run of Apache Kafka and Sluice.
//!
//! - `produce`: producers write records, flat out or on a fixed-rate
//!   schedule, and time each batch's acknowledgement.
//! - `consume`: consumers read a topic, each a disjoint set of partitions.
//! - `e2e`: both at once; every record's value starts with its intended send
//!   time, so the consumers measure end-to-end latency per record.
//!
//! The generator is thread-per-core too (`worker`): one plain `std::thread`
//! per CPU (`--threads`), each running its share of the producers and
//! consumers over their blocking [`Client`]s, waiting on all their
//! connections at once. Each producer or consumer has one connection per
//! shard, straight to the shard that owns the partitions it serves (from
//! Metadata), so no request takes a cross-core hop. Every loop ends by a
//! record count, a duration, or an idle timeout.
//!
//! [`Client`]: sluice_protocol::client::Client

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sluice_protocol::native::Acks;

mod cluster;
mod compare;
mod conn;
mod consume;
mod error;
mod group;
mod interrupt;
mod kafka;
mod payload;
mod plot;
mod produce;
mod report;
mod rounds;
mod run;
mod schedule;
mod sendpath;
mod worker;

use error::BenchError;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    version,
    about = "Load generator for Sluice (native protocol) and Kafka-compatible brokers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Produce records and time each batch's acknowledgement.
    Produce(ProduceArgs),
    /// Consume records (each consumer a disjoint set of partitions).
    Consume(ConsumeArgs),
    /// Produce and consume together; measure end-to-end latency per record.
    E2e(E2eArgs),
    /// Run the workload matrix against Apache Kafka and Sluice in turn and
    /// report the ratios.
    Compare(compare::CompareArgs),
    /// Measure what each way of sending bytes to a socket (sendmsg,
    /// MSG_ZEROCOPY, io_uring SEND_ZC, vmsplice, sendfile) costs the sender
    /// per GB on loopback.
    Sendpath(sendpath::SendpathArgs),
}

/// The wire protocol spoken to the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Sluice's native protocol, straight to each partition's shard.
    Native,
    /// The Kafka protocol (Apache Kafka, Sluice's Kafka listener, ...).
    Kafka,
}

/// What every command shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    #[arg(long)]
    pub topic: String,
    /// Any shard's native listener (or, with --protocol kafka, a Kafka
    /// listener); the rest are found through Metadata.
    #[arg(long, default_value = "127.0.0.1:9192")]
    pub bootstrap: String,
    /// native or kafka.
    #[arg(long, value_enum, default_value_t = Protocol::Native)]
    pub protocol: Protocol,
    /// Also write the results as one JSON object to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Write result.json, <latency>.hgrm, latency.svg and latency.hlog (the
    /// HdrHistogram interval log, one histogram per second) into this directory.
    #[arg(long)]
    pub results: Option<std::path::PathBuf>,
    /// Generator threads; the producers and consumers are dealt out to
    /// them in turn (0: one per CPU this process may run on).
    #[arg(long, default_value_t = 0)]
    pub threads: u32,
}

/// When a run ends. At most one of the two; with neither, each command has
/// its own default.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Limit {
    /// Records in all (over all producers), warm-up included.
    #[arg(long, conflicts_with = "duration_s")]
    pub records: Option<u64>,
    /// Seconds, warm-up included.
    #[arg(long)]
    pub duration_s: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct ProduceOpts {
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Bytes of each record's value: a number, `uniform:MIN-MAX`, or
    /// `normal:MEAN,STDDEV` (clamped to 8..MEAN+4*STDDEV). At least 8: a
    /// value starts with its send time.
    #[arg(long, default_value = "100")]
    pub record_bytes: payload::RecordSize,
    /// Bytes of each record's key; 0 = no keys.
    #[arg(long, default_value_t = 0)]
    pub key_bytes: usize,
    /// Distinct keys per partition (with --key-bytes): each partition
    /// cycles through its own, so a key always goes to one partition.
    #[arg(long, default_value_t = 1000)]
    pub key_space: u64,
    /// Compression of each batch: none, gzip, snappy, lz4 or zstd.
    #[arg(long, value_enum, default_value_t = payload::Codec::None)]
    pub compression: payload::Codec,
    /// 0, 1 or all.
    #[arg(long, default_value = "1", value_parser = parse_acks)]
    pub acks: Acks,
    /// The most bytes of one record batch (one produce request).
    #[arg(long, default_value_t = 262_144)]
    pub batch_bytes: usize,
    /// Producers, each with its own connections.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Records per second over all producers; 0 = as fast as acks allow.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// With --rate: a batch holds at most this many milliseconds of the
    /// schedule, so batches stay small at low rates.
    #[arg(long, default_value_t = 1.0)]
    pub linger_ms: f64,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 8)]
    pub in_flight: u32,
    /// Seconds at the start whose batches are sent but not measured.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_s: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeOpts {
    /// Consumers per group, each with its own connections.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Consumer groups: each group is its own set of --consumers consumers
    /// reading every partition. Simulated (offsets kept here, no group
    /// coordinator) unless --coordinated-groups.
    #[arg(long, default_value_t = 1)]
    pub groups: u32,
    /// Run each group through the broker's group coordinator (Kafka
    /// protocol only): members join, get their partitions from the group's
    /// leader (range assignment), heartbeat, commit offsets every 5 s and
    /// leave at the end, as Kafka consumers do.
    #[arg(long)]
    pub coordinated_groups: bool,
    /// The most bytes a fetch returns per partition.
    #[arg(long, default_value_t = 1_048_576)]
    pub fetch_bytes: u32,
    /// Give up after this many seconds without a record.
    #[arg(long, default_value_t = 10.0)]
    pub idle_timeout_s: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub limit: Limit,
    #[command(flatten)]
    pub produce: ProduceOpts,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Records in all; default: the records the topic holds at the start.
    #[command(flatten)]
    pub limit: Limit,
    /// earliest or latest.
    #[arg(long, default_value = "earliest", value_parser = parse_from)]
    pub from: StartAt,
    #[command(flatten)]
    pub consume: ConsumeOpts,
}

#[derive(Args, Debug, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub limit: Limit,
    #[command(flatten)]
    pub produce: ProduceOpts,
    #[command(flatten)]
    pub consume: ConsumeOpts,
}

/// Where consumers start in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
}

fn parse_from(s: &str) -> Result<StartAt, String> {
    match s {
        "earliest" => Ok(StartAt::Earliest),
        "latest" => Ok(StartAt::Latest),
        _ => Err(format!("expected earliest or latest, got {s:?}")),
    }
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        _ => Err(format!("expected 0, 1 or all, got {s:?}")),
    }
}

/// Duration of a produce or e2e run when neither --records nor
/// --duration-s is given.
pub const DURATION_S_DEFAULT: f64 = 10.0;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Produce(args) => run::produce(&args).map(drop),
        Command::Consume(args) => run::consume(&args).map(drop),
        Command::E2e(args) => run::e2e(&args).map(drop),
        Command::Compare(args) => compare::run(&args),
        Command::Sendpath(args) => sendpath::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks what clap cannot: numbers that must be positive or finite, and
/// combinations.
pub fn validate(
    limit: &Limit,
    produce: Option<&ProduceOpts>,
    consume: Option<&ConsumeOpts>,
) -> Result<(), BenchError> {
    if let Some(d) = limit.duration_s {
        if !(d.is_finite() && d > 0.0) {
            return Err(BenchError::usage("--duration-s must be a positive number"));
        }
    }
    if limit.records == Some(0) {
        return Err(BenchError::usage("--records must be at least 1"));
    }
    if consume.is_some_and(|c| c.consumers == 0 || c.groups == 0) {
        return Err(BenchError::usage(
            "--consumers and --groups must be at least 1",
        ));
    }
    let Some(p) = produce else { return Ok(()) };
    let checks = [
        (p.partitions >= 1, "--partitions must be at least 1"),
        (p.producers >= 1, "--producers must be at least 1"),
        (p.in_flight >= 1, "--in-flight must be at least 1"),
        (p.rate.is_finite() && p.rate >= 0.0, "--rate must be >= 0"),
        (
            p.linger_ms.is_finite() && p.linger_ms > 0.0,
            "--linger-ms must be > 0",
        ),
        (
            p.warmup_s.is_finite() && p.warmup_s >= 0.0,
            "--warmup-s must be >= 0",
        ),
        (
            p.record_bytes.min() >= produce::STAMP_BYTES,
            "--record-bytes must be at least 8 (the send time)",
        ),
        (p.key_space >= 1, "--key-space must be at least 1"),
        (
            p.batch_bytes <= produce::BATCH_BYTES_MAX,
            "--batch-bytes must be at most 64 MiB",
        ),
        (
            p.batch_bytes >= produce::batch_bytes_min(p.record_bytes.max() + p.key_bytes),
            "--batch-bytes must hold at least one record",
        ),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, message)) => Err(BenchError::usage(message)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice-bench").chain(args.iter().copied()))
    }

    #[test]
    fn produce_defaults() {
        let Ok(Cli {
            command: Command::Produce(a),
        }) = parse(&["produce", "--topic", "t"])
        else {
            panic!("produce should parse");
        };
        assert_eq!(a.common.bootstrap, "127.0.0.1:9192");
        assert_eq!(a.produce.partitions, 8);
        assert_eq!(a.produce.record_bytes, payload::RecordSize::Fixed(100));
        assert_eq!(a.produce.key_bytes, 0);
        assert_eq!(a.produce.compression, payload::Codec::None);
        assert_eq!(a.produce.batch_bytes, 262_144);
        assert_eq!(a.produce.producers, 1);
        assert_eq!(a.produce.acks, Acks::Leader);
        assert!(a.limit.records.is_none() && a.limit.duration_s.is_none());
        assert!(validate(&a.limit, Some(&a.produce), None).is_ok());
    }

    #[test]
    fn every_produce_option_parses() {
        let args = [
            "produce",
            "--topic",
            "t",
            "--bootstrap",
            "h:1",
            "--partitions",
            "3",
            "--record-bytes",
            "64",
            "--records",
            "1000",
            "--acks",
            "all",
            "--batch-bytes",
            "4096",
            "--producers",
            "2",
            "--rate",
            "5000",
            "--warmup-s",
            "1.5",
            "--json",
            "out.json",
            "--protocol",
            "kafka",
        ];
        let Ok(Cli {
            command: Command::Produce(a),
        }) = parse(&args)
        else {
            panic!("produce should parse");
        };
        assert_eq!(a.limit.records, Some(1000));
        assert_eq!(a.produce.acks, Acks::All);
        assert_eq!(a.produce.rate, 5000.0);
        assert_eq!(a.produce.warmup_s, 1.5);
        assert_eq!(a.common.json.as_deref(), Some("out.json".as_ref()));
        assert_eq!(a.common.protocol, Protocol::Kafka);
    }

    #[test]
    fn records_and_duration_conflict() {
        let r = parse(&[
            "produce",
            "--topic",
            "t",
            "--records",
            "1",
            "--duration-s",
            "1",
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn bad_acks_and_from_are_rejected() {
        assert!(parse(&["produce", "--topic", "t", "--acks", "2"]).is_err());
        assert!(parse(&["consume", "--topic", "t", "--from", "middle"]).is_err());
        assert_eq!(parse_acks("0"), Ok(Acks::None));
        assert_eq!(parse_acks("-1"), Ok(Acks::All));
    }

    #[test]
    fn consume_and_e2e_parse() {
        let c = parse(&[
            "consume",
            "--topic",
            "t",
            "--consumers",
            "4",
            "--from",
            "latest",
        ]);
        assert!(matches!(
            c,
            Ok(Cli { command: Command::Consume(ref a) })
                if a.consume.consumers == 4 && a.from == StartAt::Latest
                    && a.consume.groups == 1 && a.common.protocol == Protocol::Native
        ));
        let g = parse(&["e2e", "--topic", "t", "--groups", "4"]);
        assert!(matches!(
            g,
            Ok(Cli { command: Command::E2e(ref a) })
                if a.consume.groups == 4
                    && validate(&a.limit, Some(&a.produce), Some(&a.consume)).is_ok()
        ));
        let zero = parse(&["e2e", "--topic", "t", "--groups", "0"]);
        assert!(matches!(
            zero,
            Ok(Cli { command: Command::E2e(ref a) })
                if validate(&a.limit, Some(&a.produce), Some(&a.consume)).is_err()
        ));
        let e = parse(&[
            "e2e",
            "--topic",
            "t",
            "--rate",
            "50000",
            "--duration-s",
            "10",
        ]);
        assert!(matches!(
            e,
            Ok(Cli { command: Command::E2e(ref a) })
                if a.produce.rate == 50_000.0 && a.limit.duration_s == Some(10.0)
        ));
    }

    #[test]
    fn validation_names_the_bad_option() {
        let mut p = ProduceOpts {
            partitions: 1,
            record_bytes: payload::RecordSize::Fixed(100),
            key_bytes: 0,
            key_space: 1000,
            compression: payload::Codec::None,
            acks: Acks::All,
            batch_bytes: 1 << 18,
            producers: 1,
            rate: 0.0,
            linger_ms: 1.0,
            in_flight: 1,
            warmup_s: 0.0,
        };
        let limit = Limit::default();
        assert!(validate(&limit, Some(&p), None).is_ok());
        p.record_bytes = payload::RecordSize::Fixed(4);
        let e = validate(&limit, Some(&p), None)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("--record-bytes")));
        p.record_bytes = payload::RecordSize::Fixed(100);
        p.batch_bytes = 50;
        let e = validate(&limit, Some(&p), None)
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("--batch-bytes")));
        let bad_duration = Limit {
            records: None,
            duration_s: Some(-1.0),
        };
        assert!(validate(&bad_duration, None, None).is_err());
    }
}
