"""Batched appends for processes that log on a hot path (the inference daemon).

``add`` checks and encodes the event, queues it and returns at once; a background thread
appends the queue with :func:`pai.audit.record_events` when ``max_events`` are waiting or the
oldest has waited ``max_delay`` seconds. An event is durable once a flush that took it has
returned: ``flush()`` waits for that, ``close()`` flushes and stops the thread. A failed
append keeps the events queued and is retried; ``flush()`` and ``close()`` raise the error
if it persists. When ``max_pending`` events are queued, ``add`` waits (backpressure) rather
than dropping audit events. A batcher that is never closed is flushed at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
from typing import Any

from pai.audit.log import PendingEvent, pending, record_events
from pai.errors import StateError
from pai.settings import Paths


class AuditBatcher:
    """Queue events and append them in batches from a background thread."""

    def __init__(
        self,
        *,
        home: Paths | None = None,
        max_events: int = 1000,
        max_delay: float = 0.2,
        max_pending: int = 100_000,
        retry_delay: float = 0.5,
    ) -> None:
        if max_events < 1 or max_pending < max_events or max_delay <= 0:
            raise ValueError("need max_events >= 1, max_pending >= max_events, max_delay > 0")
        self._home = home
        self._max_events = max_events
        self._max_delay = max_delay
        self._max_pending = max_pending
        self._retry_delay = retry_delay
        self._queue: list[PendingEvent] = []
        self._oldest = 0.0
        self._added = 0  # events ever queued
        self._written = 0  # events ever appended
        self._last_seq = 0
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="pai-audit-batcher", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    def add(
        self,
        action: str,
        *,
        resource: str = "",
        outcome: str = "ok",
        actor: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Queue one event (same arguments as :func:`pai.audit.record_event`)."""
        event = pending(action, resource=resource, outcome=outcome, actor=actor, details=details)
        with self._cond:
            if self._closed:
                raise StateError("the audit batcher is closed")
            while len(self._queue) >= self._max_pending and not self._closed:
                self._cond.wait(0.1)
            was_empty = not self._queue
            if was_empty:
                self._oldest = time.monotonic()
            self._queue.append(event)
            self._added += 1
            # The writer sleeps without a deadline while the queue is empty: wake it for the
            # first event (it then waits out max_delay) and when a full batch is ready.
            if was_empty or len(self._queue) >= self._max_events:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every event queued so far is durable; returns the last sequence number."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._added
            self._oldest = 0.0  # due now
            self._cond.notify_all()
            while self._written < target:
                if self._error is not None:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(0.05 if remaining is None else min(0.05, remaining))
            if self._written < target:
                raise StateError(
                    f"{target - self._written} audit events are not yet written"
                    + (f": {self._error}" if self._error else ""),
                    hint="check that $PAI_HOME/audit is writable",
                )
            return self._last_seq

    def close(self, timeout: float | None = None) -> int:
        """Flush, then stop the background thread. Returns the last sequence number."""
        atexit.unregister(self._at_exit)
        try:
            return self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join(timeout)

    def _at_exit(self) -> None:
        """An interpreter exiting without close() still writes what was queued."""
        with contextlib.suppress(Exception):
            self.close(timeout=10)

    def __enter__(self) -> AuditBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take(self) -> list[PendingEvent] | None:
        """Wait until a batch is due and take it; None when closed and drained."""
        with self._cond:
            while True:
                if self._queue:
                    waited = time.monotonic() - self._oldest
                    if len(self._queue) >= self._max_events or waited >= self._max_delay:
                        batch = self._queue[: self._max_events]
                        return batch
                    self._cond.wait(self._max_delay - waited)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                seqs = record_events(batch, home=self._home)
            except Exception as exc:  # kept and retried; flush() reports it
                with self._cond:
                    self._error = exc
                    closed = self._closed
                if closed:
                    return
                time.sleep(self._retry_delay)
                continue
            with self._cond:
                del self._queue[: len(batch)]
                self._oldest = time.monotonic() if self._queue else 0.0
                self._written += len(batch)
                self._last_seq = seqs[-1]
                self._error = None
                self._cond.notify_all()
