//! The CRD manifests generated from the Rust types, as committed under
//! `crds/manifests/` (one file per CRD, `all.yaml` with all three, and
//! `policies.yaml` with the optional ValidatingAdmissionPolicy).

use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{ApplicationInstance, Cluster, Operation};

/// The command that regenerates the committed manifests (run from the repository root).
pub const REGENERATE: &str = "cargo run -p vworkspace-crds --bin crdgen -- crds/manifests";

/// Name of the file holding all three CRDs.
pub const ALL_IN_ONE: &str = "all.yaml";

/// Name of the file holding the admission policies ([`policies`]).
pub const POLICIES: &str = "policies.yaml";

/// Name of the ValidatingAdmissionPolicy (and its binding) for ApplicationInstances.
pub const APPLICATION_INSTANCE_POLICY: &str = "applicationinstances.apps.vworkspace.io";

const HEADER: &str = "# Generated from the Rust types in crds/src; do not edit.\n# Regenerate: cargo run -p vworkspace-crds --bin crdgen -- crds/manifests\n";

/// Why manifests could not be rendered, written or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// YAML serialization failed.
    #[error("rendering {name} as YAML: {message}")]
    Yaml {
        /// CRD name.
        name: String,
        /// Serializer message.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A committed file differs from what the types generate.
    #[error("{path} is stale or missing; regenerate with `{REGENERATE}`")]
    Stale {
        /// The stale file.
        path: PathBuf,
    },
}

/// The three CRDs: ApplicationInstance, Operation, Cluster.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![application_instance_crd(), operation_crd(), cluster_crd()]
}

/// The ApplicationInstance CRD as installed: use this rather than
/// `ApplicationInstance::crd()`, which still requires `spec`.
pub fn application_instance_crd() -> CustomResourceDefinition {
    let mut crd = ApplicationInstance::crd();
    spec_optional(&mut crd);
    crd
}

/// The Operation CRD as installed (an Operation without a spec means nothing, so it stays required).
pub fn operation_crd() -> CustomResourceDefinition {
    Operation::crd()
}

/// The Cluster CRD as installed: use this rather than `Cluster::crd()`, which still requires `spec`.
pub fn cluster_crd() -> CustomResourceDefinition {
    let mut crd = Cluster::crd();
    spec_optional(&mut crd);
    crd
}

/// Upstream does not require `spec` (its scaffold sample has none); the
/// derive cannot say so, hence this edit of the generated root schema.
fn spec_optional(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        let root = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut());
        if let Some(root) = root {
            if let Some(required) = root.required.as_mut() {
                required.retain(|r| r != "spec");
            }
            if root.required.as_ref().is_some_and(Vec::is_empty) {
                root.required = None;
            }
        }
    }
}

/// The file name of one CRD: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group)
}

/// Every manifest file as (file name, content), in a stable order.
pub fn render() -> Result<Vec<(String, String)>, Error> {
    let mut files = Vec::new();
    let mut all = String::from(HEADER);
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_saphyr::to_string(&crd).map_err(|e| Error::Yaml {
            name,
            message: e.to_string(),
        })?;
        all.push_str("---\n");
        all.push_str(&yaml);
        files.push((file_name(&crd), format!("{HEADER}---\n{yaml}")));
    }
    files.push((ALL_IN_ONE.to_string(), all));

    let (policy, binding) = policies();
    let mut text = String::from(HEADER);
    for (name, yaml) in [
        (
            APPLICATION_INSTANCE_POLICY,
            serde_saphyr::to_string(&policy),
        ),
        (
            APPLICATION_INSTANCE_POLICY,
            serde_saphyr::to_string(&binding),
        ),
    ] {
        let yaml = yaml.map_err(|e| Error::Yaml {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        text.push_str("---\n");
        text.push_str(&yaml);
    }
    files.push((POLICIES.to_string(), text));
    Ok(files)
}

/// Admission rules a CRD schema cannot state because they read
/// `metadata.namespace`: `spec.release.namespace` must be the object's own
/// namespace (upstream enforces it in a webhook; this needs none). The agent
/// checks the same rule, so installing the policy is optional.
///
/// # Panics
///
/// Never in practice: the literals are fixed and a unit test parses them.
pub fn policies() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let policy = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": APPLICATION_INSTANCE_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": [crate::APPS_GROUP],
                    "apiVersions": [crate::VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["applicationinstances"],
                }],
            },
            "validations": [{
                "expression": "!has(object.spec) || !has(object.spec.release) || object.spec.release.namespace == object.metadata.namespace",
                "messageExpression": "'spec.release.namespace must equal the namespace of the ApplicationInstance (' + object.metadata.namespace + ')'",
                "reason": "Invalid",
            }],
        },
    });
    let binding = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": APPLICATION_INSTANCE_POLICY},
        "spec": {
            "policyName": APPLICATION_INSTANCE_POLICY,
            "validationActions": ["Deny"],
        },
    });
    // Both literals are fixed and match the k8s-openapi types (a unit test covers it).
    (
        serde_json::from_value(policy).expect("valid ValidatingAdmissionPolicy"),
        serde_json::from_value(binding).expect("valid ValidatingAdmissionPolicyBinding"),
    )
}

/// Writes every manifest into `dir` (created if missing).
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, content) in render()? {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Checks that every manifest in `dir` matches what the types generate.
pub fn check(dir: &Path) -> Result<(), Error> {
    for (name, content) in render()? {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == content => {}
            Ok(_) => return Err(Error::Stale { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Stale { path });
            }
            Err(source) => return Err(Error::Io { path, source }),
        }
    }
    Ok(())
}

/// The committed manifests directory of this crate.
pub fn committed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_manifests_are_up_to_date() {
        if let Err(e) = check(&committed_dir()) {
            panic!("{e}\nRun from the repository root: {REGENERATE}");
        }
    }

    #[test]
    fn names_scopes_short_names_and_columns() {
        let cases = [
            (
                application_instance_crd(),
                "applicationinstances.apps.vworkspace.io",
                "Namespaced",
                vec!["appinst"],
                vec!["Ready", "Chart", "Version", "Age"],
            ),
            (
                operation_crd(),
                "operations.ops.vworkspace.io",
                "Namespaced",
                vec!["op"],
                vec!["Phase", "Type", "Engine", "Age"],
            ),
            (
                cluster_crd(),
                "clusters.ops.vworkspace.io",
                "Cluster",
                vec![],
                vec!["Phase", "Connected", "Age"],
            ),
        ];
        for (crd, name, scope, short, columns) in cases {
            assert_eq!(crd.metadata.name.as_deref(), Some(name));
            assert_eq!(crd.spec.scope, scope);
            assert_eq!(
                crd.spec.names.short_names.clone().unwrap_or_default(),
                short
            );
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, crate::VERSION);
            assert!(v.served && v.storage);
            assert!(v.subresources.as_ref().unwrap().status.is_some(), "{name}");
            // Default-priority columns, in order, exactly as upstream.
            let shown: Vec<&str> = v
                .additional_printer_columns
                .as_ref()
                .unwrap()
                .iter()
                .filter(|c| c.priority.unwrap_or(0) == 0)
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(shown, columns, "{name}");
        }
    }

    #[test]
    fn spec_is_optional_only_where_upstream_allows_it() {
        let root_required = |crd: CustomResourceDefinition| {
            crd.spec.versions[0]
                .schema
                .clone()
                .unwrap()
                .open_api_v3_schema
                .unwrap()
                .required
                .unwrap_or_default()
        };
        assert!(root_required(application_instance_crd()).is_empty());
        assert!(root_required(cluster_crd()).is_empty());
        assert_eq!(root_required(operation_crd()), ["spec"]);
    }

    #[test]
    fn every_schema_property_has_a_description() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    if p.get("description").is_none() {
                        missing.push(here.clone());
                    }
                    walk(&here, p, missing);
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        for crd in crds() {
            let schema = serde_json::to_value(
                crd.spec.versions[0]
                    .schema
                    .as_ref()
                    .unwrap()
                    .open_api_v3_schema
                    .as_ref()
                    .unwrap(),
            )
            .unwrap();
            let mut missing = Vec::new();
            walk("", &schema, &mut missing);
            assert!(
                missing.is_empty(),
                "{}: no description on {missing:?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn rendered_yaml_parses_back_to_the_same_crds() {
        let files = render().unwrap();
        assert_eq!(files.len(), 5);
        let (_, all) = files.iter().find(|(n, _)| n == ALL_IN_ONE).unwrap();
        let back: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(all).unwrap();
        assert_eq!(back, crds());
    }

    #[test]
    fn policies_render_and_parse_back() {
        let (policy, binding) = policies();
        assert_eq!(
            Some(binding.spec.policy_name.as_str()),
            policy.metadata.name.as_deref()
        );
        let files = render().unwrap();
        let (_, text) = files.iter().find(|(n, _)| n == POLICIES).unwrap();
        let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["kind"], "ValidatingAdmissionPolicy");
        assert_eq!(docs[1]["kind"], "ValidatingAdmissionPolicyBinding");
    }

    #[test]
    fn check_reports_a_stale_file_with_the_regenerate_command() {
        let dir = std::env::temp_dir().join(format!("vws-crdgen-{}", std::process::id()));
        write(&dir).unwrap();
        check(&dir).unwrap();
        std::fs::write(dir.join(ALL_IN_ONE), "stale").unwrap();
        let err = check(&dir).unwrap_err().to_string();
        assert!(err.contains(REGENERATE), "{err}");
        std::fs::remove_file(dir.join(ALL_IN_ONE)).unwrap();
        assert!(matches!(check(&dir), Err(Error::Stale { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
