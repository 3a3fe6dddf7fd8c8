"""What one generation of the daemon serves: the models and indexes of its bundles.

A :class:`Generation` is built off the event loop (loading ONNX sessions and FAISS indexes
takes seconds), warmed up, then swapped in atomically. Requests pin the generation they
started on; after a reload the old generation is closed only when its last request is done,
so a reload never drops or fails an in-flight request.

Sources (``--bundle``) may be:

* an installed bundle folder (``manifest.json`` at its root, as `pai bundle extract` leaves it),
* a bundle file, verified against the trust store and extracted under
  ``$PAI_HOME/serve/bundles/<sha256 prefix>/`` first,
* a bare model folder (``pai-model.json``) or index folder (``pai-index.json``), for
  development and benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pai.errors import NotFoundError, UsageError
from pai.inference.batcher import Batcher, Embedder
from pai.inference.config import ServeConfig
from pai.inference.gpu import cuda_providers
from pai.inference.metrics import Metrics
from pai.inference.searchbatch import SearchBatcher
from pai.settings import Paths


class BundleError(UsageError):
    """A --bundle source is not a bundle, model or index pai can serve."""

    code = "bundle"


@dataclass
class ModelSlot:
    id: str
    engine: Embedder
    batcher: Batcher
    bundle: str


@dataclass
class IndexSlot:
    name: str
    index: Any
    model: str
    executor: ThreadPoolExecutor
    bundle: str
    batcher: SearchBatcher


@dataclass
class Generation:
    """One consistent set of loaded models and indexes."""

    number: int
    models: dict[str, ModelSlot] = field(default_factory=dict)
    latest: dict[str, str] = field(default_factory=dict)
    indexes: dict[str, IndexSlot] = field(default_factory=dict)
    bundles: list[dict[str, Any]] = field(default_factory=list)
    inflight: int = 0
    retired: asyncio.Event = field(default_factory=asyncio.Event)

    def describe(self) -> dict[str, Any]:
        return {
            "generation": self.number,
            "bundles": self.bundles,
            "models": sorted(self.models),
            "indexes": sorted(self.indexes),
        }

    def queue_depths(self) -> dict[str, int]:
        return {model_id: slot.batcher.queued for model_id, slot in self.models.items()}

    async def close(self) -> None:
        """Wait for the last pinned request, then release models and indexes."""
        while self.inflight:
            self.retired.clear()
            await self.retired.wait()
        for slot in self.models.values():
            await slot.batcher.close()
        for index in self.indexes.values():
            await index.batcher.close()
            index.executor.shutdown(wait=True)

    def release(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self.retired.set()


@dataclass
class _Source:
    label: str
    models: list[Path]
    indexes: list[tuple[str | None, Path, str | None]]
    info: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{path} is not a JSON object")
    return doc


def _from_manifest(root: Path, manifest: dict[str, Any]) -> _Source:
    models: list[Path] = []
    indexes: list[tuple[str | None, Path, str | None]] = []
    for component in manifest.get("components", []):
        if not isinstance(component, dict):
            continue
        kind = component.get("kind")
        rel = str(component.get("path", ""))
        target = (root / rel).resolve()
        if not target.is_relative_to(root.resolve()):
            raise BundleError(f"component path {rel!r} leaves the bundle folder")
        meta = component.get("meta") or {}
        if kind == "model":
            models.append(target)
        elif kind == "index":
            indexes.append((component.get("name"), target, meta.get("model")))
    info = {
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "path": str(root),
    }
    return _Source(str(root), models, indexes, info)


def resolve_source(p: Paths, source: str) -> _Source:
    """Turn one --bundle argument into the model and index folders it holds."""
    path = Path(source).expanduser().absolute()
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return _from_manifest(path, _read_json(path / "manifest.json"))
        if (path / "pai-model.json").is_file():
            return _Source(str(path), [path], [], {"name": path.name, "path": str(path)})
        if (path / "pai-index.json").is_file():
            return _Source(str(path), [], [(None, path, None)], {"path": str(path)})
        raise BundleError(
            f"{path} holds no manifest.json, pai-model.json or pai-index.json",
            hint="pass an installed bundle folder, a bundle file, or a model/index folder",
        )
    if path.is_file():
        root, manifest = _extract(p, path)
        return _from_manifest(root, manifest)
    raise NotFoundError(f"bundle {path} does not exist")


def _extract(p: Paths, bundle: Path) -> tuple[Path, dict[str, Any]]:
    """Verify a bundle file against the trust store and extract it once per content hash."""
    from pai.bundles.extract import extract_bundle
    from pai.trust import TrustStore

    digest = hashlib.sha256()
    with bundle.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    dest = p.home / "serve" / "bundles" / digest.hexdigest()[:16]
    if not (dest / "manifest.json").is_file():
        verified = extract_bundle([bundle], dest, TrustStore(p.trust), state=p)
        manifest = dict(verified.manifest)
    else:
        manifest = _read_json(dest / "manifest.json")
    return dest, manifest


Loaded = tuple[
    list[tuple[Embedder, str]], list[tuple[str, Any, str | None, str]], list[dict[str, Any]]
]


def load_components(p: Paths, config: ServeConfig, sources: list[str]) -> Loaded:
    """Blocking: load every engine and index named by ``sources`` (run off the loop)."""
    from pai.inference.engine import CUDA, EmbeddingEngine, default_providers
    from pai.inference.index import SearchIndex

    providers = cuda_providers(config.device)
    # The Rust tokenizer splits encode_batch over a rayon pool whose idle workers spin in
    # sched_yield after every call: for a daemon batch of a few dozen short texts that spin
    # cost ~90 us of CPU per text (measured with py-spy/gdb under bench/serve.py), more than
    # the tokenizing itself, taken from the cores onnxruntime and the event loop need.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _, threads = inference_parallelism(config, CUDA in (providers or default_providers()))
    engines: list[tuple[Embedder, str]] = []
    indexes: list[tuple[str, Any, str | None, str]] = []
    infos: list[dict[str, Any]] = []
    for source in sources:
        resolved = resolve_source(p, source)
        infos.append(resolved.info)
        for model_dir in resolved.models:
            engine = EmbeddingEngine.load(
                model_dir, providers=providers, spinning=False, threads=threads
            )
            engines.append((engine, resolved.label))
        for name, index_dir, model in resolved.indexes:
            # GPU FAISS when present (device auto/cuda); filtered searches stay on the CPU copy.
            index = SearchIndex.load(index_dir, use_gpu=False if config.device == "cpu" else None)
            indexes.append((name or index.name, index, model, resolved.label))
    if not engines:
        raise BundleError("the sources hold no model to serve", hint="pass --bundle")
    for _, index, declared, _ in indexes:
        if declared is None:
            _check_compatible(index, [engine for engine, _ in engines])
    return engines, indexes, infos


def inference_parallelism(config: ServeConfig, cuda: bool) -> tuple[int, int]:
    """(batches run at once, onnxruntime threads per batch) for each model.

    On a CPU, two batches on single-threaded runs beat one batch on two intra-op threads:
    a run's parallel sections wait for their slowest thread, and on cores shared with the
    event loop and the audit writer one of them is often preempted (idle pool threads must
    sleep, not spin, for the same reason). On CUDA one worker feeds the GPU; ``threads = 0``
    lets onnxruntime pick its CPU threads there.
    """
    if cuda and not config.inference_workers:
        return 1, config.inference_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    workers = config.inference_workers or (2 if cores >= 2 else 1)
    # The workers share one session and so its intra-op pool (threads - 1 pool threads plus
    # each caller): callers plus pool threads make the cores, 1 thread each on two cores.
    threads = config.inference_threads or max(1, cores - workers + 1)
    return workers, threads


def _check_compatible(index: Any, engines: list[Embedder]) -> None:
    """The bundle's own compatibility check: the index's model version, dimension and metric
    must match a loaded model (raises IndexCompatibilityError)."""
    from pai.bundles.indexes import check_compatible

    config = index.config
    same_name = [e for e in engines if e.name == config.model]
    exact = [e for e in same_name if e.version == config.model_version]
    chosen = (exact or same_name)[:1]
    check_compatible(config, {e.name: e.config for e in chosen})  # type: ignore[attr-defined]


def _index_model(index: Any, declared: str | None) -> str | None:
    """The model whose vectors fill the index: ``name@version`` from pai-index.json."""
    if declared:
        return declared
    config = getattr(index, "config", None)
    if config is not None:
        return f"{config.model}@{config.model_version}"
    return None


def assemble(
    number: int,
    config: ServeConfig,
    metrics: Metrics,
    loaded: Loaded,
) -> Generation:
    """On the loop: wrap loaded engines in batchers and indexes in their threads."""
    engines, indexes, infos = loaded
    gen = Generation(number, bundles=infos)
    for engine, label in engines:
        model_id = f"{engine.name}@{engine.version}"
        on_cuda = "CUDAExecutionProvider" in getattr(engine, "providers", [])
        batcher = Batcher(
            engine,
            workers=inference_parallelism(config, on_cuda)[0],
            max_batch=config.max_batch_size,
            max_tokens=config.max_batch_tokens,
            max_wait=config.max_wait_ms / 1000.0,
            max_queue=config.max_queue,
            max_delay=config.max_queue_delay_ms / 1000.0,
            observe=metrics.batch_observer(model_id),
        )
        gen.models[model_id] = ModelSlot(model_id, engine, batcher, label)
        current = gen.latest.get(engine.name)
        if current is None or _version_key(engine.version) > _version_key(
            gen.models[current].engine.version
        ):
            gen.latest[engine.name] = model_id
    for name, index, declared, label in indexes:
        model = _index_model(index, declared)
        if model in gen.latest:
            model = gen.latest[model]
        if model is None or model not in gen.models:
            raise BundleError(
                f"index {name!r} was built with model {model}, which is not loaded",
                hint="serve the bundle that holds that model version too",
            )
        # Two threads: FAISS searches serialise inside the index, but the document store's
        # queries (tenant selector, hit rows) of one search overlap another's FAISS work.
        executor = ThreadPoolExecutor(2, thread_name_prefix=f"search-{name}")
        gen.indexes[name] = IndexSlot(
            name, index, model, executor, label, SearchBatcher(index, executor)
        )
    check_aliases(config, loaded)
    return gen


def check_aliases(config: ServeConfig, loaded: Loaded) -> None:
    """Every alias target must be a loaded ``name@version`` or model name."""
    names = {engine.name for engine, _ in loaded[0]}
    ids = {f"{engine.name}@{engine.version}" for engine, _ in loaded[0]}
    for alias, targets in config.aliases.items():
        for target in targets:
            if target not in ids and target not in names:
                raise BundleError(f"alias {alias!r} names {target!r}, which is not loaded")


def _version_key(version: str) -> tuple[Any, ...]:
    parts: list[Any] = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


async def start(gen: Generation) -> None:
    """Start the batchers and warm every model up (first runs allocate and are slow)."""
    for slot in gen.models.values():
        slot.batcher.start()
    for index in gen.indexes.values():
        index.batcher.start()
    for slot in gen.models.values():
        await slot.batcher.run(slot.engine.embed_counted, ["warm up"])
