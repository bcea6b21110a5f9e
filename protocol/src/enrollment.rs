//! JSON bodies of the enrollment endpoint (`POST /v1/enroll` over HTTPS).

use crate::frame::PublicKeyInfo;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Path of the enrollment endpoint on the hub.
pub const ENROLL_PATH: &str = "/v1/enroll";

/// Request body. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The join token (a secret).
    pub token: String,
    /// PEM PKCS#10 CSR for the key the agent generated in the cluster.
    pub csr_pem: String,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("csr_pem_len", &self.csr_pem.len())
            .finish()
    }
}

/// Body of a `200 OK` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// Cluster id assigned by the hub (also in the certificate).
    pub cluster_id: String,
    /// Organisation.
    pub org: String,
    /// PEM of the client certificate (leaf first).
    pub certificate_pem: String,
    /// PEM of the CA certificates to trust for the hub (one or two).
    pub ca_bundle_pem: String,
    /// Intent-signing public keys.
    pub signing_keys: Vec<PublicKeyInfo>,
    /// Tunnel URL, `wss://HOST[:PORT]/v1/tunnel`.
    pub tunnel_url: String,
}

/// Body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollError {
    /// Stable code.
    pub code: EnrollErrorCode,
    /// Human-readable detail; never contains the token.
    pub message: String,
}

/// Stable enrollment error codes.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollErrorCode {
    /// The token has expired (HTTP 401).
    TokenExpired,
    /// Signature, key or claims are invalid (HTTP 401).
    TokenInvalid,
    /// The token's `jti` was already used (HTTP 409).
    TokenReused,
    /// The token is not meant for enrollment (HTTP 401).
    TokenAudience,
    /// The CSR cannot be parsed or its signature is wrong (HTTP 400).
    CsrInvalid,
    /// The request body is not valid JSON of the right shape (HTTP 400).
    BadRequest,
    /// The cluster was revoked (HTTP 403).
    ClusterRevoked,
    /// Too many requests; retry later (HTTP 429).
    RateLimited,
    /// Recovery: the certificate expired longer ago than the hub's recovery
    /// window (HTTP 403); a new join token is needed.
    RecoveryWindowPassed,
    /// Recovery: the certificate is not this cluster's newest from this hub,
    /// or the proof of possession is wrong (HTTP 403).
    RecoveryRefused,
    /// The hub failed (HTTP 500); retry later.
    Internal,
    /// A code this build does not know.
    #[serde(other)]
    Unknown,
}

impl EnrollErrorCode {
    /// The code as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            EnrollErrorCode::TokenExpired => "token_expired",
            EnrollErrorCode::TokenInvalid => "token_invalid",
            EnrollErrorCode::TokenReused => "token_reused",
            EnrollErrorCode::TokenAudience => "token_audience",
            EnrollErrorCode::CsrInvalid => "csr_invalid",
            EnrollErrorCode::BadRequest => "bad_request",
            EnrollErrorCode::ClusterRevoked => "cluster_revoked",
            EnrollErrorCode::RateLimited => "rate_limited",
            EnrollErrorCode::RecoveryWindowPassed => "recovery_window_passed",
            EnrollErrorCode::RecoveryRefused => "recovery_refused",
            EnrollErrorCode::Internal => "internal",
            EnrollErrorCode::Unknown => "unknown",
        }
    }

    /// HTTP status the hub answers with.
    pub const fn http_status(self) -> u16 {
        match self {
            EnrollErrorCode::TokenExpired
            | EnrollErrorCode::TokenInvalid
            | EnrollErrorCode::TokenAudience => 401,
            EnrollErrorCode::TokenReused => 409,
            EnrollErrorCode::CsrInvalid | EnrollErrorCode::BadRequest => 400,
            EnrollErrorCode::ClusterRevoked
            | EnrollErrorCode::RecoveryWindowPassed
            | EnrollErrorCode::RecoveryRefused => 403,
            EnrollErrorCode::RateLimited => 429,
            EnrollErrorCode::Internal | EnrollErrorCode::Unknown => 500,
        }
    }

    /// Whether retrying the same request later can succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            EnrollErrorCode::RateLimited | EnrollErrorCode::Internal | EnrollErrorCode::Unknown
        )
    }
}

impl fmt::Display for EnrollErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
