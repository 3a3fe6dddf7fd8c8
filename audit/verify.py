"""Verifying the audit log, in the order documented in docs/formats/audit.md.

1. the public key loads (``key``);
2. every checkpoint (database, checkpoint file, ``--checkpoints`` copies) is well formed
   (``audit-checkpoint-file``) and signed by that key (``audit-checkpoint-signature``);
3. every sealed segment's manifest is signed by that key and its file is intact
   (``audit-segment``);
4. one walk over all events, segments first, in sequence order, checking at each row:
   the sequence number (``audit-sequence``), the row's hash (``audit-hash``), the link to its
   predecessor (``audit-chain``), time order (``audit-time``), and any checkpoint at that
   sequence number: head hash and Merkle root (``audit-checkpoint-mismatch``);
5. no checkpoint lies beyond the last event (``audit-truncated``).

The first failure stops verification and names the first bad sequence number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pai.audit.chain import GENESIS, Event
from pai.audit.chain import _enc as _enc
from pai.audit.checkpoints import Checkpoint, read_file, verify_checkpoint
from pai.audit.errors import (
    ChainLinkError,
    CheckpointMismatchError,
    EventHashError,
    SegmentError,
    SequenceError,
    TimeOrderError,
    TruncatedError,
)
from pai.audit.merkle import Frontier
from pai.audit.store import (
    CheckpointRow,
    SegmentRow,
    checkpoint_file,
    checkpoint_rows,
    hot_events,
    open_log,
    parquet_events,
    segment_rows,
    segments_dir,
)
from pai.errors import KeyError_, NotFoundError
from pai.settings import Paths

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


@dataclass(frozen=True)
class Snapshot:
    """What the database held at one moment, read under the shared lock."""

    segments: list[SegmentRow]
    hot: list[Event]
    checkpoints: list[CheckpointRow]


def snapshot(p: Paths) -> Snapshot:
    """Read segments, hot events and checkpoints in one short locked session."""
    with open_log(p, write=False) as con:
        return Snapshot(segment_rows(con), hot_events(con), checkpoint_rows(con))


@dataclass
class VerifyResult:
    """What a successful verification established (also shown in reports)."""

    events: int = 0
    head_hash: str = GENESIS
    head_time: str = ""
    kid: str | None = None
    checkpoints: int = 0
    latest_checkpoint: dict[str, Any] | None = None
    segments: int = 0
    sealed_events: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "events": self.events,
            "head_seq": self.events,
            "head_hash": self.head_hash,
            "head_time": self.head_time,
            "signer_kid": self.kid,
            "checkpoints": self.checkpoints,
            "latest_checkpoint": self.latest_checkpoint,
            "segments": self.segments,
            "sealed_events": self.sealed_events,
            "warnings": self.warnings,
        }


def load_key(p: Paths, pubkey: Path | None) -> tuple[Ed25519PublicKey, str] | None:
    """The node's public key: ``pubkey`` if given, else ``keys/node.pub`` if present."""
    from pai.keys import load_public

    path = pubkey or p.keys / "node.pub"
    if pubkey is None and not path.exists():
        return None
    public, doc = load_public(path)
    return public, str(doc["kid"])


def collect_checkpoints(
    p: Paths, snap: Snapshot, extra_files: list[Path], key: tuple[Ed25519PublicKey, str] | None
) -> dict[int, list[Checkpoint]]:
    """Every distinct checkpoint from the database and the files, signature-checked."""
    sources: list[tuple[str, Any]] = []
    for row in snap.checkpoints:
        try:
            sources.append((f"database checkpoint {row.seq}", json.loads(row.document)))
        except ValueError:
            sources.append((f"database checkpoint {row.seq}", None))
    for file in [checkpoint_file(p), *extra_files]:
        if file in extra_files and not file.exists():
            raise NotFoundError(f"checkpoint file {file} does not exist")
        sources.extend(read_file(file))
    found: dict[int, list[Checkpoint]] = {}
    seen: set[str] = set()
    for where, doc in sources:
        if key is None:
            raise KeyError_(
                f"{where} needs the node public key to be checked",
                hint="pass --pubkey node.pub (keys/node.pub of the node)",
            )
        checkpoint = verify_checkpoint(doc, key[0], key[1], where)
        text = json.dumps(doc, sort_keys=True)
        if text in seen:
            continue
        seen.add(text)
        found.setdefault(checkpoint.seq, []).append(checkpoint)
    return found


def verify_segment(
    p: Paths, row: SegmentRow, key: tuple[Ed25519PublicKey, str] | None
) -> list[Event]:
    """A sealed segment's events after its manifest and file have been checked."""
    from pai.audit.seal import check_manifest

    if key is None:
        raise KeyError_(
            f"segment {row.file} needs the node public key to be checked",
            hint="pass --pubkey node.pub",
        )
    manifest = check_manifest(row.manifest, key[0], key[1], row.first_seq)
    path = segments_dir(p) / row.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SegmentError(
            f"sealed segment {path} cannot be read: {exc.strerror}", seq=row.first_seq
        ) from None
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SegmentError(
            f"sealed segment {row.file} does not match its signed manifest", seq=row.first_seq
        )
    events = parquet_events(path)
    if (
        len(events) != manifest["count"]
        or not events
        or events[0].seq != manifest["first_seq"]
        or events[-1].seq != manifest["last_seq"]
        or events[-1].hash != manifest["last_hash"]
        or row.last_seq != manifest["last_seq"]
        or row.first_seq != manifest["first_seq"]
    ):
        raise SegmentError(
            f"sealed segment {row.file} does not hold the events its manifest lists",
            seq=row.first_seq,
        )
    return events


def walk(
    events: list[Event],
    checkpoints: dict[int, list[Checkpoint]],
    start: int = 1,
    prev_hash: str = GENESIS,
    prev_time: str = "",
    frontier: Frontier | None = None,
) -> tuple[str, str, Frontier]:
    """Check a run of events continuing a chain; returns (head hash, head time, frontier).

    This loop is verification's whole cost, so the event encoding and the Merkle frontier
    update are written out inline (same bytes as :func:`body_bytes` and
    :meth:`Frontier.append`).
    """
    tree = frontier if frontier is not None else Frontier()
    nodes, size = tree.nodes, tree.size
    sha = hashlib.sha256
    enc = _enc
    expected = start
    prev = bytes.fromhex(prev_hash)
    prev_hex = prev_hash
    for event in events:
        seq, time, actor, action, resource, outcome, details, row_prev, row_hash = event
        if seq != expected:
            what = "missing" if seq > expected else "repeated or out of order"
            raise SequenceError(
                f"event {expected} is {what} (found seq {seq} where {expected} belongs)",
                seq=expected,
            )
        body = (
            f'{{"action":{enc(action)},"actor":{enc(actor)},"details":{details},'
            f'"outcome":{enc(outcome)},"resource":{enc(resource)},"seq":{seq},'
            f'"time":{enc(time)}}}'
        ).encode()
        linked = row_prev == prev_hex
        digest = sha((prev if linked else bytes.fromhex(row_prev)) + body).digest()
        digest_hex = digest.hex()
        if digest_hex != row_hash:
            raise EventHashError(f"event {seq} was modified: its hash does not match", seq=seq)
        if not linked:
            raise ChainLinkError(
                f"event {seq} does not follow event {seq - 1}: the chain is broken", seq=seq
            )
        if time < prev_time:
            raise TimeOrderError(f"event {seq} is older than event {seq - 1}", seq=seq)
        node = sha(b"\x00" + digest).digest()
        grown = size
        while grown & 1:
            node = sha(b"\x01" + nodes.pop() + node).digest()
            grown >>= 1
        nodes.append(node)
        size += 1
        if seq in checkpoints:
            tree.size = size
            root = tree.root().hex()
            for checkpoint in checkpoints[seq]:
                if checkpoint.head_hash != digest_hex or checkpoint.merkle_root != root:
                    raise CheckpointMismatchError(
                        f"the signed checkpoint at seq {seq} ({checkpoint.time}) does not match "
                        "the log: events up to it were altered",
                        seq=seq,
                    )
        prev, prev_hex, prev_time = digest, digest_hex, time
        expected += 1
    tree.size = size
    return prev_hex, prev_time, tree


def verify_log(
    p: Paths, *, checkpoint_files: list[Path] | None = None, pubkey: Path | None = None
) -> VerifyResult:
    """Verify everything; raises the AuditError of the first failed check."""
    key = load_key(p, pubkey)
    snap = snapshot(p)
    checkpoints = collect_checkpoints(p, snap, checkpoint_files or [], key)
    result = VerifyResult(kid=key[1] if key else None)
    head, head_time, tree = GENESIS, "", Frontier()
    count = 0
    for row in snap.segments:
        seg = verify_segment(p, row, key)
        head, head_time, tree = walk(seg, checkpoints, count + 1, head, head_time, tree)
        count += len(seg)
        result.segments += 1
        result.sealed_events += len(seg)
    head, head_time, tree = walk(snap.hot, checkpoints, count + 1, head, head_time, tree)
    count += len(snap.hot)
    beyond = [seq for seq in checkpoints if seq > count]
    if beyond:
        worst = max(beyond)
        raise TruncatedError(
            f"the log ends at seq {count} but a signed checkpoint covers {worst} events: "
            f"events {count + 1}..{worst} were removed",
            seq=count + 1,
        )
    result.events = count
    result.head_hash = head
    result.head_time = head_time
    result.checkpoints = sum(len(v) for v in checkpoints.values())
    if checkpoints:
        last = checkpoints[max(checkpoints)][0]
        result.latest_checkpoint = {
            "seq": last.seq,
            "time": last.time,
            "merkle_root": last.merkle_root,
            "head_hash": last.head_hash,
        }
        if last.seq < count:
            result.warnings.append(
                f"events {last.seq + 1}..{count} are after the latest checkpoint; "
                "run `pai audit checkpoint` to sign them"
            )
    elif count:
        result.warnings.append(
            "no signed checkpoint: a cut-off tail cannot be detected; run `pai audit checkpoint`"
        )
    return result
