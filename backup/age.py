"""The age v1 file format (https://age-encryption.org/v1), streaming, on ``cryptography``.

Backups are written in age so that cron on a node needs only a public key, and an operator in an
emergency can decrypt a snapshot with the standard ``age`` binary. Only what pai needs is here:
X25519 recipients and identities (``age1...`` / ``AGE-SECRET-KEY-1...``), the scrypt
passphrase recipient, and the STREAM payload (64 KiB ChaCha20-Poly1305 chunks). Encryption and
decryption use constant memory whatever the file size.

Errors: :class:`NoIdentityMatchError` when no given identity opens the header (wrong key or
passphrase), :class:`AgeHeaderError` for a malformed or tampered header,
:class:`AgePayloadError` when a payload chunk fails authentication or the file is truncated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pai.errors import KeyError_, PaiError, PassphraseError, UsageError

INTRO = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024
TAG = 16
X25519_LABEL = b"age-encryption.org/v1/X25519"
SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
DEFAULT_SCRYPT_LOG_N = 18
MAX_SCRYPT_LOG_N = 22
RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"


class AgeError(PaiError):
    """An age file cannot be decrypted."""

    code = "age"


class AgeHeaderError(AgeError):
    """The age header is malformed, of an unknown version, or its MAC does not verify."""

    code = "age-header"


class AgePayloadError(AgeError):
    """A payload chunk failed authentication, or the payload is truncated or extended."""

    code = "age-payload"


class NoIdentityMatchError(KeyError_):
    """None of the given identities (or the passphrase) opens the file."""

    code = "wrong-identity"


class Writable(Protocol):
    """Anything with ``write(bytes)``: a file, or a hashing wrapper around one."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class Readable(Protocol):
    """A binary source: a file, or a wrapper that hashes the ciphertext as it is read."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int = -1, /) -> bytes: ...


# --- bech32 (BIP 173, without the 90-character limit, as age uses it) -----------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _GEN[i] if ((top >> i) & 1) else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], frm: int, to: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to) - 1
    for value in data:
        acc = (acc << frm) | value
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or ((acc << (to - bits)) & maxv):
        return None
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    values = _convert_bits(data, 8, 5, True) or []
    polymod = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[v] for v in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Decode a bech32 string; raises ValueError when it is malformed."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator or checksum")
    hrp, rest = text[:pos], text[pos + 1 :]
    try:
        values = [_CHARSET.index(c) for c in rest]
    except ValueError:
        raise ValueError("invalid character") from None
    if _polymod([*_hrp_expand(hrp), *values]) != 1:
        raise ValueError("bad checksum")
    data = _convert_bits(values[:-6], 5, 8, False)
    if data is None:
        raise ValueError("bad padding")
    return hrp, bytes(data)


# --- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class X25519Recipient:
    """A public key ``age1...`` that files are encrypted to."""

    public: bytes

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        try:
            hrp, data = bech32_decode(text.strip())
        except ValueError as exc:
            raise UsageError(f"recipient {text!r} is not an age public key ({exc})") from None
        if hrp != RECIPIENT_HRP or len(data) != 32:
            raise UsageError(f"recipient {text!r} is not an age X25519 public key (age1...)")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode(RECIPIENT_HRP, self.public)

    def wrap(self, file_key: bytes) -> Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.public))
        wrap_key = _hkdf(shared, share + self.public, X25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(b"\x00" * 12, file_key, None)
        return Stanza("X25519", [_b64(share)], body)


@dataclass(frozen=True)
class X25519Identity:
    """A private key ``AGE-SECRET-KEY-1...``."""

    secret: bytes

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        try:
            hrp, data = bech32_decode(text.strip())
        except ValueError as exc:
            raise KeyError_(f"not an age identity ({exc})") from None
        if hrp != IDENTITY_HRP or len(data) != 32:
            raise KeyError_("not an age X25519 identity (AGE-SECRET-KEY-1...)")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode(IDENTITY_HRP, self.secret).upper()

    @property
    def recipient(self) -> X25519Recipient:
        private = X25519PrivateKey.from_private_bytes(self.secret)
        return X25519Recipient(private.public_key().public_bytes_raw())

    def unwrap(self, stanza: Stanza) -> bytes | None:
        if stanza.type != "X25519":
            return None
        if len(stanza.args) != 1 or len(stanza.body) != 32:
            raise AgeHeaderError("malformed X25519 recipient stanza")
        share = _unb64(stanza.args[0])
        if len(share) != 32:
            raise AgeHeaderError("malformed X25519 ephemeral share")
        private = X25519PrivateKey.from_private_bytes(self.secret)
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            raise AgeHeaderError("X25519 share is a low-order point") from None
        wrap_key = _hkdf(shared, share + self.recipient.public, X25519_LABEL)
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(b"\x00" * 12, stanza.body, None)
        except InvalidTag:
            return None


@dataclass(frozen=True)
class ScryptRecipient:
    """A passphrase; encrypts with the scrypt stanza (which must be the file's only one)."""

    passphrase: bytes
    log_n: int = DEFAULT_SCRYPT_LOG_N

    def wrap(self, file_key: bytes) -> Stanza:
        salt = os.urandom(16)
        key = _scrypt(self.passphrase, salt, self.log_n)
        body = ChaCha20Poly1305(key).encrypt(b"\x00" * 12, file_key, None)
        return Stanza("scrypt", [_b64(salt), str(self.log_n)], body)

    def unwrap(self, stanza: Stanza) -> bytes | None:
        if stanza.type != "scrypt":
            return None
        if len(stanza.args) != 2 or len(stanza.body) != 32 or not stanza.args[1].isdigit():
            raise AgeHeaderError("malformed scrypt stanza")
        if stanza.args[1].startswith("0"):
            raise AgeHeaderError("malformed scrypt work factor")
        log_n = int(stanza.args[1])
        if not 1 <= log_n <= MAX_SCRYPT_LOG_N:
            raise AgeHeaderError(f"scrypt work factor {log_n} is out of range")
        salt = _unb64(stanza.args[0])
        if len(salt) != 16:
            raise AgeHeaderError("malformed scrypt salt")
        key = _scrypt(self.passphrase, salt, log_n)
        try:
            return ChaCha20Poly1305(key).decrypt(b"\x00" * 12, stanza.body, None)
        except InvalidTag:
            return None


Recipient = X25519Recipient | ScryptRecipient
Identity = X25519Identity | ScryptRecipient


def recipient_id(recipient: Recipient) -> str:
    """What sidecars record about a recipient: the public key, or just ``scrypt``."""
    return str(recipient) if isinstance(recipient, X25519Recipient) else "scrypt"


def load_identities(path: Path) -> list[X25519Identity]:
    """Read an age identity file (``age-keygen`` output: comments and AGE-SECRET-KEY lines)."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise KeyError_(f"cannot read identity file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyError_(f"identity file {path} is not text") from None
    found: list[X25519Identity] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(X25519Identity.parse(line))
        except KeyError_ as exc:
            raise KeyError_(f"{path} line {number}: {exc.message}") from None
    if not found:
        raise KeyError_(f"identity file {path} holds no AGE-SECRET-KEY-1 line")
    return found


def identity_file_text(identity: X25519Identity, created: str) -> str:
    """The same layout ``age-keygen`` writes."""
    return f"# created: {created}\n# public key: {identity.recipient}\n{identity}\n"


# --- header ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stanza:
    type: str
    args: list[str]
    body: bytes

    def encode(self) -> bytes:
        line = " ".join(["->", self.type, *self.args]).encode() + b"\n"
        text = _b64(self.body)
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        if not lines or len(lines[-1]) == 64:
            lines.append("")
        return line + "".join(chunk + "\n" for chunk in lines).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if "=" in text or "\r" in text:
        raise AgeHeaderError("non-canonical base64 in header")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise AgeHeaderError("invalid base64 in header") from None
    if _b64(data) != text:
        raise AgeHeaderError("non-canonical base64 in header")
    return data


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _scrypt(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    return Scrypt(salt=SCRYPT_LABEL + salt, length=32, n=1 << log_n, r=8, p=1).derive(passphrase)


def _header_mac(file_key: bytes, header_without_mac: bytes) -> bytes:
    key = _hkdf(file_key, b"", b"header")
    return hmac.new(key, header_without_mac, hashlib.sha256).digest()


def _read_line(src: Readable, limit: int = 4096) -> bytes:
    line = src.readline(limit)
    if not line.endswith(b"\n"):
        raise AgeHeaderError("truncated or oversized age header line")
    return line


def _parse_header(src: Readable) -> tuple[list[Stanza], bytes, bytes]:
    """Returns (stanzas, header bytes covered by the MAC, MAC)."""
    intro = src.readline(len(INTRO) + 1)
    if intro != INTRO:
        if intro.startswith(b"age-encryption.org/"):
            raise AgeHeaderError("unsupported age format version (only v1 is known)")
        raise AgeHeaderError("not an age file (missing the age-encryption.org/v1 intro)")
    covered = bytearray(intro)
    stanzas: list[Stanza] = []
    while True:
        line = _read_line(src)
        if line.startswith(b"--- "):
            covered += b"---"
            mac = _unb64(line[4:-1].decode("ascii", "replace"))
            if len(mac) != 32:
                raise AgeHeaderError("malformed header MAC")
            if not stanzas:
                raise AgeHeaderError("age header has no recipient stanzas")
            return stanzas, bytes(covered), mac
        if not line.startswith(b"-> "):
            raise AgeHeaderError("malformed age header: expected a stanza or the MAC line")
        covered += line
        parts = line[3:-1].decode("ascii", "replace").split(" ")
        if not parts or any(not p for p in parts):
            raise AgeHeaderError("malformed stanza line")
        body_text = ""
        while True:
            body_line = _read_line(src, 66)
            covered += body_line
            chunk = body_line[:-1].decode("ascii", "replace")
            if len(chunk) > 64:
                raise AgeHeaderError("stanza body line longer than 64 columns")
            body_text += chunk
            if len(chunk) < 64:
                break
        stanzas.append(Stanza(parts[0], parts[1:], _unb64(body_text)))


# --- payload --------------------------------------------------------------------------------


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class Encryptor:
    """A write-only binary stream: what is written is encrypted to ``dst`` in age format.

    Call :meth:`close` (or leave the ``with`` block) to write the final chunk; the destination
    file itself is not closed.
    """

    def __init__(self, dst: Writable, recipients: list[Recipient]) -> None:
        if not recipients:
            raise UsageError("give at least one recipient or a passphrase")
        if any(isinstance(r, ScryptRecipient) for r in recipients) and len(recipients) > 1:
            raise UsageError("a passphrase cannot be combined with other recipients")
        file_key = os.urandom(16)
        header = bytearray(INTRO)
        for recipient in recipients:
            header += recipient.wrap(file_key).encode()
        header += b"---"
        mac = _header_mac(file_key, bytes(header))
        nonce = os.urandom(16)
        dst.write(bytes(header) + b" " + _b64(mac).encode() + b"\n" + nonce)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._dst = dst
        self._buf = bytearray()
        self._counter = 0
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        buf = self._buf
        buf += data
        # Keep at least one byte back: the final chunk must be marked as last, and a full
        # chunk is only known not to be last once more data follows it.
        pos = 0
        with memoryview(buf) as view:
            while len(buf) - pos > CHUNK:
                self._seal(view[pos : pos + CHUNK], last=False)
                pos += CHUNK
        if pos:
            del buf[:pos]
        return len(data)

    def _seal(self, chunk: bytes | memoryview, last: bool) -> None:
        self._dst.write(self._aead.encrypt(_chunk_nonce(self._counter, last), chunk, None))
        self._counter += 1

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._seal(bytes(self._buf), last=True)
            self._buf.clear()

    def __enter__(self) -> Encryptor:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()


def open_header(src: Readable, identities: list[Identity]) -> bytes:
    """Read the header from ``src`` and return the file key the identities unlock.

    Leaves ``src`` positioned at the payload nonce.
    """
    stanzas, covered, mac = _parse_header(src)
    has_scrypt = any(s.type == "scrypt" for s in stanzas)
    if has_scrypt and len(stanzas) != 1:
        raise AgeHeaderError("an scrypt stanza must be the only stanza in the header")
    file_key: bytes | None = None
    for identity in identities:
        for stanza in stanzas:
            file_key = identity.unwrap(stanza)
            if file_key is not None:
                break
        if file_key is not None:
            break
    if file_key is None:
        if has_scrypt and not any(isinstance(i, ScryptRecipient) for i in identities):
            raise NoIdentityMatchError("the file is passphrase-encrypted; give the passphrase")
        if has_scrypt:
            raise PassphraseError("wrong passphrase: it does not open the backup")
        raise NoIdentityMatchError(
            "none of the given identities opens the file (wrong identity?)",
            hint="use the AGE-SECRET-KEY file whose public key the backup was encrypted to",
        )
    if len(file_key) != 16:
        raise AgeHeaderError("malformed file key")
    if not hmac.compare_digest(_header_mac(file_key, covered), mac):
        raise AgeHeaderError("age header MAC does not verify: the header was altered")
    return file_key


def decrypt_chunks(src: Readable, file_key: bytes) -> Iterator[bytes]:
    """Yield the plaintext of the payload that follows an opened header, chunk by chunk."""
    nonce = src.read(16)
    if len(nonce) != 16:
        raise AgePayloadError("age payload is truncated (no nonce)")
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    size = CHUNK + TAG
    counter = 0
    current = src.read(size)
    while True:
        following = src.read(size) if len(current) == size else b""
        last = not following
        if len(current) < TAG:
            raise AgePayloadError("age payload is truncated")
        try:
            plain = aead.decrypt(_chunk_nonce(counter, last), current, None)
        except InvalidTag:
            raise AgePayloadError(
                f"age payload chunk {counter} fails authentication (corrupted or truncated)"
            ) from None
        if last and not plain and counter > 0:
            raise AgePayloadError("age payload ends with an empty chunk")
        yield plain
        if last:
            return
        counter += 1
        current = following


class Decryptor:
    """A read-only binary stream of the plaintext of an age file (for tarfile and friends)."""

    def __init__(self, src: Readable, identities: list[Identity]) -> None:
        self._chunks = decrypt_chunks(src, open_header(src, identities))
        self._buf = b""
        self._pos = 0
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if self._pos >= len(self._buf):
                if self._eof:
                    break
                try:
                    self._buf, self._pos = next(self._chunks), 0
                except StopIteration:
                    self._eof = True
                    break
                continue
            take = len(self._buf) - self._pos if size < 0 else size - len(out)
            piece = self._buf[self._pos : self._pos + take]
            out += piece
            self._pos += len(piece)
        return bytes(out)


def encrypt_file(src: Path, dst: BinaryIO, recipients: list[Recipient]) -> None:
    with src.open("rb") as handle, Encryptor(dst, recipients) as enc:
        while block := handle.read(1 << 20):
            enc.write(block)


def decrypt_file(src: Path, dst: BinaryIO, identities: list[Identity]) -> None:
    with src.open("rb") as handle:
        for chunk in decrypt_chunks(handle, open_header(handle, identities)):
            dst.write(chunk)
