"""Byte-level surgery on bundle files, for the tamper corpus.

Works on the raw bytes rather than through tarfile so a test can make exactly the archive an
attacker would: a renamed header with a fixed checksum, a member moved, a signature dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from pai.bundles import tarfmt

BLOCK = 512


@dataclass(frozen=True)
class Member:
    name: str
    header: int  # offset of the header block
    data: int  # offset of the first data byte
    size: int

    @property
    def end(self) -> int:
        """Offset just past the member's padding."""
        return self.data + self.size + tarfmt.padding(self.size)


def members(data: bytes) -> list[Member]:
    found = []
    offset = 0
    while offset + BLOCK <= len(data):
        block = data[offset : offset + BLOCK]
        if block.count(0) == BLOCK:
            break
        parsed = tarfmt.parse(block)
        assert not isinstance(parsed, str), parsed
        found.append(Member(parsed.name, offset, offset + BLOCK, parsed.size))
        offset = found[-1].end
    return found


def find(data: bytes, name: str) -> Member:
    return next(m for m in members(data) if m.name == name)


def rewrite_header(
    block: bytes,
    *,
    name: str | None = None,
    typeflag: bytes | None = None,
    linkname: str | None = None,
    size: int | None = None,
    fix_checksum: bool = True,
) -> bytes:
    """Change header fields and (by default) recompute the checksum, as an attacker would."""
    out = bytearray(block)
    if name is not None:
        out[0:100] = name.encode().ljust(100, b"\0")
        out[345:500] = bytes(155)
    if typeflag is not None:
        out[156:157] = typeflag
    if linkname is not None:
        out[157:257] = linkname.encode().ljust(100, b"\0")
    if size is not None:
        out[124:136] = b"%011o\0" % size
    if fix_checksum:
        out[148:156] = b" " * 8
        out[148:156] = b"%06o\0 " % sum(out)
    return bytes(out)


def with_header(data: bytes, member: Member, **fields: object) -> bytes:
    block = rewrite_header(data[member.header : member.data], **fields)  # type: ignore[arg-type]
    return data[: member.header] + block + data[member.data :]


def member_bytes(data: bytes, member: Member) -> bytes:
    return data[member.header : member.end]


def regular_member(name: str, payload: bytes, mtime: int = 0) -> bytes:
    return (
        tarfmt.header(name, len(payload), 0o644, mtime)
        + payload
        + bytes(tarfmt.padding(len(payload)))
    )


def flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)
