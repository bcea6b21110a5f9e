//! The Operation's status: built from the observed one, written by
//! server-side apply only when it changed (ignoring condition timestamps),
//! with an Event per condition transition.

use std::time::Duration;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;
use vworkspace_crds::{
    Operation, OperationPhase, OperationStatus,
    conditions::{self, Status, reasons, types},
};

use super::CONTROLLER;
use super::engines::OpInfo;
use crate::controllers::{Context, Error, FIELD_MANAGER};

/// Builds the next status from the observed one and sends it when changed.
pub(super) struct Writer {
    reference: k8s_openapi::api::core::v1::ObjectReference,
    name: String,
    namespace: String,
    old: OperationStatus,
    pub(super) st: OperationStatus,
    generation: Option<i64>,
}

impl Writer {
    pub(super) fn new(op: &Operation) -> Self {
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

    pub(super) fn set(&mut self, type_: &str, status: Status, reason: &str, message: String) {
        conditions::set_condition(
            &mut self.st.conditions,
            conditions::new(type_, status, reason, message, self.generation),
        );
    }

    pub(super) async fn block(
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

    pub(super) async fn invalid(
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

    pub(super) async fn fail(
        self,
        ctx: &Context,
        info: &OpInfo,
        reason: &str,
        message: String,
    ) -> Result<Action, Error> {
        self.finish(ctx, info, OperationPhase::Failed, reason, message)
            .await
    }

    pub(super) async fn finish(
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

    pub(super) async fn write(&mut self, ctx: &Context) -> Result<(), Error> {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

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
