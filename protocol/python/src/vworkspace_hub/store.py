"""The store interface a hub implements, and the in-memory implementation.

Everything the protocol needs the hub to remember goes through :class:`Store`:
the CA and signing keys, clusters, join tokens (by hash, single use), issued
certificates, declared objects with their per-object versions, intents until
they are acknowledged, the last status of every object, and an audit trail.
The tunnel session never holds state that a restart would need.

Methods are synchronous so that an Odoo model (or any ORM) can implement them
directly; the asyncio session calls them from a worker thread. Every method
must be atomic on its own: several sessions (and, with a shared database,
several hub processes) call them concurrently.
"""

from __future__ import annotations

import abc
import enum
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .wire import ObjectRef


def now() -> int:
    return int(time.time())


class StoreError(Exception):
    """The store failed or refused an operation."""


class UnknownCluster(StoreError):
    pass


class TokenUse(enum.Enum):
    """What :meth:`Store.consume_token` found."""

    CONSUMED = "consumed"
    ALREADY_USED = "already_used"
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class ClusterRecord:
    name: str
    org: str
    created_at: int
    enrolled_at: int | None = None
    revoked_at: int | None = None
    connected: bool = False
    conn_id: str | None = None
    last_seen: int | None = None
    agent_version: str | None = None


@dataclass(frozen=True)
class IntentRecord:
    """One declared change. ``spec`` is the CRD ``spec`` for ``apply``, None for ``delete``."""

    seq: int
    id: str
    cluster: str
    kind: str
    namespace: str
    name: str
    version: int
    action: str
    spec: Any
    created_at: int
    acked_at: int | None = None
    outcome: str | None = None
    outcome_message: str | None = None

    @property
    def obj(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class ObjectRecord:
    cluster: str
    kind: str
    namespace: str
    name: str
    version: int
    deleted: bool

    @property
    def obj(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class StatusRecord:
    """The latest ``status`` frame of one object, as the agent sent it."""

    cluster: str
    kind: str
    namespace: str
    name: str
    generation: int | None
    observed_generation: int | None
    version: int | None
    phase: str | None
    conditions: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    hash: str | None = None
    deleted: bool = False
    updated_at: int = 0

    @property
    def obj(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    ts: int
    event: str
    cluster: str | None
    outcome: str
    detail: str


MAX_AUDIT_DETAIL = 1000


class Store(abc.ABC):
    """What the hub must keep durable. See docs/hub-library.md for each method's contract."""

    # ---- hub secrets and settings (CA, keys): a small key/value table ----
    @abc.abstractmethod
    def meta_get(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def meta_set(self, key: str, value: str) -> None: ...

    def meta_set_if_absent(self, key: str, value: str) -> str:
        """Stores ``value`` unless the key exists; returns what is stored.

        Lets several hub processes that start together agree on one CA."""
        cur = self.meta_get(key)
        if cur is not None:
            return cur
        self.meta_set(key, value)
        return value

    # ---- clusters ----
    @abc.abstractmethod
    def ensure_cluster(self, name: str, org: str) -> ClusterRecord:
        """Creates the cluster if absent; returns it (its org may differ: the caller checks)."""

    @abc.abstractmethod
    def cluster(self, name: str) -> ClusterRecord | None: ...

    @abc.abstractmethod
    def clusters(self) -> list[ClusterRecord]: ...

    @abc.abstractmethod
    def revoke_cluster(self, name: str) -> bool:
        """Marks the cluster and all its certificates revoked."""

    @abc.abstractmethod
    def mark_connected(self, name: str, conn_id: str, agent_version: str) -> None:
        """The cluster's tunnel is now ``conn_id`` (on whichever hub process)."""

    @abc.abstractmethod
    def mark_disconnected(self, name: str, conn_id: str) -> None:
        """Clears the connected flag only if ``conn_id`` is still the cluster's tunnel."""

    # ---- join tokens and certificates ----
    @abc.abstractmethod
    def insert_token(self, jti: str, token_sha256: str, cluster: str, org: str, expires_at: int) -> None: ...

    @abc.abstractmethod
    def consume_token(self, jti: str, token_sha256: str) -> TokenUse:
        """Marks the token used, atomically: exactly one caller ever gets CONSUMED."""

    @abc.abstractmethod
    def insert_cert(self, serial: str, cluster: str, not_after: int) -> None: ...

    @abc.abstractmethod
    def serial_revoked(self, serial: str) -> bool: ...

    def newest_cert(self, cluster: str) -> tuple[str, bool] | None:
        """Serial and revoked flag of the certificate issued last to ``cluster``
        (certificate recovery accepts only that one)."""
        raise NotImplementedError("this store does not support certificate recovery")

    # ---- declared objects and intents ----
    @abc.abstractmethod
    def declare(self, cluster: str, obj: ObjectRef, action: str, spec: Any) -> IntentRecord:
        """Records a new intent with the object's next version (atomically across processes)."""

    @abc.abstractmethod
    def pending_intents(self, cluster: str, after_seq: int, limit: int) -> list[IntentRecord]:
        """Unacknowledged intents of a cluster with ``seq > after_seq``, in ``seq`` order."""

    @abc.abstractmethod
    def intents(self, cluster: str | None = None, limit: int = 1000) -> list[IntentRecord]:
        """The newest ``limit`` intents, oldest first."""

    @abc.abstractmethod
    def ack_intent(self, cluster: str, intent_id: str, outcome: str, message: str | None) -> bool:
        """Records the first answer for an intent; False if unknown, foreign or already settled."""

    @abc.abstractmethod
    def settle_applied(self, cluster: str, obj: ObjectRef, version: int) -> int:
        """The agent holds ``version``: pending intents of the object up to it are settled."""

    @abc.abstractmethod
    def requeue_latest(self, cluster: str, obj: ObjectRef) -> int | None:
        """Makes the newest intent of an object pending again unless it was
        rejected; returns its seq if it is pending now."""

    @abc.abstractmethod
    def objects(self, cluster: str | None = None) -> list[ObjectRecord]: ...

    # ---- statuses, inventory, audit ----
    @abc.abstractmethod
    def put_status(self, status: StatusRecord) -> None: ...

    @abc.abstractmethod
    def statuses(self, cluster: str | None = None) -> list[StatusRecord]: ...

    @abc.abstractmethod
    def put_inventory(self, cluster: str, entries: list[dict[str, Any]]) -> None: ...

    @abc.abstractmethod
    def audit(self, event: str, cluster: str | None, outcome: str, detail: str) -> None: ...

    @abc.abstractmethod
    def audit_log(self, limit: int = 1000) -> list[AuditRecord]: ...

    # ---- wake-ups across hub processes ----
    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(cluster)`` (from any thread) when another process
        declared an intent for ``cluster``. Single-process stores need nothing."""

    def close(self) -> None:
        """Releases connections."""


class MemoryStore(Store):
    """Keeps everything in dicts: for tests and as a readable reference of the contract."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[str, str] = {}
        self._clusters: dict[str, ClusterRecord] = {}
        self._tokens: dict[str, dict[str, Any]] = {}
        self._certs: dict[str, dict[str, Any]] = {}
        self._objects: dict[tuple[str, ObjectRef], ObjectRecord] = {}
        self._intents: list[IntentRecord] = []
        self._statuses: dict[tuple[str, ObjectRef], StatusRecord] = {}
        self._inventory: dict[str, list[dict[str, Any]]] = {}
        self._audit: list[AuditRecord] = []

    def meta_get(self, key: str) -> str | None:
        with self._lock:
            return self._meta.get(key)

    def meta_set(self, key: str, value: str) -> None:
        with self._lock:
            self._meta[key] = value

    def meta_set_if_absent(self, key: str, value: str) -> str:
        with self._lock:
            return self._meta.setdefault(key, value)

    def ensure_cluster(self, name: str, org: str) -> ClusterRecord:
        with self._lock:
            return self._clusters.setdefault(name, ClusterRecord(name, org, now()))

    def cluster(self, name: str) -> ClusterRecord | None:
        with self._lock:
            return self._clusters.get(name)

    def clusters(self) -> list[ClusterRecord]:
        with self._lock:
            return sorted(self._clusters.values(), key=lambda c: c.name)

    def revoke_cluster(self, name: str) -> bool:
        with self._lock:
            c = self._clusters.get(name)
            if c is None:
                return False
            self._clusters[name] = replace(c, revoked_at=now(), connected=False, conn_id=None)
            for cert in self._certs.values():
                if cert["cluster"] == name:
                    cert["revoked"] = True
            return True

    def mark_connected(self, name: str, conn_id: str, agent_version: str) -> None:
        with self._lock:
            c = self._clusters.get(name)
            if c is not None:
                self._clusters[name] = replace(c, connected=True, conn_id=conn_id, last_seen=now(),
                                               agent_version=agent_version)

    def mark_disconnected(self, name: str, conn_id: str) -> None:
        with self._lock:
            c = self._clusters.get(name)
            if c is not None and c.conn_id == conn_id:
                self._clusters[name] = replace(c, connected=False, conn_id=None, last_seen=now())

    def insert_token(self, jti: str, token_sha256: str, cluster: str, org: str, expires_at: int) -> None:
        with self._lock:
            if jti in self._tokens:
                raise StoreError("a token with this jti exists")
            self._tokens[jti] = {"sha": token_sha256, "cluster": cluster, "org": org,
                                 "expires_at": expires_at, "used_at": None}

    def consume_token(self, jti: str, token_sha256: str) -> TokenUse:
        with self._lock:
            t = self._tokens.get(jti)
            if t is None:
                return TokenUse.UNKNOWN
            if t["sha"] != token_sha256:
                return TokenUse.MISMATCH
            if t["used_at"] is not None:
                return TokenUse.ALREADY_USED
            t["used_at"] = now()
            return TokenUse.CONSUMED

    def insert_cert(self, serial: str, cluster: str, not_after: int) -> None:
        with self._lock:
            self._certs[serial] = {"cluster": cluster, "not_after": not_after, "revoked": False}
            c = self._clusters.get(cluster)
            if c is not None and c.enrolled_at is None:
                self._clusters[cluster] = replace(c, enrolled_at=now())

    def serial_revoked(self, serial: str) -> bool:
        with self._lock:
            cert = self._certs.get(serial)
            return bool(cert and cert["revoked"])

    def newest_cert(self, cluster: str) -> tuple[str, bool] | None:
        with self._lock:
            mine = [(s, c["revoked"]) for s, c in self._certs.items() if c["cluster"] == cluster]
            return mine[-1] if mine else None

    def declare(self, cluster: str, obj: ObjectRef, action: str, spec: Any) -> IntentRecord:
        with self._lock:
            if cluster not in self._clusters:
                raise UnknownCluster(cluster)
            cur = self._objects.get((cluster, obj))
            version = (cur.version if cur else 0) + 1
            self._objects[(cluster, obj)] = ObjectRecord(cluster, obj.kind, obj.namespace, obj.name, version,
                                                         action == "delete")
            rec = IntentRecord(len(self._intents) + 1, str(uuid.uuid4()), cluster, obj.kind, obj.namespace,
                               obj.name, version, action, spec if action == "apply" else None, now())
            self._intents.append(rec)
            return rec

    def pending_intents(self, cluster: str, after_seq: int, limit: int) -> list[IntentRecord]:
        with self._lock:
            out = [i for i in self._intents[max(after_seq, 0):]
                   if i.cluster == cluster and i.acked_at is None]
            return out[:limit]

    def intents(self, cluster: str | None = None, limit: int = 1000) -> list[IntentRecord]:
        with self._lock:
            rows = [i for i in self._intents if cluster is None or i.cluster == cluster]
            return rows[-limit:]

    def _update_intent(self, seq: int, **changes: Any) -> None:
        self._intents[seq - 1] = replace(self._intents[seq - 1], **changes)

    def ack_intent(self, cluster: str, intent_id: str, outcome: str, message: str | None) -> bool:
        with self._lock:
            for i in self._intents:
                if i.id == intent_id and i.cluster == cluster and i.acked_at is None:
                    self._update_intent(i.seq, acked_at=now(), outcome=outcome, outcome_message=message)
                    return True
            return False

    def settle_applied(self, cluster: str, obj: ObjectRef, version: int) -> int:
        with self._lock:
            n = 0
            for i in self._intents:
                if i.cluster == cluster and i.obj == obj and i.version <= version and i.acked_at is None:
                    self._update_intent(i.seq, acked_at=now(), outcome="applied",
                                        outcome_message="reported applied in hello")
                    n += 1
            return n

    def requeue_latest(self, cluster: str, obj: ObjectRef) -> int | None:
        with self._lock:
            mine = [i for i in self._intents if i.cluster == cluster and i.obj == obj]
            if not mine:
                return None
            latest = max(mine, key=lambda i: i.version)
            if latest.acked_at is None:
                return latest.seq
            if latest.outcome in ("applied", "noop"):
                self._update_intent(latest.seq, acked_at=None, outcome=None, outcome_message=None)
                return latest.seq
            return None

    def objects(self, cluster: str | None = None) -> list[ObjectRecord]:
        with self._lock:
            rows = [o for (c, _), o in self._objects.items() if cluster is None or c == cluster]
            return sorted(rows, key=lambda o: (o.cluster, o.kind, o.namespace, o.name))

    def put_status(self, status: StatusRecord) -> None:
        with self._lock:
            self._statuses[(status.cluster, status.obj)] = status

    def statuses(self, cluster: str | None = None) -> list[StatusRecord]:
        with self._lock:
            return [s for (c, _), s in sorted(self._statuses.items()) if cluster is None or c == cluster]

    def put_inventory(self, cluster: str, entries: list[dict[str, Any]]) -> None:
        with self._lock:
            self._inventory[cluster] = list(entries)

    def audit(self, event: str, cluster: str | None, outcome: str, detail: str) -> None:
        with self._lock:
            self._audit.append(AuditRecord(len(self._audit) + 1, now(), event, cluster, outcome,
                                           detail[:MAX_AUDIT_DETAIL]))
            del self._audit[:-10000]

    def audit_log(self, limit: int = 1000) -> list[AuditRecord]:
        with self._lock:
            return self._audit[-limit:]
