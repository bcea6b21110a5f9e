"""Certificate recovery (docs/protocol.md section 4.2) on the hub library:
once with the cluster's key, never with an older certificate, a wrong proof,
a revoked cluster or after the window."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from vworkspace_hub import Hub, HubConfig, MemoryStore, wire
from vworkspace_hub.hub import EnrollFailure
from vworkspace_hub.recovery import recover, signing_input


def csr_for(key) -> str:
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agent")]))
           .sign(key, algo))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def enrolled(hub: Hub, cluster: str, key) -> dict:
    tok = hub.issue_join_token(cluster, "acme")
    return hub.enroll(json.dumps({"token": tok.raw, "csr_pem": csr_for(key)}).encode())


def request(cert_pem: str, key, csr_pem: str, proof_csr_pem: str | None = None) -> bytes:
    cert_der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    csr_der = x509.load_pem_x509_csr((proof_csr_pem or csr_pem).encode()).public_bytes(serialization.Encoding.DER)
    data = signing_input(cert_der, csr_der)
    proof = key.sign(data) if isinstance(key, ed25519.Ed25519PrivateKey) else key.sign(data, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"certificate_pem": cert_pem, "csr_pem": csr_pem, "proof_hex": proof.hex()}).encode()


@pytest.mark.parametrize("make_key", [lambda: ec.generate_private_key(ec.SECP256R1()),
                                      ed25519.Ed25519PrivateKey.generate], ids=["p256", "ed25519"])
def test_an_expired_certificate_is_recovered_once_with_its_key(make_key):
    hub = Hub(MemoryStore(), HubConfig(public_url="https://hub.example:8443",
                                       client_cert_lifetime=dt.timedelta(seconds=1),
                                       recovery_window_secs=600))
    old_key = make_key()
    old = enrolled(hub, "edge-1", old_key)
    time.sleep(2)
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_csr = csr_for(new_key)
    with pytest.raises(EnrollFailure) as e:
        recover(hub, request(old["certificate_pem"], old_key, new_csr, proof_csr_pem=csr_for(new_key)))
    assert e.value.code == "recovery_refused"
    answer = recover(hub, request(old["certificate_pem"], old_key, new_csr))
    assert (answer["cluster_id"], answer["org"], answer["recovery_window_secs"]) == ("edge-1", "acme", 600)
    issued = x509.load_pem_x509_certificate(answer["certificate_pem"].encode())
    assert issued.public_key().public_numbers() == new_key.public_key().public_numbers()
    # The old certificate is superseded: a thief with the old key gets nothing.
    with pytest.raises(EnrollFailure) as e:
        recover(hub, request(old["certificate_pem"], old_key, csr_for(make_key())))
    assert e.value.code == "recovery_refused"


def test_revoked_and_out_of_window_are_refused_and_welcome_announces_the_window():
    hub = Hub(MemoryStore(), HubConfig(public_url="https://hub.example:8443",
                                       client_cert_lifetime=dt.timedelta(seconds=1),
                                       recovery_window_secs=1))
    k1, k2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    revoked = enrolled(hub, "edge-revoked", k1)
    late = enrolled(hub, "edge-late", k2)
    hub.revoke("edge-revoked")
    with pytest.raises(EnrollFailure) as e:
        recover(hub, request(revoked["certificate_pem"], k1, csr_for(k1)))
    assert (e.value.code, e.value.http_status) == ("cluster_revoked", 403)
    time.sleep(3)
    with pytest.raises(EnrollFailure) as e:
        recover(hub, request(late["certificate_pem"], k2, csr_for(k2)))
    assert (e.value.code, e.value.http_status) == ("recovery_window_passed", 403)
    assert wire.welcome("c", "o", 0, 20, 60, 1024, 8, [], 1)["recovery_window_secs"] == 1
    assert "recovery_window_secs" not in wire.welcome("c", "o", 0, 20, 60, 1024, 8, [])


def test_a_certificate_from_another_ca_is_refused():
    hub = Hub(MemoryStore(), HubConfig(public_url="https://hub.example:8443"))
    other = Hub(MemoryStore(), HubConfig(public_url="https://other.example:8443"))
    key = ec.generate_private_key(ec.SECP256R1())
    foreign = enrolled(other, "edge-1", key)
    hub.store.ensure_cluster("edge-1", "acme")
    with pytest.raises(EnrollFailure) as e:
        recover(hub, request(foreign["certificate_pem"], key, csr_for(key)))
    assert e.value.code == "recovery_refused"
