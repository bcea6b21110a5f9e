//! The rows the store reads and writes.

use serde::{Deserialize, Serialize};

/// One signing key (intent or join-token), private part as PKCS#8.
#[derive(Clone)]
pub struct KeyRow {
    pub kid: String,
    pub purpose: String,
    pub pkcs8: Vec<u8>,
    pub public: Vec<u8>,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

impl std::fmt::Debug for KeyRow {
    // The private key never reaches a log line, even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRow")
            .field("kid", &self.kid)
            .field("purpose", &self.purpose)
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish_non_exhaustive()
    }
}

/// A cluster known to the hub.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterRow {
    pub name: String,
    pub org: String,
    pub created_at: i64,
    pub enrolled_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
    pub connected: bool,
    pub agent_version: Option<String>,
}

/// A stored join token (only its hash).
#[derive(Clone, Debug)]
pub struct TokenRow {
    pub jti: String,
    pub token_sha256: String,
    pub cluster: String,
    pub org: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// Why a join token could not be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    Consumed,
    Unknown,
    AlreadyUsed,
    Mismatch,
}

/// An intent as stored: unsigned. It is signed at send time so that an agent
/// offline for longer than an intent's lifetime still gets a fresh one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IntentRow {
    pub seq: i64,
    pub id: String,
    pub cluster: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub version: u64,
    /// Apply or delete.
    pub action: IntentAction,
    pub spec: Option<serde_json::Value>,
    pub created_at: i64,
    pub acked_at: Option<i64>,
    pub outcome: Option<String>,
    pub outcome_message: Option<String>,
}

/// The latest status of one object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusRow {
    pub cluster: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub phase: Option<String>,
    pub conditions: serde_json::Value,
    pub outputs: Option<serde_json::Value>,
    pub hash: Option<String>,
    pub updated_at: i64,
}

/// An object the hub has declared on a cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ObjectRow {
    pub cluster: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub version: u64,
    pub deleted: bool,
}

/// One event an agent sent (`event` frame), as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentEventRow {
    pub id: i64,
    pub cluster: String,
    pub received_at: i64,
    pub time: i64,
    pub severity: String,
    pub reason: String,
    pub object: Option<String>,
    pub intent_id: Option<String>,
    pub message: String,
}

/// What [`super::Store::put_status_bounded`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusPut {
    /// Stored (new or updated).
    Stored,
    /// Not stored: the object was never declared and the cluster already has
    /// the maximum number of statuses for such objects.
    UnknownObjectLimit,
}

/// One audit-log entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub ts: i64,
    pub event: String,
    pub cluster: Option<String>,
    pub outcome: String,
    pub detail: String,
}

/// What an intent does to its object; stored (and shown by the admin API) as
/// `apply` or `delete`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IntentAction {
    /// Create or update the object with the intent's spec.
    Apply,
    /// Delete the object.
    Delete,
}

impl IntentAction {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "apply",
            Self::Delete => "delete",
        }
    }
}

impl rusqlite::types::ToSql for IntentAction {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for IntentAction {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match v.as_str()? {
            "apply" => Ok(Self::Apply),
            "delete" => Ok(Self::Delete),
            other => Err(rusqlite::types::FromSqlError::Other(
                format!("unknown intent action {other:?}").into(),
            )),
        }
    }
}
