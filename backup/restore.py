"""``pai backup restore`` and ``pai backup drill``: bring a snapshot back, verified.

Restore writes into a staging folder beside the target (same file system), checks every file
against the snapshot manifest, fsyncs, and only then swaps staging and target with one
``renameat2(RENAME_EXCHANGE)`` (two renames where the kernel lacks it). The previous state is
kept beside the target as ``<target>.pre-restore-<snapshot>``. Nothing is written before the
identity has opened the archive's header, so a wrong key leaves no trace.

A running daemon is detected by its pid file ``<state>/serve.pid``: ``pai serve`` holds an
exclusive ``flock`` on it for its whole life (docs/backup-dr.md). If that lock cannot be taken,
the daemon is running and restore refuses unless ``--force``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from pai.backup import age
from pai.backup.errors import DaemonRunningError, ManifestError
from pai.backup.repo import Repo, open_repo, read_sidecar, resolve
from pai.backup.verify import (
    Progress,
    _no_progress,
    check_blob_references,
    decrypt_blob,
    decrypt_chunked,
    read_archive,
)
from pai.errors import StorageError, UsageError
from pai.fsutil import fsync_dir

PID_FILE = "serve.pid"
RENAME_EXCHANGE = 2


def daemon_running(state: Path) -> bool:
    """True when a ``pai serve`` holds the flock on ``<state>/serve.pid``."""
    pid_file = state / PID_FILE
    try:
        fd = os.open(pid_file, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False when the kernel or libc cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, target: Path, keep_as: Path) -> Path | None:
    """Put ``staging`` at ``target``; the old target ends at ``keep_as`` (returned)."""
    if not target.exists():
        os.replace(staging, target)
        fsync_dir(target.parent)
        return None
    if _exchange(staging, target):
        os.replace(staging, keep_as)
    else:
        os.replace(target, keep_as)
        os.replace(staging, target)
    fsync_dir(target.parent)
    return keep_as


class _Staging:
    """Writes restored files under a staging root, refusing paths that leave it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str) -> Path:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not dest.parent.resolve().is_relative_to(self.root.resolve()):
            raise ManifestError(f"snapshot path {rel} escapes the restore folder")
        return dest

    def open(self, rel: str, mode: int) -> _SyncingFile:
        dest = self.path(rel)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o777)
        return _SyncingFile(os.fdopen(fd, "wb"))


class _SyncingFile:
    """A restored file. Closing starts its write-back without waiting (FADV_DONTNEED), so the
    disk works while the next file decrypts; :func:`_sync_tree` waits for all of it at the end."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def write(self, data: bytes) -> int:
        return self.handle.write(data)

    def close(self) -> None:
        self.handle.flush()
        with contextlib.suppress(OSError):
            os.posix_fadvise(self.handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        self.handle.close()


def _sync_tree(root: Path) -> None:
    """fsync every restored file, then every folder, before the swap makes them live."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder, _dirs, _files in os.walk(root):
        fsync_dir(Path(folder))


def restore_into(
    repo: Repo,
    snapshot_id: str,
    identities: list[age.Identity],
    root: Path,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Decrypt a snapshot into the (empty) folder ``root``, verifying everything on the way."""
    sidecar = read_sidecar(repo.sidecar_path(snapshot_id))
    with repo.archive_path(snapshot_id).open("rb") as handle:
        age.open_header(handle, identities)  # a wrong identity fails here, before any write
    staging = _Staging(root)
    # Ciphertext hashes (verification steps 3-4) are checked in the same pass as decryption.
    contents = read_archive(repo, sidecar, identities, staging.open, progress, check_cipher=True)
    check_blob_references(sidecar, contents.manifest)
    ciphers = {b["name"]: (int(b["size"]), str(b["sha256"])) for b in sidecar.blobs}
    for item in contents.manifest["files"]:
        if item.get("blob") or item.get("chunks"):
            dst = staging.open(item["path"], int(item.get("mode", 0o600)))
            try:
                if item.get("chunks"):
                    decrypt_chunked(repo, item, identities, dst, progress, ciphers)
                else:
                    expect = (int(item["size"]), item["sha256"])
                    cipher = ciphers[item["blob"]]
                    decrypt_blob(repo, item["blob"], identities, expect, dst, progress, cipher)
            finally:
                dst.close()
    for item in contents.manifest["files"]:
        if item.get("type") == "symlink":
            os.symlink(item["target"], staging.path(item["path"]))
    for item in contents.manifest["files"]:
        if item.get("type") == "file" and "mtime" in item:
            os.utime(staging.root / item["path"], (int(item["mtime"]), int(item["mtime"])))
    _sync_tree(root)
    files = contents.manifest["files"]
    return {
        "snapshot": snapshot_id,
        "files": len(files),
        "bytes": sum(int(f.get("size", 0)) for f in files),
        "sidecar_sha256": sidecar.sha256,
        "signer": sidecar.signer,
        "manifest": contents.manifest,
    }


def restore(
    repo_root: Path,
    wanted: str,
    identities: list[age.Identity],
    target: Path,
    *,
    force: bool = False,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Restore snapshot ``wanted`` (id, prefix or ``latest``) over ``target`` atomically."""
    repo = open_repo(repo_root)
    snapshot_id = resolve(repo, wanted)
    target = target.absolute()
    if daemon_running(target) and not force:
        raise DaemonRunningError(
            f"a pai daemon is running on {target} (it holds {target / PID_FILE})",
            hint="stop `pai serve` first, then re-run with --force",
        )
    if os.path.ismount(target):
        raise UsageError(
            f"{target} is a mount point: it cannot be swapped atomically",
            hint=f"restore with --target {target}/home and point PAI_HOME there, or keep the "
            "state folder one level below the mount",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.restore-{snapshot_id}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with repo.archive_path(snapshot_id).open("rb") as handle:
            age.open_header(handle, identities)
        staging.mkdir(mode=0o700)
        report = restore_into(repo, snapshot_id, identities, staging, progress)
        kept = _swap_in(staging, target, target.parent / f"{target.name}.pre-restore-{snapshot_id}")
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise StorageError(f"restore into {target} failed: {reason}; target unchanged") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.pop("manifest")
    report.update(target=str(target), previous=str(kept) if kept else None)
    return report


@contextlib.contextmanager
def scratch_folder(base: Path | None) -> Any:
    """A scratch folder for a drill, removed afterwards unless the operator named it."""
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
        yield Path(tempfile.mkdtemp(prefix="pai-drill-", dir=base))
        return
    folder = Path(tempfile.mkdtemp(prefix="pai-drill-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
