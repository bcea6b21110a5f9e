//! The upstream vWorkspace examples and CRDs against our types and schemas.
//!
//! Reads `<shared>/upstream-crds/vworkspace/` where `<shared>` is
//! `VWS_SHARED_DIR` or `../shared` beside the repository.

use std::path::PathBuf;

use serde_json::Value;
use vworkspace_crds::{ApplicationInstance, Cluster, Operation, manifests};

fn shared_dir() -> PathBuf {
    std::env::var_os("VWS_SHARED_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn vworkspace_dir() -> PathBuf {
    let dir = shared_dir().join("upstream-crds").join("vworkspace");
    assert!(
        dir.is_dir(),
        "{} not found: set VWS_SHARED_DIR to the shared reference directory",
        dir.display()
    );
    dir
}

/// Every document of every example file, as (file name, document).
fn examples() -> Vec<(String, Value)> {
    let dir = vworkspace_dir().join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        out.extend(docs.into_iter().map(|d| (name.clone(), d)));
    }
    out
}

/// Asserts every non-null value of `input` is in `output` at the same path.
fn assert_kept(path: &str, input: &Value, output: &Value) {
    match (input, output) {
        (Value::Null, _) => {}
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let here = format!("{path}.{k}");
                match o.get(k) {
                    Some(ov) => assert_kept(&here, v, ov),
                    None if v.is_null() => {}
                    None => panic!("{here} was lost (input {v})"),
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

fn round_trip<K>(file: &str, doc: &Value) -> K
where
    K: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: does not deserialize: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_kept(file, doc, &back);
    typed
}

#[test]
fn every_upstream_example_round_trips_through_our_types_without_losing_fields() {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (file, doc) in examples() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match (
            doc["apiVersion"].as_str().unwrap_or_default(),
            kind.as_str(),
        ) {
            ("apps.vworkspace.io/v1alpha1", "ApplicationInstance") => {
                round_trip::<ApplicationInstance>(&file, &doc);
            }
            ("ops.vworkspace.io/v1alpha1", "Operation") => {
                round_trip::<Operation>(&file, &doc);
            }
            ("ops.vworkspace.io/v1alpha1", "Cluster") => {
                round_trip::<Cluster>(&file, &doc);
            }
            ("v1", "Secret") => continue,
            (api, kind) => panic!("{file}: unexpected {api} {kind}"),
        }
        *counts.entry(kind).or_default() += 1;
    }
    let counts: Vec<(&str, usize)> = counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        counts,
        [("ApplicationInstance", 2), ("Cluster", 3), ("Operation", 1)]
    );
}

#[test]
fn example_values_land_in_the_typed_fields() {
    let all = examples();
    let find = |file: &str| {
        all.iter()
            .find(|(f, _)| f == file)
            .map(|(_, d)| d.clone())
            .unwrap()
    };
    let ai: ApplicationInstance = round_trip(
        "capabilities",
        &find("ops_v1alpha1_applicationinstance_capabilities.yaml"),
    );
    let chart = ai.spec.chart.as_ref().unwrap();
    assert_eq!(chart.source_type, vworkspace_crds::ChartSourceType::Oci);
    assert_eq!(chart.version, "6.6.0");
    assert_eq!(ai.spec.mode, vworkspace_crds::Mode::Managed);
    assert_eq!(
        ai.spec.values.as_ref().unwrap().source,
        vworkspace_crds::ValuesSource::Inline
    );
    assert_eq!(ai.release_namespace(), Some("org-myteam"));

    // The scaffold sample has `spec:` with no value: it reads as the default spec.
    let scaffold: ApplicationInstance =
        round_trip("scaffold", &find("apps_v1alpha1_applicationinstance.yaml"));
    assert_eq!(scaffold.spec, Default::default());

    let op: Operation = round_trip("operation", &find("ops_v1alpha1_operation.yaml"));
    assert_eq!(op.spec.type_, vworkspace_crds::OperationType::Backup);
    assert_eq!(op.spec.engine, vworkspace_crds::Engine::Velero);
    assert_eq!(
        op.spec.parameters.as_ref().unwrap()["retention"],
        Value::from("720h")
    );

    let current: Cluster = round_trip("cluster", &find("cluster.yaml"));
    assert_eq!(
        current.spec.endpoint(),
        Some("https://workspace.example.org")
    );
    let secret_ref = current.spec.registration_token_secret_ref.unwrap();
    assert_eq!(secret_ref.name, "cluster-local-registration");
    assert_eq!(secret_ref.key.as_deref(), Some("registrationToken"));
    let deprecated: Cluster = round_trip("deprecated", &find("ops_v1alpha1_cluster.yaml"));
    assert_eq!(
        deprecated.spec.endpoint(),
        Some("https://workspace.example.org")
    );
    assert_eq!(
        deprecated.spec.deprecated_fields(),
        ["controlPlaneBaseUrl", "registrationToken"]
    );
}

/// Schema nodes of one CRD version, by dotted path (`[]` for array items).
fn schema_nodes(crd: &Value) -> std::collections::BTreeMap<String, Value> {
    fn walk(path: String, v: &Value, out: &mut std::collections::BTreeMap<String, Value>) {
        if let Some(props) = v.get("properties").and_then(Value::as_object) {
            for (k, p) in props {
                walk(format!("{path}.{k}"), p, out);
            }
        }
        if let Some(items) = v.get("items") {
            walk(format!("{path}[]"), items, out);
        }
        out.insert(path, v.clone());
    }
    let mut out = std::collections::BTreeMap::new();
    walk(
        String::new(),
        &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
        &mut out,
    );
    out
}

#[test]
fn our_schemas_keep_every_upstream_field_and_enum_literal() {
    let dir = vworkspace_dir();
    let ours: Vec<Value> = manifests::crds()
        .into_iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    for file in [
        "apps.vworkspace.io_applicationinstances.yaml",
        "ops.vworkspace.io_operations.yaml",
        "ops.vworkspace.io_clusters.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let upstream: Value = serde_saphyr::from_str(&text).unwrap();
        let name = upstream["metadata"]["name"].as_str().unwrap();
        let mine = ours
            .iter()
            .find(|c| c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no CRD {name} of ours"));
        assert_eq!(mine["spec"]["group"], upstream["spec"]["group"]);
        assert_eq!(mine["spec"]["scope"], upstream["spec"]["scope"]);
        assert_eq!(
            mine["spec"]["names"]["kind"],
            upstream["spec"]["names"]["kind"]
        );
        let theirs = schema_nodes(&upstream);
        let mine = schema_nodes(mine);
        for (path, node) in &theirs {
            // apiVersion/kind/metadata are validated by the server itself.
            if [".apiVersion", ".kind", ".metadata"].contains(&path.as_str()) {
                continue;
            }
            let ours = mine
                .get(path)
                .unwrap_or_else(|| panic!("{name}: upstream field {path} is missing"));
            assert_eq!(ours.get("type"), node.get("type"), "{name}: type of {path}");
            for flag in [
                "x-kubernetes-preserve-unknown-fields",
                "x-kubernetes-list-type",
            ] {
                assert_eq!(ours.get(flag), node.get(flag), "{name}: {flag} of {path}");
            }
            if let Some(values) = node.get("enum").and_then(Value::as_array) {
                let ours = ours["enum"].as_array().cloned().unwrap_or_default();
                for v in values {
                    assert!(ours.contains(v), "{name}: {path} lost enum literal {v}");
                }
            }
        }
    }
}

#[test]
fn operation_enums_add_rollback_and_snapshot() {
    let op = serde_json::to_value(manifests::operation_crd()).unwrap();
    let nodes = schema_nodes(&op);
    assert!(
        nodes[".spec.type"]["enum"]
            .as_array()
            .unwrap()
            .contains(&Value::from("Rollback"))
    );
    assert!(
        nodes[".spec.engine"]["enum"]
            .as_array()
            .unwrap()
            .contains(&Value::from("snapshot"))
    );
    let literals: Vec<&str> = vworkspace_crds::Engine::ALL
        .iter()
        .map(|e| e.as_str())
        .collect();
    assert_eq!(
        nodes[".spec.engine"]["enum"],
        serde_json::to_value(&literals).unwrap()
    );
    let types: Vec<&str> = vworkspace_crds::OperationType::ALL
        .iter()
        .map(|t| t.as_str())
        .collect();
    assert_eq!(
        nodes[".spec.type"]["enum"],
        serde_json::to_value(&types).unwrap()
    );
}
