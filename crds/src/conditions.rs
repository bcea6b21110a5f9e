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

//!
//! This file is the vocabulary only (long because the list is: one constant
//! per type and reason); the helpers that build and compare conditions live in
//! `conditions/build.rs` and are re-exported here.

mod build;

pub use build::*;

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
    /// Authenticated=False: the hub is pacing enrollment (`429` with
    /// `Retry-After`); the agent retries when told (beyond upstream).
    pub const RATE_LIMITED: &str = "RateLimited";
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
    /// Connected=False: the hub's server certificate comes from a CA that is
    /// not in the cluster's CA bundle (the hub CA was rotated while the
    /// cluster was away); a new join token is needed (beyond upstream).
    pub const HUB_CA_UNKNOWN: &str = "HubCaUnknown";
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
        RATE_LIMITED,
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
        HUB_CA_UNKNOWN,
        CLOCK_SKEW_DETECTED,
        CLOCK_IN_SYNC,
    ];
}
