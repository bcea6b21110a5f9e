//! Intents and the per-object versions they declare.

use rusqlite::{OptionalExtension, params};

use super::{IntentAction, IntentRow, ObjectRow, Store, StoreError, now};

impl Store {
    // ---- intents ----

    /// Records a new intent for an object with the next per-object version.
    pub fn create_intent(
        &self,
        cluster: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        action: IntentAction,
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
        let deleted = action == IntentAction::Delete;
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
            action,
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

    /// The intent with that id, if any.
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

    /// [`Self::settle_applied`] for many objects in one transaction (a
    /// Hello or Inventory of a big cluster); returns the intents settled.
    pub fn settle_applied_many<'a>(
        &self,
        cluster: &str,
        held: impl IntoIterator<Item = (&'a str, &'a str, &'a str, u64)>,
    ) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE intents SET acked_at = ?6, outcome = 'applied', outcome_message = 'reported applied in Hello'
                 WHERE cluster = ?1 AND kind = ?2 AND namespace = ?3 AND name = ?4 AND version <= ?5
                   AND acked_at IS NULL",
            )?;
            let t = now();
            for (kind, namespace, name, version) in held {
                n += stmt.execute(params![cluster, kind, namespace, name, version as i64, t])?;
            }
        }
        tx.commit()?;
        Ok(n)
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

    /// Declared objects, optionally only of one cluster and/or kind, sorted by cluster, kind, namespace and name.
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
}
