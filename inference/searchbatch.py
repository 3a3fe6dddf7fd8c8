"""Batching of concurrent searches on one index.

A search's fixed costs (the tenant and filter selector read from the document store, the
FAISS call) dwarf its per-query cost, and concurrent searches of one tenant share them: a
collector takes every waiting search, groups them by (tenant, k, filters) and runs each group
as one multi-query ``SearchIndex.search`` on the index's threads. A lone search runs at once.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

MAX_GROUP = 64


class SearchBatcher:
    def __init__(self, index: Any, executor: ThreadPoolExecutor) -> None:
        self.index = index
        self.executor = executor
        self._pending: list[tuple[np.ndarray, int, str, dict[str, Any], asyncio.Future[Any]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._running: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def search(
        self, vector: np.ndarray, k: int, tenant: str, filters: dict[str, Any]
    ) -> list[Any]:
        """The hits of one query vector, computed together with concurrent searches."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((vector, k, tenant, filters, future))
        self._wakeup.set()
        result: list[Any] = await future
        return result

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        for task in list(self._running):
            await task

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            taken, self._pending = self._pending, []
            groups: dict[tuple[int, int, str, str], list[Any]] = defaultdict(list)
            for item in taken:
                vector, k, tenant, filters, future = item
                if not future.done():
                    filters_key = json.dumps(filters, sort_keys=True, default=str)
                    groups[(len(vector), k, tenant, filters_key)].append(item)
            runs = []
            for items in groups.values():
                for start in range(0, len(items), MAX_GROUP):
                    runs.append(self._group(items[start : start + MAX_GROUP]))
            # Groups run concurrently on the index's threads; the next collection starts once
            # they are done, so waiting searches pile up into the next, larger groups.
            await asyncio.gather(*runs)

    async def _group(self, items: list[Any]) -> None:
        _, k, tenant, filters, _ = items[0]
        loop = asyncio.get_running_loop()
        try:
            vectors = np.stack([item[0] for item in items]).astype(np.float32, copy=False)
            results = await loop.run_in_executor(
                self.executor, _search_many, self.index, vectors, k, tenant, filters
            )
        except Exception as exc:  # a bad filter or dimension fails every search in the group
            for item in items:
                if not item[4].done():
                    item[4].set_exception(exc)
            return
        for item, hits in zip(items, results, strict=True):
            if not item[4].done():
                item[4].set_result(hits)


def _search_many(
    index: Any, vectors: np.ndarray, k: int, tenant: str, filters: dict[str, Any]
) -> list[list[Any]]:
    return list(index.search(vectors, k, tenant=tenant, filters=filters))
