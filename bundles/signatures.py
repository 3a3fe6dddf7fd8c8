"""Signing the exact manifest bytes, and checking those signatures against a trust store.

The signatures document (member ``signatures.json``, and the ``signatures`` of a parts index)
is canonical JSON::

    {"type": "pai-signatures", "version": 1, "signed_sha256": "<sha256 of the signed bytes>",
     "signatures": [<entry from Signer.sign>, ...sorted by kid],
     "revocations": [<root-signed revocation list>, ...sorted by issuer]}

The revocation lists travel so that an air-gapped site learns of a revoked signing key with
the next bundle it receives, even one signed by another key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pai.bundles.errors import (
    BundleError,
    BundleSignatureError,
    MissingSignatureError,
    RevocationListError,
    RevokedSignerError,
    SignaturesDocError,
    SignatureThresholdError,
    SignerCertificateError,
    UntrustedSignerError,
)
from pai.canonical import canonical_bytes, parse_canonical
from pai.certs import (
    CertificateError,
    CertificateValidityError,
    Revocations,
    RevokedKeyError,
    verify_revocations,
)
from pai.errors import PaiError, TrustError
from pai.keyring import Signer
from pai.trust import SignatureError, TrustStore

DOC_TYPE = "pai-signatures"


def signatures_document(data: bytes, signers: list[Signer]) -> bytes:
    """The canonical signatures document over ``data`` by every signer."""
    revocations: dict[str, dict[str, Any]] = {}
    for signer in signers:
        doc = signer.revocations
        if doc is None:
            continue
        issuer = str(doc["body"]["issuer"])
        held = revocations.get(issuer)
        if held is None or int(doc["body"]["serial"]) > int(held["body"]["serial"]):
            revocations[issuer] = doc
    return canonical_bytes(
        {
            "type": DOC_TYPE,
            "version": 1,
            "signed_sha256": hashlib.sha256(data).hexdigest(),
            "signatures": sorted((s.sign(data) for s in signers), key=lambda e: str(e["kid"])),
            "revocations": [revocations[k] for k in sorted(revocations)],
        }
    )


def parse_signatures(raw: bytes, signed: bytes, what: str, signed_name: str) -> dict[str, Any]:
    """Parse a signatures document (named ``what``) and check it is about ``signed``."""
    try:
        doc = parse_canonical(raw, what)
    except PaiError as exc:
        raise SignaturesDocError(exc.message) from None
    if not isinstance(doc, dict) or doc.get("type") != DOC_TYPE or doc.get("version") != 1:
        raise SignaturesDocError(f"{what} is not a version 1 pai signatures document")
    if not isinstance(doc.get("signatures"), list) or not isinstance(doc.get("revocations"), list):
        raise SignaturesDocError(f"{what} lacks its signatures or revocations list")
    if not doc["signatures"]:
        raise MissingSignatureError(f"{what} holds no signature")
    if doc.get("signed_sha256") != hashlib.sha256(signed).hexdigest():
        raise BundleSignatureError(
            f"{signed_name}: signatures do not verify: its sha256 differs from the one "
            f"{what} was made over (it was changed after signing)"
        )
    return doc


def absorb_revocations(doc: dict[str, Any], trust: TrustStore) -> list[Revocations]:
    """Verify the carried revocation lists of trusted roots and keep the newest ones.

    Lists of roots this site does not trust are ignored: they cannot affect any signature
    that could be accepted here.
    """
    roots = trust.roots()
    verified = []
    for item in doc["revocations"]:
        issuer = item.get("body", {}).get("issuer") if isinstance(item, dict) else None
        if issuer not in roots:
            continue
        try:
            verified.append(verify_revocations(item, roots))
            trust.absorb_revocations(item)
        except TrustError as exc:
            raise RevocationListError(
                f"carried revocation list of root {issuer}: {exc.message}"
            ) from None
    return verified


_MAPPED: list[tuple[type[TrustError], type[BundleError]]] = [
    (RevokedKeyError, RevokedSignerError),
    (CertificateValidityError, SignerCertificateError),
    (CertificateError, UntrustedSignerError),
    (SignatureError, BundleSignatureError),
]


def _as_bundle_error(exc: TrustError, where: str) -> BundleError:
    for trust_cls, bundle_cls in _MAPPED:
        if isinstance(exc, trust_cls):
            return bundle_cls(f"{where}: {exc.message}")
    return UntrustedSignerError(f"{where}: {exc.message}")


@dataclass(frozen=True)
class SignatureCheck:
    """Which trusted signing keys (and their roots) signed, and the first refusal if any."""

    signers: list[str]
    roots: list[str]
    first_failure: BundleError | None


def check_signatures(
    doc: dict[str, Any], data: bytes, trust: TrustStore, at: datetime, where: str
) -> SignatureCheck:
    """Verify every signature entry over ``data``; raise when none verifies."""
    if not trust.roots():
        raise UntrustedSignerError(
            "the trust store has no root keys", hint="add one with `pai keys trust add`"
        )
    extra = absorb_revocations(doc, trust)
    good: list[str] = []
    roots: list[str] = []
    failure: BundleError | None = None
    for entry in doc["signatures"]:
        if not isinstance(entry, dict):
            failure = failure or SignaturesDocError(f"{where}: a signature entry is not an object")
            continue
        try:
            cert = trust.verify_signature(entry, data, at, extra_revocations=extra)
        except TrustError as exc:
            failure = failure or _as_bundle_error(exc, where)
            continue
        except PaiError as exc:  # malformed base64 and the like
            failure = failure or BundleSignatureError(f"{where}: {exc.message}")
            continue
        if cert.kid not in good:
            good.append(cert.kid)
            roots.append(cert.issuer)
    if not good:
        assert failure is not None
        raise failure
    return SignatureCheck(sorted(good), sorted(set(roots)), failure)


def check_threshold(
    check: SignatureCheck, listed: list[str], threshold: int, where: str
) -> list[str]:
    """The distinct trusted signers that the policy counts; raise below the threshold."""
    counted = [kid for kid in check.signers if kid in listed]
    if len(counted) < threshold:
        reason = (
            f"; another signature was refused ({check.first_failure.detail})"
            if (check.first_failure)
            else ""
        )
        raise SignatureThresholdError(
            f"{where} needs {threshold} distinct trusted signers of {len(listed)} listed, "
            f"{len(counted)} verified{reason}"
        )
    return counted
