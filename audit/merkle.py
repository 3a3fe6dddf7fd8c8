"""RFC 6962 / RFC 9162 Merkle trees over event hashes.

Leaves are the 32-byte event hashes. ``leaf = SHA-256(0x00 || event_hash)``,
``node = SHA-256(0x01 || left || right)``; a tree of ``n`` leaves splits at the largest power
of two below ``n`` (RFC 9162 section 2.1.1). The domain-separation bytes keep a leaf from
passing for an inner node.

Checkpoints need the root of every prefix of the log. :class:`Frontier` keeps the roots of
the perfect subtrees that make up the prefix (one per set bit of its size), so extending the
tree costs about two hashes per leaf and a root costs ``log n``; verification walks the log
once and reads the root at each checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()


def leaf_hash(event_hash: bytes) -> bytes:
    return _sha256(b"\x00" + event_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


class Frontier:
    """The perfect-subtree roots of a growing tree, left (largest) to right."""

    __slots__ = ("nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if len(nodes) != bin(size).count("1"):
            raise ValueError("a frontier holds one root per set bit of its size")
        self.size = size
        self.nodes = list(nodes)

    def append(self, event_hash: bytes) -> None:
        node = _sha256(b"\x00" + event_hash).digest()
        size = self.size
        nodes = self.nodes
        while size & 1:
            node = _sha256(b"\x01" + nodes.pop() + node).digest()
            size >>= 1
        nodes.append(node)
        self.size += 1

    def extend(self, event_hashes: Iterable[bytes]) -> None:
        for item in event_hashes:
            self.append(item)

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        node = self.nodes[-1]
        for left in reversed(self.nodes[:-1]):
            node = _sha256(b"\x01" + left + node).digest()
        return node

    def copy(self) -> Frontier:
        return Frontier(self.size, self.nodes)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves (recursive definition of RFC 9162 section 2.1.1)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1, over already-hashed leaves."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} is outside a tree of {n}")
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if index < k:
        return [*inclusion_path(leaves[:k], index), root_of(leaves[k:])]
    return [*inclusion_path(leaves[k:], index - k), root_of(leaves[:k])]


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root an inclusion path leads to, or None when the path cannot be a valid one.

    RFC 9162 section 2.1.3.2: a path that is too long or too short for ``index`` in a tree of
    ``size`` leaves is refused, not just hashed into a wrong root.
    """
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    node = leaf
    for sibling in path:
        if len(sibling) != 32 or sn == 0:
            return None
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return node
