//! Leader election on a `coordination.k8s.io/v1` Lease, as Kubernetes' own controllers do it
//! (client-go's algorithm): the leader renews the lease every `retry_period`; another replica
//! takes it over once it has seen the same lease record unchanged for `lease_duration` by its
//! own clock (so clock skew between nodes does not matter); every write carries the
//! `resourceVersion` it read, so of two replicas racing for the lease the API server lets one
//! win and answers the other `409 Conflict`. A leader that cannot renew for `renew_deadline`
//! stops deciding before anyone else can take over.
//!
//! The judgement is [`judge`], a pure function; [`Elector`] does the reads and writes.
//!
//! Written here rather than taken from a crate: the published Lease crates for kube-rs lock by
//! server-side-apply field ownership, which kube-rs's mock-service tests cannot exercise, while
//! this optimistic-concurrency form is client-go's own and a few dozen lines.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

use crate::config::LeaderElectionConfig;

/// What a replica should do about the lease it just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// It holds the lease: renew it.
    Renew,
    /// The lease is free or expired: take it.
    Acquire,
    /// Someone else holds it.
    Follow {
        /// The holder.
        holder: String,
    },
}

/// Judges a lease: `unchanged_for` is how long this replica has seen the same record.
pub fn judge(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration) -> Judgement {
    let holder = spec
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    if holder == me {
        return Judgement::Renew;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .map_or(Duration::ZERO, |s| Duration::from_secs(s.max(0) as u64));
    if holder.is_empty() || unchanged_for >= duration {
        Judgement::Acquire
    } else {
        Judgement::Follow { holder }
    }
}

/// This replica's role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// It decides.
    Leader,
    /// It serves the leader's decisions.
    Follower {
        /// The leader, when known.
        leader: Option<String>,
    },
}

impl Role {
    /// Whether this replica decides.
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader)
    }
}

/// The lease record as last observed, and since when (by this replica's clock).
#[derive(Clone, Debug)]
struct Observed {
    record: (Option<String>, Option<String>, Option<i32>),
    since: Instant,
}

/// Holds or follows one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_deadline: Duration,
    observed: Option<Observed>,
    last_renewed: Option<Instant>,
    role: Role,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl Elector {
    /// An elector for `settings`, as `identity`, through `api` (the Lease's namespace).
    pub fn new(api: Api<Lease>, settings: &LeaderElectionConfig, identity: String) -> Self {
        Elector {
            api,
            name: settings.lease_name.clone(),
            identity,
            duration: settings.lease_duration,
            renew_deadline: settings.renew_deadline,
            observed: None,
            last_renewed: None,
            role: Role::Follower { leader: None },
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: read the lease, then renew, acquire or follow. Returns the role now.
    pub async fn tick(&mut self) -> Role {
        let now = Instant::now();
        let role = match self.round(now).await {
            Ok(role) => role,
            Err(e) => {
                // A leader keeps deciding through brief API trouble, up to the renew deadline.
                let within = self
                    .last_renewed
                    .is_some_and(|t| now.duration_since(t) < self.renew_deadline);
                if self.role.is_leader() && within {
                    tracing::warn!(error = %e, "cannot renew the lease yet; still leading");
                    Role::Leader
                } else {
                    if self.role.is_leader() {
                        tracing::error!(error = %e, "lease not renewed within the renew deadline; stopped leading");
                    } else {
                        tracing::warn!(error = %e, "cannot read the lease");
                    }
                    Role::Follower { leader: None }
                }
            }
        };
        if role != self.role {
            match &role {
                Role::Leader => {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became the leader")
                }
                Role::Follower { leader } => {
                    tracing::info!(identity = %self.identity, leader = leader.as_deref().unwrap_or("unknown"), "following")
                }
            }
        }
        self.role = role.clone();
        role
    }

    async fn round(&mut self, now: Instant) -> Result<Role, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
            spec.lease_transitions,
        );
        let since = match &self.observed {
            Some(o) if o.record == record => o.since,
            _ => now,
        };
        self.observed = Some(Observed { record, since });
        match judge(Some(&spec), &self.identity, now.duration_since(since)) {
            Judgement::Follow { holder } => Ok(Role::Follower {
                leader: Some(holder),
            }),
            Judgement::Renew => {
                let mut next = spec;
                next.renew_time = Some(now_micro());
                next.lease_duration_seconds = Some(self.duration.as_secs() as i32);
                self.write(lease, next, now).await
            }
            Judgement::Acquire => {
                let mut next = spec;
                let t = now_micro();
                next.holder_identity = Some(self.identity.clone());
                next.acquire_time = Some(t.clone());
                next.renew_time = Some(t);
                next.lease_duration_seconds = Some(self.duration.as_secs() as i32);
                next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
                self.write(lease, next, now).await
            }
        }
    }

    /// Replaces the lease with `spec`, guarded by the version read.
    async fn write(
        &mut self,
        mut lease: Lease,
        spec: LeaseSpec,
        now: Instant,
    ) -> Result<Role, kube::Error> {
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.last_renewed = Some(now);
                Ok(Role::Leader)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!("lost the race for the lease");
                Ok(Role::Follower { leader: None })
            }
            Err(e) => Err(e),
        }
    }

    async fn create(&mut self) -> Result<Role, kube::Error> {
        let t = now_micro();
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                acquire_time: Some(t.clone()),
                renew_time: Some(t),
                lease_duration_seconds: Some(self.duration.as_secs() as i32),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                self.last_renewed = Some(Instant::now());
                Ok(Role::Leader)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Role::Follower { leader: None }),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown) so another replica takes over at once rather than
    /// after `lease_duration`.
    pub async fn release(&mut self) {
        if !self.role.is_leader() {
            return;
        }
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "released the lease"),
            Err(e) => tracing::warn!(error = %e, "could not release the lease"),
        }
        self.role = Role::Follower { leader: None };
    }
}

/// This replica's identity: configured, else `$POD_NAME`, else the host name; with the process
/// id so two processes on one host differ.
pub fn identity(configured: Option<&str>) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "gofe-controller".into());
    format!("{base}_{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn holder_renews_others_wait_for_expiry_by_their_own_clock() {
        let s = spec(Some("a"), 15);
        assert_eq!(judge(Some(&s), "a", Duration::ZERO), Judgement::Renew);
        assert_eq!(
            judge(Some(&s), "b", Duration::from_secs(14)),
            Judgement::Follow { holder: "a".into() }
        );
        assert_eq!(
            judge(Some(&s), "b", Duration::from_secs(15)),
            Judgement::Acquire
        );
    }

    #[test]
    fn free_or_released_leases_are_taken() {
        assert_eq!(judge(None, "b", Duration::ZERO), Judgement::Acquire);
        assert_eq!(
            judge(Some(&spec(None, 15)), "b", Duration::ZERO),
            Judgement::Acquire
        );
        assert_eq!(
            judge(Some(&spec(Some(""), 15)), "b", Duration::ZERO),
            Judgement::Acquire
        );
    }
}
