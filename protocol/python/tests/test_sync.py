"""The synchronous helpers an Odoo model method calls."""

from __future__ import annotations

import time

import pytest

from vworkspace_hub import MemoryStore, ObjectRef, intents, join_token, sync, wire


def test_issue_token_declare_and_sign_without_an_event_loop():
    hub = sync.open_hub(MemoryStore(), "https://hub.example:8443")
    out = sync.issue_token(hub, "office-berlin", "acme", ttl_secs=900)
    claims = join_token.parse(out["token"]).claims
    assert (claims.cluster, claims.org, claims.jti, claims.exp) == ("office-berlin", "acme", out["jti"], out["expires_at"])
    manifest = {"kind": "ApplicationInstance", "metadata": {"namespace": "team-a", "name": "nc"},
                "spec": {"mode": "placeholder"}}
    first = sync.declare_apply(hub, "office-berlin", manifest)
    second = sync.declare_apply(hub, "office-berlin", manifest)
    gone = sync.declare_delete(hub, "office-berlin", "ApplicationInstance", "team-a", "nc")
    assert [first.version, second.version, gone.version] == [1, 2, 3]
    with pytest.raises(ValueError):
        sync.declare_apply(hub, "office-berlin", {"kind": "Deployment", "metadata": {"name": "x"}, "spec": {}})
    with pytest.raises(ValueError):
        sync.object_of({"kind": "Operation", "metadata": {"name": "x"}})  # namespaced: needs a namespace
    key = hub.intent_keys().current()
    signed = sync.sign_intent(key, cluster_id="office-berlin", org="acme", obj=first.obj, version=first.version,
                              action="apply", spec=first.spec, intent_id=first.id)
    result, p = intents.verify_intent(signed.frame(), {k["kid"]: bytes.fromhex(k["public_key_hex"])
                                                       for k in hub.signing_keys()},
                                      cluster_id="office-berlin", org="acme", now=int(time.time()))
    assert (result, p["intent_id"], p["action"]) == ("ok", first.id, {"type": "apply", "spec": {"mode": "placeholder"}})


def test_parse_status_from_bytes_and_from_a_body():
    body = {"type": "status", "object": ObjectRef("Operation", "team-a", "bk-1").to_wire(), "generation": 2,
            "phase": "Succeeded", "conditions": [{"type": "Succeeded", "status": "True", "reason": "EngineCompleted",
                                                  "observed_generation": 2}],
            "outputs": {"backupName": "bk-1"}, "hash": "abc"}
    from_bytes = sync.parse_status(wire.encode(3, 1, body))
    assert from_bytes == sync.parse_status(body)
    assert from_bytes["phase"] == "Succeeded" and from_bytes["version"] is None and not from_bytes["deleted"]
    assert from_bytes["conditions"] == [{"type": "Succeeded", "status": "True", "reason": "EngineCompleted",
                                         "message": "", "observedGeneration": 2, "lastTransitionTime": None}]
    with pytest.raises(wire.FrameError):
        sync.parse_status(wire.encode(1, 0, {"type": "goodbye", "reason": "x", "retry_after_secs": None}))
