"""The tunnel's wire format (docs/protocol.md sections 2, 6, 7, 10, 11).

Every WebSocket message is one MessagePack envelope ``{v, seq, ack, body}``.
Decoding checks the size before parsing, then that the bytes are exactly one
well-formed value nested at most 64 levels deep, then the version, then the
shape of the envelope and of the body. Bodies are returned as plain dicts
whose fields have been type-checked and whose defaults are filled in, so the
session code reads them without further checks. Unknown fields are dropped,
unknown frame types decode to :class:`Unsupported`.

Encoding writes map keys in the order the spec's tables list them (what the
reference encoder does), so the vectors re-encode byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import msgpack

PROTOCOL_VERSION = 1
SUBPROTOCOL_V1 = "vworkspace.v1+msgpack"
TUNNEL_PATH = "/v1/tunnel"

MAX_FRAME_BYTES = 1024 * 1024
MAX_INTENT_PAYLOAD_BYTES = 1024 * 1024 - 4096
MAX_IN_FLIGHT = 64
HEARTBEAT_SECS = 20
IDLE_TIMEOUT_SECS = 60
MAX_HEARTBEAT_SECS = 300
CLOCK_SKEW_SECS = 60
MAX_DEPTH = 64

OBJECT_KINDS = ("ApplicationInstance", "Operation", "Cluster")

HUB_TO_AGENT = frozenset({"welcome", "intent", "resync_request", "cert_issued", "goodbye", "error"})
AGENT_TO_HUB = frozenset({"hello", "intent_ack", "status", "inventory", "inventory_summary", "event", "renew_cert",
                          "goodbye", "error"})
FRAME_TYPES = HUB_TO_AGENT | AGENT_TO_HUB

# section 11.1: code -> (fatal, WebSocket close code)
ERROR_CODES: dict[str, tuple[bool, int | None]] = {
    "malformed_frame": (True, 1002),
    "frame_too_large": (True, 1009),
    "unsupported_version": (True, 1002),
    "unsupported_frame": (False, None),
    "sequence_error": (True, 1002),
    "too_many_in_flight": (True, 1002),
    "unexpected_frame": (True, 1002),
    "unauthorized": (True, 1008),
    "internal": (True, 1011),
    "csr_invalid": (False, None),
    "chunk_error": (True, 1008),
    "digest_error": (True, 1008),
}

# Chunked hello/inventory (section 7, chunking) and the negotiated window (section 6).
MAX_CHUNKS = 16
MAX_CHUNKED_ENTRIES = 200_000
CHUNK_TIMEOUT_SECS = 60
LEGACY_IN_FLIGHT = 32


def close_code(code: str) -> int:
    """The WebSocket close code that follows a fatal ``error`` frame."""
    return ERROR_CODES.get(code, (True, 1002))[1] or 1002


class FrameError(Exception):
    """A frame refused with a stable wire code (section 11.1)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class EncodeError(Exception):
    """A frame that cannot be sent (too large, or not encodable)."""


@dataclass(frozen=True, order=True)
class ObjectRef:
    """``{kind, namespace, name}``; ``namespace`` is ``""`` for a Cluster."""

    kind: str
    namespace: str
    name: str

    def to_wire(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> "ObjectRef":
        return cls(m["kind"], m.get("namespace") or "", m["name"])

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Unsupported:
    """A body whose ``type`` this receiver does not know (answer ``unsupported_frame``)."""

    type_name: str


@dataclass(frozen=True)
class Envelope:
    """One decoded envelope; ``body`` is a checked dict or :class:`Unsupported`."""

    v: int
    seq: int
    ack: int
    body: dict[str, Any] | Unsupported

    @property
    def type(self) -> str:
        return self.body.type_name if isinstance(self.body, Unsupported) else self.body["type"]


# ---- type checks ----------------------------------------------------------

class _Bad(Exception):
    pass


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _uint(bits: int) -> Callable[[Any], Any]:
    hi = (1 << bits) - 1

    def check(x: Any) -> Any:
        if not _is_int(x) or x < 0 or x > hi:
            raise _Bad(f"expected u{bits}")
        return x
    return check


def _i64(x: Any) -> Any:
    if not _is_int(x) or not -(1 << 63) <= x < (1 << 63):
        raise _Bad("expected i64")
    return x


def _str(x: Any) -> Any:
    if not isinstance(x, str):
        raise _Bad("expected str")
    return x


def _bin(x: Any) -> Any:
    if not isinstance(x, bytes):
        raise _Bad("expected bin")
    return x


def _bool(x: Any) -> Any:
    if not isinstance(x, bool):
        raise _Bad("expected bool")
    return x


def is_json_like(x: Any) -> bool:
    """nil, bool, integers, float, str, and arrays/maps (str keys) of those."""
    stack = [x]
    while stack:
        v = stack.pop()
        if v is None or isinstance(v, (bool, int, float, str)):
            continue
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                return False
            stack.extend(v.values())
        else:
            return False
    return True


def _json(x: Any) -> Any:
    if not is_json_like(x):
        raise _Bad("expected a JSON-like value")
    return x


def _objref(x: Any) -> Any:
    if not isinstance(x, dict):
        raise _Bad("ObjectRef must be a map")
    kind = x.get("kind")
    if kind not in OBJECT_KINDS:
        raise _Bad(f"unknown object kind {kind!r}")
    ns = x.get("namespace")
    ns = "" if ns is None else _str(ns)
    return {"kind": kind, "namespace": ns, "name": _str(x.get("name"))}


def _opt(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(x: Any) -> Any:
        return None if x is None else check(x)
    inner.optional = True  # type: ignore[attr-defined]
    return inner


def _list(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(x: Any) -> Any:
        if not isinstance(x, list):
            raise _Bad("expected an array")
        return [check(i) for i in x]
    return inner


def _struct(fields: list[tuple[str, Callable[[Any], Any], Any]]) -> Callable[[Any], Any]:
    """A map with named fields; default ``_REQ`` means required."""
    def inner(x: Any) -> Any:
        if not isinstance(x, dict):
            raise _Bad("expected a map")
        out: dict[str, Any] = {}
        for name, check, default in fields:
            v = x.get(name)
            if v is None:
                if default is _OMIT:
                    continue
                if default is _REQ:
                    if getattr(check, "optional", False):
                        out[name] = None
                        continue
                    raise _Bad(f"field {name!r} missing")
                out[name] = default() if callable(default) else default
                continue
            try:
                out[name] = check(v)
            except _Bad as e:
                raise _Bad(f"{name}: {e}") from None
        return out
    return inner


_REQ = object()
# An optional field that stays absent when absent (fields added within v1,
# so that decoding and re-encoding a frame keeps its bytes).
_OMIT = object()
_chunk = _struct([("index", _uint(32), _REQ), ("count", _uint(32), _REQ)])


def _outcome(x: Any) -> Any:
    if not isinstance(x, dict):
        raise _Bad("outcome must be a map")
    r = x.get("result")
    if r in ("applied", "noop"):
        return {"result": r}
    if r == "rejected":
        return {"result": r, "code": _str(x.get("code")), "message": _str(x.get("message"))}
    raise _Bad(f"unknown outcome {r!r}")


_key_info = _struct([("kid", _str, _REQ), ("public_key_hex", _str, _REQ)])
_condition = _struct([
    ("type", _str, _REQ), ("status", _str, _REQ), ("reason", _str, ""), ("message", _str, ""),
    ("observed_generation", _opt(_i64), None), ("last_transition_time", _opt(_str), None),
])


def _outputs(x: Any) -> Any:
    if not isinstance(x, dict) or not all(isinstance(k, str) for k in x) or not is_json_like(x):
        raise _Bad("outputs must be a map of str to JSON")
    return x


_BODIES: dict[str, Callable[[Any], Any]] = {
    "welcome": _struct([
        ("cluster_id", _str, _REQ), ("org", _str, _REQ), ("server_time", _i64, _REQ),
        ("heartbeat_secs", _uint(32), _REQ), ("idle_timeout_secs", _uint(32), _REQ),
        ("max_frame_bytes", _uint(64), _REQ), ("max_in_flight", _uint(32), _REQ),
        ("signing_keys", _list(_key_info), list),
        ("recovery_window_secs", _uint(64), _OMIT), ("ca_bundle_pem", _str, _OMIT),
        ("max_chunks", _uint(32), _OMIT), ("digest_buckets", _uint(32), _OMIT),
    ]),
    "intent": _struct([("kid", _str, _REQ), ("payload", _bin, _REQ), ("signature", _bin, _REQ)]),
    "resync_request": _struct([("reason", _opt(_str), None), ("objects", _list(_objref), list),
                               ("buckets", _list(_uint(32)), _OMIT)]),
    "cert_issued": _struct([("certificate_pem", _str, _REQ), ("ca_bundle_pem", _str, _REQ)]),
    "goodbye": _struct([("reason", _str, _REQ), ("retry_after_secs", _opt(_uint(32)), None)]),
    "error": _struct([("code", _str, _REQ), ("message", _str, _REQ)]),
    "hello": _struct([
        ("agent_version", _str, _REQ), ("capabilities", _list(_str), list),
        ("applied", _list(_struct([("object", _objref, _REQ), ("version", _uint(64), _REQ)])), list),
        ("max_in_flight", _uint(32), _OMIT), ("chunk", _chunk, _OMIT), ("digest_buckets", _bool, _OMIT),
    ]),
    "intent_ack": _struct([
        ("intent_id", _str, _REQ), ("intent_seq", _uint(64), 0), ("object", _opt(_objref), None),
        ("version", _opt(_uint(64)), None), ("outcome", _outcome, _REQ),
    ]),
    "status": _struct([
        ("object", _objref, _REQ), ("generation", _i64, _REQ), ("observed_generation", _opt(_i64), None),
        ("version", _opt(_uint(64)), None), ("phase", _opt(_str), None),
        ("conditions", _list(_condition), list), ("outputs", _outputs, dict),
        ("hash", _str, _REQ), ("deleted", _bool, False),
    ]),
    "inventory": _struct([
        ("objects", _list(_struct([
            ("object", _objref, _REQ), ("version", _uint(64), _REQ), ("status_hash", _str, _REQ),
        ])), list),
        ("chunk", _chunk, _OMIT), ("buckets", _list(_uint(32)), _OMIT),
    ]),
    "inventory_summary": _struct([("bucket_count", _uint(32), _REQ), ("hashes", _list(_bin), _REQ)]),
    "event": _struct([
        ("time", _i64, _REQ), ("severity", _str, _REQ), ("reason", _str, _REQ), ("message", _str, _REQ),
        ("object", _opt(_objref), None), ("intent_id", _opt(_str), None),
    ]),
    "renew_cert": _struct([("csr_pem", _str, _REQ)]),
}


# ---- decoding -------------------------------------------------------------

def _depth_ok(value: Any, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)) and v:
            # Like the reference scanner, only containers with children count.
            if d > max_depth:
                return False
            children = v.values() if isinstance(v, dict) else v
            stack.extend((c, d + 1) for c in children)
            if isinstance(v, dict):
                stack.extend((k, d + 1) for k in v if isinstance(k, (list, dict)))
    return True


def unpack_exact(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Exactly one MessagePack value spanning ``data`` (str as str, bin as bytes).

    msgpack bounds every length by the buffer size, so a length claimed inside
    the bytes never allocates more than the bytes that are there.
    """
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (msgpack.ExtraData, msgpack.OutOfData, msgpack.FormatError, msgpack.StackError,
            ValueError, TypeError, UnicodeDecodeError) as e:
        raise FrameError("malformed_frame", type(e).__name__) from None
    if not _depth_ok(value, max_depth):
        raise FrameError("malformed_frame", f"nests deeper than {max_depth} levels")
    return value


def decode(data: bytes, max_frame_bytes: int = MAX_FRAME_BYTES, version: int = PROTOCOL_VERSION) -> Envelope:
    """Decodes one envelope in the order of section 6 rule 5."""
    if len(data) > max_frame_bytes:
        raise FrameError("frame_too_large", f"{len(data)} bytes > {max_frame_bytes}")
    env = unpack_exact(data)
    if not isinstance(env, dict):
        raise FrameError("malformed_frame", "envelope is not a map")
    v = env.get("v")
    if _is_int(v) and v >= 0 and v != version:
        raise FrameError("unsupported_version", str(v))
    try:
        v = _uint(16)(v)
        seq = _uint(64)(env.get("seq"))
        ack = _uint(64)(env.get("ack"))
    except _Bad as e:
        raise FrameError("malformed_frame", f"envelope: {e}") from None
    body = env.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise FrameError("malformed_frame", "body is not a map with a string type")
    t = body["type"]
    check = _BODIES.get(t)
    if check is None:
        return Envelope(v, seq, ack, Unsupported(t))
    try:
        checked = check(body)
    except _Bad as e:
        raise FrameError("malformed_frame", f"{t}: {e}") from None
    return Envelope(v, seq, ack, {"type": t, **checked})


# ---- encoding -------------------------------------------------------------

def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def encode(seq: int, ack: int, body: Mapping[str, Any], max_frame_bytes: int = MAX_FRAME_BYTES,
           version: int = PROTOCOL_VERSION) -> bytes:
    """One envelope; refuses to produce more than ``max_frame_bytes``."""
    try:
        data = pack({"v": version, "seq": seq, "ack": ack, "body": dict(body)})
    except (TypeError, ValueError, OverflowError) as e:
        raise EncodeError(f"frame cannot be encoded: {e}") from None
    if len(data) > max_frame_bytes:
        raise EncodeError(f"encoded frame of {len(data)} bytes exceeds {max_frame_bytes}")
    return data


def welcome(cluster_id: str, org: str, server_time: int, heartbeat_secs: int, idle_timeout_secs: int,
            max_frame_bytes: int, max_in_flight: int, signing_keys: list[dict[str, str]],
            recovery_window_secs: int | None = None, ca_bundle_pem: str | None = None,
            max_chunks: int | None = None) -> dict[str, Any]:
    w = {"type": "welcome", "cluster_id": cluster_id, "org": org, "server_time": server_time,
         "heartbeat_secs": heartbeat_secs, "idle_timeout_secs": idle_timeout_secs,
         "max_frame_bytes": max_frame_bytes, "max_in_flight": max_in_flight,
         "signing_keys": [{"kid": k["kid"], "public_key_hex": k["public_key_hex"]} for k in signing_keys]}
    if recovery_window_secs:
        w["recovery_window_secs"] = recovery_window_secs
    if ca_bundle_pem:
        w["ca_bundle_pem"] = ca_bundle_pem
    if max_chunks is not None:
        w["max_chunks"] = max_chunks
    return w


def intent(kid: str, payload: bytes, signature: bytes) -> dict[str, Any]:
    return {"type": "intent", "kid": kid, "payload": payload, "signature": signature}


def resync_request(reason: str | None, objects: list[ObjectRef]) -> dict[str, Any]:
    return {"type": "resync_request", "reason": reason, "objects": [o.to_wire() for o in objects]}


def cert_issued(certificate_pem: str, ca_bundle_pem: str) -> dict[str, Any]:
    return {"type": "cert_issued", "certificate_pem": certificate_pem, "ca_bundle_pem": ca_bundle_pem}


def goodbye(reason: str, retry_after_secs: int | None) -> dict[str, Any]:
    return {"type": "goodbye", "reason": reason, "retry_after_secs": retry_after_secs}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


class ChunkError(Exception):
    """A chunked frame broke the rules; ``kind`` names which (wire code ``chunk_error``)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ChunkAssembly:
    """Reassembles one kind of chunked frame (one per frame type and connection).

    Memory is bounded by ``max_chunks`` frames of at most ``max_frame_bytes``
    each and by ``max_entries`` in all; the caller owns the deadline.
    """

    def __init__(self, max_chunks: int = MAX_CHUNKS, max_entries: int = MAX_CHUNKED_ENTRIES) -> None:
        self.max_chunks = max_chunks
        self.max_entries = max_entries
        self._pending: tuple[int, int] | None = None  # (count, next index)
        self._entries: list[Any] = []

    @property
    def in_progress(self) -> bool:
        return self._pending is not None

    def reset(self) -> None:
        self._pending = None
        self._entries = []

    def push(self, chunk: Mapping[str, int] | None, entries: list[Any]) -> list[Any] | None:
        """The whole list once the set is complete, ``None`` while chunks are awaited."""
        try:
            return self._push(chunk, entries)
        except ChunkError:
            self.reset()
            raise

    def _push(self, chunk: Mapping[str, int] | None, entries: list[Any]) -> list[Any] | None:
        if chunk is None:
            if self._pending is not None:
                count, expected = self._pending
                raise ChunkError("interrupted", f"unchunked frame while chunk {expected} of {count} is awaited")
            if len(entries) > self.max_entries:
                raise ChunkError("too_many_entries", f"more than {self.max_entries} entries in one chunked frame")
            return entries
        index, count = chunk["index"], chunk["count"]
        if count == 0 or index >= count:
            raise ChunkError("invalid", f"chunk index {index} of count {count} is not valid")
        if count > self.max_chunks:
            raise ChunkError("too_many_chunks", f"{count} chunks announced, at most {self.max_chunks} accepted")
        want_count, expected = self._pending or (count, 0)
        if index != expected or count != want_count:
            raise ChunkError("out_of_order", f"expected chunk {expected} of {want_count}, got {index} of {count}")
        if len(self._entries) + len(entries) > self.max_entries:
            raise ChunkError("too_many_entries", f"more than {self.max_entries} entries in one chunked frame")
        self._entries.extend(entries)
        if index + 1 >= count:
            out, self._entries, self._pending = self._entries, [], None
            return out
        self._pending = (count, expected + 1)
        return None


def negotiate(offered: list[str]) -> str | None:
    """The highest version both sides speak (only v1 exists), or None."""
    names = {p.strip() for item in offered for p in item.split(",")}
    return SUBPROTOCOL_V1 if SUBPROTOCOL_V1 in names else None
