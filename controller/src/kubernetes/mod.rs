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
//!
//! Several clusters: `kubernetes.clusters` adds remote clusters (a kubeconfig file and
//! context, or a Secret holding a kubeconfig as Istio's remote secrets do). Their
//! EndpointSlices and Nodes are watched beside the local ones and merged per Service with
//! their localities ([`topology::build_clusters`]); `TrafficPolicy` objects and the Lease stay
//! in the local cluster. A remote that cannot be reached keeps the endpoints it last listed
//! (a reflector's store survives its watch's errors), is logged and shows 0 in
//! `gofe_controller_kubernetes_cluster_up{cluster}`; it never holds back the local cluster's
//! publication (a remote that never answered contributes nothing until it does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

pub mod crd;
pub mod leader;
pub mod topology;

use crate::config::{KubernetesConfig, RemoteClusterConfig};
use crate::{Controller, DecisionsView};
use crd::{Condition, EndpointStatus, TrafficPolicy, TrafficPolicyStatus};
use leader::{Elector, Role};
use topology::{Binding, ClusterObjects, Topology};

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

/// Why a remote cluster's client could not be made (the remote is retried, never fatal).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The Secret could not be read.
    #[error("secret {namespace}/{name}: {source}")]
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The Secret has no usable kubeconfig.
    #[error("secret {namespace}/{name}: {message}")]
    SecretContent {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A client could not be built from the kubeconfig.
    #[error("client: {0}")]
    Client(#[source] kube::Error),
}

impl RemoteError {
    /// A short label for the error's kind (logs, metrics).
    pub fn metric_label(&self) -> &'static str {
        match self {
            RemoteError::Kubeconfig { .. } => "kubeconfig",
            RemoteError::Secret { .. } => "secret",
            RemoteError::SecretContent { .. } => "secret_content",
            RemoteError::Client(_) => "client",
        }
    }
}

/// Where a remote cluster's client comes from.
#[derive(Clone)]
pub enum RemoteSource {
    /// A client made already (tests: a fake API server).
    Client(Client),
    /// A kubeconfig file and optional context.
    Kubeconfig {
        /// The file.
        path: String,
        /// The context; default the file's current-context.
        context: Option<String>,
    },
    /// A Secret of the local cluster holding a kubeconfig.
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The data key; default the cluster's name, else the only key.
        key: Option<String>,
    },
}

/// A remote cluster to watch.
#[derive(Clone)]
pub struct Remote {
    /// Its name (endpoints' `cluster`).
    pub name: String,
    /// How to reach it.
    pub source: RemoteSource,
}

impl Remote {
    /// The remote of a `kubernetes.clusters[]` entry.
    pub fn of(config: &RemoteClusterConfig) -> Self {
        let source = match (&config.kubeconfig, &config.secret) {
            (Some(path), _) => RemoteSource::Kubeconfig {
                path: path.clone(),
                context: config.context.clone(),
            },
            (None, Some(secret)) => RemoteSource::Secret {
                namespace: secret
                    .namespace
                    .clone()
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .unwrap_or_else(|| "default".into()),
                name: secret.name.clone(),
                key: secret.key.clone(),
            },
            // Refused by validation; an empty kubeconfig path fails loudly when used.
            (None, None) => RemoteSource::Kubeconfig {
                path: String::new(),
                context: None,
            },
        };
        Remote {
            name: config.name.clone(),
            source,
        }
    }

    /// A client of the remote's API server (`local` reads a Secret).
    pub async fn client(&self, local: &Client) -> Result<Client, RemoteError> {
        let (kubeconfig, context) = match &self.source {
            RemoteSource::Client(c) => return Ok(c.clone()),
            RemoteSource::Kubeconfig { path, context } => (
                kube::config::Kubeconfig::read_from(path).map_err(|source| {
                    RemoteError::Kubeconfig {
                        path: path.clone(),
                        source,
                    }
                })?,
                context.clone(),
            ),
            RemoteSource::Secret {
                namespace,
                name,
                key,
            } => {
                let secret = Api::<Secret>::namespaced(local.clone(), namespace)
                    .get(name)
                    .await
                    .map_err(|source| RemoteError::Secret {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source,
                    })?;
                let content = |message: String| RemoteError::SecretContent {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    message,
                };
                let data = secret.data.unwrap_or_default();
                let wanted = key.clone().unwrap_or_else(|| self.name.clone());
                let bytes = match data.get(&wanted) {
                    Some(b) => b,
                    None if key.is_none() && data.len() == 1 => {
                        data.values().next().expect("one key")
                    }
                    None => return Err(content(format!("no data key {wanted:?}"))),
                };
                let text = std::str::from_utf8(&bytes.0)
                    .map_err(|_| content(format!("data key {wanted:?} is not UTF-8")))?;
                let kubeconfig = kube::config::Kubeconfig::from_yaml(text)
                    .map_err(|e| content(format!("data key {wanted:?}: {e}")))?;
                (kubeconfig, None)
            }
        };
        let options = kube::config::KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|source| RemoteError::Kubeconfig {
                path: format!("(cluster {})", self.name),
                source,
            })?;
        Client::try_from(config).map_err(RemoteError::Client)
    }
}

/// One cluster's watched objects.
struct Watched {
    name: String,
    local: bool,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
}

/// The reachability gauge, registered in the controller's registry.
fn cluster_up_gauge(registry: &prometheus::Registry) -> prometheus::IntGaugeVec {
    let g = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "gofe_controller_kubernetes_cluster_up",
            "1 while the controller's EndpointSlice watch of a cluster works, 0 while it fails \
             (its last endpoints are kept).",
        ),
        &["cluster"],
    )
    .expect("valid metric");
    // A second Kubernetes driver on the same controller (tests) shares the series.
    match registry.register(Box::new(g.clone())) {
        Ok(()) => g,
        Err(_) => g,
    }
}

/// Starts the watches of one cluster's EndpointSlices and Nodes on `client`, reporting into
/// `up` and waking `changed`.
fn watch_cluster(
    client: Client,
    namespace: Option<&str>,
    slices_writer: reflector::store::Writer<EndpointSlice>,
    nodes_writer: reflector::store::Writer<Node>,
    changed: &Arc<tokio::sync::Notify>,
    cluster: &str,
    up: &prometheus::IntGaugeVec,
) -> Vec<tokio::task::JoinHandle<()>> {
    let slices_api: Api<EndpointSlice> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let nodes_api: Api<Node> = Api::all(client);
    vec![
        spawn_cluster_watch(
            watcher(
                slices_api,
                watcher::Config::default().labels(topology::SERVICE_NAME_LABEL),
            )
            .default_backoff()
            .reflect(slices_writer)
            .touched_objects(),
            Arc::clone(changed),
            cluster.to_owned(),
            Some(up.with_label_values(&[cluster])),
            "EndpointSlice",
        ),
        spawn_cluster_watch(
            watcher(nodes_api, watcher::Config::default())
                .default_backoff()
                .reflect(nodes_writer)
                .touched_objects(),
            Arc::clone(changed),
            cluster.to_owned(),
            None,
            "Node",
        ),
    ]
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

/// Runs the controller in Kubernetes mode until `stop` resolves, with the remote clusters of
/// `settings.clusters`.
pub async fn drive(
    controller: Controller,
    client: Client,
    settings: KubernetesConfig,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let remotes = settings.clusters.iter().map(Remote::of).collect();
    drive_clusters(controller, client, settings, remotes, interval, stop).await;
}

/// [`drive`] with the remote clusters given (tests hand in clients of fake API servers).
pub async fn drive_clusters(
    mut controller: Controller,
    client: Client,
    settings: KubernetesConfig,
    remotes: Vec<Remote>,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let policies_api: Api<TrafficPolicy> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (policies, policies_writer) = reflector::store::<TrafficPolicy>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let changed = Arc::new(tokio::sync::Notify::new());
    let up = cluster_up_gauge(&controller.registry());
    let mut tasks = vec![spawn_watch(
        watcher(policies_api, watcher::Config::default())
            .default_backoff()
            .reflect(policies_writer)
            .touched_objects(),
        Arc::clone(&changed),
        "TrafficPolicy",
    )];
    tasks.extend(watch_cluster(
        client.clone(),
        settings.namespace.as_deref(),
        slices_writer,
        nodes_writer,
        &changed,
        &settings.cluster_name,
        &up,
    ));
    let mut watched = vec![Watched {
        name: settings.cluster_name.clone(),
        local: true,
        slices: slices.clone(),
        nodes,
    }];
    for remote in remotes {
        let (slices, slices_writer) = reflector::store::<EndpointSlice>();
        let (nodes, nodes_writer) = reflector::store::<Node>();
        watched.push(Watched {
            name: remote.name.clone(),
            local: false,
            slices,
            nodes,
        });
        let local = client.clone();
        let changed = Arc::clone(&changed);
        let up = up.clone();
        let namespace = settings.namespace.clone();
        up.with_label_values(&[&remote.name]).set(0);
        tasks.push(tokio::spawn(async move {
            // The client (a Secret to read, a file to parse) is retried until it can be made.
            let mut wait = Duration::from_secs(1);
            let remote_client = loop {
                match remote.client(&local).await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(
                            cluster = %remote.name,
                            error = %e,
                            kind = e.metric_label(),
                            retry_in_s = wait.as_secs(),
                            "remote cluster unreachable"
                        );
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(60));
                    }
                }
            };
            let inner = watch_cluster(
                remote_client,
                namespace.as_deref(),
                slices_writer,
                nodes_writer,
                &changed,
                &remote.name,
                &up,
            );
            // Aborting this task must stop the watches too.
            let _guard = AbortOnDrop(inner);
            std::future::pending::<()>().await;
        }));
    }

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
            &watched,
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
    watched: &[Watched],
    client: &Client,
    recorder: &Recorder,
    leader: bool,
) {
    let policy_objects = policies.state();
    let objects: Vec<(Vec<EndpointSlice>, Vec<Node>)> = watched
        .iter()
        .map(|w| {
            (
                w.slices.state().iter().map(|s| (**s).clone()).collect(),
                w.nodes.state().iter().map(|n| (**n).clone()).collect(),
            )
        })
        .collect();
    let clusters: Vec<ClusterObjects<'_>> = watched
        .iter()
        .zip(&objects)
        .map(|(w, (slices, nodes))| ClusterObjects {
            name: &w.name,
            local: w.local,
            slices,
            nodes,
        })
        .collect();
    let owned: Vec<TrafficPolicy> = policy_objects.iter().map(|p| (**p).clone()).collect();
    let Topology {
        config,
        overrides,
        bindings,
    } = topology::build_clusters(controller.file_base(), &owned, &clusters);
    for b in &bindings {
        for (address, cluster) in &b.duplicates {
            tracing::warn!(
                policy = %format!("{}/{}", b.namespace, b.name),
                endpoint = %address,
                cluster = %cluster,
                kept = b.clusters.get(address).map_or("", String::as_str),
                "endpoint address given by two clusters: the first is kept (gofe assumes one flat network)"
            );
        }
    }
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

/// Aborts the tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Drives one cluster's watch stream as [`spawn_watch`] does, and reports the cluster up (1)
/// on each success and down (0, logged once per outage) on an error; the reflector's store
/// keeps the objects it last listed meanwhile.
fn spawn_cluster_watch<K, S>(
    stream: S,
    changed: Arc<tokio::sync::Notify>,
    cluster: String,
    up: Option<prometheus::IntGauge>,
    what: &'static str,
) -> tokio::task::JoinHandle<()>
where
    S: futures_util::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut down = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => {
                    if let Some(up) = &up {
                        up.set(1);
                    }
                    if down {
                        tracing::info!(cluster = %cluster, watch = what, "cluster reachable again");
                        down = false;
                    }
                    changed.notify_one();
                }
                Err(e) => {
                    if let Some(up) = &up {
                        up.set(0);
                    }
                    if !down {
                        tracing::warn!(
                            cluster = %cluster,
                            watch = what,
                            error = %e,
                            "cluster watch failing: keeping its last objects"
                        );
                        down = true;
                    }
                }
            }
        }
    })
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
            clusters: BTreeMap::new(),
            duplicates: Vec::new(),
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
