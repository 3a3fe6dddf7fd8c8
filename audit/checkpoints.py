"""Signed checkpoints: the node key vouches for (seq, head hash, Merkle root, time).

A checkpoint is written to the ``checkpoints`` table and appended to ``checkpoints.jsonl``,
the file operators copy off the machine. Someone who rewrites the database can re-chain the
rows, but cannot make the copied checkpoints agree with the rewritten log without the node
key; and a checkpoint signed by another key is refused when the verifier holds the right
public key (``--pubkey``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pai.audit.errors import CheckpointFileError, CheckpointSignatureError, FormatVersionError
from pai.audit.merkle import Frontier
from pai.audit.store import (
    CheckpointRow,
    Head,
    checkpoint_file,
    latest_checkpoint,
    one,
    parquet_events,
    segment_rows,
    segments_dir,
)
from pai.canonical import canonical_bytes
from pai.errors import ConfigError
from pai.fsutil import fsync_dir
from pai.settings import Paths, config_section
from pai.timeutil import format_time, parse_duration, parse_time, utcnow

if TYPE_CHECKING:
    import duckdb
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from pai.keys import PrivateKey

CHECKPOINT_TYPE = "pai-audit-checkpoint"
DEFAULT_EVERY = 10_000
DEFAULT_INTERVAL = "15m"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint whose signature has been checked."""

    seq: int
    head_hash: str
    merkle_root: str
    time: str
    kid: str
    document: dict[str, Any]


@dataclass(frozen=True)
class CheckpointPolicy:
    every: int
    interval: timedelta


def policy(p: Paths) -> CheckpointPolicy:
    """``[audit] checkpoint_every`` (events) and ``checkpoint_interval`` (a duration)."""
    section = config_section("audit", p)
    every = section.get("checkpoint_every", DEFAULT_EVERY)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError("[audit] checkpoint_every must be a positive integer")
    interval = section.get("checkpoint_interval", DEFAULT_INTERVAL)
    if not isinstance(interval, str):
        raise ConfigError('[audit] checkpoint_interval must be a duration such as "15m"')
    return CheckpointPolicy(every, parse_duration(interval, "[audit] checkpoint_interval"))


def sign_checkpoint(
    key: PrivateKey, seq: int, head_hash: str, merkle_root: str, at: datetime
) -> dict[str, Any]:
    from pai.keys import b64e

    body = {
        "type": CHECKPOINT_TYPE,
        "version": 1,
        "kid": key.kid,
        "seq": seq,
        "head_hash": head_hash,
        "merkle_root": merkle_root,
        "time": format_time(at),
    }
    return {"body": body, "signature": b64e(key.sign(canonical_bytes(body)))}


def _hex32(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def parse_checkpoint(doc: Any, where: str) -> dict[str, Any]:
    """The body of a checkpoint document after structural checks (no signature check)."""
    body = doc.get("body") if isinstance(doc, dict) else None
    if not isinstance(body, dict) or not isinstance(doc.get("signature"), str):
        raise CheckpointFileError(f"{where} is not a checkpoint document")
    if body.get("type") != CHECKPOINT_TYPE:
        raise CheckpointFileError(f"{where} is not a checkpoint document")
    if body.get("version") != 1:
        raise FormatVersionError(f"{where} has checkpoint version {body.get('version')!r}")
    seq = body.get("seq")
    if (
        not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 1
        or not _hex32(body.get("head_hash"))
        or not _hex32(body.get("merkle_root"))
        or not isinstance(body.get("kid"), str)
        or not isinstance(body.get("time"), str)
        or set(body) != {"type", "version", "kid", "seq", "head_hash", "merkle_root", "time"}
    ):
        raise CheckpointFileError(f"{where} is a malformed checkpoint")
    return body


def verify_checkpoint(
    doc: Any, public: Ed25519PublicKey, kid: str, where: str = "checkpoint"
) -> Checkpoint:
    """Check one checkpoint's structure and its signature by the key ``kid``."""
    from pai.errors import KeyError_
    from pai.keys import b64d, verify_raw

    body = parse_checkpoint(doc, where)
    seq = int(body["seq"])
    if body["kid"] != kid:
        raise CheckpointSignatureError(
            f"{where} (seq {seq}) is signed by key {body['kid']}, not by {kid}", seq=seq
        )
    try:
        signature = b64d(doc["signature"], "checkpoint signature")
    except KeyError_:
        signature = b""
    if not verify_raw(public, signature, canonical_bytes(body)):
        raise CheckpointSignatureError(
            f"{where} (seq {seq}) has a signature that does not verify: forged or altered",
            seq=seq,
        )
    return Checkpoint(seq, body["head_hash"], body["merkle_root"], body["time"], body["kid"], doc)


def _complete_length(fd: int, size: int) -> int:
    """Length of the file up to and including its last newline."""
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def append_line(path: Path, data: bytes) -> None:
    """Append one line durably. A torn last line (a writer killed mid-write) is cut first."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, _complete_length(fd, size))
        os.write(fd, data + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def read_file(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, document) for every complete line; a torn final line is ignored."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CheckpointFileError(f"cannot read {path}: {exc.strerror}") from None
    lines = data.split(b"\n")
    found: list[tuple[str, dict[str, Any]]] = []
    for number, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            doc = json.loads(line)
        except ValueError:
            raise CheckpointFileError(f"{where} is not JSON") from None
        parse_checkpoint(doc, where)
        found.append((where, doc))
    return found


def _frontier_json(frontier: Frontier) -> str:
    return json.dumps({"size": frontier.size, "nodes": [n.hex() for n in frontier.nodes]})


def _cached_frontier(row: CheckpointRow | None) -> Frontier | None:
    """The frontier stored with a checkpoint, if it still leads to that checkpoint's root."""
    if row is None:
        return None
    try:
        cached = json.loads(row.frontier)
        frontier = Frontier(int(cached["size"]), [bytes.fromhex(n) for n in cached["nodes"]])
        body = json.loads(row.document)["body"]
    except (ValueError, KeyError, TypeError):
        return None
    if frontier.size != row.seq or frontier.root().hex() != body.get("merkle_root"):
        return None
    return frontier


def hashes_after(con: duckdb.DuckDBPyConnection, p: Paths, seq: int) -> list[str]:
    """Hashes of every event above ``seq``, from segments and the hot table, in order."""
    found: list[str] = []
    for segment in segment_rows(con):
        if segment.last_seq > seq:
            found.extend(
                e.hash for e in parquet_events(segments_dir(p) / segment.file) if e.seq > seq
            )
    column = con.execute("SELECT hash FROM events WHERE seq > ? ORDER BY seq", [seq]).fetchnumpy()
    found.extend(column["hash"].tolist())
    return found


def due(con: duckdb.DuckDBPyConnection, top: Head, rule: CheckpointPolicy, now: datetime) -> bool:
    """Whether the automatic policy asks for a checkpoint at ``top``."""
    last = latest_checkpoint(con)
    if top.seq == 0 or (last is not None and last.seq >= top.seq):
        return False
    if top.seq - (last.seq if last else 0) >= rule.every:
        return True
    if last is not None:
        since = parse_time(last.time)
    else:
        first = one(con, "SELECT min(time) FROM events")
        if not first or first[0] is None:
            return False
        since = parse_time(str(first[0]))
    return now - since >= rule.interval


def make_checkpoint(
    con: duckdb.DuckDBPyConnection, p: Paths, top: Head, key: PrivateKey
) -> dict[str, Any] | None:
    """Sign a checkpoint at ``top`` (inside the writer's lock); None when ``top`` has one."""
    last = latest_checkpoint(con)
    if top.seq == 0 or (last is not None and last.seq >= top.seq):
        return None
    frontier = _cached_frontier(last) or Frontier()
    frontier.extend(bytes.fromhex(h) for h in hashes_after(con, p, frontier.size))
    if frontier.size != top.seq:
        raise CheckpointFileError(
            f"the log holds {frontier.size} events but its head is seq {top.seq}",
            seq=min(frontier.size, top.seq) + 1,
            hint="run `pai audit verify`",
        )
    now = utcnow()
    doc = sign_checkpoint(key, top.seq, top.hash, frontier.root().hex(), now)
    line = canonical_bytes(doc)
    append_line(checkpoint_file(p), line)
    con.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
        [top.seq, format_time(now), line.decode(), _frontier_json(frontier)],
    )
    return doc
