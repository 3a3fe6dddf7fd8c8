"""The bundle spec: a TOML file saying what ``pai bundle build`` puts in a bundle.

Reference: docs/formats/bundle-spec.md. Relative paths are relative to the spec file's
folder. Unknown keys are refused so that a typo does not silently build the wrong bundle.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pai.bundles.indexes import DEFAULT_RECALL_TARGET, DOCUMENT_PRECISIONS, IndexSpec
from pai.bundles.manifest import check_name, parse_semver
from pai.bundles.models import (
    CALIBRATION_TEXTS,
    DEFAULT_MIN_COSINE,
    DEFAULT_MIN_MEAN,
    DTYPES,
    ISAS,
    QUANTIZATIONS,
    ModelSpec,
    resolve_source,
)
from pai.errors import NotFoundError, UsageError

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
FILE_KINDS = ("files", "playbooks")


class SpecError(UsageError):
    """The spec file is unreadable, invalid TOML, or asks for something impossible."""

    code = "spec"


@dataclass(frozen=True)
class WheelSpec:
    requirements: tuple[str, ...] = ()
    include_pai: bool = True
    pai_wheel: Path | None = None
    find_links: tuple[Path, ...] = ()
    no_index: bool = False


@dataclass(frozen=True)
class FilesSpec:
    name: str
    source: Path
    dest: str
    kind: str = "files"


@dataclass(frozen=True)
class TargetSpec:
    python: str = f"{sys.version_info.major}.{sys.version_info.minor}"
    platforms: tuple[str, ...] = (
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "linux_x86_64",
    )
    implementation: str = "cp"
    accelerators: tuple[str, ...] = ()

    @property
    def python_tag(self) -> str:
        return f"{self.implementation}{self.python.replace('.', '')}"

    def as_manifest(self) -> dict[str, Any]:
        return {
            "python": self.python_tag,
            "platform": self.platforms[0],
            "platforms": list(self.platforms),
            "accelerators": list(self.accelerators),
        }


@dataclass(frozen=True)
class BundleSpec:
    path: Path
    name: str
    version: str
    expires: str | None = None
    threshold: int = 1
    target: TargetSpec = field(default_factory=TargetSpec)
    models: tuple[ModelSpec, ...] = ()
    indexes: tuple[IndexSpec, ...] = ()
    wheels: WheelSpec | None = None
    files: tuple[FilesSpec, ...] = ()


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise SpecError(f"{where}: [{key}] must be a table")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: {key} must be a non-empty string")
    return value


def _int(table: dict[str, Any], key: str, where: str, default: int) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpecError(f"{where}: {key} must be a non-negative integer")
    return value


def _fraction(table: dict[str, Any], key: str, where: str, default: Decimal) -> Decimal:
    value = table.get(key)
    if value is None:
        return default
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise SpecError(f"{where}: {key} must be a number between 0 and 1") from None
    if not Decimal(0) <= number <= Decimal(1):
        raise SpecError(f"{where}: {key} must be between 0 and 1, not {value}")
    return number


def _list_of_str(table: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{where}: {key} must be a list of strings")
    return tuple(value)


def _path(base: Path, text: str) -> Path:
    path = Path(text)
    return path if path.is_absolute() else base / path


def _slug(value: str, where: str) -> str:
    if not _SLUG.match(value):
        raise SpecError(f"{where}: name {value!r} must match [a-z0-9][a-z0-9._-]*")
    return value


def _model(raw: Any, base: Path, index: int) -> ModelSpec:
    where = f"models[{index}]"
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a table")
    _check_keys(
        raw,
        {
            "name",
            "source",
            "dtype",
            "quantization",
            "isa",
            "max_length",
            "version",
            "license",
            "opset",
            "gate",
        },
        where,
    )
    name = _slug(_str(raw, "name", where), where)
    dtype = _str(raw, "dtype", where, "int8")
    if dtype not in DTYPES:
        raise SpecError(f"{where}: dtype must be one of {', '.join(DTYPES)}")
    quantization = _str(raw, "quantization", where, "per-token")
    if quantization not in QUANTIZATIONS:
        raise SpecError(f"{where}: quantization must be one of {', '.join(QUANTIZATIONS)}")
    isa = _str(raw, "isa", where, "auto")
    if isa not in ISAS:
        raise SpecError(f"{where}: isa must be one of {', '.join(ISAS)}")
    gate = _table(raw, "gate", where)
    _check_keys(gate, {"min_mean_cosine", "min_cosine", "calibration", "fallback"}, f"{where}.gate")
    calibration = CALIBRATION_TEXTS
    if "calibration" in gate:
        cal_path = _path(base, _str(gate, "calibration", f"{where}.gate"))
        try:
            lines = cal_path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SpecError(f"{where}.gate: cannot read {cal_path}: {exc.strerror}") from None
        calibration = tuple(line for line in lines if line.strip())
        if not calibration:
            raise SpecError(f"{where}.gate: {cal_path} holds no texts")
    fallback = gate.get("fallback", True)
    if not isinstance(fallback, bool):
        raise SpecError(f"{where}.gate: fallback must be true or false")
    max_length = raw.get("max_length")
    opset = raw.get("opset")
    return ModelSpec(
        name=name,
        source=resolve_source(_str(raw, "source", where), base),
        dtype=dtype,
        quantization=quantization,
        isa=isa,
        max_length=_int(raw, "max_length", where, 0) if max_length is not None else None,
        version=raw.get("version") if isinstance(raw.get("version"), str) else None,
        license=raw.get("license") if isinstance(raw.get("license"), str) else None,
        opset=_int(raw, "opset", where, 0) if opset is not None else None,
        min_mean_cosine=_fraction(gate, "min_mean_cosine", f"{where}.gate", DEFAULT_MIN_MEAN),
        min_cosine=_fraction(gate, "min_cosine", f"{where}.gate", DEFAULT_MIN_COSINE),
        fallback=fallback,
        calibration=calibration,
    )


def _index(raw: Any, base: Path, index: int, models: set[str]) -> IndexSpec:
    where = f"indexes[{index}]"
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a table")
    _check_keys(
        raw,
        {
            "name",
            "model",
            "documents",
            "type",
            "chunk_tokens",
            "chunk_overlap",
            "recall_target",
            "params",
            "prebuilt",
            "document_precision",
        },
        where,
    )
    name = _slug(_str(raw, "name", where), where)
    prebuilt = _path(base, raw["prebuilt"]) if isinstance(raw.get("prebuilt"), str) else None
    model = _str(raw, "model", where) if prebuilt is None or "model" in raw else ""
    if prebuilt is None and model not in models:
        raise SpecError(
            f"{where}: model {model!r} is not one of this spec's models "
            f"({', '.join(sorted(models)) or 'none'})"
        )
    documents = tuple(_path(base, d) for d in _list_of_str(raw, "documents", where))
    if prebuilt is None and not documents:
        raise SpecError(f"{where}: documents must list at least one file (or give prebuilt)")
    params = _table(raw, "params", where)
    _check_keys(params, {"m", "ef_construction", "ef_search", "nlist", "nprobe"}, f"{where}.params")
    kind = _str(raw, "type", where, "auto")
    precision = _str(raw, "document_precision", where, "fp32")
    if precision not in DOCUMENT_PRECISIONS:
        raise SpecError(
            f"{where}.document_precision must be one of {', '.join(DOCUMENT_PRECISIONS)}"
        )
    return IndexSpec(
        name=name,
        model=model,
        documents=documents,
        kind=kind,
        chunk_tokens=_int(raw, "chunk_tokens", where, 200),
        chunk_overlap=_int(raw, "chunk_overlap", where, 32),
        recall_target=_fraction(raw, "recall_target", where, DEFAULT_RECALL_TARGET),
        params={k: _int(params, k, f"{where}.params", 0) for k in params},
        prebuilt=prebuilt,
        document_precision=precision,
    )


def _wheels(raw: dict[str, Any], base: Path) -> WheelSpec:
    where = "wheels"
    _check_keys(
        raw,
        {"requirements", "requirements_file", "include_pai", "pai_wheel", "find_links", "no_index"},
        where,
    )
    requirements = list(_list_of_str(raw, "requirements", where))
    if "requirements_file" in raw:
        req_path = _path(base, _str(raw, "requirements_file", where))
        try:
            lines = req_path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SpecError(f"wheels: cannot read {req_path}: {exc.strerror}") from None
        requirements += [
            line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()
        ]
    include_pai = raw.get("include_pai", True)
    no_index = raw.get("no_index", False)
    if not isinstance(include_pai, bool) or not isinstance(no_index, bool):
        raise SpecError("wheels: include_pai and no_index must be true or false")
    return WheelSpec(
        requirements=tuple(requirements),
        include_pai=include_pai,
        pai_wheel=_path(base, raw["pai_wheel"]) if isinstance(raw.get("pai_wheel"), str) else None,
        find_links=tuple(_path(base, p) for p in _list_of_str(raw, "find_links", where)),
        no_index=no_index,
    )


def _files(raw: Any, base: Path, index: int) -> FilesSpec:
    where = f"files[{index}]"
    if not isinstance(raw, dict):
        raise SpecError(f"{where} must be a table")
    _check_keys(raw, {"name", "source", "dest", "kind"}, where)
    kind = _str(raw, "kind", where, "files")
    if kind not in FILE_KINDS:
        raise SpecError(f"{where}: kind must be one of {', '.join(FILE_KINDS)}")
    dest = _str(raw, "dest", where).strip("/")
    if dest.startswith(("models", "indexes", "wheels", "sbom", "delta")) or ".." in dest.split("/"):
        raise SpecError(f"{where}: dest {dest!r} is reserved or leaves the bundle")
    source = _path(base, _str(raw, "source", where))
    if not source.exists():
        raise NotFoundError(f"{where}: {source} does not exist")
    return FilesSpec(
        name=_slug(_str(raw, "name", where), where), source=source, dest=dest, kind=kind
    )


def _target(raw: dict[str, Any]) -> TargetSpec:
    _check_keys(raw, {"python", "platforms", "implementation", "accelerators"}, "target")
    default = TargetSpec()
    python = _str(raw, "python", "target", default.python)
    if not re.match(r"^3\.\d{1,2}$", python):
        raise SpecError(f"target: python must look like 3.11, not {python!r}")
    platforms = _list_of_str(raw, "platforms", "target") or default.platforms
    return TargetSpec(
        python=python,
        platforms=platforms,
        implementation=_str(raw, "implementation", "target", "cp"),
        accelerators=_list_of_str(raw, "accelerators", "target"),
    )


def load_spec(path: Path) -> BundleSpec:
    """Parse and check a spec file. Raises NotFoundError or SpecError."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"spec file {path} does not exist") from None
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}") from None
    base = path.parent.absolute()
    _check_keys(doc, {"bundle", "target", "models", "indexes", "wheels", "files"}, str(path))
    bundle = _table(doc, "bundle", str(path))
    _check_keys(bundle, {"name", "version", "expires", "threshold"}, "bundle")
    name = _str(bundle, "name", "bundle")
    version = _str(bundle, "version", "bundle")
    try:
        check_name(name)
        parse_semver(version)
    except UsageError as exc:
        raise SpecError(f"bundle: {exc.message}") from None
    models_raw = doc.get("models", [])
    indexes_raw = doc.get("indexes", [])
    files_raw = doc.get("files", [])
    if not all(isinstance(v, list) for v in (models_raw, indexes_raw, files_raw)):
        raise SpecError("models, indexes and files must be arrays of tables ([[models]])")
    models = tuple(_model(m, base, i) for i, m in enumerate(models_raw))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SpecError("two models have the same name")
    indexes = tuple(_index(x, base, i, set(names)) for i, x in enumerate(indexes_raw))
    if len({x.name for x in indexes}) != len(indexes):
        raise SpecError("two indexes have the same name")
    files = tuple(_files(f, base, i) for i, f in enumerate(files_raw))
    expires = bundle.get("expires")
    if expires is not None and not isinstance(expires, str):
        raise SpecError("bundle: expires must be a string (a duration such as 365d, or a date)")
    return BundleSpec(
        path=path,
        name=name,
        version=version,
        expires=expires,
        threshold=_int(bundle, "threshold", "bundle", 1) or 1,
        target=_target(_table(doc, "target", str(path))),
        models=models,
        indexes=indexes,
        wheels=_wheels(doc["wheels"], base) if isinstance(doc.get("wheels"), dict) else None,
        files=files,
    )
