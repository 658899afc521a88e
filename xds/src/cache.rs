//! Per-node snapshots of resources, versioned by content, published at most once per debounce
//! window.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gofe_proto::wire::{Any, DiscoveryResponse};
use gofe_proto::{ConvertError, ResourceType, Resources};
use prost::Message as _;
use tokio::sync::{watch, Notify};

/// One encoded resource and its version (a hash of its content).
#[derive(Debug)]
pub struct Entry {
    /// The resource.
    pub any: Any,
    /// Its version: changes exactly when its content changes.
    pub version: String,
}

/// The resources of one type in a snapshot.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    /// Version of the whole set (a hash of every name and resource version).
    pub version: String,
    /// Resources by name.
    pub resources: BTreeMap<String, Arc<Entry>>,
    /// State-of-the-world responses already encoded, by subscription (its address: the
    /// subscription is interned, and the entry holds it so the address is not reused); and
    /// the size at which entries no stream uses any more are swept out.
    sotw: Mutex<(HashMap<usize, SotwMemo>, usize)>,
}

/// An encoded response and the subscription it was encoded for.
type SotwMemo = (Arc<Subscription>, Arc<EncodedSotw>);

/// A set of resource names a stream subscribed to, or the wildcard. Interned
/// ([`Subscriptions`]): streams that ask for the same names share one, and with it one encoded
/// response per snapshot.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Subscription {
    /// `None`: wildcard.
    pub(crate) names: Option<BTreeSet<String>>,
}

impl Subscription {
    /// Whether this is what a request with `names` (already known to be wildcard or not) asks
    /// for. May answer `false` for an equal set listed with duplicates; never `true` wrongly.
    pub(crate) fn is(&self, wildcard: bool, names: &[String]) -> bool {
        match &self.names {
            None => wildcard,
            Some(set) => {
                !wildcard && set.len() == names.len() && names.iter().all(|n| set.contains(n))
            }
        }
    }
}

/// The interned subscriptions of a server.
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    /// The set, and the size at which unused entries are next swept out.
    set: Mutex<(HashSet<Arc<Subscription>>, usize)>,
}

impl Subscriptions {
    /// The shared subscription to `names` (`None`: wildcard).
    pub(crate) fn intern(&self, names: Option<BTreeSet<String>>) -> Arc<Subscription> {
        let key = Subscription { names };
        let mut guard = lock(&self.set);
        let (set, sweep_at) = &mut *guard;
        if let Some(s) = set.get(&key) {
            return Arc::clone(s);
        }
        if set.len() >= *sweep_at {
            // Entries only the set still holds belong to streams that have gone.
            set.retain(|s| Arc::strong_count(s) > 1);
            *sweep_at = (set.len() * 2).max(64);
        }
        let s = Arc::new(key);
        set.insert(Arc::clone(&s));
        s
    }
}

/// A state-of-the-world response for one subscription, encoded once per snapshot and shared
/// by every stream with that subscription.
#[derive(Debug)]
pub(crate) struct EncodedSotw {
    /// A hash of the names and versions selected: equal for equal contents.
    pub(crate) fingerprint: u64,
    /// The type's version (`version_info`).
    pub(crate) version: Arc<str>,
    /// The `DiscoveryResponse` without its nonce, which each stream adds.
    pub(crate) body: Bytes,
}

/// Everything one node (or group of nodes) should have: the four resource types.
#[derive(Debug)]
pub struct Snapshot {
    types: [TypeSnapshot; 4],
    /// When it was handed to the cache (push latency is measured from here).
    pub created: Instant,
}

/// The position of `t` in [`ResourceType::ALL`].
pub(crate) fn index(t: ResourceType) -> usize {
    match t {
        ResourceType::Cluster => 0,
        ResourceType::Endpoints => 1,
        ResourceType::Listener => 2,
        ResourceType::Route => 3,
    }
}

fn hash_hex(bytes: impl Hash) -> String {
    // FNV-1a would do as well; the std hasher is fixed-keyed and fast. Versions only need to
    // differ when content differs within one control-plane process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The version of each resource of type `t` in `resources`: a hash of its content (the plain
/// data holds no maps with a varying order, so equal content gives equal text).
fn content_versions(resources: &Resources, t: ResourceType) -> HashMap<String, String> {
    fn of<R: std::fmt::Debug>(m: &BTreeMap<String, R>) -> HashMap<String, String> {
        m.iter()
            .map(|(n, r)| (n.clone(), hash_hex(format!("{r:?}"))))
            .collect()
    }
    match t {
        ResourceType::Listener => of(&resources.listeners),
        ResourceType::Route => of(&resources.routes),
        ResourceType::Cluster => of(&resources.clusters),
        ResourceType::Endpoints => of(&resources.endpoints),
    }
}

impl Snapshot {
    /// Encodes gofe resources into a snapshot.
    ///
    /// Each resource's version is a hash of the resource as gofe holds it, not of its bytes:
    /// Envoy's messages keep maps (`filter_metadata`, `Struct.fields`) whose encoded order
    /// varies from one encoding to the next, so equal resources must not be told apart by
    /// their bytes (that would push every unchanged cluster again with each new weight).
    pub fn from_resources(resources: &Resources) -> Result<Snapshot, ConvertError> {
        let mut types: [TypeSnapshot; 4] = Default::default();
        for t in ResourceType::ALL {
            let encoded = resources.encode(t)?;
            let versions = content_versions(resources, t);
            types[index(t)] = TypeSnapshot::from_versioned(
                encoded
                    .into_iter()
                    .map(|(name, any)| {
                        let version = versions
                            .get(&name)
                            .cloned()
                            .unwrap_or_else(|| hash_hex(&any.value));
                        (name, any, version)
                    })
                    .collect(),
            );
        }
        Ok(Snapshot {
            types,
            created: Instant::now(),
        })
    }

    /// A snapshot from already-encoded resources (e.g. an `api_listener` built by hand).
    pub fn from_encoded(encoded: HashMap<ResourceType, BTreeMap<String, Any>>) -> Snapshot {
        let mut types: [TypeSnapshot; 4] = Default::default();
        for (t, map) in encoded {
            types[index(t)] = TypeSnapshot::from_encoded(map);
        }
        Snapshot {
            types,
            created: Instant::now(),
        }
    }

    /// The resources of one type.
    pub fn of(&self, t: ResourceType) -> &TypeSnapshot {
        &self.types[index(t)]
    }
}

impl TypeSnapshot {
    fn from_encoded(encoded: BTreeMap<String, Any>) -> TypeSnapshot {
        TypeSnapshot::from_versioned(
            encoded
                .into_iter()
                .map(|(name, any)| {
                    let version = hash_hex(&any.value);
                    (name, any, version)
                })
                .collect(),
        )
    }

    fn from_versioned(entries: Vec<(String, Any, String)>) -> TypeSnapshot {
        let resources: BTreeMap<String, Arc<Entry>> = entries
            .into_iter()
            .map(|(name, any, version)| (name, Arc::new(Entry { any, version })))
            .collect();
        let version = hash_hex(
            resources
                .iter()
                .map(|(n, e)| (n.as_str(), e.version.as_str()))
                .collect::<Vec<_>>(),
        );
        TypeSnapshot {
            version,
            resources,
            sotw: Mutex::default(),
        }
    }

    /// The state-of-the-world response of type `ty` for `subscription`, encoded on first use.
    pub(crate) fn sotw(
        &self,
        ty: ResourceType,
        subscription: &Arc<Subscription>,
    ) -> Arc<EncodedSotw> {
        let key = Arc::as_ptr(subscription) as usize;
        // Held while encoding: the other streams that want this response wait for it rather
        // than encoding it too.
        let mut guard = lock(&self.sotw);
        let (memo, sweep_at) = &mut *guard;
        if let Some((_, encoded)) = memo.get(&key) {
            return Arc::clone(encoded);
        }
        if memo.len() >= *sweep_at {
            // Held only here and by the interner: every stream with that subscription is gone
            // (a snapshot can outlive many clients that came and went).
            memo.retain(|_, (s, _)| Arc::strong_count(s) > 2);
            *sweep_at = (memo.len() * 2).max(64);
        }
        let selected: Vec<(&String, &Arc<Entry>)> = match &subscription.names {
            None => self.resources.iter().collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| self.resources.get_key_value(n))
                .collect(),
        };
        let fingerprint = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for (name, entry) in &selected {
                (name.as_str(), entry.version.as_str()).hash(&mut h);
            }
            h.finish()
        };
        let response = DiscoveryResponse {
            version_info: self.version.clone(),
            resources: selected.iter().map(|(_, e)| e.any.clone()).collect(),
            type_url: ty.type_url().to_owned(),
            ..Default::default()
        };
        let encoded = Arc::new(EncodedSotw {
            fingerprint,
            version: Arc::from(self.version.as_str()),
            body: Bytes::from(response.encode_to_vec()),
        });
        memo.insert(key, (Arc::clone(subscription), Arc::clone(&encoded)));
        encoded
    }
}

/// Which snapshot a node gets: the one set for its node id, else the one for its cluster, else
/// the default one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeKey {
    /// A node id.
    Id(String),
    /// A node cluster (`node.cluster`).
    Cluster(String),
    /// Every node without a more specific snapshot.
    Default,
}

type Slot = watch::Sender<Option<Arc<Snapshot>>>;

/// Holds the snapshots and tells streams when theirs changed.
///
/// Each key has a `watch` channel: a stream holds a receiver and sees only the newest
/// snapshot, however many were set while it was busy (a slow client never queues versions,
/// and never holds back a fast one). Publication is rate-limited by the debounce window: a
/// change that comes after a quiet window is published at once, and changes that come within
/// the window after a publication are held and published together when it ends. An isolated
/// change therefore waits for nothing, and a burst costs the clients one push per window.
#[derive(Clone)]
pub struct SnapshotCache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    slots: Mutex<HashMap<NodeKey, Slot>>,
    pending: Mutex<HashMap<NodeKey, Arc<Snapshot>>>,
    notify: Arc<Notify>,
    debounce: Duration,
}

impl SnapshotCache {
    /// A cache publishing at most once per `debounce` (zero: every change at once). Starts
    /// its publishing task, so it must be created inside a Tokio runtime when `debounce` is
    /// non-zero.
    pub fn new(debounce: Duration) -> SnapshotCache {
        let inner = Arc::new(CacheInner {
            slots: Mutex::default(),
            pending: Mutex::default(),
            notify: Arc::new(Notify::new()),
            debounce,
        });
        if !debounce.is_zero() {
            let weak = Arc::downgrade(&inner);
            let notify = Arc::clone(&inner.notify);
            tokio::spawn(async move {
                let mut last: Option<tokio::time::Instant> = None;
                loop {
                    notify.notified().await;
                    if let Some(last) = last {
                        tokio::time::sleep_until(last + debounce).await;
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    if inner.flush() {
                        last = Some(tokio::time::Instant::now());
                    }
                }
            });
        }
        SnapshotCache { inner }
    }

    /// Sets the snapshot for `key`; streams whose resources changed get it at once, or at the
    /// end of the debounce window if a publication happened within it.
    pub fn set_snapshot(&self, key: NodeKey, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        if self.inner.debounce.is_zero() {
            self.inner.publish(key, snapshot);
        } else {
            lock(&self.inner.pending).insert(key, snapshot);
            self.inner.notify.notify_one();
        }
    }

    /// The published snapshot for `key`, if any.
    pub fn snapshot(&self, key: &NodeKey) -> Option<Arc<Snapshot>> {
        lock(&self.inner.slots)
            .get(key)
            .and_then(|s| s.borrow().clone())
    }

    /// A receiver for `key`'s snapshot (creating the slot if needed).
    pub(crate) fn subscribe(&self, key: NodeKey) -> watch::Receiver<Option<Arc<Snapshot>>> {
        lock(&self.inner.slots)
            .entry(key)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }
}

impl SnapshotCache {
    /// Drops the slot of `key` if it holds no snapshot and nothing but the caller's own
    /// receiver (about to be dropped) watches it, so slots of departed nodes do not pile up.
    pub(crate) fn release(&self, key: &NodeKey) {
        let mut slots = lock(&self.inner.slots);
        if let Some(slot) = slots.get(key) {
            if slot.receiver_count() <= 1 && slot.borrow().is_none() {
                slots.remove(key);
            }
        }
    }
}

impl CacheInner {
    /// Publishes what is pending; says whether there was anything.
    fn flush(&self) -> bool {
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        let any = !pending.is_empty();
        for (key, snapshot) in pending {
            self.publish(key, snapshot);
        }
        any
    }

    fn publish(&self, key: NodeKey, snapshot: Arc<Snapshot>) {
        let mut slots = lock(&self.slots);
        let slot = slots.entry(key).or_insert_with(|| watch::channel(None).0);
        slot.send_replace(Some(snapshot));
    }
}

/// Locks a std mutex, ignoring poisoning (the data stays consistent: every critical section
/// is a single map operation).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot with one cluster whose bytes are `[tag]`.
    fn snapshot(tag: u8) -> Snapshot {
        let any = Any {
            type_url: ResourceType::Cluster.type_url().into(),
            value: vec![tag],
        };
        let clusters = BTreeMap::from([("c".to_owned(), any)]);
        Snapshot::from_encoded(HashMap::from([(ResourceType::Cluster, clusters)]))
    }

    fn version(rx: &mut watch::Receiver<Option<Arc<Snapshot>>>) -> String {
        let current = rx.borrow_and_update();
        current
            .as_ref()
            .unwrap()
            .of(ResourceType::Cluster)
            .version
            .clone()
    }

    /// Equal resources get equal versions however their maps happen to encode: a cluster
    /// with several gofe metadata values (a `Struct` of several fields) encoded many times
    /// keeps one version.
    #[test]
    fn versions_follow_content_not_the_encoded_order_of_maps() {
        let text = "clusters:\n  - name: web\n    outlier_detection: { consecutive_5xx: 3, failure_percentage_threshold: 101, half_open_trial_requests: 9 }\n    endpoints:\n      - { address: \"10.0.0.1:80\", weight: 3 }\n      - { address: \"10.0.0.2:80\", weight: 5 }\n";
        let config = gofe_model::parse("t.yaml", text).unwrap();
        let resources = gofe_proto::convert::from_proxy_config(&config).unwrap();
        let first = Snapshot::from_resources(&resources).unwrap();
        let bytes: BTreeSet<Vec<u8>> = (0..32)
            .map(|_| {
                let again = Snapshot::from_resources(&resources).unwrap();
                for t in ResourceType::ALL {
                    assert_eq!(again.of(t).version, first.of(t).version, "{t:?}");
                }
                again.of(ResourceType::Cluster).resources["web"]
                    .any
                    .value
                    .clone()
            })
            .collect();
        // What the test guards against is there: the same cluster, encoded differently.
        assert!(bytes.len() > 1, "the cluster's bytes never varied");
        // And a change of content is a new version.
        let mut changed = resources.clone();
        changed
            .clusters
            .get_mut("web")
            .unwrap()
            .config
            .connect_timeout = Duration::from_secs(9);
        let other = Snapshot::from_resources(&changed).unwrap();
        assert_ne!(
            other.of(ResourceType::Cluster).version,
            first.of(ResourceType::Cluster).version
        );
    }

    #[test]
    fn equal_subscriptions_share_one_encoding_per_snapshot() {
        let interned = Subscriptions::default();
        let a = interned.intern(Some(BTreeSet::from(["c".to_owned(), "gone".to_owned()])));
        let b = interned.intern(Some(BTreeSet::from(["gone".to_owned(), "c".to_owned()])));
        assert!(Arc::ptr_eq(&a, &b));
        let wildcard = interned.intern(None);

        let snap = snapshot(7);
        let types = snap.of(ResourceType::Cluster);
        let first = types.sotw(ResourceType::Cluster, &a);
        assert!(Arc::ptr_eq(&first, &types.sotw(ResourceType::Cluster, &b)));
        let decoded = DiscoveryResponse::decode(first.body.clone()).unwrap();
        assert_eq!(decoded.resources.len(), 1);
        assert_eq!(decoded.resources[0].value, [7]);
        assert_eq!(decoded.version_info, types.version);
        assert_eq!(decoded.type_url, ResourceType::Cluster.type_url());
        assert!(decoded.nonce.is_empty());
        // The same resources selected another way have the same fingerprint; other content
        // has another.
        let all = types.sotw(ResourceType::Cluster, &wildcard);
        assert_eq!(all.fingerprint, first.fingerprint);
        let other = snapshot(8);
        let changed = other
            .of(ResourceType::Cluster)
            .sotw(ResourceType::Cluster, &a);
        assert_ne!(changed.fingerprint, first.fingerprint);
    }

    #[tokio::test(start_paused = true)]
    async fn an_isolated_change_is_published_at_once_and_a_burst_once_per_window() {
        let cache = SnapshotCache::new(Duration::from_millis(10));
        let mut rx = cache.subscribe(NodeKey::Default);
        let start = tokio::time::Instant::now();

        cache.set_snapshot(NodeKey::Default, snapshot(1));
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Two changes within the window after that publication: held, then published together.
        tokio::time::sleep(Duration::from_millis(2)).await;
        cache.set_snapshot(NodeKey::Default, snapshot(2));
        tokio::time::sleep(Duration::from_millis(3)).await;
        let last = snapshot(3);
        let last_version = last.of(ResourceType::Cluster).version.clone();
        cache.set_snapshot(NodeKey::Default, last);
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        assert_eq!(version(&mut rx), last_version);
        assert!(!rx.has_changed().unwrap());

        // After a quiet window, at once again.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = start.elapsed();
        cache.set_snapshot(NodeKey::Default, snapshot(4));
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), before);
    }
}
