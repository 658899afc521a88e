//! Outputs: the per-step CSV, the summary, the side-by-side table and SVG plots.
//!
//! Every number is printed with a fixed number of decimals, so the same run gives the same bytes.
//! Plots are plain SVG written here (a handful of polylines needs no plotting library); series
//! are downsampled to at most [`MAX_POINTS`] points by averaging (maxima for latency), so memory
//! does not grow with the length of the run.

use std::fmt::Write as _;
use std::io::{self, Write};

use crate::engine::{StepRow, Summary};

/// Points kept per series for plotting.
pub const MAX_POINTS: usize = 1_500;

/// The CSV header for [`csv_row`] with `shares` share columns.
pub fn csv_header(shares: usize) -> String {
    let mut h = String::from("t,rps,desired,pods,endpoints,requests,failed,p50_ms,p99_ms,ejected");
    for i in 0..shares {
        let _ = write!(h, ",share_pod{i}");
    }
    h
}

/// One CSV line (no newline).
pub fn csv_row(r: &StepRow) -> String {
    let mut s = format!(
        "{:.3},{:.3},{},{},{},{:.3},{:.3},{:.3},{:.3},{}",
        r.t,
        r.rps,
        r.desired,
        r.pods,
        r.endpoints,
        r.requests,
        r.failed,
        r.p50_ms,
        r.p99_ms,
        r.ejected
    );
    for share in &r.shares {
        let _ = write!(s, ",{share:.4}");
    }
    s
}

/// The summary as `key: value` lines.
pub fn summary_text(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "policy: {}", s.policy);
    let _ = writeln!(out, "balancer: {}", s.balancer);
    for (k, v) in summary_fields(s) {
        let _ = writeln!(out, "{k}: {v}");
    }
    out
}

fn fmt_drain(d: &[Option<f64>]) -> String {
    if d.is_empty() {
        return "-".into();
    }
    d.iter()
        .map(|x| x.map_or("never".to_owned(), |s| format!("{s:.1}s")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn summary_fields(s: &Summary) -> Vec<(&'static str, String)> {
    vec![
        ("simulated_seconds", format!("{:.0}", s.seconds)),
        ("requests", format!("{:.0}", s.requests)),
        ("failed_requests", format!("{:.0}", s.failed)),
        (
            "failed_percent",
            format!(
                "{:.3}",
                if s.requests > 0.0 {
                    100.0 * s.failed / s.requests
                } else {
                    0.0
                }
            ),
        ),
        (
            "slo_violation_seconds",
            format!("{:.1}", s.slo_violation_seconds),
        ),
        ("p50_ms", format!("{:.1}", s.p50_ms)),
        ("p99_ms", format!("{:.1}", s.p99_ms)),
        ("pod_seconds", format!("{:.0}", s.pod_seconds)),
        ("pod_hours", format!("{:.2}", s.pod_seconds / 3600.0)),
        ("scale_events", s.scale_events.to_string()),
        ("ejections", s.ejections.to_string()),
        ("max_pods", s.max_pods.to_string()),
        ("fault_drain", fmt_drain(&s.drain_seconds)),
    ]
}

/// A side-by-side table of several runs (one column per policy).
pub fn compare_table(runs: &[Summary]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = vec![
        (
            "policy".into(),
            runs.iter().map(|r| r.policy.clone()).collect(),
        ),
        (
            "balancer".into(),
            runs.iter().map(|r| r.balancer.clone()).collect(),
        ),
    ];
    if let Some(first) = runs.first() {
        for (i, (k, _)) in summary_fields(first).into_iter().enumerate() {
            rows.push((
                k.into(),
                runs.iter()
                    .map(|r| summary_fields(r)[i].1.clone())
                    .collect(),
            ));
        }
    }
    let key_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let col_w: Vec<usize> = (0..runs.len())
        .map(|c| rows.iter().map(|r| r.1[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (k, vals) in rows {
        let _ = write!(out, "{k:<key_w$}");
        for (c, v) in vals.iter().enumerate() {
            let _ = write!(out, "  {v:>w$}", w = col_w[c]);
        }
        out.push('\n');
    }
    out
}

/// Writes the CSV of a run as it goes.
pub struct CsvSink<W: Write> {
    out: W,
    header_done: bool,
    /// First write error, reported at the end.
    pub error: Option<io::Error>,
}

impl<W: Write> CsvSink<W> {
    /// Wraps a writer.
    pub fn new(out: W) -> Self {
        CsvSink {
            out,
            header_done: false,
            error: None,
        }
    }

    /// Appends one row.
    pub fn push(&mut self, r: &StepRow) {
        if self.error.is_some() {
            return;
        }
        let mut result = Ok(());
        if !self.header_done {
            self.header_done = true;
            result = writeln!(self.out, "{}", csv_header(r.shares.len()));
        }
        if result.is_ok() {
            result = writeln!(self.out, "{}", csv_row(r));
        }
        if let Err(e) = result {
            self.error = Some(e);
        }
    }

    /// Flushes and returns the first error.
    pub fn finish(mut self) -> io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()
    }
}

/// Downsampled series of one run, for plots.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Time, seconds.
    pub t: Vec<f64>,
    /// Offered req/s (mean).
    pub rps: Vec<f64>,
    /// Desired replicas (last).
    pub desired: Vec<f64>,
    /// Endpoints (mean).
    pub endpoints: Vec<f64>,
    /// p99 ms (max).
    pub p99: Vec<f64>,
    /// Failed percent (mean).
    pub failed: Vec<f64>,
    /// Traffic share per pod (mean).
    pub shares: Vec<Vec<f64>>,
    bucket: usize,
    pending: usize,
}

impl Series {
    /// Adds a step.
    pub fn push(&mut self, r: &StepRow) {
        if self.bucket == 0 {
            self.bucket = 1;
            self.shares = vec![Vec::new(); r.shares.len()];
        }
        let failed = if r.requests > 0.0 {
            100.0 * r.failed / r.requests
        } else {
            0.0
        };
        if self.pending == 0 {
            self.t.push(r.t);
            self.rps.push(r.rps);
            self.desired.push(f64::from(r.desired));
            self.endpoints.push(r.endpoints as f64);
            self.p99.push(r.p99_ms);
            self.failed.push(failed);
            for (s, v) in self.shares.iter_mut().zip(&r.shares) {
                s.push(*v);
            }
        } else {
            let k = self.pending as f64;
            let mean = |v: &mut Vec<f64>, x: f64| {
                if let Some(last) = v.last_mut() {
                    *last = (*last * k + x) / (k + 1.0);
                }
            };
            mean(&mut self.rps, r.rps);
            mean(&mut self.endpoints, r.endpoints as f64);
            mean(&mut self.failed, failed);
            for (s, v) in self.shares.iter_mut().zip(&r.shares) {
                mean(s, *v);
            }
            if let Some(last) = self.desired.last_mut() {
                *last = f64::from(r.desired);
            }
            if let Some(last) = self.p99.last_mut() {
                *last = last.max(r.p99_ms);
            }
        }
        self.pending += 1;
        if self.pending == self.bucket {
            self.pending = 0;
        }
        if self.t.len() > MAX_POINTS && self.pending == 0 {
            self.halve();
        }
    }

    fn halve(&mut self) {
        fn pairs(v: &mut Vec<f64>, f: fn(f64, f64) -> f64) {
            *v = v
                .chunks(2)
                .map(|c| if c.len() == 2 { f(c[0], c[1]) } else { c[0] })
                .collect();
        }
        let mean = |a: f64, b: f64| (a + b) / 2.0;
        pairs(&mut self.t, |a, _| a);
        pairs(&mut self.rps, mean);
        pairs(&mut self.desired, |_, b| b);
        pairs(&mut self.endpoints, mean);
        pairs(&mut self.p99, f64::max);
        pairs(&mut self.failed, mean);
        for s in &mut self.shares {
            pairs(s, mean);
        }
        self.bucket *= 2;
    }
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

struct Panel<'a> {
    title: &'a str,
    lines: Vec<(String, &'a str, &'a [f64], &'a [f64])>,
}

fn render(title: &str, panels: &[Panel<'_>], xfmt: fn(f64) -> String) -> String {
    let (w, ph, left, top) = (900.0, 170.0, 70.0, 40.0);
    let plot_w = w - left - 150.0;
    let h = top + panels.len() as f64 * (ph + 30.0) + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">{}</text>",
        escape(title)
    );
    for (pi, panel) in panels.iter().enumerate() {
        let y0 = top + pi as f64 * (ph + 30.0);
        let xmax = panel
            .lines
            .iter()
            .flat_map(|l| l.2.iter().copied())
            .fold(0.0f64, f64::max)
            .max(1.0);
        let ymax = panel
            .lines
            .iter()
            .flat_map(|l| l.3.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let ymax = nice(ymax);
        let _ = writeln!(
            s,
            "<text x=\"{left}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\n<rect x=\"{left}\" y=\"{:.1}\" width=\"{plot_w}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>",
            y0 + 12.0,
            escape(panel.title),
            y0 + 18.0
        );
        for k in 0..=4 {
            let v = ymax * f64::from(k) / 4.0;
            let y = y0 + 18.0 + ph - ph * f64::from(k) / 4.0;
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left + plot_w,
                left - 4.0,
                y + 4.0,
                short(v)
            );
        }
        for k in 0..=4 {
            let x = left + plot_w * f64::from(k) / 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y0 + 18.0 + ph + 13.0,
                xfmt(xmax * f64::from(k) / 4.0)
            );
        }
        for (li, (label, color, xs, ys)) in panel.lines.iter().enumerate() {
            let mut pts = String::new();
            for (x, y) in xs.iter().zip(ys.iter()) {
                let px = left + plot_w * x / xmax;
                let py = y0 + 18.0 + ph - ph * (y / ymax).clamp(0.0, 1.0);
                let _ = write!(pts, "{px:.1},{py:.1} ");
            }
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.2\" points=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{}</text>",
                pts.trim_end(),
                left + plot_w + 8.0,
                y0 + 30.0 + 13.0 * li as f64,
                escape(label)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn nice(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn clock(secs: f64) -> String {
    if secs >= 3600.0 {
        format!("{:.1}h", secs / 3600.0)
    } else if secs >= 60.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{secs:.0}s")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Plots one run: traffic, replicas, p99 latency, failures and per-pod traffic shares.
pub fn plot_run(title: &str, s: &Series) -> String {
    let share_labels: Vec<String> = (0..s.shares.len()).map(|i| format!("pod {i}")).collect();
    let mut panels = vec![
        Panel {
            title: "traffic (req/s)",
            lines: vec![("offered".into(), COLORS[0], &s.t, &s.rps)],
        },
        Panel {
            title: "replicas",
            lines: vec![
                ("desired".into(), COLORS[0], &s.t, &s.desired),
                ("in endpoints".into(), COLORS[2], &s.t, &s.endpoints),
            ],
        },
        Panel {
            title: "p99 latency (ms)",
            lines: vec![("p99".into(), COLORS[1], &s.t, &s.p99)],
        },
        Panel {
            title: "failed requests (%)",
            lines: vec![("failed".into(), COLORS[1], &s.t, &s.failed)],
        },
    ];
    if !s.shares.is_empty() {
        panels.push(Panel {
            title: "traffic share per pod (balancer weights in effect)",
            lines: s
                .shares
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        share_labels[i].clone(),
                        COLORS[i % COLORS.len()],
                        &s.t[..],
                        &v[..],
                    )
                })
                .collect(),
        });
    }
    render(title, &panels, clock)
}

/// Overlays several runs of the same scenario.
pub fn plot_compare(title: &str, runs: &[(String, Series)]) -> String {
    let line = |f: fn(&Series) -> &[f64]| -> Vec<(String, &str, &[f64], &[f64])> {
        runs.iter()
            .enumerate()
            .map(|(i, (name, s))| (name.clone(), COLORS[i % COLORS.len()], &s.t[..], f(s)))
            .collect()
    };
    let mut traffic = line(|s| &s.rps);
    traffic.truncate(1);
    if let Some(t) = traffic.first_mut() {
        t.0 = "offered".into();
    }
    let panels = vec![
        Panel {
            title: "traffic (req/s)",
            lines: traffic,
        },
        Panel {
            title: "desired replicas",
            lines: line(|s| &s.desired),
        },
        Panel {
            title: "p99 latency (ms)",
            lines: line(|s| &s.p99),
        },
        Panel {
            title: "failed requests (%)",
            lines: line(|s| &s.failed),
        },
    ];
    render(title, &panels, clock)
}

/// What-if curves of a sweep: one line per policy, x = the swept parameter. Uses the series'
/// `rps` as SLO-violation seconds, `desired` as pod-hours, `p99` and `failed` as themselves.
pub fn plot_sweep(title: &str, param: &str, runs: &[(String, Series)]) -> String {
    let line = |f: fn(&Series) -> &[f64]| -> Vec<(String, &str, &[f64], &[f64])> {
        runs.iter()
            .enumerate()
            .map(|(i, (name, s))| (name.clone(), COLORS[i % COLORS.len()], &s.t[..], f(s)))
            .collect()
    };
    let panels = vec![
        Panel {
            title: "SLO-violation seconds",
            lines: line(|s| &s.rps),
        },
        Panel {
            title: "pod-hours",
            lines: line(|s| &s.desired),
        },
        Panel {
            title: "p99 latency (ms)",
            lines: line(|s| &s.p99),
        },
        Panel {
            title: "failed requests (%)",
            lines: line(|s| &s.failed),
        },
    ];
    render(&format!("{title} (x: {param})"), &panels, short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_stays_bounded() {
        let mut s = Series::default();
        for i in 0..100_000 {
            s.push(&StepRow {
                t: f64::from(i),
                rps: 1.0,
                shares: vec![0.5, 0.5],
                ..StepRow::default()
            });
        }
        assert!(s.t.len() <= MAX_POINTS + 1, "{}", s.t.len());
        assert!(s.rps.iter().all(|&r| (r - 1.0).abs() < 1e-9));
        let svg = plot_run("t", &s);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }

    #[test]
    fn compare_table_aligns_columns() {
        let a = Summary {
            policy: "rr".into(),
            balancer: "round_robin".into(),
            ..Summary::default()
        };
        let b = Summary {
            policy: "least-request".into(),
            ..a.clone()
        };
        let t = compare_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("least-request"), "{t}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
    }
}
