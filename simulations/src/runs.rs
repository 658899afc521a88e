//! `gofe sim run`: one policy, several side by side, or a what-if sweep, with their outputs.
//!
//! Every output file is staged under a temporary name and renamed into place only once every
//! run has finished ([`crate::output::Staged`]), so a run that fails (a bad trace line an hour
//! in) leaves no CSV, plot or summary behind.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::engine::{self, RunError, Summary};
use crate::hpa_script::Quantity;
use crate::output::Staged;
use crate::report::{self, CsvSink, Series};
use crate::scenario::{self, Dur, Scenario, SimMetric};

/// Why a run command failed.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// A run failed (trace, policy).
    #[error(transparent)]
    Run(#[from] RunError),
    /// An output could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `--sweep` specification or one of its values is wrong.
    #[error("--sweep: {0}")]
    Sweep(String),
    /// A `--csv` value is wrong.
    #[error("--csv {0:?}: expected every, off or a duration (1m)")]
    Csv(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunsError + '_ {
    move |source| RunsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How the summary and tables are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `key: value` lines, a side-by-side table, a CSV table for sweeps.
    #[default]
    Text,
    /// One JSON document.
    Json,
}

/// Which per-step rows `<policy>.csv` gets.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum CsvMode {
    /// Every step.
    #[default]
    Every,
    /// No CSV.
    Off,
    /// One row per interval of this many seconds (see [`CsvSink::downsampled`]).
    Interval(f64),
}

impl std::str::FromStr for CsvMode {
    type Err = RunsError;

    fn from_str(s: &str) -> Result<Self, RunsError> {
        match s {
            "every" => Ok(CsvMode::Every),
            "off" => Ok(CsvMode::Off),
            d => match gofe_yaml::duration::parse(d) {
                Ok(d) if !d.is_zero() => Ok(CsvMode::Interval(d.as_secs_f64())),
                _ => Err(RunsError::Csv(s.to_owned())),
            },
        }
    }
}

/// Options of `gofe sim run` beyond the scenario and policies.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    /// Text or JSON on stdout (and `summary.json` beside `summary.txt` for JSON).
    pub format: Format,
    /// The per-step CSV.
    pub csv: CsvMode,
}

/// Runs the given policies of a scenario with the default options; see [`run_policies_with`].
pub fn run_policies(
    sc: &Scenario,
    base: &Path,
    policies: &[usize],
    out: Option<&Path>,
) -> Result<String, RunsError> {
    run_policies_with(sc, base, policies, out, RunOptions::default())
}

/// Runs the given policies of a scenario; writes `summary.txt`, `<policy>.csv`,
/// `<policy>.svg` and (for several) `compare.svg` under `out`; returns what to print.
pub fn run_policies_with(
    sc: &Scenario,
    base: &Path,
    policies: &[usize],
    out: Option<&Path>,
    options: RunOptions,
) -> Result<String, RunsError> {
    let mut staged = Staged::default();
    let mut summaries: Vec<Summary> = Vec::new();
    let mut series: Vec<(String, Series)> = Vec::new();
    for &i in policies {
        let policy = &sc.policies[i];
        let mut plot = Series::with_slo(&sc.slo);
        let csv_path = out.map(|dir| dir.join(format!("{}.csv", policy.name)));
        let mut csv = match (&csv_path, options.csv) {
            (Some(path), CsvMode::Every | CsvMode::Interval(_)) => {
                let file = std::io::BufWriter::new(staged.create(path).map_err(io(path))?);
                Some(match options.csv {
                    CsvMode::Interval(secs) => CsvSink::downsampled(file, secs),
                    _ => CsvSink::new(file),
                })
            }
            _ => None,
        };
        let mut bar = Progress::new(&format!("{} / {}", sc.name, policy.name));
        let summary = engine::run(
            sc,
            policy,
            base,
            &mut |row| {
                plot.push(row);
                if let Some(c) = csv.as_mut() {
                    c.push(row);
                }
            },
            &mut |f| bar.update(f),
        )?;
        bar.finish();
        if let (Some(c), Some(path)) = (csv, &csv_path) {
            c.finish().map_err(io(path))?;
        }
        if let Some(dir) = out {
            let svg = report::plot_run(&format!("{} — {}", sc.name, policy.name), &plot);
            let path = dir.join(format!("{}.svg", policy.name));
            staged.write(&path, svg.as_bytes()).map_err(io(&path))?;
        }
        summaries.push(summary);
        series.push((policy.name.clone(), plot));
    }
    let text = format!(
        "scenario: {}\nseed: {}\n{}",
        sc.name,
        sc.seed,
        if summaries.len() == 1 {
            report::summary_text(&summaries[0])
        } else {
            report::compare_table(&summaries)
        }
    );
    let json = || {
        let mut j = serde_json::to_string_pretty(&serde_json::json!({
            "scenario": sc.name,
            "seed": sc.seed,
            "runs": summaries.iter().map(report::summary_json).collect::<Vec<_>>(),
        }))
        .unwrap_or_default();
        j.push('\n');
        j
    };
    if let Some(dir) = out {
        let path = dir.join("summary.txt");
        staged.write(&path, text.as_bytes()).map_err(io(&path))?;
        if options.format == Format::Json {
            let path = dir.join("summary.json");
            staged.write(&path, json().as_bytes()).map_err(io(&path))?;
        }
        if summaries.len() > 1 {
            let path = dir.join("compare.svg");
            let svg = report::plot_compare(&format!("{} — compared", sc.name), &series);
            staged.write(&path, svg.as_bytes()).map_err(io(&path))?;
        }
        staged.commit().map_err(io(dir))?;
    }
    Ok(match options.format {
        Format::Text => text,
        Format::Json => json(),
    })
}

/// The parameters `--sweep` can vary.
pub const SWEEP_PARAMS: &str = "capacity, concurrency, pods, min_replicas, max_replicas, target (every metric), target[N] (metric N), target_scale (every metric × factor), timeout_s, sync_s, scrape_s, window_s, cache_s, seed";

/// Applies `param = value` to a scenario (the `--sweep` parameters, [`SWEEP_PARAMS`]).
/// `min_replicas`, `max_replicas` and the targets apply to the scenario's autoscaling and to
/// every policy's own; `target` sets every metric of each to `value` (req/s for the rate
/// metrics, percent for cpu), `target[N]` only metric N, `target_scale` multiplies every
/// target by `value`.
pub fn set_param(sc: &mut Scenario, param: &str, value: f64) -> Result<(), RunsError> {
    let secs = |v: f64| Dur(Duration::from_secs_f64(v.max(0.001)));
    match param {
        "capacity" => sc.service.capacity = value,
        "concurrency" => sc.service.concurrency = value.round().max(1.0) as u32,
        "pods" => sc.service.pods = value.round().max(1.0) as u32,
        "timeout_s" => sc.service.timeout = secs(value),
        "sync_s" => sc.pipeline.sync = secs(value),
        "scrape_s" => sc.pipeline.scrape = secs(value),
        "window_s" => sc.pipeline.window = secs(value),
        "cache_s" => sc.pipeline.cache = secs(value),
        "seed" => sc.seed = value as u64,
        _ => {
            let which = target_param(param).ok_or_else(|| {
                RunsError::Sweep(format!(
                    "unknown parameter {param:?} (one of {SWEEP_PARAMS})"
                ))
            })?;
            let mut targets: Vec<&mut scenario::Autoscaling> = sc
                .policies
                .iter_mut()
                .filter_map(|p| p.autoscaling.as_mut())
                .collect();
            targets.extend(sc.autoscaling.as_mut());
            if targets.is_empty() {
                return Err(RunsError::Sweep(format!(
                    "{param}: the scenario has no autoscaling section"
                )));
            }
            for a in targets {
                match which {
                    Target::Min => a.min_replicas = value.round() as i32,
                    Target::Max => a.max_replicas = value.round() as i32,
                    Target::Set(index) | Target::Scale(index) => {
                        if let Some(n) = index.filter(|&n| n >= a.metrics.len()) {
                            return Err(RunsError::Sweep(format!(
                                "{param}: an autoscaling section has {} metric(s), no metric {n}",
                                a.metrics.len()
                            )));
                        }
                        for (mi, m) in a.metrics.iter_mut().enumerate() {
                            if index.is_some_and(|n| n != mi) {
                                continue;
                            }
                            let scale = matches!(which, Target::Scale(_));
                            set_target(m, |t| if scale { t * value } else { value });
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Target {
    Min,
    Max,
    /// Set the target of metric N, or of every metric.
    Set(Option<usize>),
    /// Multiply the target of metric N, or of every metric.
    Scale(Option<usize>),
}

fn target_param(param: &str) -> Option<Target> {
    match param {
        "min_replicas" => Some(Target::Min),
        "max_replicas" => Some(Target::Max),
        "target" => Some(Target::Set(None)),
        "target_scale" => Some(Target::Scale(None)),
        p => {
            let (name, rest) = p.split_once('[')?;
            let n: usize = rest.strip_suffix(']')?.parse().ok()?;
            match name {
                "target" => Some(Target::Set(Some(n))),
                "target_scale" => Some(Target::Scale(Some(n))),
                _ => None,
            }
        }
    }
}

/// Replaces a metric's target `t` by `f(t)` (req/s for the rate metrics, percent for cpu).
fn set_target(m: &mut SimMetric, f: impl Fn(f64) -> f64) {
    let milli = |q: &Quantity| q.0 as f64 / 1000.0;
    let quantity = |v: f64| Quantity((v * 1000.0).round() as i64);
    match m {
        SimMetric::ExternalRps {
            average_value,
            value,
            ..
        } => {
            for q in [average_value, value].into_iter().flatten() {
                *q = quantity(f(milli(q)));
            }
        }
        SimMetric::PodsRps { average_value } => {
            *average_value = quantity(f(milli(average_value)));
        }
        SimMetric::Cpu {
            average_utilization,
        } => *average_utilization = f(f64::from(*average_utilization)).round() as i32,
    }
}

/// Parses `PARAM=FROM..TO[:STEPS]`.
pub fn parse_sweep(spec: &str) -> Result<(String, Vec<f64>), RunsError> {
    let bad = |m: String| RunsError::Sweep(m);
    let (param, range) = spec
        .split_once('=')
        .ok_or_else(|| bad(format!("{spec:?}: expected PARAM=FROM..TO[:STEPS]")))?;
    let (range, steps) = match range.split_once(':') {
        Some((r, n)) => (
            r,
            n.parse::<usize>()
                .map_err(|_| bad(format!("bad step count {n:?}")))?,
        ),
        None => (range, 5),
    };
    let (from, to) = range
        .split_once("..")
        .ok_or_else(|| bad(format!("{spec:?}: expected FROM..TO")))?;
    let number = |s: &str| {
        s.parse::<f64>()
            .map_err(|_| bad(format!("bad number {s:?}")))
    };
    let (from, to) = (number(from)?, number(to)?);
    if !(2..=1000).contains(&steps) || !from.is_finite() || !to.is_finite() {
        return Err(bad(format!(
            "{spec:?}: need finite bounds and 2..=1000 steps"
        )));
    }
    let values = (0..steps)
        .map(|i| from + (to - from) * i as f64 / (steps - 1) as f64)
        .collect();
    Ok((param.to_owned(), values))
}

/// Runs a sweep; writes `sweep.csv` and `sweep.svg` under `out`; returns what to print (the
/// CSV table, or JSON).
pub fn run_sweep(
    sc: &Scenario,
    base: &Path,
    policies: &[usize],
    spec: &str,
    out: Option<&Path>,
    options: RunOptions,
) -> Result<String, RunsError> {
    let (param, values) = parse_sweep(spec)?;
    let mut table = format!(
        "{param},policy,slo_violation_seconds,p99_ms,failed_requests,pod_hours,scale_events,ejections\n"
    );
    let mut rows = Vec::new();
    let mut curves: Vec<(String, Series)> = Vec::new();
    for &i in policies {
        let mut slo = Series::default();
        for &v in &values {
            let mut s = sc.clone();
            set_param(&mut s, &param, v)?;
            let problems = scenario::validate(&s);
            if let Some(p) = problems.first() {
                return Err(RunsError::Sweep(format!("{param}={v}: {p}")));
            }
            let mut bar = Progress::new(&format!(
                "{} / {} / {param}={v}",
                sc.name, s.policies[i].name
            ));
            let r = engine::run(&s, &s.policies[i], base, &mut |_| {}, &mut |f| {
                bar.update(f)
            })?;
            bar.finish();
            let _ = writeln!(
                table,
                "{v:.3},{},{:.1},{:.1},{:.0},{:.2},{},{}",
                r.policy,
                r.slo_violation_seconds,
                r.p99_ms,
                r.failed,
                r.pod_seconds / 3600.0,
                r.scale_events,
                r.ejections
            );
            let mut row = report::summary_json(&r);
            if let Some(o) = row.as_object_mut() {
                o.insert("value".into(), v.into());
            }
            rows.push(row);
            // Reuse the plot series: x = parameter, "desired" = SLO seconds, "p99" = pod-hours.
            slo.t.push(v);
            slo.rps.push(r.slo_violation_seconds);
            slo.desired.push(r.pod_seconds / 3600.0);
            slo.p99.push(r.p99_ms);
            slo.failed.push(if r.requests > 0.0 {
                100.0 * r.failed / r.requests
            } else {
                0.0
            });
        }
        curves.push((sc.policies[i].name.clone(), slo));
    }
    if let Some(dir) = out {
        let mut staged = Staged::default();
        let path = dir.join("sweep.csv");
        staged.write(&path, table.as_bytes()).map_err(io(&path))?;
        let path = dir.join("sweep.svg");
        let svg = report::plot_sweep(&format!("{} — sweep of {param}", sc.name), &param, &curves);
        staged.write(&path, svg.as_bytes()).map_err(io(&path))?;
        staged.commit().map_err(io(dir))?;
    }
    Ok(match options.format {
        Format::Text => table,
        Format::Json => {
            let mut j = serde_json::to_string_pretty(&serde_json::json!({
                "scenario": sc.name,
                "seed": sc.seed,
                "param": param,
                "rows": rows,
            }))
            .unwrap_or_default();
            j.push('\n');
            j
        }
    })
}

/// A progress line on stderr, only when stderr is a terminal (so files and CI logs stay clean).
struct Progress {
    label: String,
    on: bool,
    last: i64,
}

impl Progress {
    fn new(label: &str) -> Self {
        Progress {
            label: label.to_owned(),
            on: std::io::stderr().is_terminal(),
            last: -1,
        }
    }

    fn update(&mut self, fraction: f64) {
        let pct = (fraction * 100.0) as i64;
        if self.on && pct != self.last {
            self.last = pct;
            let filled = (pct / 5) as usize;
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r{} [{:<20}] {pct:>3}%",
                self.label,
                "#".repeat(filled)
            );
            let _ = err.flush();
        }
    }

    fn finish(&mut self) {
        if self.on {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_spec() {
        let (p, v) = parse_sweep("capacity=100..200:3").unwrap();
        assert_eq!(p, "capacity");
        assert_eq!(v, vec![100.0, 150.0, 200.0]);
        assert_eq!(parse_sweep("pods=1..5").unwrap().1.len(), 5);
        assert!(parse_sweep("pods=1").is_err());
        assert!(parse_sweep("pods=1..2:1").is_err());
    }

    #[test]
    fn csv_modes() {
        assert_eq!("every".parse::<CsvMode>().unwrap(), CsvMode::Every);
        assert_eq!("off".parse::<CsvMode>().unwrap(), CsvMode::Off);
        assert_eq!("1m".parse::<CsvMode>().unwrap(), CsvMode::Interval(60.0));
        assert!("0s".parse::<CsvMode>().is_err());
        assert!("often".parse::<CsvMode>().is_err());
    }

    const TWO_METRICS: &str = "name: t\nduration: 10s\ntraffic:\n  - constant: { rps: 10 }\nservice:\n  pods: 2\n  capacity: 100\nautoscaling:\n  maxReplicas: 5\n  metrics:\n    - external_rps: { average_value: \"100\" }\n    - cpu: { average_utilization: 70 }\n    - pods_rps: { average_value: \"50\" }\npolicies:\n  - { name: rr, balancer: round_robin }\n  - name: own\n    balancer: round_robin\n    autoscaling: { maxReplicas: 9, metrics: [ { external_rps: { value: \"400\" } }, { cpu: { average_utilization: 50 } } ] }\n";

    fn targets(a: &scenario::Autoscaling) -> Vec<f64> {
        a.metrics
            .iter()
            .map(|m| match m {
                SimMetric::ExternalRps {
                    average_value,
                    value,
                    ..
                } => average_value.or(*value).unwrap().0 as f64 / 1000.0,
                SimMetric::PodsRps { average_value } => average_value.0 as f64 / 1000.0,
                SimMetric::Cpu {
                    average_utilization,
                } => f64::from(*average_utilization),
            })
            .collect()
    }

    #[test]
    fn target_sweeps_apply_to_every_metric_of_every_autoscaling_section() {
        let sc = scenario::parse("s.yaml", TWO_METRICS).unwrap();
        let mut s = sc.clone();
        set_param(&mut s, "target", 80.0).unwrap();
        assert_eq!(targets(s.autoscaling.as_ref().unwrap()), [80.0, 80.0, 80.0]);
        assert_eq!(
            targets(s.policies[1].autoscaling.as_ref().unwrap()),
            [80.0, 80.0]
        );
        let mut s = sc.clone();
        set_param(&mut s, "target_scale", 1.5).unwrap();
        assert_eq!(
            targets(s.autoscaling.as_ref().unwrap()),
            [150.0, 105.0, 75.0]
        );
        assert_eq!(
            targets(s.policies[1].autoscaling.as_ref().unwrap()),
            [600.0, 75.0]
        );
        let mut s = sc.clone();
        set_param(&mut s, "target[1]", 60.0).unwrap();
        assert_eq!(
            targets(s.autoscaling.as_ref().unwrap()),
            [100.0, 60.0, 50.0]
        );
        assert_eq!(
            targets(s.policies[1].autoscaling.as_ref().unwrap()),
            [400.0, 60.0]
        );
        let mut s = sc.clone();
        let e = set_param(&mut s, "target[2]", 1.0).unwrap_err().to_string();
        assert!(e.contains("no metric 2"), "{e}");
        assert!(set_param(&mut s, "targets", 1.0).is_err());
    }
}
