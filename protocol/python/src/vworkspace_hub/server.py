"""The hub's HTTPS endpoint (aiohttp): ``POST /v1/enroll`` and the tunnel at
``GET /v1/tunnel``, on one TLS port.

TLS: the server presents its certificate followed by the hub CA (the agent
pins the CA), asks for a client certificate but does not require one (the
enrollment request has none), and verifies any it gets against the hub CA.
The tunnel refuses a connection without a valid client certificate, with an
identity the store does not allow (unknown, another org, revoked cluster or
serial), or without a common subprotocol (HTTP 400 with a plain-text reason).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from typing import Any

from aiohttp import WSMsgType, web

from . import wire
from .ca import IdentityError, identity_from_cert_der
from .hub import EnrollFailure, Hub
from .session import Message, TunnelSession

log = logging.getLogger("vworkspace_hub.server")

HUB_KEY = web.AppKey("hub", Hub)
SESSIONS_KEY = web.AppKey("sessions", set)


def tls_context(hub: Hub, server_names: list[str], state_dir: str | None = None) -> ssl.SSLContext:
    """A server context with a fresh server certificate for ``server_names``.

    The key file is written with mode 0600 into ``state_dir`` (or a private
    temporary directory) because :mod:`ssl` loads keys from files only."""
    chain_pem, key_pem = hub.ca.server_cert(server_names)
    d = state_dir or tempfile.mkdtemp(prefix="vws-hub-tls-")
    os.makedirs(d, exist_ok=True)
    chain_path, key_path = os.path.join(d, "server-chain.pem"), os.path.join(d, "server-key.pem")
    with open(chain_path, "w") as f:
        f.write(chain_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key_pem)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(chain_path, key_path)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cadata=hub.ca.cert_pem())
    return ctx


class _AiohttpTransport:
    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def receive(self) -> Message:
        msg = await self.ws.receive()
        if msg.type == WSMsgType.BINARY:
            return Message("binary", msg.data)
        if msg.type == WSMsgType.TEXT:
            return Message("text")
        if msg.type == WSMsgType.PING:
            return Message("ping", msg.data)
        if msg.type == WSMsgType.PONG:
            return Message("pong")
        if msg.type == WSMsgType.ERROR:
            exc = self.ws.exception()
            if exc is not None and (getattr(exc, "code", None) == 1009 or "exceeds limit" in str(exc)):
                return Message("too_large")
        return Message("close")

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def ping(self) -> None:
        await self.ws.ping()

    async def pong(self, data: bytes) -> None:
        await self.ws.pong(data)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())


def _peer(request: web.Request) -> str:
    p = request.transport.get_extra_info("peername") if request.transport else None
    return f"{p[0]}:{p[1]}" if p else "?"


async def enroll(request: web.Request) -> web.Response:
    hub = request.app[HUB_KEY]
    if request.content_length is not None and request.content_length > 64 * 1024:
        e = EnrollFailure("bad_request", "request body larger than 65536 bytes")
        return web.json_response(e.body(), status=e.http_status)
    body = await request.content.read(64 * 1024 + 1)
    try:
        answer = await asyncio.to_thread(hub.enroll, body, _peer(request))
    except EnrollFailure as e:
        return web.json_response(e.body(), status=e.http_status)
    except Exception:  # noqa: BLE001 - the agent gets `internal`, the log gets the trace
        log.exception("enrollment failed")
        return web.json_response({"code": "internal", "message": "hub failure"}, status=500)
    return web.json_response(answer)


async def recover(request: web.Request) -> web.Response:
    """``POST /v1/recover`` (docs/protocol.md section 4.2), no client certificate needed."""
    from .recovery import recover as do_recover
    hub = request.app[HUB_KEY]
    if request.content_length is not None and request.content_length > 64 * 1024:
        e = EnrollFailure("bad_request", "request body larger than 65536 bytes")
        return web.json_response(e.body(), status=e.http_status)
    body = await request.content.read(64 * 1024 + 1)
    try:
        answer = await asyncio.to_thread(do_recover, hub, body, _peer(request))
    except EnrollFailure as e:
        return web.json_response(e.body(), status=e.http_status)
    except Exception:  # noqa: BLE001 - the agent gets `internal`, the log gets the trace
        log.exception("recovery failed")
        return web.json_response({"code": "internal", "message": "hub failure"}, status=500)
    return web.json_response(answer)


async def tunnel(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    peer = _peer(request)
    ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
    if not der:
        log.info("tunnel refused peer=%s: no client certificate", peer)
        return web.json_response({"error": "client_certificate_required",
                                  "message": "the tunnel needs a client certificate issued by this hub"}, status=401)
    try:
        identity = identity_from_cert_der(der)
    except IdentityError as e:
        return web.json_response({"error": "unauthorized", "message": str(e)}, status=403)
    if not await asyncio.to_thread(hub.identity_allowed, identity):
        hub.metrics.inc("tunnels_refused", "reason", "revoked")
        await asyncio.to_thread(hub.store.audit, "tunnel.refused", identity.cluster, "revoked",
                                f"serial={identity.serial}")
        log.info("tunnel refused peer=%s cluster=%s: unknown or revoked identity", peer, identity.cluster)
        return web.json_response({"error": "unauthorized", "message": "this identity is revoked or unknown"},
                                 status=403)
    offered = request.headers.getall("Sec-WebSocket-Protocol", [])
    if wire.negotiate(offered) is None:
        return web.Response(status=400, text=f"no common protocol version: offer WebSocket subprotocol "
                                             f"{wire.SUBPROTOCOL_V1}\n")
    # aiohttp refuses oversized messages itself (before parsing); the session answers frame_too_large.
    ws = web.WebSocketResponse(protocols=(wire.SUBPROTOCOL_V1,), autoping=False, heartbeat=None,
                               max_msg_size=hub.config.max_frame_bytes, compress=False)
    await ws.prepare(request)
    hub.kick(identity.cluster, "replaced")
    session = TunnelSession(hub, identity, _AiohttpTransport(ws), peer)
    sessions: set[Any] = request.app[SESSIONS_KEY]
    task = asyncio.current_task()
    sessions.add(task)
    try:
        await session.run()
    finally:
        sessions.discard(task)
    return ws


def make_app(hub: Hub) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[HUB_KEY] = hub
    app[SESSIONS_KEY] = set()
    app.router.add_post("/v1/enroll", enroll)
    app.router.add_post("/v1/recover", recover)
    app.router.add_get(wire.TUNNEL_PATH, tunnel)

    async def on_shutdown(app: web.Application) -> None:
        # Goodbye with retry_after to every tunnel, then let them close.
        hub.kick_all("shutdown")
        pending = list(app[SESSIONS_KEY])
        if pending:
            await asyncio.wait(pending, timeout=5)
    app.on_shutdown.append(on_shutdown)
    return app


async def serve(hub: Hub, host: str, port: int, server_names: list[str], state_dir: str | None = None,
                extra_routes: Any = None) -> web.AppRunner:
    """Starts the HTTPS endpoint; returns the runner (``await runner.cleanup()`` to stop)."""
    app = make_app(hub)
    if extra_routes is not None:
        extra_routes(app)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls_context(hub, server_names, state_dir))
    await site.start()
    log.info("hub listening on https://%s:%d (tunnel %s)", host, port, hub.config.tunnel_url)
    return runner
