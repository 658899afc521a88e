//! The RBAC filter (Envoy's `envoy.filters.http.rbac`): a listener's policies, compiled when
//! the configuration is applied, evaluated for each request before it is routed.
//!
//! A request is described by what it carries (method, path, headers) and what its connection
//! knew from the start: the peer's address, the port it came in on and the client
//! certificate's identity, taken once at the handshake ([`crate::tls::peer_identity`]). The
//! evaluation allocates nothing (except to join a header sent several times, which Envoy
//! compares as one comma-separated value).

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Uri};
use memchr::memmem;
use prometheus::{IntCounter, IntCounterVec};

use crate::config::rbac::{PermissionConfig, PrincipalConfig, RbacAction};
use crate::config::{HeaderMatcherConfig, RbacConfig, StringMatchConfig};

/// The body of a denied request's 403, as Envoy's.
pub(crate) const DENIED_BODY: &str = "RBAC: access denied";

// === StrMatch ===

/// A compiled `StringMatcher` (exact, prefix, suffix, contains; case-sensitive).
#[derive(Debug)]
pub(crate) enum StrMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Suffix(Box<[u8]>),
    /// Boxed: a finder is large, and matchers sit in every policy's tree.
    Contains(Box<memmem::Finder<'static>>),
}

impl StrMatch {
    /// Compiles `config` (exactly one of its fields).
    pub(crate) fn build(config: &StringMatchConfig) -> Result<Self, String> {
        let bytes = |s: &String| s.as_bytes().to_vec().into_boxed_slice();
        match (
            &config.exact,
            &config.prefix,
            &config.suffix,
            &config.contains,
        ) {
            (Some(v), None, None, None) => Ok(StrMatch::Exact(bytes(v))),
            (None, Some(v), None, None) => Ok(StrMatch::Prefix(bytes(v))),
            (None, None, Some(v), None) => Ok(StrMatch::Suffix(bytes(v))),
            (None, None, None, Some(v)) => Ok(StrMatch::Contains(Box::new(
                memmem::Finder::new(v.as_bytes()).into_owned(),
            ))),
            _ => Err("a string match needs exactly one of exact, prefix, suffix, contains".into()),
        }
    }

    /// Whether `value` matches.
    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        match self {
            StrMatch::Exact(x) => value == &**x,
            StrMatch::Prefix(x) => value.starts_with(x),
            StrMatch::Suffix(x) => value.ends_with(x),
            StrMatch::Contains(f) => f.find(value).is_some(),
        }
    }

    /// For an `exact` matcher: whether its value is one DNS label followed by `suffix`
    /// (`.example.com`), i.e. a name the wildcard `*.example.com` covers.
    pub(crate) fn exact_wildcard(&self, suffix: &str) -> bool {
        let StrMatch::Exact(x) = self else {
            return false;
        };
        let Some(dot) = x.iter().position(|b| *b == b'.') else {
            return false;
        };
        dot > 0 && x[dot..].eq_ignore_ascii_case(suffix.as_bytes())
    }
}

// === the request as RBAC sees it ===

/// What a policy can look at.
pub(crate) struct Subject<'a> {
    pub(crate) method: &'a Method,
    pub(crate) uri: &'a Uri,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) scheme: &'static str,
    /// The connection's peer.
    pub(crate) peer: IpAddr,
    /// The port the connection came in on.
    pub(crate) local_port: u16,
    /// The verified client certificate's identity.
    pub(crate) identity: Option<&'a str>,
    /// Whether the connection has a verified client certificate.
    pub(crate) authenticated: bool,
}

// === Rbac ===

/// A listener's compiled RBAC rules.
pub(crate) struct Rbac {
    action: RbacAction,
    policies: Box<[Policy]>,
    /// ALLOW: what a request matching no policy is denied as.
    unmatched: Denial,
}

/// How a denial is reported: its counter and its access-log details.
#[derive(Clone)]
pub(crate) struct Denial {
    pub(crate) counter: IntCounter,
    /// `rbac_access_denied_matched_policy[NAME]` (or `[none]`), Envoy's response code details.
    pub(crate) details: Arc<str>,
}

struct Policy {
    permissions: Box<[Permission]>,
    principals: Box<[Principal]>,
    /// DENY: what a request matching this policy is denied as.
    denial: Denial,
}

enum Permission {
    Any,
    Header(HeaderTest),
    UrlPath(StrMatch),
    DestinationPort(u16),
    And(Box<[Permission]>),
    Or(Box<[Permission]>),
    Not(Box<Permission>),
}

enum Principal {
    Any,
    Authenticated(Option<StrMatch>),
    RemoteIp(Cidr),
    And(Box<[Principal]>),
    Or(Box<[Principal]>),
    Not(Box<Principal>),
}

/// Where a header condition reads its value.
enum HeaderSource {
    Path,
    Method,
    Authority,
    Scheme,
    Header(HeaderName),
}

struct HeaderTest {
    source: HeaderSource,
    /// `None`: presence (`present_match`), with the wanted answer.
    test: Result<StrMatch, bool>,
    invert: bool,
}

#[derive(Debug, PartialEq)]
struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Rbac {
    /// Compiles `config` for listener `listener`, with denial counters from `denied`
    /// (`gofe_rbac_denied_total{listener, action, policy}`).
    pub(crate) fn build(
        config: &RbacConfig,
        listener: &str,
        denied: &IntCounterVec,
    ) -> Result<Self, String> {
        let rules = &config.rules;
        let action = rules.action.label();
        let denial = |policy: &str| Denial {
            counter: denied.with_label_values(&[listener, action, policy]),
            details: Arc::from(format!("rbac_access_denied_matched_policy[{policy}]")),
        };
        let policies = rules
            .policies
            .iter()
            .map(|(name, p)| {
                let at = |e: String| format!("rbac.rules.policies.{name}: {e}");
                Ok(Policy {
                    permissions: p
                        .permissions
                        .iter()
                        .map(Permission::build)
                        .collect::<Result<_, _>>()
                        .map_err(at)?,
                    principals: p
                        .principals
                        .iter()
                        .map(Principal::build)
                        .collect::<Result<_, _>>()
                        .map_err(at)?,
                    denial: denial(name),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Rbac {
            action: rules.action,
            policies: policies.into_boxed_slice(),
            unmatched: denial("none"),
        })
    }

    /// `None` when the request may pass, else how it is denied.
    pub(crate) fn check(&self, s: &Subject<'_>) -> Option<&Denial> {
        let matched = self.policies.iter().find(|p| p.matches(s));
        match (self.action, matched) {
            (RbacAction::Allow, Some(_)) | (RbacAction::Deny, None) => None,
            (RbacAction::Allow, None) => Some(&self.unmatched),
            (RbacAction::Deny, Some(p)) => Some(&p.denial),
        }
    }
}

impl Policy {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(s))
            && self.principals.iter().any(|p| p.matches(s))
    }
}

impl Permission {
    fn build(config: &PermissionConfig) -> Result<Self, String> {
        let all = |rules: &[PermissionConfig]| {
            rules
                .iter()
                .map(Permission::build)
                .collect::<Result<Box<[_]>, _>>()
        };
        Ok(match config {
            PermissionConfig::Any(_) => Permission::Any,
            PermissionConfig::Header(h) => Permission::Header(HeaderTest::build(h)?),
            PermissionConfig::UrlPath(m) => Permission::UrlPath(StrMatch::build(&m.path)?),
            PermissionConfig::DestinationPort(p) => Permission::DestinationPort(*p),
            PermissionConfig::AndRules(set) => Permission::And(all(&set.rules)?),
            PermissionConfig::OrRules(set) => Permission::Or(all(&set.rules)?),
            PermissionConfig::NotRule(r) => Permission::Not(Box::new(Permission::build(r)?)),
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::Header(h) => h.matches(s),
            Permission::UrlPath(m) => m.matches(s.uri.path().as_bytes()),
            Permission::DestinationPort(p) => s.local_port == *p,
            Permission::And(all) => all.iter().all(|p| p.matches(s)),
            Permission::Or(any) => any.iter().any(|p| p.matches(s)),
            Permission::Not(p) => !p.matches(s),
        }
    }
}

impl Principal {
    fn build(config: &PrincipalConfig) -> Result<Self, String> {
        let all = |ids: &[PrincipalConfig]| {
            ids.iter()
                .map(Principal::build)
                .collect::<Result<Box<[_]>, _>>()
        };
        Ok(match config {
            PrincipalConfig::Any(_) => Principal::Any,
            PrincipalConfig::Authenticated(a) => Principal::Authenticated(
                a.principal_name.as_ref().map(StrMatch::build).transpose()?,
            ),
            PrincipalConfig::DirectRemoteIp(c) | PrincipalConfig::RemoteIp(c) => {
                let (net, len) = c.parse()?;
                Principal::RemoteIp(Cidr { net, len })
            }
            PrincipalConfig::AndIds(set) => Principal::And(all(&set.ids)?),
            PrincipalConfig::OrIds(set) => Principal::Or(all(&set.ids)?),
            PrincipalConfig::NotId(id) => Principal::Not(Box::new(Principal::build(id)?)),
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::Authenticated(None) => s.authenticated,
            Principal::Authenticated(Some(m)) => {
                s.authenticated && s.identity.is_some_and(|id| m.matches(id.as_bytes()))
            }
            Principal::RemoteIp(c) => c.contains(s.peer),
            Principal::And(all) => all.iter().all(|p| p.matches(s)),
            Principal::Or(any) => any.iter().any(|p| p.matches(s)),
            Principal::Not(p) => !p.matches(s),
        }
    }
}

impl HeaderTest {
    fn build(config: &HeaderMatcherConfig) -> Result<Self, String> {
        let source = match config.name.as_str() {
            ":path" => HeaderSource::Path,
            ":method" => HeaderSource::Method,
            ":authority" => HeaderSource::Authority,
            ":scheme" => HeaderSource::Scheme,
            name => HeaderSource::Header(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("invalid header name {name:?}"))?,
            ),
        };
        let test = match (&config.present_match, &config.string_match) {
            (Some(present), None) => Err(*present),
            (None, Some(sm)) => Ok(StrMatch::build(sm)?),
            _ => return Err("a header matcher needs one of string_match or present_match".into()),
        };
        Ok(HeaderTest {
            source,
            test,
            invert: config.invert_match,
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        let result = match &self.source {
            HeaderSource::Path => self.value(s.uri.path_and_query().map(|p| p.as_str().as_bytes())),
            HeaderSource::Method => self.value(Some(s.method.as_str().as_bytes())),
            HeaderSource::Authority => self.value(
                s.uri
                    .authority()
                    .map(|a| a.as_str().as_bytes())
                    .or_else(|| s.headers.get(http::header::HOST).map(|h| h.as_bytes())),
            ),
            HeaderSource::Scheme => self.value(Some(s.scheme.as_bytes())),
            HeaderSource::Header(name) => {
                let mut values = s.headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => self.value(None),
                    (Some(one), None) => self.value(Some(one.as_bytes())),
                    (Some(first), Some(second)) => {
                        // Sent more than once: Envoy compares the values joined by commas.
                        let mut joined = first.as_bytes().to_vec();
                        for v in std::iter::once(second).chain(values) {
                            joined.push(b',');
                            joined.extend_from_slice(v.as_bytes());
                        }
                        self.value(Some(&joined))
                    }
                }
            }
        };
        result != self.invert
    }

    fn value(&self, value: Option<&[u8]>) -> bool {
        match (&self.test, value) {
            (Err(present), v) => v.is_some() == *present,
            (Ok(_), None) => false,
            (Ok(m), Some(v)) => m.matches(v),
        }
    }
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        // A v4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                (u32::from(net) & mask) == (u32::from(ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                (u128::from(net) & mask) == (u128::from(ip) & mask)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn rbac(yaml: &str) -> (Rbac, IntCounterVec) {
        let config: RbacConfig = gofe_yaml::from_str(yaml).unwrap();
        let denied =
            IntCounterVec::new(Opts::new("d", "d"), &["listener", "action", "policy"]).unwrap();
        (Rbac::build(&config, "l", &denied).unwrap(), denied)
    }

    struct Req {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        peer: IpAddr,
        port: u16,
        identity: Option<&'static str>,
    }

    fn req(path: &str) -> Req {
        Req {
            method: Method::GET,
            uri: path.parse().unwrap(),
            headers: HeaderMap::new(),
            peer: "10.1.2.3".parse().unwrap(),
            port: 8443,
            identity: None,
        }
    }

    impl Req {
        fn subject(&self) -> Subject<'_> {
            Subject {
                method: &self.method,
                uri: &self.uri,
                headers: &self.headers,
                scheme: "https",
                peer: self.peer,
                local_port: self.port,
                identity: self.identity,
                authenticated: self.identity.is_some(),
            }
        }

        fn denied(&self, r: &Rbac) -> Option<String> {
            r.check(&self.subject()).map(|d| d.details.to_string())
        }
    }

    #[test]
    fn string_matchers_compare_as_envoys() {
        let m = |yaml: &str| StrMatch::build(&gofe_yaml::from_str(yaml).unwrap()).unwrap();
        assert!(m("exact: abc").matches(b"abc"));
        assert!(!m("exact: abc").matches(b"abcd"));
        assert!(m("prefix: ab").matches(b"abc"));
        assert!(m("suffix: bc").matches(b"abc"));
        assert!(m("contains: b").matches(b"abc"));
        assert!(!m("contains: x").matches(b"abc"));
        assert!(m("exact: web.shop.svc").exact_wildcard(".shop.svc"));
        assert!(!m("exact: a.web.shop.svc").exact_wildcard(".shop.svc"));
        assert!(!m("prefix: web.shop.svc").exact_wildcard(".shop.svc"));
        assert!(StrMatch::build(&StringMatchConfig::default()).is_err());
    }

    #[test]
    fn allow_passes_only_what_a_policy_matches_and_names_the_denial() {
        let (r, denied) = rbac(
            r#"
rules:
  action: ALLOW
  policies:
    web-reads:
      permissions:
        - and_rules:
            rules:
              - header: {name: ":method", string_match: {exact: GET}}
              - url_path: {path: {prefix: /api/}}
      principals:
        - authenticated: {principal_name: {exact: "spiffe://mesh/ns/shop/sa/web"}}
    ops:
      permissions: [{destination_port: 9000}]
      principals: [{direct_remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]
"#,
        );
        let mut q = req("/api/items?x=1");
        assert_eq!(
            q.denied(&r).as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
        q.identity = Some("spiffe://mesh/ns/shop/sa/web");
        assert_eq!(q.denied(&r), None);
        q.method = Method::POST;
        assert!(
            q.denied(&r).is_some(),
            "the method is part of the permission"
        );
        let mut q = req("/other");
        q.port = 9000;
        assert_eq!(q.denied(&r), None, "ops from 10/8 on port 9000");
        q.peer = "192.168.1.1".parse().unwrap();
        assert!(q.denied(&r).is_some());
        q.peer = "::ffff:10.9.9.9".parse().unwrap();
        assert_eq!(q.denied(&r), None, "a v4-mapped peer is its v4 address");
        assert_eq!(
            denied.with_label_values(&["l", "allow", "none"]).get(),
            0,
            "check does not count"
        );
    }

    #[test]
    fn deny_refuses_what_a_policy_matches_with_its_name() {
        let (r, denied) = rbac(
            r#"
rules:
  action: DENY
  policies:
    no-admin:
      permissions:
        - or_rules:
            rules:
              - url_path: {path: {prefix: /admin}}
              - header: {name: x-debug, present_match: true}
      principals:
        - not_id: {authenticated: {principal_name: {suffix: /sa/ops}}}
"#,
        );
        let mut q = req("/admin/users");
        let name = "rbac_access_denied_matched_policy[no-admin]";
        assert_eq!(q.denied(&r).as_deref(), Some(name));
        q.identity = Some("spiffe://mesh/ns/x/sa/ops");
        assert_eq!(q.denied(&r), None, "ops may");
        let mut q = req("/public");
        assert_eq!(q.denied(&r), None);
        q.headers.insert("x-debug", "1".parse().unwrap());
        assert_eq!(q.denied(&r).as_deref(), Some(name));
        assert_eq!(
            denied.with_label_values(&["l", "deny", "no-admin"]).get(),
            0,
            "check does not count"
        );
    }

    #[test]
    fn headers_sent_twice_are_joined_and_invert_and_any_work() {
        let (r, _) = rbac(
            r#"
rules:
  policies:
    p:
      permissions:
        - header: {name: x-role, string_match: {exact: "a,b"}}
        - not_rule: {header: {name: x-block, present_match: true, invert_match: true}}
      principals: [{any: true}]
"#,
        );
        let mut q = req("/");
        assert!(q.denied(&r).is_some());
        q.headers.append("x-role", "a".parse().unwrap());
        q.headers.append("x-role", "b".parse().unwrap());
        assert_eq!(q.denied(&r), None);
        let mut q = req("/");
        q.headers.insert("x-block", "".parse().unwrap());
        assert_eq!(q.denied(&r), None, "not (absent) = present");
    }

    #[test]
    fn cidr_ranges_mask_their_prefix() {
        let c = |net: &str, len| Cidr {
            net: net.parse().unwrap(),
            len,
        };
        assert!(c("10.0.0.0", 8).contains("10.200.1.1".parse().unwrap()));
        assert!(!c("10.0.0.0", 8).contains("11.0.0.1".parse().unwrap()));
        assert!(c("0.0.0.0", 0).contains("1.2.3.4".parse().unwrap()));
        assert!(c("1.2.3.4", 32).contains("1.2.3.4".parse().unwrap()));
        assert!(!c("1.2.3.4", 32).contains("1.2.3.5".parse().unwrap()));
        assert!(c("fd00::", 8).contains("fd12::1".parse().unwrap()));
        assert!(!c("fd00::", 8).contains("fe00::1".parse().unwrap()));
        assert!(!c("10.0.0.0", 8).contains("fd00::1".parse().unwrap()));
    }
}
