"""The backup repository: its layout, signed sidecars, the DuckDB catalog, and the repo lock.

Layout (docs/formats/backup.md)::

    <repo>/config.json                repository marker: type, version, id
    <repo>/snapshots/<id>.age         the snapshot archive (age-encrypted tar)
    <repo>/snapshots/<id>.json        its signed sidecar manifest: the commit point
    <repo>/blobs/<xx>/<name>.age      content-addressed large files, age-encrypted
    <repo>/catalog.duckdb             one row per snapshot and per blob; rebuilt by reindex
    <repo>/lock                       held (flock) by create, prune, copy and reindex
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from pai.backup.errors import (
    BusyError,
    RepositoryError,
    SidecarError,
    SidecarSignatureError,
    SnapshotNotFoundError,
    UnsupportedVersionError,
)
from pai.canonical import canonical_bytes
from pai.db import connect
from pai.errors import PaiError, UsageError
from pai.fsutil import atomic_write_bytes
from pai.keys import PrivateKey, b64d, b64e, key_id, public_from_b64, verify_raw
from pai.locking import file_lock
from pai.settings import config_section
from pai.timeutil import format_time, utcnow

REPO_TYPE = "pai-backup-repository"
SIDECAR_TYPE = "pai-backup-snapshot"
VERSION = 1
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")

CATALOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id VARCHAR PRIMARY KEY,
    time VARCHAR NOT NULL,
    host VARCHAR NOT NULL,
    files BIGINT NOT NULL,
    plain_bytes BIGINT NOT NULL,
    new_bytes BIGINT NOT NULL,
    archive_size BIGINT NOT NULL,
    archive_sha256 VARCHAR NOT NULL,
    sidecar_sha256 VARCHAR NOT NULL,
    signer VARCHAR NOT NULL,
    recipients VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    name VARCHAR PRIMARY KEY,
    size BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL
);
"""


def default_repo(repo: Path | None) -> Path:
    """``--repo``, else ``[backup] repo`` from the config file."""
    if repo is not None:
        return Path(repo).expanduser().absolute()
    configured = config_section("backup").get("repo")
    if not configured:
        raise UsageError(
            "no backup repository given", hint="pass --repo DIR or set [backup] repo in config"
        )
    return Path(str(configured)).expanduser().absolute()


@dataclass(frozen=True)
class Repo:
    """A backup repository folder."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "config.json"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.duckdb"

    def archive_path(self, snapshot_id: str) -> Path:
        return self.snapshots / f"{snapshot_id}.age"

    def sidecar_path(self, snapshot_id: str) -> Path:
        return self.snapshots / f"{snapshot_id}.json"

    def blob_path(self, name: str) -> Path:
        return self.blobs / name[:2] / f"{name}.age"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    @contextlib.contextmanager
    def lock(self, timeout: float = 600.0, *, reader: bool = False) -> Iterator[None]:
        """The writers' lock: create, prune, copy and reindex never run at once on one repo.

        A ``reader`` (copy's source) on a read-only medium goes without: no one can write
        there, so there is no writer to keep out, and the lock file could not be made.
        """
        if reader and not os.access(self.root, os.W_OK):
            yield
            return
        try:
            with file_lock(self.root / "lock", timeout=timeout):
                yield
        except PaiError as exc:
            if "is locked by another" in exc.message:
                raise BusyError(
                    f"backup repository {self.root} is busy with another backup run",
                    hint="wait for it to finish",
                ) from None
            raise


def open_repo(root: Path) -> Repo:
    """An existing repository; raises RepositoryError when ``root`` is not one."""
    repo = Repo(root)
    try:
        doc = json.loads(repo.config_file.read_bytes())
    except FileNotFoundError:
        raise RepositoryError(
            f"{root} is not a pai backup repository (no config.json)",
            hint="`pai backup create --repo DIR` makes one",
        ) from None
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"cannot read {repo.config_file}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != REPO_TYPE:
        raise RepositoryError(f"{repo.config_file} is not a pai backup repository marker")
    if doc.get("version") != VERSION:
        raise UnsupportedVersionError(
            f"backup repository version {doc.get('version')!r} is not supported (this pai "
            f"knows version {VERSION})",
            hint="use a newer pai",
        )
    return repo


def init_repo(root: Path) -> Repo:
    """Open ``root`` as a repository, creating an empty one if the folder has no marker."""
    repo = Repo(root)
    if not repo.config_file.exists():
        if root.exists() and not root.is_dir():
            raise RepositoryError(f"{root} exists and is not a folder")
        if root.exists() and any(p.name != "lock" for p in root.iterdir()):
            raise RepositoryError(
                f"{root} is not empty and is not a pai backup repository",
                hint="choose an empty folder",
            )
        root.mkdir(parents=True, exist_ok=True)
        doc = {
            "type": REPO_TYPE,
            "version": VERSION,
            "id": os.urandom(8).hex(),
            "created": format_time(utcnow()),
        }
        atomic_write_bytes(repo.config_file, canonical_bytes(doc) + b"\n")
    return open_repo(root)


def repo_id(repo: Repo) -> str:
    return str(json.loads(repo.config_file.read_bytes())["id"])


# --- sidecars -------------------------------------------------------------------------------


def sign_sidecar(body: dict[str, Any], key: PrivateKey) -> bytes:
    """The sidecar file's bytes: canonical ``{"body": ..., "signature": ...}`` and a newline."""
    signature = {
        "alg": "ed25519",
        "kid": key.kid,
        "public_key": b64e(key.public.public_bytes_raw()),
        "signature": b64e(key.sign(canonical_bytes(body))),
    }
    return canonical_bytes({"body": body, "signature": signature}) + b"\n"


@dataclass(frozen=True)
class Sidecar:
    """A parsed sidecar whose signature verified."""

    body: dict[str, Any]
    signer: str
    sha256: str

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def time(self) -> str:
        return str(self.body["time"])

    @property
    def blobs(self) -> list[dict[str, Any]]:
        return list(self.body["blobs"])


def read_sidecar(path: Path) -> Sidecar:
    """Parse a sidecar and check its signature (steps 1-2 of the verification order)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotNotFoundError(f"sidecar {path} does not exist") from None
    except OSError as exc:
        raise SidecarError(f"cannot read sidecar {path}: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
        body, sig = doc["body"], doc["signature"]
        if canonical_bytes(doc) + b"\n" != raw:
            raise ValueError("not canonical JSON")
        if not isinstance(body, dict) or not isinstance(sig, dict):
            raise ValueError("body and signature must be objects")
    except (ValueError, KeyError, TypeError, PaiError) as exc:
        raise SidecarError(f"sidecar {path} is malformed: {exc}") from None
    if body.get("type") != SIDECAR_TYPE:
        raise SidecarError(f"sidecar {path} is not a pai backup sidecar")
    if body.get("version") != VERSION:
        raise UnsupportedVersionError(
            f"sidecar {path} has version {body.get('version')!r}; this pai knows {VERSION}"
        )
    try:
        public = public_from_b64(str(sig["public_key"]))
        signature = b64d(str(sig["signature"]), "signature")
    except (KeyError, PaiError):
        raise SidecarSignatureError(f"sidecar {path} carries a malformed signature") from None
    if sig.get("alg") != "ed25519" or key_id(public) != sig.get("kid"):
        raise SidecarSignatureError(f"sidecar {path}: signature key id does not match its key")
    if not verify_raw(public, signature, canonical_bytes(body)):
        raise SidecarSignatureError(
            f"sidecar {path}: signature does not verify (the sidecar was altered)"
        )
    if path.name != f"{body.get('id')}.json":
        raise SidecarError(f"sidecar {path} names snapshot {body.get('id')!r}, not its file name")
    return Sidecar(body, str(sig["kid"]), hashlib.sha256(raw).hexdigest())


def sidecar_ids(repo: Repo) -> list[str]:
    """Ids of committed snapshots (those with a sidecar), oldest first."""
    if not repo.snapshots.is_dir():
        return []
    ids = [p.name[:-5] for p in repo.snapshots.glob("*.json") if SNAPSHOT_ID.match(p.name[:-5])]
    return sorted(ids)


# --- catalog --------------------------------------------------------------------------------


def catalog_row(sidecar: Sidecar) -> list[Any]:
    b = sidecar.body
    return [
        sidecar.id,
        b["time"],
        b["host"],
        b["sizes"]["files"],
        b["sizes"]["plain_bytes"],
        b["sizes"]["new_bytes"],
        b["archive"]["size"],
        b["archive"]["sha256"],
        sidecar.sha256,
        sidecar.signer,
        ",".join(r for r in b["recipients"]),
    ]


def _insert_blobs(con: duckdb.DuckDBPyConnection, blobs: list[dict[str, Any]]) -> None:
    """One statement for all rows: a DuckDB statement costs about a millisecond."""
    if not blobs:
        return
    values = ",".join(["(?, ?, ?)"] * len(blobs))
    params = [v for b in blobs for v in (b["name"], int(b["size"]), b["sha256"])]
    con.execute(f"INSERT OR IGNORE INTO blobs VALUES {values}", params)


def catalog_add(repo: Repo, sidecar: Sidecar) -> None:
    with connect(repo.catalog, schema=CATALOG_SCHEMA) as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM snapshots WHERE id = ?", [sidecar.id])
        con.execute("INSERT INTO snapshots VALUES (?,?,?,?,?,?,?,?,?,?,?)", catalog_row(sidecar))
        _insert_blobs(con, sidecar.blobs)
        con.execute("COMMIT")


def catalog_remove(repo: Repo, snapshot_ids: list[str], blob_names: list[str]) -> None:
    with connect(repo.catalog, schema=CATALOG_SCHEMA) as con:
        con.execute("BEGIN")
        for sid in snapshot_ids:
            con.execute("DELETE FROM snapshots WHERE id = ?", [sid])
        for name in blob_names:
            con.execute("DELETE FROM blobs WHERE name = ?", [name])
        con.execute("COMMIT")


def catalog_snapshots(repo: Repo) -> list[dict[str, Any]]:
    """The catalog's rows, oldest first."""
    with connect(repo.catalog, schema=CATALOG_SCHEMA) as con:
        cursor = con.execute("SELECT * FROM snapshots ORDER BY time, id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def catalog_blobs(repo: Repo) -> dict[str, tuple[int, str]]:
    with connect(repo.catalog, schema=CATALOG_SCHEMA) as con:
        rows = con.execute("SELECT name, size, sha256 FROM blobs").fetchall()
    return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}


def reindex(repo: Repo) -> dict[str, Any]:
    """Rebuild the catalog from the sidecars alone; unreadable sidecars are reported, skipped."""
    good: list[Sidecar] = []
    bad: list[str] = []
    for sid in sidecar_ids(repo):
        try:
            good.append(read_sidecar(repo.sidecar_path(sid)))
        except PaiError as exc:
            bad.append(exc.diagnostics())
    tmp = repo.root / "catalog.duckdb.rebuild"
    tmp.unlink(missing_ok=True)
    with connect(tmp, schema=CATALOG_SCHEMA) as con:
        con.execute("BEGIN")
        for sidecar in good:
            con.execute(
                "INSERT INTO snapshots VALUES (?,?,?,?,?,?,?,?,?,?,?)", catalog_row(sidecar)
            )
            _insert_blobs(con, sidecar.blobs)
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    with file_lock(repo.catalog.with_name("catalog.duckdb.lock")):
        repo.catalog.with_name("catalog.duckdb.wal").unlink(missing_ok=True)
        os.replace(tmp, repo.catalog)
    tmp.with_name(tmp.name + ".lock").unlink(missing_ok=True)
    return {"snapshots": len(good), "unreadable": bad}


def resolve(repo: Repo, wanted: str) -> str:
    """A full snapshot id from an id, a unique prefix, or ``latest``."""
    ids = sidecar_ids(repo)
    if wanted == "latest":
        if not ids:
            raise SnapshotNotFoundError(f"repository {repo.root} holds no snapshots")
        return ids[-1]
    matches = [i for i in ids if i.startswith(wanted)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SnapshotNotFoundError(
            f"no snapshot {wanted!r} in {repo.root}", hint="`pai backup list` shows the ids"
        )
    raise UsageError(f"snapshot id prefix {wanted!r} is ambiguous ({len(matches)} match)")


def clean_stale(repo: Repo) -> list[str]:
    """Remove what an interrupted writer left: temp files and archives with no sidecar.

    Only called under the repo lock, so no live writer owns them.
    """
    removed: list[str] = []
    for folder in (repo.root, repo.snapshots, repo.blobs, *repo.blobs.glob("??")):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.name.endswith(".tmp") and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(repo.rel(path))
    if repo.snapshots.is_dir():
        for archive in repo.snapshots.glob("*.age"):
            if not archive.with_suffix(".json").exists():
                archive.unlink(missing_ok=True)
                removed.append(repo.rel(archive))
    return removed
