//! Backups and restores through the real Velero server: hub-sim and the
//! `vworkspace-agent` binary against the real kube-apiserver, controller
//! manager and Flux, with Velero v1.18 and its AWS plugin writing to an S3
//! store (gofakes3) on 127.0.0.1. Backups are resource-only (no node agent, no
//! volume snapshots). Every step is checked in the cluster, in the bucket and
//! in what the hub received.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use vworkspace_e2e::e2e::{self, world::World};
use vworkspace_e2e::upstream::velero::{self, Velero};
use vworkspace_e2e::wait::eventually;

const STEP: Duration = Duration::from_secs(120);

fn phase_is(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |o: &Value| o["status"]["phase"] == phase
}

fn ready(o: &Value) -> bool {
    e2e::has_condition(
        &o["status"]["conditions"],
        "Ready",
        "True",
        "HelmReleaseReady",
    )
}

fn output(o: &Value, key: &str) -> String {
    o["status"]["outputs"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The round trip as the hub saw it.
struct Timeline {
    start: Instant,
    lines: Vec<String>,
}

impl Timeline {
    fn mark(&mut self, what: &str, detail: &str) {
        let line = format!("{:>7.1?}  {what:<40} {detail}", self.start.elapsed());
        println!("{line}");
        self.lines.push(line);
    }

    fn mark_op(&mut self, what: &str, op: &Value) {
        let phase = op["status"]["phase"].as_str().unwrap_or_default();
        let (kind, (_, reason, message)) = match phase {
            "Succeeded" => ("Succeeded", e2e::hub_condition(op, "Succeeded")),
            "Failed" => ("Failed", e2e::hub_condition(op, "Failed")),
            "Cancelled" => ("Cancelled", e2e::hub_condition(op, "Cancelled")),
            _ => ("Running", e2e::hub_condition(op, "Running")),
        };
        self.mark(
            what,
            &format!(
                "hub: phase {phase} {kind}={reason} {message:.80} outputs {}",
                op["status"]["outputs"]
            ),
        );
    }
}

async fn start() -> (World, &'static Velero) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Before the world: its stand-ins leave Backups and Restores to Velero.
    let velero = tokio::task::spawn_blocking(velero::try_shared)
        .await
        .expect("the Velero start thread")
        .expect("starting Velero and its S3 store");
    let w = World::start("e2e-velero")
        .await
        .expect("starting the upstream controllers, hub-sim and the agent");
    (w, velero)
}

async fn config_map(w: &World, name: &str) -> Option<ConfigMap> {
    kube::Api::<ConfigMap>::namespaced(w.client.clone(), &w.app_ns)
        .get_opt(name)
        .await
        .expect("reading a ConfigMap")
}

async fn secret(w: &World, name: &str) -> Option<Secret> {
    kube::Api::<Secret>::namespaced(w.client.clone(), &w.app_ns)
        .get_opt(name)
        .await
        .expect("reading a Secret")
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// The Velero object behind an Operation, as JSON.
async fn velero_object(w: &World, kind: &str, name: &str) -> Option<Value> {
    w.get_json(&e2e::velero_resource(kind), velero::NAMESPACE, name)
        .await
}

/// Installs the test chart `hello` as `name`, with values from a Secret
/// (greeting and password), and waits until it is Ready at the hub.
async fn install_app(w: &World, name: &str, greeting: &str, password: &str) -> Value {
    let values = format!("{name}-values");
    kube::Api::<Secret>::namespaced(w.client.clone(), &w.app_ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(values.clone()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([(
                    "values.yaml".to_string(),
                    format!("greeting: {greeting}\npassword: {password}\n"),
                )])),
                ..Default::default()
            },
        )
        .await
        .expect("creating the values Secret");
    let mut app = w.app_manifest(name, "0.1.0", 1);
    app["spec"]["values"] =
        json!({"source": "secretRef", "secretRef": {"name": values, "key": "values.yaml"}});
    e2e::apply(w.hub.admin(), &w.cluster, &app).await.unwrap();
    w.at_hub("ApplicationInstance", name, "installed", STEP, ready)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_delete_restore_round_trip_through_the_real_velero() {
    let (w, velero) = start().await;
    let ns = w.app_ns.clone();
    let hub = w.hub.admin().clone();
    let mut t = Timeline {
        start: Instant::now(),
        lines: Vec::new(),
    };

    install_app(&w, "web", "from-before-the-backup", "backed-up-s3cret").await;
    let cm = config_map(&w, "web-hello")
        .await
        .expect("the chart's ConfigMap");
    let cm_data = cm.data.clone().unwrap_or_default();
    assert_eq!(cm_data["greeting"], "from-before-the-backup");
    let sec = secret(&w, "web-hello-credentials")
        .await
        .expect("the chart's Secret");
    assert_eq!(
        secret_value(&sec, "password").as_deref(),
        Some("backed-up-s3cret")
    );
    t.mark(
        "web installed through Flux",
        &format!("ConfigMap web-hello {cm_data:?}"),
    );

    // Backup: resource-only, into the bucket.
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(
            &ns,
            "backup-1",
            "web",
            "Backup",
            "velero",
            json!({"snapshotVolumes": false, "retention": "1h"}),
        ),
    )
    .await
    .unwrap();
    t.mark("backup-1 declared at the hub", "");
    let op = w
        .at_hub(
            "Operation",
            "backup-1",
            "Succeeded",
            STEP,
            phase_is("Succeeded"),
        )
        .await;
    t.mark_op("backup-1 Succeeded", &op);
    assert_eq!(
        e2e::hub_condition(&op, "Succeeded").1,
        "VeleroBackupCompleted",
        "{op}"
    );
    let backup_name = output(&op, "backupName");
    assert_eq!(backup_name, format!("{ns}-backup-1"));
    let count: u64 = output(&op, "backupItemCount")
        .parse()
        .unwrap_or_else(|e| panic!("backupItemCount in the outputs ({e}): {op}"));
    let backup = velero_object(&w, "Backup", &backup_name)
        .await
        .expect("the Velero Backup");
    assert_eq!(backup["status"]["phase"], "Completed", "{backup}");
    assert_eq!(
        backup["status"]["progress"]["itemsBackedUp"].as_u64(),
        Some(count),
        "the hub's count is Velero's: {backup}"
    );
    // ConfigMaps and Secrets of the chart, its values, Helm's record, the
    // HelmRelease, the instance, the Operation, the namespace, ...
    assert!(count >= 6, "only {count} items backed up: {backup}");
    let keys = velero
        .store()
        .list(velero::BUCKET, &format!("backups/{backup_name}/"))
        .await
        .expect("listing the bucket");
    for want in [
        format!("backups/{backup_name}/{backup_name}.tar.gz"),
        format!("backups/{backup_name}/velero-backup.json"),
    ] {
        assert!(keys.contains(&want), "{want} not in the bucket: {keys:?}");
    }
    t.mark(
        "backup-1 in the S3 store",
        &format!(
            "{count} items, {} objects under backups/{backup_name}/",
            keys.len()
        ),
    );

    // Lose the chart's objects.
    for (what, res) in [
        (
            "ConfigMap",
            kube::Api::<ConfigMap>::namespaced(w.client.clone(), &ns)
                .delete("web-hello", &DeleteParams::default())
                .await
                .map(|_| ()),
        ),
        (
            "Secret",
            kube::Api::<Secret>::namespaced(w.client.clone(), &ns)
                .delete("web-hello-credentials", &DeleteParams::default())
                .await
                .map(|_| ()),
        ),
    ] {
        res.unwrap_or_else(|e| panic!("deleting the chart's {what}: {e}"));
    }
    eventually("the chart's ConfigMap and Secret gone", STEP, || async {
        match (
            config_map(&w, "web-hello").await.is_some(),
            secret(&w, "web-hello-credentials").await.is_some(),
        ) {
            (false, false) => Ok(()),
            s => Err(format!("ConfigMap, Secret present: {s:?}")),
        }
    })
    .await;
    t.mark("ConfigMap and Secret deleted", "");

    // Restore them from the backup.
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(
            &ns,
            "restore-1",
            "web",
            "Restore",
            "velero",
            json!({"backupName": backup_name, "includedResources": ["configmaps", "secrets"]}),
        ),
    )
    .await
    .unwrap();
    t.mark("restore-1 declared at the hub", "");
    let op = w
        .at_hub(
            "Operation",
            "restore-1",
            "Succeeded",
            STEP,
            phase_is("Succeeded"),
        )
        .await;
    t.mark_op("restore-1 Succeeded", &op);
    let restore_name = output(&op, "restoreName");
    let restore = velero_object(&w, "Restore", &restore_name)
        .await
        .expect("the Velero Restore");
    assert_eq!(
        restore["status"]["phase"],
        "Completed",
        "{restore}\n{}",
        velero.log_tails(60)
    );
    let cm = config_map(&w, "web-hello")
        .await
        .expect("the ConfigMap is back");
    assert_eq!(cm.data.clone().unwrap_or_default(), cm_data);
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("velero.io/restore-name"),
        Some(&restore_name),
        "restored by Velero: {labels:?}"
    );
    let sec = secret(&w, "web-hello-credentials")
        .await
        .expect("the Secret is back");
    assert_eq!(
        secret_value(&sec, "password").as_deref(),
        Some("backed-up-s3cret")
    );
    t.mark(
        "ConfigMap and Secret back with their data",
        &format!(
            "restored items {}",
            restore["status"]["progress"]["itemsRestored"]
        ),
    );

    println!(
        "hub timeline (backup {backup_name}: {count} items):\n{}",
        t.lines.join("\n")
    );
    let leaks = w.secret_leaks();
    assert!(leaks.is_empty(), "{leaks:?}");
}

/// Resumes a stopped process when dropped, so a failing assertion never
/// leaves the shared Velero frozen.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid this process started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_volumes_are_not_backed_up_and_cancel_leaves_velero_to_finish() {
    let (w, velero) = start().await;
    let ns = w.app_ns.clone();
    let hub = w.hub.admin().clone();
    install_app(&w, "app", "hi", "pw").await;

    // A location whose endpoint refuses connections.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    velero
        .apply_location(
            &w.client,
            "unreachable",
            &format!("http://127.0.0.1:{dead}"),
        )
        .await
        .expect("creating the unreachable location");
    velero
        .wait_location_phase(&w.client, "unreachable", "Unavailable", STEP)
        .await
        .expect("Velero marks the location Unavailable");
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(
            &ns,
            "backup-dead",
            "app",
            "Backup",
            "velero",
            json!({"storageLocation": "unreachable"}),
        ),
    )
    .await
    .unwrap();
    let op = w
        .at_hub(
            "Operation",
            "backup-dead",
            "Failed",
            STEP,
            phase_is("Failed"),
        )
        .await;
    let (status, reason, message) = e2e::hub_condition(&op, "Failed");
    println!("backup-dead at the hub: Failed={status} {reason}: {message}");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "VeleroBackupValidationFailed"),
        "{op}"
    );
    assert!(
        message.contains("BackupStorageLocation unreachable is in Unavailable status"),
        "Velero's reason reaches the hub: {message}"
    );

    // Volume data asked for: Velero backs up resources only here, and the
    // Operation's outputs say so.
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(
            &ns,
            "backup-volumes",
            "app",
            "Backup",
            "velero",
            json!({"snapshotVolumes": true}),
        ),
    )
    .await
    .unwrap();
    let op = w
        .at_hub(
            "Operation",
            "backup-volumes",
            "Succeeded",
            STEP,
            phase_is("Succeeded"),
        )
        .await;
    println!(
        "backup-volumes at the hub: outputs {}",
        op["status"]["outputs"]
    );
    assert_eq!(output(&op, "volumeSnapshotsCompleted"), "0", "{op}");
    assert!(
        op["status"]["outputs"]["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|m| m
                .as_str()
                .is_some_and(|m| m.contains("resources only, no volume data")))),
        "{op}"
    );

    // Cancel while Velero has not finished: freeze the server so the Backup
    // is surely in flight when the cancel arrives.
    let pid = velero.server().pid().expect("Velero runs") as i32;
    // SAFETY: kill(2) with a pid this process started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let resume = Resume(pid);
    let manifest = e2e::op_manifest(&ns, "backup-cancel", "app", "Backup", "velero", json!({}));
    e2e::apply(&hub, &w.cluster, &manifest).await.unwrap();
    let op = w
        .at_hub(
            "Operation",
            "backup-cancel",
            "Running",
            STEP,
            phase_is("Running"),
        )
        .await;
    println!(
        "backup-cancel at the hub: {:?}",
        e2e::hub_condition(&op, "Running")
    );
    let backup_name = format!("{ns}-backup-cancel");
    assert!(
        velero_object(&w, "Backup", &backup_name).await.is_some(),
        "the agent created the Velero Backup"
    );
    // Cancel is the annotation on the Operation in the cluster
    // (`kubectl annotate operation backup-cancel ops.vworkspace.io/cancel=true`).
    kube::Api::<kube::api::DynamicObject>::namespaced_with(
        w.client.clone(),
        &ns,
        &e2e::api_resource("Operation"),
    )
    .patch(
        "backup-cancel",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {"ops.vworkspace.io/cancel": "true"}}}),
        ),
    )
    .await
    .expect("annotating the Operation");
    let op = w
        .at_hub(
            "Operation",
            "backup-cancel",
            "Cancelled",
            STEP,
            phase_is("Cancelled"),
        )
        .await;
    let (_, reason, _) = e2e::hub_condition(&op, "Cancelled");
    assert_eq!(reason, "UserCancelled", "{op}");
    drop(resume);

    // Velero cannot stop a backup: it runs to completion and is kept.
    eventually(
        "the cancelled Backup to complete in Velero",
        STEP,
        || async {
            let b = velero_object(&w, "Backup", &backup_name)
                .await
                .ok_or("the Backup is gone")?;
            if b["status"]["phase"] == "Completed" {
                Ok(())
            } else {
                Err(b["status"].to_string())
            }
        },
    )
    .await;
    let keys = velero
        .store()
        .list(velero::BUCKET, &format!("backups/{backup_name}/"))
        .await
        .expect("listing the bucket");
    assert!(
        keys.contains(&format!("backups/{backup_name}/{backup_name}.tar.gz")),
        "the cancelled backup still landed in the bucket: {keys:?}"
    );
    // A check that something stays: give the agent time to see the Backup it
    // no longer owns complete, then the hub must still say Cancelled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let op = w
        .at_hub("Operation", "backup-cancel", "still Cancelled", STEP, |o| {
            o["status"]["phase"] == "Cancelled"
        })
        .await;
    println!(
        "backup-cancel after Velero finished: phase {} (Velero Backup Completed, {} objects in the bucket)",
        op["status"]["phase"],
        keys.len()
    );
}
