"""Extracting a bundle: verify while writing into a temporary folder, rename when all passed.

The temporary folder sits beside the destination (same filesystem, so the final rename is
atomic). Any failed check, any I/O error, even an interrupt, removes it: the destination
either appears complete and verified or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from pai.bundles.manifest import MANIFEST_NAME
from pai.bundles.verify import VerifiedBundle, accept, run_verification
from pai.canonical import canonical_bytes
from pai.errors import StorageError, UsageError
from pai.fsutil import fsync_dir
from pai.settings import Paths
from pai.trust import TrustStore


class _FolderSink:
    """Writes each verified-as-it-streams member below a temporary root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._handle: BinaryIO | None = None

    def begin(self, entry: dict[str, Any]) -> None:
        target = self.root / str(entry["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._handle = os.fdopen(fd, "wb")

    def write(self, data: memoryview) -> None:
        assert self._handle is not None
        self._handle.write(data)

    def end(self, entry: dict[str, Any]) -> None:
        assert self._handle is not None
        self._handle.flush()
        os.fsync(self._handle.fileno())
        os.fchmod(self._handle.fileno(), int(entry["mode"], 8))
        self._handle.close()
        self._handle = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _prepare(dest: Path) -> Path:
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise UsageError(f"{dest} already exists and is not an empty folder")
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise StorageError(f"cannot create a folder beside {dest}: {exc.strerror}") from None


def extract_bundle(
    paths: Path | list[Path],
    dest: Path,
    trust: TrustStore,
    *,
    now: datetime | None = None,
    allow_downgrade: bool = False,
    state: Paths | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifiedBundle:
    """Verify and extract a bundle (or its parts) into ``dest``, which must not exist yet.

    ``dest`` receives the payload files plus ``manifest.json`` (the verified manifest), so
    an installer can read what it holds. Audited as ``bundle.extract``.
    """
    dest = Path(dest).absolute()
    tmp = _prepare(dest)
    sink = _FolderSink(tmp)
    try:
        try:
            verified, label, p = run_verification(
                paths,
                trust,
                action="bundle.extract",
                now=now,
                allow_downgrade=allow_downgrade,
                state=state,
                sink=sink,
                progress=progress,
            )
        finally:
            sink.close()
        (tmp / MANIFEST_NAME).write_bytes(canonical_bytes(verified.manifest))
        os.chmod(tmp, 0o755)
        if dest.is_dir():
            dest.rmdir()  # checked empty in _prepare
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(
            f"cannot extract into {dest}: {exc.strerror}; nothing was left"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    accept(verified, "bundle.extract", label, p)
    return verified
