"""Enrollment and the tunnel session over real TLS + WebSocket, in process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from typing import Any, AsyncIterator

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent_sim import SimAgent, csr_for, enroll, pinned_context
from vworkspace_hub import Hub, HubConfig, MemoryStore, ObjectRef, intents, join_token, server, wire

APP = ObjectRef("ApplicationInstance", "team-a", "nextcloud")
SPEC = {"appRef": {"catalogId": "nextcloud"}, "mode": "placeholder"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def running_hub(**cfg: Any) -> AsyncIterator[Hub]:
    port = free_port()
    hub = Hub(MemoryStore(), HubConfig(public_url=f"https://127.0.0.1:{port}", **cfg))
    runner = await server.serve(hub, "127.0.0.1", port, ["127.0.0.1"])
    try:
        yield hub
    finally:
        await runner.cleanup()


async def enrolled(hub: Hub, cluster: str = "edge-1", org: str = "acme") -> SimAgent:
    tok = await asyncio.to_thread(hub.issue_join_token, cluster, org)
    status, body, key = await enroll(tok.raw, hub.ca.cert_pem())
    assert status == 200, body
    return SimAgent(body, key)


async def until(pred: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = await asyncio.to_thread(pred)
        if v:
            return v
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_enrollment_checks_token_csr_and_single_use():
    async def main() -> None:
        async with running_hub() as hub:
            tok = await asyncio.to_thread(hub.issue_join_token, "edge-1", "acme")
            assert tok.raw not in repr(tok)
            # A P-384 key is not a documented type: csr_invalid, and the token is not consumed.
            status, body, _ = await enroll(tok.raw, hub.ca.cert_pem(), ec.generate_private_key(ec.SECP384R1()))
            assert (status, body["code"]) == (400, "csr_invalid")
            assert tok.raw not in body["message"]
            # Ed25519 is accepted; the identity comes from the token, not the CSR.
            status, body, _ = await enroll(tok.raw, hub.ca.cert_pem(), ed25519.Ed25519PrivateKey.generate())
            assert status == 200, body
            assert (body["cluster_id"], body["org"]) == ("edge-1", "acme")
            assert body["tunnel_url"] == hub.config.tunnel_url
            assert body["signing_keys"] == hub.signing_keys()
            status, body, _ = await enroll(tok.raw, hub.ca.cert_pem())
            assert (status, body["code"]) == (409, "token_reused")
            # A token from another hub's key: token_invalid.
            other = Hub(MemoryStore(), HubConfig(public_url=hub.config.public_url))
            foreign = other.issue_join_token("edge-1", "acme")
            ctx = pinned_context(hub.ca.sha256_hex(), hub.ca.cert_pem())
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{hub.config.public_url}/v1/enroll", ssl=ctx,
                                  json={"token": foreign.raw, "csr_pem": csr_for(ec.generate_private_key(ec.SECP256R1()))}) as r:
                    assert (r.status, (await r.json())["code"]) == (401, "token_invalid")
                async with s.post(f"{hub.config.public_url}/v1/enroll", ssl=ctx, data=b"not json") as r:
                    assert (r.status, (await r.json())["code"]) == (400, "bad_request")
            assert hub.metrics.get("enrollments", "outcome", "token_reused") == 1
            assert hub.metrics.get("enrollments", "outcome", "csr_invalid") == 1
            log = "\n".join(a.detail for a in hub.store.audit_log())
            assert tok.raw not in log
    run(main())


def test_intents_are_delivered_acked_and_statuses_stored():
    async def main() -> None:
        async with running_hub() as hub:
            agent = await enrolled(hub)
            await agent.connect()
            assert agent.welcome["cluster_id"] == "edge-1" and agent.welcome["max_in_flight"] == 64
            await agent.send({"type": "inventory", "objects": []})
            rec = await asyncio.to_thread(hub.declare_apply, "edge-1", APP, SPEC)
            env = await agent.recv_type("intent")
            outcome, p = await agent.answer(env)
            assert outcome == "applied" and p["version"] == 1 and p["action"] == {"type": "apply", "spec": SPEC}
            await until(lambda: hub.store.intents("edge-1")[-1].outcome == "applied")
            assert hub.store.intents("edge-1")[-1].id == rec.id
            await agent.send({"type": "status", "object": APP.to_wire(), "generation": 1, "observed_generation": 1,
                              "version": 1, "phase": None, "conditions": [
                                  {"type": "Ready", "status": "True", "reason": "Placeholder", "message": ""}],
                              "outputs": {}, "hash": "h1", "deleted": False})
            st = await until(lambda: hub.store.statuses("edge-1"))
            assert st[0].hash == "h1" and st[0].conditions[0]["type"] == "Ready"
            # Delete, then an unknown frame type (non-fatal), then the session still works.
            await asyncio.to_thread(hub.declare_delete, "edge-1", APP)
            outcome, p = await agent.answer(await agent.recv_type("intent"))
            assert outcome == "applied" and p["action"] == {"type": "delete"} and p["version"] == 2
            await agent.send({"type": "ping2", "nonce": 7})
            err = await agent.recv_type("error")
            assert err.body["code"] == "unsupported_frame"
            # Events land in the audit log.
            await agent.send({"type": "event", "time": int(time.time()), "severity": "Warning",
                              "reason": "IntentRejected", "message": "intent rejected: bad_signature"})
            await until(lambda: any(a.event == "agent.event" for a in hub.store.audit_log()))
            await agent.close()
            await until(lambda: not hub.store.cluster("edge-1").connected)
    run(main())


def test_window_bounds_in_flight_and_unacked_intents_are_resent_after_reconnect():
    async def main() -> None:
        async with running_hub(max_in_flight=2) as hub:
            agent = await enrolled(hub)
            await agent.connect()
            objs = [ObjectRef("ApplicationInstance", "team-a", f"app-{i}") for i in range(5)]
            for o in objs:
                await asyncio.to_thread(hub.declare_apply, "edge-1", o, SPEC)
            first = [await agent.recv_type("intent") for _ in range(2)]
            with pytest.raises(asyncio.TimeoutError):
                await agent.recv(timeout=0.5)  # the window is full
            await agent.answer(first[0])
            third = await agent.recv_type("intent")
            # Drop the connection with two intents unacknowledged (first[1], third).
            await agent.close()
            # This agent verified those two but never acked: it holds only app-0.
            agent.applied = {objs[0]: agent.applied[objs[0]]}
            await agent.connect()
            await agent.send({"type": "inventory", "objects": [
                {"object": objs[0].to_wire(), "version": 1, "status_hash": ""}]})
            names = []
            for _ in range(4):
                env = await agent.recv_type("intent")
                outcome, p = await agent.answer(env)
                names.append(p["object"]["name"])
            assert sorted(names) == ["app-1", "app-2", "app-3", "app-4"], names
            assert third is not None
            await until(lambda: all(i.outcome == "applied" for i in hub.store.intents("edge-1")))
            await agent.close()
    run(main())


def test_an_intent_acked_apply_failed_is_sent_again_on_the_same_connection():
    async def main() -> None:
        async with running_hub() as hub:
            agent = await enrolled(hub)
            await agent.connect()
            await agent.send({"type": "inventory", "objects": []})
            rec = await asyncio.to_thread(hub.declare_apply, "edge-1", APP, SPEC)
            failed = {"result": "rejected", "code": "apply_failed", "message": "the API server did not answer"}
            # The cluster's API server is down: two failures, then it is back.
            for _ in range(2):
                env = await agent.recv_type("intent")
                p = intents.decode_payload(env.body["payload"])
                assert p["intent_id"] == rec.id
                await agent.send({"type": "intent_ack", "intent_id": rec.id, "intent_seq": env.seq,
                                  "object": APP.to_wire(), "version": 1, "outcome": failed})
            outcome, p = await agent.answer(await agent.recv_type("intent"))
            assert outcome == "applied" and p["intent_id"] == rec.id
            await until(lambda: hub.store.intents("edge-1")[-1].outcome == "applied")
            assert hub.metrics.get("intent_resends", "reason", "apply_failed") == 2
            await agent.close()
    run(main())


def test_resend_delays_double_up_to_a_minute_and_the_schedule_is_bounded():
    from vworkspace_hub.session import Resends
    assert [Resends.delay(a, 0.0) for a in (0, 1, 2, 6, 40)] == [0.5, 1.0, 2.0, 30.0, 30.0]
    assert Resends.delay(3, 0.999) <= 8.0
    r = Resends()
    assert r.schedule(0.0, 7, "a", 0.0) == 0.5 and r.next() == 0.5
    assert r.take_due(0.4) == [] and r.take_due(0.5) == [7] and r.next() is None
    assert r.schedule(0.0, 7, "a", 0.0) == 1.0  # the second failure waits longer
    r.settled("a")
    assert r.next() is None and r.schedule(0.0, 7, "a", 0.0) == 0.5
    r = Resends()
    for i in range(Resends.MAX_SCHEDULED):
        r.schedule(0.0, 100 + i, f"i{i}", i / Resends.MAX_SCHEDULED)
    d = r.schedule(0.0, 5, "late", 0.0)
    assert len(r.due) == Resends.MAX_SCHEDULED and 5 in r.take_due(d)


def test_hello_applied_and_inventory_settle_resend_and_resync():
    async def main() -> None:
        async with running_hub() as hub:
            agent = await enrolled(hub)
            rec = await asyncio.to_thread(hub.declare_apply, "edge-1", APP, SPEC)
            # The agent already holds version 1 (e.g. applied before a hub restore): hello settles it.
            agent.applied[APP] = (1, rec.id)
            await agent.connect()
            await until(lambda: hub.store.intents("edge-1")[-1].outcome == "applied")
            # Inventory with a status hash the hub has not seen: resync_request for that object.
            await agent.send({"type": "inventory", "objects": [{"object": APP.to_wire(), "version": 1,
                                                                 "status_hash": "zzz"}]})
            rr = await agent.recv_type("resync_request")
            assert rr.body["objects"] == [APP.to_wire()]
            await agent.close()
            # The cluster lost the object: inventory without it, the newest intent is sent again.
            agent.applied.clear()
            await agent.connect()
            await agent.send({"type": "inventory", "objects": []})
            env = await agent.recv_type("intent")
            outcome, p = await agent.answer(env)
            assert (outcome, p["intent_id"]) == ("applied", rec.id)
            await agent.close()
    run(main())


def test_the_window_is_the_smaller_of_the_agent_offer_and_the_hub_cap():
    async def main() -> None:
        async with running_hub(max_in_flight=8) as hub:
            agent = await enrolled(hub)
            for offer, granted in ((3, 3), (100, 8), (None, 8)):
                await agent.connect(hello=False)
                hello: dict[str, Any] = {"type": "hello", "agent_version": "sim", "applied": []}
                if offer is not None:
                    hello["max_in_flight"] = offer
                await agent.send(hello)
                welcome = await agent.recv_type("welcome")
                assert welcome.body["max_in_flight"] == granted, offer
                assert welcome.body["max_chunks"] == wire.MAX_CHUNKS
                await agent.close()
            # The granted window is what the hub keeps in flight.
            await agent.connect(hello=False)
            await agent.send({"type": "hello", "agent_version": "sim", "applied": [], "max_in_flight": 2})
            await agent.recv_type("welcome")
            for i in range(4):
                await asyncio.to_thread(hub.declare_apply, "edge-1",
                                        ObjectRef("ApplicationInstance", "team-a", f"w-{i}"), SPEC)
            await agent.recv_type("intent")
            await agent.recv_type("intent")
            with pytest.raises(asyncio.TimeoutError):
                await agent.recv(timeout=0.5)
            await agent.close()
    run(main())


def _split(entries: list[Any], per: int) -> list[tuple[dict[str, int], list[Any]]]:
    count = max(1, -(-len(entries) // per))
    return [({"index": i, "count": count}, entries[i * per:(i + 1) * per]) for i in range(count)]


def test_hello_and_inventory_of_50000_objects_arrive_in_chunks_and_are_assembled():
    async def main() -> None:
        async with running_hub() as hub:
            agent = await enrolled(hub)
            objs = [ObjectRef("ApplicationInstance", f"ns-{i % 50}", f"app-{i:05}") for i in range(50_000)]
            declared = [await asyncio.to_thread(hub.declare_apply, "edge-1", o, SPEC) for o in objs[-3:]]
            applied = [{"object": o.to_wire(), "version": 1} for o in objs]
            # One frame cannot hold them (1 MiB): five chunks of 10,000.
            with pytest.raises(wire.EncodeError):
                wire.encode(1, 0, {"type": "hello", "agent_version": "sim", "capabilities": [], "applied": applied})
            hellos = _split(applied, 10_000)
            await agent.connect(hello=False)
            for i, (chunk, part) in enumerate(hellos):
                await agent.send({"type": "hello", "agent_version": "sim", "capabilities": [], "applied": part,
                                  "max_in_flight": 256, "chunk": chunk})
                if i == 0:
                    welcome = await agent.recv_type("welcome")
                    assert welcome.body["max_chunks"] >= len(hellos)
            # The last hello chunk settled the declared intents, the last of the 50,000.
            await until(lambda: all(hub.store.intents("edge-1")[-1 - k].outcome == "applied" for k in range(3)),
                        timeout=60)
            assert {r.id for r in declared} == {i.id for i in hub.store.intents("edge-1")[-3:]}
            entries = [{"object": o.to_wire(), "version": 1, "status_hash": "h"} for o in objs]
            for chunk, part in _split(entries, 8_000):
                await agent.send({"type": "inventory", "objects": part, "chunk": chunk})
            # Reconciled once, on the last chunk: a resync for (at most 1000 of) the unknown statuses.
            rr = await agent.recv_type("resync_request", timeout=60)
            assert len(rr.body["objects"]) == 1000
            await until(lambda: len(hub.store._inventory.get("edge-1", [])) == 50_000, timeout=60)
            await agent.close()
    run(main())


def test_broken_or_endless_chunks_close_with_chunk_error():
    async def main() -> None:
        async with running_hub() as hub:
            agent = await enrolled(hub)
            # More chunks than the hub assembles, in the first hello: refused before welcome.
            await agent.connect(hello=False)
            await agent.send({"type": "hello", "agent_version": "sim", "applied": [],
                              "chunk": {"index": 0, "count": 4_294_967_295}})
            assert (await agent.recv_type("error")).body["code"] == "chunk_error"
            assert await agent.close_code() == 1008
            await agent.close()
            # An inventory chunk out of order.
            await agent.connect()
            await agent.send({"type": "inventory", "objects": [], "chunk": {"index": 0, "count": 3}})
            await agent.send({"type": "inventory", "objects": [], "chunk": {"index": 2, "count": 3}})
            err = await agent.recv_type("error")
            assert err.body["code"] == "chunk_error" and "expected chunk 1 of 3" in err.body["message"]
            assert await agent.close_code() == 1008
            await agent.close()
            # A hello chunk that never gets its successor: something else instead.
            await agent.connect(hello=False)
            await agent.send({"type": "hello", "agent_version": "sim", "applied": [],
                              "chunk": {"index": 0, "count": 2}})
            await agent.recv_type("welcome")
            await agent.send({"type": "inventory", "objects": []})
            assert (await agent.recv_type("error")).body["code"] == "unexpected_frame"
            await agent.close()
            assert hub.metrics.get("frames_refused", "code", "chunk_error") == 2
    run(main())


def test_protocol_violations_close_with_the_documented_codes():
    async def main() -> None:
        async with running_hub() as hub:
            agent = await enrolled(hub)
            # Anything before hello is unexpected_frame.
            await agent.connect(hello=False)
            await agent.send({"type": "inventory", "objects": []})
            assert (await agent.recv()).body["code"] == "unexpected_frame"
            assert await agent.close_code() == 1002
            await agent.close()
            # A skipped seq is a sequence_error.
            await agent.connect()
            agent.seq += 1
            await agent.send({"type": "inventory", "objects": []})
            assert (await agent.recv_type("error")).body["code"] == "sequence_error"
            assert await agent.close_code() == 1002
            await agent.close()
            # Garbage is malformed_frame.
            await agent.connect()
            await agent.send_raw(b"\xc1")
            assert (await agent.recv_type("error")).body["code"] == "malformed_frame"
            await agent.close()
            # An oversized message is refused before parsing (close 1009).
            await agent.connect()
            await agent.send_raw(b"\x00" * (wire.MAX_FRAME_BYTES + 1))
            # aiohttp closes with 1009 as soon as the header announces the size; the
            # peer, still sending, may see the reset (1006) instead of the close frame.
            assert await agent.close_code() in (1009, 1006)
            await agent.close()
            await until(lambda: hub.metrics.get("frames_refused", "code", "frame_too_large") == 1)
            # No common subprotocol: HTTP 400 with a plain-text reason.
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await agent.connect(protocols=("vworkspace.v9+msgpack",))
            assert e.value.status == 400
            await agent.session.close()
            assert hub.metrics.get("frames_refused", "code", "sequence_error") == 1
    run(main())


def test_bucketed_digests_are_not_announced_and_their_frames_answered_as_documented():
    async def main() -> None:
        async with running_hub() as hub:
            agent = await enrolled(hub)
            await agent.connect()
            assert "digest_buckets" not in agent.welcome
            # A summary sent anyway: unsupported_frame, and the connection stays.
            await agent.send({"type": "inventory_summary", "bucket_count": 16, "hashes": [bytes(16)] * 16})
            assert (await agent.recv_type("error")).body["code"] == "unsupported_frame"
            await agent.send({"type": "inventory", "objects": []})
            # A bucket inventory without a summary this hub took: digest_error, close 1008.
            await agent.send({"type": "inventory", "objects": [], "buckets": [0]})
            assert (await agent.recv_type("error")).body["code"] == "digest_error"
            assert await agent.close_code() == 1008
            await agent.close()
    run(main())


def test_renewal_rotation_revocation_and_goodbye_on_shutdown():
    async def main() -> None:
        port = free_port()
        hub = Hub(MemoryStore(), HubConfig(public_url=f"https://127.0.0.1:{port}", shutdown_retry_after_secs=7))
        runner = await server.serve(hub, "127.0.0.1", port, ["127.0.0.1"])
        agent = await enrolled(hub)
        await agent.connect()
        # Renewal with a fresh key, and a refused CSR (non-fatal).
        await agent.send({"type": "renew_cert", "csr_pem": csr_for(ec.generate_private_key(ec.SECP256R1()))})
        issued = await agent.recv_type("cert_issued")
        assert "BEGIN CERTIFICATE" in issued.body["certificate_pem"]
        await agent.send({"type": "renew_cert", "csr_pem": "junk"})
        assert (await agent.recv_type("error")).body["code"] == "csr_invalid"
        # Rotation: the tunnel is asked to reconnect; the new welcome carries both keys; new intents use the new kid.
        old_kid = hub.intent_keys().current().kid
        new_kid = await asyncio.to_thread(hub.rotate_intent_key)
        bye = await agent.recv_type("goodbye")
        assert bye.body["retry_after_secs"] == 1
        await agent.close()
        await agent.connect()
        assert {k["kid"] for k in agent.welcome["signing_keys"]} == {old_kid, new_kid}
        await asyncio.to_thread(hub.declare_apply, "edge-1", APP, SPEC)
        env = await agent.recv_type("intent")
        assert env.body["kid"] == new_kid and (await agent.answer(env))[0] == "applied"
        assert hub.retire_intent_key(old_kid)
        assert [k["kid"] for k in hub.signing_keys()] == [new_kid]
        # Revocation closes the live tunnel (unauthorized, 1008) and refuses the next handshake.
        await asyncio.to_thread(hub.revoke, "edge-1")
        assert (await agent.recv_type("error")).body["code"] == "unauthorized"
        assert await agent.close_code() == 1008
        await agent.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await agent.connect()
        assert e.value.status == 403
        await agent.session.close()
        # Shutdown says goodbye with retry_after to every tunnel.
        other = await enrolled(hub, "edge-2")
        await other.connect()
        stop = asyncio.ensure_future(runner.cleanup())
        bye = await other.recv_type("goodbye")
        assert bye.body["retry_after_secs"] == 7
        await other.close()
        await stop
    run(main())


def test_join_token_issue_parse_and_limits():
    hub = Hub(MemoryStore(), HubConfig(public_url="https://hub.example:8443"))
    tok = hub.issue_join_token("c1", "acme", ttl_secs=600)
    parsed = join_token.parse(tok.raw)
    assert parsed.claims.hub_url == "https://hub.example:8443" and parsed.claims.ca_sha256 == hub.ca.sha256_hex()
    assert parsed.claims.exp - parsed.claims.iat == 600
    with pytest.raises(ValueError):
        hub.issue_join_token("c1", "acme", ttl_secs=86401)
    with pytest.raises(ValueError):
        hub.issue_join_token("c1", "other-org")
    with pytest.raises(join_token.JoinTokenError) as e:
        join_token.parse("a" * 9000)
    assert e.value.code == "token_invalid"
