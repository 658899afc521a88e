//! One attempt at a request: send it to the endpoint the balancer picked, race the deadline,
//! and say how it ended; then account for it (the endpoint's metrics, outlier detection) and
//! turn it into the client's response.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};

use crate::body::ProxyBody;
use crate::cluster::{Cluster, Endpoint, Picked};
use crate::ctx::{ActiveGuard, ConnContext};
use crate::health::Outcome;
use crate::request_body::{BodyWatch, RequestBody};
use crate::upstream::{ConnectFailed, ExchangeError};

use super::breakers::Admitted;
use super::headers::strip_hop_by_hop;
use super::reply::local_reply;

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

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// No connection to the endpoint could be opened.
    #[error("upstream connect error")]
    Connect(#[source] Cause),
    /// The connection broke, or the endpoint answered something that is not HTTP.
    #[error("upstream reset or sent an invalid response")]
    Reset(#[source] Cause),
    /// No response headers within the route's or the try's timeout.
    #[error("upstream request timeout")]
    Timeout,
}

impl Attempt {
    /// The attempt as outlier detection and retries see it.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        Some(match self {
            Attempt::Response(r) if r.status().is_server_error() => {
                Outcome::Status(r.status().as_u16())
            }
            Attempt::Response(..) => Outcome::Success,
            Attempt::Failed(AttemptError::Connect(_)) => Outcome::ConnectFailure,
            Attempt::Failed(AttemptError::Reset(_)) => Outcome::Reset,
            Attempt::Failed(AttemptError::Timeout) => Outcome::Timeout,
        })
    }

    /// The status the client gets for it.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Attempt::Response(r) => r.status(),
            Attempt::Failed(e) => e.status(),
        }
    }

    /// The client's response: the endpoint's (carrying the request's guards until its body is
    /// done) or the proxy's own for a failure.
    pub(crate) fn into_response(
        self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        active: ActiveGuard,
        admitted: Admitted,
    ) -> Response<ProxyBody> {
        match self {
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
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = &e as &dyn std::error::Error, "upstream request failed");
                if let AttemptError::Timeout = e {
                    cluster.stats.timeouts.inc();
                }
                local_reply(e.status(), e.reply_text())
            }
        }
    }
}

impl AttemptError {
    fn status(&self) -> StatusCode {
        match self {
            AttemptError::Connect(_) => StatusCode::SERVICE_UNAVAILABLE,
            AttemptError::Reset(_) => StatusCode::BAD_GATEWAY,
            AttemptError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn reply_text(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "upstream connect error\n",
            AttemptError::Reset(_) => "upstream reset or sent an invalid response\n",
            AttemptError::Timeout => "upstream request timeout\n",
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
    let sent = send(cluster, endpoint, req);
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
async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
) -> Result<Response<ProxyBody>, SendError> {
    match &cluster.client.h2 {
        // Boxed: hyper-util's request future is large, and only HTTP/2 clusters need it.
        Some(client) => Box::pin(client.request(req))
            .await
            .map(|r| r.map(ProxyBody::stream))
            .map_err(SendError::H2),
        None => endpoint
            .pool
            .send(req)
            .await
            .map(|r| r.map(ProxyBody::upstream))
            .map_err(SendError::H1),
    }
}

/// Says how an attempt ended.
fn classify(result: Result<Response<ProxyBody>, SendError>, _watch: Option<&BodyWatch>) -> Attempt {
    let e = match result {
        Ok(r) => return Attempt::Response(r),
        Err(e) => e,
    };
    Attempt::Failed(match e {
        SendError::H1(ExchangeError::Connect(e)) => AttemptError::Connect(e.into()),
        SendError::H1(e) => AttemptError::Reset(e.into()),
        SendError::H2(e) if ConnectFailed::caused(&e) => AttemptError::Connect(e.into()),
        SendError::H2(e) => AttemptError::Reset(e.into()),
    })
}

/// Records a finished attempt against the endpoint it went to: its metrics and its outlier
/// detection.
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
}
