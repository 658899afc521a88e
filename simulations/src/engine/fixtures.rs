//! Small hand-built inputs for the engine's unit tests.

use crate::scenario::{self, Scenario};

/// A scenario from YAML `body` (at least its `service`); a name, a 10 s duration, a constant
/// 10 req/s and one round-robin policy are added unless `body` has its own.
pub(super) fn scenario(body: &str) -> Scenario {
    let mut text = String::from("name: t\n");
    if !body.contains("duration:") {
        text.push_str("duration: 10s\n");
    }
    if !body.contains("traffic:") {
        text.push_str("traffic:\n  - constant: { rps: 10 }\n");
    }
    text.push_str(body);
    if !body.contains("policies:") {
        text.push_str("policies:\n  - { name: rr, balancer: round_robin }\n");
    }
    scenario::parse("test.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// `got` is `want` up to rounding.
#[track_caller]
pub(super) fn approx(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{got} is not {want}"
    );
}
