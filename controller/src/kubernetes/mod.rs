//! Kubernetes mode: the controller discovers what it steers from the API server.
//!
//! ```text
//!  TrafficPolicy ─┐ reflectors   topology::build (pure)    Controller::step     .status, Events
//!  EndpointSlice ─┴────────────▶ clusters, endpoints, ───▶ (leader) ──────────▶ per policy
//!                                per-cluster policy        Controller::follow   ◀── .status
//!  Lease ◀──────── leader::Elector ──── role ──────────▶   (followers)
//! ```
//!
//! Every replica watches `TrafficPolicy` objects and the `EndpointSlice`s of the Services they
//! select, and serves xDS. Only the replica holding the Lease decides; it writes each policy's
//! `.status` (weights, states, ejected endpoints, last decision time) and records ejections
//! and recoveries as Events on the policy. The others publish the weights they read from those
//! statuses, so every replica serves the leader's decisions. Nothing is published until both
//! watches have listed once: an empty cache must never read as "no endpoints".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

pub mod crd;
pub mod leader;
pub mod topology;

use crate::config::KubernetesConfig;
use crate::{Controller, DecisionsView};
use crd::{Condition, EndpointStatus, TrafficPolicy, TrafficPolicyStatus};
use leader::{Elector, Role};
use topology::{Binding, Topology};

/// The field manager gofe's writes carry.
pub const FIELD_MANAGER: &str = "gofe-controller";

/// Why Kubernetes mode stopped.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No client could be configured (no kubeconfig, not in a Pod).
    #[error("cannot reach Kubernetes: {0}")]
    Client(#[from] kube::Error),
}

/// Builds a client from the environment: in-cluster service account, else `$KUBECONFIG` or
/// `~/.kube/config`.
pub async fn client() -> Result<Client, KubernetesError> {
    Ok(Client::try_default().await?)
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// `.status` for a policy from the step's view, keeping the previous status's times when
/// nothing they describe changed.
pub fn desired_status(
    binding: &Binding,
    view: &DecisionsView,
    previous: Option<&TrafficPolicyStatus>,
    now: &str,
) -> TrafficPolicyStatus {
    let mut status = TrafficPolicyStatus {
        observed_generation: binding.generation,
        cluster: binding.cluster.clone(),
        ..TrafficPolicyStatus::default()
    };
    if let Some(cv) = binding.cluster.as_ref().and_then(|c| view.clusters.get(c)) {
        status.mode = Some(cv.mode.to_owned());
        status.endpoints = cv
            .endpoints
            .iter()
            .map(|e| EndpointStatus {
                address: e.endpoint.clone(),
                pod: binding.pods.get(&e.endpoint).cloned(),
                weight: e.weight,
                healthy: e.healthy,
                state: e.state.to_owned(),
                reason: e.reason.clone(),
            })
            .collect();
        status.ejected = cv
            .endpoints
            .iter()
            .filter(|e| !e.healthy)
            .map(|e| e.endpoint.clone())
            .collect();
    }
    status.endpoint_count = status.endpoints.len() as u32;
    status.ejected_count = status.ejected.len() as u32;
    let (ready, reason, message) = match &binding.problem {
        Some((reason, message)) => ("False", reason.clone(), message.clone()),
        None => (
            "True",
            "Applied".to_owned(),
            format!(
                "steering {} endpoints of Service {}",
                status.endpoint_count, binding.service
            ),
        ),
    };
    let mut condition = Condition {
        type_: "Ready".into(),
        status: ready.into(),
        reason,
        message,
        last_transition_time: Some(now.to_owned()),
    };
    let decided = |s: &TrafficPolicyStatus| {
        (
            s.mode.clone(),
            s.endpoints
                .iter()
                .map(|e| (e.address.clone(), e.weight, e.healthy, e.state.clone()))
                .collect::<Vec<_>>(),
        )
    };
    if let Some(prev) = previous {
        if let Some(pc) = prev.conditions.iter().find(|c| c.type_ == "Ready") {
            if pc.status == condition.status {
                condition.last_transition_time = pc.last_transition_time.clone();
            }
        }
        if decided(prev) == decided(&status) {
            status.last_decision_time = prev.last_decision_time.clone();
        }
    }
    if status.last_decision_time.is_none() && binding.cluster.is_some() {
        status.last_decision_time = Some(now.to_owned());
    }
    status.conditions = vec![condition];
    status
}

/// The weights the leader published, as read from the policies' statuses.
pub fn followed_weights(
    bindings: &[Binding],
    policies: &[Arc<TrafficPolicy>],
) -> BTreeMap<String, BTreeMap<String, (u32, bool)>> {
    let mut out = BTreeMap::new();
    for b in bindings {
        let Some(cluster) = &b.cluster else { continue };
        let Some(policy) = policies.iter().find(|p| {
            p.namespace().as_deref() == Some(b.namespace.as_str()) && p.name_any() == b.name
        }) else {
            continue;
        };
        let Some(status) = &policy.status else {
            continue;
        };
        if status.cluster.as_ref() != Some(cluster) {
            continue;
        }
        out.insert(
            cluster.clone(),
            status
                .endpoints
                .iter()
                .map(|e| (e.address.clone(), (e.weight, e.healthy)))
                .collect(),
        );
    }
    out
}

/// Runs the controller in Kubernetes mode until `stop` resolves.
pub async fn drive(
    mut controller: Controller,
    client: Client,
    settings: KubernetesConfig,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let (policies_api, slices_api): (Api<TrafficPolicy>, Api<EndpointSlice>) =
        match &settings.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let (policies, policies_writer) = reflector::store::<TrafficPolicy>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let changed = Arc::new(tokio::sync::Notify::new());
    let tasks = vec![
        spawn_watch(
            watcher(policies_api, watcher::Config::default())
                .default_backoff()
                .reflect(policies_writer)
                .touched_objects(),
            Arc::clone(&changed),
            "TrafficPolicy",
        ),
        spawn_watch(
            watcher(
                slices_api,
                watcher::Config::default().labels(topology::SERVICE_NAME_LABEL),
            )
            .default_backoff()
            .reflect(slices_writer)
            .touched_objects(),
            Arc::clone(&changed),
            "EndpointSlice",
        ),
    ];

    // Leader election in its own task, so a slow API call never delays a decision step.
    let le = settings.leader_election.clone();
    let identity = leader::identity(le.identity.as_deref());
    let (role_tx, mut role_rx) = tokio::sync::watch::channel(if le.enabled {
        Role::Follower { leader: None }
    } else {
        Role::Leader
    });
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let elector_task = if le.enabled {
        let namespace = le
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let mut elector = Elector::new(
            Api::<Lease>::namespaced(client.clone(), &namespace),
            &le,
            identity.clone(),
        );
        Some(tokio::spawn(async move {
            let mut release_rx = release_rx;
            loop {
                let role = elector.tick().await;
                role_tx.send_if_modified(|r| {
                    let changed = *r != role;
                    *r = role;
                    changed
                });
                tokio::select! {
                    _ = tokio::time::sleep(le.retry_period) => {}
                    _ = &mut release_rx => {
                        elector.release().await;
                        return;
                    }
                }
            }
        }))
    } else {
        drop(release_rx);
        None
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.clone()),
        },
    );

    tokio::pin!(stop);
    // Nothing is decided or published before both caches hold a full list.
    tokio::select! {
        _ = async {
            let _ = policies.wait_until_ready().await;
            let _ = slices.wait_until_ready().await;
        } => {}
        _ = &mut stop => {
            shutdown(tasks, elector_task, release_tx).await;
            return;
        }
    }
    tracing::info!(identity = %identity, namespace = settings.namespace.as_deref().unwrap_or("(all)"), "kubernetes discovery synced");

    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = changed.notified() => {
                // Let a burst of watch events (a rollout) settle into one step.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = role_rx.changed() => {}
            _ = &mut stop => break,
        }
        let role = role_rx.borrow_and_update().clone();
        step(
            &mut controller,
            &policies,
            &slices,
            &client,
            &recorder,
            role.is_leader(),
        )
        .await;
    }
    shutdown(tasks, elector_task, release_tx).await;
}

async fn shutdown(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    elector: Option<tokio::task::JoinHandle<()>>,
    release: tokio::sync::oneshot::Sender<()>,
) {
    for t in tasks {
        t.abort();
    }
    let _ = release.send(());
    if let Some(e) = elector {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
}

/// One step in Kubernetes mode.
async fn step(
    controller: &mut Controller,
    policies: &Store<TrafficPolicy>,
    slices: &Store<EndpointSlice>,
    client: &Client,
    recorder: &Recorder,
    leader: bool,
) {
    let policy_objects = policies.state();
    let slice_objects: Vec<EndpointSlice> = slices.state().iter().map(|s| (**s).clone()).collect();
    let owned: Vec<TrafficPolicy> = policy_objects.iter().map(|p| (**p).clone()).collect();
    let Topology {
        config,
        overrides,
        bindings,
    } = topology::build(controller.file_base(), &owned, &slice_objects);
    controller.set_topology(config, &overrides);
    controller.set_api_listener_names(api_listener_names(&bindings));
    if !leader {
        let weights = followed_weights(&bindings, &policy_objects);
        controller.follow(&weights).await;
        return;
    }
    let view = controller.step().await;
    let now = now_rfc3339();
    for binding in &bindings {
        let Some(object) = policy_objects.iter().find(|p| {
            p.namespace().as_deref() == Some(binding.namespace.as_str())
                && p.name_any() == binding.name
        }) else {
            continue;
        };
        let desired = desired_status(binding, &view, object.status.as_ref(), &now);
        if object.status.as_ref() != Some(&desired) {
            write_status(client, binding, &desired).await;
        }
        for event in view
            .events
            .iter()
            .filter(|e| Some(&e.cluster) == binding.cluster.as_ref())
        {
            let (type_, reason, action) = match event.kind {
                "ejected" => (EventType::Warning, "Ejected", "Eject"),
                "half_open" => (EventType::Normal, "HalfOpen", "Trial"),
                _ => (EventType::Normal, "Recovered", "Recover"),
            };
            let pod = binding
                .pods
                .get(&event.endpoint)
                .map_or_else(String::new, |p| format!(" (pod {p})"));
            let note = format!("endpoint {}{pod}: {}", event.endpoint, event.reason);
            let reference: ObjectReference = object.object_ref(&());
            if let Err(e) = recorder
                .publish(
                    &KubeEvent {
                        type_,
                        reason: reason.into(),
                        note: Some(note),
                        action: action.into(),
                        secondary: None,
                    },
                    &reference,
                )
                .await
            {
                tracing::warn!(error = %e, policy = %binding.name, "cannot record event");
            }
        }
    }
}

async fn write_status(client: &Client, binding: &Binding, status: &TrafficPolicyStatus) {
    let namespaced: Api<TrafficPolicy> = Api::namespaced(client.clone(), &binding.namespace);
    let patch = serde_json::json!({ "status": status });
    if let Err(e) = namespaced
        .patch_status(
            &binding.name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(error = %e, policy = %format!("{}/{}", binding.namespace, binding.name), "cannot write status");
    }
}

/// Drives a reflector's watch stream, waking `changed` on every change and logging errors (the
/// stream backs off and resumes by itself).
fn spawn_watch<K, S>(
    stream: S,
    changed: Arc<tokio::sync::Notify>,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "{what} watch"),
            }
        }
    })
}

/// The API listener name of each cluster a `TrafficPolicy` steers: its Service's
/// `SERVICE.NAMESPACE` (what a proxyless gRPC client's `xds:///SERVICE.NAMESPACE` resolves).
pub fn api_listener_names(bindings: &[Binding]) -> BTreeMap<String, String> {
    bindings
        .iter()
        .filter_map(|b| {
            let cluster = b.cluster.clone()?;
            Some((cluster, format!("{}.{}", b.service, b.namespace)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(namespace: &str, service: &str, cluster: Option<&str>) -> Binding {
        Binding {
            namespace: namespace.into(),
            name: format!("{service}-policy"),
            generation: None,
            service: service.into(),
            cluster: cluster.map(Into::into),
            problem: None,
            pods: BTreeMap::new(),
        }
    }

    #[test]
    fn each_applied_traffic_policy_names_its_cluster_s_api_listener_after_its_service() {
        let names = api_listener_names(&[
            binding("shop", "reviews", Some("reviews")),
            binding("bank", "reviews", Some("bank-reviews")),
            binding("shop", "broken", None),
        ]);
        assert_eq!(
            names,
            BTreeMap::from([
                ("reviews".to_owned(), "reviews.shop".to_owned()),
                ("bank-reviews".to_owned(), "reviews.bank".to_owned()),
            ]),
            "a policy that does not apply has no cluster and no listener"
        );
    }
}
