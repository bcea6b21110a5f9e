//! The agent's Helm chart through the real `helm` (v4, built with the Flux set):
//! `helm lint`, `helm template` (the committed plain manifests and the rendered
//! objects), and `helm install` with default values into a real kube-apiserver
//! where Velero's namespace does not exist.
//!
//! This test binary is the only one that installs the default release
//! (`vworkspace-agent` in `vworkspace-system`), and nothing else in it creates
//! the `velero` namespace.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use vworkspace_e2e::deploy::{self, DEFAULT_RELEASE};
use vworkspace_e2e::helm::{Helm, Release};

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn helm() -> Helm {
    Helm::resolve().unwrap_or_else(|e| panic!("{e}"))
}

// === committed files ===

/// Chart CRDs = crds/manifests, plain manifests = `helm template` of the chart
/// with its defaults. `VWS_UPDATE_DEPLOY=1` rewrites them instead of checking.
#[test]
fn committed_deploy_files_are_up_to_date() {
    let helm = helm();
    if std::env::var("VWS_UPDATE_DEPLOY").is_ok_and(|v| v == "1") {
        for path in deploy::write_committed(&helm).unwrap_or_else(|e| panic!("{e}")) {
            println!("wrote {}", path.display());
        }
        return;
    }
    if let Err(e) = deploy::check_committed(&helm) {
        panic!(
            "{e}\nRegenerate from the repository root with:\n  {}",
            deploy::REGENERATE
        );
    }
}

// === helm lint and helm template ===

#[test]
fn chart_passes_helm_lint_with_default_and_with_every_optional_value() {
    let helm = helm();
    for values in [
        Value::Null,
        json!({
            "gatedNamespaces": ["team-a", "team-b"],
            "hub": {"endpoint": "https://hub.example.com:8443"},
            "approval": {"secretName": "hub-approval"},
            "velero": {"namespace": "backups", "rbac": true},
            "cluster": {"create": false},
        }),
    ] {
        let report = helm
            .lint(&deploy::chart_dir(), &values)
            .unwrap_or_else(|e| panic!("values {values}: {e}"));
        assert!(
            report.contains("1 chart(s) linted, 0 chart(s) failed"),
            "values {values}:\n{report}"
        );
    }
}

/// `helm template` of the chart for `release`, parsed into its documents.
fn render(release: Release<'_>, values: &Value, extra: &[&str]) -> Vec<Value> {
    let text = helm()
        .template(release, &deploy::chart_dir(), values, extra)
        .unwrap_or_else(|e| panic!("{e}"));
    deploy::documents(&text).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect()
}

#[test]
fn chart_renders_a_hardened_deployment_and_one_binding_per_gated_namespace() {
    let release = Release {
        name: "agent",
        namespace: "agent-system",
    };
    let docs = render(
        release,
        &json!({
            "gatedNamespaces": ["team-a", "team-b"],
            "hub": {"endpoint": "https://hub.example.com:8443"},
            "approval": {"secretName": "hub-approval", "secretKey": "key"},
        }),
        &[],
    );

    // One RoleBinding to the write ClusterRole per gated namespace, none elsewhere.
    let bindings: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" && d["roleRef"]["name"] == "agent-gated")
        .map(|d| d["metadata"]["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(bindings, ["team-a", "team-b"]);

    let deploy = find(&docs, "Deployment", "agent")[0];
    assert_eq!(deploy["metadata"]["namespace"], "agent-system");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "agent");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("env {name} missing"))
            .clone()
    };
    assert_eq!(
        env("VWS_AGENT_ALLOWED_NAMESPACES")["value"],
        "team-a,team-b,"
    );
    assert_eq!(
        env("VWS_AGENT_HUB_ENDPOINT")["value"],
        "https://hub.example.com:8443"
    );
    assert_eq!(env("VWS_AGENT_LEASE_NAME")["value"], "agent");
    assert_eq!(
        env("VWS_AGENT_APPROVAL_SECRET_FILE")["value"],
        "/etc/vworkspace/approval/key"
    );
    let approval = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "approval")
        .expect("approval volume");
    assert_eq!(approval["secret"]["secretName"], "hub-approval");
    assert_eq!(approval["secret"]["defaultMode"], 0o440);
    assert_eq!(
        env("VWS_AGENT_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );

    assert_eq!(
        find(
            &docs,
            "ValidatingAdmissionPolicy",
            "applicationinstances.apps.vworkspace.io"
        )
        .len(),
        1
    );
    let cluster = find(&docs, "Cluster", "vworkspace")[0];
    assert_eq!(
        cluster["spec"]["controlPlaneEndpoint"],
        "https://hub.example.com:8443"
    );
    assert_eq!(
        cluster["spec"]["registrationTokenSecretRef"]["name"],
        "vworkspace-join-token"
    );

    // Secrets only by name, in the agent's namespace only.
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
    {
        for rule in d["rules"].as_array().unwrap() {
            let secrets = rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "secrets");
            if !secrets {
                continue;
            }
            let verbs = rule["verbs"].as_array().unwrap();
            if d["kind"] == "Role" {
                assert!(rule["resourceNames"].is_array(), "{rule}");
            } else {
                assert_eq!(
                    verbs,
                    &vec![json!("get")],
                    "gated namespaces: get by name only: {rule}"
                );
            }
        }
    }

    // Defaults: no gated namespace, no hub override, Velero rights in `velero`
    // (bound at install time when that namespace exists; see the tests below).
    let docs = render(release, &Value::Null, &[]);
    assert!(!docs.iter().any(|d| d["roleRef"]["name"] == "agent-gated"));
    let deploy = find(&docs, "Deployment", "agent")[0];
    let env = deploy["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("VWS_AGENT_HUB_ENDPOINT"), "{env}");
    assert!(!env.contains("VWS_AGENT_APPROVAL_SECRET_FILE"), "{env}");
    assert_eq!(find(&docs, "ClusterRole", "agent-velero").len(), 1);
    let docs = render(release, &Value::Null, &["--set", "velero.rbac=true"]);
    assert_eq!(
        find(&docs, "RoleBinding", "agent-velero")[0]["metadata"]["namespace"],
        "velero"
    );
    let docs = render(
        release,
        &json!({"velero": {"namespace": ""}, "cluster": {"create": false}}),
        &["--set", "velero.rbac=true"],
    );
    assert!(find(&docs, "RoleBinding", "agent-velero").is_empty());
    assert!(find(&docs, "ClusterRole", "agent-velero").is_empty());
    assert!(find(&docs, "Cluster", "vworkspace").is_empty());
    let deploy = find(&docs, "Deployment", "agent")[0];
    let env = deploy["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("VWS_AGENT_VELERO_NAMESPACE"), "{env}");
}

/// `velero.rbac` decides the RoleBinding in Velero's namespace: `auto` binds
/// only where Helm sees the namespace (never under `helm template`), `true`
/// always, `false` never; anything else fails the render with the value's name.
#[test]
fn velero_rolebinding_follows_velero_rbac() {
    let release = Release {
        name: "agent",
        namespace: "agent-system",
    };
    let bindings = |docs: &[Value]| -> Vec<String> {
        find(docs, "RoleBinding", "agent-velero")
            .iter()
            .map(|d| d["metadata"]["namespace"].as_str().unwrap().to_string())
            .collect()
    };
    for (values, want) in [
        (Value::Null, vec![]),
        (json!({"velero": {"rbac": "auto"}}), vec![]),
        (json!({"velero": {"rbac": false}}), vec![]),
        (json!({"velero": {"rbac": true}}), vec!["velero"]),
        (
            json!({"velero": {"rbac": true, "namespace": "backups"}}),
            vec!["backups"],
        ),
    ] {
        let docs = render(release, &values, &[]);
        assert_eq!(bindings(&docs), want, "values {values}");
        // The rights to bind are there either way.
        assert_eq!(find(&docs, "ClusterRole", "agent-velero").len(), 1);
        for b in find(&docs, "RoleBinding", "agent-velero") {
            assert_eq!(b["roleRef"]["name"], "agent-velero");
            assert_eq!(
                b["subjects"],
                json!([{"kind": "ServiceAccount", "name": "agent", "namespace": "agent-system"}])
            );
        }
        let deploy = find(&docs, "Deployment", "agent")[0];
        let env = &deploy["spec"]["template"]["spec"]["containers"][0]["env"];
        let velero_ns = env
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "VWS_AGENT_VELERO_NAMESPACE")
            .unwrap_or_else(|| panic!("values {values}: no VWS_AGENT_VELERO_NAMESPACE"));
        let want_ns = values["velero"]["namespace"].as_str().unwrap_or("velero");
        assert_eq!(velero_ns["value"], want_ns, "values {values}");
    }
    let err = helm()
        .template(
            release,
            &deploy::chart_dir(),
            &Value::Null,
            &["--set", "velero.rbac=sometimes"],
        )
        .expect_err("velero.rbac=sometimes must fail");
    assert!(
        err.to_string()
            .contains(r#"velero.rbac must be auto, true or false, not "sometimes""#),
        "{err}"
    );
}

// === helm install ===

/// Whether the API server's authorizer lets `system:serviceaccount:NS:NAME`
/// do `verb` on `group/resource` in `namespace`.
async fn can_i(
    admin: &kube::Client,
    sa: (&str, &str),
    verb: &str,
    group: &str,
    resource: &str,
    namespace: &str,
) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {
        "user": format!("system:serviceaccount:{}:{}", sa.0, sa.1),
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", sa.0)],
        "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace},
    }}))
    .unwrap();
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

/// The install docs/operations.md gives (namespace, CRDs, then `helm install`
/// with default values) on a cluster without the `velero` namespace: it
/// succeeds and binds nothing for Velero. Once Velero's namespace exists,
/// `helm upgrade` binds the agent's Velero rights there.
#[tokio::test]
async fn chart_installs_with_default_values_on_a_cluster_without_velero() {
    init();
    let cp = vworkspace_e2e::shared();
    let admin = cp.client().unwrap();
    let Release {
        name: release,
        namespace: release_ns,
    } = DEFAULT_RELEASE;
    let namespaces = Api::<Namespace>::all(admin.clone());
    assert!(
        namespaces.get_opt("velero").await.unwrap().is_none(),
        "this API server must not have a velero namespace"
    );
    let ns = |name: &str| -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    namespaces
        .create(&PostParams::default(), &ns(release_ns))
        .await
        .unwrap();
    let crds = vworkspace_e2e::crds::from_paths(&[deploy::chart_dir().join("crds")]).unwrap();
    vworkspace_e2e::crds::install(&admin, &crds)
        .await
        .unwrap_or_else(|e| panic!("installing the chart's CRDs: {e}"));

    let helm = tokio::task::spawn_blocking(Helm::resolve)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let chart = deploy::chart_dir();
    helm.deploy(
        "install",
        cp.kubeconfig_path(),
        DEFAULT_RELEASE,
        &chart,
        &Value::Null,
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("helm install with default values: {e}"));

    // Installed: the workload, its identity and rights, the Cluster object.
    let deployment = Api::<Deployment>::namespaced(admin.clone(), release_ns)
        .get(release)
        .await
        .unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(release));
    let velero_env = pod.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "VWS_AGENT_VELERO_NAMESPACE")
        .and_then(|e| e.value);
    assert_eq!(velero_env.as_deref(), Some("velero"));
    Api::<ServiceAccount>::namespaced(admin.clone(), release_ns)
        .get(release)
        .await
        .unwrap();
    let cluster_roles = Api::<ClusterRole>::all(admin.clone());
    for name in ["", "-watch", "-gated", "-velero"] {
        cluster_roles
            .get(&format!("{release}{name}"))
            .await
            .unwrap_or_else(|e| panic!("ClusterRole {release}{name}: {e}"));
    }
    let cluster = ApiResource {
        group: "ops.vworkspace.io".into(),
        version: "v1alpha1".into(),
        api_version: "ops.vworkspace.io/v1alpha1".into(),
        kind: "Cluster".into(),
        plural: "clusters".into(),
    };
    Api::<DynamicObject>::all_with(admin.clone(), &cluster)
        .get("vworkspace")
        .await
        .unwrap();

    // No RoleBinding but the one in its own namespace: no gated namespace
    // yet, and none in the missing `velero`.
    let bindings = |admin: kube::Client| async move {
        let mut found: Vec<(String, String)> = Api::<RoleBinding>::all(admin)
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={release}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|b| (b.metadata.namespace.unwrap(), b.metadata.name.unwrap()))
            .collect();
        found.sort();
        found
    };
    assert_eq!(
        bindings(admin.clone()).await,
        [(release_ns.to_string(), release.to_string())]
    );
    let sa = (release_ns, release);
    assert!(!can_i(&admin, sa, "create", "velero.io", "backups", "velero").await);

    // Velero arrives; the next upgrade binds the agent's rights in its namespace.
    namespaces
        .create(&PostParams::default(), &ns("velero"))
        .await
        .unwrap();
    helm.deploy(
        "upgrade",
        cp.kubeconfig_path(),
        DEFAULT_RELEASE,
        &chart,
        &Value::Null,
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("helm upgrade with default values: {e}"));
    assert_eq!(
        bindings(admin.clone()).await,
        [
            ("velero".to_string(), format!("{release}-velero")),
            (release_ns.to_string(), release.to_string()),
        ]
    );
    vworkspace_e2e::wait::eventually(
        "the agent may create Velero Backups in velero",
        Duration::from_secs(30),
        || async {
            if can_i(&admin, sa, "create", "velero.io", "backups", "velero").await {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    for (verb, resource, ns) in [
        ("create", "restores", "velero"),
        ("create", "backups", release_ns),
        ("create", "schedules", "velero"),
    ] {
        let allowed = can_i(&admin, sa, verb, "velero.io", resource, ns).await;
        assert_eq!(allowed, resource == "restores", "{verb} {resource} in {ns}");
    }
}
