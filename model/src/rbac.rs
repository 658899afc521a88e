//! Authorization of requests (Envoy's `envoy.filters.http.rbac`, an `RBAC` filter in the
//! connection manager before the router): a set of named policies, each a list of
//! permissions (what the request does) and principals (who sends it); a request matches a
//! policy when one of its permissions and one of its principals match. With the `ALLOW`
//! action a request that matches no policy is denied, with `DENY` a request that matches any
//! policy is; a denied request is answered 403 `RBAC: access denied`.
//!
//! The shapes are Envoy's `config.rbac.v3` (`Permission`, `Principal`) with the subset gofe
//! evaluates; anything else (shadow rules, matcher trees, conditions) is refused when read
//! from xDS.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{HeaderMatcherConfig, StringMatchConfig};

/// A listener's RBAC filter (Envoy's `RBAC`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbacConfig {
    /// The enforced rules (Envoy's `rules`).
    pub rules: RbacRulesConfig,
}

/// Envoy's `RBAC` rules: an action and its policies.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbacRulesConfig {
    /// `ALLOW`: only requests matching a policy pass. `DENY`: requests matching a policy are
    /// refused. Default `ALLOW` (Envoy's).
    #[serde(default)]
    pub action: RbacAction,
    /// The policies by name (the name is what metrics and logs report). Default: none (with
    /// `ALLOW`, every request is denied; with `DENY`, none is).
    #[serde(default)]
    pub policies: BTreeMap<String, RbacPolicyConfig>,
}

/// What a matching policy does.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
pub enum RbacAction {
    /// Requests that match a policy pass; the others are denied.
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// Requests that match a policy are denied; the others pass.
    #[serde(rename = "DENY")]
    Deny,
}

impl RbacAction {
    /// `allow` or `deny`, as metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            RbacAction::Allow => "allow",
            RbacAction::Deny => "deny",
        }
    }
}

/// One policy: it matches a request when any permission and any principal match.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbacPolicyConfig {
    /// What the request does (at least one).
    pub permissions: Vec<PermissionConfig>,
    /// Who sends it (at least one).
    pub principals: Vec<PrincipalConfig>,
}

/// A condition on the request (Envoy's `Permission`): exactly one key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PermissionConfig {
    /// Every request (must be `true`).
    Any(bool),
    /// A request header (Envoy's `HeaderMatcher`; `:path`, `:method` and `:authority` are the
    /// request's path with its query, method and authority).
    Header(HeaderMatcherConfig),
    /// The request's path, without its query (Envoy's `PathMatcher`).
    UrlPath(PathMatcherConfig),
    /// The port the connection came in on (its original destination for a captured one).
    DestinationPort(u16),
    /// Every one of the rules.
    AndRules(PermissionSetConfig),
    /// Any of the rules.
    OrRules(PermissionSetConfig),
    /// Not the rule.
    NotRule(Box<PermissionConfig>),
}

/// A list of permissions (Envoy's `Permission.Set`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PermissionSetConfig {
    /// The permissions (at least one).
    pub rules: Vec<PermissionConfig>,
}

/// A path condition (Envoy's `PathMatcher`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathMatcherConfig {
    /// How the path is compared.
    pub path: StringMatchConfig,
}

/// A condition on who sends the request (Envoy's `Principal`): exactly one key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PrincipalConfig {
    /// Everyone (must be `true`).
    Any(bool),
    /// A client with a verified certificate (Envoy's `Authenticated`).
    Authenticated(AuthenticatedConfig),
    /// The connection's peer address in a CIDR range.
    DirectRemoteIp(CidrConfig),
    /// The client's address in a CIDR range. gofe is the edge (Envoy's
    /// `use_remote_address: true`, no trusted hops), so this is the peer address too.
    RemoteIp(CidrConfig),
    /// Every one of the ids.
    AndIds(PrincipalSetConfig),
    /// Any of the ids.
    OrIds(PrincipalSetConfig),
    /// Not the id.
    NotId(Box<PrincipalConfig>),
}

/// A list of principals (Envoy's `Principal.Set`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSetConfig {
    /// The principals (at least one).
    pub ids: Vec<PrincipalConfig>,
}

/// Envoy's `Principal.Authenticated`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthenticatedConfig {
    /// Compared with the client certificate's identity, taken once per connection at the
    /// handshake: its first `spiffe://` URI SAN, else its first URI SAN, else its first DNS
    /// SAN, else its subject's common name. Default: any verified client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_name: Option<StringMatchConfig>,
}

/// An address range (Envoy's `CidrRange`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CidrConfig {
    /// The range's address (`10.0.0.0`, `fd00::`).
    pub address_prefix: String,
    /// Leading bits that must match: up to 32 for IPv4, 128 for IPv6. Default 0.
    #[serde(default)]
    pub prefix_len: u32,
}

impl CidrConfig {
    /// The prefix as an address and a length, when it is valid.
    pub fn parse(&self) -> Result<(IpAddr, u8), String> {
        let ip: IpAddr = self
            .address_prefix
            .parse()
            .map_err(|_| format!("invalid IP address {:?}", self.address_prefix))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if self.prefix_len > max {
            return Err(format!("prefix_len {} is above {max}", self.prefix_len));
        }
        Ok((ip, self.prefix_len as u8))
    }
}

/// Exactly one of a string matcher's fields.
pub(crate) fn check_string_match(
    m: &StringMatchConfig,
    field: &str,
    out: &mut Vec<(String, String)>,
) {
    let n = [&m.exact, &m.prefix, &m.suffix, &m.contains]
        .iter()
        .filter(|o| o.is_some())
        .count();
    if n != 1 {
        out.push((
            field.to_owned(),
            "set exactly one of exact, prefix, suffix, contains".into(),
        ));
    }
}

/// Problems of an RBAC configuration, as (field path below it, message).
pub(crate) fn check(r: &RbacConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, p) in &r.rules.policies {
        let base = format!("rules.policies.{name}");
        if p.permissions.is_empty() {
            out.push((format!("{base}.permissions"), "needs at least one".into()));
        }
        if p.principals.is_empty() {
            out.push((format!("{base}.principals"), "needs at least one".into()));
        }
        for (i, perm) in p.permissions.iter().enumerate() {
            check_permission(perm, &format!("{base}.permissions[{i}]"), &mut out);
        }
        for (i, id) in p.principals.iter().enumerate() {
            check_principal(id, &format!("{base}.principals[{i}]"), &mut out);
        }
    }
    out
}

fn check_permission(p: &PermissionConfig, base: &str, out: &mut Vec<(String, String)>) {
    match p {
        PermissionConfig::Any(any) => {
            if !any {
                out.push((format!("{base}.any"), "must be true".into()));
            }
        }
        PermissionConfig::Header(h) => {
            let field = format!("{base}.header");
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err()
                && !matches!(
                    h.name.as_str(),
                    ":path" | ":method" | ":authority" | ":scheme"
                )
            {
                out.push((
                    format!("{field}.name"),
                    format!("invalid header name {:?}", h.name),
                ));
            }
            let kinds =
                usize::from(h.string_match.is_some()) + usize::from(h.present_match.is_some());
            if kinds != 1 {
                out.push((
                    field.clone(),
                    "set exactly one of string_match or present_match".into(),
                ));
            }
            if let Some(sm) = &h.string_match {
                check_string_match(sm, &format!("{field}.string_match"), out);
            }
        }
        PermissionConfig::UrlPath(m) => {
            check_string_match(&m.path, &format!("{base}.url_path.path"), out)
        }
        PermissionConfig::DestinationPort(_) => {}
        PermissionConfig::AndRules(set) | PermissionConfig::OrRules(set) => {
            let key = if matches!(p, PermissionConfig::AndRules(_)) {
                "and_rules"
            } else {
                "or_rules"
            };
            if set.rules.is_empty() {
                out.push((format!("{base}.{key}.rules"), "needs at least one".into()));
            }
            for (i, r) in set.rules.iter().enumerate() {
                check_permission(r, &format!("{base}.{key}.rules[{i}]"), out);
            }
        }
        PermissionConfig::NotRule(r) => check_permission(r, &format!("{base}.not_rule"), out),
    }
}

fn check_principal(p: &PrincipalConfig, base: &str, out: &mut Vec<(String, String)>) {
    match p {
        PrincipalConfig::Any(any) => {
            if !any {
                out.push((format!("{base}.any"), "must be true".into()));
            }
        }
        PrincipalConfig::Authenticated(a) => {
            if let Some(m) = &a.principal_name {
                check_string_match(m, &format!("{base}.authenticated.principal_name"), out);
            }
        }
        PrincipalConfig::DirectRemoteIp(c) | PrincipalConfig::RemoteIp(c) => {
            let key = if matches!(p, PrincipalConfig::RemoteIp(_)) {
                "remote_ip"
            } else {
                "direct_remote_ip"
            };
            if let Err(e) = c.parse() {
                out.push((format!("{base}.{key}"), e));
            }
        }
        PrincipalConfig::AndIds(set) | PrincipalConfig::OrIds(set) => {
            let key = if matches!(p, PrincipalConfig::AndIds(_)) {
                "and_ids"
            } else {
                "or_ids"
            };
            if set.ids.is_empty() {
                out.push((format!("{base}.{key}.ids"), "needs at least one".into()));
            }
            for (i, id) in set.ids.iter().enumerate() {
                check_principal(id, &format!("{base}.{key}.ids[{i}]"), out);
            }
        }
        PrincipalConfig::NotId(id) => check_principal(id, &format!("{base}.not_id"), out),
    }
}
