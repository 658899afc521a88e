//! `tcp` listeners (Envoy's `envoy.filters.network.tcp_proxy`): one upstream connection per
//! client connection, bytes copied both ways.
//!
//! ```text
//!   client ──▶ listener ──▶ TcpProxy::serve ──pick cluster, endpoint──▶ connect ──▶ copy ⇄
//!                                   └── passthrough (original_dst cluster): connect to the
//!                                       connection's original destination (computed at accept)
//! ```
//!
//! Each direction copies until its reader's end of stream, then half-closes the other side's
//! writer (`shutdown(Write)`), so a client that sends a request and half-closes still gets its
//! answer. An error in either direction ends both. The idle timeout watches one activity counter
//! both directions bump, every quarter of the timeout (no timer is reset per read). Everything
//! here is compiled when the configuration is applied: a connection pays a weighted pick, a
//! connect and its buffers.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gofe_core::balance::WeightedSequence;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::access_log::{AccessLog, Flags, LogHandle, Record};
use crate::cluster::Cluster;
use crate::health::Outcome;

/// Bytes read at once in each direction.
const COPY_BUFFER: usize = 16 * 1024;

/// A `tcp` listener's compiled `tcp_proxy`.
pub(crate) struct TcpProxy {
    target: Target,
    idle_timeout: Option<Duration>,
    stats: TcpStats,
}

/// Where connections go.
pub(crate) enum Target {
    /// Split by weight over clusters (one cluster: weight 1), each with its connect timeout.
    Clusters {
        clusters: Box<[(Arc<Cluster>, Duration)]>,
        order: WeightedSequence,
        ticket: AtomicU64,
    },
    /// To each connection's original destination (an `original_dst` cluster).
    Passthrough {
        cluster: Arc<Cluster>,
        connect_timeout: Duration,
    },
}

/// The `gofe_tcp_proxy_*` series of one `stat_prefix`, resolved when the configuration is
/// applied.
pub(crate) struct TcpStats {
    /// Upstream connections opened.
    pub(crate) connections: IntCounter,
    /// Proxied connections open now.
    pub(crate) active: IntGauge,
    /// Bytes read from clients (and written upstream).
    pub(crate) received: IntCounter,
    /// Bytes written to clients (read from upstreams).
    pub(crate) sent: IntCounter,
    /// Connections closed for the idle timeout.
    pub(crate) idle_timeouts: IntCounter,
    /// Connections no upstream connection could be opened for.
    pub(crate) connect_failures: IntCounter,
    /// Connections with no endpoint to go to.
    pub(crate) no_upstream: IntCounter,
    /// Passthrough connections refused because their original destination was the proxy's
    /// own listening socket.
    pub(crate) loops: IntCounter,
}

/// One accepted connection as the TCP proxy sees it.
pub(crate) struct Accepted {
    pub(crate) tcp: TcpStream,
    pub(crate) peer: SocketAddr,
    /// The accepting socket's own address.
    pub(crate) local: Option<SocketAddr>,
    /// The original destination, when the listener needed it (passthrough or capture).
    pub(crate) original_dst: Option<SocketAddr>,
}

impl TcpProxy {
    /// A proxy to `target`.
    pub(crate) fn new(target: Target, idle_timeout: Option<Duration>, stats: TcpStats) -> Self {
        TcpProxy {
            target,
            idle_timeout,
            stats,
        }
    }

    /// A weighted split (or one cluster, as a split of one).
    pub(crate) fn clusters(list: Vec<(Arc<Cluster>, Duration, u32)>) -> Target {
        let weights: Vec<u32> = list.iter().map(|(_, _, w)| *w).collect();
        Target::Clusters {
            clusters: list.into_iter().map(|(c, t, _)| (c, t)).collect(),
            order: WeightedSequence::new(&weights),
            ticket: AtomicU64::new(fastrand::u64(..)),
        }
    }

    /// Whether connections need their original destination.
    pub(crate) fn passthrough(&self) -> bool {
        matches!(self.target, Target::Passthrough { .. })
    }

    /// Serves one connection until both sides are done (or it fails, or goes idle).
    pub(crate) async fn serve(&self, conn: Accepted, log: Option<Arc<AccessLog>>) {
        let Accepted {
            tcp: mut client,
            peer,
            local,
            original_dst,
        } = conn;
        let mut log = log.map(|l| LogHandle::new(l, Record::connection(peer)));
        let received = Arc::new(AtomicU64::new(0));
        let sent = AtomicU64::new(0);
        if let Some(l) = &mut log {
            l.connection_counters(Arc::clone(&received));
        }
        let upstream = match self.connect(peer, local, original_dst, &mut log).await {
            Some(u) => u,
            None => return,
        };
        let mut upstream = upstream;
        self.stats.connections.inc();
        let _open = crate::ctx::ActiveGuard::new(&self.stats.active);
        let _ = upstream.set_nodelay(true);
        let activity = AtomicU64::new(0);
        let outcome = {
            let (mut cr, mut cw) = client.split();
            let (mut ur, mut uw) = upstream.split();
            let up = copy_half(&mut cr, &mut uw, &received, &self.stats.received, &activity);
            let down = copy_half(&mut ur, &mut cw, &sent, &self.stats.sent, &activity);
            tokio::select! {
                r = async { tokio::try_join!(up, down) } => match r {
                    Ok(_) => Ended::Done,
                    Err(e) => Ended::Failed(e),
                },
                _ = idle_for(&activity, self.idle_timeout) => Ended::Idle,
            }
        };
        match outcome {
            Ended::Done => {}
            Ended::Idle => {
                self.stats.idle_timeouts.inc();
                tracing::debug!(%peer, "closing an idle tcp_proxy connection");
            }
            Ended::Failed(e) => {
                tracing::debug!(%peer, error = %e, "tcp_proxy connection ended with an error");
                if let Some(l) = &mut log {
                    l.flag(Flags::UPSTREAM_CONNECTION_TERMINATION);
                }
            }
        }
        if let Some(l) = &mut log {
            l.sent(sent.load(Ordering::Relaxed) as usize);
        }
    }

    /// Opens the upstream connection, or says (metrics, log) why there is none.
    async fn connect(
        &self,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        original_dst: Option<SocketAddr>,
        log: &mut Option<LogHandle>,
    ) -> Option<TcpStream> {
        match &self.target {
            Target::Passthrough {
                cluster,
                connect_timeout,
            } => {
                if let Some(l) = log {
                    l.routed(None, cluster);
                }
                let Some(dest) = original_dst else {
                    self.stats.no_upstream.inc();
                    if let Some(l) = log {
                        l.flag(Flags::NO_HEALTHY_UPSTREAM);
                    }
                    return None;
                };
                if local.is_some_and(|local| is_self(dest, local)) {
                    // Not captured (a direct connection to the proxy's port) or captured back
                    // to it: passing it through would connect to ourselves, forever.
                    self.stats.loops.inc();
                    tracing::debug!(%peer, %dest, "refusing a passthrough to the proxy's own port");
                    if let Some(l) = log {
                        l.flag(Flags::NO_HEALTHY_UPSTREAM);
                    }
                    return None;
                }
                if let Some(l) = log {
                    l.upstream_addr(dest);
                }
                match open(dest, *connect_timeout).await {
                    Ok(tcp) => Some(tcp),
                    Err(e) => {
                        self.failed(peer, &e, log);
                        None
                    }
                }
            }
            Target::Clusters {
                clusters,
                order,
                ticket,
            } => {
                let t = ticket.fetch_add(1, Ordering::Relaxed);
                // Validation guarantees a non-zero weight; fall back to the first cluster.
                let (cluster, timeout) = clusters.get(order.pick(t).unwrap_or(0))?;
                if let Some(l) = log {
                    l.routed(None, cluster);
                }
                let Some(picked) = cluster.pick(None) else {
                    self.stats.no_upstream.inc();
                    cluster.stats.no_healthy.inc();
                    if let Some(l) = log {
                        l.flag(Flags::NO_HEALTHY_UPSTREAM);
                    }
                    return None;
                };
                let endpoint = &cluster.endpoints[picked.index];
                if let Some(l) = log {
                    l.endpoint(endpoint);
                }
                let connected =
                    tokio::time::timeout(*timeout, TcpStream::connect(&*endpoint.address)).await;
                let result = match connected {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )),
                };
                match result {
                    Ok(tcp) => {
                        cluster.record(picked.index, Outcome::Success, picked.trial);
                        Some(tcp)
                    }
                    Err(e) => {
                        cluster.record(picked.index, Outcome::ConnectFailure, picked.trial);
                        self.failed(peer, &e, log);
                        None
                    }
                }
            }
        }
    }

    fn failed(&self, peer: SocketAddr, e: &std::io::Error, log: &mut Option<LogHandle>) {
        self.stats.connect_failures.inc();
        tracing::debug!(%peer, error = %e, "tcp_proxy upstream connect failed");
        if let Some(l) = log {
            l.flag(Flags::UPSTREAM_CONNECT_FAILURE);
            l.failure_reason(e);
        }
    }
}

enum Ended {
    Done,
    Idle,
    Failed(std::io::Error),
}

/// Whether `dest` is the listening socket at `local` itself.
pub(crate) fn is_self(dest: SocketAddr, local: SocketAddr) -> bool {
    dest == local
        || (dest.port() == local.port()
            && (dest.ip().is_loopback() || dest.ip().is_unspecified() || dest.ip() == local.ip()))
}

async fn open(dest: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(dest)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Copies `from` into `to` until `from`'s end of stream, then half-closes `to`.
async fn copy_half<R, W>(
    from: &mut R,
    to: &mut W,
    bytes: &AtomicU64,
    counter: &IntCounter,
    activity: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // A shutdown of a socket the peer already closed may fail: nothing left to tell.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.fetch_add(1, Ordering::Relaxed);
        counter.inc_by(n as u64);
    }
}

/// Completes once `activity` has not moved for a whole `timeout` (checked every quarter of
/// it); never when `timeout` is `None`.
async fn idle_for(activity: &AtomicU64, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let quarter = (timeout / 4).max(Duration::from_millis(1));
    let mut seen = activity.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        tokio::time::sleep(quarter).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            quiet += 1;
            if quiet >= 4 {
                return;
            }
        } else {
            quiet = 0;
            seen = now;
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address written as the IPv4 address it is.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxys_own_socket_is_recognised_in_each_form() {
        let local: SocketAddr = "10.1.0.5:15001".parse().unwrap();
        for own in [
            "10.1.0.5:15001",
            "127.0.0.1:15001",
            "127.0.0.53:15001",
            "0.0.0.0:15001",
        ] {
            assert!(is_self(own.parse().unwrap(), local), "{own}");
        }
        for other in ["10.1.0.6:15001", "10.1.0.5:15002", "192.0.2.1:80"] {
            assert!(!is_self(other.parse().unwrap(), local), "{other}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_read_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_is_a_whole_timeout_without_activity() {
        let activity = AtomicU64::new(0);
        let started = tokio::time::Instant::now();
        idle_for(&activity, Some(Duration::from_secs(8))).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(8) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
    }
}
