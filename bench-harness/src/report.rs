//! What a run measured, and how it is printed: a table on stdout and,
//! with `--json`, one JSON object.
//!
//! Latencies are microseconds in HdrHistograms with 3 significant digits
//! (a reported value is within 0.1% of the true one).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest latency a histogram tracks; longer ones count as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Linux reports /proc times in USER_HZ ticks, 100 a second on every
/// architecture it runs on here.
const USER_HZ: f64 = 100.0;

/// The percentiles reported, with their labels.
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
];

/// An empty latency histogram.
#[must_use]
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts: a failure is a bug.
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Significant digits of the per-second histograms (the interval log): two
/// keep each one small enough for a 600 s run.
const INTERVAL_SIGNIFICANT_DIGITS: u8 = 2;
/// Seconds of a run the interval log covers at most.
pub const INTERVALS_MAX: usize = 3_600;

/// Latencies second by second since the start of the run, for the
/// HdrHistogram interval log (`latency.hlog`).
#[derive(Clone, Debug, Default)]
pub struct PerSecond(pub Vec<Histogram<u64>>);

impl PerSecond {
    /// Records `latency` in the second of the run that `at` (time since the
    /// start) falls in.
    pub fn record(&mut self, at: Duration, latency: Duration) {
        if let Some(h) = self.at(at) {
            record(h, latency);
        }
    }

    /// The histogram of the second `at` falls in (`None` past
    /// [`INTERVALS_MAX`]), for recording many latencies of one moment.
    pub fn at(&mut self, at: Duration) -> Option<&mut Histogram<u64>> {
        let i = usize::try_from(at.as_secs())
            .ok()
            .filter(|i| *i < INTERVALS_MAX)?;
        while self.0.len() <= i {
            self.0.push(
                Histogram::new_with_bounds(1, LATENCY_US_MAX, INTERVAL_SIGNIFICANT_DIGITS)
                    .expect("constant histogram bounds are valid"),
            );
        }
        self.0.get_mut(i)
    }

    /// Adds `other`'s seconds to this one's.
    pub fn merge(&mut self, other: &PerSecond) {
        for (i, h) in other.0.iter().enumerate() {
            if self.0.len() <= i {
                self.0.push(h.clone());
            } else {
                // Same bounds everywhere: adding cannot fail.
                let _ = self.0[i].add(h);
            }
        }
    }
}

/// Writes `report`'s per-second latencies as an HdrHistogram interval log
/// (V2 deflate encoding), each histogram tagged with its latency's name,
/// values in microseconds (`MaxValueDivisor` 1000: the tools show ms).
pub fn write_interval_log(out: &mut impl std::io::Write, report: &Report) -> std::io::Result<()> {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment(&format!(
            "sluice-bench {}: latency in microseconds, one histogram per second",
            report.mode
        ))
        .with_start_time(report.started)
        .with_base_time(report.started)
        .with_max_value_divisor(1000.0);
    let mut log = builder.begin_log_with(out, &mut serializer)?;
    for (tag, per_s) in &report.intervals {
        for (i, h) in per_s.0.iter().enumerate() {
            if h.is_empty() {
                continue;
            }
            let start = Duration::from_secs(i as u64);
            log.write_histogram(h, start, Duration::from_secs(1), Tag::new(tag))
                .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        }
    }
    Ok(())
}

/// Records `latency`, clamped to what the histogram tracks.
pub fn record(h: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.min(LATENCY_US_MAX));
}

/// `(label, microseconds)` for each reported percentile, then `max`.
#[must_use]
pub fn percentiles(h: &Histogram<u64>) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = PERCENTILES
        .iter()
        .map(|&(label, q)| (label, h.value_at_percentile(q)))
        .collect();
    out.push(("max", h.max()));
    out
}

/// Microseconds for a person: `850us`, `12.3ms`, `1.50s`.
#[must_use]
pub fn format_us(us: u64) -> String {
    if us < 10_000 {
        format!("{us}us")
    } else if us < 10_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    }
}

/// The process's CPU time so far: (user, system).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    pub user_s: f64,
    pub system_s: f64,
}

impl CpuTime {
    /// This process's CPU time, or zero where /proc is not there.
    #[must_use]
    pub fn now() -> CpuTime {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_proc_stat(&s))
            .unwrap_or_default()
    }

    #[must_use]
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            system_s: (self.system_s - earlier.system_s).max(0.0),
        }
    }

    #[must_use]
    pub fn total_s(self) -> f64 {
        self.user_s + self.system_s
    }
}

/// utime and stime (fields 14 and 15) of a /proc/PID/stat line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
#[must_use]
pub fn parse_proc_stat(stat: &str) -> Option<CpuTime> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // fields 3..=13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(CpuTime {
        user_s: utime as f64 / USER_HZ,
        system_s: stime as f64 / USER_HZ,
    })
}

/// One direction of traffic: records that producers had acknowledged, or
/// that consumers read, inside the measured window.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    pub records: u64,
    /// Record-batch bytes (values, record framing and batch headers: what
    /// the log stores), not the native frames around them.
    pub bytes: u64,
    pub window: Duration,
}

impl Throughput {
    #[must_use]
    pub fn records_per_s(&self) -> f64 {
        per_s(self.records as f64, self.window)
    }

    /// Megabytes (10^6 bytes) of record batches per second.
    #[must_use]
    pub fn mb_per_s(&self) -> f64 {
        per_s(self.bytes as f64 / 1e6, self.window)
    }
}

fn per_s(amount: f64, window: Duration) -> f64 {
    let s = window.as_secs_f64();
    if s > 0.0 {
        amount / s
    } else {
        0.0
    }
}

/// Everything a run reports.
pub struct Report {
    pub mode: &'static str,
    /// `(key, value)` of the settings, printed first; values are JSON
    /// literals when `json_literal` says so, otherwise strings.
    pub settings: Vec<(&'static str, String)>,
    pub produced: Option<Throughput>,
    pub consumed: Option<Throughput>,
    pub produce_ack_us: Option<Histogram<u64>>,
    pub end_to_end_us: Option<Histogram<u64>>,
    /// Record-batch bytes produced plus consumed over the whole run
    /// (warm-up included): the denominator of the broker's CPU per GB.
    pub moved_bytes: u64,
    pub wall: Duration,
    pub cpu: CpuTime,
    /// When the run started (the interval log's base time).
    pub started: std::time::SystemTime,
    /// Per-second latencies by tag (`produce_ack`, `end_to_end`).
    pub intervals: Vec<(&'static str, PerSecond)>,
}

impl Report {
    /// The table for stdout.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "{} {}", self.mode, settings.join(" "));
        let _ = writeln!(
            out,
            "{:<10} {:>12} {:>14} {:>10} {:>10}",
            "", "records", "records/s", "MB/s", "window_s"
        );
        for (name, t) in [("produced", &self.produced), ("consumed", &self.consumed)] {
            if let Some(t) = t {
                let _ = writeln!(
                    out,
                    "{name:<10} {:>12} {:>14.0} {:>10.2} {:>10.2}",
                    t.records,
                    t.records_per_s(),
                    t.mb_per_s(),
                    t.window.as_secs_f64()
                );
            }
        }
        let _ = write!(out, "{:<12} {:>9}", "latency", "count");
        for (label, _) in PERCENTILES {
            let _ = write!(out, " {label:>8}");
        }
        let _ = writeln!(out, " {:>8}", "max");
        for (name, h) in self.histograms() {
            let _ = write!(out, "{name:<12} {:>9}", h.len());
            for (_, us) in percentiles(h) {
                let _ = write!(out, " {:>8}", format_us(us));
            }
            let _ = writeln!(out);
        }
        let wall_s = self.wall.as_secs_f64();
        let _ = writeln!(
            out,
            "generator cpu {:.2}s (user {:.2}s, system {:.2}s) over {wall_s:.2}s wall = {:.0}% of one core",
            self.cpu.total_s(),
            self.cpu.user_s,
            self.cpu.system_s,
            100.0 * per_s(self.cpu.total_s(), self.wall)
        );
        if let Some(busy) = self.generator_saturation() {
            let _ = writeln!(
                out,
                "WARNING: the generator kept its threads {:.0}% busy: it may have been the bottleneck (give it more --threads or CPUs)",
                100.0 * busy
            );
        }
        out
    }

    /// The generator's CPU as a share of what its threads could use, when
    /// that is 75% or more (`None` below that, or with no thread count).
    #[must_use]
    pub fn generator_saturation(&self) -> Option<f64> {
        let threads: f64 = self
            .settings
            .iter()
            .find(|(k, _)| *k == "threads")?
            .1
            .parse()
            .ok()?;
        let busy = per_s(self.cpu.total_s(), self.wall) / threads;
        (threads > 0.0 && busy >= 0.75).then_some(busy)
    }

    pub fn histograms(&self) -> Vec<(&'static str, &Histogram<u64>)> {
        let both = [
            ("produce_ack", &self.produce_ack_us),
            ("end_to_end", &self.end_to_end_us),
        ];
        both.into_iter()
            .filter_map(|(n, h)| h.as_ref().map(|h| (n, h)))
            .collect()
    }

    /// One JSON object, hand-written: the shape is small and fixed.
    #[must_use]
    pub fn json(&self) -> String {
        let mut fields = vec![format!("\"mode\":{}", json_str(self.mode))];
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
            .collect();
        fields.push(format!("\"settings\":{{{}}}", settings.join(",")));
        for (name, t) in [("produced", &self.produced), ("consumed", &self.consumed)] {
            if let Some(t) = t {
                fields.push(format!(
                    "\"{name}\":{{\"records\":{},\"bytes\":{},\"window_s\":{},\"records_per_s\":{},\"mb_per_s\":{}}}",
                    t.records,
                    t.bytes,
                    json_number(t.window.as_secs_f64()),
                    json_number(t.records_per_s()),
                    json_number(t.mb_per_s())
                ));
            }
        }
        let latencies: Vec<String> = self
            .histograms()
            .into_iter()
            .map(|(name, h)| {
                let mut parts = vec![format!("\"count\":{}", h.len())];
                parts.extend(
                    percentiles(h)
                        .into_iter()
                        .map(|(l, us)| format!("\"{l}\":{us}")),
                );
                format!("\"{name}\":{{{}}}", parts.join(","))
            })
            .collect();
        fields.push(format!("\"latency_us\":{{{}}}", latencies.join(",")));
        fields.push(format!(
            "\"cpu\":{{\"user_s\":{},\"system_s\":{},\"wall_s\":{}}}",
            json_number(self.cpu.user_s),
            json_number(self.cpu.system_s),
            json_number(self.wall.as_secs_f64())
        ));
        format!("{{{}}}\n", fields.join(","))
    }
}

/// A JSON number; NaN and infinities (which JSON lacks) become null.
fn json_number(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".to_owned()
    }
}

/// `s` as a JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_from_the_last_paren() {
        let line = "4242 (sluice (bench) x) R 1 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 37 0 0 20 0 3 0 12345 1000000 200 18446744073709551615";
        let cpu = parse_proc_stat(line).expect("parses");
        assert_eq!(
            cpu,
            CpuTime {
                user_s: 2.5,
                system_s: 0.37
            }
        );
        assert_eq!(parse_proc_stat("12 (x) R 1 2"), None);
        assert_eq!(parse_proc_stat("no paren at all"), None);
        assert_eq!(parse_proc_stat("1 (x) R 1 1 1 0 -1 0 0 0 0 0 u s"), None);
    }

    #[test]
    fn cpu_time_since_never_goes_negative() {
        let a = CpuTime {
            user_s: 1.0,
            system_s: 0.5,
        };
        let b = CpuTime {
            user_s: 3.0,
            system_s: 0.25,
        };
        assert_eq!(
            b.since(a),
            CpuTime {
                user_s: 2.0,
                system_s: 0.0
            }
        );
        assert_eq!(b.total_s(), 3.25);
    }

    #[test]
    fn percentiles_of_a_uniform_histogram() {
        let mut h = histogram();
        for us in 1..=10_000u64 {
            h.record(us).expect("in range");
        }
        let p = percentiles(&h);
        let labels: Vec<&str> = p.iter().map(|(l, _)| *l).collect();
        assert_eq!(labels, ["p50", "p90", "p99", "p99.9", "p99.99", "max"]);
        let within = |got: u64, want: u64| got.abs_diff(want) <= want / 1000 + 1;
        assert!(within(p[0].1, 5_000), "{p:?}");
        assert!(within(p[2].1, 9_900), "{p:?}");
        assert!(within(p[5].1, 10_000), "{p:?}");
    }

    #[test]
    fn latencies_beyond_the_bound_are_clamped() {
        let mut h = histogram();
        record(&mut h, Duration::from_secs(10 * 3600));
        record(&mut h, Duration::from_nanos(300));
        assert_eq!(h.len(), 2);
        assert!(h.max() >= LATENCY_US_MAX);
        assert_eq!(h.min(), 0);
    }

    #[test]
    fn the_interval_log_holds_one_tagged_histogram_per_second() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        use hdrhistogram::serialization::Deserializer;
        let mut acks = PerSecond::default();
        let mut e2e = PerSecond::default();
        for i in 0..30u64 {
            acks.record(
                Duration::from_millis(i * 100),
                Duration::from_micros(500 + i),
            );
        }
        e2e.record(Duration::from_millis(2500), Duration::from_millis(7));
        let mut other = PerSecond::default();
        other.record(Duration::from_millis(100), Duration::from_micros(900));
        acks.merge(&other);
        let report = Report {
            mode: "e2e",
            settings: Vec::new(),
            produced: None,
            consumed: None,
            produce_ack_us: None,
            end_to_end_us: None,
            moved_bytes: 0,
            wall: Duration::from_secs(3),
            cpu: CpuTime::default(),
            started: std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            intervals: vec![("produce_ack", acks), ("end_to_end", e2e)],
        };
        let mut log = Vec::new();
        write_interval_log(&mut log, &report).expect("written");
        let text = String::from_utf8(log.clone()).expect("text");
        assert!(text.contains("#[StartTime: 1700000000"), "{text}");
        let mut seen = Vec::new();
        let mut deserializer = Deserializer::new();
        for entry in IntervalLogIterator::new(&log) {
            if let Ok(LogEntry::Interval(h)) = entry {
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(h.encoded_histogram())
                    .expect("base64");
                let hist: Histogram<u64> = deserializer
                    .deserialize(&mut bytes.as_slice())
                    .expect("a V2 histogram");
                let tag = h.tag().map(|t| t.as_str().to_owned()).unwrap_or_default();
                seen.push((tag, h.start_timestamp().as_secs(), hist.len()));
            }
        }
        assert_eq!(
            seen,
            vec![
                ("produce_ack".to_owned(), 0, 11),
                ("produce_ack".to_owned(), 1, 10),
                ("produce_ack".to_owned(), 2, 10),
                ("end_to_end".to_owned(), 2, 1),
            ]
        );
    }

    #[test]
    fn microseconds_format_for_a_person() {
        assert_eq!(format_us(0), "0us");
        assert_eq!(format_us(9_999), "9999us");
        assert_eq!(format_us(12_345), "12.3ms");
        assert_eq!(format_us(1_500_000), "1500.0ms");
        assert_eq!(format_us(12_000_000), "12.00s");
    }

    #[test]
    fn throughput_per_second() {
        let t = Throughput {
            records: 1_000,
            bytes: 2_000_000,
            window: Duration::from_millis(500),
        };
        assert_eq!(t.records_per_s(), 2_000.0);
        assert_eq!(t.mb_per_s(), 4.0);
        let empty = Throughput::default();
        assert_eq!(empty.records_per_s(), 0.0);
    }

    #[test]
    fn json_is_escaped_and_shaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
        assert_eq!(json_number(f64::NAN), "null");
        let mut h = histogram();
        h.record(100).expect("in range");
        let report = Report {
            mode: "produce",
            settings: vec![("topic", "t\"1".to_owned())],
            produced: Some(Throughput {
                records: 1,
                bytes: 100,
                window: Duration::from_secs(1),
            }),
            consumed: None,
            produce_ack_us: Some(h),
            end_to_end_us: None,
            started: std::time::SystemTime::UNIX_EPOCH,
            intervals: Vec::new(),
            moved_bytes: 100,
            wall: Duration::from_secs(1),
            cpu: CpuTime::default(),
        };
        let json = report.json();
        assert!(json.starts_with("{\"mode\":\"produce\",\"settings\":{\"topic\":\"t\\\"1\"}"));
        assert!(json.contains("\"produced\":{\"records\":1,\"bytes\":100,"));
        assert!(json.contains("\"latency_us\":{\"produce_ack\":{\"count\":1,\"p50\":100,"));
        assert!(!json.contains("consumed"));
        let table = report.table();
        assert!(table.contains("produce_ack"));
        assert!(table.contains("100us"));
        assert!(!table.contains("WARNING"), "no thread count: no verdict");
    }

    #[test]
    fn a_generator_that_kept_its_threads_busy_is_flagged() {
        let report = |threads: &str, cpu_s: f64| Report {
            mode: "produce",
            settings: vec![("threads", threads.to_owned())],
            produced: None,
            consumed: None,
            produce_ack_us: None,
            end_to_end_us: None,
            started: std::time::SystemTime::UNIX_EPOCH,
            intervals: Vec::new(),
            moved_bytes: 0,
            wall: Duration::from_secs(10),
            cpu: CpuTime {
                user_s: cpu_s / 2.0,
                system_s: cpu_s / 2.0,
            },
        };
        // Two threads over 10 s: 19 CPU-s is 95% of what they could use.
        let busy = report("2", 19.0);
        assert!(busy
            .generator_saturation()
            .is_some_and(|b| (b - 0.95).abs() < 1e-9));
        assert!(busy
            .table()
            .contains("WARNING: the generator kept its threads 95% busy"));
        assert_eq!(report("2", 12.0).generator_saturation(), None);
        assert!(!report("2", 12.0).table().contains("WARNING"));
        assert_eq!(report("4", 19.0).generator_saturation(), None);
    }
}
