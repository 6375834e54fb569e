//! The three commands: set up (topic, connections, cursors), start the
//! threads, print progress each second, gather what they measured, report.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::thread::{self, ScopedJoinHandle};
use std::time::{Duration, Instant};

use sluice_protocol::native::Acks;
use sluice_protocol::types::list_offsets_timestamp;

use crate::cluster::{self, Topic};
use crate::conn::Conn;
use crate::consume::{self, Cursor, Until};
use crate::error::BenchError;
use crate::group;
use crate::produce;
use crate::report::{self, CpuTime, Report, Throughput};
use crate::schedule::{self, Schedule};
use crate::worker;
use crate::{
    validate, Common, ConsumeArgs, ConsumeOpts, E2eArgs, Limit, ProduceArgs, ProduceOpts, Protocol,
    StartAt, DURATION_S_DEFAULT,
};

/// The run's shared times.
pub struct Clock {
    /// Time zero: schedules and value stamps count from here.
    pub start: Instant,
    /// Batches due before this are warm-up: sent, not measured.
    pub measure_from: Instant,
    /// No batch due at or after this is sent.
    pub deadline: Option<Instant>,
    /// `start` on the wall clock, milliseconds since the Unix epoch: record
    /// CreateTimes are this plus the batch's due time.
    pub start_wall_ms: i64,
}

/// Counters every thread adds to, read by the progress line and by the
/// consumers' stop conditions.
#[derive(Default)]
pub struct Progress {
    pub produced: AtomicU64,
    pub consumed: AtomicU64,
    pub producers_left: AtomicU32,
}

pub fn produce(args: &ProduceArgs) -> Result<Report, BenchError> {
    let opts = &args.produce;
    validate(&args.limit, Some(opts), None)?;
    let topic = cluster::topic(
        args.common.protocol,
        &args.common.bootstrap,
        &args.common.topic,
        Some(opts.partitions),
    )?;
    let plans = producer_plans(&topic, opts, &args.limit, args.common.protocol)?;
    let progress = Progress::default();
    let cpu_before = CpuTime::now();
    let clock = clock(&args.limit, opts.warmup_s, true);
    progress
        .producers_left
        .store(plans.len() as u32, Ordering::Release);
    let tasks = plans
        .into_iter()
        .map(|plan| {
            worker::Task::Produce(produce::Task::new(
                plan,
                &topic.name,
                opts,
                &clock,
                &progress,
            ))
        })
        .collect();
    let (outcomes, _, threads) = run_tasks(tasks, args.common.threads, &clock, &progress)?;
    let mut report = base_report("produce", &args.common, &topic, &clock, cpu_before);
    report.settings.push(("threads", threads.to_string()));
    report.settings.extend(produce_settings(opts, &args.limit));
    report.produced = Some(produced(&outcomes, &clock));
    report.moved_bytes = outcomes.iter().map(|o| o.total_bytes).sum();
    report.produce_ack_us = (opts.acks != Acks::None).then(|| merge_ack(&outcomes));
    if opts.acks != Acks::None {
        report
            .intervals
            .push(("produce_ack", merge_ack_per_s(&outcomes)));
    }
    finish(report, &args.common)
}

pub fn consume(args: &ConsumeArgs) -> Result<Report, BenchError> {
    validate(&args.limit, None, Some(&args.consume))?;
    let opts = &args.consume;
    let topic = cluster::topic(
        args.common.protocol,
        &args.common.bootstrap,
        &args.common.topic,
        None,
    )?;
    let (plans, available) = consumer_plans(&topic, opts, args.from, args.common.protocol)?;
    let until = match (args.limit.records, args.limit.duration_s) {
        (Some(n), _) => Until::Records(n),
        (None, Some(_)) => Until::Deadline,
        (None, None) if available > 0 => Until::Records(available),
        (None, None) => {
            return Err(BenchError::usage(
                "nothing to read from there: give --records or --duration-s",
            ))
        }
    };
    let settings = consume_settings(&args.common, opts, until, false);
    let progress = Progress::default();
    let cpu_before = CpuTime::now();
    let clock = clock(&args.limit, 0.0, false);
    let tasks = plans
        .into_iter()
        .map(|plan| worker::Task::Consume(consume::Task::new(plan, &settings, &clock, &progress)))
        .collect();
    let (_, outcomes, threads) = run_tasks(tasks, args.common.threads, &clock, &progress)?;
    warn_if_idled(&outcomes, opts);
    let mut report = base_report("consume", &args.common, &topic, &clock, cpu_before);
    report.settings.push(("threads", threads.to_string()));
    report
        .settings
        .push(("consumers", opts.consumers.to_string()));
    report
        .settings
        .push(("from", format!("{:?}", args.from).to_lowercase()));
    report.consumed = Some(consumed(&outcomes, &clock));
    report.moved_bytes = outcomes.iter().map(|o| o.total_bytes).sum();
    finish(report, &args.common)
}

pub fn e2e(args: &E2eArgs) -> Result<Report, BenchError> {
    let (popts, copts) = (&args.produce, &args.consume);
    validate(&args.limit, Some(popts), Some(copts))?;
    let topic = cluster::topic(
        args.common.protocol,
        &args.common.bootstrap,
        &args.common.topic,
        Some(popts.partitions),
    )?;
    // Consumers start at the end, found before any producer writes.
    let protocol = args.common.protocol;
    let (consumer_plans, _) = consumer_plans(&topic, copts, StartAt::Latest, protocol)?;
    let producer_plans = producer_plans(&topic, popts, &args.limit, protocol)?;
    let until = Until::ProducersDone {
        groups: copts.groups,
    };
    let settings = consume_settings(&args.common, copts, until, true);
    let progress = Progress::default();
    let cpu_before = CpuTime::now();
    let clock = clock(&args.limit, popts.warmup_s, true);
    // Consumers read until the producers are done and all is read.
    let consumer_clock = Clock {
        deadline: None,
        ..clock
    };
    // Before any consumer starts: a consumer that saw no producer left and
    // nothing produced would take the run for finished and stop at once.
    progress
        .producers_left
        .store(producer_plans.len() as u32, Ordering::Release);
    // Producers first, then consumers, dealt out to the threads in turn: a
    // thread per core runs its share of both.
    let mut tasks: Vec<worker::Task<'_>> = producer_plans
        .into_iter()
        .map(|plan| {
            worker::Task::Produce(produce::Task::new(
                plan,
                &topic.name,
                popts,
                &clock,
                &progress,
            ))
        })
        .collect();
    tasks.extend(consumer_plans.into_iter().map(|plan| {
        worker::Task::Consume(consume::Task::new(
            plan,
            &settings,
            &consumer_clock,
            &progress,
        ))
    }));
    let (p_outcomes, c_outcomes, threads) =
        run_tasks(tasks, args.common.threads, &clock, &progress)?;
    warn_if_idled(&c_outcomes, copts);
    let mut report = base_report("e2e", &args.common, &topic, &clock, cpu_before);
    report.settings.push(("threads", threads.to_string()));
    report.settings.extend(produce_settings(popts, &args.limit));
    report
        .settings
        .push(("consumers", copts.consumers.to_string()));
    report.settings.push(("groups", copts.groups.to_string()));
    report.produced = Some(produced(&p_outcomes, &clock));
    report.consumed = Some(consumed(&c_outcomes, &clock));
    report.moved_bytes = p_outcomes.iter().map(|o| o.total_bytes).sum::<u64>()
        + c_outcomes.iter().map(|o| o.total_bytes).sum::<u64>();
    report.produce_ack_us = (popts.acks != Acks::None).then(|| merge_ack(&p_outcomes));
    let mut e2e = report::histogram();
    for h in c_outcomes.iter().filter_map(|o| o.e2e_us.as_ref()) {
        e2e.add(h)
            .map_err(|e| BenchError::new(format!("merging histograms: {e}")))?;
    }
    report.end_to_end_us = Some(e2e);
    if popts.acks != Acks::None {
        report
            .intervals
            .push(("produce_ack", merge_ack_per_s(&p_outcomes)));
    }
    let mut e2e_per_s = report::PerSecond::default();
    for o in &c_outcomes {
        e2e_per_s.merge(&o.e2e_per_s);
    }
    report.intervals.push(("end_to_end", e2e_per_s));
    finish(report, &args.common)
}

fn clock(limit: &Limit, warmup_s: f64, default_duration: bool) -> Clock {
    let start = Instant::now();
    let duration_s = match limit.duration_s {
        None if limit.records.is_none() && default_duration => Some(DURATION_S_DEFAULT),
        d => d,
    };
    let start_wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Clock {
        start,
        start_wall_ms,
        measure_from: start + Duration::from_secs_f64(warmup_s),
        deadline: duration_s.map(|s| start + Duration::from_secs_f64(s)),
    }
}

/// Connects each producer thread to the shards of the partitions it writes.
fn producer_plans(
    topic: &Topic,
    opts: &ProduceOpts,
    limit: &Limit,
    protocol: Protocol,
) -> Result<Vec<produce::Plan>, BenchError> {
    (0..opts.producers)
        .map(|t| {
            let partitions = schedule::partitions_of(t, opts.producers, topic.partitions(), true);
            let conns = topic
                .group_by_shard(&partitions)
                .into_iter()
                .map(|(addr, ps)| Ok((Conn::connect(&addr, protocol)?, ps)))
                .collect::<Result<Vec<_>, BenchError>>()?;
            Ok(produce::Plan {
                conns,
                records: limit.records.map(|n| schedule::share(n, t, opts.producers)),
                schedule: Schedule::for_thread(opts.rate, opts.producers),
            })
        })
        .collect()
}

/// With `--coordinated-groups`: every group's members, joined through the
/// coordinator, all groups at once (joining waits out the coordinator's
/// initial rebalance delay). Empty otherwise.
fn join_groups(topic: &Topic, opts: &ConsumeOpts) -> Result<Vec<Vec<group::Member>>, BenchError> {
    if !opts.coordinated_groups {
        return Ok(Vec::new());
    }
    let bootstrap = topic.addr_of.first().cloned().unwrap_or_default();
    let t0 = Instant::now();
    let joined = thread::scope(|s| {
        let handles: Vec<_> = (0..opts.groups)
            .map(|g| {
                let name = format!("sluice-bench-{}-{}-{g}", topic.name, std::process::id());
                let bootstrap = &bootstrap;
                s.spawn(move || {
                    group::join_all(
                        bootstrap,
                        &name,
                        &topic.name,
                        topic.partitions(),
                        opts.consumers,
                    )
                    .map_err(|e| e.context(&format!("joining consumer group {name}")))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| BenchError::new("a group join thread panicked"))?
            })
            .collect::<Result<Vec<_>, BenchError>>()
    })?;
    eprintln!(
        "{} consumer groups of {} joined through the coordinator in {:.1} s",
        opts.groups,
        opts.consumers,
        t0.elapsed().as_secs_f64()
    );
    Ok(joined)
}

/// Connects each consumer thread to the shards of its partitions and finds
/// where each partition starts; also returns how many records lie between
/// the starts and the ends (summed over the groups).
///
/// Each of `--groups` sets of `--consumers` threads reads every partition
/// on its own connections. Simulated groups split the partitions here and
/// keep offsets in the generator: the broker sees N independent readers of
/// each partition, the fan-out load of N groups. With
/// `--coordinated-groups` each group joins through the broker's
/// coordinator ([`group`]), which assigns the partitions, and starts from
/// its committed offsets.
fn consumer_plans(
    topic: &Topic,
    opts: &ConsumeOpts,
    from: StartAt,
    protocol: Protocol,
) -> Result<(Vec<consume::Plan>, u64), BenchError> {
    if opts.coordinated_groups && protocol != Protocol::Kafka {
        return Err(BenchError::usage(
            "--coordinated-groups needs --protocol kafka (the group coordinator speaks Kafka)",
        ));
    }
    let mut plans = Vec::new();
    let mut available = 0;
    let mut groups = join_groups(topic, opts)?.into_iter();
    for _ in 0..opts.groups {
        let mut members: Vec<Option<group::Member>> = match groups.next() {
            Some(joined) => joined.into_iter().map(Some).collect(),
            None => (0..opts.consumers).map(|_| None).collect(),
        };
        for (t, member) in members.iter_mut().enumerate() {
            let t = t as u32;
            let partitions = match member {
                Some(m) => m.partitions.clone(),
                None => schedule::partitions_of(t, opts.consumers, topic.partitions(), false),
            };
            if partitions.is_empty() {
                eprintln!(
                    "consumer {t}: no partition left to read (more consumers than partitions)"
                );
            }
            let committed = match member {
                Some(m) => m.committed(&partitions)?,
                None => vec![-1; partitions.len()],
            };
            let mut conns = Vec::new();
            for (addr, ps) in topic.group_by_shard(&partitions) {
                let mut conn = Conn::connect(&addr, protocol)?;
                let earliest =
                    conn.list_offsets(&topic.name, &ps, list_offsets_timestamp::EARLIEST)?;
                let latest = conn.list_offsets(&topic.name, &ps, list_offsets_timestamp::LATEST)?;
                let starts: Vec<i64> = ps
                    .iter()
                    .enumerate()
                    .map(|(k, p)| {
                        let at = partitions.iter().position(|q| q == p);
                        match at.and_then(|i| committed.get(i)).copied() {
                            Some(c) if c >= 0 => c,
                            _ if from == StartAt::Earliest => earliest[k],
                            _ => latest[k],
                        }
                    })
                    .collect();
                available += latest
                    .iter()
                    .zip(&starts)
                    .map(|(l, s)| (l - s).max(0) as u64)
                    .sum::<u64>();
                let cursors = ps
                    .iter()
                    .zip(&starts)
                    .map(|(&partition, &next)| Cursor { partition, next });
                conns.push((conn, cursors.collect()));
            }
            if conns.is_empty() && member.is_none() {
                continue;
            }
            plans.push(consume::Plan {
                conns,
                member: member.take(),
            });
        }
    }
    Ok((plans, available))
}

/// Runs `tasks` on `threads` generator threads ([`worker::thread_count`]),
/// printing progress each second; the producers' and the consumers'
/// outcomes.
fn run_tasks(
    tasks: Vec<worker::Task<'_>>,
    threads: u32,
    clock: &Clock,
    progress: &Progress,
) -> Result<(Vec<produce::Outcome>, Vec<consume::Outcome>, usize), BenchError> {
    let n = worker::thread_count(threads, tasks.len());
    let outcomes = thread::scope(|s| {
        let handles: Vec<_> = worker::deal(tasks, n)
            .into_iter()
            .map(|share| s.spawn(move || worker::run(share)))
            .collect();
        watch(&handles, clock, progress);
        join(handles)
    })?;
    let (mut produced, mut consumed) = (Vec::new(), Vec::new());
    for outcome in outcomes.into_iter().flatten() {
        match outcome {
            worker::Outcome::Produce(o) => produced.push(o),
            worker::Outcome::Consume(o) => consumed.push(o),
        }
    }
    Ok((produced, consumed, n))
}

/// Prints a progress line to stderr each second until every thread in
/// `handles` is done.
fn watch<T>(handles: &[ScopedJoinHandle<'_, T>], clock: &Clock, progress: &Progress) {
    let mut next = clock.start + Duration::from_secs(1);
    let (mut produced_before, mut consumed_before) = (0, 0);
    while !handles.iter().all(ScopedJoinHandle::is_finished) {
        let now = Instant::now();
        if now < next {
            thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        let produced = progress.produced.load(Ordering::Relaxed);
        let consumed = progress.consumed.load(Ordering::Relaxed);
        eprintln!(
            "[{:>4}s] produced {produced} (+{}/s) consumed {consumed} (+{}/s)",
            (now - clock.start).as_secs(),
            produced - produced_before,
            consumed - consumed_before
        );
        (produced_before, consumed_before) = (produced, consumed);
        next += Duration::from_secs(1);
    }
}

fn join<T>(
    handles: Vec<ScopedJoinHandle<'_, Result<T, BenchError>>>,
) -> Result<Vec<T>, BenchError> {
    let mut outcomes = Vec::with_capacity(handles.len());
    let mut first_error = None;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => first_error = first_error.or(Some(e.context(&format!("thread {i}")))),
            Err(_) => {
                first_error = first_error.or(Some(BenchError::new(format!("thread {i} panicked"))))
            }
        }
    }
    first_error.map_or(Ok(outcomes), Err)
}

fn produced(outcomes: &[produce::Outcome], clock: &Clock) -> Throughput {
    let last = outcomes.iter().filter_map(|o| o.last_ack).max();
    Throughput {
        records: outcomes.iter().map(|o| o.measured_records).sum(),
        bytes: outcomes.iter().map(|o| o.measured_bytes).sum(),
        window: last.map_or(Duration::ZERO, |l| {
            l.saturating_duration_since(clock.measure_from)
        }),
    }
}

fn consumed(outcomes: &[consume::Outcome], clock: &Clock) -> Throughput {
    let last = outcomes.iter().filter_map(|o| o.last_record).max();
    Throughput {
        records: outcomes.iter().map(|o| o.measured_records).sum(),
        bytes: outcomes.iter().map(|o| o.measured_bytes).sum(),
        window: last.map_or(Duration::ZERO, |l| {
            l.saturating_duration_since(clock.measure_from)
        }),
    }
}

fn merge_ack(outcomes: &[produce::Outcome]) -> hdrhistogram::Histogram<u64> {
    let mut all = report::histogram();
    for o in outcomes {
        // Same bounds everywhere: adding cannot fail.
        let _ = all.add(&o.ack_us);
    }
    all
}

fn merge_ack_per_s(outcomes: &[produce::Outcome]) -> report::PerSecond {
    let mut all = report::PerSecond::default();
    for o in outcomes {
        all.merge(&o.ack_per_s);
    }
    all
}

fn warn_if_idled(outcomes: &[consume::Outcome], opts: &ConsumeOpts) {
    if outcomes.iter().any(|o| o.idled) {
        eprintln!(
            "warning: consumers stopped after {}s without a record, before their target",
            opts.idle_timeout_s
        );
    }
}

fn consume_settings<'a>(
    common: &'a Common,
    opts: &ConsumeOpts,
    until: Until,
    stamped: bool,
) -> consume::Settings<'a> {
    consume::Settings {
        topic: &common.topic,
        fetch_bytes: opts.fetch_bytes,
        idle_timeout: Duration::from_secs_f64(opts.idle_timeout_s),
        until,
        stamped,
    }
}

fn produce_settings(opts: &ProduceOpts, limit: &Limit) -> Vec<(&'static str, String)> {
    let acks = match opts.acks {
        Acks::None => "0",
        Acks::Leader => "1",
        Acks::All => "all",
    };
    let mut settings = vec![
        ("producers", opts.producers.to_string()),
        ("acks", acks.to_owned()),
        ("record_bytes", opts.record_bytes.to_string()),
        ("key_bytes", opts.key_bytes.to_string()),
        ("compression", opts.compression.name().to_owned()),
        ("batch_bytes", opts.batch_bytes.to_string()),
        ("in_flight", opts.in_flight.to_string()),
        (
            "rate",
            if opts.rate > 0.0 {
                opts.rate.to_string()
            } else {
                "flat-out".to_owned()
            },
        ),
        ("warmup_s", opts.warmup_s.to_string()),
    ];
    if let Some(n) = limit.records {
        settings.push(("records", n.to_string()));
    }
    settings
}

fn base_report(
    mode: &'static str,
    common: &Common,
    topic: &Topic,
    clock: &Clock,
    cpu_before: CpuTime,
) -> Report {
    let protocol = match common.protocol {
        Protocol::Native => "native",
        Protocol::Kafka => "kafka",
    };
    let mut settings = vec![
        ("protocol", protocol.to_owned()),
        ("topic", common.topic.clone()),
        ("partitions", topic.partitions().to_string()),
    ];
    if let Some(d) = clock.deadline {
        settings.push((
            "duration_s",
            format!("{:.1}", (d - clock.start).as_secs_f64()),
        ));
    }
    Report {
        mode,
        settings,
        produced: None,
        consumed: None,
        produce_ack_us: None,
        end_to_end_us: None,
        moved_bytes: 0,
        wall: clock.start.elapsed(),
        cpu: CpuTime::now().since(cpu_before),
        started: std::time::SystemTime::now()
            .checked_sub(clock.start.elapsed())
            .unwrap_or(std::time::UNIX_EPOCH),
        intervals: Vec::new(),
    }
}

fn finish(report: Report, common: &Common) -> Result<Report, BenchError> {
    print!("{}", report.table());
    if let Some(path) = &common.json {
        std::fs::write(path, report.json())
            .map_err(|e| BenchError::new(format!("writing {}: {e}", path.display())))?;
    }
    if let Some(dir) = &common.results {
        write_results(&report, dir)
            .map_err(|e| BenchError::new(format!("writing results to {}: {e}", dir.display())))?;
        eprintln!("results in {}", dir.display());
    }
    Ok(report)
}

/// `--results DIR`: `result.json`, one `<tag>.hgrm` percentile distribution
/// per latency, `latency.svg` (their percentile spectrum) and `latency.hlog`
/// (HdrHistogram's interval log: one histogram per second per tag, readable
/// by HdrHistogram's HistogramLogProcessor and plotters).
fn write_results(report: &Report, dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("result.json"), report.json())?;
    let colours = ["#2c6fbb", "#c0392b"];
    let mut series = Vec::new();
    for (i, (tag, h)) in report.histograms().into_iter().enumerate() {
        if h.is_empty() {
            continue;
        }
        std::fs::write(dir.join(format!("{tag}.hgrm")), crate::plot::hgrm(h))?;
        series.push(crate::plot::Series {
            label: tag,
            colour: colours[i % colours.len()],
            histogram: h,
        });
    }
    if !series.is_empty() {
        let title = format!("sluice-bench {}: latency percentiles", report.mode);
        std::fs::write(
            dir.join("latency.svg"),
            crate::plot::spectrum_svg(&title, &series),
        )?;
    }
    let mut log = Vec::new();
    report::write_interval_log(&mut log, report)?;
    std::fs::write(dir.join("latency.hlog"), log)
}
