"""Appending events to the hash-chained audit log.

Every state-changing command of every part of pai calls :func:`record_event`; the inference
daemon, which writes one event per request, hands events to an
:class:`~pai.audit.batcher.AuditBatcher` instead. Both end in :func:`record_events`: one
writer at a time (an exclusive flock on the database's lock file) reads the head, chains the
new events onto it, inserts them in one transaction and commits before the lock is released.
A call returns only once its events are durable, so an acknowledged event survives a crash of
any process, and two writers can never both extend the same head (no fork).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from pai.audit.chain import _enc, check_fields, details_text
from pai.audit.store import head, insert, open_log
from pai.settings import Paths, paths
from pai.timeutil import format_time, utcnow

log = logging.getLogger("pai.audit")


class PendingEvent(NamedTuple):
    """An event before the log gives it a sequence number, time and hashes."""

    action: str
    resource: str
    outcome: str
    actor: str
    details: str


def default_actor() -> str:
    """Who is acting: ``PAI_ACTOR`` if set (daemons set it), else the login name."""
    actor = os.environ.get("PAI_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def pending(
    action: str,
    *,
    resource: str = "",
    outcome: str = "ok",
    actor: str | None = None,
    details: dict[str, Any] | None = None,
) -> PendingEvent:
    """Check and encode an event's caller-given fields (raises UsageError when invalid)."""
    who = actor if actor is not None else default_actor()
    check_fields(action, resource, outcome, who)
    return PendingEvent(action, resource, outcome, who, details_text(details))


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
    event = pending(action, resource=resource, outcome=outcome, actor=actor, details=details)
    return record_events([event], home=home)[-1]


def record_events(events: Sequence[PendingEvent], *, home: Paths | None = None) -> list[int]:
    """Append events in one transaction; returns their sequence numbers once durable.

    Event times are the UTC second of the append and never go backwards along the chain: a
    writer whose clock is behind the head's time uses the head's time.
    """
    if not events:
        return []
    p = home or paths()
    actions, resources, outcomes, actors, details = (list(c) for c in zip(*events, strict=True))
    with open_log(p, write=True) as con:
        top = head(con)
        now = format_time(utcnow())
        when = now if now > top.time else top.time
        first = top.seq + 1
        seqs = list(range(first, first + len(events)))
        hashes = _chain(
            bytes.fromhex(top.hash), seqs, when, actions, resources, outcomes, actors, details
        )
        columns: dict[str, list[Any]] = {
            "seq": seqs,
            "time": [when] * len(seqs),
            "actor": actors,
            "action": actions,
            "resource": resources,
            "outcome": outcomes,
            "details": details,
            "prev_hash": [top.hash, *hashes[:-1]],
            "hash": hashes,
        }
        insert(con, columns)
        _auto_checkpoint(con, p, seqs[-1], hashes[-1], when)
    return seqs


def _chain(
    prev: bytes,
    seqs: list[int],
    when: str,
    actions: list[str],
    resources: list[str],
    outcomes: list[str],
    actors: list[str],
    details: list[str],
) -> list[str]:
    """Hex chain hashes of consecutive events (the event bytes of :func:`body_bytes`, inline)."""
    sha = hashlib.sha256
    enc = _enc
    time_text = enc(when)
    hashes: list[str] = []
    for seq, action, resource, outcome, actor, detail in zip(
        seqs, actions, resources, outcomes, actors, details, strict=True
    ):
        body = (
            f'{{"action":{enc(action)},"actor":{enc(actor)},"details":{detail},'
            f'"outcome":{enc(outcome)},"resource":{enc(resource)},"seq":{seq},'
            f'"time":{time_text}}}'
        ).encode()
        prev = sha(prev + body).digest()
        hashes.append(prev.hex())
    return hashes


def _auto_checkpoint(con: Any, p: Paths, seq: int, head_hash: str, when: str) -> None:
    """Sign a checkpoint when the policy asks for one; the events are committed already.

    A failure here (an unreadable node key, a full disk) must not turn acknowledged events
    into an error for their caller, so it is logged and retried at the next append.
    """
    from pai.audit.checkpoints import due, make_checkpoint, policy
    from pai.audit.store import Head
    from pai.errors import PaiError
    from pai.timeutil import parse_time

    try:
        top = Head(seq, head_hash, when)
        if due(con, top, policy(p), parse_time(when)):
            from pai.keyring import node_key

            make_checkpoint(con, p, top, node_key(p))
    except (PaiError, OSError) as exc:
        log.warning("audit checkpoint not written: %s", exc)
