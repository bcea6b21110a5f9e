//! The Operation controller: a state machine Pending → Running → Succeeded |
//! Failed | Cancelled around one engine workload per Operation.
//!
//! Pending: gate, validation (permanent failures fail the Operation), target,
//! approval, engine CRDs, then the concurrency matrix under a per-target lock;
//! blocked operations report Blocked=True/<reason> and are re-checked when
//! their siblings, target or spec change. Running: the workload is watched by
//! its `ops.vworkspace.io/operation=<uid>` label and its status mapped by the
//! engine's pure `outcome_from_status`. Terminal: history cleanup per target.

pub mod concurrency;
pub mod engines;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{Future, StreamExt, future::BoxFuture};
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolumeClaim, ServiceAccount},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, instrument, warn};
use vworkspace_crds::{
    ApplicationInstance, Engine, EngineRef, Operation, OperationPhase, OperationStatus,
    conditions::{self, Status, reasons, types},
    well_known::{annotations, labels, values::OPERATION_RUNNER_SERVICE_ACCOUNT},
};

use self::engines::{
    Observation, OpInfo, Outcome, ParamError, helm, job, snapshot, velero, volsync, workflow,
};
use super::{
    Context, Error, FIELD_MANAGER, OPERATIONS_FIELD_MANAGER,
    application::status::ReleaseView,
    approval,
    resources::{
        HELM_RELEASE, Kind, REPLICATION_SOURCE, VELERO_BACKUP, VELERO_RESTORE, VOLUME_SNAPSHOT,
        WORKFLOW,
    },
};

/// Label value of this controller in metrics.
pub const CONTROLLER: &str = "operation";
/// Re-check interval of a blocked operation, on top of the watches.
const BLOCKED_REQUEUE: Duration = Duration::from_secs(30);

/// Builds and starts the controller; the returned future runs it to shutdown.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<BoxFuture<'static, ()>, Error> {
    let client = ctx.client.clone();
    let ops = Api::<Operation>::all(client.clone());
    let controller = Controller::new(ops.clone(), watcher::Config::default())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency));
    let store = controller.store();

    // A finished or started sibling may unblock the pending ones on its target.
    let s = store.clone();
    let mut controller = controller.watches(ops, watcher::Config::default(), move |op| {
        let Some(ns) = op.namespace() else {
            return Vec::new();
        };
        if op.phase() == OperationPhase::Pending {
            return Vec::new();
        }
        on_target(&s, &ns, &op.spec.target_ref.name, |o| {
            o.phase() == OperationPhase::Pending
        })
    });
    // A target that appears, becomes Ready or changes its chart.
    let s = store.clone();
    controller = controller.watches(
        Api::<ApplicationInstance>::all(client.clone()),
        watcher::Config::default(),
        move |ai| {
            let Some(ns) = ai.namespace() else {
                return Vec::new();
            };
            on_target(&s, &ns, &ai.name_any(), |o| !o.phase().is_terminal())
        },
    );
    // Engine workloads, by the Operation UID label.
    let by_uid = watcher::Config::default().labels(labels::OPERATION);
    for kind in [
        VELERO_BACKUP,
        VELERO_RESTORE,
        VOLUME_SNAPSHOT,
        REPLICATION_SOURCE,
        WORKFLOW,
    ] {
        if !ctx.is_served(kind).await? {
            info!(kind = %kind.describe(), "Engine CRD not installed; its operations report DependencyMissing");
            continue;
        }
        let s = store.clone();
        let ar = kind.api_resource();
        controller = controller.watches_with(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            ar,
            by_uid.clone(),
            move |o| owner_by_uid(&s, o.labels().get(labels::OPERATION)),
        );
    }
    let s = store.clone();
    controller = controller.watches(Api::<Job>::all(client.clone()), by_uid, move |j| {
        owner_by_uid(&s, j.labels().get(labels::OPERATION))
    });
    // The helm engine waits on the target's HelmRelease.
    if ctx.is_served(HELM_RELEASE).await? {
        let s = store.clone();
        let ar = HELM_RELEASE.api_resource();
        controller = controller.watches_with(
            Api::<DynamicObject>::all_with(client.clone(), &ar),
            ar,
            watcher::Config::default().labels(labels::APPLICATION_INSTANCE),
            move |hr| {
                let (Some(ns), Some(ai)) = (
                    hr.namespace(),
                    hr.labels().get(labels::APPLICATION_INSTANCE),
                ) else {
                    return Vec::new();
                };
                on_target(&s, &ns, ai, |o| {
                    o.spec.engine == Engine::Helm && o.phase() == OperationPhase::Running
                })
            },
        );
    }
    let fut = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| {
            match res {
                Ok((obj, _)) => debug!(%obj, "Reconciled"),
                Err(error) => debug!(%error, "Reconcile failed"),
            }
            futures::future::ready(())
        });
    Ok(Box::pin(fut))
}

fn on_target(
    store: &Store<Operation>,
    ns: &str,
    target: &str,
    pick: impl Fn(&Operation) -> bool,
) -> Vec<ObjectRef<Operation>> {
    store
        .state()
        .iter()
        .filter(|o| {
            o.namespace().as_deref() == Some(ns) && o.spec.target_ref.name == target && pick(o)
        })
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

fn owner_by_uid(store: &Store<Operation>, uid: Option<&String>) -> Option<ObjectRef<Operation>> {
    let uid = uid?;
    store
        .state()
        .iter()
        .find(|o| o.metadata.uid.as_ref() == Some(uid))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
}

/// Logs, counts, and retries with a delay.
pub fn error_policy(_op: Arc<Operation>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(%error, "Operation reconcile failed");
    ctx.metrics.error(CONTROLLER, error.metric_label());
    Action::requeue(Duration::from_secs(5 + rand::random::<u64>() % 10))
}

/// Reconciles one Operation.
#[instrument(skip(op, ctx), fields(namespace = op.namespace().unwrap_or_default(), name = %op.name_any()))]
pub async fn reconcile(op: Arc<Operation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let info = OpInfo::from_operation(&op).ok_or_else(|| Error::MissingNamespace(op.name_any()))?;
    let phase = op.phase();
    if phase.is_terminal() {
        return cleanup(&op, &info, &ctx).await;
    }
    if op.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let cancel = op
        .annotations()
        .get(annotations::CANCEL)
        .is_some_and(|v| !v.trim().is_empty());
    let w = Writer::new(&op);
    if cancel {
        if phase == OperationPhase::Running {
            stop(&op, &info, &ctx, false).await?;
        }
        return w
            .finish(
                &ctx,
                &info,
                OperationPhase::Cancelled,
                reasons::USER_CANCELLED,
                format!("cancelled through the {} annotation", annotations::CANCEL),
            )
            .await;
    }
    match phase {
        OperationPhase::Running => observe(&op, &info, &ctx, w).await,
        _ => admit(&op, &info, &ctx, w).await,
    }
}

/// What an engine will create, prepared (and validated) before admission.
enum Prepared {
    Dynamic(Vec<DynamicObject>),
    Job(Box<Job>),
    Helm {
        plan: helm::Plan,
        release: String,
        target: Box<ApplicationInstance>,
    },
}

async fn admit(
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
    if !engines::supports(info.engine, info.type_) {
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
    let missing = ctx
        .missing(&engines::required_kinds(info.engine, info.type_))
        .await?;
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
    let prepared = match prepare(info, &target, ctx).await? {
        Ok(p) => p,
        Err(e) if e.0.starts_with(NO_PVC) => {
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
    if matches!(
        info.engine,
        Engine::Job | Engine::HelmHookJob | Engine::Workflow
    ) {
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

const NO_PVC: &str = "no PersistentVolumeClaim";

async fn prepare(
    info: &OpInfo,
    target: &ApplicationInstance,
    ctx: &Context,
) -> Result<Result<Prepared, ParamError>, Error> {
    Ok(match info.engine {
        Engine::Velero => velero::desired_object(info, &ctx.config.velero_namespace)
            .map(|o| Prepared::Dynamic(vec![o])),
        Engine::Volsync => volsync::desired_object(info).map(|o| Prepared::Dynamic(vec![o])),
        Engine::Workflow => workflow::desired_object(info, job::Shape::default())
            .map(|o| Prepared::Dynamic(vec![o])),
        Engine::Job | Engine::HelmHookJob => {
            job::desired_object(info, job::Shape::default()).map(|j| Prepared::Job(Box::new(j)))
        }
        Engine::Snapshot => {
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
                                .labels(&format!("{}={instance}", snapshot::INSTANCE_LABEL)),
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
                    info.target,
                    snapshot::INSTANCE_LABEL
                ))));
            }
            pvcs.iter()
                .map(|p| snapshot::desired_object(info, p))
                .collect::<Result<Vec<_>, _>>()
                .map(Prepared::Dynamic)
        }
        Engine::Helm => {
            let release = match target.spec.release.as_ref() {
                Some(r) => r.name.clone(),
                None => {
                    return Ok(Err(ParamError(
                        "the target has no release to upgrade".into(),
                    )));
                }
            };
            let view = helm_release(ctx, &info.namespace, &release).await?;
            helm::plan(info, &target.spec, view.as_ref()).map(|plan| Prepared::Helm {
                plan,
                release,
                target: Box::new(target.clone()),
            })
        }
    })
}

async fn helm_release(ctx: &Context, ns: &str, name: &str) -> Result<Option<ReleaseView>, Error> {
    let api =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &HELM_RELEASE.api_resource());
    Ok(api
        .get_opt(name)
        .await?
        .map(|hr| ReleaseView::from_object(hr.metadata.generation, &hr.data)))
}

fn dyn_api(ctx: &Context, obj: &DynamicObject) -> Api<DynamicObject> {
    let types = obj.types.clone().unwrap_or_default();
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", &types.api_version));
    let kind = [
        VELERO_BACKUP,
        VELERO_RESTORE,
        VOLUME_SNAPSHOT,
        REPLICATION_SOURCE,
        WORKFLOW,
    ]
    .into_iter()
    .find(|k| k.kind == types.kind && k.group == group && k.version == version)
    .unwrap_or(WORKFLOW);
    Api::namespaced_with(
        ctx.client.clone(),
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        &kind.api_resource(),
    )
}

fn kind_of(obj: &DynamicObject) -> String {
    obj.types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default()
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

fn job_body(j: &Job) -> Result<serde_json::Value, Error> {
    let mut body = serde_json::to_value(j)?;
    body["apiVersion"] = json!("batch/v1");
    body["kind"] = json!("Job");
    Ok(body)
}

/// Writes the target's whole spec with a new chart version (whole spec, so
/// the shared field manager keeps owning every field).
async fn apply_target_version(
    ctx: &Context,
    target: &ApplicationInstance,
    version: &str,
) -> Result<(), Error> {
    // Only the chart version, under a field manager of its own: applying the
    // whole object as the intent applier's manager would drop the labels and
    // annotations that manager owns (the applied-intent record among them),
    // and would take over spec fields the next intent must be able to remove.
    let body = json!({
        "apiVersion": ApplicationInstance::api_version(&()),
        "kind": ApplicationInstance::kind(&()),
        "metadata": { "name": target.name_any(), "namespace": target.namespace() },
        "spec": { "chart": { "version": version } },
    });
    Api::<ApplicationInstance>::namespaced(
        ctx.client.clone(),
        &target.namespace().unwrap_or_default(),
    )
    .patch(
        &target.name_any(),
        &PatchParams::apply(OPERATIONS_FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Reads the engine workload; `None` when it is gone.
async fn read(op: &Operation, info: &OpInfo, ctx: &Context) -> Result<Option<Observation>, Error> {
    let st = op.status.clone().unwrap_or_default();
    let eref = st.engine_ref.clone().unwrap_or_default();
    let name = eref.name.clone().unwrap_or_else(|| info.name.clone());
    let ns = eref
        .namespace
        .clone()
        .unwrap_or_else(|| info.namespace.clone());
    let get = |kind: Kind| {
        let api =
            Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &kind.api_resource());
        let name = name.clone();
        async move { api.get_opt(&name).await }
    };
    let owned = |o: &DynamicObject| o.labels().get(labels::OPERATION) == Some(&info.uid);
    Ok(match info.engine {
        Engine::Velero => get(velero::kind(info.type_))
            .await?
            .filter(owned)
            .map(|o| velero::outcome_from_object(info.type_, &name, &o.data)),
        Engine::Volsync => get(REPLICATION_SOURCE)
            .await?
            .filter(owned)
            .map(|o| volsync::outcome_from_status(&name, &info.uid, &o.data["status"])),
        Engine::Workflow => get(WORKFLOW)
            .await?
            .filter(owned)
            .map(|o| workflow::outcome_from_status(&name, o.uid().as_deref(), &o.data["status"])),
        Engine::Snapshot => {
            let api = Api::<DynamicObject>::namespaced_with(
                ctx.client.clone(),
                &ns,
                &VOLUME_SNAPSHOT.api_resource(),
            );
            let list = api
                .list(&ListParams::default().labels(&format!("{}={}", labels::OPERATION, info.uid)))
                .await?;
            let snaps: Vec<(String, serde_json::Value)> = list
                .items
                .iter()
                .map(|o| (o.name_any(), o.data["status"].clone()))
                .collect();
            (!snaps.is_empty()).then(|| snapshot::outcome_from_status(&snaps))
        }
        Engine::Job | Engine::HelmHookJob => Api::<Job>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
            .filter(|j| j.labels().get(labels::OPERATION) == Some(&info.uid))
            .map(|j| job::outcome_from_status(info.engine, &name, j.status.as_ref())),
        Engine::Helm => {
            let plan = helm_plan_from_outputs(&st);
            let view = helm_release(ctx, &ns, &name).await?;
            Some(helm::outcome_from_status(&name, view.as_ref(), &plan))
        }
    })
}

fn helm_plan_from_outputs(st: &OperationStatus) -> helm::Plan {
    let out = st.outputs.clone().unwrap_or_default();
    let s = |k: &str| {
        out.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    helm::Plan {
        target_version: s("chartVersion"),
        previous_version: s("previousVersion"),
    }
}

fn timeout_of(op: &Operation, ctx: &Context) -> Duration {
    op.spec
        .timeout_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(ctx.config.default_operation_timeout, Duration::from_secs)
}

async fn observe(
    op: &Operation,
    info: &OpInfo,
    ctx: &Context,
    mut w: Writer,
) -> Result<Action, Error> {
    let timeout = timeout_of(op, ctx);
    let started = w.st.started_at.as_ref().map_or(0, |t| t.0.as_second());
    let elapsed = (k8s_openapi::jiff::Timestamp::now().as_second() - started).max(0) as u64;
    if elapsed >= timeout.as_secs() {
        stop(op, info, ctx, true).await?;
        return w
            .fail(
                ctx,
                info,
                reasons::TIMED_OUT,
                format!("did not finish within {}s", timeout.as_secs()),
            )
            .await;
    }
    let Some(obs) = read(op, info, ctx).await? else {
        let eref = w.st.engine_ref.clone().unwrap_or_default();
        return w
            .fail(
                ctx,
                info,
                reasons::EXTERNAL_DELETION,
                format!(
                    "the engine workload {} {}/{} was deleted outside the agent",
                    eref.kind.unwrap_or_default(),
                    eref.namespace.unwrap_or_default(),
                    eref.name.unwrap_or_default()
                ),
            )
            .await;
    };
    let mut outputs = w.st.outputs.clone().unwrap_or_default();
    outputs.extend(obs.outputs);
    w.st.outputs = Some(outputs);
    match obs.outcome {
        Outcome::Running { reason, message } => {
            w.set(types::RUNNING, Status::True, reason, message);
            w.write(ctx).await?;
            let left = Duration::from_secs(timeout.as_secs() - elapsed);
            Ok(Action::requeue(left.min(ctx.config.resync)))
        }
        Outcome::Succeeded { reason, message } => {
            w.finish(ctx, info, OperationPhase::Succeeded, reason, message)
                .await
        }
        Outcome::Failed { reason, message } => {
            keep_for_logs(info, ctx).await?;
            w.fail(ctx, info, reason, message).await
        }
    }
}

/// Stops the engine workload (cancel, timeout). Velero cannot stop a backup
/// in flight and its objects are kept.
async fn stop(op: &Operation, info: &OpInfo, ctx: &Context, orphan: bool) -> Result<(), Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let shape = job::Shape {
        suspend: true,
        orphan,
    };
    match info.engine {
        Engine::Velero => {}
        Engine::Job | Engine::HelmHookJob => {
            if let Ok(j) = job::desired_object(info, shape) {
                let api = Api::<Job>::namespaced(ctx.client.clone(), &info.namespace);
                if api.get_opt(&info.name).await?.is_some() {
                    api.patch(&info.name, &pp, &Patch::Apply(job_body(&j)?))
                        .await?;
                }
            }
        }
        Engine::Workflow => {
            if let Ok(wf) = workflow::desired_object(info, shape) {
                let api = dyn_api(ctx, &wf);
                if api.get_opt(&info.name).await?.is_some() {
                    api.patch(&info.name, &pp, &Patch::Apply(&wf)).await?;
                }
            }
        }
        Engine::Volsync => {
            let api = Api::<DynamicObject>::namespaced_with(
                ctx.client.clone(),
                &info.namespace,
                &REPLICATION_SOURCE.api_resource(),
            );
            delete_ignoring_missing(&api, &info.name).await?;
        }
        Engine::Snapshot => {
            let api = Api::<DynamicObject>::namespaced_with(
                ctx.client.clone(),
                &info.namespace,
                &VOLUME_SNAPSHOT.api_resource(),
            );
            let list = api
                .list(&ListParams::default().labels(&format!("{}={}", labels::OPERATION, info.uid)))
                .await?;
            for s in list
                .items
                .iter()
                .filter(|s| s.data["status"]["readyToUse"].as_bool() != Some(true))
            {
                delete_ignoring_missing(&api, &s.name_any()).await?;
            }
        }
        Engine::Helm => {
            let plan = helm_plan_from_outputs(&op.status.clone().unwrap_or_default());
            let api = Api::<ApplicationInstance>::namespaced(ctx.client.clone(), &info.namespace);
            if let Some(target) = api.get_opt(&info.target).await? {
                let current = target.spec.chart.as_ref().map(|c| c.version.clone());
                if current.as_deref() == Some(plan.target_version.as_str())
                    && !plan.previous_version.is_empty()
                {
                    apply_target_version(ctx, &target, &plan.previous_version).await?;
                }
            }
        }
    }
    Ok(())
}

/// A failed Job or Workflow drops its owner reference, so deleting the
/// Operation (history cleanup) does not take its logs; its TTL reclaims it.
async fn keep_for_logs(info: &OpInfo, ctx: &Context) -> Result<(), Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let shape = job::Shape {
        suspend: false,
        orphan: true,
    };
    match info.engine {
        Engine::Job | Engine::HelmHookJob => {
            if let Ok(j) = job::desired_object(info, shape) {
                let api = Api::<Job>::namespaced(ctx.client.clone(), &info.namespace);
                if api.get_opt(&info.name).await?.is_some() {
                    api.patch(&info.name, &pp, &Patch::Apply(job_body(&j)?))
                        .await?;
                }
            }
        }
        Engine::Workflow => {
            if let Ok(wf) = workflow::desired_object(info, shape) {
                let api = dyn_api(ctx, &wf);
                if api.get_opt(&info.name).await?.is_some() {
                    api.patch(&info.name, &pp, &Patch::Apply(&wf)).await?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

async fn delete_ignoring_missing(api: &Api<DynamicObject>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Terminal operations: delete this one after its TTL, and the oldest
/// finished ones of the target beyond the history limit.
async fn cleanup(op: &Operation, info: &OpInfo, ctx: &Context) -> Result<Action, Error> {
    let api = Api::<Operation>::namespaced(ctx.client.clone(), &info.namespace);
    let finished = op.status.as_ref().and_then(|s| s.finished_at.clone());
    if let (Some(ttl), Some(fin)) = (op.spec.ttl_seconds_after_finished, finished.as_ref()) {
        let left = fin.0.as_second() + ttl - k8s_openapi::jiff::Timestamp::now().as_second();
        if left <= 0 {
            info!("Deleting operation after ttlSecondsAfterFinished");
            delete_op(&api, &info.name).await?;
            return Ok(Action::await_change());
        }
        return Ok(Action::requeue(Duration::from_secs(left as u64)));
    }
    let siblings = api
        .list(&ListParams::default().fields(&format!("spec.targetRef.name={}", info.target)))
        .await?;
    let expired = beyond_history(&siblings.items, ctx.config.history_limit);
    for name in expired {
        info!(operation = %name, limit = ctx.config.history_limit, "Deleting finished operation beyond the history limit");
        delete_op(&api, &name).await?;
    }
    Ok(Action::await_change())
}

/// Names of finished operations beyond the newest `limit` (by finish time).
pub fn beyond_history(ops: &[Operation], limit: usize) -> Vec<String> {
    let mut done: Vec<&Operation> = ops
        .iter()
        .filter(|o| o.phase().is_terminal() && o.metadata.deletion_timestamp.is_none())
        .collect();
    let key = |o: &Operation| {
        o.status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref().map(|t| t.0))
            .or(o.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    done.sort_by(|a, b| {
        key(b)
            .cmp(&key(a))
            .then_with(|| b.name_any().cmp(&a.name_any()))
    });
    done.into_iter()
        .skip(limit)
        .map(ResourceExt::name_any)
        .collect()
}

async fn delete_op(api: &Api<Operation>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Builds the next status from the observed one and sends it when changed.
struct Writer {
    reference: k8s_openapi::api::core::v1::ObjectReference,
    name: String,
    namespace: String,
    old: OperationStatus,
    st: OperationStatus,
    generation: Option<i64>,
}

impl Writer {
    fn new(op: &Operation) -> Self {
        let old = op.status.clone().unwrap_or_default();
        let mut st = old.clone();
        st.phase.get_or_insert(OperationPhase::Pending);
        Self {
            reference: op.object_ref(&()),
            name: op.name_any(),
            namespace: op.namespace().unwrap_or_default(),
            old,
            st,
            generation: op.metadata.generation,
        }
    }

    fn set(&mut self, type_: &str, status: Status, reason: &str, message: String) {
        conditions::set_condition(
            &mut self.st.conditions,
            conditions::new(type_, status, reason, message, self.generation),
        );
    }

    async fn block(
        mut self,
        ctx: &Context,
        reason: &str,
        message: String,
        requeue: Duration,
    ) -> Result<Action, Error> {
        self.st.phase = Some(OperationPhase::Pending);
        self.set(types::BLOCKED, Status::True, reason, message.clone());
        if reason != reasons::TARGET_NOT_READY
            || conditions::find(&self.st.conditions, types::ACCEPTED)
                .is_none_or(|c| c.reason != reasons::TARGET_NOT_FOUND)
        {
            self.set(types::ACCEPTED, Status::False, reason, message);
        }
        self.write(ctx).await?;
        Ok(Action::requeue(requeue))
    }

    async fn invalid(
        mut self,
        ctx: &Context,
        info: &OpInfo,
        message: String,
    ) -> Result<Action, Error> {
        self.set(
            types::ACCEPTED,
            Status::False,
            reasons::VALIDATION_FAILED,
            message.clone(),
        );
        self.fail(ctx, info, reasons::VALIDATION_FAILED, message)
            .await
    }

    async fn fail(
        self,
        ctx: &Context,
        info: &OpInfo,
        reason: &str,
        message: String,
    ) -> Result<Action, Error> {
        self.finish(ctx, info, OperationPhase::Failed, reason, message)
            .await
    }

    async fn finish(
        mut self,
        ctx: &Context,
        info: &OpInfo,
        phase: OperationPhase,
        reason: &str,
        message: String,
    ) -> Result<Action, Error> {
        self.st.phase = Some(phase);
        self.st.finished_at = Some(conditions::now());
        let (type_, other) = match phase {
            OperationPhase::Succeeded => (types::SUCCEEDED, None),
            OperationPhase::Cancelled => (types::CANCELLED, Some(types::SUCCEEDED)),
            _ => (types::FAILED, Some(types::SUCCEEDED)),
        };
        self.set(type_, Status::True, reason, message.clone());
        if let Some(other) = other {
            self.set(other, Status::False, reason, message.clone());
        }
        if conditions::find(&self.st.conditions, types::RUNNING).is_some() {
            self.set(types::RUNNING, Status::False, reason, message.clone());
        }
        if conditions::is_true(&self.st.conditions, types::BLOCKED) {
            self.set(
                types::BLOCKED,
                Status::False,
                reasons::UNBLOCKED,
                String::new(),
            );
        }
        self.write(ctx).await?;
        ctx.metrics.finished(info.engine.as_str(), phase.as_str());
        info!(phase = phase.as_str(), reason, "Operation finished");
        Ok(Action::requeue(Duration::from_secs(1)))
    }

    async fn write(&mut self, ctx: &Context) -> Result<(), Error> {
        if !status_changed(&self.old, &self.st) {
            return Ok(());
        }
        let body = json!({
            "apiVersion": Operation::api_version(&()),
            "kind": Operation::kind(&()),
            "status": self.st,
        });
        Api::<Operation>::namespaced(ctx.client.clone(), &self.namespace)
            .patch_status(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        ctx.metrics.status_write(CONTROLLER);
        ctx.publish_transitions(&self.reference, &self.old.conditions, &self.st.conditions)
            .await;
        self.old = self.st.clone();
        Ok(())
    }
}

/// Whether two statuses differ in anything but condition timestamps.
pub fn status_changed(old: &OperationStatus, new: &OperationStatus) -> bool {
    let strip = |s: &OperationStatus| OperationStatus {
        conditions: Vec::new(),
        ..s.clone()
    };
    strip(old) != strip(new) || !conditions::eq_ignoring_time(&old.conditions, &new.conditions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use vworkspace_crds::{OperationSpec, OperationType, TargetRef};

    fn op(name: &str, phase: Option<OperationPhase>, finished: Option<i64>) -> Operation {
        Operation {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
                )),
                ..Default::default()
            },
            spec: OperationSpec {
                target_ref: TargetRef {
                    api_version: "apps.vworkspace.io/v1alpha1".into(),
                    kind: "ApplicationInstance".into(),
                    name: "nc".into(),
                },
                type_: OperationType::Backup,
                engine: Engine::Velero,
                parameters: None,
                approvals: None,
                policy: None,
                timeout_seconds: None,
                ttl_seconds_after_finished: None,
            },
            status: Some(OperationStatus {
                phase,
                finished_at: finished
                    .map(|s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn history_keeps_the_newest_finished_operations() {
        use OperationPhase::*;
        let ops = vec![
            op("a", Some(Succeeded), Some(10)),
            op("b", Some(Failed), Some(30)),
            op("c", Some(Running), None),
            op("d", Some(Cancelled), Some(20)),
            op("e", Some(Succeeded), Some(40)),
            op("f", None, None),
        ];
        assert_eq!(
            beyond_history(&ops, 2),
            vec!["d".to_string(), "a".to_string()]
        );
        assert_eq!(beyond_history(&ops, 0).len(), 4);
        assert!(beyond_history(&ops, 10).is_empty());
    }

    #[test]
    fn status_change_ignores_condition_time() {
        let t = |s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        let a = OperationStatus {
            conditions: vec![conditions::new_at(
                types::RUNNING,
                Status::True,
                reasons::ENGINE_STARTED,
                "",
                None,
                t(1),
            )],
            ..Default::default()
        };
        let mut b = a.clone();
        b.conditions[0].last_transition_time = t(2);
        assert!(!status_changed(&a, &b));
        b.phase = Some(OperationPhase::Running);
        assert!(status_changed(&a, &b));
    }
}
