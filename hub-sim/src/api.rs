//! Request and response bodies of the admin API, shared by the server
//! (`admin`) and its client (`cli`, tests), so that neither side reads the
//! other's JSON by hand.

use serde::{Deserialize, Serialize};

pub use crate::hub::{CaRotationView, IssuedToken};
pub use crate::store::IntentRow;

/// `POST /v1/tokens`: issue a join token. Answered with [`IssuedToken`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRequest {
    /// Cluster the token enrolls.
    pub cluster: String,
    /// Organisation of that cluster.
    pub org: String,
    /// Lifetime, seconds (the hub's default when absent).
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/clusters/{cluster}/delete`: declare that an object must go.
/// Answered, like `apply`, with the stored [`IntentRow`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// `ApplicationInstance` or `Operation`.
    pub kind: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

/// A condition as the admin API shows it (`GET .../status`): the Kubernetes
/// camelCase spelling, while the protocol's [`vworkspace_protocol::Condition`]
/// keeps the wire's snake_case. Absent generation or time is `null`, not
/// omitted, so readers see every key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// Condition type, e.g. `"Ready"`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `"True"`, `"False"` or `"Unknown"`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// Generation the condition was computed for.
    pub observed_generation: Option<i64>,
    /// RFC 3339 time of the last status change.
    pub last_transition_time: Option<String>,
}

impl From<&vworkspace_protocol::Condition> for ConditionView {
    fn from(c: &vworkspace_protocol::Condition) -> Self {
        Self {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            observed_generation: c.observed_generation,
            last_transition_time: c.last_transition_time.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin API's condition JSON is the shape it had when it was built
    /// by hand: camelCase keys, `null` for absent values.
    #[test]
    fn condition_view_keeps_the_admin_json_shape() {
        let c = vworkspace_protocol::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Deployed".into(),
            message: "ok".into(),
            observed_generation: Some(3),
            last_transition_time: None,
        };
        let got = serde_json::to_value(ConditionView::from(&c)).unwrap();
        let want = serde_json::json!({
            "type": "Ready",
            "status": "True",
            "reason": "Deployed",
            "message": "ok",
            "observedGeneration": 3,
            "lastTransitionTime": null,
        });
        assert_eq!(got.to_string(), want.to_string());
    }
}
