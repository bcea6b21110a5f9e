//! snapshot: one CSI VolumeSnapshot per PVC of the target (PVCs carrying the
//! release's `app.kubernetes.io/instance` label, or the one named by
//! `parameters.pvc`).
//!
//! Snapshots are data: they are not owned by the Operation, so deleting it
//! never deletes them. Cancel deletes only snapshots that are not ready yet.

use kube::api::DynamicObject;
use serde_json::{Value, json};
use vworkspace_crds::conditions::reasons;

use super::{Observation, OpInfo, Outcome, Outputs, ParamError, bounded_name, cut};
use super::{
    Prepared,
    io::{Workload, delete_ignoring_missing, list_owned},
};
use crate::controllers::resources::VOLUME_SNAPSHOT;
use crate::controllers::{Context, Error, resources::Kind};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::{Api, ResourceExt, api::ListParams};
use vworkspace_crds::OperationType;
use vworkspace_crds::{ApplicationInstance, Operation};

/// Label Helm charts put on what a release installs.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// Name of the snapshot of `pvc`.
pub fn object_name(op: &OpInfo, pvc: &str) -> String {
    bounded_name(&[&op.name, pvc], 253)
}

/// The VolumeSnapshot of `pvc` for `op`.
pub fn desired_object(op: &OpInfo, pvc: &str) -> Result<DynamicObject, ParamError> {
    let name = object_name(op, pvc);
    let mut obj = VOLUME_SNAPSHOT.object(&name, &op.namespace);
    obj.metadata = op.meta(&name, &op.namespace, false);
    let mut spec = json!({ "source": { "persistentVolumeClaimName": pvc } });
    if let Some(class) = op.str_param("volumeSnapshotClassName")? {
        spec["volumeSnapshotClassName"] = json!(class);
    } else if let Some(class) = op.str_param("snapshotClassName")? {
        spec["volumeSnapshotClassName"] = json!(class);
    }
    obj.data = json!({ "spec": spec });
    Ok(obj)
}

/// Maps the snapshots' `(name, status)` to one outcome: succeeded when all are
/// ready, failed when any reports an error.
pub fn outcome_from_status(snapshots: &[(String, Value)]) -> Observation {
    let mut outputs = Outputs::new();
    let names: Vec<&str> = snapshots.iter().map(|(n, _)| n.as_str()).collect();
    outputs.insert("volumeSnapshotNames".into(), json!(names));
    if let Some((first, st)) = snapshots.first() {
        outputs.insert("volumeSnapshotName".into(), json!(first));
        if let Some(c) = st["boundVolumeSnapshotContentName"].as_str() {
            outputs.insert("volumeSnapshotContentName".into(), json!(c));
        }
        if let Some(r) = st["restoreSize"].as_str() {
            outputs.insert("restoreSize".into(), json!(r));
        }
    }
    if snapshots.is_empty() {
        return Observation {
            outcome: Outcome::Failed {
                reason: reasons::SOURCE_PVC_NOT_FOUND,
                message: "no VolumeSnapshot exists for this operation".into(),
            },
            outputs,
        };
    }
    if let Some((name, st)) = snapshots.iter().find(|(_, st)| {
        st["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    }) {
        return Observation {
            outcome: Outcome::Failed {
                reason: reasons::ENGINE_FAILED,
                message: cut(&format!(
                    "VolumeSnapshot {name}: {}",
                    st["error"]["message"].as_str().unwrap_or_default()
                )),
            },
            outputs,
        };
    }
    let ready = snapshots
        .iter()
        .filter(|(_, st)| st["readyToUse"].as_bool() == Some(true))
        .count();
    let outcome = if ready == snapshots.len() {
        Outcome::Succeeded {
            reason: reasons::SNAPSHOT_READY,
            message: format!("{ready} VolumeSnapshot(s) ready to use"),
        }
    } else {
        Outcome::Running {
            reason: reasons::SNAPSHOT_IN_PROGRESS,
            message: format!("{ready}/{} VolumeSnapshot(s) ready", snapshots.len()),
        }
    };
    Observation { outcome, outputs }
}

// === impl Driver ===

/// Start of the parameter error when no PVC matches; admission fails the
/// Operation with SourcePVCNotFound instead of calling its spec invalid.
pub const NO_PVC: &str = "no PersistentVolumeClaim";

/// The CSI snapshot engine's cluster side.
pub struct Driver;

impl super::Driver for Driver {
    fn supports(&self, type_: OperationType) -> bool {
        matches!(type_, OperationType::Backup)
    }

    fn required_kinds(&self, _type_: OperationType) -> Vec<Kind> {
        vec![VOLUME_SNAPSHOT]
    }

    fn watched_kinds(&self) -> &'static [Kind] {
        &[VOLUME_SNAPSHOT]
    }

    fn prepare<'a>(
        &'a self,
        info: &'a OpInfo,
        target: &'a ApplicationInstance,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Result<Prepared, ParamError>, Error>> {
        Box::pin(async move {
            let pvcs = match info.str_param("pvc") {
                Err(e) => return Ok(Err(e)),
                Ok(Some(p)) => vec![p],
                Ok(None) => {
                    let instance = target
                        .spec
                        .release
                        .as_ref()
                        .map_or(info.target.clone(), |r| r.name.clone());
                    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &info.namespace)
                        .list(
                            &ListParams::default()
                                .labels(&format!("{}={instance}", INSTANCE_LABEL)),
                        )
                        .await?
                        .items
                        .iter()
                        .map(ResourceExt::name_any)
                        .collect()
                }
            };
            if pvcs.is_empty() {
                return Ok(Err(ParamError(format!(
                    "{NO_PVC} of {} found (label {})",
                    info.target, INSTANCE_LABEL
                ))));
            }
            Ok(pvcs
                .iter()
                .map(|p| desired_object(info, p))
                .collect::<Result<Vec<_>, _>>()
                .map(Prepared::Dynamic))
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
            let snaps: Vec<(String, Value)> = list_owned(ctx, VOLUME_SNAPSHOT, &at.namespace, info)
                .await?
                .iter()
                .map(|o| (o.name_any(), o.data["status"].clone()))
                .collect();
            Ok((!snaps.is_empty()).then(|| outcome_from_status(&snaps)))
        })
    }

    /// Deletes the snapshots not yet ready to use; finished ones are data.
    fn stop<'a>(
        &'a self,
        _op: &'a Operation,
        info: &'a OpInfo,
        ctx: &'a Context,
        _orphan: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let api = Api::<DynamicObject>::namespaced_with(
                ctx.client.clone(),
                &info.namespace,
                &VOLUME_SNAPSHOT.api_resource(),
            );
            let snaps = list_owned(ctx, VOLUME_SNAPSHOT, &info.namespace, info).await?;
            for s in snaps
                .iter()
                .filter(|s| s.data["status"]["readyToUse"].as_bool() != Some(true))
            {
                delete_ignoring_missing(&api, &s.name_any()).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use vworkspace_crds::{Engine, OperationType};

    fn op(params: Value) -> OpInfo {
        OpInfo {
            name: "snap-1".into(),
            namespace: "team-a".into(),
            uid: "uid-s".into(),
            target: "nc".into(),
            type_: OperationType::Backup,
            engine: Engine::Snapshot,
            params: serde_json::from_value::<BTreeMap<String, Value>>(params).unwrap(),
            owner: None,
        }
    }

    #[test]
    fn snapshot_object_per_pvc() {
        let s = desired_object(
            &op(json!({"volumeSnapshotClassName": "csi-snap"})),
            "data-nc-0",
        )
        .unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("snap-1-data-nc-0"));
        assert!(s.metadata.owner_references.is_none());
        assert_eq!(
            s.data["spec"]["source"]["persistentVolumeClaimName"],
            "data-nc-0"
        );
        assert_eq!(s.data["spec"]["volumeSnapshotClassName"], "csi-snap");
    }

    #[test]
    fn status_table() {
        let ready = json!({"readyToUse": true, "restoreSize": "1Gi", "boundVolumeSnapshotContentName": "c1"});
        let pending = json!({"readyToUse": false});
        let error = json!({"readyToUse": false, "error": {"message": "driver failed"}});
        let s = |v: &[Value]| {
            v.iter()
                .enumerate()
                .map(|(i, v)| (format!("s{i}"), v.clone()))
                .collect::<Vec<_>>()
        };
        let table = [
            (s(&[]), "Failed", reasons::SOURCE_PVC_NOT_FOUND),
            (s(&[json!({})]), "Running", reasons::SNAPSHOT_IN_PROGRESS),
            (
                s(&[ready.clone(), pending]),
                "Running",
                reasons::SNAPSHOT_IN_PROGRESS,
            ),
            (
                s(&[ready.clone(), ready.clone()]),
                "Succeeded",
                reasons::SNAPSHOT_READY,
            ),
            (s(&[ready.clone(), error]), "Failed", reasons::ENGINE_FAILED),
        ];
        for (snaps, phase, reason) in table {
            let obs = outcome_from_status(&snaps);
            let got = match &obs.outcome {
                Outcome::Running { reason, .. } => ("Running", *reason),
                Outcome::Succeeded { reason, .. } => ("Succeeded", *reason),
                Outcome::Failed { reason, .. } => ("Failed", *reason),
            };
            assert_eq!(got, (phase, reason));
        }
        let obs = outcome_from_status(&s(&[ready]));
        assert_eq!(obs.outputs["restoreSize"], "1Gi");
        assert_eq!(obs.outputs["volumeSnapshotContentName"], "c1");
    }
}
