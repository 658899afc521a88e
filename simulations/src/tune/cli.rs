//! `gofe sim tune SCENARIO`: the command line over [`crate::tune::tune`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Overrides, SplitMode, TuneReport};
use crate::output::Staged;
use crate::runs::Format;
use crate::scenario;

/// `gofe sim tune`'s arguments.
#[derive(clap::Args, Debug)]
pub struct TuneArgs {
    /// The scenario file; its autoscaling section is the baseline, its `tune:` section the
    /// search (see simulations/README.md).
    scenario: PathBuf,
    /// The policy whose autoscaling is tuned (default: `tune.policy`, else the first).
    #[arg(long)]
    policy: Option<String>,
    /// Evaluations at most, besides the two reference runs (default: `tune.budget`, else 120).
    #[arg(long)]
    budget: Option<usize>,
    /// Fraction of the run held out, 0.05..=0.95 (default: `tune.holdout`, else 0.3).
    #[arg(long)]
    holdout: Option<f64>,
    /// How the run is split: auto (whole days for two days or more, else the tail), tail,
    /// days (default: `tune.split`, else auto).
    #[arg(long, value_enum)]
    split: Option<SplitMode>,
    /// Fraction of a part's seconds allowed to violate the SLO (default: `tune.slo_budget`,
    /// else 0.001).
    #[arg(long)]
    slo_budget: Option<f64>,
    /// Cost advantage that may be lost on held-out before it is called overfitting, as a
    /// fraction of the default HPA's cost (default: `tune.overfit_margin`, else 0.05).
    #[arg(long)]
    overfit_margin: Option<f64>,
    /// A dimension and its range, NAME=MIN..MAX (durations as 30s..10m) or NAME=A,B for a
    /// switch (forecast=off,on); repeatable; with any, only these are searched.
    #[arg(long = "dim")]
    dims: Vec<String>,
    /// Threads evaluating candidates (default: every core); the result does not depend on it.
    #[arg(long, short)]
    jobs: Option<usize>,
    /// Override the scenario's seed (of the runs and of the sample).
    #[arg(long)]
    seed: Option<u64>,
    /// text (a table) or json (one document).
    #[arg(long, alias = "output", value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Directory for tune.txt, tune.json and candidates.csv (every candidate's scores).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Runs `gofe sim tune`; exits with status 3 when the recommendation overfits and 4 when no
/// setting meets the SLO on train, after printing the report.
pub fn main(args: TuneArgs) -> anyhow::Result<()> {
    let path = &args.scenario;
    let mut sc = scenario::load(path)?;
    if let Some(seed) = args.seed {
        sc.seed = seed;
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let overrides = Overrides {
        policy: args.policy,
        holdout: args.holdout,
        split: args.split,
        budget: args.budget,
        slo_budget: args.slo_budget,
        overfit_margin: args.overfit_margin,
        dims: args.dims,
        jobs: args.jobs,
    };
    let mut options = super::resolve(&sc, &overrides)
        .with_context(|| format!("{}: the tune settings", path.display()))?;
    options.progress = !args.quiet;
    let report = super::tune(&sc, base, &options)?;
    let text = super::report_text(&report);
    let json = super::report_json(&report);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut staged = Staged::default();
        for (name, bytes) in [
            ("tune.txt", text.as_bytes()),
            ("tune.json", json.as_bytes()),
            ("candidates.csv", candidates_csv(&report).as_bytes()),
        ] {
            let p = dir.join(name);
            staged
                .write(&p, bytes)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        staged
            .commit()
            .with_context(|| format!("writing {}", dir.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(match args.format {
        Format::Text => text.as_bytes(),
        Format::Json => json.as_bytes(),
    })?;
    stdout.flush()?;
    let code = report.verdict.exit_code();
    if code != 0 {
        tracing::debug!(code, "tune verdict");
        std::process::exit(code);
    }
    Ok(())
}

/// Every candidate, one row each: origin, the setting, the train and held-out scores.
pub fn candidates_csv(r: &TuneReport) -> String {
    let mut o = String::from("n,origin");
    for d in &r.space.dims {
        let _ = write!(o, ",{}", d.kind().name);
    }
    for part in ["train", "held_out"] {
        for col in ["slo_violation_s", "error_fraction", "p99_ms", "pod_seconds"] {
            let _ = write!(o, ",{part}_{col}");
        }
    }
    o.push_str(",error\n");
    for (i, c) in r.candidates.iter().enumerate() {
        let origin = match c.origin {
            super::Origin::Baseline => "baseline".to_owned(),
            super::Origin::Sample => "sample".to_owned(),
            super::Origin::Refine(n) => format!("refine{n}"),
            super::Origin::Simplify => "simplify".to_owned(),
        };
        let _ = write!(o, "{i},{origin}");
        for (_, v) in r.space.describe(&c.point) {
            let _ = write!(o, ",{}", v.unwrap_or_default());
        }
        match &c.eval {
            Ok(e) => {
                for p in [&e.train, &e.held_out] {
                    let _ = write!(
                        o,
                        ",{},{},{},{}",
                        p.slo_violation_seconds,
                        p.error_fraction(),
                        p.p99_ms,
                        p.pod_seconds
                    );
                }
                o.push_str(",\n");
            }
            Err(e) => {
                let _ = writeln!(o, ",,,,,,,,,{:?}", e.replace(['\n', ','], " "));
            }
        }
    }
    o
}
