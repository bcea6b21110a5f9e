//! Controllers that reconcile `ApplicationInstance` and `Operation` objects
//! into objects that proven third-party controllers understand, and map their
//! status back into the vWorkspace condition vocabulary.
//!
//! Data flow:
//!
//! ```text
//! ApplicationInstance ──SSA──► HelmRepository | OCIRepository + HelmRelease (owned)
//!         ▲ status (SSA)                 │ watched (owns)
//!         └──── application::status ◄────┘
//! Operation ──state machine──► engine workload (Backup, Restore, VolumeSnapshot,
//!         ▲                     ReplicationSource, Workflow, Job, the target's chart version)
//!         └── engine::outcome_from_status ◄── watched by the ops.vworkspace.io/operation label
//! ```
//!
//! Entry points for the agent's `main`:
//!
//! - [`Metrics::register`] once, with a sub-registry of the agent's registry;
//! - [`run`]`(client, Config, metrics, gate, shutdown)` runs both controllers
//!   until `shutdown` is cancelled (the agent calls it only while it holds the
//!   Lease);
//! - [`validate_application_spec`] and [`namespaces::NamespaceGate`]: the same
//!   checks the controller applies, for the intent path to refuse bad specs
//!   and namespaces early;
//! - [`approval::verify_claim`]/[`approval::sign_claim`]: the upstream `vws1.`
//!   approval claim.
//!
//! Only namespaces labelled `managed-by=vworkspace` (and on the allow-list,
//! when one is given: [`namespaces`]) are acted on; every write is server-side
//! apply with [`FIELD_MANAGER`], and a status is sent only when it changed
//! (ignoring `lastTransitionTime`).

pub mod application;
pub mod approval;
pub mod metrics;
pub mod namespaces;
pub mod operation;
pub mod own_writes;
pub mod resources;
pub mod validation;
pub mod watches;

use std::{sync::Arc, time::Duration};

use futures::future;
use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use crate::FIELD_MANAGER;
pub use metrics::Metrics;
pub use namespaces::{NamespaceGate, namespace_is_gated};
pub use validation::{SpecError, validate_application_spec};

/// Field manager of the helm engine's chart-version changes (Upgrade,
/// Rollback, and their undo on cancel), kept apart from [`FIELD_MANAGER`] so
/// such a change touches only `spec.chart.version`.
pub const OPERATIONS_FIELD_MANAGER: &str = "vworkspace-agent-operations";

/// Operator knobs of the controllers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace Velero runs in; Backups and Restores are created there.
    pub velero_namespace: String,
    /// Finished Operations kept per target; older ones are deleted.
    pub history_limit: usize,
    /// Shared secret of the `vws1.` approval claims; `None` blocks every
    /// operation that needs approval.
    pub approval_secret: Option<Vec<u8>>,
    /// Timeout of an Operation whose spec sets none.
    pub default_operation_timeout: Duration,
    /// Periodic re-reconcile, on top of the watches.
    pub resync: Duration,
    /// Reconciles running at once, per controller.
    pub concurrency: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            velero_namespace: "velero".into(),
            history_limit: 10,
            approval_secret: None,
            default_operation_timeout: Duration::from_secs(3600),
            resync: Duration::from_secs(600),
            concurrency: 16,
        }
    }
}

/// Errors of a reconcile or of [`run`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed (boxed: the type is recursive).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A namespaced object came without a namespace.
    #[error("object {0} has no namespace")]
    MissingNamespace(String),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serde(#[from] serde_json::Error),
    /// A CRD the controllers need is not installed.
    #[error("CRD {0} is not installed; apply deploy/crds first")]
    CrdMissing(&'static str),
}

// === impl Error ===

impl Error {
    /// Short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::MissingNamespace(_) => "missing_namespace",
            Self::Serde(_) => "serde",
            Self::CrdMissing(_) => "crd_missing",
        }
    }
}

/// One async lock per (namespace, target).
type TargetLocks = std::collections::HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// State shared by the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Operator knobs.
    pub config: Config,
    /// Metric handles.
    pub metrics: Metrics,
    /// The namespace gate (its cache is shared with the intent path).
    pub namespaces: NamespaceGate,
    /// Serialises operation admission per target (namespace/name), so two
    /// conflicting operations cannot start at the same moment.
    pub(crate) target_locks: std::sync::Mutex<TargetLocks>,
    /// Discovery answers per kind, kept for [`SERVED_TTL`] so reconciles do
    /// not hit discovery every time, yet notice a CRD installed later.
    served:
        std::sync::Mutex<std::collections::HashMap<resources::Kind, (bool, std::time::Instant)>>,
    /// What was last applied per ApplicationInstance UID; one entry per
    /// live instance (removed when it is released).
    applied: std::sync::Mutex<std::collections::HashMap<String, Applied>>,
    /// Publishes Kubernetes Events on condition transitions.
    recorder: Recorder,
    /// Resource versions of the ApplicationInstance controller's own writes,
    /// whose watch echoes trigger no reconcile.
    pub(crate) own_writes: std::sync::Arc<own_writes::OwnWrites>,
    /// The managed HelmRepositories as the controller's watch last saw them
    /// (set when the ApplicationInstance controller starts): the shared ones
    /// are read here instead of from the API server on every reconcile.
    pub(crate) helm_repositories:
        std::sync::OnceLock<kube::runtime::reflector::Store<kube::api::DynamicObject>>,
}

/// The Flux objects last applied for an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Fingerprint of the desired objects.
    pub(crate) hash: u64,
    /// Source generation right after the apply.
    pub(crate) source_generation: Option<i64>,
    /// HelmRelease generation right after the apply.
    pub(crate) release_generation: Option<i64>,
}

/// How long a discovery answer is trusted.
const SERVED_TTL: Duration = Duration::from_secs(20);

// === impl Context ===

impl Context {
    /// A context around `client`; the gate's watch must be running.
    pub fn new(
        client: Client,
        config: Config,
        metrics: Metrics,
        namespaces: NamespaceGate,
    ) -> Self {
        Self {
            client: client.clone(),
            config,
            metrics,
            namespaces,
            target_locks: Default::default(),
            served: Default::default(),
            applied: Default::default(),
            own_writes: Default::default(),
            helm_repositories: Default::default(),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
        }
    }

    /// Publishes one Event per condition that changed (True conditions and
    /// Ready only), so the hub and `kubectl describe` see transitions, not
    /// every reconcile. Failures to publish are logged, never fatal.
    pub(crate) async fn publish_transitions(
        &self,
        reference: &ObjectReference,
        old: &[Condition],
        new: &[Condition],
    ) {
        for c in new {
            let changed = vworkspace_crds::conditions::find(old, &c.type_)
                .is_none_or(|o| o.status != c.status || o.reason != c.reason);
            if !changed || (c.status != "True" && c.type_ != "Ready") {
                continue;
            }
            let warning = (c.status == "True"
                && matches!(c.type_.as_str(), "Failed" | "Blocked" | "Degraded"))
                || (c.type_ == "Ready" && c.status == "False");
            let ev = Event {
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: (!c.message.is_empty()).then(|| c.message.chars().take(1024).collect()),
                action: c.type_.clone(),
                secondary: None,
            };
            if let Err(error) = self.recorder.publish(&ev, reference).await {
                warn!(%error, "Failed to publish event");
            }
        }
    }

    pub(crate) fn applied(&self, uid: &str) -> Option<Applied> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .copied()
    }

    pub(crate) fn remember_applied(&self, uid: String, applied: Applied) {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, applied);
    }

    pub(crate) fn forget_applied(&self, uid: &str) {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// Whether the API server serves `kind` (cached for a short while).
    pub async fn is_served(&self, kind: resources::Kind) -> Result<bool, kube::Error> {
        if let Some((served, at)) = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&kind)
            && at.elapsed() < SERVED_TTL
        {
            return Ok(*served);
        }
        let served = kind.is_served(&self.client).await?;
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind, (served, std::time::Instant::now()));
        Ok(served)
    }

    /// The kinds of `kinds` that are not served.
    pub async fn missing(
        &self,
        kinds: &[resources::Kind],
    ) -> Result<Vec<resources::Kind>, kube::Error> {
        let mut out = Vec::new();
        for k in kinds {
            if !self.is_served(*k).await? {
                out.push(*k);
            }
        }
        Ok(out)
    }

    /// Whether the agent may act in `namespace` (see [`NamespaceGate::is_gated`]).
    pub async fn is_gated(&self, namespace: &str) -> bool {
        self.namespaces.is_gated(namespace).await
    }

    pub(crate) fn target_lock(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .target_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Bounded by the number of targets; idle locks are dropped here.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks
            .entry((namespace.to_string(), name.to_string()))
            .or_default()
            .clone()
    }
}

/// Runs the ApplicationInstance and Operation controllers until `shutdown`
/// is cancelled; in-flight reconciles finish first.
///
/// Fails at once when the vWorkspace CRDs are not installed. Optional
/// third-party kinds (Flux, Velero, ...) that are missing are not watched; the
/// objects that need them report it in their conditions. `gate`'s Namespace
/// watch is driven by the caller, which shares it with the intent path.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Metrics,
    gate: NamespaceGate,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    for (api_version, plural, name) in [
        (
            "apps.vworkspace.io/v1alpha1",
            "applicationinstances",
            "applicationinstances.apps.vworkspace.io",
        ),
        (
            "ops.vworkspace.io/v1alpha1",
            "operations",
            "operations.ops.vworkspace.io",
        ),
    ] {
        let served = match client.list_api_group_resources(api_version).await {
            Ok(l) => l.resources.iter().any(|r| r.name == plural),
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(e.into()),
        };
        if !served {
            return Err(Error::CrdMissing(name));
        }
    }
    let ctx = Arc::new(Context::new(client.clone(), config, metrics, gate));
    let apps = application::run(ctx.clone(), shutdown.clone().cancelled_owned()).await?;
    let ops = operation::run(ctx.clone(), shutdown.clone().cancelled_owned()).await?;
    info!("Controllers started");
    future::join(apps, ops).await;
    info!("Controllers stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every `reasons::X` the controllers use, by file.
    const SOURCES: &[(&str, &str)] = &[
        ("application/mod.rs", include_str!("application/mod.rs")),
        (
            "application/status.rs",
            include_str!("application/status.rs"),
        ),
        ("operation/mod.rs", include_str!("operation/mod.rs")),
        ("operation/admit.rs", include_str!("operation/admit.rs")),
        ("operation/observe.rs", include_str!("operation/observe.rs")),
        ("operation/history.rs", include_str!("operation/history.rs")),
        ("operation/status.rs", include_str!("operation/status.rs")),
        (
            "operation/engines/velero.rs",
            include_str!("operation/engines/velero.rs"),
        ),
        (
            "operation/engines/job.rs",
            include_str!("operation/engines/job.rs"),
        ),
        (
            "operation/engines/workflow.rs",
            include_str!("operation/engines/workflow.rs"),
        ),
        (
            "operation/engines/snapshot.rs",
            include_str!("operation/engines/snapshot.rs"),
        ),
        (
            "operation/engines/volsync.rs",
            include_str!("operation/engines/volsync.rs"),
        ),
        (
            "operation/engines/helm.rs",
            include_str!("operation/engines/helm.rs"),
        ),
    ];
    const VOCABULARY: &str = include_str!("../../../crds/src/conditions.rs");

    fn used(src: &str) -> Vec<String> {
        src.match_indices("reasons::")
            .map(|(i, m)| {
                src[i + m.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect::<String>()
            })
            .filter(|name| !name.is_empty() && name != "ALL")
            .collect()
    }

    #[test]
    fn every_reason_the_controllers_emit_is_in_the_closed_vocabulary() {
        let all_block = &VOCABULARY[VOCABULARY
            .find("pub const ALL: &[&str] = &[")
            .expect("reasons::ALL in crds/src/conditions.rs")..];
        let all_block = &all_block[..all_block.find("];").expect("end of reasons::ALL")];
        let mut count = 0;
        for (file, src) in SOURCES {
            for name in used(src) {
                count += 1;
                assert!(
                    all_block.contains(&format!("        {name},")),
                    "{file} uses reasons::{name}, which is missing from reasons::ALL"
                );
            }
        }
        assert!(
            count > 60,
            "only {count} reason uses found; the scan is broken"
        );
    }
}
