"""The air-gapped side's trust store: trusted root public keys and their revocation lists.

Layout (under ``$PAI_HOME/trust`` or any folder given with ``--trust``)::

    roots/<kid>.pub             trusted root public keys (pai-public-key documents)
    revocations/<kid>.json      the newest verified revocation list of each root

Signatures are checked in this order, each failure with its own exception (tested one by one):

1. the certificate's issuer is a trusted root            -> CertificateError
2. the certificate's signature verifies under that root  -> CertificateError
3. the signing key is not in the root's revocation list  -> RevokedKeyError
4. the certificate is valid at the given moment           -> CertificateValidityError
5. the signature verifies under the certified key        -> SignatureError
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pai.canonical import canonical_bytes
from pai.certs import (
    Certificate,
    Revocations,
    RevokedKeyError,
    verify_certificate,
    verify_revocations,
)
from pai.errors import KeyError_, NotFoundError, TrustError
from pai.fsutil import atomic_write_bytes
from pai.keys import b64d, load_public, verify_raw


class SignatureError(TrustError):
    """A signature does not verify over the signed bytes."""

    code = "signature"


@dataclass(frozen=True)
class TrustedRoot:
    kid: str
    public: Ed25519PublicKey
    document: dict[str, Any]


class TrustStore:
    """Trusted roots and revocations in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @property
    def _roots_dir(self) -> Path:
        return self.folder / "roots"

    @property
    def _revocations_dir(self) -> Path:
        return self.folder / "revocations"

    def roots(self) -> dict[str, Ed25519PublicKey]:
        return {root.kid: root.public for root in self.entries()}

    def entries(self) -> list[TrustedRoot]:
        if not self._roots_dir.is_dir():
            return []
        found = []
        for file in sorted(self._roots_dir.glob("*.pub")):
            public, doc = load_public(file)
            found.append(TrustedRoot(str(doc["kid"]), public, doc))
        return found

    def add(self, pub_file: Path) -> TrustedRoot:
        """Trust the root public key in ``pub_file``; returns it. Adding twice is harmless."""
        public, doc = load_public(pub_file)
        if doc.get("role") not in ("root", None):
            raise KeyError_(
                f"{pub_file} is a {doc.get('role')} key; only root keys go in the trust store"
            )
        root = TrustedRoot(str(doc["kid"]), public, doc)
        atomic_write_bytes(self._roots_dir / f"{root.kid}.pub", canonical_bytes(doc) + b"\n")
        return root

    def remove(self, kid: str) -> None:
        matches = [r for r in self.entries() if r.kid.startswith(kid)] if kid else []
        if not matches:
            raise NotFoundError(f"no trusted root with key id {kid!r}")
        if len(matches) > 1:
            raise KeyError_(f"key id prefix {kid!r} matches {len(matches)} roots; give more digits")
        (self._roots_dir / f"{matches[0].kid}.pub").unlink()
        (self._revocations_dir / f"{matches[0].kid}.json").unlink(missing_ok=True)

    def revocations(self) -> dict[str, Revocations]:
        roots = self.roots()
        result: dict[str, Revocations] = {}
        if not self._revocations_dir.is_dir():
            return result
        for file in sorted(self._revocations_dir.glob("*.json")):
            try:
                doc = json.loads(file.read_bytes())
            except (OSError, ValueError) as exc:
                raise TrustError(f"cannot read revocation list {file}: {exc}") from None
            if file.stem in roots:
                result[file.stem] = verify_revocations(doc, roots)
        return result

    def absorb_revocations(self, doc: Any) -> Revocations:
        """Verify a revocation list and keep it if it is newer than the one on file.

        Returns the list now in force for that root (the stored one when ``doc`` is older).
        """
        incoming = verify_revocations(doc, self.roots())
        current = self.revocations().get(incoming.issuer)
        if current is not None and current.serial >= incoming.serial:
            return current
        path = self._revocations_dir / f"{incoming.issuer}.json"
        atomic_write_bytes(path, canonical_bytes(incoming.document) + b"\n")
        return incoming

    def verify_signature(
        self,
        entry: dict[str, Any],
        data: bytes,
        at: datetime,
        extra_revocations: list[Revocations] | None = None,
    ) -> Certificate:
        """Check one signature entry (``kid``, ``signature``, ``certificate``) over ``data``.

        ``extra_revocations`` are lists that arrived with the data (a bundle carries its
        root's newest list) and are honoured even before they are absorbed.
        """
        roots = self.roots()
        if not roots:
            raise TrustError(
                "the trust store has no root keys", hint="add one with `pai keys trust add`"
            )
        cert = verify_certificate(entry.get("certificate"), roots)
        revoked: set[str] = set()
        for rev in [*self.revocations().values(), *(extra_revocations or [])]:
            if rev.issuer == cert.issuer:
                revoked |= rev.revoked
        if cert.kid in revoked:
            raise RevokedKeyError(f"signing key {cert.kid} was revoked by root {cert.issuer}")
        cert.check_valid_at(at)
        if entry.get("kid") != cert.kid:
            raise SignatureError("signature key id does not match its certificate")
        signature = b64d(str(entry.get("signature", "")), "signature")
        if not verify_raw(cert.public, signature, data):
            raise SignatureError(f"signature by {cert.kid} does not verify")
        return cert
