"""Inclusion proofs: one event, its RFC 9162 audit path, and the signed checkpoint it leads to.

An auditor holding only the node's public key checks that the event is, unchanged, the
``seq``-th entry of the log the node signed, without seeing any other event.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pai.audit.chain import Event, body_bytes, details_text
from pai.audit.checkpoints import make_checkpoint, verify_checkpoint
from pai.audit.errors import CheckpointMismatchError, ProofError
from pai.audit.merkle import inclusion_path, leaf_hash, root_from_path, root_of
from pai.audit.store import head, open_log, parquet_events, segments_dir
from pai.audit.verify import snapshot
from pai.errors import NotFoundError, UsageError
from pai.settings import Paths

PROOF_TYPE = "pai-audit-proof"


def checkpoint_now(p: Paths) -> tuple[dict[str, Any], bool]:
    """Sign a checkpoint at the head; returns (checkpoint, made). Reuses one at the head."""
    from pai.keyring import node_key

    key = node_key(p)
    with open_log(p, write=True) as con:
        top = head(con)
        if top.seq == 0:
            raise UsageError("the audit log is empty; there is nothing to checkpoint")
        doc = make_checkpoint(con, p, top, key)
        if doc is not None:
            return doc, True
        row = con.execute("SELECT document FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchall()
        return json.loads(row[0][0]), False


def _all_events(p: Paths) -> tuple[list[Event], list[dict[str, Any]]]:
    snap = snapshot(p)
    events: list[Event] = []
    for row in snap.segments:
        events.extend(parquet_events(segments_dir(p) / row.file))
    events.extend(snap.hot)
    return events, [json.loads(row.document) for row in snap.checkpoints]


def prove(p: Paths, seq: int) -> dict[str, Any]:
    """An inclusion proof for event ``seq`` against the newest checkpoint that covers it."""
    events, checkpoints = _all_events(p)
    if not 1 <= seq <= len(events) or events[seq - 1].seq != seq:
        raise NotFoundError(f"there is no event {seq} in the audit log ({len(events)} events)")
    covering = [c for c in checkpoints if c["body"]["seq"] >= seq]
    if not covering:
        checkpoint_now(p)
        events, checkpoints = _all_events(p)
        covering = [c for c in checkpoints if c["body"]["seq"] >= seq]
    checkpoint = max(covering, key=lambda c: int(c["body"]["seq"]))
    size = int(checkpoint["body"]["seq"])
    leaves = [leaf_hash(bytes.fromhex(e.hash)) for e in events[:size]]
    if root_of(leaves).hex() != checkpoint["body"]["merkle_root"]:
        raise CheckpointMismatchError(
            f"the log does not match its checkpoint at seq {size}",
            seq=size,
            hint="run `pai audit verify`",
        )
    return {
        "type": PROOF_TYPE,
        "version": 1,
        "event": events[seq - 1].record(),
        "leaf_index": seq - 1,
        "tree_size": size,
        "audit_path": [node.hex() for node in inclusion_path(leaves, seq - 1)],
        "checkpoint": checkpoint,
    }


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProofError(f"the proof's {name} is missing or malformed")
    return value


def check_proof(doc: Any, pubkey: Path) -> dict[str, Any]:
    """Verify a proof with only the node public key; raises the failed check's error."""
    from pai.keys import load_public

    public, key_doc = load_public(pubkey)
    if not isinstance(doc, dict) or doc.get("type") != PROOF_TYPE:
        raise ProofError("this is not a pai audit inclusion proof")
    if doc.get("version") != 1:
        raise ProofError(f"proof version {doc.get('version')!r} is not supported")
    checkpoint = verify_checkpoint(
        doc.get("checkpoint"), public, str(key_doc["kid"]), "the proof's checkpoint"
    )
    event = _field(doc, "event", dict)
    index = _field(doc, "leaf_index", int)
    size = _field(doc, "tree_size", int)
    path = _field(doc, "audit_path", list)
    if size != checkpoint.seq:
        raise ProofError(
            f"the proof claims a tree of {size} events; its checkpoint signs {checkpoint.seq}"
        )
    try:
        seq = event["seq"]
        body = body_bytes(
            seq,
            event["time"],
            event["actor"],
            event["action"],
            event["resource"],
            event["outcome"],
            details_text(event["details"]),
        )
        digest = hashlib.sha256(bytes.fromhex(event["prev_hash"]) + body).digest()
        siblings = [bytes.fromhex(node) for node in path]
    except (KeyError, TypeError, ValueError, UsageError):
        raise ProofError("the proof's event or audit path is malformed") from None
    if not isinstance(seq, int) or digest.hex() != event.get("hash"):
        raise ProofError("the event in the proof was altered: its hash does not match")
    if index != seq - 1:
        raise ProofError(
            f"the proof puts event {seq} at leaf index {index}; it belongs at {seq - 1}"
        )
    root = root_from_path(leaf_hash(digest), index, size, siblings)
    if root is None:
        raise ProofError(
            f"the audit path has {len(siblings)} hashes, which cannot be a path to leaf "
            f"{index} of a tree of {size}"
        )
    if root.hex() != checkpoint.merkle_root:
        raise ProofError("the audit path does not lead to the signed Merkle root")
    return {
        "ok": True,
        "seq": seq,
        "event_hash": digest.hex(),
        "tree_size": size,
        "merkle_root": checkpoint.merkle_root,
        "checkpoint_time": checkpoint.time,
        "signer_kid": checkpoint.kid,
    }
