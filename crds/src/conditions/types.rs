//! Condition types, per kind: the `type` strings of `status.conditions`.

// --- ApplicationInstance
/// The release is installed and healthy (or the placeholder exists).
pub const READY: &str = "Ready";
/// Flux is installing, upgrading or syncing the chart source.
pub const RECONCILING: &str = "Reconciling";
/// Installed once, but not healthy now.
pub const DEGRADED: &str = "Degraded";
/// Reconciliation paused (maintenance window, restore, manual).
pub const SUSPENDED: &str = "Suspended";
/// Waiting on something outside the object (ApplicationInstance and Operation).
pub const BLOCKED: &str = "Blocked";
/// Being deleted; waits for child resources.
pub const DELETING: &str = "Deleting";

// --- Operation
/// Preconditions passed (or not) and the request was taken.
pub const ACCEPTED: &str = "Accepted";
/// The engine workload runs.
pub const RUNNING: &str = "Running";
/// Finished successfully.
pub const SUCCEEDED: &str = "Succeeded";
/// Finished with an error.
pub const FAILED: &str = "Failed";
/// Cancelled before it finished.
pub const CANCELLED: &str = "Cancelled";

// --- Cluster
/// The agent has a live connection to the hub.
pub const CONNECTED: &str = "Connected";
/// Upstream's inverse of Connected; kept because upstream clusters carry it.
pub const DISCONNECTED: &str = "Disconnected";
/// The hub accepted the cluster's credential.
pub const AUTHENTICATED: &str = "Authenticated";
/// Flux, Velero and the other engines the agent drives are installed and healthy.
pub const CONTROLLERS_HEALTHY: &str = "ControllersHealthy";
/// The bounded event/status buffer dropped entries while offline.
pub const BUFFER_OVERFLOW: &str = "BufferOverflow";

/// ApplicationInstance condition types.
pub const APPLICATION_INSTANCE: &[&str] =
    &[READY, RECONCILING, DEGRADED, SUSPENDED, BLOCKED, DELETING];
/// Operation condition types.
pub const OPERATION: &[&str] = &[ACCEPTED, RUNNING, SUCCEEDED, FAILED, CANCELLED, BLOCKED];
/// Cluster condition types.
pub const CLUSTER: &[&str] = &[
    CONNECTED,
    DISCONNECTED,
    AUTHENTICATED,
    CONTROLLERS_HEALTHY,
    BUFFER_OVERFLOW,
];
