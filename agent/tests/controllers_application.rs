//! ApplicationInstance controller against the real API server with the real
//! Flux CRDs; the Flux helm-controller is stood in for by `StandInHelmController`.

mod controllers_support;

use controllers_support::*;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use vworkspace_crds::ApplicationInstance;

fn conds(
    a: &ApplicationInstance,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    a.status.clone().unwrap_or_default().conditions
}

#[tokio::test]
async fn helm_source_instance_becomes_ready_through_an_owned_helm_release() {
    let (client, ns) = env("ai-helm").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "6.6.0")).await;
    let ai = wait_app(&client, &ns, "nc", "Ready=True/HelmReleaseReady", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;

    let st = ai.status.clone().unwrap();
    assert_eq!(st.observed_generation, ai.metadata.generation);
    assert_eq!(st.helm_release_ref.as_ref().unwrap().name, "nc");
    assert_eq!(st.last_applied_chart.as_ref().unwrap().version, "6.6.0");
    assert!(st.last_reconcile_time.is_some());
    assert!(cond_is(&st.conditions, "Reconciling", "False", "Stable"));
    assert!(cond_is(&st.conditions, "Degraded", "False", "Recovered"));
    assert!(cond_is(&st.conditions, "Blocked", "False", "Unblocked"));
    assert!(
        ai.finalizers()
            .iter()
            .any(|f| f == "apps.vworkspace.io/finalizer")
    );
    assert!(
        st.conditions
            .iter()
            .all(|c| c.observed_generation == ai.metadata.generation)
    );

    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    let owner = &hr.owner_references()[0];
    assert_eq!(owner.kind, "ApplicationInstance");
    assert_eq!(Some(&owner.uid), ai.metadata.uid.as_ref());
    let spec = &hr.data["spec"];
    assert_eq!(spec["chart"]["spec"]["sourceRef"]["kind"], "HelmRepository");
    assert_eq!(spec["chart"]["spec"]["version"], "6.6.0");
    assert_eq!(spec["upgrade"]["remediation"]["remediateLastFailure"], true);
    assert_eq!(spec["install"]["remediation"]["retries"], 3);
    assert_eq!(spec["maxHistory"], 10);
    assert_eq!(spec["values"]["replicas"], 1);
    let repo = dyn_api(
        &client,
        &ns,
        "source.toolkit.fluxcd.io",
        "v1",
        "HelmRepository",
        "helmrepositories",
    )
    .get("nc-source")
    .await
    .unwrap();
    assert_eq!(repo.data["spec"]["url"], "https://charts.example.com");
    assert_eq!(repo.owner_references()[0].uid, owner.uid);
}

#[tokio::test]
async fn oci_source_points_at_the_chart_artifact_and_uses_chart_ref() {
    let (client, ns) = env("ai-oci").await;
    let mut spec = helm_spec("app", &ns, "1.2.3");
    spec["chart"] = json!({"sourceType": "oci", "url": "oci://ghcr.io/example/charts", "name": "podinfo", "version": "1.2.3"});
    create_app(&client, &ns, "app", spec).await;
    wait_app(&client, &ns, "app", "Ready=True", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;
    let hr = helm_releases(&client, &ns).get("app").await.unwrap();
    assert_eq!(hr.data["spec"]["chartRef"]["kind"], "OCIRepository");
    assert!(hr.data["spec"].get("chart").is_none());
    let repo = dyn_api(
        &client,
        &ns,
        "source.toolkit.fluxcd.io",
        "v1",
        "OCIRepository",
        "ocirepositories",
    )
    .get("app-source")
    .await
    .unwrap();
    assert_eq!(
        repo.data["spec"]["url"],
        "oci://ghcr.io/example/charts/podinfo"
    );
    assert_eq!(repo.data["spec"]["ref"]["tag"], "1.2.3");
    // The stand-in read the version from the OCIRepository, like helm-controller.
    assert_eq!(hr.data["status"]["history"][0]["chartVersion"], "1.2.3");
}

#[tokio::test]
async fn values_secret_goes_through_values_from_and_never_leaks() {
    let (client, ns) = env("ai-secret").await;
    const VALUE: &str = "pw-Q7x-never-print-me-91";
    let mut spec = helm_spec("nc", &ns, "6.6.0");
    spec["values"] =
        json!({"source": "secretRef", "secretRef": {"name": "nc-values", "key": "values.yaml"}});
    create_app(&client, &ns, "nc", spec).await;
    let blocked = wait_app(&client, &ns, "nc", "Blocked=True/WaitingForSecret", |a| {
        cond_is(&conds(a), "Blocked", "True", "WaitingForSecret")
    })
    .await;
    assert!(cond_is(
        &conds(&blocked),
        "Ready",
        "False",
        "WaitingForSecret"
    ));
    let msg = conds(&blocked)
        .into_iter()
        .find(|c| c.type_ == "Blocked")
        .unwrap()
        .message;
    assert!(
        msg.contains("nc-values") && msg.contains("values.yaml"),
        "{msg}"
    );
    assert!(
        helm_releases(&client, &ns)
            .get_opt("nc")
            .await
            .unwrap()
            .is_none()
    );

    create_secret(
        &client,
        &ns,
        "nc-values",
        "values.yaml",
        &format!("adminPassword: {VALUE}\n"),
    )
    .await;
    wait_app(
        &client,
        &ns,
        "nc",
        "Ready=True after the Secret appears",
        |a| cond_is(&conds(a), "Ready", "True", "HelmReleaseReady"),
    )
    .await;
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    assert_eq!(
        hr.data["spec"]["valuesFrom"],
        json!([{"kind": "Secret", "name": "nc-values", "valuesKey": "values.yaml"}])
    );
    assert!(hr.data["spec"].get("values").is_none());
    assert_not_leaked(&client, &ns, VALUE).await;
}

#[tokio::test]
async fn config_map_values_go_through_values_from() {
    let (client, ns) = env("ai-cm").await;
    let mut spec = helm_spec("nc", &ns, "6.6.0");
    spec["values"] =
        json!({"source": "configMapRef", "configMapRef": {"name": "nc-cm", "key": "v.yaml"}});
    create_app(&client, &ns, "nc", spec).await;
    wait_app(&client, &ns, "nc", "Blocked=True/WaitingForSecret", |a| {
        cond_is(&conds(a), "Blocked", "True", "WaitingForSecret")
    })
    .await;
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("nc-cm".into()),
            ..Default::default()
        },
        data: Some([("v.yaml".to_string(), "replicas: 2\n".to_string())].into()),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &cm)
        .await
        .unwrap();
    wait_app(&client, &ns, "nc", "Ready=True", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    assert_eq!(hr.data["spec"]["valuesFrom"][0]["kind"], "ConfigMap");
}

#[tokio::test]
async fn flux_install_failure_is_ready_false_with_the_flux_reason_and_message() {
    let (client, ns) = env("ai-fail").await;
    scenario(&client, &ns, Some("HelmRelease"), "failure").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "6.6.0")).await;
    let ai = wait_app(&client, &ns, "nc", "Ready=False/InstallFailed", |a| {
        cond_is(&conds(a), "Ready", "False", "InstallFailed")
    })
    .await;
    let ready = conds(&ai).into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready
            .message
            .contains("timed out waiting for the condition"),
        "{}",
        ready.message
    );
    assert!(cond_is(&conds(&ai), "Degraded", "False", "Recovered"));
}

#[tokio::test]
async fn a_failing_upgrade_after_success_is_degraded() {
    let (client, ns) = env("ai-degraded").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "6.6.0")).await;
    wait_app(&client, &ns, "nc", "Ready=True", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;
    scenario(&client, &ns, Some("HelmRelease"), "failure").await;
    Api::<ApplicationInstance>::namespaced(client.clone(), &ns)
        .patch(
            "nc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"chart": {"version": "6.7.0"}}})),
        )
        .await
        .unwrap();
    let ai = wait_app(
        &client,
        &ns,
        "nc",
        "Ready=False/UpgradeFailed and Degraded",
        |a| {
            cond_is(&conds(a), "Ready", "False", "UpgradeFailed")
                && cond_is(&conds(a), "Degraded", "True", "HelmReleaseDegraded")
        },
    )
    .await;
    assert_eq!(
        ai.status.unwrap().last_applied_chart.unwrap().version,
        "6.7.0"
    );
}

#[tokio::test]
async fn installing_reports_reconciling_and_ready_false() {
    let (client, ns) = env("ai-installing").await;
    scenario(&client, &ns, Some("HelmRelease"), "hang").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "6.6.0")).await;
    wait_app(
        &client,
        &ns,
        "nc",
        "Ready=False/Installing, Reconciling=True",
        |a| {
            cond_is(&conds(a), "Ready", "False", "Installing")
                && cond_is(&conds(a), "Reconciling", "True", "HelmReleaseInstalling")
        },
    )
    .await;
}

#[tokio::test]
async fn placeholder_is_ready_and_creates_nothing() {
    let (client, ns) = env("ai-placeholder").await;
    create_app(&client, &ns, "ops", placeholder_spec()).await;
    let ai = wait_app(&client, &ns, "ops", "Ready=True/Placeholder", |a| {
        cond_is(&conds(a), "Ready", "True", "Placeholder")
    })
    .await;
    assert!(ai.status.unwrap().helm_release_ref.is_none());
    assert!(
        helm_releases(&client, &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn a_managed_instance_owning_a_release_cannot_become_a_placeholder() {
    let (client, ns) = env("ai-switch").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "6.6.0")).await;
    wait_app(&client, &ns, "nc", "Ready=True", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;
    Api::<ApplicationInstance>::namespaced(client.clone(), &ns)
        .patch(
            "nc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mode": "placeholder", "chart": null, "values": null}})),
        )
        .await
        .unwrap();
    wait_app(&client, &ns, "nc", "Blocked=True/ValidationFailed", |a| {
        cond_is(&conds(a), "Blocked", "True", "ValidationFailed")
    })
    .await;
    assert!(
        helm_releases(&client, &ns)
            .get_opt("nc")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn deletion_waits_until_the_helm_release_is_gone() {
    let (client, ns) = env("ai-delete").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "6.6.0")).await;
    wait_app(&client, &ns, "nc", "Ready=True", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;
    // Uninstall takes a while: the stand-in holds its finalizer for 2 s.
    scenario(&client, &ns, Some("HelmRelease"), "slow").await;
    Api::<ApplicationInstance>::namespaced(client.clone(), &ns)
        .delete("nc", &DeleteParams::default())
        .await
        .unwrap();
    wait_app(
        &client,
        &ns,
        "nc",
        "Deleting=True/WaitingForChildResources",
        |a| cond_is(&conds(a), "Deleting", "True", "WaitingForChildResources"),
    )
    .await;
    let hrs = helm_releases(&client, &ns);
    let api = Api::<ApplicationInstance>::namespaced(client.clone(), &ns);
    vworkspace_e2e::wait::eventually("instance and HelmRelease gone", WAIT, || {
        let (hrs, api) = (hrs.clone(), api.clone());
        async move {
            let hr = hrs.get_opt("nc").await.map_err(|e| e.to_string())?;
            let ai = api.get_opt("nc").await.map_err(|e| e.to_string())?;
            match (hr, ai) {
                (None, None) => Ok(()),
                (Some(_), None) => {
                    Err("instance released before its HelmRelease was gone".to_string())
                }
                (h, a) => Err(format!(
                    "hr present {}, instance present {}",
                    h.is_some(),
                    a.is_some()
                )),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn an_ungated_namespace_is_refused() {
    start(Upstream::All);
    let client = vworkspace_e2e::shared_client();
    let ns = vworkspace_e2e::test_namespace_with_labels(&client, "ai-ungated", &[])
        .await
        .unwrap();
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "6.6.0")).await;
    let ai = wait_app(&client, &ns, "nc", "Blocked=True/NamespaceNotGated", |a| {
        cond_is(&conds(a), "Blocked", "True", "NamespaceNotGated")
    })
    .await;
    assert!(
        helm_releases(&client, &ns)
            .get_opt("nc")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        ai.finalizers().is_empty(),
        "no finalizer outside gated namespaces"
    );
}

#[tokio::test]
async fn a_release_namespace_other_than_the_object_namespace_is_blocked() {
    let (client, ns) = env("ai-relns").await;
    let mut spec = helm_spec("nc", &ns, "6.6.0");
    spec["release"]["namespace"] = json!("somewhere-else");
    create_app(&client, &ns, "nc", spec).await;
    let ai = wait_app(&client, &ns, "nc", "Blocked=True/InvalidSpec", |a| {
        cond_is(&conds(a), "Blocked", "True", "InvalidSpec")
    })
    .await;
    let msg = conds(&ai)
        .into_iter()
        .find(|c| c.type_ == "Blocked")
        .unwrap()
        .message;
    assert!(msg.contains("spec.release.namespace"), "{msg}");
    assert!(
        helm_releases(&client, &ns)
            .get_opt("nc")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn inline_values_that_look_like_secrets_are_blocked_without_echoing_them() {
    let (client, ns) = env("ai-inline").await;
    const VALUE: &str = "inline-secret-Zk9-do-not-echo";
    let mut spec = helm_spec("nc", &ns, "6.6.0");
    spec["values"] = json!({"source": "inline", "inline": {"db": {"password": VALUE}}});
    create_app(&client, &ns, "nc", spec).await;
    let ai = wait_app(&client, &ns, "nc", "Blocked=True/InvalidSpec", |a| {
        cond_is(&conds(a), "Blocked", "True", "InvalidSpec")
    })
    .await;
    for c in conds(&ai) {
        assert!(!c.message.contains(VALUE));
    }
    assert!(!logs().contains(VALUE), "inline secret value in logs");
}
