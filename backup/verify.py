"""``pai backup verify``: prove snapshots are intact, with or without the decryption key.

Order of checks for one snapshot (docs/formats/backup.md, "Verification order"), each failure
with its own exception:

1. the sidecar parses as canonical JSON of a known version   -> SidecarError / UnsupportedVersion
2. its Ed25519 signature verifies                             -> SidecarSignatureError
3. the archive exists with the sidecar's size and sha256      -> MissingFile / CiphertextMismatch
4. every blob it references exists with its size and sha256   -> MissingFile / CiphertextMismatch
With an identity, additionally:
5. the archive's age header opens and every payload chunk authenticates -> NoIdentityMatch /
   AgeHeaderError / AgePayloadError
6. the manifest inside names this snapshot, every path is safe, every inline file's size and
   sha256 match                                               -> ManifestError / ContentMismatch
7. every blob decrypts and its plaintext matches the manifest -> AgePayloadError / ContentMismatch
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from pai.backup import age
from pai.backup.create import MANIFEST_NAME, MANIFEST_TYPE
from pai.backup.errors import (
    CiphertextMismatchError,
    ContentMismatchError,
    ManifestError,
    MissingFileError,
    UnsupportedVersionError,
)
from pai.backup.repo import VERSION, Repo, Sidecar, read_sidecar
from pai.errors import PaiError

READ_BLOCK = 1 << 20
Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    return None


def check_ciphertext(
    repo: Repo, path: Path, size: int, sha256: str, progress: Progress = _no_progress
) -> None:
    """Steps 3 and 4: the encrypted file is there, whole and unaltered."""
    rel = repo.rel(path)
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        raise MissingFileError(f"{rel} is missing from the repository") from None
    if actual != size:
        raise CiphertextMismatchError(f"{rel}: size {actual} differs from the sidecar's {size}")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            digest.update(block)
            progress(len(block))
    if digest.hexdigest() != sha256:
        raise CiphertextMismatchError(
            f"{rel}: sha256 differs from the sidecar (altered or bit rot)"
        )


def check_keyless(repo: Repo, sidecar: Sidecar, progress: Progress = _no_progress) -> None:
    archive = sidecar.body["archive"]
    check_ciphertext(
        repo, repo.root / archive["path"], int(archive["size"]), archive["sha256"], progress
    )
    for blob in sidecar.blobs:
        check_ciphertext(
            repo, repo.blob_path(blob["name"]), int(blob["size"]), blob["sha256"], progress
        )


def safe_path(rel: str) -> PurePosixPath:
    """A manifest path that stays inside the restore folder: relative, no ``..``, no empties."""
    path = PurePosixPath(rel)
    if (
        not rel
        or path.is_absolute()
        or any(part in ("..", ".", "") for part in rel.split("/"))
        or "\x00" in rel
    ):
        raise ManifestError(f"snapshot manifest names an unsafe path {rel!r}")
    return path


def parse_manifest(data: bytes, snapshot_id: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        if not isinstance(files, list):
            raise TypeError("files must be a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"snapshot {snapshot_id}: manifest is malformed ({exc})") from None
    if manifest.get("type") != MANIFEST_TYPE:
        raise ManifestError(f"snapshot {snapshot_id}: not a pai backup manifest")
    if manifest.get("version") != VERSION:
        raise UnsupportedVersionError(
            f"snapshot {snapshot_id}: manifest version {manifest.get('version')!r} is unknown"
        )
    if manifest.get("snapshot") != snapshot_id:
        raise ManifestError(
            f"snapshot {snapshot_id}: the archive holds snapshot {manifest.get('snapshot')!r}"
            " (archive swapped for another)"
        )
    seen: set[str] = set()
    for item in files:
        safe_path(str(item.get("path", "")))
        if item["path"] in seen:
            raise ManifestError(f"snapshot {snapshot_id}: {item['path']} is listed twice")
        seen.add(item["path"])
    return dict(manifest)


@dataclass
class ArchiveContents:
    """What reading an archive found: member hashes and sizes, and the manifest."""

    manifest: dict[str, Any]
    members: dict[str, tuple[int, str]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)


class Sink(Protocol):
    """Where a restored file's bytes go; closed (and fsynced) when the file is complete."""

    def write(self, data: bytes, /) -> int: ...

    def close(self) -> None: ...


FileSink = Callable[[str, int], Sink | None]


class HashingSource:
    """Reads a ciphertext file for decryption while hashing it, so restore checks the sidecar's
    sha256 (steps 3 and 4) in the same pass as it decrypts (step 5 onwards)."""

    def __init__(self, repo: Repo, path: Path, expect: tuple[int, str] | None) -> None:
        self.repo = repo
        self.path = path
        self.expect = expect
        try:
            self.handle = path.open("rb")
        except FileNotFoundError:
            raise MissingFileError(f"{repo.rel(path)} is missing from the repository") from None
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.handle.read(size)
        self.sha.update(data)
        self.size += len(data)
        return data

    def readline(self, size: int = -1, /) -> bytes:
        data = self.handle.readline(size)
        self.sha.update(data)
        self.size += len(data)
        return data

    def finish(self) -> None:
        """Hash what is left unread and compare with the sidecar (when it was given)."""
        while self.read(READ_BLOCK):
            pass
        self.handle.close()
        if self.expect is not None and (self.size, self.sha.hexdigest()) != self.expect:
            raise CiphertextMismatchError(
                f"{self.repo.rel(self.path)}: sha256 differs from the sidecar (altered or bit rot)"
            )

    def close(self) -> None:
        self.handle.close()


def read_archive(
    repo: Repo,
    sidecar: Sidecar,
    identities: list[age.Identity],
    sink: FileSink | None = None,
    progress: Progress = _no_progress,
    check_cipher: bool = False,
) -> ArchiveContents:
    """Decrypt and walk the archive; hand every file's bytes to ``sink(path, mode)``'s file."""
    path = repo.root / sidecar.body["archive"]["path"]
    members: dict[str, tuple[int, str]] = {}
    symlinks: dict[str, str] = {}
    manifest_bytes: bytes | None = None
    archive = sidecar.body["archive"]
    expect = (int(archive["size"]), str(archive["sha256"])) if check_cipher else None
    handle = HashingSource(repo, path, expect)
    try:
        stream = age.Decryptor(handle, identities)
        try:
            # closed with handle:
            tar = tarfile.open(  # type: ignore[call-overload]  # noqa: SIM115
                fileobj=stream,
                mode="r|",
            )
            for member in tar:
                if member.name == MANIFEST_NAME and member.isfile():
                    src = tar.extractfile(member)
                    manifest_bytes = src.read() if src else b""
                    continue
                safe_path(member.name)
                if member.issym():
                    symlinks[member.name] = member.linkname
                    continue
                if not member.isfile():
                    raise ManifestError(f"{repo.rel(path)}: member {member.name} is not a file")
                src = tar.extractfile(member)
                dst = sink(member.name, member.mode) if sink else None
                digest = hashlib.sha256()
                size = 0
                while src is not None and (block := src.read(READ_BLOCK)):
                    digest.update(block)
                    size += len(block)
                    progress(len(block))
                    if dst is not None:
                        dst.write(block)
                if dst is not None:
                    dst.close()
                members[member.name] = (size, digest.hexdigest())
            while stream.read(READ_BLOCK):  # authenticate the payload to its last chunk
                pass
        except tarfile.TarError as exc:
            raise ManifestError(f"{repo.rel(path)}: archive is not a valid tar ({exc})") from None
        handle.finish()
    finally:
        handle.close()
    if manifest_bytes is None:
        raise ManifestError(f"{repo.rel(path)}: archive holds no {MANIFEST_NAME}")
    manifest = parse_manifest(manifest_bytes, sidecar.id)
    _match_members(repo.rel(path), manifest, members, symlinks)
    return ArchiveContents(manifest, members, symlinks)


def _match_members(
    where: str, manifest: dict[str, Any], members: dict[str, tuple[int, str]], links: dict[str, str]
) -> None:
    listed_inline = set()
    for item in manifest["files"]:
        name = item["path"]
        if item.get("type") == "symlink":
            if links.get(name) != item.get("target"):
                raise ContentMismatchError(f"{where}: symlink {name} differs from the manifest")
            continue
        if item.get("blob") or item.get("chunks"):
            continue
        listed_inline.add(name)
        if name not in members:
            raise ContentMismatchError(f"{where}: {name} is listed but not in the archive")
        if members[name] != (int(item["size"]), item["sha256"]):
            raise ContentMismatchError(f"{where}: {name} does not match its manifest sha256")
    unlisted = set(members) - listed_inline
    if unlisted:
        raise ManifestError(f"{where}: archive members not in the manifest: {sorted(unlisted)}")


def decrypt_blob(
    repo: Repo,
    name: str,
    identities: list[age.Identity],
    expect: tuple[int, str],
    dst: Sink | None,
    progress: Progress = _no_progress,
    cipher: tuple[int, str] | None = None,
) -> None:
    """Step 7 for one blob: decrypt, optionally write, compare size and sha256 (and, when
    ``cipher`` is given, the ciphertext's size and sha256 in the same pass)."""
    path = repo.blob_path(name)
    digest = hashlib.sha256()
    size = 0
    handle = HashingSource(repo, path, cipher)
    try:
        for chunk in age.decrypt_chunks(handle, age.open_header(handle, identities)):
            digest.update(chunk)
            size += len(chunk)
            progress(len(chunk))
            if dst is not None:
                dst.write(chunk)
        handle.finish()
    except age.AgeError as exc:
        raise type(exc)(f"{repo.rel(path)}: {exc.message}") from None
    finally:
        handle.close()
    if (size, digest.hexdigest()) != expect:
        raise ContentMismatchError(f"{repo.rel(path)}: decrypted content does not match its sha256")


class _Hashing:
    """Passes bytes on to an optional sink while hashing the whole file."""

    def __init__(self, dst: Sink | None) -> None:
        self.dst = dst
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.dst is not None:
            self.dst.write(data)
        return len(data)

    def close(self) -> None:
        return None


def decrypt_chunked(
    repo: Repo,
    item: dict[str, Any],
    identities: list[age.Identity],
    dst: Sink | None,
    progress: Progress = _no_progress,
    ciphers: dict[str, tuple[int, str]] | None = None,
) -> None:
    """A chunked database: every chunk, then the whole file, must match the manifest."""
    whole = _Hashing(dst)
    for chunk in item["chunks"]:
        expect = (int(chunk["size"]), chunk["sha256"])
        cipher = ciphers[chunk["blob"]] if ciphers is not None else None
        decrypt_blob(repo, chunk["blob"], identities, expect, whole, progress, cipher)
    if (whole.size, whole.sha.hexdigest()) != (int(item["size"]), item["sha256"]):
        raise ContentMismatchError(
            f"snapshot file {item['path']}: its chunks do not add up to the manifest's sha256"
        )


def blobs_used(item: dict[str, Any]) -> list[str]:
    """The blob names one manifest entry needs."""
    if item.get("blob"):
        return [str(item["blob"])]
    return [str(c["blob"]) for c in item.get("chunks") or []]


def verify_snapshot(
    repo: Repo,
    snapshot_id: str,
    identities: list[age.Identity] | None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Run the checks in order for one snapshot; raises the first failure."""
    sidecar = read_sidecar(repo.sidecar_path(snapshot_id))
    check_keyless(repo, sidecar, progress)
    report: dict[str, Any] = {
        "snapshot": snapshot_id,
        "signer": sidecar.signer,
        "archive_sha256": sidecar.body["archive"]["sha256"],
        "blobs": len(sidecar.blobs),
        "decrypted": False,
    }
    if identities is None:
        return report
    try:
        contents = read_archive(repo, sidecar, identities, None, progress)
    except age.AgeError as exc:
        raise type(exc)(f"{sidecar.body['archive']['path']}: {exc.message}") from None
    check_blob_references(sidecar, contents.manifest)
    done: set[str] = set()
    for item in contents.manifest["files"]:
        if item.get("chunks"):
            decrypt_chunked(repo, item, identities, None, progress)
        elif item.get("blob") and item["blob"] not in done:
            expect = (int(item["size"]), item["sha256"])
            decrypt_blob(repo, item["blob"], identities, expect, None, progress)
            done.add(item["blob"])
    report.update(decrypted=True, files=len(contents.manifest["files"]))
    return report


def check_blob_references(sidecar: Sidecar, manifest: dict[str, Any]) -> None:
    """Every blob the manifest uses must be one the signed sidecar lists (and so was checked)."""
    referenced = {b["name"] for b in sidecar.blobs}
    for item in manifest["files"]:
        for name in blobs_used(item):
            if name not in referenced:
                raise ManifestError(
                    f"snapshot {sidecar.id}: {item['path']} uses blob {name} "
                    "that the sidecar does not list"
                )


def verify_many(
    repo: Repo,
    ids: list[str],
    identities: list[age.Identity] | None,
    progress: Progress = _no_progress,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Verify each snapshot; returns (reports of those that passed, failure lines)."""
    passed: list[dict[str, Any]] = []
    failures: list[str] = []
    for sid in ids:
        try:
            passed.append(verify_snapshot(repo, sid, identities, progress))
        except PaiError as exc:
            if exc.code in ("wrong-identity", "passphrase"):
                raise
            failures.append(f"snapshot {sid}: {exc.diagnostics()}")
    return passed, failures
