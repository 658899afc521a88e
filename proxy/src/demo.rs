//! A tiny HTTP backend for `gofe up`, benchmarks and tests.
//!
//! It speaks HTTP/1.1 and h2c and answers every request with `hello from NAME` and an
//! `x-backend: NAME` header, so a client can see where the proxy sent it. Request headers steer it:
//! `x-demo-status: 503` picks the status, `x-demo-delay: 250ms` delays the answer. A path ending
//! in `/echo` streams the request body back as it arrives; one ending in `/headers` lists the
//! request headers it received (after `:authority`, when the request had one); one ending in
//! `/count` reads the whole request body before it answers, with the body's length in bytes
//! (so it never answers a request whose body broke).
//!
//! Its faults can change while it runs, from code ([`DemoBackend::set_failure`], …) or over
//! HTTP on a control listener of its own ([`DemoBackend::serve_control`], `gofe backend
//! --control ADDR`): `GET /fault` shows them, `POST /fault?fail_ratio=0.5&fail_status=503&delay=50ms`
//! changes them (each parameter optional), so an experiment needs no restart;
//! `extra_delay=200ms&extra_delay_ratio=0.1` delays a random tenth of answers further (the delay
//! of an Envoy-style fault, as `gofe up` plays a scenario's `http_fault`). `broken=reset`
//! (or `garbage`, `half-close`, `silent`, and `no` to behave again) breaks new connections at
//! the protocol level ([`Broken`]; `gofe backend --broken MODE` from the start).
//!
//! A capacity makes it behave like a loaded server ([`DemoBackend::set_capacity`], `capacity=RPS`
//! on the control endpoint): requests are served one after another at that rate, each waiting
//! in a queue for its turn (so latency rises with load, as a saturated server's does), and a
//! request whose wait would exceed [`MAX_QUEUE_WAIT`] is answered at once with 503 `overloaded`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::ProxyBody;

/// A running demo backend.
pub struct DemoBackend {
    addr: SocketAddr,
    faults: Arc<Faults>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How a broken backend misbehaves on each new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// Behaves.
    No = 0,
    /// Reads the request, then resets the connection (TCP RST) without answering.
    Reset = 1,
    /// Answers with bytes that are not HTTP, then closes.
    Garbage = 2,
    /// Closes its sending side (FIN) without answering.
    HalfClose = 3,
    /// Accepts, reads the request and never answers (the connection stays open until the
    /// client gives up, or for a minute at most).
    Silent = 4,
}

impl Broken {
    /// Every mode, as [`Broken::as_str`] names them.
    pub const ALL: [Broken; 5] = [
        Broken::No,
        Broken::Reset,
        Broken::Garbage,
        Broken::HalfClose,
        Broken::Silent,
    ];

    /// The mode's name: `no`, `reset`, `garbage`, `half-close`, `silent` (what `gofe backend
    /// --broken` and the control endpoint's `broken=` take).
    pub fn as_str(self) -> &'static str {
        match self {
            Broken::No => "no",
            Broken::Reset => "reset",
            Broken::Garbage => "garbage",
            Broken::HalfClose => "half-close",
            Broken::Silent => "silent",
        }
    }

    fn from_u8(v: u8) -> Broken {
        Broken::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(Broken::No)
    }
}

impl std::str::FromStr for Broken {
    type Err = String;

    fn from_str(text: &str) -> Result<Broken, String> {
        Broken::ALL
            .into_iter()
            .find(|b| b.as_str() == text)
            .ok_or_else(|| {
                format!("broken: {text:?} is not one of no, reset, garbage, half-close, silent")
            })
    }
}

/// The longest a request waits for its turn on a backend with a capacity; beyond it the
/// backend answers 503 at once (shedding load, as an overloaded server with a bounded queue).
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(1);

/// Faults switched on at run time.
struct Faults {
    delay_us: AtomicU64,
    /// A further delay for a random share of requests (a fault's delay), in µs.
    extra_delay_us: AtomicU64,
    /// That share, in millionths.
    extra_delay_ppm: AtomicU64,
    /// Fraction of requests that fail, in millionths.
    fail_ppm: AtomicU64,
    fail_status: AtomicU16,
    broken: AtomicU8,
    /// Told when the connections must break: open connections close (gracefully) so that
    /// the next request opens a new one, which misbehaves.
    broke: watch::Sender<u64>,
    served: AtomicU64,
    /// Requests served per second at most, in thousandths (0: unlimited).
    capacity_milli: AtomicU64,
    /// When the queue is next free, in ns after `epoch`.
    next_free_ns: AtomicU64,
    epoch: Instant,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            delay_us: AtomicU64::new(0),
            extra_delay_us: AtomicU64::new(0),
            extra_delay_ppm: AtomicU64::new(0),
            fail_ppm: AtomicU64::new(0),
            fail_status: AtomicU16::new(0),
            broken: AtomicU8::new(0),
            broke: watch::channel(0).0,
            served: AtomicU64::new(0),
            capacity_milli: AtomicU64::new(0),
            next_free_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// A backend's faults as the control endpoint reads and writes them.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct FaultSettings {
    /// Share of requests that fail (0–1).
    pub fail_ratio: f64,
    /// Status of failed requests.
    pub fail_status: u16,
    /// Delay of every answer, in seconds.
    pub delay_seconds: f64,
    /// A further delay of a random share of answers (a fault's delay, as Envoy's fault filter
    /// draws it), in seconds.
    pub extra_delay_seconds: f64,
    /// That share (0–1).
    pub extra_delay_ratio: f64,
    /// Requests per second served at most (0: unlimited).
    pub capacity_rps: f64,
    /// How new connections misbehave ([`Broken::as_str`]; `no` when they behave).
    pub broken: &'static str,
}

impl Faults {
    fn settings(&self) -> FaultSettings {
        FaultSettings {
            fail_ratio: self.fail_ppm.load(Ordering::Relaxed) as f64 / 1_000_000.0,
            fail_status: self.fail_status.load(Ordering::Relaxed),
            delay_seconds: self.delay_us.load(Ordering::Relaxed) as f64 / 1e6,
            extra_delay_seconds: self.extra_delay_us.load(Ordering::Relaxed) as f64 / 1e6,
            extra_delay_ratio: self.extra_delay_ppm.load(Ordering::Relaxed) as f64 / 1_000_000.0,
            capacity_rps: self.capacity_milli.load(Ordering::Relaxed) as f64 / 1000.0,
            broken: Broken::from_u8(self.broken.load(Ordering::Relaxed)).as_str(),
        }
    }

    fn set_capacity(&self, rps: f64) {
        let milli = (rps.max(0.0) * 1000.0).round() as u64;
        self.capacity_milli.store(milli, Ordering::Relaxed);
    }

    /// Takes this request's turn in the queue: how long it waits, or `None` when the wait would
    /// exceed [`MAX_QUEUE_WAIT`] (the request is shed and takes no turn).
    fn queue_turn(&self) -> Option<Duration> {
        self.queue_turn_at(u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// [`Faults::queue_turn`] at `now` (ns after `epoch`).
    fn queue_turn_at(&self, now: u64) -> Option<Duration> {
        let milli = self.capacity_milli.load(Ordering::Relaxed);
        if milli == 0 {
            return Some(Duration::ZERO);
        }
        let service_ns = 1_000_000_000_000 / milli;
        let max_wait = MAX_QUEUE_WAIT.as_nanos() as u64;
        let mut current = self.next_free_ns.load(Ordering::Relaxed);
        loop {
            let start = current.max(now);
            let wait = start - now;
            if wait > max_wait {
                return None;
            }
            match self.next_free_ns.compare_exchange_weak(
                current,
                start + service_ns,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Duration::from_nanos(wait)),
                Err(seen) => current = seen,
            }
        }
    }

    fn set_failure(&self, ratio: f64, status: u16) {
        let ppm = (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.fail_status.store(status, Ordering::Relaxed);
        self.fail_ppm.store(ppm, Ordering::Relaxed);
    }

    fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(us, Ordering::Relaxed);
    }

    fn set_extra_delay(&self, delay: Duration, ratio: f64) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let ppm = (ratio.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.extra_delay_us.store(us, Ordering::Relaxed);
        self.extra_delay_ppm.store(ppm, Ordering::Relaxed);
    }

    /// The further delay this request draws: zero unless it falls in the share.
    fn extra_delay(&self) -> Duration {
        let ppm = self.extra_delay_ppm.load(Ordering::Relaxed);
        if ppm == 0 || fastrand::u64(..1_000_000) >= ppm {
            return Duration::ZERO;
        }
        Duration::from_micros(self.extra_delay_us.load(Ordering::Relaxed))
    }

    /// Applies `fail_ratio`, `fail_status`, `delay`, `extra_delay`, `extra_delay_ratio`,
    /// `capacity` and `broken` from a query string; every value is
    /// checked before any is applied, so a bad request changes nothing.
    fn apply_query(&self, query: &str) -> Result<FaultSettings, String> {
        let mut next = self.settings();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "fail_ratio" => next.fail_ratio = check_fail_ratio(value)?,
                "fail_status" => {
                    next.fail_status = value
                        .parse::<u16>()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| {
                            format!("fail_status: {value:?} is not an HTTP status (100-599)")
                        })?;
                }
                "delay" => {
                    next.delay_seconds = gofe_model::parse_duration(value)
                        .map_err(|e| format!("delay: {e}"))?
                        .as_secs_f64();
                }
                "extra_delay" => {
                    next.extra_delay_seconds = gofe_model::parse_duration(value)
                        .map_err(|e| format!("extra_delay: {e}"))?
                        .as_secs_f64();
                }
                "extra_delay_ratio" => {
                    next.extra_delay_ratio = check_fail_ratio(value)
                        .map_err(|e| e.replacen("fail_ratio", "extra_delay_ratio", 1))?;
                }
                "capacity" => next.capacity_rps = check_capacity(value)?,
                "broken" => next.broken = value.parse::<Broken>()?.as_str(),
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (fail_ratio, fail_status, delay, extra_delay, extra_delay_ratio, capacity, broken)"
                    ))
                }
            }
        }
        self.set_failure(next.fail_ratio, next.fail_status);
        self.set_delay(Duration::from_secs_f64(next.delay_seconds));
        self.set_extra_delay(
            Duration::from_secs_f64(next.extra_delay_seconds),
            next.extra_delay_ratio,
        );
        self.set_capacity(next.capacity_rps);
        self.set_broken(next.broken.parse::<Broken>().unwrap_or(Broken::No));
        Ok(self.settings())
    }

    /// Breaks new connections as `broken` says; unless it is [`Broken::No`], the open ones
    /// close (in-flight requests finish first) so that the next request meets the fault.
    fn set_broken(&self, broken: Broken) {
        self.broken.store(broken as u8, Ordering::Relaxed);
        if broken != Broken::No {
            self.broke.send_modify(|n| *n += 1);
        }
    }

    /// Whether request number `n` fails: exactly `fail_ppm` per million, evenly spread.
    fn fails(&self, n: u64) -> bool {
        let ppm = self.fail_ppm.load(Ordering::Relaxed);
        ppm > 0 && (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000
    }
}

impl DemoBackend {
    /// Binds `addr` and starts serving as `name`. Must be called inside a Tokio runtime.
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let name: Arc<HeaderValue> = Arc::new(
            HeaderValue::from_str(name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        );
        let (stop, mut stopped) = watch::channel(false);
        let faults = Arc::new(Faults::default());
        let shared_faults = Arc::clone(&faults);
        let task = tokio::spawn(async move {
            let faults = shared_faults;
            let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
            loop {
                let tcp = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let _ = tcp.set_nodelay(true);
                match faults.broken.load(Ordering::Relaxed) {
                    1 => {
                        tokio::spawn(async move {
                            // Take the request, then reset: linger 0 makes close send RST
                            // at once (so it cannot block here).
                            let mut tcp = tcp;
                            let mut buf = [0u8; 1024];
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
                            )
                            .await;
                            #[allow(deprecated)]
                            let _ = tcp.set_linger(Some(Duration::ZERO));
                        });
                        continue;
                    }
                    2 => {
                        tokio::spawn(async move {
                            let mut tcp = tcp;
                            let _ = tcp.write_all(b"\x00\x01 this is not http\r\n\r\n").await;
                            let _ = tcp.shutdown().await;
                        });
                        continue;
                    }
                    3 => {
                        tokio::spawn(async move {
                            let mut tcp = tcp;
                            let _ = tcp.shutdown().await;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        });
                        continue;
                    }
                    4 => {
                        let mut stopped = stopped.clone();
                        tokio::spawn(async move {
                            // Read whatever comes and never answer, until the client gives up,
                            // the backend stops, or a minute has passed.
                            let mut tcp = tcp;
                            let mut buf = [0u8; 4096];
                            let silence = async {
                                while let Ok(n) =
                                    tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await
                                {
                                    if n == 0 {
                                        break;
                                    }
                                }
                            };
                            tokio::select! {
                                _ = silence => {}
                                _ = stopped.changed() => {}
                                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                            }
                        });
                        continue;
                    }
                    _ => {}
                }
                let name = Arc::clone(&name);
                let faults = Arc::clone(&faults);
                let http = Arc::clone(&http);
                let mut stopped = stopped.clone();
                let mut broke = faults.broke.subscribe();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| answer(req, Arc::clone(&name), Arc::clone(&faults)));
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped.changed() => {}
                        _ = broke.changed() => {
                            conn.as_mut().graceful_shutdown();
                            tokio::select! {
                                _ = conn.as_mut() => {}
                                _ = stopped.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        Ok(DemoBackend {
            addr,
            faults,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Delays every answer by `delay` (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        self.faults.set_delay(delay);
    }

    /// Answers `ratio` (0.0–1.0) of requests, evenly spread, with `status` instead of 200.
    pub fn set_failure(&self, ratio: f64, status: u16) {
        self.faults.set_failure(ratio, status);
    }

    /// Serves at most `rps` requests per second, queueing the rest (0: unlimited; see the
    /// module's documentation).
    pub fn set_capacity(&self, rps: f64) {
        self.faults.set_capacity(rps);
    }

    /// Serves the control endpoint (`/fault`) for this backend on `listener` until the
    /// backend stops.
    pub fn serve_control(&self, listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(serve_control(
            listener,
            Arc::clone(&self.faults),
            self.stop.subscribe(),
        ))
    }

    /// Makes new connections misbehave at the protocol level (see [`Broken`]); open ones
    /// close once their in-flight requests are answered, so the fault is met at once.
    pub fn set_broken(&self, broken: Broken) {
        self.faults.set_broken(broken);
    }

    /// Requests answered so far (not counting connections refused by [`set_broken`]).
    ///
    /// [`set_broken`]: Self::set_broken
    pub fn served(&self) -> u64 {
        self.faults.served.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes open connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// `fail_ratio` as text, in 0..=1.
pub fn check_fail_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "fail_ratio: {text:?} is not a ratio between 0 and 1"
        )),
    }
}

/// `capacity` as text: requests per second, 0 (unlimited) or at least 0.001.
pub fn check_capacity(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r == 0.0 || (r.is_finite() && r >= 0.001) => Ok(r),
        _ => Err(format!(
            "capacity: {text:?} is not a rate in requests per second (0 for unlimited)"
        )),
    }
}

/// The control endpoint: `GET /fault` shows the faults as JSON, `POST /fault?…` changes them
/// (400 with the reason for a bad value, 404 elsewhere, 405 for other methods).
async fn serve_control(
    listener: TcpListener,
    faults: Arc<Faults>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let faults = Arc::clone(&faults);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let faults = Arc::clone(&faults);
                async move { Ok::<_, Infallible>(control(&req, &faults)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn control(req: &Request<Incoming>, faults: &Faults) -> Response<ProxyBody> {
    let reply = |status: StatusCode, text: String| {
        let mut r = Response::new(ProxyBody::full(text));
        *r.status_mut() = status;
        r
    };
    let json = |s: FaultSettings| serde_json::to_string(&s).unwrap_or_default() + "\n";
    if req.uri().path() != "/fault" {
        return reply(StatusCode::NOT_FOUND, "only /fault here\n".into());
    }
    match *req.method() {
        http::Method::GET => reply(StatusCode::OK, json(faults.settings())),
        http::Method::POST | http::Method::PUT => {
            match faults.apply_query(req.uri().query().unwrap_or("")) {
                Ok(s) => {
                    tracing::info!(
                        fail_ratio = s.fail_ratio,
                        fail_status = s.fail_status,
                        delay_seconds = s.delay_seconds,
                        capacity_rps = s.capacity_rps,
                        broken = s.broken,
                        "demo backend faults changed"
                    );
                    reply(StatusCode::OK, json(s))
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, e + "\n"),
            }
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n".into()),
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<HeaderValue>,
    faults: Arc<Faults>,
) -> Result<Response<ProxyBody>, Infallible> {
    let Some(wait) = faults.queue_turn() else {
        let mut r = Response::new(ProxyBody::full("overloaded\n"));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut()
            .insert("x-backend", HeaderValue::clone(&name));
        return Ok(r);
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let n = faults.served.fetch_add(1, Ordering::Relaxed);
    let delay = faults.delay_us.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_micros(delay)).await;
    }
    let extra = faults.extra_delay();
    if !extra.is_zero() {
        tokio::time::sleep(extra).await;
    }
    let failed = faults.fails(n);
    let status = req
        .headers()
        .get("x-demo-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let status = if failed {
        StatusCode::from_u16(faults.fail_status.load(Ordering::Relaxed))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        status
    };
    if let Some(delay) = req
        .headers()
        .get("x-demo-delay")
        .and_then(|v| gofe_model::parse_duration(v.to_str().ok()?).ok())
    {
        tokio::time::sleep(delay).await;
    }
    let path = req.uri().path();
    if path.ends_with("/count") {
        let mut response = match req.into_body().collect().await {
            Ok(body) => Response::new(ProxyBody::full(format!("{}\n", body.to_bytes().len()))),
            Err(_) => {
                let mut r = Response::new(ProxyBody::full("request body broke\n"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        };
        if response.status() == StatusCode::OK {
            *response.status_mut() = status;
        }
        response
            .headers_mut()
            .insert("x-backend", HeaderValue::clone(&name));
        return Ok(response);
    }
    let body = if path.ends_with("/echo") {
        ProxyBody::stream(req.into_body())
    } else if path.ends_with("/headers") {
        {
            let mut text = String::new();
            // An HTTP/2 request's authority is no header; show it first, as the server saw it.
            if let Some(a) = req.uri().authority() {
                text.push_str(":authority: ");
                text.push_str(a.as_str());
                text.push('\n');
            }
            for (k, v) in req.headers() {
                text.push_str(k.as_str());
                text.push_str(": ");
                text.push_str(&String::from_utf8_lossy(v.as_bytes()));
                text.push('\n');
            }
            ProxyBody::full(text)
        }
    } else {
        let mut text = b"hello from ".to_vec();
        text.extend_from_slice(name.as_bytes());
        text.push(b'\n');
        ProxyBody::full(Bytes::from(text))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", HeaderValue::clone(&name));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_queries_change_faults_all_or_nothing() {
        let f = Faults::default();
        let s = f
            .apply_query("fail_ratio=0.25&fail_status=503&delay=20ms")
            .unwrap();
        assert_eq!((s.fail_ratio, s.fail_status), (0.25, 503));
        assert!((s.delay_seconds - 0.02).abs() < 1e-9);
        for bad in [
            "fail_ratio=1.5",
            "fail_ratio=-0.1",
            "fail_status=700",
            "delay=5",
            "what=1",
        ] {
            assert!(f.apply_query(bad).is_err(), "{bad}");
        }
        assert!(f.apply_query("fail_ratio=0&fail_status=99").is_err());
        assert_eq!(
            f.settings().fail_ratio,
            0.25,
            "a refused request changed nothing"
        );
        assert!(check_fail_ratio("1").is_ok() && check_fail_ratio("2").is_err());
        assert!(f.apply_query("capacity=-1").is_err() && f.apply_query("capacity=x").is_err());
        assert_eq!(f.apply_query("capacity=60").unwrap().capacity_rps, 60.0);
        let s = f
            .apply_query("extra_delay=300ms&extra_delay_ratio=0.5")
            .unwrap();
        assert!((s.extra_delay_seconds - 0.3).abs() < 1e-9 && s.extra_delay_ratio == 0.5);
        let e = f.apply_query("extra_delay_ratio=2").unwrap_err();
        assert!(e.starts_with("extra_delay_ratio:"), "{e}");
        assert!(f.apply_query("extra_delay=soon").is_err());
        // A random half of 2,000 draws is delayed: within 6 σ (σ = √(2000 · ¼) ≈ 22).
        let delayed = (0..2000).filter(|_| !f.extra_delay().is_zero()).count();
        assert!((1000usize.abs_diff(delayed)) < 6 * 23, "{delayed} of 2000");
        f.apply_query("extra_delay_ratio=0").unwrap();
        assert!((0..100).all(|_| f.extra_delay().is_zero()));
        for b in Broken::ALL {
            let s = f.apply_query(&format!("broken={}", b.as_str())).unwrap();
            assert_eq!(s.broken, b.as_str());
            assert_eq!(Broken::from_u8(f.broken.load(Ordering::Relaxed)), b);
        }
        assert!(f.apply_query("broken=reset&fail_ratio=7").is_err());
        assert_eq!(
            f.settings().broken,
            "silent",
            "a refused request changed nothing"
        );
        assert!(f.apply_query("broken=sometimes").is_err());
    }

    #[test]
    fn a_capacity_queues_requests_at_its_rate_and_sheds_beyond_the_longest_wait() {
        let f = Faults::default();
        assert_eq!(
            f.queue_turn_at(0),
            Some(Duration::ZERO),
            "unlimited by default"
        );
        f.set_capacity(10.0); // one request per 100 ms
        let ms = |n: u64| n * 1_000_000;
        let now = ms(5_000);
        // A burst at one instant: each waits one service time more than the one before, up to
        // the longest wait (1 s = 10 turns); the rest are shed and take no turn.
        let waits: Vec<Option<Duration>> = (0..13).map(|_| f.queue_turn_at(now)).collect();
        for (k, w) in waits.iter().take(11).enumerate() {
            assert_eq!(*w, Some(Duration::from_millis(100 * k as u64)), "turn {k}");
        }
        assert_eq!(waits[11], None);
        assert_eq!(waits[12], None);
        // Once the queue drains, a request is served at once again.
        assert_eq!(f.queue_turn_at(now + ms(1_200)), Some(Duration::ZERO));
        // Offered at exactly the capacity, nobody waits.
        let later = now + ms(10_000);
        for k in 0..50 {
            assert_eq!(f.queue_turn_at(later + ms(100 * k)), Some(Duration::ZERO));
        }
    }

    #[test]
    fn failure_ratio_is_exact_and_spread() {
        let f = Faults::default();
        f.fail_ppm.store(500_000, Ordering::Relaxed);
        let pattern: Vec<bool> = (0..6).map(|n| f.fails(n)).collect();
        assert_eq!(pattern, [false, true, false, true, false, true]);
        f.fail_ppm.store(250_000, Ordering::Relaxed);
        assert_eq!((0..1000).filter(|&n| f.fails(n)).count(), 250);
        f.fail_ppm.store(0, Ordering::Relaxed);
        assert!(!(0..1000).any(|n| f.fails(n)));
        f.fail_ppm.store(1_000_000, Ordering::Relaxed);
        assert!((0..1000).all(|n| f.fails(n)));
    }
}
