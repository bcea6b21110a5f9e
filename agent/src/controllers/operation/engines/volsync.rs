//! volsync: a ReplicationSource with a manual trigger (the Operation UID), so
//! one Operation is one sync and finishes. Owned by the Operation; cancel
//! deletes it, which stops the mover.

use kube::api::DynamicObject;
use serde_json::{Value, json};
use vworkspace_crds::conditions::reasons;

use super::{Observation, OpInfo, Outcome, Outputs, ParamError, cut};
use super::{
    Prepared,
    io::{Workload, delete_ignoring_missing},
};
use crate::controllers::resources::REPLICATION_SOURCE;
use crate::controllers::{Context, Error, resources::Kind};
use futures::future::BoxFuture;
use kube::Api;
use vworkspace_crds::OperationType;
use vworkspace_crds::{ApplicationInstance, Operation};

/// The ReplicationSource for `op` (restic mover).
pub fn desired_object(op: &OpInfo) -> Result<DynamicObject, ParamError> {
    let pvc = op.required_str("pvc")?;
    let repository = match op.params.get("repository") {
        Some(Value::Object(m)) => m
            .get("secretName")
            .and_then(Value::as_str)
            .map(str::to_string),
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
    .ok_or_else(|| ParamError("parameters.repository.secretName is required".into()))?;
    let copy_method = op
        .str_param("copyMethod")?
        .unwrap_or_else(|| "Snapshot".into());
    if !["Snapshot", "Clone", "Direct"].contains(&copy_method.as_str()) {
        return Err(ParamError(
            "parameters.copyMethod must be Snapshot, Clone or Direct".into(),
        ));
    }
    let mut restic = json!({ "repository": repository, "copyMethod": copy_method });
    if let Some(class) = op.str_param("volumeSnapshotClassName")? {
        restic["volumeSnapshotClassName"] = json!(class);
    }
    if let Some(Value::Object(retain)) = op.params.get("retain") {
        restic["retain"] = Value::Object(retain.clone());
    }
    let mut obj = REPLICATION_SOURCE.object(&op.name, &op.namespace);
    obj.metadata = op.meta(&op.name, &op.namespace, true);
    obj.data = json!({ "spec": {
        "sourcePVC": pvc,
        "trigger": { "manual": op.uid },
        "restic": restic,
    }});
    Ok(obj)
}

/// Maps ReplicationSource `status` to an outcome for the manual trigger `trigger`.
pub fn outcome_from_status(name: &str, trigger: &str, status: &Value) -> Observation {
    let mut outputs = Outputs::new();
    outputs.insert("replicationName".into(), json!(name));
    if let Some(t) = status["lastSyncTime"].as_str() {
        outputs.insert("lastSyncTime".into(), json!(t));
    }
    let result = status["latestMoverStatus"]["result"]
        .as_str()
        .unwrap_or_default();
    let outcome = if status["lastManualSync"].as_str() == Some(trigger) {
        Outcome::Succeeded {
            reason: reasons::VOLSYNC_LAST_SYNC_SUCCEEDED,
            message: format!("ReplicationSource {name} synchronised"),
        }
    } else if result == "Failed" {
        Outcome::Failed {
            reason: reasons::ENGINE_FAILED,
            message: cut(&format!(
                "VolSync mover failed: {}",
                status["latestMoverStatus"]["logs"]
                    .as_str()
                    .unwrap_or("no logs")
            )),
        }
    } else if status["lastSyncStartTime"].is_string() {
        Outcome::Running {
            reason: reasons::VOLSYNC_SYNCHRONIZING,
            message: format!("ReplicationSource {name} is synchronising"),
        }
    } else {
        Outcome::Running {
            reason: reasons::VOLSYNC_FIRST_SYNC_IN_PROGRESS,
            message: format!("waiting for VolSync to start {name}"),
        }
    };
    Observation { outcome, outputs }
}

// === impl Driver ===

/// The VolSync engine's cluster side.
pub struct Driver;

impl super::Driver for Driver {
    fn supports(&self, type_: OperationType) -> bool {
        matches!(type_, OperationType::Backup)
    }

    fn required_kinds(&self, _type_: OperationType) -> Vec<Kind> {
        vec![REPLICATION_SOURCE]
    }

    fn watched_kinds(&self) -> &'static [Kind] {
        &[REPLICATION_SOURCE]
    }

    fn prepare<'a>(
        &'a self,
        info: &'a OpInfo,
        _target: &'a ApplicationInstance,
        _ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Result<Prepared, ParamError>, Error>> {
        Box::pin(async move { Ok(desired_object(info).map(|o| Prepared::Dynamic(vec![o]))) })
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
                .get_owned(ctx, REPLICATION_SOURCE, info)
                .await?
                .map(|o| outcome_from_status(&at.name, &info.uid, &o.data["status"])))
        })
    }

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
                &REPLICATION_SOURCE.api_resource(),
            );
            delete_ignoring_missing(&api, &info.name).await
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
            name: "rep-1".into(),
            namespace: "team-a".into(),
            uid: "uid-v".into(),
            target: "nc".into(),
            type_: OperationType::Backup,
            engine: Engine::Volsync,
            params: serde_json::from_value::<BTreeMap<String, Value>>(params).unwrap(),
            owner: None,
        }
    }

    #[test]
    fn replication_source_uses_manual_trigger() {
        let r = desired_object(&op(json!({"pvc": "data", "repository": {"secretName": "restic-repo"}, "retain": {"daily": 7}}))).unwrap();
        let s = &r.data["spec"];
        assert_eq!(s["sourcePVC"], "data");
        assert_eq!(s["trigger"]["manual"], "uid-v");
        assert_eq!(s["restic"]["repository"], "restic-repo");
        assert_eq!(s["restic"]["copyMethod"], "Snapshot");
        assert_eq!(s["restic"]["retain"]["daily"], 7);
        let errs = [
            (json!({}), "parameters.pvc is required"),
            (
                json!({"pvc": "d"}),
                "parameters.repository.secretName is required",
            ),
            (
                json!({"pvc": "d", "repository": "r", "copyMethod": "Teleport"}),
                "parameters.copyMethod must be Snapshot, Clone or Direct",
            ),
        ];
        for (p, want) in errs {
            assert_eq!(desired_object(&op(p)).unwrap_err().0, want);
        }
    }

    #[test]
    fn status_table() {
        let table = [
            (
                json!({}),
                "Running",
                reasons::VOLSYNC_FIRST_SYNC_IN_PROGRESS,
            ),
            (
                json!({"lastSyncStartTime": "2026-01-01T00:00:00Z"}),
                "Running",
                reasons::VOLSYNC_SYNCHRONIZING,
            ),
            (
                json!({"lastManualSync": "older"}),
                "Running",
                reasons::VOLSYNC_FIRST_SYNC_IN_PROGRESS,
            ),
            (
                json!({"lastManualSync": "t", "latestMoverStatus": {"result": "Successful"}}),
                "Succeeded",
                reasons::VOLSYNC_LAST_SYNC_SUCCEEDED,
            ),
            (
                json!({"latestMoverStatus": {"result": "Failed", "logs": "repo locked"}}),
                "Failed",
                reasons::ENGINE_FAILED,
            ),
        ];
        for (st, phase, reason) in table {
            let obs = outcome_from_status("r", "t", &st);
            let got = match &obs.outcome {
                Outcome::Running { reason, .. } => ("Running", *reason),
                Outcome::Succeeded { reason, .. } => ("Succeeded", *reason),
                Outcome::Failed { reason, .. } => ("Failed", *reason),
            };
            assert_eq!(got, (phase, reason), "{st}");
        }
    }
}
