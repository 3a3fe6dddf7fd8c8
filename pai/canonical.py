"""Canonical JSON: the one byte encoding that pai hashes and signs.

Signatures and hash chains are over bytes, so two implementations must turn the same value into
the same bytes. The rules (documented in docs/formats/canonical-json.md):

* UTF-8, no byte order mark, no insignificant whitespace (``,`` and ``:`` separators);
* object keys sorted by their Unicode code points; keys must be strings;
* strings escaped as JSON requires and nothing more (non-ASCII characters are written as is);
* integers in decimal without exponent; floats, NaN and infinities are refused, because their
  text form differs between languages. Store fractions as strings or scaled integers;
* ``true``, ``false``, ``null`` as in JSON.
"""

from __future__ import annotations

import json
from typing import Any

from pai.errors import UsageError

JSONValue = Any


def _check(value: JSONValue, where: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return
    if isinstance(value, float):
        raise UsageError(f"canonical JSON refuses the float {value!r} at {where}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UsageError(f"canonical JSON needs string keys, got {key!r} at {where}")
            _check(item, f"{where}.{key}")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
        return
    raise UsageError(f"canonical JSON cannot encode {type(value).__name__} at {where}")


def canonical_bytes(value: JSONValue) -> bytes:
    """Encode ``value`` as canonical JSON bytes (see the module docstring for the rules)."""
    _check(value, "$")
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def parse_canonical(data: bytes, what: str = "document") -> Any:
    """Parse bytes that must be canonical JSON, refusing any other encoding of the same value.

    Refusing non-canonical input closes the door on two byte strings that verify as "the same"
    document while hashing differently.
    """
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if canonical_bytes(value) != data:
        raise UsageError(f"{what} is not in canonical JSON form")
    return value
