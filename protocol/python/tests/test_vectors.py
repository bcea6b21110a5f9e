"""Every vector in protocol/vectors/ checked through the package."""

from __future__ import annotations

import msgpack
import pytest

from conftest import vectors
from vworkspace_hub import intents, join_token, wire
from vworkspace_hub.intents import IntentRejected, SIGNING_CONTEXT, load_public_ring


def meaning(value):
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: meaning(v) for k, v in value.items()}
    if isinstance(value, list):
        return [meaning(v) for v in value]
    return value


def test_vector_files_are_all_known():
    assert sorted(p.name for p in __import__("conftest").VECTORS.glob("*.json")) == [
        "chunks.json", "decode_errors.json", "digest.json", "frames.json", "intents.json", "join_token.json",
        "recovery.json"]


FRAMES = vectors("frames.json")


@pytest.mark.parametrize("v", FRAMES["vectors"], ids=lambda v: v["name"])
def test_frame_decodes_to_its_meaning_and_reencodes_byte_for_byte(v):
    data = bytes.fromhex(v["hex"])
    env = wire.decode(data)
    assert env.type in wire.FRAME_TYPES
    decoded = {"v": env.v, "seq": env.seq, "ack": env.ack, "body": env.body}
    assert meaning(decoded) == v["decoded"]
    # The package's encoder writes the same bytes (table order, shortest ints).
    assert wire.encode(env.seq, env.ack, env.body) == data


def test_every_frame_type_has_a_vector():
    # inventory_summary, added within v1, has its vectors in digest.json.
    all_frames = FRAMES["vectors"] + vectors("digest.json")["frames"]
    assert {wire.decode(bytes.fromhex(v["hex"])).type for v in all_frames} == wire.FRAME_TYPES


@pytest.mark.parametrize("v", FRAMES["forward_compat"], ids=lambda v: v["name"])
def test_forward_compatibility(v):
    env = wire.decode(bytes.fromhex(v["hex"]))
    if "unsupported_type" in v["expect"]:
        assert isinstance(env.body, wire.Unsupported)
        assert env.body.type_name == v["expect"]["unsupported_type"]
        assert env.seq == v["expect"]["seq"]
    else:
        want = v["expect"]["decoded"]
        assert (env.v, env.seq, env.ack) == (want["v"], want["seq"], want["ack"])
        assert env.body == want["body"]


@pytest.mark.parametrize("v", vectors("decode_errors.json")["vectors"], ids=lambda v: v["name"])
def test_bad_frames_are_refused_with_their_code(v):
    with pytest.raises(wire.FrameError) as e:
        wire.decode(bytes.fromhex(v["hex"]), v["max_frame_bytes"])
    assert e.value.code == v["expect_error"]


INTENTS = vectors("intents.json")


def test_signing_context_and_key_ids():
    assert bytes.fromhex(INTENTS["signing_context_hex"]) == SIGNING_CONTEXT
    ring = load_public_ring(INTENTS["keys"])
    assert len(ring) == len(INTENTS["keys"])
    load_public_ring(INTENTS["untrusted_keys"])
    bad = dict(INTENTS["keys"][0], kid="0000000000000000")
    with pytest.raises(intents.KeyRingError):
        load_public_ring([bad])


@pytest.mark.parametrize("v", INTENTS["vectors"], ids=lambda v: v["name"])
def test_intent_vectors_verify_as_specified(v):
    ring = load_public_ring(INTENTS["keys"])
    env = wire.decode(bytes.fromhex(v["frame_hex"]))
    body = env.body
    assert body["type"] == "intent" and body["kid"] == v["kid"]
    assert body["payload"].hex() == v["payload_hex"] and body["signature"].hex() == v["signature_hex"]
    assert (SIGNING_CONTEXT + body["payload"]).hex() == v["signing_input_hex"]
    ctx = v["context"]
    try:
        result, p = intents.verify_intent(body, ring, cluster_id=ctx["cluster_id"], org=ctx.get("org"),
                                          now=ctx["now"], applied_version=ctx.get("applied_version"),
                                          applied_intent_id=ctx.get("applied_intent_id"),
                                          skew=ctx["clock_skew_secs"], max_payload_bytes=ctx["max_payload_bytes"])
        got = result if result != "ok" else "ok"
        if got == "ok":
            assert p == v["payload"]
    except IntentRejected as r:
        got = {"rejected": r.code}
    assert got == v["expect"]


def test_intent_vectors_cover_every_outcome():
    outcomes = {v["expect"] if isinstance(v["expect"], str) else v["expect"]["rejected"] for v in INTENTS["vectors"]}
    assert {"ok", "bad_signature", "unknown_key", "foreign_cluster", "expired", "not_yet_valid", "replayed",
            "oversized", "unsupported_version", "malformed"} <= outcomes


def test_the_package_signs_valid_vector_payloads_into_identical_frames_shape():
    """Re-signing a valid vector's payload with a package key gives a frame the
    package's verifier accepts; the payload bytes re-encode identically."""
    v = next(v for v in INTENTS["vectors"] if v["name"] == "valid_apply")
    p = msgpack.unpackb(bytes.fromhex(v["payload_hex"]), raw=False)
    assert wire.pack(p).hex() == v["payload_hex"]
    key = intents.SigningKey.generate()
    signed = intents.sign_payload(key, p)
    assert signed.payload.hex() == v["payload_hex"]
    ctx = v["context"]
    result, _ = intents.verify_intent(signed.frame(), {key.kid: key.public_raw}, cluster_id=ctx["cluster_id"],
                                      org=ctx["org"], now=ctx["now"])
    assert result == "ok"


def test_join_token_vector_verifies_through_the_package():
    doc = vectors("join_token.json")
    ring = load_public_ring([doc["key"]])
    tok = join_token.verify(doc["token"], ring, now=doc["now"])
    assert tok.claims.to_json() == doc["claims"]
    assert "eyJ" not in repr(tok) and doc["token"] not in str(tok)
    # The agent's parse accepts it too; a later clock refuses it as expired.
    assert join_token.parse(doc["token"], now=doc["now"]).claims == tok.claims
    with pytest.raises(join_token.JoinTokenError) as e:
        join_token.verify(doc["token"], ring, now=doc["claims"]["exp"] + 61)
    assert e.value.code == "token_expired"
    # A flipped signature byte is token_invalid.
    head, claims, sig = doc["token"].split(".")
    forged = f"{head}.{claims}.{'A' if sig[0] != 'A' else 'B'}{sig[1:]}"
    with pytest.raises(join_token.JoinTokenError) as e:
        join_token.verify(forged, ring, now=doc["now"])
    assert e.value.code == "token_invalid"


RECOVERY = vectors("recovery.json")


def test_recovery_signing_input_is_built_from_the_digests():
    from vworkspace_hub.recovery import RECOVERY_CONTEXT
    assert RECOVERY["context_hex"] == RECOVERY_CONTEXT.hex()
    assert RECOVERY["signing_input_hex"] == (
        RECOVERY_CONTEXT.hex() + RECOVERY["certificate_sha256_hex"] + RECOVERY["csr_sha256_hex"])


@pytest.mark.parametrize("p", RECOVERY["proofs"], ids=lambda p: p["name"])
def test_recovery_proofs(p):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from vworkspace_hub.recovery import RecoveryRefused, verify_proof
    key = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(RECOVERY["public_key_hex"]))
    data = bytes.fromhex(RECOVERY["signing_input_hex"])
    if p["valid"]:
        verify_proof(key, data, bytes.fromhex(p["proof_hex"]))
    else:
        with pytest.raises(RecoveryRefused) as e:
            verify_proof(key, data, bytes.fromhex(p["proof_hex"]))
        assert e.value.code == "recovery_refused"


def test_recovery_window():
    from vworkspace_hub.recovery import DEFAULT_RECOVERY_WINDOW_SECS, RecoveryRefused, check_window
    assert DEFAULT_RECOVERY_WINDOW_SECS == RECOVERY["default_recovery_window_secs"]
    check_window(1000, 1000 + DEFAULT_RECOVERY_WINDOW_SECS)
    with pytest.raises(RecoveryRefused) as e:
        check_window(1000, 1001 + DEFAULT_RECOVERY_WINDOW_SECS)
    assert e.value.code == "recovery_window_passed"


CHUNKS = vectors("chunks.json")


@pytest.mark.parametrize("v", CHUNKS["frames"], ids=lambda v: v["name"])
def test_chunked_frames_decode_and_reencode_byte_for_byte(v):
    data = bytes.fromhex(v["hex"])
    env = wire.decode(data)
    assert meaning({"v": env.v, "seq": env.seq, "ack": env.ack, "body": env.body}) == v["decoded"]
    assert wire.encode(env.seq, env.ack, env.body) == data


@pytest.mark.parametrize("case", CHUNKS["assembly"], ids=lambda c: c["name"])
def test_chunk_assembly_follows_the_vectors(case):
    a = wire.ChunkAssembly(case["max_chunks"], case["max_entries"])
    for step in case["steps"]:
        try:
            out = a.push(step["chunk"], step["entries"])
            got = "pending" if out is None else {"complete": out}
        except wire.ChunkError as e:
            got = {"error": e.kind}
        assert got == step["expect"], case["name"]


def test_chunk_defaults_match_the_package():
    d = CHUNKS["defaults"]
    assert (d["max_chunks"], d["max_entries"], d["timeout_secs"]) == (
        wire.MAX_CHUNKS, wire.MAX_CHUNKED_ENTRIES, wire.CHUNK_TIMEOUT_SECS)
    assert wire.ERROR_CODES["chunk_error"] == (True, 1008)


DIGEST = vectors("digest.json")


@pytest.mark.parametrize("v", DIGEST["frames"], ids=lambda v: v["name"])
def test_digest_frames_decode_and_reencode_byte_for_byte(v):
    data = bytes.fromhex(v["hex"])
    env = wire.decode(data)
    assert meaning({"v": env.v, "seq": env.seq, "ack": env.ack, "body": env.body}) == v["decoded"]
    assert wire.encode(env.seq, env.ack, env.body) == data


def test_buckets_and_bucket_hashes_follow_the_vectors():
    import hashlib
    from vworkspace_hub import digest
    for o in DIGEST["objects"]:
        pre = bytes.fromhex(o["preimage_hex"])
        assert hashlib.sha256(pre).hexdigest() == o["sha256_hex"]
        assert digest.bucket_of(o["object"], 16) == o["bucket_16"]
        assert digest.bucket_of(o["object"], 1024) == o["bucket_1024"]
    count = DIGEST["bucket_count"]
    for b in DIGEST["buckets"]:
        hashed = bytes.fromhex(b["hashed_hex"])
        assert hashlib.sha256(hashed).digest()[:16].hex() == b["hash_hex"]
        for obj in b["entries"]:
            assert digest.bucket_of(obj, count) == b["bucket"]
    # Rebuild the entries from the hashed lines and hash them the package's way.
    entries = []
    for b in DIGEST["buckets"]:
        for line in bytes.fromhex(b["hashed_hex"]).split(b"\n")[:-1]:
            kind, ns, name, version, status_hash = line.split(b"\0")
            entries.append({"object": {"kind": kind.decode(), "namespace": ns.decode(), "name": name.decode()},
                            "version": int(version), "status_hash": status_hash.decode()})
    ours = digest.bucket_hashes(entries, count)
    assert [h.hex() for h in ours] == [b["hash_hex"] for b in DIGEST["buckets"]]
    summary = next(f for f in DIGEST["frames"] if f["name"] == "inventory_summary")
    assert summary["decoded"]["body"]["hashes"] == [h.hex() for h in ours]
    assert digest.summarize(entries, count)["hashes"] == ours


def test_a_changed_status_changes_exactly_its_bucket():
    from vworkspace_hub import digest
    entries = [{"object": {"kind": "ApplicationInstance", "namespace": f"team-{i % 20:02}", "name": f"app-{i:05}"},
                "version": i + 1, "status_hash": f"{i:016x}"} for i in range(2000)]
    count = digest.bucket_count_for(len(entries))
    assert count == 256
    before = digest.bucket_hashes(entries, count)
    changed = [dict(e) for e in entries]
    changed[7] = dict(changed[7], status_hash="changed")
    diff = digest.differing_buckets(before, digest.bucket_hashes(changed, count))
    assert diff == [digest.bucket_of(entries[7]["object"], count)]
    assert entries[7]["object"] in [e["object"] for e in digest.entries_in(changed, diff, count)]


@pytest.mark.parametrize("case", DIGEST["summaries"], ids=lambda c: c["name"])
def test_digest_summaries_are_checked_as_specified(case):
    from vworkspace_hub import digest
    body = {"bucket_count": case["bucket_count"], "hashes": [bytes(n) for n in case["hash_lengths"]]}
    try:
        digest.check_summary(body, digest.MAX_BUCKETS)
        got = "ok"
    except digest.DigestError as e:
        got = {"error": e.kind}
    assert got == case["expect"]


@pytest.mark.parametrize("case", DIGEST["bucket_lists"], ids=lambda c: c["name"])
def test_digest_bucket_lists_are_checked_as_specified(case):
    from vworkspace_hub import digest
    try:
        digest.check_buckets(case["buckets"], case["bucket_count"])
        got = "ok"
    except digest.DigestError as e:
        got = {"error": e.kind}
    assert got == case["expect"]


def test_digest_defaults_match_the_package():
    from vworkspace_hub import digest
    lim = DIGEST["limits"]
    assert (lim["min_buckets"], lim["max_buckets"], lim["hash_len"], lim["max_requested_buckets"]) == (
        digest.MIN_BUCKETS, digest.MAX_BUCKETS, digest.BUCKET_HASH_LEN, digest.MAX_REQUESTED_BUCKETS)
    for c in DIGEST["bucket_count_for"]:
        assert digest.bucket_count_for(c["objects"], c["max"]) == c["count"], c
    assert wire.ERROR_CODES["digest_error"] == (True, 1008)
