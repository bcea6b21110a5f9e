"""Signed intents (docs/protocol.md section 8): payloads, Ed25519 keys, key rings.

The hub signs ``"vworkspace/intent/v1\\0" || payload`` with a key that is not
a TLS key, so whoever terminates TLS still cannot forge intent. The agent
verifies the payload bytes as received, so the hub may encode them any way;
this module writes named fields in table order like the reference hub.

:func:`verify_intent` is the agent's side of the checks (section 8.4). The hub
does not need it to operate; it is here so tests and tools can check what the
hub sends exactly as an agent would.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import wire
from .wire import ObjectRef

SIGNING_CONTEXT = b"vworkspace/intent/v1\x00"
INTENT_PAYLOAD_VERSION = 1
SIGNATURE_LEN = 64
DEFAULT_INTENT_TTL_SECS = 3600


class KeyRingError(Exception):
    """A public key or key id that does not hold together."""


class IntentRejected(Exception):
    """An intent refused with a rejection code (section 11.2)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


def key_id(raw_public_key: bytes) -> str:
    """First 16 hex characters of SHA-256 over the raw 32-byte key (section 8.2)."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """One hub intent-signing key (the 32-byte Ed25519 seed is the secret)."""

    seed: bytes = field(repr=False)
    created_at: int = 0
    retired_at: int | None = None

    @classmethod
    def generate(cls, created_at: int | None = None) -> "SigningKey":
        seed = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return cls(seed, int(time.time()) if created_at is None else created_at)

    @property
    def private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def kid(self) -> str:
        return key_id(self.public_raw)

    def info(self) -> dict[str, str]:
        return {"kid": self.kid, "public_key_hex": self.public_raw.hex()}

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid}, retired_at={self.retired_at})"


class SigningKeyRing:
    """The hub's intent-signing keys: the newest unretired key signs, every
    unretired key is published (enrollment answer, ``welcome``).

    Rotation: :meth:`add` a new key (it signs from then on, agents learn it
    at their next ``welcome``), later :meth:`retire` the old one.
    """

    def __init__(self, keys: Iterable[SigningKey] = ()) -> None:
        self._keys: dict[str, SigningKey] = {k.kid: k for k in keys}

    def __repr__(self) -> str:
        return f"SigningKeyRing(kids={list(self._keys)})"

    def all(self) -> list[SigningKey]:
        return sorted(self._keys.values(), key=lambda k: (k.created_at, k.kid))

    def active(self) -> list[SigningKey]:
        return [k for k in self.all() if k.retired_at is None]

    def current(self) -> SigningKey:
        active = self.active()
        if not active:
            raise KeyRingError("no active intent-signing key")
        return active[-1]

    def published(self) -> list[dict[str, str]]:
        return [k.info() for k in self.active()]

    def add(self, key: SigningKey) -> None:
        self._keys[key.kid] = key

    def retire(self, kid: str, when: int | None = None) -> bool:
        k = self._keys.get(kid)
        if k is None or k.retired_at is not None:
            return False
        self._keys[kid] = SigningKey(k.seed, k.created_at, int(time.time()) if when is None else when)
        return True

    def get(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    def to_records(self) -> list[dict[str, Any]]:
        """Serialisable form for the store (holds the secret seeds)."""
        return [{"seed_hex": k.seed.hex(), "created_at": k.created_at, "retired_at": k.retired_at}
                for k in self.all()]

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "SigningKeyRing":
        return cls(SigningKey(bytes.fromhex(r["seed_hex"]), int(r["created_at"]), r.get("retired_at"))
                   for r in records)


def payload(*, intent_id: str, cluster_id: str, org: str, issued_at: int, expires_at: int,
            obj: ObjectRef, version: int, action: str, spec: Any = None) -> dict[str, Any]:
    """An ``IntentPayload`` map in table order; ``action`` is ``apply`` or ``delete``."""
    if action == "apply":
        if not wire.is_json_like(spec):
            raise ValueError("an apply intent needs a JSON-like spec")
        act: dict[str, Any] = {"type": "apply", "spec": spec}
    elif action == "delete":
        act = {"type": "delete"}
    else:
        raise ValueError(f"unknown intent action {action!r}")
    if obj.kind not in wire.OBJECT_KINDS:
        raise ValueError(f"unknown object kind {obj.kind!r}")
    if expires_at < issued_at:
        raise ValueError("expires_at before issued_at")
    return {"v": INTENT_PAYLOAD_VERSION, "intent_id": intent_id, "cluster_id": cluster_id, "org": org,
            "issued_at": issued_at, "expires_at": expires_at, "object": obj.to_wire(),
            "version": version, "action": act}


@dataclass(frozen=True)
class SignedIntent:
    """The three fields of an ``intent`` frame."""

    kid: str
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)

    def frame(self) -> dict[str, Any]:
        return wire.intent(self.kid, self.payload, self.signature)


def sign_payload(key: SigningKey, payload_map: Mapping[str, Any]) -> SignedIntent:
    data = wire.pack(dict(payload_map))
    if len(data) > wire.MAX_INTENT_PAYLOAD_BYTES:
        raise ValueError(f"intent payload of {len(data)} bytes exceeds {wire.MAX_INTENT_PAYLOAD_BYTES}")
    return SignedIntent(key.kid, data, key.sign(SIGNING_CONTEXT + data))


def new_intent_id() -> str:
    return str(uuid.uuid4())


# ---- the agent's checks (section 8.4) ------------------------------------

def decode_payload(data: bytes) -> dict[str, Any]:
    try:
        p = wire.unpack_exact(data)
    except wire.FrameError as e:
        raise IntentRejected("malformed", e.detail) from None
    if not isinstance(p, dict):
        raise IntentRejected("malformed", "payload is not a map")
    v = p.get("v")
    if wire._is_int(v) and v >= 0 and v != INTENT_PAYLOAD_VERSION:
        raise IntentRejected("unsupported_version", str(v))
    try:
        out = wire._struct([
            ("v", wire._uint(16), wire._REQ), ("intent_id", wire._str, wire._REQ),
            ("cluster_id", wire._str, wire._REQ), ("org", wire._str, wire._REQ),
            ("issued_at", wire._i64, wire._REQ), ("expires_at", wire._i64, wire._REQ),
            ("object", wire._objref, wire._REQ), ("version", wire._uint(64), wire._REQ),
        ])(p)
    except wire._Bad as e:
        raise IntentRejected("malformed", str(e)) from None
    action = p.get("action")
    if isinstance(action, dict) and action.get("type") == "delete":
        out["action"] = {"type": "delete"}
    elif isinstance(action, dict) and action.get("type") == "apply" and "spec" in action \
            and wire.is_json_like(action["spec"]):
        out["action"] = {"type": "apply", "spec": action["spec"]}
    else:
        raise IntentRejected("malformed", "action is neither apply{spec} nor delete")
    return out


def verify_intent(body: Mapping[str, Any], ring: Mapping[str, bytes], *, cluster_id: str, org: str | None,
                  now: int, applied_version: int | None = None, applied_intent_id: str | None = None,
                  skew: int = wire.CLOCK_SKEW_SECS,
                  max_payload_bytes: int = wire.MAX_INTENT_PAYLOAD_BYTES) -> tuple[str, dict[str, Any]]:
    """Runs the nine checks in order; returns ``("ok"|"noop", payload)`` or raises.

    ``ring`` maps kid to the raw 32-byte public key.
    """
    data, signature, kid = body["payload"], body["signature"], body["kid"]
    if len(data) > max_payload_bytes:
        raise IntentRejected("oversized")
    raw = ring.get(kid)
    if raw is None:
        raise IntentRejected("unknown_key", kid)
    if len(signature) != SIGNATURE_LEN:
        raise IntentRejected("bad_signature", "not 64 bytes")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, SIGNING_CONTEXT + data)
    except InvalidSignature:
        raise IntentRejected("bad_signature") from None
    p = decode_payload(data)
    if p["cluster_id"] != cluster_id or (org is not None and p["org"] != org):
        raise IntentRejected("foreign_cluster")
    if p["expires_at"] < p["issued_at"]:
        raise IntentRejected("malformed", "expires_at before issued_at")
    skew = max(skew, 0)
    if now > p["expires_at"] + skew:
        raise IntentRejected("expired")
    if p["issued_at"] > now + skew:
        raise IntentRejected("not_yet_valid")
    if applied_version is not None and p["version"] <= applied_version:
        if p["version"] == applied_version and p["intent_id"] == applied_intent_id:
            return "noop", p
        raise IntentRejected("replayed")
    return "ok", p


def load_public_ring(infos: Iterable[Mapping[str, str]]) -> dict[str, bytes]:
    """``{kid: raw key}`` from ``{kid, public_key_hex}`` entries; refuses a kid that does not match."""
    ring: dict[str, bytes] = {}
    for info in infos:
        try:
            raw = bytes.fromhex(info["public_key_hex"])
        except ValueError:
            raise KeyRingError("public_key_hex is not hex") from None
        if len(raw) != 32:
            raise KeyRingError("public keys are 32 raw bytes")
        if key_id(raw) != info["kid"]:
            raise KeyRingError(f"kid {info['kid']} does not match its key")
        ring[info["kid"]] = raw
    return ring
