"""Two hub processes (the example hub) sharing one PostgreSQL database: an
intent declared through one reaches a tunnel held by the other (LISTEN/NOTIFY,
with the poll fallback set far beyond the test's patience), and an agent that
moves between them resumes with nothing lost or applied twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from agent_sim import SimAgent, enroll
from test_session import SPEC, free_port, run
from vworkspace_hub import PostgresStore


class HubProc:
    def __init__(self, conninfo: str, state: Path) -> None:
        self.port = free_port()
        self.state = state
        self.log = open(state.with_suffix(".log"), "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vworkspace_hub.example", "--postgres", conninfo, "--state-dir", str(state),
             "--listen", f"127.0.0.1:{self.port}", "serve", "--poll-interval", "300", "--heartbeat", "2",
             "--idle-timeout", "10"], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (state / "admin-addr").exists():
            assert self.proc.poll() is None, state.with_suffix(".log").read_text()
            assert time.monotonic() < deadline, "hub did not start"
            time.sleep(0.05)
        self.admin = "http://" + (state / "admin-addr").read_text().strip()
        self.token = (state / "admin-token").read_text().strip()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {self.token}"}) as s:
            async with s.request(method, self.admin + path, json=body) as r:
                assert r.status == 200, await r.text()
                return await r.json() if r.content_type == "application/json" else await r.text()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def manifest(name: str, version: str) -> dict[str, Any]:
    return {"kind": "ApplicationInstance", "metadata": {"namespace": "team-a", "name": name},
            "spec": {**SPEC, "chart": {"version": version}}}


def test_two_hub_processes_share_one_postgres(pg, tmp_path):
    conninfo = pg.create_database("two_hubs")
    a = HubProc(conninfo, tmp_path / "hub-a")
    b = HubProc(conninfo, tmp_path / "hub-b")

    async def main() -> None:
        tok = await a.call("POST", "/v1/tokens", {"cluster": "edge-1", "org": "acme"})
        store = PostgresStore(conninfo)
        ca_pem = json.loads(store.meta_get("ca"))["cert_pem"]  # what the agent pins (the token carries its hash)
        store.close()
        status, creds, key = await enroll(tok["token"], ca_pem)
        assert status == 200, creds
        agent = SimAgent(creds, key)
        await agent.connect()  # to hub A (the token's hub_url)
        await agent.send({"type": "inventory", "objects": []})
        # Declared through B, delivered by A within a second: NOTIFY, not the 300 s poll.
        t0 = time.monotonic()
        first = await b.call("POST", "/v1/clusters/edge-1/apply", manifest("app-1", "1.0.0"))
        env = await agent.recv_type("intent", timeout=5)
        latency = time.monotonic() - t0
        assert latency < 3, latency
        assert (await agent.answer(env))[0] == "applied"
        # Two more through B; the agent applies one and drops the connection before acking the other.
        second = await b.call("POST", "/v1/clusters/edge-1/apply", manifest("app-2", "1.0.0"))
        third = await b.call("POST", "/v1/clusters/edge-1/apply", manifest("app-1", "2.0.0"))
        got = {}
        for _ in range(2):
            e = await agent.recv_type("intent", timeout=5)
            got[e.seq] = e
        envs = sorted(got.values(), key=lambda e: e.seq)
        assert (await agent.answer(envs[0]))[0] == "applied"
        unacked = agent.check(envs[1])  # applied in the cluster, but the ack never leaves
        assert unacked[0] == "applied"
        await agent.close()
        # The agent reconnects to B: hello.applied settles the unacked one, nothing is resent or lost.
        await agent.connect(url=f"wss://127.0.0.1:{b.port}/v1/tunnel")
        await agent.send({"type": "inventory", "objects": [
            {"object": o.to_wire(), "version": v, "status_hash": ""} for o, (v, _) in agent.applied.items()]})
        fourth = await a.call("POST", "/v1/clusters/edge-1/apply", manifest("app-2", "2.0.0"))
        env = await agent.recv_type("intent", timeout=5)
        outcome, p = await agent.answer(env)
        assert (outcome, p["intent_id"]) == ("applied", fourth["id"]), "only the new intent arrives"
        deadline = time.monotonic() + 10
        while True:
            rows = await a.call("GET", "/v1/intents?cluster=edge-1")
            if all(r["outcome"] == "applied" for r in rows) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert [r["id"] for r in rows] == [first["id"], second["id"], third["id"], fourth["id"]]
        assert all(r["outcome"] == "applied" for r in rows), rows
        clusters = await a.call("GET", "/v1/clusters")
        assert clusters[0]["connected"] and clusters[0]["name"] == "edge-1"
        # B delivered intents (the fourth, declared through A) and A the first three.
        assert 'vworkspace_hub_intents_sent_total{action="apply"}' in await b.call("GET", "/metrics")
        await agent.close()

    try:
        run(main())
    finally:
        a.stop()
        b.stop()
