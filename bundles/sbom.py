"""The bundle's software bill of materials: CycloneDX 1.5 JSON at ``sbom.cdx.json``.

Every wheel (purl ``pkg:pypi/NAME@VERSION``, license from its METADATA), every model (type
``machine-learning-model``, license from its model card or the spec) and every index (type
``data``) is listed with the sha256 of its files. The document is a pure function of the
bundle's content and its ``created`` time, so rebuilding gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

from pai import __version__
from pai.bundles.errors import BundleReadError
from pai.bundles.manifest import MANIFEST_NAME, MAX_MANIFEST, SIGNATURES_NAME, read_manifest
from pai.bundles.wheels import wheel_metadata
from pai.errors import NotFoundError, PaiError, UsageError

SBOM_NAME = "sbom.cdx.json"
_NAMESPACE = uuid.UUID("6f1c2a3e-7b3d-5e4f-9a10-2b3c4d5e6f70")


class SbomError(PaiError):
    """The bundle's SBOM is missing, does not match its manifest, or is not CycloneDX."""

    code = "sbom"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _licenses(value: str | None) -> list[dict[str, Any]]:
    if not value:
        return []
    return [{"license": {"name": value}}]


def _wheel_component(path: Path) -> dict[str, Any]:
    meta = wheel_metadata(path)
    name = _normalise(meta["name"] or path.name.split("-")[0])
    return {
        "type": "library",
        "bom-ref": f"pkg:pypi/{name}@{meta['version']}",
        "name": name,
        "version": meta["version"],
        "purl": f"pkg:pypi/{name}@{meta['version']}",
        "licenses": _licenses(meta["license"]),
        "hashes": [{"alg": "SHA-256", "content": _sha256(path)}],
        "properties": [{"name": "pai:file", "value": f"wheels/{path.name}"}],
    }


def _folder_component(
    root: Path, rel: str, kind: str, doc: dict[str, Any], version: str
) -> dict[str, Any]:
    folder = root / rel
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    main = folder / ("model.onnx" if kind == "machine-learning-model" else "index.faiss")
    properties = [{"name": "pai:path", "value": rel}]
    properties += [
        {"name": f"pai:sha256:{p.relative_to(root).as_posix()}", "value": _sha256(p)} for p in files
    ]
    component: dict[str, Any] = {
        "type": kind,
        "bom-ref": f"pai:{rel.rstrip('/')}",
        "name": str(doc.get("name", folder.name)),
        "version": str(doc.get("version") or version),
        "licenses": _licenses(doc.get("license")),
        "hashes": [{"alg": "SHA-256", "content": _sha256(main)}] if main.is_file() else [],
        "properties": properties,
    }
    if kind == "machine-learning-model":
        component["description"] = (
            f"{doc.get('dtype')} ONNX embedding model, {doc.get('dimension')} dimensions, "
            f"{doc.get('pooling')} pooling"
        )
    else:
        component["description"] = (
            f"{doc.get('type')} FAISS index of {doc.get('count')} chunks embedded with "
            f"{doc.get('model')} {doc.get('model_version')}"
        )
    return component


def make_sbom(root: Path, *, name: str, version: str, created: str) -> dict[str, Any]:
    """The CycloneDX document for the staged bundle folder ``root``."""
    components: list[dict[str, Any]] = []
    for wheel in sorted((root / "wheels").glob("*.whl")):
        components.append(_wheel_component(wheel))
    for config in sorted((root / "models").glob("*/pai-model.json")):
        doc = json.loads(config.read_text(encoding="utf-8"))
        rel = config.parent.relative_to(root).as_posix() + "/"
        components.append(_folder_component(root, rel, "machine-learning-model", doc, version))
    for config in sorted((root / "indexes").glob("*/pai-index.json")):
        doc = json.loads(config.read_text(encoding="utf-8"))
        rel = config.parent.relative_to(root).as_posix() + "/"
        components.append(_folder_component(root, rel, "data", doc, version))
    fingerprint = "\n".join(
        f"{c['bom-ref']} {h['content']}" for c in components for h in c["hashes"]
    )
    serial = uuid.uuid5(_NAMESPACE, f"{name}@{version}\n{fingerprint}")
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{serial}",
        "version": 1,
        "metadata": {
            "timestamp": created,
            "tools": {
                "components": [{"type": "application", "name": "pai", "version": __version__}]
            },
            "component": {
                "type": "application",
                "bom-ref": f"bundle:{name}@{version}",
                "name": name,
                "version": version,
            },
        },
        "components": components,
    }


def sbom_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _skip_member(handle: Any, size: int) -> None:
    handle.seek(512 + size + (-size % 512), 1)


def read_sbom(bundle: Path) -> dict[str, Any]:
    """The SBOM of a bundle file, read without extracting it, checked against the manifest.

    Like ``pai bundle inspect`` this does not verify signatures: the sha256 check only ties
    the SBOM to the (unverified) manifest.
    """
    from pai.bundles import tarfmt

    if bundle.name.endswith(".parts.json"):
        raise UsageError(
            "--sbom reads a whole bundle file", hint="join the parts first with `pai bundle join`"
        )
    manifest = read_manifest(bundle)
    entry = next((f for f in manifest["files"] if f["path"] == SBOM_NAME), None)
    if entry is None:
        raise NotFoundError(
            f"{bundle.name} has no {SBOM_NAME}", hint="bundles made by `pai bundle build` have one"
        )
    try:
        with bundle.open("rb") as handle:
            for _name, limit in ((MANIFEST_NAME, MAX_MANIFEST), (SIGNATURES_NAME, MAX_MANIFEST)):
                header = tarfmt.parse(handle.read(512))
                if isinstance(header, str) or header.size > limit:
                    raise SbomError(f"{bundle.name}: unreadable leading member")
                handle.seek(header.size + tarfmt.padding(header.size), 1)
            for item in manifest["files"]:
                if item["path"] == SBOM_NAME:
                    handle.seek(512, 1)
                    data = handle.read(int(item["size"]))
                    break
                _skip_member(handle, int(item["size"]))
    except OSError as exc:
        raise BundleReadError(f"cannot read {bundle}: {exc.strerror}") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SbomError(f"{bundle.name}: {SBOM_NAME} does not match the manifest's sha256")
    try:
        doc = json.loads(data)
    except ValueError:
        raise SbomError(f"{bundle.name}: {SBOM_NAME} is not JSON") from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX":
        raise SbomError(f"{bundle.name}: {SBOM_NAME} is not a CycloneDX document")
    return doc
