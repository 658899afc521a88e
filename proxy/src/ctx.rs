//! What the request path shares and every part of it may use: a client connection's context
//! ([`ConnContext`]: the client's address as headers want it, its request counters, its reusable
//! attempt timer) and the counting guards that keep gauges and limits honest until a response
//! body is done ([`ActiveGuard`], [`Admission`], [`StreamGuard`]).
//!
//! This is a leaf of the request path: it imports none of `listener`, `forward`, `route`,
//! `cluster`, `upstream` or `body`, so all of them can import it. Their imports form a DAG:
//!
//! ```text
//!   listener ─▶ forward ─▶ route ─▶ cluster ─▶ upstream ─▶ request_body
//!                  │                              ▲
//!                  └───────▶ body ────────────────┘      (and every one of them ─▶ ctx)
//! ```
//!
//! `body` names `upstream`'s response body among its kinds; `upstream` sends a
//! [`crate::request_body::RequestBody`], never a `ProxyBody`, so the two do not meet again.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Instant;

use http::HeaderValue;
use prometheus::IntGauge;

use crate::framing::ConflictCell;

// === impl ConnContext ===

/// What the proxy knows about one downstream connection.
pub(crate) struct ConnContext {
    /// The client's address (for access logs).
    pub(crate) peer: SocketAddr,
    /// The client's IP, ready to append to `x-forwarded-for`.
    pub(crate) client_ip: HeaderValue,
    /// Whether the client is on loopback or a private network (Envoy's "internal" request):
    /// only then is a client-supplied `x-request-id` kept.
    pub(crate) internal_client: bool,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub(crate) scheme: &'static str,
    /// Set by the connection's [`crate::framing::FramingWatch`] to the request whose head
    /// carried both `Content-Length` and `Transfer-Encoding` (which hyper hides from us).
    pub(crate) framing_conflict: ConflictCell,
    /// Requests started (high 32 bits, wrapping) and in flight (low 32 bits), in one word so
    /// that a request costs one atomic add at each end.
    streams: AtomicU64,
    /// The connection's reusable attempt timer (see [`TimerSlot`]).
    timer: TimerSlot,
    /// The port the connection came in on (its original destination's, for a captured one).
    pub(crate) local_port: u16,
    /// Whether the client presented a certificate that was verified at the handshake.
    pub(crate) authenticated: bool,
    /// The verified client certificate's identity (see [`crate::tls::peer_identity`]).
    pub(crate) identity: Option<Arc<str>>,
}

/// A connection's request counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Streams {
    /// Requests started so far (wrapping).
    pub(crate) started: u32,
    /// Requests whose response has not finished yet.
    pub(crate) open: u32,
}

const ONE_STARTED_AND_OPEN: u64 = (1 << 32) | 1;

impl ConnContext {
    /// The context of a connection from `peer`, over TLS or not.
    pub(crate) fn new(peer: SocketAddr, tls: bool) -> Self {
        let client = peer.ip();
        let client_ip = HeaderValue::from_str(&client.to_string())
            .expect("an IP address is a valid header value");
        ConnContext {
            peer,
            client_ip,
            internal_client: is_internal(client),
            scheme: if tls { "https" } else { "http" },
            framing_conflict: Arc::default(),
            streams: AtomicU64::new(0),
            timer: TimerSlot::default(),
            local_port: 0,
            authenticated: false,
            identity: None,
        }
    }

    /// The request counters (for the idle timeout).
    pub(crate) fn streams(&self) -> Streams {
        let v = self.streams.load(Ordering::Relaxed);
        Streams {
            started: (v >> 32) as u32,
            open: v as u32,
        }
    }

    /// A timer that fires at `deadline`: the connection's own when it is free, else a new one.
    pub(crate) fn timer(&self, deadline: Instant) -> Timer<'_> {
        self.timer.arm(deadline)
    }
}

/// Whether `ip` is on loopback, a private or a link-local network.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

/// Counts a request as in flight on its connection until dropped (with the response body).
pub(crate) struct StreamGuard(Arc<ConnContext>);

impl StreamGuard {
    /// Counts a new request; also returns its number on the connection (from 1, wrapping).
    pub(crate) fn new(conn: Arc<ConnContext>) -> (Self, u32) {
        let before = conn
            .streams
            .fetch_add(ONE_STARTED_AND_OPEN, Ordering::Relaxed);
        let number = ((before >> 32) as u32).wrapping_add(1);
        (StreamGuard(conn), number)
    }

    /// The connection the request came on.
    pub(crate) fn conn(&self) -> &ConnContext {
        &self.0
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl TimerSlot ===

/// One timer kept per connection and reused by its requests' attempt deadlines.
///
/// A fresh Tokio timer per request costs an allocation-free but locked insert into the timer
/// wheel and a locked removal when the response comes first, which it nearly always does. A
/// timer that is *moved later* while still registered costs one compare-and-swap instead (the
/// wheel finds the new deadline when the old one comes up). HTTP/1.1 requests on a connection
/// run one after another, so they all reuse the connection's timer; a request that finds it in
/// use (concurrent HTTP/2 streams, a retry's second attempt) gets a timer of its own.
#[derive(Default)]
struct TimerSlot(Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

/// A timer taken from a connection, put back when dropped.
pub(crate) struct Timer<'a> {
    slot: &'a TimerSlot,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TimerSlot {
    /// A timer that fires at `deadline`.
    fn arm(&self, deadline: Instant) -> Timer<'_> {
        let deadline = tokio::time::Instant::from_std(deadline);
        // Never waits: a slot in use means another request has the timer.
        let reused = self.0.try_lock().ok().and_then(|mut s| s.take());
        let sleep = match reused {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Timer {
            slot: self,
            sleep: Some(sleep),
        }
    }
}

impl Timer<'_> {
    /// Whether the deadline has passed (registering `cx` to be woken when it does).
    pub(crate) fn poll_fired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.slot.0.try_lock() {
            if slot.is_none() {
                *slot = self.sleep.take();
            }
        }
    }
}

// === impl ActiveGuard, Admission ===

/// Decrements a gauge when dropped.
pub(crate) struct ActiveGuard(IntGauge);

impl ActiveGuard {
    /// Increments `gauge` now and decrements it when the guard is dropped.
    pub(crate) fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        ActiveGuard(gauge.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A counted admission to a limit; leaving drops the count.
pub(crate) struct Admission(Arc<AtomicU32>);

impl Admission {
    /// Admits one more when fewer than `max` are in.
    pub(crate) fn try_new(counter: &Arc<AtomicU32>, max: u32) -> Option<Self> {
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            None
        } else {
            Some(Admission(Arc::clone(counter)))
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn streams_count_started_and_open_requests() {
        let conn = Arc::new(ConnContext::new("127.0.0.1:1".parse().unwrap(), false));
        let (a, first) = StreamGuard::new(Arc::clone(&conn));
        let (b, second) = StreamGuard::new(Arc::clone(&conn));
        assert_eq!((first, second), (1, 2));
        assert_eq!(
            conn.streams(),
            Streams {
                started: 2,
                open: 2
            }
        );
        drop(a);
        drop(b);
        assert_eq!(
            conn.streams(),
            Streams {
                started: 2,
                open: 0
            }
        );
    }

    #[test]
    fn admissions_hold_a_limit_and_leave_it() {
        let counter = Arc::new(AtomicU32::new(0));
        let a = Admission::try_new(&counter, 2).unwrap();
        let b = Admission::try_new(&counter, 2).unwrap();
        assert!(Admission::try_new(&counter, 2).is_none(), "full");
        assert_eq!(
            counter.load(Ordering::Relaxed),
            2,
            "a refusal leaves no count"
        );
        drop(a);
        assert!(Admission::try_new(&counter, 2).is_some());
        drop(b);
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_timer_is_reused_and_a_busy_one_is_not_shared() {
        let conn = ConnContext::new("127.0.0.1:1".parse().unwrap(), false);
        let at = Instant::now() + std::time::Duration::from_secs(1);
        let first = conn.timer(at);
        let second = conn.timer(at);
        assert!(first.sleep.is_some() && second.sleep.is_some());
        let first_ptr = first.sleep.as_ref().map(|s| &**s as *const _);
        drop(first);
        drop(second);
        let again = conn.timer(at);
        assert_eq!(
            again.sleep.as_ref().map(|s| &**s as *const _),
            first_ptr,
            "the first timer went back to the slot; the second was dropped"
        );
        let mut again = again;
        let fired = std::future::poll_fn(|cx| std::task::Poll::Ready(again.poll_fired(cx))).await;
        assert!(!fired, "not before the deadline");
        // Past the deadline (given as a std instant, so with room for the paused clock's
        // offset from it).
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        let fired = std::future::poll_fn(|cx| std::task::Poll::Ready(again.poll_fired(cx))).await;
        assert!(fired);
    }
}
