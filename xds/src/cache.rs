//! Per-node snapshots of resources, versioned by content, published after a short debounce.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gofe_proto::wire::Any;
use gofe_proto::{ConvertError, ResourceType, Resources};
use tokio::sync::{watch, Notify};

/// One encoded resource and its version (a hash of its bytes).
#[derive(Debug)]
pub struct Entry {
    /// The resource.
    pub any: Any,
    /// Its version: changes exactly when its bytes change.
    pub version: String,
}

/// The resources of one type in a snapshot.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    /// Version of the whole set (a hash of every name and resource version).
    pub version: String,
    /// Resources by name.
    pub resources: BTreeMap<String, Arc<Entry>>,
}

/// Everything one node (or group of nodes) should have: the four resource types.
#[derive(Debug)]
pub struct Snapshot {
    types: [TypeSnapshot; 4],
    /// When it was handed to the cache (push latency is measured from here).
    pub created: Instant,
}

fn index(t: ResourceType) -> usize {
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

impl Snapshot {
    /// Encodes gofe resources into a snapshot.
    pub fn from_resources(resources: &Resources) -> Result<Snapshot, ConvertError> {
        let mut types: [TypeSnapshot; 4] = Default::default();
        for t in ResourceType::ALL {
            let encoded = resources.encode(t)?;
            types[index(t)] = TypeSnapshot::from_encoded(encoded);
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
        let resources: BTreeMap<String, Arc<Entry>> = encoded
            .into_iter()
            .map(|(name, any)| {
                let version = hash_hex(&any.value);
                (name, Arc::new(Entry { any, version }))
            })
            .collect();
        let version = hash_hex(
            resources
                .iter()
                .map(|(n, e)| (n.as_str(), e.version.as_str()))
                .collect::<Vec<_>>(),
        );
        TypeSnapshot { version, resources }
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
/// and never holds back a fast one). Setting a snapshot is debounced: changes that arrive
/// within the debounce window after the first are published together.
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
    /// A cache publishing changes `debounce` after the first one (zero: at once). Starts its
    /// debounce task, so it must be created inside a Tokio runtime when `debounce` is non-zero.
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
                loop {
                    notify.notified().await;
                    tokio::time::sleep(debounce).await;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.flush();
                }
            });
        }
        SnapshotCache { inner }
    }

    /// Sets the snapshot for `key`; streams whose resources changed get it after the debounce.
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

impl CacheInner {
    fn flush(&self) {
        let pending: Vec<_> = lock(&self.pending).drain().collect();
        for (key, snapshot) in pending {
            self.publish(key, snapshot);
        }
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
