"""Delta bundles: carry only the files that changed since a base bundle.

A delta is an ordinary signed bundle whose payload is::

    delta/delta.json        canonical JSON: base and target (name, version, manifest sha256),
                            the changed paths and the count of reused ones
    delta/manifest.json     the full target bundle's manifest, byte for byte
    delta/signatures.json   the full target bundle's signatures document, byte for byte
    payload/<path>          each target file whose sha256 differs from the base's (or is new)

``apply_delta`` verifies base and delta against the trust store, checks that the base is the
one the delta names, then writes the target bundle member by member: the carried manifest and
signatures first, then each file from the delta or, when unchanged, from the base, each
checked against the target manifest's sha256. The result is byte-identical to the full build
(the bundle format is deterministic and the signatures were made at build time), and is then
verified like any other bundle. The air-gapped side never needs a signing key.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from pai.audit import record_event
from pai.bundles import tarfmt
from pai.bundles.errors import BundleReadError
from pai.bundles.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST,
    MAX_SIGNATURES,
    SIGNATURES_NAME,
    mtime_of,
    open_first,
    read_leading_member,
    validate,
)
from pai.bundles.pack import pack_bundle
from pai.bundles.verify import FileSource, VerifiedBundle, check_stream, verify_bundle
from pai.canonical import canonical_bytes, parse_canonical
from pai.errors import PaiError, StorageError, UsageError
from pai.fsutil import atomic_write_bytes, atomic_writer
from pai.keyring import Signer
from pai.settings import paths
from pai.timeutil import parse_time, utcnow
from pai.trust import TrustStore

DELTA_FORMAT = "pai-delta/1"
DELTA_DIR = "delta"
PAYLOAD_DIR = "payload"
CHUNK = 1 << 20


class DeltaError(PaiError):
    """A delta bundle is malformed or does not rebuild the bundle it promises."""

    code = "delta"


class DeltaBaseMismatchError(DeltaError):
    """The base bundle given is not the one the delta was made against."""

    code = "delta-base"


def leading_members(bundle: Path) -> tuple[bytes, bytes]:
    """The raw manifest and signatures bytes of a bundle (unverified)."""
    with open_first(bundle) as handle:
        _h, manifest = read_leading_member(handle, MANIFEST_NAME, MAX_MANIFEST, "first")
        _h, signatures = read_leading_member(handle, SIGNATURES_NAME, MAX_SIGNATURES, "second")
    return manifest, signatures


def _copy_members(full: Path, manifest: dict[str, Any], wanted: set[str], dest: Path) -> None:
    """Copy the payload members named in ``wanted`` out of the bundle file ``full``."""
    manifest_raw, sigs_raw = leading_members(full)
    offset = sum(512 + len(d) + tarfmt.padding(len(d)) for d in (manifest_raw, sigs_raw))
    with full.open("rb") as handle:
        handle.seek(offset)
        for entry in manifest["files"]:
            size = int(entry["size"])
            handle.seek(512, 1)
            if entry["path"] in wanted:
                target = dest / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                with target.open("wb") as out:
                    left = size
                    while left:
                        block = handle.read(min(CHUNK, left))
                        if not block:
                            raise DeltaError(f"{full.name} ends inside {entry['path']}")
                        out.write(block)
                        left -= len(block)
                if entry["mode"] == "0755":
                    target.chmod(0o755)
                handle.seek(tarfmt.padding(size), 1)
            else:
                handle.seek(size + tarfmt.padding(size), 1)


def make_delta(
    full: Path, base: Path, output: Path, *, signers: list[Signer], created: datetime
) -> dict[str, Any]:
    """Write the delta from ``base`` to the already packed ``full`` bundle into ``output``."""
    target_raw, target_sigs = leading_members(full)
    base_raw, _ = leading_members(base)
    target = validate(parse_canonical(target_raw, "manifest.json"))
    base_manifest = validate(parse_canonical(base_raw, f"{base.name} manifest.json"))
    if base_manifest["name"] != target["name"]:
        raise UsageError(
            f"--base {base.name} is bundle {base_manifest['name']!r}, not {target['name']!r}"
        )
    known = {f["path"]: (f["sha256"], f["mode"]) for f in base_manifest["files"]}
    changed = [
        f["path"] for f in target["files"] if known.get(f["path"]) != (f["sha256"], f["mode"])
    ]
    reused = len(target["files"]) - len(changed)
    info = {
        "format": DELTA_FORMAT,
        "base": {
            "name": base_manifest["name"],
            "version": base_manifest["version"],
            "manifest_sha256": hashlib.sha256(base_raw).hexdigest(),
        },
        "target": {
            "name": target["name"],
            "version": target["version"],
            "manifest_sha256": hashlib.sha256(target_raw).hexdigest(),
        },
        "changed": changed,
        "reused": reused,
    }
    with tempfile.TemporaryDirectory(prefix=".delta.", dir=output.parent) as tmp:
        stage = Path(tmp) / "stage"
        (stage / DELTA_DIR).mkdir(parents=True)
        atomic_write_bytes(stage / DELTA_DIR / "delta.json", canonical_bytes(info))
        atomic_write_bytes(stage / DELTA_DIR / "manifest.json", target_raw)
        atomic_write_bytes(stage / DELTA_DIR / "signatures.json", target_sigs)
        _copy_members(full, target, set(changed), stage / PAYLOAD_DIR)
        comps = [{"name": "delta", "kind": "files", "path": f"{DELTA_DIR}/"}]
        if changed:
            comps.append({"name": "changed-files", "kind": "files", "path": f"{PAYLOAD_DIR}/"})
        manifest = pack_bundle(
            stage,
            output,
            name=target["name"],
            version=target["version"],
            signers=signers,
            expires=parse_time(target["expires"]) if target["expires"] else None,
            target=target["target"],
            components=comps,
            threshold=target["signature_policy"]["threshold"],
            build={"delta": {k: info[k] for k in ("base", "target", "reused")}},
            created=created,
        )
    return {
        "base": info["base"],
        "target": info["target"],
        "changed": len(changed),
        "reused": reused,
        "changed_bytes": sum(int(f["size"]) for f in target["files"] if f["path"] in set(changed)),
        "delta_size": output.stat().st_size,
        "delta_files": len(manifest["files"]),
    }


def _write_member(out: BinaryIO, src: Path, entry: dict[str, Any], mtime: int) -> None:
    size = int(entry["size"])
    try:
        actual = src.stat().st_size
    except FileNotFoundError:
        raise DeltaError(f"{entry['path']} is in neither the delta nor the base bundle") from None
    if actual != size:
        raise DeltaError(f"{entry['path']} has {actual} bytes; the target manifest says {size}")
    out.write(tarfmt.header(entry["path"], size, int(entry["mode"], 8), mtime))
    digest = hashlib.sha256()
    with src.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != entry["sha256"]:
        raise DeltaError(f"{entry['path']} does not match the target manifest's sha256")
    out.write(b"\0" * tarfmt.padding(size))


def _lead(name: str, data: bytes, mtime: int) -> bytes:
    return tarfmt.header(name, len(data), 0o644, mtime) + data + b"\0" * tarfmt.padding(len(data))


class _FolderSink:
    """Receives verified payload members and writes them under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._handle: BinaryIO | None = None

    def begin(self, entry: dict[str, Any]) -> None:
        target = self.root / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        self._handle = target.open("wb")

    def write(self, data: memoryview) -> None:
        assert self._handle is not None
        self._handle.write(data)

    def end(self, entry: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.close()
        self._handle = None


def read_verified(bundle: Path, dest: Path, trust: TrustStore) -> VerifiedBundle:
    """Check a bundle's signatures and every hash while writing its payload under ``dest``.

    Base and delta are sources of bytes here, not bundles being accepted: the version floor
    is neither checked nor raised for them (the rebuilt bundle gets the full verification).
    """
    dest.mkdir(parents=True)
    try:
        handle = bundle.open("rb")
    except FileNotFoundError:
        raise BundleReadError(f"{bundle} does not exist") from None
    except OSError as exc:
        raise BundleReadError(f"cannot read {bundle}: {exc.strerror}") from None
    sink = _FolderSink(dest)
    with handle:
        return check_stream(
            FileSource(handle, lambda _n: None),
            trust,
            now=utcnow(),
            allow_downgrade=True,
            state=paths(),
            sink=sink,
        )


def apply_delta(base: Path, delta: Path, output: Path, trust: TrustStore) -> dict[str, Any]:
    """Rebuild the full bundle from ``base`` + ``delta`` into ``output`` and verify it.

    Raises the bundle verification errors of base or delta, DeltaBaseMismatchError when the
    base is not the delta's, DeltaError when the rebuilt content does not match; ``output``
    does not exist afterwards in every one of those cases.
    """
    output = output.absolute()
    if output.exists():
        raise UsageError(f"{output} already exists; choose another output file")
    try:
        return _apply(base, delta, output, trust)
    except PaiError as exc:
        record_event(
            "bundle.apply_delta",
            resource=f"file:{delta.name}",
            outcome="denied",
            details={"check": exc.code, "base": base.name, "delta": delta.name},
        )
        raise


def _apply(base: Path, delta: Path, output: Path, trust: TrustStore) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=".apply-delta.", dir=output.parent) as tmp:
        work = Path(tmp)
        base_verified = read_verified(base, work / "base", trust)
        read_verified(delta, work / "delta", trust)
        try:
            info = parse_canonical(
                (work / "delta" / DELTA_DIR / "delta.json").read_bytes(), "delta.json"
            )
            target_raw = (work / "delta" / DELTA_DIR / "manifest.json").read_bytes()
            sigs_raw = (work / "delta" / DELTA_DIR / "signatures.json").read_bytes()
        except FileNotFoundError:
            raise DeltaError(f"{delta.name} is a bundle but not a delta bundle") from None
        if not isinstance(info, dict) or info.get("format") != DELTA_FORMAT:
            raise DeltaError(f"{delta.name}: delta.json is not a {DELTA_FORMAT} document")
        if info["base"]["manifest_sha256"] != base_verified.manifest_sha256:
            raise DeltaBaseMismatchError(
                f"{delta.name} was made against {info['base']['name']} {info['base']['version']} "
                f"(manifest {info['base']['manifest_sha256'][:12]}); {base.name} is "
                f"{base_verified.name} {base_verified.version} "
                f"(manifest {base_verified.manifest_sha256[:12]})",
                hint="apply it to the bundle it was built against",
            )
        if hashlib.sha256(target_raw).hexdigest() != info["target"]["manifest_sha256"]:
            raise DeltaError(f"{delta.name}: the carried manifest does not match delta.json")
        target = validate(parse_canonical(target_raw, "target manifest.json"))
        mtime = mtime_of(target)
        changed = set(info["changed"])
        try:
            with atomic_writer(output) as out:
                out.write(_lead(MANIFEST_NAME, target_raw, mtime))
                out.write(_lead(SIGNATURES_NAME, sigs_raw, mtime))
                for entry in target["files"]:
                    root = (
                        work / "delta" / PAYLOAD_DIR if entry["path"] in changed else work / "base"
                    )
                    _write_member(out, root / entry["path"], entry, mtime)
                out.write(tarfmt.TRAILER)
        except OSError as exc:
            raise StorageError(f"cannot write {output}: {exc.strerror}") from None
        shutil.rmtree(work / "base", ignore_errors=True)
    try:
        verified = verify_bundle(output, trust)
    except PaiError:
        output.unlink(missing_ok=True)
        raise
    record_event(
        "bundle.apply_delta",
        resource=f"bundle:{verified.name}@{verified.version}",
        details={
            "base_manifest_sha256": base_verified.manifest_sha256,
            "manifest_sha256": verified.manifest_sha256,
            "changed": len(changed),
        },
    )
    return {
        "ok": True,
        "bundle": str(output),
        "name": verified.name,
        "version": verified.version,
        "manifest_sha256": verified.manifest_sha256,
        "from_delta": len(changed),
        "from_base": len(target["files"]) - len(changed),
    }
