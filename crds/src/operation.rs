//! `Operation` (`ops.vworkspace.io/v1alpha1`): one day-2 action against an
//! ApplicationInstance in the same namespace, run by one engine.
//!
//! The spec is a request (type + engine + parameters); the status follows the
//! state machine Pending → Running → Succeeded | Failed | Cancelled.

// `printcolumn(type_ = ..)` repeats per column; that is not a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of an Operation: which verb to run against which ApplicationInstance, with which engine.
///
/// `targetRef`, `type` and `engine` are immutable. Extension fields beyond
/// upstream (`timeoutSeconds`, `ttlSecondsAfterFinished`, `policy`) are optional.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ops.vworkspace.io",
    version = "v1alpha1",
    kind = "Operation",
    namespaced,
    shortname = "op",
    category = "vworkspace",
    status = "OperationStatus",
    derive = "PartialEq",
    selectable = ".spec.targetRef.name",
    selectable = ".spec.type",
    doc = "Operation is one day-2 action (backup, restore, upgrade, ...) against an ApplicationInstance, run by an engine.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded, Failed or Cancelled"
    ),
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "The verb"
    ),
    printcolumn(
        name = "Engine",
        type_ = "string",
        json_path = ".spec.engine",
        description = "The executor"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef.name",
        priority = 1,
        description = "Target ApplicationInstance"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OperationSpec {
    /// The ApplicationInstance (same namespace) the operation acts on. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "targetRef is immutable"}]))]
    pub target_ref: TargetRef,
    /// The verb. Immutable.
    #[serde(rename = "type")]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "type is immutable"}]))]
    pub type_: OperationType,
    /// The executor. Immutable.
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "engine is immutable"}]))]
    pub engine: Engine,
    /// Engine inputs (free-form, checked against the engine's template when the operation starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub parameters: Option<BTreeMap<String, serde_json::Value>>,
    /// Approval gate: when required, the operation waits (Blocked=True/AwaitingApproval) for a valid claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<Approvals>,
    /// Preconditions checked before the engine starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<OperationPolicy>,
    /// Fail the operation (Failed=True/TimedOut) when it runs longer than this; unset uses the agent default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,
    /// Delete the Operation this long after it finished; unset uses the agent's history limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Reference to the target ApplicationInstance; there is no namespace: targets are always local.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Always `apps.vworkspace.io/v1alpha1`.
    #[schemars(extend("enum" = ["apps.vworkspace.io/v1alpha1"]))]
    pub api_version: String,
    /// Always `ApplicationInstance`.
    #[schemars(extend("enum" = ["ApplicationInstance"]))]
    pub kind: String,
    /// Name of the ApplicationInstance in the Operation's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The verb an Operation executes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum OperationType {
    /// Back up the target's namespace or volumes.
    Backup,
    /// Restore from a backup or snapshot.
    Restore,
    /// Move the release to another chart version.
    Upgrade,
    /// Return the release to an earlier chart version or revision (beyond upstream).
    Rollback,
    /// Run a chart's migration hook.
    Migration,
    /// Run one command in a Job.
    RunCommand,
    /// Run a multi-step workflow.
    Runbook,
}

/// The executor of an Operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Engine {
    /// Velero Backup / Restore.
    #[serde(rename = "velero")]
    Velero,
    /// CSI VolumeSnapshot (beyond the upstream CRD enum; in upstream docs).
    #[serde(rename = "snapshot")]
    Snapshot,
    /// VolSync ReplicationSource / ReplicationDestination.
    #[serde(rename = "volsync")]
    Volsync,
    /// Argo Workflow.
    #[serde(rename = "workflow")]
    Workflow,
    /// batch/v1 Job.
    #[serde(rename = "job")]
    Job,
    /// The Flux HelmRelease of the target.
    #[serde(rename = "helm")]
    Helm,
    /// A Job cloned from one of the release's Helm hooks.
    #[serde(rename = "helmHookJob")]
    HelmHookJob,
}

/// Approval request and claim; the claim is issued and signed by the hub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Approvals {
    /// Whether an approval claim is needed before the engine starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// Signed approval claim (`vws1.<body>.<digest>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// Who approved, for audit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// When it was approved (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<String>,
}

/// Preconditions of an Operation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationPolicy {
    /// Wait (Blocked=True/TargetNotReady) until the target is Ready; default true for destructive verbs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_ready: Option<bool>,
}

/// Coarse progress of an Operation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum OperationPhase {
    /// Accepted or blocked, engine not started.
    Pending,
    /// The engine workload exists and runs.
    Running,
    /// Finished successfully (terminal).
    Succeeded,
    /// Finished with an error or timed out (terminal).
    Failed,
    /// Cancelled by the cancel annotation or superseded (terminal).
    Cancelled,
}

/// Observed state of an Operation, written only by the agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// Pending, Running, Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<OperationPhase>,
    /// When the engine started; empty while Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When a terminal phase was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The engine workload (e.g. a Velero Backup, a Job, a Workflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_ref: Option<EngineRef>,
    /// Accepted, Running, Succeeded, Failed, Cancelled and Blocked (see vworkspace_crds::conditions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Engine outputs, e.g. backupName, jobName, workflowName.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub outputs: Option<BTreeMap<String, serde_json::Value>>,
    /// Where the engine's logs can be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_ref: Option<LogsRef>,
}

/// Namespace/name of the workload an engine materialized.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EngineRef {
    /// Kind of the workload: Job, Workflow, Backup, Restore, VolumeSnapshot, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Workload name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Workload namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Where an Operation's logs live.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsRef {
    /// Kind of the object holding the logs, e.g. Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A URL to the logs, when they live outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

// === impl OperationType ===

impl OperationType {
    /// Every type, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::Backup,
        Self::Restore,
        Self::Upgrade,
        Self::Rollback,
        Self::Migration,
        Self::RunCommand,
        Self::Runbook,
    ];

    /// The wire literal, e.g. `RunCommand`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "Backup",
            Self::Restore => "Restore",
            Self::Upgrade => "Upgrade",
            Self::Rollback => "Rollback",
            Self::Migration => "Migration",
            Self::RunCommand => "RunCommand",
            Self::Runbook => "Runbook",
        }
    }

    /// The capability verb an ApplicationInstance advertises for this type
    /// (annotation `ops.vworkspace.io/<verb>`); lowercase, as upstream.
    pub fn capability_verb(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Upgrade => "upgrade",
            Self::Rollback => "rollback",
            Self::Migration => "migration",
            Self::RunCommand => "runcommand",
            Self::Runbook => "runbook",
        }
    }
}

impl std::str::FromStr for OperationType {
    type Err = UnknownLiteral;

    /// Parses the exact wire literal (case-sensitive, as the CRD enum).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownLiteral(s.to_string()))
    }
}

impl std::fmt::Display for OperationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the enum's wire literals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown literal {0:?}")]
pub struct UnknownLiteral(pub String);

// === impl Engine ===

impl Engine {
    /// Every engine, in declaration order.
    pub const ALL: [Self; 7] = [
        Self::Velero,
        Self::Snapshot,
        Self::Volsync,
        Self::Workflow,
        Self::Job,
        Self::Helm,
        Self::HelmHookJob,
    ];

    /// The wire literal, e.g. `helmHookJob`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Velero => "velero",
            Self::Snapshot => "snapshot",
            Self::Volsync => "volsync",
            Self::Workflow => "workflow",
            Self::Job => "job",
            Self::Helm => "helm",
            Self::HelmHookJob => "helmHookJob",
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = UnknownLiteral;

    /// Parses the exact wire literal (case-sensitive: `helmHookJob`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| UnknownLiteral(s.to_string()))
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl OperationPhase ===

impl OperationPhase {
    /// The wire literal, e.g. `Succeeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Cancelled => "Cancelled",
        }
    }

    /// Succeeded, Failed and Cancelled never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

// === impl Operation ===

impl Operation {
    /// Whether the cancel annotation ([`crate::well_known::annotations::CANCEL`]) is set to a non-empty value.
    pub fn cancel_requested(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::well_known::annotations::CANCEL))
            .is_some_and(|v| !v.trim().is_empty())
    }

    /// The phase, treating a missing one as Pending.
    pub fn phase(&self) -> OperationPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or(OperationPhase::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_round_trip_through_serde_and_from_str() {
        for t in OperationType::ALL {
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(json, t.as_str());
            assert_eq!(t.as_str().parse::<OperationType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        for e in Engine::ALL {
            let json = serde_json::to_value(e).unwrap();
            assert_eq!(json, e.as_str());
            assert_eq!(e.as_str().parse::<Engine>(), Ok(e));
        }
        for bad in ["", "backup", "Velero", "helmhookjob", "Delete"] {
            assert!(bad.parse::<OperationType>().is_err(), "{bad}");
            assert!(bad.parse::<Engine>().is_err(), "{bad}");
        }
        assert_eq!(
            "Delete".parse::<OperationType>(),
            Err(UnknownLiteral("Delete".into()))
        );
    }

    #[test]
    fn cancel_is_requested_by_a_non_empty_annotation() {
        let spec: OperationSpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "a"},
            "type": "Backup",
            "engine": "velero"
        }))
        .unwrap();
        let cases = [
            (None, false),
            (Some(""), false),
            (Some(" "), false),
            (Some("true"), true),
            (Some("user@example.com"), true),
        ];
        for (value, want) in cases {
            let mut op = Operation::new("op", spec.clone());
            if let Some(v) = value {
                op.metadata.annotations = Some(
                    [(
                        crate::well_known::annotations::CANCEL.to_string(),
                        v.to_string(),
                    )]
                    .into(),
                );
            }
            assert_eq!(op.cancel_requested(), want, "{value:?}");
        }
        assert_eq!(Operation::new("op", spec).phase(), OperationPhase::Pending);
    }

    #[test]
    fn terminal_phases() {
        let terminal: Vec<_> = [
            OperationPhase::Pending,
            OperationPhase::Running,
            OperationPhase::Succeeded,
            OperationPhase::Failed,
            OperationPhase::Cancelled,
        ]
        .into_iter()
        .filter(|p| p.is_terminal())
        .map(OperationPhase::as_str)
        .collect();
        assert_eq!(terminal, ["Succeeded", "Failed", "Cancelled"]);
    }
}
