"""A small protocol-level agent for the package's tests: enrolls over HTTPS
(pinning the CA from the token), dials the tunnel with its client
certificate, and speaks frames. It checks intents exactly as the spec says
an agent must (vworkspace_hub.intents.verify_intent)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tempfile
import time
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from vworkspace_hub import intents, join_token, wire


def csr_for(key: Any, cn: str = "ignored-by-the-hub") -> str:
    algo = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])).sign(key, algo))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def pinned_context(ca_sha256: str, ca_pem: str) -> ssl.SSLContext:
    der = x509.load_pem_x509_certificate(ca_pem.encode()).public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == ca_sha256, "hub CA does not match the token's pin"
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def enroll(token: str, ca_pem: str, key: Any | None = None) -> tuple[int, dict[str, Any], Any]:
    """POSTs the enrollment; returns (status, body, key)."""
    claims = join_token.parse(token).claims
    key = key or ec.generate_private_key(ec.SECP256R1())
    ctx = pinned_context(claims.ca_sha256, ca_pem)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{claims.hub_url}/v1/enroll", json={"token": token, "csr_pem": csr_for(key)},
                          ssl=ctx) as r:
            return r.status, await r.json(), key


class SimAgent:
    def __init__(self, creds: dict[str, Any], key: Any) -> None:
        self.creds = creds
        self.key = key
        self.dir = tempfile.mkdtemp(prefix="vws-sim-agent-")
        self.ring = intents.load_public_ring(creds["signing_keys"])
        self.applied: dict[wire.ObjectRef, tuple[int, str]] = {}
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session: aiohttp.ClientSession | None = None
        self.seq = 0
        self.in_seq = 0
        self.welcome: dict[str, Any] | None = None

    def _ssl(self, url: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.creds["ca_bundle_pem"])
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        with open(cert, "w") as f:
            f.write(self.creds["certificate_pem"])
        with open(key, "wb") as f:
            f.write(self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        ctx.load_cert_chain(cert, key)
        return ctx

    async def connect(self, url: str | None = None, hello: bool = True,
                      protocols: tuple[str, ...] = (wire.SUBPROTOCOL_V1,)) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(url or self.creds["tunnel_url"], protocols=protocols,
                                                ssl=self._ssl(), autoping=True, max_msg_size=wire.MAX_FRAME_BYTES)
        self.seq = self.in_seq = 0
        if hello:
            await self.send({"type": "hello", "agent_version": "sim-0.1", "capabilities": [],
                             "applied": [{"object": o.to_wire(), "version": v} for o, (v, _) in self.applied.items()]})
            env = await self.recv()
            assert env.type == "welcome", env
            self.welcome = env.body  # type: ignore[assignment]
            if self.welcome["signing_keys"]:
                self.ring = intents.load_public_ring(self.welcome["signing_keys"])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()

    async def send(self, body: dict[str, Any]) -> None:
        self.seq += 1
        assert self.ws is not None
        await self.ws.send_bytes(wire.encode(self.seq, self.in_seq, body))

    async def send_raw(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(data)

    async def recv(self, timeout: float = 10) -> wire.Envelope:
        assert self.ws is not None
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type != aiohttp.WSMsgType.BINARY:
            raise ConnectionError(f"tunnel ended: {msg.type} {msg.data!r} {msg.extra!r}")
        env = wire.decode(msg.data)
        self.in_seq = env.seq
        return env

    async def recv_type(self, t: str, timeout: float = 10) -> wire.Envelope:
        while True:
            env = await self.recv(timeout)
            if env.type == t:
                return env

    async def close_code(self, timeout: float = 10) -> int | None:
        """Reads until the hub closes; returns its close code."""
        assert self.ws is not None
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.last_before_close = wire.decode(msg.data)

    def check(self, env: wire.Envelope) -> tuple[str, dict[str, Any] | str]:
        """Verifies an intent as the agent must; returns (outcome, payload or code)."""
        body = env.body
        assert isinstance(body, dict)
        try:
            p = intents.decode_payload(body["payload"])
            have = self.applied.get(wire.ObjectRef.from_wire(p["object"]))
        except intents.IntentRejected:
            have = None
        try:
            result, p = intents.verify_intent(
                body, self.ring, cluster_id=self.creds["cluster_id"], org=self.creds["org"], now=int(time.time()),
                applied_version=have[0] if have else None, applied_intent_id=have[1] if have else None)
        except intents.IntentRejected as r:
            return "rejected", r.code
        if result == "ok":
            self.applied[wire.ObjectRef.from_wire(p["object"])] = (p["version"], p["intent_id"])
            return "applied", p
        return "noop", p

    async def answer(self, env: wire.Envelope) -> tuple[str, Any]:
        outcome, p = self.check(env)
        body: dict[str, Any] = {"type": "intent_ack", "intent_seq": env.seq}
        if outcome == "rejected":
            try:
                peek = intents.decode_payload(env.body["payload"])  # type: ignore[index]
            except intents.IntentRejected:
                peek = {"intent_id": "", "object": None, "version": None}
            body.update(intent_id=peek["intent_id"], object=peek["object"], version=peek["version"],
                        outcome={"result": "rejected", "code": p, "message": f"refused: {p}"})
        else:
            body.update(intent_id=p["intent_id"], object=p["object"], version=p["version"],
                        outcome={"result": outcome})
        await self.send(body)
        return outcome, p
