//! The vWorkspace custom resources the hub talks to, and their vocabulary.
//!
//! Three kinds keep the upstream vWorkspace wire contract (groups, kinds, JSON
//! field names, enum literals, condition types, reasons, labels, finalizers):
//!
//! - [`ApplicationInstance`] (`apps.vworkspace.io/v1alpha1`, namespaced,
//!   short name `appinst`): one Helm chart install.
//! - [`Operation`] (`ops.vworkspace.io/v1alpha1`, namespaced, short name `op`):
//!   one day-2 action against an ApplicationInstance, run by an engine.
//! - [`Cluster`] (`ops.vworkspace.io/v1alpha1`, cluster-scoped): how this
//!   cluster reaches the hub, and the connection state.
//!
//! [`conditions`] holds the closed list of condition types and reasons with the
//! helpers that set them; [`well_known`] the label, annotation and finalizer
//! names. The CRD manifests under `crds/manifests/` are generated from these
//! types by [`manifests`] (`cargo run -p vworkspace-crds --bin crdgen -- crds/manifests`).
//!
//! Install the CRDs from [`manifests::crds`] (or the committed files), not from
//! `ApplicationInstance::crd()` / `Cluster::crd()`: upstream does not require
//! `spec` on those two kinds, which the derive cannot express, so
//! [`manifests`] edits the generated schema. In tests:
//! `vworkspace_e2e::crds::install(&client, &vworkspace_crds::manifests::crds())`.

#![deny(warnings, rust_2018_idioms, missing_docs)]
#![forbid(unsafe_code)]

pub mod application_instance;
pub mod cluster;
pub mod conditions;
pub mod manifests;
pub mod operation;
mod schema;
pub mod well_known;

pub use application_instance::{
    AppRef, ApplicationInstance, ApplicationInstanceSpec, ApplicationInstanceStatus, ChartSource,
    ChartSourceType, Endpoint, HelmReleaseRef, Integrations, KeyRef, Mode, ReleaseRef,
    ValuesSource, ValuesSpec,
};
pub use cluster::{Cluster, ClusterPhase, ClusterSpec, ClusterStatus};
pub use operation::{
    Engine, EngineRef, Operation, OperationPhase, OperationSpec, OperationStatus, OperationType,
    TargetRef,
};

/// API group of [`ApplicationInstance`].
pub const APPS_GROUP: &str = "apps.vworkspace.io";
/// API group of [`Operation`] and [`Cluster`].
pub const OPS_GROUP: &str = "ops.vworkspace.io";
/// The only served and stored version of all three kinds.
pub const VERSION: &str = "v1alpha1";
