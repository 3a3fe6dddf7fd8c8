"""The event encoding and the hash chain (docs/formats/audit.md, "Events" and "Hash chain").

An event's hashed bytes are the canonical JSON of its seven body members; the chain hash is
``sha256(prev_hash_bytes || body_bytes)``. Appending and verifying both run this once per
event, so the body is assembled from pre-encoded pieces instead of a generic ``json.dumps``
of a dict; a property test holds it equal to :func:`pai.canonical.canonical_bytes`.
"""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from pai.canonical import canonical_bytes
from pai.errors import UsageError

GENESIS = "0" * 64
OUTCOMES = ("ok", "denied", "failed")
#: Column order of an event everywhere: DuckDB, Parquet segments, JSON Lines, CSV.
FIELDS = ("seq", "time", "actor", "action", "resource", "outcome", "details", "prev_hash", "hash")

_sha256 = hashlib.sha256
_enc: Any = encode_basestring


class Event(NamedTuple):
    """One stored event. ``details`` is the canonical JSON text of the details object."""

    seq: int
    time: str
    actor: str
    action: str
    resource: str
    outcome: str
    details: str
    prev_hash: str
    hash: str

    def record(self) -> dict[str, Any]:
        """The event as a JSON object with ``details`` parsed (exports, proofs)."""
        doc = self._asdict()
        doc["details"] = json.loads(self.details)
        return doc


def body_bytes(
    seq: int, time: str, actor: str, action: str, resource: str, outcome: str, details: str
) -> bytes:
    """Canonical JSON of the event body; ``details`` is already canonical JSON text."""
    return (
        f'{{"action":{_enc(action)},"actor":{_enc(actor)},"details":{details},'
        f'"outcome":{_enc(outcome)},"resource":{_enc(resource)},"seq":{seq},'
        f'"time":{_enc(time)}}}'
    ).encode()


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """The 32-byte hash of an event whose predecessor's hash is ``prev_hash``."""
    return _sha256(prev_hash + body).digest()


def details_text(details: dict[str, Any] | None) -> str:
    """Canonical JSON text of ``details``; refuses non-objects, floats and bad strings."""
    if details is None:
        return "{}"
    if not isinstance(details, dict):
        raise UsageError("audit event details must be a JSON object")
    try:
        return canonical_bytes(details).decode()
    except UnicodeEncodeError:
        raise UsageError("audit event details hold a string that is not valid Unicode") from None


def check_fields(action: str, resource: str, outcome: str, actor: str) -> None:
    """Refuse values that could not be encoded, or an outcome outside the three allowed."""
    if outcome not in OUTCOMES:
        raise UsageError(f"audit outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    for name, value in (("action", action), ("resource", resource), ("actor", actor)):
        if not isinstance(value, str):
            raise UsageError(f"audit event {name} must be a string")
        try:
            value.encode()
        except UnicodeEncodeError:
            raise UsageError(f"audit event {name} is not valid Unicode") from None
    if not action:
        raise UsageError("audit event action must not be empty")
