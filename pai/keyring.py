"""The build side's keys: a root, the current signing key and its certificate, revocations.

Layout under ``$PAI_HOME/keys``::

    root.key, root.pub                 the root key (keep it offline; it only certifies)
    signing/<kid>.key, <kid>.cert      every signing key made, with its certificate
    current                            the kid of the signing key in use
    revocations.json                   the root's newest revocation list (serial grows)
    node.key, node.pub                 this node's own key (audit checkpoints, backup sidecars)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pai.canonical import canonical_bytes
from pai.certs import issue_certificate, issue_revocations
from pai.errors import KeyError_, UsageError
from pai.fsutil import atomic_write_bytes, atomic_write_text
from pai.keys import PrivateKey, b64e, generate, load_private, write_private
from pai.locking import file_lock
from pai.settings import Paths
from pai.timeutil import format_time, utcnow


@dataclass(frozen=True)
class Signer:
    """A signing key with the certificate and revocation list that travel with its signatures."""

    key: PrivateKey
    certificate: dict[str, Any]
    revocations: dict[str, Any] | None

    def sign(self, data: bytes) -> dict[str, Any]:
        """A signature entry as stored in bundles: kid, alg, signature, certificate."""
        return {
            "kid": self.key.kid,
            "alg": "ed25519",
            "signature": b64e(self.key.sign(data)),
            "certificate": self.certificate,
        }


def _write_json(path: Path, doc: dict[str, Any], mode: int = 0o644) -> None:
    atomic_write_bytes(path, canonical_bytes(doc) + b"\n", mode=mode)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeyError_(f"{path} does not exist", hint="run `pai keys init`") from None
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise KeyError_(f"{path} is malformed")
    return doc


def _new_signing_key(
    keys: Path, root: PrivateKey, lifetime: timedelta, passphrase: bytes | None
) -> PrivateKey:
    signing = generate("signing")
    write_private(keys / "signing" / f"{signing.kid}.key", signing, passphrase)
    cert = issue_certificate(root, signing.public, lifetime=lifetime)
    _write_json(keys / "signing" / f"{signing.kid}.cert", cert)
    atomic_write_text(keys / "current", signing.kid + "\n")
    return signing


def init_keys(
    p: Paths, *, passphrase: bytes | None, lifetime: timedelta, force: bool = False
) -> tuple[PrivateKey, PrivateKey]:
    """Create a root key and a first signing key certified by it. Returns (root, signing)."""
    keys = p.ensure().keys
    if (keys / "root.key").exists() and not force:
        raise UsageError(
            f"keys already exist in {keys}", hint="use `pai keys rotate`, or --force to replace"
        )
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = generate("root")
    write_private(keys / "root.key", root, passphrase)
    _write_json(keys / "root.pub", root.public_document())
    (keys / "revocations.json").unlink(missing_ok=True)
    signing = _new_signing_key(keys, root, lifetime, passphrase)
    return root, signing


def current_kid(p: Paths) -> str:
    try:
        return (p.keys / "current").read_text().strip()
    except FileNotFoundError:
        raise KeyError_(f"no signing key in {p.keys}", hint="run `pai keys init`") from None


def load_revocations(p: Paths) -> dict[str, Any] | None:
    path = p.keys / "revocations.json"
    return _read_json(path) if path.exists() else None


def load_signer(p: Paths, passphrase: bytes | None = None, key: Path | None = None) -> Signer:
    """The signer for bundles: ``key`` (a signing key file) or the current signing key."""
    path = key or p.keys / "signing" / f"{current_kid(p)}.key"
    signing = load_private(path, passphrase)
    cert_path = path.with_suffix(".cert")
    return Signer(signing, _read_json(cert_path), load_revocations(p))


def rotate(
    p: Paths, *, passphrase: bytes | None, lifetime: timedelta, reason: str
) -> tuple[str, PrivateKey]:
    """Make a new signing key under the same root and revoke the current one.

    Returns (old kid, new key). The revocation list's serial grows by one.
    """
    keys = p.keys
    root = load_private_root(p, passphrase)
    old = current_kid(p)
    previous = load_revocations(p)
    entries: list[dict[str, str]] = list(previous["body"]["revoked"]) if previous else []
    serial = int(previous["body"]["serial"]) + 1 if previous else 1
    entries.append({"kid": old, "revoked_at": format_time(utcnow()), "reason": reason})
    _write_json(keys / "revocations.json", issue_revocations(root, entries, serial))
    signing = _new_signing_key(keys, root, lifetime, passphrase)
    return old, signing


def node_key(p: Paths) -> PrivateKey:
    """This node's own key, made on first use and never encrypted (daemons sign unattended)."""
    path = p.keys / "node.key"
    if path.exists():
        return load_private(path)
    p.ensure().keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(p.keys / "node.lock"):
        if path.exists():  # another process made it while we waited
            return load_private(path)
        key = generate("node")
        write_private(path, key, None)
        _write_json(p.keys / "node.pub", key.public_document())
        return key


def load_signer_public(p: Paths) -> dict[str, Any]:
    """What ``pai keys show`` prints: ids, certificate window, revoked ids. Reads no secrets."""
    root_doc = _read_json(p.keys / "root.pub")
    kid = current_kid(p)
    cert = _read_json(p.keys / "signing" / f"{kid}.cert")["body"]
    revocations = load_revocations(p)
    return {
        "root": root_doc["kid"],
        "signing": kid,
        "valid_from": cert["valid_from"],
        "valid_until": cert["valid_until"],
        "revoked": [r["kid"] for r in revocations["body"]["revoked"]] if revocations else [],
        "revocation_serial": revocations["body"]["serial"] if revocations else 0,
    }


def load_private_root(p: Paths, passphrase: bytes | None = None) -> PrivateKey:
    """The root private key (needed only to certify or revoke)."""
    return load_private(p.keys / "root.key", passphrase)
