//! helm: Upgrade and Rollback change the target ApplicationInstance's chart
//! version (so the ApplicationInstance controller, not this engine, writes the
//! HelmRelease and nothing reverts it) and wait until the HelmRelease is Ready
//! with that version deployed. Cancel puts the previous version back.

use serde_json::json;
use vworkspace_crds::{ApplicationInstanceSpec, OperationType, conditions::reasons};

use super::{Observation, OpInfo, Outcome, Outputs, ParamError, cut};
use super::{
    Prepared,
    io::{Workload, apply_target_version, helm_release},
};
use crate::controllers::{
    Context, Error,
    resources::{HELM_RELEASE, Kind},
};
use crate::controllers::{application::status::ReleaseView, validation::is_exact_semver};
use futures::future::BoxFuture;
use kube::Api;
use vworkspace_crds::OperationStatus;
use vworkspace_crds::{ApplicationInstance, Operation};

/// What the engine will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Chart version to move to.
    pub target_version: String,
    /// Chart version before the operation (restored on cancel).
    pub previous_version: String,
}

/// Decides the target version. Rollback without `targetVersion` picks the
/// newest earlier version from the HelmRelease history.
pub fn plan(
    op: &OpInfo,
    target: &ApplicationInstanceSpec,
    release: Option<&ReleaseView>,
) -> Result<Plan, ParamError> {
    let current = target
        .chart
        .as_ref()
        .map(|c| c.version.clone())
        .ok_or_else(|| {
            ParamError("the target is a placeholder: it has no chart to upgrade".into())
        })?;
    if op.params.contains_key("valuesPatch") {
        return Err(ParamError(
            "parameters.valuesPatch is not supported: change values on the ApplicationInstance"
                .into(),
        ));
    }
    let target_version = match (op.type_, op.str_param("targetVersion")?) {
        (_, Some(v)) => v,
        (OperationType::Rollback, None) => release
            .and_then(|r| {
                r.history
                    .iter()
                    .find(|(v, s)| v != &current && (s == "superseded" || s == "deployed"))
                    .map(|(v, _)| v.clone())
            })
            .ok_or_else(|| {
                ParamError("no earlier release in the HelmRelease history to roll back to".into())
            })?,
        (_, None) => return Err(ParamError("parameters.targetVersion is required".into())),
    };
    if !is_exact_semver(&target_version) {
        return Err(ParamError(format!(
            "parameters.targetVersion {target_version:?} must be an exact semantic version"
        )));
    }
    Ok(Plan {
        target_version,
        previous_version: current,
    })
}

/// Maps the HelmRelease to an outcome for `plan`.
pub fn outcome_from_status(name: &str, release: Option<&ReleaseView>, plan: &Plan) -> Observation {
    let mut outputs = Outputs::new();
    outputs.insert("helmReleaseName".into(), json!(name));
    outputs.insert("chartVersion".into(), json!(plan.target_version));
    outputs.insert("previousVersion".into(), json!(plan.previous_version));
    let running = |message: String| Outcome::Running {
        reason: reasons::ENGINE_RUNNING,
        message,
    };
    let outcome = match release {
        None => running(format!("waiting for HelmRelease {name}")),
        Some(r) if r.is_ready() && r.deployed_version() == Some(plan.target_version.as_str()) => {
            Outcome::Succeeded {
                reason: reasons::ENGINE_COMPLETED,
                message: format!("HelmRelease {name} is Ready at {}", plan.target_version),
            }
        }
        Some(r) if !r.is_stale() => {
            let cond = |t: &str| r.conditions.iter().find(|c| c.type_ == t);
            let ready = cond("Ready");
            let rolled_back = cond("Remediated")
                .is_some_and(|c| c.status == "True" && c.reason == "RollbackSucceeded");
            let retrying = cond("Reconciling").is_some_and(|c| c.status == "True")
                && cond("Stalled").is_none_or(|c| c.status != "True");
            match ready {
                _ if rolled_back => Outcome::Failed {
                    reason: reasons::ROLLED_BACK,
                    message: cut(&format!(
                        "Flux rolled HelmRelease {name} back after the change to {} failed",
                        plan.target_version
                    )),
                },
                Some(c) if c.status == "False" && !retrying => Outcome::Failed {
                    reason: if c.reason == reasons::UPGRADE_FAILED {
                        reasons::UPGRADE_FAILED
                    } else {
                        reasons::ENGINE_FAILED
                    },
                    message: cut(&format!("{}: {}", c.reason, c.message)),
                },
                _ => running(format!(
                    "waiting for HelmRelease {name} to be Ready at {}",
                    plan.target_version
                )),
            }
        }
        Some(_) => running(format!(
            "waiting for helm-controller to pick up {}",
            plan.target_version
        )),
    };
    Observation { outcome, outputs }
}

// === impl Driver ===

/// The helm engine's cluster side: it changes the target's chart version and
/// waits on the target's HelmRelease.
pub struct Driver;

impl super::Driver for Driver {
    fn supports(&self, type_: OperationType) -> bool {
        matches!(type_, OperationType::Upgrade | OperationType::Rollback)
    }

    fn required_kinds(&self, _type_: OperationType) -> Vec<Kind> {
        vec![HELM_RELEASE]
    }

    fn prepare<'a>(
        &'a self,
        info: &'a OpInfo,
        target: &'a ApplicationInstance,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Result<Prepared, ParamError>, Error>> {
        Box::pin(async move {
            let release = match target.spec.release.as_ref() {
                Some(r) => r.name.clone(),
                None => {
                    return Ok(Err(ParamError(
                        "the target has no release to upgrade".into(),
                    )));
                }
            };
            let view = helm_release(ctx, &info.namespace, &release).await?;
            Ok(
                plan(info, &target.spec, view.as_ref()).map(|plan| Prepared::Helm {
                    plan,
                    release,
                    target: Box::new(target.clone()),
                }),
            )
        })
    }

    fn read<'a>(
        &'a self,
        op: &'a Operation,
        _info: &'a OpInfo,
        at: &'a Workload,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Option<Observation>, Error>> {
        Box::pin(async move {
            let plan = plan_from_outputs(&op.status.clone().unwrap_or_default());
            let view = helm_release(ctx, &at.namespace, &at.name).await?;
            Ok(Some(outcome_from_status(&at.name, view.as_ref(), &plan)))
        })
    }

    /// Puts the previous chart version back, unless someone changed it since.
    fn stop<'a>(
        &'a self,
        op: &'a Operation,
        info: &'a OpInfo,
        ctx: &'a Context,
        _orphan: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let plan = plan_from_outputs(&op.status.clone().unwrap_or_default());
            let api = Api::<ApplicationInstance>::namespaced(ctx.client.clone(), &info.namespace);
            if let Some(target) = api.get_opt(&info.target).await? {
                let current = target.spec.chart.as_ref().map(|c| c.version.clone());
                if current.as_deref() == Some(plan.target_version.as_str())
                    && !plan.previous_version.is_empty()
                {
                    apply_target_version(ctx, &target, &plan.previous_version).await?;
                }
            }
            Ok(())
        })
    }
}

/// The plan a running upgrade recorded in its outputs.
fn plan_from_outputs(st: &OperationStatus) -> Plan {
    let out = st.outputs.clone().unwrap_or_default();
    let s = |k: &str| {
        out.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Plan {
        target_version: s("chartVersion"),
        previous_version: s("previousVersion"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::application::status::FluxCondition;
    use serde_json::Value;
    use std::collections::BTreeMap;
    use vworkspace_crds::{AppRef, ChartSource, ChartSourceType, Engine};

    fn op(type_: OperationType, params: Value) -> OpInfo {
        OpInfo {
            name: "up-1".into(),
            namespace: "team-a".into(),
            uid: "uid-h".into(),
            target: "nc".into(),
            type_,
            engine: Engine::Helm,
            params: serde_json::from_value::<BTreeMap<String, Value>>(params).unwrap(),
            owner: None,
        }
    }

    fn spec(version: &str) -> ApplicationInstanceSpec {
        ApplicationInstanceSpec {
            app_ref: AppRef {
                catalog_id: "nc".into(),
            },
            chart: Some(ChartSource {
                source_type: ChartSourceType::Helm,
                url: "https://c".into(),
                name: "nc".into(),
                version: version.into(),
            }),
            ..Default::default()
        }
    }

    fn view(
        g: i64,
        obs: i64,
        conds: &[(&str, &str, &str)],
        history: &[(&str, &str)],
    ) -> ReleaseView {
        ReleaseView {
            generation: Some(g),
            observed_generation: Some(obs),
            conditions: conds
                .iter()
                .map(|(t, s, r)| FluxCondition {
                    type_: t.to_string(),
                    status: s.to_string(),
                    reason: r.to_string(),
                    message: "m".into(),
                    observed_generation: None,
                })
                .collect(),
            history: history
                .iter()
                .map(|(v, s)| (v.to_string(), s.to_string()))
                .collect(),
        }
    }

    #[test]
    fn plan_table() {
        let hist = view(1, 1, &[], &[("2.0.0", "deployed"), ("1.0.0", "superseded")]);
        let ok = plan(
            &op(OperationType::Upgrade, json!({"targetVersion": "2.1.0"})),
            &spec("2.0.0"),
            None,
        )
        .unwrap();
        assert_eq!(
            ok,
            Plan {
                target_version: "2.1.0".into(),
                previous_version: "2.0.0".into()
            }
        );
        let rb = plan(
            &op(OperationType::Rollback, json!({})),
            &spec("2.0.0"),
            Some(&hist),
        )
        .unwrap();
        assert_eq!(rb.target_version, "1.0.0");
        let errors = [
            (
                op(OperationType::Upgrade, json!({})),
                "parameters.targetVersion is required",
            ),
            (
                op(OperationType::Upgrade, json!({"targetVersion": "^2"})),
                "parameters.targetVersion \"^2\" must be an exact semantic version",
            ),
            (
                op(
                    OperationType::Upgrade,
                    json!({"targetVersion": "2.1.0", "valuesPatch": {}}),
                ),
                "parameters.valuesPatch is not supported: change values on the ApplicationInstance",
            ),
            (
                op(OperationType::Rollback, json!({})),
                "no earlier release in the HelmRelease history to roll back to",
            ),
        ];
        for (o, want) in errors {
            assert_eq!(plan(&o, &spec("2.0.0"), None).unwrap_err().0, want);
        }
        let placeholder = ApplicationInstanceSpec::default();
        assert!(
            plan(
                &op(OperationType::Upgrade, json!({"targetVersion": "1.0.0"})),
                &placeholder,
                None
            )
            .is_err()
        );
    }

    #[test]
    fn status_table() {
        let p = Plan {
            target_version: "2.0.0".into(),
            previous_version: "1.0.0".into(),
        };
        let table = [
            (None, "Running", reasons::ENGINE_RUNNING),
            (
                Some(view(
                    2,
                    1,
                    &[("Ready", "True", "UpgradeSucceeded")],
                    &[("1.0.0", "deployed")],
                )),
                "Running",
                reasons::ENGINE_RUNNING,
            ),
            (
                Some(view(
                    2,
                    2,
                    &[("Ready", "Unknown", "Progressing")],
                    &[("1.0.0", "deployed")],
                )),
                "Running",
                reasons::ENGINE_RUNNING,
            ),
            (
                Some(view(
                    2,
                    2,
                    &[("Ready", "True", "UpgradeSucceeded")],
                    &[("2.0.0", "deployed"), ("1.0.0", "superseded")],
                )),
                "Succeeded",
                reasons::ENGINE_COMPLETED,
            ),
            (
                Some(view(
                    2,
                    2,
                    &[
                        ("Ready", "False", "UpgradeFailed"),
                        ("Stalled", "True", "RetriesExceeded"),
                    ],
                    &[("2.0.0", "failed")],
                )),
                "Failed",
                reasons::UPGRADE_FAILED,
            ),
            (
                Some(view(2, 2, &[("Ready", "False", "ArtifactFailed")], &[])),
                "Failed",
                reasons::ENGINE_FAILED,
            ),
            (
                Some(view(
                    2,
                    2,
                    &[
                        ("Ready", "False", "UpgradeFailed"),
                        ("Reconciling", "True", "ProgressingWithRetry"),
                    ],
                    &[],
                )),
                "Running",
                reasons::ENGINE_RUNNING,
            ),
            (
                Some(view(
                    2,
                    2,
                    &[
                        ("Ready", "True", "RollbackSucceeded"),
                        ("Remediated", "True", "RollbackSucceeded"),
                    ],
                    &[("1.0.0", "deployed")],
                )),
                "Failed",
                reasons::ROLLED_BACK,
            ),
        ];
        for (r, phase, reason) in table {
            let obs = outcome_from_status("nc", r.as_ref(), &p);
            let got = match &obs.outcome {
                Outcome::Running { reason, .. } => ("Running", *reason),
                Outcome::Succeeded { reason, .. } => ("Succeeded", *reason),
                Outcome::Failed { reason, .. } => ("Failed", *reason),
            };
            assert_eq!(got, (phase, reason), "{r:?}");
            assert_eq!(obs.outputs["previousVersion"], "1.0.0");
        }
    }
}
