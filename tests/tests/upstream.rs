//! The real upstream programs the harness runs beside the control plane: the
//! controller manager's garbage collector and namespace controller, and Flux
//! installing the test charts from the HTTP repository and the OCI registry.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use serde_json::json;
use vworkspace_e2e::wait::eventually;

const WAIT: Duration = Duration::from_secs(90);

fn setup() -> (kube::Client, &'static vworkspace_e2e::upstream::Upstream) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let up = vworkspace_e2e::upstream::shared();
    (vworkspace_e2e::shared_client(), up)
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: o.metadata.name.clone().unwrap_or_default(),
                    uid: o.metadata.uid.clone().unwrap_or_default(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_garbage_collector_deletes_dependents_and_namespaces_empty_and_go() {
    let (client, _up) = setup();
    let ns = vworkspace_e2e::test_namespace(&client, "upstream-gc")
        .await
        .unwrap();
    let cms = kube::Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let owner = cms
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &config_map("dependent", Some(&owner)),
    )
    .await
    .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the dependent to be collected", WAIT, || async {
        match cms.get_opt("dependent").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;

    let namespaces = kube::Api::<Namespace>::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the namespace to be gone", WAIT, || async {
        match namespaces.get_opt(&ns).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(n) => Err(format!("{:?}", n.status)),
        }
    })
    .await;
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

#[tokio::test]
async fn flux_installs_the_test_charts_from_http_and_oci_and_uninstalls_them() {
    let (client, up) = setup();
    let ns = vworkspace_e2e::test_namespace(&client, "upstream-flux")
        .await
        .unwrap();
    let ssa = PatchParams::apply("upstream-test").force();
    let apply = |ar: ApiResource, name: &'static str, body: serde_json::Value| {
        let api = kube::Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &ar);
        let ssa = ssa.clone();
        async move {
            api.patch(name, &ssa, &Patch::Apply(body))
                .await
                .unwrap_or_else(|e| panic!("applying {name}: {e}"));
        }
    };
    let helm_repo = resource(
        "source.toolkit.fluxcd.io",
        "v1",
        "HelmRepository",
        "helmrepositories",
    );
    let oci_repo = resource(
        "source.toolkit.fluxcd.io",
        "v1",
        "OCIRepository",
        "ocirepositories",
    );
    let hr = resource(
        "helm.toolkit.fluxcd.io",
        "v2",
        "HelmRelease",
        "helmreleases",
    );
    apply(
        helm_repo,
        "local",
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
               "metadata": {"name": "local"},
               "spec": {"url": up.charts.http_url(), "interval": "1m"}}),
    )
    .await;
    apply(
        oci_repo,
        "hello-oci",
        json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "OCIRepository",
               "metadata": {"name": "hello-oci"},
               "spec": {"url": format!("{}/hello", up.charts.oci_url()), "ref": {"tag": "0.2.0"}, "interval": "1m",
                        "layerSelector": {"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "operation": "copy"}}}),
    )
    .await;
    apply(
        hr.clone(),
        "from-http",
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
               "metadata": {"name": "from-http"},
               "spec": {"interval": "1m", "values": {"greeting": "over-http"},
                        "chart": {"spec": {"chart": "hello", "version": "0.1.0",
                                           "sourceRef": {"kind": "HelmRepository", "name": "local"}}}}}),
    )
    .await;
    apply(
        hr.clone(),
        "from-oci",
        json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
               "metadata": {"name": "from-oci"},
               "spec": {"interval": "1m", "values": {"greeting": "over-oci"},
                        "chartRef": {"kind": "OCIRepository", "name": "hello-oci"}}}),
    )
    .await;
    let cms = kube::Api::<ConfigMap>::namespaced(client.clone(), &ns);
    for (release, greeting, version) in [
        ("from-http", "over-http", "0.1.0"),
        ("from-oci", "over-oci", "0.2.0"),
    ] {
        let name = format!("{release}-hello");
        eventually(&format!("{name} installed by Helm"), WAIT, || async {
            let cm = cms
                .get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("not yet\n{}", up.log_tails(10)))?;
            let data = cm.data.unwrap_or_default();
            let labels = cm.metadata.labels.unwrap_or_default();
            match (
                data.get("greeting").map(String::as_str),
                data.get("chartVersion").map(String::as_str),
                labels
                    .get("app.kubernetes.io/managed-by")
                    .map(String::as_str),
            ) {
                // From OCI, Flux appends the artifact digest as build metadata.
                (Some(g), Some(v), Some("Helm"))
                    if g == greeting && (v == version || v.starts_with(&format!("{version}+"))) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    let releases = kube::Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &hr);
    for name in ["from-http", "from-oci"] {
        releases
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("helm-controller to uninstall both", WAIT, || async {
        let left: Vec<String> = cms
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .filter(|n| n.contains("hello"))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_chart_that_cannot_render_fails_with_helms_message() {
    let (client, up) = setup();
    let ns = vworkspace_e2e::test_namespace(&client, "upstream-fail")
        .await
        .unwrap();
    let ssa = PatchParams::apply("upstream-test").force();
    let repos = kube::Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &resource(
            "source.toolkit.fluxcd.io",
            "v1",
            "HelmRepository",
            "helmrepositories",
        ),
    );
    repos
        .patch(
            "local",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
                "metadata": {"name": "local"}, "spec": {"url": up.charts.http_url(), "interval": "1m"}})),
        )
        .await
        .unwrap();
    let hr = resource(
        "helm.toolkit.fluxcd.io",
        "v2",
        "HelmRelease",
        "helmreleases",
    );
    let releases = kube::Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &hr);
    releases
        .patch(
            "broken",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease",
                "metadata": {"name": "broken"},
                "spec": {"interval": "1m", "install": {"remediation": {"retries": 3}},
                         "chart": {"spec": {"chart": "needs-value", "version": "0.1.0",
                                            "sourceRef": {"kind": "HelmRepository", "name": "local"}}}}})),
        )
        .await
        .unwrap();
    let status = eventually("Ready=False with Helm's render error", WAIT, || async {
        let o = releases.get("broken").await.map_err(|e| e.to_string())?;
        let status = o.data["status"].clone();
        let ready = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .unwrap_or_default();
        if ready["status"] == "False"
            && ready["reason"] == "InstallFailed"
            && ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("value 'must' is required"))
        {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    })
    .await;
    println!("failed HelmRelease status: {status:#}");
}
