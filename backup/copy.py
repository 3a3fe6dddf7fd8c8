"""``pai backup copy --to OTHER``: replicate snapshots to a second repository, verifying.

Copies are file-for-file (the ciphertext is not re-encrypted, so no key is needed): for each
snapshot the destination lacks, its blobs, then its archive, then its sidecar (the commit point)
are streamed through sha256 and compared with the signed sidecar before they are renamed into
place. A snapshot or blob the destination already holds is not transferred again, so a second
copy moves nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pai.backup.create import _commit, _temp_in
from pai.backup.errors import CiphertextMismatchError, MissingFileError, RepositoryError
from pai.backup.repo import (
    Repo,
    catalog_add,
    clean_stale,
    init_repo,
    open_repo,
    read_sidecar,
    sidecar_ids,
)
from pai.backup.verify import READ_BLOCK, Progress, _no_progress
from pai.fsutil import atomic_write_bytes


def _copy_verified(
    src: Repo, dst: Repo, src_path: Path, dst_path: Path, size: int, sha256: str, progress: Progress
) -> int:
    """Stream one encrypted file across, refusing it if it does not match its sidecar."""
    try:
        source = src_path.open("rb")
    except FileNotFoundError:
        raise MissingFileError(f"{src.rel(src_path)} is missing from {src.root}") from None
    with source, _temp_in(dst_path.parent) as (handle, tmp):
        digest = hashlib.sha256()
        copied = 0
        while block := source.read(READ_BLOCK):
            digest.update(block)
            handle.write(block)
            copied += len(block)
            progress(len(block))
        if copied != size or digest.hexdigest() != sha256:
            raise CiphertextMismatchError(
                f"{src.root / src.rel(src_path)} does not match its sidecar; not copied",
                hint="run `pai backup verify` on the source repository",
            )
        _commit(handle, tmp, dst_path)
    return copied


def copy(src_root: Path, dst_root: Path, progress: Progress = _no_progress) -> dict[str, Any]:
    src = open_repo(src_root)
    if src.root.resolve() == dst_root.resolve():
        raise RepositoryError("source and destination are the same repository")
    dst = init_repo(dst_root)
    copied: list[str] = []
    present: list[str] = []
    transferred = 0
    with src.lock(reader=True), dst.lock():
        clean_stale(dst)
        for sid in sidecar_ids(src):
            sidecar = read_sidecar(src.sidecar_path(sid))
            dst_sidecar = dst.sidecar_path(sid)
            if dst_sidecar.exists():
                if read_sidecar(dst_sidecar).sha256 != sidecar.sha256:
                    raise RepositoryError(
                        f"snapshot {sid} exists in {dst.root} with a different sidecar"
                    )
                present.append(sid)
                continue
            for blob in sidecar.blobs:
                dst_blob = dst.blob_path(blob["name"])
                if dst_blob.exists() and dst_blob.stat().st_size == int(blob["size"]):
                    continue
                transferred += _copy_verified(
                    src,
                    dst,
                    src.blob_path(blob["name"]),
                    dst_blob,
                    int(blob["size"]),
                    blob["sha256"],
                    progress,
                )
            archive = sidecar.body["archive"]
            transferred += _copy_verified(
                src,
                dst,
                src.root / archive["path"],
                dst.root / archive["path"],
                int(archive["size"]),
                archive["sha256"],
                progress,
            )
            atomic_write_bytes(dst_sidecar, src.sidecar_path(sid).read_bytes())
            catalog_add(dst, read_sidecar(dst_sidecar))
            copied.append(sid)
    return {
        "source": str(src.root),
        "destination": str(dst.root),
        "copied": copied,
        "already_present": present,
        "bytes_transferred": transferred,
    }
