//! Test stand-ins for third-party controllers that cannot run here.
//!
//! Each exists because the real program needs what this machine lacks: a
//! kubelet to run pods (VolSync movers, Argo steps, Job pods) or a CSI driver
//! with real volumes (snapshots). Flux, Helm and the controller manager's
//! garbage collector and namespace controller do run here, for real
//! ([`crate::upstream`]); no stand-in replaces them. The Velero server runs
//! for real too where a test starts it ([`crate::upstream::velero`]); once it
//! runs in the process, `StandInVelero` leaves Backups and Restores alone.
//!
//! [`run_all`] starts one small controller per kind. Each moves an object's
//! status the way the real controller does, and nothing else:
//!
//! | stand-in | stands in for | moves |
//! | --- | --- | --- |
//! | `StandInVelero` | Velero server (only where [`crate::upstream::velero`] is not started) | Backup / Restore `status.phase` |
//! | `StandInSnapshotter` | CSI external-snapshotter | VolumeSnapshot `readyToUse` / `error` |
//! | `StandInVolSync` | VolSync | ReplicationSource manual sync result |
//! | `StandInArgo` | Argo workflow-controller | Workflow `phase`, `shutdown` |
//! | `StandInJobController` | kube-controller-manager's Job controller | Job conditions, counts, suspend |
//!
//! The outcome is picked per object by [`Scenario`]: the annotation
//! [`SCENARIO_ANNOTATION`] on the object, else on the namespace the object is
//! about (for Velero objects, their first `includedNamespaces` entry; the
//! per-kind key `standin.vworkspace.io/scenario-<kind>` wins), else
//! [`StandInConfig::default_scenario`]. Tests and the demo set it per namespace.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{Controller, controller::Action, watcher},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Annotation (on an object or a namespace) that picks the [`Scenario`].
pub const SCENARIO_ANNOTATION: &str = "standin.vworkspace.io/scenario";

/// How a stand-in finishes the objects it handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Finish successfully at once (after one in-progress step).
    Success,
    /// Finish with the engine's failure.
    Failure,
    /// Velero PartiallyFailed; other kinds treat it as success.
    PartialFailure,
    /// Stay in progress for [`StandInConfig::slow_delay`], then succeed.
    Slow,
    /// Stay in progress forever (for cancel and timeout tests).
    Hang,
}

// === impl Scenario ===

impl Scenario {
    /// Parses `success`, `failure`, `partial-failure`, `slow`, `hang`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "success" | "succeed" => Some(Self::Success),
            "failure" | "fail" => Some(Self::Failure),
            "partial-failure" | "partialfailure" | "partial" => Some(Self::PartialFailure),
            "slow" => Some(Self::Slow),
            "hang" => Some(Self::Hang),
            _ => None,
        }
    }

    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::PartialFailure => "partial-failure",
            Self::Slow => "slow",
            Self::Hang => "hang",
        }
    }
}

/// Options of the stand-ins.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// Scenario when nothing is annotated.
    pub default_scenario: Scenario,
    /// How long [`Scenario::Slow`] stays in progress.
    pub slow_delay: Duration,
}

impl Default for StandInConfig {
    fn default() -> Self {
        Self {
            default_scenario: Scenario::Success,
            slow_delay: Duration::from_secs(3),
        }
    }
}

/// The kinds the stand-ins handle: (group, version, kind, plural, status subresource).
const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("velero.io", "v1", "Backup", "backups", false),
    ("velero.io", "v1", "Restore", "restores", false),
    (
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
        true,
    ),
    (
        "volsync.backube",
        "v1alpha1",
        "ReplicationSource",
        "replicationsources",
        true,
    ),
    ("argoproj.io", "v1alpha1", "Workflow", "workflows", false),
    ("batch", "v1", "Job", "jobs", true),
];

const MANAGER: &str = "vworkspace-standins";

fn pp() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    }
}

struct Ctx {
    client: Client,
    config: StandInConfig,
    kind: &'static str,
    ar: ApiResource,
    status_subresource: bool,
    /// First time each (uid, generation) was seen, for Slow.
    seen: Mutex<HashMap<(String, i64), Instant>>,
}

#[derive(Debug, thiserror::Error)]
#[error("stand-in: {0}")]
struct StandInError(#[from] kube::Error);

/// Starts every stand-in whose CRD is installed; runs until aborted.
pub fn run_all(client: Client, config: StandInConfig) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut runs = Vec::new();
        for (group, version, kind, plural, status_subresource) in KINDS {
            let gv = if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            };
            let served = client
                .list_api_group_resources(&gv)
                .await
                .map(|l| l.resources.iter().any(|r| r.name == *plural))
                .unwrap_or(false);
            if !served {
                info!(kind, "Stand-in skipped: CRD not installed");
                continue;
            }
            let ar = ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(group, version, kind),
                plural,
            );
            let ctx = Arc::new(Ctx {
                client: client.clone(),
                config: config.clone(),
                kind,
                ar: ar.clone(),
                status_subresource: *status_subresource,
                seen: Mutex::new(HashMap::new()),
            });
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            runs.push(
                Controller::new_with(api, watcher::Config::default(), ar)
                    .run(reconcile, error_policy, ctx)
                    .for_each(|r| {
                        if let Err(e) = r {
                            debug!(error = %e, "Stand-in reconcile error");
                        }
                        futures::future::ready(())
                    }),
            );
        }
        futures::future::join_all(runs).await;
    })
}

fn error_policy(_o: Arc<DynamicObject>, e: &StandInError, _c: Arc<Ctx>) -> Action {
    warn!(error = %e, "Stand-in write failed");
    Action::requeue(Duration::from_millis(500))
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, StandInError> {
    if matches!(ctx.kind, "Backup" | "Restore") && crate::upstream::velero::running() {
        // The real Velero server runs in this process: it owns these objects.
        return Ok(Action::await_change());
    }
    let ns = obj.namespace().unwrap_or_default();
    let scenario = scenario(&obj, &ctx).await?;
    let key = (
        obj.uid().unwrap_or_default(),
        obj.metadata.generation.unwrap_or(0),
    );
    let waited = {
        let mut seen = ctx.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.entry(key).or_insert_with(Instant::now).elapsed()
    };
    // Slow: finish only after the delay; Hang: never.
    let done = match scenario {
        Scenario::Hang => false,
        Scenario::Slow => waited >= ctx.config.slow_delay,
        _ => true,
    };
    let outcome = if scenario == Scenario::Slow {
        Scenario::Success
    } else {
        scenario
    };
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ns, &ctx.ar);
    let next = match ctx.kind {
        "Backup" | "Restore" => velero(&obj, ctx.kind, outcome, done),
        "VolumeSnapshot" => snapshot(&obj, outcome, done),
        "ReplicationSource" => replication_source(&obj, outcome, done),
        "Workflow" => workflow(&obj, outcome, done),
        "Job" => job(&obj, outcome, done),
        _ => None,
    };
    if let Some(status) = next {
        write_status(&api, &obj, &ctx, status).await?;
    }
    Ok(requeue_for_slow(scenario, waited, &ctx))
}

fn requeue_for_slow(scenario: Scenario, waited: Duration, ctx: &Ctx) -> Action {
    if scenario == Scenario::Slow && waited < ctx.config.slow_delay {
        Action::requeue(ctx.config.slow_delay - waited + Duration::from_millis(50))
    } else {
        Action::await_change()
    }
}

async fn scenario(obj: &DynamicObject, ctx: &Ctx) -> Result<Scenario, kube::Error> {
    if let Some(s) = obj
        .annotations()
        .get(SCENARIO_ANNOTATION)
        .and_then(|s| Scenario::parse(s))
    {
        return Ok(s);
    }
    let subject = if ctx.kind == "Backup" || ctx.kind == "Restore" {
        obj.data["spec"]["includedNamespaces"][0]
            .as_str()
            .map(str::to_string)
            .or_else(|| obj.namespace())
    } else {
        obj.namespace()
    };
    if let Some(ns) = subject
        && let Some(n) = Api::<Namespace>::all(ctx.client.clone())
            .get_opt(&ns)
            .await?
    {
        let a = n.annotations();
        let per_kind = format!("{SCENARIO_ANNOTATION}-{}", ctx.kind.to_ascii_lowercase());
        if let Some(s) = a
            .get(&per_kind)
            .or_else(|| a.get(SCENARIO_ANNOTATION))
            .and_then(|s| Scenario::parse(s))
        {
            return Ok(s);
        }
    }
    Ok(ctx.config.default_scenario)
}

fn now() -> String {
    let t = jiff::Timestamp::now();
    jiff::Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

async fn write_status(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    ctx: &Ctx,
    status: Value,
) -> Result<(), kube::Error> {
    if obj.data.get("status") == Some(&status) {
        return Ok(());
    }
    let body = json!({ "status": status });
    let name = obj.name_any();
    if ctx.status_subresource {
        api.patch_status(&name, &pp(), &Patch::Merge(&body)).await?;
    } else {
        api.patch(&name, &pp(), &Patch::Merge(&body)).await?;
    }
    debug!(kind = ctx.kind, %name, "Stand-in moved status");
    Ok(())
}

fn merged(obj: &DynamicObject, patch: Value) -> Value {
    let mut st = obj.data.get("status").cloned().unwrap_or_else(|| json!({}));
    if let (Some(m), Value::Object(p)) = (st.as_object_mut(), patch) {
        for (k, v) in p {
            m.insert(k, v);
        }
    }
    st
}

// --- StandInVelero: Backup and Restore phases.
fn velero(obj: &DynamicObject, kind: &str, outcome: Scenario, done: bool) -> Option<Value> {
    let phase = obj.data["status"]["phase"].as_str().unwrap_or_default();
    if matches!(
        phase,
        "Completed" | "PartiallyFailed" | "Failed" | "FailedValidation"
    ) {
        return None;
    }
    let items = if kind == "Backup" {
        "itemsBackedUp"
    } else {
        "itemsRestored"
    };
    if phase != "InProgress" {
        return Some(merged(
            obj,
            json!({"phase": "InProgress", "startTimestamp": now(), "progress": {"totalItems": 12, items: 0}}),
        ));
    }
    if !done {
        return None;
    }
    Some(merged(
        obj,
        match outcome {
            Scenario::Failure => {
                json!({"phase": "Failed", "completionTimestamp": now(), "failureReason": "stand-in: backup storage location default is unavailable"})
            }
            Scenario::PartialFailure => {
                json!({"phase": "PartiallyFailed", "completionTimestamp": now(), "errors": 2, "warnings": 1, "progress": {"totalItems": 12, items: 10}})
            }
            _ => {
                json!({"phase": "Completed", "completionTimestamp": now(), "warnings": 0, "errors": 0, "progress": {"totalItems": 12, items: 12}})
            }
        },
    ))
}

// --- StandInSnapshotter: VolumeSnapshot readiness.
fn snapshot(obj: &DynamicObject, outcome: Scenario, done: bool) -> Option<Value> {
    let st = &obj.data["status"];
    if st["readyToUse"].as_bool() == Some(true) || st["error"].is_object() {
        return None;
    }
    if !done {
        return (st.get("readyToUse").is_none()).then(|| json!({"readyToUse": false}));
    }
    Some(match outcome {
        Scenario::Failure => {
            json!({"readyToUse": false, "error": {"message": "stand-in: the CSI driver failed to cut the snapshot", "time": now()}})
        }
        _ => json!({
            "readyToUse": true,
            "boundVolumeSnapshotContentName": format!("snapcontent-{}", obj.uid().unwrap_or_default()),
            "creationTime": now(),
            "restoreSize": "1Gi",
        }),
    })
}

// --- StandInVolSync: one manual sync.
fn replication_source(obj: &DynamicObject, outcome: Scenario, done: bool) -> Option<Value> {
    let trigger = obj.data["spec"]["trigger"]["manual"].as_str()?.to_string();
    let st = &obj.data["status"];
    if st["lastManualSync"].as_str() == Some(trigger.as_str())
        || st["latestMoverStatus"]["result"] == "Failed"
    {
        return None;
    }
    if st["lastSyncStartTime"].is_null() {
        return Some(merged(obj, json!({"lastSyncStartTime": now()})));
    }
    if !done {
        return None;
    }
    Some(merged(
        obj,
        match outcome {
            Scenario::Failure => {
                json!({"latestMoverStatus": {"result": "Failed", "logs": "stand-in: restic repository is locked"}})
            }
            _ => {
                json!({"lastManualSync": trigger, "lastSyncTime": now(), "lastSyncDuration": "2s", "latestMoverStatus": {"result": "Successful", "logs": "stand-in: snapshot saved"}})
            }
        },
    ))
}

// --- StandInArgo: Workflow phase and shutdown.
fn workflow(obj: &DynamicObject, outcome: Scenario, done: bool) -> Option<Value> {
    let phase = obj.data["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed" | "Error") {
        return None;
    }
    if obj.data["spec"]["shutdown"].is_string() {
        return Some(merged(
            obj,
            json!({"phase": "Failed", "finishedAt": now(), "message": "Stopped with strategy 'Terminate'"}),
        ));
    }
    if phase != "Running" {
        return Some(merged(
            obj,
            json!({"phase": "Running", "startedAt": now(), "message": ""}),
        ));
    }
    if !done {
        return None;
    }
    Some(merged(
        obj,
        match outcome {
            Scenario::Failure => {
                json!({"phase": "Failed", "finishedAt": now(), "message": "child 'step-2' failed"})
            }
            _ => json!({"phase": "Succeeded", "finishedAt": now(), "message": ""}),
        },
    ))
}

// --- StandInJobController: Job conditions the way the Job controller writes them.
fn job(obj: &DynamicObject, outcome: Scenario, done: bool) -> Option<Value> {
    let st = &obj.data["status"];
    let has = |t: &str| {
        st["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
    };
    if has("Complete") || has("Failed") {
        return None;
    }
    let cond = |t: &str, reason: &str, message: &str| json!({"type": t, "status": "True", "reason": reason, "message": message, "lastProbeTime": now(), "lastTransitionTime": now()});
    if obj.data["spec"]["suspend"] == true {
        if has("Suspended") {
            return None;
        }
        return Some(json!({
            "startTime": st["startTime"].clone(),
            "active": 0,
            "ready": 0,
            "conditions": [cond("Suspended", "JobSuspended", "Job suspended")],
        }));
    }
    if st["startTime"].is_null() {
        return Some(
            json!({"startTime": now(), "active": 1, "ready": 1, "terminating": 0, "uncountedTerminatedPods": {}}),
        );
    }
    if !done {
        return None;
    }
    Some(match outcome {
        Scenario::Failure => json!({
            "startTime": st["startTime"].clone(),
            "active": 0, "ready": 0, "failed": 1, "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                cond("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            ],
        }),
        _ => json!({
            "startTime": st["startTime"].clone(),
            "completionTime": now(),
            "active": 0, "ready": 0, "succeeded": 1, "terminating": 0,
            "uncountedTerminatedPods": {},
            "conditions": [
                cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                cond("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ],
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(data: Value) -> DynamicObject {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("velero.io", "v1", "Backup"),
            "backups",
        );
        let mut o = DynamicObject::new("x", &ar).within("ns");
        o.data = data;
        o
    }

    #[test]
    fn scenario_names_round_trip() {
        for s in [
            Scenario::Success,
            Scenario::Failure,
            Scenario::PartialFailure,
            Scenario::Slow,
            Scenario::Hang,
        ] {
            assert_eq!(Scenario::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scenario::parse("nonsense"), None);
    }

    #[test]
    fn velero_moves_through_in_progress_to_the_scenario_phase() {
        let first = velero(&obj(json!({})), "Backup", Scenario::Success, true).unwrap();
        assert_eq!(first["phase"], "InProgress");
        for (s, want) in [
            (Scenario::Success, "Completed"),
            (Scenario::Failure, "Failed"),
            (Scenario::PartialFailure, "PartiallyFailed"),
        ] {
            let next = velero(&obj(json!({"status": first.clone()})), "Backup", s, true).unwrap();
            assert_eq!(next["phase"], want);
        }
        assert!(
            velero(
                &obj(json!({"status": first})),
                "Backup",
                Scenario::Hang,
                false
            )
            .is_none()
        );
    }

    #[test]
    fn job_finishes_with_the_conditions_kubernetes_requires() {
        let start = job(&obj(json!({"spec": {}})), Scenario::Success, true).unwrap();
        assert_eq!(start["active"], 1);
        let done = job(
            &obj(json!({"spec": {}, "status": start.clone()})),
            Scenario::Success,
            true,
        )
        .unwrap();
        assert_eq!(done["conditions"][1]["type"], "Complete");
        let failed = job(
            &obj(json!({"spec": {}, "status": start})),
            Scenario::Failure,
            true,
        )
        .unwrap();
        assert_eq!(failed["conditions"][1]["type"], "Failed");
    }
}
