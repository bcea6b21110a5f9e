//! The control-plane harness against the real kube-apiserver + etcd.

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn version_is_the_pinned_release() {
    init();
    let client = vworkspace_e2e::shared_client();
    let info = client.apiserver_version().await.unwrap();
    assert_eq!(
        info.git_version,
        vworkspace_e2e::assets::pinned_versions().kubernetes
    );
    assert_eq!(info.major, "1");
}

#[tokio::test]
async fn namespace_and_configmap_round_trip() {
    init();
    let client = vworkspace_e2e::shared_client();
    let ns = vworkspace_e2e::test_namespace(&client, "roundtrip")
        .await
        .unwrap();
    let got = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    let labels = got.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("managed-by").map(String::as_str),
        Some("vworkspace")
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("c".into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let back = cms.get("c").await.unwrap();
    assert_eq!(back.data.unwrap()["k"], "v");
    Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn upstream_crds_install_and_are_established() {
    init();
    let client = vworkspace_e2e::shared_client();
    let installed = vworkspace_e2e::crds::install_upstream_crds(&client)
        .await
        .unwrap();
    let names: Vec<String> = installed
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    for expected in [
        "helmreleases.helm.toolkit.fluxcd.io",
        "helmrepositories.source.toolkit.fluxcd.io",
        "ocirepositories.source.toolkit.fluxcd.io",
        "backups.velero.io",
        "restores.velero.io",
        "schedules.velero.io",
        "volumesnapshots.snapshot.storage.k8s.io",
        "workflows.argoproj.io",
        "replicationsources.volsync.backube",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    // The server agrees: every one is Established and its served versions are discoverable.
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in &names {
        let live = api.get(name).await.unwrap();
        let conditions = live.status.unwrap().conditions.unwrap();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name}: {conditions:?}"
        );
    }
    let hr = client
        .list_api_group_resources("helm.toolkit.fluxcd.io/v2")
        .await
        .unwrap();
    assert!(hr.resources.iter().any(|r| r.name == "helmreleases"));

    // Installing again updates in place.
    vworkspace_e2e::crds::install_upstream_crds(&client)
        .await
        .unwrap();
}

#[tokio::test]
async fn upstream_vworkspace_crds_install_side_by_side() {
    init();
    let client = vworkspace_e2e::shared_client();
    let installed =
        vworkspace_e2e::crds::install_upstream_vworkspace_crds(&client, Some("upstream"))
            .await
            .unwrap();
    let groups: Vec<&str> = installed.iter().map(|c| c.spec.group.as_str()).collect();
    assert_eq!(
        groups,
        [
            "upstream.apps.vworkspace.io",
            "upstream.ops.vworkspace.io",
            "upstream.ops.vworkspace.io"
        ]
    );
    let ops = client
        .list_api_group_resources("upstream.ops.vworkspace.io/v1alpha1")
        .await
        .unwrap();
    let mut plurals: Vec<&str> = ops.resources.iter().map(|r| r.name.as_str()).collect();
    plurals.retain(|p| !p.contains('/'));
    plurals.sort();
    assert_eq!(plurals, ["clusters", "operations"]);
}

#[tokio::test]
async fn rbac_is_enforced_for_minted_users() {
    init();
    let cp = vworkspace_e2e::shared();
    let admin = cp.client().unwrap();
    let user = cp
        .user_client("jane", &["developers", "testers"])
        .await
        .unwrap();

    // The apiserver sees the user and both groups from the client certificate.
    let review: serde_json::Value = user
        .request(
            http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&serde_json::json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "SelfSubjectReview"
                    }))
                    .unwrap(),
                )
                .unwrap(),
        )
        .await
        .unwrap();
    let info = &review["status"]["userInfo"];
    assert_eq!(info["username"], "jane", "{review}");
    let groups = info["groups"].as_array().unwrap();
    for g in ["developers", "testers", "system:authenticated"] {
        assert!(groups.iter().any(|x| x == g), "{g} not in {groups:?}");
    }
    assert!(!groups.iter().any(|x| x == "system:masters"));

    // A user outside system:masters may not create namespaces.
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some("jane-was-here".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = Api::<Namespace>::all(user.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("\"jane\""), "{}", s.message);
        }
        other => panic!("expected 403, got {other}"),
    }

    // Granting the group a role makes a request in a namespace pass. (The
    // aggregated `edit`/`view` ClusterRoles stay empty here: aggregation is
    // kube-controller-manager's job, and it does not run.)
    let ns = vworkspace_e2e::test_namespace(&admin, "rbac")
        .await
        .unwrap();
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "configmap-writer", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}]
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "developers-write", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-writer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "testers"}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("by-jane".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let cms = Api::<ConfigMap>::namespaced(user, &ns);
    // RBAC changes reach the authorizer through an informer: wait with a deadline.
    vworkspace_e2e::wait::eventually(
        "jane may create configmaps",
        std::time::Duration::from_secs(30),
        || async {
            match cms.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 403 => Err(s.message),
                Err(e) => panic!("create as jane after binding: {e}"),
            }
        },
    )
    .await;
}

#[test]
fn minted_kubeconfig_has_no_system_masters() {
    let cp = vworkspace_e2e::shared();
    let kc = cp.user_kubeconfig("viewer", &[]).unwrap();
    assert_eq!(kc.auth_infos[0].name, "viewer");
    assert!(cp.user_kubeconfig("x", &["a", "b", "c"]).is_err());
    // The admin kubeconfig file exists for kubectl and points at the same server.
    let text = std::fs::read_to_string(cp.kubeconfig_path()).unwrap();
    assert!(text.contains(cp.url()));
}

#[test]
fn kubectl_talks_to_the_control_plane() {
    let cp = vworkspace_e2e::shared();
    let mut kubectl = cp
        .kubectl()
        .expect("kubectl is built with the control plane");
    let out = kubectl
        .args(["get", "namespace", "default", "-o", "name"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "namespace/default"
    );
}

/// One instance serves callers on different runtimes, even after the first
/// caller's runtime is gone (clients are made per caller).
#[test]
fn shared_instance_outlives_the_runtimes_that_use_it() {
    init();
    let use_once = || {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let cp = vworkspace_e2e::shared();
                let client = cp.client().unwrap();
                let ns = vworkspace_e2e::test_namespace(&client, "shared")
                    .await
                    .unwrap();
                Api::<Namespace>::all(client).get(&ns).await.unwrap();
                (
                    std::ptr::from_ref(cp) as usize,
                    cp.url().to_string(),
                    cp.pids(),
                )
            })
        })
        .join()
        .unwrap()
    };
    let first = use_once();
    let second = use_once();
    assert_eq!(first, second);
    assert_eq!(first.2.len(), 2, "apiserver and etcd are running");
}

/// A private instance stops on drop: both processes gone, temp dir removed.
#[tokio::test]
async fn private_control_plane_stops_on_drop() {
    init();
    let cp = vworkspace_e2e::ControlPlane::start().await.unwrap();
    let client = cp.client().unwrap();
    Api::<Namespace>::all(client).get("default").await.unwrap();
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    assert_eq!(pids.len(), 2);
    assert!(dir.join("kube-apiserver.log").exists());
    drop(cp);
    for pid in pids {
        // Drop reaps the children, so their /proc entries are gone.
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still exists"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}
