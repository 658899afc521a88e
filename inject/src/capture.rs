//! Traffic capture: the iptables `nat` rules `gofe inject init` installs in an injected pod,
//! generated as data (one argument list per `iptables` call) so they can be read and tested
//! without a network namespace.
//!
//! ```text
//!  PREROUTING ─▶ GOFE_INBOUND ─ skipped port, admin port ─▶ RETURN
//!                     └──────────── any other TCP ─▶ GOFE_IN_REDIRECT ─▶ REDIRECT :inbound_port
//!  OUTPUT ────▶ GOFE_OUTPUT ── the proxy's own UID, loopback, skipped port ─▶ RETURN
//!                     └──────────── any other TCP ─▶ GOFE_REDIRECT ─────▶ REDIRECT :outbound_port
//! ```
//!
//! The shape of istio-init's and linkerd-init's rules. IPv4 only (no `ip6tables` rules yet),
//! TCP only. What listens on the two ports is the proxy's pair of capture listeners, which
//! `gofe inject init --capture` writes into the same pod's bootstrap
//! ([`crate::bootstrap_yaml`]): `use_original_dst` listeners that read each connection's
//! original destination (`SO_ORIGINAL_DST`) and hand it to the listener for that destination,
//! or pass it through as TCP. A REDIRECTed connection keeps its original destination in the
//! kernel's connection tracking, which is all the proxy needs (no TPROXY, no extra
//! capabilities for the proxy). `tests/capture_netns.rs` installs these rules in a network
//! namespace with the shipped binary and sends traffic through them.

use std::fmt;

/// Inbound chain (from PREROUTING).
pub const INBOUND_CHAIN: &str = "GOFE_INBOUND";
/// Inbound redirect chain.
pub const INBOUND_REDIRECT_CHAIN: &str = "GOFE_IN_REDIRECT";
/// Outbound chain (from OUTPUT).
pub const OUTBOUND_CHAIN: &str = "GOFE_OUTPUT";
/// Outbound redirect chain.
pub const OUTBOUND_REDIRECT_CHAIN: &str = "GOFE_REDIRECT";

/// An inclusive port range; `PortRange(p, p)` is one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange(pub u16, pub u16);

impl fmt::Display for PortRange {
    /// `8080` or `8000-8010` (what the annotations and `--skip-*-ports` take).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

impl PortRange {
    /// iptables' `--dport` form: `8080` or `8000:8010`.
    fn iptables(self) -> String {
        if self.0 == self.1 {
            self.0.to_string()
        } else {
            format!("{}:{}", self.0, self.1)
        }
    }
}

/// What to capture for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The proxy's inbound port.
    pub inbound_port: u16,
    /// The proxy's outbound port.
    pub outbound_port: u16,
    /// The proxy's UID: its own connections are not redirected (else they would loop).
    pub proxy_uid: i64,
    /// Inbound ports left alone (the proxy's admin port always is: kubelet probes it).
    pub skip_inbound: Vec<PortRange>,
    /// Outbound ports left alone.
    pub skip_outbound: Vec<PortRange>,
    /// The proxy's admin port.
    pub admin_port: u16,
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The `iptables` calls, in order: each item is one call's arguments (without `iptables`).
pub fn rules(c: &CaptureConfig) -> Vec<Vec<String>> {
    let inbound = c.inbound_port.to_string();
    let outbound = c.outbound_port.to_string();
    let uid = c.proxy_uid.to_string();
    let mut r = vec![
        args(&["-t", "nat", "-N", INBOUND_REDIRECT_CHAIN]),
        args(&[
            "-t",
            "nat",
            "-A",
            INBOUND_REDIRECT_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &inbound,
        ]),
        args(&["-t", "nat", "-N", INBOUND_CHAIN]),
        args(&[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            INBOUND_CHAIN,
        ]),
    ];
    let admin = PortRange(c.admin_port, c.admin_port);
    let mut skip_in: Vec<PortRange> = std::iter::once(admin)
        .chain(c.skip_inbound.iter().copied())
        .collect();
    skip_in.sort();
    skip_in.dedup();
    for p in &skip_in {
        r.push(args(&[
            "-t",
            "nat",
            "-A",
            INBOUND_CHAIN,
            "-p",
            "tcp",
            "--dport",
            &p.iptables(),
            "-j",
            "RETURN",
        ]));
    }
    r.push(args(&[
        "-t",
        "nat",
        "-A",
        INBOUND_CHAIN,
        "-p",
        "tcp",
        "-j",
        INBOUND_REDIRECT_CHAIN,
    ]));
    r.extend([
        args(&["-t", "nat", "-N", OUTBOUND_REDIRECT_CHAIN]),
        args(&[
            "-t",
            "nat",
            "-A",
            OUTBOUND_REDIRECT_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &outbound,
        ]),
        args(&["-t", "nat", "-N", OUTBOUND_CHAIN]),
        args(&[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            OUTBOUND_CHAIN,
        ]),
        // The proxy's own connections (to upstreams, to the controller) go out as they are.
        args(&[
            "-t",
            "nat",
            "-A",
            OUTBOUND_CHAIN,
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            "-j",
            "RETURN",
        ]),
        // Loopback stays loopback (the app talking to itself, or to the proxy's admin port).
        args(&[
            "-t",
            "nat",
            "-A",
            OUTBOUND_CHAIN,
            "-d",
            "127.0.0.1/32",
            "-j",
            "RETURN",
        ]),
    ]);
    let mut skip_out = c.skip_outbound.clone();
    skip_out.sort();
    skip_out.dedup();
    for p in &skip_out {
        r.push(args(&[
            "-t",
            "nat",
            "-A",
            OUTBOUND_CHAIN,
            "-p",
            "tcp",
            "--dport",
            &p.iptables(),
            "-j",
            "RETURN",
        ]));
    }
    r.push(args(&[
        "-t",
        "nat",
        "-A",
        OUTBOUND_CHAIN,
        "-p",
        "tcp",
        "-j",
        OUTBOUND_REDIRECT_CHAIN,
    ]));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CaptureConfig {
        CaptureConfig {
            inbound_port: 15006,
            outbound_port: 15001,
            proxy_uid: 2102,
            skip_inbound: vec![PortRange(8000, 8010)],
            skip_outbound: vec![PortRange(5432, 5432), PortRange(443, 443)],
            admin_port: 9901,
        }
    }

    fn lines(c: &CaptureConfig) -> Vec<String> {
        rules(c).iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn the_rules_redirect_inbound_and_outbound_with_every_exception() {
        assert_eq!(
            lines(&config()),
            [
                "-t nat -N GOFE_IN_REDIRECT",
                "-t nat -A GOFE_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-t nat -N GOFE_INBOUND",
                "-t nat -A PREROUTING -p tcp -j GOFE_INBOUND",
                "-t nat -A GOFE_INBOUND -p tcp --dport 8000:8010 -j RETURN",
                "-t nat -A GOFE_INBOUND -p tcp --dport 9901 -j RETURN",
                "-t nat -A GOFE_INBOUND -p tcp -j GOFE_IN_REDIRECT",
                "-t nat -N GOFE_REDIRECT",
                "-t nat -A GOFE_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
                "-t nat -N GOFE_OUTPUT",
                "-t nat -A OUTPUT -p tcp -j GOFE_OUTPUT",
                "-t nat -A GOFE_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-t nat -A GOFE_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-t nat -A GOFE_OUTPUT -p tcp --dport 443 -j RETURN",
                "-t nat -A GOFE_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-t nat -A GOFE_OUTPUT -p tcp -j GOFE_REDIRECT",
            ]
        );
    }

    #[test]
    fn every_exception_comes_before_the_redirect_of_its_chain() {
        let r = lines(&config());
        for (chain, redirect) in [
            (INBOUND_CHAIN, INBOUND_REDIRECT_CHAIN),
            (OUTBOUND_CHAIN, OUTBOUND_REDIRECT_CHAIN),
        ] {
            let appended: Vec<&String> = r
                .iter()
                .filter(|l| l.starts_with(&format!("-t nat -A {chain} ")))
                .collect();
            let (last, before) = appended.split_last().expect("rules in the chain");
            assert!(last.ends_with(&format!("-j {redirect}")), "{last}");
            assert!(
                before.iter().all(|l| l.ends_with("-j RETURN")),
                "{before:?}"
            );
        }
    }

    #[test]
    fn the_admin_port_is_skipped_once_even_when_listed() {
        let mut c = config();
        c.skip_inbound = vec![PortRange(9901, 9901)];
        let admin = lines(&c)
            .into_iter()
            .filter(|l| l.contains("--dport 9901"))
            .count();
        assert_eq!(admin, 1);
    }

    #[test]
    fn port_ranges_print_as_annotations_and_as_iptables_write_them() {
        assert_eq!(PortRange(80, 80).to_string(), "80");
        assert_eq!(PortRange(80, 90).to_string(), "80-90");
        assert_eq!(PortRange(80, 90).iptables(), "80:90");
    }
}
