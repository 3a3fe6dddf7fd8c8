"""The byte layout of bundle tar members: canonical ustar headers, padding, the trailer.

pai writes tar headers itself rather than through :mod:`tarfile` because the format requires
one exact header per manifest entry: the verifier rebuilds that header from the manifest and
compares bytes, so every byte of a bundle is covered by the signed manifest. The headers are
plain POSIX ustar, so GNU tar, bsdtar and Python's tarfile read bundles too.

Header (512 bytes), fields NUL-padded::

    name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] typeflag[1] linkname[100]
    magic[6]="ustar\\0" version[2]="00" uname[32] gname[32] devmajor[8] devminor[8]
    prefix[155] pad[12]
"""

from __future__ import annotations

from dataclasses import dataclass

BLOCK = 512
TRAILER = b"\0" * (2 * BLOCK)
MAX_OCTAL_SIZE = 8**11 - 1  # what 11 octal digits hold; larger sizes use base-256
REGULAR = b"0"


def padding(size: int) -> int:
    """Zero bytes that follow ``size`` data bytes up to the next block boundary."""
    return -size % BLOCK


def split_name(path: str) -> tuple[bytes, bytes] | None:
    """Split ``path`` into ustar (prefix, name), or None when it cannot be represented."""
    raw = path.encode("utf-8")
    if len(raw) <= 100:
        return b"", raw
    # the prefix ends at a '/', which is not stored; the name part must be non-empty
    for cut in range(min(len(raw) - 1, 155), 0, -1):
        if raw[cut : cut + 1] == b"/" and len(raw) - cut - 1 <= 100:
            return raw[:cut], raw[cut + 1 :]
    return None


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _size_field(size: int) -> bytes:
    if size <= MAX_OCTAL_SIZE:
        return _octal(size, 12)
    # GNU base-256: first byte 0x80, the rest the big-endian value
    return b"\x80" + size.to_bytes(11, "big")


def header(path: str, size: int, mode: int, mtime: int) -> bytes:
    """The canonical header of one regular-file member (uid/gid 0, empty user/group names)."""
    parts = split_name(path)
    if parts is None:
        raise ValueError(f"path {path!r} does not fit a ustar header")
    prefix, name = parts
    block = bytearray(BLOCK)
    block[0:100] = name.ljust(100, b"\0")
    block[100:108] = _octal(mode, 8)
    block[108:116] = _octal(0, 8)
    block[116:124] = _octal(0, 8)
    block[124:136] = _size_field(size)
    block[136:148] = _octal(mtime, 12)
    block[148:156] = b" " * 8
    block[156:157] = REGULAR
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[329:337] = _octal(0, 8)
    block[337:345] = _octal(0, 8)
    block[345:500] = prefix.ljust(155, b"\0")
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


@dataclass(frozen=True)
class ParsedHeader:
    """What a header claims, parsed leniently so errors can say what the member is."""

    name: str
    size: int
    typeflag: bytes
    linkname: str


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _number(field: bytes) -> int | None:
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        return -value if field[:1] == b"\xff" else value
    text = _cstr(field).strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        return None


def checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == computed


def parse(block: bytes) -> ParsedHeader | str:
    """Parse a header block; returns a reason string when it is not a usable tar header."""
    if not checksum_ok(block):
        return "header checksum mismatch"
    size = _number(block[124:136])
    if size is None or size < 0:
        return "size field is not a number"
    name = _cstr(block[0:100])
    if block[257:262] == b"ustar":
        prefix = _cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    return ParsedHeader(
        name=name.decode("utf-8", "backslashreplace"),
        size=size,
        typeflag=block[156:157] or b"\0",
        linkname=_cstr(block[157:257]).decode("utf-8", "backslashreplace"),
    )
