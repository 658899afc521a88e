//! The load generator: open loop (requests start on schedule whether or not earlier ones
//! have finished, as real users arrive), following the scenario's traffic curve, bounded in
//! flight, through the proxy. Each second's outcome is tallied for the view and the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Requests in flight at most; beyond it a due request is counted as `shed` (the generator
/// itself would be the bottleneck).
pub const MAX_IN_FLIGHT: usize = 4096;

/// One second of traffic.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Requests started.
    pub sent: u64,
    /// Answered 2xx–4xx.
    pub ok: u64,
    /// Answered 5xx, timed out or failed to connect.
    pub failed: u64,
    /// Not started: too many in flight.
    pub shed: u64,
    /// Latencies of finished requests, ms.
    pub latencies_ms: Vec<f64>,
    /// Answers per backend (the `x-backend` header).
    pub per_backend: BTreeMap<String, u64>,
}

impl Tally {
    /// The `q` quantile of the latencies (0 without any).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
}

/// The generator's shared counters: the current second, swapped out once a second.
#[derive(Default)]
pub struct Counters {
    current: Mutex<Tally>,
    in_flight: AtomicUsize,
}

impl Counters {
    fn with<R>(&self, f: impl FnOnce(&mut Tally) -> R) -> R {
        match self.current.lock() {
            Ok(mut t) => f(&mut t),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// What finished (or was shed) since the last call.
    pub fn take(&self) -> Tally {
        self.with(std::mem::take)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// The rate to send at, in requests per second, set by whoever follows the traffic curve.
#[derive(Debug, Default)]
pub struct Rate(AtomicU64);

impl Rate {
    /// Sets the rate (negative and non-finite rates are 0).
    pub fn set(&self, rps: f64) {
        let rps = if rps.is_finite() { rps.max(0.0) } else { 0.0 };
        self.0.store(rps.to_bits(), Ordering::Relaxed);
    }

    /// The rate.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Sends `rate` requests per second to `target` (path `/`) until `stop`.
pub async fn run(
    target: SocketAddr,
    timeout: Duration,
    counters: Arc<Counters>,
    rate: Arc<Rate>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let start = Instant::now();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let uri: http::Uri = match format!("http://{target}/").parse() {
        Ok(u) => u,
        Err(_) => return,
    };
    let tick = Duration::from_millis(10);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut due = 0.0_f64;
    let mut last = start.elapsed().as_secs_f64();
    while !*stop.borrow() {
        interval.tick().await;
        let now = start.elapsed().as_secs_f64();
        due += rate.get() * (now - last);
        last = now;
        while due >= 1.0 {
            due -= 1.0;
            if counters.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
                counters.with(|t| t.shed += 1);
                continue;
            }
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            counters.with(|t| t.sent += 1);
            let (client, uri, counters) = (client.clone(), uri.clone(), counters.clone());
            tokio::spawn(async move {
                let began = Instant::now();
                let outcome = tokio::time::timeout(timeout, async {
                    let resp = client.get(uri).await.map_err(|_| ())?;
                    let status = resp.status();
                    let backend = resp
                        .headers()
                        .get("x-backend")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    resp.into_body().collect().await.map_err(|_| ())?;
                    Ok::<_, ()>((status, backend))
                })
                .await;
                let ms = began.elapsed().as_secs_f64() * 1000.0;
                counters.with(|t| {
                    t.latencies_ms.push(ms);
                    match outcome {
                        Ok(Ok((status, backend))) if !status.is_server_error() => {
                            t.ok += 1;
                            if let Some(b) = backend {
                                *t.per_backend.entry(b).or_default() += 1;
                            }
                        }
                        _ => t.failed += 1,
                    }
                });
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let t = Tally {
            latencies_ms: (1..=100).map(f64::from).collect(),
            ..Tally::default()
        };
        assert_eq!(t.quantile_ms(0.5), 50.0);
        assert_eq!(t.quantile_ms(0.99), 99.0);
        assert_eq!(t.quantile_ms(1.0), 100.0);
        assert_eq!(Tally::default().quantile_ms(0.99), 0.0);
    }
}
