"""Synchronous helpers for what an Odoo model method does, outside any event loop.

Typical use from a model (``self.env.cr`` is the Odoo cursor; an Odoo hub
implements :class:`~vworkspace_hub.store.Store` on its own models)::

    hub = vworkspace_hub.sync.open_hub(OdooStore(self.env), "https://hub.example:8443")
    token = vworkspace_hub.sync.issue_token(hub, "office-berlin", "acme")
    intent = vworkspace_hub.sync.declare_apply(hub, "office-berlin", manifest)
    status = vworkspace_hub.sync.parse_status(frame_bytes)

The running tunnel process (``vworkspace_hub.server``) picks declared intents
up from the shared store: through LISTEN/NOTIFY with :class:`PostgresStore`,
or its poll interval otherwise.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import intents, join_token, wire
from .hub import Hub, HubConfig
from .store import IntentRecord, Store
from .wire import ObjectRef


def open_hub(store: Store, public_url: str, **config: Any) -> Hub:
    """A :class:`Hub` on ``store`` (creates the CA and keys on first use)."""
    return Hub(store, HubConfig(public_url=public_url, **config))


def issue_token(hub: Hub, cluster: str, org: str, ttl_secs: int = join_token.DEFAULT_TTL_SECS) -> dict[str, Any]:
    """A join token for one cluster: ``{token, jti, cluster, org, expires_at}``.

    ``token`` is a secret: show it once to the cluster admin, never log it."""
    tok = hub.issue_join_token(cluster, org, ttl_secs)
    return {"token": tok.raw, "jti": tok.claims.jti, "cluster": cluster, "org": org, "expires_at": tok.claims.exp}


def object_of(manifest: Mapping[str, Any]) -> ObjectRef:
    """The ObjectRef of a CRD manifest (``kind``, ``metadata.namespace``, ``metadata.name``)."""
    kind = manifest.get("kind")
    meta = manifest.get("metadata") or {}
    if kind not in wire.OBJECT_KINDS or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ValueError("manifest needs kind ApplicationInstance, Operation or Cluster and metadata.name")
    ns = meta.get("namespace") or ""
    if kind != "Cluster" and not ns:
        raise ValueError(f"{kind} is namespaced: metadata.namespace is required")
    return ObjectRef(kind, ns, meta["name"])


def declare_apply(hub: Hub, cluster: str, manifest: Mapping[str, Any]) -> IntentRecord:
    """Declares a manifest (its ``spec`` is what the agent applies); returns the intent with its version."""
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("manifest has no spec object")
    return hub.declare_apply(cluster, object_of(manifest), spec)


def declare_delete(hub: Hub, cluster: str, kind: str, namespace: str, name: str) -> IntentRecord:
    return hub.declare_delete(cluster, ObjectRef(kind, namespace, name))


def sign_intent(key: intents.SigningKey, *, cluster_id: str, org: str, obj: ObjectRef, version: int, action: str,
                spec: Any = None, intent_id: str | None = None, issued_at: int | None = None,
                ttl_secs: int = intents.DEFAULT_INTENT_TTL_SECS) -> intents.SignedIntent:
    """Signs one intent payload with ``key`` (e.g. ``hub.intent_keys().current()``)."""
    import time

    t = int(time.time()) if issued_at is None else issued_at
    p = intents.payload(intent_id=intent_id or intents.new_intent_id(), cluster_id=cluster_id, org=org,
                        issued_at=t, expires_at=t + ttl_secs, obj=obj, version=version, action=action, spec=spec)
    return intents.sign_payload(key, p)


def parse_status(data: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """A ``status`` frame (envelope bytes, or a decoded body) as a dict an Odoo
    record can store: object fields, phase, version, hash, deleted, outputs, and
    conditions in the CRD's camelCase form."""
    if isinstance(data, (bytes, bytearray)):
        env = wire.decode(bytes(data))
        if env.type != "status":
            raise wire.FrameError("unexpected_frame", f"expected status, got {env.type}")
        body = env.body
    else:
        body = wire._BODIES["status"](dict(data))
    assert isinstance(body, dict)
    o = body["object"]
    return {
        "kind": o["kind"], "namespace": o["namespace"], "name": o["name"],
        "generation": body["generation"], "observed_generation": body["observed_generation"],
        "version": body["version"], "phase": body["phase"], "hash": body["hash"], "deleted": body["deleted"],
        "outputs": body["outputs"],
        "conditions": [{"type": c["type"], "status": c["status"], "reason": c["reason"], "message": c["message"],
                        "observedGeneration": c["observed_generation"],
                        "lastTransitionTime": c["last_transition_time"]} for c in body["conditions"]],
    }
