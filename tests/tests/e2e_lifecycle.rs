//! End to end with real processes: hub-sim and the `vworkspace-agent` binary
//! against the real kube-apiserver, controller manager and Flux (the test
//! chart `hello` from a local Helm repository); Velero is stood in for by
//! `vworkspace_e2e::standins` (it needs pods). One application goes through
//! its whole life (enroll, deploy, upgrade, back up, restore, roll back,
//! delete) and every step's conditions must arrive at hub-sim.

use std::time::Duration;

use serde_json::{Value, json};
use vworkspace_e2e::e2e::{self, world::World};
use vworkspace_e2e::wait::eventually;

use e2e::{helm_release_resource, velero_resource};

const STEP: Duration = Duration::from_secs(90);

fn chart_version(hr: &Value) -> String {
    hr["spec"]["chart"]["spec"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_lives_its_whole_life_through_the_hub() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let w = World::start("e2e-life")
        .await
        .expect("starting hub-sim and the agent");
    let ns = w.app_ns.clone();
    let hub = w.hub.admin().clone();

    // Enroll: Connected at the hub (World::start waited) and on the Cluster object.
    // (the agent writes the Cluster status just after the hub sees the tunnel).
    eventually("vworkspace-agent status to say Connected", STEP, || async {
        let status = w.agent.settings().status().map_err(|e| e.to_string())?;
        status
            .lines()
            .any(|l| l.starts_with("Phase:") && l.trim_end().ends_with("Connected"))
            .then_some(())
            .ok_or(status)
    })
    .await;
    let clusters = w.hub.cli(&["get", "clusters"]).unwrap();
    assert!(
        clusters.contains(&w.cluster) && clusters.contains("yes"),
        "{clusters}"
    );

    // Deploy.
    let v1 = e2e::apply(&hub, &w.cluster, &w.app_manifest("nc", "0.1.0", 1))
        .await
        .unwrap();
    assert_eq!(v1["version"], 1);
    let o = w
        .at_hub(
            "ApplicationInstance",
            "nc",
            "v1 applied and Ready",
            STEP,
            |o| o["last_outcome"] == "applied" && e2e::hub_ready(o),
        )
        .await;
    assert_eq!(o["version"], 1);
    let hr = w
        .get_json(&helm_release_resource(), &ns, "nc")
        .await
        .expect("the HelmRelease exists");
    assert_eq!(chart_version(&hr), "0.1.0");
    let ai = e2e::cluster_object(&w.client, "ApplicationInstance", &ns, "nc")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e2e::applied_version(&ai), Some(1));

    // Upgrade: a new version of the intent.
    e2e::apply(&hub, &w.cluster, &w.app_manifest("nc", "0.2.0", 2))
        .await
        .unwrap();
    let gen_now = |o: &Value| o["status"]["generation"].as_i64().unwrap_or(0);
    let o = w
        .at_hub(
            "ApplicationInstance",
            "nc",
            "v2 applied and Ready at generation 2",
            STEP,
            |o| {
                o["version"] == 2
                    && o["last_outcome"] == "applied"
                    && e2e::hub_ready(o)
                    && gen_now(o) >= 2
            },
        )
        .await;
    eventually("the HelmRelease to carry chart 0.2.0", STEP, || async {
        let hr = w
            .get_json(&helm_release_resource(), &ns, "nc")
            .await
            .ok_or("no HelmRelease")?;
        (chart_version(&hr) == "0.2.0")
            .then_some(())
            .ok_or(chart_version(&hr))
    })
    .await;
    let ai = e2e::cluster_object(&w.client, "ApplicationInstance", &ns, "nc")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e2e::applied_version(&ai), Some(2));
    assert_eq!(
        Some(gen_now(&o)),
        ai.metadata.generation,
        "hub status is for the live generation"
    );

    // Back up.
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(
            &ns,
            "backup-1",
            "nc",
            "Backup",
            "velero",
            json!({"retention": "72h"}),
        ),
    )
    .await
    .unwrap();
    let o = w
        .at_hub(
            "Operation",
            "backup-1",
            "Succeeded",
            STEP,
            e2e::hub_succeeded,
        )
        .await;
    let backup_name = format!("{ns}-backup-1");
    assert_eq!(
        o["status"]["outputs"]["backupName"],
        backup_name.as_str(),
        "{o}"
    );
    let b = w
        .get_json(
            &velero_resource("Backup"),
            e2e::VELERO_NAMESPACE,
            &backup_name,
        )
        .await
        .expect("the Velero Backup exists");
    assert_eq!(b["status"]["phase"], "Completed");
    assert_eq!(b["spec"]["includedNamespaces"], json!([ns]));

    // Restore from that backup.
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(
            &ns,
            "restore-1",
            "nc",
            "Restore",
            "velero",
            json!({"backupName": backup_name}),
        ),
    )
    .await
    .unwrap();
    w.at_hub(
        "Operation",
        "restore-1",
        "Succeeded",
        STEP,
        e2e::hub_succeeded,
    )
    .await;
    let r = w
        .get_json(
            &velero_resource("Restore"),
            e2e::VELERO_NAMESPACE,
            &format!("{ns}-restore-1"),
        )
        .await
        .expect("the Velero Restore exists");
    assert_eq!(r["spec"]["backupName"], backup_name.as_str());

    // Roll back to the previous chart.
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(&ns, "rollback-1", "nc", "Rollback", "helm", json!({})),
    )
    .await
    .unwrap();
    w.at_hub(
        "Operation",
        "rollback-1",
        "Succeeded",
        STEP,
        e2e::hub_succeeded,
    )
    .await;
    // The rollback rewrites the instance's spec; the intent's version record
    // (the replay guard) and the labels the status stream selects by must stay.
    let ai = e2e::cluster_object(&w.client, "ApplicationInstance", &ns, "nc")
        .await
        .unwrap()
        .expect("the instance survives its rollback");
    assert_eq!(
        (
            e2e::applied_version(&ai),
            ai.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.vworkspace.io/managed-by"))
                .cloned()
        ),
        (Some(2), Some("control-plane".to_owned())),
        "after the Rollback the instance lost the agent's applied-intent annotation or managed-by label: {:?} {:?}",
        ai.metadata.annotations,
        ai.metadata.labels
    );
    eventually("the HelmRelease back on chart 0.1.0", STEP, || async {
        let hr = w
            .get_json(&helm_release_resource(), &ns, "nc")
            .await
            .ok_or("no HelmRelease")?;
        (chart_version(&hr) == "0.1.0")
            .then_some(())
            .ok_or(chart_version(&hr))
    })
    .await;
    w.at_hub(
        "ApplicationInstance",
        "nc",
        "Ready after the rollback",
        STEP,
        e2e::hub_ready,
    )
    .await;

    // Delete: an explicit intent; the agent's finalizer removes the HelmRelease first.
    e2e::delete(&hub, &w.cluster, "ApplicationInstance", &ns, "nc")
        .await
        .unwrap();
    w.at_hub("ApplicationInstance", "nc", "deletion applied", STEP, |o| {
        o["deleted"] == true && o["last_outcome"] == "applied"
    })
    .await;
    eventually(
        "the ApplicationInstance and its HelmRelease to be gone",
        STEP,
        || async {
            let ai = e2e::cluster_object(&w.client, "ApplicationInstance", &ns, "nc")
                .await
                .map_err(|e| e.to_string())?;
            let hr = w.get_json(&helm_release_resource(), &ns, "nc").await;
            match (ai, hr) {
                (None, None) => Ok(()),
                (ai, hr) => Err(format!(
                    "instance present: {}, HelmRelease present: {}",
                    ai.is_some(),
                    hr.is_some()
                )),
            }
        },
    )
    .await;

    // Every intent acked once, nothing lost or applied twice, hub status = cluster status.
    let report = eventually("the hub and the cluster to agree", STEP, || async {
        let r = e2e::delivery_report(&w.client, &hub, &w.cluster, &w.agent_log())
            .await
            .map_err(|e| e.to_string())?;
        if r.problems.is_empty() {
            Ok(r)
        } else {
            Err(r.problems.join("; "))
        }
    })
    .await;
    println!(
        "lifecycle: intents sent {}, lost {}, duplicated {}",
        report.sent, report.lost, report.duplicated
    );
    assert_eq!((report.sent, report.lost, report.duplicated), (6, 0, 0));
    let intents = e2e::intents(&hub, &w.cluster).await.unwrap();
    assert!(
        intents.iter().all(|i| i["outcome"] == "applied"),
        "{intents:#?}"
    );
    let leaks = w.secret_leaks();
    assert!(leaks.is_empty(), "{leaks:?}");
}
