#!/usr/bin/env python3
"""Second implementation of vWorkspace protocol v1, checked against protocol/vectors.

Written from docs/protocol.md only: it decodes every frame vector, re-encodes it
byte for byte, refuses every bad frame with the documented error code, verifies
every signed intent (Ed25519 over "vworkspace/intent/v1\\0" || payload bytes, in
the documented check order) and the join-token JWT. Exit status 0 means all
vectors agree with the spec.

Usage: check_vectors.py protocol/vectors
"""

import base64
import binascii
import json
import sys
from pathlib import Path

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hashlib import sha256

PROTOCOL_VERSION = 1
INTENT_PAYLOAD_VERSION = 1
SIGNING_CONTEXT = b"vworkspace/intent/v1\x00"
FRAME_TYPES = {
    "welcome", "intent", "resync_request", "cert_issued", "goodbye", "error",
    "hello", "intent_ack", "status", "inventory", "event", "renew_cert",
}
OBJECT_KINDS = {"ApplicationInstance", "Operation", "Cluster"}
JOIN_AUDIENCE = "vworkspace-enroll"


class Refused(Exception):
    """A frame or intent refused with a stable wire code."""

    def __init__(self, code, detail=""):
        super().__init__(f"{code}: {detail}")
        self.code = code


def unpack_exact(data):
    """One MessagePack value that spans all of `data`; str keys, bin as bytes."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.OutOfData, msgpack.FormatError,
            msgpack.StackError, ValueError, TypeError) as e:
        raise Refused("malformed_frame", repr(e)) from e


def decode_frame(data, max_frame_bytes=1 << 20):
    if len(data) > max_frame_bytes:
        raise Refused("frame_too_large", f"{len(data)} > {max_frame_bytes}")
    env = unpack_exact(data)
    if not isinstance(env, dict):
        raise Refused("malformed_frame", "envelope is not a map")
    v = env.get("v")
    if is_int(v) and v >= 0 and v != PROTOCOL_VERSION:
        raise Refused("unsupported_version", str(v))
    for field in ("v", "seq", "ack"):
        if not is_int(env.get(field)) or env[field] < 0:
            raise Refused("malformed_frame", f"{field} missing or not an unsigned integer")
    body = env.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise Refused("malformed_frame", "body is not a map with a string type")
    if body["type"] == "intent":
        for field in ("payload", "signature"):
            if not isinstance(body.get(field), bytes):
                raise Refused("malformed_frame", f"intent {field} must be bin")
        if not isinstance(body.get("kid"), str):
            raise Refused("malformed_frame", "intent kid must be a string")
    return env


def meaning(value):
    """JSON meaning of decoded MessagePack: bytes become lowercase hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: meaning(v) for k, v in value.items()}
    if isinstance(value, list):
        return [meaning(v) for v in value]
    return value


def key_id(raw):
    return sha256(raw).hexdigest()[:16]


def load_ring(infos):
    ring = {}
    for info in infos:
        raw = bytes.fromhex(info["public_key_hex"])
        assert len(raw) == 32, "public keys are 32 raw bytes"
        assert key_id(raw) == info["kid"], f"kid {info['kid']} does not match its key"
        ring[info["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
    return ring


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def decode_payload(data):
    try:
        p = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - any decode failure is "malformed"
        raise Refused("malformed", repr(e)) from e
    if not isinstance(p, dict):
        raise Refused("malformed", "payload is not a map")
    if is_int(p.get("v")) and p["v"] >= 0 and p["v"] != INTENT_PAYLOAD_VERSION:
        raise Refused("unsupported_version", str(p["v"]))
    checks = {
        "v": is_int, "intent_id": lambda x: isinstance(x, str), "cluster_id": lambda x: isinstance(x, str),
        "org": lambda x: isinstance(x, str), "issued_at": is_int, "expires_at": is_int,
        "version": lambda x: is_int(x) and x >= 0,
    }
    for field, ok in checks.items():
        if not ok(p.get(field)):
            raise Refused("malformed", f"{field} missing or of the wrong type")
    obj = p.get("object")
    if not (isinstance(obj, dict) and obj.get("kind") in OBJECT_KINDS and isinstance(obj.get("name"), str)
            and isinstance(obj.get("namespace", ""), str)):
        raise Refused("malformed", "object is not an ObjectRef")
    action = p.get("action")
    if not (isinstance(action, dict) and (action.get("type") == "delete"
                                          or (action.get("type") == "apply" and "spec" in action))):
        raise Refused("malformed", "action is neither apply{spec} nor delete")
    if action["type"] == "apply" and not json_like(action["spec"]):
        raise Refused("malformed", "spec is not JSON-like")
    return p


def json_like(x, depth=0):
    """nil, bool, int, float, str, and arrays/maps (str keys) of those."""
    if depth > 64:
        return False
    if x is None or isinstance(x, (bool, int, float, str)):
        return True
    if isinstance(x, list):
        return all(json_like(i, depth + 1) for i in x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and json_like(v, depth + 1) for k, v in x.items())
    return False


def verify_intent(body, ring, ctx):
    """docs/protocol.md, "Verifying an intent": the checks in their normative order."""
    payload, signature, kid = body["payload"], body["signature"], body["kid"]
    if len(payload) > ctx["max_payload_bytes"]:
        raise Refused("oversized")
    key = ring.get(kid)
    if key is None:
        raise Refused("unknown_key", kid)
    if len(signature) != 64:
        raise Refused("bad_signature")
    try:
        key.verify(signature, SIGNING_CONTEXT + payload)
    except InvalidSignature as e:
        raise Refused("bad_signature") from e
    p = decode_payload(payload)
    if p["cluster_id"] != ctx["cluster_id"] or (ctx.get("org") is not None and p["org"] != ctx["org"]):
        raise Refused("foreign_cluster")
    if p["expires_at"] < p["issued_at"]:
        raise Refused("malformed", "expires_at before issued_at")
    skew = max(ctx["clock_skew_secs"], 0)
    if ctx["now"] > p["expires_at"] + skew:
        raise Refused("expired")
    if p["issued_at"] > ctx["now"] + skew:
        raise Refused("not_yet_valid")
    applied = ctx.get("applied_version")
    if applied is not None and p["version"] <= applied:
        raise Refused("replayed")
    return p


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def check_frames(doc):
    types = set()
    for v in doc["vectors"]:
        data = bytes.fromhex(v["hex"])
        env = decode_frame(data)
        assert meaning(env) == v["decoded"], f"{v['name']}: decoded meaning differs"
        assert msgpack.packb(env, use_bin_type=True) == data, f"{v['name']}: re-encoding is not byte-exact"
        assert env["body"]["type"] in FRAME_TYPES, v["name"]
        types.add(env["body"]["type"])
    missing = FRAME_TYPES - types
    assert not missing, f"no vector for frame types {sorted(missing)}"
    for v in doc["forward_compat"]:
        env = decode_frame(bytes.fromhex(v["hex"]))
        if "unsupported_type" in v["expect"]:
            assert env["body"]["type"] not in FRAME_TYPES
            assert env["body"]["type"] == v["expect"]["unsupported_type"], v["name"]
            assert env["seq"] == v["expect"]["seq"], v["name"]
        else:
            want = v["expect"]["decoded"]
            # Unknown fields are ignored: every known field matches, extra ones are dropped.
            assert {k: env[k] for k in want if k != "body"} == {k: want[k] for k in want if k != "body"}
            assert all(env["body"][k] == want["body"][k] for k in want["body"]), v["name"]
    return len(doc["vectors"]) + len(doc["forward_compat"])


def check_intents(doc):
    assert bytes.fromhex(doc["signing_context_hex"]) == SIGNING_CONTEXT
    ring = load_ring(doc["keys"])
    load_ring(doc["untrusted_keys"])
    outcomes = set()
    for v in doc["vectors"]:
        env = decode_frame(bytes.fromhex(v["frame_hex"]))
        body = env["body"]
        assert body["type"] == "intent"
        assert body["kid"] == v["kid"]
        assert body["payload"].hex() == v["payload_hex"] and body["signature"].hex() == v["signature_hex"]
        assert (SIGNING_CONTEXT + body["payload"]).hex() == v["signing_input_hex"], v["name"]
        try:
            p = verify_intent(body, ring, v["context"])
            got = "ok"
            assert p == v["payload"], f"{v['name']}: payload meaning differs"
        except Refused as r:
            got = {"rejected": r.code}
        assert got == v["expect"], f"{v['name']}: expected {v['expect']}, got {got}"
        outcomes.add(got if got == "ok" else got["rejected"])
    want = {"ok", "bad_signature", "unknown_key", "foreign_cluster", "expired", "not_yet_valid", "replayed",
            "oversized", "unsupported_version", "malformed"}
    assert want <= outcomes, f"missing outcomes {sorted(want - outcomes)}"
    return len(doc["vectors"])


def check_decode_errors(doc):
    for v in doc["vectors"]:
        try:
            decode_frame(bytes.fromhex(v["hex"]), v["max_frame_bytes"])
        except Refused as r:
            assert r.code == v["expect_error"], f"{v['name']}: expected {v['expect_error']}, got {r.code}"
        else:
            raise AssertionError(f"{v['name']}: decoded but must be refused with {v['expect_error']}")
    return len(doc["vectors"])


def check_join_token(doc):
    token = doc["token"]
    header_b64, claims_b64, sig_b64 = token.split(".")
    header = json.loads(b64url(header_b64))
    claims = json.loads(b64url(claims_b64))
    assert header["alg"] == "EdDSA" and header["kid"] == doc["key"]["kid"]
    key = load_ring([doc["key"]])[header["kid"]]
    try:
        key.verify(b64url(sig_b64), f"{header_b64}.{claims_b64}".encode("ascii"))
    except InvalidSignature as e:
        raise AssertionError("join token signature does not verify") from e
    assert claims == doc["claims"]
    assert claims["aud"] == JOIN_AUDIENCE
    assert claims["hub_url"].startswith("https://")
    assert len(claims["ca_sha256"]) == 64 and int(claims["ca_sha256"], 16) >= 0
    assert claims["iat"] - 60 <= doc["now"] <= claims["exp"] + 60
    assert 0 < claims["exp"] - claims["iat"] <= 24 * 3600
    return 1


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[1])
    checks = {
        "frames.json": check_frames,
        "intents.json": check_intents,
        "decode_errors.json": check_decode_errors,
        "join_token.json": check_join_token,
    }
    found = sorted(p.name for p in root.glob("*.json"))
    unknown = set(found) - set(checks)
    if unknown:
        print(f"no checker for vector files {sorted(unknown)}", file=sys.stderr)
        return 1
    total = 0
    for name, check in checks.items():
        path = root / name
        if not path.exists():
            print(f"missing vector file {path}", file=sys.stderr)
            return 1
        n = check(json.loads(path.read_text()))
        print(f"ok  {name}: {n} vectors")
        total += n
    print(f"all {total} vectors agree with the spec")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (AssertionError, Refused, binascii.Error) as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
