//! workflow: an Argo Workflow from a WorkflowTemplate, in the target namespace.
//!
//! Cancel sets `spec.shutdown: Terminate` (Argo stops the pods and marks the
//! Workflow Failed). A failed Workflow loses its owner reference, so history
//! cleanup keeps it for its logs until Argo's TTL.

use kube::api::DynamicObject;
use serde_json::{Value, json};
use vworkspace_crds::{conditions::reasons, well_known::values::OPERATION_RUNNER_SERVICE_ACCOUNT};

use super::{Observation, OpInfo, Outcome, Outputs, ParamError, cut, job::Shape};
use super::{
    Prepared,
    io::{Workload, reapply_dynamic},
};
use crate::controllers::resources::WORKFLOW;
use crate::controllers::{Context, Error, resources::Kind};
use futures::future::BoxFuture;
use kube::ResourceExt;
use vworkspace_crds::OperationType;
use vworkspace_crds::{ApplicationInstance, Operation};

/// Finished Workflows are reclaimed by Argo after a day.
pub const TTL_SECONDS: i64 = 86_400;

/// The Workflow for `op`. `shape.suspend` means "terminate".
pub fn desired_object(op: &OpInfo, shape: Shape) -> Result<DynamicObject, ParamError> {
    // `template` (upstream schema) or `workflowTemplate` (upstream code).
    let template = match op.str_param("template")? {
        Some(t) => t,
        None => op
            .str_param("workflowTemplate")?
            .ok_or_else(|| ParamError("parameters.template is required".into()))?,
    };
    let mut params = op
        .map_param("workflowTemplateParameters")?
        .unwrap_or_default();
    for key in ["targetChartVersion", "snapshotClassName", "failureAction"] {
        if let Some(v) = op.str_param(key)? {
            params.entry(key.to_string()).or_insert(v);
        }
    }
    let deadline = op.int_param("timeoutSeconds", 1)?;
    let mut obj = WORKFLOW.object(&op.name, &op.namespace);
    obj.metadata = op.meta(&op.name, &op.namespace, !shape.orphan);
    let mut spec = json!({
        "workflowTemplateRef": { "name": template },
        "serviceAccountName": OPERATION_RUNNER_SERVICE_ACCOUNT,
        "podMetadata": { "labels": op.labels() },
        "ttlStrategy": { "secondsAfterCompletion": TTL_SECONDS },
    });
    if !params.is_empty() {
        // BTreeMap: sorted by key, so the object is stable across reconciles.
        spec["arguments"] = json!({
            "parameters": params.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>()
        });
    }
    if let Some(d) = deadline {
        spec["activeDeadlineSeconds"] = json!(d);
    }
    if shape.suspend {
        spec["shutdown"] = json!("Terminate");
    }
    obj.data = json!({ "spec": spec });
    Ok(obj)
}

/// Maps Workflow `status` to an outcome.
pub fn outcome_from_status(name: &str, uid: Option<&str>, status: &Value) -> Observation {
    let mut outputs = Outputs::new();
    outputs.insert("workflowName".into(), json!(name));
    if let Some(uid) = uid {
        outputs.insert("runId".into(), json!(uid));
    }
    let message = status["message"].as_str().unwrap_or_default();
    let outcome = match status["phase"].as_str().unwrap_or_default() {
        "Succeeded" => Outcome::Succeeded {
            reason: reasons::WORKFLOW_SUCCEEDED,
            message: format!("Workflow {name} succeeded"),
        },
        "Failed" => Outcome::Failed {
            reason: reasons::WORKFLOW_FAILED,
            message: cut(&format!("Workflow {name} failed: {message}")),
        },
        "Error" => Outcome::Failed {
            reason: reasons::WORKFLOW_ERROR,
            message: cut(&format!("Workflow {name} errored: {message}")),
        },
        "Running" => Outcome::Running {
            reason: reasons::WORKFLOW_IN_PROGRESS,
            message: if message.is_empty() {
                format!("Workflow {name} is running")
            } else {
                cut(message)
            },
        },
        _ => Outcome::Running {
            reason: reasons::ENGINE_STARTED,
            message: format!("waiting for Argo to start Workflow {name}"),
        },
    };
    Observation { outcome, outputs }
}

// === impl Driver ===

/// The Argo Workflows engine's cluster side.
pub struct Driver;

impl super::Driver for Driver {
    fn supports(&self, type_: OperationType) -> bool {
        matches!(type_, OperationType::Runbook | OperationType::Migration)
    }

    fn required_kinds(&self, _type_: OperationType) -> Vec<Kind> {
        vec![WORKFLOW]
    }

    fn watched_kinds(&self) -> &'static [Kind] {
        &[WORKFLOW]
    }

    fn has_logs(&self) -> bool {
        true
    }

    fn prepare<'a>(
        &'a self,
        info: &'a OpInfo,
        _target: &'a ApplicationInstance,
        _ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Result<Prepared, ParamError>, Error>> {
        Box::pin(async move {
            Ok(desired_object(info, Shape::default()).map(|o| Prepared::Dynamic(vec![o])))
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
                .get_owned(ctx, WORKFLOW, info)
                .await?
                .map(|o| outcome_from_status(&at.name, o.uid().as_deref(), &o.data["status"])))
        })
    }

    fn stop<'a>(
        &'a self,
        _op: &'a Operation,
        info: &'a OpInfo,
        ctx: &'a Context,
        orphan: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let shape = Shape {
                suspend: true,
                orphan,
            };
            match desired_object(info, shape) {
                Ok(wf) => reapply_dynamic(ctx, info, &wf).await,
                Err(_) => Ok(()),
            }
        })
    }

    fn keep_for_logs<'a>(
        &'a self,
        info: &'a OpInfo,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let shape = Shape {
                suspend: false,
                orphan: true,
            };
            match desired_object(info, shape) {
                Ok(wf) => reapply_dynamic(ctx, info, &wf).await,
                Err(_) => Ok(()),
            }
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
            name: "rb-1".into(),
            namespace: "team-a".into(),
            uid: "uid-w".into(),
            target: "nc".into(),
            type_: OperationType::Runbook,
            engine: Engine::Workflow,
            params: serde_json::from_value::<BTreeMap<String, Value>>(params).unwrap(),
            owner: None,
        }
    }

    #[test]
    fn workflow_object_references_the_template() {
        let w = desired_object(
            &op(json!({"template": "pg-dump-export", "workflowTemplateParameters": {"b": "2", "a": "1"}, "timeoutSeconds": 600})),
            Shape::default(),
        )
        .unwrap();
        let s = &w.data["spec"];
        assert_eq!(s["workflowTemplateRef"]["name"], "pg-dump-export");
        assert_eq!(s["serviceAccountName"], OPERATION_RUNNER_SERVICE_ACCOUNT);
        assert_eq!(s["arguments"]["parameters"][0]["name"], "a");
        assert_eq!(s["activeDeadlineSeconds"], 600);
        assert!(s.get("shutdown").is_none());
        let t = desired_object(
            &op(json!({"workflowTemplate": "x"})),
            Shape {
                suspend: true,
                orphan: false,
            },
        )
        .unwrap();
        assert_eq!(t.data["spec"]["shutdown"], "Terminate");
        assert_eq!(
            desired_object(&op(json!({})), Shape::default())
                .unwrap_err()
                .0,
            "parameters.template is required"
        );
    }

    #[test]
    fn status_table() {
        let table = [
            (json!({}), "Running", reasons::ENGINE_STARTED),
            (
                json!({"phase": "Pending"}),
                "Running",
                reasons::ENGINE_STARTED,
            ),
            (
                json!({"phase": "Running"}),
                "Running",
                reasons::WORKFLOW_IN_PROGRESS,
            ),
            (
                json!({"phase": "Succeeded"}),
                "Succeeded",
                reasons::WORKFLOW_SUCCEEDED,
            ),
            (
                json!({"phase": "Failed", "message": "step 2"}),
                "Failed",
                reasons::WORKFLOW_FAILED,
            ),
            (json!({"phase": "Error"}), "Failed", reasons::WORKFLOW_ERROR),
        ];
        for (st, phase, reason) in table {
            let obs = outcome_from_status("w", Some("u"), &st);
            let got = match &obs.outcome {
                Outcome::Running { reason, .. } => ("Running", *reason),
                Outcome::Succeeded { reason, .. } => ("Succeeded", *reason),
                Outcome::Failed { reason, .. } => ("Failed", *reason),
            };
            assert_eq!(got, (phase, reason), "{st}");
            assert_eq!(obs.outputs["runId"], "u");
        }
    }
}
