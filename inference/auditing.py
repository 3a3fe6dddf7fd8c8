"""Audit events for every request, written off the hot path.

Requests hand their event to :meth:`RequestAuditor.add`, which only queues it in a
:class:`pai.audit.AuditBatcher`; the batcher appends in batches, one transaction each, at most
``FLUSH_INTERVAL_S`` after an event was queued. Daemon lifecycle events (start, reload, stop)
go through the same queue, so the log keeps their order relative to the requests.
:meth:`RequestAuditor.close` writes everything still queued, so a drained daemon leaves no
request unaudited. Events carry ids and sha256 hashes only, never input text or tokens.
"""

from __future__ import annotations

from typing import Any

from pai.audit import AuditBatcher
from pai.settings import Paths

#: The longest an accepted request's audit event waits in memory before it is appended.
FLUSH_INTERVAL_S = 0.5


class RequestAuditor:
    def __init__(self, p: Paths, *, enabled: bool = True) -> None:
        self.paths = p
        self.enabled = enabled
        self._batcher = AuditBatcher(home=p, max_delay=FLUSH_INTERVAL_S) if enabled else None

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
