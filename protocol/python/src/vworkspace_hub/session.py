"""One tunnel connection, hub side, following docs/protocol.md sections 6 and 9.

The session waits for ``hello`` (within a deadline), answers ``welcome``, then
delivers the cluster's pending intents in store order with at most
``max_in_flight`` unacknowledged, takes acks, statuses, inventory, events and
renewal requests, pings every ``heartbeat_secs`` and drops a peer silent for
``idle_timeout_secs``. Nothing grows without bound: the window is negotiated
once (the agent's offer, at most ``max_in_flight``), inbound messages are
size-checked before parsing, chunked ``hello`` and ``inventory`` frames are
assembled within a chunk count, an entry count and a deadline, and every send
has a deadline. The store is the only state that outlives the connection, which is
what lets an agent resume on another hub process.

The session is transport-agnostic (:class:`Transport`); :mod:`.server` adapts
aiohttp's WebSocket to it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from . import wire
from .ca import CsrError, Identity
from .hub import Hub
from .store import IntentRecord, StatusRecord
from .wire import FrameError, ObjectRef, Unsupported

log = logging.getLogger("vworkspace_hub.session")

MAX_RESYNC_OBJECTS = 1000
MAX_RENEWALS_PER_CONN = 8
T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    """What a transport received: ``binary``, ``text``, ``ping``, ``pong``,
    ``close``, or ``too_large`` (refused by the transport before parsing)."""

    kind: str
    data: bytes = b""


class Transport(Protocol):
    async def receive(self) -> Message: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def ping(self) -> None: ...
    async def pong(self, data: bytes) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


class Resends:
    """Timed resends of intents the agent acked ``rejected{apply_failed}``.

    Such an intent was verified but could not be written (the cluster's API
    server was down longer than the agent's own retries). It stays pending in
    the store; without a timer it would only go out again on the next
    connection, and a healthy tunnel may never reconnect. Each one is sent
    again on the same connection after a jittered, doubling delay (1, 2, 4 ...
    at most 60 s; drawn from the upper half of the step). At most
    ``MAX_SCHEDULED`` wait at once; an overflow rides along with the latest
    resend (a resend rewinds to the lowest store seq it holds, and every
    pending intent after that which is not in flight goes out with it).
    Same rules as hub-sim (hub-sim/src/tunnel/retry.rs)."""

    MAX_SCHEDULED = 4096
    FIRST = 1.0
    MAX = 60.0

    def __init__(self) -> None:
        self.due: dict[str, tuple[float, int]] = {}  # intent id -> (when, store seq)
        self.attempts: dict[str, int] = {}

    @classmethod
    def delay(cls, attempt: int, unit: float) -> float:
        step = min(cls.FIRST * 2 ** min(attempt, 16), cls.MAX)
        return step * (0.5 + 0.5 * min(max(unit, 0.0), 1.0))

    def schedule(self, now: float, seq: int, intent_id: str, unit: float) -> float:
        self.due.pop(intent_id, None)
        if len(self.due) >= self.MAX_SCHEDULED:
            last = max(self.due, key=lambda k: self.due[k][0])
            at, last_seq = self.due[last]
            self.due[last] = (at, min(last_seq, seq))
            return max(0.0, at - now)
        n = self.attempts.get(intent_id, 0)
        d = self.delay(n, unit)
        self.attempts[intent_id] = n + 1
        self.due[intent_id] = (now + d, seq)
        if len(self.attempts) > 2 * self.MAX_SCHEDULED:
            self.attempts = {k: v for k, v in self.attempts.items() if k in self.due}
        return d

    def settled(self, intent_id: str) -> None:
        self.attempts.pop(intent_id, None)
        self.due.pop(intent_id, None)

    def next(self) -> float | None:
        return min((at for at, _ in self.due.values()), default=None)

    def take_due(self, now: float) -> list[int]:
        ids = [k for k, (at, _) in self.due.items() if at <= now]
        return [self.due.pop(k)[1] for k in ids]


class _End(Exception):
    """Ends the session: optionally a last frame, then a close code."""

    def __init__(self, reason: str, frame: dict[str, Any] | None = None, code: int = 1000,
                 abrupt: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frame = frame
        self.code = code
        self.abrupt = abrupt


def _fatal(code: str, message: str) -> _End:
    return _End(message, wire.error(code, message), wire.close_code(code))


class TunnelSession:
    def __init__(self, hub: Hub, identity: Identity, transport: Transport, peer: str = "?") -> None:
        self.hub = hub
        self.id = identity
        self.t = transport
        self.peer = peer
        cfg = hub.config
        self.window = cfg.max_in_flight
        self.max_frame = cfg.max_frame_bytes
        self.conn_id = uuid.uuid4().hex
        self.out_seq = 0
        self.in_seq = 0
        self.in_flight: collections.deque[tuple[int, int, str]] = collections.deque()  # (env seq, store seq, id)
        self.cursor = 0
        self.resends = Resends()
        self.renewals = 0
        self.last_rx = time.monotonic()
        self._inventory = wire.ChunkAssembly()
        self._inventory_deadline: float | None = None
        self._attention = asyncio.Event()
        self._kill: str | None = None
        self._loop = asyncio.get_running_loop()

    # Called from any thread (store LISTEN thread, admin calls).
    def _waker(self, reason: str | None) -> None:
        def set_() -> None:
            if reason is not None and self._kill is None:
                self._kill = reason
            self._attention.set()
        try:
            self._loop.call_soon_threadsafe(set_)
        except RuntimeError:  # loop closed: the session is gone
            pass

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        """Store calls run in a worker thread: implementations may block."""
        return await asyncio.to_thread(fn, *args)

    async def run(self) -> str:
        """Drives the connection to its end; returns why it ended."""
        cluster = self.id.cluster
        self.hub.register(cluster, self._waker)
        self.hub.metrics.inc("tunnels_opened")
        log.info("tunnel open cluster=%s org=%s peer=%s conn=%s", cluster, self.id.org, self.peer, self.conn_id[:8])
        end: _End
        try:
            await self._drive()
            end = _End("done")
        except _End as e:
            end = e
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            end = _End(f"connection lost: {type(e).__name__}", abrupt=True)
        except Exception as e:  # noqa: BLE001 - a bug must close this tunnel, not the hub
            log.exception("tunnel failed cluster=%s", cluster)
            end = _fatal("internal", f"hub failure: {type(e).__name__}")
        finally:
            self.hub.unregister(cluster, self._waker)
            try:
                await self._store(self.hub.store.mark_disconnected, cluster, self.conn_id)
            except Exception:  # noqa: BLE001
                log.exception("recording the disconnect failed cluster=%s", cluster)
        if not end.abrupt:
            if end.frame is not None:
                try:
                    await self._send(end.frame)
                except (_End, ConnectionError, OSError):
                    pass
            try:
                await asyncio.wait_for(self.t.close(end.code, end.reason[:120]), 2)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass
        log.info("tunnel closed cluster=%s peer=%s conn=%s reason=%s", cluster, self.peer, self.conn_id[:8],
                 end.reason)
        return end.reason

    async def _drive(self) -> None:
        hub, cfg, cluster = self.hub, self.hub.config, self.id.cluster
        try:
            hello = await asyncio.wait_for(self._next_envelope(), cfg.handshake_timeout_secs)
        except asyncio.TimeoutError:
            raise _End("no hello", code=1008) from None
        if hello.type != "hello":
            raise _fatal("unexpected_frame", f"expected hello, got {hello.type}")
        body = hello.body
        assert isinstance(body, dict)
        # The window: the agent's offer, at most the configured one (section 6).
        offer = body.get("max_in_flight")
        self.window = max(1, min(offer, cfg.max_in_flight)) if offer is not None else cfg.max_in_flight
        hellos = wire.ChunkAssembly()
        applied = self._assemble(hellos, "hello", body.get("chunk"), body["applied"])
        agent_version = body["agent_version"][:64]
        await self._store(hub.store.mark_connected, cluster, self.conn_id, agent_version)
        keys = await self._store(hub.signing_keys)
        await self._send(wire.welcome(cluster, self.id.org, int(time.time()), cfg.heartbeat_secs,
                                      cfg.idle_timeout_secs, self.max_frame, self.window, keys,
                                      cfg.recovery_window_secs or None, hub.ca.cert_pem(), wire.MAX_CHUNKS))
        if applied is None:
            applied = await self._rest_of_hello(hellos)
        settled = 0
        for a in applied:
            settled += await self._store(hub.store.settle_applied, cluster, ObjectRef.from_wire(a["object"]),
                                         a["version"])
        await self._store(hub.store.audit, "tunnel.connect", cluster, "ok",
                          f"peer={self.peer} agent_version={agent_version} applied={len(applied)} "
                          f"settled={settled} window={self.window}")
        log.info("welcome sent cluster=%s agent_version=%s applied=%d settled=%d window=%d", cluster,
                 agent_version, len(applied), settled, self.window)
        await self._pump()

        loop = asyncio.get_running_loop()
        next_ping = loop.time() + cfg.heartbeat_secs
        next_poll = loop.time() + cfg.poll_interval_secs
        recv: asyncio.Task[wire.Envelope] | None = None
        try:
            while True:
                if recv is None:
                    recv = asyncio.ensure_future(self._next_envelope())
                attention = asyncio.ensure_future(self._attention.wait())
                idle_deadline = self.last_rx + cfg.idle_timeout_secs
                chunk_deadline = self._inventory_deadline or float("inf")
                resend_at = self.resends.next() or float("inf")
                timeout = max(0.0, min(next_ping - loop.time(), next_poll - loop.time(),
                                       idle_deadline - time.monotonic(), chunk_deadline - time.monotonic(),
                                       resend_at - time.monotonic()))
                done, _ = await asyncio.wait({recv, attention}, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not attention.done():
                    attention.cancel()
                if recv in done:
                    env = recv.result()  # raises _End on a bad frame or a closed connection
                    recv = None
                    await self._handle(env)
                if self._attention.is_set():
                    self._attention.clear()
                    self._check_kill()
                    await self._pump()
                if self._inventory_deadline is not None and time.monotonic() >= self._inventory_deadline:
                    self.hub.metrics.inc("frames_refused", "code", "chunk_error")
                    raise _fatal("chunk_error", f"inventory: chunked frame not completed within "
                                                f"{wire.CHUNK_TIMEOUT_SECS} s")
                if time.monotonic() >= self.last_rx + cfg.idle_timeout_secs:
                    log.info("tunnel idle cluster=%s", cluster)
                    raise _End("idle timeout", code=1008)
                if loop.time() >= next_ping:
                    next_ping = loop.time() + cfg.heartbeat_secs
                    await self._deadline(self.t.ping())
                due = self.resends.take_due(time.monotonic())
                if due:
                    self.hub.metrics.inc("intent_resends", "reason", "apply_failed", by=len(due))
                    self.cursor = min(self.cursor, min(due) - 1)
                    await self._pump()
                if loop.time() >= next_poll:
                    next_poll = loop.time() + cfg.poll_interval_secs
                    await self._pump()
        finally:
            if recv is not None and not recv.done():
                recv.cancel()

    def _assemble(self, assembly: wire.ChunkAssembly, what: str, chunk: dict[str, int] | None,
                  entries: list[Any]) -> list[Any] | None:
        try:
            return assembly.push(chunk, entries)
        except wire.ChunkError as e:
            self.hub.metrics.inc("frames_refused", "code", "chunk_error")
            raise _fatal("chunk_error", f"{what}: {e}") from None

    async def _rest_of_hello(self, hellos: wire.ChunkAssembly) -> list[Any]:
        """The hello chunks after the first: they follow welcome, before anything else."""
        deadline = time.monotonic() + wire.CHUNK_TIMEOUT_SECS
        while True:
            try:
                env = await asyncio.wait_for(self._next_envelope(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.hub.metrics.inc("frames_refused", "code", "chunk_error")
                raise _fatal("chunk_error",
                             f"hello: chunked frame not completed within {wire.CHUNK_TIMEOUT_SECS} s") from None
            if env.type != "hello":
                raise _fatal("unexpected_frame", f"expected the next hello chunk, got {env.type}")
            assert isinstance(env.body, dict)
            applied = self._assemble(hellos, "hello", env.body.get("chunk"), env.body["applied"])
            if applied is not None:
                return applied

    def _check_kill(self) -> None:
        why = self._kill
        if why is None:
            return
        retry = self.hub.config.shutdown_retry_after_secs
        if why == "revoked":
            raise _fatal("unauthorized", "cluster revoked")
        if why == "replaced":
            raise _End("replaced", wire.goodbye("replaced by a newer connection of this cluster", None))
        if why == "keys_rotated":
            raise _End("keys rotated", wire.goodbye("intent-signing keys changed; reconnect to receive them", 1))
        raise _End(why, wire.goodbye("hub shutting down", retry), code=1001)

    async def _deadline(self, aw: Awaitable[T]) -> T:
        """A peer that stops reading is dropped, not buffered for."""
        try:
            return await asyncio.wait_for(aw, self.hub.config.idle_timeout_secs)
        except asyncio.TimeoutError:
            raise _End("peer not reading", abrupt=True) from None
        except (ConnectionError, OSError) as e:
            raise _End(f"write failed: {type(e).__name__}", abrupt=True) from None

    async def _send(self, body: dict[str, Any]) -> int:
        seq = self.out_seq + 1
        try:
            data = wire.encode(seq, self.in_seq, body, self.max_frame)
        except wire.EncodeError as e:
            log.error("frame could not be encoded cluster=%s: %s", self.id.cluster, e)
            raise _fatal("internal", "hub could not encode a frame") from None
        self.out_seq = seq
        await self._deadline(self.t.send_bytes(data))
        return seq

    async def _next_envelope(self) -> wire.Envelope:
        while True:
            msg = await self.t.receive()
            self.last_rx = time.monotonic()
            if msg.kind == "ping":
                await self._deadline(self.t.pong(msg.data))
                continue
            if msg.kind == "pong":
                continue
            if msg.kind == "close":
                raise _End("peer closed", abrupt=True)
            if msg.kind == "too_large":
                self.hub.metrics.inc("frames_refused", "code", "frame_too_large")
                raise _fatal("frame_too_large", "frame exceeds max_frame_bytes")
            if msg.kind != "binary":
                self.hub.metrics.inc("frames_refused", "code", "malformed_frame")
                raise _fatal("malformed_frame", "text frames are not part of the protocol")
            try:
                env = wire.decode(msg.data, self.max_frame)
            except FrameError as e:
                self.hub.metrics.inc("frames_refused", "code", e.code)
                raise _fatal(e.code, str(e)[:200]) from None
            if env.seq != self.in_seq + 1:
                self.hub.metrics.inc("frames_refused", "code", "sequence_error")
                raise _fatal("sequence_error", f"expected seq {self.in_seq + 1}, got {env.seq}")
            if env.ack > self.out_seq:
                self.hub.metrics.inc("frames_refused", "code", "sequence_error")
                raise _fatal("sequence_error", f"ack {env.ack} names an unsent seq (last sent {self.out_seq})")
            self.in_seq = env.seq
            return env

    async def _handle(self, env: wire.Envelope) -> None:
        hub, cluster, store = self.hub, self.id.cluster, self.hub.store
        if isinstance(env.body, Unsupported):
            name = env.body.type_name[:64]
            await self._send(wire.error("unsupported_frame", f"frame type {name!r} is not supported"))
            return
        b = env.body
        t = b["type"]
        if t == "intent_ack":
            await self._on_ack(b)
        elif t == "status":
            o = b["object"]
            rec = StatusRecord(cluster, o["kind"], o["namespace"], o["name"], b["generation"],
                               b["observed_generation"], b["version"], b["phase"], b["conditions"], b["outputs"],
                               b["hash"], b["deleted"], int(time.time()))
            await self._store(store.put_status, rec)
            hub.metrics.inc("statuses_received")
            log.info("status cluster=%s object=%s version=%s phase=%s conditions=%s", cluster,
                     ObjectRef.from_wire(o), b["version"], b["phase"],
                     ",".join(f"{c['type']}={c['status']}" for c in b["conditions"]))
        elif t == "inventory_summary":
            # This hub does not announce welcome.digest_buckets: answered as
            # a hub without bucketed digests (section 7), the agent goes on.
            await self._send(wire.error("unsupported_frame", "frame type 'inventory_summary' is not supported"))
        elif t == "inventory":
            if b.get("buckets") is not None:
                self.hub.metrics.inc("frames_refused", "code", "digest_error")
                raise _fatal("digest_error", "bucket inventory without a summary on this connection")
            objects = self._assemble(self._inventory, "inventory", b.get("chunk"), b["objects"])
            if objects is None:
                if self._inventory_deadline is None:
                    self._inventory_deadline = time.monotonic() + wire.CHUNK_TIMEOUT_SECS
            else:
                self._inventory_deadline = None
                await self._on_inventory({"objects": objects})
        elif t == "event":
            obj = f" {ObjectRef.from_wire(b['object'])}" if b["object"] else ""
            detail = f"{b['severity']} {b['reason']}{obj}: {b['message']}"
            await self._store(store.audit, "agent.event", cluster, "ok", detail)
            hub.metrics.inc("agent_events", "severity", b["severity"][:16])
        elif t == "renew_cert":
            await self._on_renew(b["csr_pem"])
        elif t == "goodbye":
            log.info("agent said goodbye cluster=%s reason=%s", cluster, b["reason"][:200])
            raise _End("agent goodbye")
        elif t == "error":
            log.warning("agent reported a protocol error cluster=%s code=%s message=%s", cluster, b["code"][:64],
                        b["message"][:200])
        elif t == "hello":
            raise _fatal("unexpected_frame", "hello sent twice")
        else:
            raise _fatal("unexpected_frame", f"{t} is a hub-to-agent frame")

    async def _on_ack(self, b: dict[str, Any]) -> None:
        pos = next((i for i, (es, _, iid) in enumerate(self.in_flight)
                    if iid == b["intent_id"] or (not b["intent_id"] and es == b["intent_seq"])), None)
        store_seq: int | None = None
        if pos is not None:
            _, store_seq, intent_id = self.in_flight[pos]
            del self.in_flight[pos]
        else:
            intent_id = b["intent_id"]  # an ack after a reconnect or for a duplicate: settle by id
        out = b["outcome"]
        result, message = out["result"], None
        if result == "rejected":
            code = out["code"]
            message = f"{code}: {out['message']}"[:500]
            # A replay refusal means the agent already holds this version or a newer one.
            result = "noop" if code == "replayed" else "rejected"
            self.hub.metrics.inc("intents_rejected", "code", code[:32])
        retry_later = out["result"] == "rejected" and out["code"] == "apply_failed"
        if intent_id and not retry_later:
            await self._store(self.hub.store.ack_intent, self.id.cluster, intent_id, result, message)
        if retry_later:
            # Sent again on this connection after a delay; without a known store
            # seq (an ack after a reconnect) the next connection does it.
            if store_seq is not None:
                d = self.resends.schedule(time.monotonic(), store_seq, intent_id, random.random())
                log.info("intent apply failed cluster=%s intent=%s; resending in %.1f s", self.id.cluster,
                         intent_id, d)
        else:
            self.resends.settled(intent_id)
        self.hub.metrics.inc("intent_acks", "outcome", result)
        log.info("intent acked cluster=%s intent=%s outcome=%s%s", self.id.cluster, intent_id, out["result"],
                 f" code={out['code']}" if out["result"] == "rejected" else "")
        await self._pump()

    async def _on_inventory(self, b: dict[str, Any]) -> None:
        hub, cluster, store = self.hub, self.id.cluster, self.hub.store
        held: dict[ObjectRef, dict[str, Any]] = {}
        for e in b["objects"]:
            ref = ObjectRef.from_wire(e["object"])
            held[ref] = e
            await self._store(store.settle_applied, cluster, ref, e["version"])
        # Objects whose newest intent is newer than what the agent holds get it
        # again, even if acked before (the cluster lost it). Never deletes.
        resent = 0
        for o in await self._store(store.objects, cluster):
            have = held.get(o.obj)
            if (o.deleted and have is None) or (have["version"] if have else 0) >= o.version:
                continue
            seq = await self._store(store.requeue_latest, cluster, o.obj)
            if seq is not None:
                self.cursor = min(self.cursor, seq - 1)
                resent += 1
        await self._pump()
        known = {s.obj: s.hash for s in await self._store(store.statuses, cluster)}
        differing = [ref for ref, e in held.items() if known.get(ref) != e["status_hash"]][:MAX_RESYNC_OBJECTS]
        if differing:
            await self._send(wire.resync_request("status digest differs from the hub's copy", differing))
        await self._store(store.put_inventory, cluster,
                          [{**e["object"], "version": e["version"], "status_hash": e["status_hash"]}
                           for e in b["objects"]])
        log.info("inventory cluster=%s objects=%d requeued=%d resync=%d", cluster, len(held), resent, len(differing))

    async def _on_renew(self, csr_pem: str) -> None:
        self.renewals += 1
        if self.renewals > MAX_RENEWALS_PER_CONN:
            raise _fatal("unexpected_frame", "too many renewals on one connection")
        try:
            cert = await self._store(self.hub.renew, self.id, csr_pem)
        except CsrError as e:
            await self._store(self.hub.store.audit, "cert.renew", self.id.cluster, "refused", str(e))
            self.hub.metrics.inc("renewals", "outcome", "csr_invalid")
            await self._send(wire.error("csr_invalid", f"renewal refused: {e}"))
            return
        self.hub.metrics.inc("renewals", "outcome", "ok")
        await self._send(wire.cert_issued(cert.pem, self.hub.ca.cert_pem()))

    async def _pump(self) -> None:
        """Sends pending intents in store order while the window has room."""
        store, cluster = self.hub.store, self.id.cluster
        while len(self.in_flight) < self.window:
            want = self.window - len(self.in_flight)
            fetched: list[IntentRecord] = await self._store(store.pending_intents, cluster, self.cursor,
                                                            want + len(self.in_flight))
            if not fetched:
                return
            in_flight_ids = {iid for _, _, iid in self.in_flight}
            batch: list[IntentRecord] = []
            for rec in fetched:
                self.cursor = rec.seq
                if rec.id in in_flight_ids:
                    continue
                batch.append(rec)
                if len(batch) == want:
                    break
            for rec in batch:
                signed = await self._store(self.hub.sign_for_delivery, rec, self.id)
                env_seq = await self._send(signed.frame())
                self.in_flight.append((env_seq, rec.seq, rec.id))
                self.hub.metrics.inc("intents_sent", "action", rec.action)
                log.info("intent sent cluster=%s intent=%s object=%s version=%d action=%s seq=%d in_flight=%d",
                         cluster, rec.id, rec.obj, rec.version, rec.action, env_seq, len(self.in_flight))
