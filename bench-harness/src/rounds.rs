//! Issue 4's targets as numbers, and `compare --rounds N`: the matrix run
//! N times, the brokers' order swapped each round, each round's figures
//! kept, and the targets judged on the median of the rounds' ratios. On a
//! noisy machine one run's ratio can flip a verdict either way (a Kafka
//! stalled for 40 ms at (b), a slow page cache at (a)); the median of
//! several rounds, each measured side by side, does not move as far.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::report::json_str;

/// The throughput of (a): Sluice at least this many times Kafka's.
pub const THROUGHPUT_AT_LEAST: f64 = 2.0;
/// Broker CPU seconds per GB moved: Sluice's at most this share of Kafka's.
pub const CPU_AT_MOST: f64 = 1.0 / 3.0;
/// End-to-end p99 and p99.9 at (b): Sluice's at most this share of Kafka's.
pub const TAIL_AT_MOST: f64 = 0.2;

/// Bytes in a MiB, for the figures given in MiB.
pub const MIB: f64 = 1024.0 * 1024.0;

/// What one run (or the median of several) measured against the targets:
/// Sluice's figure over Kafka's, `None` where not measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetRatios {
    /// (a): produced MB/s.
    pub throughput: Option<f64>,
    /// Broker CPU seconds per GB moved, each workload in matrix order.
    pub cpu: Vec<(&'static str, Option<f64>)>,
    /// (b): end-to-end p99 and p99.9.
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    /// Sluice's peak RSS over the workloads, bytes, and its memory budget.
    pub peak_rss: Option<u64>,
    pub budget: Option<u64>,
}

impl TargetRatios {
    /// The four targets, in the order of [`TargetRatios::verdicts`].
    pub const NAMES: [&'static str; 4] = [
        "(a) max throughput at least 2x Kafka's",
        "broker CPU s/GB at most 1/3 of Kafka's, every workload",
        "(b) e2e p99 and p99.9 at most 1/5 of Kafka's",
        "Sluice's RSS within its memory budget, every workload",
    ];

    /// Met (`Some(true)`), missed, or not measured, for each target.
    pub fn verdicts(&self) -> [Option<bool>; 4] {
        let cpu_measured = self.cpu.iter().any(|(_, r)| r.is_some());
        [
            self.throughput.map(|r| r >= THROUGHPUT_AT_LEAST),
            cpu_measured.then(|| self.cpu_over().is_empty()),
            self.p99
                .zip(self.p999)
                .map(|(a, b)| a <= TAIL_AT_MOST && b <= TAIL_AT_MOST),
            self.peak_rss.zip(self.budget).map(|(p, b)| p <= b),
        ]
    }

    /// The workloads whose CPU ratio is over the target.
    pub fn cpu_over(&self) -> Vec<&'static str> {
        self.cpu
            .iter()
            .filter(|(_, r)| r.is_some_and(|r| r > CPU_AT_MOST))
            .map(|&(id, _)| id)
            .collect()
    }

    /// `(a) 0.23, (b) 0.44; over 1/3 at b`.
    pub fn cpu_text(&self) -> String {
        let mut t = self
            .cpu
            .iter()
            .map(|(id, r)| format!("({id}) {}", fixed2(*r)))
            .collect::<Vec<_>>()
            .join(", ");
        let over = self.cpu_over();
        if !over.is_empty() {
            let _ = write!(t, "; over 1/3 at {}", over.join(", "));
        }
        t
    }

    /// `peak 223 MiB of 320 MiB`.
    pub fn rss_text(&self) -> String {
        match (self.peak_rss, self.budget) {
            (Some(p), Some(b)) => format!(
                "peak {:.0} MiB of {:.0} MiB",
                p as f64 / MIB,
                b as f64 / MIB
            ),
            _ => "not measured".to_owned(),
        }
    }

    /// The median of each ratio over the rounds that measured it; the
    /// highest peak RSS of any round.
    pub fn median(rounds: &[TargetRatios]) -> TargetRatios {
        let of = |f: &dyn Fn(&TargetRatios) -> Option<f64>| {
            median(&rounds.iter().filter_map(f).collect::<Vec<_>>())
        };
        let ids: Vec<&'static str> = rounds
            .first()
            .map(|r| r.cpu.iter().map(|&(id, _)| id).collect())
            .unwrap_or_default();
        TargetRatios {
            throughput: of(&|r| r.throughput),
            cpu: ids
                .into_iter()
                .map(|id| (id, of(&|r| r.cpu.iter().find(|c| c.0 == id)?.1)))
                .collect(),
            p99: of(&|r| r.p99),
            p999: of(&|r| r.p999),
            peak_rss: rounds.iter().filter_map(|r| r.peak_rss).max(),
            budget: rounds.iter().find_map(|r| r.budget),
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count);
/// `None` for none.
#[must_use]
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// A figure to two decimals, a dash where there is none.
pub fn fixed2(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}"))
}

/// One workload's metric in one round, on both brokers.
#[derive(Clone, Debug)]
pub struct Metric {
    pub workload: &'static str,
    pub name: String,
    pub kafka: Option<f64>,
    pub sluice: Option<f64>,
    /// A line that reports a failed workload instead of a figure.
    pub error: Option<String>,
}

impl Metric {
    /// Sluice's figure over Kafka's.
    #[must_use]
    pub fn ratio(&self) -> Option<f64> {
        match (self.sluice, self.kafka) {
            (Some(s), Some(k)) if k > 0.0 => Some(s / k),
            _ => None,
        }
    }
}

/// What one round of `compare --rounds` measured.
pub struct Round {
    /// 1-based.
    pub number: u32,
    /// The broker that ran first in this round.
    pub first: &'static str,
    /// Each broker that did not start in this round, with why.
    pub not_started: Vec<String>,
    /// Where its own report, JSON, distributions and plots are.
    pub dir: PathBuf,
    pub ratios: TargetRatios,
    pub metrics: Vec<Metric>,
}

/// The targets over all rounds: (target, the median's figures with each
/// round's, the verdict on the median, rounds that met it).
fn target_lines(rounds: &[Round]) -> Vec<(&'static str, String, Option<bool>, usize)> {
    let all: Vec<TargetRatios> = rounds.iter().map(|r| r.ratios.clone()).collect();
    let med = TargetRatios::median(&all);
    let verdicts = med.verdicts();
    let met_in = |i: usize| all.iter().filter(|r| r.verdicts()[i] == Some(true)).count();
    let each =
        |f: &dyn Fn(&TargetRatios) -> String| all.iter().map(f).collect::<Vec<_>>().join("; ");
    let x = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.2}x"));
    // The figures of each target, in TargetRatios::NAMES order.
    let figures = [
        format!(
            "median {} (rounds: {})",
            x(med.throughput),
            each(&|r| x(r.throughput))
        ),
        format!(
            "median {} (rounds: {})",
            med.cpu_text(),
            each(&|r| r.cpu_text())
        ),
        format!(
            "median p99 {}, p99.9 {} (rounds: {})",
            fixed2(med.p99),
            fixed2(med.p999),
            each(&|r| format!("{} / {}", fixed2(r.p99), fixed2(r.p999)))
        ),
        format!(
            "highest {} (rounds: {})",
            med.rss_text(),
            each(&|r| r.rss_text())
        ),
    ];
    figures
        .into_iter()
        .enumerate()
        .map(|(i, text)| (TargetRatios::NAMES[i], text, verdicts[i], met_in(i)))
        .collect()
}

/// `yes` or `no` for a target's verdict, a dash where it was not measured.
pub fn verdict<'a>(met: Option<bool>, yes: &'a str, no: &'a str) -> &'a str {
    match met {
        Some(true) => yes,
        Some(false) => no,
        None => "—",
    }
}

/// The terminal's summary of all rounds.
#[must_use]
pub fn text(rounds: &[Round]) -> String {
    let mut t = format!(
        "Against the targets of issue 4, judged on the median of {} rounds:\n",
        rounds.len()
    );
    for (target, figures, met, met_in) in target_lines(rounds) {
        let v = verdict(met, "met", "MISSED");
        if met.is_none() {
            let _ = writeln!(t, "{v:<7} {target}: not run");
            continue;
        }
        let _ = writeln!(
            t,
            "{v:<7} {target}: {figures}; met in {met_in} of {} rounds",
            rounds.len()
        );
    }
    t
}

/// One (workload, metric) over the rounds.
struct RatioRow {
    workload: &'static str,
    metric: String,
    /// Its ratio in each round.
    each: Vec<Option<f64>>,
    median: Option<f64>,
}

/// Each (workload, metric) of the first round, with its ratio in every
/// round and their median.
fn ratio_rows(rounds: &[Round]) -> Vec<RatioRow> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .metrics
        .iter()
        .filter(|m| m.error.is_none())
        .map(|m| {
            let each: Vec<Option<f64>> = rounds
                .iter()
                .map(|r| {
                    r.metrics
                        .iter()
                        .find(|o| o.workload == m.workload && o.name == m.name)
                        .and_then(Metric::ratio)
                })
                .collect();
            RatioRow {
                workload: m.workload,
                metric: m.name.clone(),
                median: median(&each.iter().flatten().copied().collect::<Vec<_>>()),
                each,
            }
        })
        .collect()
}

/// The top-level report.md of a run of several rounds.
#[must_use]
pub fn markdown(rounds: &[Round], header: &str) -> String {
    let n = rounds.len();
    let mut md = String::from("# sluice-bench compare, several rounds\n\n");
    let _ = writeln!(md, "{header}\n");
    let _ = writeln!(
        md,
        "The workload matrix ran {n} times, each time on a freshly started Kafka and a freshly \
         started Sluice, the brokers' order swapped from one round to the next so that a machine \
         that slows or speeds up over the run weighs on both alike. Each round's own report \
         (settings, every figure, plots, interval logs) is in its directory:\n"
    );
    for r in rounds {
        let _ = writeln!(
            md,
            "- round {}: `{}` ({} first)",
            r.number,
            r.dir.display(),
            r.first
        );
    }
    let _ = writeln!(md, "\n## Against the targets of issue 4\n");
    let _ = writeln!(
        md,
        "Judged on the median of the rounds' ratios (Sluice's figure over Kafka's, each measured \
         within one round).\n"
    );
    let _ = writeln!(
        md,
        "| target | median, and each round | on the median | rounds met |\n|---|---|---|---:|"
    );
    for (target, figures, met, met_in) in target_lines(rounds) {
        if met.is_none() {
            let _ = writeln!(md, "| {target} | not run | — | — |");
            continue;
        }
        let _ = writeln!(
            md,
            "| {target} | {figures} | {} | {met_in} of {n} |",
            verdict(met, "**met**", "missed")
        );
    }
    let _ = writeln!(
        md,
        "\n## Ratios (Sluice / Kafka), each round and the median\n"
    );
    let mut head = String::from("| workload | metric |");
    let mut rule = String::from("|---|---|");
    for r in rounds {
        let _ = write!(head, " round {} |", r.number);
        rule.push_str("---:|");
    }
    let _ = writeln!(md, "{head} median |\n{rule}---:|");
    for row in ratio_rows(rounds) {
        let cells: String = row
            .each
            .iter()
            .map(|v| format!(" {} |", fixed2(*v)))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} |{cells} {} |",
            row.workload,
            row.metric,
            fixed2(row.median)
        );
    }
    for r in rounds {
        for why in &r.not_started {
            let _ = writeln!(md, "\nRound {}: did not start: {why}", r.number);
        }
        for m in r.metrics.iter().filter(|m| m.error.is_some()) {
            let _ = writeln!(
                md,
                "\nRound {}, ({}) {}: {}",
                r.number,
                m.workload,
                m.name,
                m.error.as_deref().unwrap_or_default()
            );
        }
    }
    md
}

/// rounds.json: every round's ratios and the medians.
#[must_use]
pub fn json(rounds: &[Round]) -> String {
    let num = |v: Option<f64>| v.map_or_else(|| "null".to_owned(), |v| format!("{v:.4}"));
    let rows: Vec<String> = ratio_rows(rounds)
        .into_iter()
        .map(|row| {
            format!(
                "{{\"workload\":\"{}\",\"metric\":\"{}\",\"ratios\":[{}],\"median\":{}}}",
                row.workload,
                row.metric,
                row.each
                    .iter()
                    .map(|v| num(*v))
                    .collect::<Vec<_>>()
                    .join(","),
                num(row.median)
            )
        })
        .collect();
    let targets: Vec<String> = target_lines(rounds)
        .into_iter()
        .map(|(target, _, met, met_in)| {
            format!(
                "{{\"target\":\"{target}\",\"met_on_median\":{},\"rounds_met\":{met_in}}}",
                met.map_or_else(|| "null".to_owned(), |m| m.to_string())
            )
        })
        .collect();
    let dirs: Vec<String> = rounds
        .iter()
        .map(|r| json_str(&r.dir.display().to_string()))
        .collect();
    format!(
        "{{\"rounds\":{},\"round_dirs\":[{}],\"targets\":[{}],\"ratios\":[{}]}}\n",
        rounds.len(),
        dirs.join(","),
        targets.join(","),
        rows.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratios(tp: f64, cpu_b: f64, p99: f64, p999: f64, peak_mib: u64) -> TargetRatios {
        TargetRatios {
            throughput: Some(tp),
            cpu: vec![("a", Some(0.25)), ("b", Some(cpu_b))],
            p99: Some(p99),
            p999: Some(p999),
            peak_rss: Some(peak_mib << 20),
            budget: Some(320 << 20),
        }
    }

    #[test]
    fn a_ratio_needs_both_figures_and_a_kafka_above_zero() {
        let m = |kafka, sluice| Metric {
            workload: "a",
            name: "produced MB/s".to_owned(),
            kafka,
            sluice,
            error: None,
        };
        assert_eq!(m(Some(4.0), Some(2.0)).ratio(), Some(0.5));
        assert_eq!(m(None, Some(2.0)).ratio(), None);
        assert_eq!(m(Some(0.0), Some(2.0)).ratio(), None);
        assert_eq!(fixed2(m(Some(3.0), Some(1.0)).ratio()), "0.33");
        assert_eq!(fixed2(None), "—");
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0), "no NaN in a median");
    }

    #[test]
    fn targets_are_judged_on_the_median_of_the_rounds() {
        // One round meets the tail target against a stalled Kafka; the
        // median of three does not. One round misses throughput; the
        // median meets it.
        let rounds = [
            ratios(3.0, 0.30, 0.10, 0.15, 210),
            ratios(1.9, 0.50, 0.40, 0.50, 230),
            ratios(2.5, 0.45, 0.35, 0.30, 220),
        ];
        let med = TargetRatios::median(&rounds);
        assert_eq!(med.throughput, Some(2.5));
        assert_eq!(med.cpu, vec![("a", Some(0.25)), ("b", Some(0.45))]);
        assert_eq!((med.p99, med.p999), (Some(0.35), Some(0.30)));
        assert_eq!(med.peak_rss, Some(230 << 20), "the highest peak");
        assert_eq!(
            med.verdicts(),
            [Some(true), Some(false), Some(false), Some(true)]
        );
        assert_eq!(rounds[0].verdicts()[2], Some(true));
        assert_eq!(med.cpu_text(), "(a) 0.25, (b) 0.45; over 1/3 at b");

        let round = |number, r: &TargetRatios| Round {
            number,
            first: if number % 2 == 1 { "kafka" } else { "sluice" },
            not_started: if number == 2 {
                vec!["kafka: port in use".to_owned()]
            } else {
                Vec::new()
            },
            dir: PathBuf::from(format!("/r/round-{number}")),
            ratios: r.clone(),
            metrics: vec![Metric {
                workload: "a",
                name: "produced MB/s".to_owned(),
                kafka: Some(100.0),
                sluice: r.throughput.map(|t| t * 100.0),
                error: None,
            }],
        };
        let rs: Vec<Round> = rounds.iter().zip(1..).map(|(r, n)| round(n, r)).collect();
        let t = text(&rs);
        let not_run = TargetRatios {
            throughput: None,
            ..rounds[0].clone()
        };
        let one = [round(1, &not_run)];
        assert!(text(&one).contains("—       (a) max throughput at least 2x Kafka's: not run"));
        assert!(markdown(&one, "")
            .contains("| (a) max throughput at least 2x Kafka's | not run | — | — |"));
        assert!(t.contains("met     (a) max throughput at least 2x Kafka's: median 2.50x (rounds: 3.00x; 1.90x; 2.50x); met in 2 of 3 rounds"), "{t}");
        assert!(
            t.contains(
                "MISSED  (b) e2e p99 and p99.9 at most 1/5 of Kafka's: median p99 0.35, p99.9 0.30"
            ),
            "{t}"
        );
        assert!(t.contains("met in 1 of 3 rounds"), "{t}");
        let md = markdown(&rs, "header");
        assert!(
            md.contains("| a | produced MB/s | 3.00 | 1.90 | 2.50 | 2.50 |"),
            "{md}"
        );
        assert!(
            md.contains("- round 2: `/r/round-2` (sluice first)"),
            "{md}"
        );
        assert!(
            md.contains("Round 2: did not start: kafka: port in use"),
            "{md}"
        );
        let j = json(&rs);
        assert!(
            j.contains("\"ratios\":[3.0000,1.9000,2.5000],\"median\":2.5000"),
            "{j}"
        );
        assert!(
            j.contains("\"met_on_median\":false,\"rounds_met\":1"),
            "{j}"
        );
    }
}
