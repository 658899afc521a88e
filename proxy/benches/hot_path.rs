//! Criterion benchmarks of the proxy's per-request decisions: route matching and the balancer's
//! pick. Run with `cargo bench -p gofe-proxy --bench hot_path`.

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gofe_core::balance::{least_request, Candidate, WeightedSequence};
use gofe_proxy::bench_support::Compiled;

/// 50 virtual hosts (exact, suffix and prefix wildcards) of 20 routes each, 10 clusters.
fn config(lb: &str) -> String {
    let mut vhosts = String::new();
    for v in 0..50 {
        let domain = match v % 3 {
            0 => format!("svc{v}.example.com"),
            1 => format!("*.zone{v}.example.com"),
            _ => format!("api{v}.*"),
        };
        vhosts.push_str(&format!(
            "            - name: v{v}\n              domains: [\"{domain}\"]\n              routes:\n"
        ));
        for r in 0..20 {
            vhosts.push_str(&format!(
                "                - {{ match: {{ prefix: \"/r{r}/\" }}, route: {{ cluster: c{} }} }}\n",
                r % 10
            ));
        }
    }
    let mut clusters = String::new();
    for c in 0..10 {
        clusters.push_str(&format!(
            "  - name: c{c}\n    lb_policy: {lb}\n    endpoints:\n"
        ));
        for e in 0..20 {
            clusters.push_str(&format!(
                "      - {{ address: \"10.0.{c}.{e}:8080\", weight: {} }}\n",
                1 + e % 5
            ));
        }
    }
    format!(
        "listeners:\n  - address: \"127.0.0.1:0\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n{vhosts}clusters:\n{clusters}"
    )
}

fn routing(c: &mut Criterion) {
    let cfg = gofe_proxy::config::parse("bench.yaml", &config("round_robin")).unwrap();
    let compiled = Compiled::new(&cfg);
    let headers = http::HeaderMap::new();
    assert_eq!(
        compiled.route("svc48.example.com", "/r19/x", &headers),
        Some("c9")
    );
    let mut g = c.benchmark_group("route");
    g.bench_function("exact host, 20th route", |b| {
        b.iter(|| {
            compiled.route(
                black_box("svc48.example.com:8080"),
                black_box("/r19/x"),
                &headers,
            )
        })
    });
    g.bench_function("suffix wildcard host, 1st route", |b| {
        b.iter(|| {
            compiled.route(
                black_box("a.zone49.example.com"),
                black_box("/r0/"),
                &headers,
            )
        })
    });
    g.bench_function("unknown host", |b| {
        b.iter(|| compiled.route(black_box("nowhere.test"), black_box("/"), &headers))
    });
    g.finish();
}

fn balancing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    for lb in ["round_robin", "least_request"] {
        let cfg = gofe_proxy::config::parse("bench.yaml", &config(lb)).unwrap();
        let compiled = Compiled::new(&cfg);
        g.bench_function(format!("{lb}, 20 weighted endpoints"), |b| {
            b.iter(|| compiled.pick(black_box("c3")))
        });
    }
    let weights: Vec<u32> = (0..1000).map(|i| 1 + i % 100).collect();
    g.bench_function("build cycle, 1000 endpoints", |b| {
        b.iter(|| WeightedSequence::new(black_box(&weights)))
    });
    g.bench_function("least_request compare", |b| {
        let a = Candidate {
            active: 3,
            weight: 2,
        };
        let z = Candidate {
            active: 5,
            weight: 3,
        };
        b.iter(|| least_request(black_box(a), black_box(z)))
    });
    g.finish();
}

criterion_group!(benches, routing, balancing);
criterion_main!(benches);
