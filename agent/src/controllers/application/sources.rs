//! The Flux chart sources an instance does not own alone: the shared
//! HelmRepository (one per repository URL and namespace) and the clean-up of
//! sources left behind by a chart change.

use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams},
};
use tracing::info;
use vworkspace_crds::ApplicationInstance;

use super::flux;
use crate::controllers::{
    Context, Error, FIELD_MANAGER,
    resources::{HELM_REPOSITORY, Kind, OCI_REPOSITORY},
};

/// Returns the shared HelmRepository, writing it only when it is missing or
/// differs: another instance usually wrote it already. It is read from the
/// controller's watch of managed HelmRepositories, and from the API server
/// only when the watch has not seen it (yet). Instances of one URL take turns
/// (a lock per source), so concurrent reconciles do not all race to create it.
pub(super) async fn ensure_shared_source(
    api: &Api<DynamicObject>,
    desired: &DynamicObject,
    ns: &str,
    ctx: &Context,
) -> Result<DynamicObject, Error> {
    let name = desired.name_any();
    let lock = ctx.target_lock(ns, &format!("helmrepository:{name}"));
    let _turn = lock.lock().await;
    let seen = ctx.helm_repositories.get().and_then(|store| {
        store.get(
            &kube::runtime::reflector::ObjectRef::new_with(&name, HELM_REPOSITORY.api_resource())
                .within(ns),
        )
    });
    let existing = match seen {
        Some(o) => Some((*o).clone()),
        None => api.get_opt(&name).await?,
    };
    if let Some(existing) = existing
        && has_fields(&existing.data["spec"], &desired.data["spec"])
        && has_fields(
            &serde_json::to_value(existing.labels()).unwrap_or_default(),
            &serde_json::to_value(desired.labels()).unwrap_or_default(),
        )
    {
        return Ok(existing);
    }
    let written = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    ctx.own_writes.record(&written.metadata);
    Ok(written)
}

/// After a chart change: deletes the per-instance source of the other kind
/// (from a sourceType change) and lets go of a shared HelmRepository no
/// longer used.
pub(super) async fn release_previous_source(
    ai: &ApplicationInstance,
    ns: &str,
    ctx: &Context,
    before: &vworkspace_crds::ChartSource,
    current: &str,
) -> Result<(), Error> {
    let Some(release) = ai.spec.release.as_ref() else {
        return Ok(());
    };
    let now = ai.spec.chart.as_ref().map(|c| c.source_type);
    if now != Some(before.source_type) {
        // Per-instance sources are named after the release, whatever kind.
        let stale_kind = match before.source_type {
            vworkspace_crds::ChartSourceType::Helm => HELM_REPOSITORY,
            vworkspace_crds::ChartSourceType::Oci => OCI_REPOSITORY,
        };
        let own = flux::source_name(&release.name);
        delete_ignoring_missing(ctx, ns, stale_kind, &own).await?;
    }
    if before.source_type == vworkspace_crds::ChartSourceType::Helm {
        let previous = flux::shared_source_name(&before.url);
        if previous != current {
            release_shared_source(ai, ns, ctx, &previous).await?;
        }
    }
    Ok(())
}

/// Deletes the shared HelmRepository `name` unless an instance of the
/// namespace other than `ai` (and not being deleted) still uses it. Should a
/// new user appear at the same moment, the deletion's watch event makes it
/// write the source again.
pub(super) async fn release_shared_source(
    ai: &ApplicationInstance,
    ns: &str,
    ctx: &Context,
    name: &str,
) -> Result<(), Error> {
    let others = Api::<ApplicationInstance>::namespaced(ctx.client.clone(), ns)
        .list(&Default::default())
        .await?;
    let used = others.items.iter().any(|o| {
        o.metadata.uid != ai.metadata.uid
            && o.metadata.deletion_timestamp.is_none()
            && flux::shared_source_of(o).as_deref() == Some(name)
    });
    if used {
        return Ok(());
    }
    info!(helmrepository = %name, "Deleting shared HelmRepository with no users left");
    delete_ignoring_missing(ctx, ns, HELM_REPOSITORY, name).await
}

pub(super) async fn delete_ignoring_missing(
    ctx: &Context,
    ns: &str,
    kind: Kind,
    name: &str,
) -> Result<(), Error> {
    if !ctx.is_served(kind).await? {
        return Ok(());
    }
    match Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &kind.api_resource())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `actual` holds every field of `wanted` with its value (the API
/// server adds defaults, so equality would never hold).
fn has_fields(actual: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    match (actual, wanted) {
        (serde_json::Value::Object(a), serde_json::Value::Object(w)) => w
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| has_fields(av, v))),
        _ => actual == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaulted_fields_do_not_count_as_a_difference() {
        let wanted = json!({"url": "https://c.example", "interval": "10m"});
        let defaulted = json!({"url": "https://c.example", "interval": "10m", "timeout": "60s"});
        assert!(has_fields(&defaulted, &wanted));
        let other = json!({"url": "https://other.example", "interval": "10m"});
        assert!(!has_fields(&other, &wanted));
        assert!(!has_fields(&json!(null), &wanted));
    }
}
