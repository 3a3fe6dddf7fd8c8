"""Audit events for every request, written off the hot path.

Requests hand their event to :meth:`RequestAuditor.add`, which only queues it in a
:class:`pai.audit.AuditBatcher`; the batcher appends in batches, one transaction each, at most
``flush_interval`` seconds (``[serve] audit_flush_ms``) after an event was queued. Daemon
lifecycle events (start, reload, stop) go through the same queue, so the log keeps their order
relative to the requests.
:meth:`RequestAuditor.close` writes everything still queued, so a drained daemon leaves no
request unaudited. Events carry ids and sha256 hashes only, never input text or tokens.
"""

from __future__ import annotations

from typing import Any

from pai.audit import AuditBatcher
from pai.settings import Paths


class RequestAuditor:
    def __init__(self, p: Paths, *, enabled: bool = True, flush_interval: float = 1.0) -> None:
        self.paths = p
        self.enabled = enabled
        self._batcher = AuditBatcher(home=p, max_delay=flush_interval) if enabled else None

    def add(
        self,
        action: str,
        *,
        resource: str,
        outcome: str,
        actor: str,
        details: dict[str, Any],
    ) -> None:
        """Queue one event; never waits on the database (unless 100k events are pending)."""
        if self._batcher is not None:
            self._batcher.add(
                action, resource=resource, outcome=outcome, actor=actor, details=details
            )

    def lifecycle(
        self, action: str, *, resource: str, outcome: str = "ok", details: dict[str, Any]
    ) -> None:
        """A daemon event (start, reload, stop), queued in order with the requests' events."""
        self.add(action, resource=resource, outcome=outcome, actor="pai-serve", details=details)

    def close(self) -> None:
        """Write everything queued, then stop the writer (called once the daemon drained)."""
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
