"""A minimal hub built from this package, to point an agent at.

    python -m vworkspace_hub.example serve --state-dir ./hub --listen 127.0.0.1:8443
    python -m vworkspace_hub.example token --state-dir ./hub --cluster office-berlin --org acme
    python -m vworkspace_hub.example apply --state-dir ./hub --cluster office-berlin -f app.json
    python -m vworkspace_hub.example delete --state-dir ./hub --cluster office-berlin \\
        --kind ApplicationInstance --namespace team-a --name nextcloud

``serve`` keeps its state in ``STATE_DIR/hub.sqlite`` (or in PostgreSQL with
``--postgres CONNINFO``, so several ``serve`` processes share one fleet).
``token``/``apply``/``delete`` are the synchronous helpers an Odoo model
would call, run against the same store; the serving process picks the
intents up within its poll interval (at once with PostgreSQL: LISTEN/NOTIFY).

``serve`` also offers a small admin API on ``--admin-listen`` (loopback, bearer
token in ``STATE_DIR/admin-token``, address in ``STATE_DIR/admin-addr``) that
the end-to-end tests drive; ``POST /v1/clusters/{c}/hostile`` declares an
intent that is delivered forged, expired, addressed to another cluster, or
with a replayed version, to show that agents refuse them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from typing import Any

from aiohttp import web

from . import intents as intents_mod
from . import server, sync
from .ca import Identity
from .hub import Hub, HubConfig
from .intents import SignedIntent
from .sql_store import PostgresStore, SQLiteStore
from .store import IntentRecord, Store
from .wire import ObjectRef

log = logging.getLogger("vworkspace_hub.example")
HOSTILE_MODES = ("forged", "expired", "foreign", "replay")


class ExampleHub(Hub):
    """A Hub that can deliver chosen intents tampered with (for agent tests only)."""

    def __init__(self, store: Store, config: HubConfig) -> None:
        super().__init__(store, config)
        self._hostile: dict[str, str] = {}
        self._hostile_lock = threading.Lock()

    def mark_hostile(self, intent_id: str, mode: str) -> None:
        with self._hostile_lock:
            self._hostile[intent_id] = mode

    def sign_for_delivery(self, rec: IntentRecord, identity: Identity) -> SignedIntent:
        with self._hostile_lock:
            mode = self._hostile.get(rec.id)
        if mode is None:
            return super().sign_for_delivery(rec, identity)
        p = self.intent_payload(rec, identity.org)
        if mode == "expired":
            p["issued_at"], p["expires_at"] = p["issued_at"] - 7200, p["issued_at"] - 3600
        elif mode == "foreign":
            p["cluster_id"] = f"{rec.cluster}-foreign"
        elif mode == "replay":
            p["version"] = 1  # older than (or equal to) what the agent applied, under a new id
        signed = intents_mod.sign_payload(self.intent_keys().current(), p)
        if mode == "forged":
            sig = bytearray(signed.signature)
            sig[0] ^= 0x01
            signed = SignedIntent(signed.kid, signed.payload, bytes(sig))
        log.info("delivering hostile intent intent=%s mode=%s", rec.id, mode)
        return signed


def open_store(args: argparse.Namespace) -> Store:
    if args.postgres:
        return PostgresStore(args.postgres)
    os.makedirs(args.state_dir, exist_ok=True)
    return SQLiteStore(os.path.join(args.state_dir, "hub.sqlite"))


def make_hub(args: argparse.Namespace, store: Store) -> ExampleHub:
    host, port = _split_addr(args.listen)
    public = args.public_url or f"https://{host}:{port}"
    return ExampleHub(store, HubConfig(public_url=public, heartbeat_secs=args.heartbeat,
                                       idle_timeout_secs=args.idle_timeout,
                                       shutdown_retry_after_secs=args.retry_after,
                                       poll_interval_secs=args.poll_interval, max_in_flight=args.window))


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


# ---- admin API -------------------------------------------------------------

def _intent_json(i: IntentRecord) -> dict[str, Any]:
    return {"seq": i.seq, "id": i.id, "cluster": i.cluster, "kind": i.kind, "namespace": i.namespace,
            "name": i.name, "version": i.version, "action": i.action, "created_at": i.created_at,
            "acked_at": i.acked_at, "outcome": i.outcome, "outcome_message": i.outcome_message}


def admin_routes(hub: ExampleHub, token: str) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/metrics" and not secrets.compare_digest(
                request.headers.get("Authorization", ""), f"Bearer {token}"):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            return await handler(request)
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"error": f"bad request: {e}"}, status=400)
    app.middlewares.append(auth)

    def run(fn: Any, *a: Any) -> Any:
        return asyncio.to_thread(fn, *a)

    async def tokens(request: web.Request) -> web.Response:
        b = await request.json()
        out = await run(sync.issue_token, hub, b["cluster"], b["org"], int(b.get("ttl_seconds", 3600)))
        return web.json_response(out)

    async def apply(request: web.Request) -> web.Response:
        rec = await run(sync.declare_apply, hub, request.match_info["cluster"], await request.json())
        return web.json_response(_intent_json(rec))

    async def delete(request: web.Request) -> web.Response:
        b = await request.json()
        rec = await run(sync.declare_delete, hub, request.match_info["cluster"], b["kind"], b.get("namespace", ""),
                        b["name"])
        return web.json_response(_intent_json(rec))

    async def hostile(request: web.Request) -> web.Response:
        b = await request.json()
        mode = b["mode"]
        if mode not in HOSTILE_MODES:
            raise ValueError(f"mode must be one of {HOSTILE_MODES}")
        manifest = b["manifest"]
        obj = sync.object_of(manifest)
        # Declared with the wake-up held back, so the mark is in place before the session signs it.
        rec = await run(hub.store.declare, request.match_info["cluster"], obj, "apply", manifest["spec"])
        hub.mark_hostile(rec.id, mode)
        hub.wake(rec.cluster)
        return web.json_response(_intent_json(rec))

    async def clusters(request: web.Request) -> web.Response:
        rows = await run(hub.store.clusters)
        return web.json_response([{"name": c.name, "org": c.org, "connected": c.connected, "conn_id": c.conn_id,
                                   "agent_version": c.agent_version, "enrolled_at": c.enrolled_at,
                                   "revoked_at": c.revoked_at, "last_seen": c.last_seen} for c in rows])

    async def intents(request: web.Request) -> web.Response:
        rows = await run(hub.store.intents, request.query.get("cluster"), int(request.query.get("limit", "1000")))
        return web.json_response([_intent_json(i) for i in rows])

    async def objects(request: web.Request) -> web.Response:
        cluster = request.query.get("cluster")
        objs = await run(hub.store.objects, cluster)
        sts = {(s.cluster, s.obj): s for s in await run(hub.store.statuses, cluster)}
        last = {}
        for i in await run(hub.store.intents, cluster, 100000):
            last[(i.cluster, i.obj)] = i
        out = []
        for o in objs:
            s = sts.get((o.cluster, o.obj))
            li = last.get((o.cluster, o.obj))
            out.append({"cluster": o.cluster, "kind": o.kind, "namespace": o.namespace, "name": o.name,
                        "version": o.version, "deleted": o.deleted, "last_outcome": li.outcome if li else None,
                        "status": None if s is None else {
                            "phase": s.phase, "version": s.version, "hash": s.hash, "deleted": s.deleted,
                            "outputs": s.outputs, "updated_at": s.updated_at,
                            "conditions": [{"type": c["type"], "status": c["status"], "reason": c["reason"],
                                            "message": c["message"]} for c in s.conditions]}})
        return web.json_response(out)

    async def audit(request: web.Request) -> web.Response:
        rows = await run(hub.store.audit_log, int(request.query.get("limit", "1000")))
        return web.json_response([{"id": a.id, "ts": a.ts, "event": a.event, "cluster": a.cluster,
                                   "outcome": a.outcome, "detail": a.detail} for a in rows])

    async def rotate(request: web.Request) -> web.Response:
        return web.json_response({"kid": await run(hub.rotate_intent_key)})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=hub.metrics.render(), content_type="text/plain")

    app.router.add_post("/v1/tokens", tokens)
    app.router.add_post("/v1/clusters/{cluster}/apply", apply)
    app.router.add_post("/v1/clusters/{cluster}/delete", delete)
    app.router.add_post("/v1/clusters/{cluster}/hostile", hostile)
    app.router.add_post("/v1/keys/rotate", rotate)
    app.router.add_get("/v1/clusters", clusters)
    app.router.add_get("/v1/intents", intents)
    app.router.add_get("/v1/objects", objects)
    app.router.add_get("/v1/audit", audit)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(args: argparse.Namespace) -> None:
    store = open_store(args)
    hub = make_hub(args, store)
    host, port = _split_addr(args.listen)
    names = sorted({host, "localhost", "127.0.0.1"} | set(args.server_name or []))
    os.makedirs(args.state_dir, exist_ok=True)
    runner = await server.serve(hub, host, port, names, os.path.join(args.state_dir, "tls"))
    token = secrets.token_hex(24)
    admin_runner = web.AppRunner(admin_routes(hub, token), handle_signals=False)
    await admin_runner.setup()
    ahost, aport = _split_addr(args.admin_listen)
    site = web.TCPSite(admin_runner, ahost, aport)
    await site.start()
    bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
    _write_private(os.path.join(args.state_dir, "admin-token"), token)
    with open(os.path.join(args.state_dir, "admin-addr.tmp"), "w") as f:
        f.write(f"{bound[0]}:{bound[1]}\n")
    os.replace(os.path.join(args.state_dir, "admin-addr.tmp"), os.path.join(args.state_dir, "admin-addr"))
    log.info("admin API on http://%s:%d; CA sha256 %s", bound[0], bound[1], hub.ca.sha256_hex())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: goodbye to every tunnel")
    await runner.cleanup()
    await admin_runner.cleanup()
    store.close()


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vworkspace_hub.example", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", default=os.environ.get("VWS_HUB_STATE_DIR", "./hub-state"))
    p.add_argument("--postgres", default=os.environ.get("VWS_HUB_POSTGRES"), help="libpq conninfo (shared store)")
    p.add_argument("--listen", default="127.0.0.1:8443")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--admin-listen", default="127.0.0.1:0")
    s.add_argument("--public-url", default=None)
    s.add_argument("--server-name", action="append")
    s.add_argument("--heartbeat", type=int, default=20)
    s.add_argument("--idle-timeout", type=int, default=60)
    s.add_argument("--retry-after", type=int, default=5)
    s.add_argument("--poll-interval", type=float, default=1.0)
    s.add_argument("--window", type=int, default=64)
    t = sub.add_parser("token")
    t.add_argument("--cluster", required=True)
    t.add_argument("--org", required=True)
    t.add_argument("--ttl", type=int, default=3600)
    a = sub.add_parser("apply")
    a.add_argument("--cluster", required=True)
    a.add_argument("-f", "--file", required=True)
    d = sub.add_parser("delete")
    d.add_argument("--cluster", required=True)
    d.add_argument("--kind", required=True)
    d.add_argument("--namespace", default="")
    d.add_argument("--name", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s",
                        datefmt="%Y-%m-%dT%H:%M:%S")
    logging.Formatter.converter = time.gmtime
    if args.cmd == "serve":
        asyncio.run(serve(args))
        return 0
    # The synchronous helpers, as an Odoo model method would call them.
    store = open_store(args)
    host, port = _split_addr(args.listen)
    hub = sync.open_hub(store, f"https://{host}:{port}")
    try:
        if args.cmd == "token":
            out = sync.issue_token(hub, args.cluster, args.org, args.ttl)
            print(out["token"])  # the one place the secret is shown: to the operator who asked
        elif args.cmd == "apply":
            with open(args.file) as f:
                rec = sync.declare_apply(hub, args.cluster, json.load(f))
            print(json.dumps(_intent_json(rec)))
        else:
            rec = sync.declare_delete(hub, args.cluster, args.kind, args.namespace, args.name)
            print(json.dumps(_intent_json(rec)))
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
