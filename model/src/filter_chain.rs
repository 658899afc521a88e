//! A listener's further filter chains and how a connection picks one (Envoy's `filter_chains`
//! with `filter_chain_match`).
//!
//! The matching itself is the proxy's (it runs once per connection, over tables built at
//! configuration time); this module holds the configuration, its checks, and
//! [`ListenerConfig::chain_view`], which lets every other part treat a chain as the listener
//! it would be on its own.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    check_chain, default_protocol, FilterConfig, ListenerConfig, ProxyConfig, TcpProxyConfig,
    TlsConfig, Validator,
};

/// Most filter chains a listener may have (the proxy's per-connection selection keeps its
/// candidates in a fixed-size set).
pub const MAX_FILTER_CHAINS: usize = 256;

/// One filter chain of a listener: what a connection it is picked for is served with.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterChainConfig {
    /// The chain's name (Envoy's `name`), for logs. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Which connections the chain is for. Default: every connection (the least specific
    /// match at every step).
    #[serde(default, skip_serializing_if = "FilterChainMatchConfig::is_empty")]
    pub filter_chain_match: FilterChainMatchConfig,
    /// `"http"` or `"tcp"`, as a listener's `protocol`. Default `"http"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// TLS termination, as a listener's `tls`. Default: none (cleartext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// An `http` chain's router filter, as a listener's `filters`. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// A `tcp` chain's proxying, as a listener's `tcp_proxy`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_proxy: Option<TcpProxyConfig>,
}

/// Envoy's `FilterChainMatch`: every criterion set must hold for the connection. Unset
/// criteria match every connection, less specifically than any set one.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct FilterChainMatchConfig {
    /// The port the connection was made to (its original destination on a capture
    /// listener). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// The address the connection was made to is in one of these CIDR ranges
    /// (`"10.0.0.0/8"`, `"2001:db8::/32"`; the longest matching prefix wins). Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_ranges: Vec<CidrRange>,
    /// The TLS server name (SNI) is one of these: exact names win over wildcards
    /// (`"*.example.com"` matches any name under `example.com`), longer wildcards over
    /// shorter ones. Needs the listener's `tls_inspector`. Default: any (also no SNI).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// `"tls"` (a ClientHello seen by the `tls_inspector`) or `"raw_buffer"` (anything
    /// else). Default: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_protocol: Option<String>,
    /// One of the client's application protocols (its TLS ALPN list, or what the
    /// `http_inspector` saw: `http/1.1`, `http/1.0`, `h2c`) is one of these; the client's
    /// first protocol that any chain lists decides. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub application_protocols: Vec<String>,
    /// The directly connected peer's address is in one of these ranges (the same as
    /// `source_prefix_ranges` in gofe, which reads no PROXY protocol). Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct_source_prefix_ranges: Vec<CidrRange>,
    /// `local` (the peer is a loopback address or the connection's own destination
    /// address), `external` (otherwise) or `any`. Default `any`.
    #[serde(default, skip_serializing_if = "SourceType::is_any")]
    pub source_type: SourceType,
    /// The peer's address is in one of these ranges. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_prefix_ranges: Vec<CidrRange>,
    /// The peer's port is one of these. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ports: Vec<u16>,
}

impl FilterChainMatchConfig {
    /// Whether no criterion is set (the match of every connection).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The match with its lists in a canonical order, so that equal matches compare equal.
    pub fn normalized(&self) -> FilterChainMatchConfig {
        normalized(self)
    }
}

/// Envoy's `ConnectionSourceType`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceType {
    /// Any peer.
    #[default]
    Any,
    /// A peer on this host: a loopback address, or the connection's destination address.
    Local,
    /// Any other peer.
    External,
}

impl SourceType {
    fn is_any(&self) -> bool {
        *self == SourceType::Any
    }
}

/// An address range in CIDR notation: `"10.0.0.0/8"`, `"2001:db8::/32"`; a bare address is
/// its own range (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[schemars(with = "String")]
pub struct CidrRange {
    /// The range's first address (the bits past the prefix are cleared).
    pub address: IpAddr,
    /// How many leading bits an address shares with `address` to be in the range.
    pub prefix_len: u8,
}

impl CidrRange {
    /// Reads `ip/len` or a bare `ip`.
    pub fn parse(text: &str) -> Result<CidrRange, String> {
        let (ip, len) = match text.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (text, None),
        };
        let address: IpAddr = ip
            .parse()
            .map_err(|_| format!("{text:?}: not an IP address range (expected ip/len)"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(CidrRange::new(address, prefix_len))
    }

    /// The range of `address`'s first `prefix_len` bits (clamped to the family's width).
    pub fn new(address: IpAddr, prefix_len: u8) -> CidrRange {
        let address = match address {
            IpAddr::V4(a) => {
                let len = prefix_len.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let len = prefix_len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        };
        let max = if address.is_ipv4() { 32 } else { 128 };
        CidrRange {
            address,
            prefix_len: prefix_len.min(max),
        }
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        CidrRange::new(ip, self.prefix_len).address == self.address
            && ip.is_ipv4() == self.address.is_ipv4()
    }
}

impl std::fmt::Display for CidrRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl Serialize for CidrRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CidrRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        CidrRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

// === impl ListenerConfig ===

impl ListenerConfig {
    /// Whether the listener has a chain of its own (used when no `filter_chains` entry
    /// matches): always without `filter_chains`; with them, when it has `filters` or a
    /// `tcp_proxy`.
    pub fn has_default_chain(&self) -> bool {
        self.filter_chains.is_empty() || !self.filters.is_empty() || self.tcp_proxy.is_some()
    }

    /// The listener as it serves the connections `chain` is picked for: its own settings
    /// with the chain's protocol, TLS and filters, and no further chains.
    pub fn chain_view(&self, chain: &FilterChainConfig) -> ListenerConfig {
        let tcp = chain.protocol == "tcp";
        ListenerConfig {
            protocol: chain.protocol.clone(),
            tls: chain.tls.clone(),
            filters: chain.filters.clone(),
            tcp_proxy: chain.tcp_proxy.clone(),
            // Tracing is per HTTP request.
            tracing: if tcp { None } else { self.tracing.clone() },
            filter_chains: Vec::new(),
            ..self.clone()
        }
    }
}

/// The checks of a listener's `filter_chains`: each chain as a listener, each match's values,
/// no two chains with the same match (Envoy refuses them: a connection could pick either).
pub(crate) fn check_filter_chains(
    v: &mut Validator,
    config: &ProxyConfig,
    listener: &ListenerConfig,
    base: &str,
    check_refs: bool,
    cluster_names: &HashMap<&str, usize>,
) {
    if listener.filter_chains.len() > MAX_FILTER_CHAINS {
        v.error(
            format!("{base}.filter_chains"),
            format!("at most {MAX_FILTER_CHAINS} filter chains"),
        );
        return;
    }
    let mut seen: HashMap<FilterChainMatchConfig, usize> = HashMap::new();
    for (ci, chain) in listener.filter_chains.iter().enumerate() {
        let cbase = format!("{base}.filter_chains[{ci}]");
        check_chain(
            v,
            config,
            &listener.chain_view(chain),
            &cbase,
            check_refs,
            cluster_names,
        );
        let m = &chain.filter_chain_match;
        let mbase = format!("{cbase}.filter_chain_match");
        if let Some(t) = &m.transport_protocol {
            if t != "tls" && t != "raw_buffer" {
                v.error(
                    format!("{mbase}.transport_protocol"),
                    format!(
                        "unsupported transport protocol {t:?} (supported: \"tls\", \"raw_buffer\")"
                    ),
                );
            }
        }
        for (ni, name) in m.server_names.iter().enumerate() {
            let bad = name.is_empty()
                || name.contains(['/', ' ', ':'])
                || name.strip_prefix("*.").unwrap_or(name).contains('*');
            if bad {
                v.error(
                    format!("{mbase}.server_names[{ni}]"),
                    format!("{name:?}: a server name, or a wildcard \"*.suffix\""),
                );
            }
        }
        if m.destination_port == Some(0) {
            v.error(format!("{mbase}.destination_port"), "must be 1..=65535");
        }
        if let Some(first) = seen.insert(normalized(m), ci) {
            v.error(
                format!("{cbase}.filter_chain_match"),
                format!(
                    "the same match as filter_chains[{first}] (a connection could pick either)"
                ),
            );
        }
    }
}

/// A match with its lists in a canonical order, so that equal matches compare equal.
fn normalized(m: &FilterChainMatchConfig) -> FilterChainMatchConfig {
    let mut m = m.clone();
    let ranges = |r: &mut Vec<CidrRange>| {
        r.sort_by_key(|c| (c.address, c.prefix_len));
        r.dedup();
    };
    ranges(&mut m.prefix_ranges);
    ranges(&mut m.direct_source_prefix_ranges);
    ranges(&mut m.source_prefix_ranges);
    for l in [&mut m.server_names, &mut m.application_protocols] {
        for s in l.iter_mut() {
            s.make_ascii_lowercase();
        }
        l.sort();
        l.dedup();
    }
    m.source_ports.sort_unstable();
    m.source_ports.dedup();
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_ranges_read_clear_their_host_bits_and_contain() {
        let r = CidrRange::parse("10.1.2.3/8").unwrap();
        assert_eq!(r.to_string(), "10.0.0.0/8");
        assert!(r.contains("10.200.0.1".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert_eq!(CidrRange::parse("192.0.2.7").unwrap().prefix_len, 32);
        let all = CidrRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        let v6 = CidrRange::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x/8", "::/129", "10.0.0.0/"] {
            assert!(CidrRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chains_are_checked_as_listeners_and_their_matches_must_differ() {
        let yaml = r#"
listeners:
  - name: edge
    address: "127.0.0.1:8443"
    tls_inspector: true
    filter_chains:
      - filter_chain_match: { server_names: ["a.example.com", "*.b.example.com"] }
        filters: [{ type: router, config: { virtual_hosts: [] } }]
      - filter_chain_match: { server_names: ["*.b.example.com", "a.example.com"] }
        filters: [{ type: router, config: { virtual_hosts: [] } }]
      - filter_chain_match: { transport_protocol: quic, server_names: ["a*.example.com"] }
        protocol: tcp
        tcp_proxy: { cluster: nowhere }
      - filter_chain_match: { prefix_ranges: ["10.0.0.0/40"] }
"#;
        let err = crate::parse("t.yaml", yaml).unwrap_err().to_string();
        assert!(err.contains("prefix length"), "{err}");
        let yaml = yaml.replace("/40", "/8");
        let crate::ConfigError::Invalid { problems, .. } =
            crate::parse("t.yaml", &yaml).unwrap_err()
        else {
            panic!("not a validation error")
        };
        let has = |field: &str| {
            problems
                .iter()
                .any(|p| p.field == field && p.line.is_some())
        };
        assert!(
            has("listeners[0].filter_chains[1].filter_chain_match"),
            "{problems:?}"
        );
        assert!(has(
            "listeners[0].filter_chains[2].filter_chain_match.transport_protocol"
        ));
        assert!(has(
            "listeners[0].filter_chains[2].filter_chain_match.server_names[0]"
        ));
        assert!(has("listeners[0].filter_chains[2].tcp_proxy.cluster"));
        assert!(has("listeners[0].filter_chains[3].filters"), "{problems:?}");
        // No default chain: the listener's own filters are not required.
        assert_eq!(problems.len(), 5, "{problems:?}");
    }
}
