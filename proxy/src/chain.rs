//! Filter-chain selection: which of a listener's `filter_chains` serves a connection (Envoy's
//! `filter_chain_match`), and the listener filters that inform it (`tls_inspector`,
//! `http_inspector`).
//!
//! ```text
//!   accept ─▶ [peek: ClientHello? SNI, ALPN | HTTP/1.x or h2c preface] ─▶ Chains::select
//!     destination port ▶ destination IP ▶ server name ▶ transport ▶ ALPN
//!       ▶ direct source IP ▶ source type ▶ source IP ▶ source port ─▶ a chain, the default, or none
//! ```
//!
//! Selection runs once per connection over tables built when the configuration is applied.
//! Each step keeps the candidates that match the connection most specifically (a chain
//! without the criterion matches least specifically; a chain whose criterion differs is
//! dropped), as Envoy prunes its chains; validation guarantees at most one is left. The
//! inspectors peek (`MSG_PEEK`) and never consume: the chain's own TLS handshake, HTTP codec
//! or TCP proxy sees every byte.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gofe_model::filter_chain::MAX_FILTER_CHAINS;
use gofe_model::{CidrRange, FilterChainMatchConfig, SourceType};
use tokio::net::TcpStream;

/// Largest ClientHello or HTTP request line the inspectors read.
const PEEK_LIMIT: usize = 16 * 1024;
/// The HTTP/2 connection preface (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection's transport protocol, as the chains match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// What the TLS inspector saw a ClientHello on.
    Tls,
    /// Everything else (Envoy's default when nothing was detected).
    RawBuffer,
}

/// What is known of a connection when its chain is picked.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conn<'a> {
    /// Where the client connected to (the original destination on a capture listener).
    pub(crate) destination: SocketAddr,
    /// The peer.
    pub(crate) source: SocketAddr,
    /// The TLS server name, lowercase.
    pub(crate) server_name: Option<&'a str>,
    pub(crate) transport: Transport,
    /// The client's application protocols, in its order of preference.
    pub(crate) application_protocols: &'a [&'a [u8]],
}

/// One chain's criteria, ready to compare.
#[derive(Debug)]
struct Match {
    destination_port: Option<u16>,
    prefix_ranges: Vec<CidrRange>,
    /// Exact names, lowercase.
    exact_names: Vec<Box<str>>,
    /// Wildcard suffixes with their dot (`.example.com` for `*.example.com`), lowercase.
    wildcard_suffixes: Vec<Box<str>>,
    transport: Option<Transport>,
    application_protocols: Vec<Box<[u8]>>,
    direct_source_prefix_ranges: Vec<CidrRange>,
    source_type: SourceType,
    source_prefix_ranges: Vec<CidrRange>,
    source_ports: Vec<u16>,
}

impl Match {
    fn new(m: &FilterChainMatchConfig) -> Match {
        let (wild, exact): (Vec<&String>, Vec<&String>) =
            m.server_names.iter().partition(|n| n.starts_with("*."));
        Match {
            destination_port: m.destination_port,
            prefix_ranges: m.prefix_ranges.clone(),
            exact_names: exact
                .into_iter()
                .map(|n| n.to_ascii_lowercase().into())
                .collect(),
            wildcard_suffixes: wild
                .into_iter()
                .map(|n| n[1..].to_ascii_lowercase().into())
                .collect(),
            transport: m.transport_protocol.as_deref().map(|t| match t {
                "tls" => Transport::Tls,
                _ => Transport::RawBuffer,
            }),
            application_protocols: m
                .application_protocols
                .iter()
                .map(|p| p.as_bytes().into())
                .collect(),
            direct_source_prefix_ranges: m.direct_source_prefix_ranges.clone(),
            source_type: m.source_type,
            source_prefix_ranges: m.source_prefix_ranges.clone(),
            source_ports: m.source_ports.clone(),
        }
    }
}

/// How specifically `ranges` hold `ip`: `Some(0)` when there are none (any address), the
/// longest matching prefix plus one otherwise, `None` when no range holds it.
fn range_score(ranges: &[CidrRange], ip: IpAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| u32::from(r.prefix_len) + 1)
        .max()
}

fn name_score(m: &Match, server_name: Option<&str>) -> Option<u32> {
    if m.exact_names.is_empty() && m.wildcard_suffixes.is_empty() {
        return Some(0);
    }
    let name = server_name?;
    if m.exact_names.iter().any(|n| **n == *name) {
        return Some(u32::MAX);
    }
    m.wildcard_suffixes
        .iter()
        .filter(|s| name.len() > s.len() && name.ends_with(&***s))
        .map(|s| u32::try_from(s.len()).unwrap_or(u32::MAX - 1))
        .max()
}

fn is_local(c: &Conn<'_>) -> bool {
    let ip = c.source.ip();
    ip.is_loopback()
        || ip == c.destination.ip()
        || matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// A set of chain indices (at most [`MAX_FILTER_CHAINS`]) on the stack.
#[derive(Clone, Copy)]
struct Candidates([u64; MAX_FILTER_CHAINS / 64]);

impl Candidates {
    fn first(n: usize) -> Candidates {
        let mut words = [0u64; MAX_FILTER_CHAINS / 64];
        for (i, w) in words.iter_mut().enumerate() {
            let from = i * 64;
            *w = match n.saturating_sub(from) {
                0 => 0,
                k if k >= 64 => u64::MAX,
                k => (1u64 << k) - 1,
            };
        }
        Candidates(words)
    }

    fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_FILTER_CHAINS).filter(move |i| self.0[i / 64] & (1 << (i % 64)) != 0)
    }

    fn remove(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// A listener's chains, built once per configuration.
pub(crate) struct Chains<T> {
    chains: Vec<(Match, T)>,
    default: Option<T>,
    /// Whether connections are peeked for a ClientHello.
    pub(crate) tls_inspector: bool,
    /// Whether plaintext connections are peeked for HTTP.
    pub(crate) http_inspector: bool,
}

impl<T> Chains<T> {
    /// The chains in configuration order (at most [`MAX_FILTER_CHAINS`]: validation refuses
    /// more; extra ones are never picked), and the one for connections none matches.
    pub(crate) fn new(
        chains: impl IntoIterator<Item = (FilterChainMatchConfig, T)>,
        default: Option<T>,
        tls_inspector: bool,
        http_inspector: bool,
    ) -> Self {
        Chains {
            chains: chains
                .into_iter()
                .take(MAX_FILTER_CHAINS)
                .map(|(m, t)| (Match::new(&m), t))
                .collect(),
            default,
            tls_inspector,
            http_inspector,
        }
    }

    /// Whether connections are peeked before a chain is picked.
    pub(crate) fn inspects(&self) -> bool {
        self.tls_inspector || self.http_inspector
    }

    /// The chain that serves `c`, else the default chain; `None`: close the connection.
    pub(crate) fn select(&self, c: &Conn<'_>) -> Option<&T> {
        let mut cands = Candidates::first(self.chains.len());
        let dest = c.destination.ip();
        let src = c.source.ip();
        let local = is_local(c);
        self.prune(&mut cands, |m| match m.destination_port {
            None => Some(0),
            Some(p) => (p == c.destination.port()).then_some(1),
        });
        self.prune(&mut cands, |m| range_score(&m.prefix_ranges, dest));
        self.prune(&mut cands, |m| name_score(m, c.server_name));
        self.prune(&mut cands, |m| match m.transport {
            None => Some(0),
            Some(t) => (t == c.transport).then_some(1),
        });
        // The client's first protocol that a remaining chain lists decides.
        let wanted = c.application_protocols.iter().find(|p| {
            cands.iter().any(|i| {
                self.chains[i]
                    .0
                    .application_protocols
                    .iter()
                    .any(|q| **q == ***p)
            })
        });
        self.prune(&mut cands, |m| {
            if m.application_protocols.is_empty() {
                return Some(0);
            }
            let p = wanted?;
            m.application_protocols
                .iter()
                .any(|q| **q == **p)
                .then_some(1)
        });
        self.prune(&mut cands, |m| {
            range_score(&m.direct_source_prefix_ranges, src)
        });
        self.prune(&mut cands, |m| match (m.source_type, local) {
            (SourceType::Any, _) => Some(0),
            (SourceType::Local, true) | (SourceType::External, false) => Some(1),
            _ => None,
        });
        self.prune(&mut cands, |m| range_score(&m.source_prefix_ranges, src));
        self.prune(&mut cands, |m| {
            if m.source_ports.is_empty() {
                Some(0)
            } else {
                m.source_ports.contains(&c.source.port()).then_some(1)
            }
        });
        match cands.iter().next() {
            Some(i) => Some(&self.chains[i].1),
            None => self.default.as_ref(),
        }
    }

    /// Keeps the candidates with the highest score (none when no candidate scores).
    fn prune(&self, cands: &mut Candidates, score: impl Fn(&Match) -> Option<u32>) {
        let best = cands.iter().filter_map(|i| score(&self.chains[i].0)).max();
        for i in cands.iter() {
            let s = score(&self.chains[i].0);
            if s.is_none() || s != best {
                cands.remove(i);
            }
        }
    }
}

// === inspectors ===

/// What the listener filters saw of a connection's first bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Inspected {
    /// A ClientHello was seen.
    pub(crate) tls: bool,
    /// Its server name, lowercase.
    pub(crate) server_name: Option<String>,
    /// Its ALPN list, or the HTTP inspector's protocol.
    pub(crate) application_protocols: Vec<Vec<u8>>,
}

impl Inspected {
    pub(crate) fn transport(&self) -> Transport {
        if self.tls {
            Transport::Tls
        } else {
            Transport::RawBuffer
        }
    }
}

/// What the first `bytes` of a connection say; `None`: more bytes are needed.
pub(crate) fn inspect_bytes(bytes: &[u8], tls: bool, http: bool) -> Option<Inspected> {
    if bytes.is_empty() {
        return None;
    }
    if tls && bytes[0] == 0x16 {
        let mut acceptor = rustls::server::Acceptor::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            match acceptor.read_tls(&mut rest) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        return match acceptor.accept() {
            Ok(None) if bytes.len() < PEEK_LIMIT => None,
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                Some(Inspected {
                    tls: true,
                    server_name: hello.server_name().map(str::to_ascii_lowercase),
                    application_protocols: hello
                        .alpn()
                        .map(|list| list.map(<[u8]>::to_vec).collect())
                        .unwrap_or_default(),
                })
            }
            // Not a ClientHello gofe can read: not TLS, as far as the chains go.
            Ok(None) | Err(_) => Some(Inspected::default()),
        };
    }
    if !http {
        return Some(Inspected::default());
    }
    let prefix = bytes.len().min(H2_PREFACE.len());
    if bytes[..prefix] == H2_PREFACE[..prefix] {
        return if prefix == H2_PREFACE.len() {
            Some(Inspected {
                application_protocols: vec![b"h2c".to_vec()],
                ..Inspected::default()
            })
        } else {
            None
        };
    }
    let Some(end) = memchr::memmem::find(bytes, b"\r\n") else {
        return (bytes.len() >= PEEK_LIMIT).then(Inspected::default);
    };
    let line = &bytes[..end];
    let protocol: &[u8] = if line.ends_with(b" HTTP/1.1") {
        b"http/1.1"
    } else if line.ends_with(b" HTTP/1.0") {
        b"http/1.0"
    } else {
        return Some(Inspected::default());
    };
    Some(Inspected {
        application_protocols: vec![protocol.to_vec()],
        ..Inspected::default()
    })
}

/// Peeks at `tcp` until the inspectors know what they look for. `None` when the client sent
/// nothing conclusive within `timeout` (Envoy's `listener_filters_timeout`: the connection
/// is closed) or went away.
pub(crate) async fn inspect(
    tcp: &TcpStream,
    tls: bool,
    http: bool,
    timeout: Duration,
) -> Option<Inspected> {
    let peek = async {
        let mut buf = vec![0u8; PEEK_LIMIT];
        let mut seen = 0;
        // `peek` returns at once while bytes wait unread, so a wait for more is a short
        // sleep, doubled each time nothing new has come.
        let mut pause = Duration::from_millis(1);
        loop {
            let n = tcp.peek(&mut buf).await.ok()?;
            if n == 0 {
                return Some(Inspected::default());
            }
            if n > seen {
                seen = n;
                pause = Duration::from_millis(1);
                if let Some(found) = inspect_bytes(&buf[..n], tls, http) {
                    return Some(found);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    };
    tokio::time::timeout(timeout, peek).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> FilterChainMatchConfig {
        gofe_yaml::from_str(yaml).unwrap()
    }

    struct Case<'a> {
        name: &'a str,
        destination: &'a str,
        source: &'a str,
        sni: Option<&'a str>,
        transport: Transport,
        alpn: &'a [&'a [u8]],
        want: Option<&'a str>,
    }

    fn conn<'a>(c: &'a Case<'a>) -> Conn<'a> {
        Conn {
            destination: c.destination.parse().unwrap(),
            source: c.source.parse().unwrap(),
            server_name: c.sni,
            transport: c.transport,
            application_protocols: c.alpn,
        }
    }

    fn run(chains: &Chains<&str>, cases: &[Case<'_>]) {
        for c in cases {
            assert_eq!(chains.select(&conn(c)).copied(), c.want, "{}", c.name);
        }
    }

    const TLS: Transport = Transport::Tls;
    const RAW: Transport = Transport::RawBuffer;

    fn case<'a>(name: &'a str, sni: Option<&'a str>, want: Option<&'a str>) -> Case<'a> {
        Case {
            name,
            destination: "10.0.0.1:443",
            source: "192.0.2.9:40000",
            sni,
            transport: TLS,
            alpn: &[],
            want,
        }
    }

    #[test]
    fn server_names_exact_then_longest_wildcard_then_none_as_envoy_documents() {
        // Envoy's example: for www.example.com, www.example.com, then *.example.com, then *.com,
        // then a chain without server_names.
        let chains = Chains::new(
            [
                (m("server_names: [www.example.com]"), "exact"),
                (m("server_names: ['*.example.com']"), "wild-example"),
                (m("server_names: ['*.com']"), "wild-com"),
                (m("{}"), "any"),
            ],
            None,
            true,
            false,
        );
        run(
            &chains,
            &[
                case("exact", Some("www.example.com"), Some("exact")),
                case("wildcard", Some("api.example.com"), Some("wild-example")),
                case("deeper", Some("a.b.example.com"), Some("wild-example")),
                case("shorter wildcard", Some("example.com"), Some("wild-com")),
                case("no wildcard fits", Some("example.org"), Some("any")),
                case("no sni", None, Some("any")),
            ],
        );
    }

    #[test]
    fn a_specific_step_never_falls_back_to_a_less_specific_chain() {
        // The destination port chain is the most specific at step 1 even though its server
        // name does not match: the connection gets no chain, then the default (Envoy's
        // pruning does not backtrack).
        let chains = Chains::new(
            [
                (
                    m("{ destination_port: 443, server_names: [a.example.com] }"),
                    "443-a",
                ),
                (m("server_names: [b.example.com]"), "b"),
            ],
            Some("default"),
            true,
            false,
        );
        run(
            &chains,
            &[
                case("port and name", Some("a.example.com"), Some("443-a")),
                case(
                    "port wins, name then fails",
                    Some("b.example.com"),
                    Some("default"),
                ),
            ],
        );
        let no_default = Chains::new([(m("destination_port: 443"), "443")], None, false, false);
        let mut c = case("wrong port, no default", None, None);
        c.destination = "10.0.0.1:80";
        run(&no_default, &[c]);
    }

    #[test]
    fn the_steps_run_in_envoys_order_and_each_keeps_the_most_specific() {
        let chains = Chains::new(
            [
                (m("prefix_ranges: ['10.0.0.0/8']"), "dest-8"),
                (m("prefix_ranges: ['10.0.0.0/24']"), "dest-24"),
                (
                    m("{ prefix_ranges: ['10.0.0.0/24'], transport_protocol: raw_buffer }"),
                    "dest-24-raw",
                ),
                (m("transport_protocol: tls"), "tls"),
                (
                    m("{ transport_protocol: tls, application_protocols: [h2] }"),
                    "tls-h2",
                ),
                (m("source_prefix_ranges: ['203.0.113.0/24']"), "from-203"),
                (
                    m("{ source_prefix_ranges: ['203.0.113.0/24'], source_ports: [1234] }"),
                    "from-203-1234",
                ),
                (m("source_type: local"), "local"),
                (
                    m("direct_source_prefix_ranges: ['198.51.100.0/24']"),
                    "direct-198",
                ),
            ],
            None,
            true,
            false,
        );
        let base = |name, destination, source, transport, alpn, want| Case {
            name,
            destination,
            source,
            sni: None,
            transport,
            alpn,
            want,
        };
        run(
            &chains,
            &[
                base(
                    "longest destination prefix",
                    "10.0.0.7:1",
                    "192.0.2.1:5",
                    TLS,
                    &[],
                    Some("dest-24"),
                ),
                base(
                    "then transport",
                    "10.0.0.7:1",
                    "192.0.2.1:5",
                    RAW,
                    &[],
                    Some("dest-24-raw"),
                ),
                base(
                    "shorter prefix",
                    "10.9.0.7:1",
                    "192.0.2.1:5",
                    TLS,
                    &[],
                    Some("dest-8"),
                ),
                base(
                    "alpn picks h2",
                    "172.16.0.1:1",
                    "192.0.2.1:5",
                    TLS,
                    &[b"h2", b"http/1.1"],
                    Some("tls-h2"),
                ),
                base(
                    "alpn without h2",
                    "172.16.0.1:1",
                    "192.0.2.1:5",
                    TLS,
                    &[b"http/1.1"],
                    Some("tls"),
                ),
                base(
                    "raw: source ranges",
                    "172.16.0.1:1",
                    "203.0.113.5:1234",
                    RAW,
                    &[],
                    Some("from-203-1234"),
                ),
                base(
                    "other port",
                    "172.16.0.1:1",
                    "203.0.113.5:99",
                    RAW,
                    &[],
                    Some("from-203"),
                ),
                base(
                    "local source",
                    "172.16.0.1:1",
                    "127.0.0.1:99",
                    RAW,
                    &[],
                    Some("local"),
                ),
                base(
                    "same ip is local",
                    "172.16.0.1:1",
                    "172.16.0.1:99",
                    RAW,
                    &[],
                    Some("local"),
                ),
                base(
                    "direct source",
                    "172.16.0.1:1",
                    "198.51.100.3:99",
                    RAW,
                    &[],
                    Some("direct-198"),
                ),
                base(
                    "nothing matches",
                    "172.16.0.1:1",
                    "192.0.2.1:5",
                    RAW,
                    &[],
                    None,
                ),
            ],
        );
    }

    #[test]
    fn envoys_documented_destination_port_rule() {
        // Envoy's FilterChainMatch documentation: chains naming the connection's destination
        // port are the most specific; without one, the chains naming no port are; a chain
        // naming another port never matches.
        let chains = Chains::new(
            [
                (m("destination_port: 443"), "443"),
                (m("destination_port: 8443"), "8443"),
                (m("{}"), "any"),
            ],
            None,
            false,
            false,
        );
        let mut other = case("no chain names it", None, Some("any"));
        other.destination = "10.0.0.1:80";
        run(&chains, &[case("exact port", None, Some("443")), other]);
        // A server name that matches at its step, then a transport that does not: no chain,
        // though a less specific chain would have matched both.
        let late = Chains::new(
            [
                (
                    m("{ server_names: ['*.example.com'], transport_protocol: tls }"),
                    "B",
                ),
                (m("{}"), "C"),
            ],
            None,
            true,
            false,
        );
        let mut b = case("fails late", Some("api.example.com"), None);
        b.transport = RAW;
        run(&late, &[b, case("tls", Some("api.example.com"), Some("B"))]);
    }

    #[test]
    fn the_inspectors_read_a_client_hello_and_http_without_consuming() {
        let config = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut client = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            "API.Example.com".try_into().unwrap(),
        )
        .unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        let seen = inspect_bytes(&hello, true, true).unwrap();
        assert!(seen.tls);
        assert_eq!(seen.server_name.as_deref(), Some("api.example.com"));
        assert_eq!(
            seen.application_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // Half a ClientHello: more is needed.
        assert_eq!(inspect_bytes(&hello[..hello.len() / 2], true, true), None);
        // Without the TLS inspector, TLS bytes are raw_buffer.
        assert_eq!(
            inspect_bytes(&hello, false, false),
            Some(Inspected::default())
        );
        let http = |b: &[u8]| inspect_bytes(b, true, true).map(|i| i.application_protocols);
        assert_eq!(
            http(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
            Some(vec![b"http/1.1".to_vec()])
        );
        assert_eq!(
            http(b"GET / HTTP/1.0\r\n"),
            Some(vec![b"http/1.0".to_vec()])
        );
        assert_eq!(http(H2_PREFACE), Some(vec![b"h2c".to_vec()]));
        assert_eq!(http(&H2_PREFACE[..10]), None);
        assert_eq!(http(b"GET / HTTP/1.1"), None);
        assert_eq!(http(b"SSH-2.0-OpenSSH\r\n"), Some(vec![]));
    }
}
