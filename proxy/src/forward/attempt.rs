//! One attempt at a request: send it to the endpoint the balancer picked, race the deadline,
//! and say how it ended; then account for it (the endpoint's metrics, outlier detection) and
//! turn it into the client's response.
//!
//! A failed attempt says whose fault it was, as pingora's `ErrorSource` does
//! ([`AttemptError::error_source`], decided in [`classify`]): the client's ([`Downstream`]: its
//! request body broke), the endpoint's ([`Upstream`]: no connection, a broken one, garbage, no
//! answer in time) or the proxy's own ([`Internal`]). Only the endpoint's faults are the
//! endpoint's business: only they reach its metrics and outlier detection, and only they are
//! retried.
//!
//! [`Downstream`]: ErrorSource::Downstream
//! [`Upstream`]: ErrorSource::Upstream
//! [`Internal`]: ErrorSource::Internal

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::{Either, FutureExt as _};
use http::{Request, Response, StatusCode};

use crate::access_log::Flags;
use crate::body::ProxyBody;
use crate::cluster::{Cluster, Endpoint, Picked};
use crate::ctx::{ActiveGuard, ConnContext};
use crate::h1::H1Error;
use crate::health::Outcome;
use crate::request_body::{BodyFault, BodyWatch, RequestBody};
use crate::upstream::{ConnectFailed, ExchangeError};

use super::breakers::Admitted;
use super::headers::strip_hop_by_hop;
use super::reply::{closing_reply, local_reply};

/// A failure's cause, when it is an error of some library's.
type Cause = Box<dyn std::error::Error + Send + Sync>;

/// How one attempt ended.
// The response is the common case by far; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Attempt {
    /// The endpoint answered (with whatever status).
    Response(Response<ProxyBody>),
    /// No response.
    Failed(AttemptError),
}

/// Whose fault a failed attempt was (pingora's `ErrorSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorSource {
    /// The client's: it went away mid-body, or sent a body that is not one, or too much of it.
    Downstream,
    /// The endpoint's: no connection, a broken one, not HTTP, or no answer in time.
    Upstream,
    /// The proxy's own.
    Internal,
}

/// The client went away before it could be answered: there is no response to give.
#[derive(Debug)]
pub(crate) struct ClientGone;

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// No connection to the endpoint could be opened.
    #[error("upstream connect error")]
    Connect(#[source] Cause),
    /// The connection broke (reset, or closed before a whole response head).
    #[error("upstream reset or sent an invalid response")]
    Reset(#[source] Cause),
    /// The endpoint answered something that is not HTTP (its connection is not trusted after).
    #[error("upstream reset or sent an invalid response")]
    Protocol(#[source] Cause),
    /// No response headers within the route's or the try's timeout.
    #[error("upstream request timeout")]
    Timeout,
    /// The client's request body broke while it was being sent.
    #[error("the client's request body broke: {fault:?}")]
    Downstream {
        /// How it broke.
        fault: BodyFault,
        /// The error that said so, when the client in use passed it on.
        #[source]
        cause: Option<Cause>,
    },
    /// The proxy could not send the request (the HTTP client refused what it was given, or
    /// its connection task is gone).
    #[error("the proxy failed to send the request")]
    Internal(#[source] Cause),
}

impl Attempt {
    /// The attempt as outlier detection and retries see it.
    /// `None` for a failure that was not the endpoint's.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        Some(match self {
            Attempt::Response(r) if r.status().is_server_error() => {
                Outcome::Status(r.status().as_u16())
            }
            Attempt::Response(..) => Outcome::Success,
            Attempt::Failed(AttemptError::Connect(_)) => Outcome::ConnectFailure,
            Attempt::Failed(AttemptError::Reset(_) | AttemptError::Protocol(_)) => Outcome::Reset,
            Attempt::Failed(AttemptError::Timeout) => Outcome::Timeout,
            Attempt::Failed(AttemptError::Downstream { .. } | AttemptError::Internal(_)) => {
                return None
            }
        })
    }

    /// How it ended, as its span says.
    pub(crate) fn end(&self) -> super::AttemptEnd {
        use super::AttemptEnd;
        match self {
            Attempt::Response(r) => AttemptEnd::Status(r.status().as_u16()),
            Attempt::Failed(e) => AttemptEnd::Failed(match e {
                AttemptError::Connect(_) => "connect_failure",
                AttemptError::Reset(_) => "reset",
                AttemptError::Protocol(_) => "protocol_error",
                AttemptError::Timeout => "timeout",
                AttemptError::Downstream { .. } => "downstream_failure",
                AttemptError::Internal(_) => "internal",
            }),
        }
    }

    /// The status the client gets for it.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Attempt::Response(r) => r.status(),
            Attempt::Failed(e) => e.status(),
        }
    }

    /// The client's response: the endpoint's (carrying the request's guards until its body is
    /// done) or the proxy's own for a failure; [`ClientGone`] when there is no one to answer.
    pub(crate) fn into_response(
        self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        active: ActiveGuard,
        admitted: Admitted,
    ) -> Result<Response<ProxyBody>, ClientGone> {
        Ok(match self {
            Attempt::Response(response) => {
                let (mut parts, mut body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let guards = body.guards();
                guards.endpoint = Some(active);
                guards.cluster = Some(admitted.request);
                guards.slot = admitted.slot;
                Response::from_parts(parts, body)
            }
            Attempt::Failed(e) => {
                let source = e.error_source();
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = &e as &dyn std::error::Error, ?source, "request failed");
                match e {
                    AttemptError::Timeout => cluster.stats.timeouts.inc(),
                    AttemptError::Downstream {
                        fault: BodyFault::Aborted,
                        ..
                    } => return Err(ClientGone),
                    // RFC 9112 §7.1: the body cannot be framed, so neither can what follows it
                    // on the connection.
                    AttemptError::Downstream {
                        fault: BodyFault::Malformed,
                        ..
                    } => return Ok(closing_reply(e.status(), e.reply_text())),
                    _ => {}
                }
                local_reply(e.status(), e.reply_text())
            }
        })
    }
}

impl AttemptError {
    /// Whose fault the failure was.
    pub(crate) fn error_source(&self) -> ErrorSource {
        match self {
            AttemptError::Connect(_)
            | AttemptError::Reset(_)
            | AttemptError::Protocol(_)
            | AttemptError::Timeout => ErrorSource::Upstream,
            AttemptError::Downstream { .. } => ErrorSource::Downstream,
            AttemptError::Internal(_) => ErrorSource::Internal,
        }
    }

    /// Envoy's response flag for the failure, when it has one (the client's own faults have
    /// none; the proxy's internal ones neither).
    pub(crate) fn response_flag(&self) -> Option<Flags> {
        Some(match self {
            AttemptError::Connect(_) => Flags::UPSTREAM_CONNECT_FAILURE,
            AttemptError::Reset(_) => Flags::UPSTREAM_CONNECTION_TERMINATION,
            AttemptError::Protocol(_) => Flags::UPSTREAM_PROTOCOL_ERROR,
            AttemptError::Timeout => Flags::UPSTREAM_REQUEST_TIMEOUT,
            AttemptError::Downstream {
                fault: BodyFault::Aborted,
                ..
            } => Flags::DOWNSTREAM_CONNECTION_TERMINATION,
            AttemptError::Downstream { .. } | AttemptError::Internal(_) => return None,
        })
    }

    /// Why the connection to the endpoint could not be opened, when that was the failure.
    pub(crate) fn connect_cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AttemptError::Connect(cause) => Some(&**cause),
            _ => None,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            AttemptError::Connect(_) => StatusCode::SERVICE_UNAVAILABLE,
            AttemptError::Reset(_) | AttemptError::Protocol(_) => StatusCode::BAD_GATEWAY,
            AttemptError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            AttemptError::Downstream { fault, .. } => match fault {
                BodyFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyFault::Malformed | BodyFault::Aborted => StatusCode::BAD_REQUEST,
            },
            AttemptError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn reply_text(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "upstream connect error\n",
            AttemptError::Reset(_) | AttemptError::Protocol(_) => {
                "upstream reset or sent an invalid response\n"
            }
            AttemptError::Timeout => "upstream request timeout\n",
            AttemptError::Downstream { fault, .. } => match fault {
                BodyFault::TooLarge => "request body too large\n",
                BodyFault::Malformed => "malformed request body\n",
                BodyFault::Aborted => "request body incomplete\n",
            },
            AttemptError::Internal(_) => "internal error\n",
        }
    }
}

/// Sends `req` to `endpoint` of `cluster` and waits for its response head until `deadline`
/// (on the connection's reusable timer). `watch` is where the request body records a failure
/// that the HTTP/2 client keeps to itself.
pub(crate) async fn run(
    cluster: &Cluster,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
    conn: &ConnContext,
    deadline: Option<Instant>,
    watch: Option<&BodyWatch>,
) -> Attempt {
    let _pending = ActiveGuard::new(&cluster.stats.pending);
    let sent = send(endpoint, req);
    let result = match deadline {
        Some(at) => {
            let mut timer = conn.timer(at);
            let mut sent = pin!(sent);
            poll_fn(|cx| {
                if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                    Poll::Ready(Some(r))
                } else if timer.poll_fired(cx) {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                }
            })
            .await
        }
        None => Some(sent.await),
    };
    match result {
        Some(result) => classify(result, watch),
        None => Attempt::Failed(AttemptError::Timeout),
    }
}

/// Why sending failed, as the client that sent it says.
#[derive(Debug)]
enum SendError {
    /// The proxy's own HTTP/1.1 codec.
    H1(ExchangeError),
    /// hyper-util's HTTP/2 client.
    H2(hyper_util::client::legacy::Error),
}

/// Sends one attempt: on the endpoint's own HTTP/1.1 pool, or through the HTTP/2 client.
///
/// Not an `async fn`: that would be one more future level on every request, holding the
/// request once more and moved whole into [`run`]'s future; this one is just the client's.
fn send(
    endpoint: &Endpoint,
    req: Request<RequestBody>,
) -> impl Future<Output = Result<Response<ProxyBody>, SendError>> + '_ {
    match &endpoint.h2 {
        // Boxed: hyper-util's request future is large, and only HTTP/2 clusters need it.
        Some(client) => Either::Left(Box::pin(client.request(req)).map(|result| {
            result
                .map(|r| r.map(ProxyBody::stream))
                .map_err(SendError::H2)
        })),
        None => Either::Right(endpoint.pool.send(req).map(|result| {
            result
                .map(|r| r.map(ProxyBody::upstream))
                .map_err(SendError::H1)
        })),
    }
}

/// Says how an attempt ended and, for a failure, whose fault it was.
///
/// The proxy's HTTP/1.1 codec says which side failed ([`ExchangeError`]). hyper's HTTP/2
/// client does not: it reads the request body on a task of its own and reports a body that
/// broke only as a stream it reset, so the body's `watch` is asked first; then a failed connect
/// is the endpoint's, an error hyper calls the user's is the proxy's, and anything else is the
/// endpoint's connection breaking.
fn classify(result: Result<Response<ProxyBody>, SendError>, watch: Option<&BodyWatch>) -> Attempt {
    let e = match result {
        Ok(r) => return Attempt::Response(r),
        Err(e) => e,
    };
    Attempt::Failed(match e {
        SendError::H1(ExchangeError::RequestBody(e)) => AttemptError::Downstream {
            fault: e.fault(),
            cause: Some(e.into()),
        },
        SendError::H1(ExchangeError::Connect(e)) => AttemptError::Connect(e.into()),
        // The endpoint closing before a whole response head is the connection ending;
        // anything else its HTTP/1.1 codec refuses is a protocol error.
        SendError::H1(e @ (ExchangeError::Io(_) | ExchangeError::Protocol(H1Error::Closed))) => {
            AttemptError::Reset(e.into())
        }
        SendError::H1(e @ ExchangeError::Protocol(_)) => AttemptError::Protocol(e.into()),
        SendError::H2(e) => match watch.and_then(BodyWatch::fault) {
            Some(fault) => AttemptError::Downstream {
                fault,
                cause: Some(e.into()),
            },
            None if ConnectFailed::caused(&e) => AttemptError::Connect(e.into()),
            None if hyper_user_error(&e) => AttemptError::Internal(e.into()),
            None => AttemptError::Reset(e.into()),
        },
    })
}

/// Whether hyper, somewhere in `error`'s causes, blames its user (here: the proxy).
fn hyper_user_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_user();
        }
        current = e.source();
    }
    false
}

/// Records a finished attempt against the endpoint it went to, its metrics and its outlier
/// detection, when the endpoint answered or the failure was its own; a failure that was the
/// client's or the proxy's leaves no trace there.
pub(crate) fn account(cluster: &Cluster, picked: Picked, attempt: &Attempt, elapsed: Duration) {
    let Some(outcome) = attempt.outcome() else {
        return;
    };
    cluster.endpoints[picked.index]
        .stats
        .record(attempt.status().as_u16(), elapsed);
    cluster.record(picked.index, outcome, picked.trial);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::from(kind)
    }

    fn h1(e: ExchangeError) -> Attempt {
        classify(Err(SendError::H1(e)), None)
    }

    #[test]
    fn upstream_failures_are_the_endpoints() {
        let connect = h1(ExchangeError::Connect(ConnectFailed::new(
            io(std::io::ErrorKind::ConnectionRefused).into(),
        )));
        assert_eq!(connect.outcome(), Some(Outcome::ConnectFailure));
        assert_eq!(connect.status(), 503);
        let reset = h1(ExchangeError::Io(io(std::io::ErrorKind::ConnectionReset)));
        assert_eq!(reset.outcome(), Some(Outcome::Reset));
        assert_eq!(reset.status(), 502);
        let garbage = h1(ExchangeError::Protocol(crate::h1::H1Error::BadChunk));
        assert_eq!(garbage.outcome(), Some(Outcome::Reset));
        assert_eq!(garbage.status(), 502);
        let flag = |a: &Attempt| match a {
            Attempt::Failed(e) => e.response_flag(),
            Attempt::Response(_) => None,
        };
        assert_eq!(flag(&garbage), Some(Flags::UPSTREAM_PROTOCOL_ERROR));
        assert_eq!(flag(&reset), Some(Flags::UPSTREAM_CONNECTION_TERMINATION));
        let closed = h1(ExchangeError::Protocol(crate::h1::H1Error::Closed));
        assert_eq!(flag(&closed), Some(Flags::UPSTREAM_CONNECTION_TERMINATION));
        assert_eq!(flag(&connect), Some(Flags::UPSTREAM_CONNECT_FAILURE));
        let timeout = Attempt::Failed(AttemptError::Timeout);
        assert_eq!(timeout.outcome(), Some(Outcome::Timeout));
        assert_eq!(timeout.status(), 504);
    }

    #[test]
    fn responses_are_outcomes_by_status() {
        let answer = |code: u16| {
            let mut r = Response::new(ProxyBody::empty());
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            Attempt::Response(r)
        };
        assert_eq!(answer(200).outcome(), Some(Outcome::Success));
        assert_eq!(answer(404).outcome(), Some(Outcome::Success));
        assert_eq!(answer(503).outcome(), Some(Outcome::Status(503)));
        assert_eq!(answer(503).status(), 503);
    }

    #[test]
    fn a_request_body_that_broke_is_the_clients_fault() {
        let too_large = h1(ExchangeError::RequestBody(
            crate::request_body::DownstreamError::TooLarge,
        ));
        let Attempt::Failed(e) = &too_large else {
            panic!("a failure")
        };
        assert_eq!(e.error_source(), ErrorSource::Downstream);
        assert_eq!(too_large.outcome(), None, "nothing for outlier detection");
        assert_eq!(too_large.status(), 413);
        for (fault, status) in [(BodyFault::Malformed, 400), (BodyFault::Aborted, 400)] {
            let a = Attempt::Failed(AttemptError::Downstream { fault, cause: None });
            assert_eq!(a.outcome(), None);
            assert_eq!(a.status(), status);
        }
        let internal = Attempt::Failed(AttemptError::Internal("refused".into()));
        assert_eq!(internal.outcome(), None);
        assert_eq!(internal.status(), 500);
    }

    fn cluster() -> (Cluster, std::sync::Arc<crate::metrics::Metrics>) {
        let yaml = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: { prefix: "/" }
                  route: { cluster: web }
clusters:
  - name: web
    outlier_detection: { consecutive_5xx: 1, base_ejection_time: "60s", max_ejection_percent: 100 }
    endpoints: [{ address: "127.0.0.1:1" }]
"#;
        let cfg = crate::config::parse("t.yaml", yaml).unwrap();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        (
            Cluster::standalone(&cfg.clusters[0], &metrics).unwrap(),
            metrics,
        )
    }

    fn first(c: &Cluster) -> Picked {
        c.pick(None).expect("the endpoint takes requests")
    }

    #[test]
    fn only_the_endpoints_own_failures_are_held_against_it() {
        let (c, metrics) = cluster();
        let series = r#"gofe_upstream_requests_total{cluster="web",code_class="5xx",endpoint="127.0.0.1:1"}"#;
        for fault in [
            BodyFault::TooLarge,
            BodyFault::Malformed,
            BodyFault::Aborted,
        ] {
            let a = Attempt::Failed(AttemptError::Downstream { fault, cause: None });
            account(&c, first(&c), &a, Duration::from_millis(1));
        }
        let internal = Attempt::Failed(AttemptError::Internal("refused".into()));
        account(&c, first(&c), &internal, Duration::from_millis(1));
        assert!(c.endpoints[0].health.is_closed(), "not ejected");
        assert!(metrics.render().contains(&format!("{series} 0")), "no 5xx");

        let reset = h1(ExchangeError::Io(io(std::io::ErrorKind::ConnectionReset)));
        account(&c, first(&c), &reset, Duration::from_millis(1));
        assert!(metrics.render().contains(&format!("{series} 1")));
        assert!(
            !c.endpoints[0].health.is_closed(),
            "consecutive_5xx: 1 ejects on the endpoint's own reset"
        );
    }

    #[test]
    fn the_client_gets_what_its_failure_calls_for() {
        let (c, _metrics) = cluster();
        let endpoint = &c.endpoints[0];
        let admitted = || Admitted {
            request: crate::ctx::Admission::try_new(&c.limits.active, 10).unwrap(),
            slot: None,
        };
        let active = || ActiveGuard::new(&endpoint.stats.active);
        let respond = |fault| {
            Attempt::Failed(AttemptError::Downstream { fault, cause: None }).into_response(
                &c,
                endpoint,
                active(),
                admitted(),
            )
        };
        assert!(respond(BodyFault::Aborted).is_err(), "no one to answer");
        let malformed = respond(BodyFault::Malformed).unwrap();
        assert_eq!(malformed.status(), 400);
        assert_eq!(malformed.headers()["connection"], "close");
        assert_eq!(respond(BodyFault::TooLarge).unwrap().status(), 413);
        let timeout = Attempt::Failed(AttemptError::Timeout)
            .into_response(&c, endpoint, active(), admitted())
            .unwrap();
        assert_eq!(timeout.status(), 504);
        assert_eq!(c.stats.timeouts.get(), 1);
        assert_eq!(endpoint.stats.active.get(), 0, "every guard went");
    }
}
