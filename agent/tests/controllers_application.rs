//! ApplicationInstance controller against the real API server with the real
//! Flux source-controller and helm-controller, installing the test charts of
//! tests/charts from a local Helm repository and OCI registry. Every outcome
//! (ready, failed, in progress, uninstall) is what Flux and Helm really do.

mod controllers_support;

use controllers_support::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
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
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "0.1.0")).await;
    let ai = wait_app(&client, &ns, "nc", "Ready=True/HelmReleaseReady", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;

    let st = ai.status.clone().unwrap();
    assert_eq!(st.observed_generation, ai.metadata.generation);
    assert_eq!(st.helm_release_ref.as_ref().unwrap().name, "nc");
    assert_eq!(st.last_applied_chart.as_ref().unwrap().version, "0.1.0");
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
    assert_eq!(spec["chart"]["spec"]["chart"], CHART);
    assert_eq!(spec["chart"]["spec"]["version"], "0.1.0");
    assert_eq!(spec["upgrade"]["remediation"]["remediateLastFailure"], true);
    assert_eq!(spec["install"]["remediation"]["retries"], 3);
    assert_eq!(spec["maxHistory"], 10);
    assert_eq!(spec["values"]["greeting"], GREETING);
    // helm-controller installed the chart with the inline values.
    assert_eq!(hr.data["status"]["history"][0]["chartVersion"], "0.1.0");
    assert_eq!(hr.data["status"]["history"][0]["status"], "deployed");
    let cm = release_config_map(&client, &ns, "nc")
        .await
        .expect("the chart's ConfigMap");
    let data = cm.data.unwrap();
    assert_eq!(data["greeting"], GREETING);
    assert_eq!(data["chartVersion"], "0.1.0");
    let repo_name = spec["chart"]["spec"]["sourceRef"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let repo = helm_repositories(&client, &ns)
        .get(&repo_name)
        .await
        .unwrap();
    assert_eq!(repo.data["spec"]["url"], chart_repo_url());
    // Shared by the namespace's instances of this repository URL: no owner;
    // the controller deletes it with its last user.
    assert!(repo.owner_references().is_empty());
    assert_eq!(repo.labels()["app.vworkspace.io/shared-source"], "true");
}

fn helm_repositories(client: &kube::Client, ns: &str) -> Api<kube::api::DynamicObject> {
    dyn_api(
        client,
        ns,
        "source.toolkit.fluxcd.io",
        "v1",
        "HelmRepository",
        "helmrepositories",
    )
}

/// Instances of one repository URL share one HelmRepository; it goes with
/// the last of them, not before.
#[tokio::test]
async fn a_shared_helm_repository_goes_with_its_last_user() {
    let (client, ns) = env("ai-shared").await;
    for name in ["one", "two"] {
        create_app(&client, &ns, name, helm_spec(name, &ns, "0.1.0")).await;
    }
    for name in ["one", "two"] {
        wait_app(&client, &ns, name, "Ready=True", |a| {
            cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
        })
        .await;
    }
    let repos = helm_repositories(&client, &ns);
    let listed = repos.list(&Default::default()).await.unwrap().items;
    assert_eq!(listed.len(), 1, "one HelmRepository for both instances");
    let repo_name = listed[0].name_any();
    let hrs = helm_releases(&client, &ns);
    for name in ["one", "two"] {
        let hr = hrs.get(name).await.unwrap();
        assert_eq!(
            hr.data["spec"]["chart"]["spec"]["sourceRef"]["name"],
            repo_name.as_str()
        );
    }
    let api = Api::<ApplicationInstance>::namespaced(client.clone(), &ns);
    let gone = |name: &'static str| {
        let api = api.clone();
        async move {
            vworkspace_e2e::wait::eventually(&format!("{name} gone"), WAIT, || {
                let api = api.clone();
                async move {
                    match api.get_opt(name).await.map_err(|e| e.to_string())? {
                        None => Ok(()),
                        Some(_) => Err(format!("{name} still there")),
                    }
                }
            })
            .await;
        }
    };
    api.delete("one", &DeleteParams::default()).await.unwrap();
    gone("one").await;
    assert!(
        repos.get_opt(&repo_name).await.unwrap().is_some(),
        "the shared HelmRepository went while an instance still used it"
    );
    api.delete("two", &DeleteParams::default()).await.unwrap();
    gone("two").await;
    vworkspace_e2e::wait::eventually("the shared HelmRepository gone", WAIT, || {
        let repos = repos.clone();
        let repo_name = repo_name.clone();
        async move {
            match repos.get_opt(&repo_name).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still there".to_string()),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn oci_source_points_at_the_chart_artifact_and_uses_chart_ref() {
    let (client, ns) = env("ai-oci").await;
    let mut spec = helm_spec("app", &ns, "0.2.0");
    spec["chart"] =
        json!({"sourceType": "oci", "url": chart_oci_url(), "name": CHART, "version": "0.2.0"});
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
        format!("{}/{CHART}", chart_oci_url())
    );
    assert_eq!(repo.data["spec"]["ref"]["tag"], "0.2.0");
    // helm-controller pulled 0.2.0 from the registry and installed it.
    // For an OCIRepository chart, helm-controller appends the artifact's
    // digest to the chart version it records.
    let recorded = hr.data["status"]["history"][0]["chartVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(recorded.starts_with("0.2.0+"), "{recorded}");
    assert_eq!(
        release_config_map(&client, &ns, "app")
            .await
            .unwrap()
            .data
            .unwrap()["chartVersion"],
        recorded
    );
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("app-hello-feature")
        .await
        .expect("0.2.0's extra ConfigMap");
}

#[tokio::test]
async fn values_secret_goes_through_values_from_and_never_leaks() {
    let (client, ns) = env("ai-secret").await;
    const VALUE: &str = "pw-Q7x-never-print-me-91";
    let mut spec = helm_spec("nc", &ns, "0.1.0");
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
        &format!("password: {VALUE}\ngreeting: from the values Secret\n"),
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
    // The values reached the chart: Helm rendered them into its objects.
    assert_eq!(
        release_config_map(&client, &ns, "nc")
            .await
            .unwrap()
            .data
            .unwrap()["greeting"],
        "from the values Secret"
    );
    let rendered = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("nc-hello-credentials")
        .await
        .expect("the chart's Secret");
    assert_eq!(
        rendered.data.unwrap()["password"].0,
        VALUE.as_bytes(),
        "the password from valuesFrom"
    );
    assert_not_leaked(&client, &ns, VALUE).await;
}

#[tokio::test]
async fn config_map_values_go_through_values_from() {
    let (client, ns) = env("ai-cm").await;
    let mut spec = helm_spec("nc", &ns, "0.1.0");
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
        data: Some([("v.yaml".to_string(), "replicaCount: 2\n".to_string())].into()),
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
    assert_eq!(
        release_config_map(&client, &ns, "nc")
            .await
            .unwrap()
            .data
            .unwrap()["replicaCount"],
        "2"
    );
}

/// Helm fails to render `needs-value` without value `must`: helm-controller
/// reports Ready=False/InstallFailed with Helm's error, relayed as is.
#[tokio::test]
async fn flux_install_failure_is_ready_false_with_the_flux_reason_and_message() {
    let (client, ns) = env("ai-fail").await;
    create_app(
        &client,
        &ns,
        "nc",
        chart_spec("nc", &ns, NEEDS_VALUE_CHART, "0.1.0"),
    )
    .await;
    let ai = wait_app(&client, &ns, "nc", "Ready=False/InstallFailed", |a| {
        cond_is(&conds(a), "Ready", "False", "InstallFailed")
    })
    .await;
    let ready = conds(&ai).into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready.message.contains(NEEDS_VALUE_MESSAGE),
        "{}",
        ready.message
    );
    assert!(cond_is(&conds(&ai), "Degraded", "False", "Recovered"));
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    let flux_ready = hr.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(flux_ready["reason"], "InstallFailed", "{hr:?}");
}

/// After 0.1.0 is deployed, the upgrade to 0.2.0 fails for real (see
/// `block_feature_config_map`). With the agent's remediation (one retry,
/// then roll back) helm-controller rolls back to 0.1.0 twice and stalls:
/// the instance serves the previous version (Ready=True/RolledBack) and is
/// Degraded=True/UpgradeFailed.
#[tokio::test]
async fn a_failing_upgrade_after_success_is_degraded() {
    let (client, ns) = env("ai-degraded").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "0.1.0")).await;
    wait_app(&client, &ns, "nc", "Ready=True", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;
    block_feature_config_map(&client, &ns, "nc").await;
    Api::<ApplicationInstance>::namespaced(client.clone(), &ns)
        .patch(
            "nc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"chart": {"version": "0.2.0"}}})),
        )
        .await
        .unwrap();
    let ai = wait_app(
        &client,
        &ns,
        "nc",
        "Ready=True/RolledBack and Degraded=True/UpgradeFailed",
        |a| {
            cond_is(&conds(a), "Ready", "True", "RolledBack")
                && cond_is(&conds(a), "Degraded", "True", "UpgradeFailed")
        },
    )
    .await;
    let degraded = conds(&ai)
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.contains("rollback") && degraded.message.contains("hello@0.1.0"),
        "{}",
        degraded.message
    );
    assert_eq!(
        ai.status.unwrap().last_applied_chart.unwrap().version,
        "0.2.0"
    );
    // Why: Helm's own error, on the HelmRelease.
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    let released = flux_condition(&hr, "Released");
    assert_eq!(released["reason"], "UpgradeFailed");
    assert!(
        released["message"]
            .as_str()
            .is_some_and(|m| m.contains("nc-hello-feature") && m.contains("immutable")),
        "{released}"
    );
    assert_eq!(hr.data["status"]["history"][0]["chartVersion"], "0.1.0");
    assert_eq!(hr.data["status"]["history"][0]["status"], "deployed");
    // The previous version runs.
    assert_eq!(
        release_config_map(&client, &ns, "nc")
            .await
            .unwrap()
            .data
            .unwrap()["chartVersion"],
        "0.1.0"
    );
    unhold_config_map(&client, &ns, "nc-hello-feature").await;
}

/// `never-ready` installs a Deployment no kubelet ever runs: Helm's wait
/// keeps helm-controller's install running (Ready=Unknown, "Running 'install'
/// action"), which the instance shows as installing.
#[tokio::test]
async fn installing_reports_reconciling_and_ready_false() {
    let (client, ns) = env("ai-installing").await;
    create_app(
        &client,
        &ns,
        "nc",
        chart_spec("nc", &ns, NEVER_READY_CHART, "0.1.0"),
    )
    .await;
    let ai = wait_app(
        &client,
        &ns,
        "nc",
        "Ready=False/Installing, Reconciling=True",
        |a| {
            cond_is(&conds(a), "Ready", "False", "Installing")
                && cond_is(&conds(a), "Reconciling", "True", "HelmReleaseInstalling")
                && conds(a)
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.message.contains("Running 'install' action"))
        },
    )
    .await;
    assert!(cond_is(&conds(&ai), "Degraded", "False", "Recovered"));
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    assert_eq!(flux_condition(&hr, "Ready")["status"], "Unknown");
}

/// A version the repository does not have: source-controller cannot fetch
/// the chart, helm-controller reports SourceNotReady, and the instance says
/// the chart is unreachable with source-controller's words.
#[tokio::test]
async fn a_version_the_repository_lacks_is_chart_unreachable() {
    let (client, ns) = env("ai-noversion").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "0.9.0")).await;
    // First "not reconciled yet", then source-controller's verdict on 0.9.0.
    let ai = wait_app(
        &client,
        &ns,
        "nc",
        "Ready=False/ChartUnreachable naming 0.9.0",
        |a| {
            cond_is(&conds(a), "Ready", "False", "ChartUnreachable")
                && conds(a)
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.message.contains("0.9.0"))
        },
    )
    .await;
    assert!(cond_is(&conds(&ai), "Degraded", "False", "Recovered"));
    let hr = helm_releases(&client, &ns).get("nc").await.unwrap();
    assert_eq!(flux_condition(&hr, "Ready")["reason"], "SourceNotReady");
    assert!(
        hr.data["status"]["history"]
            .as_array()
            .is_none_or(|h| h.is_empty())
    );
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
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "0.1.0")).await;
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

/// helm-controller uninstalls the release under its finalizer
/// `finalizers.fluxcd.io`, and Helm waits until the release's objects are
/// gone. The test holds one of them with a finalizer of its own: while it
/// holds, the HelmRelease stays and so must the instance.
#[tokio::test]
async fn deletion_waits_until_the_helm_release_is_gone() {
    let (client, ns) = env("ai-delete").await;
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "0.1.0")).await;
    wait_app(&client, &ns, "nc", "Ready=True", |a| {
        cond_is(&conds(a), "Ready", "True", "HelmReleaseReady")
    })
    .await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    cms.patch(
        "nc-hello",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": [HOLD]}})),
    )
    .await
    .unwrap();
    let hrs = helm_releases(&client, &ns);
    let api = Api::<ApplicationInstance>::namespaced(client.clone(), &ns);
    assert!(
        hrs.get("nc")
            .await
            .unwrap()
            .finalizers()
            .iter()
            .any(|f| f == "finalizers.fluxcd.io")
    );
    api.delete("nc", &DeleteParams::default()).await.unwrap();
    wait_app(
        &client,
        &ns,
        "nc",
        "Deleting=True/WaitingForChildResources",
        |a| cond_is(&conds(a), "Deleting", "True", "WaitingForChildResources"),
    )
    .await;
    // Helm's uninstall has begun and waits on the held ConfigMap.
    vworkspace_e2e::wait::eventually("the uninstall waits on the held ConfigMap", WAIT, || {
        let (cms, hrs) = (cms.clone(), hrs.clone());
        async move {
            let cm = cms.get("nc-hello").await.map_err(|e| e.to_string())?;
            let hr = hrs.get("nc").await.map_err(|e| e.to_string())?;
            match (
                cm.metadata.deletion_timestamp,
                hr.metadata.deletion_timestamp,
            ) {
                (Some(_), Some(_)) => Ok(()),
                (c, h) => Err(format!(
                    "ConfigMap deleting {}, HelmRelease deleting {}",
                    c.is_some(),
                    h.is_some()
                )),
            }
        }
    })
    .await;
    // While Helm waits, the HelmRelease and the instance both stay.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < until {
        assert!(
            hrs.get_opt("nc").await.unwrap().is_some(),
            "HelmRelease gone while held"
        );
        let ai = api.get_opt("nc").await.unwrap();
        assert!(
            ai.is_some(),
            "instance released while its HelmRelease was still uninstalling"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cms.patch(
        "nc-hello",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
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
    // Helm's uninstall finished: the chart's objects are gone too.
    assert!(cms.get_opt("nc-hello").await.unwrap().is_none());
}

#[tokio::test]
async fn an_ungated_namespace_is_refused() {
    start(Upstream::All);
    let client = vworkspace_e2e::shared_client();
    let ns = vworkspace_e2e::test_namespace_with_labels(&client, "ai-ungated", &[])
        .await
        .unwrap();
    create_app(&client, &ns, "nc", helm_spec("nc", &ns, "0.1.0")).await;
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
    let mut spec = helm_spec("nc", &ns, "0.1.0");
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
    let mut spec = helm_spec("nc", &ns, "0.1.0");
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
