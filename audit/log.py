"""Appending events to the hash-chained audit log.

Every state-changing command of every part of pai calls :func:`record_event`. Each row carries
``prev_hash`` and ``hash = sha256(prev_hash_bytes || canonical(event))`` where ``event`` is the
row's fields other than the two hashes (docs/formats/audit.md). Writers serialise on the
database's lock file, so any number of processes may append.
"""

from __future__ import annotations

import getpass
import hashlib
import os
from pathlib import Path
from typing import Any

from pai.canonical import canonical_bytes
from pai.db import connect
from pai.settings import Paths, paths
from pai.timeutil import format_time, utcnow

GENESIS = "0" * 64
OUTCOMES = ("ok", "denied", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq BIGINT PRIMARY KEY,
    time VARCHAR NOT NULL,
    actor VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    resource VARCHAR NOT NULL,
    outcome VARCHAR NOT NULL,
    details VARCHAR NOT NULL,
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL
);
"""


def audit_db(p: Paths) -> Path:
    return p.audit / "audit.duckdb"


def default_actor() -> str:
    """Who is acting: ``PAI_ACTOR`` if set (daemons set it), else the login name."""
    actor = os.environ.get("PAI_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def event_body(
    seq: int, time: str, actor: str, action: str, resource: str, outcome: str, details: Any
) -> dict[str, Any]:
    """The hashed part of an event, exactly as canonicalised."""
    return {
        "seq": seq,
        "time": time,
        "actor": actor,
        "action": action,
        "resource": resource,
        "outcome": outcome,
        "details": details,
    }


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes(body)).hexdigest()


def record_event(
    action: str,
    *,
    resource: str = "",
    outcome: str = "ok",
    actor: str | None = None,
    details: dict[str, Any] | None = None,
    home: Paths | None = None,
) -> int:
    """Append one event and return its sequence number once it is durable.

    ``details`` must hold ids and hashes only: never secrets, never personal data.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}")
    p = home or paths()
    with connect(audit_db(p.ensure()), schema=SCHEMA) as con:
        row = con.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = (int(row[0]) + 1, str(row[1])) if row else (1, GENESIS)
        body = event_body(
            seq,
            format_time(utcnow()),
            actor or default_actor(),
            action,
            resource,
            outcome,
            details or {},
        )
        digest = chain_hash(prev, body)
        con.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                seq,
                body["time"],
                body["actor"],
                action,
                resource,
                outcome,
                canonical_bytes(body["details"]).decode(),
                prev,
                digest,
            ],
        )
        con.execute("CHECKPOINT")
    return seq
