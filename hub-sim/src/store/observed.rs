//! What agents report (statuses, inventory, events), fault switches and the
//! audit log.

use rusqlite::{OptionalExtension, params};

use super::{AgentEventRow, AuditRow, StatusPut, StatusRow, Store, StoreError, now};

impl Store {
    // ---- status + inventory ----

    /// Inserts or replaces an object's latest status, without limits.
    pub(crate) fn put_status(&self, s: &StatusRow) -> Result<(), StoreError> {
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

    /// Latest statuses, optionally only of one cluster and/or kind, sorted by cluster, kind, namespace and name.
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

    /// Inserts or replaces the last inventory a cluster's agent sent.
    pub(crate) fn put_inventory(
        &self,
        cluster: &str,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO inventory (cluster, body, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(cluster) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![cluster, serde_json::to_string(body)?, now()],
        )?;
        Ok(())
    }

    /// The last inventory stored for a cluster, if any.
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

    /// The hub's view of what a cluster's agent holds, to compare with its
    /// bucketed digest: every object of the last inventory, plus every object
    /// an acked intent (applied or noop) put there since; the version is the
    /// highest of the inventory's and the acked ones, the status hash that of
    /// the last status stored (empty when none is, so the bucket differs and
    /// the hub asks for it). Objects whose newest
    /// acked intent deletes them, or whose last status is a tombstone, are
    /// left out, as the agent leaves them out of its inventory.
    pub fn digest_view(
        &self,
        cluster: &str,
    ) -> Result<Vec<vworkspace_protocol::InventoryEntry>, StoreError> {
        use std::collections::BTreeMap;
        type Key = (String, String, String);
        // (version, deleted by the intent of that version, status hash)
        let mut view: BTreeMap<Key, (u64, bool, Option<String>)> = BTreeMap::new();
        if let Some(inv) = self.inventory(cluster)? {
            for o in inv["objects"].as_array().into_iter().flatten() {
                let key = (
                    o["kind"].as_str().unwrap_or_default().to_owned(),
                    o["namespace"].as_str().unwrap_or_default().to_owned(),
                    o["name"].as_str().unwrap_or_default().to_owned(),
                );
                view.insert(key, (o["version"].as_u64().unwrap_or(0), false, None));
            }
        }
        let conn = self.conn();
        {
            let mut stmt = conn.prepare(
                "SELECT kind, namespace, name, version, action FROM intents
                 WHERE cluster = ?1 AND outcome IN ('applied', 'noop') ORDER BY version",
            )?;
            let rows = stmt.query_map([cluster], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ),
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, String>(4)?,
                ))
            })?;
            for row in rows {
                let (key, version, action) = row?;
                let e = view.entry(key).or_insert((0, false, None));
                if version >= e.0 {
                    *e = (version, action == "delete", None);
                }
            }
        }
        {
            let mut stmt = conn.prepare(
                "SELECT kind, namespace, name, hash, outputs FROM statuses WHERE cluster = ?1",
            )?;
            let rows = stmt.query_map([cluster], |r| {
                Ok((
                    (
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ),
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            })?;
            for row in rows {
                let (key, hash, outputs) = row?;
                let tombstone = outputs
                    .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
                    .is_some_and(|o| o["deleted"] == serde_json::Value::Bool(true));
                // A status alone does not put an object in the view: the
                // agent may have dropped it from its inventory since.
                if tombstone {
                    view.remove(&key);
                } else if let Some(e) = view.get_mut(&key) {
                    e.2 = hash;
                }
            }
        }
        Ok(view
            .into_iter()
            .filter(|(_, (_, deleted, _))| !deleted)
            .filter_map(|((kind, namespace, name), (version, _, hash))| {
                let kind = serde_json::from_value(serde_json::Value::String(kind)).ok()?;
                Some(vworkspace_protocol::InventoryEntry {
                    object: vworkspace_protocol::ObjectRef::new(kind, namespace, name),
                    version,
                    status_hash: hash.unwrap_or_default(),
                })
            })
            .collect())
    }

    // ---- faults ----

    /// Inserts or replaces a cluster's fault-injection settings.
    pub(crate) fn put_faults(
        &self,
        cluster: &str,
        body: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO faults (cluster, body) VALUES (?1, ?2)
             ON CONFLICT(cluster) DO UPDATE SET body = excluded.body",
            params![cluster, serde_json::to_string(body)?],
        )?;
        Ok(())
    }

    /// The fault-injection settings of every cluster that has any, as `(cluster, settings)`.
    pub(crate) fn all_faults(&self) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
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
