//! The deployment bundle (deploy/) against the real kube-apiserver.
//!
//! The chart is rendered by `vworkspace_e2e::render` (Helm is not used), the
//! rendered manifests are installed as admin, and then every call is made with
//! a token of the chart's own ServiceAccount (TokenRequest API), so the API
//! server's RBAC authorizer, not the agent, decides: everything the agent does
//! is allowed, and writes outside the gated namespaces, other Secrets, other
//! Leases, namespace labels and RBAC objects are refused with 403.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vworkspace_e2e::render::{self, Release};

const MANAGER: &str = "vworkspace-agent";

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

// === committed files ===

/// Chart CRDs = crds/manifests, plain manifests = the chart rendered with its
/// defaults. `VWS_UPDATE_DEPLOY=1` rewrites both instead of checking.
#[test]
fn committed_deploy_files_are_up_to_date() {
    if std::env::var("VWS_UPDATE_DEPLOY").is_ok_and(|v| v == "1") {
        for path in render::write_committed().unwrap() {
            println!("wrote {}", path.display());
        }
        return;
    }
    if let Err(e) = render::check_committed() {
        panic!(
            "{e}\nRegenerate from the repository root with:\n  {}",
            render::REGENERATE
        );
    }
}

fn docs_for(release: Release<'_>, overrides: &Value) -> Vec<Value> {
    let text = render::plain_bundle(&render::chart_dir(), release, overrides)
        .unwrap_or_else(|e| panic!("rendering the chart: {e}"));
    render::documents(&text).unwrap()
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
    let docs = docs_for(
        release,
        &json!({
            "gatedNamespaces": ["team-a", "team-b"],
            "hub": {"endpoint": "https://hub.example.com:8443"},
            "approval": {"secretName": "hub-approval", "secretKey": "key"},
        }),
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

    // Defaults: no gated namespace, no hub override, Velero rights in `velero`.
    let docs = docs_for(release, &Value::Null);
    assert!(!docs.iter().any(|d| d["roleRef"]["name"] == "agent-gated"));
    let deploy = find(&docs, "Deployment", "agent")[0];
    let env = deploy["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("VWS_AGENT_HUB_ENDPOINT"), "{env}");
    assert!(!env.contains("VWS_AGENT_APPROVAL_SECRET_FILE"), "{env}");
    assert_eq!(
        find(&docs, "RoleBinding", "agent-velero")[0]["metadata"]["namespace"],
        "velero"
    );
    let docs = docs_for(
        release,
        &json!({"velero": {"namespace": ""}, "cluster": {"create": false}}),
    );
    assert!(find(&docs, "RoleBinding", "agent-velero").is_empty());
    assert!(find(&docs, "Cluster", "vworkspace").is_empty());
}

// === against the API server ===

/// Installs our CRDs from the chart's crds/ and the pinned upstream ones, once
/// per test binary (tests run in parallel, installs must not race).
async fn install_crds(admin: &kube::Client) {
    static DONE: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut done = DONE.lock().await;
    if *done {
        return;
    }
    let crds = vworkspace_e2e::crds::from_paths(&[render::chart_dir().join("crds")]).unwrap();
    assert_eq!(crds.len(), 3);
    vworkspace_e2e::crds::install(admin, &crds)
        .await
        .unwrap_or_else(|e| panic!("installing the chart's CRDs: {e}"));
    vworkspace_e2e::crds::install_upstream_crds(admin)
        .await
        .unwrap_or_else(|e| panic!("installing the upstream CRDs: {e}"));
    *done = true;
}

/// A fresh install of the chart for one test: its namespaces and a client
/// authenticated as the chart's ServiceAccount.
struct Install {
    admin: kube::Client,
    agent: kube::Client,
    release: String,
    agent_ns: String,
    gated: String,
    ungated: String,
    velero: String,
    cluster: String,
    /// The ServiceAccount token `agent` carries.
    token: String,
    /// The junk join token stored in the join-token Secret.
    join_token: String,
}

async fn install(prefix: &str) -> Install {
    init();
    let cp = vworkspace_e2e::shared();
    let admin = cp.client().unwrap();
    install_crds(&admin).await;
    let agent_ns =
        vworkspace_e2e::test_namespace_with_labels(&admin, &format!("{prefix}-sys"), &[])
            .await
            .unwrap();
    let gated = vworkspace_e2e::test_namespace(&admin, &format!("{prefix}-gated"))
        .await
        .unwrap();
    // Labelled like a gated namespace, but not in gatedNamespaces: the label
    // alone must not give the agent any right.
    let ungated = vworkspace_e2e::test_namespace(&admin, &format!("{prefix}-labelled-only"))
        .await
        .unwrap();
    let velero =
        vworkspace_e2e::test_namespace_with_labels(&admin, &format!("{prefix}-velero"), &[])
            .await
            .unwrap();
    let suffix = &agent_ns[agent_ns.len() - 8..];
    let release = format!("vws-agent-{suffix}");
    let cluster = format!("cluster-{suffix}");
    let docs = docs_for(
        Release {
            name: &release,
            namespace: &agent_ns,
        },
        &json!({
            "gatedNamespaces": [gated],
            "velero": {"namespace": velero},
            "cluster": {"name": cluster},
            "approval": {"secretName": "vworkspace-approval"},
        }),
    );
    // The admission policy is one cluster-wide object whatever the release;
    // the kubectl test installs it (it grants the agent nothing).
    let docs: Vec<Value> = docs
        .into_iter()
        .filter(|d| {
            !d["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))
        })
        .collect();
    render::apply(&admin, &docs, "deploy-rbac-test")
        .await
        .unwrap_or_else(|e| panic!("installing the rendered chart: {e}"));
    // The join token Secret the operator creates (a value that is not a JWT,
    // unique so logs can be searched for it), and one the agent must not read.
    let join_token = format!("jt-{:016x}", rand::random::<u64>());
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &agent_ns);
    for (name, value) in [
        ("vworkspace-join-token", join_token.as_str()),
        ("unrelated", "x"),
    ] {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"registrationToken": value},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let (agent, token) = sa_client(cp, &admin, &agent_ns, &release).await;
    // RBAC reaches the authorizer through informers: wait for the last binding.
    wait_allowed("the gated RoleBinding is active", || {
        let api = dynamic(&agent, Some(&gated), &HELM_RELEASE);
        async move { api.list(&ListParams::default()).await.map(|_| ()) }
    })
    .await;
    Install {
        admin,
        agent,
        release,
        agent_ns,
        gated,
        ungated,
        velero,
        cluster,
        token,
        join_token,
    }
}

impl Install {
    /// This install's namespaces, the agent's first.
    fn namespaces(&self) -> [&str; 4] {
        [&self.agent_ns, &self.gated, &self.ungated, &self.velero]
    }
}

/// A client carrying a TokenRequest token of `namespace/name` (no client certificate).
async fn sa_client(
    cp: &vworkspace_e2e::ControlPlane,
    admin: &kube::Client,
    namespace: &str,
    name: &str,
) -> (kube::Client, String) {
    let req: TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [], "expirationSeconds": 3600}
    }))
    .unwrap();
    let issued = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
    let token = issued
        .status
        .and_then(|s| s.token)
        .expect("TokenRequest returned a token");
    let mut config = cp.config().clone();
    config.auth_info = serde_json::from_value(json!({ "token": token.clone() })).unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let who: Value = client
        .request(
            http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "SelfSubjectReview"
                    }))
                    .unwrap(),
                )
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        who["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{namespace}:{name}"),
        "{who}"
    );
    (client, token)
}

async fn wait_allowed<F, Fut>(what: &str, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    vworkspace_e2e::wait::eventually(what, Duration::from_secs(30), || {
        let fut = call();
        async move {
            match fut.await {
                Ok(()) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 403 => Err(s.message),
                Err(e) => panic!("{what}: {e}"),
            }
        }
    })
    .await
}

#[track_caller]
fn allowed<T>(what: &str, r: Result<T, kube::Error>) -> T {
    r.unwrap_or_else(|e| panic!("the agent's ServiceAccount must be allowed to {what}: {e}"))
}

#[track_caller]
fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            assert_eq!(s.reason, "Forbidden", "{what}: {s:?}");
        }
        other => {
            panic!("the API server must refuse to let the agent {what} with 403, got {other:?}")
        }
    }
}

struct Res {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

const AI: Res = Res {
    group: "apps.vworkspace.io",
    version: "v1alpha1",
    kind: "ApplicationInstance",
    plural: "applicationinstances",
};
const OP: Res = Res {
    group: "ops.vworkspace.io",
    version: "v1alpha1",
    kind: "Operation",
    plural: "operations",
};
const CLUSTER: Res = Res {
    group: "ops.vworkspace.io",
    version: "v1alpha1",
    kind: "Cluster",
    plural: "clusters",
};
const HELM_RELEASE: Res = Res {
    group: "helm.toolkit.fluxcd.io",
    version: "v2",
    kind: "HelmRelease",
    plural: "helmreleases",
};
const HELM_REPOSITORY: Res = Res {
    group: "source.toolkit.fluxcd.io",
    version: "v1",
    kind: "HelmRepository",
    plural: "helmrepositories",
};
const OCI_REPOSITORY: Res = Res {
    group: "source.toolkit.fluxcd.io",
    version: "v1",
    kind: "OCIRepository",
    plural: "ocirepositories",
};
const BACKUP: Res = Res {
    group: "velero.io",
    version: "v1",
    kind: "Backup",
    plural: "backups",
};
const RESTORE: Res = Res {
    group: "velero.io",
    version: "v1",
    kind: "Restore",
    plural: "restores",
};
const VOLUME_SNAPSHOT: Res = Res {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshot",
    plural: "volumesnapshots",
};
const REPLICATION_SOURCE: Res = Res {
    group: "volsync.backube",
    version: "v1alpha1",
    kind: "ReplicationSource",
    plural: "replicationsources",
};
const WORKFLOW: Res = Res {
    group: "argoproj.io",
    version: "v1alpha1",
    kind: "Workflow",
    plural: "workflows",
};
const JOB: Res = Res {
    group: "batch",
    version: "v1",
    kind: "Job",
    plural: "jobs",
};
const SERVICE_ACCOUNT: Res = Res {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
};
const LEASE: Res = Res {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
};

impl Res {
    fn ar(&self) -> ApiResource {
        let api_version = if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version,
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// A server-side apply body: `spec` (or other top-level fields) merged in.
    fn body(&self, name: &str, fields: Value) -> Value {
        let ar = self.ar();
        let mut body = json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "metadata": {"name": name},
        });
        render::merge(&mut body, &fields);
        body
    }
}

fn dynamic(client: &kube::Client, ns: Option<&str>, res: &Res) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &res.ar()),
        None => Api::all_with(client.clone(), &res.ar()),
    }
}

async fn ssa(
    client: &kube::Client,
    ns: Option<&str>,
    res: &Res,
    name: &str,
    fields: Value,
) -> Result<DynamicObject, kube::Error> {
    dynamic(client, ns, res)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(res.body(name, fields)),
        )
        .await
}

/// One valid object of each downstream kind (the real upstream schemas check them).
fn downstream_objects() -> Vec<(&'static Res, &'static str, Value)> {
    vec![
        (
            &HELM_REPOSITORY,
            "app-source",
            json!({"spec": {"url": "https://charts.example.com", "interval": "10m"}}),
        ),
        (
            &OCI_REPOSITORY,
            "app-oci",
            json!({"spec": {"url": "oci://registry.example.com/charts/app", "interval": "10m"}}),
        ),
        (
            &HELM_RELEASE,
            "app",
            json!({"spec": {"interval": "10m", "chart": {"spec": {
            "chart": "app", "version": "1.2.3",
            "sourceRef": {"kind": "HelmRepository", "name": "app-source"}}}}}),
        ),
        (
            &VOLUME_SNAPSHOT,
            "app-snap",
            json!({"spec": {"source": {"persistentVolumeClaimName": "data-app-0"}}}),
        ),
        (
            &REPLICATION_SOURCE,
            "app-sync",
            json!({"spec": {"sourcePVC": "data-app-0"}}),
        ),
        (
            &WORKFLOW,
            "app-runbook",
            json!({"spec": {"entrypoint": "main", "templates": [{"name": "main", "container": {"image": "busybox"}}]}}),
        ),
        (
            &JOB,
            "app-cmd",
            json!({"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "vworkspace-operation-runner",
            "containers": [{"name": "run", "image": "busybox", "command": ["true"]}]}}}}),
        ),
        (&SERVICE_ACCOUNT, "vworkspace-operation-runner", json!({})),
    ]
}

#[tokio::test]
async fn agent_service_account_may_do_everything_the_agent_does() {
    let i = install("rbac-ok").await;
    let agent = &i.agent;

    // Namespaces: read for the gate.
    allowed(
        "list namespaces",
        Api::<Namespace>::all(agent.clone())
            .list(&ListParams::default())
            .await,
    );
    allowed(
        "get a namespace",
        Api::<Namespace>::all(agent.clone()).get(&i.gated).await,
    );

    // vWorkspace objects in a gated namespace: intent apply creates them by
    // server-side apply, the controllers write finalizers and status.
    let ai = allowed(
        "create an ApplicationInstance by server-side apply in a gated namespace",
        ssa(
            agent,
            Some(&i.gated),
            &AI,
            "app",
            json!({
                "metadata": {"annotations": {"vworkspace.io/applied-intent-version": "1"}},
                "spec": {"appRef": {"catalogId": "nextcloud"}, "mode": "placeholder"},
            }),
        )
        .await,
    );
    assert!(ai.metadata.uid.is_some());
    allowed(
        "add a finalizer to an ApplicationInstance",
        dynamic(agent, Some(&i.gated), &AI)
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"finalizers": ["apps.vworkspace.io/finalizer"]}}),
                ),
            )
            .await,
    );
    let status = json!({"status": {"observedGeneration": 1, "conditions": [{
        "type": "Ready", "status": "True", "reason": "Placeholder", "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}});
    allowed(
        "write ApplicationInstance status",
        dynamic(agent, Some(&i.gated), &AI)
            .patch_status(
                "app",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(AI.body("app", status.clone())),
            )
            .await,
    );
    allowed(
        "create an Operation in a gated namespace",
        ssa(agent, Some(&i.gated), &OP, "app-backup", json!({"spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "app"},
            "type": "Backup", "engine": "velero"}}))
        .await,
    );
    allowed(
        "write Operation status",
        dynamic(agent, Some(&i.gated), &OP)
            .patch_status(
                "app-backup",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(OP.body("app-backup", json!({"status": {"phase": "Running"}}))),
            )
            .await,
    );
    // The controllers watch every namespace (and refuse ungated ones with a
    // NamespaceNotGated status, which needs a status write there).
    allowed(
        "list ApplicationInstances cluster-wide",
        dynamic(agent, None, &AI).list(&ListParams::default()).await,
    );
    allowed(
        "list Operations cluster-wide",
        dynamic(agent, None, &OP).list(&ListParams::default()).await,
    );
    let foreign = ssa(
        &i.admin,
        Some(&i.ungated),
        &AI,
        "not-ours",
        json!({"spec": {"appRef": {"catalogId": "nextcloud"}, "mode": "placeholder"}}),
    )
    .await
    .unwrap();
    let name = foreign.metadata.name.unwrap();
    allowed(
        "report NamespaceNotGated on an ApplicationInstance outside the gated namespaces",
        dynamic(agent, Some(&i.ungated), &AI)
            .patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(AI.body(&name, json!({"status": {"conditions": [{
                "type": "Blocked", "status": "True", "reason": "NamespaceNotGated", "message": "not gated",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))))
            .await,
    );
    allowed(
        "delete an Operation in a gated namespace (history cleanup)",
        dynamic(agent, Some(&i.gated), &OP)
            .delete("app-backup", &Default::default())
            .await,
    );

    // Downstream objects in the gated namespace: create, update, read, delete.
    for (res, name, fields) in downstream_objects() {
        allowed(
            &format!("apply {} {name} in a gated namespace", res.kind),
            ssa(agent, Some(&i.gated), res, name, fields.clone()).await,
        );
        allowed(
            &format!("get {} in a gated namespace", res.kind),
            dynamic(agent, Some(&i.gated), res).get(name).await,
        );
    }
    allowed(
        "delete a HelmRelease in a gated namespace",
        dynamic(agent, Some(&i.gated), &HELM_RELEASE)
            .delete("app", &Default::default())
            .await,
    );
    // Owned-object watches are cluster-wide, label-selected.
    for res in [
        &HELM_RELEASE,
        &HELM_REPOSITORY,
        &OCI_REPOSITORY,
        &BACKUP,
        &RESTORE,
        &VOLUME_SNAPSHOT,
        &REPLICATION_SOURCE,
        &WORKFLOW,
        &JOB,
    ] {
        allowed(
            &format!("list {} cluster-wide by label", res.plural),
            dynamic(agent, None, res)
                .list(&ListParams::default().labels("app.vworkspace.io/application-instance"))
                .await,
        );
    }
    // PVCs (snapshot sources), values Secrets and ConfigMaps: read by name.
    allowed(
        "list PVCs in a gated namespace",
        Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
            agent.clone(),
            &i.gated,
        )
        .list(&ListParams::default())
        .await,
    );
    let values: Secret = serde_json::from_value(
        json!({"metadata": {"name": "app-values"}, "stringData": {"values.yaml": "a: 1"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(i.admin.clone(), &i.gated)
        .create(&PostParams::default(), &values)
        .await
        .unwrap();
    allowed(
        "get a values Secret by name in a gated namespace",
        Api::<Secret>::namespaced(agent.clone(), &i.gated)
            .get("app-values")
            .await,
    );
    allowed(
        "check a values ConfigMap in a gated namespace",
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(agent.clone(), &i.gated)
            .get_opt("app-values")
            .await,
    );

    // Events (events.k8s.io), wherever a reconciled object lives.
    let event = |ns: &str| {
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": format!("app.{:x}", rand::random::<u32>()), "namespace": ns},
            "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "vworkspace-agent",
            "reportingInstance": "agent-0", "action": "Reconcile", "reason": "NamespaceNotGated",
            "type": "Normal", "regarding": {"kind": "ApplicationInstance", "namespace": ns, "name": "app"}})
    };
    let events = ApiResource {
        group: "events.k8s.io".into(),
        version: "v1".into(),
        api_version: "events.k8s.io/v1".into(),
        kind: "Event".into(),
        plural: "events".into(),
    };
    for ns in [&i.gated, &i.ungated] {
        let ev: DynamicObject = serde_json::from_value(event(ns)).unwrap();
        allowed(
            &format!("publish an Event in {ns}"),
            Api::<DynamicObject>::namespaced_with(agent.clone(), ns, &events)
                .create(&PostParams::default(), &ev)
                .await,
        );
    }

    // Velero objects in Velero's namespace.
    for (res, name) in [
        (&BACKUP, "gated-app-backup"),
        (&RESTORE, "gated-app-restore"),
    ] {
        allowed(
            &format!("create a Velero {} in the Velero namespace", res.kind),
            ssa(
                agent,
                Some(&i.velero),
                res,
                name,
                json!({"spec": {"includedNamespaces": [i.gated]}}),
            )
            .await,
        );
    }

    // Own namespace: the join token and the credentials Secret, by name.
    let secrets = Api::<Secret>::namespaced(agent.clone(), &i.agent_ns);
    allowed(
        "read the join-token Secret",
        secrets.get("vworkspace-join-token").await,
    );
    let by_name = |n: &str| ListParams::default().fields(&format!("metadata.name={n}"));
    allowed(
        "list (watch) the join-token Secret by name",
        secrets.list(&by_name("vworkspace-join-token")).await,
    );
    let creds = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vworkspace-agent-credentials"},
        "type": "Opaque", "stringData": {"tls.crt": "not-a-real-cert"}});
    allowed(
        "create the credentials Secret by server-side apply",
        secrets
            .patch(
                "vworkspace-agent-credentials",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&creds),
            )
            .await,
    );
    allowed(
        "update the credentials Secret",
        secrets
            .patch(
                "vworkspace-agent-credentials",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&creds),
            )
            .await,
    );
    allowed(
        "list (watch) the credentials Secret by name",
        secrets.list(&by_name("vworkspace-agent-credentials")).await,
    );

    // The tombstones ConfigMap (agent/src/tombstones.rs): read, created and
    // updated by server-side apply, by name.
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(agent.clone(), &i.agent_ns);
    allowed(
        "look for the tombstones ConfigMap",
        cms.get_opt("vworkspace-agent-tombstones").await,
    );
    let tomb = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "vworkspace-agent-tombstones"},
        "data": {"ApplicationInstance.team-a.app": "3 intent-id"}});
    for what in [
        "create the tombstones ConfigMap",
        "update the tombstones ConfigMap",
    ] {
        allowed(
            what,
            cms.patch(
                "vworkspace-agent-tombstones",
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&tomb),
            )
            .await,
        );
    }

    // The Lease: created by POST (as agent/src/lease.rs does), read, renewed.
    let leases = dynamic(agent, Some(&i.agent_ns), &LEASE);
    let lease: DynamicObject = serde_json::from_value(LEASE.body(
        &i.release,
        json!({"spec": {"holderIdentity": "agent-0", "leaseDurationSeconds": 15}}),
    ))
    .unwrap();
    allowed(
        "create the Lease",
        leases.create(&PostParams::default(), &lease).await,
    );
    let mut lease = allowed("get the Lease", leases.get(&i.release).await);
    lease.data["spec"]["renewTime"] = json!("2026-01-01T00:00:00.000000Z");
    allowed(
        "update (renew) the Lease",
        leases
            .replace(&i.release, &PostParams::default(), &lease)
            .await,
    );

    // The Cluster object, by name: read, watch, status.
    let clusters = dynamic(agent, None, &CLUSTER);
    allowed("get the Cluster object", clusters.get(&i.cluster).await);
    allowed(
        "watch the Cluster object by name",
        clusters.list(&by_name(&i.cluster)).await,
    );
    allowed(
        "write the Cluster status",
        clusters
            .patch_status(
                &i.cluster,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(
                    CLUSTER.body(&i.cluster, json!({"status": {"phase": "Registering"}})),
                ),
            )
            .await,
    );
}

#[tokio::test]
async fn api_server_refuses_the_agent_outside_its_grants() {
    let i = install("rbac-deny").await;
    let agent = &i.agent;

    // Each refusal is paired with the same call allowed in a gated namespace
    // first, so a 403 means "not granted", not "RBAC not loaded yet".
    for (res, name, fields) in downstream_objects() {
        allowed(
            &format!("apply {} in a gated namespace", res.kind),
            ssa(agent, Some(&i.gated), res, name, fields.clone()).await,
        );
        for ns in [&i.ungated, &i.agent_ns, &i.velero, &"default".to_string()] {
            forbidden(
                &format!("apply {} {name} in namespace {ns}", res.kind),
                ssa(agent, Some(ns), res, name, fields.clone()).await,
            );
        }
    }
    forbidden(
        "create an ApplicationInstance in a labelled namespace that is not in gatedNamespaces",
        ssa(
            agent,
            Some(&i.ungated),
            &AI,
            "app",
            json!({"spec": {"appRef": {"catalogId": "nextcloud"}, "mode": "placeholder"}}),
        )
        .await,
    );
    forbidden("create an Operation outside the gated namespaces",
        ssa(agent, Some(&i.agent_ns), &OP, "op", json!({"spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "app"},
            "type": "Backup", "engine": "velero"}})).await);
    forbidden(
        "create a Velero Backup outside Velero's namespace",
        ssa(agent, Some(&i.gated), &BACKUP, "b", json!({"spec": {}})).await,
    );

    // Secrets: only its two, by name, in its own namespace.
    let own = Api::<Secret>::namespaced(agent.clone(), &i.agent_ns);
    allowed(
        "read the join token",
        own.get("vworkspace-join-token").await,
    );
    forbidden(
        "read another Secret in its own namespace",
        own.get("unrelated").await,
    );
    forbidden(
        "list Secrets in its own namespace",
        own.list(&ListParams::default()).await,
    );
    forbidden(
        "watch another Secret by name",
        own.list(&ListParams::default().fields("metadata.name=unrelated"))
            .await,
    );
    forbidden("overwrite the join-token Secret",
        own.patch("vworkspace-join-token", &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "vworkspace-join-token"}, "stringData": {"x": "y"}}))).await);
    forbidden(
        "create another Secret by server-side apply",
        own.patch(
            "planted",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted"}}),
            ),
        )
        .await,
    );
    let posted: Secret =
        serde_json::from_value(json!({"metadata": {"name": "vworkspace-agent-credentials"}}))
            .unwrap();
    forbidden(
        "create a Secret by POST, even with the credentials name (resourceNames never match a POST)",
        own.create(&PostParams::default(), &posted).await,
    );
    forbidden(
        "delete the join-token Secret",
        own.delete("vworkspace-join-token", &Default::default())
            .await,
    );
    forbidden(
        "list Secrets in a gated namespace",
        Api::<Secret>::namespaced(agent.clone(), &i.gated)
            .list(&ListParams::default())
            .await,
    );
    forbidden(
        "read a Secret in a namespace it does not manage",
        Api::<Secret>::namespaced(agent.clone(), &i.ungated)
            .get("anything")
            .await,
    );
    let cms = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(agent.clone(), &i.agent_ns);
    forbidden(
        "create a ConfigMap other than its tombstones in its own namespace",
        cms.patch(
            "planted",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "planted"}}),
            ),
        )
        .await,
    );
    forbidden(
        "list ConfigMaps in its own namespace",
        cms.list(&ListParams::default()).await,
    );
    forbidden(
        "list Secrets cluster-wide",
        Api::<Secret>::all(agent.clone())
            .list(&ListParams::default())
            .await,
    );

    // Another Lease (create cannot be limited by name, so it is granted; but
    // reading or renewing any Lease but its own is not), another Cluster object,
    // another ServiceAccount.
    let other_lease: DynamicObject = serde_json::from_value(
        LEASE.body("someone-else", json!({"spec": {"holderIdentity": "other"}})),
    )
    .unwrap();
    let leases = dynamic(&i.admin, Some(&i.agent_ns), &LEASE);
    let mut other_lease = leases
        .create(&PostParams::default(), &other_lease)
        .await
        .unwrap();
    let agent_leases = dynamic(agent, Some(&i.agent_ns), &LEASE);
    forbidden("read another Lease", agent_leases.get("someone-else").await);
    other_lease.data["spec"]["holderIdentity"] = json!("agent-0");
    forbidden(
        "take over another Lease",
        agent_leases
            .replace("someone-else", &PostParams::default(), &other_lease)
            .await,
    );
    forbidden(
        "create a ServiceAccount other than vworkspace-operation-runner in a gated namespace",
        ssa(
            agent,
            Some(&i.gated),
            &SERVICE_ACCOUNT,
            "powerful",
            json!({}),
        )
        .await,
    );
    let other_cluster = format!("{}-other", i.cluster);
    ssa(
        &i.admin,
        None,
        &CLUSTER,
        &other_cluster,
        json!({"spec": {}}),
    )
    .await
    .unwrap();
    forbidden(
        "read another Cluster object",
        dynamic(agent, None, &CLUSTER).get(&other_cluster).await,
    );
    forbidden(
        "list every Cluster object",
        dynamic(agent, None, &CLUSTER)
            .list(&ListParams::default())
            .await,
    );

    // No way to widen its own gate or rights.
    let ns_api = Api::<Namespace>::all(agent.clone());
    forbidden(
        "label a namespace managed-by=vworkspace",
        ns_api
            .patch(
                &i.ungated,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"managed-by": "vworkspace"}}})),
            )
            .await,
    );
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": format!("{}-new", i.release)}}))
            .unwrap();
    forbidden(
        "create a namespace",
        ns_api.create(&PostParams::default(), &ns).await,
    );
    let rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "escalate"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{}-gated", i.release)},
        "subjects": [{"kind": "ServiceAccount", "name": i.release, "namespace": i.agent_ns}]});
    let rbs = Api::<DynamicObject>::namespaced_with(
        agent.clone(),
        &i.ungated,
        &ApiResource {
            group: "rbac.authorization.k8s.io".into(),
            version: "v1".into(),
            api_version: "rbac.authorization.k8s.io/v1".into(),
            kind: "RoleBinding".into(),
            plural: "rolebindings".into(),
        },
    );
    forbidden(
        "bind its write role in another namespace",
        rbs.patch(
            "escalate",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&rb),
        )
        .await,
    );
    forbidden(
        "read pods in a gated namespace (it has no pod rights)",
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(agent.clone(), &i.gated)
            .list(&ListParams::default())
            .await,
    );
}

/// The committed plain manifests install with the commands docs/operations.md gives.
#[test]
fn committed_plain_manifests_install_with_kubectl() {
    init();
    let cp = vworkspace_e2e::shared();
    let kubectl = || {
        cp.kubectl()
            .expect("kubectl is built with the control plane (see tests/README.md)")
    };
    let run = |mut cmd: std::process::Command, what: &str| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The default values bind Velero rights in `velero`, which must exist.
    let mut cmd = kubectl();
    cmd.args([
        "create",
        "namespace",
        "velero",
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    let ns_yaml = run(cmd, "kubectl create namespace velero (client dry run)");
    let dir = tempfile::tempdir().unwrap();
    let ns_file = dir.path().join("velero-ns.yaml");
    std::fs::write(&ns_file, ns_yaml).unwrap();
    let mut cmd = kubectl();
    cmd.args(["apply", "--server-side", "-f"]).arg(&ns_file);
    run(cmd, "kubectl apply the velero namespace");

    let chart = render::chart_dir();
    let mut cmd = kubectl();
    cmd.args(["apply", "--server-side", "-f"])
        .arg(chart.join("crds"));
    run(
        cmd,
        "kubectl apply --server-side -f deploy/chart/vworkspace-agent/crds",
    );
    let mut cmd = kubectl();
    cmd.args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/applicationinstances.apps.vworkspace.io",
        "crd/operations.ops.vworkspace.io",
        "crd/clusters.ops.vworkspace.io",
    ]);
    run(cmd, "kubectl wait for the CRDs");
    let mut cmd = kubectl();
    cmd.args(["apply", "--server-side", "-f"])
        .arg(render::plain_manifest_path());
    let out = run(
        cmd,
        "kubectl apply --server-side -f deploy/manifests/vworkspace-agent.yaml",
    );
    for expected in [
        "namespace/vworkspace-system",
        "serviceaccount/vworkspace-agent",
        "clusterrole.rbac.authorization.k8s.io/vworkspace-agent-gated",
        "role.rbac.authorization.k8s.io/vworkspace-agent",
        "deployment.apps/vworkspace-agent",
        "cluster.ops.vworkspace.io/vworkspace",
        "validatingadmissionpolicy.admissionregistration.k8s.io/applicationinstances.apps.vworkspace.io",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/applicationinstances.apps.vworkspace.io",
    ] {
        assert!(out.contains(expected), "{expected} not in:\n{out}");
    }
    let mut cmd = kubectl();
    cmd.args([
        "get",
        "deployment",
        "-n",
        "vworkspace-system",
        "vworkspace-agent",
        "-o",
        "jsonpath={.spec.template.spec.serviceAccountName}",
    ]);
    assert_eq!(run(cmd, "kubectl get deployment"), "vworkspace-agent");

    // Gating a namespace without Helm, as docs/operations.md says.
    let team = format!("team-{:08x}", rand::random::<u32>());
    let as_agent = "--as=system:serviceaccount:vworkspace-system:vworkspace-agent";
    let can_create_jobs = |ns: &str| {
        let mut cmd = kubectl();
        cmd.args(["auth", "can-i", as_agent, "create", "jobs.batch", "-n", ns]);
        String::from_utf8_lossy(&cmd.output().unwrap().stdout)
            .trim()
            .to_string()
    };
    let mut cmd = kubectl();
    cmd.args(["create", "namespace", &team]);
    run(cmd, "kubectl create namespace");
    let mut cmd = kubectl();
    cmd.args(["label", "namespace", &team, "managed-by=vworkspace"]);
    run(cmd, "kubectl label namespace");
    assert_eq!(can_create_jobs(&team), "no", "before the RoleBinding");
    let mut cmd = kubectl();
    cmd.args([
        "create",
        "rolebinding",
        "vworkspace-agent",
        "-n",
        &team,
        "--clusterrole=vworkspace-agent-gated",
        "--serviceaccount=vworkspace-system:vworkspace-agent",
    ]);
    run(cmd, "kubectl create rolebinding");
    let mut cmd = kubectl();
    cmd.args([
        "-n",
        "vworkspace-system",
        "set",
        "env",
        "deployment/vworkspace-agent",
        &format!("VWS_AGENT_ALLOWED_NAMESPACES={team}"),
    ]);
    run(cmd, "kubectl set env");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while can_create_jobs(&team) != "yes" {
        assert!(
            std::time::Instant::now() < deadline,
            "the RoleBinding never took effect"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(can_create_jobs("default"), "no");
}

/// deploy/hub-sim/hub-sim.yaml is accepted by the real API server.
#[tokio::test]
async fn hub_sim_manifests_are_accepted_by_the_api_server() {
    init();
    let admin = vworkspace_e2e::shared_client();
    let path = render::deploy_dir().join("hub-sim/hub-sim.yaml");
    let docs = render::documents(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "PersistentVolumeClaim",
            "Deployment",
            "Service"
        ]
    );
    render::apply(&admin, &docs, "deploy-rbac-test")
        .await
        .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
    let deploy: k8s_openapi::api::apps::v1::Deployment = Api::namespaced(admin, "vworkspace-hub")
        .get("hub-sim")
        .await
        .unwrap();
    let pod = deploy.spec.template.spec.unwrap();
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
}

/// A binary of this workspace: `$env_override` if set, else built now with the
/// cargo running the tests (the path comes from cargo's own build messages,
/// so any target directory works).
fn workspace_binary(env_override: &str, package: &str, bin: &str) -> std::path::PathBuf {
    if let Ok(p) = std::env::var(env_override) {
        return p.into();
    }
    // Built once per test binary, so every test runs the same executable.
    static BUILT: std::sync::Mutex<Vec<(String, std::path::PathBuf)>> =
        std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(b, _)| b == bin) {
        return path.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = render::deploy_dir().parent().unwrap().to_path_buf();
    let out = std::process::Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {cargo} build: {e}"));
    assert!(
        out.status.success(),
        "building {bin} failed; fix the build or set {env_override} to a built {bin}"
    );
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"));
    built.push((bin.to_string(), path.clone()));
    path
}

fn agent_binary() -> std::path::PathBuf {
    workspace_binary("VWS_AGENT_BIN", "vworkspace-agent", "vworkspace-agent")
}

/// A kubeconfig file holding only the ServiceAccount token (no client certificate).
fn token_kubeconfig(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    use base64::Engine as _;
    let cp = vworkspace_e2e::shared();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             users:\n- name: agent\n  user:\n    token: {}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: agent\ncurrent-context: c\n",
            cp.url(),
            base64::engine::general_purpose::STANDARD.encode(cp.serving_ca_pem()),
            token
        ),
    )
    .unwrap();
    path
}

/// The agent binary running as the chart's ServiceAccount, its log in a file.
struct AgentProc {
    child: tokio::process::Child,
    log_path: std::path::PathBuf,
    admin_port: u16,
}

impl AgentProc {
    /// `allow_list` is the agent's own namespace allow-list
    /// (`VWS_AGENT_ALLOWED_NAMESPACES`; empty: every labelled namespace).
    fn start(i: &Install, dir: &std::path::Path, allow_list: &str) -> Self {
        let bin = agent_binary();
        let kubeconfig = token_kubeconfig(dir, &i.token);
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_path = dir.join("agent.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = tokio::process::Command::new(&bin)
            .arg("run")
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .env("VWS_AGENT_NAMESPACE", &i.agent_ns)
            .env("VWS_AGENT_CLUSTER_OBJECT", &i.cluster)
            .env("VWS_AGENT_LEASE_NAME", &i.release)
            .env("VWS_AGENT_ALLOWED_NAMESPACES", allow_list)
            .env("VWS_AGENT_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("VWS_AGENT_LOG_FORMAT", "plain")
            .env("VWS_AGENT_LOG_LEVEL", "info")
            .env("VWS_AGENT_VELERO_NAMESPACE", &i.velero)
            .env("VWS_AGENT_BACKOFF_MAX", "2s")
            .env("POD_NAME", "agent-pod-0")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self {
            child,
            log_path,
            admin_port,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("agent is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the agent exits within 30 s of SIGTERM")
            .unwrap();
        assert!(status.success(), "agent exit: {status}\n{}", self.logs());
        self.logs()
    }
}

/// One agent process at a time: every agent watches ApplicationInstances
/// cluster-wide, so two agents of different test installs in the one shared
/// API server would reconcile each other's objects (a real cluster runs one).
static AGENT_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Log lines where the API server refused the agent (403) in one of `ours`
/// (the test's namespaces) or outside any namespace.
/// Refusals in other tests' namespaces are left out: every agent watches
/// ApplicationInstances cluster-wide, and this API server is shared.
fn unexpected_refusals<'a>(log: &'a str, ours: &[&str]) -> Vec<&'a str> {
    log.lines()
        // The API server's wording in a kube error, and the agent's short form
        // of a Status ("Forbidden (403)"); not the protocol's `forbidden` code.
        .filter(|l| l.contains("is forbidden: User") || l.contains("Forbidden (403)"))
        .filter(|l| {
            let named = l
                .split_once(r#"in the namespace ""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(ns, _)| ns);
            named.is_none_or(|ns| ours.contains(&ns))
        })
        .collect()
}

/// The real agent binary, started with only the chart ServiceAccount's token,
/// takes the Lease, reads its join-token Secret, reports the (deliberately
/// unusable) token on the Cluster status, runs its controllers in the gated
/// namespace, is refused by the API server (403) in a labelled namespace
/// that has no RoleBinding even with its own gate open, keeps the token out
/// of its logs, and vacates the Lease on SIGTERM.
#[tokio::test]
async fn agent_binary_runs_with_only_the_service_account_token() {
    let i = install("rbac-run").await;
    let _one_agent = AGENT_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Work for the controllers: a placeholder and a chart in the gated
    // namespace, and the same chart in the namespace that carries the label
    // but has no RoleBinding.
    let managed = |ns: &str| {
        json!({"spec": {
            "appRef": {"catalogId": "nextcloud"},
            "mode": "managed",
            "chart": {"sourceType": "helm", "url": "https://charts.example.com", "name": "nextcloud", "version": "1.0.0"},
            "release": {"name": "web", "namespace": ns},
            "values": {"source": "inline", "inline": {"replicas": 1}},
        }})
    };
    for (ns, name, fields) in [
        (
            &i.gated,
            "placeholder",
            json!({"spec": {"appRef": {"catalogId": "ops"}, "mode": "placeholder"}}),
        ),
        (&i.gated, "web", managed(&i.gated)),
        (&i.ungated, "web", managed(&i.ungated)),
    ] {
        ssa(&i.admin, Some(ns), &AI, name, fields).await.unwrap();
    }
    // The agent's own gate is left open to every labelled namespace (no
    // allow-list), as a misconfigured or compromised agent would be: the API
    // server alone must keep it out of the labelled namespace that has no
    // RoleBinding.
    let agent = AgentProc::start(&i, dir.path(), "");
    let logs = || agent.logs();

    let leases = dynamic(&i.admin, Some(&i.agent_ns), &LEASE);
    vworkspace_e2e::wait::eventually(
        "the agent holds the Lease",
        Duration::from_secs(60),
        || async {
            match leases.get_opt(&i.release).await {
                Ok(Some(l)) if l.data["spec"]["holderIdentity"] == "agent-pod-0" => Ok(()),
                other => Err(format!("lease: {other:?}\nagent log:\n{}", logs())),
            }
        },
    )
    .await;

    let clusters = dynamic(&i.admin, None, &CLUSTER);
    let cluster = vworkspace_e2e::wait::eventually(
        "the agent reports the join token on the Cluster status",
        Duration::from_secs(60),
        || async {
            let c = clusters.get(&i.cluster).await.map_err(|e| e.to_string())?;
            let conds = c.data["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if conds
                .iter()
                .any(|c| c["type"] == "Authenticated" && c["reason"] == "JoinTokenInvalid")
            {
                Ok(c)
            } else {
                Err(format!(
                    "status: {}\nagent log:\n{}",
                    c.data["status"],
                    logs()
                ))
            }
        },
    )
    .await;
    assert!(
        !cluster.data.to_string().contains(&i.join_token),
        "the join token leaked into the Cluster object"
    );

    // The controllers run with the same token: status, finalizer and Flux
    // objects in the gated namespace ...
    let ais = dynamic(&i.admin, Some(&i.gated), &AI);
    vworkspace_e2e::wait::eventually(
        "the agent marks the placeholder Ready",
        Duration::from_secs(60),
        || async {
            let ai = ais.get("placeholder").await.map_err(|e| e.to_string())?;
            let conds = ai.data["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if conds.iter().any(|c| {
                c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Placeholder"
            }) {
                Ok(())
            } else {
                Err(format!(
                    "status: {}\nagent log:\n{}",
                    ai.data["status"],
                    logs()
                ))
            }
        },
    )
    .await;
    let releases = dynamic(&i.admin, Some(&i.gated), &HELM_RELEASE);
    let hr = vworkspace_e2e::wait::eventually(
        "the agent creates the HelmRelease in the gated namespace",
        Duration::from_secs(60),
        || async {
            releases
                .get_opt("web")
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no HelmRelease yet\nagent log:\n{}", logs()))
        },
    )
    .await;
    assert!(
        hr.metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some("vworkspace-agent")),
        "the HelmRelease was not written by the agent"
    );
    // Operations on the placeholder: a Velero Backup in Velero's namespace, a
    // Job (and its runner ServiceAccount) in the gated namespace.
    let op_spec = |type_: &str, engine: &str, params: Value| {
        json!({"spec": {
            "targetRef": {"apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": "placeholder"},
            "type": type_, "engine": engine, "parameters": params,
        }})
    };
    ssa(
        &i.admin,
        Some(&i.gated),
        &OP,
        "backup",
        op_spec("Backup", "velero", json!({"retention": "72h"})),
    )
    .await
    .unwrap();
    ssa(
        &i.admin,
        Some(&i.gated),
        &OP,
        "cmd",
        op_spec(
            "RunCommand",
            "job",
            json!({"image": "busybox:1.37", "command": ["true"]}),
        ),
    )
    .await
    .unwrap();
    let ops = dynamic(&i.admin, Some(&i.gated), &OP);
    for (op, res, ns) in [("backup", &BACKUP, &i.velero), ("cmd", &JOB, &i.gated)] {
        let op = op.to_string();
        let ops = &ops;
        let (phase, eref) = vworkspace_e2e::wait::eventually(
            &format!("the agent starts Operation {op}"),
            Duration::from_secs(60),
            || {
                let op = op.clone();
                async move {
                    let o = ops.get(&op).await.map_err(|e| e.to_string())?;
                    let st = &o.data["status"];
                    if st["phase"] == "Running" || st["phase"] == "Succeeded" {
                        Ok((st["phase"].clone(), st["engineRef"].clone()))
                    } else {
                        Err(format!("status: {st}\nagent log:\n{}", logs()))
                    }
                }
            },
        )
        .await;
        assert_eq!(eref["kind"], res.kind, "{op}: {phase}");
        assert_eq!(&eref["namespace"], &json!(ns), "{op}");
        let name = eref["name"].as_str().unwrap();
        dynamic(&i.admin, Some(ns), res)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("{op}: the agent's {} {ns}/{name}: {e}", res.kind));
    }
    dynamic(&i.admin, Some(&i.gated), &SERVICE_ACCOUNT)
        .get("vworkspace-operation-runner")
        .await
        .expect("the runner ServiceAccount");

    // ... and the API server refusing the same writes where no RoleBinding exists.
    let refused_there = format!("in the namespace \"{}\"", i.ungated);
    vworkspace_e2e::wait::eventually(
        "the API server refuses the agent's Flux objects in the unbound namespace",
        Duration::from_secs(60),
        || async {
            let text = logs();
            if text
                .lines()
                .any(|l| l.contains("forbidden") && l.contains(&refused_there))
            {
                Ok(())
            } else {
                Err(format!("no refusal logged yet\nagent log:\n{text}"))
            }
        },
    )
    .await;
    for res in [&HELM_RELEASE, &HELM_REPOSITORY] {
        let left = dynamic(&i.admin, Some(&i.ungated), res)
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(
            left.items.is_empty(),
            "a {} was written in {}",
            res.kind,
            i.ungated
        );
    }

    // Liveness answers without a hub.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", agent.admin_port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    // SIGTERM: the agent vacates the Lease and exits cleanly.
    let log_text = agent.stop().await;
    let lease = leases.get(&i.release).await.unwrap();
    assert!(
        lease.data["spec"]["holderIdentity"].is_null(),
        "not vacated: {}",
        lease.data
    );

    assert!(
        !log_text.contains(&i.join_token),
        "the join token appears in the agent's log"
    );
    assert!(
        !log_text.contains(&i.token),
        "the ServiceAccount token appears in the agent's log"
    );
    // Every refusal is the expected one: nothing the agent needs was refused.
    let refused: Vec<&str> = unexpected_refusals(&log_text, &i.namespaces())
        .into_iter()
        .filter(|l| !l.contains(&refused_there))
        .collect();
    assert!(
        refused.is_empty(),
        "the agent was refused by the API server with the chart's RBAC:\n{}",
        refused.join("\n")
    );

    // The agent left its finalizers; release the objects so no later agent
    // in this API server trips over them.
    for (res, ns, name) in [
        (&OP, &i.gated, "backup"),
        (&OP, &i.gated, "cmd"),
        (&AI, &i.gated, "placeholder"),
        (&AI, &i.gated, "web"),
        (&AI, &i.ungated, "web"),
    ] {
        let api = dynamic(&i.admin, Some(ns), res);
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
        api.delete(name, &Default::default()).await.unwrap();
    }
}

/// `hub-sim serve` on loopback with a fresh state dir; killed on drop.
struct HubProc {
    _child: tokio::process::Child,
    bin: std::path::PathBuf,
    state: std::path::PathBuf,
}

impl HubProc {
    async fn start(state: &std::path::Path) -> Self {
        let bin = workspace_binary("VWS_HUB_SIM_BIN", "vworkspace-hub-sim", "hub-sim");
        std::fs::create_dir_all(state).unwrap();
        let child = tokio::process::Command::new(&bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("HUB_SIM_STATE_DIR", state)
            .env("HUB_SIM_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        vworkspace_e2e::wait::eventually(
            "hub-sim writes its addresses",
            Duration::from_secs(30),
            || async {
                if state.join("admin-addr").exists() && state.join("hub-url").exists() {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await;
        Self {
            _child: child,
            bin,
            state: state.to_path_buf(),
        }
    }

    /// Runs a CLI subcommand against this hub; returns stdout.
    fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write as _;
        let mut child = std::process::Command::new(&self.bin)
            .args(args)
            .env("HUB_SIM_STATE_DIR", &self.state)
            .env_remove("HUB_SIM_ADMIN")
            .env_remove("HUB_SIM_ADMIN_TOKEN")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "hub-sim {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// The whole agent path under the chart's RBAC: the agent binary, holding only
/// the ServiceAccount token, enrolls with hub-sim (it creates its credentials
/// Secret by name), opens the tunnel, applies a signed intent in the gated
/// namespace, refuses one for the labelled namespace outside its allow-list,
/// and its status reaches the hub.
#[tokio::test]
async fn agent_binary_enrolls_and_applies_intents_with_only_the_service_account_token() {
    let i = install("rbac-hub").await;
    let _one_agent = AGENT_PROCESS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProc::start(&dir.path().join("hub")).await;
    let hub_cluster = format!("edge-{}", &i.cluster[i.cluster.len() - 8..]);
    let token = hub
        .cli(
            &[
                "token",
                "create",
                "--cluster",
                &hub_cluster,
                "--org",
                "acme",
            ],
            None,
        )
        .trim()
        .to_string();
    assert!(token.starts_with("ey"), "hub-sim printed no JWT");
    // The operator replaces the join token (section 3 of docs/operations.md).
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "vworkspace-join-token"},
        "stringData": {"registrationToken": token},
    }))
    .unwrap();
    Api::<Secret>::namespaced(i.admin.clone(), &i.agent_ns)
        .replace("vworkspace-join-token", &PostParams::default(), &secret)
        .await
        .unwrap();

    // Configured as the chart configures it: the allow-list is gatedNamespaces.
    let agent = AgentProc::start(&i, dir.path(), &i.gated);
    let clusters = dynamic(&i.admin, None, &CLUSTER);
    vworkspace_e2e::wait::eventually(
        "the Cluster is Connected",
        Duration::from_secs(90),
        || async {
            let c = clusters.get(&i.cluster).await.map_err(|e| e.to_string())?;
            if c.data["status"]["phase"] == "Connected" {
                Ok(())
            } else {
                Err(format!(
                    "status: {}\nagent log:\n{}",
                    c.data["status"],
                    agent.logs()
                ))
            }
        },
    )
    .await;
    let creds = Api::<Secret>::namespaced(i.admin.clone(), &i.agent_ns)
        .get("vworkspace-agent-credentials")
        .await
        .expect("enrollment stored the credentials Secret");
    let data = creds.data.unwrap_or_default();
    for key in ["tls.key", "tls.crt", "ca.crt", "signing-keys.json"] {
        assert!(data.contains_key(key), "credentials Secret lacks {key}");
    }

    let manifest = |ns: &str, name: &str| {
        format!(
            "apiVersion: apps.vworkspace.io/v1alpha1\nkind: ApplicationInstance\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
             spec:\n  appRef:\n    catalogId: cluster-ops\n  mode: placeholder\n"
        )
    };
    hub.cli(
        &["apply", "-f", "-", "--cluster", &hub_cluster],
        Some(&manifest(&i.gated, "from-hub")),
    );
    hub.cli(
        &["apply", "-f", "-", "--cluster", &hub_cluster],
        Some(&manifest(&i.ungated, "from-hub")),
    );

    // Applied in the gated namespace, then Ready, and the status at the hub.
    let ais = dynamic(&i.admin, Some(&i.gated), &AI);
    vworkspace_e2e::wait::eventually(
        "the intent's object is Ready in the gated namespace",
        Duration::from_secs(60),
        || async {
            let Some(ai) = ais.get_opt("from-hub").await.map_err(|e| e.to_string())? else {
                return Err(format!("not applied yet\nagent log:\n{}", agent.logs()));
            };
            let ready = ai.data["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if ready {
                Ok(())
            } else {
                Err(format!("status: {}", ai.data["status"]))
            }
        },
    )
    .await;
    let objects = || {
        let out = hub.cli(
            &["get", "apps", "--cluster", &hub_cluster, "-o", "json"],
            None,
        );
        serde_json::from_str::<Vec<Value>>(&out).unwrap()
    };
    vworkspace_e2e::wait::eventually(
        "the hub sees both outcomes and the status",
        Duration::from_secs(60),
        || async {
            let rows = objects();
            let row = |ns: &str| {
                rows.iter()
                    .find(|r| r["namespace"] == ns)
                    .cloned()
                    .unwrap_or_default()
            };
            let (gated, ungated) = (row(&i.gated), row(&i.ungated));
            let ready_at_hub = gated["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            let refused = ungated["last_outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("rejected"));
            if gated["last_outcome"] == "applied" && ready_at_hub && refused {
                Ok(())
            } else {
                Err(format!("hub objects: {rows:?}"))
            }
        },
    )
    .await;
    assert!(
        dynamic(&i.admin, Some(&i.ungated), &AI)
            .get_opt("from-hub")
            .await
            .unwrap()
            .is_none(),
        "an intent for a namespace outside the allow-list was applied"
    );

    let log_text = agent.stop().await;
    assert!(
        !log_text.contains(&token),
        "the join token appears in the agent's log"
    );
    let refused = unexpected_refusals(&log_text, &i.namespaces());
    assert!(
        refused.is_empty(),
        "the agent was refused by the API server with the chart's RBAC:\n{}",
        refused.join("\n")
    );
}
