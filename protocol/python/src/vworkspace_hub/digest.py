"""Bucketed reconnect digests (docs/protocol.md section 7, *Bucketed digests*).

Pure functions shared by any hub built on this package: the bucket of an
object, the hash of a bucket, and the checks a receiver makes. The session
in this package does not announce ``welcome.digest_buckets`` yet, so agents
send it the whole ``inventory``; these functions are what a hub needs to
compare an ``inventory_summary`` with its own view.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

MIN_BUCKETS = 16
#: 32,768 hashes of 16 bytes keep a summary under 600 KB: it always fits one frame.
MAX_BUCKETS = 32_768
OBJECTS_PER_BUCKET = 8
BUCKET_HASH_LEN = 16
#: More differing buckets than this: ask for the whole inventory instead.
MAX_REQUESTED_BUCKETS = 4096


class DigestError(Exception):
    """A bucketed digest broke the rules; ``kind`` names which (wire code ``digest_error``)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def bucket_count_for(objects: int, max_buckets: int = MAX_BUCKETS) -> int:
    """The reference agent's choice: the smallest power of two holding
    ``objects`` at 8 per bucket, within 16 and ``max_buckets`` (itself capped)."""
    cap = min(max_buckets, MAX_BUCKETS)
    cap = 1 << (cap.bit_length() - 1) if cap > 0 else 0
    cap = max(cap, MIN_BUCKETS)
    want = max(-(-objects // OBJECTS_PER_BUCKET), 1)
    pow2 = 1 << (want - 1).bit_length()
    return min(max(pow2, MIN_BUCKETS), cap)


def valid_bucket_count(count: int, max_buckets: int = MAX_BUCKETS) -> bool:
    return count > 0 and count & (count - 1) == 0 and MIN_BUCKETS <= count <= min(max_buckets, MAX_BUCKETS)


def _key(obj: Mapping[str, str]) -> tuple[bytes, bytes, bytes]:
    return (obj["kind"].encode(), (obj.get("namespace") or "").encode(), obj["name"].encode())


def bucket_of(obj: Mapping[str, str], count: int) -> int:
    """``u32_be(SHA-256(kind 0x00 namespace 0x00 name)[0:4]) mod count``."""
    kind, ns, name = _key(obj)
    d = hashlib.sha256(kind + b"\0" + ns + b"\0" + name).digest()
    return int.from_bytes(d[:4], "big") % count


def entry_line(entry: Mapping) -> bytes:
    """``kind 0x00 namespace 0x00 name 0x00 version 0x00 status_hash 0x0A``."""
    kind, ns, name = _key(entry["object"])
    return b"\0".join([kind, ns, name, str(int(entry["version"])).encode(), entry["status_hash"].encode()]) + b"\n"


def bucket_hashes(entries: Iterable[Mapping], count: int) -> list[bytes]:
    """First 16 bytes of SHA-256 over each bucket's entry lines, sorted bytewise
    by (kind, namespace, name); an empty bucket hashes the empty string."""
    buckets: list[list[Mapping]] = [[] for _ in range(count)]
    for e in entries:
        buckets[bucket_of(e["object"], count)].append(e)
    out = []
    for b in buckets:
        h = hashlib.sha256()
        for e in sorted(b, key=lambda e: _key(e["object"])):
            h.update(entry_line(e))
        out.append(h.digest()[:BUCKET_HASH_LEN])
    return out


def summarize(entries: Iterable[Mapping], count: int) -> dict:
    """An ``inventory_summary`` frame body."""
    return {"type": "inventory_summary", "bucket_count": count, "hashes": bucket_hashes(entries, count)}


def differing_buckets(ours: Sequence[bytes], theirs: Sequence[bytes]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]


def entries_in(entries: Iterable[Mapping], buckets: Sequence[int], count: int) -> list[Mapping]:
    wanted = set(buckets)
    return [e for e in entries if bucket_of(e["object"], count) in wanted]


def check_summary(body: Mapping, max_buckets: int = MAX_BUCKETS) -> None:
    count, hashes = body["bucket_count"], body["hashes"]
    if not valid_bucket_count(count, max_buckets):
        raise DigestError("bucket_count", f"bucket_count {count} is not a power of two from "
                                          f"{MIN_BUCKETS} to {min(max_buckets, MAX_BUCKETS)}")
    if len(hashes) != count:
        raise DigestError("hash_count", f"{len(hashes)} bucket hashes for bucket_count {count}")
    for i, h in enumerate(hashes):
        if len(h) != BUCKET_HASH_LEN:
            raise DigestError("hash_length", f"hash of bucket {i} is {len(h)} bytes, expected {BUCKET_HASH_LEN}")


def check_buckets(buckets: Sequence[int], count: int) -> None:
    if not buckets:
        reason = "is empty"
    elif len(buckets) > min(MAX_REQUESTED_BUCKETS, count):
        reason = "is too long"
    elif any(a >= b for a, b in zip(buckets, buckets[1:])):
        reason = "is not strictly ascending"
    elif any(b >= count for b in buckets):
        reason = "names a bucket at or beyond bucket_count"
    else:
        return
    raise DigestError("bucket_list", f"bucket list {reason}")
