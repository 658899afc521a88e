//! `gofe sim ...`: the command line over [`crate::runs`], [`crate::fetch`] and
//! [`crate::hpa_script`].

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::runs::{CsvMode, Format, RunOptions};
use crate::scenario;

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
        /// min_replicas, max_replicas, target (every metric), target[N] (metric N),
        /// target_scale (every target × factor), timeout_s, sync_s, scrape_s, window_s,
        /// cache_s, seed).
        #[arg(long)]
        sweep: Option<String>,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for summary.txt, <policy>.csv and <policy>.svg (and compare/sweep files).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// How the summary, compare and sweep tables are printed (json: also summary.json).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// The per-step CSV under --out: every (each step), off, or one row per DURATION
        /// (e.g. 1m: sums of requests and failures, mean rate, maximum p99).
        #[arg(long, default_value = "every")]
        csv: CsvMode,
    },
    /// Search the HPA settings (target, tolerance, behavior windows and policies, forecast)
    /// for the cheapest that meets the SLO, chosen on train time and reported on held-out
    /// time beside the default HPA. Exit status 3: the recommendation overfits; 4: no
    /// setting meets the SLO on train.
    Tune(Box<crate::tune::cli::TuneArgs>),
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
    /// Check a scenario file and every trace it names; print every problem with its file,
    /// line and field.
    Check {
        /// The scenario file.
        scenario: PathBuf,
    },
    /// Write a trace from a live Prometheus: a range query's answer, chunked past
    /// Prometheus' 11,000 points per series; read it with `trace: { file: FILE }`.
    Fetch {
        /// The Prometheus base URL (`http://prometheus:9090`).
        #[arg(long)]
        prometheus: String,
        /// The PromQL query (e.g. `sum(rate(http_requests_total[1m]))`, or a counter with
        /// `counter: true` in the scenario).
        #[arg(long)]
        query: String,
        /// First evaluation time: Unix seconds, RFC 3339 UTC, `now` or `now-DURATION`.
        #[arg(long)]
        start: String,
        /// Last evaluation time (same forms).
        #[arg(long, default_value = "now")]
        end: String,
        /// Spacing of the points (`15s`, `1s`, `1m`).
        #[arg(long, default_value = "15s")]
        step: String,
        /// Each query's time limit.
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// CA certificate(s) for an https:// Prometheus.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The file to write (a `.json` Prometheus answer).
        #[arg(long, short)]
        out: PathBuf,
    },
}

/// Runs `gofe sim ...`.
pub fn main(args: SimArgs) -> anyhow::Result<()> {
    match args.command {
        SimCommand::Tune(args) => crate::tune::cli::main(*args),
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
        SimCommand::Fetch {
            prometheus,
            query,
            start,
            end,
            step,
            timeout,
            ca_file,
            out,
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let when = |flag: &str, v: &str| {
                crate::fetch::parse_when(v, now).with_context(|| {
                    format!("{flag} {v:?}: expected Unix seconds, RFC 3339, now or now-DURATION")
                })
            };
            let dur = |flag: &str, v: &str| {
                gofe_yaml::duration::parse(v).with_context(|| format!("{flag} {v:?}"))
            };
            let req = crate::fetch::FetchRequest {
                url: prometheus,
                query,
                start: when("--start", &start)?,
                end: when("--end", &end)?,
                step: dur("--step", &step)?,
                timeout: dur("--timeout", &timeout)?,
                ca_file,
            };
            let f = crate::fetch::fetch_to_file(&req, &out)?;
            println!(
                "{}: {} series, {} points, {} queries",
                out.display(),
                f.series,
                f.points,
                f.queries
            );
            Ok(())
        }
        SimCommand::Check { scenario } => {
            let sc = scenario::load(&scenario)?;
            let base = scenario.parent().unwrap_or(Path::new("."));
            if let Err(problems) = crate::traffic::check_traces(&sc.traffic, base) {
                bail!(
                    "{problems}\n{}: {} trace problem(s)",
                    scenario.display(),
                    problems.count()
                );
            }
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
            format,
            csv,
        } => {
            let options = RunOptions { format, csv };
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
            let text = match sweep {
                Some(spec) => {
                    crate::runs::run_sweep(&sc, &base, &policies, &spec, out.as_deref(), options)?
                }
                None => {
                    crate::runs::run_policies_with(&sc, &base, &policies, out.as_deref(), options)?
                }
            };
            print!("{text}");
            Ok(())
        }
    }
}

pub use crate::runs::{parse_sweep, run_policies, set_param};
