"""Model names, versions and aliases with weighted, subject-sticky canary routing.

A model answers to ``name@version`` and, for the newest version loaded, to ``name``. An alias
(``[serve.aliases]``) maps to several ``name@version`` targets with integer weights; the target
is chosen by hashing the alias and the subject, so one subject always lands on the same
version (a canary at 5 % sees 5 % of the subjects, each consistently).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping


class UnknownModelError(LookupError):
    """The requested model or alias is not loaded."""


def sticky_choice(alias: str, subject: str, targets: Mapping[str, int]) -> str:
    """The target for ``subject``: a stable point in [0, total) picks along the weights."""
    ordered = sorted((name, weight) for name, weight in targets.items() if weight > 0)
    total = sum(weight for _, weight in ordered)
    digest = hashlib.sha256(f"{alias}\0{subject}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % total
    for name, weight in ordered:
        if point < weight:
            return name
        point -= weight
    return ordered[-1][0]


def resolve(
    requested: str,
    subject: str,
    *,
    versions: Mapping[str, object],
    latest: Mapping[str, str],
    aliases: Mapping[str, Mapping[str, int]],
) -> str:
    """The ``name@version`` id that serves ``requested`` for ``subject``."""
    if requested in aliases:
        target = sticky_choice(requested, subject, aliases[requested])
        return resolve(target, subject, versions=versions, latest=latest, aliases={})
    if requested in versions:
        return requested
    if requested in latest:
        return latest[requested]
    raise UnknownModelError(requested)
