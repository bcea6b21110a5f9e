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


def recover(hub, body: bytes, peer: str = "?") -> dict:
    """``POST /v1/recover`` for ``hub`` (a :class:`vworkspace_hub.Hub`): checks,
    in the order of docs/protocol.md section 4.2, and answers like enrollment
    plus ``recovery_window_secs``; raises :class:`vworkspace_hub.hub.EnrollFailure`."""
    import json

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from .ca import CsrError, identity_from_cert_der
    from .hub import EnrollFailure
    from .store import now

    window = hub.config.recovery_window_secs
    cluster = None
    try:
        if window <= 0:
            raise EnrollFailure("recovery_window_passed",
                                "this hub does not recover certificates; enroll with a new join token")
        if len(body) > 64 * 1024:
            raise EnrollFailure("bad_request", "request body larger than 65536 bytes")
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            req = None
        if not isinstance(req, dict) or not all(
                isinstance(req.get(k), str) for k in ("certificate_pem", "csr_pem", "proof_hex")):
            raise EnrollFailure("bad_request",
                                'body must be JSON {"certificate_pem", "csr_pem", "proof_hex"}')
        try:
            cert = x509.load_pem_x509_certificate(req["certificate_pem"].encode())
            # Signature and issuer, not the validity period: only expiry is forgiven.
            cert.verify_directly_issued_by(hub.ca.cert)
            der = cert.public_bytes(serialization.Encoding.DER)
            ident = identity_from_cert_der(der)
        except Exception as e:  # noqa: BLE001 - unreadable, foreign CA or no identity: all refusals
            raise EnrollFailure("recovery_refused",
                                f"the certificate was not issued by this hub's CA ({type(e).__name__})") from None
        cluster = ident.cluster
        rec = hub.store.cluster(cluster)
        if rec is None or rec.org != ident.org:
            raise EnrollFailure("recovery_refused", f"serial={ident.serial}: unknown cluster or another org")
        if rec.revoked_at is not None or hub.store.serial_revoked(ident.serial):
            raise EnrollFailure("cluster_revoked", f"serial={ident.serial}: the cluster is revoked")
        newest = hub.store.newest_cert(cluster)
        if newest is None or newest[0] != ident.serial:
            raise EnrollFailure("recovery_refused",
                                f"serial={ident.serial} is not the newest certificate of this cluster")
        try:
            check_window(ident.not_after, now(), window)
        except RecoveryRefused as e:
            raise EnrollFailure(e.code, f"serial={ident.serial}: {e}") from None
        try:
            csr = x509.load_pem_x509_csr(req["csr_pem"].encode())
            csr_der = csr.public_bytes(serialization.Encoding.DER)
        except ValueError:
            raise EnrollFailure("csr_invalid", "csr_pem holds no CSR") from None
        try:
            proof = bytes.fromhex(req["proof_hex"])
        except ValueError:
            proof = b""
        try:
            verify_proof(cert.public_key(), signing_input(der, csr_der), proof)
        except RecoveryRefused as e:
            raise EnrollFailure(e.code, f"serial={ident.serial}: {e}") from None
        try:
            new = hub.ca.sign_client_csr(req["csr_pem"], ident.org, cluster, hub.config.client_cert_lifetime)
        except CsrError as e:
            raise EnrollFailure("csr_invalid", str(e)) from None
    except EnrollFailure as e:
        hub.metrics.inc("enrollments", "outcome", e.code)
        hub.store.audit("recover", cluster, e.code, f"peer={peer} {e}")
        raise
    hub.store.insert_cert(new.serial, cluster, new.not_after)
    hub.store.audit("recover", cluster, "ok",
                    f"peer={peer} old_serial={ident.serial} expired_at={ident.not_after} "
                    f"serial={new.serial} not_after={new.not_after}")
    hub.metrics.inc("enrollments", "outcome", "recovered")
    return {"cluster_id": cluster, "org": ident.org, "certificate_pem": new.pem,
            "ca_bundle_pem": hub.ca.cert_pem(), "signing_keys": hub.signing_keys(),
            "tunnel_url": hub.config.tunnel_url, "recovery_window_secs": window}
