//! `hub-sim apply -f` input: kinds by any of their names, and YAML (or JSON)
//! files with one or more documents.

use anyhow::{Context, bail};
use serde_json::Value;

/// Accepts full names, kubectl short names and plurals.
pub(super) fn canonical_kind(kind: &str) -> anyhow::Result<&'static str> {
    match kind.to_ascii_lowercase().as_str() {
        "applicationinstance" | "applicationinstances" | "appinst" | "app" | "apps" => {
            Ok("ApplicationInstance")
        }
        "operation" | "operations" | "op" | "ops" => Ok("Operation"),
        _ => bail!("unknown kind {kind:?} (ApplicationInstance/appinst or Operation/op)"),
    }
}

/// Parses one or more YAML (or JSON) documents into JSON values; empty
/// documents (e.g. between two `---`) are skipped.
pub fn parse_manifests(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).context("manifest is not valid YAML")?;
    let out: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if out.is_empty() {
        bail!("manifest holds no document");
    }
    Ok(out)
}

/// Checks a document's `spec` against the CRD types (`vworkspace-crds`).
/// Returns why it does not match, if it does not. The hub still sends such a
/// document when asked (the agent is the one that refuses invalid specs, and
/// tests rely on being able to send them), so callers warn rather than stop.
pub fn spec_mismatch(doc: &Value) -> Option<String> {
    let spec = doc.get("spec")?;
    let result = match doc.get("kind").and_then(Value::as_str)? {
        "ApplicationInstance" => {
            serde_json::from_value::<vworkspace_crds::ApplicationInstanceSpec>(spec.clone())
                .map(drop)
        }
        "Operation" => {
            serde_json::from_value::<vworkspace_crds::OperationSpec>(spec.clone()).map(drop)
        }
        _ => return None,
    };
    result.err().map(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_parses() {
        let docs = parse_manifests(
            "apiVersion: apps.vworkspace.io/v1alpha1\nkind: ApplicationInstance\nmetadata: {name: a, namespace: n}\nspec: {mode: placeholder}\n---\n---\nkind: Operation\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["spec"]["mode"], "placeholder");
        assert_eq!(docs[1]["kind"], "Operation");
        assert!(parse_manifests("\n---\n").is_err());
        let json = parse_manifests(r#"{"kind": "Operation", "spec": {"x": 1}}"#).unwrap();
        assert_eq!(json[0]["spec"]["x"], 1);
    }

    #[test]
    fn specs_are_checked_against_the_crd_types() {
        let docs = parse_manifests(
            "kind: ApplicationInstance\nspec: {appRef: {catalogId: a}}\n---\nkind: ApplicationInstance\nspec: {mode: placeholder}\n---\nkind: ApplicationInstance\nmetadata: {name: x}\n",
        )
        .unwrap();
        assert_eq!(spec_mismatch(&docs[0]), None);
        let why = spec_mismatch(&docs[1]).expect("appRef is required");
        assert!(why.contains("appRef"), "{why}");
        assert_eq!(spec_mismatch(&docs[2]), None, "no spec: nothing to check");
    }

    #[test]
    fn kinds_by_short_name() {
        assert_eq!(canonical_kind("appinst").unwrap(), "ApplicationInstance");
        assert_eq!(canonical_kind("op").unwrap(), "Operation");
        assert!(canonical_kind("pod").is_err());
    }
}
