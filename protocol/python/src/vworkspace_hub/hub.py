"""The hub: CA, keys, join tokens, enrollment, intent declaration and signing.

Everything here is synchronous and works on a :class:`~vworkspace_hub.store.Store`,
so an Odoo model method can call it directly (see :mod:`vworkspace_hub.sync`).
The asyncio tunnel (:mod:`vworkspace_hub.session`, :mod:`vworkspace_hub.server`)
uses the same object.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from . import join_token, wire
from .ca import CsrError, HubCA, Identity, IssuedCert
from .intents import SignedIntent, SigningKey, SigningKeyRing, payload, sign_payload
from .store import ClusterRecord, IntentRecord, Store, StoreError, TokenUse
from .wire import ObjectRef

log = logging.getLogger("vworkspace_hub")

META_CA = "ca"
META_INTENT_KEYS = "keys.intent"
META_JOIN_KEYS = "keys.join"
MAX_ENROLL_BODY = 64 * 1024

# Enrollment error code -> HTTP status (docs/protocol.md section 4).
ENROLL_HTTP = {"token_expired": 401, "token_invalid": 401, "token_audience": 401, "token_reused": 409,
               "csr_invalid": 400, "bad_request": 400, "cluster_revoked": 403, "rate_limited": 429,
               "internal": 500, "recovery_window_passed": 403, "recovery_refused": 403}


@dataclass
class HubConfig:
    """Hub settings; ``public_url`` is what join tokens carry (``https://HOST[:PORT]``)."""

    public_url: str
    issuer: str = ""
    heartbeat_secs: int = wire.HEARTBEAT_SECS
    idle_timeout_secs: int = wire.IDLE_TIMEOUT_SECS
    max_in_flight: int = wire.MAX_IN_FLIGHT
    max_frame_bytes: int = wire.MAX_FRAME_BYTES
    intent_ttl_secs: int = 3600
    client_cert_lifetime: dt.timedelta = field(default_factory=lambda: dt.timedelta(hours=24))
    handshake_timeout_secs: float = 10.0
    shutdown_retry_after_secs: int = 5
    # Safety net beside wake-ups: a session re-reads pending intents this often.
    poll_interval_secs: float = 5.0
    # POST /v1/recover accepts a certificate this long after its expiry; 0: never.
    recovery_window_secs: int = 30 * 86400

    def __post_init__(self) -> None:
        self.public_url = self.public_url.rstrip("/")
        if not self.public_url.startswith("https://"):
            raise ValueError("public_url must be an https:// URL")
        self.issuer = self.issuer or self.public_url
        if not 1 <= self.max_in_flight <= wire.MAX_IN_FLIGHT * 16:
            raise ValueError("max_in_flight out of range")
        if not 1 <= self.heartbeat_secs <= wire.MAX_HEARTBEAT_SECS or self.idle_timeout_secs <= self.heartbeat_secs:
            raise ValueError("heartbeat_secs must be 1..300 and below idle_timeout_secs")

    @property
    def tunnel_url(self) -> str:
        return "wss://" + self.public_url[len("https://"):] + wire.TUNNEL_PATH


class EnrollFailure(Exception):
    """An enrollment refused with a documented code; the message never holds the token."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def http_status(self) -> int:
        return ENROLL_HTTP.get(self.code, 500)

    def body(self) -> dict[str, str]:
        return {"code": self.code, "message": str(self)}


class Metrics:
    """Counters by name and label (rendered in Prometheus text format)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c: Counter[tuple[str, str, str]] = Counter()

    def inc(self, name: str, label: str = "", value: str = "", by: int = 1) -> None:
        with self._lock:
            self._c[(name, label, value)] += by

    def get(self, name: str, label: str = "", value: str = "") -> int:
        with self._lock:
            return self._c[(name, label, value)]

    def render(self) -> str:
        with self._lock:
            items = sorted(self._c.items())
        lines = []
        for (name, label, value), n in items:
            lbl = f'{{{label}="{value}"}}' if label else ""
            lines.append(f"vworkspace_hub_{name}_total{lbl} {n}")
        return "\n".join(lines) + "\n"


class Hub:
    """One hub process's view of the shared store, plus the live tunnels it holds."""

    def __init__(self, store: Store, config: HubConfig) -> None:
        self.store = store
        self.config = config
        self.metrics = Metrics()
        ca = json.loads(store.meta_set_if_absent(META_CA, json.dumps(_new_ca())))
        self.ca = HubCA.from_pem(ca["cert_pem"], ca["key_pem"])
        self._ensure_ring(META_INTENT_KEYS)
        self._ensure_ring(META_JOIN_KEYS)
        # Live sessions of this process: cluster -> wake callbacks (set by the tunnel server).
        self._wakers: dict[str, set[Callable[[str | None], None]]] = {}
        self._wakers_lock = threading.Lock()
        store.subscribe(lambda cluster: self.wake(cluster))

    def __repr__(self) -> str:
        return f"Hub(url={self.config.public_url}, ca={self.ca.sha256_hex()[:16]})"

    # ---- keys ----
    def _ensure_ring(self, meta_key: str) -> None:
        first = SigningKeyRing([SigningKey.generate()]).to_records()
        self.store.meta_set_if_absent(meta_key, json.dumps(first))

    def _ring(self, meta_key: str) -> SigningKeyRing:
        raw = self.store.meta_get(meta_key)
        if raw is None:
            raise StoreError(f"{meta_key} missing from the store")
        return SigningKeyRing.from_records(json.loads(raw))

    def intent_keys(self) -> SigningKeyRing:
        """Read from the store every time, so a rotation by any process applies everywhere."""
        return self._ring(META_INTENT_KEYS)

    def signing_keys(self) -> list[dict[str, str]]:
        """The published intent-signing keys (enrollment answer, ``welcome``)."""
        return self.intent_keys().published()

    def rotate_intent_key(self) -> str:
        """Adds a new intent-signing key that signs from now on; returns its kid.

        Agents learn it at their next ``welcome``; live tunnels are asked to
        reconnect so that happens before the first intent signed with it."""
        ring = self.intent_keys()
        new = SigningKey.generate(created_at=max([k.created_at for k in ring.all()] + [int(time.time())]) + 1)
        ring.add(new)
        self.store.meta_set(META_INTENT_KEYS, json.dumps(ring.to_records()))
        self.store.audit("keys.rotate", None, "ok", f"kid={new.kid}")
        self.kick_all("keys_rotated")
        return new.kid

    def retire_intent_key(self, kid: str) -> bool:
        ring = self.intent_keys()
        if len(ring.active()) < 2 or not ring.retire(kid):
            return False
        self.store.meta_set(META_INTENT_KEYS, json.dumps(ring.to_records()))
        self.store.audit("keys.retire", None, "ok", f"kid={kid}")
        return True

    # ---- join tokens and enrollment ----
    def issue_join_token(self, cluster: str, org: str, ttl_secs: int = join_token.DEFAULT_TTL_SECS) -> join_token.JoinToken:
        """A single-use token for ``cluster`` of ``org``; the caller hands it to the cluster admin."""
        if not 1 <= ttl_secs <= join_token.MAX_TTL_SECS:
            raise ValueError("ttl_secs must be 1..86400")
        rec = self.store.ensure_cluster(cluster, org)
        if rec.org != org:
            raise ValueError(f"cluster {cluster} belongs to another org")
        key = self._ring(META_JOIN_KEYS).current()
        tok = join_token.issue(key, iss=self.config.issuer, hub_url=self.config.public_url,
                               ca_sha256=self.ca.sha256_hex(), cluster=cluster, org=org, ttl_secs=ttl_secs)
        self.store.insert_token(tok.claims.jti, tok.sha256, cluster, org, tok.claims.exp)
        self.store.audit("token.issue", cluster, "ok", f"jti={tok.claims.jti} exp={tok.claims.exp}")
        self.metrics.inc("join_tokens_issued")
        return tok

    def enroll(self, body: bytes, peer: str = "?") -> dict[str, Any]:
        """``POST /v1/enroll``: checks body, token, CA pin, cluster, CSR, single use
        (in that order, so a bad CSR does not burn the token); returns the answer
        or raises :class:`EnrollFailure`."""
        cluster: str | None = None
        try:
            answer, cluster = self._enroll(body)
        except EnrollFailure as e:
            self.metrics.inc("enrollments", "outcome", e.code)
            self.store.audit("enroll", cluster, e.code, f"peer={peer} {e}")
            log.info("enrollment refused peer=%s code=%s: %s", peer, e.code, e)
            raise
        self.metrics.inc("enrollments", "outcome", "ok")
        return answer

    def _enroll(self, body: bytes) -> tuple[dict[str, Any], str | None]:
        if len(body) > MAX_ENROLL_BODY:
            raise EnrollFailure("bad_request", f"request body larger than {MAX_ENROLL_BODY} bytes")
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            req = None
        if not isinstance(req, dict) or not isinstance(req.get("token"), str) or not isinstance(req.get("csr_pem"), str):
            raise EnrollFailure("bad_request", 'body must be JSON {"token": ..., "csr_pem": ...}')
        keys = {k.kid: k.public_raw for k in self._ring(META_JOIN_KEYS).active()}
        try:
            tok = join_token.verify(req["token"], keys)
        except join_token.JoinTokenError as e:
            raise EnrollFailure(e.code, str(e)) from None
        c = tok.claims
        if c.ca_sha256 != self.ca.sha256_hex():
            raise EnrollFailure("token_invalid", f"token jti={c.jti} pins another CA")
        rec = self.store.cluster(c.cluster)
        if rec is None:
            raise EnrollFailure("token_invalid", f"token jti={c.jti} names an unknown cluster")
        if rec.org != c.org:
            raise EnrollFailure("token_invalid", f"token jti={c.jti} names another org than the cluster's")
        if rec.revoked_at is not None:
            raise EnrollFailure("cluster_revoked", f"cluster is revoked (token jti={c.jti})")
        try:
            cert = self.ca.sign_client_csr(req["csr_pem"], c.org, c.cluster, self.config.client_cert_lifetime)
        except CsrError as e:
            raise EnrollFailure("csr_invalid", f"{e} (token jti={c.jti} not consumed)") from None
        use = self.store.consume_token(c.jti, tok.sha256)
        if use is TokenUse.ALREADY_USED:
            raise EnrollFailure("token_reused", f"token jti={c.jti} was already used")
        if use is not TokenUse.CONSUMED:
            raise EnrollFailure("token_invalid", f"token jti={c.jti} was not issued by this hub")
        self.store.insert_cert(cert.serial, c.cluster, cert.not_after)
        self.store.audit("enroll", c.cluster, "ok", f"jti={c.jti} serial={cert.serial} not_after={cert.not_after}")
        log.info("cluster enrolled cluster=%s org=%s serial=%s not_after=%s", c.cluster, c.org, cert.serial,
                 cert.not_after)
        return {"cluster_id": c.cluster, "org": c.org, "certificate_pem": cert.pem,
                "ca_bundle_pem": self.ca.cert_pem(), "signing_keys": self.signing_keys(),
                "tunnel_url": self.config.tunnel_url}, c.cluster

    def renew(self, identity: Identity, csr_pem: str) -> IssuedCert:
        """``renew_cert`` over the tunnel: a fresh certificate for the same identity."""
        cert = self.ca.sign_client_csr(csr_pem, identity.org, identity.cluster, self.config.client_cert_lifetime)
        self.store.insert_cert(cert.serial, identity.cluster, cert.not_after)
        self.store.audit("cert.renew", identity.cluster, "ok", f"serial={cert.serial} not_after={cert.not_after}")
        return cert

    def identity_allowed(self, identity: Identity) -> bool:
        rec = self.store.cluster(identity.cluster)
        return (rec is not None and rec.org == identity.org and rec.revoked_at is None
                and not self.store.serial_revoked(identity.serial))

    def revoke(self, cluster: str) -> bool:
        """Revokes the cluster's certificates and closes its live tunnel on this process."""
        ok = self.store.revoke_cluster(cluster)
        if ok:
            self.store.audit("cluster.revoke", cluster, "ok", "")
            self.kick(cluster, "revoked")
        return ok

    # ---- intents ----
    def declare_apply(self, cluster: str, obj: ObjectRef, spec: Mapping[str, Any]) -> IntentRecord:
        """Declares ``spec`` (the CRD ``spec``) for an object; delivered at least once."""
        if not wire.is_json_like(spec) or not isinstance(spec, Mapping):
            raise ValueError("spec must be a JSON object")
        return self._declare(cluster, obj, "apply", dict(spec))

    def declare_delete(self, cluster: str, obj: ObjectRef) -> IntentRecord:
        return self._declare(cluster, obj, "delete", None)

    def _declare(self, cluster: str, obj: ObjectRef, action: str, spec: Any) -> IntentRecord:
        if obj.kind not in wire.OBJECT_KINDS or not obj.name:
            raise ValueError(f"not a valid object: {obj}")
        rec = self.store.declare(cluster, obj, action, spec)
        self.metrics.inc("intents_declared", "action", action)
        log.info("intent declared cluster=%s intent=%s object=%s version=%s action=%s", cluster, rec.id, obj,
                 rec.version, action)
        self.wake(cluster)
        return rec

    def intent_payload(self, rec: IntentRecord, org: str, now: int | None = None) -> dict[str, Any]:
        """The payload the hub signs for ``rec`` (fresh times on every send)."""
        t = int(time.time()) if now is None else now
        return payload(intent_id=rec.id, cluster_id=rec.cluster, org=org, issued_at=t,
                       expires_at=t + self.config.intent_ttl_secs, obj=rec.obj, version=rec.version,
                       action=rec.action, spec=rec.spec)

    def sign_for_delivery(self, rec: IntentRecord, identity: Identity) -> SignedIntent:
        """Signs ``rec`` for the tunnel of ``identity``. Hubs that test agents may override it."""
        return sign_payload(self.intent_keys().current(), self.intent_payload(rec, identity.org))

    # ---- live sessions of this process ----
    def register(self, cluster: str, waker: Callable[[str | None], None]) -> None:
        with self._wakers_lock:
            self._wakers.setdefault(cluster, set()).add(waker)

    def unregister(self, cluster: str, waker: Callable[[str | None], None]) -> None:
        with self._wakers_lock:
            s = self._wakers.get(cluster)
            if s is not None:
                s.discard(waker)
                if not s:
                    del self._wakers[cluster]

    def _call(self, cluster: str | None, reason: str | None) -> None:
        with self._wakers_lock:
            targets = [w for c, ws in self._wakers.items() if cluster is None or c == cluster for w in ws]
        for w in targets:
            w(reason)

    def wake(self, cluster: str) -> None:
        """New intents for ``cluster``: its session (if here) re-reads the store."""
        self._call(cluster, None)

    def kick(self, cluster: str, reason: str) -> None:
        """Ends the cluster's tunnel here (``revoked``, ``replaced``, ``keys_rotated``, ``shutdown``)."""
        self._call(cluster, reason)

    def kick_all(self, reason: str) -> None:
        self._call(None, reason)

    def connected_here(self, cluster: str) -> int:
        with self._wakers_lock:
            return len(self._wakers.get(cluster, ()))

    def cluster_record(self, cluster: str) -> ClusterRecord | None:
        return self.store.cluster(cluster)


def _new_ca() -> dict[str, str]:
    ca = HubCA.generate()
    return {"cert_pem": ca.cert_pem(), "key_pem": ca.key_pem()}
