//! Label, annotation and finalizer names shared with the hub and upstream.
//!
//! Upstream names are kept verbatim (existing clusters and the hub carry them);
//! names this project adds are marked "beyond upstream".

/// Finalizers.
pub mod finalizers {
    /// On ApplicationInstance: removed once the HelmRelease and its source are gone.
    pub const APPLICATION_INSTANCE: &str = "apps.vworkspace.io/finalizer";
    /// On Operation: removed once the engine workload has been cancelled.
    pub const OPERATION: &str = "ops.vworkspace.io/finalizer";
    /// On Cluster: best-effort teardown of the connection.
    pub const CLUSTER: &str = "ops.vworkspace.io/cluster-cleanup";
}

/// Labels.
pub mod labels {
    /// Namespace gate: the agent acts only in namespaces labelled `managed-by=vworkspace`.
    pub const NAMESPACE_GATE: &str = "managed-by";
    /// Value of [`NAMESPACE_GATE`].
    pub const NAMESPACE_GATE_VALUE: &str = "vworkspace";

    /// Who manages an object: `control-plane` (hub-created ApplicationInstances and
    /// Operations) or `vworkspace-operator` (downstream objects).
    pub const MANAGED_BY: &str = "app.vworkspace.io/managed-by";
    /// [`MANAGED_BY`] value on objects the hub created.
    pub const MANAGED_BY_CONTROL_PLANE: &str = "control-plane";
    /// [`MANAGED_BY`] value older hub versions and upstream code use.
    pub const MANAGED_BY_ODOO: &str = "odoo";
    /// [`MANAGED_BY`] value on downstream objects the agent writes.
    pub const MANAGED_BY_OPERATOR: &str = "vworkspace-operator";

    /// Cluster identity, on hub-created objects and every downstream object.
    pub const CLUSTER_ID: &str = "app.vworkspace.io/cluster-id";
    /// ApplicationInstance name, on its HelmRelease, chart source and Operations.
    pub const APPLICATION_INSTANCE: &str = "app.vworkspace.io/application-instance";
    /// Operation **UID**, on every engine workload: the ownership proof.
    pub const OPERATION: &str = "ops.vworkspace.io/operation";
    /// Target ApplicationInstance name, on engine workloads.
    pub const TARGET: &str = "ops.vworkspace.io/target";
    /// Hook name, on helmHookJob Jobs and their pod templates.
    pub const HOOK_NAME: &str = "ops.vworkspace.io/hook-name";
    /// Parent Operation UID, on child Operations created by a workflow.
    pub const PARENT_OPERATION: &str = "ops.vworkspace.io/parent-operation";
}

/// Annotations.
pub mod annotations {
    /// Prefix of the capability annotations on an ApplicationInstance:
    /// `ops.vworkspace.io/<verb>: <engine>` allows Operations of that verb with that engine.
    pub const CAPABILITY_PREFIX: &str = "ops.vworkspace.io/";

    /// On a Namespace: comma-separated Operation types allowed there (absent or empty: all).
    pub const ALLOWED_TYPES: &str = "ops.vworkspace.io/allowed-types";
    /// On an ApplicationInstance: set to `requested` while a workflow quiesces it.
    pub const QUIESCE: &str = "ops.vworkspace.io/quiesce";
    /// On a Cluster: forces the join token to be exchanged again.
    pub const ROTATE_CREDENTIALS: &str = "ops.vworkspace.io/rotate-credentials";
    /// On an ApplicationInstance: `"true"` admits a forbidden chart version (with a justification).
    pub const OVERRIDE_FORBIDDEN: &str = "apps.vworkspace.io/override-forbidden";
    /// On an ApplicationInstance: why a forbidden version is admitted (beyond upstream: upstream names no key).
    pub const OVERRIDE_JUSTIFICATION: &str = "apps.vworkspace.io/override-justification";

    /// On an Operation: any non-empty value asks the agent to cancel it
    /// (phase Cancelled, Cancelled=True/UserCancelled). Beyond upstream.
    pub const CANCEL: &str = "ops.vworkspace.io/cancel";

    /// On objects the agent wrote from a hub intent: the per-object intent
    /// version applied (a decimal integer that only grows). Beyond upstream.
    pub const APPLIED_INTENT_VERSION: &str = "vworkspace.io/applied-intent-version";
    /// On objects the agent wrote from a hub intent: the id of that intent. Beyond upstream.
    pub const APPLIED_INTENT_ID: &str = "vworkspace.io/applied-intent-id";
    /// Upstream idempotency hash of the applied payload, on downstream objects.
    pub const APPLIED_INTENT_HASH: &str = "vworkspace.io/applied-intent-hash";
    /// Upstream: the owner's generation a downstream object was written from.
    pub const LAST_APPLIED_GENERATION: &str = "vworkspace.io/last-applied-generation";

    /// The capability annotation key for a verb, e.g. `ops.vworkspace.io/backup`.
    pub fn capability(verb: &str) -> String {
        format!("{CAPABILITY_PREFIX}{verb}")
    }
}

/// Well-known values that are neither labels nor annotations.
pub mod values {
    /// Default key of the join token in the registration Secret.
    pub const REGISTRATION_TOKEN_KEY: &str = "registrationToken";
    /// Service account engine workloads run as.
    pub const OPERATION_RUNNER_SERVICE_ACCOUNT: &str = "vworkspace-operation-runner";
    /// Namespace the agent runs in by default.
    pub const AGENT_NAMESPACE: &str = "vworkspace-system";
}
