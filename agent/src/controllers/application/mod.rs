//! The ApplicationInstance controller: managed instances become a Flux source
//! and a HelmRelease (owned, server-side applied); their status comes back
//! through watches on those objects. Placeholders create nothing.

pub mod flux;
mod sources;
pub mod status;
mod write;

use std::{sync::Arc, time::Duration};

use futures::{Future, StreamExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
        finalizer::{Event, finalizer},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::json;
use tracing::{debug, info, instrument, warn};
use vworkspace_crds::{
    ApplicationInstance, ApplicationInstanceStatus, HelmReleaseRef, ValuesSource,
    conditions::{self, Status, reasons, types},
    well_known::{finalizers, labels},
};

use super::{
    Context, Error, FIELD_MANAGER,
    resources::{HELM_RELEASE, HELM_REPOSITORY, Kind, OCI_REPOSITORY},
    validate_application_spec, watches,
};
use sources::{
    delete_ignoring_missing, ensure_shared_source, release_previous_source, release_shared_source,
};
pub use write::status_changed;
use write::write_status;

/// Label value of this controller in metrics.
pub const CONTROLLER: &str = "application_instance";
/// Finalizer held until the HelmRelease is gone.
pub const FINALIZER: &str = finalizers::APPLICATION_INSTANCE;
/// Re-check interval while waiting for a values Secret or ConfigMap.
const WAITING_FOR_VALUES_REQUEUE: Duration = Duration::from_secs(10);
/// Re-check interval while waiting for the HelmRelease to go away.
const DELETING_REQUEUE: Duration = Duration::from_secs(15);

/// Builds and starts the controller; the returned future runs it to shutdown.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<BoxFuture<'static, ()>, Error> {
    let client = ctx.client.clone();
    // Every watch backs off on its own and never pauses the others
    // (`watches`: an API server restart would otherwise stall the controller).
    let (store, writer) = reflector::store();
    // The echoes of this controller's own writes trigger nothing (`own_writes`).
    let echoes = ctx.own_writes.clone();
    let mut controller = Controller::for_stream(
        watches::without_echoes(
            watches::reflected(
                Api::<ApplicationInstance>::all(client.clone()),
                watcher::Config::default(),
                "applicationinstances",
                writer,
            ),
            echoes.clone(),
        ),
        store.clone(),
    )
    .with_config(controller::Config::default().concurrency(ctx.config.concurrency));
    let owned = watcher::Config::default().labels(labels::APPLICATION_INSTANCE);
    for kind in [HELM_RELEASE, HELM_REPOSITORY, OCI_REPOSITORY] {
        if kind.is_served(&client).await? {
            let ar = kind.api_resource();
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            if kind == HELM_REPOSITORY {
                // Shared (no owner) and, from older versions, owned ones.
                let managed = watcher::Config::default().labels(&format!(
                    "{}={}",
                    labels::MANAGED_BY,
                    labels::MANAGED_BY_OPERATOR
                ));
                let store = store.clone();
                let repos = reflector::store::Writer::<DynamicObject>::new(ar.clone());
                let _ = ctx.helm_repositories.set(repos.as_reader());
                controller = controller.watches_stream_with(
                    watches::without_echoes(
                        watches::reflected_touched(api, managed, "helmrepositories", repos),
                        echoes.clone(),
                    ),
                    move |repo| users(&store, &repo),
                    ar,
                );
            } else {
                controller = controller.owns_stream_with(
                    watches::without_echoes(
                        watches::touched(api, owned.clone(), "owned flux objects"),
                        echoes.clone(),
                    ),
                    ar,
                );
            }
        } else {
            warn!(kind = %kind.describe(), "Flux CRD not installed; managed instances report MissingDependencies");
        }
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

/// The instances a HelmRepository event concerns: its owners, and for a
/// shared one every instance of its namespace that uses it.
fn users(
    store: &kube::runtime::reflector::Store<ApplicationInstance>,
    repo: &DynamicObject,
) -> Vec<ObjectRef<ApplicationInstance>> {
    let ns = repo.namespace();
    let mut refs: Vec<ObjectRef<ApplicationInstance>> = repo
        .owner_references()
        .iter()
        .filter(|o| o.kind == ApplicationInstance::kind(&()))
        .map(|o| ObjectRef::new(&o.name).within(ns.as_deref().unwrap_or_default()))
        .collect();
    if repo.labels().contains_key(flux::SHARED_SOURCE_LABEL) {
        let name = repo.name_any();
        refs.extend(
            store
                .state()
                .iter()
                .filter(|ai| {
                    ai.namespace() == ns
                        && flux::shared_source_of(ai).as_deref() == Some(name.as_str())
                })
                .map(|ai| ObjectRef::from_obj(ai.as_ref())),
        );
    }
    refs
}

/// Reconciles one ApplicationInstance.
#[instrument(skip(ai, ctx), fields(namespace = ai.namespace().unwrap_or_default(), name = %ai.name_any()))]
pub async fn reconcile(ai: Arc<ApplicationInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = ai
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(ai.name_any()))?;
    if ai.meta().deletion_timestamp.is_some()
        && ai.finalizers().iter().any(|f| f == FINALIZER)
        && let Some(action) = wait_for_children(&ai, &ns, &ctx).await?
    {
        return Ok(action);
    }
    if ai.meta().deletion_timestamp.is_none() {
        // Outside gated namespaces nothing is written but the status: no
        // finalizer.
        if !ctx.is_gated(&ns).await {
            return apply(&ai, &ns, &ctx).await;
        }
        // The finalizer and the Flux objects in the same reconcile: adding it
        // alone would cost a round through the queue and its reads.
        let ai = ensure_finalizer(ai, &ns, &ctx).await?;
        if ai.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        return apply(&ai, &ns, &ctx).await;
    }
    let api = Api::<ApplicationInstance>::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, ai, |event| async {
        match event {
            Event::Apply(ai) => apply(&ai, &ns, &ctx).await,
            // The HelmRelease is gone (checked above): release the object.
            Event::Cleanup(ai) => {
                ctx.forget_applied(&ai.uid().unwrap_or_default());
                info!(name = %ai.name_any(), "Releasing deleted ApplicationInstance");
                Ok(Action::await_change())
            }
        }
    })
    .await;
    match result {
        Ok(action) => Ok(action),
        // Another reconcile already released it: the object is gone.
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)))
            if s.code == 404 =>
        {
            Ok(Action::await_change())
        }
        Err(e) => Err(Error::Finalizer(Box::new(e))),
    }
}

/// Adds [`FINALIZER`] unless present; returns the object as written. The
/// merge patch carries the resourceVersion, so it never overwrites
/// finalizers someone changed meanwhile: on a conflict it reads the object
/// once more and tries again (then the reconcile's error policy retries).
async fn ensure_finalizer(
    ai: Arc<ApplicationInstance>,
    ns: &str,
    ctx: &Context,
) -> Result<Arc<ApplicationInstance>, Error> {
    let api = Api::<ApplicationInstance>::namespaced(ctx.client.clone(), ns);
    let mut current = ai;
    for attempt in 0..2 {
        if current.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok(current);
        }
        let mut finalizers = current.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        let patch = json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": current.resource_version(),
            }
        });
        match api
            .patch(
                &current.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(updated) => {
                ctx.own_writes.record(updated.meta());
                return Ok(Arc::new(updated));
            }
            Err(kube::Error::Api(s)) if s.code == 409 && attempt == 0 => {
                current = Arc::new(api.get(&current.name_any()).await?);
                if current.meta().deletion_timestamp.is_some() {
                    // Being deleted: the deletion's own event takes over.
                    return Ok(current);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(current)
}

/// Logs, counts, and retries with a delay.
pub fn error_policy(_ai: Arc<ApplicationInstance>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(%error, "ApplicationInstance reconcile failed");
    ctx.metrics.error(CONTROLLER, error.metric_label());
    Action::requeue(Duration::from_secs(5 + rand::random::<u64>() % 10))
}

async fn apply(ai: &ApplicationInstance, ns: &str, ctx: &Context) -> Result<Action, Error> {
    let generation = ai.metadata.generation;
    let old = ai.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = generation;
    let set = |st: &mut ApplicationInstanceStatus, t: &str, s: Status, r: &str, m: String| {
        conditions::set_condition(&mut st.conditions, conditions::new(t, s, r, m, generation));
    };
    // Blocked=True and Ready=False, both with the same reason and message.
    let block = |st: &mut ApplicationInstanceStatus, r: &str, m: String| {
        set(st, types::BLOCKED, Status::True, r, m.clone());
        set(st, types::READY, Status::False, r, m);
    };

    if !ctx.is_gated(ns).await {
        let msg = format!("namespace {ns} is not labelled managed-by=vworkspace");
        block(&mut st, reasons::NAMESPACE_NOT_GATED, msg);
        write_status(ai, ns, &old, st, ctx).await?;
        return Ok(Action::requeue(ctx.config.resync));
    }
    if let Err(e) = validate_application_spec(ns, &ai.spec) {
        block(&mut st, reasons::INVALID_SPEC, e.to_string());
        write_status(ai, ns, &old, st, ctx).await?;
        return Ok(Action::await_change());
    }

    if ai.spec.is_placeholder() {
        if let Some(r) = old.helm_release_ref.as_ref() {
            let msg = format!(
                "this instance owns HelmRelease {}; a managed instance cannot become a placeholder: delete and recreate it",
                r.name
            );
            block(&mut st, reasons::VALIDATION_FAILED, msg);
            write_status(ai, ns, &old, st, ctx).await?;
            return Ok(Action::await_change());
        }
        set(
            &mut st,
            types::READY,
            Status::True,
            reasons::PLACEHOLDER,
            "placeholder: nothing to install".into(),
        );
        set(
            &mut st,
            types::RECONCILING,
            Status::False,
            reasons::STABLE,
            String::new(),
        );
        set(
            &mut st,
            types::DEGRADED,
            Status::False,
            reasons::RECOVERED,
            String::new(),
        );
        set(
            &mut st,
            types::BLOCKED,
            Status::False,
            reasons::UNBLOCKED,
            String::new(),
        );
        st.helm_release_ref = None;
        st.last_applied_chart = None;
        st.endpoints.clear();
        write_status(ai, ns, &old, st, ctx).await?;
        return Ok(Action::requeue(ctx.config.resync));
    }

    // Managed mode.
    let missing = ctx
        .missing(&[HELM_RELEASE, HELM_REPOSITORY, OCI_REPOSITORY])
        .await?;
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(Kind::describe).collect();
        let msg = format!("Flux is not installed: {} not served", names.join(", "));
        block(&mut st, reasons::MISSING_DEPENDENCIES, msg);
        write_status(ai, ns, &old, st, ctx).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    if let Some(msg) = missing_values(ai, ns, ctx).await? {
        block(&mut st, reasons::WAITING_FOR_SECRET, msg);
        write_status(ai, ns, &old, st, ctx).await?;
        return Ok(Action::requeue(WAITING_FOR_VALUES_REQUEUE));
    }
    let Some(desired) = flux::desired(ai) else {
        // Validation passed, so this means no uid yet: wait for the next event.
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let source_api = Api::<DynamicObject>::namespaced_with(
        ctx.client.clone(),
        ns,
        &desired.source_kind.api_resource(),
    );
    let hr_api =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &HELM_RELEASE.api_resource());
    let source_name = desired.source.name_any();
    let hr_name = desired.release.name_any();
    let uid = ai.uid().unwrap_or_default();
    let hash = desired_hash(&desired);
    // Unchanged desired objects whose generations are still the ones we
    // applied need no write: read them (much cheaper than an apply).
    let cached = ctx.applied(&uid).filter(|a| a.hash == hash);
    let unchanged = match cached {
        Some(a) => {
            let source = source_api.get_opt(&source_name).await?;
            let hr = hr_api.get_opt(&hr_name).await?;
            match (source, hr) {
                (Some(s), Some(h))
                    if s.metadata.generation == a.source_generation
                        && h.metadata.generation == a.release_generation =>
                {
                    Some((s, h))
                }
                _ => None,
            }
        }
        None => None,
    };
    let (source, hr) = match unchanged {
        Some(pair) => pair,
        None => {
            let pp = PatchParams::apply(FIELD_MANAGER).force();
            let source = if desired.shared_source {
                ensure_shared_source(&source_api, &desired.source, ns, ctx).await?
            } else {
                let written = source_api
                    .patch(&source_name, &pp, &Patch::Apply(&desired.source))
                    .await?;
                ctx.own_writes.record(&written.metadata);
                written
            };
            // The source used before a sourceType or URL change.
            if let (Some(before), Some(now)) =
                (old.last_applied_chart.as_ref(), ai.spec.chart.as_ref())
                && (before.source_type != now.source_type || before.url != now.url)
            {
                release_previous_source(ai, ns, ctx, before, &source_name).await?;
            }
            let hr = hr_api
                .patch(&hr_name, &pp, &Patch::Apply(&desired.release))
                .await?;
            ctx.own_writes.record(&hr.metadata);
            ctx.remember_applied(
                uid,
                super::Applied {
                    hash,
                    source_generation: source.metadata.generation,
                    release_generation: hr.metadata.generation,
                },
            );
            (source, hr)
        }
    };

    let view = status::ReleaseView::from_object(hr.metadata.generation, &hr.data);
    let source_conditions = status::flux_conditions(&source.data["status"]);
    for c in status::map(
        Some(&view),
        &source_conditions,
        generation,
        &conditions::now(),
    ) {
        conditions::set_condition(&mut st.conditions, c);
    }
    set(
        &mut st,
        types::BLOCKED,
        Status::False,
        reasons::UNBLOCKED,
        String::new(),
    );
    st.helm_release_ref = Some(HelmReleaseRef {
        name: hr_name,
        namespace: ns.to_string(),
    });
    st.last_applied_chart = ai.spec.chart.clone();
    write_status(ai, ns, &old, st, ctx).await?;
    Ok(Action::requeue(ctx.config.resync))
}

/// Checks that the values Secret or ConfigMap and its key exist. The message
/// names only the object and key, never content.
async fn missing_values(
    ai: &ApplicationInstance,
    ns: &str,
    ctx: &Context,
) -> Result<Option<String>, Error> {
    let Some(values) = ai.spec.values.as_ref() else {
        return Ok(None);
    };
    match values.source {
        ValuesSource::Inline => Ok(None),
        ValuesSource::SecretRef => {
            let Some(r) = values.secret_ref.as_ref() else {
                return Ok(None);
            };
            let secret = Api::<Secret>::namespaced(ctx.client.clone(), ns)
                .get_opt(&r.name)
                .await?;
            let has_key = secret.as_ref().is_some_and(|s| {
                s.data.as_ref().is_some_and(|d| d.contains_key(&r.key))
                    || s.string_data
                        .as_ref()
                        .is_some_and(|d| d.contains_key(&r.key))
            });
            Ok(match (secret.is_some(), has_key) {
                (false, _) => Some(format!("waiting for Secret {} (key {})", r.name, r.key)),
                (true, false) => Some(format!("Secret {} has no key {}", r.name, r.key)),
                _ => None,
            })
        }
        ValuesSource::ConfigMapRef => {
            let Some(r) = values.config_map_ref.as_ref() else {
                return Ok(None);
            };
            let cm = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_opt(&r.name)
                .await?;
            let has_key = cm
                .as_ref()
                .is_some_and(|c| c.data.as_ref().is_some_and(|d| d.contains_key(&r.key)));
            Ok(match (cm.is_some(), has_key) {
                (false, _) => Some(format!("waiting for ConfigMap {} (key {})", r.name, r.key)),
                (true, false) => Some(format!("ConfigMap {} has no key {}", r.name, r.key)),
                _ => None,
            })
        }
    }
}

/// On deletion: deletes the HelmRelease (helm-controller uninstalls it) and
/// reports Deleting=True/WaitingForChildResources until it is gone.
async fn wait_for_children(
    ai: &ApplicationInstance,
    ns: &str,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    let name = ai
        .status
        .as_ref()
        .and_then(|s| s.helm_release_ref.as_ref().map(|r| r.name.clone()))
        .or_else(|| ai.spec.release.as_ref().map(|r| r.name.clone()));
    let Some(name) = name else { return Ok(None) };
    if !ctx.is_served(HELM_RELEASE).await? {
        return Ok(None);
    }
    let hr_api =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &HELM_RELEASE.api_resource());
    let Some(hr) = hr_api.get_opt(&name).await? else {
        for kind in [HELM_REPOSITORY, OCI_REPOSITORY] {
            delete_ignoring_missing(ctx, ns, kind, &flux::source_name(&name)).await?;
        }
        if let Some(shared) = flux::shared_source_of(ai) {
            release_shared_source(ai, ns, ctx, &shared).await?;
        }
        return Ok(None);
    };
    // Only our own release: never delete a HelmRelease another owner holds.
    let ours = hr
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == ai.metadata.uid.as_ref());
    if !ours {
        return Ok(None);
    }
    if hr.metadata.deletion_timestamp.is_none() {
        info!(helmrelease = %name, "Deleting HelmRelease");
        match hr_api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let old = ai.status.clone().unwrap_or_default();
    let mut st = old.clone();
    conditions::set_condition(
        &mut st.conditions,
        conditions::deleting(
            Status::True,
            reasons::WAITING_FOR_CHILD_RESOURCES,
            format!("waiting for HelmRelease {name} to be uninstalled and deleted"),
            ai.metadata.generation,
        ),
    );
    write_status(ai, ns, &old, st, ctx).await?;
    Ok(Some(Action::requeue(DELETING_REQUEUE)))
}

/// Fingerprint of the desired Flux objects.
fn desired_hash(d: &flux::FluxObjects) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&d.source)
        .unwrap_or_default()
        .hash(&mut h);
    serde_json::to_string(&d.release)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}
