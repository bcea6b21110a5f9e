//! `ApplicationInstance` (`apps.vworkspace.io/v1alpha1`): one Helm chart install.
//!
//! The hub writes the spec; the agent turns it into a Flux source and a
//! HelmRelease (or nothing, in placeholder mode) and reports back through the
//! status. Field names and enum literals are the upstream contract.

// `printcolumn(type_ = ..)` repeats per column; that is not a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of an ApplicationInstance: which chart to install as which Helm release, with which values.
///
/// `release.namespace` must equal the object's own namespace; a CRD rule cannot
/// see `metadata.namespace`, so the agent enforces it (Blocked=True/InvalidSpec).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "apps.vworkspace.io",
    version = "v1alpha1",
    kind = "ApplicationInstance",
    namespaced,
    shortname = "appinst",
    category = "vworkspace",
    status = "ApplicationInstanceStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "ApplicationInstance is one Helm chart installed as one Helm release, managed by the vWorkspace agent.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Status of the Ready condition"
    ),
    printcolumn(
        name = "Chart",
        type_ = "string",
        json_path = ".spec.chart.name",
        description = "Chart name"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.chart.version",
        description = "Requested chart version"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.mode",
        priority = 1,
        description = "managed or placeholder"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1,
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", remote = "Self")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.mode) && self.mode == 'placeholder') || (has(self.chart) && has(self.release) && has(self.values))",
        "message": "chart, release and values are required in managed mode",
        "reason": "FieldValueRequired",
    },
    {
        "rule": "!has(self.mode) || self.mode != 'placeholder' || (!has(self.chart) && !has(self.values))",
        "message": "chart and values must be omitted in placeholder mode",
        "reason": "FieldValueForbidden",
    },
]))]
pub struct ApplicationInstanceSpec {
    /// Catalog entry this instance was created from; recorded for audit and fleet queries.
    pub app_ref: AppRef,
    /// Reconcile strategy: managed installs the chart; placeholder installs nothing and only
    /// advertises capabilities (ADR 0006). Defaults to managed.
    #[serde(default)]
    pub mode: Mode,
    /// Chart to install. Required in managed mode, must be omitted in placeholder mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartSource>,
    /// Helm release identity. Required in managed mode, optional in placeholder mode;
    /// the namespace must be the object's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseRef>,
    /// Where chart values come from. Required in managed mode, must be omitted in placeholder mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<ValuesSpec>,
    /// Optional integration switches (external-secrets, cert-manager, ingress); explicit values win.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrations: Option<Integrations>,
}

/// Reference to the catalog entry an instance was created from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppRef {
    /// Catalog entry id, e.g. `nextcloud`. Not looked up at runtime.
    #[schemars(length(min = 1, max = 253))]
    pub catalog_id: String,
}

/// Reconcile strategy of an ApplicationInstance.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Install `chart` as a Helm release through Flux.
    #[default]
    Managed,
    /// Own no workload; be Ready at once. Used as the target of cluster-level Operations.
    Placeholder,
}

/// How a chart is fetched.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChartSourceType {
    /// An OCI registry (`url` is `oci://host/path`).
    Oci,
    /// A classic Helm index repository (`url` is the `https://` repository base).
    Helm,
}

/// Coordinates of one chart version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.sourceType == 'oci' ? self.url.startsWith('oci://') : (self.url.startsWith('https://') || self.url.startsWith('http://'))",
        "message": "url must start with oci:// when sourceType is oci, and with https:// or http:// when sourceType is helm",
        "fieldPath": ".url",
    },
]))]
pub struct ChartSource {
    /// How the chart is fetched: oci (OCI registry) or helm (index repository).
    pub source_type: ChartSourceType,
    /// `oci://` registry path (without the chart name) or the `https://` repository base.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Chart name inside the source.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Exact chart version (semver, no ranges, no `latest`), e.g. `6.6.0`.
    #[schemars(length(min = 1, max = 128), regex(pattern = SEMVER_PATTERN))]
    pub version: String,
}

/// Exact semantic version (semver.org), with an optional leading `v` as Helm allows.
pub const SEMVER_PATTERN: &str = r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-((0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?(\+([0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*))?$";

/// Helm release identity; both fields are immutable once set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRef {
    /// Helm release name, also the HelmRelease object's name. Immutable.
    #[schemars(length(min = 1, max = 53), regex(pattern = DNS1123_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "release.name is immutable"}]))]
    pub name: String,
    /// Namespace of the release; must equal the ApplicationInstance's namespace. Immutable.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS1123_LABEL_PATTERN))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "release.namespace is immutable"}]))]
    pub namespace: String,
}

/// A DNS-1123 label (Kubernetes object and namespace names).
pub const DNS1123_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Where chart values come from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ValuesSource {
    /// `values.inline`, a values map in the object itself (no secrets).
    #[serde(rename = "inline")]
    Inline,
    /// `values.secretRef`, a key of a Secret in the same namespace.
    #[serde(rename = "secretRef")]
    SecretRef,
    /// `values.configMapRef`, a key of a ConfigMap in the same namespace.
    #[serde(rename = "configMapRef")]
    ConfigMapRef,
}

/// Chart values: exactly the source named by `source` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.source != 'inline' || (!has(self.secretRef) && !has(self.configMapRef))",
        "message": "source inline allows only values.inline",
    },
    {
        "rule": "self.source != 'secretRef' || (has(self.secretRef) && !has(self.inline) && !has(self.configMapRef))",
        "message": "source secretRef requires values.secretRef and no other values source",
    },
    {
        "rule": "self.source != 'configMapRef' || (has(self.configMapRef) && !has(self.inline) && !has(self.secretRef))",
        "message": "source configMapRef requires values.configMapRef and no other values source",
    },
]))]
pub struct ValuesSpec {
    /// Which sibling field holds the values: inline, secretRef or configMapRef.
    pub source: ValuesSource,
    /// Values map used when source is inline. Must not contain secrets; use secretRef instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserve_unknown_object")]
    pub inline: Option<BTreeMap<String, serde_json::Value>>,
    /// Secret key (same namespace) holding a YAML or JSON values document; used when source is secretRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<KeyRef>,
    /// ConfigMap key (same namespace) holding a YAML or JSON values document; used when source is configMapRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<KeyRef>,
}

/// A key of a Secret or ConfigMap in the instance's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Object name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the object's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Integration switches that chart values can override.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Integrations {
    /// Let the chart take its secrets from external-secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_secrets: Option<Toggle>,
    /// Let cert-manager issue the ingress TLS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<Toggle>,
    /// Enable the chart's ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressIntegration>,
}

/// An on/off integration switch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Toggle {
    /// Whether the integration is on (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// Ingress integration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressIntegration {
    /// Whether the chart's ingress is enabled (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Ingress host name; needed when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Observed state of an ApplicationInstance, written only by the agent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationInstanceStatus {
    /// The metadata.generation this status was computed from; older means stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Degraded, Suspended, Blocked and Deleting (see vworkspace_crds::conditions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The HelmRelease materialized for this instance; unset in placeholder mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm_release_ref: Option<HelmReleaseRef>,
    /// The chart last handed to Flux ("asked"), to compare with what runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_chart: Option<ChartSource>,
    /// When the instance was last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<Time>,
    /// URLs the application is reachable at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}

/// Name and namespace of the HelmRelease owned by an instance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HelmReleaseRef {
    /// HelmRelease name.
    pub name: String,
    /// HelmRelease namespace.
    pub namespace: String,
}

/// One URL the application is reachable at.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Endpoint name, e.g. `web` or `s3`.
    pub name: String,
    /// Absolute URL.
    pub url: String,
    /// Kind of endpoint, e.g. `ingress` or `service`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Free-form notes for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

// === impl ApplicationInstanceSpec ===

crate::schema::optional_spec_serde!(ApplicationInstanceSpec);

impl ApplicationInstanceSpec {
    /// True in placeholder mode, where no Helm release exists.
    pub fn is_placeholder(&self) -> bool {
        self.mode == Mode::Placeholder
    }
}

// === impl ApplicationInstance ===

impl ApplicationInstance {
    /// The engine this instance advertises for an Operation type (annotation
    /// `ops.vworkspace.io/<verb>`), if any; an unknown engine string reads as `Err`.
    pub fn capability(
        &self,
        type_: crate::OperationType,
    ) -> Option<Result<crate::Engine, crate::operation::UnknownLiteral>> {
        let key = crate::well_known::annotations::capability(type_.capability_verb());
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&key))
            .map(|v| v.trim().parse())
    }

    /// Namespace the release lives in: `spec.release.namespace`, else the object's namespace
    /// (placeholders may omit `release`).
    pub fn release_namespace(&self) -> Option<&str> {
        self.spec
            .release
            .as_ref()
            .map(|r| r.namespace.as_str())
            .or(self.metadata.namespace.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, OperationType};

    #[test]
    fn capabilities_come_from_the_verb_annotations() {
        let mut ai = ApplicationInstance::new("a", ApplicationInstanceSpec::default());
        ai.metadata.annotations = Some(
            [
                ("ops.vworkspace.io/backup", "velero"),
                ("ops.vworkspace.io/runcommand", "job"),
                ("ops.vworkspace.io/migration", "helmHookJob"),
                ("ops.vworkspace.io/restore", "Velero"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        );
        let cases = [
            (OperationType::Backup, Some(Ok(Engine::Velero))),
            (OperationType::RunCommand, Some(Ok(Engine::Job))),
            (OperationType::Migration, Some(Ok(Engine::HelmHookJob))),
            (OperationType::Upgrade, None),
        ];
        for (t, want) in cases {
            assert_eq!(ai.capability(t), want, "{t}");
        }
        assert!(matches!(
            ai.capability(OperationType::Restore),
            Some(Err(_))
        ));
    }

    #[test]
    fn release_namespace_falls_back_to_the_object_namespace() {
        let mut ai = ApplicationInstance::new("a", ApplicationInstanceSpec::default());
        ai.metadata.namespace = Some("team".into());
        assert_eq!(ai.release_namespace(), Some("team"));
        ai.spec.release = Some(ReleaseRef {
            name: "r".into(),
            namespace: "other".into(),
        });
        assert_eq!(ai.release_namespace(), Some("other"));
        assert!(!ai.spec.is_placeholder());
    }
}
