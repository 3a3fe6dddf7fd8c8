"""UTC timestamps in the one text form pai signs: ``YYYY-MM-DDTHH:MM:SSZ``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pai.errors import UsageError

_DURATION = re.compile(r"^(\d+)([smhdwy])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def utcnow() -> datetime:
    """Now, in UTC, to the second (signed documents carry no fractions)."""
    return datetime.now(UTC).replace(microsecond=0)


def format_time(moment: datetime) -> str:
    """``2026-11-26T13:00:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, what: str = "time") -> datetime:
    """Parse an ISO 8601 time or date; a naive value is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{what} {text!r} is not an ISO 8601 date or time") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_duration(text: str, what: str = "duration") -> timedelta:
    """Parse ``90d``, ``12h``, ``2w``, ``1y`` (a year is 365 days)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(f"{what} {text!r} is not a duration like 30d, 12h or 1y")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """An expiry given either as a duration from now (``90d``) or as an absolute time."""
    if _DURATION.match(text.strip()):
        return (now or utcnow()) + parse_duration(text, "expiry")
    return parse_time(text, "expiry")
