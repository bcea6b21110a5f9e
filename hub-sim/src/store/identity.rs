//! Keys, clusters, certificates and join tokens: who may talk to the hub.

use rusqlite::{OptionalExtension, params};

use super::{ClusterRow, KeyRow, Store, StoreError, TokenRow, TokenUse, now};

impl Store {
    // ---- keys ----

    /// Stores a newly generated signing key.
    pub(crate) fn insert_key(&self, key: &KeyRow) -> Result<(), StoreError> {
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

    /// The cluster of that name, if it exists.
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

    /// All clusters, by name.
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

    /// Records that the cluster's agent connected or disconnected (and its version, when known) and updates `last_seen`.
    pub(crate) fn set_connected(
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

    /// Sets the cluster's `last_seen` to now.
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

    /// Records a certificate issued to `cluster`; the first one also sets `enrolled_at`.
    pub(crate) fn insert_cert(
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

    /// The row id of the last certificate recorded (0 without any): a mark
    /// that later certificates are issued after it.
    pub fn last_cert_mark(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT COALESCE(MAX(rowid), 0) FROM certs", [], |r| {
                r.get(0)
            })?)
    }

    /// Clusters, not revoked, whose newest certificate was recorded at or
    /// before `mark` (from [`Store::last_cert_mark`]), by name.
    pub fn clusters_with_cert_upto(&self, mark: i64) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT c.name FROM clusters c
             WHERE c.revoked_at IS NULL
               AND (SELECT MAX(rowid) FROM certs WHERE cluster = c.name AND revoked = 0) <= ?1
             ORDER BY c.name",
        )?;
        let rows = stmt.query_map([mark], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Serials of every revoked certificate.
    pub(crate) fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT serial FROM certs WHERE revoked = 1")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    // ---- join tokens ----

    /// Stores a new join token (its hash, never the token).
    pub(crate) fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
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
