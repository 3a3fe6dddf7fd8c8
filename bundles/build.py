"""``pai bundle build``: stage everything a spec asks for in a folder, then pack and sign it.

Order: models (export, quantize, gate), indexes (embedded with the staged models, or copied
prebuilt), the index compatibility check, the wheelhouse, extra files, the SBOM; then
:func:`pai.bundles.pack.pack_bundle`. With a base bundle the full bundle is packed first
and a delta holding only what changed is written instead (:mod:`pai.bundles.delta`).
The staging folder sits beside the output and is removed whatever happens, so a failed
build leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pai import __version__
from pai.bundles.indexes import IndexSpec, build_index, check_compatible
from pai.bundles.models import build_model
from pai.bundles.pack import created_time, pack_bundle
from pai.bundles.sbom import SBOM_NAME, make_sbom, sbom_bytes
from pai.bundles.spec import BundleSpec
from pai.bundles.wheels import WHEELS_DIR, build_pai_wheel, download
from pai.errors import NotFoundError, StorageError
from pai.fsutil import atomic_write_bytes
from pai.inference.engine import CPU, EmbeddingEngine, ModelConfig
from pai.inference.index import CHUNKS_FILE, INDEX_CONFIG, INDEX_FILE, IndexConfig
from pai.keyring import Signer
from pai.timeutil import format_time, parse_expiry

Step = Callable[[str], None]
TOOLS = (
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "transformers",
    "torch",
    "tokenizers",
    "faiss-cpu",
    "duckdb",
    "numpy",
)


def tool_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in TOOLS:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def _meta_model(doc: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "version",
        "dtype",
        "pooling",
        "normalize",
        "max_length",
        "dimension",
        "opset",
        "license",
        "model_sha256",
        "quantization",
        "accuracy_gate",
    )
    return {k: doc.get(k) for k in keys}


def _meta_index(config: IndexConfig) -> dict[str, Any]:
    keys = (
        "model",
        "model_version",
        "dimension",
        "metric",
        "document_dtype",
        "type",
        "params",
        "count",
        "documents",
        "recall_at_10",
        "chunking",
    )
    return {k: config.raw.get(k) for k in keys}


def stage_models(
    spec: BundleSpec, root: Path, references: Path, step: Step
) -> dict[str, dict[str, Any]]:
    """Build every model into the payload; quantized ones leave their fp32 export in
    ``references/<name>`` (outside the payload) for indexes that embed documents at fp32."""
    docs: dict[str, dict[str, Any]] = {}
    wanted = {
        i.model for i in spec.indexes if i.prebuilt is None and i.document_precision == "fp32"
    }
    for model in spec.models:
        step(f"model {model.name}: ONNX export, {model.dtype}, accuracy gate")
        reference = references / model.name if model.name in wanted else None
        docs[model.name] = build_model(model, root / "models" / model.name, fp32_copy=reference)
    return docs


def _copy_prebuilt(index: IndexSpec, out: Path) -> None:
    assert index.prebuilt is not None
    if not (index.prebuilt / INDEX_CONFIG).is_file():
        raise NotFoundError(f"index {index.name}: {index.prebuilt} is not an index folder")
    out.mkdir(parents=True)
    for name in (INDEX_CONFIG, INDEX_FILE, CHUNKS_FILE):
        shutil.copyfile(index.prebuilt / name, out / name)


def _engine(folder: Path, cache: dict[Path, EmbeddingEngine]) -> EmbeddingEngine:
    if folder not in cache:
        cache[folder] = EmbeddingEngine.load(folder, providers=[CPU])
    return cache[folder]


def stage_indexes(spec: BundleSpec, root: Path, references: Path, step: Step) -> list[IndexConfig]:
    engines: dict[Path, EmbeddingEngine] = {}
    configs: list[IndexConfig] = []
    for index in spec.indexes:
        out = root / "indexes" / index.name
        if index.prebuilt is not None:
            step(f"index {index.name}: prebuilt from {index.prebuilt}")
            _copy_prebuilt(index, out)
        else:
            engine = _engine(root / "models" / index.model, engines)
            reference = references / index.model
            documents_engine = None
            if index.document_precision == "fp32" and reference.is_dir():
                documents_engine = _engine(reference, engines)
            precision = documents_engine.config.dtype if documents_engine else engine.config.dtype
            step(f"index {index.name}: chunking, embedding with {index.model} ({precision}), FAISS")
            build_index(index, engine, out, documents_engine=documents_engine)
        configs.append(IndexConfig.read(out))
    return configs


def check_indexes(root: Path, configs: list[IndexConfig]) -> None:
    """Every index must match a model in the bundle: name, version, dimension and metric."""
    models = {
        path.parent.name: ModelConfig.read(path.parent)
        for path in (root / "models").glob("*/pai-model.json")
    }
    for config in configs:
        check_compatible(config, models)


def stage_wheels(spec: BundleSpec, root: Path, created: datetime, step: Step) -> int:
    wheels = spec.wheels
    if wheels is None:
        return 0
    dest = root / WHEELS_DIR
    dest.mkdir()
    requirements = list(wheels.requirements)
    if wheels.include_pai:
        if wheels.pai_wheel is not None:
            if not wheels.pai_wheel.is_file():
                raise NotFoundError(f"wheels: pai_wheel {wheels.pai_wheel} does not exist")
            pai_wheel = dest / wheels.pai_wheel.name
            shutil.copyfile(wheels.pai_wheel, pai_wheel)
        else:
            step("wheels: building pai's own wheel")
            pai_wheel = build_pai_wheel(dest, int(created.timestamp()))
        requirements.append(str(pai_wheel))
    step(f"wheels: resolving {len(requirements)} requirements for {spec.target.python_tag}")
    download(
        requirements,
        dest,
        python=spec.target.python,
        implementation=spec.target.implementation,
        platforms=list(spec.target.platforms),
        find_links=list(wheels.find_links),
        no_index=wheels.no_index,
    )
    for stray in dest.iterdir():  # pip may leave sdists of build deps for --only-binary fails
        if stray.suffix != ".whl":
            stray.unlink()
    return len(list(dest.glob("*.whl")))


def stage_files(spec: BundleSpec, root: Path) -> None:
    for item in spec.files:
        target = root / item.dest
        if item.source.is_dir():
            shutil.copytree(
                item.source,
                target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, target)


def components(
    spec: BundleSpec,
    models: dict[str, dict[str, Any]],
    indexes: list[IndexConfig],
    wheel_count: int,
) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"name": name, "kind": "model", "path": f"models/{name}/", "meta": _meta_model(doc)}
        for name, doc in models.items()
    ]
    result += [
        {"name": c.name, "kind": "index", "path": f"indexes/{c.name}/", "meta": _meta_index(c)}
        for c in indexes
    ]
    if wheel_count:
        result.append(
            {
                "name": "wheelhouse",
                "kind": "wheelhouse",
                "path": f"{WHEELS_DIR}/",
                "meta": {
                    "wheels": wheel_count,
                    "python": spec.target.python_tag,
                    "platforms": list(spec.target.platforms),
                },
            }
        )
    for item in spec.files:
        path = f"{item.dest}/" if item.source.is_dir() else item.dest
        result.append({"name": item.name, "kind": item.kind, "path": path, "meta": {}})
    result.append(
        {"name": "sbom", "kind": "sbom", "path": SBOM_NAME, "meta": {"format": "CycloneDX 1.5"}}
    )
    return result


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_bundle(
    spec: BundleSpec,
    output: Path,
    *,
    signers: list[Signer],
    expires: str | None = None,
    base: Path | None = None,
    step: Step | None = None,
    pack_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Build ``spec`` into the signed bundle ``output``; returns what was written.

    Raises the PaiError of whichever stage failed (spec, model, accuracy gate, documents,
    index compatibility, wheelhouse, pack); ``output`` then does not exist.
    """
    say = step or (lambda _m: None)
    output = output.absolute()
    created = created_time()
    expiry_text = expires or spec.expires
    # A relative expiry counts from the bundle's created time, so rebuilds are identical.
    expiry = parse_expiry(expiry_text, now=created) if expiry_text else None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".build", dir=output.parent))
    except OSError as exc:
        raise StorageError(
            f"cannot create a build folder beside {output}: {exc.strerror}"
        ) from None
    try:
        root = work / "payload"
        root.mkdir()
        references = work / "references"
        models = stage_models(spec, root, references, say)
        indexes = stage_indexes(spec, root, references, say)
        check_indexes(root, indexes)
        wheel_count = stage_wheels(spec, root, created, say)
        stage_files(spec, root)
        say("SBOM")
        atomic_write_bytes(
            root / SBOM_NAME,
            sbom_bytes(
                make_sbom(root, name=spec.name, version=spec.version, created=format_time(created))
            ),
        )
        build_info = {
            "tool": "pai bundle build",
            "pai_version": __version__,
            "python": sys.version.split()[0],
            "spec_sha256": _sha256_file(spec.path),
            "tools": tool_versions(),
        }
        full = output if base is None else work / "full.bundle"
        say("packing and signing")
        manifest = pack_bundle(
            root,
            full,
            name=spec.name,
            version=spec.version,
            signers=signers,
            expires=expiry,
            target=spec.target.as_manifest(),
            components=components(spec, models, indexes, wheel_count),
            threshold=spec.threshold,
            build=build_info,
            progress=pack_progress,
            created=created,
        )
        result: dict[str, Any] = {"manifest": manifest, "delta": None}
        if base is not None:
            from pai.bundles.delta import make_delta

            say(f"delta against {base.name}")
            result["delta"] = make_delta(full, base, output, signers=signers, created=created)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
