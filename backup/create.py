"""``pai backup create``: a consistent, encrypted snapshot of ``$PAI_HOME``.

What is taken (docs/formats/backup.md, "Contents"): every regular file and symlink under the
state folder except caches, lock files, temp files, the daemon's pid file, this feature's own
local cache, and ``keys/root.key`` (the root key belongs offline; ``[backup]
include_root_key = true`` takes it anyway). DuckDB databases are copied while holding a shared
lock on their ``<db>.lock`` file, the lock every pai writer takes, so each database (with its
``.wal``) is a transaction-consistent copy while the daemon keeps appending audit events. A
database in a subfolder owns that folder: the files beside it (the audit log's
``checkpoints.jsonl`` and sealed segments, written by the audit writers under the same lock) are
read under that lock too, so they and the database form one consistent cut.

Files of at least ``blob_threshold`` bytes (default 1 MiB) that are not databases are stored once
per repository as content-addressed blobs; everything else goes into the snapshot archive.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import hmac
import io
import json
import os
import socket
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pai import __version__
from pai.backup import age
from pai.backup.repo import (
    SIDECAR_TYPE,
    VERSION,
    Repo,
    catalog_add,
    catalog_blobs,
    clean_stale,
    init_repo,
    read_sidecar,
    repo_id,
    sign_sidecar,
)
from pai.canonical import canonical_bytes
from pai.errors import StorageError
from pai.fsutil import atomic_write_bytes, fsync_dir
from pai.keyring import node_key
from pai.locking import file_lock
from pai.settings import Paths, config_section
from pai.timeutil import format_time

MANIFEST_NAME = "pai-backup-manifest.json"
MANIFEST_TYPE = "pai-backup-manifest"
DEFAULT_BLOB_THRESHOLD = 1 << 20
DB_SUFFIXES = (".duckdb",)
EXCLUDED_DIRS = ("cache", "backup/cache", "backup/staging")
EXCLUDED_FILES = ("serve.pid", "*.lock", "*.tmp", "*.duckdb.wal")
READ_BLOCK = 1 << 20
CHUNK = 1 << 20

Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    return None


@dataclass
class Entry:
    """One file or symlink found under the state folder."""

    rel: str
    path: Path
    st: os.stat_result

    @property
    def is_db(self) -> bool:
        return (
            self.rel.endswith(DB_SUFFIXES) or self.path.with_name(self.path.name + ".lock").exists()
        )


@dataclass
class CreateResult:
    snapshot: str
    sidecar: dict[str, Any]
    new_blobs: int
    reused_blobs: int
    removed_stale: list[str] = field(default_factory=list)


def blob_key(p: Paths) -> bytes:
    """The node's secret for naming blobs: ``HMAC-SHA256(key, sha256(plaintext))``.

    Kept in the state folder (and so inside each encrypted snapshot), never in the repository,
    so whoever holds the repository cannot test whether it contains a known file.
    """
    path = p.home / "backup" / "blob-key"
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    with file_lock(p.home / "backup" / "blob-key.lock"):
        if not path.exists():
            atomic_write_bytes(path, os.urandom(32).hex().encode() + b"\n", mode=0o600)
    return bytes.fromhex(path.read_text().strip())


def blob_name(key: bytes, plain_sha256: str) -> str:
    return hmac.new(key, bytes.fromhex(plain_sha256), hashlib.sha256).hexdigest()


def _excluded(rel: str, is_dir: bool, extra: list[str], include_root_key: bool) -> bool:
    if is_dir:
        return rel in EXCLUDED_DIRS or any(fnmatch.fnmatch(rel, pat) for pat in extra)
    name = rel.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatch(name, pat) for pat in EXCLUDED_FILES):
        return True
    if rel == "keys/root.key" and not include_root_key:
        return True
    return any(fnmatch.fnmatch(rel, pat) for pat in extra)


def scan(
    home: Path, skip: list[Path], extra: list[str], include_root_key: bool, under: str = ""
) -> list[Entry]:
    """Everything to back up (below ``under``), sorted by path; ``skip`` holds folders inside
    home to leave out."""
    found: list[Entry] = []
    skip_set = {s.resolve() for s in skip}
    for folder, dirs, files in os.walk(home / under if under else home):
        base = Path(folder)
        rel_base = base.relative_to(home).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        kept = []
        for name in sorted(dirs):
            path = base / name
            if path.is_symlink():
                files.append(name)
                continue
            if path.resolve() in skip_set or _excluded(
                prefix + name, True, extra, include_root_key
            ):
                continue
            kept.append(name)
        dirs[:] = kept
        for name in files:
            rel = prefix + name
            if _excluded(rel, False, extra, include_root_key):
                continue
            path = base / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                found.append(Entry(rel, path, st))
    return sorted(found, key=lambda e: e.rel)


# --- local cache: skip re-reading unchanged large files --------------------------------------


def _cache_file(p: Paths) -> Path:
    return p.home / "backup" / "cache" / "files.json"


def _fingerprint(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def load_cache(p: Paths) -> dict[str, Any]:
    try:
        doc = json.loads(_cache_file(p).read_bytes())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


# --- writing --------------------------------------------------------------------------------


class _HashingWriter:
    """Counts and hashes what passes through to ``dst`` (the ciphertext)."""

    def __init__(self, dst: BinaryIO) -> None:
        self.dst = dst
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.dst.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


class _HashingReader:
    """Reads exactly ``size`` bytes of a file for tarfile, hashing them on the way."""

    def __init__(self, src: BinaryIO, size: int, progress: Progress) -> None:
        self.src = src
        self.left = size
        self.sha = hashlib.sha256()
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.src.read(n)
        self.left -= len(data)
        self.sha.update(data)
        self.progress(len(data))
        return data


@contextlib.contextmanager
def _temp_in(folder: Path) -> Iterator[tuple[BinaryIO, Path]]:
    """A temp file in ``folder`` that is removed unless the caller renamed it away."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _storage(folder, exc) from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, tmp
    except OSError as exc:
        raise _storage(folder, exc) from None
    finally:
        tmp.unlink(missing_ok=True)


def _storage(where: Path, exc: OSError) -> StorageError:
    reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return StorageError(f"cannot write to {where}: {reason}; no snapshot was recorded")


def _commit(handle: BinaryIO, tmp: Path, dest: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)


class _Writer:
    """The state of one create: the repo, recipients, and what was written so far."""

    def __init__(
        self, repo: Repo, recipients: list[age.Recipient], key: bytes, progress: Progress
    ) -> None:
        self.repo = repo
        self.recipients = recipients
        self.key = key
        self.progress = progress
        self.known = catalog_blobs(repo)
        self.used: dict[str, tuple[int, str]] = {}
        self.created: list[Path] = []
        self.new_bytes = 0
        self.new_blobs = 0

    def reference(self, name: str) -> bool:
        """Use an existing blob if the repository holds it; True when it does."""
        path = self.repo.blob_path(name)
        if name in self.known and path.exists():
            self.used[name] = self.known[name]
            return True
        if path.exists():  # present but not catalogued (catalog rebuilt without it)
            sha = hashlib.sha256()
            with path.open("rb") as handle:
                while block := handle.read(READ_BLOCK):
                    sha.update(block)
            self.used[name] = (path.stat().st_size, sha.hexdigest())
            return True
        return False

    def store(self, entry: Entry) -> tuple[str, str, int]:
        """Encrypt a large file as a blob in one pass; returns (plain sha256, name, size)."""
        with entry.path.open("rb") as src:
            return self._store(iter(lambda: src.read(READ_BLOCK), b""))

    def store_chunk(self, data: bytes) -> tuple[str, str]:
        """A database chunk: hashed first, encrypted only when the repository lacks it."""
        digest = hashlib.sha256(data).hexdigest()
        name = blob_name(self.key, digest)
        if self.reference(name):
            self.progress(len(data))
            return digest, name
        digest, name, _size = self._store(iter([data]))
        return digest, name

    def _store(self, blocks: Iterator[bytes]) -> tuple[str, str, int]:
        with _temp_in(self.repo.blobs) as (handle, tmp):
            out = _HashingWriter(handle)
            plain = hashlib.sha256()
            size = 0
            with age.Encryptor(out, self.recipients) as enc:
                for block in blocks:
                    plain.update(block)
                    enc.write(block)
                    size += len(block)
                    self.progress(len(block))
            digest = plain.hexdigest()
            name = blob_name(self.key, digest)
            dest = self.repo.blob_path(name)
            if dest.exists():
                self.reference(name)
            else:
                _commit(handle, tmp, dest)
                self.created.append(dest)
                self.new_blobs += 1
                self.used[name] = (out.size, out.sha.hexdigest())
                self.new_bytes += out.size
        return digest, name, size

    def rollback(self) -> None:
        for path in self.created:
            path.unlink(missing_ok=True)


def _tar_info(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = mtime
    info.uname = info.gname = ""
    return info


def _add_file(tar: tarfile.TarFile, entry: Entry, progress: Progress) -> dict[str, Any]:
    with entry.path.open("rb") as src:
        st = os.fstat(src.fileno())
        reader = _HashingReader(src, st.st_size, progress)
        info = _tar_info(entry.rel, st.st_size, stat.S_IMODE(st.st_mode), int(st.st_mtime))
        tar.addfile(info, reader)
    return {
        "path": entry.rel,
        "type": "file",
        "size": st.st_size,
        "sha256": reader.sha.hexdigest(),
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": int(st.st_mtime),
        "blob": None,
    }


def _db_lock(entry: Entry) -> contextlib.AbstractContextManager[None]:
    """The database's own lock, shared: its writers wait, other readers go on."""
    return file_lock(entry.path.with_name(entry.path.name + ".lock"), shared=True, timeout=300)


def _copy_database(
    tar: tarfile.TarFile, w: _Writer, entry: Entry, threshold: int
) -> list[dict[str, Any]]:
    """Copy a DuckDB file and its WAL; the caller holds the database's lock.

    A database of at least ``threshold`` bytes is cut into fixed 1 MiB chunks (four DuckDB
    blocks), each a content-addressed blob: a database that changed in a few blocks since the
    last snapshot adds only those chunks.
    """
    out = []
    wal = entry.path.with_name(entry.path.name + ".wal")
    if entry.path.exists():
        if entry.path.stat().st_size >= threshold:
            out.append(_add_chunked(w, entry))
        else:
            out.append(_add_file(tar, Entry(entry.rel, entry.path, entry.path.lstat()), w.progress))
    if wal.exists():
        out.append(_add_file(tar, Entry(entry.rel + ".wal", wal, wal.lstat()), w.progress))
    return out


def _add_chunked(w: _Writer, entry: Entry) -> dict[str, Any]:
    whole = hashlib.sha256()
    chunks = []
    size = 0
    with entry.path.open("rb") as src:
        st = os.fstat(src.fileno())
        while size < st.st_size and (data := src.read(min(CHUNK, st.st_size - size))):
            whole.update(data)
            digest, name = w.store_chunk(data)
            chunks.append({"blob": name, "sha256": digest, "size": len(data)})
            size += len(data)
    return {
        "path": entry.rel,
        "type": "file",
        "size": size,
        "sha256": whole.hexdigest(),
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": int(st.st_mtime),
        "blob": None,
        "chunks": chunks,
    }


def _snapshot_id() -> tuple[str, str]:
    """``YYYYmmddTHHMMSSZ-`` and 8 hex digits: microseconds (20 bits) then 12 random bits, so
    ids sort in creation order even within one second."""
    now = datetime.now(UTC)
    suffix = (now.microsecond << 12) | int.from_bytes(os.urandom(2), "big") & 0xFFF
    return now.strftime("%Y%m%dT%H%M%SZ") + f"-{suffix:08x}", format_time(now)


def _contents(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tops: dict[str, dict[str, Any]] = {}
    for f in files:
        top = f["path"].split("/", 1)[0]
        slot = tops.setdefault(top, {"name": top, "files": 0, "bytes": 0})
        slot["files"] += 1
        slot["bytes"] += f.get("size", 0)
    return [tops[k] for k in sorted(tops)]


def create(
    p: Paths,
    repo_root: Path,
    recipients: list[age.Recipient],
    *,
    progress: Progress = _no_progress,
    lock_timeout: float = 600.0,
) -> CreateResult:
    """Take a snapshot of ``p.home`` into the repository; returns what was written."""
    settings = config_section("backup", p)
    threshold = int(settings.get("blob_threshold", DEFAULT_BLOB_THRESHOLD))
    extra = [str(x) for x in settings.get("exclude", [])]
    include_root_key = bool(settings.get("include_root_key", False))
    home = p.ensure().home
    signer = node_key(p)
    key = blob_key(p)
    repo = init_repo(repo_root)
    with repo.lock(lock_timeout):
        stale = clean_stale(repo)
        skip = [repo.root] if repo.root.resolve().is_relative_to(home.resolve()) else []
        entries = scan(home, skip, extra, include_root_key)
        writer = _Writer(repo, recipients, key, progress)
        try:
            scanned = (entries, skip, extra, include_root_key)
            result = _write_snapshot(p, repo, writer, scanned, threshold, signer)
        except BaseException:
            writer.rollback()
            raise
        result.removed_stale = stale
        return result


@dataclass
class _Plan:
    """What one create reads, and in which order (see :func:`_plan`)."""

    loose: list[Entry]
    root_databases: list[Entry]
    owned: dict[str, list[Entry]]  # folder -> the databases that own it


def _plan(entries: list[Entry]) -> _Plan:
    """A database in a subfolder owns that folder: its sibling files (segments, checkpoint
    files) are written by the database's writers under the database's lock, so they are read
    under that lock too, as one consistent cut. Databases directly in the state folder own only
    themselves and their WAL."""
    databases = [e for e in entries if e.is_db and not stat.S_ISLNK(e.st.st_mode)]
    owned: dict[str, list[Entry]] = {}
    root_databases = []
    for db in databases:
        if "/" in db.rel:
            owned.setdefault(db.rel.rsplit("/", 1)[0] + "/", []).append(db)
        else:
            root_databases.append(db)
    loose = [
        e
        for e in entries
        if not (e.is_db and not stat.S_ISLNK(e.st.st_mode))
        and not any(e.rel.startswith(folder) for folder in owned)
    ]
    return _Plan(loose, root_databases, owned)


def _write_snapshot(
    p: Paths,
    repo: Repo,
    w: _Writer,
    scanned: tuple[list[Entry], list[Path], list[str], bool],
    threshold: int,
    signer: Any,
) -> CreateResult:
    snapshot_id, time_text = _snapshot_id()
    cache = load_cache(p)
    new_cache: dict[str, Any] = {}
    files: list[dict[str, Any]] = []
    entries, skip, extra, include_root_key = scanned
    plan = _plan(entries)
    archive = repo.archive_path(snapshot_id)

    def add_plain(tar: tarfile.TarFile, entry: Entry) -> None:
        if stat.S_ISLNK(entry.st.st_mode):
            files.append(_add_symlink(tar, entry))
        elif entry.st.st_size >= threshold:
            record = _add_blob(w, entry, cache)
            new_cache[entry.rel] = {"fp": _fingerprint(entry.st), "sha256": record["sha256"]}
            files.append(record)
        else:
            files.append(_add_file(tar, entry, w.progress))

    def add_owned(tar: tarfile.TarFile, folder: str, dbs: list[Entry]) -> None:
        with contextlib.ExitStack() as locks:
            for db in sorted(dbs, key=lambda e: e.rel):
                locks.enter_context(_db_lock(db))
            inside = scan(p.home, skip, extra, include_root_key, under=folder.rstrip("/"))
            for entry in inside:
                if not entry.is_db or stat.S_ISLNK(entry.st.st_mode):
                    add_plain(tar, entry)
            for db in sorted(dbs, key=lambda e: e.rel):
                files.extend(_copy_database(tar, w, db, threshold))

    with _temp_in(repo.snapshots) as (handle, tmp):
        out = _HashingWriter(handle)
        with age.Encryptor(out, w.recipients) as enc:
            # closed below, before the encryptor:
            tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
                fileobj=enc,
                mode="w|",
                format=tarfile.PAX_FORMAT,
            )
            for entry in plan.loose:
                add_plain(tar, entry)
            for folder in sorted(plan.owned):
                add_owned(tar, folder, plan.owned[folder])
            for entry in plan.root_databases:
                with _db_lock(entry):
                    files.extend(_copy_database(tar, w, entry, threshold))
            files.sort(key=lambda f: f["path"])
            manifest = {
                "type": MANIFEST_TYPE,
                "version": VERSION,
                "snapshot": snapshot_id,
                "time": time_text,
                "host": socket.gethostname(),
                "files": files,
            }
            data = canonical_bytes(manifest) + b"\n"
            tar.addfile(_tar_info(MANIFEST_NAME, len(data), 0o600, 0), io.BytesIO(data))
            tar.close()
        _commit(handle, tmp, archive)
    w.created.append(archive)
    blobs = [{"name": n, "size": s, "sha256": h} for n, (s, h) in sorted(w.used.items())]
    body = {
        "type": SIDECAR_TYPE,
        "version": VERSION,
        "id": snapshot_id,
        "time": time_text,
        "host": socket.gethostname(),
        "repository": repo_id(repo),
        "pai_version": __version__,
        "recipients": [age.recipient_id(r) for r in w.recipients],
        "archive": {"path": repo.rel(archive), "size": out.size, "sha256": out.sha.hexdigest()},
        "blobs": blobs,
        "sizes": {
            "files": len(files),
            "plain_bytes": sum(int(f.get("size", 0)) for f in files),
            "new_bytes": out.size + w.new_bytes,
            "new_blobs": w.new_blobs,
        },
        "contents": _contents(files),
    }
    sidecar_path = repo.sidecar_path(snapshot_id)
    atomic_write_bytes(sidecar_path, sign_sidecar(body, signer))
    w.created.append(sidecar_path)
    catalog_add(repo, read_sidecar(sidecar_path))
    w.created.clear()  # committed: nothing to roll back from here on
    _save_cache(p, new_cache)
    return CreateResult(snapshot_id, body, w.new_blobs, len(blobs) - w.new_blobs)


def _add_symlink(tar: tarfile.TarFile, entry: Entry) -> dict[str, Any]:
    target = os.readlink(entry.path)
    info = _tar_info(entry.rel, 0, 0o777, int(entry.st.st_mtime))
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)
    return {"path": entry.rel, "type": "symlink", "target": target, "size": 0}


def _add_blob(w: _Writer, entry: Entry, cache: dict[str, Any]) -> dict[str, Any]:
    cached = cache.get(entry.rel)
    st = entry.path.stat()
    record = {
        "path": entry.rel,
        "type": "file",
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": int(st.st_mtime),
    }
    if cached and cached.get("fp") == _fingerprint(st):
        name = blob_name(w.key, cached["sha256"])
        if w.reference(name):
            w.progress(st.st_size)
            record.update(size=st.st_size, sha256=cached["sha256"], blob=name)
            return record
    digest, name, size = w.store(entry)
    record.update(size=size, sha256=digest, blob=name)
    return record


def _save_cache(p: Paths, entries: dict[str, Any]) -> None:
    # The cache only saves reading time; a full state disk must not fail the backup.
    with contextlib.suppress(StorageError):
        atomic_write_bytes(_cache_file(p), canonical_bytes(entries) + b"\n", mode=0o600)
