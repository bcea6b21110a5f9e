"""Join tokens (docs/protocol.md section 3): EdDSA JWTs that let one cluster enroll once.

A token is a secret. Nothing here puts it in an exception message or a repr;
:class:`JoinToken` prints as ``JoinToken(jti=…, cluster=…)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .intents import SigningKey

AUDIENCE = "vworkspace-enroll"
DEFAULT_TTL_SECS = 3600
MAX_TTL_SECS = 24 * 3600
CLOCK_SKEW_SECS = 60
MAX_TOKEN_BYTES = 8 * 1024


class JoinTokenError(Exception):
    """Why a token was refused; ``code`` is the enrollment error code (section 4)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> JoinTokenError:
    return JoinTokenError("token_invalid", message)


@dataclass(frozen=True)
class JoinClaims:
    iss: str
    aud: str
    hub_url: str
    ca_sha256: str
    cluster: str
    org: str
    jti: str
    iat: int
    exp: int

    def to_json(self) -> dict[str, Any]:
        # The reference issuer's order; any order verifies.
        return {"iss": self.iss, "aud": self.aud, "hub_url": self.hub_url, "ca_sha256": self.ca_sha256,
                "cluster": self.cluster, "org": self.org, "jti": self.jti, "iat": self.iat, "exp": self.exp}

    @classmethod
    def from_json(cls, m: Any) -> "JoinClaims":
        if not isinstance(m, dict):
            raise _invalid("claims are not a JSON object")
        strs = ("iss", "aud", "hub_url", "ca_sha256", "cluster", "org", "jti")
        for k in strs:
            if not isinstance(m.get(k), str):
                raise _invalid(f"claim {k!r} missing or not a string")
        for k in ("iat", "exp"):
            if not isinstance(m.get(k), int) or isinstance(m.get(k), bool):
                raise _invalid(f"claim {k!r} missing or not an integer")
        return cls(**{k: m[k] for k in (*strs, "iat", "exp")})

    def check_shape(self) -> None:
        for name in ("iss", "cluster", "org", "jti"):
            v = getattr(self, name)
            if not 1 <= len(v) <= 253:
                raise _invalid(f"claim {name!r} must be 1 to 253 characters")
        if self.aud != AUDIENCE:
            raise JoinTokenError("token_audience", f"join token audience is not {AUDIENCE!r}")
        if not self.hub_url.startswith("https://") or len(self.hub_url) <= 8 or len(self.hub_url) > 2048:
            raise _invalid("claim 'hub_url' must be an https:// URL")
        if len(self.ca_sha256) != 64 or any(c not in "0123456789abcdef" for c in self.ca_sha256):
            raise _invalid("claim 'ca_sha256' must be 64 lowercase hex characters")
        if self.exp <= self.iat:
            raise _invalid("claim 'exp' must be after iat")
        if self.exp - self.iat > MAX_TTL_SECS:
            raise _invalid("claim 'exp': lifetime exceeds 24 hours")

    def check_times(self, now: int) -> None:
        if now > self.exp + CLOCK_SKEW_SECS:
            raise JoinTokenError("token_expired", f"join token expired at {self.exp} (now {now})")
        if self.iat > now + CLOCK_SKEW_SECS:
            raise _invalid(f"join token issued at {self.iat} is in the future (now {now})")


@dataclass(frozen=True)
class JoinToken:
    """A token with its claims; ``raw`` is the secret and is kept out of repr."""

    raw: str = field(repr=False)
    claims: JoinClaims = field(repr=False)

    def __repr__(self) -> str:
        return f"JoinToken(jti={self.claims.jti}, cluster={self.claims.cluster})"

    __str__ = __repr__

    @property
    def sha256(self) -> str:
        """What the hub stores to recognise the token later (never the token itself)."""
        return token_sha256(self.raw)


def token_sha256(raw: str) -> str:
    return hashlib.sha256(raw.strip().encode()).hexdigest()


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(s: str) -> bytes:
    if not s or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in s):
        raise _invalid("part is not base64url")
    try:
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("part is not base64url") from None


def _compact(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def issue(key: SigningKey, *, iss: str, hub_url: str, ca_sha256: str, cluster: str, org: str,
          ttl_secs: int = DEFAULT_TTL_SECS, now: int | None = None, jti: str | None = None) -> JoinToken:
    """Signs a token; the caller records ``(jti, token.sha256)`` in the store before handing it out."""
    now = int(time.time()) if now is None else now
    claims = JoinClaims(iss=iss, aud=AUDIENCE, hub_url=hub_url.rstrip("/"), ca_sha256=ca_sha256, cluster=cluster,
                        org=org, jti=jti or str(uuid.uuid4()), iat=now, exp=now + ttl_secs)
    claims.check_shape()
    header = {"typ": "JWT", "alg": "EdDSA", "kid": key.kid}
    signing_input = f"{_b64e(_compact(header))}.{_b64e(_compact(claims.to_json()))}"
    sig = key.sign(signing_input.encode("ascii"))
    return JoinToken(f"{signing_input}.{_b64e(sig)}", claims)


def _split(raw: str) -> tuple[dict[str, Any], JoinClaims, str, bytes]:
    raw = raw.strip()
    if len(raw) > MAX_TOKEN_BYTES:
        raise _invalid("join token is too long")
    parts = raw.split(".")
    if len(parts) != 3:
        raise _invalid("expected three dot-separated parts")
    try:
        header = json.loads(_b64d(parts[0]))
        claims_json = json.loads(_b64d(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise _invalid("header or claims are not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "EdDSA":
        raise _invalid("alg must be EdDSA")
    return header, JoinClaims.from_json(claims_json), f"{parts[0]}.{parts[1]}", _b64d(parts[2])


def parse(raw: str, now: int | None = None) -> JoinToken:
    """The agent's check: shape, claims and times, without the signature."""
    now = int(time.time()) if now is None else now
    _, claims, _, _ = _split(raw)
    claims.check_shape()
    claims.check_times(now)
    return JoinToken(raw.strip(), claims)


def verify(raw: str, public_keys: Mapping[str, bytes], now: int | None = None) -> JoinToken:
    """The hub's check: a known ``kid``, a valid signature, then claims and times.

    Single use is the store's job (:meth:`Store.consume_token`).
    """
    now = int(time.time()) if now is None else now
    header, claims, signing_input, sig = _split(raw)
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise _invalid("header has no kid")
    pub = public_keys.get(kid)
    if pub is None:
        raise _invalid("join token signed by an unknown key")
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, signing_input.encode("ascii"))
    except (InvalidSignature, ValueError):
        raise _invalid("join token signature does not verify") from None
    claims.check_shape()
    claims.check_times(now)
    return JoinToken(raw.strip(), claims)
