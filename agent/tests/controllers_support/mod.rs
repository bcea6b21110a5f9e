//! Shared setup of the controller tests: one real control plane per test
//! binary with our CRDs and the upstream CRDs installed, the real upstream
//! controllers beside it (kube-controller-manager, Flux source- and
//! helm-controller, the test charts over HTTP and OCI), the agent's
//! controllers and the stand-ins for what needs a kubelet running on their own
//! runtime for the whole binary, and every log line captured so tests can scan
//! it for secrets.

#![allow(dead_code)]

use std::{
    io::Write,
    sync::{Mutex, OnceLock, mpsc},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
        PostParams,
    },
};
use serde_json::{Value, json};
use vworkspace_agent::controllers::{self, Config, Metrics};
use vworkspace_crds::{ApplicationInstance, Operation, manifests};
use vworkspace_e2e::standins::{self, StandInConfig};

/// Shared approval secret of the test agent.
pub const APPROVAL_SECRET: &[u8] = b"controllers-test-approval-secret";
/// History limit per target of the test agent.
pub const HISTORY_LIMIT: usize = 3;
/// How long tests wait for a condition.
pub const WAIT: Duration = Duration::from_secs(60);
/// Namespace Velero objects go to.
pub const VELERO_NS: &str = "velero";

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        if std::env::var_os("VWS_TEST_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the controllers and stand-ins logged so far.
pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

/// What the optional-CRD variants install.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// Every upstream CRD and every real upstream controller
    /// ([`vworkspace_e2e::upstream::shared`]).
    All,
    /// Only the Flux CRDs (HelmRelease and sources): engines like Velero are
    /// missing. Flux itself does not run (it would install every upstream
    /// CRD); kube-controller-manager does, so Jobs finish for real.
    FluxOnly,
}

/// Starts (once per binary) the control plane, CRDs, upstream controllers,
/// the agent's controllers and the stand-ins.
pub fn start(upstream: Upstream) {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,vworkspace_agent=debug,kube_runtime=warn")
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
        let cp = vworkspace_e2e::shared();
        if upstream == Upstream::All
            && let Err(e) = vworkspace_e2e::upstream::try_shared()
        {
            panic!(
                "the real upstream controllers (kube-controller-manager, Flux) did not \
                     start: {e}\nThey are built once from Go modules into ~/.cache/vworkspace; \
                     see tests/README.md for the TEST_ASSET_* variables that point at prebuilt \
                     binaries instead."
            );
        }
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name("controllers".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the controllers");
                rt.block_on(async move {
                    let client = match cp.client() {
                        Ok(c) => c,
                        Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
                    };
                    if let Err(e) = install(&client, upstream).await {
                        return tx.send(Err(e)).unwrap_or(());
                    }
                    // Without the shared upstream, the Job controller alone:
                    // the Job stand-in only moves Pods, as a kubelet would.
                    let _controller_manager = if upstream == Upstream::FluxOnly {
                        match start_controller_manager(cp).await {
                            Ok(cm) => Some(cm),
                            Err(e) => return tx.send(Err(e)).unwrap_or(()),
                        }
                    } else {
                        None
                    };
                    let _standins = standins::run_all(
                        client.clone(),
                        StandInConfig {
                            slow_delay: Duration::from_secs(2),
                            ..Default::default()
                        },
                    );
                    let mut registry = prometheus_client::registry::Registry::default();
                    let metrics = Metrics::register(&mut registry);
                    let config = Config {
                        velero_namespace: VELERO_NS.into(),
                        history_limit: HISTORY_LIMIT,
                        approval_secret: Some(APPROVAL_SECRET.to_vec()),
                        resync: Duration::from_secs(60),
                        ..Config::default()
                    };
                    let (gate, gate_watch) =
                        controllers::NamespaceGate::watch(client.clone(), Default::default());
                    tokio::spawn(gate_watch);
                    let run = controllers::run(
                        client,
                        config,
                        metrics,
                        gate,
                        tokio_util::sync::CancellationToken::new(),
                    );
                    let _ = tx.send(Ok(()));
                    if let Err(e) = run.await {
                        panic!("controllers stopped: {e}");
                    }
                });
            })
            .expect("spawning the controllers thread");
        match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("controller test setup failed: {e}"),
            Err(e) => panic!("controller test setup did not finish: {e}"),
        }
    });
}

/// kube-controller-manager on its own, for [`Upstream::FluxOnly`]. The
/// directory holds its log and lives as long as the process.
async fn start_controller_manager(
    cp: &'static vworkspace_e2e::ControlPlane,
) -> Result<vworkspace_e2e::upstream::ControllerManager, String> {
    let dir = tempfile::Builder::new()
        .prefix("vws-controller-manager-")
        .tempdir()
        .map_err(|e| format!("creating the controller manager's directory: {e}"))?
        .keep();
    vworkspace_e2e::upstream::ControllerManager::start(cp, &dir)
        .await
        .map_err(|e| format!("starting kube-controller-manager: {e}"))
}

async fn install(client: &Client, upstream: Upstream) -> Result<(), String> {
    let ours = [
        manifests::application_instance_crd(),
        manifests::operation_crd(),
    ];
    vworkspace_e2e::crds::install(client, &ours)
        .await
        .map_err(|e| format!("installing our CRDs: {e}"))?;
    let sets = tokio::task::spawn_blocking(vworkspace_e2e::crds::upstream_crds)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading upstream CRDs: {e}"))?;
    let mut crds = Vec::new();
    for set in sets {
        for crd in set.crds().map_err(|e| e.to_string())? {
            let flux = crd.spec.group.ends_with("fluxcd.io");
            if upstream == Upstream::All || flux {
                crds.push(crd);
            }
        }
    }
    vworkspace_e2e::crds::install(client, &crds)
        .await
        .map_err(|e| format!("installing upstream CRDs: {e}"))?;
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(VELERO_NS.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(format!("creating the velero namespace: {e}")),
    }
    Ok(())
}

/// A client on the test's runtime and a fresh gated namespace.
pub async fn env(prefix: &str) -> (Client, String) {
    start(Upstream::All);
    env_started(prefix).await
}

/// Like [`env`] after [`start`] was called with a variant.
pub async fn env_started(prefix: &str) -> (Client, String) {
    let client = vworkspace_e2e::shared_client();
    let ns = vworkspace_e2e::test_namespace(&client, prefix)
        .await
        .expect("creating the test namespace");
    (client, ns)
}

/// Sets the stand-in scenario of a namespace (optionally for one kind).
///
/// Only kinds a stand-in handles (`vworkspace_e2e::standins`): Flux runs for
/// real, so a HelmRelease outcome comes from the chart and the cluster.
pub async fn scenario(client: &Client, ns: &str, kind: Option<&str>, scenario: &str) {
    assert!(
        kind != Some("HelmRelease"),
        "HelmReleases are reconciled by the real helm-controller; pick the outcome with the chart"
    );
    let key = match kind {
        Some(k) => format!(
            "{}-{}",
            standins::SCENARIO_ANNOTATION,
            k.to_ascii_lowercase()
        ),
        None => standins::SCENARIO_ANNOTATION.to_string(),
    };
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {key: scenario}}})),
        )
        .await
        .expect("annotating the namespace");
}

/// An ApplicationInstance manifest from a spec.
pub fn app(name: &str, ns: &str, spec: Value) -> ApplicationInstance {
    serde_json::from_value(json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    }))
    .expect("valid ApplicationInstance")
}

/// The chart every helm-source instance installs: the test chart `hello`
/// (0.1.0 and 0.2.0; a ConfigMap `<release>-hello` with the values greeting,
/// replicaCount and chartVersion, and a Secret `<release>-hello-credentials`
/// with the value password; 0.2.0 adds ConfigMap `<release>-hello-feature`).
pub const CHART: &str = "hello";
/// A chart that fails to render unless value `must` is set.
pub const NEEDS_VALUE_CHART: &str = "needs-value";
/// A chart whose Deployment never becomes ready (no kubelet): an install
/// stays in progress until Helm's timeout (5 min).
pub const NEVER_READY_CHART: &str = "never-ready";
/// The message Helm fails [`NEEDS_VALUE_CHART`] with.
pub const NEEDS_VALUE_MESSAGE: &str = "value 'must' is required";
/// Greeting in the inline values of [`helm_spec`].
pub const GREETING: &str = "hello from the controller tests";

/// The HTTP Helm repository serving tests/charts (the shared upstream).
pub fn chart_repo_url() -> String {
    vworkspace_e2e::upstream::shared()
        .charts
        .http_url()
        .to_string()
}

/// The OCI registry path holding the charts of tests/charts.
pub fn chart_oci_url() -> String {
    vworkspace_e2e::upstream::shared().charts.oci_url()
}

/// A managed helm-source spec of the [`CHART`] chart from the local Helm
/// repository, with inline values.
pub fn helm_spec(release: &str, ns: &str, version: &str) -> Value {
    chart_spec(release, ns, CHART, version)
}

/// A managed helm-source spec of any chart in the local Helm repository.
pub fn chart_spec(release: &str, ns: &str, chart: &str, version: &str) -> Value {
    json!({
        "appRef": { "catalogId": chart },
        "mode": "managed",
        "chart": { "sourceType": "helm", "url": chart_repo_url(), "name": chart, "version": version },
        "release": { "name": release, "namespace": ns },
        "values": { "source": "inline", "inline": { "greeting": GREETING, "replicaCount": 1 } },
    })
}

/// The ConfigMap `<release>-hello` the chart installed (its data shows the
/// values and chart version Helm rendered).
pub async fn release_config_map(
    client: &Client,
    ns: &str,
    release: &str,
) -> Option<k8s_openapi::api::core::v1::ConfigMap> {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&format!("{release}-hello"))
        .await
        .expect("reading the release's ConfigMap")
}

/// Waits until the release's ConfigMap has `key` = `value`.
pub async fn wait_release_data(client: &Client, ns: &str, release: &str, key: &str, value: &str) {
    vworkspace_e2e::wait::eventually(
        &format!("{ns}/{release}-hello data {key}={value}"),
        WAIT,
        || async move {
            let cm = release_config_map(client, ns, release).await;
            let got = cm
                .as_ref()
                .and_then(|c| c.data.as_ref())
                .and_then(|d| d.get(key))
                .cloned();
            if got.as_deref() == Some(value) {
                Ok(())
            } else {
                Err(format!("{key} is {got:?}"))
            }
        },
    )
    .await
}

/// Finalizer a test puts on an object to hold its deletion.
pub const HOLD: &str = "test.vworkspace.io/hold";

/// Creates ConfigMap `<release>-hello-feature`, immutable and held by
/// [`HOLD`], with data of its own: 0.2.0 of the chart renders that ConfigMap
/// with other data, which the API server refuses ("field is immutable"), and
/// Helm's clean-up on failure cannot delete it away. Every upgrade to 0.2.0
/// fails until [`unhold_config_map`].
pub async fn block_feature_config_map(client: &Client, ns: &str, release: &str) {
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("{release}-hello-feature")),
            finalizers: Some(vec![HOLD.into()]),
            ..Default::default()
        },
        data: Some([("owner".to_string(), "someone else".to_string())].into()),
        immutable: Some(true),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("creating the conflicting ConfigMap");
}

/// Removes the finalizers of a ConfigMap (the test's [`HOLD`] among them).
pub async fn unhold_config_map(client: &Client, ns: &str, name: &str) {
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("removing the test's finalizer");
}

/// The condition `type_` of a Flux object (Null when absent).
pub fn flux_condition(obj: &DynamicObject, type_: &str) -> Value {
    obj.data["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The last lines of the upstream logs, for failure messages.
pub fn upstream_logs() -> String {
    vworkspace_e2e::upstream::shared().log_tails(40)
}

/// A placeholder spec.
pub fn placeholder_spec() -> Value {
    json!({ "appRef": { "catalogId": "cluster-ops" }, "mode": "placeholder" })
}

/// Creates an ApplicationInstance.
pub async fn create_app(client: &Client, ns: &str, name: &str, spec: Value) -> ApplicationInstance {
    Api::<ApplicationInstance>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &app(name, ns, spec))
        .await
        .expect("creating the ApplicationInstance")
}

/// Creates a placeholder target and waits for it to be Ready.
pub async fn ready_placeholder(client: &Client, ns: &str, name: &str) {
    create_app(client, ns, name, placeholder_spec()).await;
    wait_app(client, ns, name, "Ready=True/Placeholder", |a| {
        cond_is(
            &a.status.clone().unwrap_or_default().conditions,
            "Ready",
            "True",
            "Placeholder",
        )
    })
    .await;
}

/// Creates an Operation from a spec.
pub async fn create_op(client: &Client, ns: &str, name: &str, spec: Value) -> Operation {
    let op: Operation = serde_json::from_value(json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1",
        "kind": "Operation",
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    }))
    .expect("valid Operation");
    Api::<Operation>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &op)
        .await
        .expect("creating the Operation")
}

/// An Operation spec.
pub fn op_spec(target: &str, type_: &str, engine: &str, params: Value) -> Value {
    json!({
        "targetRef": { "apiVersion": "apps.vworkspace.io/v1alpha1", "kind": "ApplicationInstance", "name": target },
        "type": type_,
        "engine": engine,
        "parameters": params,
    })
}

/// Whether `conds` holds `type_` with `status` (and `reason` when not empty).
pub fn cond_is(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
    status: &str,
    reason: &str,
) -> bool {
    conds.iter().any(|c| {
        c.type_ == type_ && c.status == status && (reason.is_empty() || c.reason == reason)
    })
}

fn describe<T: serde::Serialize>(o: &Option<T>) -> String {
    o.as_ref()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .unwrap_or_else(|| "<none>".into())
}

/// Waits until the ApplicationInstance satisfies `check`.
pub async fn wait_app(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&ApplicationInstance) -> bool,
) -> ApplicationInstance {
    let api = Api::<ApplicationInstance>::namespaced(client.clone(), ns);
    vworkspace_e2e::wait::eventually(&format!("{ns}/{name} {what}"), WAIT, || {
        let api = api.clone();
        let check = &check;
        async move {
            match api.get_opt(name).await {
                Ok(Some(a)) if check(&a) => Ok(a),
                Ok(Some(a)) => Err(format!("status {}", describe(&a.status))),
                Ok(None) => Err("not found".into()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Waits until the Operation satisfies `check`.
pub async fn wait_op(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&Operation) -> bool,
) -> Operation {
    let api = Api::<Operation>::namespaced(client.clone(), ns);
    vworkspace_e2e::wait::eventually(&format!("{ns}/{name} {what}"), WAIT, || {
        let api = api.clone();
        let check = &check;
        async move {
            match api.get_opt(name).await {
                Ok(Some(o)) if check(&o) => Ok(o),
                Ok(Some(o)) => Err(format!("status {}", describe(&o.status))),
                Ok(None) => Err("not found".into()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await
}

/// Waits until the Operation has `phase` and condition `type_=True/reason`.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: &str,
    type_: &str,
    reason: &str,
) -> Operation {
    wait_op(
        client,
        ns,
        name,
        &format!("phase {phase}, {type_}=True/{reason}"),
        |o| {
            let st = o.status.clone().unwrap_or_default();
            st.phase.map(|p| p.as_str()) == Some(phase)
                && cond_is(&st.conditions, type_, "True", reason)
        },
    )
    .await
}

/// A dynamic API for an upstream kind.
pub fn dyn_api(
    client: &Client,
    ns: &str,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// HelmReleases of a namespace.
pub fn helm_releases(client: &Client, ns: &str) -> Api<DynamicObject> {
    dyn_api(
        client,
        ns,
        "helm.toolkit.fluxcd.io",
        "v2",
        "HelmRelease",
        "helmreleases",
    )
}

/// Creates an Opaque Secret.
pub async fn create_secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        string_data: Some([(key.to_string(), value.to_string())].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("creating the Secret");
}

/// Fails when `needle` (or its base64) appears in any object of the namespace
/// other than Secrets, in any of the given extra objects, or in the logs.
pub async fn assert_not_leaked(client: &Client, ns: &str, needle: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(needle);
    let mut dumps: Vec<(String, String)> = Vec::new();
    let kinds: &[(&str, &str, &str, &str)] = &[
        (
            "apps.vworkspace.io",
            "v1alpha1",
            "ApplicationInstance",
            "applicationinstances",
        ),
        ("ops.vworkspace.io", "v1alpha1", "Operation", "operations"),
        (
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            "helmreleases",
        ),
        (
            "source.toolkit.fluxcd.io",
            "v1",
            "HelmRepository",
            "helmrepositories",
        ),
        (
            "source.toolkit.fluxcd.io",
            "v1",
            "OCIRepository",
            "ocirepositories",
        ),
        ("batch", "v1", "Job", "jobs"),
        ("argoproj.io", "v1alpha1", "Workflow", "workflows"),
        ("", "v1", "ConfigMap", "configmaps"),
        ("", "v1", "Event", "events"),
    ];
    for (g, v, k, p) in kinds {
        let api = dyn_api(client, ns, g, v, k, p);
        let list = api
            .list(&ListParams::default())
            .await
            .expect("listing for the secret scan");
        for o in list.items {
            dumps.push((
                format!("{k} {}", o.name_any()),
                serde_json::to_string(&o).unwrap_or_default(),
            ));
        }
    }
    let velero = dyn_api(client, VELERO_NS, "velero.io", "v1", "Backup", "backups");
    for o in velero
        .list(&ListParams::default())
        .await
        .expect("listing backups")
        .items
    {
        dumps.push((
            format!("Backup {}", o.name_any()),
            serde_json::to_string(&o).unwrap_or_default(),
        ));
    }
    dumps.push(("logs".into(), logs()));
    for (what, text) in dumps {
        assert!(!text.contains(needle), "secret value leaked into {what}");
        assert!(
            !text.contains(&b64),
            "base64 of the secret value leaked into {what}"
        );
    }
}

/// Name of the target ApplicationInstance an [`OpCase`] creates.
pub const TARGET: &str = "t";

/// One Operation test, set up the way almost every one starts: a namespace
/// of its own, the stand-in scenarios it needs, and a Ready placeholder
/// ApplicationInstance [`TARGET`] for its Operations to act on.
pub struct OpCase {
    /// Client of the shared control plane.
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
}

impl OpCase {
    /// Creates the namespace, sets `scenarios` (kind, scenario) and waits for
    /// the target to be Ready.
    pub async fn new(prefix: &str, scenarios: &[(Option<&str>, &str)]) -> Self {
        let (client, ns) = env(prefix).await;
        for (kind, name) in scenarios {
            scenario(&client, &ns, *kind, name).await;
        }
        ready_placeholder(&client, &ns, TARGET).await;
        Self { client, ns }
    }
}
