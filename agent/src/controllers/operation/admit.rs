//! Admission of a Pending Operation: gate, validation (permanent failures
//! fail the Operation), target, engine CRDs, approval, readiness, then the
//! concurrency matrix under a per-target lock, and the engine's workloads.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{batch::v1::Job, core::v1::ServiceAccount};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;
use vworkspace_crds::{
    ApplicationInstance, EngineRef, Operation, OperationPhase,
    conditions::{self, Status, reasons, types},
    well_known::{labels, values::OPERATION_RUNNER_SERVICE_ACCOUNT},
};

use super::engines::{
    self, OpInfo, Prepared,
    io::{apply_target_version, dyn_api, job_body, kind_of},
    snapshot,
};
use super::status::Writer;
use super::{BLOCKED_REQUEUE, concurrency, timeout_of};
use crate::controllers::{
    Context, Error, FIELD_MANAGER, approval,
    resources::{HELM_RELEASE, Kind},
};

pub(super) async fn admit(
    op: &Operation,
    info: &OpInfo,
    ctx: &Context,
    mut w: Writer,
) -> Result<Action, Error> {
    let ns = &info.namespace;
    if !ctx.is_gated(ns).await {
        return w
            .block(
                ctx,
                reasons::NAMESPACE_NOT_GATED,
                format!("namespace {ns} is not labelled managed-by=vworkspace"),
                ctx.config.resync,
            )
            .await;
    }
    let engine = engines::driver(info.engine);
    if !engine.supports(info.type_) {
        let msg = format!(
            "engine {} cannot run type {}",
            info.engine.as_str(),
            info.type_.as_str()
        );
        return w.invalid(ctx, info, msg).await;
    }
    let Some(target) = Api::<ApplicationInstance>::namespaced(ctx.client.clone(), ns)
        .get_opt(&info.target)
        .await?
    else {
        w.set(
            types::ACCEPTED,
            Status::False,
            reasons::TARGET_NOT_FOUND,
            format!("ApplicationInstance {} not found", info.target),
        );
        return w
            .block(
                ctx,
                reasons::TARGET_NOT_READY,
                format!("waiting for ApplicationInstance {}", info.target),
                BLOCKED_REQUEUE,
            )
            .await;
    };
    let missing = ctx.missing(&engine.required_kinds(info.type_)).await?;
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(Kind::describe).collect();
        return w
            .block(
                ctx,
                reasons::DEPENDENCY_MISSING,
                format!(
                    "engine {} needs {}, which is not installed in the cluster",
                    info.engine.as_str(),
                    names.join(", ")
                ),
                BLOCKED_REQUEUE,
            )
            .await;
    }
    let prepared = match engine.prepare(info, &target, ctx).await? {
        Ok(p) => p,
        Err(e) if e.0.starts_with(snapshot::NO_PVC) => {
            return w.fail(ctx, info, reasons::SOURCE_PVC_NOT_FOUND, e.0).await;
        }
        Err(e) => return w.invalid(ctx, info, e.0).await,
    };
    let approvals = op.spec.approvals.clone().unwrap_or_default();
    if approvals.required == Some(true) {
        let now = k8s_openapi::jiff::Timestamp::now().as_second();
        if let Err(e) = approval::verify_claim(
            ctx.config.approval_secret.as_deref(),
            approvals.claim.as_deref(),
            &info.name,
            now,
        ) {
            return w
                .block(
                    ctx,
                    reasons::AWAITING_APPROVAL,
                    e.to_string(),
                    ctx.config.resync,
                )
                .await;
        }
    }
    if op.spec.policy.as_ref().and_then(|p| p.require_ready) == Some(true)
        && !target
            .status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, types::READY))
    {
        return w
            .block(
                ctx,
                reasons::TARGET_NOT_READY,
                format!("ApplicationInstance {} is not Ready", info.target),
                BLOCKED_REQUEUE,
            )
            .await;
    }

    // Admission proper, one operation per target at a time.
    let lock = ctx.target_lock(ns, &info.target);
    let _guard = lock.lock().await;
    let ops = Api::<Operation>::namespaced(ctx.client.clone(), ns);
    // The cache may lag our own last write: decide on the live object.
    match ops.get_opt(&info.name).await? {
        Some(live) if live.uid() == op.uid() && live.phase() == OperationPhase::Pending => {}
        _ => return Ok(Action::requeue(Duration::from_secs(1))),
    }
    let siblings = ops
        .list(&ListParams::default().fields(&format!("spec.targetRef.name={}", info.target)))
        .await?;
    let blockers: Vec<String> = siblings
        .items
        .iter()
        .filter(|o| o.uid() != op.uid() && o.phase() == OperationPhase::Running)
        .filter(|o| concurrency::conflicts(info.type_, o.spec.type_))
        .map(|o| format!("{} {}", o.spec.type_.as_str(), o.name_any()))
        .collect();
    if !blockers.is_empty() {
        return w
            .block(
                ctx,
                reasons::CONFLICTING_OPERATION,
                format!(
                    "waiting for running {} on {}",
                    blockers.join(", "),
                    info.target
                ),
                BLOCKED_REQUEUE,
            )
            .await;
    }
    let (engine_ref, outputs) = match start(info, &prepared, ctx).await? {
        Ok(r) => r,
        Err(msg) => {
            return w
                .fail(ctx, info, reasons::WORKLOAD_OWNERSHIP_CONFLICT, msg)
                .await;
        }
    };
    w.st.phase = Some(OperationPhase::Running);
    w.st.started_at = Some(conditions::now());
    // Job and Workflow logs live with their pods: point at the workload.
    if engine.has_logs() {
        w.st.logs_ref = Some(vworkspace_crds::operation::LogsRef {
            kind: engine_ref.kind.clone(),
            name: engine_ref.name.clone(),
            namespace: engine_ref.namespace.clone(),
            url: None,
        });
    }
    w.st.engine_ref = Some(engine_ref);
    w.st.outputs = Some(outputs);
    w.set(
        types::ACCEPTED,
        Status::True,
        reasons::ADMISSION_PASSED,
        String::new(),
    );
    w.set(
        types::RUNNING,
        Status::True,
        reasons::ENGINE_STARTED,
        format!("engine {} started", info.engine.as_str()),
    );
    w.set(
        types::BLOCKED,
        Status::False,
        reasons::UNBLOCKED,
        String::new(),
    );
    w.set(
        types::SUCCEEDED,
        Status::False,
        reasons::NOT_YET_SUCCEEDED,
        String::new(),
    );
    w.write(ctx).await?;
    info!(engine = info.engine.as_str(), "Operation started");
    Ok(Action::requeue(timeout_of(op, ctx).min(ctx.config.resync)))
}

/// Creates the workloads. The inner error is an ownership conflict: an object
/// of that name exists and belongs to another Operation.
async fn start(
    info: &OpInfo,
    prepared: &Prepared,
    ctx: &Context,
) -> Result<Result<(EngineRef, engines::Outputs), String>, Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let foreign =
        |labels: &BTreeMap<String, String>, what: String| match labels.get(labels::OPERATION) {
            Some(uid) if uid != &info.uid => Some(format!(
                "{what} already exists and belongs to another operation"
            )),
            _ => None,
        };
    let mut outputs = engines::Outputs::new();
    let engine_ref = match prepared {
        Prepared::Dynamic(objs) => {
            for obj in objs {
                let api = dyn_api(ctx, obj);
                let name = obj.name_any();
                if let Some(existing) = api.get_opt(&name).await?
                    && let Some(msg) =
                        foreign(existing.labels(), format!("{} {name}", kind_of(obj)))
                {
                    return Ok(Err(msg));
                }
                api.patch(&name, &pp, &Patch::Apply(obj)).await?;
            }
            let first = &objs[0];
            EngineRef {
                kind: Some(kind_of(first)),
                name: Some(first.name_any()),
                namespace: first.namespace(),
            }
        }
        Prepared::Job(j) => {
            let sa = ServiceAccount {
                metadata: kube::api::ObjectMeta {
                    name: Some(OPERATION_RUNNER_SERVICE_ACCOUNT.into()),
                    namespace: Some(info.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        labels::MANAGED_BY.to_string(),
                        labels::MANAGED_BY_OPERATOR.to_string(),
                    )])),
                    ..Default::default()
                },
                automount_service_account_token: Some(true),
                ..Default::default()
            };
            let mut sa_body = serde_json::to_value(&sa)?;
            sa_body["apiVersion"] = json!("v1");
            sa_body["kind"] = json!("ServiceAccount");
            Api::<ServiceAccount>::namespaced(ctx.client.clone(), &info.namespace)
                .patch(
                    OPERATION_RUNNER_SERVICE_ACCOUNT,
                    &pp,
                    &Patch::Apply(&sa_body),
                )
                .await?;
            let api = Api::<Job>::namespaced(ctx.client.clone(), &info.namespace);
            if let Some(existing) = api.get_opt(&info.name).await?
                && let Some(msg) = foreign(existing.labels(), format!("Job {}", info.name))
            {
                return Ok(Err(msg));
            }
            api.patch(&info.name, &pp, &Patch::Apply(job_body(j)?))
                .await?;
            outputs.insert("jobName".into(), json!(info.name));
            EngineRef {
                kind: Some("Job".into()),
                name: Some(info.name.clone()),
                namespace: Some(info.namespace.clone()),
            }
        }
        Prepared::Helm {
            plan,
            release,
            target,
        } => {
            apply_target_version(ctx, target, &plan.target_version).await?;
            outputs.insert("helmReleaseName".into(), json!(release));
            outputs.insert("chartVersion".into(), json!(plan.target_version));
            outputs.insert("previousVersion".into(), json!(plan.previous_version));
            EngineRef {
                kind: Some(HELM_RELEASE.kind.into()),
                name: Some(release.clone()),
                namespace: Some(info.namespace.clone()),
            }
        }
    };
    Ok(Ok((engine_ref, outputs)))
}
