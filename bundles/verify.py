"""Verifying a bundle in one streaming pass, in the order of docs/formats/bundle.md.

Nothing is staged on disk and memory does not grow with the payload: the archive is read in
1 MiB chunks, each member hashed as it streams past. Every byte of the file is accounted for:
the two leading members, each payload header (rebuilt from the manifest and compared byte for
byte), the data, the zero padding, and the end-of-archive marker followed by end of file.

The checks, in order (each raises its own :class:`~pai.bundles.errors.BundleError`):

1. ``manifest.json`` is the first member, a regular file within the size limit;
2. ``signatures.json`` is the second member, within its limit, about these manifest bytes;
3. carried revocation lists of trusted roots verify and are absorbed;
4. at least one signature over the exact manifest bytes verifies against a trusted root
   (certificate issuer, revocation, certificate validity, signature);
5. the manifest is canonical JSON of a known format version, with valid fields;
6. the signature threshold (the manifest's, or the site's ``[bundle] min_signatures``);
7. the leading headers are the canonical ones;
8. expiry;
9. anti-rollback against the highest version accepted under this name;
10. every payload member: safe path, regular file, not duplicated, listed, in order,
    canonical header, size, zero padding, sha256;
11. no member is missing; the end-of-archive marker and then end of file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pai.audit import record_event
from pai.bundles import state as rollback
from pai.bundles import tarfmt
from pai.bundles.errors import (
    BundleError,
    BundleExpiredError,
    BundleReadError,
    DuplicateMemberError,
    HeaderError,
    ManifestError,
    MemberHashError,
    MemberHeaderError,
    MemberOrderError,
    MemberSizeError,
    MissingMemberError,
    OversizeHeaderError,
    PartsIndexError,
    TrailerError,
    TruncatedBundleError,
    UnexpectedMemberError,
    UnsafeMemberTypeError,
    UnsafePathError,
)
from pai.bundles.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST,
    MAX_SIGNATURES,
    SIGNATURES_NAME,
    mtime_of,
    path_problem,
    read_leading_member,
    validate,
)
from pai.bundles.signatures import check_signatures, check_threshold, parse_signatures
from pai.canonical import parse_canonical
from pai.errors import PaiError, UsageError
from pai.settings import Paths, config_section, paths
from pai.timeutil import format_time, parse_time, utcnow
from pai.trust import TrustStore

CHUNK = 1024 * 1024
MAX_EXTENSION = 1024 * 1024
_TYPE_NAMES = {
    b"1": "a hardlink",
    b"2": "a symlink",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
}
_EXTENSIONS = {b"x", b"g", b"L", b"K"}


class Source(Protocol):
    """A byte stream of a bundle: one file, or the parts of a split bundle in order."""

    def read(self, size: int) -> bytes: ...

    def readinto(self, buffer: memoryview) -> int: ...


class Sink(Protocol):
    """Receives each payload member while it streams (extract writes files; verify has none)."""

    def begin(self, entry: dict[str, Any]) -> None: ...

    def write(self, data: memoryview) -> None: ...

    def end(self, entry: dict[str, Any]) -> None: ...


class FileSource:
    """A single bundle file, counting bytes for the progress bar."""

    def __init__(self, handle: BinaryIO, progress: Callable[[int], None]) -> None:
        self._handle = handle
        self._progress = progress

    def read(self, size: int) -> bytes:
        data = self._handle.read(size)
        self._progress(len(data))
        return data

    def readinto(self, buffer: memoryview) -> int:
        n = self._handle.readinto(buffer)  # type: ignore[attr-defined]
        self._progress(n)
        return int(n)


@dataclass
class VerifiedBundle:
    """A bundle every check passed on: its manifest and who signed it."""

    manifest: dict[str, Any]
    manifest_sha256: str
    signers: list[str]
    roots: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    downgraded_from: str | None = None

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def summary(self) -> dict[str, Any]:
        """What ``pai bundle verify --json`` prints."""
        m = self.manifest
        return {
            "ok": True,
            "name": m["name"],
            "version": m["version"],
            "created": m["created"],
            "expires": m["expires"],
            "manifest_sha256": self.manifest_sha256,
            "signers": self.signers,
            "roots": self.roots,
            "threshold": m["signature_policy"]["threshold"],
            "files": len(m["files"]),
            "total_size": m["total_size"],
            "components": [
                {k: c[k] for k in ("name", "kind", "path", "files", "size") if k in c}
                for c in m["components"]
            ],
            "parts": self.parts,
            "downgraded_from": self.downgraded_from,
        }


def _read_exact(src: Source, size: int, what: str) -> bytes:
    data = src.read(size)
    if len(data) != size:
        raise TruncatedBundleError(f"the file ends inside {what}")
    return data


def _stream_member(
    src: Source, entry: dict[str, Any], buffer: memoryview, sink: Sink | None
) -> None:
    path, size = str(entry["path"]), int(entry["size"])
    digest = hashlib.sha256()
    remaining = size
    if sink:
        sink.begin(entry)
    while remaining:
        view = buffer[: min(remaining, len(buffer))]
        n = src.readinto(view)
        if n <= 0:
            raise TruncatedBundleError(
                f"the file ends inside member {path} ({size - remaining} of {size} bytes)"
            )
        digest.update(view[:n])
        if sink:
            sink.write(view[:n])
        remaining -= n
    actual = digest.hexdigest()
    if actual != entry["sha256"]:
        raise MemberHashError(
            f"member {path}: sha256 {actual[:16]}… differs from the manifest's "
            f"{str(entry['sha256'])[:16]}…"
        )
    pad = _read_exact(src, tarfmt.padding(size), f"the padding of member {path}")
    if pad.count(0) != len(pad):
        raise MemberHeaderError(f"the padding after member {path} is not zero")
    if sink:
        sink.end(entry)


def _classify(parsed: tarfmt.ParsedHeader, ordinal: int) -> None:
    """Refuse members that are not plain regular files at safe paths."""
    if parsed.typeflag in _EXTENSIONS:
        if parsed.size > MAX_EXTENSION:
            raise OversizeHeaderError(
                f"member #{ordinal} is an extended header of {parsed.size} bytes "
                f"(limit {MAX_EXTENSION}); extended headers are not part of format v1"
            )
        raise UnexpectedMemberError(
            f"member #{ordinal} is an extended header (type {parsed.typeflag.decode()}); "
            "format v1 has none"
        )
    problem = path_problem(parsed.name)
    if problem:
        raise UnsafePathError(f"member {parsed.name!r}: {problem}")
    if parsed.typeflag in _TYPE_NAMES:
        target = f" to {parsed.linkname!r}" if parsed.typeflag in (b"1", b"2") else ""
        raise UnsafeMemberTypeError(
            f"member {parsed.name} is {_TYPE_NAMES[parsed.typeflag]}{target}; "
            "only regular files are allowed"
        )
    if parsed.typeflag not in (tarfmt.REGULAR, b"\0"):
        raise UnsafeMemberTypeError(
            f"member {parsed.name} has unsupported type {parsed.typeflag!r}"
        )


def _payload(src: Source, manifest: dict[str, Any], sink: Sink | None) -> None:
    files: list[dict[str, Any]] = manifest["files"]
    positions = {str(entry["path"]): i for i, entry in enumerate(files)}
    mtime = mtime_of(manifest)
    buffer = memoryview(bytearray(CHUNK))
    index = 0
    while True:
        expected = files[index]["path"] if index < len(files) else None
        where = f"the header of member {expected}" if expected else "the end-of-archive marker"
        block = _read_exact(src, tarfmt.BLOCK, where)
        ordinal = index + 3
        if block.count(0) == tarfmt.BLOCK:
            if expected is not None:
                raise MissingMemberError(
                    f"the archive ends before member {expected} "
                    f"({len(files) - index} of {len(files)} listed members missing)"
                )
            second = _read_exact(src, tarfmt.BLOCK, "the end-of-archive marker")
            if second.count(0) != tarfmt.BLOCK:
                raise TrailerError("the end-of-archive marker is not two zero blocks")
            if src.read(1):
                raise UnexpectedMemberError("data follows the end-of-archive marker")
            return
        parsed = tarfmt.parse(block)
        if isinstance(parsed, str):
            raise HeaderError(f"member #{ordinal} ({expected or 'after the last'}): {parsed}")
        _classify(parsed, ordinal)
        position = positions.get(parsed.name)
        if position is None:
            raise UnexpectedMemberError(f"member {parsed.name} is not listed in the manifest")
        if position < index:
            raise DuplicateMemberError(f"member {parsed.name} occurs more than once")
        if position > index:
            raise MemberOrderError(
                f"member {parsed.name} appears where {expected} should be "
                f"({expected} is missing or the members are reordered)"
            )
        entry = files[index]
        if parsed.size != entry["size"]:
            raise MemberSizeError(
                f"member {parsed.name} is {parsed.size} bytes; the manifest says {entry['size']}"
            )
        canonical = tarfmt.header(parsed.name, parsed.size, int(entry["mode"], 8), mtime)
        if block != canonical:
            raise MemberHeaderError(
                f"the header of member {parsed.name} is not the canonical one "
                "(mode, owner, time or padding differ from the manifest)"
            )
        _stream_member(src, entry, buffer, sink)
        index += 1


def min_signatures(state: Paths | None) -> int:
    """The site's own floor on the number of signers (``[bundle] min_signatures``)."""
    value = config_section("bundle", state).get("min_signatures", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError("[bundle] min_signatures must be a positive integer")
    return value


def check_stream(
    src: Source,
    trust: TrustStore,
    *,
    now: datetime,
    allow_downgrade: bool,
    state: Paths,
    sink: Sink | None = None,
    expected_manifest_sha256: str | None = None,
) -> VerifiedBundle:
    """Run every check over one bundle stream; records nothing (see :func:`verify_bundle`)."""
    manifest_header, raw_manifest = read_leading_member(src, MANIFEST_NAME, MAX_MANIFEST, "first")
    sigs_header, raw_sigs = read_leading_member(src, SIGNATURES_NAME, MAX_SIGNATURES, "second")
    manifest_sha256 = hashlib.sha256(raw_manifest).hexdigest()
    if expected_manifest_sha256 and manifest_sha256 != expected_manifest_sha256:
        raise PartsIndexError("the parts index belongs to another bundle (manifest hash differs)")
    sigdoc = parse_signatures(raw_sigs, raw_manifest, SIGNATURES_NAME, MANIFEST_NAME)
    check = check_signatures(sigdoc, raw_manifest, trust, now, MANIFEST_NAME)
    try:
        manifest = validate(parse_canonical(raw_manifest, MANIFEST_NAME))
    except BundleError:
        raise
    except PaiError as exc:
        raise ManifestError(exc.message) from None
    policy = manifest["signature_policy"]
    threshold = max(int(policy["threshold"]), min_signatures(state))
    signers = check_threshold(check, list(policy["signers"]), threshold, MANIFEST_NAME)
    mtime = mtime_of(manifest)
    if manifest_header != tarfmt.header(MANIFEST_NAME, len(raw_manifest), 0o644, mtime) or (
        sigs_header != tarfmt.header(SIGNATURES_NAME, len(raw_sigs), 0o644, mtime)
    ):
        raise MemberHeaderError("the header of manifest.json or signatures.json is not canonical")
    if manifest["expires"] is not None and now > parse_time(manifest["expires"]):
        raise BundleExpiredError(
            f"bundle {manifest['name']} {manifest['version']} expired on {manifest['expires']} "
            f"(now {format_time(now)})",
            hint="ask the build site for a fresh bundle",
        )
    floor = rollback.check_floor(state, manifest["name"], manifest["version"], allow_downgrade)
    _payload(src, manifest, sink)
    return VerifiedBundle(
        manifest=manifest,
        manifest_sha256=manifest_sha256,
        signers=signers,
        roots=check.roots,
        downgraded_from=floor.version if floor else None,
    )


def _audit_denied(action: str, label: str, exc: PaiError, state: Paths) -> None:
    record_event(
        action,
        resource=f"file:{label}",
        outcome="denied",
        details={"check": exc.code, "file": label},
        home=state,
    )


def accept(verified: VerifiedBundle, action: str, label: str, state: Paths) -> None:
    """Raise the version floor and audit the acceptance (and a downgrade, if it was one)."""
    name, version = verified.name, verified.version
    resource = f"bundle:{name}@{version}"
    if verified.downgraded_from is not None:
        record_event(
            "bundle.downgrade",
            resource=resource,
            details={
                "name": name,
                "version": version,
                "floor": verified.downgraded_from,
                "manifest_sha256": verified.manifest_sha256,
            },
            home=state,
        )
    rollback.accept(state, name, version, verified.manifest_sha256)
    record_event(
        action,
        resource=resource,
        details={
            "name": name,
            "version": version,
            "manifest_sha256": verified.manifest_sha256,
            "signers": verified.signers,
            "file": label,
        },
        home=state,
    )


def run_verification(
    paths_in: Path | list[Path],
    trust: TrustStore,
    *,
    action: str,
    now: datetime | None,
    allow_downgrade: bool,
    state: Paths | None,
    sink: Sink | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[VerifiedBundle, str, Paths]:
    """Open the bundle or its parts, run every check, audit a refusal. Used by verify/extract."""
    from pai.bundles.parts import open_parts, resolve_inputs

    p = state or paths()
    at = now or utcnow()
    advance = progress or (lambda _n: None)
    bundle, index_path = resolve_inputs(paths_in)
    label = (index_path or bundle or Path("?")).name
    try:
        if index_path is not None:
            with open_parts(index_path, paths_in, trust, at, advance) as (src, index):
                try:
                    verified = check_stream(
                        src,
                        trust,
                        now=at,
                        allow_downgrade=allow_downgrade,
                        state=p,
                        sink=sink,
                        expected_manifest_sha256=index["manifest_sha256"],
                    )
                except BundleError as exc:
                    src.blame_part(exc)
                    raise
                verified.parts = [part["name"] for part in index["parts"]]
        else:
            assert bundle is not None
            try:
                handle = bundle.open("rb")
            except FileNotFoundError:
                raise BundleReadError(f"{bundle} does not exist") from None
            except OSError as exc:
                raise BundleReadError(f"cannot read {bundle}: {exc.strerror}") from None
            with handle:
                verified = check_stream(
                    FileSource(handle, advance),
                    trust,
                    now=at,
                    allow_downgrade=allow_downgrade,
                    state=p,
                    sink=sink,
                )
    except PaiError as exc:
        _audit_denied(action, label, exc, p)
        raise
    return verified, label, p


def verify_bundle(
    paths: Path | list[Path],
    trust: TrustStore,
    *,
    now: datetime | None = None,
    allow_downgrade: bool = False,
    state: Paths | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifiedBundle:
    """Verify a bundle file, or the parts of a split bundle given as a list (or its index).

    On success the version floor of the bundle's name is raised and a ``bundle.verify``
    audit event written (plus ``bundle.downgrade`` when ``allow_downgrade`` was needed).
    Every refusal is a :class:`~pai.bundles.errors.BundleError` subclass naming the check
    and the member or part, and is audited as ``denied``.
    """
    verified, label, p = run_verification(
        paths,
        trust,
        action="bundle.verify",
        now=now,
        allow_downgrade=allow_downgrade,
        state=state,
        progress=progress,
    )
    accept(verified, "bundle.verify", label, p)
    return verified


def input_size(paths_in: Path | list[Path]) -> int | None:
    """Total bytes a verification will read, for the progress bar (None when unknown)."""
    from pai.bundles.parts import resolve_inputs, total_size

    bundle, index = resolve_inputs(paths_in)
    try:
        if index is not None:
            return total_size(index)
        return bundle.stat().st_size if bundle else None
    except (OSError, PaiError):
        return None
