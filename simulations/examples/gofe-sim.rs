//! `gofe sim` without the rest of the `gofe` binary (quicker to build while working on the
//! simulator): `cargo run -p gofe-sim --example gofe-sim -- run simulations/scenarios/slow-backend.yaml`.

use clap::Parser;

/// gofe sim, standalone.
#[derive(Parser, Debug)]
#[command(name = "gofe-sim")]
struct Cli {
    #[command(flatten)]
    sim: gofe_sim::cli::SimArgs,
}

fn main() -> anyhow::Result<()> {
    gofe_sim::cli::main(Cli::parse().sim)
}
