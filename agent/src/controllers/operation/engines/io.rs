//! Reading and writing engine workloads: the cluster side shared by the
//! engine drivers and by admission.

use k8s_openapi::api::batch::v1::Job;
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use serde_json::json;
use vworkspace_crds::{ApplicationInstance, Operation, well_known::labels};

use super::{ENGINES, OpInfo, driver};
use crate::controllers::{
    Context, Error, FIELD_MANAGER, OPERATIONS_FIELD_MANAGER,
    application::status::ReleaseView,
    resources::{HELM_RELEASE, Kind, WORKFLOW},
};

/// Where a running Operation's workload is: its `status.engineRef`, or the
/// Operation's own name and namespace.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Workload name.
    pub name: String,
    /// Workload namespace.
    pub namespace: String,
}

// === impl Workload ===

impl Workload {
    /// The workload of `op`.
    pub fn of(op: &Operation, info: &OpInfo) -> Self {
        let eref = op
            .status
            .as_ref()
            .and_then(|s| s.engine_ref.clone())
            .unwrap_or_default();
        Self {
            name: eref.name.unwrap_or_else(|| info.name.clone()),
            namespace: eref.namespace.unwrap_or_else(|| info.namespace.clone()),
        }
    }

    /// The workload as `kind`, when it exists and carries this Operation's UID.
    pub async fn get_owned(
        &self,
        ctx: &Context,
        kind: Kind,
        info: &OpInfo,
    ) -> Result<Option<DynamicObject>, Error> {
        let api = Api::<DynamicObject>::namespaced_with(
            ctx.client.clone(),
            &self.namespace,
            &kind.api_resource(),
        );
        Ok(api
            .get_opt(&self.name)
            .await?
            .filter(|o| o.labels().get(labels::OPERATION) == Some(&info.uid)))
    }
}

/// Objects of `kind` in `ns` labelled with the Operation's UID.
pub async fn list_owned(
    ctx: &Context,
    kind: Kind,
    ns: &str,
    info: &OpInfo,
) -> Result<Vec<DynamicObject>, Error> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
    Ok(api
        .list(&ListParams::default().labels(&format!("{}={}", labels::OPERATION, info.uid)))
        .await?
        .items)
}

/// The API of a dynamic workload object, by its `apiVersion` and `kind`.
pub fn dyn_api(ctx: &Context, obj: &DynamicObject) -> Api<DynamicObject> {
    let types = obj.types.clone().unwrap_or_default();
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", &types.api_version));
    // The workload kinds of every engine (see `Driver::watched_kinds`).
    let kind = ENGINES
        .iter()
        .flat_map(|e| driver(*e).watched_kinds())
        .find(|k| k.kind == types.kind && k.group == group && k.version == version)
        .copied()
        .unwrap_or(WORKFLOW);
    Api::namespaced_with(
        ctx.client.clone(),
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        &kind.api_resource(),
    )
}

/// The `kind` of a dynamic object.
pub fn kind_of(obj: &DynamicObject) -> String {
    obj.types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default()
}

/// A Job as a server-side apply body.
pub fn job_body(j: &Job) -> Result<serde_json::Value, Error> {
    let mut body = serde_json::to_value(j)?;
    body["apiVersion"] = json!("batch/v1");
    body["kind"] = json!("Job");
    Ok(body)
}

/// Re-applies a Job that still exists (suspend, orphan); a gone one stays gone.
pub async fn reapply_job(ctx: &Context, info: &OpInfo, j: &Job) -> Result<(), Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let api = Api::<Job>::namespaced(ctx.client.clone(), &info.namespace);
    if api.get_opt(&info.name).await?.is_some() {
        api.patch(&info.name, &pp, &Patch::Apply(job_body(j)?))
            .await?;
    }
    Ok(())
}

/// Re-applies a dynamic workload that still exists; a gone one stays gone.
pub async fn reapply_dynamic(
    ctx: &Context,
    info: &OpInfo,
    obj: &DynamicObject,
) -> Result<(), Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let api = dyn_api(ctx, obj);
    if api.get_opt(&info.name).await?.is_some() {
        api.patch(&info.name, &pp, &Patch::Apply(obj)).await?;
    }
    Ok(())
}

/// Deletes in the background; an object already gone is fine.
pub async fn delete_ignoring_missing(api: &Api<DynamicObject>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The target's HelmRelease, as the application controller reads it.
pub async fn helm_release(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<ReleaseView>, Error> {
    let api =
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &HELM_RELEASE.api_resource());
    Ok(api
        .get_opt(name)
        .await?
        .map(|hr| ReleaseView::from_object(hr.metadata.generation, &hr.data)))
}

/// Writes the target's chart version.
pub async fn apply_target_version(
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
