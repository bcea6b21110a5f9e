//! Test stand-ins for third-party controllers that cannot run here.
//!
//! Each exists because the real program needs what this machine lacks: a
//! kubelet to run pods (VolSync movers, Argo steps, Job pods) or a CSI driver
//! with real volumes (snapshots).
//! Flux, Helm and the controller manager's garbage collector, namespace and
//! Job controllers do run here, for real ([`crate::upstream`]); no stand-in
//! replaces them. For Jobs the stand-in therefore plays only the kubelet's
//! part: it ends the Job's Pods, and the real Job controller counts them and
//! writes the Job's status (two writers of Job status would fight). The
//! Velero server runs for real too where a test starts it
//! ([`crate::upstream::velero`]); once it runs in the process,
//! `StandInVelero` leaves Backups and Restores alone.
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
//! | `StandInKubelet` | the kubelet, for Pods of Jobs | Pod `phase` Succeeded / Failed with the container's exit |
//!
//! The outcome is picked per object by [`Scenario`]: the annotation
//! [`SCENARIO_ANNOTATION`] on the object (for a Pod, also on its Job), else on
//! the namespace the object is about (for Velero objects, their first
//! `includedNamespaces` entry; the per-kind key
//! `standin.vworkspace.io/scenario-<kind>` wins, and Pods of Jobs use
//! `scenario-job`), else [`StandInConfig::default_scenario`]. Tests and the
//! demo set it per namespace. Job Pods are only ended where a Job controller
//! runs ([`crate::upstream`]); without one, nothing writes the Job's status.

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
    /// Stay in progress forever (for cancel and timeout tests); a Job's Pod
    /// stays Pending, which the Job controller counts as active.
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
    ("", "v1", "Pod", "pods", true),
];

/// The label the Job controller puts on its Pods; the kubelet stand-in
/// handles only Pods that carry it.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";

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
            let resources = if group.is_empty() {
                client.list_core_api_resources(version).await
            } else {
                client.list_api_group_resources(&gv).await
            };
            let served = resources
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
            let watch = if *kind == "Pod" {
                watcher::Config::default().labels(JOB_NAME_LABEL)
            } else {
                watcher::Config::default()
            };
            runs.push(
                Controller::new_with(api, watch, ar)
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
        "Pod" => job_pod(&obj, outcome, done),
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
    // A Job Pod: the Job's annotation, then the namespace's `scenario-job`.
    let kind = if ctx.kind == "Pod" { "Job" } else { ctx.kind };
    if ctx.kind == "Pod"
        && let (Some(ns), Some(job)) = (obj.namespace(), obj.labels().get(JOB_NAME_LABEL))
        && let Some(j) =
            Api::<k8s_openapi::api::batch::v1::Job>::namespaced(ctx.client.clone(), &ns)
                .get_opt(job)
                .await?
        && let Some(s) = j
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
        let per_kind = format!("{SCENARIO_ANNOTATION}-{}", kind.to_ascii_lowercase());
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

// --- StandInKubelet: a Job's Pod ends the way the kubelet reports it. The
// Pod stays Pending until then (no node runs it); the real Job controller
// counts it active, then succeeded or failed, and writes the Job's status.
fn job_pod(obj: &DynamicObject, outcome: Scenario, done: bool) -> Option<Value> {
    let st = &obj.data["status"];
    let phase = st["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") || obj.metadata.deletion_timestamp.is_some() || !done
    {
        return None;
    }
    let (phase, exit_code, reason) = match outcome {
        Scenario::Failure => ("Failed", 1, "Error"),
        _ => ("Succeeded", 0, "Completed"),
    };
    let at = now();
    let containers: Vec<Value> = obj.data["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "name": c["name"],
                        "image": c["image"],
                        "imageID": "",
                        "ready": false,
                        "started": false,
                        "restartCount": 0,
                        "state": {"terminated": {
                            "exitCode": exit_code,
                            "reason": reason,
                            "startedAt": at,
                            "finishedAt": at,
                        }},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(merged(
        obj,
        json!({
            "phase": phase,
            "startTime": st["startTime"].as_str().map_or_else(|| json!(at), |t| json!(t)),
            "containerStatuses": containers,
        }),
    ))
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
    fn job_pods_end_with_the_scenario_phase_and_exit_code() {
        let pod = obj(json!({"spec": {"containers": [{"name": "runner", "image": "busybox"}]}}));
        let ok = job_pod(&pod, Scenario::Success, true).unwrap();
        assert_eq!(ok["phase"], "Succeeded");
        assert_eq!(
            ok["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            0
        );
        let failed = job_pod(&pod, Scenario::Failure, true).unwrap();
        assert_eq!(failed["phase"], "Failed");
        assert_eq!(
            failed["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            1
        );
        assert!(job_pod(&pod, Scenario::Hang, false).is_none());
        let ended = obj(json!({"status": ok}));
        assert!(job_pod(&ended, Scenario::Failure, true).is_none());
    }
}
