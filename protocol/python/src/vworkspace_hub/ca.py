"""The hub CA: it issues the hub's TLS server certificate and the agents'
client certificates (docs/protocol.md sections 4 and 5).

Client certificate identity, the only thing the tunnel trusts: subject
``O=<org>, CN=<cluster id>`` and one URI SAN
``spiffe://vworkspace/org/<org>/cluster/<cluster id>``. Whatever subject or
SANs a CSR asks for are ignored; only its public key is used, and only the
documented key types are accepted (ECDSA P-256, Ed25519).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_CLIENT_CERT_LIFETIME = dt.timedelta(hours=24)
MAX_CSR_BYTES = 16 * 1024


class CsrError(Exception):
    """A CSR refused (``csr_invalid``); the message names the reason, never key material."""


class IdentityError(Exception):
    """A client certificate without a usable vWorkspace identity."""


@dataclass(frozen=True)
class Identity:
    org: str
    cluster: str
    serial: str
    not_after: int


@dataclass(frozen=True)
class IssuedCert:
    pem: str = field(repr=False)
    serial: str
    not_after: int


def identity_uri(org: str, cluster: str) -> str:
    return f"spiffe://vworkspace/org/{org}/cluster/{cluster}"


def _serial() -> int:
    b = bytearray(os.urandom(16))
    b[0] = (b[0] & 0x7F) | 0x01
    return int.from_bytes(b, "big")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def serial_hex(serial: int) -> str:
    h = format(serial, "x")
    return h if len(h) % 2 == 0 else "0" + h


class HubCA:
    """A CA key and certificate. Persist :meth:`cert_pem` and :meth:`key_pem`
    (the key is a secret) and rebuild with :meth:`from_pem`."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self._key = key

    def __repr__(self) -> str:
        return f"HubCA(sha256={self.sha256_hex()})"

    @classmethod
    def generate(cls, name: str = "vWorkspace hub CA") -> "HubCA":
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vWorkspace hub"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(_serial())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=True, crl_sign=True,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256()))
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: str, key_pem: str) -> "HubCA":
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the hub CA key must be an ECDSA key")
        return cls(cert, key)

    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def key_pem(self) -> str:
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()

    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def sha256_hex(self) -> str:
        """The CA pin that join tokens carry (SHA-256 of the DER)."""
        return hashlib.sha256(self.cert_der()).hexdigest()

    def _aki(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key())

    def server_cert(self, names: list[str], lifetime: dt.timedelta = dt.timedelta(days=365)) -> tuple[str, str]:
        """A TLS server certificate for ``names`` (DNS names or IP addresses).

        Returns ``(chain_pem, key_pem)``; the chain is leaf then CA, so an agent
        that pins the CA finds it in what the server presents.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        now = _now()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vworkspace-hub")]))
                .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(_serial())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + lifetime)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(self._aki(), critical=False)
                .sign(self._key, hashes.SHA256()))
        chain = cert.public_bytes(serialization.Encoding.PEM).decode() + self.cert_pem()
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return chain, key_pem

    def sign_client_csr(self, csr_pem: str, org: str, cluster: str,
                        lifetime: dt.timedelta = DEFAULT_CLIENT_CERT_LIFETIME) -> IssuedCert:
        """Checks the CSR (PEM, self-signature, key type) and issues the client certificate."""
        pub = check_csr(csr_pem)
        now = _now()
        not_after = now + lifetime
        serial = _serial()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                                         x509.NameAttribute(NameOID.COMMON_NAME, cluster)]))
                .issuer_name(self.cert.subject).public_key(pub).serial_number(serial)
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity_uri(org, cluster))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(self._aki(), critical=False)
                .sign(self._key, hashes.SHA256()))
        return IssuedCert(cert.public_bytes(serialization.Encoding.PEM).decode(), serial_hex(serial),
                          int(not_after.timestamp()))


def check_csr(csr_pem: str) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    """The CSR's public key, once the CSR parses, its self-signature verifies
    and its key is ECDSA P-256 or Ed25519 (the documented types)."""
    if not isinstance(csr_pem, str) or len(csr_pem) > MAX_CSR_BYTES:
        raise CsrError(f"CSR must be PEM text of at most {MAX_CSR_BYTES} bytes")
    if not csr_pem.lstrip().startswith("-----BEGIN CERTIFICATE REQUEST-----"):
        raise CsrError("CSR is not a PEM CERTIFICATE REQUEST")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise CsrError("CSR does not parse") from None
    try:
        pub = csr.public_key()
    except (ValueError, TypeError):
        raise CsrError("CSR key is not supported (use ECDSA P-256 or Ed25519)") from None
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if not isinstance(pub.curve, ec.SECP256R1):
            raise CsrError(f"CSR key curve {pub.curve.name} is not accepted (use ECDSA P-256 or Ed25519)")
    elif not isinstance(pub, ed25519.Ed25519PublicKey):
        raise CsrError("CSR key type is not accepted (use ECDSA P-256 or Ed25519)")
    try:
        ok = csr.is_signature_valid
    except (InvalidSignature, ValueError):
        ok = False
    if not ok:
        raise CsrError("CSR self-signature does not verify")
    return pub


def identity_from_cert_der(der: bytes) -> Identity:
    """The identity of a verified client certificate (subject O, CN, URI SAN must agree)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise IdentityError("certificate unreadable") from None
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not orgs or not cns:
        raise IdentityError("subject has no O or no CN")
    org, cluster = str(orgs[0].value), str(cns[0].value)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if identity_uri(org, cluster) not in uris:
        raise IdentityError("URI SAN does not match the subject")
    return Identity(org, cluster, serial_hex(cert.serial_number),
                    int(cert.not_valid_after_utc.timestamp()))
