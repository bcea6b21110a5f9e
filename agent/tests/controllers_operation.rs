//! Operation controller against the real API server with the real upstream
//! CRDs (Velero, CSI snapshots, VolSync, Argo, Flux) and batch/v1 Jobs. Flux
//! (source- and helm-controller) and kube-controller-manager's Job controller
//! run for real; what needs a kubelet or a CSI driver (Velero, snapshots,
//! VolSync, Argo, and the end of a Job's Pod) is stood in for by
//! `vworkspace_e2e::standins`.

mod controllers_support;

use controllers_support::*;
use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ConfigMap, PersistentVolumeClaim, ServiceAccount},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use vworkspace_agent::controllers::approval::{Claim, sign_claim};
use vworkspace_crds::{ApplicationInstance, Operation, OperationStatus};

fn st(o: &Operation) -> OperationStatus {
    o.status.clone().unwrap_or_default()
}

fn backups(client: &kube::Client) -> Api<kube::api::DynamicObject> {
    dyn_api(client, VELERO_NS, "velero.io", "v1", "Backup", "backups")
}

async fn cancel(client: &kube::Client, ns: &str, name: &str) {
    Api::<Operation>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"ops.vworkspace.io/cancel": "true"}}}),
            ),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn velero_backup_succeeds_with_a_labelled_backup_in_the_velero_namespace() {
    let OpCase { client, ns } = OpCase::new("op-backup", &[]).await;
    let op = create_op(
        &client,
        &ns,
        "b1",
        op_spec("t", "Backup", "velero", json!({"retention": "72h"})),
    )
    .await;
    let done = wait_phase(
        &client,
        &ns,
        "b1",
        "Succeeded",
        "Succeeded",
        "VeleroBackupCompleted",
    )
    .await;
    let s = st(&done);
    assert!(s.started_at.is_some() && s.finished_at.is_some());
    assert!(cond_is(
        &s.conditions,
        "Accepted",
        "True",
        "AdmissionPassed"
    ));
    assert!(cond_is(&s.conditions, "Running", "False", ""));
    let name = format!("{ns}-b1");
    let eref = s.engine_ref.unwrap();
    assert_eq!(
        (
            eref.kind.as_deref(),
            eref.name.as_deref(),
            eref.namespace.as_deref()
        ),
        (Some("Backup"), Some(name.as_str()), Some(VELERO_NS))
    );
    assert_eq!(s.outputs.unwrap()["backupName"], json!(name));
    let b = backups(&client).get(&name).await.unwrap();
    assert_eq!(b.labels()["ops.vworkspace.io/operation"], op.uid().unwrap());
    assert_eq!(b.data["spec"]["includedNamespaces"], json!([ns]));
    assert_eq!(b.data["spec"]["ttl"], "72h");
    assert!(b.owner_references().is_empty());
    // Transitions are published as Events on the Operation.
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns);
    vworkspace_e2e::wait::eventually("a VeleroBackupCompleted event", WAIT, || {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let reasons: Vec<String> = list
                .items
                .iter()
                .filter(|e| e.involved_object.name.as_deref() == Some("b1"))
                .filter_map(|e| e.reason.clone())
                .collect();
            if reasons.iter().any(|r| r == "VeleroBackupCompleted") {
                Ok(())
            } else {
                Err(format!("{reasons:?}"))
            }
        }
    })
    .await;
}

#[tokio::test]
async fn velero_partial_failure_succeeds_with_warnings_in_outputs() {
    let OpCase { client, ns } =
        OpCase::new("op-partial", &[(Some("Backup"), "partial-failure")]).await;
    create_op(
        &client,
        &ns,
        "b1",
        op_spec("t", "Backup", "velero", json!({})),
    )
    .await;
    let done = wait_phase(
        &client,
        &ns,
        "b1",
        "Succeeded",
        "Succeeded",
        "VeleroBackupCompleted",
    )
    .await;
    let out = st(&done).outputs.unwrap();
    assert_eq!(out["partiallyFailed"], "true");
    assert!(
        out["warnings"][0].as_str().unwrap().contains("2 errors"),
        "{out:?}"
    );
}

#[tokio::test]
async fn velero_failure_fails_the_operation_with_velero_s_reason() {
    let OpCase { client, ns } = OpCase::new("op-vfail", &[(Some("Backup"), "failure")]).await;
    create_op(
        &client,
        &ns,
        "b1",
        op_spec("t", "Backup", "velero", json!({})),
    )
    .await;
    let done = wait_phase(&client, &ns, "b1", "Failed", "Failed", "EngineFailed").await;
    let failed = st(&done)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap();
    assert!(
        failed.message.contains("backup storage location"),
        "{}",
        failed.message
    );
}

#[tokio::test]
async fn velero_restore_succeeds_and_a_restore_without_backup_name_fails_validation() {
    let OpCase { client, ns } = OpCase::new("op-restore", &[]).await;
    create_op(
        &client,
        &ns,
        "r1",
        op_spec(
            "t",
            "Restore",
            "velero",
            json!({"backupName": "some-backup", "restorePVs": true}),
        ),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "r1",
        "Succeeded",
        "Succeeded",
        "EngineCompleted",
    )
    .await;
    let r = dyn_api(&client, VELERO_NS, "velero.io", "v1", "Restore", "restores")
        .get(&format!("{ns}-r1"))
        .await
        .unwrap();
    assert_eq!(r.data["spec"]["backupName"], "some-backup");

    create_op(
        &client,
        &ns,
        "r2",
        op_spec("t", "Restore", "velero", json!({})),
    )
    .await;
    let bad = wait_phase(&client, &ns, "r2", "Failed", "Failed", "ValidationFailed").await;
    assert!(cond_is(
        &st(&bad).conditions,
        "Accepted",
        "False",
        "ValidationFailed"
    ));
}

#[tokio::test]
async fn deleting_an_operation_never_deletes_its_velero_backup() {
    let OpCase { client, ns } = OpCase::new("op-keep", &[]).await;
    create_op(
        &client,
        &ns,
        "b1",
        op_spec("t", "Backup", "velero", json!({})),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "b1",
        "Succeeded",
        "Succeeded",
        "VeleroBackupCompleted",
    )
    .await;
    let ops = Api::<Operation>::namespaced(client.clone(), &ns);
    ops.delete("b1", &DeleteParams::default()).await.unwrap();
    vworkspace_e2e::wait::eventually("operation deleted", WAIT, || {
        let ops = ops.clone();
        async move {
            match ops.get_opt("b1").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".into()),
            }
        }
    })
    .await;
    let b = backups(&client).get_opt(&format!("{ns}-b1")).await.unwrap();
    assert!(b.is_some_and(|b| b.metadata.deletion_timestamp.is_none()));
}

#[tokio::test]
async fn job_runs_as_the_runner_service_account_and_succeeds() {
    let OpCase { client, ns } = OpCase::new("op-job", &[]).await;
    let op = create_op(
        &client,
        &ns,
        "j1",
        op_spec(
            "t",
            "RunCommand",
            "job",
            json!({"image": "busybox:1.37", "command": ["sh", "-c", "echo hi"]}),
        ),
    )
    .await;
    let done = wait_phase(&client, &ns, "j1", "Succeeded", "Succeeded", "JobSucceeded").await;
    assert_eq!(st(&done).outputs.unwrap()["jobName"], "j1");
    let logs = st(&done).logs_ref.unwrap();
    assert_eq!(
        (logs.kind.as_deref(), logs.name.as_deref()),
        (Some("Job"), Some("j1"))
    );
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get("j1")
        .await
        .unwrap();
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("vworkspace-operation-runner")
    );
    assert_eq!(
        job.labels()["ops.vworkspace.io/operation"],
        op.uid().unwrap()
    );
    assert_eq!(job.owner_references()[0].uid, op.uid().unwrap());
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("vworkspace-operation-runner")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_job_fails_the_operation_and_is_kept_for_its_logs() {
    let OpCase { client, ns } = OpCase::new("op-jobfail", &[(Some("Job"), "failure")]).await;
    create_op(
        &client,
        &ns,
        "j1",
        op_spec("t", "RunCommand", "job", json!({"image": "busybox:1.37"})),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "j1",
        "Failed",
        "Failed",
        "JobFailedBackoffExceeded",
    )
    .await;
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    vworkspace_e2e::wait::eventually("the failed Job loses its owner reference", WAIT, || {
        let jobs = jobs.clone();
        async move {
            let j = jobs.get("j1").await.map_err(|e| e.to_string())?;
            if j.owner_references().is_empty() {
                Ok(())
            } else {
                Err("still owned".into())
            }
        }
    })
    .await;
    Api::<Operation>::namespaced(client.clone(), &ns)
        .delete("j1", &DeleteParams::default())
        .await
        .unwrap();
    assert!(jobs.get_opt("j1").await.unwrap().is_some());
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let OpCase { client, ns } = OpCase::new("op-cancel", &[(Some("Job"), "hang")]).await;
    create_op(
        &client,
        &ns,
        "j1",
        op_spec("t", "RunCommand", "job", json!({"image": "busybox:1.37"})),
    )
    .await;
    wait_op(&client, &ns, "j1", "Running=True/JobPodActive", |o| {
        cond_is(&st(o).conditions, "Running", "True", "JobPodActive")
    })
    .await;
    cancel(&client, &ns, "j1").await;
    let done = wait_phase(
        &client,
        &ns,
        "j1",
        "Cancelled",
        "Cancelled",
        "UserCancelled",
    )
    .await;
    assert!(st(&done).finished_at.is_some());
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get("j1")
        .await
        .unwrap();
    assert_eq!(job.spec.unwrap().suspend, Some(true));
}

#[tokio::test]
async fn an_operation_that_runs_too_long_times_out() {
    let OpCase { client, ns } = OpCase::new("op-timeout", &[(Some("Job"), "hang")]).await;
    let mut spec = op_spec("t", "RunCommand", "job", json!({"image": "busybox:1.37"}));
    spec["timeoutSeconds"] = json!(2);
    create_op(&client, &ns, "j1", spec).await;
    wait_phase(&client, &ns, "j1", "Failed", "Failed", "TimedOut").await;
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get("j1")
        .await
        .unwrap();
    assert_eq!(job.spec.unwrap().suspend, Some(true));
}

#[tokio::test]
async fn a_workload_deleted_from_outside_fails_the_operation() {
    let OpCase { client, ns } = OpCase::new("op-extdel", &[(Some("Job"), "hang")]).await;
    create_op(
        &client,
        &ns,
        "j1",
        op_spec("t", "RunCommand", "job", json!({"image": "busybox:1.37"})),
    )
    .await;
    wait_op(&client, &ns, "j1", "Running", |o| {
        cond_is(&st(o).conditions, "Running", "True", "JobPodActive")
    })
    .await;
    Api::<Job>::namespaced(client.clone(), &ns)
        .delete("j1", &DeleteParams::background())
        .await
        .unwrap();
    let done = wait_phase(&client, &ns, "j1", "Failed", "Failed", "ExternalDeletion").await;
    let msg = st(&done)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap()
        .message;
    assert!(msg.contains("deleted outside the agent"), "{msg}");
}

async fn ready_release(client: &kube::Client, ns: &str) {
    create_app(client, ns, "nc", helm_spec("nc", ns, "0.1.0")).await;
    wait_app(client, ns, "nc", "Ready", |a| {
        cond_is(
            &a.status.clone().unwrap_or_default().conditions,
            "Ready",
            "True",
            "HelmReleaseReady",
        )
    })
    .await;
}

/// Upgrade to 0.2.0 and roll back, both really done by helm-controller: the
/// ConfigMap 0.2.0 adds appears with the upgrade and goes with the roll-back.
#[tokio::test]
async fn helm_upgrade_changes_the_instance_version_and_waits_for_the_release() {
    let (client, ns) = env("op-upgrade").await;
    ready_release(&client, &ns).await;
    create_op(
        &client,
        &ns,
        "up",
        op_spec("nc", "Upgrade", "helm", json!({"targetVersion": "0.2.0"})),
    )
    .await;
    let done = wait_phase(
        &client,
        &ns,
        "up",
        "Succeeded",
        "Succeeded",
        "EngineCompleted",
    )
    .await;
    let out = st(&done).outputs.unwrap();
    assert_eq!(
        (
            out["chartVersion"].as_str(),
            out["previousVersion"].as_str()
        ),
        (Some("0.2.0"), Some("0.1.0"))
    );
    let ai = Api::<ApplicationInstance>::namespaced(client.clone(), &ns)
        .get("nc")
        .await
        .unwrap();
    assert_eq!(ai.spec.chart.unwrap().version, "0.2.0");
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    assert_eq!(hr.data["status"]["history"][0]["chartVersion"], "0.2.0");
    assert_eq!(hr.data["status"]["history"][0]["status"], "deployed");
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    assert_eq!(
        release_config_map(&client, &ns, "nc")
            .await
            .unwrap()
            .data
            .unwrap()["chartVersion"],
        "0.2.0"
    );
    assert!(cms.get_opt("nc-hello-feature").await.unwrap().is_some());

    // Rollback without a version goes back to the previous deployed one.
    create_op(
        &client,
        &ns,
        "rb",
        op_spec("nc", "Rollback", "helm", json!({})),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "rb",
        "Succeeded",
        "Succeeded",
        "EngineCompleted",
    )
    .await;
    let ai = Api::<ApplicationInstance>::namespaced(client.clone(), &ns)
        .get("nc")
        .await
        .unwrap();
    assert_eq!(ai.spec.chart.unwrap().version, "0.1.0");
    assert_eq!(
        release_config_map(&client, &ns, "nc")
            .await
            .unwrap()
            .data
            .unwrap()["chartVersion"],
        "0.1.0"
    );
    assert!(
        cms.get_opt("nc-hello-feature").await.unwrap().is_none(),
        "Helm removes what 0.2.0 added"
    );
}

/// The upgrade to 0.2.0 fails for real (`block_feature_config_map`);
/// helm-controller rolls back to 0.1.0 as the agent's remediation asks, and
/// the Operation fails saying so.
#[tokio::test]
async fn a_failed_helm_upgrade_fails_the_operation() {
    let (client, ns) = env("op-upfail").await;
    ready_release(&client, &ns).await;
    block_feature_config_map(&client, &ns, "nc").await;
    create_op(
        &client,
        &ns,
        "up",
        op_spec("nc", "Upgrade", "helm", json!({"targetVersion": "0.2.0"})),
    )
    .await;
    let o = wait_phase(&client, &ns, "up", "Failed", "Failed", "RolledBack").await;
    let msg = st(&o)
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap()
        .message;
    assert!(
        msg.contains("rolled HelmRelease nc back") && msg.contains("0.2.0"),
        "{msg}"
    );
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    assert_eq!(
        flux_condition(&hr, "Remediated")["reason"],
        "RollbackSucceeded"
    );
    assert!(
        flux_condition(&hr, "Released")["message"]
            .as_str()
            .is_some_and(|m| m.contains("immutable")),
        "{hr:?}"
    );
    unhold_config_map(&client, &ns, "nc-hello-feature").await;
}

#[tokio::test]
async fn conflicting_operations_wait_and_start_when_the_conflict_clears() {
    let OpCase { client, ns } = OpCase::new("op-conflict", &[(Some("Backup"), "hang")]).await;
    create_op(
        &client,
        &ns,
        "backup",
        op_spec("t", "Backup", "velero", json!({})),
    )
    .await;
    wait_op(&client, &ns, "backup", "Running", |o| {
        st(o).phase.map(|p| p.as_str()) == Some("Running")
    })
    .await;
    create_op(
        &client,
        &ns,
        "restore-a",
        op_spec("t", "Restore", "velero", json!({"backupName": "x"})),
    )
    .await;
    create_op(
        &client,
        &ns,
        "restore-b",
        op_spec("t", "Restore", "velero", json!({"backupName": "y"})),
    )
    .await;
    for name in ["restore-a", "restore-b"] {
        let o = wait_phase(
            &client,
            &ns,
            name,
            "Pending",
            "Blocked",
            "ConflictingOperation",
        )
        .await;
        let msg = st(&o)
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Blocked")
            .unwrap()
            .message;
        assert!(msg.contains("Backup backup"), "{msg}");
    }
    // Blocked operations block nobody: a RunCommand runs meanwhile.
    create_op(
        &client,
        &ns,
        "cmd",
        op_spec("t", "RunCommand", "job", json!({"image": "busybox:1.37"})),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "cmd",
        "Succeeded",
        "Succeeded",
        "JobSucceeded",
    )
    .await;
    // The backup ends; both restores run, one after the other, without deadlock.
    cancel(&client, &ns, "backup").await;
    wait_phase(
        &client,
        &ns,
        "backup",
        "Cancelled",
        "Cancelled",
        "UserCancelled",
    )
    .await;
    for name in ["restore-a", "restore-b"] {
        let o = wait_phase(
            &client,
            &ns,
            name,
            "Succeeded",
            "Succeeded",
            "EngineCompleted",
        )
        .await;
        assert!(cond_is(&st(&o).conditions, "Blocked", "False", "Unblocked"));
    }
    let ops = Api::<Operation>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let (a, b) = (
        ops.items
            .iter()
            .find(|o| o.name_any() == "restore-a")
            .unwrap(),
        ops.items
            .iter()
            .find(|o| o.name_any() == "restore-b")
            .unwrap(),
    );
    let (sa, fa) = (st(a).started_at.unwrap().0, st(a).finished_at.unwrap().0);
    let (sb, fb) = (st(b).started_at.unwrap().0, st(b).finished_at.unwrap().0);
    assert!(fa <= sb || fb <= sa, "the two restores overlapped");
}

#[tokio::test]
async fn an_operation_requiring_approval_waits_for_a_valid_claim() {
    let OpCase { client, ns } = OpCase::new("op-approval", &[]).await;
    let mut spec = op_spec("t", "Backup", "velero", json!({}));
    spec["approvals"] = json!({"required": true});
    create_op(&client, &ns, "b1", spec).await;
    let o = wait_phase(&client, &ns, "b1", "Pending", "Blocked", "AwaitingApproval").await;
    assert!(
        st(&o)
            .conditions
            .iter()
            .any(|c| c.message == "approval claim required")
    );

    let claim = |secret: &[u8], op: &str| {
        sign_claim(
            secret,
            &Claim {
                at: "2026-11-27T03:00:00Z".into(),
                by: "jane@example.com".into(),
                exp: k8s_openapi::jiff::Timestamp::now().as_second() + 3600,
                op: op.into(),
                rid: 7,
                v: 1,
            },
        )
    };
    let ops = Api::<Operation>::namespaced(client.clone(), &ns);
    let set_claim = |c: String| {
        let ops = ops.clone();
        async move {
            ops.patch(
                "b1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"approvals": {"claim": c}}})),
            )
            .await
            .unwrap();
        }
    };
    set_claim(claim(b"wrong-secret", "b1")).await;
    wait_op(&client, &ns, "b1", "Blocked with a signature error", |o| {
        st(o).conditions.iter().any(|c| {
            c.type_ == "Blocked"
                && c.reason == "AwaitingApproval"
                && c.message.contains("signature does not match")
        })
    })
    .await;
    set_claim(claim(APPROVAL_SECRET, "another-op")).await;
    wait_op(&client, &ns, "b1", "Blocked for another operation", |o| {
        st(o)
            .conditions
            .iter()
            .any(|c| c.type_ == "Blocked" && c.message.contains("another-op"))
    })
    .await;
    set_claim(claim(APPROVAL_SECRET, "b1")).await;
    wait_phase(
        &client,
        &ns,
        "b1",
        "Succeeded",
        "Succeeded",
        "VeleroBackupCompleted",
    )
    .await;
}

#[tokio::test]
async fn finished_operations_beyond_the_history_limit_are_deleted() {
    let OpCase { client, ns } = OpCase::new("op-history", &[]).await;
    ready_placeholder(&client, &ns, "other").await;
    create_op(
        &client,
        &ns,
        "other-1",
        op_spec(
            "other",
            "RunCommand",
            "job",
            json!({"image": "busybox:1.37"}),
        ),
    )
    .await;
    for i in 0..HISTORY_LIMIT + 2 {
        let name = format!("run-{i}");
        create_op(
            &client,
            &ns,
            &name,
            op_spec("t", "RunCommand", "job", json!({"image": "busybox:1.37"})),
        )
        .await;
        wait_phase(
            &client,
            &ns,
            &name,
            "Succeeded",
            "Succeeded",
            "JobSucceeded",
        )
        .await;
    }
    let ops = Api::<Operation>::namespaced(client.clone(), &ns);
    let target = |o: &Operation, t: &str| {
        o.spec.target_ref.name == t && o.metadata.deletion_timestamp.is_none()
    };
    let kept = vworkspace_e2e::wait::eventually("history trimmed to the limit", WAIT, || {
        let ops = ops.clone();
        async move {
            let list = ops
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = list
                .items
                .iter()
                .filter(|o| target(o, "t"))
                .map(|o| o.name_any())
                .collect();
            if names.len() == HISTORY_LIMIT {
                Ok(names)
            } else {
                Err(format!("{names:?}"))
            }
        }
    })
    .await;
    let mut kept = kept;
    kept.sort();
    assert_eq!(kept, vec!["run-2", "run-3", "run-4"]);
    // Another target's history is separate.
    assert!(ops.get_opt("other-1").await.unwrap().is_some());
}

#[tokio::test]
async fn snapshot_engine_snapshots_every_pvc_of_the_release() {
    let (client, ns) = env("op-snap").await;
    let mut spec = placeholder_spec();
    spec["release"] = json!({"name": "db", "namespace": ns});
    create_app(&client, &ns, "t", spec).await;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    for name in ["data-db-0", "data-db-1"] {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/instance": "db"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap();
        pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    }
    create_op(
        &client,
        &ns,
        "s1",
        op_spec(
            "t",
            "Backup",
            "snapshot",
            json!({"volumeSnapshotClassName": "csi"}),
        ),
    )
    .await;
    let done = wait_phase(
        &client,
        &ns,
        "s1",
        "Succeeded",
        "Succeeded",
        "SnapshotReady",
    )
    .await;
    let out = st(&done).outputs.unwrap();
    assert_eq!(out["volumeSnapshotNames"].as_array().unwrap().len(), 2);
    let snaps = dyn_api(
        &client,
        &ns,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    )
    .list(&ListParams::default())
    .await
    .unwrap();
    assert_eq!(snaps.items.len(), 2);
    assert!(snaps.items.iter().all(|s| s.owner_references().is_empty()));

    // A target without PVCs fails with SourcePvcNotFound.
    ready_placeholder(&client, &ns, "empty").await;
    create_op(
        &client,
        &ns,
        "s2",
        op_spec("empty", "Backup", "snapshot", json!({})),
    )
    .await;
    wait_phase(&client, &ns, "s2", "Failed", "Failed", "SourcePvcNotFound").await;
}

#[tokio::test]
async fn volsync_engine_runs_one_manual_sync() {
    let OpCase { client, ns } = OpCase::new("op-volsync", &[]).await;
    create_op(
        &client,
        &ns,
        "v1",
        op_spec(
            "t",
            "Backup",
            "volsync",
            json!({"pvc": "data", "repository": {"secretName": "restic"}}),
        ),
    )
    .await;
    let done = wait_phase(
        &client,
        &ns,
        "v1",
        "Succeeded",
        "Succeeded",
        "VolSyncLastSyncSucceeded",
    )
    .await;
    assert!(st(&done).outputs.unwrap().contains_key("lastSyncTime"));
    let rs = dyn_api(
        &client,
        &ns,
        "volsync.backube",
        "v1alpha1",
        "ReplicationSource",
        "replicationsources",
    )
    .get("v1")
    .await
    .unwrap();
    assert_eq!(
        rs.data["spec"]["trigger"]["manual"],
        json!(done.uid().unwrap())
    );
}

#[tokio::test]
async fn workflow_engine_succeeds_and_cancel_terminates_the_workflow() {
    let OpCase { client, ns } = OpCase::new("op-wf", &[]).await;
    create_op(
        &client,
        &ns,
        "w1",
        op_spec(
            "t",
            "Runbook",
            "workflow",
            json!({"template": "pg-dump-export"}),
        ),
    )
    .await;
    let done = wait_phase(
        &client,
        &ns,
        "w1",
        "Succeeded",
        "Succeeded",
        "WorkflowSucceeded",
    )
    .await;
    assert_eq!(st(&done).outputs.unwrap()["workflowName"], "w1");

    scenario(&client, &ns, Some("Workflow"), "hang").await;
    create_op(
        &client,
        &ns,
        "w2",
        op_spec(
            "t",
            "Runbook",
            "workflow",
            json!({"template": "pg-dump-export"}),
        ),
    )
    .await;
    wait_op(&client, &ns, "w2", "Running=True/WorkflowInProgress", |o| {
        cond_is(&st(o).conditions, "Running", "True", "WorkflowInProgress")
    })
    .await;
    cancel(&client, &ns, "w2").await;
    wait_phase(
        &client,
        &ns,
        "w2",
        "Cancelled",
        "Cancelled",
        "UserCancelled",
    )
    .await;
    let wf = dyn_api(
        &client,
        &ns,
        "argoproj.io",
        "v1alpha1",
        "Workflow",
        "workflows",
    )
    .get("w2")
    .await
    .unwrap();
    assert_eq!(wf.data["spec"]["shutdown"], "Terminate");
}

#[tokio::test]
async fn workflow_failure_fails_the_operation() {
    let OpCase { client, ns } = OpCase::new("op-wffail", &[(Some("Workflow"), "failure")]).await;
    create_op(
        &client,
        &ns,
        "w1",
        op_spec("t", "Runbook", "workflow", json!({"template": "x"})),
    )
    .await;
    wait_phase(&client, &ns, "w1", "Failed", "Failed", "WorkflowFailed").await;
}

#[tokio::test]
async fn helm_hook_job_runs_the_hook_as_a_labelled_job() {
    let OpCase { client, ns } = OpCase::new("op-hook", &[]).await;
    create_op(
        &client,
        &ns,
        "m1",
        op_spec(
            "t",
            "Migration",
            "helmHookJob",
            json!({"hookName": "db-migrate", "image": "app:1"}),
        ),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "m1",
        "Succeeded",
        "Succeeded",
        "HelmHookJobSucceeded",
    )
    .await;
    let job = Api::<Job>::namespaced(client.clone(), &ns)
        .get("m1")
        .await
        .unwrap();
    assert_eq!(job.labels()["ops.vworkspace.io/hook-name"], "db-migrate");
}

#[tokio::test]
async fn an_engine_that_cannot_run_the_type_fails_validation() {
    let OpCase { client, ns } = OpCase::new("op-mismatch", &[]).await;
    create_op(
        &client,
        &ns,
        "x",
        op_spec("t", "Backup", "job", json!({"image": "i"})),
    )
    .await;
    let o = wait_phase(&client, &ns, "x", "Failed", "Failed", "ValidationFailed").await;
    assert!(
        st(&o)
            .conditions
            .iter()
            .any(|c| c.message.contains("engine job cannot run type Backup"))
    );
}

#[tokio::test]
async fn a_missing_target_blocks_until_it_exists() {
    let (client, ns) = env("op-notarget").await;
    create_op(
        &client,
        &ns,
        "b1",
        op_spec("late", "Backup", "velero", json!({})),
    )
    .await;
    let o = wait_phase(&client, &ns, "b1", "Pending", "Blocked", "TargetNotReady").await;
    assert!(cond_is(
        &st(&o).conditions,
        "Accepted",
        "False",
        "TargetNotFound"
    ));
    ready_placeholder(&client, &ns, "late").await;
    wait_phase(
        &client,
        &ns,
        "b1",
        "Succeeded",
        "Succeeded",
        "VeleroBackupCompleted",
    )
    .await;
}

#[tokio::test]
async fn secret_values_referenced_by_a_job_never_leak() {
    let (client, ns) = env("op-secret").await;
    const VALUE: &str = "job-token-Hh3-keep-quiet-55";
    create_secret(&client, &ns, "db-creds", "password", VALUE).await;
    ready_placeholder(&client, &ns, "t").await;
    create_op(&client, &ns, "j1", op_spec("t", "RunCommand", "job", json!({
        "image": "postgres:17",
        "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "password"}}}],
    })))
    .await;
    wait_phase(&client, &ns, "j1", "Succeeded", "Succeeded", "JobSucceeded").await;
    assert_not_leaked(&client, &ns, VALUE).await;
}

/// Failure of every engine not covered above: (kind to fail, type, engine, params, Failed reason).
#[tokio::test]
async fn every_engine_reports_its_failure() {
    let (client, ns) = env("op-failures").await;
    let mut spec = placeholder_spec();
    spec["release"] = json!({"name": "db", "namespace": ns});
    create_app(&client, &ns, "t", spec).await;
    for kind in ["VolumeSnapshot", "ReplicationSource", "Job"] {
        scenario(&client, &ns, Some(kind), "failure").await;
    }
    let cases = [
        (
            "snap",
            "Backup",
            "snapshot",
            json!({"pvc": "data-db-0"}),
            "EngineFailed",
        ),
        (
            "sync",
            "Backup",
            "volsync",
            json!({"pvc": "data", "repository": "restic"}),
            "EngineFailed",
        ),
        (
            "hook",
            "Migration",
            "helmHookJob",
            json!({"hookName": "migrate", "image": "app:1"}),
            "HelmHookJobFailed",
        ),
    ];
    for (name, type_, engine, params, _) in &cases {
        create_op(
            &client,
            &ns,
            name,
            op_spec("t", type_, engine, params.clone()),
        )
        .await;
    }
    for (name, _, _, _, reason) in &cases {
        let o = wait_phase(&client, &ns, name, "Failed", "Failed", reason).await;
        assert!(cond_is(&st(&o).conditions, "Succeeded", "False", reason));
    }
}

#[tokio::test]
async fn cancel_stops_every_engine_and_keeps_backups() {
    let (client, ns) = env("op-cancels").await;
    let mut spec = placeholder_spec();
    spec["release"] = json!({"name": "db", "namespace": ns});
    create_app(&client, &ns, "t", spec).await;
    for kind in ["Backup", "VolumeSnapshot", "ReplicationSource"] {
        scenario(&client, &ns, Some(kind), "hang").await;
    }
    let cases = [
        ("vb", "Backup", "velero", json!({})),
        ("snap", "Backup", "snapshot", json!({"pvc": "data-db-0"})),
        (
            "sync",
            "Backup",
            "volsync",
            json!({"pvc": "data", "repository": "restic"}),
        ),
    ];
    for (name, type_, engine, params) in &cases {
        create_op(
            &client,
            &ns,
            name,
            op_spec("t", type_, engine, params.clone()),
        )
        .await;
    }
    for (name, _, _, _) in &cases {
        wait_op(&client, &ns, name, "Running", |o| {
            st(o).phase.map(|p| p.as_str()) == Some("Running")
        })
        .await;
        cancel(&client, &ns, name).await;
        wait_phase(
            &client,
            &ns,
            name,
            "Cancelled",
            "Cancelled",
            "UserCancelled",
        )
        .await;
    }
    // Velero cannot stop a backup: it is kept. The unfinished snapshot and the
    // ReplicationSource (its mover) are removed.
    assert!(
        backups(&client)
            .get_opt(&format!("{ns}-vb"))
            .await
            .unwrap()
            .is_some()
    );
    let snaps = dyn_api(
        &client,
        &ns,
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    );
    let sources = dyn_api(
        &client,
        &ns,
        "volsync.backube",
        "v1alpha1",
        "ReplicationSource",
        "replicationsources",
    );
    vworkspace_e2e::wait::eventually("snapshot and ReplicationSource removed", WAIT, || {
        let (snaps, sources) = (snaps.clone(), sources.clone());
        async move {
            let s = snaps
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let r = sources.get_opt("sync").await.map_err(|e| e.to_string())?;
            let gone = |o: &kube::api::DynamicObject| o.metadata.deletion_timestamp.is_some();
            if s.items.iter().all(gone) && r.as_ref().is_none_or(gone) {
                Ok(())
            } else {
                Err("still there".into())
            }
        }
    })
    .await;
}

/// An upgrade to a version the repository does not have never finishes:
/// helm-controller waits for source-controller's chart. Cancel puts the
/// previous version back and helm-controller settles on it.
#[tokio::test]
async fn cancelling_a_helm_upgrade_puts_the_previous_version_back() {
    let (client, ns) = env("op-upcancel").await;
    ready_release(&client, &ns).await;
    create_op(
        &client,
        &ns,
        "up",
        op_spec("nc", "Upgrade", "helm", json!({"targetVersion": "0.3.0"})),
    )
    .await;
    wait_op(&client, &ns, "up", "Running", |o| {
        st(o).phase.map(|p| p.as_str()) == Some("Running")
    })
    .await;
    let apps = Api::<ApplicationInstance>::namespaced(client.clone(), &ns);
    assert_eq!(
        apps.get("nc").await.unwrap().spec.chart.unwrap().version,
        "0.3.0"
    );
    cancel(&client, &ns, "up").await;
    wait_phase(
        &client,
        &ns,
        "up",
        "Cancelled",
        "Cancelled",
        "UserCancelled",
    )
    .await;
    assert_eq!(
        apps.get("nc").await.unwrap().spec.chart.unwrap().version,
        "0.1.0"
    );
    wait_app(&client, &ns, "nc", "Ready again at 0.1.0", |a| {
        cond_is(
            &a.status.clone().unwrap_or_default().conditions,
            "Ready",
            "True",
            "HelmReleaseReady",
        )
    })
    .await;
    assert_eq!(
        release_config_map(&client, &ns, "nc")
            .await
            .unwrap()
            .data
            .unwrap()["chartVersion"],
        "0.1.0"
    );
}
