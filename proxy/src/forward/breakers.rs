//! Circuit breakers on the way in: a request is admitted to its cluster (`max_requests`), then,
//! for an HTTP/1.1 cluster, to a connection slot (`max_connections`), waiting for one as a
//! pending request (`max_pending_requests`) until the route's deadline. A refusal is an
//! answer for the client (`503` with `x-gofe-overloaded`, or `504` when the wait ran out).

use std::sync::Arc;
use std::time::Instant;

use http::{Response, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use crate::body::ProxyBody;
use crate::cluster::Cluster;
use crate::ctx::{ActiveGuard, Admission};

use super::deadline::remaining;
use super::reply::{local_reply, overloaded};

/// What an admitted request holds until its response body is done.
pub(crate) struct Admitted {
    /// Its place among the cluster's requests in flight.
    pub(crate) request: Admission,
    /// Its HTTP/1.1 connection slot (none for an HTTP/2 cluster).
    pub(crate) slot: Option<OwnedSemaphorePermit>,
}

/// Why a request was not admitted, and the client's answer.
pub(crate) struct Refused {
    /// The reply (503, or 504 for a wait that ran out).
    pub(crate) reply: Response<ProxyBody>,
    /// Whether the route's deadline passed while it waited for a slot (else a limit was full).
    pub(crate) timed_out: bool,
}

impl Refused {
    fn overflow(reply: Response<ProxyBody>) -> Self {
        Refused {
            reply,
            timed_out: false,
        }
    }
}

/// Admits a request to `cluster`, or says why not.
pub(crate) async fn admit(
    cluster: &Cluster,
    deadline: Option<Instant>,
) -> Result<Admitted, Refused> {
    let limits = &cluster.limits;
    let Some(request) = Admission::try_new(&limits.active, cluster.breakers.max_requests) else {
        cluster.stats.overflow[2].inc();
        return Err(Refused::overflow(overloaded(
            "upstream overloaded: max_requests\n",
        )));
    };
    if cluster.http2 {
        return Ok(Admitted {
            request,
            slot: None,
        });
    }
    if let Ok(permit) = Arc::clone(&limits.slots).try_acquire_owned() {
        return Ok(Admitted {
            request,
            slot: Some(permit),
        });
    }
    cluster.stats.overflow[0].inc();
    let Some(_pending) = Admission::try_new(&limits.pending, cluster.breakers.max_pending_requests)
    else {
        cluster.stats.overflow[1].inc();
        return Err(Refused::overflow(overloaded(
            "upstream overloaded: max_pending_requests\n",
        )));
    };
    let _waiting = ActiveGuard::new(&cluster.stats.pending);
    let acquire = Arc::clone(&limits.slots).acquire_owned();
    let permit = match remaining(deadline) {
        Some(left) => match tokio::time::timeout(left, acquire).await {
            Ok(p) => p,
            Err(_) => {
                cluster.stats.timeouts.inc();
                return Err(Refused {
                    reply: local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n"),
                    timed_out: true,
                });
            }
        },
        None => acquire.await,
    };
    match permit {
        Ok(p) => Ok(Admitted {
            request,
            slot: Some(p),
        }),
        Err(_) => Err(Refused::overflow(overloaded("upstream overloaded\n"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cluster(fields: &str) -> Cluster {
        let yaml = format!(
            r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {{ prefix: "/" }}
                  route: {{ cluster: web }}
clusters:
  - name: web
{fields}
    endpoints: [{{ address: "127.0.0.1:1" }}]
"#
        );
        let cfg = crate::config::parse("t.yaml", &yaml).unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        Cluster::standalone(&cfg.clusters[0], &metrics).unwrap()
    }

    #[tokio::test]
    async fn max_requests_refuses_with_503() {
        let c = cluster("    circuit_breakers: { max_requests: 1 }");
        let first = admit(&c, None).await.ok().unwrap();
        let refused = admit(&c, None).await.err().unwrap();
        assert!(!refused.timed_out);
        assert_eq!(refused.reply.status(), 503);
        assert_eq!(refused.reply.headers()["x-gofe-overloaded"], "true");
        assert_eq!(c.stats.overflow[2].get(), 1);
        drop(first);
        assert!(admit(&c, None).await.is_ok(), "room again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waits_for_a_connection_slot_until_its_deadline() {
        let c = cluster("    circuit_breakers: { max_connections: 1, max_pending_requests: 1 }");
        let first = admit(&c, None).await.ok().unwrap();
        assert!(first.slot.is_some());

        // One may wait; a second waiter is refused at once.
        let deadline = Some(Instant::now() + Duration::from_secs(3600));
        let waiting = admit(&c, deadline);
        let mut waiting = std::pin::pin!(waiting);
        let pending = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(waiting.as_mut(), cx).is_pending())
        })
        .await;
        assert!(pending, "waits for the slot");
        assert_eq!(c.stats.pending.get(), 1);
        let refused = admit(&c, None).await.err().unwrap();
        assert_eq!(refused.reply.status(), 503);
        assert_eq!(c.stats.overflow[1].get(), 1);

        // The slot frees: the waiter gets it.
        drop(first);
        let second = waiting.await.ok().unwrap();
        assert!(second.slot.is_some());
        assert_eq!(c.stats.pending.get(), 0);

        // A waiter whose deadline passes is answered 504.
        let timed_out = admit(&c, Some(Instant::now() + Duration::from_millis(50)))
            .await
            .err()
            .unwrap();
        assert!(timed_out.timed_out);
        assert_eq!(timed_out.reply.status(), 504);
        assert_eq!(c.stats.timeouts.get(), 1);
    }
}
