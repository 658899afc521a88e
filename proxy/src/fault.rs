//! Fault injection of a route (Envoy's HTTP fault filter), compiled.
//!
//! A route's [`FaultConfig`](crate::config::FaultConfig) becomes a [`Fault`] when the
//! configuration is applied: statuses parsed, counters resolved. Per request it costs a random
//! draw per configured fault (fastrand's thread-local generator) and, with header-controlled
//! faults, a header lookup or two. The request path ([`crate::forward`]) asks [`Fault::delay`]
//! first and, after sleeping that long, [`Fault::abort`], as Envoy's filter does; an aborted
//! request is answered here and never reaches an upstream.
//!
//! Faulted requests are counted on the listener while they last (`gofe_fault_active`): with
//! `max_active_faults`, a fault that would exceed it is not injected (counted in
//! `gofe_fault_overflow_total`), as in Envoy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use prometheus::{IntCounter, IntGauge};

use crate::body::ProxyBody;
use crate::config::fault::FaultConfig;
use crate::config::FractionalPercent;

static ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
static ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
static ABORT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
static DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
static DELAY_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Envoy's body (and gRPC message) of an aborted request.
const ABORT_BODY: &str = "fault filter abort";

/// A listener's faulted requests of the moment, shared by its routes.
pub(crate) struct ActiveFaults {
    count: AtomicU64,
    gauge: IntGauge,
}

impl ActiveFaults {
    /// A count mirrored in `gauge` (`gofe_fault_active{listener}`).
    pub(crate) fn new(gauge: IntGauge) -> Arc<Self> {
        Arc::new(ActiveFaults {
            count: AtomicU64::new(0),
            gauge,
        })
    }
}

/// One faulted request's place in its listener's count; leaving drops it.
pub(crate) struct FaultGuard(Arc<ActiveFaults>);

impl Drop for FaultGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// A fraction, `numerator` out of `denominator` (checked at most 1).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Percent {
    numerator: u32,
    denominator: u32,
}

impl Percent {
    /// The fraction a configuration says.
    pub(crate) fn new(p: &FractionalPercent) -> Self {
        Percent {
            numerator: p.numerator,
            denominator: p.denominator.value(),
        }
    }

    /// This fraction with the numerator a request's header asks for, never more than the
    /// configured one (Envoy's header percentage); a missing or unreadable header leaves it.
    fn lowered_by(self, header: Option<&HeaderValue>) -> Self {
        match header.and_then(parse::<u32>) {
            Some(n) => Percent {
                numerator: n.min(self.numerator),
                ..self
            },
            None => self,
        }
    }

    /// One draw: true for `numerator` out of `denominator` requests.
    #[inline]
    pub(crate) fn draw(self) -> bool {
        self.numerator > 0
            && (self.numerator >= self.denominator
                || fastrand::u32(..self.denominator) < self.numerator)
    }
}

fn parse<T: std::str::FromStr>(v: &HeaderValue) -> Option<T> {
    v.to_str().ok()?.trim().parse().ok()
}

enum DelayKind {
    Fixed(Duration),
    Header,
}

enum AbortKind {
    Http(StatusCode),
    Grpc(u32),
    Header,
}

/// A route's compiled fault injection.
pub(crate) struct Fault {
    delay: Option<(DelayKind, Percent)>,
    abort: Option<(AbortKind, Percent)>,
    max_active: u64,
    active: Arc<ActiveFaults>,
    /// `gofe_fault_injected_total{route,kind="delay"}`.
    delays: IntCounter,
    /// `gofe_fault_injected_total{route,kind="abort"}`.
    aborts: IntCounter,
    /// `gofe_fault_overflow_total{route}`.
    overflow: IntCounter,
}

/// The counters a route's faults are counted in.
pub(crate) struct FaultCounters {
    /// Delays injected.
    pub(crate) delays: IntCounter,
    /// Aborts injected.
    pub(crate) aborts: IntCounter,
    /// Faults not injected because `max_active_faults` were active.
    pub(crate) overflow: IntCounter,
}

impl Fault {
    /// Compiles a validated fault configuration.
    pub(crate) fn build(
        config: &FaultConfig,
        active: Arc<ActiveFaults>,
        counters: FaultCounters,
    ) -> Result<Self, String> {
        let delay = match &config.delay {
            None => None,
            Some(d) => {
                let kind = match (d.fixed_delay, d.header_delay) {
                    (Some(t), None) => DelayKind::Fixed(t),
                    (None, Some(_)) => DelayKind::Header,
                    _ => return Err("a fault delay needs fixed_delay or header_delay".into()),
                };
                Some((kind, Percent::new(&d.percentage)))
            }
        };
        let abort = match &config.abort {
            None => None,
            Some(a) => {
                let kind = match (a.http_status, a.grpc_status, a.header_abort) {
                    (Some(s), None, None) => AbortKind::Http(
                        u16::try_from(s)
                            .ok()
                            .filter(|s| (200..600).contains(s))
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .ok_or_else(|| format!("fault abort status {s} out of 200..=599"))?,
                    ),
                    (None, Some(s), None) => AbortKind::Grpc(s),
                    (None, None, Some(_)) => AbortKind::Header,
                    _ => return Err("a fault abort needs exactly one kind".into()),
                };
                Some((kind, Percent::new(&a.percentage)))
            }
        };
        Ok(Fault {
            delay,
            abort,
            max_active: config.max_active_faults.map_or(u64::MAX, u64::from),
            active,
            delays: counters.delays,
            aborts: counters.aborts,
            overflow: counters.overflow,
        })
    }

    /// Counts the request as faulted (once, however many faults it gets) unless
    /// `max_active_faults` are already; an overflow is counted.
    fn enter(&self, guard: &mut Option<FaultGuard>) -> bool {
        if guard.is_some() {
            return true;
        }
        let before = self.active.count.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_active {
            self.active.count.fetch_sub(1, Ordering::AcqRel);
            self.overflow.inc();
            return false;
        }
        self.active.gauge.inc();
        *guard = Some(FaultGuard(Arc::clone(&self.active)));
        true
    }

    /// The delay this request gets, if it is drawn (and within `max_active_faults`).
    pub(crate) fn delay(
        &self,
        headers: &HeaderMap,
        guard: &mut Option<FaultGuard>,
    ) -> Option<Duration> {
        let (kind, percent) = self.delay.as_ref()?;
        let duration = match kind {
            DelayKind::Fixed(t) => {
                if !percent.draw() {
                    return None;
                }
                *t
            }
            DelayKind::Header => {
                if !percent.lowered_by(headers.get(&DELAY_PERCENTAGE)).draw() {
                    return None;
                }
                Duration::from_millis(headers.get(&DELAY_REQUEST).and_then(parse::<u64>)?)
            }
        };
        if !self.enter(guard) {
            return None;
        }
        self.delays.inc();
        Some(duration)
    }

    /// The reply this request is aborted with, if it is drawn (and within
    /// `max_active_faults`).
    pub(crate) fn abort(
        &self,
        headers: &HeaderMap,
        guard: &mut Option<FaultGuard>,
    ) -> Option<Response<ProxyBody>> {
        let (kind, percent) = self.abort.as_ref()?;
        let (status, grpc) = match kind {
            AbortKind::Http(s) => {
                if !percent.draw() {
                    return None;
                }
                (*s, None)
            }
            AbortKind::Grpc(g) => {
                if !percent.draw() {
                    return None;
                }
                (StatusCode::OK, Some(*g))
            }
            AbortKind::Header => {
                if !percent.lowered_by(headers.get(&ABORT_PERCENTAGE)).draw() {
                    return None;
                }
                // The HTTP status header wins over the gRPC one, as in Envoy.
                let http = headers
                    .get(&ABORT_REQUEST)
                    .and_then(parse::<u16>)
                    .filter(|s| (200..600).contains(s))
                    .and_then(|s| StatusCode::from_u16(s).ok());
                match http {
                    Some(s) => (s, None),
                    None => (
                        StatusCode::OK,
                        Some(headers.get(&ABORT_GRPC_REQUEST).and_then(parse::<u32>)?),
                    ),
                }
            }
        };
        if !self.enter(guard) {
            return None;
        }
        self.aborts.inc();
        Some(local_reply(headers, status, grpc, ABORT_BODY))
    }
}

/// Whether a request is gRPC (its content type `application/grpc…`).
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status Envoy maps an HTTP status to (its `httpToGrpcStatus`).
fn grpc_status_of(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// A local reply as Envoy's `sendLocalReply` makes one: for a gRPC request, HTTP 200 with
/// `grpc-status` (the given one, else the HTTP status's) and `grpc-message`, no body; for any
/// other, the HTTP status with `body`.
pub(crate) fn local_reply(
    request: &HeaderMap,
    status: StatusCode,
    grpc: Option<u32>,
    body: &'static str,
) -> Response<ProxyBody> {
    if is_grpc(request) {
        let mut r = Response::new(ProxyBody::empty());
        let code = grpc.unwrap_or_else(|| grpc_status_of(status));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(&GRPC_STATUS, HeaderValue::from(code));
        h.insert(&GRPC_MESSAGE, HeaderValue::from_static(body));
        return r;
    }
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fault::Denominator;
    use crate::config::fault::{FaultAbortConfig, FaultDelayConfig, HeaderControlled};

    fn counters() -> FaultCounters {
        let c = |n: &str| IntCounter::new(n, "test").unwrap();
        FaultCounters {
            delays: c("d"),
            aborts: c("a"),
            overflow: c("o"),
        }
    }

    fn fault(config: FaultConfig) -> Fault {
        let gauge = IntGauge::new("active", "test").unwrap();
        Fault::build(&config, ActiveFaults::new(gauge), counters()).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// `n` draws at `p` land within five standard deviations of `n·p`.
    fn assert_binomial(hits: u64, n: u64, p: f64) {
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (hits as f64 - mean).abs() <= 5.0 * sd,
            "{hits} of {n} at {p}: expected {mean} ± {}",
            5.0 * sd
        );
    }

    #[test]
    fn percentages_hold_within_a_statistical_bound() {
        let f = fault(FaultConfig {
            abort: Some(FaultAbortConfig {
                http_status: Some(503),
                percentage: FractionalPercent {
                    numerator: 2500,
                    denominator: Denominator::TenThousand,
                },
                ..Default::default()
            }),
            ..Default::default()
        });
        let h = HeaderMap::new();
        let n = 10_000;
        let hits = (0..n).filter(|_| f.abort(&h, &mut None).is_some()).count() as u64;
        assert_binomial(hits, n, 0.25);
        assert_eq!(f.aborts.get(), hits);
        assert_eq!(f.active.count.load(Ordering::Relaxed), 0, "guards dropped");
    }

    #[test]
    fn none_and_all_are_exact() {
        let p = |n| Percent::new(&FractionalPercent::percent(n));
        assert!((0..1000).all(|_| !p(0).draw()));
        assert!((0..1000).all(|_| p(100).draw()));
        // A header lowers the percentage, never raises it.
        let v = HeaderValue::from_static("0");
        assert!((0..1000).all(|_| !p(100).lowered_by(Some(&v)).draw()));
        let v = HeaderValue::from_static("100");
        assert!((0..1000).all(|_| !p(0).lowered_by(Some(&v)).draw()));
        let v = HeaderValue::from_static("junk");
        assert!(p(100).lowered_by(Some(&v)).draw());
    }

    #[test]
    fn header_faults_read_the_request() {
        let f = fault(FaultConfig {
            delay: Some(FaultDelayConfig {
                header_delay: Some(HeaderControlled {}),
                percentage: FractionalPercent::percent(100),
                ..Default::default()
            }),
            abort: Some(FaultAbortConfig {
                header_abort: Some(HeaderControlled {}),
                percentage: FractionalPercent::percent(100),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut g = None;
        assert_eq!(f.delay(&HeaderMap::new(), &mut g), None);
        assert!(f.abort(&HeaderMap::new(), &mut g).is_none());
        assert!(g.is_none(), "nothing injected, nothing active");
        let h = headers(&[
            ("x-envoy-fault-delay-request", "150"),
            ("x-envoy-fault-abort-request", "418"),
            ("x-envoy-fault-abort-grpc-request", "5"),
        ]);
        assert_eq!(f.delay(&h, &mut g), Some(Duration::from_millis(150)));
        let r = f.abort(&h, &mut g).unwrap();
        assert_eq!(r.status(), 418, "the HTTP header wins");
        assert_eq!(f.active.count.load(Ordering::Relaxed), 1, "one per request");
        drop(g);
        assert_eq!(f.active.count.load(Ordering::Relaxed), 0);
        // A gRPC request: 200 with the header's gRPC status.
        let h = headers(&[
            ("x-envoy-fault-abort-grpc-request", "5"),
            ("content-type", "application/grpc"),
        ]);
        let r = f.abort(&h, &mut None).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "5");
        assert_eq!(r.headers()["grpc-message"], "fault filter abort");
        // Out of range: no abort.
        let h = headers(&[("x-envoy-fault-abort-request", "700")]);
        assert!(f.abort(&h, &mut None).is_none());
        // A percentage header of 0 turns it off for this request.
        let h = headers(&[
            ("x-envoy-fault-abort-request", "503"),
            ("x-envoy-fault-abort-request-percentage", "0"),
        ]);
        assert!(f.abort(&h, &mut None).is_none());
    }

    #[test]
    fn an_http_abort_of_a_grpc_request_maps_its_status() {
        let f = fault(FaultConfig {
            abort: Some(FaultAbortConfig {
                http_status: Some(503),
                percentage: FractionalPercent::percent(100),
                ..Default::default()
            }),
            ..Default::default()
        });
        let r = f
            .abort(
                &headers(&[("content-type", "application/grpc+proto")]),
                &mut None,
            )
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        let r = f.abort(&HeaderMap::new(), &mut None).unwrap();
        assert_eq!(r.status(), 503);
    }

    #[test]
    fn max_active_faults_overflow_is_counted() {
        let f = fault(FaultConfig {
            delay: Some(FaultDelayConfig {
                fixed_delay: Some(Duration::from_secs(1)),
                percentage: FractionalPercent::percent(100),
                ..Default::default()
            }),
            max_active_faults: Some(2),
            ..Default::default()
        });
        let h = HeaderMap::new();
        let mut guards: Vec<Option<FaultGuard>> = (0..3).map(|_| None).collect();
        let delays: Vec<_> = guards.iter_mut().map(|g| f.delay(&h, g)).collect();
        assert_eq!(
            delays,
            [
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(1)),
                None
            ]
        );
        assert_eq!(f.overflow.get(), 1);
        assert_eq!(f.delays.get(), 2);
        assert_eq!(f.active.gauge.get(), 2);
        guards.clear();
        assert_eq!(f.active.gauge.get(), 0);
        assert!(f.delay(&h, &mut None).is_some(), "room again");
    }
}
