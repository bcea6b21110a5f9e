//! Request and response bodies of the admin API, shared by the server
//! (`admin`) and its client (`cli`, tests), so that neither side reads the
//! other's JSON by hand.

use serde::{Deserialize, Serialize};

pub use crate::hub::IssuedToken;
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
