"""Split bundles: parts that fit FAT32 sticks, a signed parts index, verify without joining.

``pai bundle split B --size 3.9G`` writes ``B.part001``, ``B.part002``, ... and ``B.parts.json``
beside them. The index is canonical JSON::

    {"body": {"type": "pai-bundle-parts", "version": 1, "bundle_file": "B", "name": ...,
              "version": ..., "manifest_sha256": ..., "size": N, "part_size": S,
              "parts": [{"name": "B.part001", "size": ..., "sha256": ...}, ...]},
     "signatures": <signatures document over canonical(body)>}

The verifier reads the parts in index order as one stream and runs the bundle checks over
it. When a check fails it hashes every part against the index and names the damaged ones, so
only those have to be carried again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

from pai.audit import record_event
from pai.bundles.errors import (
    BundleError,
    BundleReadError,
    PartCorruptError,
    PartMissingError,
    PartsIndexError,
)
from pai.bundles.manifest import MANIFEST_NAME, MAX_MANIFEST, read_leading_member
from pai.bundles.signatures import check_signatures, parse_signatures, signatures_document
from pai.canonical import canonical_bytes, parse_canonical
from pai.errors import PaiError, UsageError
from pai.fsutil import atomic_writer
from pai.keyring import Signer
from pai.settings import Paths
from pai.trust import TrustStore

INDEX_SUFFIX = ".parts.json"
INDEX_TYPE = "pai-bundle-parts"
CHUNK = 1024 * 1024
MIN_PART = 1024 * 1024
_PART = re.compile(r"^(?P<bundle>.+)\.part(?P<n>\d{3,})$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """``3.9G``, ``500M``, ``4096``: binary units (G = GiB), rounded down to whole bytes."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"size {text!r} is not like 3.9G, 500M or a number of bytes")
    try:
        value = Decimal(match.group(1)) * _UNITS[match.group(2).lower()]
    except InvalidOperation:
        raise UsageError(f"size {text!r} is not a number") from None
    size = int(value)
    if size < MIN_PART:
        raise UsageError(f"part size {text!r} is below the 1 MiB minimum")
    return size


def part_names(bundle_file: str, count: int) -> list[str]:
    width = max(3, len(str(count)))
    return [f"{bundle_file}.part{i:0{width}d}" for i in range(1, count + 1)]


def read_index_unverified(path: Path) -> dict[str, Any]:
    """Parse a parts index and check its shape; its signatures are NOT checked here."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PartsIndexError(f"parts index {path} does not exist") from None
    except OSError as exc:
        raise PartsIndexError(f"cannot read parts index {path}: {exc.strerror}") from None
    try:
        doc = parse_canonical(raw.rstrip(b"\n"), path.name)
    except PaiError as exc:
        raise PartsIndexError(exc.message) from None
    body = doc.get("body") if isinstance(doc, dict) else None
    if not isinstance(body, dict) or body.get("type") != INDEX_TYPE or body.get("version") != 1:
        raise PartsIndexError(f"{path.name} is not a version 1 parts index")
    parts = body.get("parts")
    if not isinstance(parts, list) or not parts or not isinstance(doc.get("signatures"), dict):
        raise PartsIndexError(f"{path.name} lacks its parts or signatures")
    for part in parts:
        if not (
            isinstance(part, dict)
            and isinstance(part.get("name"), str)
            and "/" not in part["name"]
            and isinstance(part.get("size"), int)
            and isinstance(part.get("sha256"), str)
        ):
            raise PartsIndexError(f"{path.name} has a malformed part entry")
    if sum(int(p["size"]) for p in parts) != body.get("size"):
        raise PartsIndexError(f"{path.name}: part sizes do not add up to the bundle size")
    result: dict[str, Any] = doc
    return result


def total_size(index_path: Path) -> int:
    return int(read_index_unverified(index_path)["body"]["size"])


def resolve_inputs(paths_in: Path | list[Path]) -> tuple[Path | None, Path | None]:
    """(bundle file, None) for a whole bundle; (None, parts index) for a split one."""
    items = [Path(paths_in)] if isinstance(paths_in, (str, Path)) else [Path(p) for p in paths_in]
    if not items:
        raise UsageError("no bundle file given")
    indexes = [p for p in items if p.name.endswith(INDEX_SUFFIX)]
    if len(indexes) > 1:
        raise UsageError("more than one parts index given")
    if indexes:
        return None, indexes[0]
    matches = [_PART.match(p.name) for p in items]
    if len(items) == 1 and matches[0] is None:
        return items[0], None
    if any(m is None for m in matches):
        raise UsageError("several files given, but they are not all parts of one split bundle")
    stems = {m.group("bundle") for m in matches if m}
    if len(stems) != 1:
        raise UsageError(f"the parts belong to different bundles: {', '.join(sorted(stems))}")
    return None, items[0].parent / f"{stems.pop()}{INDEX_SUFFIX}"


def _given_parts(paths_in: Path | list[Path], index_path: Path) -> dict[str, Path]:
    items = [] if isinstance(paths_in, (str, Path)) else [Path(p) for p in paths_in]
    return {p.name: p for p in items if not p.name.endswith(INDEX_SUFFIX)}


def locate_parts(
    index_path: Path, paths_in: Path | list[Path], body: dict[str, Any]
) -> list[tuple[dict[str, Any], Path]]:
    """Pair each part of the index with its file; refuse missing, unknown or resized parts."""
    given = _given_parts(paths_in, index_path)
    listed = {p["name"] for p in body["parts"]}
    unknown = sorted(set(given) - listed)
    if unknown:
        raise PartsIndexError(f"{', '.join(unknown)} not listed in {index_path.name}")
    located: list[tuple[dict[str, Any], Path | None]]
    if given:  # parts named on the command line: exactly those, nothing picked up beside them
        located = [(part, given.get(part["name"])) for part in body["parts"]]
    else:
        located = [(part, index_path.parent / part["name"]) for part in body["parts"]]
    missing = [part["name"] for part, path in located if path is None or not path.is_file()]
    if missing:
        raise PartMissingError(
            f"{', '.join(missing)} not found (bundle {body['bundle_file']})",
            hint="carry the missing parts too",
        )
    found = [(part, path) for part, path in located if path is not None]
    wrong = [
        f"{part['name']} is {path.stat().st_size} bytes, the index says {part['size']}"
        for part, path in found
        if path.stat().st_size != part["size"]
    ]
    if wrong:
        raise PartCorruptError("; ".join(wrong), hint="carry those parts again")
    return found


def _part_digest(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK))
    try:
        with path.open("rb") as handle:
            while n := handle.readinto(buffer):
                digest.update(buffer[:n])
    except OSError as exc:
        raise BundleReadError(f"cannot read part {path}: {exc.strerror}") from None
    return digest.hexdigest()


class PartsSource:
    """The parts of a split bundle read as one stream.

    Part hashes are not computed while the bundle verifies: every byte that matters is
    covered by the signed manifest already, and hashing each byte twice would halve the
    throughput. Only when a check fails are the parts hashed against the index, so the error
    names the part to carry again (:meth:`blame_part`).
    """

    def __init__(
        self, located: list[tuple[dict[str, Any], Path]], progress: Callable[[int], None]
    ) -> None:
        self._located = located
        self._progress = progress
        self._index = -1
        self._handle: BinaryIO | None = None
        self._left = 0
        self._next_part()

    def _next_part(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._index += 1
        if self._index >= len(self._located):
            return
        part, path = self._located[self._index]
        try:
            self._handle = path.open("rb")
        except OSError as exc:
            raise BundleReadError(f"cannot read part {path}: {exc.strerror}") from None
        self._left = int(part["size"])

    def readinto(self, buffer: memoryview) -> int:
        while self._handle is not None and self._left == 0:
            self._next_part()
        if self._handle is None:
            return 0
        view = buffer[: min(len(buffer), self._left)]
        n = self._handle.readinto(view)  # type: ignore[attr-defined]
        if not n:
            name = self._located[self._index][0]["name"]
            raise PartCorruptError(f"part {name} is shorter than the parts index says")
        self._left -= n
        self._progress(n)
        return int(n)

    def read(self, size: int) -> bytes:
        out = bytearray(size)
        view = memoryview(out)
        got = 0
        while got < size:
            n = self.readinto(view[got:])
            if n == 0:
                break
            got += n
        return bytes(out[:got])

    def bad_parts(self) -> list[str]:
        """Every part whose sha256 differs from the index (a second pass over the parts)."""
        return [
            part["name"] for part, path in self._located if _part_digest(path) != part["sha256"]
        ]

    def blame_part(self, exc: BundleError) -> None:
        """After a failed check, name the parts that differ from the index, if any do."""
        if isinstance(exc, PartCorruptError):
            return
        self.close()
        bad = self.bad_parts()
        if bad:
            names = ", ".join(bad)
            raise PartCorruptError(
                f"part {names}: sha256 differs from the signed parts index ({exc.message})",
                hint=f"carry {names} again",
            ) from exc

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> PartsSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def load_index(index_path: Path, trust: TrustStore, at: datetime) -> dict[str, Any]:
    """Read a parts index and check that a trusted key signed it; returns the body."""
    doc = read_index_unverified(index_path)
    body: dict[str, Any] = doc["body"]
    raw_sigs = canonical_bytes(doc["signatures"])
    signed = canonical_bytes(body)
    try:
        sigdoc = parse_signatures(raw_sigs, signed, index_path.name, index_path.name)
    except BundleError as exc:
        raise PartsIndexError(exc.detail) from None
    check_signatures(sigdoc, signed, trust, at, index_path.name)
    return body


@contextlib.contextmanager
def open_parts(
    index_path: Path,
    paths_in: Path | list[Path],
    trust: TrustStore,
    at: datetime,
    progress: Callable[[int], None],
) -> Iterator[tuple[PartsSource, dict[str, Any]]]:
    body = load_index(index_path, trust, at)
    source = PartsSource(locate_parts(index_path, paths_in, body), progress)
    try:
        yield source, body
    finally:
        source.close()


def _manifest_facts(bundle: Path) -> tuple[str, str, str]:
    try:
        with bundle.open("rb") as handle:
            _header, raw = read_leading_member(handle, MANIFEST_NAME, MAX_MANIFEST, "first")
    except FileNotFoundError:
        raise BundleReadError(f"{bundle} does not exist") from None
    except OSError as exc:
        raise BundleReadError(f"cannot read {bundle}: {exc.strerror}") from None
    doc = json.loads(raw)
    return str(doc.get("name")), str(doc.get("version")), hashlib.sha256(raw).hexdigest()


def _copy(src: BinaryIO, out: BinaryIO, size: int, progress: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK))
    left = size
    while left:
        n = src.readinto(buffer[: min(CHUNK, left)])  # type: ignore[attr-defined]
        if not n:
            raise BundleReadError("the bundle file shrank while being split")
        digest.update(buffer[:n])
        out.write(buffer[:n])
        progress(n)
        left -= n
    return digest.hexdigest()


def split_bundle(
    bundle: Path,
    part_size: int,
    *,
    signers: list[Signer],
    out_dir: Path | None = None,
    progress: Callable[[int], None] | None = None,
    state: Paths | None = None,
) -> dict[str, Any]:
    """Cut ``bundle`` into parts of ``part_size`` bytes and write the signed index.

    Returns the index body. Parts are written atomically; on failure the parts already
    written are removed, and the index (written last) never names a part that is not there.
    """
    bundle = Path(bundle)
    if not signers:
        raise UsageError("the parts index needs a signing key")
    name, version, manifest_sha256 = _manifest_facts(bundle)
    size = bundle.stat().st_size
    count = max(1, -(-size // part_size))
    folder = Path(out_dir) if out_dir else bundle.parent
    names = part_names(bundle.name, count)
    advance = progress or (lambda _n: None)
    parts: list[dict[str, Any]] = []
    try:
        with bundle.open("rb") as src:
            for i, part_name in enumerate(names):
                this = min(part_size, size - i * part_size)
                with atomic_writer(folder / part_name) as out:
                    digest = _copy(src, out, this, advance)
                parts.append({"name": part_name, "size": this, "sha256": digest})
        body = {
            "type": INDEX_TYPE,
            "version": 1,
            "bundle_file": bundle.name,
            "name": name,
            "bundle_version": version,
            "manifest_sha256": manifest_sha256,
            "size": size,
            "part_size": part_size,
            "parts": parts,
        }
        signed = canonical_bytes(body)
        sigs = json.loads(signatures_document(signed, signers))
        index_path = folder / f"{bundle.name}{INDEX_SUFFIX}"
        with atomic_writer(index_path) as out:
            out.write(canonical_bytes({"body": body, "signatures": sigs}) + b"\n")
    except BaseException:
        for part in parts:
            (folder / part["name"]).unlink(missing_ok=True)
        raise
    record_event(
        "bundle.split",
        resource=f"bundle:{name}@{version}",
        details={"manifest_sha256": manifest_sha256, "parts": len(parts), "part_size": part_size},
        home=state,
    )
    return body


def join_parts(
    paths_in: Path | list[Path],
    output: Path,
    *,
    trust: TrustStore | None = None,
    at: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    state: Paths | None = None,
) -> dict[str, Any]:
    """Concatenate the parts of a split bundle into ``output``, checking each part's sha256.

    With ``trust``, the index's signatures are checked first. The joined file still has to be
    verified with :func:`pai.bundles.verify.verify_bundle` before its content is used.
    """
    from pai.timeutil import utcnow

    _bundle, index_path = resolve_inputs(paths_in)
    if index_path is None:
        raise UsageError("join needs the parts of a split bundle (or its .parts.json index)")
    if trust is not None:
        body = load_index(index_path, trust, at or utcnow())
    else:
        body = read_index_unverified(index_path)["body"]
    located = locate_parts(index_path, paths_in, body)
    advance = progress or (lambda _n: None)
    with atomic_writer(output) as out:
        for part, path in located:
            with path.open("rb") as src:
                if _copy(src, out, int(part["size"]), advance) != part["sha256"]:
                    raise PartCorruptError(
                        f"part {part['name']}: sha256 differs from the parts index",
                        hint=f"carry {part['name']} again",
                    )
    record_event(
        "bundle.join",
        resource=f"bundle:{body['name']}@{body['bundle_version']}",
        details={"manifest_sha256": body["manifest_sha256"], "parts": len(located)},
        home=state,
    )
    return body
