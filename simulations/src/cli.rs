//! `gofe sim ...`: the command line over [`crate::engine`], [`crate::report`] and
//! [`crate::hpa_script`].

use std::fmt::Write as _;
use std::fs;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::engine::{self, Summary};
use crate::hpa_script::Quantity;
use crate::report::{self, CsvSink, Series};
use crate::scenario::{self, Dur, Scenario, SimMetric};

/// `gofe sim`: offline replay of traffic through the HPA and gofe's decision code.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    #[command(subcommand)]
    command: SimCommand,
}

#[derive(clap::Subcommand, Debug)]
enum SimCommand {
    /// Run a scenario: prints the summary; with --out also writes the per-step CSV and plots.
    Run {
        /// The scenario file (YAML; see simulations/README.md).
        scenario: PathBuf,
        /// The policy to run (default: the first in the scenario).
        #[arg(long)]
        policy: Option<String>,
        /// Run every policy of the scenario and print them side by side.
        #[arg(long)]
        compare: bool,
        /// What-if curve: PARAM=FROM..TO[:STEPS] (PARAM: capacity, concurrency, pods,
        /// min_replicas, max_replicas, target, timeout_s, sync_s, scrape_s, window_s, cache_s,
        /// seed).
        #[arg(long)]
        sweep: Option<String>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for summary.txt, <policy>.csv and <policy>.svg (and compare/sweep files).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Read HPA cases as JSON lines (file or stdin) and print the desired replicas per line.
    Hpa {
        /// The input (default: stdin).
        input: Option<PathBuf>,
        /// Per line, a JSON object instead of the count: per-metric proposals, the
        /// recommendation before and after stabilization, the limit, the conditions and the
        /// updated history (to feed back into the next line).
        #[arg(long)]
        explain: bool,
    },
    /// Check a scenario file and print every problem with its line and field.
    Check {
        /// The scenario file.
        scenario: PathBuf,
    },
}

/// Runs `gofe sim ...`.
pub fn main(args: SimArgs) -> anyhow::Result<()> {
    match args.command {
        SimCommand::Hpa { input, explain } => {
            let stdout = std::io::stdout().lock();
            match input {
                Some(path) => {
                    let file = fs::File::open(&path)
                        .with_context(|| format!("{}: cannot open", path.display()))?;
                    crate::hpa_script::run_with(
                        &path.display().to_string(),
                        BufReader::new(file),
                        stdout,
                        explain,
                    )?;
                }
                None => {
                    crate::hpa_script::run_with(
                        "<stdin>",
                        std::io::stdin().lock(),
                        stdout,
                        explain,
                    )?;
                }
            }
            Ok(())
        }
        SimCommand::Check { scenario } => {
            scenario::load(&scenario)?;
            println!("{}: ok", scenario.display());
            Ok(())
        }
        SimCommand::Run {
            scenario: path,
            policy,
            compare,
            sweep,
            seed,
            out,
        } => {
            let mut sc = scenario::load(&path)?;
            if let Some(seed) = seed {
                sc.seed = seed;
            }
            let base = path.parent().unwrap_or(Path::new(".")).to_owned();
            if let Some(dir) = &out {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let policies: Vec<usize> = if compare {
                (0..sc.policies.len()).collect()
            } else if let Some(name) = &policy {
                match sc.policies.iter().position(|p| &p.name == name) {
                    Some(i) => vec![i],
                    None => bail!("{}: no policy named {name:?}", path.display()),
                }
            } else {
                vec![0]
            };
            match sweep {
                Some(spec) => run_sweep(&sc, &base, &policies, &spec, out.as_deref()),
                None => {
                    let text = run_policies(&sc, &base, &policies, out.as_deref())?;
                    print!("{text}");
                    Ok(())
                }
            }
        }
    }
}

/// Runs the given policies of a scenario; writes files under `out`; returns the summary text.
pub fn run_policies(
    sc: &Scenario,
    base: &Path,
    policies: &[usize],
    out: Option<&Path>,
) -> anyhow::Result<String> {
    let mut summaries: Vec<Summary> = Vec::new();
    let mut series: Vec<(String, Series)> = Vec::new();
    for &i in policies {
        let policy = &sc.policies[i];
        let mut plot = Series::default();
        let mut csv = match out {
            Some(dir) => {
                let file = dir.join(format!("{}.csv", policy.name));
                Some(CsvSink::new(std::io::BufWriter::new(
                    fs::File::create(&file)
                        .with_context(|| format!("creating {}", file.display()))?,
                )))
            }
            None => None,
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
        if let (Some(c), Some(dir)) = (csv, out) {
            c.finish().with_context(|| {
                format!(
                    "writing {}",
                    dir.join(format!("{}.csv", policy.name)).display()
                )
            })?;
            let svg = report::plot_run(&format!("{} — {}", sc.name, policy.name), &plot);
            write(&dir.join(format!("{}.svg", policy.name)), &svg)?;
        }
        summaries.push(summary);
        series.push((policy.name.clone(), plot));
    }
    let text = if summaries.len() == 1 {
        format!(
            "scenario: {}\nseed: {}\n{}",
            sc.name,
            sc.seed,
            report::summary_text(&summaries[0])
        )
    } else {
        format!(
            "scenario: {}\nseed: {}\n{}",
            sc.name,
            sc.seed,
            report::compare_table(&summaries)
        )
    };
    if let Some(dir) = out {
        write(&dir.join("summary.txt"), &text)?;
        if summaries.len() > 1 {
            write(
                &dir.join("compare.svg"),
                &report::plot_compare(&format!("{} — compared", sc.name), &series),
            )?;
        }
    }
    Ok(text)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Applies `param = value` to a scenario (the `--sweep` parameters).
pub fn set_param(sc: &mut Scenario, param: &str, value: f64) -> anyhow::Result<()> {
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
        "min_replicas" | "max_replicas" | "target" => {
            let mut targets: Vec<&mut scenario::Autoscaling> = sc
                .policies
                .iter_mut()
                .filter_map(|p| p.autoscaling.as_mut())
                .collect();
            targets.extend(sc.autoscaling.as_mut());
            if targets.is_empty() {
                bail!("--sweep {param}: the scenario has no autoscaling section");
            }
            for a in targets {
                match param {
                    "min_replicas" => a.min_replicas = value.round() as i32,
                    "max_replicas" => a.max_replicas = value.round() as i32,
                    _ => match a.metrics.first_mut() {
                        Some(SimMetric::ExternalRps {
                            average_value,
                            value: v,
                            ..
                        }) => {
                            let q = Some(Quantity((value * 1000.0).round() as i64));
                            if average_value.is_some() {
                                *average_value = q;
                            } else {
                                *v = q;
                            }
                        }
                        Some(SimMetric::PodsRps { average_value }) => {
                            *average_value = Quantity((value * 1000.0).round() as i64)
                        }
                        Some(SimMetric::Cpu {
                            average_utilization,
                        }) => *average_utilization = value.round() as i32,
                        None => {}
                    },
                }
            }
        }
        other => bail!("--sweep: unknown parameter {other:?}"),
    }
    Ok(())
}

/// Parses `PARAM=FROM..TO[:STEPS]`.
pub fn parse_sweep(spec: &str) -> anyhow::Result<(String, Vec<f64>)> {
    let (param, range) = spec
        .split_once('=')
        .with_context(|| format!("--sweep {spec:?}: expected PARAM=FROM..TO[:STEPS]"))?;
    let (range, steps) = match range.split_once(':') {
        Some((r, n)) => (
            r,
            n.parse::<usize>()
                .with_context(|| format!("--sweep: bad step count {n:?}"))?,
        ),
        None => (range, 5),
    };
    let (from, to) = range
        .split_once("..")
        .with_context(|| format!("--sweep {spec:?}: expected FROM..TO"))?;
    let from: f64 = from
        .parse()
        .with_context(|| format!("--sweep: bad number {from:?}"))?;
    let to: f64 = to
        .parse()
        .with_context(|| format!("--sweep: bad number {to:?}"))?;
    if !(2..=1000).contains(&steps) || !from.is_finite() || !to.is_finite() {
        bail!("--sweep {spec:?}: need finite bounds and 2..=1000 steps");
    }
    let values = (0..steps)
        .map(|i| from + (to - from) * i as f64 / (steps - 1) as f64)
        .collect();
    Ok((param.to_owned(), values))
}

fn run_sweep(
    sc: &Scenario,
    base: &Path,
    policies: &[usize],
    spec: &str,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let (param, values) = parse_sweep(spec)?;
    let mut table = format!(
        "{param},policy,slo_violation_seconds,p99_ms,failed_requests,pod_hours,scale_events,ejections\n"
    );
    let mut curves: Vec<(String, Series)> = Vec::new();
    for &i in policies {
        let mut slo = Series::default();
        for &v in &values {
            let mut s = sc.clone();
            set_param(&mut s, &param, v)?;
            let problems = scenario::validate(&s);
            if let Some(p) = problems.first() {
                bail!("--sweep {param}={v}: {p}");
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
    print!("{table}");
    if let Some(dir) = out {
        write(&dir.join("sweep.csv"), &table)?;
        write(
            &dir.join("sweep.svg"),
            &report::plot_sweep(&format!("{} — sweep of {param}", sc.name), &param, &curves),
        )?;
    }
    Ok(())
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
}
