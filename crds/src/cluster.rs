//! `Cluster` (`ops.vworkspace.io/v1alpha1`, cluster-scoped): how this cluster
//! reaches the hub, and the state of that connection.
//!
//! A singleton per cluster. The spec accepts both the current field names
//! (`controlPlaneEndpoint`, `registrationTokenSecretRef`) and the deprecated
//! ones (`controlPlaneBaseUrl`, `odooBaseUrl`, inline `registrationToken`);
//! [`ClusterSpec::endpoint`] picks the one in force.

// `printcolumn(type_ = ..)` repeats per column; that is not a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired connection of this cluster to the hub.
///
/// Upstream's short name `cluster` is not declared: it equals the singular
/// name (so `kubectl get cluster` still works) and collides with Cluster API.
#[derive(CustomResource, Serialize, Deserialize, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "ops.vworkspace.io",
    version = "v1alpha1",
    kind = "Cluster",
    category = "vworkspace",
    status = "ClusterStatus",
    derive = "Default",
    derive = "PartialEq",
    doc = "Cluster says how this cluster reaches the vWorkspace hub and reports the connection state (one per cluster).",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Registering, Connected, Disconnected or Error"
    ),
    printcolumn(
        name = "Connected",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Connected\")].status",
        description = "Status of the Connected condition"
    ),
    printcolumn(
        name = "Cluster-ID",
        type_ = "string",
        json_path = ".spec.clusterId",
        priority = 1,
        description = "Identity registered with the hub"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", remote = "Self")]
pub struct ClusterSpec {
    /// Stable cluster identity issued by the hub; empty before the first registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// HTTPS base URL of the hub (vWorkspace Server), reachable from the agent's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub control_plane_endpoint: Option<String>,
    /// Deprecated alias of controlPlaneEndpoint; read only when controlPlaneEndpoint is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane_base_url: Option<String>,
    /// Older deprecated alias of controlPlaneEndpoint; read only when both newer names are unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub odoo_base_url: Option<String>,
    /// Secret in the agent's namespace holding the one-time join token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_token_secret_ref: Option<SecretKeyRef>,
    /// Deprecated inline one-time token; prefer registrationTokenSecretRef. Cleared after use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_token: Option<String>,
    /// Reserved capability switches; not reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<ClusterCapabilities>,
    /// Request a credential rotation now; reset to false once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_credentials: Option<bool>,
}

/// A key of a Secret in the agent's own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret's data; defaults to `registrationToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Reserved capability switches of a cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterCapabilities {
    /// Flux is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flux: Option<bool>,
    /// Velero is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velero: Option<bool>,
}

/// Coarse connection state of a cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ClusterPhase {
    /// No credential yet (e.g. the token Secret is missing).
    Pending,
    /// Exchanging the join token for an identity.
    Registering,
    /// The tunnel to the hub is up.
    Connected,
    /// Registered, but the hub is not reachable now.
    Disconnected,
    /// Registration or rotation failed; see the conditions.
    Error,
    /// The Cluster is being deleted.
    Terminating,
}

/// Observed connection state, written only by the agent. Holds no secret material.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// Pending, Registering, Connected, Disconnected, Error or Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ClusterPhase>,
    /// The metadata.generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Connected (reason HubCaUnknown when the hub's certificate comes from a CA the cluster does not trust), Authenticated, ControllersHealthy, BufferOverflow and ClockSkew (see vworkspace_crds::conditions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Last successful round trip with the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    /// Where the credentials obtained at registration are stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_status: Option<CredentialStatus>,
    /// The Secret holding the cluster's credentials (key, certificate, CA bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<NamespacedName>,
    /// Fingerprint (first 16 hex digits of SHA-256) of the last consumed join token; a new token re-registers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_token: Option<String>,
    /// Identity the hub issued to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Organization the cluster belongs to, as issued by the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// Expiry of the agent's client certificate; renewed at about two thirds of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<Time>,
    /// Version of the agent reporting this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// Where registration stored the credentials.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// Name of the credentials Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Namespace of the credentials Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_namespace: Option<String>,
    /// When the join token was exchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<Time>,
    /// The one-time token has been used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_token_consumed: Option<bool>,
}

/// Name and namespace of an object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedName {
    /// Object name.
    pub name: String,
    /// Object namespace.
    pub namespace: String,
}

// === impl ClusterSpec ===

crate::schema::optional_spec_serde!(ClusterSpec);

/// Hand-written so the inline join token never reaches a log line.
impl std::fmt::Debug for ClusterSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            cluster_id,
            control_plane_endpoint,
            control_plane_base_url,
            odoo_base_url,
            registration_token_secret_ref,
            registration_token,
            capabilities,
            rotate_credentials,
        } = self;
        f.debug_struct("ClusterSpec")
            .field("cluster_id", cluster_id)
            .field("control_plane_endpoint", control_plane_endpoint)
            .field("control_plane_base_url", control_plane_base_url)
            .field("odoo_base_url", odoo_base_url)
            .field(
                "registration_token_secret_ref",
                registration_token_secret_ref,
            )
            .field(
                "registration_token",
                &registration_token.as_ref().map(|_| "<redacted>"),
            )
            .field("capabilities", capabilities)
            .field("rotate_credentials", rotate_credentials)
            .finish()
    }
}

impl ClusterSpec {
    /// The hub URL in force: controlPlaneEndpoint, else controlPlaneBaseUrl, else odooBaseUrl.
    pub fn endpoint(&self) -> Option<&str> {
        [
            &self.control_plane_endpoint,
            &self.control_plane_base_url,
            &self.odoo_base_url,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .find(|s| !s.is_empty())
    }

    /// Names of deprecated fields that are set, for a `DeprecatedField` warning.
    pub fn deprecated_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.control_plane_base_url.is_some() {
            out.push("controlPlaneBaseUrl");
        }
        if self.odoo_base_url.is_some() {
            out.push("odooBaseUrl");
        }
        if self.registration_token.is_some() {
            out.push("registrationToken");
        }
        out
    }
}

// === impl ClusterPhase ===

impl ClusterPhase {
    /// The wire literal, e.g. `Connected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Registering => "Registering",
            Self::Connected => "Connected",
            Self::Disconnected => "Disconnected",
            Self::Error => "Error",
            Self::Terminating => "Terminating",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_prefers_current_name_then_deprecated_aliases() {
        let cases = [
            (
                Some("https://a"),
                Some("https://b"),
                Some("https://c"),
                Some("https://a"),
            ),
            (
                None,
                Some("https://b"),
                Some("https://c"),
                Some("https://b"),
            ),
            (None, None, Some("https://c"), Some("https://c")),
            (Some(""), Some("https://b"), None, Some("https://b")),
            (None, None, None, None),
        ];
        for (current, base, odoo, want) in cases {
            let spec = ClusterSpec {
                control_plane_endpoint: current.map(str::to_string),
                control_plane_base_url: base.map(str::to_string),
                odoo_base_url: odoo.map(str::to_string),
                ..ClusterSpec::default()
            };
            assert_eq!(spec.endpoint(), want, "{current:?} {base:?} {odoo:?}");
        }
    }

    #[test]
    fn debug_output_redacts_the_inline_token() {
        let cluster = Cluster::new(
            "c",
            ClusterSpec {
                registration_token: Some("vwksp-reg-0123456789abcdef".into()),
                control_plane_base_url: Some("https://hub.example.org".into()),
                ..ClusterSpec::default()
            },
        );
        for text in [format!("{cluster:?}"), format!("{cluster:#?}")] {
            assert!(!text.contains("0123456789abcdef"), "{text}");
            assert!(text.contains("<redacted>"), "{text}");
            assert!(text.contains("https://hub.example.org"), "{text}");
        }
        let none = format!("{:?}", ClusterSpec::default());
        assert!(none.contains("registration_token: None"), "{none}");
    }

    #[test]
    fn deprecated_fields_are_named() {
        let spec = ClusterSpec {
            control_plane_base_url: Some("https://b".into()),
            registration_token: Some("t".into()),
            ..ClusterSpec::default()
        };
        assert_eq!(
            spec.deprecated_fields(),
            ["controlPlaneBaseUrl", "registrationToken"]
        );
        assert!(ClusterSpec::default().deprecated_fields().is_empty());
    }
}
