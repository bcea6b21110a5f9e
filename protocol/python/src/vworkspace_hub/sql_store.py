"""SQL implementations of :class:`~vworkspace_hub.store.Store`: SQLite (one hub
process, a file) and PostgreSQL (several hub processes sharing one database).

Both use the same schema and statements; every method runs in one
transaction, and the statements that must be atomic across processes
(version bump, token consumption, ack) are single conditional UPDATE/UPSERTs,
so two hub processes never hand out the same version or accept a token twice.

PostgreSQL adds wake-ups: :meth:`PostgresStore.declare` runs
``pg_notify('vworkspace_hub_intents', cluster)`` in the declaring transaction,
and every process LISTENs on that channel (:meth:`PostgresStore.subscribe`),
so an intent declared through one process reaches a cluster whose tunnel is
held by another as soon as the transaction commits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .store import (MAX_AUDIT_DETAIL, AuditRecord, ClusterRecord, IntentRecord, ObjectRecord, StatusRecord, Store,
                    StoreError, TokenUse, UnknownCluster, now)
from .wire import ObjectRef

NOTIFY_CHANNEL = "vworkspace_hub_intents"

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS vws_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS vws_clusters (
        name TEXT PRIMARY KEY, org TEXT NOT NULL, created_at BIGINT NOT NULL, enrolled_at BIGINT,
        revoked_at BIGINT, connected BOOLEAN NOT NULL DEFAULT FALSE, conn_id TEXT, last_seen BIGINT,
        agent_version TEXT)""",
    """CREATE TABLE IF NOT EXISTS vws_certs (
        serial TEXT PRIMARY KEY, cluster TEXT NOT NULL, issued_at BIGINT NOT NULL, not_after BIGINT NOT NULL,
        revoked BOOLEAN NOT NULL DEFAULT FALSE)""",
    """CREATE TABLE IF NOT EXISTS vws_join_tokens (
        jti TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL, cluster TEXT NOT NULL, org TEXT NOT NULL,
        created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT)""",
    """CREATE TABLE IF NOT EXISTS vws_objects (
        cluster TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        version BIGINT NOT NULL, deleted BOOLEAN NOT NULL DEFAULT FALSE,
        PRIMARY KEY (cluster, kind, namespace, name))""",
    """CREATE TABLE IF NOT EXISTS vws_intents (
        seq {serial} PRIMARY KEY, id TEXT NOT NULL UNIQUE, cluster TEXT NOT NULL, kind TEXT NOT NULL,
        namespace TEXT NOT NULL, name TEXT NOT NULL, version BIGINT NOT NULL, action TEXT NOT NULL,
        spec TEXT, created_at BIGINT NOT NULL, acked_at BIGINT, outcome TEXT, outcome_message TEXT)""",
    "CREATE INDEX IF NOT EXISTS vws_intents_pending ON vws_intents (cluster, acked_at, seq)",
    """CREATE TABLE IF NOT EXISTS vws_statuses (
        cluster TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        generation BIGINT, observed_generation BIGINT, version BIGINT, phase TEXT, conditions TEXT NOT NULL,
        outputs TEXT NOT NULL, hash TEXT, deleted BOOLEAN NOT NULL DEFAULT FALSE, updated_at BIGINT NOT NULL,
        PRIMARY KEY (cluster, kind, namespace, name))""",
    """CREATE TABLE IF NOT EXISTS vws_inventory (
        cluster TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS vws_audit (
        id {serial} PRIMARY KEY, ts BIGINT NOT NULL, event TEXT NOT NULL, cluster TEXT,
        outcome TEXT NOT NULL, detail TEXT NOT NULL)""",
]

_INTENT_COLS = ("seq, id, cluster, kind, namespace, name, version, action, spec, created_at, acked_at, outcome, "
                "outcome_message")
_CLUSTER_COLS = "name, org, created_at, enrolled_at, revoked_at, connected, conn_id, last_seen, agent_version"


def _intent(r: Any) -> IntentRecord:
    return IntentRecord(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7],
                        None if r[8] is None else json.loads(r[8]), int(r[9]), r[10], r[11], r[12])


def _cluster(r: Any) -> ClusterRecord:
    return ClusterRecord(r[0], r[1], int(r[2]), r[3], r[4], bool(r[5]), r[6], r[7], r[8])


class _SqlStore(Store):
    """Shared statements; subclasses provide ``_tx()`` yielding a DB-API cursor.

    Statements are written with ``?`` placeholders; ``_ph`` converts them."""

    _ph = "?"

    @contextmanager
    def _tx(self) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _sql(self, sql: str) -> str:
        return sql if self._ph == "?" else sql.replace("?", self._ph)

    def _exec(self, cur: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        cur.execute(self._sql(sql), params)
        return cur

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._tx() as cur:
            return list(self._exec(cur, sql, params).fetchall())

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    # ---- meta ----
    def meta_get(self, key: str) -> str | None:
        r = self._one("SELECT value FROM vws_meta WHERE key = ?", (key,))
        return None if r is None else r[0]

    def meta_set(self, key: str, value: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO vws_meta (key, value) VALUES (?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def meta_set_if_absent(self, key: str, value: str) -> str:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO vws_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                       (key, value))
            return self._exec(cur, "SELECT value FROM vws_meta WHERE key = ?", (key,)).fetchone()[0]

    # ---- clusters ----
    def ensure_cluster(self, name: str, org: str) -> ClusterRecord:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO vws_clusters (name, org, created_at) VALUES (?, ?, ?) "
                            "ON CONFLICT (name) DO NOTHING", (name, org, now()))
            return _cluster(self._exec(cur, f"SELECT {_CLUSTER_COLS} FROM vws_clusters WHERE name = ?",
                                       (name,)).fetchone())

    def cluster(self, name: str) -> ClusterRecord | None:
        r = self._one(f"SELECT {_CLUSTER_COLS} FROM vws_clusters WHERE name = ?", (name,))
        return None if r is None else _cluster(r)

    def clusters(self) -> list[ClusterRecord]:
        return [_cluster(r) for r in self._all(f"SELECT {_CLUSTER_COLS} FROM vws_clusters ORDER BY name")]

    def revoke_cluster(self, name: str) -> bool:
        with self._tx() as cur:
            n = self._exec(cur, "UPDATE vws_clusters SET revoked_at = ?, connected = FALSE, conn_id = NULL "
                                "WHERE name = ?", (now(), name)).rowcount
            self._exec(cur, "UPDATE vws_certs SET revoked = TRUE WHERE cluster = ?", (name,))
            return n == 1

    def mark_connected(self, name: str, conn_id: str, agent_version: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "UPDATE vws_clusters SET connected = TRUE, conn_id = ?, last_seen = ?, "
                            "agent_version = ? WHERE name = ?", (conn_id, now(), agent_version, name))

    def mark_disconnected(self, name: str, conn_id: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "UPDATE vws_clusters SET connected = FALSE, conn_id = NULL, last_seen = ? "
                            "WHERE name = ? AND conn_id = ?", (now(), name, conn_id))

    # ---- tokens and certs ----
    def insert_token(self, jti: str, token_sha256: str, cluster: str, org: str, expires_at: int) -> None:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO vws_join_tokens (jti, token_sha256, cluster, org, created_at, expires_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (jti, token_sha256, cluster, org, now(), expires_at))

    def consume_token(self, jti: str, token_sha256: str) -> TokenUse:
        with self._tx() as cur:
            n = self._exec(cur, "UPDATE vws_join_tokens SET used_at = ? WHERE jti = ? AND token_sha256 = ? "
                                "AND used_at IS NULL", (now(), jti, token_sha256)).rowcount
            if n == 1:
                return TokenUse.CONSUMED
            r = self._exec(cur, "SELECT token_sha256 FROM vws_join_tokens WHERE jti = ?", (jti,)).fetchone()
            if r is None:
                return TokenUse.UNKNOWN
            return TokenUse.MISMATCH if r[0] != token_sha256 else TokenUse.ALREADY_USED

    def insert_cert(self, serial: str, cluster: str, not_after: int) -> None:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO vws_certs (serial, cluster, issued_at, not_after) VALUES (?, ?, ?, ?)",
                       (serial, cluster, now(), not_after))
            self._exec(cur, "UPDATE vws_clusters SET enrolled_at = COALESCE(enrolled_at, ?) WHERE name = ?",
                       (now(), cluster))

    def serial_revoked(self, serial: str) -> bool:
        r = self._one("SELECT revoked FROM vws_certs WHERE serial = ?", (serial,))
        return bool(r and r[0])

    def newest_cert(self, cluster: str) -> tuple[str, bool] | None:
        r = self._one("SELECT serial, revoked FROM vws_certs WHERE cluster = ? "
                      "ORDER BY issued_at DESC, not_after DESC LIMIT 1", (cluster,))
        return (str(r[0]), bool(r[1])) if r else None

    # ---- intents ----
    def _notify(self, cur: Any, cluster: str) -> None:
        """Wakes other processes (PostgreSQL only)."""

    def declare(self, cluster: str, obj: ObjectRef, action: str, spec: Any) -> IntentRecord:
        if action not in ("apply", "delete"):
            raise StoreError(f"unknown action {action!r}")
        spec_text = json.dumps(spec) if action == "apply" else None
        with self._tx() as cur:
            if self._exec(cur, "SELECT 1 FROM vws_clusters WHERE name = ?", (cluster,)).fetchone() is None:
                raise UnknownCluster(cluster)
            version = self._exec(
                cur, "INSERT INTO vws_objects (cluster, kind, namespace, name, version, deleted) "
                     "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (cluster, kind, namespace, name) DO UPDATE SET "
                     "version = vws_objects.version + 1, deleted = excluded.deleted RETURNING version",
                (cluster, obj.kind, obj.namespace, obj.name, action == "delete")).fetchone()[0]
            r = self._exec(
                cur, f"INSERT INTO vws_intents (id, cluster, kind, namespace, name, version, action, spec, "
                     f"created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_INTENT_COLS}",
                (str(uuid.uuid4()), cluster, obj.kind, obj.namespace, obj.name, version, action, spec_text,
                 now())).fetchone()
            self._notify(cur, cluster)
            return _intent(r)

    def pending_intents(self, cluster: str, after_seq: int, limit: int) -> list[IntentRecord]:
        return [_intent(r) for r in self._all(
            f"SELECT {_INTENT_COLS} FROM vws_intents WHERE cluster = ? AND acked_at IS NULL AND seq > ? "
            f"ORDER BY seq LIMIT ?", (cluster, after_seq, limit))]

    def intents(self, cluster: str | None = None, limit: int = 1000) -> list[IntentRecord]:
        if cluster is None:
            rows = self._all(f"SELECT {_INTENT_COLS} FROM vws_intents ORDER BY seq DESC LIMIT ?", (limit,))
        else:
            rows = self._all(f"SELECT {_INTENT_COLS} FROM vws_intents WHERE cluster = ? ORDER BY seq DESC LIMIT ?",
                             (cluster, limit))
        return [_intent(r) for r in reversed(rows)]

    def ack_intent(self, cluster: str, intent_id: str, outcome: str, message: str | None) -> bool:
        with self._tx() as cur:
            return self._exec(cur, "UPDATE vws_intents SET acked_at = ?, outcome = ?, outcome_message = ? "
                                   "WHERE id = ? AND cluster = ? AND acked_at IS NULL",
                              (now(), outcome, message, intent_id, cluster)).rowcount == 1

    def settle_applied(self, cluster: str, obj: ObjectRef, version: int) -> int:
        with self._tx() as cur:
            return self._exec(cur, "UPDATE vws_intents SET acked_at = ?, outcome = 'applied', "
                                   "outcome_message = 'reported applied in hello' WHERE cluster = ? AND kind = ? "
                                   "AND namespace = ? AND name = ? AND version <= ? AND acked_at IS NULL",
                              (now(), cluster, obj.kind, obj.namespace, obj.name, version)).rowcount

    def requeue_latest(self, cluster: str, obj: ObjectRef) -> int | None:
        with self._tx() as cur:
            r = self._exec(cur, "SELECT seq, acked_at, outcome FROM vws_intents WHERE cluster = ? AND kind = ? "
                                "AND namespace = ? AND name = ? ORDER BY version DESC LIMIT 1",
                           (cluster, obj.kind, obj.namespace, obj.name)).fetchone()
            if r is None:
                return None
            seq, acked_at, outcome = int(r[0]), r[1], r[2]
            if acked_at is None:
                return seq
            if outcome not in ("applied", "noop"):
                return None
            n = self._exec(cur, "UPDATE vws_intents SET acked_at = NULL, outcome = NULL, outcome_message = NULL "
                                "WHERE seq = ? AND outcome IN ('applied', 'noop')", (seq,)).rowcount
            return seq if n == 1 else None

    def objects(self, cluster: str | None = None) -> list[ObjectRecord]:
        sql = "SELECT cluster, kind, namespace, name, version, deleted FROM vws_objects"
        rows = (self._all(sql + " ORDER BY cluster, kind, namespace, name") if cluster is None else
                self._all(sql + " WHERE cluster = ? ORDER BY kind, namespace, name", (cluster,)))
        return [ObjectRecord(r[0], r[1], r[2], r[3], int(r[4]), bool(r[5])) for r in rows]

    # ---- statuses, inventory, audit ----
    def put_status(self, s: StatusRecord) -> None:
        with self._tx() as cur:
            self._exec(
                cur, "INSERT INTO vws_statuses (cluster, kind, namespace, name, generation, observed_generation, "
                     "version, phase, conditions, outputs, hash, deleted, updated_at) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                     "ON CONFLICT (cluster, kind, namespace, name) DO UPDATE SET "
                     "generation = excluded.generation, observed_generation = excluded.observed_generation, "
                     "version = excluded.version, phase = excluded.phase, conditions = excluded.conditions, "
                     "outputs = excluded.outputs, hash = excluded.hash, deleted = excluded.deleted, "
                     "updated_at = excluded.updated_at",
                (s.cluster, s.kind, s.namespace, s.name, s.generation, s.observed_generation, s.version, s.phase,
                 json.dumps(s.conditions), json.dumps(s.outputs), s.hash, s.deleted, s.updated_at or now()))

    def statuses(self, cluster: str | None = None) -> list[StatusRecord]:
        sql = ("SELECT cluster, kind, namespace, name, generation, observed_generation, version, phase, "
               "conditions, outputs, hash, deleted, updated_at FROM vws_statuses")
        rows = (self._all(sql + " ORDER BY cluster, kind, namespace, name") if cluster is None else
                self._all(sql + " WHERE cluster = ? ORDER BY kind, namespace, name", (cluster,)))
        return [StatusRecord(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), json.loads(r[9]),
                             r[10], bool(r[11]), int(r[12])) for r in rows]

    def put_inventory(self, cluster: str, entries: list[dict[str, Any]]) -> None:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO vws_inventory (cluster, body, updated_at) VALUES (?, ?, ?) "
                            "ON CONFLICT (cluster) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
                       (cluster, json.dumps(entries), now()))

    def audit(self, event: str, cluster: str | None, outcome: str, detail: str) -> None:
        with self._tx() as cur:
            self._exec(cur, "INSERT INTO vws_audit (ts, event, cluster, outcome, detail) VALUES (?, ?, ?, ?, ?)",
                       (now(), event, cluster, outcome, detail[:MAX_AUDIT_DETAIL]))

    def audit_log(self, limit: int = 1000) -> list[AuditRecord]:
        rows = self._all("SELECT id, ts, event, cluster, outcome, detail FROM vws_audit ORDER BY id DESC LIMIT ?",
                         (limit,))
        return [AuditRecord(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5]) for r in reversed(rows)]


class SQLiteStore(_SqlStore):
    """A SQLite file (or ``":memory:"``) for a single hub process."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._tx() as cur:
            for stmt in _SCHEMA:
                cur.execute(stmt.format(serial="INTEGER"))

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresStore(_SqlStore):
    """A PostgreSQL database shared by any number of hub processes (psycopg 3).

    ``conninfo`` is a libpq connection string, e.g.
    ``"host=127.0.0.1 port=5432 dbname=hub user=hub"``.
    """

    _ph = "%s"

    def __init__(self, conninfo: str) -> None:
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - depends on the install
            raise StoreError("PostgresStore needs psycopg: pip install 'vworkspace-hub[postgres]'") from e
        self._psycopg = psycopg
        self._conninfo = conninfo
        self._lock = threading.Lock()
        self._db = psycopg.connect(conninfo, autocommit=False)
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._callbacks: list[Callable[[str], None]] = []
        with self._tx() as cur:
            # Serialise schema creation between processes starting together.
            cur.execute("SELECT pg_advisory_xact_lock(7215021)")
            for stmt in _SCHEMA:
                cur.execute(stmt.format(serial="BIGSERIAL"))

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock:
            if self._db.closed or self._db.broken:
                self._db = self._psycopg.connect(self._conninfo, autocommit=False)
            try:
                with self._db.transaction(), self._db.cursor() as cur:
                    yield cur
            except self._psycopg.Error as e:
                raise StoreError(f"PostgreSQL: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e

    def _notify(self, cur: Any, cluster: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, cluster))

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Starts (once) a thread holding a LISTEN connection; reconnects if it drops."""
        self._callbacks.append(callback)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, name="vws-pg-listen", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        psycopg = self._psycopg
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            for cb in list(self._callbacks):
                                cb(n.payload)
            except psycopg.Error:
                self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
        with self._lock:
            self._db.close()
