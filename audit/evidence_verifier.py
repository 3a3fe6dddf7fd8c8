#!/usr/bin/env python3
"""Standalone verifier for a pai audit evidence folder (``pai audit export --with-evidence``).

Needs Python 3.11+ and the ``cryptography`` package; pai itself is not needed. The formats are
in pai's docs/formats/audit.md. Checks, in order, each failure ending the run with exit 1:

1. the public key file is well formed and its kid matches the key;
2. every checkpoint is signed by that key;
3. the events form one unbroken chain: consecutive sequence numbers, every hash recomputed,
   every prev_hash linking to its predecessor (to the genesis hash at seq 1), times never
   going backwards; a checkpoint inside the run matches the chain (and, when the run starts
   at seq 1, its Merkle root);
4. the run ends exactly at a signed checkpoint's head hash, so every event in it is committed
   by that signature;
5. the period is covered: the run starts before ``since`` (or at seq 1) and, when ``until``
   is set and an event after it exists, reaches past ``until``;
6. the report holds exactly the events of the period that match the filters, unchanged.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import re
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS = "0" * 64
FIELDS = ["seq", "time", "actor", "action", "resource", "outcome", "details", "prev_hash", "hash"]


class Failed(Exception):
    """A check failed; the message says which and where."""


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_key(path: Path) -> tuple[Ed25519PublicKey, str]:
    try:
        doc = json.loads(path.read_bytes())
        raw = base64.b64decode(doc["public_key"], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Failed(f"public key {path} is unreadable or malformed: {exc}") from None
    kid = hashlib.sha256(raw).hexdigest()[:32]
    if doc.get("kid") != kid:
        raise Failed(f"public key {path}: kid does not match the key")
    return key, kid


def load_checkpoints(path: Path, key: Ed25519PublicKey, kid: str) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
            body = doc["body"]
            signature = base64.b64decode(doc["signature"], validate=True)
            seq = int(body["seq"])
        except (ValueError, KeyError, TypeError):
            raise Failed(f"checkpoints.jsonl line {number} is malformed") from None
        if body.get("type") != "pai-audit-checkpoint" or body.get("version") != 1:
            raise Failed(f"checkpoints.jsonl line {number} is not a version 1 checkpoint")
        if body.get("kid") != kid:
            raise Failed(f"checkpoint at seq {seq} is signed by {body.get('kid')}, not by {kid}")
        try:
            key.verify(signature, canonical(body))
        except InvalidSignature:
            raise Failed(f"checkpoint at seq {seq}: signature does not verify (forged)") from None
        found[seq] = body
    return found


def leaf(event_hash: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + event_hash).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()


def check_chain(events: list[dict[str, Any]], checkpoints: dict[int, dict[str, Any]]) -> None:
    if not events:
        raise Failed("events.jsonl is empty")
    first = events[0]["seq"]
    prev = events[0]["prev_hash"] if first != 1 else GENESIS
    prev_time = ""
    leaves: list[bytes] = []
    for offset, event in enumerate(events):
        seq = event["seq"]
        if seq != first + offset:
            raise Failed(f"event {first + offset} is missing or out of order")
        body = {k: event[k] for k in FIELDS[:7]}
        digest = hashlib.sha256(bytes.fromhex(event["prev_hash"]) + canonical(body)).hexdigest()
        if digest != event["hash"]:
            raise Failed(f"event {seq} was altered: its hash does not match")
        if event["prev_hash"] != prev:
            raise Failed(f"event {seq} does not follow event {seq - 1}: the chain is broken")
        if event["time"] < prev_time:
            raise Failed(f"event {seq} is older than event {seq - 1}")
        leaves.append(leaf(bytes.fromhex(digest)))
        if seq in checkpoints:
            if checkpoints[seq]["head_hash"] != digest:
                raise Failed(f"the signed checkpoint at seq {seq} does not match event {seq}")
            if first == 1 and checkpoints[seq]["merkle_root"] != merkle_root(leaves).hex():
                raise Failed(f"the signed checkpoint at seq {seq} has another Merkle root")
        prev, prev_time = digest, event["time"]


def read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            event = json.loads(line)
        except ValueError:
            raise Failed(f"events.jsonl line {number} is not JSON") from None
        if not isinstance(event, dict) or sorted(event) != sorted(FIELDS):
            raise Failed(f"events.jsonl line {number} is not an event")
        events.append(event)
    return events


def matches(event: dict[str, Any], selection: dict[str, Any]) -> bool:
    since, until = selection.get("since"), selection.get("until")
    return (
        (not since or event["time"] >= since)
        and (not until or event["time"] < until)
        and (selection.get("actor") is None or fnmatchcase(event["actor"], selection["actor"]))
        and (selection.get("action") is None or fnmatchcase(event["action"], selection["action"]))
        and (selection.get("outcome") is None or event["outcome"] == selection["outcome"])
    )


def report_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        for row in rows:
            row["seq"] = int(row["seq"])
            row["details"] = json.loads(row["details"])
        return rows
    if fmt == "html":
        found = re.search(
            r'<script type="application/json" id="pai-audit-events">(.*?)</script>', text, re.S
        )
        if not found:
            raise Failed("the HTML report has no embedded event list")
        embedded: list[dict[str, Any]] = json.loads(found.group(1))
        return embedded
    raise Failed(f"unknown report format {fmt!r}")


def verify(folder: Path, pubkey: Path | None) -> list[str]:
    manifest = json.loads((folder / "evidence.json").read_bytes())
    if manifest.get("type") != "pai-audit-evidence" or manifest.get("version") != 1:
        raise Failed("evidence.json is not a version 1 pai audit evidence manifest")
    key, kid = load_key(pubkey or folder / "node.pub")
    notes = [
        f"node key {kid}" + (" (from this folder: compare it with yours)" if pubkey is None else "")
    ]
    checkpoints = load_checkpoints(folder / "checkpoints.jsonl", key, kid)
    events = read_events(folder / "events.jsonl")
    check_chain(events, checkpoints)
    first, last = events[0], events[-1]
    span = manifest["slice"]
    if (first["seq"], last["seq"]) != (span["first_seq"], span["last_seq"]):
        raise Failed("events.jsonl does not hold the run evidence.json names")
    anchor = checkpoints.get(last["seq"])
    if anchor is None or anchor["head_hash"] != last["hash"]:
        raise Failed(f"no signed checkpoint commits to the last event {last['seq']}")
    notes.append(
        f"events {first['seq']}..{last['seq']} chained to the checkpoint of {anchor['time']}"
    )
    selection = manifest["selection"]
    if selection.get("since") and first["seq"] != 1 and first["time"] >= selection["since"]:
        raise Failed("the events do not reach back to the start of the period")
    if selection.get("until") and last["time"] < selection["until"]:
        notes.append(f"complete up to the checkpoint at {anchor['time']}; later events not covered")
    wanted = [e for e in events if matches(e, selection)]
    if [e["seq"] for e in wanted] != manifest["selected"]:
        raise Failed("evidence.json does not list exactly the matching events")
    rows = report_rows(folder / manifest["report"], manifest["format"])
    if len(rows) != len(wanted):
        raise Failed(f"the report holds {len(rows)} events; the period has {len(wanted)} matching")
    for row, event in zip(rows, wanted, strict=True):
        if {k: row.get(k) for k in FIELDS} != event:
            raise Failed(f"the report's event {row.get('seq')} differs from the signed log")
    notes.append(f"the report holds exactly the {len(wanted)} matching events, unchanged")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify a pai audit evidence folder offline.")
    parser.add_argument("folder", nargs="?", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--pubkey", type=Path, help="node public key obtained independently")
    args = parser.parse_args(argv)
    try:
        notes = verify(args.folder, args.pubkey)
    except Failed as exc:
        print(f"FAILED: {exc}")
        return 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"FAILED: the evidence folder is incomplete or malformed: {exc}")
        return 1
    print("VERIFIED")
    for note in notes:
        print(f"  - {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
