//! Request mirroring (Envoy's `request_mirror_policies`), compiled: fire-and-forget copies of a
//! route's requests to shadow clusters.
//!
//! ```text
//!   forward ──(after fault, rate limit, breakers, header rewrite)──▶ Mirrors::start
//!        │        draw each policy; admit the copy to its cluster's shadow count
//!        ▼
//!   bodiless: spawn the copies now ─────────────────────────────▶ Shadow::run (a task)
//!   with a body: the main request's body carries a Tee, which copies       │ pick, send,
//!        each frame as it goes upstream (up to 1 MiB) and, at the          │ read and drop
//!        body's end, spawns the copies with it ─────────────────────────────┘ the response
//! ```
//!
//! A route's policies become [`Mirrors`] when the configuration is applied (clusters resolved,
//! counters looked up); a route without policies has none and pays one branch per request. Per
//! mirrored request: one random draw per policy, a copy of the head per copy drawn, and a copy
//! of the body while it streams. The main request never waits on a copy: a copy runs on a task
//! of its own, through its cluster's balancer and connection pools, and its outcome reaches
//! nothing but `gofe_shadow_requests_total` (not the `gofe_upstream_*` series, not outlier
//! detection, not retries). A copy's exchange, response body included, is bounded by the
//! route's timeout, as Envoy bounds its shadows.
//!
//! Each shadow cluster admits at most its `circuit_breakers.max_requests` copies at once,
//! counted apart from its own requests: a copy beyond is dropped (`result="dropped"`), so a
//! slow shadow holds at most that many copies (and their bodies of at most
//! [`MAX_MIRRORED_BODY_BYTES`]) in memory. A body larger than that is not mirrored
//! (`body_too_large`); one the main request did not read whole (its upstream answered or failed
//! first, the client went away, it broke a limit) is not mirrored either (`body_incomplete`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};
use http_body_util::BodyExt as _;
use prometheus::{IntCounter, IntGauge};

use crate::body::ProxyBody;
use crate::cluster::Cluster;
use crate::config::mirror::MAX_MIRRORED_BODY_BYTES;
use crate::config::RequestMirrorPolicyConfig;
use crate::ctx::{ActiveGuard, Admission};
use crate::fault::Percent;
use crate::metrics::Metrics;
use crate::request_body::{BodyTee, RequestBody};

/// The `result` label values of `gofe_shadow_requests_total`, in [`Outcome`] order.
pub(crate) const RESULTS: [&str; 6] = [
    "ok",
    "5xx",
    "failed",
    "dropped",
    "body_too_large",
    "body_incomplete",
];

/// How one copy ended (an index into [`RESULTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A response other than 5xx.
    Ok = 0,
    /// A 5xx response.
    ServerError,
    /// No response: no healthy endpoint, connect failure, reset, timeout.
    Failed,
    /// Not sent: the cluster's copies in flight were at its limit.
    Dropped,
    /// Not sent: the body was over [`MAX_MIRRORED_BODY_BYTES`].
    BodyTooLarge,
    /// Not sent: the main request's body was not read whole.
    BodyIncomplete,
}

/// The series of the copies mirrored to one cluster.
pub(crate) struct ShadowCounters {
    /// `gofe_shadow_requests_total{cluster,result}`, by [`RESULTS`].
    pub(crate) results: [IntCounter; 6],
    /// `gofe_shadow_requests_active{cluster}`.
    pub(crate) active: IntGauge,
}

impl ShadowCounters {
    fn count(&self, outcome: Outcome) {
        self.results[outcome as usize].inc();
    }
}

/// A route's mirror policies, compiled.
pub(crate) struct Mirrors {
    policies: Box<[Policy]>,
    /// The route's timeout, which bounds each copy's whole exchange.
    timeout: Option<Duration>,
}

struct Policy {
    cluster: Arc<Cluster>,
    fraction: Percent,
    /// Whether the copy's host gets the `-shadow` suffix.
    suffix: bool,
    counters: Arc<ShadowCounters>,
}

impl Mirrors {
    /// Compiles a route's policies (`None` for none); `timeout` is the route's. Every cluster
    /// named must be in `clusters` (validation guarantees it); a missing one is an error.
    pub(crate) fn build(
        configs: &[RequestMirrorPolicyConfig],
        clusters: &HashMap<String, Arc<Cluster>>,
        metrics: &Metrics,
        timeout: Option<Duration>,
    ) -> Result<Option<Box<Self>>, String> {
        if configs.is_empty() {
            return Ok(None);
        }
        let policies = configs
            .iter()
            .map(|p| {
                let cluster = clusters.get(&p.cluster).cloned().ok_or_else(|| {
                    format!("mirror policy names unknown cluster {:?}", p.cluster)
                })?;
                Ok(Policy {
                    counters: Arc::new(metrics.shadow(&p.cluster)),
                    cluster,
                    fraction: Percent::new(&p.runtime_fraction),
                    suffix: !p.disable_shadow_host_suffix_append,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Some(Box::new(Mirrors {
            policies: policies.into_boxed_slice(),
            timeout,
        })))
    }

    /// Draws the policies for one request, whose head (as its upstream gets it) is `parts`
    /// with target `path`. The copies drawn are sent at once when `body_done` (the request has
    /// no body); otherwise they wait for the body, and the tee returned copies it as it goes
    /// upstream. `None` when nothing waits for the body.
    pub(crate) fn start(
        &self,
        parts: &Parts,
        path: &PathAndQuery,
        body_done: bool,
    ) -> Option<Box<dyn BodyTee>> {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let mut waiting = Vec::new();
        for policy in self.policies.iter() {
            if !policy.fraction.draw() {
                continue;
            }
            if declared.is_some_and(|len| len > MAX_MIRRORED_BODY_BYTES as u64) {
                policy.counters.count(Outcome::BodyTooLarge);
                continue;
            }
            let cluster = &policy.cluster;
            let Some(admission) =
                Admission::try_new(&cluster.limits.shadows, cluster.breakers.max_requests)
            else {
                policy.counters.count(Outcome::Dropped);
                continue;
            };
            let shadow = Shadow {
                head: Head::copy(parts, path, policy),
                cluster: Arc::clone(cluster),
                timeout: self.timeout,
                _active: ActiveGuard::new(&policy.counters.active),
                counters: Arc::clone(&policy.counters),
                _admission: admission,
            };
            if body_done {
                shadow.launch(Bytes::new());
            } else {
                waiting.push(shadow);
            }
        }
        if waiting.is_empty() {
            return None;
        }
        let capacity = declared.map_or(0, |len| len as usize);
        Some(Box::new(Tee {
            copy: BytesMut::with_capacity(capacity),
            shadows: waiting,
        }))
    }
}

/// The head of one copy.
struct Head {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    /// For an HTTP/2 shadow cluster: the copy's `:authority` (its `Host` header goes).
    authority: Option<Authority>,
}

impl Head {
    /// The copy of `parts` for `policy`'s cluster: the same method, target and headers, the
    /// host with the `-shadow` suffix unless the policy says not to, and no `Expect` (the copy's
    /// body is whole before it is sent).
    fn copy(parts: &Parts, path: &PathAndQuery, policy: &Policy) -> Head {
        let mut headers = parts.headers.clone();
        headers.remove(header::EXPECT);
        if policy.suffix {
            if let Some(host) = headers.get(header::HOST).and_then(shadow_host) {
                headers.insert(header::HOST, host);
            }
        }
        let authority = if policy.cluster.http2 {
            headers
                .remove(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        } else {
            None
        };
        Head {
            method: parts.method.clone(),
            path: path.clone(),
            headers,
            authority,
        }
    }
}

/// `host` with Envoy's `-shadow` suffix, before its port if it has one (`a.com:80` →
/// `a.com-shadow:80`, `[::1]:80` → `[::1]-shadow:80`); an empty host stays as it is.
fn shadow_host(host: &HeaderValue) -> Option<HeaderValue> {
    let host = host.as_bytes();
    if host.is_empty() {
        return None;
    }
    let colon = host.iter().rposition(|&b| b == b':');
    let bracket = host.iter().rposition(|&b| b == b']');
    let at = match (colon, bracket) {
        (Some(c), None) => c,
        (Some(c), Some(b)) if b < c => c,
        _ => host.len(),
    };
    let mut out = Vec::with_capacity(host.len() + 7);
    out.extend_from_slice(&host[..at]);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&host[at..]);
    HeaderValue::from_bytes(&out).ok()
}

/// One copy, admitted to its cluster's count of copies in flight until it is done.
struct Shadow {
    cluster: Arc<Cluster>,
    head: Head,
    timeout: Option<Duration>,
    counters: Arc<ShadowCounters>,
    _active: ActiveGuard,
    _admission: Admission,
}

impl Shadow {
    /// Sends the copy with `body` on a task of its own.
    fn launch(self, body: Bytes) {
        tokio::spawn(self.run(body));
    }

    async fn run(self, body: Bytes) {
        let Shadow {
            cluster,
            head,
            timeout,
            counters,
            _active,
            _admission,
        } = self;
        let exchange = exchange(&cluster, head, body);
        let outcome = match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .unwrap_or(Outcome::Failed),
            None => exchange.await,
        };
        counters.count(outcome);
    }
}

/// Sends a copy to an endpoint of `cluster` and reads its response whole.
async fn exchange(cluster: &Cluster, head: Head, body: Bytes) -> Outcome {
    // The copy neither takes a half-open endpoint's trial nor reports to outlier detection.
    let Some(picked) = cluster.pick(None) else {
        tracing::debug!(cluster = %cluster.name, "shadow: no healthy endpoint");
        return Outcome::Failed;
    };
    drop(picked.trial);
    let endpoint = &cluster.endpoints[picked.index];
    let Head {
        method,
        path,
        mut headers,
        authority,
    } = head;
    if !body.is_empty() && !headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let (version, uri) = if cluster.http2 {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority.unwrap_or_else(|| endpoint.authority.clone()));
        uri.path_and_query = Some(path);
        let Ok(uri) = Uri::from_parts(uri) else {
            return Outcome::Failed;
        };
        (Version::HTTP_2, uri)
    } else {
        if !headers.contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
        (Version::HTTP_11, Uri::from(path))
    };
    let mut req = Request::new(RequestBody::full(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    let response = match &endpoint.h2 {
        Some(client) => client
            .request(req)
            .await
            .map(|r| r.map(ProxyBody::stream))
            .map_err(|e| Box::new(e) as crate::body::BodyError),
        None => endpoint
            .pool
            .send(req)
            .await
            .map(|r| r.map(ProxyBody::upstream))
            .map_err(|e| Box::new(e) as crate::body::BodyError),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = &*e as &dyn std::error::Error, "shadow request failed");
            return Outcome::Failed;
        }
    };
    let status = response.status();
    // Read whole, so that an HTTP/1.1 connection goes back to its pool.
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    if status.is_server_error() {
        Outcome::ServerError
    } else {
        Outcome::Ok
    }
}

/// The copies of one request waiting for its body, and the body copied so far.
struct Tee {
    copy: BytesMut,
    shadows: Vec<Shadow>,
}

impl BodyTee for Tee {
    fn data(&mut self, data: &Bytes) -> bool {
        if self.copy.len() + data.len() > MAX_MIRRORED_BODY_BYTES {
            for shadow in self.shadows.drain(..) {
                shadow.counters.count(Outcome::BodyTooLarge);
            }
            return false;
        }
        self.copy.extend_from_slice(data);
        true
    }

    fn end(mut self: Box<Self>) {
        let body = std::mem::take(&mut self.copy).freeze();
        for shadow in self.shadows.drain(..) {
            shadow.launch(body.clone());
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        for shadow in self.shadows.drain(..) {
            shadow.counters.count(Outcome::BodyIncomplete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suffixed(host: &str) -> String {
        shadow_host(&HeaderValue::from_str(host).unwrap())
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn the_suffix_goes_before_the_port_as_in_envoy() {
        assert_eq!(suffixed("api.example.com"), "api.example.com-shadow");
        assert_eq!(
            suffixed("api.example.com:8080"),
            "api.example.com-shadow:8080"
        );
        assert_eq!(suffixed("10.0.0.1:80"), "10.0.0.1-shadow:80");
        assert_eq!(suffixed("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(suffixed("[::1]"), "[::1]-shadow");
        assert_eq!(suffixed(""), "", "no host, no suffix");
    }

    fn mirrors(max_requests: u32) -> (Mirrors, Arc<Metrics>) {
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
                  route: {{ cluster: web, request_mirror_policies: [{{ cluster: shadow }}] }}
clusters:
  - {{ name: web, endpoints: [{{ address: "127.0.0.1:1" }}] }}
  - {{ name: shadow, circuit_breakers: {{ max_requests: {max_requests} }}, endpoints: [{{ address: "127.0.0.1:2" }}] }}
"#
        );
        let cfg = crate::config::parse("t.yaml", &yaml).unwrap();
        let metrics = Arc::new(Metrics::new());
        let clusters = cfg
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(Cluster::standalone(c, &metrics).unwrap()),
                )
            })
            .collect();
        let route = &cfg.listeners[0].filters[0].config.virtual_hosts[0].routes[0];
        let m = Mirrors::build(
            &route.route.request_mirror_policies,
            &clusters,
            &metrics,
            None,
        )
        .unwrap()
        .expect("one policy");
        (*m, metrics)
    }

    fn parts(length: Option<usize>) -> Parts {
        let mut req = Request::post("/upload").header("host", "api.test");
        if let Some(n) = length {
            req = req.header("content-length", n);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn count(m: &Mirrors, outcome: Outcome) -> u64 {
        m.policies[0].counters.results[outcome as usize].get()
    }

    fn in_flight(m: &Mirrors) -> u32 {
        m.policies[0]
            .cluster
            .limits
            .shadows
            .load(std::sync::atomic::Ordering::Acquire)
    }

    #[tokio::test]
    async fn bodies_over_the_bound_and_bodies_cut_short_are_counted_not_sent() {
        let (m, _metrics) = mirrors(10);
        let path = PathAndQuery::from_static("/upload");
        // Declared too large: nothing is held.
        assert!(m
            .start(&parts(Some(MAX_MIRRORED_BODY_BYTES + 1)), &path, false)
            .is_none());
        assert_eq!(count(&m, Outcome::BodyTooLarge), 1);
        assert_eq!(in_flight(&m), 0);

        // Found too large while streaming: the tee lets go, and its copy's place with it.
        let mut tee = m.start(&parts(None), &path, false).expect("a copy waits");
        assert_eq!(in_flight(&m), 1);
        assert_eq!(m.policies[0].counters.active.get(), 1);
        let half = Bytes::from(vec![0u8; MAX_MIRRORED_BODY_BYTES / 2 + 1]);
        assert!(tee.data(&half));
        assert!(!tee.data(&half), "over the bound");
        drop(tee);
        assert_eq!(count(&m, Outcome::BodyTooLarge), 2);
        assert_eq!(count(&m, Outcome::BodyIncomplete), 0, "counted once");
        assert_eq!(in_flight(&m), 0);
        assert_eq!(m.policies[0].counters.active.get(), 0);

        // A body that never ended whole.
        let mut tee = m.start(&parts(Some(10)), &path, false).unwrap();
        assert!(tee.data(&Bytes::from_static(b"hello")));
        drop(tee);
        assert_eq!(count(&m, Outcome::BodyIncomplete), 1);
        assert_eq!(in_flight(&m), 0);
    }

    #[tokio::test]
    async fn copies_beyond_the_clusters_max_requests_are_dropped() {
        let (m, _metrics) = mirrors(1);
        let path = PathAndQuery::from_static("/upload");
        let held = m.start(&parts(None), &path, false).expect("the first copy");
        assert!(m.start(&parts(None), &path, false).is_none());
        assert_eq!(count(&m, Outcome::Dropped), 1);
        drop(held);
        let again = m.start(&parts(None), &path, false);
        assert!(again.is_some(), "room again");
        assert_eq!(count(&m, Outcome::Dropped), 1);
    }

    #[test]
    fn results_are_in_outcome_order() {
        for (outcome, name) in [
            (Outcome::Ok, "ok"),
            (Outcome::ServerError, "5xx"),
            (Outcome::Failed, "failed"),
            (Outcome::Dropped, "dropped"),
            (Outcome::BodyTooLarge, "body_too_large"),
            (Outcome::BodyIncomplete, "body_incomplete"),
        ] {
            assert_eq!(RESULTS[outcome as usize], name);
        }
    }
}
