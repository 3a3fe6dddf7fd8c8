"""A bounded LRU cache of embeddings keyed by model version and input hash.

Keys carry the model *version*, so a reload to a new version can never serve a vector made by
the old one, and the input's sha256, so the cache never holds the text itself.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np


def input_hash(item: str | list[int]) -> str:
    """sha256 of a text (UTF-8) or of a token array (its decimal ids); also used in audit."""
    if isinstance(item, str):
        data = item.encode("utf-8")
    else:
        data = b"tokens:" + ",".join(str(t) for t in item).encode()
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    """Used only from the event loop thread, so it needs no lock."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, str], tuple[np.ndarray, int]] = OrderedDict()

    def get(self, version: str, digest: str) -> tuple[np.ndarray, int] | None:
        """The vector and its token count, or None."""
        if self.max_entries <= 0:
            return None
        key = (version, digest)
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, version: str, digest: str, vector: np.ndarray, tokens: int) -> None:
        if self.max_entries <= 0:
            return
        self._data[(version, digest)] = (vector, tokens)
        self._data.move_to_end((version, digest))
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)
