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

mod identity;
mod intents;
mod observed;
mod rows;

pub use rows::{
    AgentEventRow, AuditRow, ClusterRow, IntentAction, IntentRow, KeyRow, ObjectRow, StatusPut,
    StatusRow, TokenRow, TokenUse,
};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed (I/O, constraint, locked file, ...).
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A JSON column could not be encoded or decoded.
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
    /// The database was written by a newer hub-sim; it is left untouched.
    #[error("database schema version {found} is newer than this hub-sim understands ({known})")]
    SchemaTooNew {
        /// Schema version recorded in the database.
        found: i64,
        /// Newest schema version this build knows.
        known: i64,
    },
    /// No cluster of that name exists.
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

    /// A value from the `meta` key/value table (CA material and CA rotation state).
    pub fn meta_get(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Inserts or replaces a value in the `meta` table.
    pub(crate) fn meta_set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
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
            .create_intent(
                "c1",
                "ApplicationInstance",
                "ns",
                "x",
                IntentAction::Apply,
                Some(&spec),
            )
            .unwrap();
        let a2 = s
            .create_intent(
                "c1",
                "ApplicationInstance",
                "ns",
                "x",
                IntentAction::Apply,
                Some(&spec),
            )
            .unwrap();
        let b1 = s
            .create_intent(
                "c1",
                "ApplicationInstance",
                "ns",
                "y",
                IntentAction::Delete,
                None,
            )
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
            s.create_intent(
                "nope",
                "ApplicationInstance",
                "ns",
                "x",
                IntentAction::Apply,
                None
            ),
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
