//! Writes the `gofe sim tune` benchmark's trace: ten days of per-minute request rates
//! (14,400 samples), seeded, as `timestamp,rps` CSV.
//!
//! ```sh
//! cargo run -p gofe-sim --example ten-day-trace -- simulations/scenarios/tune/ten-days.csv
//! ```
//!
//! The shape: a daily cycle (quiet at 04:00, a peak at 14:00 and a smaller one at 20:00), a
//! weekly one (days 5 and 6 are a weekend at 60 %), a level shift (+25 % from day 6, 09:00:
//! a launch), three flash crowds (day 2 11:00 ×2.5 for 20 min, day 3 19:30 ×2 for 10 min,
//! day 8 09:15 ×3 for 15 min, each a 2-minute rise and a 10-minute decay), and 4 % noise per
//! minute. The same seed writes the same file, byte for byte.

use std::f64::consts::PI;
use std::io::Write;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: ten-day-trace OUT.csv [SEED]"))?;
    let seed: u64 = match args.next() {
        Some(s) => s.parse()?,
        None => 15,
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
    writeln!(w, "timestamp,rps")?;
    const DAY: f64 = 86_400.0;
    let spikes = [
        (2.0 * DAY + 11.0 * 3600.0, 1.5, 1200.0),
        (3.0 * DAY + 19.5 * 3600.0, 1.0, 600.0),
        (8.0 * DAY + 9.25 * 3600.0, 2.0, 900.0),
    ];
    for minute in 0..(10 * 24 * 60) {
        let t = f64::from(minute) * 60.0;
        let day = (t / DAY).floor();
        let hour = (t - day * DAY) / 3600.0;
        // Daily: a main peak at 14:00, a second at 20:00, the trough near 04:00.
        let daily = 1.0
            + 0.55 * (2.0 * PI * (hour - 14.0) / 24.0).cos()
            + 0.15 * (2.0 * PI * (hour - 20.0) / 12.0).cos();
        let weekly = if day == 5.0 || day == 6.0 { 0.6 } else { 1.0 };
        let shift = if t >= 6.0 * DAY + 9.0 * 3600.0 {
            1.25
        } else {
            1.0
        };
        let mut rate = 1500.0 * daily.max(0.1) * weekly * shift;
        for &(at, extra, hold) in &spikes {
            let rise = 120.0;
            let k = if t < at {
                0.0
            } else if t < at + rise {
                (t - at) / rise
            } else if t < at + rise + hold {
                1.0
            } else {
                (-(t - at - rise - hold) / 600.0).exp()
            };
            rate *= 1.0 + extra * k;
        }
        // Box–Muller from the seeded generator.
        let (u1, u2) = (rng.f64().max(1e-12), rng.f64());
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos();
        rate *= (1.0 + 0.04 * normal).max(0.0);
        writeln!(w, "{},{rate:.1}", minute * 60)?;
    }
    w.flush()?;
    Ok(())
}
