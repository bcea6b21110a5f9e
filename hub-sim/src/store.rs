//! The durable store: one SQLite database (`hub.db`) in the state directory.
//!
//! Everything the hub must not forget lives here: the CA, the signing keys,
//! clusters, issued certificates, join tokens (hashed), intents with their
//! per-object versions and ack state, the latest status per object, inventory
//! and the audit log. Writes are small and synchronous; the connection sits
//! behind a mutex and WAL keeps readers cheap.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    #[error("database schema version {found} is newer than this hub-sim understands ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("cluster {0:?} not found")]
    UnknownCluster(String),
}

/// Ordered schema steps; the index + 1 is the schema version (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    // 1: initial schema
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE keys (
        kid TEXT PRIMARY KEY, purpose TEXT NOT NULL, pkcs8 BLOB NOT NULL, public BLOB NOT NULL,
        created_at INTEGER NOT NULL, retired_at INTEGER);
     CREATE TABLE clusters (
        name TEXT PRIMARY KEY, org TEXT NOT NULL, created_at INTEGER NOT NULL,
        enrolled_at INTEGER, revoked_at INTEGER, last_seen INTEGER, connected INTEGER NOT NULL DEFAULT 0,
        agent_version TEXT);
     CREATE TABLE certs (
        serial TEXT PRIMARY KEY, cluster TEXT NOT NULL, issued_at INTEGER NOT NULL,
        not_after INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
     CREATE TABLE join_tokens (
        jti TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, cluster TEXT NOT NULL, org TEXT NOT NULL,
        created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER);
     CREATE TABLE objects (
        cluster TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        version INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, spec TEXT,
        PRIMARY KEY (cluster, kind, namespace, name));
     CREATE TABLE intents (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, cluster TEXT NOT NULL,
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
        action TEXT NOT NULL, spec TEXT, created_at INTEGER NOT NULL,
        acked_at INTEGER, outcome TEXT, outcome_message TEXT);
     CREATE INDEX intents_pending ON intents (cluster, acked_at, seq);
     CREATE TABLE statuses (
        cluster TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        generation INTEGER, phase TEXT, conditions TEXT NOT NULL, outputs TEXT, hash TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (cluster, kind, namespace, name));
     CREATE TABLE inventory (cluster TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at INTEGER NOT NULL);
     CREATE TABLE faults (cluster TEXT PRIMARY KEY, body TEXT NOT NULL);
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, event TEXT NOT NULL,
        cluster TEXT, outcome TEXT NOT NULL, detail TEXT NOT NULL);",
    // 2: events the agents send live apart from the hub's own audit log, so a
    // chatty (or hostile) agent cannot push the hub's entries out of view.
    "CREATE TABLE agent_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, cluster TEXT NOT NULL, received_at INTEGER NOT NULL,
        time INTEGER NOT NULL, severity TEXT NOT NULL, reason TEXT NOT NULL, object TEXT,
        intent_id TEXT, message TEXT NOT NULL);
     CREATE INDEX agent_events_cluster ON agent_events (cluster, id);",
];

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The durable store. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

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
    /// `apply` or `delete`.
    pub action: String,
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

/// What [`Store::put_status_bounded`] did.
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

impl Store {
    /// Opens (or creates) `hub.db` in `dir` and brings the schema up to date.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(dir.join("hub.db"))?;
        Self::init(conn)
    }

    /// An in-memory store, for unit tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // NORMAL in WAL mode is durable across process crashes (not power loss),
        // which is the promise hub-sim makes.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements
        // are atomic), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- keys ----

    pub fn insert_key(&self, key: &KeyRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO keys (kid, purpose, pkcs8, public, created_at, retired_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                key.kid,
                key.purpose,
                key.pkcs8,
                key.public,
                key.created_at,
                key.retired_at
            ],
        )?;
        Ok(())
    }

    /// Keys of one purpose, oldest first.
    pub fn keys(&self, purpose: &str) -> Result<Vec<KeyRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT kid, purpose, pkcs8, public, created_at, retired_at FROM keys
             WHERE purpose = ?1 ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([purpose], |r| {
            Ok(KeyRow {
                kid: r.get(0)?,
                purpose: r.get(1)?,
                pkcs8: r.get(2)?,
                public: r.get(3)?,
                created_at: r.get(4)?,
                retired_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a key retired; returns false when no active key had that id.
    pub fn retire_key(&self, kid: &str) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE keys SET retired_at = ?2 WHERE kid = ?1 AND retired_at IS NULL",
            params![kid, now()],
        )?;
        Ok(n == 1)
    }

    // ---- clusters ----

    /// Creates the cluster if missing. An existing cluster keeps its org; a
    /// different org is refused by the caller before this point.
    pub fn ensure_cluster(&self, name: &str, org: &str) -> Result<ClusterRow, StoreError> {
        self.conn().execute(
            "INSERT INTO clusters (name, org, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(name) DO NOTHING",
            params![name, org, now()],
        )?;
        self.cluster(name)?
            .ok_or_else(|| StoreError::UnknownCluster(name.to_owned()))
    }

    pub fn cluster(&self, name: &str) -> Result<Option<ClusterRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, org, created_at, enrolled_at, revoked_at, last_seen, connected, agent_version
                 FROM clusters WHERE name = ?1",
                [name],
                cluster_row,
            )
            .optional()?)
    }

    pub fn clusters(&self) -> Result<Vec<ClusterRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, org, created_at, enrolled_at, revoked_at, last_seen, connected, agent_version
             FROM clusters ORDER BY name",
        )?;
        let rows = stmt.query_map([], cluster_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes the cluster and every certificate issued to it.
    pub fn revoke_cluster(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE clusters SET revoked_at = ?2, connected = 0 WHERE name = ?1",
            params![name, now()],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownCluster(name.to_owned()));
        }
        tx.execute("UPDATE certs SET revoked = 1 WHERE cluster = ?1", [name])?;
        let serials = {
            let mut stmt = tx.prepare("SELECT serial FROM certs WHERE cluster = ?1")?;
            let rows = stmt.query_map([name], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        tx.commit()?;
        Ok(serials)
    }

    /// Lifts a cluster-level revocation (a new join token re-admits the cluster);
    /// certificates revoked earlier stay revoked.
    pub fn unrevoke_cluster(&self, name: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE clusters SET revoked_at = NULL WHERE name = ?1",
            [name],
        )?;
        Ok(())
    }

    pub fn set_connected(
        &self,
        name: &str,
        connected: bool,
        agent_version: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE clusters SET connected = ?2, last_seen = ?3,
                agent_version = COALESCE(?4, agent_version) WHERE name = ?1",
            params![name, connected, now(), agent_version],
        )?;
        Ok(())
    }

    pub fn touch_cluster(&self, name: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE clusters SET last_seen = ?2 WHERE name = ?1",
            params![name, now()],
        )?;
        Ok(())
    }

    /// Marks every cluster disconnected (on start: nothing is connected yet).
    pub fn reset_connected(&self) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE clusters SET connected = 0", [])?;
        Ok(())
    }

    // ---- certificates ----

    pub fn insert_cert(
        &self,
        serial: &str,
        cluster: &str,
        not_after: i64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO certs (serial, cluster, issued_at, not_after) VALUES (?1, ?2, ?3, ?4)",
            params![serial, cluster, now(), not_after],
        )?;
        tx.execute(
            "UPDATE clusters SET enrolled_at = COALESCE(enrolled_at, ?2) WHERE name = ?1",
            params![cluster, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The serial of the certificate issued last to `cluster`, and whether it
    /// is revoked (certificate recovery accepts only that one).
    pub fn newest_cert(&self, cluster: &str) -> Result<Option<(String, bool)>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT serial, revoked FROM certs WHERE cluster = ?1
                 ORDER BY issued_at DESC, rowid DESC LIMIT 1",
                [cluster],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? != 0)),
            )
            .optional()?;
        Ok(row)
    }

    pub fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT serial FROM certs WHERE revoked = 1")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- join tokens ----

    pub fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO join_tokens (jti, token_sha256, cluster, org, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.jti, t.token_sha256, t.cluster, t.org, now(), t.expires_at],
        )?;
        Ok(())
    }

    /// Atomically marks the token used. Only a token whose stored hash matches
    /// `token_sha256` can be consumed, and only once.
    pub fn consume_token(&self, jti: &str, token_sha256: &str) -> Result<TokenUse, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(String, Option<i64>)> = tx
            .query_row(
                "SELECT token_sha256, used_at FROM join_tokens WHERE jti = ?1",
                [jti],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let result = match row {
            None => TokenUse::Unknown,
            Some((hash, _)) if hash != token_sha256 => TokenUse::Mismatch,
            Some((_, Some(_))) => TokenUse::AlreadyUsed,
            Some((_, None)) => {
                tx.execute(
                    "UPDATE join_tokens SET used_at = ?2 WHERE jti = ?1",
                    params![jti, now()],
                )?;
                TokenUse::Consumed
            }
        };
        tx.commit()?;
        Ok(result)
    }

    // ---- intents ----

    /// Records a new intent for an object with the next per-object version.
    pub fn create_intent(
        &self,
        cluster: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        action: &str,
        spec: Option<&serde_json::Value>,
    ) -> Result<IntentRow, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM clusters WHERE name = ?1", [cluster], |r| {
                r.get(0)
            })
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::UnknownCluster(cluster.to_owned()));
        }
        let current: Option<i64> = tx
            .query_row(
                "SELECT version FROM objects WHERE cluster = ?1 AND kind = ?2 AND namespace = ?3 AND name = ?4",
                params![cluster, kind, namespace, name],
                |r| r.get(0),
            )
            .optional()?;
        let version = current.unwrap_or(0) + 1;
        let spec_text = spec.map(serde_json::to_string).transpose()?;
        let deleted = action == "delete";
        tx.execute(
            "INSERT INTO objects (cluster, kind, namespace, name, version, deleted, spec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(cluster, kind, namespace, name) DO UPDATE SET
                version = excluded.version, deleted = excluded.deleted,
                spec = COALESCE(excluded.spec, objects.spec)",
            params![cluster, kind, namespace, name, version, deleted, spec_text],
        )?;
        let id = uuid::Uuid::new_v4().to_string();
        let created_at = now();
        tx.execute(
            "INSERT INTO intents (id, cluster, kind, namespace, name, version, action, spec, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![id, cluster, kind, namespace, name, version, action, spec_text, created_at],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        Ok(IntentRow {
            seq,
            id,
            cluster: cluster.to_owned(),
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version: version as u64,
            action: action.to_owned(),
            spec: spec.cloned(),
            created_at,
            acked_at: None,
            outcome: None,
            outcome_message: None,
        })
    }

    /// Unacked intents of a cluster after `after_seq`, in order.
    pub fn pending_intents(
        &self,
        cluster: &str,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<IntentRow>, StoreError> {
        self.query_intents(
            "WHERE cluster = ?1 AND acked_at IS NULL AND seq > ?2 ORDER BY seq LIMIT ?3",
            params![cluster, after_seq, limit as i64],
        )
    }

    /// The most recent intents (for the admin API), newest last.
    pub fn intents(
        &self,
        cluster: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IntentRow>, StoreError> {
        let mut rows = self.query_intents(
            "WHERE (?1 IS NULL OR cluster = ?1) ORDER BY seq DESC LIMIT ?2",
            params![cluster, limit as i64],
        )?;
        rows.reverse();
        Ok(rows)
    }

    pub fn intent(&self, id: &str) -> Result<Option<IntentRow>, StoreError> {
        Ok(self
            .query_intents("WHERE id = ?1", params![id])?
            .into_iter()
            .next())
    }

    fn query_intents(
        &self,
        tail: &str,
        p: impl rusqlite::Params,
    ) -> Result<Vec<IntentRow>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "SELECT seq, id, cluster, kind, namespace, name, version, action, spec, created_at,
                    acked_at, outcome, outcome_message FROM intents {tail}"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(p, |r| {
            let spec: Option<String> = r.get(8)?;
            Ok((
                IntentRow {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    cluster: r.get(2)?,
                    kind: r.get(3)?,
                    namespace: r.get(4)?,
                    name: r.get(5)?,
                    version: r.get::<_, i64>(6)? as u64,
                    action: r.get(7)?,
                    spec: None,
                    created_at: r.get(9)?,
                    acked_at: r.get(10)?,
                    outcome: r.get(11)?,
                    outcome_message: r.get(12)?,
                },
                spec,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut intent, spec) = row?;
            intent.spec = spec.map(|s| serde_json::from_str(&s)).transpose()?;
            out.push(intent);
        }
        Ok(out)
    }

    /// Records the agent's answer for an intent of `cluster`. Returns false if
    /// the intent is unknown, belongs to another cluster, or was acked already.
    pub fn ack_intent(
        &self,
        cluster: &str,
        id: &str,
        outcome: &str,
        message: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE intents SET acked_at = ?3, outcome = ?4, outcome_message = ?5
             WHERE id = ?1 AND cluster = ?2 AND acked_at IS NULL",
            params![id, cluster, now(), outcome, message],
        )?;
        Ok(n == 1)
    }

    /// Resume: the agent says it has applied `version` of an object, so every
    /// pending intent for that object up to that version is settled.
    pub fn settle_applied(
        &self,
        cluster: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        version: u64,
    ) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE intents SET acked_at = ?6, outcome = 'applied', outcome_message = 'reported applied in Hello'
             WHERE cluster = ?1 AND kind = ?2 AND namespace = ?3 AND name = ?4 AND version <= ?5
               AND acked_at IS NULL",
            params![cluster, kind, namespace, name, version as i64, now()],
        )?)
    }

    /// Makes the newest intent of an object pending again if it was applied
    /// (or no-op'd) before; returns its seq if it is now pending. A rejected
    /// newest intent stays settled (resending would only be refused again).
    pub fn requeue_latest(
        &self,
        cluster: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<i64>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let latest: Option<(i64, Option<i64>, Option<String>)> = tx
            .query_row(
                "SELECT seq, acked_at, outcome FROM intents
                 WHERE cluster = ?1 AND kind = ?2 AND namespace = ?3 AND name = ?4
                 ORDER BY version DESC LIMIT 1",
                params![cluster, kind, namespace, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let result = match latest {
            None => None,
            Some((seq, None, _)) => Some(seq),
            Some((seq, Some(_), Some(outcome))) if outcome == "applied" || outcome == "noop" => {
                tx.execute(
                    "UPDATE intents SET acked_at = NULL, outcome = NULL, outcome_message = NULL WHERE seq = ?1",
                    [seq],
                )?;
                Some(seq)
            }
            Some(_) => None,
        };
        tx.commit()?;
        Ok(result)
    }

    pub fn objects(
        &self,
        cluster: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Vec<ObjectRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT cluster, kind, namespace, name, version, deleted FROM objects
             WHERE (?1 IS NULL OR cluster = ?1) AND (?2 IS NULL OR kind = ?2)
             ORDER BY cluster, kind, namespace, name",
        )?;
        let rows = stmt.query_map(params![cluster, kind], |r| {
            Ok(ObjectRow {
                cluster: r.get(0)?,
                kind: r.get(1)?,
                namespace: r.get(2)?,
                name: r.get(3)?,
                version: r.get::<_, i64>(4)? as u64,
                deleted: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- status + inventory ----

    pub fn put_status(&self, s: &StatusRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO statuses (cluster, kind, namespace, name, generation, phase, conditions, outputs, hash, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(cluster, kind, namespace, name) DO UPDATE SET
                generation = excluded.generation, phase = excluded.phase, conditions = excluded.conditions,
                outputs = excluded.outputs, hash = excluded.hash, updated_at = excluded.updated_at",
            params![
                s.cluster,
                s.kind,
                s.namespace,
                s.name,
                s.generation,
                s.phase,
                serde_json::to_string(&s.conditions)?,
                s.outputs.as_ref().map(serde_json::to_string).transpose()?,
                s.hash,
                s.updated_at
            ],
        )?;
        Ok(())
    }

    /// Stores a status, unless it is for an object the hub never declared
    /// and the cluster already holds `max_unknown` such statuses (an update of
    /// one already stored is always taken).
    pub fn put_status_bounded(
        &self,
        s: &StatusRow,
        max_unknown: usize,
    ) -> Result<StatusPut, StoreError> {
        {
            let conn = self.conn();
            let known: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM objects WHERE cluster = ?1 AND kind = ?2 AND namespace = ?3 AND name = ?4)
                     OR EXISTS(SELECT 1 FROM statuses WHERE cluster = ?1 AND kind = ?2 AND namespace = ?3 AND name = ?4)",
                params![s.cluster, s.kind, s.namespace, s.name],
                |r| r.get(0),
            )?;
            if !known {
                let unknown: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM statuses st WHERE st.cluster = ?1 AND NOT EXISTS (
                        SELECT 1 FROM objects o WHERE o.cluster = st.cluster AND o.kind = st.kind
                          AND o.namespace = st.namespace AND o.name = st.name)",
                    [&s.cluster],
                    |r| r.get(0),
                )?;
                if unknown as usize >= max_unknown {
                    return Ok(StatusPut::UnknownObjectLimit);
                }
            }
        }
        self.put_status(s)?;
        Ok(StatusPut::Stored)
    }

    pub fn statuses(
        &self,
        cluster: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Vec<StatusRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT cluster, kind, namespace, name, generation, phase, conditions, outputs, hash, updated_at
             FROM statuses WHERE (?1 IS NULL OR cluster = ?1) AND (?2 IS NULL OR kind = ?2)
             ORDER BY cluster, kind, namespace, name",
        )?;
        let rows = stmt.query_map(params![cluster, kind], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, i64>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                cluster,
                kind,
                namespace,
                name,
                generation,
                phase,
                conditions,
                outputs,
                hash,
                updated_at,
            ) = row?;
            out.push(StatusRow {
                cluster,
                kind,
                namespace,
                name,
                generation,
                phase,
                conditions: serde_json::from_str(&conditions)?,
                outputs: outputs.map(|o| serde_json::from_str(&o)).transpose()?,
                hash,
                updated_at,
            });
        }
        Ok(out)
    }

    pub fn put_inventory(&self, cluster: &str, body: &serde_json::Value) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO inventory (cluster, body, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(cluster) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![cluster, serde_json::to_string(body)?, now()],
        )?;
        Ok(())
    }

    pub fn inventory(&self, cluster: &str) -> Result<Option<serde_json::Value>, StoreError> {
        let body: Option<String> = self
            .conn()
            .query_row(
                "SELECT body FROM inventory WHERE cluster = ?1",
                [cluster],
                |r| r.get(0),
            )
            .optional()?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    // ---- faults ----

    pub fn put_faults(&self, cluster: &str, body: &serde_json::Value) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO faults (cluster, body) VALUES (?1, ?2)
             ON CONFLICT(cluster) DO UPDATE SET body = excluded.body",
            params![cluster, serde_json::to_string(body)?],
        )?;
        Ok(())
    }

    pub fn all_faults(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT cluster, body FROM faults")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (c, b) = row?;
            out.push((c, serde_json::from_str(&b)?));
        }
        Ok(out)
    }

    // ---- audit ----

    /// Appends to the audit log. `detail` must never hold secret material.
    pub fn audit(
        &self,
        event: &str,
        cluster: Option<&str>,
        outcome: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit (ts, event, cluster, outcome, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now(), event, cluster, outcome, detail],
        )?;
        Ok(())
    }

    /// Stores an agent-sent event and keeps only the newest `keep` of the
    /// cluster; returns how many older events were dropped to make room.
    pub fn put_agent_event(&self, e: &AgentEventRow, keep: usize) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO agent_events (cluster, received_at, time, severity, reason, object, intent_id, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                e.cluster,
                e.received_at,
                e.time,
                e.severity,
                e.reason,
                e.object,
                e.intent_id,
                e.message
            ],
        )?;
        let dropped = tx.execute(
            "DELETE FROM agent_events WHERE cluster = ?1 AND id <= (
                SELECT id FROM agent_events WHERE cluster = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![e.cluster, keep as i64],
        )?;
        tx.commit()?;
        Ok(dropped)
    }

    /// The newest `limit` agent events (of one cluster, or all), oldest first.
    pub fn agent_events(
        &self,
        cluster: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgentEventRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, cluster, received_at, time, severity, reason, object, intent_id, message
             FROM agent_events WHERE (?1 IS NULL OR cluster = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![cluster, limit as i64], |r| {
            Ok(AgentEventRow {
                id: r.get(0)?,
                cluster: r.get(1)?,
                received_at: r.get(2)?,
                time: r.get(3)?,
                severity: r.get(4)?,
                reason: r.get(5)?,
                object: r.get(6)?,
                intent_id: r.get(7)?,
                message: r.get(8)?,
            })
        })?;
        let mut out: Vec<AgentEventRow> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The newest `limit` audit entries, oldest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, ts, event, cluster, outcome, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                ts: r.get(1)?,
                event: r.get(2)?,
                cluster: r.get(3)?,
                outcome: r.get(4)?,
                detail: r.get(5)?,
            })
        })?;
        let mut out: Vec<AuditRow> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }
}

fn cluster_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClusterRow> {
    Ok(ClusterRow {
        name: r.get(0)?,
        org: r.get(1)?,
        created_at: r.get(2)?,
        enrolled_at: r.get(3)?,
        revoked_at: r.get(4)?,
        last_seen: r.get(5)?,
        connected: r.get(6)?,
        agent_version: r.get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_per_object_and_acks_settle() {
        let s = Store::in_memory().unwrap();
        s.ensure_cluster("c1", "acme").unwrap();
        let spec = serde_json::json!({"a": 1});
        let a1 = s
            .create_intent("c1", "ApplicationInstance", "ns", "x", "apply", Some(&spec))
            .unwrap();
        let a2 = s
            .create_intent("c1", "ApplicationInstance", "ns", "x", "apply", Some(&spec))
            .unwrap();
        let b1 = s
            .create_intent("c1", "ApplicationInstance", "ns", "y", "delete", None)
            .unwrap();
        assert_eq!((a1.version, a2.version, b1.version), (1, 2, 1));
        assert!(a2.seq > a1.seq);
        let pending = s.pending_intents("c1", 0, 10).unwrap();
        assert_eq!(pending.len(), 3);
        assert_eq!(pending[0].spec, Some(spec));
        assert_eq!(
            s.settle_applied("c1", "ApplicationInstance", "ns", "x", 1)
                .unwrap(),
            1
        );
        assert!(s.ack_intent("c1", &a2.id, "applied", None).unwrap());
        assert!(!s.ack_intent("c1", &a2.id, "applied", None).unwrap());
        assert!(!s.ack_intent("other", &b1.id, "applied", None).unwrap());
        let pending = s.pending_intents("c1", 0, 10).unwrap();
        assert_eq!(
            pending.iter().map(|i| &i.id).collect::<Vec<_>>(),
            vec![&b1.id]
        );
        assert!(matches!(
            s.create_intent("nope", "ApplicationInstance", "ns", "x", "apply", None),
            Err(StoreError::UnknownCluster(_))
        ));
    }

    #[test]
    fn tokens_are_single_use_and_hash_checked() {
        let s = Store::in_memory().unwrap();
        s.insert_token(&TokenRow {
            jti: "j1".into(),
            token_sha256: "h".into(),
            cluster: "c".into(),
            org: "o".into(),
            expires_at: now() + 60,
            used_at: None,
        })
        .unwrap();
        assert_eq!(s.consume_token("j1", "x").unwrap(), TokenUse::Mismatch);
        assert_eq!(s.consume_token("j1", "h").unwrap(), TokenUse::Consumed);
        assert_eq!(s.consume_token("j1", "h").unwrap(), TokenUse::AlreadyUsed);
        assert_eq!(s.consume_token("j2", "h").unwrap(), TokenUse::Unknown);
    }

    #[test]
    fn schema_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.ensure_cluster("c1", "acme").unwrap();
            s.meta_set("k", "v").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.meta_get("k").unwrap().as_deref(), Some("v"));
        assert_eq!(s.clusters().unwrap().len(), 1);
    }
}
