"""Ed25519 key files: generation, passphrase protection, loading.

A key file is canonical JSON (docs/formats/keys.md)::

    {"alg":"ed25519","kid":"<32 hex>","role":"root"|"signing"|"node",
     "type":"pai-private-key","encryption":null|{...},"private_key":"<base64>"}

Unencrypted, ``private_key`` is the raw 32-byte seed. Encrypted, it is
``ChaCha20-Poly1305(key=scrypt(passphrase, salt, n, r, p), nonce, seed, aad=kid)``. Private key
files are written 0600. The key id is the first 32 hex digits of sha256(raw public key), so it
can be recomputed from the public key alone.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pai.canonical import canonical_bytes
from pai.errors import KeyError_, PassphraseError
from pai.fsutil import atomic_write_bytes

PASSPHRASE_ENV = "PAI_PASSPHRASE"
PASSPHRASE_FILE_ENV = "PAI_PASSPHRASE_FILE"
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, what: str = "base64 value") -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise KeyError_(f"{what} is not valid base64") from None


def key_id(public: Ed25519PublicKey) -> str:
    """The key id: first 32 hex digits of sha256 over the raw 32-byte public key."""
    return hashlib.sha256(raw_public(public)).hexdigest()[:32]


def raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_from_b64(text: str) -> Ed25519PublicKey:
    raw = b64d(text, "public key")
    if len(raw) != 32:
        raise KeyError_("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_raw(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` by ``public``."""
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class PrivateKey:
    """A loaded private key with its role (root, signing, node)."""

    key: Ed25519PrivateKey
    role: str

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @property
    def kid(self) -> str:
        return key_id(self.public)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def public_document(self) -> dict[str, Any]:
        """The public half as it is written to ``*.pub`` files and trust stores."""
        return public_document(self.public, self.role)


def public_document(public: Ed25519PublicKey, role: str) -> dict[str, Any]:
    return {
        "type": "pai-public-key",
        "alg": "ed25519",
        "kid": key_id(public),
        "role": role,
        "public_key": b64e(raw_public(public)),
    }


def generate(role: str) -> PrivateKey:
    return PrivateKey(Ed25519PrivateKey.generate(), role)


def _kdf(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def encode_private(key: PrivateKey, passphrase: bytes | None) -> bytes:
    """The canonical JSON bytes of a key file, encrypted when a passphrase is given."""
    seed = key.key.private_bytes_raw()
    doc: dict[str, Any] = {
        "type": "pai-private-key",
        "alg": "ed25519",
        "kid": key.kid,
        "role": key.role,
        "encryption": None,
        "private_key": b64e(seed),
    }
    if passphrase:
        salt, nonce = os.urandom(16), os.urandom(12)
        wrap = _kdf(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        sealed = ChaCha20Poly1305(wrap).encrypt(nonce, seed, key.kid.encode())
        doc["encryption"] = {
            "kdf": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": b64e(salt),
            "cipher": "chacha20-poly1305",
            "nonce": b64e(nonce),
        }
        doc["private_key"] = b64e(sealed)
    return canonical_bytes(doc) + b"\n"


def write_private(path: Path, key: PrivateKey, passphrase: bytes | None) -> None:
    """Write a key file with mode 0600, atomically."""
    atomic_write_bytes(path, encode_private(key, passphrase), mode=0o600)


def passphrase_from_env() -> bytes | None:
    """The passphrase scripts hand over: ``PAI_PASSPHRASE_FILE`` first, then ``PAI_PASSPHRASE``."""
    file = os.environ.get(PASSPHRASE_FILE_ENV)
    if file:
        return read_passphrase_file(Path(file))
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def read_passphrase_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PassphraseError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    data = data.rstrip(b"\r\n")
    if not data:
        raise PassphraseError(f"passphrase file {path} is empty")
    return data


def _load_json(path: Path) -> dict[str, Any]:
    import json

    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeyError_(f"key file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read key file {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise KeyError_(f"{path} is not a pai key file")
    return doc


def load_private(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    """Load a key file, decrypting it with ``passphrase`` (or the environment's) if needed."""
    doc = _load_json(path)
    if doc.get("type") != "pai-private-key" or doc.get("alg") != "ed25519":
        raise KeyError_(f"{path} is not a pai Ed25519 private key file")
    blob = b64d(str(doc.get("private_key", "")), f"{path}: private_key")
    enc = doc.get("encryption")
    if enc:
        passphrase = passphrase or passphrase_from_env()
        if not passphrase:
            raise PassphraseError(
                f"key {path} is encrypted and no passphrase was given",
                hint=f"use --passphrase-file or set {PASSPHRASE_FILE_ENV}",
            )
        try:
            wrap = _kdf(passphrase, b64d(enc["salt"]), int(enc["n"]), int(enc["r"]), int(enc["p"]))
            blob = ChaCha20Poly1305(wrap).decrypt(
                b64d(enc["nonce"]), blob, str(doc["kid"]).encode()
            )
        except InvalidTag:
            raise PassphraseError(f"wrong passphrase for key {path}") from None
        except (KeyError, TypeError, ValueError):
            raise KeyError_(f"{path}: malformed encryption parameters") from None
    if len(blob) != 32:
        raise KeyError_(f"{path}: an Ed25519 private key is 32 bytes")
    key = PrivateKey(Ed25519PrivateKey.from_private_bytes(blob), str(doc.get("role", "")))
    if key.kid != doc.get("kid"):
        raise KeyError_(f"{path}: key id does not match the key")
    return key


def load_public(path: Path) -> tuple[Ed25519PublicKey, dict[str, Any]]:
    """Load a ``*.pub`` public key document; returns the key and the document."""
    doc = _load_json(path)
    if doc.get("type") != "pai-public-key" or doc.get("alg") != "ed25519":
        raise KeyError_(f"{path} is not a pai Ed25519 public key file")
    public = public_from_b64(str(doc.get("public_key", "")))
    if key_id(public) != doc.get("kid"):
        raise KeyError_(f"{path}: key id does not match the key")
    return public, doc
