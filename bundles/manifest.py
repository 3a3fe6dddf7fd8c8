"""The bundle manifest: its fields, the path rules, semver, and an unverified reader.

The manifest is the one signed document of a bundle. It lists every payload file with its
size, sha256 and mode, in archive order, so a verifier can check the archive byte for byte in
one pass. Field reference: docs/formats/bundle.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pai.bundles import tarfmt
from pai.bundles.errors import (
    BundleReadError,
    HeaderError,
    ManifestError,
    ManifestMissingError,
    MemberHeaderError,
    MissingSignatureError,
    OversizeHeaderError,
    TruncatedBundleError,
    UnsupportedFormatError,
)
from pai.canonical import parse_canonical
from pai.errors import PaiError, UsageError

FORMAT = "pai-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURES_NAME = "signatures.json"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURES_NAME})
MAX_MANIFEST = 16 * 1024 * 1024
MAX_SIGNATURES = 1024 * 1024
COMPONENT_KINDS = ("model", "index", "wheelhouse", "playbooks", "files", "sbom")
MODES = {0o644: "0644", 0o755: "0755"}
HEX64 = re.compile(r"^[0-9a-f]{64}$")

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


@dataclass(frozen=True, order=False)
class SemVer:
    """A semantic version (semver.org 2.0.0); ordering follows its precedence rules."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...]
    text: str

    def _key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # a release sorts after all of its pre-releases; numeric identifiers before alphanumeric
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: SemVer) -> bool:
        return self._key() < other._key()

    def __le__(self, other: SemVer) -> bool:
        return self._key() <= other._key()

    def __gt__(self, other: SemVer) -> bool:
        return self._key() > other._key()

    def __ge__(self, other: SemVer) -> bool:
        return self._key() >= other._key()


def parse_semver(text: str) -> SemVer:
    match = _SEMVER.match(text)
    if not match:
        raise UsageError(f"version {text!r} is not a semantic version like 1.4.0 or 2.0.0-rc.1")
    pre = tuple(match.group(4).split(".")) if match.group(4) else ()
    return SemVer(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre, text)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"bundle name {name!r} must be 1-128 of a-z 0-9 . _ - and start with a letter or digit"
        )
    return name


def path_problem(path: str) -> str | None:
    """Why ``path`` is not a safe member path, or None when it is one."""
    if not path:
        return "empty path"
    if path.startswith("/"):
        return "absolute path"
    parts = path.split("/")
    if ".." in parts:
        return "path contains '..'"
    if any(part in ("", ".") for part in parts):
        return "path has an empty or '.' component"
    if any(ord(ch) < 32 or ch in "\\\x7f" for ch in path):
        return "path contains a control character or backslash"
    if tarfmt.split_name(path) is None:
        return "path is too long for a ustar header"
    return None


def sort_key(path: str) -> bytes:
    """Member order: bytewise over the UTF-8 path."""
    return path.encode("utf-8")


def _require(cond: bool, detail: str) -> None:
    if not cond:
        raise ManifestError(detail)


def _check_time(value: Any, field: str, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    _require(
        isinstance(value, str)
        and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", value) is not None,
        f"field {field} must be a time like 2026-11-26T13:00:00Z",
    )


def validate(doc: Any) -> dict[str, Any]:
    """Check a parsed manifest's fields; raises the bundle check that fails.

    The format fields are checked first so that a manifest of a newer format is refused as
    unsupported rather than as malformed.
    """
    if not isinstance(doc, dict):
        raise ManifestError("manifest is not a JSON object")
    if doc.get("format") != FORMAT:
        raise UnsupportedFormatError(f"manifest format is {doc.get('format')!r}, not {FORMAT!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise UnsupportedFormatError(
            f"manifest format_version {doc.get('format_version')!r} is not supported "
            f"(this pai reads version {FORMAT_VERSION})",
            hint="upgrade pai on this side",
        )
    _require(isinstance(doc.get("name"), str) and bool(_NAME.match(doc["name"])), "bad name")
    _require(
        isinstance(doc.get("version"), str) and bool(_SEMVER.match(doc["version"])),
        "version is not semver",
    )
    _check_time(doc.get("created"), "created")
    _check_time(doc.get("expires"), "expires", nullable=True)
    _require(isinstance(doc.get("target"), dict), "target must be an object")
    _require(isinstance(doc.get("build"), dict), "build must be an object")
    policy = doc.get("signature_policy")
    _require(isinstance(policy, dict), "signature_policy must be an object")
    assert isinstance(policy, dict)
    signers = policy.get("signers")
    threshold = policy.get("threshold")
    _require(
        isinstance(signers, list) and all(isinstance(s, str) for s in signers),
        "signature_policy.signers must be a list of key ids",
    )
    assert isinstance(signers, list)
    _require(
        isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 1,
        "signature_policy.threshold must be a positive integer",
    )
    assert isinstance(threshold, int)
    _require(threshold <= len(set(signers)), "signature_policy.threshold exceeds its signers")
    files = doc.get("files")
    _require(isinstance(files, list), "files must be a list")
    assert isinstance(files, list)
    previous: bytes | None = None
    seen: set[str] = set()
    total = 0
    for index, entry in enumerate(files):
        _require(isinstance(entry, dict), f"files[{index}] is not an object")
        path = entry.get("path")
        _require(isinstance(path, str), f"files[{index}].path is not a string")
        problem = path_problem(path)
        _require(problem is None, f"files[{index}] {path!r}: {problem}")
        _require(path not in RESERVED_NAMES, f"files[{index}] uses reserved name {path!r}")
        parents = path.split("/")[:-1]
        _require(
            not any("/".join(parents[: i + 1]) in seen for i in range(len(parents))),
            f"files[{index}] {path!r} lies below another listed file",
        )
        seen.add(path)
        key = sort_key(path)
        _require(previous is None or key > previous, f"files are not sorted/unique at {path!r}")
        previous = key
        size = entry.get("size")
        _require(
            isinstance(size, int) and not isinstance(size, bool) and size >= 0,
            f"files[{index}].size is not a non-negative integer",
        )
        assert isinstance(size, int)
        total += size
        _require(
            isinstance(entry.get("sha256"), str) and bool(HEX64.match(entry["sha256"])),
            f"files[{index}].sha256 is not 64 lowercase hex digits",
        )
        _require(entry.get("mode") in MODES.values(), f"files[{index}].mode must be 0644 or 0755")
    _require(doc.get("total_size") == total, "total_size is not the sum of file sizes")
    components = doc.get("components")
    _require(isinstance(components, list), "components must be a list")
    assert isinstance(components, list)
    for index, comp in enumerate(components):
        _require(
            isinstance(comp, dict)
            and isinstance(comp.get("name"), str)
            and comp.get("kind") in COMPONENT_KINDS
            and isinstance(comp.get("path"), str),
            f"components[{index}] needs a name, a known kind and a path",
        )
    return doc


def mtime_of(doc: dict[str, Any]) -> int:
    """Every member's tar mtime: the manifest's ``created`` time as a Unix timestamp."""
    from pai.timeutil import parse_time

    return int(parse_time(str(doc["created"])).timestamp())


def _read_block(handle: Any, size: int, what: str) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise TruncatedBundleError(f"the file ends inside {what}")
    return bytes(data)


def read_leading_member(
    handle: Any, expected: str, limit: int, position: str
) -> tuple[bytes, bytes]:
    """Read one of the two leading members (manifest, signatures); returns (header, data).

    Raises the bundle check that fails: wrong name, not a regular file, oversize, truncated,
    non-zero padding. The header is returned so the caller can compare it with the canonical
    one once the manifest (which holds the member time) is known.
    """
    block = _read_block(handle, tarfmt.BLOCK, f"the header of {expected}")
    missing = ManifestMissingError if expected == MANIFEST_NAME else MissingSignatureError
    if block == bytes(tarfmt.BLOCK):
        raise missing(f"the archive ends where {expected} should be the {position} member")
    parsed = tarfmt.parse(block)
    if isinstance(parsed, str):
        raise HeaderError(f"{position} member: {parsed}")
    if parsed.name != expected:
        raise missing(f"the {position} member is {parsed.name!r}, not {expected}")
    if parsed.typeflag != tarfmt.REGULAR:
        raise missing(f"{expected} is not a regular file member")
    if parsed.size > limit:
        raise OversizeHeaderError(f"{expected} announces {parsed.size} bytes; the limit is {limit}")
    data = _read_block(handle, parsed.size, expected)
    pad = _read_block(handle, tarfmt.padding(parsed.size), f"the padding of {expected}")
    if pad.count(0) != len(pad):
        raise MemberHeaderError(f"the padding after {expected} is not zero")
    return block, data


def open_first(path: Path) -> Any:
    """Open a bundle, or a split bundle (its index or one of its parts), for reading its start.

    Split bundles are read across parts, so a manifest longer than the first part still
    reads. Nothing here is verified.
    """
    from pai.bundles.parts import PartsSource, locate_parts, read_index_unverified, resolve_inputs

    path = Path(path)
    _whole, index_path = resolve_inputs(path)
    try:
        if index_path is not None:
            body = read_index_unverified(index_path)["body"]
            return PartsSource(locate_parts(index_path, index_path, body), lambda _n: None)
        return path.open("rb")
    except FileNotFoundError:
        raise BundleReadError(f"{path} does not exist") from None
    except OSError as exc:
        raise BundleReadError(f"cannot read {path}: {exc.strerror}") from None


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a bundle (or split bundle), read from its first member, UNVERIFIED.

    For ``pai bundle inspect``: nothing here proves who made the bundle. Use
    :func:`pai.bundles.verify.verify_bundle` before acting on its content.
    """
    with open_first(path) as handle:
        _header, raw = read_leading_member(handle, MANIFEST_NAME, MAX_MANIFEST, "first")
    try:
        doc = parse_canonical(raw, "manifest.json")
    except PaiError as exc:
        raise ManifestError(exc.message) from None
    return validate(doc)


def read_signatures_unverified(path: Path) -> dict[str, Any]:
    """The signatures document (second member), UNVERIFIED, for inspect."""
    with open_first(path) as handle:
        read_leading_member(handle, MANIFEST_NAME, MAX_MANIFEST, "first")
        _header, raw = read_leading_member(handle, SIGNATURES_NAME, MAX_SIGNATURES, "second")
    try:
        doc = parse_canonical(raw, "signatures.json")
    except PaiError as exc:
        raise ManifestError(exc.message) from None
    if not isinstance(doc, dict):
        raise ManifestError("signatures.json is not an object")
    return doc
