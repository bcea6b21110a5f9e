//! job and helmHookJob: a batch/v1 Job in the target namespace, run by the
//! dedicated `vworkspace-operation-runner` service account (never the agent's
//! own), with a restricted security context.
//!
//! helmHookJob clones a chart's hook: callers give `hookName`, `image` and the
//! command (hook discovery from the release manifest is not done, as upstream).
//! Cancel suspends the Job (Kubernetes stops its pods, the Job stays for its
//! logs); a failed Job loses its owner reference so history cleanup keeps it
//! until its TTL.

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec, JobStatus},
        core::v1::{
            Capabilities, Container, EnvVar, PodSecurityContext, PodSpec, PodTemplateSpec,
            SeccompProfile, SecurityContext,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::{Value, json};
use vworkspace_crds::{
    Engine,
    conditions::reasons,
    well_known::{labels, values::OPERATION_RUNNER_SERVICE_ACCOUNT},
};

use super::{Observation, OpInfo, Outcome, Outputs, ParamError, cut};
use super::{
    Prepared,
    io::{Workload, reapply_job},
};
use crate::controllers::{
    Context, Error,
    resources::{JOB, Kind},
};
use futures::future::BoxFuture;
use kube::{Api, ResourceExt};
use vworkspace_crds::OperationType;
use vworkspace_crds::{ApplicationInstance, Operation};

/// Finished Jobs are reclaimed by Kubernetes after a day (upstream default).
pub const TTL_SECONDS_AFTER_FINISHED: i32 = 86_400;

/// Options for re-applying a Job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// Suspend the Job (stops its pods).
    pub suspend: bool,
    /// Drop the owner reference so the Job outlives its Operation.
    pub orphan: bool,
}

/// The Job for `op` (engine job or helmHookJob).
pub fn desired_object(op: &OpInfo, shape: Shape) -> Result<Job, ParamError> {
    let hook = op.engine == Engine::HelmHookJob;
    let image = op.required_str("image")?;
    let command = op.strings_param("command")?;
    let args = op.strings_param("args")?;
    let sa = match op.str_param("serviceAccountName")? {
        None => OPERATION_RUNNER_SERVICE_ACCOUNT.to_string(),
        Some(sa) if sa == OPERATION_RUNNER_SERVICE_ACCOUNT => sa,
        Some(_) => {
            return Err(ParamError(format!(
                "parameters.serviceAccountName may only be {OPERATION_RUNNER_SERVICE_ACCOUNT}"
            )));
        }
    };
    let hook_name = if hook {
        Some(op.required_str("hookName")?)
    } else {
        None
    };
    let env = env_param(op.params.get("env"))?;
    let backoff_limit = op
        .int_param("backoffLimit", 0)?
        .map(|n| n as i32)
        .or(Some(0));
    let deadline = match op.int_param("activeDeadlineSeconds", 1)? {
        Some(n) => Some(n),
        None => op.int_param("timeoutSeconds", 1)?,
    };

    let mut meta = op.meta(&op.name, &op.namespace, !shape.orphan);
    let mut pod_labels = op.labels();
    if let Some(h) = &hook_name {
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(labels::HOOK_NAME.into(), h.clone());
        pod_labels.insert(labels::HOOK_NAME.into(), h.clone());
    }
    let container = Container {
        name: if hook { "hook".into() } else { "runner".into() },
        image: Some(image),
        command,
        args,
        env,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit,
            active_deadline_seconds: deadline,
            ttl_seconds_after_finished: Some(TTL_SECONDS_AFTER_FINISHED),
            suspend: shape.suspend.then_some(true),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(sa),
                    automount_service_account_token: Some(true),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65_532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// `env` as a list of `{name, value | valueFrom}` (upstream schema) or a
/// string map (upstream code). `valueFrom` passes references, never values.
fn env_param(v: Option<&Value>) -> Result<Option<Vec<EnvVar>>, ParamError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(
            m.iter()
                .map(|(k, v)| EnvVar {
                    name: k.clone(),
                    value: Some(v.as_str().map_or_else(|| v.to_string(), str::to_string)),
                    value_from: None,
                })
                .collect(),
        )),
        Some(Value::Array(_)) => {
            serde_json::from_value::<Vec<EnvVar>>(v.cloned().unwrap_or_default())
                .map(Some)
                .map_err(|_| {
                    ParamError("parameters.env entries need a name and a value or valueFrom".into())
                })
        }
        Some(_) => Err(ParamError("parameters.env must be a list or a map".into())),
    }
}

/// Maps Job status to an outcome.
pub fn outcome_from_status(engine: Engine, name: &str, status: Option<&JobStatus>) -> Observation {
    let hook = engine == Engine::HelmHookJob;
    let mut outputs = Outputs::new();
    outputs.insert("jobName".into(), json!(name));
    let st = status.cloned().unwrap_or_default();
    let cond = |t: &str| {
        st.conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == t && c.status == "True"))
            .cloned()
    };
    let outcome = if cond("Complete").is_some() {
        outputs.insert(
            "succeeded".into(),
            json!(st.succeeded.unwrap_or(1).to_string()),
        );
        if let Some(t) = &st.completion_time {
            outputs.insert("completionTime".into(), json!(t.0.to_string()));
        }
        Outcome::Succeeded {
            reason: if hook {
                reasons::HELM_HOOK_JOB_SUCCEEDED
            } else {
                reasons::JOB_SUCCEEDED
            },
            message: format!("Job {name} completed"),
        }
    } else if let Some(c) = cond("Failed") {
        let reason = if hook {
            reasons::HELM_HOOK_JOB_FAILED
        } else if c.reason.as_deref() == Some("DeadlineExceeded") {
            reasons::JOB_ACTIVE_DEADLINE_EXCEEDED
        } else {
            reasons::JOB_FAILED_BACKOFF_EXCEEDED
        };
        Outcome::Failed {
            reason,
            message: cut(&format!(
                "Job {name} failed: {}",
                c.message
                    .as_deref()
                    .or(c.reason.as_deref())
                    .unwrap_or("no message")
            )),
        }
    } else if st.active.unwrap_or(0) > 0 {
        Outcome::Running {
            reason: if hook {
                reasons::HELM_HOOK_JOB_ACTIVE
            } else {
                reasons::JOB_POD_ACTIVE
            },
            message: format!("Job {name} has {} active pod(s)", st.active.unwrap_or(0)),
        }
    } else {
        Outcome::Running {
            reason: reasons::ENGINE_STARTED,
            message: format!("waiting for Job {name} to start"),
        }
    };
    Observation { outcome, outputs }
}

// === impl Driver ===

/// The Job engines' cluster side (`job`, and `helm-hook-job` for migrations).
pub struct Driver(pub Engine);

impl super::Driver for Driver {
    fn supports(&self, type_: OperationType) -> bool {
        match self.0 {
            Engine::HelmHookJob => matches!(type_, OperationType::Migration),
            _ => matches!(type_, OperationType::RunCommand),
        }
    }

    fn required_kinds(&self, _type_: OperationType) -> Vec<Kind> {
        vec![JOB]
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
            Ok(desired_object(info, Shape::default()).map(|j| Prepared::Job(Box::new(j))))
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
            Ok(Api::<Job>::namespaced(ctx.client.clone(), &at.namespace)
                .get_opt(&at.name)
                .await?
                .filter(|j| j.labels().get(labels::OPERATION) == Some(&info.uid))
                .map(|j| outcome_from_status(info.engine, &at.name, j.status.as_ref())))
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
                Ok(j) => reapply_job(ctx, info, &j).await,
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
                Ok(j) => reapply_job(ctx, info, &j).await,
                Err(_) => Ok(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobCondition;
    use std::collections::BTreeMap;
    use vworkspace_crds::OperationType;

    fn op(engine: Engine, params: Value) -> OpInfo {
        OpInfo {
            name: "run-1".into(),
            namespace: "team-a".into(),
            uid: "uid-5".into(),
            target: "nc".into(),
            type_: if engine == Engine::Job {
                OperationType::RunCommand
            } else {
                OperationType::Migration
            },
            engine,
            params: serde_json::from_value::<BTreeMap<String, Value>>(params).unwrap(),
            owner: Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "ops.vworkspace.io/v1alpha1".into(),
                    kind: "Operation".into(),
                    name: "run-1".into(),
                    uid: "uid-5".into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                },
            ),
        }
    }

    #[test]
    fn job_uses_runner_service_account_and_labels_pods() {
        let j = desired_object(
            &op(Engine::Job, json!({"image": "busybox:1", "command": ["sh", "-c", "true"], "env": [{"name": "A", "value": "1"}, {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})),
            Shape::default(),
        )
        .unwrap();
        let spec = j.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some(OPERATION_RUNNER_SERVICE_ACCOUNT)
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.containers[0].name, "runner");
        assert_eq!(pod.containers[0].env.as_ref().unwrap().len(), 2);
        assert_eq!(
            spec.ttl_seconds_after_finished,
            Some(TTL_SECONDS_AFTER_FINISHED)
        );
        assert_eq!(
            spec.template
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap()[labels::OPERATION],
            "uid-5"
        );
        assert_eq!(
            j.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-5"
        );
        assert!(spec.suspend.is_none());
    }

    #[test]
    fn shapes_suspend_and_orphan() {
        let j = desired_object(
            &op(Engine::Job, json!({"image": "i"})),
            Shape {
                suspend: true,
                orphan: true,
            },
        )
        .unwrap();
        assert_eq!(j.spec.as_ref().unwrap().suspend, Some(true));
        assert!(j.metadata.owner_references.is_none());
    }

    #[test]
    fn parameter_errors() {
        let table = [
            (Engine::Job, json!({}), "parameters.image is required"),
            (
                Engine::Job,
                json!({"image": "i", "serviceAccountName": "default"}),
                "parameters.serviceAccountName may only be vworkspace-operation-runner",
            ),
            (
                Engine::Job,
                json!({"image": "i", "backoffLimit": -1}),
                "parameters.backoffLimit must be an integer >= 0",
            ),
            (
                Engine::Job,
                json!({"image": "i", "env": "A=1"}),
                "parameters.env must be a list or a map",
            ),
            (
                Engine::HelmHookJob,
                json!({"image": "i"}),
                "parameters.hookName is required",
            ),
        ];
        for (engine, params, want) in table {
            assert_eq!(
                desired_object(&op(engine, params), Shape::default())
                    .unwrap_err()
                    .0,
                want
            );
        }
    }

    #[test]
    fn hook_job_carries_hook_label() {
        let j = desired_object(
            &op(
                Engine::HelmHookJob,
                json!({"image": "i", "hookName": "db-migrate"}),
            ),
            Shape::default(),
        )
        .unwrap();
        assert_eq!(
            j.metadata.labels.as_ref().unwrap()[labels::HOOK_NAME],
            "db-migrate"
        );
        assert_eq!(
            j.spec.unwrap().template.spec.unwrap().containers[0].name,
            "hook"
        );
    }

    fn status(conds: &[(&str, &str)], active: i32) -> JobStatus {
        JobStatus {
            active: Some(active),
            conditions: Some(
                conds
                    .iter()
                    .map(|(t, r)| JobCondition {
                        type_: t.to_string(),
                        status: "True".into(),
                        reason: Some(r.to_string()),
                        message: Some("m".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn status_table() {
        let table = [
            (Engine::Job, None, "Running", reasons::ENGINE_STARTED),
            (
                Engine::Job,
                Some(status(&[], 1)),
                "Running",
                reasons::JOB_POD_ACTIVE,
            ),
            (
                Engine::HelmHookJob,
                Some(status(&[], 1)),
                "Running",
                reasons::HELM_HOOK_JOB_ACTIVE,
            ),
            (
                Engine::Job,
                Some(status(&[("SuccessCriteriaMet", ""), ("Complete", "")], 0)),
                "Succeeded",
                reasons::JOB_SUCCEEDED,
            ),
            (
                Engine::HelmHookJob,
                Some(status(&[("Complete", "")], 0)),
                "Succeeded",
                reasons::HELM_HOOK_JOB_SUCCEEDED,
            ),
            (
                Engine::Job,
                Some(status(
                    &[
                        ("FailureTarget", "BackoffLimitExceeded"),
                        ("Failed", "BackoffLimitExceeded"),
                    ],
                    0,
                )),
                "Failed",
                reasons::JOB_FAILED_BACKOFF_EXCEEDED,
            ),
            (
                Engine::Job,
                Some(status(&[("Failed", "DeadlineExceeded")], 0)),
                "Failed",
                reasons::JOB_ACTIVE_DEADLINE_EXCEEDED,
            ),
            (
                Engine::HelmHookJob,
                Some(status(&[("Failed", "BackoffLimitExceeded")], 0)),
                "Failed",
                reasons::HELM_HOOK_JOB_FAILED,
            ),
        ];
        for (engine, st, phase, reason) in table {
            let obs = outcome_from_status(engine, "j", st.as_ref());
            let got = match &obs.outcome {
                Outcome::Running { reason, .. } => ("Running", *reason),
                Outcome::Succeeded { reason, .. } => ("Succeeded", *reason),
                Outcome::Failed { reason, .. } => ("Failed", *reason),
            };
            assert_eq!(got, (phase, reason));
            assert_eq!(obs.outputs["jobName"], "j");
        }
    }
}
