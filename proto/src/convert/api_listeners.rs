//! API listeners for proxyless gRPC clients: what a client of `xds:///NAME` needs beside the
//! proxies' own resources — a Listener `NAME` whose `api_listener` is an HTTP connection
//! manager taking route configuration `NAME` over RDS (ADS) and ending in the router filter
//! (gRPC's xDS client requires both), and that route configuration: one virtual host for every
//! authority, sending every path to the cluster.

use super::*;

/// One API listener to publish: `xds:///name` reaches `cluster`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiListener {
    /// The listener's and its route configuration's resource name: what the client's target
    /// names (`xds:///NAME`).
    pub name: String,
    /// The cluster every call is routed to.
    pub cluster: String,
}

/// Why an API listener was not added.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiListenerSkipped {
    /// Its name is already a listener or route configuration of the resources.
    #[error("API listener {0:?}: the name is already a listener or route configuration")]
    NameTaken(String),
    /// It names a cluster the resources do not have.
    #[error("API listener {name:?}: no cluster {cluster:?}")]
    NoCluster {
        /// The listener.
        name: String,
        /// The cluster it names.
        cluster: String,
    },
}

/// The listener and route configuration of one API listener.
pub fn api_listener_resources(a: &ApiListener) -> (ListenerResource, RouteResource) {
    let listener = ListenerResource {
        name: a.name.clone(),
        kind: ListenerKind::Api,
        routes: RouteSource::Rds(a.name.clone()),
    };
    let routes = RouteResource {
        name: a.name.clone(),
        router: RouterConfig {
            virtual_hosts: vec![VirtualHostConfig {
                name: a.name.clone(),
                domains: vec!["*".into()],
                fault: None,
                local_ratelimit: None,
                routes: vec![RouteConfig {
                    name: None,
                    fault: None,
                    local_ratelimit: None,
                    matcher: RouteMatchConfig {
                        prefix: Some("/".into()),
                        ..Default::default()
                    },
                    route: RouteActionConfig {
                        cluster: Some(a.cluster.clone()),
                        timeout: DEFAULT_ROUTE_TIMEOUT,
                        ..Default::default()
                    },
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    };
    (listener, routes)
}

/// Adds each API listener to `resources` (after the proxies' own, so their names win): one
/// whose name is taken or whose cluster is missing is left out and returned, every other is
/// added.
pub fn add_api_listeners(
    resources: &mut Resources,
    listeners: &[ApiListener],
) -> Vec<ApiListenerSkipped> {
    let mut skipped = Vec::new();
    for a in listeners {
        if resources.listeners.contains_key(&a.name) || resources.routes.contains_key(&a.name) {
            skipped.push(ApiListenerSkipped::NameTaken(a.name.clone()));
            continue;
        }
        if !resources.clusters.contains_key(&a.cluster) {
            skipped.push(ApiListenerSkipped::NoCluster {
                name: a.name.clone(),
                cluster: a.cluster.clone(),
            });
            continue;
        }
        let (listener, routes) = api_listener_resources(a);
        resources.listeners.insert(a.name.clone(), listener);
        resources.routes.insert(a.name.clone(), routes);
    }
    skipped
}
