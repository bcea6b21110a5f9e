//! The Operation controller: a state machine Pending → Running → Succeeded |
//! Failed | Cancelled around one engine workload per Operation.
//!
//! Pending: gate, validation (permanent failures fail the Operation), target,
//! approval, engine CRDs, then the concurrency matrix under a per-target lock;
//! blocked operations report Blocked=True/<reason> and are re-checked when
//! their siblings, target or spec change. Running: the workload is watched by
//! its `ops.vworkspace.io/operation=<uid>` label and its status mapped by the
//! engine's pure `outcome_from_status`. Terminal: history cleanup per target.
//!
//! Files: [`admit`] (Pending), [`observe`] (Running), [`history`] (finished),
//! [`status`] (the status writer). Engines are reached only through
//! [`engines::driver`], so a new engine touches only `engines/`.

mod admit;
pub mod concurrency;
pub mod engines;
mod history;
mod observe;
mod status;

use std::{sync::Arc, time::Duration};

use futures::{Future, StreamExt, future::BoxFuture};
use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Resource, ResourceExt,
    api::DynamicObject,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{debug, info, instrument, warn};
use vworkspace_crds::{
    ApplicationInstance, Engine, Operation, OperationPhase,
    conditions::reasons,
    well_known::{annotations, labels},
};

use self::engines::OpInfo;
use self::status::Writer;
use super::{Context, Error, resources::HELM_RELEASE, watches};

pub use history::beyond_history;
pub use status::status_changed;

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
    // Every watch backs off on its own and never pauses the others
    // (`watches`: an API server restart would otherwise stall the controller).
    let (store, writer) = reflector::store();
    let controller = Controller::for_stream(
        watches::reflected(
            ops.clone(),
            watcher::Config::default(),
            "operations",
            writer,
        ),
        store.clone(),
    )
    .with_config(controller::Config::default().concurrency(ctx.config.concurrency));

    // A finished or started sibling may unblock the pending ones on its target.
    let s = store.clone();
    let mut controller = controller.watches_stream(
        watches::touched(ops, watcher::Config::default(), "operations (siblings)"),
        move |op| {
            let Some(ns) = op.namespace() else {
                return Vec::new();
            };
            if op.phase() == OperationPhase::Pending {
                return Vec::new();
            }
            on_target(&s, &ns, &op.spec.target_ref.name, |o| {
                o.phase() == OperationPhase::Pending
            })
        },
    );
    // A target that appears, becomes Ready or changes its chart.
    let s = store.clone();
    controller = controller.watches_stream(
        watches::touched(
            Api::<ApplicationInstance>::all(client.clone()),
            watcher::Config::default(),
            "applicationinstances (targets)",
        ),
        move |ai| {
            let Some(ns) = ai.namespace() else {
                return Vec::new();
            };
            on_target(&s, &ns, &ai.name_any(), |o| !o.phase().is_terminal())
        },
    );
    // Engine workloads, by the Operation UID label.
    let by_uid = watcher::Config::default().labels(labels::OPERATION);
    let mut kinds = Vec::new();
    for kind in engines::ENGINES
        .iter()
        .flat_map(|e| engines::driver(*e).watched_kinds())
    {
        if !kinds.contains(kind) {
            kinds.push(*kind);
        }
    }
    for kind in kinds {
        if !ctx.is_served(kind).await? {
            info!(kind = %kind.describe(), "Engine CRD not installed; its operations report DependencyMissing");
            continue;
        }
        let s = store.clone();
        let ar = kind.api_resource();
        controller = controller.watches_stream_with(
            watches::touched(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                by_uid.clone(),
                "engine workloads",
            ),
            move |o| owner_by_uid(&s, o.labels().get(labels::OPERATION)),
            ar,
        );
    }
    let s = store.clone();
    controller = controller.watches_stream(
        watches::touched(Api::<Job>::all(client.clone()), by_uid, "jobs"),
        move |j| owner_by_uid(&s, j.labels().get(labels::OPERATION)),
    );
    // The helm engine waits on the target's HelmRelease.
    if ctx.is_served(HELM_RELEASE).await? {
        let s = store.clone();
        let ar = HELM_RELEASE.api_resource();
        controller = controller.watches_stream_with(
            watches::touched(
                Api::<DynamicObject>::all_with(client.clone(), &ar),
                watcher::Config::default().labels(labels::APPLICATION_INSTANCE),
                "helmreleases (helm engine)",
            ),
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
            ar,
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
        return history::cleanup(&op, &info, &ctx).await;
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
            engines::driver(info.engine)
                .stop(&op, &info, &ctx, false)
                .await?;
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
        OperationPhase::Running => observe::observe(&op, &info, &ctx, w).await,
        _ => admit::admit(&op, &info, &ctx, w).await,
    }
}

pub(super) fn timeout_of(op: &Operation, ctx: &Context) -> Duration {
    op.spec
        .timeout_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(ctx.config.default_operation_timeout, Duration::from_secs)
}
