//! velero: a Backup or Restore in the Velero namespace.
//!
//! The objects are not owned by the Operation (owner references cannot cross
//! namespaces, and a Backup is data): deleting an Operation never deletes a
//! Backup. Velero cannot stop a running backup, so cancel leaves it alone.
//! PartiallyFailed counts as Succeeded, with the warnings in the outputs.

use serde_json::{Value, json};
use vworkspace_crds::{OperationType, conditions::reasons};

use super::{Observation, OpInfo, Outcome, Outputs, ParamError, bounded_name, cut};
use super::{Prepared, io::Workload};
use crate::controllers::resources::{Kind, VELERO_BACKUP, VELERO_RESTORE};
use crate::controllers::{Context, Error};
use futures::future::BoxFuture;
use vworkspace_crds::{ApplicationInstance, Operation};

/// Name of the Velero object: `<namespace>-<operation>` (Velero's namespace is
/// shared by every team, so the Operation name alone could collide).
pub fn object_name(op: &OpInfo) -> String {
    bounded_name(&[&op.namespace, &op.name], 63)
}

/// Backup or Restore.
pub fn kind(type_: OperationType) -> Kind {
    if type_ == OperationType::Restore {
        VELERO_RESTORE
    } else {
        VELERO_BACKUP
    }
}

/// The Backup or Restore for `op`, in `velero_namespace`.
pub fn desired_object(
    op: &OpInfo,
    velero_namespace: &str,
) -> Result<kube::api::DynamicObject, ParamError> {
    let name = object_name(op);
    let kind = kind(op.type_);
    let mut obj = kind.object(&name, velero_namespace);
    obj.metadata = op.meta(&name, velero_namespace, false);
    let mut spec = json!({ "includedNamespaces": [op.namespace] });
    for key in ["includedResources", "excludedResources"] {
        if let Some(v) = op.strings_param(key)? {
            spec[key] = json!(v);
        }
    }
    match op.type_ {
        OperationType::Restore => {
            spec["backupName"] = json!(op.required_str("backupName")?);
            if let Some(m) = op.map_param("namespaceMapping")? {
                spec["namespaceMapping"] = json!(m);
            }
            if let Some(b) = op.bool_param("restorePVs")? {
                spec["restorePVs"] = json!(b);
            }
            if let Some(p) = op.str_param("existingResourcePolicy")? {
                if p != "none" && p != "update" {
                    return Err(ParamError(
                        "parameters.existingResourcePolicy must be none or update".into(),
                    ));
                }
                spec["existingResourcePolicy"] = json!(p);
            }
        }
        _ => {
            spec["storageLocation"] = json!(
                op.str_param("storageLocation")?
                    .unwrap_or_else(|| "default".into())
            );
            if let Some(b) = op.bool_param("snapshotVolumes")? {
                spec["snapshotVolumes"] = json!(b);
            }
            let ttl = match op.str_param("retention")? {
                Some(t) => Some(t),
                None => op.str_param("ttl")?,
            };
            if let Some(ttl) = ttl {
                spec["ttl"] = json!(ttl);
            }
        }
    }
    obj.data = json!({ "spec": spec });
    Ok(obj)
}

/// Maps a Backup/Restore `status` to an outcome.
pub fn outcome_from_status(type_: OperationType, name: &str, status: &Value) -> Observation {
    let mut outputs = Outputs::new();
    let key = if type_ == OperationType::Restore {
        "restoreName"
    } else {
        "backupName"
    };
    outputs.insert(key.into(), json!(name));
    if let Some(n) = status["progress"]["itemsBackedUp"].as_i64() {
        outputs.insert("backupItemCount".into(), json!(n.to_string()));
    }
    if let Some(n) = status["progress"]["itemsRestored"].as_i64() {
        outputs.insert("restoreItemCount".into(), json!(n.to_string()));
    }
    let warnings = status["warnings"].as_i64().unwrap_or(0);
    let errors = status["errors"].as_i64().unwrap_or(0);
    let phase = status["phase"].as_str().unwrap_or("");
    let what = if type_ == OperationType::Restore {
        "restore"
    } else {
        "backup"
    };
    let outcome = match phase {
        "Completed" => {
            if warnings > 0 {
                outputs.insert(
                    "warnings".into(),
                    json!([format!("velero reported {warnings} warnings")]),
                );
            }
            Outcome::Succeeded {
                reason: completed_reason(type_),
                message: format!("velero {what} {name} completed"),
            }
        }
        "PartiallyFailed" => {
            outputs.insert(
                "warnings".into(),
                json!([format!(
                    "velero {what} partially failed: {errors} errors, {warnings} warnings (see `velero {what} logs {name}`)"
                )]),
            );
            outputs.insert("partiallyFailed".into(), json!("true"));
            Outcome::Succeeded {
                reason: completed_reason(type_),
                message: format!(
                    "velero {what} {name} partially failed ({errors} errors); finished with warnings"
                ),
            }
        }
        "Failed" => Outcome::Failed {
            reason: reasons::ENGINE_FAILED,
            message: cut(status["failureReason"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("velero reported Failed")),
        },
        "FailedValidation" => Outcome::Failed {
            reason: reasons::VELERO_BACKUP_VALIDATION_FAILED,
            message: cut(&status["validationErrors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "velero rejected the request".into())),
        },
        "Deleting" => Outcome::Failed {
            reason: reasons::EXTERNAL_DELETION,
            message: format!("velero {what} {name} is being deleted"),
        },
        "" | "New" => Outcome::Running {
            reason: reasons::ENGINE_STARTED,
            message: format!("waiting for velero to pick up {what} {name}"),
        },
        other => Outcome::Running {
            reason: reasons::VELERO_BACKUP_IN_PROGRESS,
            message: format!("velero {what} {name}: {other}"),
        },
    };
    Observation { outcome, outputs }
}

/// [`outcome_from_status`] for the whole Backup or Restore object: when a
/// Backup asked for `snapshotVolumes: true` and succeeded, the outputs also
/// say how many volume snapshots Velero took, and warn when it took none
/// (no VolumeSnapshotLocation, CSI driver or node agent: the backup holds the
/// namespace's resources only, no volume data).
pub fn outcome_from_object(type_: OperationType, name: &str, data: &Value) -> Observation {
    let mut obs = outcome_from_status(type_, name, &data["status"]);
    let asked = type_ != OperationType::Restore && data["spec"]["snapshotVolumes"] == true;
    if !asked || !matches!(obs.outcome, Outcome::Succeeded { .. }) {
        return obs;
    }
    let st = &data["status"];
    let count = |k: &str| st[k].as_i64().unwrap_or(0);
    let attempted = count("volumeSnapshotsAttempted") + count("csiVolumeSnapshotsAttempted");
    let completed = count("volumeSnapshotsCompleted") + count("csiVolumeSnapshotsCompleted");
    obs.outputs.insert(
        "volumeSnapshotsCompleted".into(),
        json!(completed.to_string()),
    );
    if completed == 0 {
        let note = format!(
            "snapshotVolumes was requested but velero took no volume snapshots ({attempted} attempted): \
             this backup holds resources only, no volume data"
        );
        match obs
            .outputs
            .get_mut("warnings")
            .and_then(Value::as_array_mut)
        {
            Some(w) => w.push(json!(note)),
            None => {
                obs.outputs.insert("warnings".into(), json!([note]));
            }
        }
    }
    obs
}

fn completed_reason(type_: OperationType) -> &'static str {
    if type_ == OperationType::Restore {
        reasons::ENGINE_COMPLETED
    } else {
        reasons::VELERO_BACKUP_COMPLETED
    }
}

// === impl Driver ===

/// The Velero engine's cluster side.
pub struct Driver;

impl super::Driver for Driver {
    fn supports(&self, type_: OperationType) -> bool {
        matches!(type_, OperationType::Backup | OperationType::Restore)
    }

    fn required_kinds(&self, type_: OperationType) -> Vec<Kind> {
        vec![kind(type_)]
    }

    fn watched_kinds(&self) -> &'static [Kind] {
        &[VELERO_BACKUP, VELERO_RESTORE]
    }

    fn prepare<'a>(
        &'a self,
        info: &'a OpInfo,
        _target: &'a ApplicationInstance,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Result<Prepared, ParamError>, Error>> {
        Box::pin(async move {
            Ok(desired_object(info, &ctx.config.velero_namespace)
                .map(|o| Prepared::Dynamic(vec![o])))
        })
    }

    fn read<'a>(
        &'a self,
        _op: &'a Operation,
        info: &'a OpInfo,
        at: &'a Workload,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Option<Observation>, Error>> {
        Box::pin(async move {
            Ok(at
                .get_owned(ctx, kind(info.type_), info)
                .await?
                .map(|o| outcome_from_object(info.type_, &at.name, &o.data)))
        })
    }

    /// Velero cannot stop a backup in flight, and its objects are kept.
    fn stop<'a>(
        &'a self,
        _op: &'a Operation,
        _info: &'a OpInfo,
        _ctx: &'a Context,
        _orphan: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vworkspace_crds::Engine;

    pub(crate) fn op(type_: OperationType, params: Value) -> OpInfo {
        OpInfo {
            name: "backup-1".into(),
            namespace: "team-a".into(),
            uid: "uid-9".into(),
            target: "nc".into(),
            type_,
            engine: Engine::Velero,
            params: serde_json::from_value::<BTreeMap<String, Value>>(params).unwrap(),
            owner: None,
        }
    }

    #[test]
    fn backup_object_table() {
        let o = desired_object(
            &op(OperationType::Backup, json!({"retention": "720h", "snapshotVolumes": true, "excludedResources": ["secrets"]})),
            "velero",
        )
        .unwrap();
        assert_eq!(o.types.as_ref().unwrap().kind, "Backup");
        assert_eq!(o.metadata.namespace.as_deref(), Some("velero"));
        assert_eq!(o.metadata.name.as_deref(), Some("team-a-backup-1"));
        assert!(o.metadata.owner_references.is_none());
        assert_eq!(
            o.metadata.labels.as_ref().unwrap()["ops.vworkspace.io/operation"],
            "uid-9"
        );
        let s = &o.data["spec"];
        assert_eq!(s["includedNamespaces"], json!(["team-a"]));
        assert_eq!(s["storageLocation"], "default");
        assert_eq!(s["ttl"], "720h");
        assert_eq!(s["snapshotVolumes"], true);
        assert_eq!(s["excludedResources"], json!(["secrets"]));
    }

    #[test]
    fn restore_object_needs_backup_name() {
        let err = desired_object(&op(OperationType::Restore, json!({})), "velero").unwrap_err();
        assert_eq!(err.0, "parameters.backupName is required");
        let bad = desired_object(
            &op(
                OperationType::Restore,
                json!({"backupName": "b", "existingResourcePolicy": "merge"}),
            ),
            "velero",
        );
        assert!(bad.is_err());
        let wrong_type = desired_object(
            &op(OperationType::Backup, json!({"snapshotVolumes": "yes"})),
            "velero",
        );
        assert_eq!(
            wrong_type.unwrap_err().0,
            "parameters.snapshotVolumes must be a boolean"
        );
        let o = desired_object(
            &op(OperationType::Restore, json!({"backupName": "team-a-b1", "restorePVs": true, "existingResourcePolicy": "update", "namespaceMapping": {"team-a": "team-b"}})),
            "velero",
        )
        .unwrap();
        assert_eq!(o.types.as_ref().unwrap().kind, "Restore");
        assert_eq!(o.data["spec"]["backupName"], "team-a-b1");
        assert_eq!(o.data["spec"]["namespaceMapping"]["team-a"], "team-b");
    }

    #[test]
    fn status_table() {
        use OperationType::{Backup, Restore};
        let table: Vec<(OperationType, Value, &str, &str)> = vec![
            (Backup, json!({}), "Running", reasons::ENGINE_STARTED),
            (
                Backup,
                json!({"phase": "New"}),
                "Running",
                reasons::ENGINE_STARTED,
            ),
            (
                Backup,
                json!({"phase": "InProgress"}),
                "Running",
                reasons::VELERO_BACKUP_IN_PROGRESS,
            ),
            (
                Backup,
                json!({"phase": "WaitingForPluginOperations"}),
                "Running",
                reasons::VELERO_BACKUP_IN_PROGRESS,
            ),
            (
                Backup,
                json!({"phase": "Finalizing"}),
                "Running",
                reasons::VELERO_BACKUP_IN_PROGRESS,
            ),
            (
                Backup,
                json!({"phase": "Completed"}),
                "Succeeded",
                reasons::VELERO_BACKUP_COMPLETED,
            ),
            (
                Restore,
                json!({"phase": "Completed"}),
                "Succeeded",
                reasons::ENGINE_COMPLETED,
            ),
            (
                Backup,
                json!({"phase": "PartiallyFailed", "errors": 2, "warnings": 1}),
                "Succeeded",
                reasons::VELERO_BACKUP_COMPLETED,
            ),
            (
                Backup,
                json!({"phase": "Failed", "failureReason": "bsl unavailable"}),
                "Failed",
                reasons::ENGINE_FAILED,
            ),
            (
                Backup,
                json!({"phase": "FailedValidation", "validationErrors": ["bad"]}),
                "Failed",
                reasons::VELERO_BACKUP_VALIDATION_FAILED,
            ),
            (
                Restore,
                json!({"phase": "Deleting"}),
                "Failed",
                reasons::EXTERNAL_DELETION,
            ),
        ];
        for (t, status, phase, reason) in table {
            let obs = outcome_from_status(t, "n", &status);
            let (p, r) = match &obs.outcome {
                Outcome::Running { reason, .. } => ("Running", *reason),
                Outcome::Succeeded { reason, .. } => ("Succeeded", *reason),
                Outcome::Failed { reason, .. } => ("Failed", *reason),
            };
            assert_eq!((p, r), (phase, reason), "{status}");
            assert!(reasons::ALL.contains(&r));
        }
    }

    #[test]
    fn asked_for_volumes_but_none_taken_says_so() {
        let done = json!({"phase": "Completed", "progress": {"itemsBackedUp": 25}});
        let obs = outcome_from_object(
            OperationType::Backup,
            "b",
            &json!({"spec": {"snapshotVolumes": true}, "status": done}),
        );
        assert!(matches!(obs.outcome, Outcome::Succeeded { .. }));
        assert_eq!(obs.outputs["volumeSnapshotsCompleted"], "0");
        assert!(
            obs.outputs["warnings"][0]
                .as_str()
                .unwrap()
                .contains("resources only, no volume data"),
            "{:?}",
            obs.outputs
        );
        let taken = outcome_from_object(
            OperationType::Backup,
            "b",
            &json!({"spec": {"snapshotVolumes": true}, "status": {"phase": "Completed", "csiVolumeSnapshotsAttempted": 2, "csiVolumeSnapshotsCompleted": 2}}),
        );
        assert_eq!(taken.outputs["volumeSnapshotsCompleted"], "2");
        assert!(!taken.outputs.contains_key("warnings"));
        let not_asked = outcome_from_object(
            OperationType::Backup,
            "b",
            &json!({"spec": {"snapshotVolumes": false}, "status": done}),
        );
        assert!(!not_asked.outputs.contains_key("warnings"));
        assert!(!not_asked.outputs.contains_key("volumeSnapshotsCompleted"));
    }

    #[test]
    fn partial_failure_puts_warnings_in_outputs() {
        let obs = outcome_from_status(
            OperationType::Backup,
            "b",
            &json!({"phase": "PartiallyFailed", "errors": 2, "warnings": 1, "progress": {"itemsBackedUp": 40}}),
        );
        assert_eq!(obs.outputs["backupName"], "b");
        assert_eq!(obs.outputs["backupItemCount"], "40");
        assert_eq!(obs.outputs["partiallyFailed"], "true");
        assert!(
            obs.outputs["warnings"][0]
                .as_str()
                .unwrap()
                .contains("2 errors")
        );
    }
}
