"""Audit events for every request, written off the hot path.

Requests hand their event to :class:`RequestAuditor.add`, which only appends to a queue; a
background writer appends queued events to the hash-chained log in batches (through
``pai.audit.AuditBatcher`` when the audit package provides it, one transaction per batch).
:meth:`RequestAuditor.close` flushes everything, so a drained daemon leaves no request
unaudited. Events carry ids and sha256 hashes only, never input text or tokens.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any

from pai.settings import Paths

_STOP = object()


class RequestAuditor:
    def __init__(self, p: Paths, *, enabled: bool = True) -> None:
        self.paths = p
        self.enabled = enabled
        self._queue: queue.Queue[Any] = queue.Queue()
        self._batcher = _make_batcher(p) if enabled else None
        self._thread: threading.Thread | None = None
        self.failures = 0
        if enabled:
            self._thread = threading.Thread(target=self._write_loop, name="audit", daemon=True)
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
        """Queue one event; never blocks the caller on the database."""
        if self.enabled:
            self._queue.put((action, resource, outcome, actor, details))

    def record_now(
        self, action: str, *, resource: str, outcome: str = "ok", details: dict[str, Any]
    ) -> None:
        """Write a daemon lifecycle event (start, reload, stop) synchronously, in order."""
        if not self.enabled:
            return
        self.flush()
        from pai.audit import record_event

        record_event(
            action,
            resource=resource,
            outcome=outcome,
            actor="pai-serve",
            details=details,
            home=self.paths,
        )

    def flush(self) -> None:
        """Return once every event queued so far is durable."""
        if self.enabled:
            self._queue.join()

    def close(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        if self._batcher is not None:
            self._batcher.close()

    def _write_loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in items)
            events = [item for item in items if item is not _STOP]
            try:
                self._write(events)
            except Exception as exc:  # the log must not take the daemon down; say so loudly
                self.failures += len(events)
                sys.stderr.write(f'{{"event":"audit_error","error":"{type(exc).__name__}"}}\n')
            finally:
                for _ in items:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, events: list[tuple[str, str, str, str, dict[str, Any]]]) -> None:
        if not events:
            return
        if self._batcher is not None:
            for action, resource, outcome, actor, details in events:
                self._batcher.add(
                    action, resource=resource, outcome=outcome, actor=actor, details=details
                )
            self._batcher.flush()
            return
        from pai.audit import record_event

        for action, resource, outcome, actor, details in events:
            record_event(
                action,
                resource=resource,
                outcome=outcome,
                actor=actor,
                details=details,
                home=self.paths,
            )


def _make_batcher(p: Paths) -> Any:
    """``pai.audit.AuditBatcher`` when the audit package has it, else None (one-by-one)."""
    import pai.audit

    factory = getattr(pai.audit, "AuditBatcher", None)
    if factory is None:
        return None
    try:
        return factory(home=p)
    except TypeError:
        return factory()
