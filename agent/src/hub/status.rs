//! The status stream: watch ApplicationInstance, Operation and Cluster, keep
//! the latest status per object, and hand the tunnel what changed.
//!
//! Coalescing is by object: the hub only ever needs the newest status, so a
//! burst of changes to one object leaves one entry to send. The set of
//! pending objects is bounded by the number of objects the agent manages.
//! Each status sent is remembered with the envelope `seq` it went out in;
//! when the hub's `ack` passes that seq the hash is confirmed. After a
//! reconnect only objects whose current hash differs from the confirmed one
//! are sent again, after an `Inventory` digest of everything.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use vworkspace_crds::well_known::{annotations, labels};
use vworkspace_crds::{ApplicationInstance, Cluster, Operation};
use vworkspace_protocol::{Condition, Inventory, InventoryEntry, ObjectKind, ObjectRef, Status};

use crate::hub::metrics::Metrics;

/// Sent-but-unconfirmed statuses remembered at most; older ones count as
/// delivered (the hub can always ask with `ResyncRequest`).
const MAX_UNCONFIRMED: usize = 8192;

#[derive(Debug, Default)]
struct State {
    /// Latest status of every object, with its applied version.
    current: BTreeMap<ObjectRef, (Status, u64)>,
    /// Hash the hub is known to hold per object.
    confirmed: HashMap<ObjectRef, String>,
    /// Objects whose current status the hub may not have.
    dirty: BTreeSet<ObjectRef>,
    /// Sent on the live connection, awaiting the hub's ack: (seq, object, hash).
    unconfirmed: VecDeque<(u64, ObjectRef, String)>,
}

/// The agent's outbox of statuses: shared between the watchers (writers)
/// and the tunnel (reader).
#[derive(Clone, Debug)]
pub struct Outbox {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    metrics: Metrics,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            state: Arc::default(),
            changed: Arc::new(Notify::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the latest status of an object; marks it to send if it changed.
    pub fn upsert(&self, status: Status, version: u64) {
        let mut s = self.lock();
        let key = status.object.clone();
        let same = s
            .current
            .get(&key)
            .is_some_and(|(old, v)| old.hash == status.hash && *v == version);
        if same {
            return;
        }
        let needs_send = s.confirmed.get(&key) != Some(&status.hash);
        s.current.insert(key.clone(), (status, version));
        if needs_send {
            s.dirty.insert(key);
        } else {
            s.dirty.remove(&key);
        }
        self.metrics.queue("status_pending", s.dirty.len());
        drop(s);
        self.changed.notify_one();
    }

    /// Records that an object is gone.
    pub fn remove(&self, object: &ObjectRef) {
        let mut s = self.lock();
        let Some((old, _)) = s.current.remove(object) else {
            return;
        };
        let mut gone = tombstone(object);
        gone.generation = old.generation;
        gone.hash = hash_of(&gone);
        // Kept as a tombstone until sent; `take_dirty` drops it afterwards.
        s.current.insert(object.clone(), (gone, 0));
        s.dirty.insert(object.clone());
        self.metrics.queue("status_pending", s.dirty.len());
        drop(s);
        self.changed.notify_one();
    }

    /// Objects of `kind` currently known (for resync after a watch restart).
    pub fn known(&self, kind: ObjectKind) -> Vec<ObjectRef> {
        self.lock()
            .current
            .iter()
            .filter(|(k, (st, _))| k.kind == kind && !st.deleted)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Resolves when something may be ready to send.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// A new connection starts: anything not confirmed must go again.
    pub fn connection_started(&self) {
        let mut s = self.lock();
        let unconfirmed: Vec<_> = s.unconfirmed.drain(..).map(|(_, o, _)| o).collect();
        for o in unconfirmed {
            if s.current.contains_key(&o) {
                s.dirty.insert(o);
            }
        }
        self.metrics.queue("status_pending", s.dirty.len());
    }

    /// The hub asked for these statuses again: forget what it confirmed.
    /// Objects the agent does not hold are answered as deleted.
    pub fn resync(&self, objects: &[ObjectRef]) {
        let mut s = self.lock();
        for o in objects {
            s.confirmed.remove(o);
            if !s.current.contains_key(o) {
                let mut gone = tombstone(o);
                gone.hash = hash_of(&gone);
                s.current.insert(o.clone(), (gone, 0));
            }
            s.dirty.insert(o.clone());
        }
        self.metrics.queue("status_pending", s.dirty.len());
        drop(s);
        self.changed.notify_one();
    }

    /// The digest of everything held, for `Inventory`.
    pub fn inventory(&self) -> Inventory {
        let s = self.lock();
        Inventory {
            objects: s
                .current
                .iter()
                .filter(|(_, (st, _))| !st.deleted)
                .map(|(k, (st, v))| InventoryEntry {
                    object: k.clone(),
                    version: *v,
                    status_hash: st.hash.clone(),
                })
                .collect(),
            chunk: None,
            buckets: None,
        }
    }

    /// Takes up to `max` statuses to send now.
    pub fn take_dirty(&self, max: usize) -> Vec<Status> {
        let mut s = self.lock();
        let keys: Vec<_> = s.dirty.iter().take(max).cloned().collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            s.dirty.remove(&k);
            if let Some((st, _)) = s.current.get(&k) {
                out.push(st.clone());
            }
        }
        self.metrics.queue("status_pending", s.dirty.len());
        out
    }

    /// A status went out in envelope `seq`.
    pub fn sent(&self, seq: u64, status: &Status) {
        let mut s = self.lock();
        if s.unconfirmed.len() >= MAX_UNCONFIRMED
            && let Some((_, o, h)) = s.unconfirmed.pop_front()
        {
            confirm_one(&mut s, o, h);
        }
        s.unconfirmed
            .push_back((seq, status.object.clone(), status.hash.clone()));
    }

    /// A status could not be sent; keep it pending.
    pub fn unsent(&self, status: &Status) {
        let mut s = self.lock();
        if s.current.contains_key(&status.object) {
            s.dirty.insert(status.object.clone());
        }
    }

    /// The hub acknowledged every envelope up to `ack`.
    pub fn acked(&self, ack: u64) {
        let mut s = self.lock();
        while s.unconfirmed.front().is_some_and(|(seq, _, _)| *seq <= ack) {
            if let Some((_, o, h)) = s.unconfirmed.pop_front() {
                confirm_one(&mut s, o, h);
            }
        }
    }

    /// Number of objects waiting to be sent.
    pub fn pending(&self) -> usize {
        self.lock().dirty.len()
    }
}

fn confirm_one(s: &mut State, o: ObjectRef, h: String) {
    let deleted = s
        .current
        .get(&o)
        .is_some_and(|(st, _)| st.deleted && st.hash == h);
    if deleted {
        s.current.remove(&o);
        s.confirmed.remove(&o);
    } else {
        s.confirmed.insert(o, h);
    }
}

fn tombstone(object: &ObjectRef) -> Status {
    Status {
        object: object.clone(),
        generation: 0,
        observed_generation: None,
        version: None,
        phase: None,
        conditions: Vec::new(),
        outputs: BTreeMap::new(),
        hash: String::new(),
        deleted: true,
    }
}

/// Digest of a status: SHA-256 of its JSON without the hash, 16 hex chars.
pub fn hash_of(st: &Status) -> String {
    let mut v = serde_json::to_value(st).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("hash");
    }
    let bytes = serde_json::to_vec(&v).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    hex::encode(&d.as_ref()[..8])
}

fn wire_conditions(
    cs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Vec<Condition> {
    cs.iter()
        .map(|c| Condition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            observed_generation: c.observed_generation,
            last_transition_time: Some(c.last_transition_time.0.to_string()),
        })
        .collect()
}

fn version_of(meta: &kube::api::ObjectMeta) -> u64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(annotations::APPLIED_INTENT_VERSION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The Status frame of an ApplicationInstance.
pub fn of_application(ai: &ApplicationInstance) -> Option<(Status, u64)> {
    let ns = ai.metadata.namespace.clone()?;
    let name = ai.metadata.name.clone()?;
    let st = ai.status.clone().unwrap_or_default();
    let mut outputs = BTreeMap::new();
    if !st.endpoints.is_empty() {
        outputs.insert(
            "endpoints".to_owned(),
            serde_json::to_value(&st.endpoints).unwrap_or_default(),
        );
    }
    if let Some(h) = &st.helm_release_ref {
        outputs.insert(
            "helmReleaseRef".to_owned(),
            serde_json::to_value(h).unwrap_or_default(),
        );
    }
    let version = version_of(&ai.metadata);
    let mut s = Status {
        object: ObjectRef::new(ObjectKind::ApplicationInstance, ns, name),
        generation: ai.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation,
        version: Some(version),
        phase: None,
        conditions: wire_conditions(&st.conditions),
        outputs,
        hash: String::new(),
        deleted: false,
    };
    s.hash = hash_of(&s);
    Some((s, version))
}

/// The Status frame of an Operation.
pub fn of_operation(op: &Operation) -> Option<(Status, u64)> {
    let ns = op.metadata.namespace.clone()?;
    let name = op.metadata.name.clone()?;
    let st = op.status.clone().unwrap_or_default();
    let version = version_of(&op.metadata);
    let mut s = Status {
        object: ObjectRef::new(ObjectKind::Operation, ns, name),
        generation: op.metadata.generation.unwrap_or(0),
        observed_generation: None,
        version: Some(version),
        phase: st.phase.map(|p| p.as_str().to_owned()),
        conditions: wire_conditions(&st.conditions),
        outputs: st.outputs.clone().unwrap_or_default(),
        hash: String::new(),
        deleted: false,
    };
    s.hash = hash_of(&s);
    Some((s, version))
}

/// The Status frame of the Cluster object (no heartbeat time: it changes every beat).
pub fn of_cluster(c: &Cluster) -> Option<(Status, u64)> {
    let name = c.metadata.name.clone()?;
    let st = c.status.clone().unwrap_or_default();
    let mut s = Status {
        object: ObjectRef::new(ObjectKind::Cluster, "", name),
        generation: c.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation,
        version: None,
        phase: st.phase.map(|p| p.as_str().to_owned()),
        conditions: wire_conditions(&st.conditions),
        outputs: BTreeMap::new(),
        hash: String::new(),
        deleted: false,
    };
    s.hash = hash_of(&s);
    Some((s, 0))
}

/// Runs the three watches until `shutdown` is cancelled, feeding `outbox`.
pub async fn run(
    client: kube::Client,
    cluster_object: String,
    outbox: Outbox,
    shutdown: CancellationToken,
) {
    let selector = format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_CONTROL_PLANE
    );
    let ais = watch_kind(
        Api::<ApplicationInstance>::all(client.clone()),
        watcher::Config::default().labels(&selector),
        outbox.clone(),
        ObjectKind::ApplicationInstance,
        of_application,
    );
    let ops = watch_kind(
        Api::<Operation>::all(client.clone()),
        watcher::Config::default().labels(&selector),
        outbox.clone(),
        ObjectKind::Operation,
        of_operation,
    );
    let cluster = watch_kind(
        Api::<Cluster>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={cluster_object}")),
        outbox,
        ObjectKind::Cluster,
        of_cluster,
    );
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = ais => {}
        _ = ops => {}
        _ = cluster => {}
    }
}

async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    outbox: Outbox,
    kind: ObjectKind,
    to_status: fn(&K) -> Option<(Status, u64)>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: Option<BTreeSet<ObjectRef>> = None;
    let key = |o: &K| {
        let m = o.meta();
        ObjectRef::new(
            kind,
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Apply(o)) => {
                if let Some((st, v)) = to_status(&o) {
                    outbox.upsert(st, v);
                }
            }
            Ok(Event::Delete(o)) => outbox.remove(&key(&o)),
            Ok(Event::Init) => seen = Some(BTreeSet::new()),
            Ok(Event::InitApply(o)) => {
                if let Some((st, v)) = to_status(&o) {
                    if let Some(s) = seen.as_mut() {
                        s.insert(st.object.clone());
                    }
                    outbox.upsert(st, v);
                }
            }
            Ok(Event::InitDone) => {
                // Objects deleted while the watch was down.
                if let Some(s) = seen.take() {
                    for o in outbox.known(kind) {
                        if !s.contains(&o) {
                            outbox.remove(&o);
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, kind = kind.as_str(), "Status watch failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn st(name: &str, phase: &str) -> Status {
        let mut s = tombstone(&ObjectRef::new(ObjectKind::Operation, "ns", name));
        s.deleted = false;
        s.phase = Some(phase.into());
        s.hash = hash_of(&s);
        s
    }

    fn outbox() -> Outbox {
        Outbox::new(Metrics::register(&mut Registry::default()))
    }

    #[test]
    fn changes_to_one_object_coalesce_to_the_latest() {
        let h = outbox();
        h.upsert(st("a", "Pending"), 1);
        h.upsert(st("a", "Running"), 1);
        h.upsert(st("b", "Pending"), 1);
        let out = h.take_dirty(10);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].phase.as_deref(), Some("Running"));
        assert!(h.take_dirty(10).is_empty());
    }

    #[test]
    fn after_reconnect_only_unconfirmed_or_changed_statuses_are_resent() {
        let h = outbox();
        h.upsert(st("a", "Pending"), 1);
        h.upsert(st("b", "Pending"), 1);
        let out = h.take_dirty(10);
        h.sent(1, &out[0]);
        h.sent(2, &out[1]);
        h.acked(1); // only "a" reached the hub
        h.connection_started();
        let again = h.take_dirty(10);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].object.name, "b");
        // Going back to a confirmed status sends nothing.
        h.sent(3, &again[0]);
        h.acked(3);
        h.upsert(st("a", "Running"), 1);
        h.upsert(st("a", "Pending"), 1);
        assert!(h.take_dirty(10).is_empty());
    }

    #[test]
    fn deletions_are_sent_once_then_forgotten() {
        let h = outbox();
        h.upsert(st("a", "Pending"), 1);
        let out = h.take_dirty(10);
        h.sent(1, &out[0]);
        h.acked(1);
        h.remove(&out[0].object);
        let gone = h.take_dirty(10);
        assert!(gone[0].deleted);
        h.sent(2, &gone[0]);
        h.acked(2);
        assert!(h.inventory().objects.is_empty());
        assert!(h.known(ObjectKind::Operation).is_empty());
    }
}
