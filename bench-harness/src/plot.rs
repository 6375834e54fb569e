//! Latency percentile distributions: HdrHistogram's text format (`.hgrm`,
//! what HdrHistogram's plotter reads) and a hand-written SVG percentile
//! spectrum (latency against percentile on the usual log "nines" axis).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Percentiles the spectrum is drawn through: 0, 50, 75, ... up to 99.999.
fn spectrum_points() -> Vec<f64> {
    let mut out = Vec::new();
    // Halve the distance to 100 each step, 5 points per halving.
    let mut p: f64 = 0.0;
    for _ in 0..85 {
        out.push(p);
        p += (100.0 - p) * (1.0 - 0.5f64.powf(0.2));
        if p > 99.999 {
            break;
        }
    }
    out.push(99.999);
    out
}

/// The HdrHistogram percentile distribution text (values in milliseconds).
#[must_use]
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for it in h.iter_quantiles(5) {
        let q = it.quantile_iterated_to();
        let inv = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "")
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inv}",
            it.value_iterated_to() as f64 / 1000.0,
            q,
            it.count_since_last_iteration()
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    out
}

/// One line on a spectrum plot.
pub struct Series<'a> {
    pub label: &'a str,
    pub colour: &'a str,
    pub histogram: &'a Histogram<u64>,
}

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// The x axis ends at 1/(1-p) = 10^5 (p99.999).
const NINES: f64 = 5.0;

/// x position of percentile `p` (0..100): log10(1/(1-p/100)).
#[must_use]
pub fn x_of(p: f64) -> f64 {
    let q = (p / 100.0).clamp(0.0, 0.99999);
    let nines = (1.0 / (1.0 - q)).log10().min(NINES);
    LEFT + (W - LEFT - RIGHT) * nines / NINES
}

/// An SVG percentile spectrum of `series`, latency in ms on a linear axis.
#[must_use]
pub fn spectrum_svg(title: &str, series: &[Series<'_>]) -> String {
    let points = spectrum_points();
    let y_max_ms = series
        .iter()
        .filter(|s| !s.histogram.is_empty())
        .map(|s| s.histogram.value_at_percentile(99.999) as f64 / 1000.0)
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.05;
    let y_of = |ms: f64| TOP + (H - TOP - BOTTOM) * (1.0 - (ms / y_max_ms).min(1.0));
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    // Axes, grid and labels.
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = LEFT + (W - LEFT - RIGHT) * i as f64 / NINES;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0
        );
    }
    for i in 0..=5 {
        let ms = y_max_ms * f64::from(i) / 5.0;
        let y = y_of(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ms:.2}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (ms)</text>"#,
        W / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    );
    for (n, s) in series.iter().enumerate() {
        if s.histogram.is_empty() {
            continue;
        }
        let path: Vec<String> = points
            .iter()
            .map(|&p| {
                let ms = s.histogram.value_at_percentile(p) as f64 / 1000.0;
                format!("{:.1},{:.1}", x_of(p), y_of(ms))
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.colour,
            path.join(" ")
        );
        let ly = TOP + 16.0 + 16.0 * n as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 10.0,
            ly - 4.0,
            s.colour,
            LEFT + 30.0,
            ly,
            escape(s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report;

    #[test]
    fn the_x_axis_counts_nines() {
        assert!((x_of(0.0) - LEFT).abs() < 1e-9);
        let step = (W - LEFT - RIGHT) / NINES;
        assert!((x_of(90.0) - (LEFT + step)).abs() < 1e-6);
        assert!((x_of(99.9) - (LEFT + 3.0 * step)).abs() < 1e-6);
        assert!((x_of(100.0) - (W - RIGHT)).abs() < 1e-6, "clamped");
    }

    #[test]
    fn spectrum_points_rise_to_five_nines() {
        let p = spectrum_points();
        assert_eq!(p.first(), Some(&0.0));
        assert_eq!(p.last(), Some(&99.999));
        assert!(p.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn svg_and_hgrm_hold_every_series() {
        let mut a = report::histogram();
        let mut b = report::histogram();
        for us in 1..=1000 {
            a.record(us).expect("in range");
            b.record(us * 2).expect("in range");
        }
        let svg = spectrum_svg(
            "e2e <a>",
            &[
                Series {
                    label: "kafka",
                    colour: "#c33",
                    histogram: &a,
                },
                Series {
                    label: "sluice",
                    colour: "#36c",
                    histogram: &b,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("e2e &lt;a&gt;"));
        let text = hgrm(&a);
        assert!(text.contains("Percentile"));
        assert!(text.contains("Total count    =         1000"));
    }
}
