//! Shared by the deploy_* tests that install the chart: one `helm install`
//! per test into the shared API server, a client holding only the chart
//! ServiceAccount's token, and the kinds the agent writes.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vworkspace_e2e::deploy;
use vworkspace_e2e::helm::{Helm, Release};

pub const MANAGER: &str = "vworkspace-agent";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Installs our CRDs from the chart's crds/ and the pinned upstream ones, once
/// per test binary (tests run in parallel, installs must not race), before any
/// `helm install`, as docs/operations.md does: Helm 4 does not wait for the
/// CRDs of a chart's crds/ to be established before it creates the Cluster object.
pub async fn install_crds(admin: &kube::Client) {
    static DONE: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let mut done = DONE.lock().await;
    if *done {
        return;
    }
    let crds = vworkspace_e2e::crds::from_paths(&[deploy::chart_dir().join("crds")]).unwrap();
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
pub struct Install {
    pub admin: kube::Client,
    pub agent: kube::Client,
    pub release: String,
    pub agent_ns: String,
    pub gated: String,
    pub ungated: String,
    pub velero: String,
    pub cluster: String,
    /// The ServiceAccount token `agent` carries.
    pub token: String,
    /// The junk join token stored in the join-token Secret.
    pub join_token: String,
}

pub async fn install(prefix: &str) -> Install {
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
    let values = json!({
        "gatedNamespaces": [gated],
        "velero": {"namespace": velero},
        "cluster": {"name": cluster},
        "approval": {"secretName": "vworkspace-approval"},
    });
    helm_install(
        Release {
            name: &release,
            namespace: &agent_ns,
        },
        &values,
    )
    .await;
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

/// `helm install` of the chart into the shared API server as admin (Helm 4
/// waits for nothing: no kubelet runs, the Deployment never becomes ready).
///
/// Every release carries the one cluster-wide admission policy (a fixed
/// name), which a real cluster has once: later installs here take it over
/// (`--take-ownership`), one at a time so no two apply it at once.
pub async fn helm_install(release: Release<'_>, values: &Value) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let helm = tokio::task::spawn_blocking(Helm::resolve)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let _one = ONE_AT_A_TIME.lock().await;
    helm.deploy(
        "install",
        vworkspace_e2e::shared().kubeconfig_path(),
        release,
        &deploy::chart_dir(),
        values,
        &["--take-ownership"],
    )
    .await
    .unwrap_or_else(|e| panic!("installing the chart: {e}"));
}

/// Merges `over` into `base`: maps key by key, anything else replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

impl Install {
    /// This install's namespaces, the agent's first.
    pub fn namespaces(&self) -> [&str; 4] {
        [&self.agent_ns, &self.gated, &self.ungated, &self.velero]
    }
}

/// A client carrying a TokenRequest token of `namespace/name` (no client certificate).
pub async fn sa_client(
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

pub async fn wait_allowed<F, Fut>(what: &str, mut call: F)
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
pub fn allowed<T>(what: &str, r: Result<T, kube::Error>) -> T {
    r.unwrap_or_else(|e| panic!("the agent's ServiceAccount must be allowed to {what}: {e}"))
}

#[track_caller]
pub fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) {
    match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            assert_eq!(s.reason, "Forbidden", "{what}: {s:?}");
        }
        other => {
            panic!("the API server must refuse to let the agent {what} with 403, got {other:?}")
        }
    }
}

pub struct Res {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

pub const AI: Res = Res {
    group: "apps.vworkspace.io",
    version: "v1alpha1",
    kind: "ApplicationInstance",
    plural: "applicationinstances",
};
pub const OP: Res = Res {
    group: "ops.vworkspace.io",
    version: "v1alpha1",
    kind: "Operation",
    plural: "operations",
};
pub const CLUSTER: Res = Res {
    group: "ops.vworkspace.io",
    version: "v1alpha1",
    kind: "Cluster",
    plural: "clusters",
};
pub const HELM_RELEASE: Res = Res {
    group: "helm.toolkit.fluxcd.io",
    version: "v2",
    kind: "HelmRelease",
    plural: "helmreleases",
};
pub const HELM_REPOSITORY: Res = Res {
    group: "source.toolkit.fluxcd.io",
    version: "v1",
    kind: "HelmRepository",
    plural: "helmrepositories",
};
pub const OCI_REPOSITORY: Res = Res {
    group: "source.toolkit.fluxcd.io",
    version: "v1",
    kind: "OCIRepository",
    plural: "ocirepositories",
};
pub const BACKUP: Res = Res {
    group: "velero.io",
    version: "v1",
    kind: "Backup",
    plural: "backups",
};
pub const RESTORE: Res = Res {
    group: "velero.io",
    version: "v1",
    kind: "Restore",
    plural: "restores",
};
pub const VOLUME_SNAPSHOT: Res = Res {
    group: "snapshot.storage.k8s.io",
    version: "v1",
    kind: "VolumeSnapshot",
    plural: "volumesnapshots",
};
pub const REPLICATION_SOURCE: Res = Res {
    group: "volsync.backube",
    version: "v1alpha1",
    kind: "ReplicationSource",
    plural: "replicationsources",
};
pub const WORKFLOW: Res = Res {
    group: "argoproj.io",
    version: "v1alpha1",
    kind: "Workflow",
    plural: "workflows",
};
pub const JOB: Res = Res {
    group: "batch",
    version: "v1",
    kind: "Job",
    plural: "jobs",
};
pub const SERVICE_ACCOUNT: Res = Res {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
};
pub const LEASE: Res = Res {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
};

impl Res {
    pub fn ar(&self) -> ApiResource {
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
    pub fn body(&self, name: &str, fields: Value) -> Value {
        let ar = self.ar();
        let mut body = json!({
            "apiVersion": ar.api_version,
            "kind": ar.kind,
            "metadata": {"name": name},
        });
        merge(&mut body, &fields);
        body
    }
}

pub fn dynamic(client: &kube::Client, ns: Option<&str>, res: &Res) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &res.ar()),
        None => Api::all_with(client.clone(), &res.ar()),
    }
}

pub async fn ssa(
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
pub fn downstream_objects() -> Vec<(&'static Res, &'static str, Value)> {
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
