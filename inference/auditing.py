"""Audit events for every request, written off the hot path.

Requests hand their event to :meth:`RequestAuditor.add`, which only queues it. With
``pai.audit.AuditBatcher`` (the audit package's hot-path writer) events are appended in
batches, one transaction each; without it a background thread appends them one by one.
Daemon lifecycle events (start, reload, stop) go through the same queue, so the log keeps
their order relative to the requests. :meth:`RequestAuditor.close` writes everything still
queued, so a drained daemon leaves no request unaudited. Events carry ids and sha256 hashes
only, never input text or tokens.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

from pai.settings import Paths

_STOP = object()
#: The longest an accepted request's audit event waits in memory before it is appended.
FLUSH_INTERVAL_S = 0.5


class RequestAuditor:
    def __init__(self, p: Paths, *, enabled: bool = True) -> None:
        self.paths = p
        self.enabled = enabled
        self._queue: queue.Queue[Any] = queue.Queue()
        self._batcher = _make_batcher(p) if enabled else None
        self._thread: threading.Thread | None = None
        self.failures = 0
        self._stop = threading.Event()
        if enabled and self._batcher is None:
            self._thread = threading.Thread(target=self._write_loop, name="audit", daemon=True)
            self._thread.start()
        elif enabled:
            self._thread = threading.Thread(target=self._tick, name="audit-tick", daemon=True)
            self._thread.start()

    def add(
        self,
        action: str,
        *,
        resource: str,
        outcome: str,
        actor: str,
        details: dict[str, Any],
    ) -> None:
        """Queue one event; never waits on the database."""
        if not self.enabled:
            return
        if self._batcher is not None:
            self._batcher.add(
                action, resource=resource, outcome=outcome, actor=actor, details=details
            )
        else:
            self._queue.put((action, resource, outcome, actor, details))

    def lifecycle(
        self, action: str, *, resource: str, outcome: str = "ok", details: dict[str, Any]
    ) -> None:
        """A daemon event (start, reload, stop), queued in order with the requests' events."""
        self.add(action, resource=resource, outcome=outcome, actor="pai-serve", details=details)

    def close(self) -> None:
        """Write everything queued, then stop the writer (called once the daemon drained)."""
        self._stop.set()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None

    def _tick(self) -> None:
        """Bound how long an event stays only in memory: flush the batcher every interval."""
        from pai.errors import PaiError

        while not self._stop.wait(FLUSH_INTERVAL_S):
            batcher = self._batcher
            if batcher is None:
                return
            try:
                batcher.flush(timeout=30)
            except PaiError as exc:  # still queued and retried; say so once per interval
                self.failures += 1
                sys.stderr.write(f'{{"event":"audit_error","error":"{exc.code}"}}\n')

    def _write_loop(self) -> None:
        from pai.audit import record_event

        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            action, resource, outcome, actor, details = item
            try:
                record_event(
                    action,
                    resource=resource,
                    outcome=outcome,
                    actor=actor,
                    details=details,
                    home=self.paths,
                )
            except Exception as exc:  # the log must not take the daemon down; say so loudly
                self.failures += 1
                sys.stderr.write(f'{{"event":"audit_error","error":"{type(exc).__name__}"}}\n')


def _make_batcher(p: Paths) -> Any:
    """``pai.audit.AuditBatcher`` when the audit package has it, else None (one by one)."""
    import pai.audit

    factory = getattr(pai.audit, "AuditBatcher", None)
    if factory is None:
        return None
    return factory(home=p)
