//! Finished Operations: deleted after `ttlSecondsAfterFinished`, or when
//! they fall beyond the per-target history limit.

use std::time::Duration;

use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::controller::Action,
};
use tracing::info;
use vworkspace_crds::Operation;

use super::engines::OpInfo;
use crate::controllers::{Context, Error};

/// Terminal operations: delete this one after its TTL, and the oldest
/// finished ones of the target beyond the history limit.
pub(super) async fn cleanup(op: &Operation, info: &OpInfo, ctx: &Context) -> Result<Action, Error> {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use vworkspace_crds::{
        Engine, OperationPhase, OperationSpec, OperationStatus, OperationType, TargetRef,
    };

    use super::*;

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
}
