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
use crate::config::{
    CookieMatcherConfig, HeaderMatcherConfig, QueryParameterMatcherConfig, RetryOn, RouteConfig,
    RouterConfig, StringMatchConfig, VirtualHostConfig,
};
use crate::fault::{ActiveFaults, Fault};
use crate::metrics::Metrics;
use crate::mirror::Mirrors;
use crate::ratelimit::{LocalRateLimit, TokenBucket};

mod local;
pub(crate) mod mutation;

pub(crate) use self::local::{Direct, PathRewrite, Redirect};
use self::mutation::Level;

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
    query: Box<[QueryMatch]>,
    cookies: Box<[CookieMatch]>,
    pub(crate) action: Action,
    /// Path and host rewrites; a route without them costs this one branch.
    pub(crate) rewrite: Option<Box<Rewrite>>,
    /// Header mutations of the route, its virtual host and its route configuration, in the
    /// order they apply; empty for most routes.
    pub(crate) mutations: Box<[Arc<Level>]>,
    /// Whether any of `mutations` changes responses.
    pub(crate) response_mutations: bool,
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

/// A route's rewrites of the request it forwards.
pub(crate) struct Rewrite {
    /// The path's.
    pub(crate) path: Option<PathRewrite>,
    /// The host's.
    pub(crate) host: Option<HostRewrite>,
}

/// Where the upstream's `Host` / `:authority` comes from.
pub(crate) enum HostRewrite {
    /// This value.
    Literal(http::HeaderValue),
    /// This request header's value, when the request has it.
    Header(HeaderName),
}

enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
    /// The whole path matches (anchored when compiled).
    Regex(regex::Regex),
    /// The prefix ends the path or is followed by `/`.
    Separated(Box<str>),
}

struct HeaderMatch {
    name: HeaderName,
    test: HeaderTest,
    invert: bool,
}

enum HeaderTest {
    Present(bool),
    String(StringTest),
    /// `start..end` of the value read as an integer.
    Range(i64, i64),
}

/// A compiled `StringMatcher`.
struct StringTest {
    kind: StringKind,
    ignore_case: bool,
}

enum StringKind {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    Contains(Box<[u8]>),
    Regex(regex::bytes::Regex),
}

struct CookieMatch {
    name: Box<str>,
    test: StringTest,
    invert: bool,
}

struct QueryMatch {
    name: Box<str>,
    /// `None`: present.
    test: Option<StringTest>,
}

/// Where a route sends its requests, or what it answers itself.
pub(crate) enum Action {
    /// Every request to one cluster.
    Cluster(Arc<Cluster>),
    /// Split by weight, in a smooth weighted round-robin order.
    Weighted {
        clusters: Box<[Arc<Cluster>]>,
        order: WeightedSequence,
        ticket: AtomicU64,
    },
    /// A redirect (Envoy's `Route.redirect`).
    Redirect(Box<Redirect>),
    /// A response of its own (Envoy's `Route.direct_response`).
    Direct(Box<Direct>),
}

impl Action {
    /// The cluster for the next request; `None` for a route that answers itself.
    #[inline]
    pub(crate) fn pick(&self) -> Option<&Arc<Cluster>> {
        match self {
            Action::Cluster(c) => Some(c),
            Action::Weighted {
                clusters,
                order,
                ticket,
            } => {
                let t = ticket.fetch_add(1, Ordering::Relaxed);
                // Validation guarantees a non-zero weight; fall back to the first cluster.
                clusters.get(order.pick(t).unwrap_or(0))
            }
            Action::Redirect(_) | Action::Direct(_) => None,
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
        let config_level = Level::build(
            &router.request_headers_to_add,
            &router.request_headers_to_remove,
            &router.response_headers_to_add,
            &router.response_headers_to_remove,
        )?;
        for (index, vh) in router.virtual_hosts.iter().enumerate() {
            let vhost_level = Level::build(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
            )?;
            let outer = Outer {
                vhost: vhost_level,
                config: config_level.clone(),
                most_specific_wins: router.most_specific_header_mutations_wins,
            };
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
                .map(|(ri, r)| Route::build(r, clusters, filters, vh, ri, &outer))
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
    /// The first route whose conditions all hold (`query`: the request's query string).
    pub(crate) fn find_route(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path, query, headers))
    }
}

/// The header mutations of the levels above a route.
struct Outer {
    vhost: Option<Arc<Level>>,
    config: Option<Arc<Level>>,
    most_specific_wins: bool,
}

impl Route {
    /// Compiles route `index` of virtual host `vhost`.
    fn build(
        config: &RouteConfig,
        clusters: &HashMap<String, Arc<Cluster>>,
        filters: &mut Filters<'_>,
        host: &VirtualHostConfig,
        index: usize,
        outer: &Outer,
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
        let path = match (&m.prefix, &m.path, &m.safe_regex, &m.path_separated_prefix) {
            (Some(p), ..) => PathMatch::Prefix(p.as_str().into()),
            (None, Some(p), ..) => PathMatch::Exact(p.as_str().into()),
            (None, None, Some(r), _) => {
                PathMatch::Regex(crate::config::route::full_match_regex(r)?)
            }
            (None, None, None, Some(p)) => PathMatch::Separated(p.as_str().into()),
            (None, None, None, None) => return Err("route without a path match".into()),
        };
        // What a prefix rewrite replaces.
        let matched = match &path {
            PathMatch::Prefix(p) | PathMatch::Exact(p) | PathMatch::Separated(p) => p.len(),
            PathMatch::Regex(_) => 0,
        };
        let headers = m
            .headers
            .iter()
            .map(HeaderMatch::build)
            .collect::<Result<Vec<_>, _>>()?;
        let query = m
            .query_parameters
            .iter()
            .map(QueryMatch::build)
            .collect::<Result<Vec<_>, _>>()?;
        let cookies = m
            .cookies
            .iter()
            .map(CookieMatch::build)
            .collect::<Result<Vec<_>, _>>()?;
        let own_level = Level::build(
            &config.request_headers_to_add,
            &config.request_headers_to_remove,
            &config.response_headers_to_add,
            &config.response_headers_to_remove,
        )?;
        let mut mutations: Vec<Arc<Level>> = [own_level, outer.vhost.clone(), outer.config.clone()]
            .into_iter()
            .flatten()
            .collect();
        if outer.most_specific_wins {
            mutations.reverse();
        }
        let response_mutations = mutations.iter().any(|l| l.has_response());
        let lookup = |name: &str| {
            clusters
                .get(name)
                .cloned()
                .ok_or_else(|| format!("route names unknown cluster {name:?}"))
        };
        let a = &config.route;
        let action = match (&a.cluster, &a.weighted_clusters) {
            _ if config.redirect.is_some() || config.direct_response.is_some() => {
                match (&config.redirect, &config.direct_response) {
                    (Some(r), _) => Action::Redirect(Box::new(Redirect::build(r, matched)?)),
                    (None, Some(d)) => Action::Direct(Box::new(Direct::build(d)?)),
                    (None, None) => unreachable!("checked by the guard"),
                }
            }
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
        let path_rewrite = match (&a.prefix_rewrite, &a.regex_rewrite) {
            (Some(p), _) => Some(PathRewrite::prefix(matched, p)),
            (None, Some(r)) => Some(PathRewrite::regex(r)?),
            (None, None) => None,
        };
        let host_rewrite = match (&a.host_rewrite_literal, &a.host_rewrite_header) {
            (Some(h), _) => Some(HostRewrite::Literal(
                http::HeaderValue::from_str(h).map_err(|_| format!("invalid host {h:?}"))?,
            )),
            (None, Some(h)) => Some(HostRewrite::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("invalid header name {h:?}"))?,
            )),
            (None, None) => None,
        };
        let rewrite = (path_rewrite.is_some() || host_rewrite.is_some()).then(|| {
            Box::new(Rewrite {
                path: path_rewrite,
                host: host_rewrite,
            })
        });
        Ok(Route {
            path,
            headers: headers.into_boxed_slice(),
            query: query.into_boxed_slice(),
            cookies: cookies.into_boxed_slice(),
            action,
            rewrite,
            mutations: mutations.into_boxed_slice(),
            response_mutations,
            timeout,
            mirrors,
            retry,
            max_request_bytes: a.max_request_bytes,
            name: config.name.as_deref().map(Arc::from),
            filters,
            duration,
        })
    }

    fn matches(&self, path: &str, query: Option<&str>, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) => path.starts_with(&**p),
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::Separated(p) => path
                .strip_prefix(&**p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        };
        path_ok
            && self.headers.iter().all(|h| h.matches(headers))
            && self.query.iter().all(|q| q.matches(query))
            && self.cookies.iter().all(|c| c.matches(headers))
    }
}

impl CookieMatch {
    fn build(config: &CookieMatcherConfig) -> Result<Self, String> {
        Ok(CookieMatch {
            name: config.name.as_str().into(),
            test: StringTest::build(&config.string_match)?,
            invert: config.invert_match,
        })
    }

    /// The first cookie of this name in the request's `Cookie` headers, unquoted, passes the
    /// test (a missing one does not), inverted when asked.
    fn matches(&self, headers: &HeaderMap) -> bool {
        let value = headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (pair[..eq].trim_ascii() == self.name.as_bytes()).then(|| {
                    let v = pair[eq + 1..].trim_ascii();
                    v.strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(v)
                })
            });
        value.is_some_and(|v| self.test.matches(v)) != self.invert
    }
}

impl StringTest {
    fn build(sm: &StringMatchConfig) -> Result<Self, String> {
        let bytes = |s: &String| {
            let b = s.as_bytes().to_vec().into_boxed_slice();
            if sm.ignore_case {
                b.to_ascii_lowercase().into_boxed_slice()
            } else {
                b
            }
        };
        let kind = match (
            &sm.exact,
            &sm.prefix,
            &sm.suffix,
            &sm.contains,
            &sm.safe_regex,
        ) {
            (Some(v), ..) => StringKind::Exact(bytes(v)),
            (_, Some(v), ..) => StringKind::Prefix(bytes(v)),
            (_, _, Some(v), ..) => StringKind::Suffix(bytes(v)),
            (_, _, _, Some(v), _) => StringKind::Contains(bytes(v)),
            (_, _, _, _, Some(r)) => StringKind::Regex(
                regex::bytes::Regex::new(&format!("^(?:{r})$"))
                    .map_err(|e| format!("bad regex {r:?}: {e}"))?,
            ),
            _ => return Err("empty string_match".into()),
        };
        Ok(StringTest {
            kind,
            // Envoy: ignore_case has no effect on a regex.
            ignore_case: sm.ignore_case && sm.safe_regex.is_none(),
        })
    }

    fn matches(&self, v: &[u8]) -> bool {
        let eq = |a: &[u8], b: &[u8]| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match &self.kind {
            StringKind::Exact(x) => eq(v, x),
            StringKind::Prefix(x) => v.len() >= x.len() && eq(&v[..x.len()], x),
            StringKind::Suffix(x) => v.len() >= x.len() && eq(&v[v.len() - x.len()..], x),
            StringKind::Contains(x) => x.is_empty() || v.windows(x.len()).any(|w| eq(w, x)),
            StringKind::Regex(r) => r.is_match(v),
        }
    }
}

impl QueryMatch {
    fn build(config: &QueryParameterMatcherConfig) -> Result<Self, String> {
        let test = match (&config.string_match, config.present_match) {
            (Some(sm), _) => Some(StringTest::build(sm)?),
            (None, Some(true)) => None,
            (None, _) => return Err("query parameter matcher without a test".into()),
        };
        Ok(QueryMatch {
            name: config.name.as_str().into(),
            test,
        })
    }

    /// The first parameter of this name (its raw value, `""` without `=`) passes the test.
    fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        let found = query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == &*self.name).then_some(v)
        });
        match (found, &self.test) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(t)) => t.matches(v.as_bytes()),
        }
    }
}

impl HeaderMatch {
    fn build(config: &HeaderMatcherConfig) -> Result<Self, String> {
        let name = HeaderName::from_bytes(config.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", config.name))?;
        let test = match (
            &config.present_match,
            &config.string_match,
            &config.range_match,
        ) {
            (Some(present), ..) => HeaderTest::Present(*present),
            (None, Some(sm), _) => HeaderTest::String(StringTest::build(sm)?),
            (None, None, Some(r)) => HeaderTest::Range(r.start, r.end),
            (None, None, None) => return Err("header matcher without a test".into()),
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
            (HeaderTest::String(t), Some(v)) => t.matches(v),
            (HeaderTest::Range(start, end), Some(v)) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some_and(|n| (*start..*end).contains(&n)),
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

    impl VirtualHost {
        /// `find_route` for a request target (`/path?query`).
        fn find_route_p(&self, target: &str, headers: &HeaderMap) -> Option<&Route> {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            self.find_route(path, query, headers)
        }
    }

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
        let cluster =
            |r: Option<&Route>| r.and_then(|r| r.action.pick()).map(|c| c.name.to_string());
        assert_eq!(
            cluster(vh.find_route_p("/health", &h)).as_deref(),
            Some("a")
        );
        assert!(vh.find_route_p("/health/x", &h).is_none(), "path is exact");
        assert_eq!(
            cluster(vh.find_route_p("/v1/users", &h)).as_deref(),
            Some("a")
        );
        assert_eq!(vh.find_route_p("/v1/users", &h).unwrap().timeout, None);
        h.insert("x-canary", "yes".parse().unwrap());
        assert_eq!(
            cluster(vh.find_route_p("/v1/users", &h)).as_deref(),
            Some("b")
        );
        assert!(vh.find_route_p("/v2", &h).is_none());

        let any = t.find_host("whatever").unwrap();
        assert!(any.find_route_p("/", &HeaderMap::new()).is_some());
        let mut dbg = HeaderMap::new();
        dbg.insert("x-debug", "1".parse().unwrap());
        assert!(
            any.find_route_p("/", &dbg).is_none(),
            "inverted present match"
        );
    }

    #[test]
    fn envoys_matchers_regex_separated_prefix_query_cookie_case_and_range() {
        let t = table(
            r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: any
              domains: ["*"]
              routes:
                - name: regex
                  match: { safe_regex: "/item/[0-9]+" }
                  route: { cluster: a }
                - name: separated
                  match: { path_separated_prefix: /shop }
                  route: { cluster: a }
                - name: query
                  match:
                    prefix: /q
                    query_parameters:
                      - { name: v, string_match: { prefix: "AB", ignore_case: true } }
                      - { name: flag, present_match: true }
                  route: { cluster: a }
                - name: cookie
                  match:
                    prefix: /c
                    cookies: [{ name: session, string_match: { safe_regex: "s[0-9]+" } }]
                  route: { cluster: a }
                - name: two-cookies
                  match:
                    prefix: /2
                    cookies:
                      - { name: cookie-1, string_match: { exact: xxx } }
                      - { name: cookie-2, string_match: { safe_regex: "foo.*" } }
                  route: { cluster: a }
                - name: not-cookie
                  match:
                    prefix: /n
                    cookies: [{ name: session, string_match: { exact: x }, invert_match: true }]
                  route: { cluster: a }
                - name: header
                  match:
                    prefix: /h
                    headers:
                      - { name: x-tier, string_match: { suffix: OLD, ignore_case: true } }
                      - { name: x-n, range_match: { start: -5, end: 5 } }
                  route: { cluster: a }
clusters:
  - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
"#,
        );
        let vh = t.find_host("x").unwrap();
        let name = |target: &str, headers: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            vh.find_route_p(target, &h)
                .and_then(|r| r.name.as_deref().map(str::to_owned))
        };
        assert_eq!(name("/item/42", &[]).as_deref(), Some("regex"));
        assert_eq!(
            name("/item/42?x=1", &[]).as_deref(),
            Some("regex"),
            "query excluded"
        );
        assert_eq!(name("/item/42/x", &[]), None, "the whole path matches");
        assert_eq!(name("/shop", &[]).as_deref(), Some("separated"));
        assert_eq!(name("/shop/a", &[]).as_deref(), Some("separated"));
        assert_eq!(name("/shopping", &[]), None);
        assert_eq!(name("/q?v=abc&flag", &[]).as_deref(), Some("query"));
        assert_eq!(name("/q?flag=1&v=ABx&v=zz", &[]).as_deref(), Some("query"));
        assert_eq!(
            name("/q?v=zz&v=abc&flag", &[]),
            None,
            "the first value counts"
        );
        assert_eq!(name("/q?v=abc", &[]), None);
        let cookie = |v: &str| name("/c", &[("cookie", v)]);
        assert_eq!(cookie("a=1; session=s12").as_deref(), Some("cookie"));
        assert_eq!(
            cookie("session=\"s7\"").as_deref(),
            Some("cookie"),
            "quotes removed"
        );
        assert_eq!(cookie("xsession=s1; session=bad"), None);
        assert_eq!(name("/c", &[]), None);
        assert_eq!(
            name("/c", &[("cookie", "a=1"), ("cookie", "session=s3")]).as_deref(),
            Some("cookie"),
            "every Cookie header"
        );
        assert_eq!(
            name("/2", &[("cookie", "cookie-1=xxx; cookie-2=foobar")]).as_deref(),
            Some("two-cookies")
        );
        assert_eq!(
            name("/2", &[("cookie", "cookie-1=xxx; cookie-2=bar")]),
            None
        );
        assert_eq!(
            name("/n", &[]).as_deref(),
            Some("not-cookie"),
            "missing, inverted"
        );
        assert_eq!(name("/n", &[("cookie", "session=x")]), None);
        assert_eq!(
            name("/h", &[("x-tier", "gold"), ("x-n", "-5")]).as_deref(),
            Some("header")
        );
        assert_eq!(name("/h", &[("x-tier", "gold"), ("x-n", "5")]), None);
        assert_eq!(name("/h", &[("x-tier", "gold"), ("x-n", "x")]), None);
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
