"""Who can read a backup: age recipients for create, identities for verify/restore/drill.

The node needs only recipients (public keys): the identity that decrypts stays with the
operator, offline. A passphrase (scrypt) is the alternative where no key pair is wanted.
"""

from __future__ import annotations

from pathlib import Path

from pai.backup import age
from pai.errors import UsageError
from pai.fsutil import atomic_write_text
from pai.settings import Paths, config_section
from pai.timeutil import format_time, utcnow


def scrypt_log_n(p: Paths | None = None) -> int:
    value = int(config_section("backup", p).get("scrypt_work_factor", age.DEFAULT_SCRYPT_LOG_N))
    if not 1 <= value <= age.MAX_SCRYPT_LOG_N:
        raise UsageError(f"[backup] scrypt_work_factor must be 1..{age.MAX_SCRYPT_LOG_N}")
    return value


def recipients(
    values: list[str], passphrase: bytes | None, p: Paths | None = None
) -> list[age.Recipient]:
    """``--recipient`` values (``age1...`` or a file of them), else ``[backup] recipients``."""
    if passphrase is not None:
        if values:
            raise UsageError("use either --recipient or --passphrase-file, not both")
        return [age.ScryptRecipient(passphrase, scrypt_log_n(p))]
    if not values:
        values = [str(v) for v in config_section("backup", p).get("recipients", [])]
    found: list[age.Recipient] = []
    for value in values:
        if value.startswith("age1"):
            found.append(age.X25519Recipient.parse(value))
            continue
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"recipient {value!r} is neither an age1... key nor a file")
        for line in path.read_text("utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(age.X25519Recipient.parse(line))
    if not found:
        raise UsageError(
            "no recipient given",
            hint="pass --recipient age1... (see `pai backup keygen`) or --passphrase-file",
        )
    return found


def identities(identity: Path | None, passphrase: bytes | None) -> list[age.Identity]:
    """The keys that decrypt: an age identity file and/or a passphrase."""
    found: list[age.Identity] = []
    if identity is not None:
        found.extend(age.load_identities(identity))
    if passphrase is not None:
        found.append(age.ScryptRecipient(passphrase))
    if not found:
        raise UsageError("decrypting needs --identity FILE (AGE-SECRET-KEY) or --passphrase-file")
    return found


def keygen(out: Path, force: bool = False) -> age.X25519Identity:
    """Write a new identity file (0600) in ``age-keygen``'s layout; returns the identity."""
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="choose another path or pass --force")
    identity = age.X25519Identity.generate()
    atomic_write_text(out, age.identity_file_text(identity, format_time(utcnow())), mode=0o600)
    return identity
