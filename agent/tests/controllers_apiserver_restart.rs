//! The controllers after a kube-apiserver restart (SIGKILL, then the same
//! binary on the same etcd): an Operation and an ApplicationInstance created
//! right after it are reconciled as usual. Its own test binary, because the
//! restart breaks every client of this binary's control plane.
//!
//! Every watch of a controller used to share one backoff, so the ~10 watches
//! that the restart broke at once slept the Operation controller for minutes
//! (found by `tests/soak`, round 3 of seed 20261203); each watch now backs off
//! on its own (`vworkspace_agent::controllers::watches`).

mod controllers_support;

use controllers_support::*;
use serde_json::json;

#[tokio::test]
async fn objects_created_right_after_an_api_server_restart_are_reconciled() {
    let OpCase { client, ns } = OpCase::new("apiserver-restart", &[]).await;
    // Every watch is established: one Operation goes through first.
    create_op(
        &client,
        &ns,
        "before",
        op_spec(TARGET, "Backup", "velero", json!({})),
    )
    .await;
    wait_phase(
        &client,
        &ns,
        "before",
        "Succeeded",
        "Succeeded",
        "VeleroBackupCompleted",
    )
    .await;

    vworkspace_e2e::shared()
        .restart_apiserver()
        .await
        .expect("restarting kube-apiserver");

    create_op(
        &client,
        &ns,
        "after",
        op_spec(TARGET, "Backup", "velero", json!({})),
    )
    .await;
    create_app(&client, &ns, "placeholder-after", placeholder_spec()).await;
    wait_phase(
        &client,
        &ns,
        "after",
        "Succeeded",
        "Succeeded",
        "VeleroBackupCompleted",
    )
    .await;
    wait_app(
        &client,
        &ns,
        "placeholder-after",
        "Ready=True/Placeholder",
        |a| {
            cond_is(
                &a.status.clone().unwrap_or_default().conditions,
                "Ready",
                "True",
                "Placeholder",
            )
        },
    )
    .await;
}
