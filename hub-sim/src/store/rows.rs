//! The rows the store reads and writes.

use serde::{Deserialize, Serialize};

/// One signing key (intent or join-token), private part as PKCS#8.
#[derive(Clone)]
pub struct KeyRow {
    /// Key id: hex of the first 8 bytes of the SHA-256 of the public key.
    pub kid: String,
    /// What the key signs: `intent` or `join`.
    pub purpose: String,
    /// Private key, PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// Raw 32-byte Ed25519 public key.
    pub public: Vec<u8>,
    /// When the key was generated, Unix seconds.
    pub created_at: i64,
    /// When the key was retired (verifiers no longer accept it), Unix seconds.
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
    /// Cluster name (unique).
    pub name: String,
    /// Organisation the cluster belongs to.
    pub org: String,
    /// When the cluster was created, Unix seconds.
    pub created_at: i64,
    /// When an agent first enrolled for it, Unix seconds.
    pub enrolled_at: Option<i64>,
    /// When it was revoked, Unix seconds; a revoked cluster cannot connect.
    pub revoked_at: Option<i64>,
    /// When its agent was last seen on the tunnel, Unix seconds.
    pub last_seen: Option<i64>,
    /// Whether an agent tunnel is connected now.
    pub connected: bool,
    /// Version string the agent reported in its last hello.
    pub agent_version: Option<String>,
}

/// A stored join token (only its hash).
#[derive(Clone, Debug)]
pub struct TokenRow {
    /// Token id (the `jti` claim).
    pub jti: String,
    /// Hex SHA-256 of the whole token; the token itself is not stored.
    pub token_sha256: String,
    /// Cluster the token enrolls.
    pub cluster: String,
    /// Organisation of that cluster.
    pub org: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
    /// When it was used, Unix seconds; a token is single-use.
    pub used_at: Option<i64>,
}

/// Why a join token could not be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// The token was valid and is now marked used.
    Consumed,
    /// No token with that id exists.
    Unknown,
    /// The token was used before.
    AlreadyUsed,
    /// The presented token does not match the stored hash.
    Mismatch,
}

/// An intent as stored: unsigned. It is signed at send time so that an agent
/// offline for longer than an intent's lifetime still gets a fresh one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IntentRow {
    /// Send order: increases with every intent the hub records.
    pub seq: i64,
    /// Intent id (a random UUID).
    pub id: String,
    /// Cluster the intent is for.
    pub cluster: String,
    /// Kind of the object.
    pub kind: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// Per-object version: one more than the object's previous intent.
    pub version: u64,
    /// Apply or delete.
    pub action: IntentAction,
    /// Desired spec (JSON) for an apply; `None` for a delete.
    pub spec: Option<serde_json::Value>,
    /// When the intent was recorded, Unix seconds.
    pub created_at: i64,
    /// When the agent acknowledged it (or it was given up on), Unix seconds.
    pub acked_at: Option<i64>,
    /// `applied`, `noop`, `rejected` or `undeliverable`; `None` until acknowledged.
    pub outcome: Option<String>,
    /// Detail that came with the outcome (rejection code and message).
    pub outcome_message: Option<String>,
}

/// The latest status of one object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusRow {
    /// Cluster the object is on.
    pub cluster: String,
    /// Kind of the object.
    pub kind: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// `metadata.generation` the status describes.
    pub generation: Option<i64>,
    /// Phase reported by the agent.
    pub phase: Option<String>,
    /// Conditions, as a JSON array.
    pub conditions: serde_json::Value,
    /// Outputs, as a JSON object (with `deleted: true` once the object is gone).
    pub outputs: Option<serde_json::Value>,
    /// The agent's digest of this status; equal hash, equal status.
    pub hash: Option<String>,
    /// When the hub stored it, Unix seconds.
    pub updated_at: i64,
}

/// An object the hub has declared on a cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ObjectRow {
    /// Cluster the object is on.
    pub cluster: String,
    /// Kind of the object.
    pub kind: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// Version of the latest intent for it.
    pub version: u64,
    /// Whether the latest intent deletes it.
    pub deleted: bool,
}

/// One event an agent sent (`event` frame), as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentEventRow {
    /// Row id; increases with every stored event.
    pub id: i64,
    /// Cluster whose agent sent it.
    pub cluster: String,
    /// When the hub received it, Unix seconds.
    pub received_at: i64,
    /// When it happened according to the agent, Unix seconds.
    pub time: i64,
    /// `Normal` or `Warning` (as sent, truncated).
    pub severity: String,
    /// CamelCase reason (as sent, truncated).
    pub reason: String,
    /// The object concerned, if any.
    pub object: Option<String>,
    /// The intent concerned, if any.
    pub intent_id: Option<String>,
    /// Human-readable message (truncated).
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
    /// Row id; increases with every entry.
    pub id: i64,
    /// When it was recorded, Unix seconds.
    pub ts: i64,
    /// What happened, e.g. `enroll` or `token.create`.
    pub event: String,
    /// The cluster concerned, if any.
    pub cluster: Option<String>,
    /// `ok`, or a code saying why not (an enrollment error code, `refused`).
    pub outcome: String,
    /// Free-form detail (never a secret).
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
