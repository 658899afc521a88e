//! What the xDS client tells the rest of the proxy: whether its stream is up, what it accepted
//! and rejected (`/metrics`, `/config_dump`'s `xds` section), and when the proxy is ready.
//!
//! Readiness follows Envoy's initialization: the proxy is not ready until the control plane has
//! answered CDS and LDS (accepted or rejected; Envoy too goes on after a rejected first
//! update) and every EDS and RDS resource the accepted clusters and listeners name has
//! arrived. Each of the two stages may take up to `initial_fetch_timeout` (Envoy's
//! `initial_fetch_timeout`, default 15 s, `0s`: no limit): CDS and LDS from the client's start,
//! EDS and RDS from the end of the first stage, as Envoy's dependent subscriptions start when
//! their clusters and listeners arrive. When a stage runs out, the proxy logs a warning, counts
//! `gofe_xds_init_fetch_timeout_total`, and reports ready with what it has (Envoy does the
//! same); the stream keeps going, and a later snapshot is applied as usual.
//!
//! Everything here runs on the client's task or the readiness task, never per request.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gofe_proto::{ResourceType, Resources};
use serde::Serialize;
use tokio::sync::watch;

use super::client::{ClientOptions, ClientStatus, InitialFetch};
use crate::Proxy;

/// Longest error text kept in a metric label.
const MAX_ERROR_LABEL: usize = 256;

/// All four types, in the order `/config_dump` lists them.
const TYPES: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoints,
    ResourceType::Listener,
    ResourceType::Route,
];

/// Where the initial fetch stands, as `/config_dump` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum InitialFetchState {
    /// Waiting for the control plane (`/ready` says 503 `INITIALIZING`).
    Waiting,
    /// The first snapshot is serving.
    Done,
    /// `initial_fetch_timeout` expired first; the proxy serves what it has.
    TimedOut,
}

/// One resource type in the `xds` section of `/config_dump`.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct TypeView {
    /// The last accepted (ACKed) `version_info`; absent before the first.
    version: Option<String>,
    /// Responses accepted.
    accepted: u64,
    /// Responses rejected (NACKed).
    rejected: u64,
    /// The `error_detail` of the last rejected response.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_rejection: Option<String>,
}

/// The `xds` section of `/config_dump`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct XdsView {
    /// The control plane, `host:port`.
    server: String,
    /// `node.id`.
    node: String,
    /// Whether the ADS stream is open.
    connected: bool,
    /// `waiting`, `done` or `timed_out`.
    initial_fetch: InitialFetchState,
    /// 0: no limit.
    initial_fetch_timeout_ms: u64,
    /// By short type name (`cds`, `eds`, `lds`, `rds`).
    types: BTreeMap<&'static str, TypeView>,
    /// Why the last connection attempt or stream failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

fn update_view(proxy: &Proxy, f: impl FnOnce(&mut XdsView)) {
    let mut view = proxy.shared.xds.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = view.as_mut() {
        f(v);
    }
}

/// Prepares `proxy` for a client with `options`: not ready until the initial fetch ends, the
/// static clusters' health is the configuration's, the xDS series exist.
pub(super) fn attach(proxy: &Proxy, options: &ClientOptions, initial_fetch_timeout: Duration) {
    let shared = &proxy.shared;
    shared.warming.store(true, Ordering::Release);
    let statics = options
        .base
        .clusters
        .iter()
        .map(|c| c.name.clone())
        .collect();
    *shared
        .static_clusters
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(statics));
    *shared.xds.lock().unwrap_or_else(|e| e.into_inner()) = Some(XdsView {
        server: options.server.clone(),
        node: options.node_id.clone(),
        connected: false,
        initial_fetch: InitialFetchState::Waiting,
        initial_fetch_timeout_ms: u64::try_from(initial_fetch_timeout.as_millis())
            .unwrap_or(u64::MAX),
        types: TYPES.map(|t| (t.short(), TypeView::default())).into(),
        last_error: None,
    });
    let m = shared.metrics.xds();
    m.connected.set(0);
    for t in TYPES {
        let _ = m.accepted.with_label_values(&[t.short()]);
        let _ = m.rejected.with_label_values(&[t.short()]);
    }
}

/// The ADS stream is open.
pub(super) fn connected(proxy: &Proxy, status: &watch::Sender<ClientStatus>) {
    status.send_modify(|s| s.connected = true);
    proxy.shared.metrics.xds().connected.set(1);
    update_view(proxy, |v| v.connected = true);
}

/// The connection attempt or the stream ended, with `error` when it failed.
pub(super) fn disconnected(
    proxy: &Proxy,
    status: &watch::Sender<ClientStatus>,
    error: Option<&String>,
) {
    status.send_modify(|s| {
        s.connected = false;
        if let Some(e) = error {
            s.last_error = Some(e.clone());
        }
    });
    let m = proxy.shared.metrics.xds();
    m.connected.set(0);
    m.disconnects.inc();
    update_view(proxy, |v| {
        v.connected = false;
        if let Some(e) = error {
            v.last_error = Some(e.clone());
        }
    });
}

/// A response of `ty` with `version` was accepted (and is being ACKed).
pub(super) fn accepted(
    proxy: &Proxy,
    status: &watch::Sender<ClientStatus>,
    ty: ResourceType,
    version: &str,
) {
    status.send_modify(|s| {
        s.versions.insert(ty, version.to_owned());
    });
    let m = proxy.shared.metrics.xds();
    m.accepted.with_label_values(&[ty.short()]).inc();
    update_view(proxy, |v| {
        let Some(t) = v.types.get_mut(ty.short()) else {
            return;
        };
        t.accepted += 1;
        if t.version.as_deref() != Some(version) {
            if let Some(old) = &t.version {
                let _ = m.version.remove_label_values(&[ty.short(), old]);
            }
            m.version.with_label_values(&[ty.short(), version]).set(1);
            t.version = Some(version.to_owned());
        }
    });
}

/// A response of `ty` was rejected (and is being NACKed) with `error`.
pub(super) fn rejected(
    proxy: &Proxy,
    status: &watch::Sender<ClientStatus>,
    ty: ResourceType,
    error: &str,
) {
    status.send_modify(|s| {
        s.last_nack = Some(error.to_owned());
        s.nacks += 1;
    });
    let m = proxy.shared.metrics.xds();
    m.rejected.with_label_values(&[ty.short()]).inc();
    let label: String = error.chars().take(MAX_ERROR_LABEL).collect();
    update_view(proxy, |v| {
        let Some(t) = v.types.get_mut(ty.short()) else {
            return;
        };
        t.rejected += 1;
        if let Some(old) = &t.last_rejection {
            let old: String = old.chars().take(MAX_ERROR_LABEL).collect();
            let _ = m.last_rejection.remove_label_values(&[ty.short(), &old]);
        }
        m.last_rejection
            .with_label_values(&[ty.short(), &label])
            .set(1);
        t.last_rejection = Some(error.to_owned());
    });
}

/// Re-evaluates how far the initial fetch is, after a response was handled. `wanted` are the
/// EDS and RDS names the accepted clusters and listeners need.
pub(super) fn progress(
    proxy: &Proxy,
    status: &watch::Sender<ClientStatus>,
    resources: &Resources,
    wanted: &HashMap<ResourceType, BTreeSet<String>>,
) {
    let fetch = {
        let view = proxy.shared.xds.lock().unwrap_or_else(|e| e.into_inner());
        let Some(view) = view.as_ref() else { return };
        let answered = |t: ResourceType| {
            view.types
                .get(t.short())
                .is_some_and(|v| v.accepted + v.rejected > 0)
        };
        let rejected = |t: ResourceType| view.types.get(t.short()).is_some_and(|v| v.rejected > 0);
        let arrived = |t: ResourceType, have: &dyn Fn(&str) -> bool| {
            rejected(t)
                || wanted
                    .get(&t)
                    .is_none_or(|names| names.iter().all(|n| have(n)))
        };
        InitialFetch {
            clusters_and_listeners: answered(ResourceType::Cluster)
                && answered(ResourceType::Listener),
            endpoints_and_routes: arrived(ResourceType::Endpoints, &|n| {
                resources.endpoints.contains_key(n)
            }) && arrived(ResourceType::Route, &|n| {
                resources.routes.contains_key(n) || resources.refused_routes.contains(n)
            }),
        }
    };
    status.send_if_modified(|s| {
        let changed = s.initial_fetch != fetch;
        s.initial_fetch = fetch;
        changed
    });
}

/// Waits for the initial fetch (or `timeout`, per stage; zero: no limit), then marks the proxy
/// ready. Ends early, leaving the proxy unready, if the client stops first.
pub(super) async fn readiness(
    proxy: Proxy,
    mut status: watch::Receiver<ClientStatus>,
    timeout: Duration,
) {
    let mut timed_out = Vec::new();
    let first = stage(&mut status, timeout, |f| f.clusters_and_listeners).await;
    match first {
        None => return,
        Some(true) => {}
        Some(false) => timed_out.push("cds+lds"),
    }
    let second = stage(&mut status, timeout, |f| f.endpoints_and_routes).await;
    match second {
        None => return,
        Some(true) => {}
        Some(false) => timed_out.push("eds+rds"),
    }
    let state = if timed_out.is_empty() {
        tracing::info!("initial xDS fetch complete: ready");
        InitialFetchState::Done
    } else {
        proxy.shared.metrics.xds().init_fetch_timeouts.inc();
        tracing::warn!(
            waiting_for = %timed_out.join(","),
            timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            "initial xDS fetch timed out: ready with the configuration at hand"
        );
        InitialFetchState::TimedOut
    };
    update_view(&proxy, |v| v.initial_fetch = state);
    proxy.shared.warming.store(false, Ordering::Release);
}

/// Some(true) once `done` holds, Some(false) after `timeout` (unless zero), None if the client
/// went away.
async fn stage(
    status: &mut watch::Receiver<ClientStatus>,
    timeout: Duration,
    done: impl FnMut(&InitialFetch) -> bool,
) -> Option<bool> {
    let mut done = done;
    let wait = async {
        status
            .wait_for(|s| done(&s.initial_fetch))
            .await
            .map(|_| ())
    };
    if timeout.is_zero() {
        return wait.await.ok().map(|()| true);
    }
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Some(true),
        Ok(Err(_)) => None,
        Err(_) => Some(false),
    }
}
