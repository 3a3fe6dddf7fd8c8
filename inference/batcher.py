"""Dynamic batching per model: many small requests become a few large onnxruntime runs.

Requests append their texts to one queue per model. A collector task on the event loop takes
texts from the head of the queue until the batch holds ``max_batch`` texts or its padded token
estimate reaches ``max_tokens``, and runs the batch on the model's own inference thread
(onnxruntime releases the GIL, so the loop keeps parsing HTTP meanwhile). While a batch runs,
new requests pile up and form the next batch: under load batches grow by themselves. A free
worker woken by a new request waits at most ``max_wait`` for company, and less once as many
texts are queued as were answered since the last batch started (their callers are the likely
next senders), so a lone sequential client does not pay ``max_wait`` per request.

The queue is bounded twice: in texts (``max_queue``) and in expected waiting time (the backlog
times the measured seconds per text must stay under ``max_delay``), so under overload the
requests that are accepted still finish quickly; the others get :class:`QueueFull` (HTTP 429
with Retry-After) at once instead of waiting without limit. :meth:`Batcher.close` stops
taking new requests and returns once every accepted one has been answered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    """What the batcher needs of ``pai.inference.engine.EmbeddingEngine``."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_length(self) -> int: ...

    def embed_counted(self, texts: Sequence[str]) -> tuple[Any, list[int]]: ...

    def embed_tokens(self, token_ids: Sequence[Sequence[int]], *, truncate: bool = True) -> Any: ...


class QueueFull(Exception):
    """The model's queue cannot take this request now; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("queue full")
        self.retry_after = retry_after


class Draining(Exception):
    """The batcher is shutting down and accepts nothing new."""


class InputTooLong(Exception):
    """An input exceeds the model's limit and the request did not ask to truncate."""

    def __init__(self, index: int, tokens: int, limit: int) -> None:
        super().__init__(f"input {index} has {tokens} tokens; the model's limit is {limit}")
        self.index = index
        self.tokens = tokens
        self.limit = limit


@dataclass
class BatchResult:
    vectors: np.ndarray
    counts: list[int]

    @property
    def tokens(self) -> int:
        return sum(self.counts)


@dataclass
class _Request:
    texts: list[str]
    truncate: bool
    future: asyncio.Future[BatchResult]
    vectors: list[np.ndarray | None] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    scheduled: int = 0
    done: int = 0
    error: Exception | None = None


BatchObserver = Callable[[int, int, float], None]

#: The fewest texts a worker takes when it splits the queue with other free workers: below
#: this, a run's fixed cost outweighs the parallelism.
MIN_SPLIT = 8


def _estimate(text: str, limit: int) -> int:
    """A padded-token estimate for batch sizing, made without tokenizing on the event loop."""
    return min(limit, len(text) // 4 + 2)


class Batcher:
    """One model's queue, collector task and inference thread."""

    def __init__(
        self,
        engine: Embedder,
        *,
        max_batch: int,
        max_tokens: int,
        max_wait: float,
        max_queue: int,
        max_delay: float = 1.0,
        observe: BatchObserver | None = None,
        workers: int = 1,
    ) -> None:
        self.engine = engine
        self.workers = max(1, workers)
        self.max_batch = max(1, max_batch)
        self.max_tokens = max(1, max_tokens)
        self.max_wait = max_wait
        self.max_queue = max(1, max_queue)
        self.max_delay = max_delay
        self.observe = observe
        self.executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"infer-{engine.name}")
        self._pending: deque[_Request] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._seconds_per_text = 0.001
        self._learned = False
        #: Texts answered since the last batch was taken (see :meth:`_fill_target`).
        self._answered = 0

    @property
    def queued(self) -> int:
        """Texts accepted and not yet answered (the queue depth metric)."""
        return self._queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def embed(self, texts: list[str], *, truncate: bool) -> BatchResult:
        """Embed ``texts`` as part of whatever batches form; raises QueueFull, Draining."""
        if self._closing:
            raise Draining()
        if self._queued:
            backlog = self._queued + len(texts)
            wait = backlog * self._seconds_per_text / self.workers
            # A backlog that cannot fill one batch is never refused: the model must stay busy.
            too_slow = self.max_delay > 0 and wait > self.max_delay and backlog > self.max_batch
            if backlog > self.max_queue or too_slow:
                raise QueueFull(wait)
        loop = asyncio.get_running_loop()
        request = _Request(
            texts, truncate, loop.create_future(), [None] * len(texts), [0] * len(texts)
        )
        self._pending.append(request)
        self._queued += len(texts)
        self._wakeup.set()
        return await request.future

    async def run_tokens(self, token_ids: list[list[int]]) -> BatchResult:
        """Token-array inputs are rare; they run on the same thread, unbatched."""
        if self._closing:
            raise Draining()
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self.executor, self.engine.embed_tokens, token_ids)
        return BatchResult(vectors, [len(ids) for ids in token_ids])

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run other blocking work of this model (warm-up) on its inference thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def close(self) -> None:
        """Answer everything accepted, then stop the collector and the inference thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self.executor.shutdown(wait=True)

    async def _run(self) -> None:
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            self._wakeup.set()

        while True:
            self._drop_abandoned()
            if not self._pending or len(running) >= self.workers:
                if not self._pending and self._closing:
                    if running:
                        await asyncio.wait(running)
                    if not self._pending:
                        return
                    continue
                self._wakeup.clear()
                await self._wakeup.wait()
                # A free worker woken by a new request gives its batch up to ``max_wait`` to
                # fill (it would otherwise take the first request to arrive alone, and one run
                # per text costs twice the compute). A lone worker that just finished takes
                # the pile-up at once, without getting here.
                if self._pending and len(running) < self.workers:
                    await self._fill(self._fill_target())
                continue
            batch = self._take(self._share(self.workers - len(running)))
            self._answered = 0
            if batch:
                task = asyncio.get_running_loop().create_task(self._infer_guarded(batch))
                running.add(task)
                task.add_done_callback(finished)

    async def _infer_guarded(self, batch: list[tuple[_Request, int, int]]) -> None:
        try:
            await self._infer(batch)
        except Exception as exc:  # never let one bad batch stop the collector
            for request, _, _ in batch:
                if not request.future.done():
                    request.future.set_exception(exc)

    def _fill_target(self) -> int:
        """How many queued texts end the wait for a batch to fill.

        The texts answered since the last batch was taken: their callers are the ones most
        likely to send next (closed-loop clients send their next request when answered), so
        once that many are queued, waiting longer only idles a core. With nothing answered
        yet (a burst after a quiet spell) a full batch.
        """
        if self._answered <= 0:
            return self.max_batch
        return min(self.max_batch, self._answered)

    async def _fill(self, target: int) -> None:
        """Give a batch ``max_wait`` to gather ``target`` texts (see :meth:`_run` for when)."""
        deadline = time.monotonic() + self.max_wait
        while self._queued < target and not self._closing:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except TimeoutError:
                return

    def _drop_abandoned(self) -> None:
        """Requests whose caller gave up (timeout, disconnect) are not computed."""
        while self._pending and self._pending[0].future.done():
            request = self._pending.popleft()
            self._queued -= len(request.texts) - request.scheduled

    def _share(self, free: int) -> int:
        """How many texts one free worker takes: with other workers free too, its even share
        of the queue (at least ``MIN_SPLIT``), so that a burst of requests keeps every worker
        busy instead of one worker taking it all while the others idle."""
        if free <= 1:
            return self.max_batch
        return min(self.max_batch, max(MIN_SPLIT, -(-self._queued // free)))

    def _take(self, most: int) -> list[tuple[_Request, int, int]]:
        limit = self.engine.max_length
        batch: list[tuple[_Request, int, int]] = []
        count = longest = 0
        while self._pending and count < most:
            request = self._pending[0]
            if request.future.done():
                self._pending.popleft()
                self._queued -= len(request.texts) - request.scheduled
                continue
            start = end = request.scheduled
            while end < len(request.texts) and count < most:
                estimate = max(longest, _estimate(request.texts[end], limit))
                if count and estimate * (count + 1) > self.max_tokens:
                    break
                longest = estimate
                count += 1
                end += 1
            if end == start:
                break
            batch.append((request, start, end))
            request.scheduled = end
            if end == len(request.texts):
                self._pending.popleft()
            else:
                break
        self._queued -= count
        return batch

    async def _infer(self, batch: list[tuple[_Request, int, int]]) -> None:
        texts = [text for request, s, e in batch for text in request.texts[s:e]]
        flags = [request.truncate for request, s, e in batch for _ in range(s, e)]
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            vectors, counts = await loop.run_in_executor(self.executor, self._compute, texts, flags)
        except Exception as exc:  # the model failed: every request in the batch fails with it
            for request, _, _ in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        self._learn(len(texts), elapsed)
        offset = 0
        for request, s, e in batch:
            self._deliver(request, s, e, vectors, counts, offset)
            offset += e - s
        self._answered += len(texts)
        if self.observe is not None:
            self.observe(len(texts), sum(abs(c) for c in counts), elapsed)

    def _learn(self, size: int, elapsed: float) -> None:
        """Track seconds per text as a backlog drains: from full-ish batches only, since a
        lone text pays a whole run's fixed cost and would make every backlog look slow."""
        if size >= min(self.max_batch, 8):
            self._seconds_per_text = 0.8 * self._seconds_per_text + 0.2 * elapsed / size
            self._learned = True
        elif not self._learned:
            self._seconds_per_text = min(self._seconds_per_text, elapsed / size)

    def _compute(self, texts: list[str], truncate: Sequence[bool]) -> tuple[np.ndarray, list[int]]:
        """On the inference thread: count tokens, refuse over-long strict inputs, embed."""
        vectors, counts = self.engine.embed_counted(texts)
        counts = [int(c) for c in counts]
        limit = self.engine.max_length
        for i, (count, flag) in enumerate(zip(counts, truncate, strict=True)):
            if count > limit and not flag:
                counts[i] = -count
        return vectors, counts

    def _deliver(
        self,
        request: _Request,
        start: int,
        end: int,
        vectors: np.ndarray,
        counts: list[int],
        offset: int,
    ) -> None:
        for i in range(start, end):
            count = counts[offset + i - start]
            if count < 0 and request.error is None:
                request.error = InputTooLong(i, -count, self.engine.max_length)
            request.vectors[i] = vectors[offset + i - start]
            request.counts[i] = abs(count)
        request.done += end - start
        if request.done < len(request.texts) or request.future.done():
            return
        if request.error is not None:
            request.future.set_exception(request.error)
        else:
            stacked = np.stack([v for v in request.vectors if v is not None])
            request.future.set_result(BatchResult(stacked, request.counts))
