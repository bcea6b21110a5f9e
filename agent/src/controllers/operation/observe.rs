//! A Running Operation: the timeout, then the engine's reading of its
//! workload mapped onto the Operation's conditions.

use std::time::Duration;

use kube::runtime::controller::Action;
use vworkspace_crds::{
    Operation, OperationPhase,
    conditions::{Status, reasons, types},
};

use super::engines::{self, OpInfo, Outcome, io::Workload};
use super::status::Writer;
use super::timeout_of;
use crate::controllers::{Context, Error};

pub(super) async fn observe(
    op: &Operation,
    info: &OpInfo,
    ctx: &Context,
    mut w: Writer,
) -> Result<Action, Error> {
    let timeout = timeout_of(op, ctx);
    let started = w.st.started_at.as_ref().map_or(0, |t| t.0.as_second());
    let elapsed = (k8s_openapi::jiff::Timestamp::now().as_second() - started).max(0) as u64;
    if elapsed >= timeout.as_secs() {
        engines::driver(info.engine)
            .stop(op, info, ctx, true)
            .await?;
        return w
            .fail(
                ctx,
                info,
                reasons::TIMED_OUT,
                format!("did not finish within {}s", timeout.as_secs()),
            )
            .await;
    }
    let engine = engines::driver(info.engine);
    let at = Workload::of(op, info);
    let Some(obs) = engine.read(op, info, &at, ctx).await? else {
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
            engine.keep_for_logs(info, ctx).await?;
            w.fail(ctx, info, reason, message).await
        }
    }
}
