//! Captured traffic: the original destination of a connection an iptables `REDIRECT` sent to
//! the proxy, and the listener it is handed to (Envoy's `use_original_dst` with
//! `bind_to_port: false` listeners).
//!
//! ```text
//!   app: connect(10.0.0.7:80) ──REDIRECT──▶ :15001 (use_original_dst) ── SO_ORIGINAL_DST ──▶ 10.0.0.7:80
//!       ├─ a bind_to_port: false listener at 10.0.0.7:80, else at 0.0.0.0:80 ─▶ it serves it
//!       └─ none: the capture listener's own chain (a tcp passthrough to 10.0.0.7:80)
//! ```
//!
//! The destination is read once per connection, at accept time, and only on listeners that
//! need it (capture listeners and passthrough `tcp` listeners): others pay one branch.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpStream;

use crate::tcp::canonical;

/// The original destination of `tcp` (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` on an IPv6
/// socket), IPv4-mapped addresses written as IPv4. `None` when the kernel has none (no
/// connection tracking entry): callers then use the socket's local address, which is what an
/// uncaptured connection's original destination is.
pub(crate) fn original_dst(tcp: &TcpStream, local: Option<SocketAddr>) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let v4 = match local {
        Some(SocketAddr::V4(_)) | None => true,
        Some(SocketAddr::V6(a)) => a.ip().to_ipv4_mapped().is_some(),
    };
    let addr = if v4 {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    match addr {
        Ok(a) => a.as_socket().map(canonical),
        Err(e) => {
            tracing::trace!(error = %e, "no original destination");
            None
        }
    }
}

/// The `bind_to_port: false` listeners a capture listener hands connections to, by address.
pub(crate) struct Handoff<T> {
    by_addr: HashMap<SocketAddr, T>,
}

impl<T> Handoff<T> {
    /// A table of `listeners` (each address once: validation refuses duplicates).
    pub(crate) fn new(listeners: impl IntoIterator<Item = (SocketAddr, T)>) -> Self {
        Handoff {
            by_addr: listeners
                .into_iter()
                .map(|(a, t)| (canonical(a), t))
                .collect(),
        }
    }

    /// Whether no listener can be handed a connection.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// The listener for a connection to `dest`: the one at exactly `dest`, else the one at
    /// the unspecified address of `dest`'s family with its port (Envoy's order).
    pub(crate) fn select(&self, dest: SocketAddr) -> Option<&T> {
        let dest = canonical(dest);
        if let Some(t) = self.by_addr.get(&dest) {
            return Some(t);
        }
        let any: IpAddr = match dest {
            SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        self.by_addr.get(&SocketAddr::new(any, dest.port()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Handoff<&'static str> {
        Handoff::new(
            [
                ("10.0.0.7:80", "exact"),
                ("0.0.0.0:80", "any-80"),
                ("0.0.0.0:9090", "any-9090"),
                ("[::]:80", "any6-80"),
                ("[2001:db8::7]:443", "exact6"),
            ]
            .map(|(a, t)| (a.parse().unwrap(), t)),
        )
    }

    fn pick(dest: &str) -> Option<&'static str> {
        table().select(dest.parse().unwrap()).copied()
    }

    #[test]
    fn the_exact_address_wins_over_the_port() {
        assert_eq!(pick("10.0.0.7:80"), Some("exact"));
        assert_eq!(pick("10.0.0.8:80"), Some("any-80"));
        assert_eq!(pick("192.0.2.1:9090"), Some("any-9090"));
    }

    #[test]
    fn a_destination_no_listener_matches_gets_none() {
        assert_eq!(pick("10.0.0.7:81"), None);
        assert_eq!(pick("[2001:db8::7]:80"), Some("any6-80"));
        assert_eq!(pick("[2001:db8::8]:443"), None);
        assert!(Handoff::<()>::new([]).is_empty());
    }

    #[test]
    fn families_do_not_mix_but_mapped_ipv4_is_ipv4() {
        // An IPv4 destination never falls back to [::]:port, nor IPv6 to 0.0.0.0:port.
        assert_eq!(pick("[2001:db8::1]:9090"), None);
        assert_eq!(pick("[::ffff:10.0.0.7]:80"), Some("exact"));
    }

    #[tokio::test]
    async fn an_uncaptured_connection_has_its_local_address_or_none() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let local = accepted.local_addr().ok();
        // Without a REDIRECT, the kernel reports the address the client connected to when it
        // tracks the connection, and nothing when it does not.
        let dest = original_dst(&accepted, local);
        assert!(dest.is_none() || dest == Some(addr), "{dest:?}");
        drop(client);
    }
}
