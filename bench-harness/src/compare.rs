//! `sluice-bench compare`: Apache Kafka and Sluice side by side.
//!
//! Starts Kafka (`scripts/kafka-peer.sh start`) and then Sluice (`sluice
//! serve`), each under the same CPU set (`taskset -c`) and the same memory
//! limit (a memory cgroup made under this process's own, when /sys/fs/cgroup
//! lets us), runs the same workload matrix against each through this
//! generator over the Kafka protocol, plus Kafka's own ProducerPerformance
//! and ConsumerPerformance, and writes a Markdown report with the ratios
//! (Sluice/Kafka), the JSON results, percentile distributions and SVG
//! percentile spectra into the results directory.
//!
//! Broker CPU is utime+stime of the broker process from /proc/PID/stat
//! before and after each workload; peak RSS is VmHWM from /proc/PID/status,
//! reset before each workload (`clear_refs` 5) so each row has its own peak.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use sluice_protocol::native::Acks;

use crate::error::BenchError;
use crate::kafka::KafkaClient;
use crate::plot::{self, Series};
use crate::report::{self, json_str, CpuTime, Report};
use crate::rounds::{self, fixed2 as ms, verdict, Metric, TargetRatios, MIB};
use crate::{
    cluster, conn, run, Common, ConsumeOpts, E2eArgs, Limit, ProduceArgs, ProduceOpts, Protocol,
};

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Where the report, JSON, distributions and plots go.
    #[arg(long, default_value = "bench-results")]
    pub results: PathBuf,
    /// Seconds per workload (default 15; 5 with --quick).
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Short runs (5 s per workload) and fewer records for the Kafka tools.
    #[arg(long)]
    pub quick: bool,
    /// The CPU set both brokers run on (taskset -c); default: every CPU.
    #[arg(long)]
    pub cpus: Option<String>,
    /// The memory limit of each broker, MiB (a memory cgroup).
    #[arg(long, default_value_t = 4096)]
    pub memory_mib: u64,
    /// The sluice binary; default: `sluice` beside this executable.
    #[arg(long)]
    pub sluice_bin: Option<PathBuf>,
    /// The repository root (for scripts/kafka-peer.sh and
    /// broker/sluice.toml); default: found upwards from the current dir.
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Workloads to run, comma-separated (default: all of a,a1,b,c,d,e).
    #[arg(long)]
    pub only: Option<String>,
    /// Skip Kafka's ProducerPerformance/ConsumerPerformance.
    #[arg(long)]
    pub no_kafka_tools: bool,
    /// Seconds of unmeasured load each broker gets before its first workload,
    /// so a JVM's JIT compiler has done its work (0: none).
    #[arg(long, default_value_t = 15.0)]
    pub broker_warmup_s: f64,
    /// Leave the VM's free page reporting as it is. By default, where a
    /// virtio memory balloon reports free pages to the host, compare holds
    /// that off for the runs (the kernel's `page_reporting_order` raised to
    /// its maximum, restored at the end) and first writes and deletes
    /// --warm-memory-mib through the page cache, so Kafka's page cache
    /// grows into memory the guest still holds, as on bare metal.
    #[arg(long)]
    pub keep_page_reporting: bool,
    /// MiB written through the page cache and deleted before the runs when
    /// free page reporting is held off (0: none).
    #[arg(long, default_value_t = 6144)]
    pub warm_memory_mib: usize,
    /// Run the whole matrix this many times (1 to 20), each time on freshly
    /// started brokers, Kafka first in odd rounds and Sluice first in even
    /// ones; each round's report goes to RESULTS/round-N, and RESULTS/report.md
    /// judges the targets on the median of the rounds' ratios.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
}

/// The workload matrix of issue 4, plus (a1): (a) at acks=1.
#[derive(Clone, Debug)]
pub struct Workload {
    pub id: &'static str,
    pub what: &'static str,
    /// e2e (producer and consumers together) or produce only.
    pub e2e: bool,
    pub record_bytes: usize,
    pub partitions: u32,
    pub acks: Acks,
    /// Records per second (0: flat out).
    pub rate: f64,
    pub groups: u32,
    pub warmup_s: f64,
}

#[must_use]
pub fn matrix(quick: bool) -> Vec<Workload> {
    let warmup = if quick { 1.0 } else { 2.0 };
    let base = Workload {
        id: "a",
        what: "max throughput, 1 KiB records, acks=all, 8 partitions, 1 producer + 1 consumer",
        e2e: true,
        record_bytes: 1024,
        partitions: 8,
        acks: Acks::All,
        rate: 0.0,
        groups: 1,
        warmup_s: 0.0,
    };
    vec![
        base.clone(),
        Workload {
            id: "a1",
            what: "as (a) at acks=1 (no fsync on either broker)",
            acks: Acks::Leader,
            ..base.clone()
        },
        Workload {
            id: "b",
            what: "fixed 50 MB/s (48,828 x 1 KiB records/s) end to end, acks=all, 8 partitions",
            rate: 50e6 / 1024.0,
            warmup_s: warmup,
            ..base.clone()
        },
        Workload {
            id: "c",
            what: "100 B records, acks=1, max rate, produce only, 8 partitions",
            e2e: false,
            record_bytes: 100,
            acks: Acks::Leader,
            ..base.clone()
        },
        Workload {
            id: "d",
            what: "1 producer feeding 4 consumer groups, 1 KiB, acks=all, max rate",
            groups: 4,
            ..base.clone()
        },
        Workload {
            id: "e",
            what: "1,000 partitions, 1 KiB, acks=all, max rate, 1 producer + 1 consumer",
            partitions: 1000,
            ..base
        },
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broker {
    Kafka,
    Sluice,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Kafka => "kafka",
            Broker::Sluice => "sluice",
        }
    }
}

/// What one workload measured on one broker.
struct Row {
    workload: String,
    report: Option<Report>,
    error: Option<String>,
    broker_cpu_s: f64,
    peak_rss_bytes: u64,
    wall_s: f64,
}

impl Row {
    fn throughput_mb_s(&self, fan_out: bool) -> Option<f64> {
        let r = self.report.as_ref()?;
        let t = if fan_out {
            r.consumed.as_ref()
        } else {
            r.produced.as_ref()
        }?;
        Some(t.mb_per_s())
    }

    fn cpu_s_per_gb(&self) -> Option<f64> {
        let moved = self.report.as_ref()?.moved_bytes;
        (moved > 0).then(|| self.broker_cpu_s / (moved as f64 / 1e9))
    }

    fn percentile_ms(&self, e2e: bool, p: f64) -> Option<f64> {
        let r = self.report.as_ref()?;
        let h = if e2e {
            r.end_to_end_us.as_ref()
        } else {
            r.produce_ack_us.as_ref()
        }?;
        (!h.is_empty()).then(|| h.value_at_percentile(p) as f64 / 1000.0)
    }
}

/// Kafka's own perf tools against one broker.
#[derive(Default)]
struct ToolsRow {
    producer_line: String,
    consumer_line: String,
    producer_mb_s: Option<f64>,
    producer_p99_ms: Option<f64>,
    producer_p999_ms: Option<f64>,
    consumer_mb_s: Option<f64>,
    /// Broker CPU while each tool ran, and the bytes each moved.
    producer_cpu_s: f64,
    consumer_cpu_s: f64,
    tool_bytes: u64,
    broker_cpu_s: f64,
    error: Option<String>,
}

impl ToolsRow {
    fn cpu_per_gb(&self, cpu_s: f64) -> Option<f64> {
        (self.tool_bytes > 0 && cpu_s > 0.0).then(|| cpu_s / (self.tool_bytes as f64 / 1e9))
    }
}

struct BrokerRun {
    broker: Broker,
    settings: Vec<String>,
    rows: Vec<Row>,
    tools: Option<ToolsRow>,
    start_error: Option<String>,
    /// Sluice: its whole-process memory budget, as its metrics report it.
    memory_budget: Option<u64>,
}

pub fn run(args: &CompareArgs) -> Result<(), BenchError> {
    let duration_s = args
        .duration_s
        .unwrap_or(if args.quick { 5.0 } else { 15.0 });
    if !(args.broker_warmup_s.is_finite() && (0.0..=600.0).contains(&args.broker_warmup_s)) {
        return Err(BenchError::usage(
            "--broker-warmup-s must be between 0 and 600",
        ));
    }
    if !(duration_s.is_finite() && duration_s > 0.0 && duration_s <= 600.0) {
        return Err(BenchError::usage("--duration-s must be in (0, 600]"));
    }
    // What a killed earlier run left behind goes first: a broker still
    // running would share the CPUs with this run's, unseen.
    for done in crate::interrupt::recover(&crate::interrupt::journal_dir()) {
        eprintln!("compare: a killed earlier run left this undone: {done}");
    }
    let repo = match &args.repo {
        Some(r) => r.clone(),
        None => find_repo()?,
    };
    let script = repo.join("scripts/kafka-peer.sh");
    let sluice_bin = match &args.sluice_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("sluice"))
            .ok_or_else(|| BenchError::new("cannot locate the sluice binary"))?,
    };
    if !sluice_bin.exists() {
        return Err(BenchError::new(format!(
            "{} is missing: cargo build --release -p sluice-broker",
            sluice_bin.display()
        )));
    }
    let mut workloads = matrix(args.quick);
    if let Some(only) = &args.only {
        let ids: Vec<&str> = only.split(',').map(str::trim).collect();
        workloads.retain(|w| ids.contains(&w.id));
        if workloads.is_empty() {
            return Err(BenchError::usage("--only names no known workload"));
        }
    }
    fs::create_dir_all(&args.results)?;
    let cpus = args.cpus.clone().unwrap_or_else(all_cpus);
    let cgroup = MemoryCgroup::create(args.memory_mib);
    match &cgroup {
        Ok(c) => eprintln!(
            "compare: memory limit {} MiB via {}",
            args.memory_mib,
            c.describe()
        ),
        Err(e) => eprintln!("compare: memory limit NOT enforced: {e}"),
    }
    let setup = Setup {
        duration_s,
        broker_warmup_s: args.broker_warmup_s,
        quick: args.quick,
        cpus: cpus.clone(),
        cgroup: cgroup.as_ref().ok(),
        results: args.results.clone(),
        tools: !args.no_kafka_tools,
        round: None,
    };
    let started = Instant::now();
    let probe_dir = std::env::temp_dir();
    let need = disk_needed(duration_s, setup.broker_warmup_s);
    // Said in every round's report too: a workload that fills the disk fails
    // with a storage error (Kafka error 56) that reads like a broker fault.
    let space_warning = match free_bytes(&probe_dir) {
        Ok(free) if (free as f64) < need => {
            let w = format!(
                "WARNING: {:.1} GB free under {} at the start; a workload flat out may write {:.1} GB, and one that fills the disk fails.",
                free as f64 / 1e9,
                probe_dir.display(),
                need / 1e9
            );
            eprintln!("compare: {w}");
            format!("{w}\n\n")
        }
        _ => String::new(),
    };
    let balloon = balloon_features();
    let (hold, memory_warmed) = hold_memory(args, &balloon, &probe_dir);
    let memory_note = match &cgroup {
        Ok(c) => format!("{} MiB per broker via {}", args.memory_mib, c.describe()),
        Err(e) => format!("not enforced ({e})"),
    };
    let mut rounds = Vec::new();
    for number in 1..=args.rounds {
        // One round: the report of a single run. With several, each has its
        // own directory, and the brokers' order swaps from round to round.
        let dir = if args.rounds == 1 {
            args.results.clone()
        } else {
            args.results.join(format!("round-{number}"))
        };
        fs::create_dir_all(&dir)?;
        let setup = Setup {
            results: dir.clone(),
            round: (args.rounds > 1).then_some((number, args.rounds)),
            ..setup.clone()
        };
        let order = if number % 2 == 1 {
            [Broker::Kafka, Broker::Sluice]
        } else {
            [Broker::Sluice, Broker::Kafka]
        };
        let round_started = Instant::now();
        let mut probes = vec![("before the runs", disk_probe(&probe_dir, PROBE_MIB))];
        let mut timer_probes = vec![("before the runs", timer_probe(TIMER_PROBE_SLEEPS))];
        let mut runs = Vec::new();
        for broker in order {
            if args.rounds > 1 {
                eprintln!(
                    "compare: === round {number} of {}: {} ===",
                    args.rounds,
                    broker.name()
                );
            } else {
                eprintln!("compare: === {} ===", broker.name());
            }
            runs.push(run_broker(broker, &setup, &workloads, &script, &sluice_bin));
        }
        runs.sort_by_key(|r| r.broker != Broker::Kafka);
        probes.push(("after the runs", disk_probe(&probe_dir, PROBE_MIB)));
        timer_probes.push(("after the runs", timer_probe(TIMER_PROBE_SLEEPS)));
        let disk_note = format!(
            "{space_warning}{}\n\n{} {}{}\n\n{}",
            storage_note(&probe_dir),
            disk_note(&probe_dir, &probes),
            balloon_note(&balloon),
            hold_note(
                hold.as_ref().map(PageReportingHold::describe).as_deref(),
                memory_warmed.as_ref()
            ),
            timer_note(&timer_probes)
        );
        eprintln!("compare: {disk_note}");
        let report = Summary {
            setup: &setup,
            workloads: &workloads,
            runs: &runs,
            memory_note: memory_note.clone(),
            disk_note,
            budget: runs.iter().find_map(|r| r.memory_budget),
            took: round_started.elapsed(),
        };
        let table = report.ratio_table();
        println!("\n{table}");
        println!(
            "Against the targets of issue 4 ({}):\n{}",
            if args.rounds == 1 {
                "one run".to_owned()
            } else {
                format!("round {number} of {}", args.rounds)
            },
            report.targets_text()
        );
        fs::write(dir.join("report.md"), report.markdown())?;
        fs::write(dir.join("results.json"), report.json())?;
        report.write_distributions()?;
        eprintln!("compare: report in {}", dir.join("report.md").display());
        rounds.push(rounds::Round {
            number,
            first: order[0].name(),
            not_started: runs
                .iter()
                .filter_map(|r| Some(format!("{}: {}", r.broker.name(), r.start_error.as_ref()?)))
                .collect(),
            dir,
            ratios: report.target_ratios(),
            metrics: report.metrics(),
        });
    }
    drop(hold);
    if let Ok(c) = &cgroup {
        c.remove();
    }
    if args.rounds > 1 {
        let header = format!(
            "Run {} (took {:.0} s). {} s per workload{}, after {} s of unmeasured warm-up load per broker and round. \
             Brokers on CPUs `{}` (taskset -c); memory limit: {memory_note}.",
            utc_now(),
            started.elapsed().as_secs_f64(),
            setup.duration_s,
            if setup.quick { " (--quick)" } else { "" },
            setup.broker_warmup_s,
            setup.cpus,
        );
        println!("\n{}", rounds::text(&rounds));
        fs::write(
            args.results.join("report.md"),
            rounds::markdown(&rounds, &header),
        )?;
        fs::write(args.results.join("rounds.json"), rounds::json(&rounds))?;
        eprintln!(
            "compare: {} rounds; their summary in {}",
            rounds.len(),
            args.results.join("report.md").display()
        );
    }
    Ok(())
}

#[derive(Clone)]
struct Setup<'a> {
    duration_s: f64,
    broker_warmup_s: f64,
    quick: bool,
    cpus: String,
    cgroup: Option<&'a MemoryCgroup>,
    results: PathBuf,
    tools: bool,
    /// This run's place in a `--rounds` run: (round, rounds). `None` alone.
    round: Option<(u32, u32)>,
}

fn run_broker(
    broker: Broker,
    setup: &Setup<'_>,
    workloads: &[Workload],
    script: &Path,
    sluice_bin: &Path,
) -> BrokerRun {
    let mut out = BrokerRun {
        broker,
        settings: Vec::new(),
        rows: Vec::new(),
        tools: None,
        start_error: None,
        memory_budget: None,
    };
    let started = match broker {
        Broker::Kafka => Running::start_kafka(script, setup),
        Broker::Sluice => Running::start_sluice(sluice_bin, setup),
    };
    let mut running = match started {
        Ok(r) => r,
        Err(e) => {
            eprintln!("compare: {} did not start: {e}", broker.name());
            out.start_error = Some(e.to_string());
            return out;
        }
    };
    out.settings = running.settings.clone();
    if setup.broker_warmup_s > 0.0 {
        eprintln!(
            "compare: {} warm-up: {:.0} s of unmeasured load (1 KiB, acks=1, 8 partitions)",
            broker.name(),
            setup.broker_warmup_s
        );
        let warm = Workload {
            id: "warmup",
            what: "warm-up, not measured",
            e2e: true,
            record_bytes: 1024,
            partitions: 8,
            acks: Acks::Leader,
            rate: 0.0,
            groups: 1,
            warmup_s: 0.0,
        };
        let row = run_workload_for(
            &warm,
            &running.bootstrap,
            running.pid,
            setup.broker_warmup_s,
        );
        if let Some(e) = row.error {
            eprintln!("compare: {} warm-up failed: {e}", broker.name());
        }
        if !running.alive() {
            eprintln!(
                "compare: {} {} during the warm-up",
                broker.name(),
                running.ended()
            );
        }
        running.delete_topic("bench-warmup");
    }
    out.memory_budget = running.metrics.as_deref().and_then(scrape_memory_budget);
    if let Some(b) = out.memory_budget {
        out.settings.push(format!(
            "memory_budget_bytes = 0 (automatic): {} MiB for the whole process, as its metrics report",
            b >> 20
        ));
    }
    for w in workloads {
        eprintln!("compare: {} workload ({}): {}", broker.name(), w.id, w.what);
        out.rows
            .push(run_workload(w, &running.bootstrap, running.pid, setup));
        if !running.alive() {
            eprintln!(
                "compare: {} {} during ({}); its log is kept in {}",
                broker.name(),
                running.ended(),
                w.id,
                setup.results.display()
            );
            break;
        }
        // Each workload's data goes with it, so a full run fits on the disk
        // and no workload reads or pays for another's files.
        running.delete_topic(&format!("bench-{}", w.id));
    }
    if setup.tools && running.alive() {
        out.tools = Some(run_kafka_tools(script, &running, setup));
    }
    running.stop();
    out
}

fn run_workload(w: &Workload, bootstrap: &str, pid: u32, setup: &Setup<'_>) -> Row {
    run_workload_for(w, bootstrap, pid, setup.duration_s)
}

fn run_workload_for(w: &Workload, bootstrap: &str, pid: u32, duration_s: f64) -> Row {
    let common = Common {
        topic: format!("bench-{}", w.id),
        bootstrap: bootstrap.to_owned(),
        protocol: Protocol::Kafka,
        json: None,
        results: None,
        threads: 0,
    };
    let limit = Limit {
        records: None,
        duration_s: Some(duration_s),
    };
    let produce = ProduceOpts {
        partitions: w.partitions,
        record_bytes: crate::payload::RecordSize::Fixed(w.record_bytes),
        key_bytes: 0,
        key_space: 1000,
        compression: crate::payload::Codec::None,
        acks: w.acks,
        batch_bytes: 262_144,
        producers: 1,
        rate: w.rate,
        linger_ms: 1.0,
        in_flight: 8,
        warmup_s: w.warmup_s,
    };
    let consume = ConsumeOpts {
        consumers: 1,
        groups: w.groups,
        coordinated_groups: true,
        fetch_bytes: 1_048_576,
        idle_timeout_s: 10.0,
    };
    // Create the topic (and wait for its leaders) before the clock starts.
    if let Err(e) = cluster::topic(
        Protocol::Kafka,
        bootstrap,
        &common.topic,
        Some(w.partitions),
    ) {
        return failed_row(w, e);
    }
    let _ = proc_reset_peak(pid);
    let cpu_before = proc_cpu(pid);
    let t0 = Instant::now();
    let result = if w.e2e {
        run::e2e(&E2eArgs {
            common,
            limit,
            produce,
            consume,
        })
    } else {
        run::produce(&ProduceArgs {
            common,
            limit,
            produce,
        })
    };
    let wall_s = t0.elapsed().as_secs_f64();
    let broker_cpu_s = proc_cpu(pid).since(cpu_before).total_s();
    let peak_rss_bytes = proc_peak_rss(pid).unwrap_or(0);
    match result {
        Ok(report) => Row {
            workload: w.id.to_owned(),
            report: Some(report),
            error: None,
            broker_cpu_s,
            peak_rss_bytes,
            wall_s,
        },
        Err(e) => {
            eprintln!("compare: ({}) failed: {e}", w.id);
            Row {
                error: Some(e.to_string()),
                broker_cpu_s,
                peak_rss_bytes,
                wall_s,
                ..failed_row(w, e)
            }
        }
    }
}

fn failed_row(w: &Workload, e: BenchError) -> Row {
    Row {
        workload: w.id.to_owned(),
        report: None,
        error: Some(e.to_string()),
        broker_cpu_s: 0.0,
        peak_rss_bytes: 0,
        wall_s: 0.0,
    }
}

/// A broker started by us, stopped on drop.
struct Running {
    broker: Broker,
    bootstrap: String,
    pid: u32,
    settings: Vec<String>,
    /// Kafka: the script and its --port/--dir; Sluice: the child.
    kafka_stop: Option<(PathBuf, u16, PathBuf)>,
    child: Option<Child>,
    data_dir: PathBuf,
    stopped: bool,
    /// Sluice: its metrics listener.
    metrics: Option<String>,
    /// Sluice: how it ended, once it has (`ExitStatus` shows a signal).
    exited: Option<std::process::ExitStatus>,
    /// Stops the broker if the run is interrupted before `stop`.
    on_interrupt: Option<crate::interrupt::Registered<'static>>,
}

impl Running {
    fn start_kafka(script: &Path, setup: &Setup<'_>) -> Result<Running, BenchError> {
        let port = free_ports(2)?;
        let dir = std::env::temp_dir().join(format!("sluice-bench-kafka-{}", std::process::id()));
        let heap = "-Xmx1g -Xms1g";
        // Noted before the start, so a kill during it is undone too.
        let on_interrupt = crate::interrupt::on_interrupt(crate::interrupt::Cleanup::StopKafka {
            script: script.to_owned(),
            port,
            dir: dir.clone(),
        });
        let inner = format!(
            "exec taskset -c {} {} start --port {port} --dir {}",
            setup.cpus,
            shell_quote(&script.display().to_string()),
            shell_quote(&dir.display().to_string())
        );
        let started = || -> Result<u32, BenchError> {
            let status = in_cgroup(setup.cgroup, &inner)
                .env("KAFKA_HEAP_OPTS", heap)
                .stdin(Stdio::null())
                .status()?;
            if !status.success() {
                return Err(BenchError::new(format!(
                    "scripts/kafka-peer.sh start failed ({status})"
                )));
            }
            fs::read_to_string(dir.join("kafka.pid"))?
                .trim()
                .parse()
                .map_err(|_| BenchError::new("kafka.pid holds no pid"))
        };
        let pid = match started() {
            Ok(pid) => pid,
            Err(e) => {
                // Whatever of it did start is stopped.
                drop(on_interrupt);
                crate::interrupt::Cleanup::StopKafka {
                    script: script.to_owned(),
                    port,
                    dir: dir.clone(),
                }
                .run();
                return Err(e);
            }
        };
        let mut running = Running {
            broker: Broker::Kafka,
            bootstrap: format!("127.0.0.1:{port}"),
            pid,
            settings: Vec::new(),
            kafka_stop: Some((script.to_owned(), port, dir.clone())),
            child: None,
            data_dir: dir.clone(),
            stopped: false,
            metrics: None,
            exited: None,
            on_interrupt: Some(on_interrupt),
        };
        running.settings = vec![
            format!("Apache Kafka (KAFKA_VERSION, default 4.3.1) from scripts/kafka-peer.sh, single-node KRaft, data in {}", dir.display()),
            format!("JVM: {heap} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 (Java {})", java_version()),
        ];
        running.settings.extend(
            fs::read_to_string(dir.join("server.properties"))
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    [
                        "num.network.threads",
                        "num.io.threads",
                        "log.flush",
                        "socket.",
                        "log.segment.bytes",
                        "default.replication.factor",
                        "min.insync.replicas",
                        "log.segment.delete.delay.ms",
                        "log.initial.task.delay.ms",
                    ]
                    .iter()
                    .any(|k| l.starts_with(k))
                })
                .map(str::to_owned),
        );
        running.settings.push(
            "log.flush.interval.messages / log.flush.interval.ms: unset (Kafka's defaults): no fsync per produce; acks=all waits for the ISR (this one replica)".to_owned(),
        );
        running.wait_ready()?;
        Ok(running)
    }

    fn start_sluice(bin: &Path, setup: &Setup<'_>) -> Result<Running, BenchError> {
        let shards = cpu_count(&setup.cpus);
        let native = free_ports(1 + u16::try_from(shards).unwrap_or(64))?;
        // The Kafka port, then one per shard (each shard is a Kafka broker).
        let kafka = free_ports(1 + u16::try_from(shards).unwrap_or(64))?;
        let dir = std::env::temp_dir().join(format!("sluice-bench-sluice-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let log = fs::File::create(setup.results.join("sluice.log"))?;
        // Only the metrics address and the first rebalance's delay (0, as
        // the Kafka peer runs) differ from the embedded defaults.
        let metrics = format!("127.0.0.1:{}", free_ports(1)?);
        let config = dir.join("sluice.toml");
        fs::write(
            &config,
            format!(
                "[broker]\nmetrics_addr = \"{metrics}\"\ngroup_initial_rebalance_delay_ms = 0\n"
            ),
        )?;
        let inner = format!(
            "exec taskset -c {} {} serve --config {} --data-dir {} --native-addr 127.0.0.1:{native} --kafka-addr 127.0.0.1:{kafka}",
            setup.cpus,
            shell_quote(&bin.display().to_string()),
            shell_quote(&config.display().to_string()),
            shell_quote(&dir.join("data").display().to_string())
        );
        let child = in_cgroup(setup.cgroup, &inner)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let pid = child.id();
        let mut running = Running {
            broker: Broker::Sluice,
            bootstrap: format!("127.0.0.1:{kafka}"),
            pid,
            settings: vec![
                format!("{} serve, default sluice.toml but group_initial_rebalance_delay_ms = 0 (shards = CPUs in the set: {shards}), data in {}", bin.display(), dir.display()),
                "acks=all: each append is fdatasync'ed before the answer; acks=0/1: flush_ms = 0, so not flushed (a completed direct-I/O write survives a process crash, not a power loss)".to_owned(),
            ],
            kafka_stop: None,
            child: Some(child),
            data_dir: dir.clone(),
            stopped: false,
            metrics: Some(metrics),
            exited: None,
            on_interrupt: Some(crate::interrupt::on_interrupt(
                crate::interrupt::Cleanup::StopProcess { pid, data_dir: dir },
            )),
        };
        running.wait_ready()?;
        Ok(running)
    }

    /// Deletes a finished workload's topic and waits (up to 60 s) until its
    /// files are gone from the data directory. Kafka deletes them in the
    /// background, `log.segment.delete.delay.ms` after the request (1 s in
    /// scripts/kafka-peer.sh). Unwaited, the unlinking of gigabytes, and
    /// those files' page cache filling the memory cgroup until then, landed
    /// in a later workload's measurement. Sluice removes them before it
    /// answers.
    fn delete_topic(&mut self, topic: &str) {
        if let Err(e) = delete_topic(&self.bootstrap, topic) {
            eprintln!("compare: deleting {topic}: {e}");
            return;
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(60);
        loop {
            let left = topic_files_left(&self.data_dir, topic);
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline || !self.alive() {
                eprintln!(
                    "compare: {} still holds {left} entries of {topic} {:.0} s after deleting it; going on",
                    self.broker.name(),
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if started.elapsed() > Duration::from_millis(500) {
            eprintln!(
                "compare: {}'s files of {topic} were gone {:.1} s after the delete",
                self.broker.name(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    /// Waits (up to 60 s) until the Kafka listener answers ApiVersions.
    fn wait_ready(&mut self) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            if !self.alive() {
                return Err(BenchError::new(format!(
                    "{} exited during start-up",
                    self.broker.name()
                )));
            }
            match conn::connect_stream(&self.bootstrap).and_then(KafkaClient::from_stream) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(200));
        }
        self.stop();
        Err(BenchError::new(format!(
            "{} not ready within 60 s: {last}",
            self.broker.name()
        )))
    }

    /// "exited", with the status (code or signal) when it is known.
    fn ended(&self) -> String {
        self.exited
            .map_or_else(|| "exited".to_owned(), |s| format!("exited ({s})"))
    }

    fn alive(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            return match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    self.exited.get_or_insert(status);
                    false
                }
                Err(_) => false,
            };
        }
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some((script, port, dir)) = self.kafka_stop.take() {
            let _ = fs::copy(
                dir.join("kafka.log"),
                std::env::temp_dir().join("sluice-bench-last-kafka.log"),
            );
            crate::interrupt::Cleanup::StopKafka { script, port, dir }.run();
        }
        if let Some(child) = &mut self.child {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on the pid of our own child, which has not
                // been reaped yet (try_wait has not returned its status).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
            let _ = fs::remove_dir_all(&self.data_dir);
        }
        // Stopped: nothing left for an interrupt to do (one during the stop
        // above repeats it, which is harmless).
        self.on_interrupt = None;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sh -c 'echo $$ > cgroup.procs; INNER'` (or just INNER without a
/// cgroup): everything INNER starts is inside the limit.
fn in_cgroup(cgroup: Option<&MemoryCgroup>, inner: &str) -> Command {
    let script = match cgroup {
        Some(c) => format!(
            "echo $$ > {} && {inner}",
            shell_quote(&c.procs().display().to_string())
        ),
        None => inner.to_owned(),
    };
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    cmd
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A memory cgroup under this process's own (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`).
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
    /// Removes the cgroup if the run is interrupted or killed first.
    on_interrupt: std::cell::RefCell<Option<crate::interrupt::Registered<'static>>>,
}

impl MemoryCgroup {
    fn create(mib: u64) -> Result<MemoryCgroup, String> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let name = format!("sluice-bench-{}", std::process::id());
        let bytes = mib.saturating_mul(1 << 20).to_string();
        // v2: "0::/path" with a memory controller.
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (id, controllers, path) = (f.next(), f.next(), f.next());
            let (Some(id), Some(controllers), Some(path)) = (id, controllers, path) else {
                continue;
            };
            let path = path.trim_start_matches('/');
            let (root, v2) = if id == "0" && controllers.is_empty() {
                (Path::new("/sys/fs/cgroup").join(path), true)
            } else if controllers.split(',').any(|c| c == "memory") {
                (Path::new("/sys/fs/cgroup/memory").join(path), false)
            } else {
                continue;
            };
            let limit_file = if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            if v2 {
                let has_memory = fs::read_to_string(root.join("cgroup.subtree_control"))
                    .is_ok_and(|s| s.split_whitespace().any(|c| c == "memory"));
                if !has_memory {
                    continue;
                }
            }
            let dir = root.join(&name);
            let on_interrupt =
                crate::interrupt::on_interrupt(crate::interrupt::Cleanup::RemoveEmptyDir {
                    dir: dir.clone(),
                });
            if fs::create_dir(&dir).is_err() {
                continue;
            }
            if fs::write(dir.join(limit_file), &bytes).is_err() {
                let _ = fs::remove_dir(&dir);
                continue;
            }
            return Ok(MemoryCgroup {
                dir,
                v2,
                on_interrupt: std::cell::RefCell::new(Some(on_interrupt)),
            });
        }
        Err("no writable memory cgroup (v2 memory.max or v1 memory.limit_in_bytes) under this process's cgroup".to_owned())
    }

    fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn describe(&self) -> String {
        format!(
            "cgroup {} {}",
            if self.v2 {
                "v2 memory.max"
            } else {
                "v1 memory.limit_in_bytes"
            },
            self.dir.display()
        )
    }

    fn remove(&self) {
        // Empty once both brokers are gone; a failure leaves an empty dir.
        let _ = fs::remove_dir(&self.dir);
        self.on_interrupt.borrow_mut().take();
    }
}

fn find_repo() -> Result<PathBuf, BenchError> {
    let mut dir = std::env::current_dir()?;
    for _ in 0..16 {
        if dir.join("scripts/kafka-peer.sh").exists() {
            return Ok(dir);
        }
        if !dir.pop() {
            break;
        }
    }
    Err(BenchError::new(
        "scripts/kafka-peer.sh not found above the current directory: give --repo",
    ))
}

fn all_cpus() -> String {
    let n = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if n == 1 {
        "0".to_owned()
    } else {
        format!("0-{}", n - 1)
    }
}

/// CPUs in a taskset list such as `0-3,6`.
#[must_use]
pub fn cpu_count(list: &str) -> u32 {
    list.split(',')
        .map(|part| match part.trim().split_once('-') {
            Some((a, b)) => match (a.parse::<u32>(), b.parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => u32::from(part.trim().parse::<u32>().is_ok()),
        })
        .sum::<u32>()
        .max(1)
}

/// Bytes of free disk a run may need. Each topic (the warm-up's, then each
/// workload's) is deleted before the next starts, so one is on the disk at a
/// time: flat out at acks=1 Sluice has taken 1.7 GB/s on this 2-core
/// machine, so allow 2 GB per second of the longest, plus 2 GB.
fn disk_needed(duration_s: f64, warmup_s: f64) -> f64 {
    duration_s.max(warmup_s) * 2e9 + 2e9
}

/// Entries under `root` (three levels down) that belong to `topic`: Kafka's
/// partition directories (`topic-0`, and `topic-0.<id>-delete` once deleted)
/// and Sluice's topic directory (`topic`).
fn topic_files_left(root: &Path, topic: &str) -> usize {
    fn walk(dir: &Path, topic: &str, prefix: &str, depth: u32) -> usize {
        let Ok(entries) = fs::read_dir(dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == topic || name.starts_with(prefix) {
                n += 1;
            } else if depth > 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                n += walk(&e.path(), topic, prefix, depth - 1);
            }
        }
        n
    }
    walk(root, topic, &format!("{topic}-"), 3)
}

fn delete_topic(bootstrap: &str, topic: &str) -> Result<(), BenchError> {
    let mut client = KafkaClient::from_stream(conn::connect_stream(bootstrap)?)?;
    client.delete_topic(topic)
}

/// Sluice's whole-process memory budget (`sluice_memory_budget_bytes`)
/// from its metrics listener.
fn scrape_memory_budget(addr: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    metric_value(&text, "sluice_memory_budget_bytes")
}

/// The value of an unlabelled series in Prometheus text.
#[must_use]
pub fn metric_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// The kernel's ephemeral port range: outgoing connections take their local
/// ports from it, so a listener's port drawn from it can be taken by a
/// client between the check that it is free and the broker's bind.
fn ephemeral_ports() -> (u16, u16) {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u16>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32_768, 60_999))
}

/// `count` + 1 consecutive loopback ports, free now, below the ephemeral
/// range and apart from every run this process was given before; returns
/// the first.
fn free_ports(count: u16) -> Result<u16, BenchError> {
    static GIVEN: std::sync::Mutex<Vec<(u16, u16)>> = std::sync::Mutex::new(Vec::new());
    let span = count.saturating_add(1);
    let from = 10_000u16;
    let to = ephemeral_ports().0.saturating_sub(span);
    if to <= from {
        return Err(BenchError::new(
            "no room for listener ports below the ephemeral port range",
        ));
    }
    // Seeded by the clock and the pid: two compares started together draw
    // different ports.
    let mut rng = crate::payload::Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32),
    );
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        let first = from + rng.below(u64::from(to - from)) as u16;
        let last = first + span - 1;
        if given.iter().any(|&(a, b)| first <= b && a <= last) {
            continue;
        }
        if (first..=last).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            given.push((first, last));
            return Ok(first);
        }
    }
    Err(BenchError::new("no run of free loopback ports found"))
}

fn proc_cpu(pid: u32) -> CpuTime {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| report::parse_proc_stat(&s))
        .unwrap_or_default()
}

fn proc_peak_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

/// VmHWM (peak resident set) of a /proc/PID/status text, in bytes.
#[must_use]
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS.
fn proc_reset_peak(pid: u32) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/clear_refs"))?
        .write_all(b"5")
}

fn java_version() -> String {
    Command::new("java")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// Runs `cmd` with its output in `log`, killed after `timeout`.
fn run_bounded(mut cmd: Command, log: &Path, timeout: Duration) -> Result<String, BenchError> {
    let file = fs::File::create(log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BenchError::new(format!(
                "killed after {}s (see {})",
                timeout.as_secs(),
                log.display()
            )));
        }
        thread::sleep(Duration::from_millis(100));
    };
    let out = fs::read_to_string(log)?;
    if !status.success() {
        return Err(BenchError::new(format!(
            "exited with {status} (see {})",
            log.display()
        )));
    }
    Ok(out)
}

fn run_kafka_tools(script: &Path, running: &Running, setup: &Setup<'_>) -> ToolsRow {
    let mut row = ToolsRow::default();
    let name = running.broker.name();
    let records: u64 = if setup.quick { 200_000 } else { 1_000_000 };
    let topic = "bench-perf-tools";
    let classpath = Command::new(script)
        .arg("classpath")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if let Err(e) = cluster::topic(Protocol::Kafka, &running.bootstrap, topic, Some(8)) {
        row.error = Some(e.to_string());
        return row;
    }
    let java = |class: &str| {
        let mut c = Command::new("java");
        c.args(["-Xmx512m", "-cp", &classpath, class]);
        c
    };
    row.tool_bytes = records * 1024;
    let cpu_before = proc_cpu(running.pid);
    let mut producer = java("org.apache.kafka.tools.ProducerPerformance");
    producer
        .args(["--topic", topic, "--num-records", &records.to_string()])
        .args([
            "--record-size",
            "1024",
            "--throughput",
            "-1",
            "--producer-props",
        ])
        .arg(format!("bootstrap.servers={}", running.bootstrap))
        .args(["acks=all", "linger.ms=1", "batch.size=262144"]);
    let timeout = Duration::from_secs(180);
    let log = setup
        .results
        .join(format!("{name}-producer-performance.log"));
    eprintln!("compare: {name}: ProducerPerformance, {records} x 1 KiB, acks=all");
    match run_bounded(producer, &log, timeout) {
        Ok(out) => {
            row.producer_line = out
                .lines()
                .rfind(|l| l.contains("records sent"))
                .unwrap_or("")
                .trim()
                .to_owned();
            let parsed = parse_producer_performance(&row.producer_line);
            row.producer_mb_s = parsed.map(|p| p.0);
            row.producer_p99_ms = parsed.map(|p| p.1);
            row.producer_p999_ms = parsed.map(|p| p.2);
        }
        Err(e) => {
            row.error = Some(format!("ProducerPerformance: {e}"));
            row.broker_cpu_s = proc_cpu(running.pid).since(cpu_before).total_s();
            return row;
        }
    }
    let cpu_between = proc_cpu(running.pid);
    row.producer_cpu_s = cpu_between.since(cpu_before).total_s();
    let mut consumer = java("org.apache.kafka.tools.ConsumerPerformance");
    consumer
        .args(["--bootstrap-server", &running.bootstrap, "--topic", topic])
        .args(["--num-records", &records.to_string(), "--timeout", "60000"])
        .args(["--group", "bench-perf-tools-group"]);
    let log = setup
        .results
        .join(format!("{name}-consumer-performance.log"));
    eprintln!("compare: {name}: ConsumerPerformance, {records} records");
    match run_bounded(consumer, &log, timeout) {
        Ok(out) => {
            let (line, mb_s) = parse_consumer_performance(&out);
            row.consumer_line = line;
            row.consumer_mb_s = mb_s;
        }
        Err(e) => row.error = Some(format!("ConsumerPerformance: {e}")),
    }
    let cpu_after = proc_cpu(running.pid);
    row.consumer_cpu_s = cpu_after.since(cpu_between).total_s();
    row.broker_cpu_s = cpu_after.since(cpu_before).total_s();
    row
}

/// (MB/s, p99 ms, p99.9 ms) from ProducerPerformance's summary line:
/// `N records sent, R records/sec (M MB/sec), A ms avg latency, X ms max
/// latency, P ms 50th, P ms 95th, P ms 99th, P ms 99.9th.`
#[must_use]
pub fn parse_producer_performance(line: &str) -> Option<(f64, f64, f64)> {
    let mb = line
        .split_once('(')?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let before = |suffix: &str| -> Option<f64> {
        line.split(',')
            .find(|part| part.trim().trim_end_matches('.').ends_with(suffix))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((mb, before("ms 99th")?, before("ms 99.9th")?))
}

/// ConsumerPerformance's CSV result line and its fetch.MB.sec column (the
/// rate while fetching, without the group join; MB.sec when absent).
#[must_use]
pub fn parse_consumer_performance(out: &str) -> (String, Option<f64>) {
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(',')).collect();
    let Some(h) = lines.iter().rposition(|l| l.contains("MB.sec")) else {
        return (String::new(), None);
    };
    let Some(values) = lines.get(h + 1) else {
        return (String::new(), None);
    };
    let cols: Vec<&str> = lines[h].split(',').map(str::trim).collect();
    let vals: Vec<&str> = values.split(',').map(str::trim).collect();
    let mb = cols
        .iter()
        .position(|c| *c == "fetch.MB.sec")
        .or_else(|| cols.iter().position(|c| *c == "MB.sec"))
        .and_then(|i| vals.get(i))
        .and_then(|v| v.parse().ok());
    (values.trim().to_owned(), mb)
}

struct Summary<'a> {
    setup: &'a Setup<'a>,
    workloads: &'a [Workload],
    runs: &'a [BrokerRun],
    memory_note: String,
    /// What [`disk_probe`] measured before and after the runs.
    disk_note: String,
    budget: Option<u64>,
    took: Duration,
}

/// The peak-RSS metric's name: its figures are whole MiB.
const RSS_METRIC: &str = "broker peak RSS MiB";

impl Summary<'_> {
    fn row(&self, broker: Broker, id: &str) -> Option<&Row> {
        self.runs
            .iter()
            .find(|r| r.broker == broker)?
            .rows
            .iter()
            .find(|r| r.workload == id)
    }

    /// Sluice's peak RSS over all its workloads (0: none measured).
    fn sluice_peak_rss(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.broker == Broker::Sluice)
            .flat_map(|r| &r.rows)
            .map(|r| r.peak_rss_bytes)
            .max()
            .unwrap_or(0)
    }

    /// Sluice's figure over Kafka's for one workload, with both: (Kafka,
    /// Sluice, ratio); `None` where the workload was not run or either
    /// broker has no figure.
    fn pair(&self, id: &str, f: &dyn Fn(&Row) -> Option<f64>) -> Option<(f64, f64, f64)> {
        self.workloads.iter().find(|w| w.id == id)?;
        let k = self.row(Broker::Kafka, id).and_then(f)?;
        let s = self.row(Broker::Sluice, id).and_then(f)?;
        (k > 0.0).then_some((k, s, s / k))
    }

    /// The figures issue 4's targets are judged by.
    fn target_ratios(&self) -> TargetRatios {
        let ratio = |id: &str, f: &dyn Fn(&Row) -> Option<f64>| self.pair(id, f).map(|p| p.2);
        TargetRatios {
            throughput: ratio("a", &|r| r.throughput_mb_s(false)),
            cpu: self
                .workloads
                .iter()
                .map(|w| (w.id, ratio(w.id, &Row::cpu_s_per_gb)))
                .collect(),
            p99: ratio("b", &|r| r.percentile_ms(true, 99.0)),
            p999: ratio("b", &|r| r.percentile_ms(true, 99.9)),
            peak_rss: Some(self.sluice_peak_rss()).filter(|&p| p > 0),
            budget: self.budget,
        }
    }

    /// Issue 4's targets, each with what this run measured and whether it
    /// met it (`None`: not measured, e.g. a workload left out by --only):
    /// (target, measured, met).
    fn targets(&self) -> Vec<(String, String, Option<bool>)> {
        let figures = self.target_ratios();
        let [tp_met, cpu_met, tail_met, rss_met] = figures.verdicts();
        let mut out = Vec::new();
        let tp = self.pair("a", &|r| r.throughput_mb_s(false));
        out.push((
            TargetRatios::NAMES[0].to_owned(),
            tp.map_or_else(
                || "not run".to_owned(),
                |(k, s, r)| format!("{r:.2}x ({s:.0} against {k:.0} MB/s)"),
            ),
            tp_met,
        ));
        out.push((
            TargetRatios::NAMES[1].to_owned(),
            figures.cpu_text(),
            cpu_met,
        ));
        let p99 = self.pair("b", &|r| r.percentile_ms(true, 99.0));
        let p999 = self.pair("b", &|r| r.percentile_ms(true, 99.9));
        let kafka_p50 = self
            .row(Broker::Kafka, "b")
            .and_then(|r| r.percentile_ms(true, 50.0));
        out.push((
            TargetRatios::NAMES[2].to_owned(),
            match (p99, p999) {
                (Some((k99, s99, r99)), Some((k999, s999, r999))) => format!(
                    "p99 {r99:.2} ({s99:.2} against {k99:.2} ms), p99.9 {r999:.2} ({s999:.2} against {k999:.2} ms); Kafka's own e2e p50 {}",
                    kafka_p50.map_or("—".to_owned(), |v| format!("{v:.2} ms"))
                ),
                _ => "not run".to_owned(),
            },
            tail_met,
        ));
        out.push((
            TargetRatios::NAMES[3].to_owned(),
            figures.rss_text(),
            rss_met,
        ));
        out
    }

    fn targets_text(&self) -> String {
        let mut t = String::new();
        for (target, measured, met) in self.targets() {
            let verdict = verdict(met, "met", "MISSED");
            let _ = writeln!(t, "{verdict:<7} {target}: {measured}");
        }
        t
    }

    /// Each workload's metrics on both brokers, in report order, then a
    /// line for each error.
    fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        for w in self.workloads {
            let k = self.row(Broker::Kafka, w.id);
            let s = self.row(Broker::Sluice, w.id);
            let fan_out = w.groups > 1;
            let mut metric = |name: &str, f: &dyn Fn(&Row) -> Option<f64>| {
                out.push(Metric {
                    workload: w.id,
                    name: name.to_owned(),
                    kafka: k.and_then(f),
                    sluice: s.and_then(f),
                    error: None,
                });
            };
            let tp_name = if fan_out {
                "consumed MB/s (all groups)"
            } else {
                "produced MB/s"
            };
            metric(tp_name, &|r| r.throughput_mb_s(fan_out));
            if w.e2e && !fan_out {
                metric("consumed MB/s", &|r| r.throughput_mb_s(true));
            }
            if w.acks != Acks::None {
                metric("produce p99 ms", &|r| r.percentile_ms(false, 99.0));
                metric("produce p99.9 ms", &|r| r.percentile_ms(false, 99.9));
            }
            if w.e2e {
                metric("e2e p99 ms", &|r| r.percentile_ms(true, 99.0));
                metric("e2e p99.9 ms", &|r| r.percentile_ms(true, 99.9));
            }
            metric("broker CPU s/GB", &Row::cpu_s_per_gb);
            metric(RSS_METRIC, &|r| {
                (r.peak_rss_bytes > 0).then(|| r.peak_rss_bytes as f64 / MIB)
            });
            for (b, r) in [("kafka", k), ("sluice", s)] {
                if let Some(e) = r.and_then(|r| r.error.as_ref()) {
                    out.push(Metric {
                        workload: w.id,
                        name: format!("{b} ERROR"),
                        kafka: None,
                        sluice: None,
                        error: Some(e.clone()),
                    });
                }
            }
        }
        out
    }

    /// `| workload | metric | Kafka | Sluice | Sluice/Kafka |` rows.
    fn ratio_lines(&self) -> Vec<[String; 5]> {
        self.metrics()
            .into_iter()
            .map(|m| {
                let Some(e) = m.error else {
                    let fmt = |v: Option<f64>| {
                        if m.name == RSS_METRIC {
                            v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"))
                        } else {
                            ms(v)
                        }
                    };
                    return [
                        m.workload.to_owned(),
                        m.name.clone(),
                        fmt(m.kafka),
                        fmt(m.sluice),
                        ms(m.ratio()),
                    ];
                };
                [
                    m.workload.to_owned(),
                    m.name,
                    e,
                    String::new(),
                    String::new(),
                ]
            })
            .collect()
    }

    fn ratio_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<4} {:<28} {:>12} {:>12} {:>12}",
            "wl", "metric", "kafka", "sluice", "sluice/kafka"
        );
        for [w, m, k, s, r] in self.ratio_lines() {
            let _ = writeln!(t, "{w:<4} {m:<28} {k:>12} {s:>12} {r:>12}");
        }
        t
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# sluice-bench compare\n");
        let _ = writeln!(
            md,
            "Run {} (took {:.0} s). {} s per workload{}, after {} s of unmeasured warm-up load per broker (JIT-compiled Kafka). Brokers on CPUs `{}` (taskset -c); memory limit: {}. \
             The generator (this process, one thread per CPU, each running its share of the producers and consumers) is not pinned and shares those CPUs.\n",
            utc_now(),
            self.took.as_secs_f64(),
            self.setup.duration_s,
            if self.setup.quick { " (--quick)" } else { "" },
            self.setup.broker_warmup_s,
            self.setup.cpus,
            self.memory_note
        );
        let _ = writeln!(md, "## Machine\n\n```\n{}```\n", machine());
        let _ = writeln!(md, "{}\n", self.disk_note);
        let _ = writeln!(md, "## Workloads\n");
        for w in self.workloads {
            let _ = writeln!(md, "- **({})** {}", w.id, w.what);
        }
        let _ = writeln!(
            md,
            "\nAll through `sluice-bench` over the Kafka protocol (Produce v9, Fetch v12 sessionless), 1 producer, \
             batches up to 256 KiB, 8 requests in flight per connection, 1 ms linger at a fixed rate. \
             Every consumer is a member of a real consumer group on the broker under test: it joins through the group coordinator \
             (JoinGroup/SyncGroup, range assignment), heartbeats every 3 s and commits its offsets every 5 s; groups join before the clock starts. \
             Both brokers start groups without the 3 s initial rebalance delay (Kafka: group.initial.rebalance.delay.ms=0).\n"
        );
        let _ = writeln!(md, "## Ratios (Sluice / Kafka)\n");
        let _ = writeln!(
            md,
            "| workload | metric | Kafka | Sluice | Sluice/Kafka |\n|---|---|---:|---:|---:|"
        );
        for [w, m, k, s, r] in self.ratio_lines() {
            let _ = writeln!(md, "| {w} | {m} | {k} | {s} | {r} |");
        }
        if let Some(b) = self.budget {
            let peak = self.sluice_peak_rss();
            let _ = writeln!(
                md,
                "\nSluice peak RSS over all workloads: {:.0} MiB; its memory budget (`memory_budget_bytes`, whole process): {:.0} MiB: {}.",
                peak as f64 / MIB,
                b as f64 / MIB,
                if peak <= b { "within" } else { "OVER" }
            );
        }
        let _ = writeln!(md, "\n## Against the targets of issue 4\n");
        let run = match self.setup.round {
            Some((k, n)) => format!(
                "Round {k} of {n}, one run, on this machine; ../report.md judges the targets on the medians of the rounds."
            ),
            None => "One run, on this machine.".to_string(),
        };
        let _ = writeln!(
            md,
            "{run} Either broker's tail at (b) moves with stalls of the machine (see the timer probe) \
             and of the broker (compare each one's e2e p50 with its p99), so read the (b) ratios with them.\n"
        );
        let _ = writeln!(md, "| target | this run | |\n|---|---|---|");
        for (target, measured, met) in self.targets() {
            let verdict = verdict(met, "**met**", "missed");
            let _ = writeln!(md, "| {target} | {measured} | {verdict} |");
        }
        let _ = writeln!(md, "\n## Kafka's own perf tools (ProducerPerformance + ConsumerPerformance, 1 KiB, acks=all)\n");
        let _ = writeln!(md, "| broker | producer MB/s | producer p99 ms | producer p99.9 ms | broker CPU s/GB produced | consumer fetch MB/s | broker CPU s/GB consumed | broker CPU s | error |\n|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in self.runs {
            if let Some(t) = &r.tools {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} |",
                    r.broker.name(),
                    ms(t.producer_mb_s),
                    ms(t.producer_p99_ms),
                    ms(t.producer_p999_ms),
                    ms(t.cpu_per_gb(t.producer_cpu_s)),
                    ms(t.consumer_mb_s),
                    ms(t.cpu_per_gb(t.consumer_cpu_s)),
                    t.broker_cpu_s,
                    t.error.as_deref().unwrap_or("")
                );
            }
        }
        for r in self.runs {
            if let Some(t) = &r.tools {
                let _ = writeln!(
                    md,
                    "\n{}: `{}`  \n`{}`",
                    r.broker.name(),
                    t.producer_line,
                    t.consumer_line
                );
            }
        }
        let _ = writeln!(md, "\n## Per broker\n");
        for r in self.runs {
            let _ = writeln!(md, "### {}\n", r.broker.name());
            if let Some(e) = &r.start_error {
                let _ = writeln!(md, "Did not start: {e}\n");
            }
            for s in &r.settings {
                let _ = writeln!(md, "- {s}");
            }
            let _ = writeln!(md);
            for row in &r.rows {
                let _ = writeln!(
                    md,
                    "**({})** broker CPU {:.2} s, peak RSS {:.0} MiB, wall {:.1} s{}\n",
                    row.workload,
                    row.broker_cpu_s,
                    row.peak_rss_bytes as f64 / MIB,
                    row.wall_s,
                    row.error
                        .as_ref()
                        .map(|e| format!(", ERROR: {e}"))
                        .unwrap_or_default()
                );
                if let Some(rep) = &row.report {
                    let _ = writeln!(md, "```\n{}```\n", rep.table());
                }
            }
        }
        let _ = writeln!(md, "## Files\n\n`results.json`; `<broker>-<workload>-<produce|e2e>.hgrm` (HdrHistogram percentile distributions, ms); `<workload>-<produce|e2e>.svg` (percentile spectra); `<broker>-<workload>.hlog` (HdrHistogram interval logs, one histogram per second); `sluice.log`; the perf tools' logs.");
        md
    }

    fn json(&self) -> String {
        let mut runs = Vec::new();
        for r in self.runs {
            let rows: Vec<String> = r
                .rows
                .iter()
                .map(|row| {
                    format!(
                        "{{\"workload\":\"{}\",\"broker_cpu_s\":{:.3},\"moved_bytes\":{},\"cpu_s_per_gb\":{},\"peak_rss_bytes\":{},\"error\":{},\"result\":{}}}",
                        row.workload,
                        row.broker_cpu_s,
                        row.report.as_ref().map_or(0, |r| r.moved_bytes),
                        row.cpu_s_per_gb().map_or_else(|| "null".to_owned(), |v| format!("{v:.3}")),
                        row.peak_rss_bytes,
                        row.error.as_ref().map_or_else(|| "null".to_owned(), |e| json_str(e)),
                        row.report.as_ref().map_or_else(|| "null".to_owned(), |r| r.json().trim().to_owned())
                    )
                })
                .collect();
            let tools =
                r.tools.as_ref().map_or_else(
                    || "null".to_owned(),
                    |t| {
                        format!(
                        "{{\"producer\":{},\"consumer\":{},\"broker_cpu_s\":{:.3},\"producer_broker_cpu_s\":{:.3},\"consumer_broker_cpu_s\":{:.3},\"bytes\":{},\"error\":{}}}",
                        json_str(&t.producer_line),
                        json_str(&t.consumer_line),
                        t.broker_cpu_s,
                        t.producer_cpu_s,
                        t.consumer_cpu_s,
                        t.tool_bytes,
                        t.error.as_ref().map_or_else(|| "null".to_owned(), |e| json_str(e))
                    )
                    },
                );
            runs.push(format!(
                "{{\"broker\":\"{}\",\"settings\":[{}],\"workloads\":[{}],\"kafka_tools\":{}}}",
                r.broker.name(),
                r.settings
                    .iter()
                    .map(|s| json_str(s))
                    .collect::<Vec<_>>()
                    .join(","),
                rows.join(","),
                tools
            ));
        }
        format!(
            "{{\"date\":{},\"duration_s\":{},\"cpus\":{},\"memory\":{},\"disk\":{},\"runs\":[{}]}}\n",
            json_str(&utc_now()),
            self.setup.duration_s,
            json_str(&self.setup.cpus),
            json_str(&self.memory_note),
            json_str(&self.disk_note),
            runs.join(",")
        )
    }

    fn write_distributions(&self) -> Result<(), BenchError> {
        let dir = &self.setup.results;
        for w in self.workloads {
            for b in [Broker::Kafka, Broker::Sluice] {
                if let Some(r) = self.row(b, w.id).and_then(|r| r.report.as_ref()) {
                    let mut log = Vec::new();
                    report::write_interval_log(&mut log, r)?;
                    fs::write(dir.join(format!("{}-{}.hlog", b.name(), w.id)), log)?;
                }
            }
            for (kind, e2e) in [("produce", false), ("e2e", true)] {
                let mut series: Vec<(Broker, &Histogram<u64>)> = Vec::new();
                for b in [Broker::Kafka, Broker::Sluice] {
                    let h = self
                        .row(b, w.id)
                        .and_then(|r| r.report.as_ref())
                        .and_then(|r| {
                            if e2e {
                                r.end_to_end_us.as_ref()
                            } else {
                                r.produce_ack_us.as_ref()
                            }
                        });
                    if let Some(h) = h.filter(|h| !h.is_empty()) {
                        fs::write(
                            dir.join(format!("{}-{}-{kind}.hgrm", b.name(), w.id)),
                            plot::hgrm(h),
                        )?;
                        series.push((b, h));
                    }
                }
                if series.is_empty() {
                    continue;
                }
                let lines: Vec<Series<'_>> = series
                    .iter()
                    .map(|(b, h)| Series {
                        label: b.name(),
                        colour: if *b == Broker::Kafka {
                            "#c0392b"
                        } else {
                            "#2c6fbb"
                        },
                        histogram: h,
                    })
                    .collect();
                let title = format!("({}) {kind} latency: {}", w.id, w.what);
                fs::write(
                    dir.join(format!("{}-{kind}.svg", w.id)),
                    plot::spectrum_svg(&title, &lines),
                )?;
            }
        }
        Ok(())
    }
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// MiB each disk probe writes, each way.
const PROBE_MIB: usize = 512;

/// Writes `mib` MiB into a file in `dir` twice, 1 MiB at a time: through the
/// page cache then `fsync` (as Kafka writes), and with `O_DIRECT` then
/// `fsync` (as Sluice writes). Returns MB/s of each; the file is removed.
fn disk_probe(dir: &Path, mib: usize) -> std::io::Result<(f64, f64)> {
    use std::os::unix::fs::OpenOptionsExt;
    const CHUNK: usize = 1 << 20;
    let mut mem = crate::sendpath::Mapped::new(CHUNK)?;
    mem.bytes_mut().fill(0x5a);
    let buf = mem.bytes();
    let path = dir.join(format!("sluice-bench-disk-probe-{}", std::process::id()));
    let write_all = |direct: bool| -> std::io::Result<f64> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let mut file = opts.open(&path)?;
        let t = Instant::now();
        for _ in 0..mib {
            file.write_all(buf)?;
        }
        file.sync_all()?;
        Ok((mib * CHUNK) as f64 / t.elapsed().as_secs_f64() / 1e6)
    };
    let result = write_all(false).and_then(|buffered| Ok((buffered, write_all(true)?)));
    let _ = fs::remove_file(&path);
    result
}

/// Sleeps each timer probe takes: about 3.5 s at 1 ms each.
const TIMER_PROBE_SLEEPS: usize = 3_000;

/// How late a sleeping thread woke, in microseconds past what it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lateness {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

/// Sleeps 1 ms `sleeps` times on this thread, with nothing else of the
/// benchmark running, and reports how late each sleep woke: the stalls the
/// machine itself has (a VM descheduled by its host, for one), which no
/// broker's tail latency can get under.
fn timer_probe(sleeps: usize) -> Lateness {
    const ASKED: Duration = Duration::from_millis(1);
    let mut late: Vec<u64> = (0..sleeps.max(1))
        .map(|_| {
            let t = Instant::now();
            std::thread::sleep(ASKED);
            t.elapsed().saturating_sub(ASKED).as_micros() as u64
        })
        .collect();
    late.sort_unstable();
    let at = |q: f64| late[((late.len() as f64 * q) as usize).min(late.len() - 1)];
    Lateness {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: late[late.len() - 1],
    }
}

/// The timer probes as a sentence for the report.
fn timer_note(probes: &[(&str, Lateness)]) -> String {
    let mut note = format!(
        "Timer probe ({TIMER_PROBE_SLEEPS} sleeps of 1 ms with no broker running, how late each \
         woke):"
    );
    for (when, l) in probes {
        let _ = write!(
            note,
            " {when}, median {} us, p99 {} us, p99.9 {} us, max {} us;",
            l.p50, l.p99, l.p999, l.max
        );
    }
    note.pop();
    note.push_str(
        ". Stalls this long are the machine's own: they set a floor under both brokers' \
         p99.9 at a fixed rate (b).",
    );
    note
}

/// The disk probes as a sentence for the report.
fn disk_note(dir: &Path, probes: &[(&str, std::io::Result<(f64, f64)>)]) -> String {
    let mut note = format!(
        "Disk probe ({PROBE_MIB} MiB written to {} in 1 MiB writes, then fsync):",
        dir.display()
    );
    for (when, probe) in probes {
        match probe {
            Ok((buffered, direct)) => {
                let _ = write!(
                    note,
                    " {when}, through the page cache {buffered:.0} MB/s, direct {direct:.0} MB/s;"
                );
            }
            Err(e) => {
                let _ = write!(note, " {when}, failed: {e};");
            }
        }
    }
    note.pop();
    note.push_str(
        ". Kafka writes through the page cache and Sluice with direct I/O: where the first \
         figure is far below the second, this machine's page cache is slow and Kafka's figures \
         suffer more than Sluice's.",
    );
    note
}

/// The feature bits of every virtio memory balloon the guest kernel drives
/// (`/sys/bus/virtio/drivers/virtio_balloon/*/features`: one `0` or `1` a
/// bit, bit 0 first). Empty on bare metal.
fn balloon_features() -> Vec<String> {
    let Ok(dir) = fs::read_dir("/sys/bus/virtio/drivers/virtio_balloon") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("features")).ok())
        .map(|f| f.trim().to_owned())
        .collect()
}

/// Bit 5 of a virtio balloon's features: `VIRTIO_BALLOON_F_REPORTING`.
const BALLOON_FREE_PAGE_REPORTING: usize = 5;

/// Whether any of the balloons reports free pages to the host.
fn balloon_reports(features: &[String]) -> bool {
    features
        .iter()
        .any(|f| f.as_bytes().get(BALLOON_FREE_PAGE_REPORTING) == Some(&b'1'))
}

/// What the memory balloon does to the page cache, for the report.
fn balloon_note(features: &[String]) -> String {
    match (features.is_empty(), balloon_reports(features)) {
        (true, _) => "No virtio memory balloon: freed memory stays with this machine.".into(),
        (false, true) => "This machine's memory balloon reports free pages to the host \
             (virtio-balloon free page reporting): memory the guest frees goes back to the host \
             within seconds, and the first write to each such page is slow. A page cache that \
             grows into it (Kafka's, as it writes a topic) runs slow until it reuses pages freed \
             moments before; Sluice's memory is allocated once and its writes bypass the page \
             cache."
            .into(),
        (false, false) => {
            "This machine has a virtio memory balloon without free page reporting.".into()
        }
    }
}

/// Where the kernel's free page reporting takes its smallest block order.
const PAGE_REPORTING_ORDER: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// The largest block order the kernel's buddy allocator has (x86-64's
/// `MAX_PAGE_ORDER`, 4 MiB blocks): the highest `page_reporting_order` it
/// takes.
const PAGE_ORDER_MAX: u32 = 10;

/// Free page reporting held off: `page_reporting_order` raised, and put back
/// as it was when this is dropped or the run is interrupted, or by the next
/// run when this one is killed (the cleanup journal, see `interrupt`). Only
/// blocks of the raised order (4 MiB of free memory in one piece) are then
/// handed to the host, so memory a broker frees stays warm in the guest.
struct PageReportingHold {
    path: PathBuf,
    was: String,
    now: u32,
    /// Puts the order back if the run is interrupted or killed first.
    _on_interrupt: crate::interrupt::Registered<'static>,
}

impl PageReportingHold {
    /// Raises the order at `path` to `to`; `Ok(None)` when it is there
    /// already.
    fn start(path: &Path, to: u32) -> std::io::Result<Option<Self>> {
        let was = fs::read_to_string(path)?.trim().to_owned();
        if was.parse::<u32>().is_ok_and(|w| w >= to) {
            return Ok(None);
        }
        // Noted before the change, so a kill in between leaves it undone.
        let on_interrupt = crate::interrupt::on_interrupt(crate::interrupt::Cleanup::Restore {
            path: path.to_path_buf(),
            value: was.clone(),
        });
        fs::write(path, to.to_string())?;
        Ok(Some(Self {
            path: path.to_path_buf(),
            was,
            now: to,
            _on_interrupt: on_interrupt,
        }))
    }

    fn describe(&self) -> String {
        format!(
            "page_reporting_order {} during the runs (it was {})",
            self.now, self.was
        )
    }
}

impl Drop for PageReportingHold {
    fn drop(&mut self) {
        crate::interrupt::Cleanup::Restore {
            path: self.path.clone(),
            value: self.was.clone(),
        }
        .run();
    }
}

/// Holds free page reporting off and warms the page cache, unless told not
/// to or the machine has no balloon that reports. Returns the hold (dropped
/// after the runs) and the warming write's MB/s.
fn hold_memory(
    args: &CompareArgs,
    balloon: &[String],
    dir: &Path,
) -> (Option<PageReportingHold>, Option<std::io::Result<f64>>) {
    if args.keep_page_reporting || !balloon_reports(balloon) {
        return (None, None);
    }
    let hold = match PageReportingHold::start(Path::new(PAGE_REPORTING_ORDER), PAGE_ORDER_MAX) {
        Ok(hold) => hold,
        Err(e) => {
            eprintln!("compare: cannot hold free page reporting off ({e}); Kafka's page cache may run slow");
            return (None, None);
        }
    };
    if let Some(h) = &hold {
        eprintln!("compare: {}", h.describe());
    }
    if args.warm_memory_mib == 0 {
        return (hold, None);
    }
    eprintln!(
        "compare: warming {} MiB of memory through the page cache",
        args.warm_memory_mib
    );
    let warmed = warm_page_cache(dir, args.warm_memory_mib);
    (hold, Some(warmed))
}

/// Writes `mib` MiB through the page cache into `dir`, syncs and deletes
/// it, so the pages are the guest's again; MB/s of the write. Refused when
/// the file system has less than twice that free.
fn warm_page_cache(dir: &Path, mib: usize) -> std::io::Result<f64> {
    const CHUNK: usize = 1 << 20;
    let free = free_bytes(dir)?;
    if free < 2 * (mib as u64) * CHUNK as u64 {
        return Err(std::io::Error::other(format!(
            "{} MiB free under {}, fewer than twice {mib} MiB",
            free >> 20,
            dir.display()
        )));
    }
    let path = dir.join(format!("sluice-bench-warm-{}", std::process::id()));
    let buf = vec![0x5au8; CHUNK];
    let t = Instant::now();
    let written = (|| {
        let mut file = fs::File::create(&path)?;
        for _ in 0..mib {
            file.write_all(&buf)?;
        }
        file.sync_all()
    })();
    let _ = fs::remove_file(&path);
    written.map(|()| (mib * CHUNK) as f64 / t.elapsed().as_secs_f64() / 1e6)
}

/// Bytes free to an unprivileged writer on the file system of `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // SAFETY: `statvfs` is plain data; all zeros is a valid value.
    let mut st = unsafe { std::mem::zeroed::<libc::statvfs>() };
    // SAFETY: a NUL-terminated path and a struct to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The report's sentence on the hold and the warming, if there was either.
fn hold_note(held: Option<&str>, warmed: Option<&std::io::Result<f64>>) -> String {
    let mut note = String::new();
    if let Some(held) = held {
        let _ = write!(
            note,
            " For these runs free page reporting was held off ({held}, put back after them), so \
             memory freed in the guest stayed there"
        );
        match warmed {
            Some(Ok(mbs)) => {
                let _ = write!(
                    note,
                    ", and memory was warmed first: a file written through the page cache at \
                     {mbs:.0} MB/s, then deleted."
                );
            }
            Some(Err(e)) => {
                let _ = write!(note, "; warming memory first failed: {e}.");
            }
            None => note.push('.'),
        }
    }
    note
}

/// The mount a path lives on, from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// `major:minor` of the device.
    device: String,
    mount_point: String,
    options: String,
    fs_type: String,
    source: String,
    /// The file system's own options (`discard`, `data=...`).
    super_options: String,
}

/// The entry of `mountinfo` whose mount point holds `path` most closely
/// (the last such, as later mounts hide earlier ones).
fn mount_for(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - type source super-options
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let head: Vec<&str> = head.split(' ').collect();
        let tail: Vec<&str> = tail.split(' ').collect();
        let (Some(device), Some(point), Some(options)) = (head.get(2), head.get(4), head.get(5))
        else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if !path.starts_with(&point) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|b| b.mount_point.len() > point.len())
        {
            continue;
        }
        best = Some(Mount {
            device: (*device).to_owned(),
            mount_point: point,
            options: (*options).to_owned(),
            fs_type: tail.first().copied().unwrap_or("?").to_owned(),
            source: tail.get(1).copied().unwrap_or("?").to_owned(),
            super_options: tail.get(2).copied().unwrap_or("").to_owned(),
        });
    }
    best
}

/// What the brokers' data directory sits on, for the report: file system,
/// mount options, whether ext4 keeps a journal, and the device's write
/// cache and FUA support. These decide what an `fdatasync` costs: with a
/// volatile write cache each one ends in a cache flush, and ext4 without a
/// journal writes the file's inode synchronously within it (kernel 6.18
/// does so on every call).
fn storage_note(dir: &Path) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(m) = mount_for(&mountinfo, &dir) else {
        return format!("Storage under {}: unknown (no mount found).", dir.display());
    };
    let sys = PathBuf::from(format!("/sys/dev/block/{}", m.device));
    let read = |name: &str| {
        // A partition's queue settings are its disk's.
        [
            sys.join("queue").join(name),
            sys.join("../queue").join(name),
        ]
        .iter()
        .find_map(|p| fs::read_to_string(p).ok())
        .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned())
    };
    let journal = match m.fs_type.as_str() {
        "ext4" => {
            let name = fs::canonicalize(&sys)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            match Path::new(&format!("/proc/fs/jbd2/{name}-8")).exists() {
                true => " (with a journal)",
                false => " (no journal)",
            }
        }
        _ => "",
    };
    format!(
        "Storage under {}: {} on {}{journal}, mounted at {} with {} (file system options {}); \
         device write cache: {}, FUA: {}.",
        dir.display(),
        m.fs_type,
        m.source,
        m.mount_point,
        m.options,
        m.super_options,
        read("write_cache"),
        read("fua"),
    )
}

/// `nproc`, `free -h`, `df -h` of the temp dir, the CPU model.
fn machine() -> String {
    let mut out = String::new();
    for (cmd, args) in [
        ("nproc", vec![]),
        ("free", vec!["-h"]),
        ("df", vec!["-h", "/tmp"]),
        (
            "sh",
            vec!["-c", "grep -m1 'model name' /proc/cpuinfo; uname -r"],
        ),
    ] {
        if let Ok(o) = Command::new(cmd).args(&args).output() {
            let _ = writeln!(out, "$ {cmd} {}", args.join(" "));
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listener ports for the brokers lie below the ephemeral range (where
    /// a client's connection could take one before the broker binds it),
    /// are free, and never overlap a run given before.
    #[test]
    fn listener_ports_lie_below_the_ephemeral_range_and_apart() {
        let (low, _) = ephemeral_ports();
        let runs: Vec<u16> = (0..8).map(|_| free_ports(20).expect("ports")).collect();
        for (i, &a) in runs.iter().enumerate() {
            assert!(a >= 10_000 && a + 20 < low, "{a}..={} below {low}", a + 20);
            for &b in &runs[i + 1..] {
                assert!(a + 20 < b || b + 20 < a, "runs at {a} and {b} overlap");
            }
            for p in a..=a + 20 {
                TcpListener::bind(("127.0.0.1", p)).expect("free");
            }
        }
    }

    #[test]
    fn the_mount_holding_a_path_is_the_longest_match() {
        let info = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard\n\
                    30 22 0:27 / /tmp rw,nosuid - tmpfs tmpfs rw,size=10g\n\
                    31 22 0:28 / /tmpdata rw - xfs /dev/vdb rw\n";
        let tmp = mount_for(info, Path::new("/tmp/sluice-bench-x")).expect("a mount");
        assert_eq!(tmp.fs_type, "tmpfs");
        assert_eq!(tmp.mount_point, "/tmp");
        let root = mount_for(info, Path::new("/var/lib/x")).expect("a mount");
        assert_eq!(
            root,
            Mount {
                device: "254:0".into(),
                mount_point: "/".into(),
                options: "rw,relatime".into(),
                fs_type: "ext4".into(),
                source: "/dev/vda".into(),
                super_options: "rw,discard".into(),
            }
        );
        // A path component match, not a string prefix: /tmpdata is not /tmp.
        let data = mount_for(info, Path::new("/tmpdata/a")).expect("a mount");
        assert_eq!(data.fs_type, "xfs");
        assert_eq!(mount_for(info, Path::new("relative")), None);
        // A line without the separator is skipped, not the end of the search.
        let odd = format!("garbage line\n{info}");
        assert_eq!(
            mount_for(&odd, Path::new("/tmp")).map(|m| m.fs_type),
            Some("tmpfs".into())
        );
    }

    #[test]
    fn the_storage_note_names_the_file_system() {
        let dir = tempfile::tempdir().expect("tempdir");
        let note = storage_note(dir.path());
        // SAFETY: `statfs` is plain data; all zeros is a valid value.
        let mut fs = unsafe { std::mem::zeroed::<libc::statfs>() };
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path and a struct to fill.
        assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut fs) }, 0);
        if fs.f_type == 0xEF53 {
            assert!(note.contains(": ext4 on "), "{note}");
            assert!(note.contains("journal)"), "{note}");
        }
        assert!(note.contains("write cache: "), "{note}");
    }

    #[test]
    fn the_balloon_note_reads_the_free_page_reporting_bit() {
        assert!(balloon_note(&[]).starts_with("No virtio memory balloon"));
        // This test machine's balloon: bits 1, 2 and 5 set.
        let reporting = "0110010100000000000000000000000010".to_owned();
        assert!(balloon_note(&[reporting]).contains("reports free pages to the host"));
        let without = "0110000100000000000000000000000010".to_owned();
        assert!(
            balloon_note(std::slice::from_ref(&without)).contains("without free page reporting")
        );
        // A short or odd features string is read as no reporting.
        assert!(balloon_note(&["01".to_owned()]).contains("without free page reporting"));
        // Any balloon reporting is enough.
        let both = [without, "0000010".to_owned()];
        assert!(balloon_note(&both).contains("reports free pages"));
    }

    /// A row of `id` that moved `mb_s` MB/s for 1 s at `cpu_s` broker CPU,
    /// with every end-to-end latency `e2e_us` and a peak RSS of `rss_mib`.
    fn row(id: &str, mb_s: f64, cpu_s: f64, e2e_us: u64, rss_mib: u64) -> Row {
        let mut h = crate::report::histogram();
        h.record(e2e_us).expect("in range");
        let bytes = (mb_s * 1e6) as u64;
        let t = crate::report::Throughput {
            records: 1,
            bytes,
            window: Duration::from_secs(1),
        };
        Row {
            workload: id.to_owned(),
            report: Some(Report {
                mode: "e2e",
                settings: Vec::new(),
                produced: Some(crate::report::Throughput { ..t }),
                consumed: Some(t),
                produce_ack_us: None,
                end_to_end_us: Some(h),
                moved_bytes: bytes,
                wall: Duration::from_secs(1),
                cpu: crate::report::CpuTime::default(),
                started: std::time::SystemTime::UNIX_EPOCH,
                intervals: Vec::new(),
            }),
            error: None,
            broker_cpu_s: cpu_s,
            peak_rss_bytes: rss_mib << 20,
            wall_s: 1.0,
        }
    }

    #[test]
    fn a_deleted_topic_is_gone_when_none_of_its_entries_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let mk = |p: &str| fs::create_dir_all(root.join(p)).expect("mkdir");
        // Kafka: partition directories, one already renamed for deletion.
        mk("logs/bench-a-0");
        mk("logs/bench-a-1.0123abcd-delete");
        mk("logs/bench-a1-0");
        mk("logs/__consumer_offsets-0");
        // Sluice: one directory per topic.
        mk("data/topics/bench-a");
        mk("data/topics/bench-ab");
        assert_eq!(topic_files_left(root, "bench-a"), 3);
        assert_eq!(topic_files_left(root, "bench-a1"), 1);
        assert_eq!(topic_files_left(root, "bench-b"), 0);
        fs::remove_dir_all(root.join("logs/bench-a-0")).expect("rm");
        fs::remove_dir_all(root.join("logs/bench-a-1.0123abcd-delete")).expect("rm");
        fs::remove_dir_all(root.join("data/topics/bench-a")).expect("rm");
        assert_eq!(topic_files_left(root, "bench-a"), 0);
        assert_eq!(topic_files_left(root, "bench-ab"), 1);
    }

    #[test]
    fn the_disk_needed_covers_the_longest_topic_at_two_gb_a_second() {
        // One topic at a time, at 2 GB/s: (a1) flat out wrote 26 GB in its
        // 15 s here (2026-12-07), and a disk with 27.8 GB free ran out.
        assert_eq!(disk_needed(15.0, 15.0), 32e9);
        assert_eq!(disk_needed(30.0, 15.0), 62e9);
        assert_eq!(disk_needed(3.0, 0.0), 8e9);
    }

    #[test]
    fn the_report_says_which_targets_a_run_met() {
        let setup = Setup {
            duration_s: 1.0,
            broker_warmup_s: 0.0,
            quick: true,
            cpus: "0-1".to_owned(),
            cgroup: None,
            results: PathBuf::from("/nonexistent"),
            tools: false,
            round: None,
        };
        let workloads: Vec<Workload> = matrix(true)
            .into_iter()
            .filter(|w| w.id == "a" || w.id == "b")
            .collect();
        let run = |broker, rows| BrokerRun {
            broker,
            settings: Vec::new(),
            rows,
            tools: None,
            start_error: None,
            memory_budget: None,
        };
        let runs = [
            run(
                Broker::Kafka,
                vec![
                    row("a", 400.0, 1.2, 5_000, 900),
                    row("b", 50.0, 0.2, 3_000, 900),
                ],
            ),
            // (a): 2.5x at a quarter of the CPU per GB; (b): CPU 0.5 of
            // Kafka's (missed), tail 0.3 of Kafka's (missed).
            run(
                Broker::Sluice,
                vec![
                    row("a", 1000.0, 0.75, 1_000, 200),
                    row("b", 50.0, 0.1, 900, 210),
                ],
            ),
        ];
        let summary = Summary {
            setup: &setup,
            workloads: &workloads,
            runs: &runs,
            memory_note: String::new(),
            disk_note: String::new(),
            budget: Some(320 << 20),
            took: Duration::from_secs(1),
        };
        let t = summary.targets();
        let verdicts: Vec<Option<bool>> = t.iter().map(|(_, _, met)| *met).collect();
        assert_eq!(verdicts, [Some(true), Some(false), Some(false), Some(true)]);
        assert!(
            t[0].1.starts_with("2.50x (1000 against 400 MB/s)"),
            "{}",
            t[0].1
        );
        assert!(
            t[1].1.contains("(a) 0.25, (b) 0.50; over 1/3 at b"),
            "{}",
            t[1].1
        );
        assert!(t[2].1.starts_with("p99 0.30"), "{}", t[2].1);
        assert_eq!(t[3].1, "peak 210 MiB of 320 MiB");
        let text = summary.targets_text();
        assert!(text.lines().next().is_some_and(|l| l.starts_with("met ")));
        assert!(summary
            .markdown()
            .contains("| (a) max throughput at least 2x Kafka's | 2.50x"));
        // Figures to two decimals, peak RSS in whole MiB, ratios beside them.
        let md = summary.markdown();
        assert!(
            md.contains("| a | produced MB/s | 400.00 | 1000.00 | 2.50 |"),
            "{md}"
        );
        assert!(
            md.contains("| b | broker peak RSS MiB | 900 | 210 | 0.23 |"),
            "{md}"
        );
        // Over budget, and a workload left out: said so.
        let over = Summary {
            budget: Some(100 << 20),
            workloads: &workloads[..1],
            ..summary
        };
        let t = over.targets();
        assert_eq!(t[2].2, None, "(b) not run: no verdict");
        assert_eq!(t[3].2, Some(false));
        // Alone, a run says so; in --rounds, it names its round.
        assert!(md.contains("\nOne run, on this machine."), "{md}");
        let second = Setup {
            round: Some((2, 3)),
            ..setup.clone()
        };
        let in_rounds = Summary {
            setup: &second,
            ..over
        };
        assert!(in_rounds
            .markdown()
            .contains("\nRound 2 of 3, one run, on this machine; ../report.md judges"));
    }

    #[test]
    fn a_page_reporting_hold_raises_the_order_and_puts_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("page_reporting_order");
        fs::write(&path, "9\n").expect("write");
        {
            let hold = PageReportingHold::start(&path, 10)
                .expect("start")
                .expect("a hold");
            assert_eq!(fs::read_to_string(&path).expect("read"), "10");
            assert_eq!(
                hold.describe(),
                "page_reporting_order 10 during the runs (it was 9)"
            );
        }
        assert_eq!(fs::read_to_string(&path).expect("read"), "9");
        // Already at the order asked: nothing to hold, nothing written.
        fs::write(&path, "10\n").expect("write");
        assert!(PageReportingHold::start(&path, 10)
            .expect("start")
            .is_none());
        assert_eq!(fs::read_to_string(&path).expect("read"), "10\n");
        // No such parameter (a kernel without page reporting): an error.
        assert!(PageReportingHold::start(&dir.path().join("absent"), 10).is_err());
    }

    #[test]
    fn warming_the_page_cache_leaves_nothing_behind_and_refuses_a_full_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mbs = warm_page_cache(dir.path(), 4).expect("warm");
        assert!(mbs > 0.0);
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
        let free_mib = free_bytes(dir.path()).expect("statvfs") >> 20;
        let too_much = usize::try_from(free_mib).expect("fits") / 2 + 1;
        let e = warm_page_cache(dir.path(), too_much).expect_err("refused");
        assert!(e.to_string().contains("fewer than twice"), "{e}");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn the_hold_note_says_what_was_done() {
        assert_eq!(hold_note(None, None), "");
        let held = "page_reporting_order 10 during the runs (it was 9)";
        let note = hold_note(Some(held), Some(&Ok(1234.4)));
        assert!(note.contains("held off (page_reporting_order 10"), "{note}");
        assert!(note.contains("at 1234 MB/s, then deleted."), "{note}");
        let failed = hold_note(Some(held), Some(&Err(std::io::Error::other("no room"))));
        assert!(
            failed.ends_with("warming memory first failed: no room."),
            "{failed}"
        );
    }

    #[test]
    fn the_timer_probe_reports_ordered_lateness() {
        let l = timer_probe(50);
        assert!(
            l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
            "{l:?}"
        );
        let note = timer_note(&[("before the runs", l)]);
        assert!(note.contains(&format!("max {} us", l.max)), "{note}");
        assert!(note.ends_with("at a fixed rate (b)."), "{note}");
    }

    #[test]
    fn the_disk_probe_measures_both_ways_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let probe = disk_probe(dir.path(), 4);
        let (buffered, direct) = match probe {
            Ok(rates) => rates,
            // A file system without O_DIRECT (tmpfs on old kernels) says so.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => panic!("probe: {e}"),
        };
        assert!(buffered.is_finite() && buffered > 0.0);
        assert!(direct.is_finite() && direct > 0.0);
        let left = fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(left, 0, "the probe file is removed");
        let note = disk_note(dir.path(), &[("before", Ok((239.4, 1650.0)))]);
        assert!(note.contains("before, through the page cache 239 MB/s, direct 1650 MB/s."));
    }

    #[test]
    fn cpu_lists_count() {
        assert_eq!(cpu_count("0-1"), 2);
        assert_eq!(cpu_count("0-3,6"), 5);
        assert_eq!(cpu_count("2"), 1);
        assert_eq!(cpu_count("junk"), 1);
    }

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tsluice\nVmPeak:\t 100 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
    }

    #[test]
    fn toml_ints_are_found() {
        let t = "# TYPE sluice_memory_budget_bytes gauge\nsluice_memory_budget_bytes 335544320\nsluice_partitions{shard=\"0\"} 8\n";
        assert_eq!(
            metric_value(t, "sluice_memory_budget_bytes"),
            Some(335_544_320)
        );
        assert_eq!(metric_value(t, "sluice_partitions"), None);
        assert_eq!(metric_value(t, "missing"), None);
    }

    #[test]
    fn producer_performance_summary_parses() {
        let line =
            "200000 records sent, 52410.1 records/sec (51.18 MB/sec), 310.2 ms avg latency, \
                    812.0 ms max latency, 290 ms 50th, 600 ms 95th, 700 ms 99th, 790 ms 99.9th.";
        assert_eq!(
            parse_producer_performance(line),
            Some((51.18, 700.0, 790.0))
        );
        assert_eq!(parse_producer_performance("garbage"), None);
    }

    #[test]
    fn consumer_performance_csv_parses() {
        let out =
            "noise\nstart.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg\n\
                   2025-01-01 00:00:00:000, 2025-01-01 00:00:02:000, 195.3, 97.65, 200000\n";
        let (line, mb) = parse_consumer_performance(out);
        assert_eq!(mb, Some(97.65));
        assert!(line.ends_with("200000"));
        assert_eq!(parse_consumer_performance("none").1, None);
    }

    #[test]
    fn the_matrix_holds_issue_4s_workloads() {
        let m = matrix(true);
        let ids: Vec<&str> = m.iter().map(|w| w.id).collect();
        assert_eq!(ids, ["a", "a1", "b", "c", "d", "e"]);
        assert!(m.iter().any(|w| w.partitions == 1000));
        assert!(m.iter().any(|w| w.groups == 4));
        let b = &m[2];
        assert!((b.rate * 1024.0 - 50e6).abs() < 1.0);
    }
}
