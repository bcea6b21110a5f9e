//! Our CRDs against the real kube-apiserver: installed from the committed
//! manifests, checked against the upstream examples and the upstream CRDs
//! (installed side by side under `upstream.<group>`), and through kubectl.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use vworkspace_crds::manifests;

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Installs our CRDs from the committed `crds/manifests/all.yaml` (idempotent).
async fn install_ours(client: &kube::Client) -> Vec<CustomResourceDefinition> {
    let path = manifests::committed_dir().join(manifests::ALL_IN_ONE);
    let crds = vworkspace_e2e::crds::from_paths(&[&path])
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    vworkspace_e2e::crds::install(client, &crds)
        .await
        .unwrap_or_else(|e| panic!("installing our CRDs: {e}"));
    crds
}

async fn install_upstream(client: &kube::Client) {
    vworkspace_e2e::crds::install_upstream_vworkspace_crds(client, Some(UPSTREAM_PREFIX))
        .await
        .unwrap_or_else(|e| panic!("installing the upstream vWorkspace CRDs: {e}"));
}

const UPSTREAM_PREFIX: &str = "upstream";

fn resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap();
    let plural = match kind {
        "ApplicationInstance" => "applicationinstances",
        "Operation" => "operations",
        "Cluster" => "clusters",
        other => panic!("unexpected kind {other}"),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Moves an object to the upstream test group (`upstream.apps.vworkspace.io/...`).
fn to_upstream(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let api_version = doc["apiVersion"].as_str().unwrap().to_string();
    doc["apiVersion"] = Value::from(format!("{UPSTREAM_PREFIX}.{api_version}"));
    doc
}

/// An API for the object's kind: namespaced kinds in `ns` (overriding the
/// example's namespace), Cluster cluster-wide.
fn api_for(client: &kube::Client, doc: &mut Value, ns: &str) -> Api<DynamicObject> {
    let ar = resource(
        doc["apiVersion"].as_str().unwrap(),
        doc["kind"].as_str().unwrap(),
    );
    if ar.kind == "Cluster" {
        Api::all_with(client.clone(), &ar)
    } else {
        doc["metadata"]["namespace"] = Value::from(ns);
        Api::namespaced_with(client.clone(), ns, &ar)
    }
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        field_manager: None,
    }
}

/// Server-side dry-run create; returns the object as the server would store it.
async fn dry_run_create(
    client: &kube::Client,
    doc: &Value,
    ns: &str,
) -> Result<Value, kube::Error> {
    let mut doc = doc.clone();
    let api = api_for(client, &mut doc, ns);
    let obj: DynamicObject = serde_json::from_value(doc).unwrap();
    let created = api.create(&dry_run(), &obj).await?;
    Ok(serde_json::to_value(created).unwrap())
}

fn shared_dir() -> PathBuf {
    vworkspace_e2e::crds::shared_dir()
}

/// Every vWorkspace document in the upstream examples, as (file, document).
fn upstream_examples() -> Vec<(String, Value)> {
    let dir = shared_dir().join("upstream-crds/vworkspace/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "reading {}: {e}; set VWS_SHARED_DIR to the shared reference directory",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for doc in docs {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            if api_version.contains("vworkspace.io/") {
                out.push((name.clone(), doc));
            }
        }
    }
    out
}

/// Asserts every non-null value of `input` is in `output` at the same path
/// (nothing pruned or changed; the server may add defaults).
fn assert_kept(path: &str, input: &Value, output: &Value) {
    match (input, output) {
        (Value::Null, _) => {}
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let here = format!("{path}.{k}");
                match o.get(k) {
                    Some(ov) => assert_kept(&here, v, ov),
                    None if v.is_null() => {}
                    None => panic!("{here} was pruned by the server (input {v})"),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            assert_eq!(i.len(), o.len(), "{path}: array length changed");
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                assert_kept(&format!("{path}[{n}]"), iv, ov);
            }
        }
        (i, o) => assert_eq!(i, o, "{path} changed"),
    }
}

fn api_error(result: Result<Value, kube::Error>, what: &str) -> (u16, String) {
    match result {
        Ok(obj) => panic!("{what}: accepted, expected a rejection: {obj}"),
        Err(kube::Error::Api(s)) => (s.code, s.message.clone()),
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

fn managed_instance(name: &str) -> Value {
    json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": name},
        "spec": {
            "appRef": {"catalogId": "nextcloud"},
            "chart": {
                "sourceType": "oci",
                "url": "oci://registry.example.com/charts",
                "name": "nextcloud",
                "version": "6.6.0"
            },
            "release": {"name": name, "namespace": "placeholder-ns"},
            "values": {"source": "inline", "inline": {"replicaCount": 2, "ingress": {"enabled": true}}}
        }
    })
}

fn operation(name: &str, type_: &str, engine: &str) -> Value {
    json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1",
        "kind": "Operation",
        "metadata": {"name": name},
        "spec": {
            "targetRef": {
                "apiVersion": "apps.vworkspace.io/v1alpha1",
                "kind": "ApplicationInstance",
                "name": "app"
            },
            "type": type_,
            "engine": engine,
            "parameters": {"any": {"nested": ["value", 1, true]}}
        }
    })
}

fn with(mut doc: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = doc.pointer_mut(parent).unwrap();
    if value.is_null() {
        target.as_object_mut().unwrap().remove(key);
    } else {
        target[key] = value;
    }
    doc
}

#[tokio::test]
async fn our_crds_are_established_and_discoverable() {
    init();
    let client = vworkspace_e2e::shared_client();
    let crds = install_ours(&client).await;
    let names: Vec<String> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "applicationinstances.apps.vworkspace.io",
            "operations.ops.vworkspace.io",
            "clusters.ops.vworkspace.io"
        ]
    );
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in &names {
        let live = api.get(name).await.unwrap();
        let conditions = live.status.unwrap().conditions.unwrap_or_default();
        for type_ in ["Established", "NamesAccepted"] {
            assert!(
                conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True"),
                "{name}: {type_} not True in {conditions:?}"
            );
        }
    }
    let apps = client
        .list_api_group_resources("apps.vworkspace.io/v1alpha1")
        .await
        .unwrap();
    let appinst = apps
        .resources
        .iter()
        .find(|r| r.name == "applicationinstances")
        .unwrap();
    assert_eq!(
        appinst.short_names.as_deref(),
        Some(&["appinst".to_string()][..])
    );
    assert!(appinst.namespaced);
    let ops = client
        .list_api_group_resources("ops.vworkspace.io/v1alpha1")
        .await
        .unwrap();
    let mut plurals: Vec<(&str, bool)> = ops
        .resources
        .iter()
        .map(|r| (r.name.as_str(), r.namespaced))
        .collect();
    plurals.sort();
    assert_eq!(
        plurals,
        [
            ("clusters", false),
            ("clusters/status", false),
            ("operations", true),
            ("operations/status", true)
        ]
    );
}

#[tokio::test]
async fn every_upstream_example_is_accepted_with_no_field_pruned() {
    init();
    let client = vworkspace_e2e::shared_client();
    install_ours(&client).await;
    let ns = vworkspace_e2e::test_namespace(&client, "crds-examples")
        .await
        .unwrap();
    let examples = upstream_examples();
    let mut kinds = BTreeMap::<String, usize>::new();
    for (file, doc) in &examples {
        let stored = dry_run_create(&client, doc, &ns)
            .await
            .unwrap_or_else(|e| panic!("{file}: rejected by our CRD: {e}"));
        assert_kept(&format!("{file}:spec"), &doc["spec"], &stored["spec"]);
        assert_kept(
            &format!("{file}:labels"),
            &doc["metadata"]["labels"],
            &stored["metadata"]["labels"],
        );
        assert_kept(
            &format!("{file}:annotations"),
            &doc["metadata"]["annotations"],
            &stored["metadata"]["annotations"],
        );
        *kinds
            .entry(doc["kind"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Guards against the examples going missing: 2 ApplicationInstances, 1 Operation, 3 Clusters.
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            ("ApplicationInstance".to_string(), 2),
            ("Cluster".to_string(), 3),
            ("Operation".to_string(), 1)
        ]
    );
}

#[tokio::test]
async fn cluster_accepts_current_and_deprecated_field_names() {
    init();
    let client = vworkspace_e2e::shared_client();
    install_ours(&client).await;
    let api: Api<vworkspace_crds::Cluster> = Api::all(client.clone());
    let cases = [
        (
            "current",
            json!({
                "controlPlaneEndpoint": "https://workspace.example.org",
                "registrationTokenSecretRef": {"name": "cluster-local-registration", "key": "registrationToken"}
            }),
            "https://workspace.example.org",
        ),
        (
            "current, key defaulted by the agent",
            json!({
                "clusterId": "c-1",
                "controlPlaneEndpoint": "http://hub.127.0.0.1.nip.io:8080",
                "registrationTokenSecretRef": {"name": "reg"}
            }),
            "http://hub.127.0.0.1.nip.io:8080",
        ),
        (
            "deprecated controlPlaneBaseUrl + inline token",
            json!({
                "clusterId": "cluster-prod-1",
                "controlPlaneBaseUrl": "https://control-plane.example.com",
                "registrationToken": "vwksp-reg-REPLACE_ME"
            }),
            "https://control-plane.example.com",
        ),
        (
            "older odooBaseUrl and rotation flag",
            json!({"odooBaseUrl": "https://odoo.example.com", "rotateCredentials": true, "capabilities": {"flux": true, "velero": false}}),
            "https://odoo.example.com",
        ),
    ];
    for (n, (name, spec, endpoint)) in cases.into_iter().enumerate() {
        let cluster: vworkspace_crds::Cluster = serde_json::from_value(json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": format!("cluster-names-{n}")},
            "spec": spec.clone(),
        }))
        .unwrap();
        let stored = api
            .create(&dry_run(), &cluster)
            .await
            .unwrap_or_else(|e| panic!("{name}: rejected: {e}"));
        assert_kept(name, &spec, &serde_json::to_value(&stored.spec).unwrap());
        assert_eq!(stored.spec.endpoint(), Some(endpoint), "{name}");
    }
    // The current name carries a URL pattern; the message says so.
    let bad: vworkspace_crds::Cluster = serde_json::from_value(json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "cluster-bad-endpoint"},
        "spec": {"controlPlaneEndpoint": "workspace.example.org"}
    }))
    .unwrap();
    match api.create(&dry_run(), &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains("spec.controlPlaneEndpoint") && s.message.contains("^https?://"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
}

/// Objects the upstream CRDs accept, beyond the examples.
fn valid_variants() -> Vec<(String, Value)> {
    let mut out = vec![
        ("managed, inline values".to_string(), managed_instance("a1")),
        (
            "managed, helm repository, secretRef values, integrations".to_string(),
            with(
                with(
                    with(
                        managed_instance("a2"),
                        "/spec/chart",
                        json!({"sourceType": "helm", "url": "https://charts.example.com", "name": "wiki", "version": "1.2.3-rc.1+build.5"}),
                    ),
                    "/spec/values",
                    json!({"source": "secretRef", "secretRef": {"name": "vals", "key": "values.yaml"}}),
                ),
                "/spec/integrations",
                json!({"certManager": {"enabled": true}, "externalSecrets": {"enabled": false}, "ingress": {"enabled": true, "host": "wiki.example.com"}}),
            ),
        ),
        (
            "managed, configMapRef values, explicit mode".to_string(),
            with(
                with(
                    managed_instance("a3"),
                    "/spec/values",
                    json!({"source": "configMapRef", "configMapRef": {"name": "vals", "key": "v"}}),
                ),
                "/spec/mode",
                json!("managed"),
            ),
        ),
        (
            "placeholder without release".to_string(),
            json!({
                "apiVersion": "apps.vworkspace.io/v1alpha1",
                "kind": "ApplicationInstance",
                "metadata": {"name": "cluster-ops", "annotations": {"ops.vworkspace.io/runcommand": "job"}},
                "spec": {"appRef": {"catalogId": "cluster-ops"}, "mode": "placeholder"}
            }),
        ),
        (
            "placeholder with release".to_string(),
            json!({
                "apiVersion": "apps.vworkspace.io/v1alpha1",
                "kind": "ApplicationInstance",
                "metadata": {"name": "cluster-ops-2"},
                "spec": {"appRef": {"catalogId": "cluster-ops"}, "mode": "placeholder", "release": {"name": "ops", "namespace": "x"}}
            }),
        ),
    ];
    // Every upstream type with every upstream engine (the CRDs do not restrict pairs).
    for type_ in [
        "Backup",
        "Restore",
        "Upgrade",
        "Migration",
        "RunCommand",
        "Runbook",
    ] {
        for engine in [
            "velero",
            "workflow",
            "job",
            "helm",
            "volsync",
            "helmHookJob",
        ] {
            let name = format!("op-{}-{}", type_.to_lowercase(), engine.to_lowercase());
            let mut op = operation(&name, type_, engine);
            op["spec"]["approvals"] = json!({"required": true, "claim": "vws1.e30.00", "approvedBy": "ops@example.com", "approvedAt": "2026-11-27T03:00:00Z"});
            out.push((format!("Operation {type_}/{engine}"), op));
        }
    }
    out
}

#[tokio::test]
async fn objects_valid_for_the_upstream_crds_are_valid_for_ours() {
    init();
    let client = vworkspace_e2e::shared_client();
    install_ours(&client).await;
    install_upstream(&client).await;
    let ns = vworkspace_e2e::test_namespace(&client, "crds-upstream")
        .await
        .unwrap();
    let mut objects = upstream_examples();
    objects.extend(valid_variants());
    for (what, doc) in &objects {
        let theirs = dry_run_create(&client, &to_upstream(doc), &ns)
            .await
            .unwrap_or_else(|e| panic!("{what}: the upstream CRD rejects it: {e}"));
        let ours = dry_run_create(&client, doc, &ns)
            .await
            .unwrap_or_else(|e| panic!("{what}: upstream accepts it, ours rejects it: {e}"));
        // Everything upstream stores we store too, and we prune nothing (upstream
        // prunes the Cluster fields newer than its CRD, e.g. controlPlaneEndpoint).
        assert_kept(what, &theirs["spec"], &ours["spec"]);
        assert_kept(what, &doc["spec"], &ours["spec"]);
    }
    assert!(objects.len() >= 6 + 5 + 36, "{}", objects.len());
}

#[tokio::test]
async fn invalid_objects_are_rejected_with_a_clear_message() {
    init();
    let client = vworkspace_e2e::shared_client();
    install_ours(&client).await;
    install_upstream(&client).await;
    let ns = vworkspace_e2e::test_namespace(&client, "crds-invalid")
        .await
        .unwrap();
    let op = || operation("op", "Backup", "velero");
    let ai = || managed_instance("app");
    // (what, object, substrings of the message, also rejected by the upstream CRD?)
    let cases: Vec<(&str, Value, Vec<&str>, bool)> = vec![
        (
            "unknown engine",
            with(op(), "/spec/engine", json!("argo")),
            vec!["spec.engine", "Unsupported value: \"argo\"", "\"velero\""],
            true,
        ),
        (
            "unknown type",
            with(op(), "/spec/type", json!("Delete")),
            vec!["spec.type", "Unsupported value: \"Delete\""],
            true,
        ),
        (
            "engine in the wrong case",
            with(op(), "/spec/engine", json!("Velero")),
            vec!["spec.engine", "Unsupported value: \"Velero\""],
            true,
        ),
        (
            "missing type",
            with(op(), "/spec/type", Value::Null),
            vec!["spec.type: Required value"],
            true,
        ),
        (
            "missing targetRef",
            with(op(), "/spec/targetRef", Value::Null),
            vec!["spec.targetRef: Required value"],
            true,
        ),
        (
            "missing targetRef.name",
            with(op(), "/spec/targetRef/name", Value::Null),
            vec!["spec.targetRef.name: Required value"],
            true,
        ),
        (
            "unknown chart source type",
            with(ai(), "/spec/chart/sourceType", json!("git")),
            vec!["spec.chart.sourceType", "Unsupported value: \"git\""],
            true,
        ),
        (
            "unknown values source",
            with(ai(), "/spec/values/source", json!("vault")),
            vec!["spec.values.source", "Unsupported value: \"vault\""],
            true,
        ),
        (
            "unknown mode",
            with(ai(), "/spec/mode", json!("unmanaged")),
            vec!["spec.mode", "Unsupported value: \"unmanaged\""],
            true,
        ),
        (
            "missing appRef",
            with(ai(), "/spec/appRef", Value::Null),
            vec!["spec.appRef: Required value"],
            true,
        ),
        (
            "empty catalogId",
            with(ai(), "/spec/appRef/catalogId", json!("")),
            vec!["spec.appRef.catalogId", "at least 1 chars long"],
            true,
        ),
        // Stricter than the upstream CRD, as upstream's docs and webhook ask:
        (
            "chart version `latest`",
            with(ai(), "/spec/chart/version", json!("latest")),
            vec!["spec.chart.version", "should match"],
            false,
        ),
        (
            "chart version range",
            with(ai(), "/spec/chart/version", json!(">=6.5.0 <7.0.0")),
            vec!["spec.chart.version", "should match"],
            false,
        ),
        (
            "managed without chart",
            with(ai(), "/spec/chart", Value::Null),
            vec!["chart, release and values are required in managed mode"],
            false,
        ),
        (
            "placeholder with chart",
            with(ai(), "/spec/mode", json!("placeholder")),
            vec!["chart and values must be omitted in placeholder mode"],
            false,
        ),
        (
            "secretRef source without secretRef",
            with(
                ai(),
                "/spec/values",
                json!({"source": "secretRef", "inline": {"a": 1}}),
            ),
            vec![
                "spec.values",
                "source secretRef requires values.secretRef and no other values source",
            ],
            false,
        ),
        (
            "oci chart with an https url",
            with(
                ai(),
                "/spec/chart/url",
                json!("https://registry.example.com/charts"),
            ),
            vec![
                "spec.chart.url",
                "url must start with oci:// when sourceType is oci",
            ],
            false,
        ),
        (
            "targetRef to another kind",
            with(op(), "/spec/targetRef/kind", json!("Deployment")),
            vec!["spec.targetRef.kind", "Unsupported value: \"Deployment\""],
            false,
        ),
        (
            "negative ttl",
            with(op(), "/spec/ttlSecondsAfterFinished", json!(-1)),
            vec!["spec.ttlSecondsAfterFinished", "greater than or equal to 0"],
            false,
        ),
    ];
    for (what, doc, needles, upstream_rejects) in cases {
        let (code, message) = api_error(dry_run_create(&client, &doc, &ns).await, what);
        assert_eq!(code, 422, "{what}: {message}");
        println!("{what}: {message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} not in {message:?}"
            );
        }
        let upstream = dry_run_create(&client, &to_upstream(&doc), &ns).await;
        // `ttlSecondsAfterFinished` and `mode: unmanaged`-style fields unknown upstream are pruned, not rejected.
        assert_eq!(
            upstream.is_err(),
            upstream_rejects,
            "{what}: upstream CRD verdict {upstream:?}"
        );
    }
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    init();
    let client = vworkspace_e2e::shared_client();
    install_ours(&client).await;
    let ns = vworkspace_e2e::test_namespace(&client, "crds-immutable")
        .await
        .unwrap();
    let pp = PatchParams::default();
    let ops: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &resource("ops.vworkspace.io/v1alpha1", "Operation"),
    );
    let op: DynamicObject = serde_json::from_value(operation("op", "Backup", "velero")).unwrap();
    ops.create(&PostParams::default(), &op).await.unwrap();
    let cases = [
        (json!({"spec": {"type": "Restore"}}), "type is immutable"),
        (
            json!({"spec": {"engine": "snapshot"}}),
            "engine is immutable",
        ),
        (
            json!({"spec": {"targetRef": {"name": "other"}}}),
            "targetRef is immutable",
        ),
    ];
    for (patch, needle) in cases {
        match ops.patch("op", &pp, &Patch::Merge(&patch)).await {
            Err(kube::Error::Api(s)) => assert!(s.message.contains(needle), "{}", s.message),
            other => panic!("{patch}: expected a rejection, got {other:?}"),
        }
    }
    // Approvals may be filled in after creation (the hub adds the claim).
    ops.patch(
        "op",
        &pp,
        &Patch::Merge(&json!({"spec": {"approvals": {"claim": "vws1.e30.00"}}})),
    )
    .await
    .unwrap();

    let ais: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &resource("apps.vworkspace.io/v1alpha1", "ApplicationInstance"),
    );
    let ai: DynamicObject = serde_json::from_value(managed_instance("app")).unwrap();
    ais.create(&PostParams::default(), &ai).await.unwrap();
    match ais
        .patch(
            "app",
            &pp,
            &Patch::Merge(&json!({"spec": {"release": {"name": "renamed"}}})),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(
            s.message.contains("release.name is immutable"),
            "{}",
            s.message
        ),
        other => panic!("expected a rejection, got {other:?}"),
    }
    // The chart version may move (that is how upgrades are requested).
    ais.patch(
        "app",
        &pp,
        &Patch::Merge(&json!({"spec": {"chart": {"version": "6.7.0"}}})),
    )
    .await
    .unwrap();
    ops.delete("op", &DeleteParams::default()).await.unwrap();
    ais.delete("app", &DeleteParams::default()).await.unwrap();
}

/// Runs kubectl until `done` accepts its output or the deadline passes
/// (the CRD's OpenAPI is published shortly after it is established).
async fn kubectl_until(args: &[&str], done: impl Fn(&str) -> bool) -> String {
    let cp = vworkspace_e2e::shared();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut cmd = cp
            .kubectl()
            .expect("kubectl is resolved with the control plane binaries (KUBEBUILDER_ASSETS or the Go build)");
        let owned = args_owned(args);
        let out = tokio::task::spawn_blocking(move || cmd.args(owned).output())
            .await
            .unwrap()
            .expect("running kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && done(&stdout) {
            return stdout;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "kubectl {args:?} did not produce the expected output within 60s\nstdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn args_owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn kubectl_shows_columns_and_descriptions() {
    init();
    let client = vworkspace_e2e::shared_client();
    install_ours(&client).await;
    let ns = vworkspace_e2e::test_namespace(&client, "crds-kubectl")
        .await
        .unwrap();

    // One ApplicationInstance (the upstream example) with a Ready condition, one Operation running.
    let examples = upstream_examples();
    let (_, ai_doc) = examples
        .iter()
        .find(|(f, _)| f == "ops_v1alpha1_applicationinstance_capabilities.yaml")
        .unwrap();
    let mut ai_doc = ai_doc.clone();
    let ais = api_for(&client, &mut ai_doc, &ns);
    let ai: DynamicObject = serde_json::from_value(ai_doc).unwrap();
    let ai = ais.create(&PostParams::default(), &ai).await.unwrap();
    let mut conditions = Vec::new();
    vworkspace_crds::conditions::set_condition(
        &mut conditions,
        vworkspace_crds::conditions::ready(
            vworkspace_crds::conditions::Status::True,
            vworkspace_crds::conditions::reasons::HELM_RELEASE_READY,
            "Helm install succeeded",
            ai.metadata.generation,
        ),
    );
    let status = vworkspace_crds::ApplicationInstanceStatus {
        observed_generation: ai.metadata.generation,
        conditions,
        ..Default::default()
    };
    ais.patch_status(
        "nextcloud-myteam",
        &PatchParams::apply("vworkspace-crds-test").force(),
        &Patch::Apply(json!({
            "apiVersion": "apps.vworkspace.io/v1alpha1",
            "kind": "ApplicationInstance",
            "status": status,
        })),
    )
    .await
    .unwrap();

    let (_, op_doc) = examples
        .iter()
        .find(|(_, d)| d["kind"] == "Operation")
        .unwrap();
    let mut op_doc = op_doc.clone();
    let ops = api_for(&client, &mut op_doc, &ns);
    let op: DynamicObject = serde_json::from_value(op_doc).unwrap();
    ops.create(&PostParams::default(), &op).await.unwrap();
    ops.patch_status(
        "nextcloud-myteam-backup",
        &PatchParams::apply("vworkspace-crds-test").force(),
        &Patch::Apply(json!({
            "apiVersion": "ops.vworkspace.io/v1alpha1",
            "kind": "Operation",
            "status": {"phase": "Running", "engineRef": {"kind": "Backup", "name": "nextcloud-myteam-backup", "namespace": "velero"}},
        })),
    )
    .await
    .unwrap();

    let get = kubectl_until(&["get", "appinst,op", "-n", &ns], |out| {
        out.contains("nextcloud-myteam-backup") && out.contains("True")
    })
    .await;
    println!("$ kubectl get appinst,op -n {ns}\n{get}");
    let lines: Vec<Vec<&str>> = get
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        lines.contains(&vec!["NAME", "READY", "CHART", "VERSION", "AGE"]),
        "{get}"
    );
    assert!(
        lines.contains(&vec!["NAME", "PHASE", "TYPE", "ENGINE", "AGE"]),
        "{get}"
    );
    let ai_row = lines
        .iter()
        .find(|l| l.first() == Some(&"applicationinstance.apps.vworkspace.io/nextcloud-myteam"))
        .unwrap_or_else(|| panic!("no ApplicationInstance row in\n{get}"));
    assert_eq!(ai_row[1..4], ["True", "nextcloud", "6.6.0"], "{get}");
    let op_row = lines
        .iter()
        .find(|l| l.first() == Some(&"operation.ops.vworkspace.io/nextcloud-myteam-backup"))
        .unwrap_or_else(|| panic!("no Operation row in\n{get}"));
    assert_eq!(op_row[1..4], ["Running", "Backup", "velero"], "{get}");

    let wide = kubectl_until(&["get", "appinst", "-n", &ns, "-o", "wide"], |out| {
        out.contains("MODE")
    })
    .await;
    println!("$ kubectl get appinst -n {ns} -o wide\n{wide}");
    assert!(wide.contains("HelmReleaseReady"), "{wide}");

    let explain = kubectl_until(&["explain", "applicationinstance.spec.chart"], |out| {
        out.contains("sourceType")
    })
    .await;
    println!("$ kubectl explain applicationinstance.spec.chart\n{explain}");
    for needle in [
        "KIND:       ApplicationInstance",
        "GROUP:      apps.vworkspace.io",
        "Chart to install. Required in managed mode, must be omitted in placeholder",
        "sourceType\t<string> -required-",
        "enum: oci, helm",
        "version\t<string> -required-",
        "Exact chart version (semver, no ranges, no `latest`)",
    ] {
        assert!(explain.contains(needle), "{needle:?} not in\n{explain}");
    }

    // The cluster-scoped Cluster: Phase and Connected columns.
    let clusters: Api<vworkspace_crds::Cluster> = Api::all(client.clone());
    let name = format!("{ns}-cluster");
    let cluster: vworkspace_crds::Cluster = serde_json::from_value(json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": {"controlPlaneEndpoint": "https://workspace.example.org", "registrationTokenSecretRef": {"name": "reg"}}
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .unwrap();
    let mut conditions = Vec::new();
    vworkspace_crds::conditions::set_condition(
        &mut conditions,
        vworkspace_crds::conditions::connected(
            vworkspace_crds::conditions::Status::True,
            vworkspace_crds::conditions::reasons::TUNNEL_CONNECTED,
            "tunnel up",
            Some(1),
        ),
    );
    clusters
        .patch_status(
            &name,
            &PatchParams::apply("vworkspace-crds-test").force(),
            &Patch::Apply(json!({
                "apiVersion": "ops.vworkspace.io/v1alpha1",
                "kind": "Cluster",
                "status": vworkspace_crds::ClusterStatus {
                    phase: Some(vworkspace_crds::ClusterPhase::Connected),
                    conditions,
                    ..Default::default()
                },
            })),
        )
        .await
        .unwrap();
    let get_cluster = kubectl_until(&["get", "clusters.ops.vworkspace.io", &name], |out| {
        out.contains("Connected")
    })
    .await;
    println!("$ kubectl get clusters.ops.vworkspace.io {name}\n{get_cluster}");
    let lines: Vec<Vec<&str>> = get_cluster
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "PHASE", "CONNECTED", "AGE"],
        "{get_cluster}"
    );
    assert_eq!(
        lines[1][..3],
        [name.as_str(), "Connected", "True"],
        "{get_cluster}"
    );
    clusters
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();

    let explain_op = kubectl_until(&["explain", "operation.spec.engine"], |out| {
        out.contains("FIELD")
    })
    .await;
    println!("$ kubectl explain operation.spec.engine\n{explain_op}");
    assert!(
        explain_op.contains("The executor. Immutable."),
        "{explain_op}"
    );
    assert!(explain_op.contains("helmHookJob"), "{explain_op}");
}

#[tokio::test]
async fn release_namespace_policy_rejects_a_foreign_release_namespace() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    init();
    let client = vworkspace_e2e::shared_client();
    install_ours(&client).await;
    let marker = format!("{:08x}", rand::random::<u32>());
    const KEY: &str = "crds-test.vworkspace.io/policy";
    let ns = vworkspace_e2e::test_namespace_with_labels(
        &client,
        "crds-policy",
        &[vworkspace_e2e::MANAGED_BY, (KEY, &marker)],
    )
    .await
    .unwrap();

    // The shipped policy, bound only to this test's namespace so the other
    // tests sharing the control plane keep their foreign release namespaces.
    let (policy, mut binding) = manifests::policies();
    binding.metadata.name = Some(format!(
        "{}-{marker}",
        manifests::APPLICATION_INSTANCE_POLICY
    ));
    binding.spec.match_resources = Some(
        serde_json::from_value(json!({"namespaceSelector": {"matchLabels": {KEY: marker}}}))
            .unwrap(),
    );
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    match policies.create(&PostParams::default(), &policy).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating the policy: {e}"),
    }
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    let foreign = with(
        managed_instance("app"),
        "/spec/release/namespace",
        json!("elsewhere"),
    );
    let want = format!(
        "spec.release.namespace must equal the namespace of the ApplicationInstance ({ns})"
    );
    // Policies take effect asynchronously: wait for the rejection with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let message = loop {
        match dry_run_create(&client, &foreign, &ns).await {
            Err(kube::Error::Api(s)) if s.code == 422 => break s.message.clone(),
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("expected the policy to reject the object, got {other:?}"),
        }
    };
    println!("foreign release namespace: {message}");
    assert!(message.contains(&want), "{message}");
    assert!(
        message.contains(manifests::APPLICATION_INSTANCE_POLICY),
        "{message}"
    );

    let own = with(
        managed_instance("app"),
        "/spec/release/namespace",
        json!(ns),
    );
    dry_run_create(&client, &own, &ns)
        .await
        .unwrap_or_else(|e| panic!("release in the own namespace rejected: {e}"));
    let placeholder = json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": "ops"},
        "spec": {"appRef": {"catalogId": "cluster-ops"}, "mode": "placeholder"}
    });
    dry_run_create(&client, &placeholder, &ns)
        .await
        .unwrap_or_else(|e| panic!("placeholder without release rejected: {e}"));
    bindings
        .delete(
            binding.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await
        .unwrap();
}
