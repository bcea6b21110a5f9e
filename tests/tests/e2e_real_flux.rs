//! End to end through the real programs: hub-sim and the `vworkspace-agent`
//! binary against the real kube-apiserver, kube-controller-manager and Flux
//! (source-controller + helm-controller), with the test charts served from a
//! local HTTP Helm repository and a local OCI registry. Every step is checked
//! twice: on the chart's own objects in the cluster (what Helm really
//! installed) and in the conditions the hub received.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use serde_json::{Value, json};
use vworkspace_e2e::e2e::{self, helm_release_resource, world::World};
use vworkspace_e2e::wait::eventually;

const STEP: Duration = Duration::from_secs(120);

/// The hub's Ready condition of an object, as `(status, reason, message)`.
fn ready_condition(o: &Value) -> (String, String, String) {
    e2e::hub_condition(o, "Ready")
}

/// Whether the hub has the object as gone from the cluster.
fn gone_at_hub(o: &Value) -> bool {
    o["deleted"] == true
        || o["status"]["deleted"] == true
        || o["status"]["outputs"]["deleted"] == true
}

async fn config_map(w: &World, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
    kube::Api::<ConfigMap>::namespaced(w.client.clone(), ns)
        .get_opt(name)
        .await
        .expect("reading a ConfigMap")
        .map(|c| c.data.unwrap_or_default())
}

async fn secret_value(w: &World, ns: &str, name: &str, key: &str) -> Option<String> {
    let s = kube::Api::<Secret>::namespaced(w.client.clone(), ns)
        .get_opt(name)
        .await
        .expect("reading a Secret")?;
    s.data
        .and_then(|d| d.get(key).cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// Waits until the chart's ConfigMap `name` has `key` = `want`.
async fn config_value(w: &World, ns: &str, name: &str, key: &str, want: &str) {
    eventually(&format!("ConfigMap {name} {key}={want}"), STEP, || async {
        let data = config_map(w, ns, name).await.ok_or("absent")?;
        match data.get(key) {
            Some(v) if v == want => Ok(()),
            other => Err(format!("{key}={other:?}")),
        }
    })
    .await;
}

/// Waits until none of the named ConfigMaps exist.
async fn config_maps_gone(w: &World, ns: &str, names: &[&str]) {
    eventually(&format!("ConfigMaps {names:?} gone"), STEP, || async {
        for n in names {
            if config_map(w, ns, n).await.is_some() {
                return Err(format!("{n} still exists"));
            }
        }
        Ok(())
    })
    .await;
}

fn oci_app(w: &World, name: &str, version: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": w.app_ns},
        "spec": {
            "appRef": {"catalogId": "hello"},
            "mode": "managed",
            "chart": {"sourceType": "oci", "url": w.upstream.charts.oci_url(), "name": "hello", "version": version},
            "release": {"name": name, "namespace": w.app_ns},
            "values": {"source": "secretRef", "secretRef": {"name": secret, "key": "values.yaml"}},
        },
    })
}

fn needs_value_app(w: &World, name: &str, must: Option<&str>) -> Value {
    let inline = match must {
        Some(v) => json!({"must": v}),
        None => json!({}),
    };
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": w.app_ns},
        "spec": {
            "appRef": {"catalogId": "needs-value"},
            "mode": "managed",
            "chart": {"sourceType": "helm", "url": w.upstream.charts.http_url(), "name": "needs-value", "version": "0.1.0"},
            "release": {"name": name, "namespace": w.app_ns},
            "values": {"source": "inline", "inline": inline},
        },
    })
}

/// One line of the timeline printed at the end.
struct Timeline {
    start: Instant,
    lines: Vec<String>,
}

impl Timeline {
    fn mark(&mut self, what: &str, hub: &Value) {
        let (status, reason, message) = ready_condition(hub);
        let line = format!(
            "{:>7.1?}  {what:<34} hub: version {} Ready={status} {reason} {message:.90}",
            self.start.elapsed(),
            hub["version"],
        );
        println!("{line}");
        self.lines.push(line);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_install_upgrade_roll_back_fail_recover_and_uninstall_through_the_real_flux() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let w = World::start("e2e-flux")
        .await
        .expect("starting the upstream controllers, hub-sim and the agent");
    let ns = w.app_ns.clone();
    let hub = w.hub.admin().clone();
    let mut t = Timeline {
        start: Instant::now(),
        lines: Vec::new(),
    };

    // Values for the OCI instance come from a Secret the agent never reads.
    kube::Api::<Secret>::namespaced(w.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("oci-values".into()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([(
                    "values.yaml".to_string(),
                    "greeting: from-a-secret\npassword: s3cret-from-values\n".to_string(),
                )])),
                ..Default::default()
            },
        )
        .await
        .expect("creating the values Secret");

    // Install: one instance from the HTTP repository, one from the OCI registry.
    e2e::apply(&hub, &w.cluster, &w.app_manifest("web", "0.1.0", 2))
        .await
        .unwrap();
    e2e::apply(&hub, &w.cluster, &oci_app(&w, "oci", "0.1.0", "oci-values"))
        .await
        .unwrap();
    let o = w
        .at_hub(
            "ApplicationInstance",
            "web",
            "installed",
            STEP,
            e2e::hub_ready,
        )
        .await;
    t.mark("web installed (HTTP repository)", &o);
    assert!(
        ready_condition(&o).2.contains("install succeeded"),
        "Ready carries helm-controller's message: {o}"
    );
    let o = w
        .at_hub(
            "ApplicationInstance",
            "oci",
            "installed",
            STEP,
            e2e::hub_ready,
        )
        .await;
    t.mark("oci installed (OCI registry)", &o);
    config_value(&w, &ns, "web-hello", "chartVersion", "0.1.0").await;
    config_value(&w, &ns, "web-hello", "replicaCount", "2").await;
    config_value(&w, &ns, "oci-hello", "greeting", "from-a-secret").await;
    assert_eq!(
        secret_value(&w, &ns, "oci-hello-credentials", "password")
            .await
            .as_deref(),
        Some("s3cret-from-values"),
        "the value from the valuesFrom Secret reached the chart's Secret"
    );
    assert!(
        kube::Api::<Secret>::namespaced(w.client.clone(), &ns)
            .get_opt("sh.helm.release.v1.web.v1")
            .await
            .unwrap()
            .is_some(),
        "Helm's own release record exists"
    );

    // Upgrade: the chart version bump is a real Helm upgrade.
    e2e::apply(&hub, &w.cluster, &w.app_manifest("web", "0.2.0", 3))
        .await
        .unwrap();
    let o = w
        .at_hub("ApplicationInstance", "web", "upgraded", STEP, |o| {
            o["version"] == 2
                && o["last_outcome"] == "applied"
                && o["status"]["generation"].as_i64() >= Some(2)
                && e2e::hub_ready(o)
        })
        .await;
    config_value(&w, &ns, "web-hello", "chartVersion", "0.2.0").await;
    config_value(
        &w,
        &ns,
        "web-hello-feature",
        "feature",
        "introduced in 0.2.0",
    )
    .await;
    config_value(&w, &ns, "web-hello", "replicaCount", "3").await;
    t.mark("web upgraded to 0.2.0", &o);

    // Roll back: the Operation returns the release to the chart before.
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(&ns, "rollback-web", "web", "Rollback", "helm", json!({})),
    )
    .await
    .unwrap();
    let op = w
        .at_hub(
            "Operation",
            "rollback-web",
            "Succeeded",
            STEP,
            e2e::hub_succeeded,
        )
        .await;
    t.mark("rollback-web Succeeded", &op);
    config_value(&w, &ns, "web-hello", "chartVersion", "0.1.0").await;
    config_maps_gone(&w, &ns, &["web-hello-feature"]).await;
    let o = w
        .at_hub(
            "ApplicationInstance",
            "web",
            "Ready after the roll-back",
            STEP,
            e2e::hub_ready,
        )
        .await;
    t.mark("web back on 0.1.0", &o);

    // A chart that cannot render: helm-controller's reason and message reach the hub.
    e2e::apply(&hub, &w.cluster, &needs_value_app(&w, "broken", None))
        .await
        .unwrap();
    let o = w
        .at_hub(
            "ApplicationInstance",
            "broken",
            "Ready=False with the render error",
            STEP,
            |o| {
                let (status, _, message) = ready_condition(o);
                status == "False" && message.contains("value 'must' is required")
            },
        )
        .await;
    let (_, reason, _) = ready_condition(&o);
    assert_eq!(reason, "InstallFailed", "{o}");
    t.mark("broken fails to render", &o);
    // A fixed intent recovers it.
    e2e::apply(
        &hub,
        &w.cluster,
        &needs_value_app(&w, "broken", Some("now")),
    )
    .await
    .unwrap();
    let o = w
        .at_hub("ApplicationInstance", "broken", "recovered", STEP, |o| {
            o["version"] == 2 && o["status"]["generation"].as_i64() >= Some(2) && e2e::hub_ready(o)
        })
        .await;
    config_value(&w, &ns, "broken-needs-value", "must", "now").await;
    t.mark("broken recovered by a fixed intent", &o);

    // Delete: the agent's finalizer removes the HelmRelease, helm-controller
    // uninstalls, the chart's objects and Helm's records disappear.
    e2e::delete(&hub, &w.cluster, "ApplicationInstance", &ns, "web")
        .await
        .unwrap();
    let o = w
        .at_hub("ApplicationInstance", "web", "deleted", STEP, |o| {
            o["deleted"] == true && o["last_outcome"] == "applied"
        })
        .await;
    eventually(
        "instance, HelmRelease and Helm records gone",
        STEP,
        || async {
            let ai = e2e::cluster_object(&w.client, "ApplicationInstance", &ns, "web")
                .await
                .map_err(|e| e.to_string())?;
            let hr = w.get_json(&helm_release_resource(), &ns, "web").await;
            let records = kube::Api::<Secret>::namespaced(w.client.clone(), &ns)
                .list(&kube::api::ListParams::default().labels("owner=helm,name=web"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            match (ai.is_some(), hr.is_some(), records) {
                (false, false, 0) => Ok(()),
                s => Err(format!("instance, HelmRelease, release records: {s:?}")),
            }
        },
    )
    .await;
    config_maps_gone(&w, &ns, &["web-hello", "web-hello-feature"]).await;
    t.mark("web uninstalled", &o);

    // Deleting the namespace of a running Operation: the namespace controller
    // empties it, the agent lets its objects go, and the hub hears of it.
    let doomed = vworkspace_e2e::test_namespace(&w.client, "e2e-flux-doomed")
        .await
        .unwrap();
    kube::Api::<Namespace>::all(w.client.clone())
        .patch(
            &doomed,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"annotations": {
                format!("{}-backup", vworkspace_e2e::standins::SCENARIO_ANNOTATION): "hang"
            }}})),
        )
        .await
        .unwrap();
    let mut app = w.app_manifest("doomed-app", "0.1.0", 1);
    app["metadata"]["namespace"] = json!(doomed);
    app["spec"]["release"]["namespace"] = json!(doomed);
    e2e::apply(&hub, &w.cluster, &app).await.unwrap();
    w.at_hub(
        "ApplicationInstance",
        "doomed-app",
        "installed",
        STEP,
        e2e::hub_ready,
    )
    .await;
    e2e::apply(
        &hub,
        &w.cluster,
        &e2e::op_manifest(
            &doomed,
            "backup-doomed",
            "doomed-app",
            "Backup",
            "velero",
            json!({"retention": "1h"}),
        ),
    )
    .await
    .unwrap();
    let op = w
        .at_hub("Operation", "backup-doomed", "Running", STEP, |o| {
            o["status"]["phase"] == "Running"
        })
        .await;
    t.mark("backup-doomed Running", &op);
    kube::Api::<Namespace>::all(w.client.clone())
        .delete(&doomed, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the doomed namespace to be gone", STEP, || async {
        match kube::Api::<Namespace>::all(w.client.clone())
            .get_opt(&doomed)
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(()),
            Some(n) => Err(format!("{:?}", n.status)),
        }
    })
    .await;
    let op = w
        .at_hub("Operation", "backup-doomed", "gone", STEP, gone_at_hub)
        .await;
    t.mark("namespace deleted: operation gone", &op);
    let o = w
        .at_hub(
            "ApplicationInstance",
            "doomed-app",
            "gone",
            STEP,
            gone_at_hub,
        )
        .await;
    t.mark("namespace deleted: instance gone", &o);

    println!("hub timeline:\n{}", t.lines.join("\n"));
    let leaks = w.secret_leaks();
    assert!(leaks.is_empty(), "{leaks:?}");
    for log in [w.agent_log(), w.hub.log().to_path_buf()] {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !text.contains("s3cret-from-values"),
            "{} contains a value from the values Secret",
            log.display()
        );
    }
}
