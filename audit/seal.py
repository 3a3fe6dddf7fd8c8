"""Sealing: moving old events out of the hot table into signed Parquet segments.

A segment is ``segments/seg-<first>-<last>.parquet`` (zstd, the event columns in sequence
order) with a manifest signed by the node key (``.json`` beside it and a copy in the
``segments`` table). Sealing first signs a checkpoint at the head, so the sealed events stay
covered by a signed Merkle root; then it writes the file (temp, fsync, rename), and only then
deletes the events from the hot table and records the segment, in one transaction. A crash
before that transaction leaves an unreferenced file that the next seal overwrites.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pai.audit.checkpoints import make_checkpoint
from pai.audit.errors import FormatVersionError, SegmentError
from pai.audit.store import head, one, open_log, segments_dir
from pai.canonical import canonical_bytes
from pai.fsutil import atomic_write_bytes, fsync_dir
from pai.settings import Paths
from pai.timeutil import format_time, utcnow

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SEGMENT_TYPE = "pai-audit-segment"
_MANIFEST_KEYS = {
    "type",
    "version",
    "kid",
    "file",
    "sha256",
    "size",
    "count",
    "first_seq",
    "last_seq",
    "first_prev_hash",
    "last_hash",
    "first_time",
    "last_time",
    "created",
}


def seal(p: Paths, before: datetime) -> dict[str, Any] | None:
    """Seal every hot event older than ``before``; returns the manifest body, or None."""
    from pai.keyring import node_key

    key = node_key(p)
    cutoff = format_time(before)
    with open_log(p, write=True) as con:
        lo = one(con, "SELECT min(seq) FROM events")[0]
        if lo is None:
            return None
        newer = one(con, "SELECT min(seq) FROM events WHERE time >= ?", [cutoff])[0]
        hi = (
            int(newer) - 1 if newer is not None else int(one(con, "SELECT max(seq) FROM events")[0])
        )
        lo = int(lo)
        if hi < lo:
            return None
        make_checkpoint(con, p, head(con), key)
        folder = segments_dir(p)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"seg-{lo:012d}-{hi:012d}.parquet"
        tmp = folder / f".{name}.tmp"
        target = str(tmp).replace("'", "''")
        con.execute(
            f"COPY (SELECT seq, time, actor, action, resource, outcome, details, prev_hash, hash "
            f"FROM events WHERE seq BETWEEN {lo} AND {hi} ORDER BY seq) "
            f"TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
        )
        data = tmp.read_bytes()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / name)
        fsync_dir(folder)
        first = one(con, "SELECT prev_hash, time FROM events WHERE seq = ?", [lo])
        last = one(con, "SELECT hash, time FROM events WHERE seq = ?", [hi])
        body = {
            "type": SEGMENT_TYPE,
            "version": 1,
            "kid": key.kid,
            "file": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "count": hi - lo + 1,
            "first_seq": lo,
            "last_seq": hi,
            "first_prev_hash": first[0],
            "last_hash": last[0],
            "first_time": first[1],
            "last_time": last[1],
            "created": format_time(utcnow()),
        }
        from pai.keys import b64e

        manifest = canonical_bytes(
            {"body": body, "signature": b64e(key.sign(canonical_bytes(body)))}
        )
        atomic_write_bytes(folder / name.replace(".parquet", ".json"), manifest + b"\n")
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?)",
            [lo, hi, last[0], last[1], name, manifest.decode()],
        )
        con.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", [lo, hi])
        con.execute("COMMIT")
    return body


def check_manifest(text: str, public: Ed25519PublicKey, kid: str, first_seq: int) -> dict[str, Any]:
    """A segment manifest's body after its structure and signature are checked."""
    from pai.keys import verify_raw

    try:
        doc = json.loads(text)
        body = doc["body"]
        signature = doc["signature"]
    except (ValueError, KeyError, TypeError):
        raise SegmentError(
            f"segment at seq {first_seq} has a malformed manifest", seq=first_seq
        ) from None
    if (
        not isinstance(body, dict)
        or body.get("type") != SEGMENT_TYPE
        or set(body) != _MANIFEST_KEYS
    ):
        raise SegmentError(f"segment at seq {first_seq} has a malformed manifest", seq=first_seq)
    if body.get("version") != 1:
        raise FormatVersionError(f"segment at seq {first_seq} has version {body.get('version')!r}")
    from pai.errors import KeyError_
    from pai.keys import b64d

    try:
        raw = b64d(str(signature), "segment signature")
    except KeyError_:
        raw = b""
    if body.get("kid") != kid or not verify_raw(public, raw, canonical_bytes(body)):
        raise SegmentError(
            f"segment {body.get('file')} is not signed by node key {kid}", seq=first_seq
        )
    return body
