//! The condition vocabulary: a closed list of types and reasons, and the
//! helpers that set conditions with `metav1` semantics.
//!
//! The hub consumes condition transitions as events, so the strings are a
//! contract: upstream names are kept verbatim, the list only grows, and a
//! reason is removed only after a deprecation note. Writers build a condition
//! with one constructor per type (e.g. [`ready`]), store it with
//! [`set_condition`] (which keeps `lastTransitionTime` unless the status
//! changed), and compare desired with observed by [`eq_ignoring_time`] before
//! sending a status patch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
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
    /// The cluster's clock disagrees with the hub's beyond the threshold.
    pub const CLOCK_SKEW: &str = "ClockSkew";

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
        CLOCK_SKEW,
    ];
}

/// Condition reasons: the closed list. Grouped by where they are used; several
/// are shared. Upstream reasons keep their spelling; the others are marked.
pub mod reasons {
    // --- ApplicationInstance / Ready
    /// Ready=True: the HelmRelease is Ready.
    pub const HELM_RELEASE_READY: &str = "HelmReleaseReady";
    /// Ready=True with a non-fatal warning in the message.
    pub const HELM_RELEASE_READY_WITH_WARNINGS: &str = "HelmReleaseReadyWithWarnings";
    /// Ready=False: the HelmRelease failed (Flux's message is kept).
    pub const HELM_RELEASE_FAILED: &str = "HelmReleaseFailed";
    /// Ready=False / Degraded=True: the chart source cannot be fetched.
    pub const CHART_UNREACHABLE: &str = "ChartUnreachable";
    /// Ready=False: waiting for a cert-manager certificate.
    pub const WAITING_FOR_CERTIFICATE: &str = "WaitingForCertificate";
    /// Ready=False / Blocked=True: the values Secret or ConfigMap is missing.
    pub const WAITING_FOR_SECRET: &str = "WaitingForSecret";
    /// Ready=False: first install in progress.
    pub const INSTALLING: &str = "Installing";
    /// Ready=False: upgrade in progress.
    pub const UPGRADING: &str = "Upgrading";
    /// Ready=Unknown: not enough downstream state seen yet.
    pub const RECONCILING: &str = "Reconciling";
    /// Ready=True: placeholder mode, nothing to install.
    pub const PLACEHOLDER: &str = "Placeholder";
    /// Ready=True after an upgrade.
    pub const UPGRADED: &str = "Upgraded";
    /// Ready=True after Flux remediation rolled back; Failed=True when a workflow rolled back.
    pub const ROLLED_BACK: &str = "RolledBack";
    /// Ready=False / Blocked=True / Accepted=False: the spec fails a check (upstream).
    pub const VALIDATION_FAILED: &str = "ValidationFailed";
    /// Blocked=True / Accepted=False: the spec fails a check the schema cannot express (beyond upstream).
    pub const INVALID_SPEC: &str = "InvalidSpec";

    // --- ApplicationInstance / Reconciling
    /// Reconciling=True: Flux is upgrading the release.
    pub const HELM_RELEASE_UPGRADING: &str = "HelmReleaseUpgrading";
    /// Reconciling=True: Flux is installing the release.
    pub const HELM_RELEASE_INSTALLING: &str = "HelmReleaseInstalling";
    /// Reconciling=True: the chart source is syncing.
    pub const CHART_SOURCE_SYNCING: &str = "ChartSourceSyncing";
    /// Reconciling=False.
    pub const STABLE: &str = "Stable";

    // --- ApplicationInstance / Degraded
    /// Degraded=True: Released=False after an earlier success.
    pub const HELM_RELEASE_DEGRADED: &str = "HelmReleaseDegraded";
    /// Degraded=True: an endpoint probe failed.
    pub const ENDPOINT_UNREACHABLE: &str = "EndpointUnreachable";
    /// Degraded=True: live state drifted from the release (reported, not fixed).
    pub const DRIFTED: &str = "Drifted";
    /// Degraded=False.
    pub const RECOVERED: &str = "Recovered";
    /// Degraded=True: the upgrade failed (Flux reason, relayed).
    pub const UPGRADE_FAILED: &str = "UpgradeFailed";
    /// Degraded=True: the install failed (Flux reason, relayed).
    pub const INSTALL_FAILED: &str = "InstallFailed";
    /// Degraded=True: Flux reconciliation failed (Flux reason, relayed).
    pub const RECONCILIATION_FAILED: &str = "ReconciliationFailed";
    /// Degraded=True: the chart version is deprecated in the catalog.
    pub const CHART_VERSION_DEPRECATED: &str = "ChartVersionDeprecated";
    /// Degraded=True: a forbidden version was admitted by override.
    pub const FORBIDDEN_VERSION_OVERRIDE: &str = "ForbiddenVersionOverride";

    // --- ApplicationInstance / Suspended
    /// Suspended=True: inside a maintenance window.
    pub const MAINTENANCE_WINDOW: &str = "MaintenanceWindow";
    /// Suspended=True: suspended by a person.
    pub const MANUALLY_SUSPENDED: &str = "ManuallySuspended";
    /// Suspended=True: a restore Operation runs against the instance (beyond upstream).
    pub const RESTORE_IN_PROGRESS: &str = "RestoreInProgress";
    /// Suspended=False.
    pub const ACTIVE: &str = "Active";

    // --- Blocked (ApplicationInstance and Operation)
    /// Blocked=True: an approval claim is missing or invalid.
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// Blocked=True: the chart source object is missing.
    pub const MISSING_CHART_SOURCE: &str = "MissingChartSource";
    /// Blocked=True: Flux (or another dependency) is not installed.
    pub const MISSING_DEPENDENCIES: &str = "MissingDependencies";
    /// Blocked=True: a policy denies the change.
    pub const POLICY_DENIED: &str = "PolicyDenied";
    /// Blocked=True: the catalog could not be reached (fail-open admit).
    pub const CATALOG_UNREACHABLE: &str = "CatalogUnreachable";
    /// Blocked=True / Accepted=False: the namespace lacks the `managed-by=vworkspace` label.
    pub const NAMESPACE_NOT_GATED: &str = "NamespaceNotGated";
    /// Rejected: the chart version is on the forbidden list.
    pub const CHART_VERSION_FORBIDDEN: &str = "ChartVersionForbidden";
    /// Rejected: the chart version is outside the allowed range.
    pub const CHART_VERSION_OUTSIDE_ALLOWED_RANGE: &str = "ChartVersionOutsideAllowedRange";
    /// Blocked=False.
    pub const UNBLOCKED: &str = "Unblocked";
    /// Blocked=True: another Operation on the same target conflicts.
    pub const CONFLICTING_OPERATION: &str = "ConflictingOperation";
    /// Blocked=True: the target is not Ready and the policy requires it.
    pub const TARGET_NOT_READY: &str = "TargetNotReady";
    /// Blocked=True: the engine is not installed or registered.
    pub const DEPENDENCY_MISSING: &str = "DependencyMissing";
    /// Blocked=True: a Secret the engine needs is missing.
    pub const MISSING_SECRET: &str = "MissingSecret";
    /// Blocked=True: outside the target's maintenance window.
    pub const OUTSIDE_MAINTENANCE_WINDOW: &str = "OutsideMaintenanceWindow";
    /// Blocked=True: no VolumeSnapshotClass for the snapshot engine.
    pub const MISSING_VOLUME_SNAPSHOT_CLASS: &str = "MissingVolumeSnapshotClass";
    /// Blocked=True: a suspended workflow waits to be resumed.
    pub const AWAITING_RESUME: &str = "AwaitingResume";

    // --- ApplicationInstance / Deleting
    /// Deleting=True: removing the HelmRelease.
    pub const UNINSTALLING: &str = "Uninstalling";
    /// Deleting=True: waiting for owned objects to disappear.
    pub const WAITING_FOR_CHILD_RESOURCES: &str = "WaitingForChildResources";
    /// Deleting=True for placeholders (upstream).
    pub const DELETING: &str = "Deleting";

    // --- Operation / Accepted
    /// Accepted=True.
    pub const ADMISSION_PASSED: &str = "AdmissionPassed";
    /// Accepted=True (upstream engine docs' spelling).
    pub const TEMPLATE_VALIDATED: &str = "TemplateValidated";
    /// Accepted=False: the target ApplicationInstance does not exist.
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    /// Accepted=False: the target does not advertise this verb with this engine.
    pub const CAPABILITY_MISSING: &str = "CapabilityMissing";
    /// Accepted=False: the named Helm hook does not exist.
    pub const HOOK_NOT_FOUND: &str = "HookNotFound";
    /// Accepted=False: the hook needs an installed release.
    pub const HOOK_REQUIRES_RELEASE: &str = "HookRequiresRelease";
    /// Accepted=False: Velero rejected the Backup.
    pub const VELERO_BACKUP_VALIDATION_FAILED: &str = "VeleroBackupValidationFailed";
    /// Accepted=False: the agent lacks the RBAC profile of the template.
    pub const RBAC_PROFILE_MISSING: &str = "RbacProfileMissing";
    /// Accepted=False: the engine's controller is not installed.
    pub const ENGINE_NOT_INSTALLED: &str = "EngineNotInstalled";

    // --- Operation / Running
    /// Running=True: the engine workload was created.
    pub const ENGINE_STARTED: &str = "EngineStarted";
    /// Running=True: the engine workload is in progress (beyond upstream).
    pub const ENGINE_RUNNING: &str = "EngineRunning";
    /// Running=False (upstream uses it also after completion).
    pub const ENGINE_NOT_STARTED: &str = "EngineNotStarted";
    /// Running=False: not started yet.
    pub const PENDING: &str = "Pending";
    /// Running=True: Velero backup or restore in progress.
    pub const VELERO_BACKUP_IN_PROGRESS: &str = "VeleroBackupInProgress";
    /// Running=True: the Job's pod is active.
    pub const JOB_POD_ACTIVE: &str = "JobPodActive";
    /// Running=True: the Workflow runs.
    pub const WORKFLOW_IN_PROGRESS: &str = "WorkflowInProgress";
    /// Running=True: the Workflow is suspended.
    pub const WORKFLOW_SUSPENDED: &str = "WorkflowSuspended";
    /// Running=True: the hook Job runs.
    pub const HELM_HOOK_JOB_ACTIVE: &str = "HelmHookJobActive";
    /// Running=True: VolSync waits for the next scheduled sync.
    pub const VOLSYNC_IDLE: &str = "VolSyncIdle";
    /// Running=True: the first VolSync sync runs.
    pub const VOLSYNC_FIRST_SYNC_IN_PROGRESS: &str = "VolSyncFirstSyncInProgress";
    /// Running=True: a VolSync sync runs.
    pub const VOLSYNC_SYNCHRONIZING: &str = "VolSyncSynchronizing";
    /// Running=True: the VolumeSnapshot is not ready to use yet (beyond upstream).
    pub const SNAPSHOT_IN_PROGRESS: &str = "SnapshotInProgress";

    // --- Operation / Succeeded
    /// Succeeded=True.
    pub const ENGINE_COMPLETED: &str = "EngineCompleted";
    /// Succeeded=False while running.
    pub const NOT_YET_SUCCEEDED: &str = "NotYetSucceeded";
    /// Succeeded=True: the Velero Backup completed.
    pub const VELERO_BACKUP_COMPLETED: &str = "VeleroBackupCompleted";
    /// Succeeded=True: the Job completed.
    pub const JOB_SUCCEEDED: &str = "JobSucceeded";
    /// Succeeded=True: the Workflow succeeded.
    pub const WORKFLOW_SUCCEEDED: &str = "WorkflowSucceeded";
    /// Succeeded=True: the hook Job completed.
    pub const HELM_HOOK_JOB_SUCCEEDED: &str = "HelmHookJobSucceeded";
    /// Succeeded=True: the last VolSync sync succeeded.
    pub const VOLSYNC_LAST_SYNC_SUCCEEDED: &str = "VolSyncLastSyncSucceeded";
    /// Succeeded=True: the VolumeSnapshot is ready to use (beyond upstream).
    pub const SNAPSHOT_READY: &str = "SnapshotReady";

    // --- Operation / Failed
    /// Failed=True: the engine reported failure.
    pub const ENGINE_FAILED: &str = "EngineFailed";
    /// Failed=True: the engine workload vanished while running (beyond upstream).
    pub const ENGINE_WORKLOAD_DELETED: &str = "EngineWorkloadDeleted";
    /// Failed=True: a workload labelled with this Operation belongs to another (beyond upstream).
    pub const WORKLOAD_OWNERSHIP_CONFLICT: &str = "WorkloadOwnershipConflict";
    /// Failed=True: upstream's timeout reason.
    pub const TIMEOUT: &str = "Timeout";
    /// Failed=True: `spec.timeoutSeconds` elapsed (beyond upstream).
    pub const TIMED_OUT: &str = "TimedOut";
    /// Failed=True: a precondition failed for good.
    pub const PRECONDITION_FAILED: &str = "PreconditionFailed";
    /// Failed=True / Cancelled=True: the engine object was deleted by someone else.
    pub const EXTERNAL_DELETION: &str = "ExternalDeletion";
    /// Failed=True: the Job exceeded its backoff limit.
    pub const JOB_FAILED_BACKOFF_EXCEEDED: &str = "JobFailedBackoffExceeded";
    /// Failed=True: the Job exceeded its active deadline.
    pub const JOB_ACTIVE_DEADLINE_EXCEEDED: &str = "JobActiveDeadlineExceeded";
    /// Failed=True: the Workflow failed.
    pub const WORKFLOW_FAILED: &str = "WorkflowFailed";
    /// Failed=True: the Workflow errored.
    pub const WORKFLOW_ERROR: &str = "WorkflowError";
    /// Failed=True: the hook Job failed.
    pub const HELM_HOOK_JOB_FAILED: &str = "HelmHookJobFailed";
    /// Failed=True: the PVC to snapshot does not exist.
    pub const SOURCE_PVC_NOT_FOUND: &str = "SourcePvcNotFound";
    /// Degraded on Operations (upstream docs): Velero finished with warnings.
    pub const PARTIAL_FAILURE: &str = "PartialFailure";
    /// Degraded on Operations (upstream docs): VolSync degraded.
    pub const VOLSYNC_DEGRADED: &str = "VolSyncDegraded";

    // --- Operation / Cancelled
    /// Cancelled=True: the cancel annotation was set.
    pub const USER_CANCELLED: &str = "UserCancelled";
    /// Cancelled=True (upstream engine docs' spelling of UserCancelled).
    pub const CANCELLED_BY_USER: &str = "CancelledByUser";
    /// Cancelled=True: a newer Operation replaced this one.
    pub const SUPERSEDED_BY_OPERATION: &str = "SupersededByOperation";

    // --- Cluster
    /// Connected=True: a round trip succeeded.
    pub const ROUND_TRIP_OK: &str = "RoundTripOK";
    /// Connected=True after registration.
    pub const CONTROL_PLANE_REACHABLE: &str = "ControlPlaneReachable";
    /// Connected=True (older upstream spelling).
    pub const ODOO_REACHABLE: &str = "OdooReachable";
    /// Connected=False: the hub cannot be reached.
    pub const CONTROL_PLANE_UNREACHABLE: &str = "ControlPlaneUnreachable";
    /// Connected=False (older upstream spelling).
    pub const ODOO_UNREACHABLE: &str = "OdooUnreachable";
    /// Connected=False: not registered yet.
    pub const REGISTRATION_PENDING: &str = "RegistrationPending";
    /// Connected=False / Authenticated=False: no credential.
    pub const CREDENTIAL_MISSING: &str = "CredentialMissing";
    /// Disconnected=True: no round trip within the disconnect window.
    pub const NO_RECENT_ROUND_TRIP: &str = "NoRecentRoundTrip";
    /// Disconnected=False.
    pub const CONNECTED: &str = "Connected";
    /// Connected=True: the tunnel to the hub is up (beyond upstream).
    pub const TUNNEL_CONNECTED: &str = "TunnelConnected";
    /// Connected=False: the tunnel dropped; reconnecting with backoff (beyond upstream).
    pub const TUNNEL_DISCONNECTED: &str = "TunnelDisconnected";
    /// Authenticated=True.
    pub const CREDENTIAL_ACCEPTED: &str = "CredentialAccepted";
    /// Authenticated=True after registration.
    pub const REGISTRATION_COMPLETE: &str = "RegistrationComplete";
    /// Authenticated=False: the hub refused the credential.
    pub const CREDENTIAL_REJECTED: &str = "CredentialRejected";
    /// Authenticated=False: the credential expired.
    pub const CREDENTIAL_EXPIRED: &str = "CredentialExpired";
    /// Authenticated=False: the join token exchange failed.
    pub const REGISTRATION_FAILED: &str = "RegistrationFailed";
    /// Authenticated=False: the credential rotation failed.
    pub const ROTATION_FAILED: &str = "RotationFailed";
    /// Authenticated=False: the join token Secret is missing.
    pub const TOKEN_SECRET_MISSING: &str = "TokenSecretMissing";
    /// Authenticated=False: any authentication error from the hub.
    pub const CONTROL_PLANE_AUTHENTICATION_FAILED: &str = "ControlPlaneAuthenticationFailed";
    /// Authenticated=False: the join token is malformed, expired or used (beyond upstream).
    pub const JOIN_TOKEN_INVALID: &str = "JoinTokenInvalid";
    /// Authenticated=False: the hub's CA does not match the pin in the join token (beyond upstream).
    pub const CA_PIN_MISMATCH: &str = "CaPinMismatch";
    /// Authenticated=True: the client certificate was renewed (beyond upstream).
    pub const CERTIFICATE_RENEWED: &str = "CertificateRenewed";
    /// Authenticated=False: renewal failed before expiry (beyond upstream).
    pub const CERTIFICATE_RENEWAL_FAILED: &str = "CertificateRenewalFailed";
    /// Authenticated=False: the hub revoked this cluster's identity (beyond upstream).
    pub const IDENTITY_REVOKED: &str = "IdentityRevoked";
    /// ControllersHealthy=True.
    pub const ALL_CONTROLLERS_READY: &str = "AllControllersReady";
    /// ControllersHealthy=False: a controller is not installed (the message names it).
    pub const CONTROLLER_MISSING: &str = "ControllerMissing";
    /// ControllersHealthy=False: a controller is unhealthy (the message names it).
    pub const CONTROLLER_DEGRADED: &str = "ControllerDegraded";
    /// BufferOverflow=True: entries were dropped (the message carries the count).
    pub const EVENT_BUFFER_FULL: &str = "EventBufferFull";
    /// BufferOverflow=False.
    pub const BUFFER_DRAINED: &str = "BufferDrained";
    /// Authenticated=True: an expired certificate was recovered with the
    /// cluster's key (beyond upstream).
    pub const CERTIFICATE_RECOVERED: &str = "CertificateRecovered";
    /// Authenticated=False: the certificate expired longer ago than the hub's
    /// recovery window; a new join token is needed (beyond upstream).
    pub const RECOVERY_WINDOW_PASSED: &str = "RecoveryWindowPassed";
    /// Authenticated=False: the hub refused recovery (not the newest
    /// certificate, or the hub has no recovery); a new join token is needed
    /// (beyond upstream).
    pub const RECOVERY_REFUSED: &str = "RecoveryRefused";
    /// ClockSkew=True: the hub's clock differs beyond the threshold (beyond upstream).
    pub const CLOCK_SKEW_DETECTED: &str = "ClockSkewDetected";
    /// ClockSkew=False (beyond upstream).
    pub const CLOCK_IN_SYNC: &str = "ClockInSync";

    /// Every reason above.
    pub const ALL: &[&str] = &[
        HELM_RELEASE_READY,
        HELM_RELEASE_READY_WITH_WARNINGS,
        HELM_RELEASE_FAILED,
        CHART_UNREACHABLE,
        WAITING_FOR_CERTIFICATE,
        WAITING_FOR_SECRET,
        INSTALLING,
        UPGRADING,
        RECONCILING,
        PLACEHOLDER,
        UPGRADED,
        ROLLED_BACK,
        VALIDATION_FAILED,
        INVALID_SPEC,
        HELM_RELEASE_UPGRADING,
        HELM_RELEASE_INSTALLING,
        CHART_SOURCE_SYNCING,
        STABLE,
        HELM_RELEASE_DEGRADED,
        ENDPOINT_UNREACHABLE,
        DRIFTED,
        RECOVERED,
        UPGRADE_FAILED,
        INSTALL_FAILED,
        RECONCILIATION_FAILED,
        CHART_VERSION_DEPRECATED,
        FORBIDDEN_VERSION_OVERRIDE,
        MAINTENANCE_WINDOW,
        MANUALLY_SUSPENDED,
        RESTORE_IN_PROGRESS,
        ACTIVE,
        AWAITING_APPROVAL,
        MISSING_CHART_SOURCE,
        MISSING_DEPENDENCIES,
        POLICY_DENIED,
        CATALOG_UNREACHABLE,
        NAMESPACE_NOT_GATED,
        CHART_VERSION_FORBIDDEN,
        CHART_VERSION_OUTSIDE_ALLOWED_RANGE,
        UNBLOCKED,
        CONFLICTING_OPERATION,
        TARGET_NOT_READY,
        DEPENDENCY_MISSING,
        MISSING_SECRET,
        OUTSIDE_MAINTENANCE_WINDOW,
        MISSING_VOLUME_SNAPSHOT_CLASS,
        AWAITING_RESUME,
        UNINSTALLING,
        WAITING_FOR_CHILD_RESOURCES,
        DELETING,
        ADMISSION_PASSED,
        TEMPLATE_VALIDATED,
        TARGET_NOT_FOUND,
        CAPABILITY_MISSING,
        HOOK_NOT_FOUND,
        HOOK_REQUIRES_RELEASE,
        VELERO_BACKUP_VALIDATION_FAILED,
        RBAC_PROFILE_MISSING,
        ENGINE_NOT_INSTALLED,
        ENGINE_STARTED,
        ENGINE_RUNNING,
        ENGINE_NOT_STARTED,
        PENDING,
        VELERO_BACKUP_IN_PROGRESS,
        JOB_POD_ACTIVE,
        WORKFLOW_IN_PROGRESS,
        WORKFLOW_SUSPENDED,
        HELM_HOOK_JOB_ACTIVE,
        VOLSYNC_IDLE,
        VOLSYNC_FIRST_SYNC_IN_PROGRESS,
        VOLSYNC_SYNCHRONIZING,
        SNAPSHOT_IN_PROGRESS,
        ENGINE_COMPLETED,
        NOT_YET_SUCCEEDED,
        VELERO_BACKUP_COMPLETED,
        JOB_SUCCEEDED,
        WORKFLOW_SUCCEEDED,
        HELM_HOOK_JOB_SUCCEEDED,
        VOLSYNC_LAST_SYNC_SUCCEEDED,
        SNAPSHOT_READY,
        ENGINE_FAILED,
        ENGINE_WORKLOAD_DELETED,
        WORKLOAD_OWNERSHIP_CONFLICT,
        TIMEOUT,
        TIMED_OUT,
        PRECONDITION_FAILED,
        EXTERNAL_DELETION,
        JOB_FAILED_BACKOFF_EXCEEDED,
        JOB_ACTIVE_DEADLINE_EXCEEDED,
        WORKFLOW_FAILED,
        WORKFLOW_ERROR,
        HELM_HOOK_JOB_FAILED,
        SOURCE_PVC_NOT_FOUND,
        PARTIAL_FAILURE,
        VOLSYNC_DEGRADED,
        USER_CANCELLED,
        CANCELLED_BY_USER,
        SUPERSEDED_BY_OPERATION,
        ROUND_TRIP_OK,
        CONTROL_PLANE_REACHABLE,
        ODOO_REACHABLE,
        CONTROL_PLANE_UNREACHABLE,
        ODOO_UNREACHABLE,
        REGISTRATION_PENDING,
        CREDENTIAL_MISSING,
        NO_RECENT_ROUND_TRIP,
        CONNECTED,
        TUNNEL_CONNECTED,
        TUNNEL_DISCONNECTED,
        CREDENTIAL_ACCEPTED,
        REGISTRATION_COMPLETE,
        CREDENTIAL_REJECTED,
        CREDENTIAL_EXPIRED,
        REGISTRATION_FAILED,
        ROTATION_FAILED,
        TOKEN_SECRET_MISSING,
        CONTROL_PLANE_AUTHENTICATION_FAILED,
        JOIN_TOKEN_INVALID,
        CA_PIN_MISMATCH,
        CERTIFICATE_RENEWED,
        CERTIFICATE_RENEWAL_FAILED,
        IDENTITY_REVOKED,
        ALL_CONTROLLERS_READY,
        CONTROLLER_MISSING,
        CONTROLLER_DEGRADED,
        EVENT_BUFFER_FULL,
        BUFFER_DRAINED,
        CERTIFICATE_RECOVERED,
        RECOVERY_WINDOW_PASSED,
        RECOVERY_REFUSED,
        CLOCK_SKEW_DETECTED,
        CLOCK_IN_SYNC,
    ];
}

/// Longest condition message the API server accepts (metav1.Condition).
pub const MAX_MESSAGE_BYTES: usize = 32768;

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown`.
    Unknown,
}

// === impl Status ===

impl Status {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// The current time at second precision, as metav1.Time serializes it.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Builds a condition stamped with `at`. Messages longer than
/// [`MAX_MESSAGE_BYTES`] are cut at a character boundary.
pub fn new_at(
    type_: &str,
    status: Status,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    at: Time,
) -> Condition {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message,
        observed_generation,
        last_transition_time: at,
    }
}

/// [`new_at`] stamped with [`now`].
pub fn new(
    type_: &str,
    status: Status,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    new_at(type_, status, reason, message, observed_generation, now())
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $type_:path;)*) => {$(
        $(#[$doc])*
        pub fn $name(
            status: Status,
            reason: &str,
            message: impl Into<String>,
            observed_generation: Option<i64>,
        ) -> Condition {
            new($type_, status, reason, message, observed_generation)
        }
    )*};
}

constructors! {
    /// ApplicationInstance `Ready`.
    ready => types::READY;
    /// ApplicationInstance `Reconciling`.
    reconciling => types::RECONCILING;
    /// ApplicationInstance `Degraded`.
    degraded => types::DEGRADED;
    /// ApplicationInstance `Suspended`.
    suspended => types::SUSPENDED;
    /// ApplicationInstance or Operation `Blocked`.
    blocked => types::BLOCKED;
    /// ApplicationInstance `Deleting`.
    deleting => types::DELETING;
    /// Operation `Accepted`.
    accepted => types::ACCEPTED;
    /// Operation `Running`.
    running => types::RUNNING;
    /// Operation `Succeeded`.
    succeeded => types::SUCCEEDED;
    /// Operation `Failed`.
    failed => types::FAILED;
    /// Operation `Cancelled`.
    cancelled => types::CANCELLED;
    /// Cluster `Connected`.
    connected => types::CONNECTED;
    /// Cluster `Disconnected` (upstream compatibility).
    disconnected => types::DISCONNECTED;
    /// Cluster `Authenticated`.
    authenticated => types::AUTHENTICATED;
    /// Cluster `ControllersHealthy`.
    controllers_healthy => types::CONTROLLERS_HEALTHY;
    /// Cluster `BufferOverflow`.
    buffer_overflow => types::BUFFER_OVERFLOW;
    /// Cluster `ClockSkew`.
    clock_skew => types::CLOCK_SKEW;
}

/// Stores `new` in `conditions`, replacing the condition of the same type.
///
/// `lastTransitionTime` changes only when the status changes (it is kept from
/// the old condition otherwise); reason, message and observedGeneration always
/// take the new values. Returns whether anything but the time changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        None => {
            conditions.push(new);
            true
        }
        Some(old) => {
            let changed = !same_ignoring_time(old, &new);
            let keep_time = old.status == new.status;
            let last_transition_time = if keep_time {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time,
                ..new
            };
            changed
        }
    }
}

/// Removes the condition of type `type_`; returns whether one was there.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// The condition of type `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of type `type_` is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == Status::True.as_str())
}

/// Two conditions are equal apart from `lastTransitionTime`.
pub fn same_ignoring_time(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_
        && a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

/// Two condition lists hold the same conditions (in any order) apart from
/// `lastTransitionTime`: nothing to write when true.
pub fn eq_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| find(b, &x.type_).is_some_and(|y| same_ignoring_time(x, y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
    }

    fn cond(type_: &str, status: Status, reason: &str, generation: i64, t: i64) -> Condition {
        new_at(type_, status, reason, "msg", Some(generation), at(t))
    }

    #[test]
    fn set_condition_keeps_transition_time_unless_status_changes() {
        // (old, new, expected stored, expected "changed")
        let cases = [
            (
                "same status, new reason and generation: time kept",
                Some(cond("Ready", Status::False, "Installing", 1, 10)),
                cond("Ready", Status::False, "HelmReleaseFailed", 2, 20),
                cond("Ready", Status::False, "HelmReleaseFailed", 2, 10),
                true,
            ),
            (
                "status flips: time taken from the new condition",
                Some(cond("Ready", Status::False, "Installing", 1, 10)),
                cond("Ready", Status::True, "HelmReleaseReady", 1, 20),
                cond("Ready", Status::True, "HelmReleaseReady", 1, 20),
                true,
            ),
            (
                "identical apart from time: nothing changed, time kept",
                Some(cond("Ready", Status::True, "HelmReleaseReady", 3, 10)),
                cond("Ready", Status::True, "HelmReleaseReady", 3, 99),
                cond("Ready", Status::True, "HelmReleaseReady", 3, 10),
                false,
            ),
            (
                "only observedGeneration moves: changed, time kept",
                Some(cond("Ready", Status::True, "HelmReleaseReady", 3, 10)),
                cond("Ready", Status::True, "HelmReleaseReady", 4, 99),
                cond("Ready", Status::True, "HelmReleaseReady", 4, 10),
                true,
            ),
            (
                "absent: appended as given",
                None,
                cond("Ready", Status::Unknown, "Reconciling", 1, 5),
                cond("Ready", Status::Unknown, "Reconciling", 1, 5),
                true,
            ),
        ];
        for (name, old, new, want, want_changed) in cases {
            let other = cond("Degraded", Status::False, "Recovered", 1, 1);
            let mut list = vec![other.clone()];
            list.extend(old);
            let changed = set_condition(&mut list, new);
            assert_eq!(changed, want_changed, "{name}");
            assert_eq!(list.len(), 2, "{name}: one condition per type");
            assert_eq!(find(&list, "Ready"), Some(&want), "{name}");
            assert_eq!(
                find(&list, "Degraded"),
                Some(&other),
                "{name}: others untouched"
            );
        }
    }

    #[test]
    fn eq_ignoring_time_ignores_order_and_time_only() {
        let a = vec![
            cond("Ready", Status::True, "HelmReleaseReady", 1, 1),
            cond("Blocked", Status::False, "Unblocked", 1, 2),
        ];
        let reordered_later = vec![
            cond("Blocked", Status::False, "Unblocked", 1, 50),
            cond("Ready", Status::True, "HelmReleaseReady", 1, 60),
        ];
        assert!(eq_ignoring_time(&a, &reordered_later));
        let cases = [
            cond("Ready", Status::False, "HelmReleaseReady", 1, 1),
            cond("Ready", Status::True, "Upgraded", 1, 1),
            cond("Ready", Status::True, "HelmReleaseReady", 2, 1),
            new_at(
                "Ready",
                Status::True,
                "HelmReleaseReady",
                "other",
                Some(1),
                at(1),
            ),
        ];
        for changed in cases {
            let mut b = a.clone();
            b[0] = changed.clone();
            assert!(!eq_ignoring_time(&a, &b), "{changed:?}");
        }
        assert!(!eq_ignoring_time(&a, &a[..1]));
    }

    #[test]
    fn constructors_set_type_status_reason_and_generation() {
        type Make = fn(Status, &str, String, Option<i64>) -> Condition;
        let cases: [(Make, &str); 16] = [
            (|s, r, m, g| ready(s, r, m, g), types::READY),
            (|s, r, m, g| reconciling(s, r, m, g), types::RECONCILING),
            (|s, r, m, g| degraded(s, r, m, g), types::DEGRADED),
            (|s, r, m, g| suspended(s, r, m, g), types::SUSPENDED),
            (|s, r, m, g| blocked(s, r, m, g), types::BLOCKED),
            (|s, r, m, g| deleting(s, r, m, g), types::DELETING),
            (|s, r, m, g| accepted(s, r, m, g), types::ACCEPTED),
            (|s, r, m, g| running(s, r, m, g), types::RUNNING),
            (|s, r, m, g| succeeded(s, r, m, g), types::SUCCEEDED),
            (|s, r, m, g| failed(s, r, m, g), types::FAILED),
            (|s, r, m, g| cancelled(s, r, m, g), types::CANCELLED),
            (|s, r, m, g| connected(s, r, m, g), types::CONNECTED),
            (|s, r, m, g| disconnected(s, r, m, g), types::DISCONNECTED),
            (|s, r, m, g| authenticated(s, r, m, g), types::AUTHENTICATED),
            (
                |s, r, m, g| controllers_healthy(s, r, m, g),
                types::CONTROLLERS_HEALTHY,
            ),
            (
                |s, r, m, g| buffer_overflow(s, r, m, g),
                types::BUFFER_OVERFLOW,
            ),
        ];
        for (make, type_) in cases {
            let c = make(Status::False, reasons::STABLE, "m".into(), Some(7));
            assert_eq!(c.type_, type_);
            assert_eq!(c.status, "False");
            assert_eq!(c.reason, "Stable");
            assert_eq!(c.message, "m");
            assert_eq!(c.observed_generation, Some(7));
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let message = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each
        let c = new(
            "Ready",
            Status::False,
            reasons::HELM_RELEASE_FAILED,
            message,
            None,
        );
        assert!(c.message.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(c.message.len(), MAX_MESSAGE_BYTES);
        assert!(c.message.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn vocabulary_is_unique_and_matches_the_server_patterns() {
        fn reason_ok(r: &str) -> bool {
            // ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$ (metav1.Condition.reason)
            let b = r.as_bytes();
            !b.is_empty()
                && b.len() <= 1024
                && b[0].is_ascii_alphabetic()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"_,:".contains(c))
                && (b[b.len() - 1].is_ascii_alphanumeric() || b[b.len() - 1] == b'_')
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in reasons::ALL {
            assert!(reason_ok(r), "{r}");
            assert!(seen.insert(*r), "duplicate reason {r}");
        }
        for list in [
            types::APPLICATION_INSTANCE,
            types::OPERATION,
            types::CLUSTER,
        ] {
            let unique: std::collections::BTreeSet<_> = list.iter().collect();
            assert_eq!(unique.len(), list.len());
            assert!(list.iter().all(|t| reason_ok(t)));
        }
        // The documented upstream names are spelled exactly so.
        for r in [
            "HelmReleaseReady",
            "HelmReleaseFailed",
            "ChartUnreachable",
            "ConflictingOperation",
            "AwaitingApproval",
            "NamespaceNotGated",
            "EngineCompleted",
            "EngineFailed",
            "UserCancelled",
            "WaitingForChildResources",
            "DependencyMissing",
            "Placeholder",
        ] {
            assert!(reasons::ALL.contains(&r), "{r}");
        }
    }

    #[test]
    fn helpers_find_and_remove() {
        let mut list = vec![cond("Ready", Status::True, "HelmReleaseReady", 1, 1)];
        assert!(is_true(&list, types::READY));
        assert!(!is_true(&list, types::DEGRADED));
        assert!(remove_condition(&mut list, types::READY));
        assert!(!remove_condition(&mut list, types::READY));
        assert!(list.is_empty());
        assert_eq!(Status::from(true), Status::True);
        assert_eq!(Status::from(false).as_str(), "False");
    }

    #[test]
    fn now_has_second_precision() {
        assert_eq!(now().0.subsec_nanosecond(), 0);
    }
}
