"""Semantic search over an index folder: a FAISS index plus a DuckDB-read document store.

An index folder (``indexes/<name>/`` in a bundle; layout in docs/formats/bundle-spec.md) holds
``index.faiss``, ``chunks.parquet`` (vector id, document id, chunk number, tenant, text,
metadata) and ``pai-index.json`` (model, dimension, metric, type, parameters). The store is
Parquet so that a bundle build is byte-for-byte repeatable; DuckDB reads it into memory.

Tenant and metadata filters are applied inside FAISS with an ID selector built from the
store, so a search returns the k best hits *of that tenant* rather than the k best overall
filtered down to fewer. On a node whose faiss has GPU support and a GPU, unfiltered searches
run on a GPU copy of the index; filtered ones stay on the CPU index (selectors are CPU-only).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pai.errors import NotFoundError, PaiError, UsageError

INDEX_CONFIG = "pai-index.json"
INDEX_FILE = "index.faiss"
CHUNKS_FILE = "chunks.parquet"
INDEX_FORMAT = "pai-index/1"
METRICS = ("ip", "l2")
INDEX_TYPES = ("flat", "ivf", "hnsw")
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class IndexError_(PaiError):
    """An index folder is missing a file, or its files disagree with each other."""

    code = "index"


class QueryError(UsageError):
    """A search asks for something the index cannot answer (wrong dimension, bad filter)."""

    code = "query"


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk of a document, its score and what the store knows of it."""

    vector_id: int
    doc_id: str
    chunk: int
    score: float
    tenant: str
    text: str
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.doc_id,
            "chunk": self.chunk,
            "score": self.score,
            "tenant": self.tenant,
            "text": self.text,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class IndexConfig:
    name: str
    model: str
    model_version: str
    dimension: int
    metric: str
    kind: str
    count: int
    params: dict[str, Any]
    raw: dict[str, Any]

    @classmethod
    def read(cls, index_dir: Path) -> IndexConfig:
        path = index_dir / INDEX_CONFIG
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NotFoundError(
                f"{index_dir} is not an index folder: {INDEX_CONFIG} is missing"
            ) from None
        except (OSError, ValueError) as exc:
            raise IndexError_(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != INDEX_FORMAT:
            raise IndexError_(f"{path} is not a {INDEX_FORMAT} document")
        try:
            config = cls(
                name=str(raw["name"]),
                model=str(raw["model"]),
                model_version=str(raw["model_version"]),
                dimension=int(raw["dimension"]),
                metric=str(raw["metric"]),
                kind=str(raw["type"]),
                count=int(raw["count"]),
                params=dict(raw.get("params") or {}),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexError_(f"{path} lacks or has a bad field: {exc}") from None
        if config.metric not in METRICS or config.kind not in INDEX_TYPES:
            raise IndexError_(f"{path}: unknown metric {config.metric} or type {config.kind}")
        return config


def faiss_module() -> Any:
    """The faiss module, typed loosely: its SWIG stubs do not describe the index classes."""
    import faiss

    return faiss


def faiss_has_gpu() -> bool:
    faiss = faiss_module()

    return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0


class SearchIndex:
    """A loaded index: FAISS for vectors, DuckDB (in memory) for what the vectors stand for."""

    def __init__(self, index_dir: Path, config: IndexConfig, index: Any, db: Any) -> None:
        self.index_dir = index_dir
        self.config = config
        self._index = index
        self._db = db
        self._lock = threading.Lock()
        self._gpu_index: Any = None

    @classmethod
    def load(cls, index_dir: Path, *, use_gpu: bool | None = None) -> SearchIndex:
        """Open ``index_dir``; ``use_gpu`` defaults to "when faiss has GPU support and a GPU".

        Raises NotFoundError or IndexError_ when files are missing or disagree.
        """
        import duckdb

        faiss = faiss_module()

        index_dir = Path(index_dir)
        config = IndexConfig.read(index_dir)
        for needed in (INDEX_FILE, CHUNKS_FILE):
            if not (index_dir / needed).is_file():
                raise IndexError_(f"index folder {index_dir} lacks {needed}")
        try:
            index = faiss.read_index(str(index_dir / INDEX_FILE))
        except RuntimeError as exc:
            raise IndexError_(f"faiss cannot read {index_dir / INDEX_FILE}: {exc}") from None
        if index.d != config.dimension or index.ntotal != config.count:
            raise IndexError_(
                f"{index_dir}: index.faiss holds {index.ntotal} vectors of dimension {index.d}; "
                f"{INDEX_CONFIG} says {config.count} of {config.dimension}"
            )
        _apply_search_params(index, config)
        db = duckdb.connect(":memory:")
        db.execute(
            "CREATE TABLE chunks AS SELECT * FROM read_parquet(?) ORDER BY vector_id",
            [str(index_dir / CHUNKS_FILE)],
        )
        rows = db.execute("SELECT count(*) FROM chunks").fetchone()
        if rows is None or int(rows[0]) != config.count:
            raise IndexError_(f"{index_dir}: {CHUNKS_FILE} does not hold {config.count} chunks")
        loaded = cls(index_dir, config, index, db)
        if use_gpu if use_gpu is not None else faiss_has_gpu():
            loaded._to_gpu()
        return loaded

    def _to_gpu(self) -> None:
        faiss = faiss_module()

        resources = faiss.StandardGpuResources()
        self._gpu_index = faiss.index_cpu_to_gpu(resources, 0, self._index)
        self._gpu_resources = resources

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def count(self) -> int:
        return self.config.count

    def tenants(self) -> list[str]:
        cursor = self._db.cursor()
        return [
            str(r[0])
            for r in cursor.execute("SELECT DISTINCT tenant FROM chunks ORDER BY 1").fetchall()
        ]

    def _allowed(self, tenant: str | None, filters: Mapping[str, Any] | None) -> Any:
        clauses: list[str] = []
        params: list[Any] = []
        if tenant is not None:
            clauses.append("tenant = ?")
            params.append(tenant)
        for key, value in (filters or {}).items():
            if not _FIELD.match(key):
                raise QueryError(f"filter field {key!r} is not a plain metadata field name")
            if not isinstance(value, (str, int, bool)):
                raise QueryError(f"filter {key} must be a string, integer or boolean")
            clauses.append(f"json_extract_string(metadata, '$.{key}') = ?")
            params.append(str(value).lower() if isinstance(value, bool) else str(value))
        if not clauses:
            return None
        sql = "SELECT vector_id FROM chunks WHERE " + " AND ".join(clauses)
        ids = np.array(
            [r[0] for r in self._db.cursor().execute(sql, params).fetchall()], dtype=np.int64
        )
        return ids

    def search(
        self,
        vectors: npt.NDArray[np.float32],
        k: int = 10,
        *,
        tenant: str | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` best chunks for each query vector, best first, within tenant and filters."""
        faiss = faiss_module()

        queries = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if queries.shape[1] != self.config.dimension:
            raise QueryError(
                f"query vectors have dimension {queries.shape[1]}; index {self.name} "
                f"holds {self.config.dimension}"
            )
        if k < 1:
            raise QueryError("k must be at least 1")
        k = min(k, self.count) if self.count else 0
        if k == 0:
            return [[] for _ in range(len(queries))]
        allowed = self._allowed(tenant, filters)
        if allowed is not None:
            if len(allowed) == 0:
                return [[] for _ in range(len(queries))]
            selector = faiss.IDSelectorBatch(allowed)
            params = _selector_params(self.config, selector)
            with self._lock:
                scores, ids = self._index.search(queries, min(k, len(allowed)), params=params)
        else:
            target = self._gpu_index if self._gpu_index is not None else self._index
            with self._lock:
                scores, ids = target.search(queries, k)
        return [
            self._hits(row_ids, row_scores) for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def _hits(self, ids: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]) -> list[Hit]:
        wanted = [int(i) for i in ids if i >= 0]
        if not wanted:
            return []
        rows = (
            self._db.cursor()
            .execute(
                "SELECT vector_id, doc_id, chunk, tenant, text, metadata FROM chunks "
                "WHERE vector_id IN (SELECT unnest(?))",
                [wanted],
            )
            .fetchall()
        )
        by_id = {int(r[0]): r for r in rows}
        hits: list[Hit] = []
        for vid, score in zip(ids, scores, strict=True):
            row = by_id.get(int(vid))
            if row is None:
                continue
            value = float(score)
            hits.append(
                Hit(
                    vector_id=int(vid),
                    doc_id=str(row[1]),
                    chunk=int(row[2]),
                    score=-value if self.config.metric == "l2" else value,
                    tenant=str(row[3]),
                    text=str(row[4]),
                    metadata=json.loads(row[5]) if row[5] else {},
                )
            )
        return hits


def _apply_search_params(index: Any, config: IndexConfig) -> None:
    """Set nprobe / efSearch from the index's config (FAISS does not store them)."""
    faiss = faiss_module()

    if config.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = int(config.params.get("nprobe", 8))
    elif config.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = int(config.params.get("ef_search", 64))


def _selector_params(config: IndexConfig, selector: Any) -> Any:
    faiss = faiss_module()

    if config.kind == "ivf":
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(config.params.get("nprobe", 8)))
    if config.kind == "hnsw":
        return faiss.SearchParametersHNSW(
            sel=selector, efSearch=int(config.params.get("ef_search", 64))
        )
    return faiss.SearchParameters(sel=selector)
