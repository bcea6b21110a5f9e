"""The store contract, for the in-memory, SQLite and PostgreSQL stores (a real server)."""

from __future__ import annotations

import itertools
import threading
from typing import Iterator

import pytest

from vworkspace_hub import MemoryStore, ObjectRef, PostgresStore, SQLiteStore, StatusRecord, Store, TokenUse
from vworkspace_hub.store import UnknownCluster

APP = ObjectRef("ApplicationInstance", "team-a", "nextcloud")
_db = itertools.count()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "memory":
        s: Store = MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(str(tmp_path / "hub.sqlite"))
    else:
        pg = request.getfixturevalue("pg")
        s = PostgresStore(pg.create_database(f"store_{next(_db)}"))
    yield s
    s.close()


def test_versions_grow_per_object_and_acks_settle(store: Store):
    store.ensure_cluster("c1", "acme")
    with pytest.raises(UnknownCluster):
        store.declare("nope", APP, "apply", {})
    a = store.declare("c1", APP, "apply", {"x": 1})
    b = store.declare("c1", APP, "apply", {"x": 2})
    other = store.declare("c1", ObjectRef("Operation", "team-a", "bk"), "apply", {})
    d = store.declare("c1", APP, "delete", None)
    assert [a.version, b.version, other.version, d.version] == [1, 2, 1, 3]
    assert a.spec == {"x": 1} and d.spec is None
    assert [i.id for i in store.pending_intents("c1", 0, 10)] == [a.id, b.id, other.id, d.id]
    assert [i.id for i in store.pending_intents("c1", b.seq, 10)] == [other.id, d.id]
    assert len(store.pending_intents("c1", 0, 2)) == 2
    assert store.ack_intent("c1", a.id, "applied", None)
    assert not store.ack_intent("c1", a.id, "applied", None), "a second answer is ignored"
    assert not store.ack_intent("other", b.id, "applied", None), "another cluster cannot ack"
    # hello.applied = 2 settles what is pending up to version 2.
    assert store.settle_applied("c1", APP, 2) == 1
    assert [i.id for i in store.pending_intents("c1", 0, 10)] == [other.id, d.id]
    objs = {o.obj: o for o in store.objects("c1")}
    assert objs[APP].version == 3 and objs[APP].deleted
    # Requeue: the newest intent was never acked -> still pending; once acked -> pending again.
    assert store.requeue_latest("c1", APP) == d.seq
    assert store.ack_intent("c1", d.id, "applied", None)
    assert store.requeue_latest("c1", APP) == d.seq
    assert store.pending_intents("c1", 0, 10)[-1].id == d.id
    # A rejected newest intent is not resent.
    assert store.ack_intent("c1", d.id, "rejected", "forbidden: no")
    assert store.requeue_latest("c1", APP) is None
    assert store.intents("c1", 2)[-1].outcome_message == "forbidden: no"


def test_tokens_are_single_use_even_under_concurrency(store: Store):
    store.ensure_cluster("c1", "acme")
    store.insert_token("j1", "h1", "c1", "acme", 2_000_000_000)
    assert store.consume_token("j2", "h1") is TokenUse.UNKNOWN
    assert store.consume_token("j1", "wrong") is TokenUse.MISMATCH
    results: list[TokenUse] = []
    threads = [threading.Thread(target=lambda: results.append(store.consume_token("j1", "h1"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(TokenUse.CONSUMED) == 1
    assert results.count(TokenUse.ALREADY_USED) == 7


def test_connection_flag_follows_the_current_tunnel_only(store: Store):
    store.ensure_cluster("c1", "acme")
    store.mark_connected("c1", "conn-a", "0.1.0")
    store.mark_connected("c1", "conn-b", "0.1.0")  # the agent moved
    store.mark_disconnected("c1", "conn-a")  # the old tunnel's late close
    c = store.cluster("c1")
    assert c.connected and c.conn_id == "conn-b"
    store.mark_disconnected("c1", "conn-b")
    assert not store.cluster("c1").connected


def test_clusters_certs_revocation_meta_statuses_audit(store: Store):
    assert store.ensure_cluster("c1", "acme").org == "acme"
    assert store.ensure_cluster("c1", "other").org == "acme", "an existing cluster keeps its org"
    store.insert_cert("abcd", "c1", 2_000_000_000)
    assert store.cluster("c1").enrolled_at is not None
    assert not store.serial_revoked("abcd")
    assert store.revoke_cluster("c1") and store.serial_revoked("abcd")
    assert store.cluster("c1").revoked_at is not None
    assert store.meta_set_if_absent("k", "first") == "first"
    assert store.meta_set_if_absent("k", "second") == "first"
    store.meta_set("k", "third")
    assert store.meta_get("k") == "third" and store.meta_get("missing") is None
    st = StatusRecord("c1", APP.kind, APP.namespace, APP.name, 2, 2, 1, None,
                      [{"type": "Ready", "status": "True", "reason": "R", "message": "",
                        "observed_generation": 2, "last_transition_time": None}], {"url": "https://x"}, "h", False, 5)
    store.put_status(st)
    store.put_status(StatusRecord(**{**st.__dict__, "hash": "h2"}))
    assert [s.hash for s in store.statuses("c1")] == ["h2"]
    assert store.statuses("c1")[0].outputs == {"url": "https://x"}
    store.put_inventory("c1", [{"kind": APP.kind, "version": 1}])
    store.audit("enroll", "c1", "ok", "x" * 5000)
    log = store.audit_log()
    assert log[-1].event == "enroll" and len(log[-1].detail) == 1000


def test_postgres_declares_from_two_connections_never_share_a_version(pg):
    conninfo = pg.create_database("store_concurrent")
    a, b = PostgresStore(conninfo), PostgresStore(conninfo)
    try:
        a.ensure_cluster("c1", "acme")
        versions: list[int] = []
        lock = threading.Lock()

        def declare(s: Store) -> None:
            for _ in range(20):
                v = s.declare("c1", APP, "apply", {}).version
                with lock:
                    versions.append(v)
        ts = [threading.Thread(target=declare, args=(s,)) for s in (a, b)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert sorted(versions) == list(range(1, 41))
        # LISTEN/NOTIFY: b hears a declaration made through a.
        heard = threading.Event()
        b.subscribe(lambda cluster: heard.set() if cluster == "c1" else None)
        import time
        time.sleep(0.5)  # the listener connection is up
        a.declare("c1", APP, "delete", None)
        assert heard.wait(10)
    finally:
        a.close()
        b.close()


def test_newest_cert_is_the_last_issued_with_its_revocation(store: Store):
    store.ensure_cluster("c9", "acme")
    assert store.newest_cert("c9") is None
    store.insert_cert("aa01", "c9", 2_000_000_000)
    store.insert_cert("aa02", "c9", 2_000_000_100)
    store.insert_cert("bb01", "other", 2_000_000_200)
    assert store.newest_cert("c9") == ("aa02", False)
    store.revoke_cluster("c9")
    assert store.newest_cert("c9") == ("aa02", True)
