"""Packing a folder into a signed, deterministic bundle in one read of the payload.

The manifest must come first in the archive but holds every file's sha256, which is only
known after reading the file. Every variable-content field of the manifest and of the
signatures document has a fixed length (64 hex digits, 88 base64 characters), so their sizes
are known before hashing: pack writes the payload at that offset, hashing each file as it is
copied (on a second thread), then writes the two leading members in front of it.
"""

from __future__ import annotations

import hashlib
import os
import queue
import stat
import sys
import sysconfig
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pai.audit import record_event
from pai.bundles import tarfmt
from pai.bundles.manifest import (
    COMPONENT_KINDS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    RESERVED_NAMES,
    SIGNATURES_NAME,
    check_name,
    parse_semver,
    path_problem,
    sort_key,
)
from pai.bundles.signatures import signatures_document
from pai.canonical import canonical_bytes
from pai.errors import StorageError, UsageError
from pai.fsutil import atomic_writer
from pai.keyring import Signer
from pai.settings import Paths
from pai.timeutil import format_time, utcnow

CHUNK = 1024 * 1024
_PLACEHOLDER = "0" * 64


def default_target() -> dict[str, Any]:
    """The build machine's own Python tag and platform, with no accelerator requirement."""
    return {
        "python": f"cp{sys.version_info.major}{sys.version_info.minor}",
        "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
        "accelerators": [],
    }


def created_time() -> datetime:
    """``SOURCE_DATE_EPOCH`` when set (reproducible builds), else now."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        try:
            return datetime.fromtimestamp(int(epoch), tz=UTC)
        except ValueError:
            raise UsageError(f"SOURCE_DATE_EPOCH {epoch!r} is not an integer") from None
    return utcnow()


def scan(source: Path) -> list[tuple[str, Path, int, str]]:
    """Every regular file under ``source`` as (member path, file, size, mode), sorted.

    Symlinks, devices, sockets and FIFOs are refused rather than followed or skipped: a
    bundle holds exactly what the folder holds, or nothing.
    """
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder")
    found: list[tuple[str, Path, int, str]] = []

    def unreadable(exc: OSError) -> None:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}")

    for folder, dirs, files in os.walk(source, onerror=unreadable, followlinks=False):
        base = Path(folder)
        for name in [*dirs, *files]:
            full = base / name
            info = full.lstat()
            rel = full.relative_to(source).as_posix()
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                kind = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a regular file"
                raise UsageError(f"{full} is {kind}; bundles hold regular files only")
            problem = path_problem(rel)
            if problem:
                raise UsageError(f"cannot pack {full}: {problem}")
            if rel in RESERVED_NAMES:
                raise UsageError(f"cannot pack {full}: {rel} is reserved for the bundle's own use")
            mode = "0755" if info.st_mode & 0o111 else "0644"
            found.append((rel, full, info.st_size, mode))
    found.sort(key=lambda item: sort_key(item[0]))
    return found


def _components(
    components: list[dict[str, Any]], files: list[tuple[str, Path, int, str]]
) -> list[dict[str, Any]]:
    result = []
    for comp in components:
        name, kind, path = comp.get("name"), comp.get("kind"), comp.get("path")
        if not isinstance(name, str) or not name:
            raise UsageError(f"component {comp!r} needs a name")
        if kind not in COMPONENT_KINDS:
            raise UsageError(
                f"component {name}: kind {kind!r} is not one of {', '.join(COMPONENT_KINDS)}"
            )
        if not isinstance(path, str) or not path:
            raise UsageError(f"component {name} needs a path inside the bundle")
        prefix = path if path.endswith("/") else None
        members = [f for f in files if (f[0].startswith(prefix) if prefix else f[0] == path)]
        if not members:
            raise UsageError(f"component {name}: no file in the folder at {path!r}")
        result.append(
            {
                "name": name,
                "kind": kind,
                "path": path,
                "meta": comp.get("meta") or {},
                "files": len(members),
                "size": sum(m[2] for m in members),
            }
        )
    return result


def build_manifest(
    *,
    name: str,
    version: str,
    created: datetime,
    expires: datetime | None,
    target: dict[str, Any],
    components: list[dict[str, Any]],
    threshold: int,
    signer_kids: list[str],
    build: dict[str, Any],
    files: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "created": format_time(created),
        "expires": format_time(expires) if expires else None,
        "target": target,
        "components": components,
        "signature_policy": {"threshold": threshold, "signers": sorted(set(signer_kids))},
        "build": build,
        "files": files,
        "total_size": sum(int(f["size"]) for f in files),
    }


def _member(path: str, data: bytes, mtime: int) -> bytes:
    return tarfmt.header(path, len(data), 0o644, mtime) + data + b"\0" * tarfmt.padding(len(data))


class _Hasher:
    """Hashes chunks on a second thread while the first one copies (hashlib drops the GIL)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Any, bytes] | None] = queue.Queue(maxsize=16)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            item[0].update(item[1])
            self._queue.task_done()

    def feed(self, digest: Any, chunk: bytes) -> None:
        self._queue.put((digest, chunk))

    def wait(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def _copy_file(
    src: Path, size: int, out: BinaryIO, hasher: _Hasher, progress: Callable[[int], None]
) -> str:
    digest = hashlib.sha256()
    copied = 0
    try:
        with src.open("rb") as handle:
            while True:
                chunk = handle.read(CHUNK)
                if not chunk:
                    break
                copied += len(chunk)
                if copied > size:
                    break
                hasher.feed(digest, chunk)
                out.write(chunk)
                progress(len(chunk))
    except OSError as exc:
        raise UsageError(f"cannot read {src}: {exc.strerror}") from None
    if copied != size:
        raise UsageError(f"{src} changed size while being packed; pack again")
    hasher.wait()
    return digest.hexdigest()


def pack_bundle(
    source: Path,
    output: Path,
    *,
    name: str,
    version: str,
    signers: list[Signer],
    expires: datetime | None = None,
    target: dict[str, Any] | None = None,
    components: list[dict[str, Any]] | None = None,
    threshold: int = 1,
    build: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    created: datetime | None = None,
    state: Paths | None = None,
) -> dict[str, Any]:
    """Pack ``source`` into the bundle file ``output`` and return its manifest.

    Same folder content, arguments, signing keys and ``created`` (or ``SOURCE_DATE_EPOCH``)
    give the same bytes. ``output`` appears only when the whole bundle is written.
    """
    source, output = Path(source), Path(output)
    check_name(name)
    parse_semver(version)
    if not signers:
        raise UsageError("a bundle needs at least one signing key")
    kids = sorted({s.key.kid for s in signers})
    if len(kids) != len(signers):
        raise UsageError("the same signing key was given twice")
    if not 1 <= threshold <= len(kids):
        raise UsageError(f"threshold {threshold} needs between 1 and {len(kids)} signers")
    created = created or created_time()
    if expires is not None and expires <= created:
        raise UsageError(f"expiry {format_time(expires)} is not after {format_time(created)}")
    resolved_out = output.resolve()
    if resolved_out.is_relative_to(source.resolve()):
        raise UsageError(f"the output {output} must not be inside the folder being packed")
    files = scan(source)
    advance = progress or (lambda _n: None)
    listing = [{"path": p, "size": s, "sha256": _PLACEHOLDER, "mode": m} for p, _f, s, m in files]
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "created": created,
        "expires": expires,
        "target": target if target is not None else default_target(),
        "components": _components(components or [], files),
        "threshold": threshold,
        "signer_kids": kids,
        "build": build or {},
    }
    draft = canonical_bytes(build_manifest(files=listing, **fields))
    draft_sigs = signatures_document(draft, signers)
    mtime = int(created.timestamp())
    lead_size = len(_member(MANIFEST_NAME, draft, mtime)) + len(
        _member(SIGNATURES_NAME, draft_sigs, mtime)
    )
    try:
        with atomic_writer(output) as out:
            out.seek(lead_size)
            hasher = _Hasher()
            try:
                for entry, (rel, full, size, mode) in zip(listing, files, strict=True):
                    out.write(tarfmt.header(rel, size, int(mode, 8), mtime))
                    entry["sha256"] = _copy_file(full, size, out, hasher, advance)
                    out.write(b"\0" * tarfmt.padding(size))
            finally:
                hasher.close()
            out.write(tarfmt.TRAILER)
            manifest = build_manifest(files=listing, **fields)
            raw = canonical_bytes(manifest)
            lead = _member(MANIFEST_NAME, raw, mtime) + _member(
                SIGNATURES_NAME, signatures_document(raw, signers), mtime
            )
            if len(lead) != lead_size:  # a fixed-length field was not: a bug, never shipped
                raise StorageError("internal: manifest length changed while packing")
            out.seek(0)
            out.write(lead)
    except OSError as exc:
        raise StorageError(f"cannot write {output}: {exc.strerror}") from None
    record_event(
        "bundle.pack",
        resource=f"bundle:{name}@{version}",
        details={
            "name": name,
            "version": version,
            "manifest_sha256": hashlib.sha256(raw).hexdigest(),
            "signers": kids,
            "files": len(listing),
        },
        home=state,
    )
    return manifest
