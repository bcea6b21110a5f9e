"""Expired-certificate recovery, hub side (docs/protocol.md section 4.2).

A cluster whose client certificate expired while it was offline proves that
it still holds that certificate's key: it signs
``"vworkspace/recover/v1" 0x00 || SHA-256(certificate DER) || SHA-256(CSR DER)``
with it. The hub accepts within its recovery window (default 30 days after
the expiry), for the newest certificate it issued to the cluster, and never
for a revoked cluster.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

RECOVER_PATH = "/v1/recover"
RECOVERY_CONTEXT = b"vworkspace/recover/v1\x00"
DEFAULT_RECOVERY_WINDOW_SECS = 30 * 86400


class RecoveryRefused(Exception):
    """A recovery request refused; ``code`` is the enrollment error code to answer with."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def signing_input(certificate_der: bytes, csr_der: bytes) -> bytes:
    return (RECOVERY_CONTEXT + hashlib.sha256(certificate_der).digest()
            + hashlib.sha256(csr_der).digest())


def verify_proof(public_key, data: bytes, proof: bytes) -> None:
    """Raises ``RecoveryRefused("recovery_refused")`` unless ``proof`` is the
    certificate key's signature over ``data``. ``public_key`` is a
    ``cryptography`` Ed25519 or EC P-256 public key."""
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(proof, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1":
            public_key.verify(proof, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise RecoveryRefused("recovery_refused", "the certificate key is not ECDSA P-256 or Ed25519")
    except InvalidSignature:
        raise RecoveryRefused(
            "recovery_refused", "the proof of possession does not verify") from None


def check_window(not_after: int, now: int, window_secs: int = DEFAULT_RECOVERY_WINDOW_SECS) -> None:
    """Raises ``RecoveryRefused("recovery_window_passed")`` when the
    certificate expired longer than ``window_secs`` before ``now``."""
    if window_secs <= 0 or now > not_after + window_secs:
        raise RecoveryRefused(
            "recovery_window_passed",
            f"the certificate expired at {not_after}, more than the recovery window of {window_secs}s ago")
