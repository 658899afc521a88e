//! The compiled routing table of one listener.
//!
//! Built once per configuration from the router filter's virtual hosts: domains are lowercased
//! and sorted into exact / suffix-wildcard / prefix-wildcard / catch-all tiers, header names are
//! parsed, clusters are resolved to `Arc`s. Matching a request then touches no allocator: the
//! host is lowercased into a stack buffer and compared against prepared strings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gofe_core::balance::WeightedSequence;
use http::{HeaderMap, HeaderName};

use crate::cluster::Cluster;
use crate::config::local_ratelimit::TokenBucketConfig;
use crate::config::{HeaderMatcherConfig, RetryOn, RouteConfig, RouterConfig, VirtualHostConfig};
use crate::fault::{ActiveFaults, Fault};
use crate::metrics::Metrics;
use crate::mirror::Mirrors;
use crate::ratelimit::{LocalRateLimit, TokenBucket};

/// A listener's virtual hosts, indexed for matching.
pub(crate) struct RouteTable {
    vhosts: Box<[VirtualHost]>,
    exact: HashMap<Box<str>, usize>,
    /// `(suffix without the '*', vhost, whether the suffix has a port)`, longest suffix first.
    suffixes: Box<[(Box<str>, usize, bool)]>,
    /// `(prefix without the '*', vhost)`, longest prefix first.
    prefixes: Box<[(Box<str>, usize)]>,
    any: Option<usize>,
    /// Whether any domain names a host (exact, suffix or prefix); without one, every
    /// authority goes to the catch-all and is not looked at.
    named: bool,
}

/// A virtual host and its ordered routes.
pub(crate) struct VirtualHost {
    pub(crate) name: Box<str>,
    routes: Box<[Route]>,
}

/// One route: conditions and an action.
pub(crate) struct Route {
    path: PathMatch,
    headers: Box<[HeaderMatch]>,
    pub(crate) action: Action,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) max_request_bytes: Option<u64>,
    /// The route's name, for access logs.
    pub(crate) name: Option<Arc<str>>,
    /// Fault injection and local rate limiting; a route with neither costs this one branch.
    pub(crate) filters: Option<Box<RouteFilters>>,
    /// Request mirroring; a route without it costs this one branch.
    pub(crate) mirrors: Option<Box<Mirrors>>,
    /// `gofe_downstream_request_duration_seconds` of this listener and route.
    pub(crate) duration: prometheus::Histogram,
}

/// A route's HTTP filters besides the router, in the order they apply.
pub(crate) struct RouteFilters {
    /// Fault injection (Envoy's fault filter).
    pub(crate) fault: Option<Fault>,
    /// Local rate limiting (Envoy's local_ratelimit filter).
    pub(crate) ratelimit: Option<LocalRateLimit>,
}

/// The state of routes' filters that outlives a configuration: each listener's count of
/// active faults and each rate-limited route's bucket, so that a push which leaves them alone
/// (an endpoint's weight, another listener) neither refills a bucket nor forgets faults in
/// progress.
#[derive(Default)]
pub(crate) struct FilterState {
    active_faults: HashMap<Arc<str>, Arc<ActiveFaults>>,
    /// Each bucket with the configuration it was built from.
    buckets: HashMap<BucketKey, (TokenBucketConfig, Arc<TokenBucket>)>,
}

/// Which route a bucket is for: (listener, virtual host, route index or [`HOST_BUCKET`]).
type BucketKey = (Arc<str>, Box<str>, usize);

/// The "route index" of a virtual host's own bucket, shared by its routes without one.
const HOST_BUCKET: usize = usize::MAX;

/// What the routes of one listener share while they are built: the metric families their
/// filters count in, the listener's count of active faults, and the state of the last
/// configuration (`previous`) to take buckets from (`next` collects what this one keeps).
pub(crate) struct Filters<'a> {
    metrics: &'a Metrics,
    listener: Arc<str>,
    active_faults: Arc<ActiveFaults>,
    previous: &'a FilterState,
    next: &'a mut FilterState,
}

impl<'a> Filters<'a> {
    /// The filters' state of listener `listener`, counted in `metrics`.
    pub(crate) fn new(
        metrics: &'a Metrics,
        listener: &Arc<str>,
        previous: &'a FilterState,
        next: &'a mut FilterState,
    ) -> Self {
        let active_faults = previous
            .active_faults
            .get(listener)
            .cloned()
            .unwrap_or_else(|| {
                ActiveFaults::new(metrics.fault_active.with_label_values(&[&**listener]))
            });
        next.active_faults
            .insert(Arc::clone(listener), Arc::clone(&active_faults));
        Filters {
            metrics,
            listener: Arc::clone(listener),
            active_faults,
            previous,
            next,
        }
    }

    /// The bucket of route `index` of `vhost` (or the host's own, [`HOST_BUCKET`]): the one
    /// this configuration already made, else the last configuration's when it had the same
    /// one, else a new, full one.
    fn bucket(
        &mut self,
        vhost: &str,
        index: usize,
        config: &TokenBucketConfig,
    ) -> Arc<TokenBucket> {
        let key = (Arc::clone(&self.listener), Box::from(vhost), index);
        // A virtual host's bucket is asked for by each of its routes: the first made it.
        if let Some((was, bucket)) = self.next.buckets.get(&key) {
            if was == config {
                return Arc::clone(bucket);
            }
        }
        let bucket = match self.previous.buckets.get(&key) {
            Some((was, bucket)) if was == config => Arc::clone(bucket),
            _ => Arc::new(TokenBucket::from_config(config)),
        };
        self.next
            .buckets
            .insert(key, (config.clone(), Arc::clone(&bucket)));
        bucket
    }
}

/// A route's retry policy, compiled.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) on: RetryOn,
    pub(crate) num_retries: u32,
    pub(crate) per_try_timeout: Option<Duration>,
}

enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
}

struct HeaderMatch {
    name: HeaderName,
    test: HeaderTest,
    invert: bool,
}

enum HeaderTest {
    Present(bool),
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Contains(Box<[u8]>),
}

/// Where a route sends its requests.
pub(crate) enum Action {
    /// Every request to one cluster.
    Cluster(Arc<Cluster>),
    /// Split by weight, in a smooth weighted round-robin order.
    Weighted {
        clusters: Box<[Arc<Cluster>]>,
        order: WeightedSequence,
        ticket: AtomicU64,
    },
}

impl Action {
    /// The cluster for the next request.
    #[inline]
    pub(crate) fn pick(&self) -> &Arc<Cluster> {
        match self {
            Action::Cluster(c) => c,
            Action::Weighted {
                clusters,
                order,
                ticket,
            } => {
                let t = ticket.fetch_add(1, Ordering::Relaxed);
                // Validation guarantees a non-zero weight; fall back to the first cluster.
                &clusters[order.pick(t).unwrap_or(0)]
            }
        }
    }
}

impl RouteTable {
    /// Compiles a router configuration. `clusters` must hold every cluster the routes name
    /// (validation guarantees it); a missing one is an error, never a panic.
    pub(crate) fn build(
        router: &RouterConfig,
        clusters: &HashMap<String, Arc<Cluster>>,
        filters: &mut Filters<'_>,
    ) -> Result<Self, String> {
        let mut vhosts = Vec::with_capacity(router.virtual_hosts.len());
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut any = None;
        for (index, vh) in router.virtual_hosts.iter().enumerate() {
            for domain in &vh.domains {
                let d = domain.to_ascii_lowercase();
                if d == "*" {
                    any.get_or_insert(index);
                } else if let Some(suffix) = d.strip_prefix('*') {
                    let with_port = strip_port(suffix).len() != suffix.len();
                    suffixes.push((suffix.into(), index, with_port));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    prefixes.push((prefix.into(), index));
                } else {
                    exact.entry(d.into_boxed_str()).or_insert(index);
                }
            }
            let routes = vh
                .routes
                .iter()
                .enumerate()
                .map(|(ri, r)| Route::build(r, clusters, filters, vh, ri))
                .collect::<Result<Vec<_>, _>>()?;
            vhosts.push(VirtualHost {
                name: vh.name.as_str().into(),
                routes: routes.into_boxed_slice(),
            });
        }
        // Longest first; the sort is stable, so equal lengths keep file order.
        suffixes.sort_by_key(|(s, _, _): &(Box<str>, usize, bool)| std::cmp::Reverse(s.len()));
        prefixes.sort_by_key(|(p, _): &(Box<str>, usize)| std::cmp::Reverse(p.len()));
        Ok(RouteTable {
            vhosts: vhosts.into_boxed_slice(),
            named: !exact.is_empty() || !suffixes.is_empty() || !prefixes.is_empty(),
            exact,
            suffixes: suffixes.into_boxed_slice(),
            prefixes: prefixes.into_boxed_slice(),
            any,
        })
    }

    /// The virtual host for a Host / `:authority` value (case-insensitive): domains with a
    /// port match the value as sent, domains without one match it without its port.
    pub(crate) fn find_host(&self, authority: &str) -> Option<&VirtualHost> {
        let mut buf = [0u8; 262];
        let index = if !self.named {
            self.any
        } else if authority.len() <= buf.len() {
            let lower = &mut buf[..authority.len()];
            lower.copy_from_slice(authority.as_bytes());
            lower.make_ascii_lowercase();
            // Lowercasing ASCII bytes keeps UTF-8 valid.
            let lower = std::str::from_utf8(lower).unwrap_or_default();
            self.match_host(lower, strip_port(lower))
        } else {
            // Longer than any DNS name: only a catch-all can take it.
            self.any
        };
        index.map(|i| &self.vhosts[i])
    }

    /// `full` is the lowercased authority, `bare` the same without its port.
    fn match_host(&self, full: &str, bare: &str) -> Option<usize> {
        if let Some(&i) = self.exact.get(full).or_else(|| self.exact.get(bare)) {
            return Some(i);
        }
        for (suffix, i, with_port) in self.suffixes.iter() {
            let host = if *with_port { full } else { bare };
            if host.len() > suffix.len() && host.ends_with(&**suffix) {
                return Some(*i);
            }
        }
        // A prefix wildcard covers the port too (`api.*` takes `api.example.com:8080`).
        for (prefix, i) in self.prefixes.iter() {
            if full.len() > prefix.len() && full.starts_with(&**prefix) {
                return Some(*i);
            }
        }
        self.any
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; anything else unchanged.
fn strip_port(authority: &str) -> &str {
    let Some(colon) = authority.rfind(':') else {
        return authority;
    };
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    let is_port = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    if is_port && (!host.contains(':') || host.ends_with(']')) {
        host
    } else {
        authority
    }
}

impl VirtualHost {
    /// The first route whose conditions all hold.
    pub(crate) fn find_route(&self, path: &str, headers: &HeaderMap) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path, headers))
    }
}

impl Route {
    /// Compiles route `index` of virtual host `vhost`.
    fn build(
        config: &RouteConfig,
        clusters: &HashMap<String, Arc<Cluster>>,
        filters: &mut Filters<'_>,
        host: &VirtualHostConfig,
        index: usize,
    ) -> Result<Self, String> {
        let vhost = host.name.as_str();
        // The name in metrics: the route's own, else its place.
        let label = || {
            config
                .name
                .clone()
                .unwrap_or_else(|| format!("{vhost}/{index}"))
        };
        // The most specific level's filters: the route's own, else its virtual host's (a host's
        // bucket is one for all the routes that take it). A fault that injects nothing is none.
        let fault = config
            .fault
            .as_ref()
            .or(host.fault.as_ref())
            .filter(|f| f.delay.is_some() || f.abort.is_some());
        let (limit, bucket_of) = match (&config.local_ratelimit, &host.local_ratelimit) {
            (Some(own), _) => (Some(own), index),
            (None, Some(shared)) => (Some(shared), HOST_BUCKET),
            (None, None) => (None, index),
        };
        let fault = match fault {
            None => None,
            Some(f) => Some(Fault::build(
                f,
                Arc::clone(&filters.active_faults),
                filters.metrics.fault(&label()),
            )?),
        };
        let ratelimit = match limit {
            None => None,
            Some(l) => Some(LocalRateLimit::build(
                l,
                filters.bucket(vhost, bucket_of, &l.token_bucket),
                filters.metrics.ratelimit(&label()),
            )?),
        };
        let duration = filters.metrics.route_duration(&filters.listener, &label());
        let filters_metrics = filters.metrics;
        let filters = (fault.is_some() || ratelimit.is_some())
            .then(|| Box::new(RouteFilters { fault, ratelimit }));
        let m = &config.matcher;
        let path = match (&m.prefix, &m.path) {
            (Some(p), _) => PathMatch::Prefix(p.as_str().into()),
            (None, Some(p)) => PathMatch::Exact(p.as_str().into()),
            (None, None) => return Err("route without prefix or path".into()),
        };
        let headers = m
            .headers
            .iter()
            .map(HeaderMatch::build)
            .collect::<Result<Vec<_>, _>>()?;
        let lookup = |name: &str| {
            clusters
                .get(name)
                .cloned()
                .ok_or_else(|| format!("route names unknown cluster {name:?}"))
        };
        let a = &config.route;
        let action = match (&a.cluster, &a.weighted_clusters) {
            (Some(c), _) => Action::Cluster(lookup(c)?),
            (None, Some(wc)) => {
                let clusters = wc
                    .clusters
                    .iter()
                    .map(|c| lookup(&c.name))
                    .collect::<Result<Vec<_>, _>>()?;
                let weights: Vec<u32> = wc.clusters.iter().map(|c| c.weight).collect();
                Action::Weighted {
                    clusters: clusters.into_boxed_slice(),
                    order: WeightedSequence::new(&weights),
                    ticket: AtomicU64::new(fastrand::u64(..)),
                }
            }
            (None, None) => return Err("route without cluster".into()),
        };
        let retry = match &a.retry_policy {
            None => None,
            Some(r) => Some(RetryPolicy {
                on: RetryOn::parse(&r.retry_on)?,
                num_retries: r.num_retries,
                per_try_timeout: r.per_try_timeout.filter(|t| !t.is_zero()),
            }),
        };
        let timeout = (!a.timeout.is_zero()).then_some(a.timeout);
        let mirrors = Mirrors::build(
            &a.request_mirror_policies,
            clusters,
            filters_metrics,
            timeout,
        )?;
        Ok(Route {
            path,
            headers: headers.into_boxed_slice(),
            action,
            timeout,
            mirrors,
            retry,
            max_request_bytes: a.max_request_bytes,
            name: config.name.as_deref().map(Arc::from),
            filters,
            duration,
        })
    }

    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(&**p),
            PathMatch::Exact(p) => path == &**p,
        };
        path_ok && self.headers.iter().all(|h| h.matches(headers))
    }
}

impl HeaderMatch {
    fn build(config: &HeaderMatcherConfig) -> Result<Self, String> {
        let name = HeaderName::from_bytes(config.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", config.name))?;
        let bytes = |s: &String| s.as_bytes().to_vec().into_boxed_slice();
        let test = match (&config.present_match, &config.string_match) {
            (Some(present), _) => HeaderTest::Present(*present),
            (None, Some(sm)) => match (&sm.exact, &sm.prefix, &sm.suffix, &sm.contains) {
                (Some(v), ..) => HeaderTest::Exact(bytes(v)),
                (_, Some(v), ..) => HeaderTest::Prefix(bytes(v)),
                (_, _, Some(v), _) => HeaderTest::Suffix(bytes(v)),
                (_, _, _, Some(v)) => HeaderTest::Contains(bytes(v)),
                _ => return Err("empty string_match".into()),
            },
            (None, None) => return Err("header matcher without a test".into()),
        };
        Ok(HeaderMatch {
            name,
            test,
            invert: config.invert_match,
        })
    }

    fn matches(&self, headers: &HeaderMap) -> bool {
        let value = headers.get(&self.name).map(|v| v.as_bytes());
        let result = match (&self.test, value) {
            (HeaderTest::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (HeaderTest::Exact(x), Some(v)) => v == &**x,
            (HeaderTest::Prefix(x), Some(v)) => v.starts_with(x),
            (HeaderTest::Suffix(x), Some(v)) => v.ends_with(x),
            (HeaderTest::Contains(x), Some(v)) => {
                x.is_empty() || v.windows(x.len()).any(|w| w == &**x)
            }
        };
        result != self.invert
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::metrics::Metrics;

    fn table(yaml: &str) -> RouteTable {
        let cfg = config::parse("t.yaml", yaml).unwrap();
        let metrics = Arc::new(Metrics::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
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
        RouteTable::build(
            &cfg.listeners[0].filters[0].config,
            &clusters,
            &mut Filters::new(
                &metrics,
                &Arc::from("t"),
                &FilterState::default(),
                &mut FilterState::default(),
            ),
        )
        .unwrap()
    }

    const YAML: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: exact
              domains: ["api.example.com"]
              routes:
                - match: { path: "/health" }
                  route: { cluster: a }
                - match:
                    prefix: "/v1"
                    headers:
                      - { name: x-canary, string_match: { exact: "yes" } }
                  route: { cluster: b }
                - match: { prefix: "/v1" }
                  route: { cluster: a, timeout: "0s" }
            - name: suffix-long
              domains: ["*.eu.example.com"]
              routes: [{ match: { prefix: "/" }, route: { cluster: b } }]
            - name: suffix
              domains: ["*.example.com"]
              routes: [{ match: { prefix: "/" }, route: { cluster: a } }]
            - name: prefix
              domains: ["api.*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: a } }]
            - name: any
              domains: ["*"]
              routes:
                - match:
                    prefix: "/"
                    headers: [{ name: x-debug, present_match: true, invert_match: true }]
                  route: { cluster: a }
clusters:
  - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
  - { name: b, endpoints: [{ address: "127.0.0.1:2" }] }
"#;

    fn host(t: &RouteTable, h: &str) -> Option<String> {
        t.find_host(h).map(|v| v.name.to_string())
    }

    #[test]
    fn host_tiers_and_specificity() {
        let t = table(YAML);
        assert_eq!(host(&t, "api.example.com").as_deref(), Some("exact"));
        assert_eq!(host(&t, "API.Example.COM:8443").as_deref(), Some("exact"));
        assert_eq!(host(&t, "x.eu.example.com").as_deref(), Some("suffix-long"));
        assert_eq!(host(&t, "www.example.com").as_deref(), Some("suffix"));
        assert_eq!(
            host(&t, "example.com").as_deref(),
            Some("any"),
            "*.x needs a label"
        );
        assert_eq!(host(&t, "api.internal").as_deref(), Some("prefix"));
        assert_eq!(host(&t, "[::1]:80").as_deref(), Some("any"));
        assert_eq!(host(&t, &"a".repeat(300)).as_deref(), Some("any"));
    }

    #[test]
    fn domains_with_a_port_need_that_port() {
        let yaml = YAML
            .replace(
                "domains: [\"api.example.com\"]",
                "domains: [\"api.example.com\", \"svc:9080\", \"db.ingress.*:8080\"]",
            )
            .replace(
                "domains: [\"*.eu.example.com\"]",
                "domains: [\"*.eu.example.com\", \"*.mesh:9080\"]",
            );
        let t = table(&yaml);
        assert_eq!(host(&t, "svc:9080").as_deref(), Some("exact"));
        assert_eq!(host(&t, "SVC:9080").as_deref(), Some("exact"));
        assert_eq!(host(&t, "svc:9081").as_deref(), Some("any"), "other port");
        assert_eq!(host(&t, "svc").as_deref(), Some("any"), "no port");
        // A `*` neither first nor last is a literal: the domain is exact.
        assert_eq!(host(&t, "db.ingress.*:8080").as_deref(), Some("exact"));
        assert_eq!(host(&t, "db.ingress.x:8080").as_deref(), Some("any"));
        assert_eq!(host(&t, "a.mesh:9080").as_deref(), Some("suffix-long"));
        assert_eq!(host(&t, "a.mesh:9081").as_deref(), Some("any"));
        assert_eq!(host(&t, "a.mesh").as_deref(), Some("any"));
        // Domains without a port still take any port.
        assert_eq!(
            host(&t, "x.eu.example.com:8443").as_deref(),
            Some("suffix-long")
        );
        assert_eq!(host(&t, "api.internal:1").as_deref(), Some("prefix"));
    }

    #[test]
    fn unknown_host_without_catch_all_matches_nothing() {
        let yaml = YAML.replace("domains: [\"*\"]", "domains: [\"other.test\"]");
        assert!(table(&yaml).find_host("nowhere.test").is_none());
    }

    #[test]
    fn routes_in_order_with_headers() {
        let t = table(YAML);
        let vh = t.find_host("api.example.com").unwrap();
        let mut h = HeaderMap::new();
        let cluster = |r: Option<&Route>| r.map(|r| r.action.pick().name.to_string());
        assert_eq!(cluster(vh.find_route("/health", &h)).as_deref(), Some("a"));
        assert!(vh.find_route("/health/x", &h).is_none(), "path is exact");
        assert_eq!(
            cluster(vh.find_route("/v1/users", &h)).as_deref(),
            Some("a")
        );
        assert_eq!(vh.find_route("/v1/users", &h).unwrap().timeout, None);
        h.insert("x-canary", "yes".parse().unwrap());
        assert_eq!(
            cluster(vh.find_route("/v1/users", &h)).as_deref(),
            Some("b")
        );
        assert!(vh.find_route("/v2", &h).is_none());

        let any = t.find_host("whatever").unwrap();
        assert!(any.find_route("/", &HeaderMap::new()).is_some());
        let mut dbg = HeaderMap::new();
        dbg.insert("x-debug", "1".parse().unwrap());
        assert!(
            any.find_route("/", &dbg).is_none(),
            "inverted present match"
        );
    }

    proptest::proptest! {
        #[test]
        fn host_matching_never_panics(host in "\\PC{0,300}") {
            let t = table(YAML);
            let _ = t.find_host(&host);
            let _ = strip_port(&host);
        }
    }

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a.com:"), "a.com:");
    }
}
