//! Outputs: the per-step CSV (every step or one row per interval), the summary (text or
//! JSON), the side-by-side table and SVG plots.
//!
//! Every number is printed with a fixed number of decimals, so the same run gives the same bytes.
//! Plots are plain SVG written here (a handful of polylines needs no plotting library): round
//! tick values, axes from where the data start, the SLO's bounds as dashed lines, its violating
//! intervals shaded, up to 30 distinct line styles and a legend as wide as its longest label.
//! Series are downsampled to at most [`MAX_POINTS`] points, each keeping the maxima of its
//! steps (the minimum for endpoints, the mean and the maximum for traffic), so a one-minute
//! spike stays visible in a ten-day run and memory does not grow with the length of the run.
//! Each panel is a `<g class="panel">` with its axis ranges as `data-` attributes, so tests
//! (and scripts) can read a plot as data.

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

/// The summary as a JSON object (the fields of [`summary_text`], as numbers; `fault_drain`
/// as seconds or `null` per fault).
pub fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "policy": s.policy,
        "balancer": s.balancer,
        "simulated_seconds": s.seconds,
        "requests": s.requests,
        "failed_requests": s.failed,
        "failed_percent": if s.requests > 0.0 { 100.0 * s.failed / s.requests } else { 0.0 },
        "slo_violation_seconds": s.slo_violation_seconds,
        "p50_ms": s.p50_ms,
        "p99_ms": s.p99_ms,
        "pod_seconds": s.pod_seconds,
        "pod_hours": s.pod_seconds / 3600.0,
        "scale_events": s.scale_events,
        "ejections": s.ejections,
        "max_pods": s.max_pods,
        "fault_drain_seconds": s.drain_seconds,
    })
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

/// Writes the CSV of a run as it goes: every step, or one row per interval.
pub struct CsvSink<W: Write> {
    out: W,
    header_done: bool,
    /// Downsampling: the interval in seconds and the rows of the current one.
    interval: Option<(f64, Bucket)>,
    /// First write error, reported at the end.
    pub error: Option<io::Error>,
}

/// The rows of one CSV interval, being added up.
#[derive(Default)]
struct Bucket {
    index: Option<i64>,
    n: usize,
    row: StepRow,
    /// Σ p50 × requests, for the requests-weighted mean.
    p50_weighted: f64,
}

impl<W: Write> CsvSink<W> {
    /// Wraps a writer: one row per step.
    pub fn new(out: W) -> Self {
        CsvSink {
            out,
            header_done: false,
            interval: None,
            error: None,
        }
    }

    /// Wraps a writer: one row per `secs` of simulated time, with the same columns: `t` the
    /// interval's start, `requests` and `failed` summed, `rps` and the shares averaged,
    /// `p50_ms` averaged weighted by requests, `p99_ms`, `pods` and `ejected` the maxima,
    /// `endpoints` the minimum and `desired` the last value.
    pub fn downsampled(out: W, secs: f64) -> Self {
        CsvSink {
            interval: Some((secs, Bucket::default())),
            ..Self::new(out)
        }
    }

    fn write_row(&mut self, r: &StepRow) {
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

    /// Appends one step.
    pub fn push(&mut self, r: &StepRow) {
        let Some((secs, bucket)) = self.interval.as_mut() else {
            self.write_row(r);
            return;
        };
        let secs = *secs;
        let index = (r.t / secs + 1e-9).floor() as i64;
        if bucket.index.is_some_and(|i| i != index) {
            let done = std::mem::take(bucket);
            self.write_row(&done.finish(secs));
        }
        let Some((_, bucket)) = self.interval.as_mut() else {
            return;
        };
        bucket.add(index, r);
    }

    /// Writes the last interval, flushes and returns the first error.
    pub fn finish(mut self) -> io::Result<()> {
        if let Some((secs, bucket)) = self.interval.take() {
            if bucket.index.is_some() {
                self.write_row(&bucket.finish(secs));
            }
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.out.flush()
    }
}

impl Bucket {
    fn add(&mut self, index: i64, r: &StepRow) {
        let b = &mut self.row;
        if self.index.is_none() {
            self.index = Some(index);
            *b = r.clone();
            b.rps = 0.0;
            b.requests = 0.0;
            b.failed = 0.0;
            b.shares.iter_mut().for_each(|s| *s = 0.0);
        }
        self.n += 1;
        b.rps += r.rps;
        b.desired = r.desired;
        b.pods = b.pods.max(r.pods);
        b.endpoints = b.endpoints.min(r.endpoints);
        b.requests += r.requests;
        b.failed += r.failed;
        self.p50_weighted += r.p50_ms * r.requests;
        b.p99_ms = b.p99_ms.max(r.p99_ms);
        b.ejected = b.ejected.max(r.ejected);
        for (s, v) in b.shares.iter_mut().zip(&r.shares) {
            *s += v;
        }
    }

    fn finish(mut self, secs: f64) -> StepRow {
        let n = self.n.max(1) as f64;
        let b = &mut self.row;
        b.t = self.index.unwrap_or(0) as f64 * secs;
        b.rps /= n;
        if b.requests > 0.0 {
            b.p50_ms = self.p50_weighted / b.requests;
        }
        b.shares.iter_mut().for_each(|s| *s /= n);
        self.row
    }
}

/// Downsampled series of one run, for plots: each point is a bucket of steps (one step until
/// the run is longer than [`MAX_POINTS`] steps, then 2, 4, … steps), keeping what a reader
/// must not miss — the maxima of traffic, replicas, p99 and failures, the minimum of the
/// endpoints and whether any step of the bucket broke the SLO.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// Time of the bucket's first step, seconds.
    pub t: Vec<f64>,
    /// Offered req/s (mean).
    pub rps: Vec<f64>,
    /// Offered req/s (max).
    pub rps_max: Vec<f64>,
    /// Desired replicas (max).
    pub desired: Vec<f64>,
    /// Endpoints (min).
    pub endpoints: Vec<f64>,
    /// p99 ms (max).
    pub p99: Vec<f64>,
    /// Failed percent (max).
    pub failed: Vec<f64>,
    /// Traffic share per pod (mean).
    pub shares: Vec<Vec<f64>>,
    /// Whether a step of the bucket broke the SLO.
    pub violated: Vec<bool>,
    /// The SLO: p99 bound in ms and failure bound in percent (drawn as threshold lines).
    pub slo: Option<(f64, f64)>,
    /// Length of one step, seconds (known from the second step).
    pub dt: f64,
    bucket: usize,
    pending: usize,
}

impl Series {
    /// An empty series that notes SLO violations as [`crate::engine`] counts them.
    pub fn with_slo(slo: &crate::scenario::Slo) -> Self {
        Series {
            slo: Some((slo.p99.secs() * 1000.0, slo.errors * 100.0)),
            ..Series::default()
        }
    }

    /// Steps per point now.
    pub fn bucket(&self) -> usize {
        self.bucket.max(1)
    }

    /// Adds a step.
    pub fn push(&mut self, r: &StepRow) {
        if self.bucket == 0 {
            self.bucket = 1;
            self.shares = vec![Vec::new(); r.shares.len()];
        } else if self.dt == 0.0 {
            if let Some(&t0) = self.t.first() {
                self.dt = r.t - t0;
            }
        }
        let failed = if r.requests > 0.0 {
            100.0 * r.failed / r.requests
        } else {
            0.0
        };
        let violated = self.slo.is_some_and(|(p99, errors)| {
            r.p99_ms > p99 || (r.requests > 0.0 && r.failed / r.requests > errors / 100.0)
        });
        if self.pending == 0 {
            self.t.push(r.t);
            self.rps.push(r.rps);
            self.rps_max.push(r.rps);
            self.desired.push(f64::from(r.desired));
            self.endpoints.push(r.endpoints as f64);
            self.p99.push(r.p99_ms);
            self.failed.push(failed);
            self.violated.push(violated);
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
            let keep = |v: &mut Vec<f64>, x: f64, f: fn(f64, f64) -> f64| {
                if let Some(last) = v.last_mut() {
                    *last = f(*last, x);
                }
            };
            mean(&mut self.rps, r.rps);
            for (s, v) in self.shares.iter_mut().zip(&r.shares) {
                mean(s, *v);
            }
            keep(&mut self.rps_max, r.rps, f64::max);
            keep(&mut self.desired, f64::from(r.desired), f64::max);
            keep(&mut self.endpoints, r.endpoints as f64, f64::min);
            keep(&mut self.p99, r.p99_ms, f64::max);
            keep(&mut self.failed, failed, f64::max);
            if let Some(last) = self.violated.last_mut() {
                *last |= violated;
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
        pairs(&mut self.rps_max, f64::max);
        pairs(&mut self.desired, f64::max);
        pairs(&mut self.endpoints, f64::min);
        pairs(&mut self.p99, f64::max);
        pairs(&mut self.failed, f64::max);
        for s in &mut self.shares {
            pairs(s, mean);
        }
        self.violated = self
            .violated
            .chunks(2)
            .map(|c| c.iter().any(|&v| v))
            .collect();
        self.bucket *= 2;
    }

    /// The SLO-violating intervals `(from, to)` in seconds: runs of buckets with a violating
    /// step, each bucket `bucket × dt` long.
    pub fn violations(&self) -> Vec<(f64, f64)> {
        let width = self.bucket() as f64 * self.dt;
        let mut out: Vec<(f64, f64)> = Vec::new();
        for (i, (&t, &v)) in self.t.iter().zip(&self.violated).enumerate() {
            if !v {
                continue;
            }
            let end = self.t.get(i + 1).copied().unwrap_or(t + width);
            match out.last_mut() {
                Some(last) if last.1 >= t => last.1 = end,
                _ => out.push((t, end)),
            }
        }
        out
    }
}

/// Line colours (Tableau 10); past ten, the colours repeat with [`DASHES`].
pub const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];

/// Dash patterns, one per round of [`COLORS`]: 30 distinct line styles.
pub const DASHES: [&str; 3] = ["", "6,3", "2,2"];

/// The colour and dash pattern of line `i`.
pub fn style(i: usize) -> (&'static str, &'static str) {
    (
        COLORS[i % COLORS.len()],
        DASHES[(i / COLORS.len()) % DASHES.len()],
    )
}

struct Line<'a> {
    label: String,
    style: (&'static str, &'static str),
    xs: &'a [f64],
    ys: &'a [f64],
}

struct Panel<'a> {
    title: &'a str,
    lines: Vec<Line<'a>>,
    /// A threshold line: value and label.
    threshold: Threshold,
    /// Shaded x intervals.
    shade: Vec<(f64, f64)>,
}

impl<'a> Panel<'a> {
    fn new(title: &'a str, lines: Vec<Line<'a>>) -> Self {
        Panel {
            title,
            lines,
            threshold: None,
            shade: Vec::new(),
        }
    }
}

/// Round tick values covering `lo..=hi`: a step of 1, 2, 2.5 or 5 × 10^k giving about five
/// intervals; returns the ticks (first ≤ lo, last ≥ hi) and the step.
pub fn nice_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo, lo + 1.0) };
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|&s| raw <= s * (1.0 + 1e-9))
        .unwrap_or(10.0 * mag);
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    let ticks = (first..=last.max(first + 1))
        .map(|k| clean(k as f64 * step))
        .collect();
    (ticks, step)
}

/// Rounds away floating-point dust (`0.30000000000000004` → `0.3`).
fn clean(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

/// Round time ticks within `lo..=hi` seconds (1 s, 2 s, 5 s, … 1 h, 2 h, 6 h, 12 h, 1 d …).
pub fn time_ticks(lo: f64, hi: f64) -> Vec<f64> {
    const STEPS: [f64; 22] = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
        3600.0, 7200.0, 10_800.0, 21_600.0, 43_200.0, 86_400.0, 172_800.0,
    ];
    let span = (hi - lo).max(1e-9);
    let step = STEPS
        .into_iter()
        .find(|&s| span / s <= 6.0)
        .unwrap_or_else(|| (span / 6.0 / 86_400.0).ceil() * 86_400.0);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| clean(k as f64 * step)).collect()
}

/// A time tick label: `90s` → `1m30s`, `5400` → `1h30m`, `86400` → `1d`.
pub fn clock(secs: f64) -> String {
    if secs < 1.0 && secs != 0.0 || secs.fract().abs() > 1e-9 {
        return format!("{}s", clean(secs));
    }
    let s = secs.round() as i64;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    for (v, unit) in [(d, "d"), (h, "h"), (m, "m"), (sec, "s")] {
        if v != 0 {
            let _ = write!(out, "{v}{unit}");
        }
    }
    if out.is_empty() {
        out.push('0');
    }
    out
}

/// A tick label for a value on a scale of `step`: as many decimals as the step needs, `k`
/// and `M` for thousands and millions.
fn tick_label(v: f64, step: f64) -> String {
    if clean(v) == 0.0 {
        return "0".into();
    }
    let (v, step, suffix) = if step >= 1e6 {
        (v / 1e6, step / 1e6, "M")
    } else if step >= 1e3 {
        (v / 1e3, step / 1e3, "k")
    } else {
        (v, step, "")
    };
    let mut decimals = 0;
    while decimals < 6 && ((step * 10f64.powi(decimals)).fract()).abs() > 1e-6 {
        decimals += 1;
    }
    format!("{:.*}{suffix}", decimals as usize, clean(v))
}

const FONT_W: f64 = 6.6;

fn render(title: &str, panels: &[Panel<'_>], time_axis: bool) -> String {
    let (plot_w, left, top, gap) = (680.0, 70.0, 40.0, 34.0);
    let longest = panels
        .iter()
        .flat_map(|p| p.lines.iter().map(|l| l.label.chars().count()))
        .max()
        .unwrap_or(0);
    let legend_w = 30.0 + FONT_W * longest as f64;
    let w = (left + plot_w + 10.0 + legend_w + 10.0).ceil();
    let heights: Vec<f64> = panels
        .iter()
        .map(|p| (14.0 * p.lines.len() as f64 + 16.0).max(170.0))
        .collect();
    let h = top + heights.iter().map(|ph| ph + gap).sum::<f64>() + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"22\" font-size=\"15\">{}</text>",
        escape(title)
    );
    let mut y0 = top;
    for (panel, &ph) in panels.iter().zip(&heights) {
        let finite = |v: &&f64| v.is_finite();
        let xs = || panel.lines.iter().flat_map(|l| l.xs.iter()).filter(finite);
        let xmin = xs().copied().fold(f64::INFINITY, f64::min);
        let xmax = xs().copied().fold(f64::NEG_INFINITY, f64::max);
        let (xmin, xmax) = if xmin.is_finite() && xmax > xmin {
            (xmin, xmax)
        } else if xmin.is_finite() {
            (xmin, xmin + 1.0)
        } else {
            (0.0, 1.0)
        };
        let ys = || {
            panel
                .lines
                .iter()
                .flat_map(|l| l.ys.iter())
                .filter(finite)
                .copied()
        };
        let mut dmin = ys().fold(f64::INFINITY, f64::min);
        let mut dmax = ys().fold(f64::NEG_INFINITY, f64::max);
        if let Some((v, _)) = &panel.threshold {
            dmin = dmin.min(*v);
            dmax = dmax.max(*v);
        }
        if !dmin.is_finite() {
            (dmin, dmax) = (0.0, 1.0);
        }
        // From zero unless the data sit well above it.
        let lo = if dmin >= 0.0 && dmin <= 0.5 * dmax {
            0.0
        } else {
            dmin
        };
        let (yticks, ystep) = nice_ticks(lo, dmax);
        let (ylo, yhi) = (yticks[0], yticks[yticks.len() - 1]);
        let py0 = y0 + 18.0;
        let px = |x: f64| left + plot_w * (x - xmin) / (xmax - xmin);
        let py = |y: f64| py0 + ph - ph * ((y - ylo) / (yhi - ylo)).clamp(0.0, 1.0);
        let _ = writeln!(
            s,
            "<g class=\"panel\" data-title=\"{}\" data-x=\"{left}\" data-y=\"{py0:.1}\" data-w=\"{plot_w}\" data-h=\"{ph}\" data-xmin=\"{xmin}\" data-xmax=\"{xmax}\" data-ymin=\"{ylo}\" data-ymax=\"{yhi}\">\n<text x=\"{left}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
            escape(panel.title),
            y0 + 12.0,
            escape(panel.title),
        );
        for &(a, b) in &panel.shade {
            let (xa, xb) = (px(a.max(xmin)), px(b.min(xmax)));
            if xb > xa {
                let _ = writeln!(
                    s,
                    "<rect class=\"violation\" x=\"{xa:.1}\" y=\"{py0:.1}\" width=\"{:.1}\" height=\"{ph}\" fill=\"#d62728\" fill-opacity=\"0.12\"/>",
                    (xb - xa).max(0.5)
                );
            }
        }
        let _ = writeln!(
            s,
            "<rect x=\"{left}\" y=\"{py0:.1}\" width=\"{plot_w}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
        );
        for &v in &yticks {
            let y = py(v);
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text class=\"ytick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left + plot_w,
                left - 4.0,
                y + 4.0,
                tick_label(v, ystep)
            );
        }
        let xticks = if time_axis {
            time_ticks(xmin, xmax)
                .into_iter()
                .map(|v| (v, clock(v)))
                .collect::<Vec<_>>()
        } else {
            let (t, step) = nice_ticks(xmin, xmax);
            t.into_iter()
                .filter(|v| *v >= xmin - 1e-9 && *v <= xmax + 1e-9)
                .map(|v| (v, tick_label(v, step)))
                .collect()
        };
        for (v, label) in xticks {
            let _ = writeln!(
                s,
                "<text class=\"xtick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                px(v),
                py0 + ph + 13.0,
                label
            );
        }
        if let Some((v, label)) = &panel.threshold {
            let y = py(*v);
            let _ = writeln!(
                s,
                "<line class=\"slo\" x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#d62728\" stroke-width=\"1\" stroke-dasharray=\"5,4\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#d62728\">{}</text>",
                left + plot_w,
                left + plot_w - 4.0,
                y - 3.0,
                escape(label)
            );
        }
        let lx = left + plot_w + 10.0;
        for (li, line) in panel.lines.iter().enumerate() {
            let (color, dash) = line.style;
            let dash = if dash.is_empty() {
                String::new()
            } else {
                format!(" stroke-dasharray=\"{dash}\"")
            };
            let mut pts = String::new();
            for (x, y) in line.xs.iter().zip(line.ys.iter()) {
                if x.is_finite() && y.is_finite() {
                    let _ = write!(pts, "{:.1},{:.1} ", px(*x), py(*y));
                }
            }
            let ly = py0 + 12.0 + 14.0 * li as f64;
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.2\"{dash} points=\"{}\"/>\n<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text class=\"legend\" x=\"{:.1}\" y=\"{ly:.1}\" fill=\"{color}\">{}</text>",
                pts.trim_end(),
                lx + 20.0,
                ly - 4.0,
                ly - 4.0,
                lx + 25.0,
                escape(&line.label)
            );
        }
        s.push_str("</g>\n");
        y0 += ph + gap;
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn line<'a>(label: impl Into<String>, i: usize, xs: &'a [f64], ys: &'a [f64]) -> Line<'a> {
    Line {
        label: label.into(),
        style: style(i),
        xs,
        ys,
    }
}

/// The traffic lines: the mean, and the maximum per point once points are buckets of steps.
fn traffic_lines(s: &Series) -> Vec<Line<'_>> {
    let mut lines = vec![line(
        if s.bucket() > 1 {
            "offered (mean)"
        } else {
            "offered"
        },
        0,
        &s.t,
        &s.rps,
    )];
    if s.bucket() > 1 && s.rps_max.len() == s.t.len() {
        lines.push(line("offered (max)", 7, &s.t, &s.rps_max));
    }
    lines
}

/// A threshold line: its value and label.
type Threshold = Option<(f64, String)>;

fn slo_lines(s: Option<&Series>) -> (Threshold, Threshold) {
    match s.and_then(|s| s.slo) {
        Some((p99, errors)) => (
            Some((p99, format!("SLO p99 {}ms", clean(p99)))),
            Some((errors, format!("SLO {}%", clean(errors)))),
        ),
        None => (None, None),
    }
}

/// Plots one run: traffic, replicas, p99 latency, failures and per-pod traffic shares, the
/// SLO's bounds as dashed lines and its violations shaded.
pub fn plot_run(title: &str, s: &Series) -> String {
    let share_labels: Vec<String> = (0..s.shares.len()).map(|i| format!("pod {i}")).collect();
    let (p99_slo, failed_slo) = slo_lines(Some(s));
    let shade = s.violations();
    let bucketed = s.bucket() > 1;
    let mut panels = vec![
        Panel::new("traffic (req/s)", traffic_lines(s)),
        Panel::new(
            "replicas",
            vec![
                line(
                    if bucketed { "desired (max)" } else { "desired" },
                    0,
                    &s.t,
                    &s.desired,
                ),
                line(
                    if bucketed {
                        "in endpoints (min)"
                    } else {
                        "in endpoints"
                    },
                    2,
                    &s.t,
                    &s.endpoints,
                ),
            ],
        ),
        Panel {
            threshold: p99_slo,
            ..Panel::new("p99 latency (ms)", vec![line("p99", 1, &s.t, &s.p99)])
        },
        Panel {
            threshold: failed_slo,
            ..Panel::new(
                "failed requests (%)",
                vec![line(
                    if bucketed { "failed (max)" } else { "failed" },
                    1,
                    &s.t,
                    &s.failed,
                )],
            )
        },
    ];
    if !s.shares.is_empty() {
        panels.push(Panel::new(
            "traffic share per pod (balancer weights in effect)",
            s.shares
                .iter()
                .enumerate()
                .map(|(i, v)| line(share_labels[i].clone(), i, &s.t, v))
                .collect(),
        ));
    }
    for p in &mut panels {
        p.shade.clone_from(&shade);
    }
    render(title, &panels, true)
}

/// Overlays several runs of the same scenario (SLO bounds as dashed lines).
pub fn plot_compare(title: &str, runs: &[(String, Series)]) -> String {
    let lines = |f: fn(&Series) -> &[f64]| -> Vec<Line<'_>> {
        runs.iter()
            .enumerate()
            .map(|(i, (name, s))| line(name.clone(), i, &s.t, f(s)))
            .collect()
    };
    let (p99_slo, failed_slo) = slo_lines(runs.first().map(|r| &r.1));
    let panels = vec![
        Panel::new(
            "traffic (req/s)",
            runs.first()
                .map(|r| traffic_lines(&r.1))
                .unwrap_or_default(),
        ),
        Panel::new("desired replicas", lines(|s| &s.desired)),
        Panel {
            threshold: p99_slo,
            ..Panel::new("p99 latency (ms)", lines(|s| &s.p99))
        },
        Panel {
            threshold: failed_slo,
            ..Panel::new("failed requests (%)", lines(|s| &s.failed))
        },
    ];
    render(title, &panels, true)
}

/// What-if curves of a sweep: one line per policy, x = the swept parameter (from its first
/// value to its last). Uses the series' `rps` as SLO-violation seconds, `desired` as
/// pod-hours, `p99` and `failed` as themselves.
pub fn plot_sweep(title: &str, param: &str, runs: &[(String, Series)]) -> String {
    let lines = |f: fn(&Series) -> &[f64]| -> Vec<Line<'_>> {
        runs.iter()
            .enumerate()
            .map(|(i, (name, s))| line(name.clone(), i, &s.t, f(s)))
            .collect()
    };
    let panels = vec![
        Panel::new("SLO-violation seconds", lines(|s| &s.rps)),
        Panel::new("pod-hours", lines(|s| &s.desired)),
        Panel::new("p99 latency (ms)", lines(|s| &s.p99)),
        Panel::new("failed requests (%)", lines(|s| &s.failed)),
    ];
    render(&format!("{title} (x: {param})"), &panels, false)
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

    /// The panels of an SVG as (title, attributes) and their text.
    fn panels(svg: &str) -> Vec<(String, String)> {
        svg.split("<g class=\"panel\"")
            .skip(1)
            .map(|p| {
                let body = p.split("</g>").next().unwrap().to_owned();
                (attr(&body, "data-title").unwrap(), body)
            })
            .collect()
    }

    fn attr(tag: &str, name: &str) -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[start..start + tag[start..].find('"')?].to_owned())
    }

    fn num(tag: &str, name: &str) -> f64 {
        attr(tag, name).unwrap().parse().unwrap()
    }

    fn elements<'a>(body: &'a str, open: &str) -> Vec<&'a str> {
        body.match_indices(open)
            .map(|(i, _)| &body[i..i + body[i..].find('>').unwrap()])
            .collect()
    }

    fn texts(body: &str, class: &str) -> Vec<String> {
        body.split(&format!("<text class=\"{class}\""))
            .skip(1)
            .map(|t| t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()].to_owned())
            .collect()
    }

    /// 100 s at 1 s, p99 20 ms except 600 ms in 10..15 s and 70..72 s, 5 % failed at 40 s.
    fn known_series() -> Series {
        let slo = crate::scenario::Slo::default();
        let mut s = Series::with_slo(&slo);
        for i in 0..100 {
            let slow = (10..15).contains(&i) || (70..72).contains(&i);
            s.push(&StepRow {
                t: f64::from(i),
                rps: 100.0,
                requests: 100.0,
                failed: if i == 40 { 5.0 } else { 0.0 },
                p99_ms: if slow { 600.0 } else { 20.0 },
                desired: 3,
                endpoints: 3,
                ..StepRow::default()
            });
        }
        s
    }

    #[test]
    fn the_slo_line_sits_at_its_value_and_violations_are_shaded() {
        let s = known_series();
        assert_eq!(s.violations(), [(10.0, 15.0), (40.0, 41.0), (70.0, 72.0)]);
        let svg = plot_run("t", &s);
        let panels = panels(&svg);
        let (_, p99) = panels.iter().find(|p| p.0 == "p99 latency (ms)").unwrap();
        let g = &p99[..p99.find('>').unwrap()];
        let (top, h, ymin, ymax) = (
            num(g, "data-y"),
            num(g, "data-h"),
            num(g, "data-ymin"),
            num(g, "data-ymax"),
        );
        assert_eq!((ymin, ymax), (0.0, 600.0));
        let slo = elements(p99, "<line class=\"slo\"");
        assert_eq!(slo.len(), 1);
        let want = top + h - h * 500.0 / 600.0;
        assert!(
            (num(slo[0], "y1") - want).abs() < 0.06,
            "{} vs {want}",
            num(slo[0], "y1")
        );
        // Three shaded intervals in every panel, at their times.
        for (title, body) in &panels {
            let rects = elements(body, "<rect class=\"violation\"");
            assert_eq!(rects.len(), 3, "{title}");
            let g = &body[..body.find('>').unwrap()];
            let (x, w, xmax) = (num(g, "data-x"), num(g, "data-w"), num(g, "data-xmax"));
            assert_eq!(xmax, 99.0);
            let x0 = num(rects[0], "x");
            assert!((x0 - (x + w * 10.0 / 99.0)).abs() < 0.06, "{title}: {x0}");
            let width = num(rects[0], "width");
            assert!((width - w * 5.0 / 99.0).abs() < 0.11, "{title}: {width}");
        }
        let (_, failed) = panels
            .iter()
            .find(|p| p.0 == "failed requests (%)")
            .unwrap();
        let line = elements(failed, "<line class=\"slo\"")[0];
        let g = &failed[..failed.find('>').unwrap()];
        let want = num(g, "data-y") + num(g, "data-h") * (1.0 - 1.0 / num(g, "data-ymax"));
        assert!((num(line, "y1") - want).abs() < 0.06);
        // Without an SLO there is neither.
        let mut plain = Series::default();
        plain.push(&StepRow {
            p99_ms: 900.0,
            ..StepRow::default()
        });
        let svg = plot_run("t", &plain);
        assert!(!svg.contains("class=\"slo\"") && !svg.contains("class=\"violation\""));
    }

    #[test]
    fn ticks_are_round_and_axes_start_at_the_data() {
        assert_eq!(nice_ticks(0.0, 600.0).0, [0.0, 200.0, 400.0, 600.0]);
        assert_eq!(nice_ticks(0.0, 7.3).0, [0.0, 2.0, 4.0, 6.0, 8.0]);
        assert_eq!(nice_ticks(0.0, 0.9).0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(900.0, 1040.0).0, [900.0, 950.0, 1000.0, 1050.0]);
        assert_eq!(time_ticks(0.0, 86_400.0).len(), 5);
        assert_eq!(time_ticks(0.0, 86_400.0)[1], 21_600.0);
        assert_eq!(clock(21_600.0), "6h");
        assert_eq!(clock(5_400.0), "1h30m");
        assert_eq!(clock(90.0), "1m30s");
        assert_eq!(clock(0.0), "0");
        assert_eq!(tick_label(2500.0, 500.0), "2500");
        assert_eq!(tick_label(12_500.0, 2500.0), "12.5k");
        assert_eq!(tick_label(0.0, 2000.0), "0");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        // A sweep from 60 to 120: the x axis starts at 60, every label is a round number.
        let mut curve = Series::default();
        for (x, y) in [
            (60.0, 5.0),
            (75.0, 3.0),
            (90.0, 2.0),
            (105.0, 2.0),
            (120.0, 1.0),
        ] {
            curve.t.push(x);
            curve.rps.push(y);
            curve.desired.push(10.0 + y);
            curve.p99.push(y);
            curve.failed.push(y);
        }
        let svg = plot_sweep("s", "target", &[("a".into(), curve)]);
        for (title, body) in panels(&svg) {
            let g = &body[..body.find('>').unwrap()];
            assert_eq!(
                (num(g, "data-xmin"), num(g, "data-xmax")),
                (60.0, 120.0),
                "{title}"
            );
            assert_eq!(texts(&body, "xtick"), ["60", "80", "100", "120"]);
            for label in texts(&body, "ytick") {
                let v: f64 = label.parse().unwrap();
                assert_eq!(v, (v * 2.0).round() / 2.0, "{title}: {label}");
            }
        }
        // Pod-hours 11..15: well above 0, so the axis starts near the data, not at 0.
        let (_, hours) = panels(&svg)
            .into_iter()
            .find(|p| p.0 == "pod-hours")
            .unwrap();
        let g = &hours[..hours.find('>').unwrap()];
        assert_eq!((num(g, "data-ymin"), num(g, "data-ymax")), (11.0, 15.0));
    }

    #[test]
    fn a_dozen_policies_get_distinct_styles_and_a_legend_that_fits() {
        let runs: Vec<(String, Series)> = (0..12)
            .map(|i| (format!("policy-with-a-long-name-{i}"), known_series()))
            .collect();
        let styles: std::collections::BTreeSet<_> = (0..12).map(style).collect();
        assert_eq!(styles.len(), 12);
        let svg = plot_compare("c", &runs);
        let width = num(&svg[..svg.find('>').unwrap()], "width");
        for (title, body) in panels(&svg) {
            let g = &body[..body.find('>').unwrap()];
            let (top, h) = (num(g, "data-y"), num(g, "data-h"));
            let legends = elements(&body, "<text class=\"legend\"");
            let labels = texts(&body, "legend");
            for (tag, label) in legends.iter().zip(&labels) {
                let (x, y) = (num(tag, "x"), num(tag, "y"));
                assert!(
                    x + FONT_W * label.chars().count() as f64 <= width,
                    "{title}: {label}"
                );
                assert!(y > top && y <= top + h, "{title}: {label} at {y}");
            }
            if title != "traffic (req/s)" {
                assert_eq!(labels.len(), 12, "{title}");
            }
        }
    }

    #[test]
    fn a_one_minute_spike_survives_downsampling_of_ten_days() {
        // Ten days at 1 s with 1 % failed and p99 900 ms for one minute on day 5.
        let mut s = Series::with_slo(&crate::scenario::Slo::default());
        let spike = 5 * 86_400..5 * 86_400 + 60;
        for i in 0..10 * 86_400 {
            let hot = spike.contains(&i);
            s.push(&StepRow {
                t: f64::from(i),
                rps: if hot { 1000.0 } else { 100.0 },
                requests: 100.0,
                failed: if hot { 50.0 } else { 0.0 },
                p99_ms: if hot { 900.0 } else { 20.0 },
                desired: if hot { 9 } else { 3 },
                endpoints: if hot { 1 } else { 3 },
                ..StepRow::default()
            });
        }
        assert!(
            s.t.len() <= MAX_POINTS + 1 && s.bucket() >= 512,
            "{}",
            s.bucket()
        );
        let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
        assert_eq!(max(&s.rps_max), 1000.0);
        assert!(max(&s.rps) < 300.0, "the mean smooths it");
        assert_eq!(max(&s.failed), 50.0);
        assert_eq!(max(&s.p99), 900.0);
        assert_eq!(max(&s.desired), 9.0);
        assert_eq!(s.endpoints.iter().copied().fold(f64::MAX, f64::min), 1.0);
        let v = s.violations();
        assert_eq!(v.len(), 1);
        assert!(v[0].0 <= 432_000.0 && v[0].1 >= 432_060.0, "{v:?}");
    }

    #[test]
    fn downsampled_csv_sums_requests_and_keeps_maxima() {
        let mut out = Vec::new();
        let mut sink = CsvSink::downsampled(&mut out, 60.0);
        for i in 0..150 {
            sink.push(&StepRow {
                t: f64::from(i),
                rps: f64::from(i),
                requests: 10.0,
                failed: if i == 70 { 4.0 } else { 0.0 },
                p50_ms: 10.0,
                p99_ms: if i == 61 { 800.0 } else { 30.0 },
                desired: i / 10,
                pods: 3,
                endpoints: if i == 100 { 1 } else { 3 },
                shares: vec![0.5, 0.5],
                ..StepRow::default()
            });
        }
        sink.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], csv_header(2));
        assert_eq!(
            lines[1],
            "0.000,29.500,5,3,3,600.000,0.000,10.000,30.000,0,0.5000,0.5000"
        );
        assert_eq!(
            lines[2],
            "60.000,89.500,11,3,1,600.000,4.000,10.000,800.000,0,0.5000,0.5000"
        );
        assert_eq!(
            lines[3],
            "120.000,134.500,14,3,3,300.000,0.000,10.000,30.000,0,0.5000,0.5000"
        );
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
