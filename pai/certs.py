"""Root-signed certificates for signing keys, and root-signed revocation lists.

A root key never signs bundles; it certifies signing keys, so a signing key can be rotated (or
revoked when lost) while air-gapped sites keep trusting only the root. Both documents are
``{"body": {...}, "signature": "<base64 Ed25519 over canonical(body)>"}``; the body formats are
in docs/formats/keys.md.

Revocation lists carry a ``serial`` that only grows; the trust store keeps the highest serial
it has seen per root, so replaying an older list cannot un-revoke a key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pai.canonical import canonical_bytes
from pai.errors import TrustError
from pai.keys import PrivateKey, b64d, b64e, key_id, public_from_b64, raw_public, verify_raw
from pai.timeutil import format_time, parse_time, utcnow

SIGNING_USAGE = "bundle-sign"


class CertificateError(TrustError):
    """A certificate is malformed, not issued by a trusted root, or badly signed."""

    code = "certificate"


class CertificateValidityError(TrustError):
    """A certificate is used outside its valid-from / valid-until window."""

    code = "certificate-validity"


class RevokedKeyError(TrustError):
    """The signing key was revoked by its root."""

    code = "revoked"


def sign_document(body: dict[str, Any], key: PrivateKey) -> dict[str, Any]:
    return {"body": body, "signature": b64e(key.sign(canonical_bytes(body)))}


def _checked_body(doc: Any, what: str, issuer: Ed25519PublicKey) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("body"), dict):
        raise CertificateError(f"{what} is malformed")
    body: dict[str, Any] = doc["body"]
    try:
        signature = b64d(str(doc.get("signature", "")), f"{what} signature")
    except TrustError:
        raise
    except Exception:
        raise CertificateError(f"{what} signature is not base64") from None
    if not verify_raw(issuer, signature, canonical_bytes(body)):
        raise CertificateError(f"{what} signature does not verify against root {key_id(issuer)}")
    return body


@dataclass(frozen=True)
class Certificate:
    """A verified certificate: the signing key it vouches for and when."""

    kid: str
    public: Ed25519PublicKey
    issuer: str
    valid_from: datetime
    valid_until: datetime
    usages: tuple[str, ...]
    document: dict[str, Any]

    def check_valid_at(self, moment: datetime) -> None:
        if moment < self.valid_from:
            raise CertificateValidityError(
                f"certificate of signing key {self.kid} is not valid before "
                f"{format_time(self.valid_from)}"
            )
        if moment > self.valid_until:
            raise CertificateValidityError(
                f"certificate of signing key {self.kid} expired on {format_time(self.valid_until)}"
            )


def issue_certificate(
    root: PrivateKey,
    subject: Ed25519PublicKey,
    *,
    lifetime: timedelta,
    usages: tuple[str, ...] = (SIGNING_USAGE,),
) -> dict[str, Any]:
    """Have ``root`` certify ``subject`` for ``usages`` from now for ``lifetime``."""
    now = utcnow()
    body = {
        "type": "pai-certificate",
        "version": 1,
        "alg": "ed25519",
        "kid": key_id(subject),
        "public_key": b64e(raw_public(subject)),
        "issuer": root.kid,
        "valid_from": format_time(now),
        "valid_until": format_time(now + lifetime),
        "usages": list(usages),
    }
    return sign_document(body, root)


def verify_certificate(doc: Any, roots: dict[str, Ed25519PublicKey]) -> Certificate:
    """Check a certificate's issuer is one of ``roots`` and its signature is good.

    Validity in time is checked separately (:meth:`Certificate.check_valid_at`) because the
    moment that matters depends on the caller.
    """
    body = doc.get("body") if isinstance(doc, dict) else None
    if not isinstance(body, dict) or body.get("type") != "pai-certificate":
        raise CertificateError("certificate is malformed")
    issuer = str(body.get("issuer", ""))
    root = roots.get(issuer)
    if root is None:
        raise CertificateError(f"certificate issued by untrusted root {issuer or '?'}")
    body = _checked_body(doc, "certificate", root)
    try:
        public = public_from_b64(str(body["public_key"]))
        cert = Certificate(
            kid=str(body["kid"]),
            public=public,
            issuer=issuer,
            valid_from=parse_time(str(body["valid_from"])),
            valid_until=parse_time(str(body["valid_until"])),
            usages=tuple(str(u) for u in body["usages"]),
            document=doc,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CertificateError(f"certificate is malformed: {exc}") from None
    if key_id(public) != cert.kid:
        raise CertificateError("certificate key id does not match its public key")
    return cert


def issue_revocations(
    root: PrivateKey, revoked: list[dict[str, str]], serial: int
) -> dict[str, Any]:
    """A root-signed list of revoked signing key ids; ``serial`` must grow with each list."""
    body = {
        "type": "pai-revocations",
        "version": 1,
        "issuer": root.kid,
        "serial": serial,
        "issued": format_time(utcnow()),
        "revoked": sorted(revoked, key=lambda item: item["kid"]),
    }
    return sign_document(body, root)


@dataclass(frozen=True)
class Revocations:
    """A verified revocation list of one root."""

    issuer: str
    serial: int
    revoked: frozenset[str]
    document: dict[str, Any]


def verify_revocations(doc: Any, roots: dict[str, Ed25519PublicKey]) -> Revocations:
    body = doc.get("body") if isinstance(doc, dict) else None
    if not isinstance(body, dict) or body.get("type") != "pai-revocations":
        raise CertificateError("revocation list is malformed")
    issuer = str(body.get("issuer", ""))
    root = roots.get(issuer)
    if root is None:
        raise CertificateError(f"revocation list issued by untrusted root {issuer or '?'}")
    body = _checked_body(doc, "revocation list", root)
    try:
        kids = frozenset(str(item["kid"]) for item in body["revoked"])
        return Revocations(issuer, int(body["serial"]), kids, doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise CertificateError(f"revocation list is malformed: {exc}") from None
