//! Versions of deleted objects, so a replayed older `apply` cannot bring back
//! an object that a newer `delete` removed.
//!
//! A live object carries its applied version in an annotation; a deleted one
//! has nowhere to carry it, so the agent keeps `kind.namespace.name →
//! version intent-id` in one ConfigMap in its own namespace (the cluster, not
//! a local disk, stays the source of truth). The map is bounded: beyond
//! [`MAX_ENTRIES`] the oldest-keyed entries are dropped, which only re-opens
//! the window for intents that have long expired anyway.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use vworkspace_protocol::ObjectRef;

use crate::FIELD_MANAGER;

/// Most deleted objects remembered.
pub const MAX_ENTRIES: usize = 5000;

/// Name of the ConfigMap.
pub const CONFIG_MAP: &str = "vworkspace-agent-tombstones";

/// The tombstone store (shared by every connection of one leader term).
#[derive(Clone)]
pub struct Tombstones {
    api: Api<ConfigMap>,
    cache: Arc<tokio::sync::Mutex<Option<BTreeMap<String, String>>>>,
}

fn key(o: &ObjectRef) -> String {
    format!("{}.{}.{}", o.kind.as_str(), o.namespace, o.name)
}

impl Tombstones {
    /// A store in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            cache: Arc::default(),
        }
    }

    async fn loaded(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<BTreeMap<String, String>>>, kube::Error> {
        let mut g = self.cache.lock().await;
        if g.is_none() {
            let data = self
                .api
                .get_opt(CONFIG_MAP)
                .await?
                .and_then(|c| c.data)
                .unwrap_or_default();
            *g = Some(data);
        }
        Ok(g)
    }

    /// `(version, intent id)` of the delete that removed `o`, if remembered.
    pub async fn get(&self, o: &ObjectRef) -> Result<Option<(u64, String)>, kube::Error> {
        let g = self.loaded().await?;
        Ok(g.as_ref().and_then(|m| m.get(&key(o))).and_then(|v| {
            let (ver, id) = v.split_once(' ').unwrap_or((v.as_str(), ""));
            ver.parse().ok().map(|n| (n, id.to_owned()))
        }))
    }

    /// Remembers that `o` was deleted at `version`.
    pub async fn record(
        &self,
        o: &ObjectRef,
        version: u64,
        intent_id: &str,
    ) -> Result<(), kube::Error> {
        let mut g = self.loaded().await?;
        let m = g.get_or_insert_with(BTreeMap::new);
        m.insert(key(o), format!("{version} {intent_id}"));
        while m.len() > MAX_ENTRIES {
            m.pop_first();
        }
        let data = m.clone();
        drop(g);
        self.write(data).await
    }

    /// Forgets `o` (it exists again, carrying its version itself).
    pub async fn clear(&self, o: &ObjectRef) -> Result<(), kube::Error> {
        let mut g = self.loaded().await?;
        let Some(m) = g.as_mut() else { return Ok(()) };
        if m.remove(&key(o)).is_none() {
            return Ok(());
        }
        let data = m.clone();
        drop(g);
        self.write(data).await
    }

    async fn write(&self, data: BTreeMap<String, String>) -> Result<(), kube::Error> {
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": CONFIG_MAP},
            "data": data,
        });
        self.api
            .patch(
                CONFIG_MAP,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await?;
        Ok(())
    }
}
