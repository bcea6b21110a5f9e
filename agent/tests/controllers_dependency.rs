//! Engines whose CRD is not installed: this binary's control plane has only
//! our CRDs and Flux, so Velero, Argo, VolSync and CSI snapshots are missing.

mod controllers_support;

use controllers_support::*;
use serde_json::json;

#[tokio::test]
async fn an_engine_whose_crd_is_missing_is_blocked_naming_it() {
    start(Upstream::FluxOnly);
    let (client, ns) = env_started("dep-missing").await;
    ready_placeholder(&client, &ns, "t").await;
    let cases = [
        ("b1", "Backup", "velero", json!({}), "velero.io/v1 Backup"),
        (
            "r1",
            "Restore",
            "velero",
            json!({"backupName": "x"}),
            "velero.io/v1 Restore",
        ),
        (
            "w1",
            "Runbook",
            "workflow",
            json!({"template": "x"}),
            "argoproj.io/v1alpha1 Workflow",
        ),
        (
            "v1",
            "Backup",
            "volsync",
            json!({"pvc": "d", "repository": "r"}),
            "volsync.backube/v1alpha1 ReplicationSource",
        ),
        (
            "s1",
            "Backup",
            "snapshot",
            json!({"pvc": "d"}),
            "snapshot.storage.k8s.io/v1 VolumeSnapshot",
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
    for (name, _, _, _, missing) in &cases {
        let o = wait_phase(
            &client,
            &ns,
            name,
            "Pending",
            "Blocked",
            "DependencyMissing",
        )
        .await;
        let msg = o
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Blocked")
            .unwrap()
            .message;
        assert!(msg.contains(missing), "{name}: {msg}");
    }
    // Engines whose dependencies exist are not held up by the blocked ones.
    create_op(
        &client,
        &ns,
        "j1",
        op_spec("t", "RunCommand", "job", json!({"image": "busybox:1.37"})),
    )
    .await;
    wait_phase(&client, &ns, "j1", "Succeeded", "Succeeded", "JobSucceeded").await;
}
