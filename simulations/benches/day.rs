//! The performance target: a 24-hour trace at 1-second resolution, 100 pods, one policy, in
//! under a second. Writes a day-long CSV trace to a temporary directory (the simulator streams
//! it), then times one run per balancer. `cargo bench -p gofe-sim --bench day`; set
//! `GOFE_SIM_BENCH=gofe` (a policy name) to time only that policy, e.g. under a profiler.

use std::io::Write;
use std::time::Instant;

fn main() {
    let dir = std::env::temp_dir().join(format!("gofe-sim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let trace = dir.join("day.csv");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&trace).expect("trace file"));
        writeln!(f, "timestamp,rps").unwrap();
        for t in 0..86_400u32 {
            let x = f64::from(t) / 86_400.0 * std::f64::consts::TAU;
            let rps = 6_000.0 + 4_000.0 * (x - 2.0).sin() + 300.0 * (f64::from(t) * 0.37).sin();
            writeln!(f, "{},{rps:.1}", 1_700_000_000 + t).unwrap();
        }
    }
    let text = format!(
        r#"
name: bench-day
seed: 1
step: 1s
traffic:
  - trace: {{ file: {} }}
service:
  pods: 100
  capacity: 100
  latency: 20ms
  timeout: 5s
outlier: {{}}
autoscaling:
  minReplicas: 100
  maxReplicas: 100
  metrics:
    - external_rps: {{ average_value: "90" }}
policies:
  - {{ name: round-robin, balancer: round_robin }}
  - {{ name: least-request, balancer: least_request }}
  - {{ name: peak-ewma, balancer: peak_ewma }}
  - {{ name: gofe, balancer: gofe }}
"#,
        trace.display()
    );
    let sc = gofe_sim::scenario::parse("bench-day.yaml", &text).expect("scenario");
    println!("24 h at 1 s steps (86,400 steps), 100 pods, HPA + pipeline on, streamed CSV trace:");
    let only = std::env::var("GOFE_SIM_BENCH").ok();
    for policy in &sc.policies {
        if only.as_deref().is_some_and(|o| o != policy.name) {
            continue;
        }
        let mut best = f64::INFINITY;
        let mut best_cpu = f64::INFINITY;
        let mut steps = 0u64;
        for _ in 0..3 {
            let start = Instant::now();
            let cpu = on_cpu_seconds();
            let s = gofe_sim::engine::run(&sc, policy, &dir, &mut |_| steps += 1, &mut |_| {})
                .expect("run");
            best = best.min(start.elapsed().as_secs_f64());
            if let (Some(a), Some(b)) = (cpu, on_cpu_seconds()) {
                best_cpu = best_cpu.min(b - a);
            }
            assert!(s.requests > 0.0);
        }
        println!(
            "  {:<14} best of 3: {:>7.3} s wall, {:>7.3} s on CPU  ({} steps)",
            policy.name,
            best,
            best_cpu,
            steps / 3
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Time this thread has spent on a CPU (Linux `/proc/thread-self/schedstat`), which a busy
/// machine inflates far less than wall time; `None` elsewhere.
fn on_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}
