//! Status writes: one server-side apply per change (timestamps alone are no
//! change), and one Event per write in the common case.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use vworkspace_crds::{
    ApplicationInstance, ApplicationInstanceStatus,
    conditions::{self, types},
};

use super::CONTROLLER;
use crate::controllers::{Context, Error, FIELD_MANAGER};

/// Whether two statuses differ in anything but timestamps.
pub fn status_changed(old: &ApplicationInstanceStatus, new: &ApplicationInstanceStatus) -> bool {
    let strip = |s: &ApplicationInstanceStatus| ApplicationInstanceStatus {
        conditions: Vec::new(),
        last_reconcile_time: None,
        ..s.clone()
    };
    strip(old) != strip(new) || !conditions::eq_ignoring_time(&old.conditions, &new.conditions)
}

/// Sends the status by server-side apply when it changed; stamps
/// lastReconcileTime on each write.
pub(super) async fn write_status(
    ai: &ApplicationInstance,
    ns: &str,
    old: &ApplicationInstanceStatus,
    mut new: ApplicationInstanceStatus,
    ctx: &Context,
) -> Result<(), Error> {
    if !status_changed(old, &new) {
        return Ok(());
    }
    new.last_reconcile_time = Some(conditions::now());
    let body = json!({
        "apiVersion": ApplicationInstance::api_version(&()),
        "kind": ApplicationInstance::kind(&()),
        "status": new,
    });
    let old_conditions = old.conditions.clone();
    let new_conditions = worth_an_event(&old.conditions, &new.conditions);
    let written = Api::<ApplicationInstance>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &ai.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    ctx.own_writes.record(written.meta());
    ctx.metrics.status_write(CONTROLLER);
    ctx.publish_transitions(&ai.object_ref(&()), &old_conditions, &new_conditions)
        .await;
    Ok(())
}

/// The conditions whose transitions get an Event: all but Reconciling when
/// Ready changes in the same write (Ready's Event already tells that news),
/// so a status write costs one Event write in the common case. An instance's
/// first status that only says it is being reconciled (Ready=Unknown) gets
/// no Event for Ready and Reconciling: its creation is no news, and at a
/// thousand new instances those Events would be a fifth of the writes.
fn worth_an_event(old: &[Condition], new: &[Condition]) -> Vec<Condition> {
    let old_ready = conditions::find(old, types::READY);
    let new_ready = conditions::find(new, types::READY);
    let just_started = old_ready.is_none() && new_ready.is_some_and(|n| n.status == "Unknown");
    let ready_changed = new_ready
        .is_some_and(|n| old_ready.is_none_or(|o| o.status != n.status || o.reason != n.reason));
    new.iter()
        .filter(|c| {
            let quiet = if just_started {
                c.type_ == types::READY || c.type_ == types::RECONCILING
            } else {
                ready_changed && c.type_ == types::RECONCILING
            };
            !quiet
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_crds::conditions::{Status, reasons};

    #[test]
    fn one_event_when_ready_changes_with_reconciling() {
        let c = |t: &str, s: Status, r: &str| conditions::new(t, s, r, String::new(), Some(1));
        let new = vec![
            c(types::READY, Status::Unknown, reasons::RECONCILING),
            c(types::RECONCILING, Status::True, reasons::RECONCILING),
            c(types::DEGRADED, Status::True, reasons::RECOVERED),
        ];
        // A first status that says "reconciling": only Degraded's Event.
        let picked: Vec<String> = worth_an_event(&[], &new)
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(picked, [types::DEGRADED]);
        // A first status that says something went wrong gets its Event.
        let failed = c(types::READY, Status::False, reasons::INVALID_SPEC);
        let picked: Vec<String> = worth_an_event(&[], std::slice::from_ref(&failed))
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(picked, [types::READY]);
        // Ready changes: its Event covers Reconciling's.
        let old = vec![c(types::READY, Status::True, reasons::PLACEHOLDER)];
        let picked: Vec<String> = worth_an_event(&old, &new)
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(picked, [types::READY, types::DEGRADED]);
        // Ready unchanged: Reconciling's own transition still gets its Event.
        let old = vec![c(types::READY, Status::Unknown, reasons::RECONCILING)];
        let picked: Vec<String> = worth_an_event(&old, &new)
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(picked, [types::READY, types::RECONCILING, types::DEGRADED]);
    }

    #[test]
    fn status_change_ignores_timestamps() {
        let t1 = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1).unwrap(),
        );
        let t2 = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(2).unwrap(),
        );
        let c = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
            conditions::new_at(
                types::READY,
                Status::True,
                reasons::PLACEHOLDER,
                "",
                Some(1),
                t.clone(),
            )
        };
        let a = ApplicationInstanceStatus {
            conditions: vec![c(&t1)],
            last_reconcile_time: Some(t1.clone()),
            ..Default::default()
        };
        let b = ApplicationInstanceStatus {
            conditions: vec![c(&t2)],
            last_reconcile_time: Some(t2.clone()),
            ..Default::default()
        };
        assert!(!status_changed(&a, &b));
        let mut d = b.clone();
        d.observed_generation = Some(2);
        assert!(status_changed(&a, &d));
    }
}
