"""JWT bearer tokens: the operator's issuing key, the daemon's trusted keys, verification.

Layout under ``$PAI_HOME/jwt`` (docs/formats/jwt.md)::

    issuer/<kid>.pem      private keys `pai token issue` signs with (PKCS#8 PEM, 0600)
    issuer/current        the kid used by `pai token issue`
    trusted/<kid>.pem     public keys the daemon accepts (SubjectPublicKeyInfo PEM)
    trusted/<kid>.hs256   shared secrets, honoured only with ``[serve] allow_hs256 = true``

The algorithm of a token is decided by the *key* its ``kid`` names (Ed25519 -> EdDSA, P-256 ->
ES256, RSA -> RS256, ``.hs256`` -> HS256), never by the token's header: a header that asks for
another algorithm is rejected as algorithm confusion before any signature check, and ``none``
is never accepted. Checks run in a fixed order, each with its own error code, so a client (and
the tests) can tell them apart.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pai.errors import KeyError_, NotFoundError, PaiError, UsageError
from pai.fsutil import atomic_write_bytes, atomic_write_text
from pai.settings import Paths
from pai.timeutil import utcnow

SCOPES = ("embed", "search", "admin")
ALGORITHMS = ("EdDSA", "ES256", "RS256", "HS256")
MAX_CACHED_TOKENS = 10_000
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AuthError(PaiError):
    """A request's bearer token was missing or did not verify (HTTP 401)."""

    code = "invalid_token"
    status = 401

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ForbiddenError(AuthError):
    """The token is valid but lacks the scope the route needs (HTTP 403)."""

    status = 403


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the verified token says; the tenant comes from here only."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    kid: str

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ForbiddenError(
                "insufficient_scope", f"this token lacks the {scope!r} scope for this route"
            )


def jwt_dir(p: Paths) -> Path:
    return p.home / "jwt"


def _alg_for(key: Any) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp256r1":
            raise KeyError_(f"EC keys must be P-256 for ES256, not {key.curve.name}")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyError_("RSA keys must be at least 2048 bits")
        return "RS256"
    raise KeyError_(f"unsupported key type {type(key).__name__}")


def _public_pem(public: Any) -> bytes:
    return bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def kid_of(public: Any) -> str:
    """A key id derived from the public key, so issuer and daemon agree without coordination."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def generate_issuer_key(p: Paths, alg: str = "EdDSA") -> tuple[str, str]:
    """Make an issuing key, trust its public half, make it current. Returns (kid, alg)."""
    private: Any
    if alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    elif alg == "HS256":
        return _generate_hs256(p)
    else:
        raise UsageError(f"unknown algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")
    kid = kid_of(private.public_key())
    root = jwt_dir(p)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(root / "issuer" / f"{kid}.pem", pem, mode=0o600)
    atomic_write_bytes(root / "trusted" / f"{kid}.pem", _public_pem(private.public_key()))
    atomic_write_text(root / "issuer" / "current", kid + "\n", mode=0o600)
    return kid, alg


def _generate_hs256(p: Paths) -> tuple[str, str]:
    secret = os.urandom(32)
    kid = "hs-" + hashlib.sha256(secret).hexdigest()[:13]
    root = jwt_dir(p)
    atomic_write_bytes(root / "issuer" / f"{kid}.hs256", secret, mode=0o600)
    atomic_write_bytes(root / "trusted" / f"{kid}.hs256", secret, mode=0o600)
    atomic_write_text(root / "issuer" / "current", kid + "\n", mode=0o600)
    return kid, "HS256"


def trust_public_key(p: Paths, pem_file: Path, kid: str | None = None) -> tuple[str, str]:
    """Accept tokens signed by another issuer's key (a PEM public key file)."""
    try:
        public = serialization.load_pem_public_key(pem_file.read_bytes())
    except FileNotFoundError:
        raise NotFoundError(f"{pem_file} does not exist") from None
    except (OSError, ValueError) as exc:
        raise KeyError_(f"{pem_file} is not a PEM public key: {exc}") from None
    alg = _alg_for(public)
    kid = kid or kid_of(public)
    if not _KID.match(kid):
        raise UsageError("a kid is 1-64 characters of letters, digits, '.', '_' or '-'")
    atomic_write_bytes(jwt_dir(p) / "trusted" / f"{kid}.pem", _public_pem(public))
    return kid, alg


def _load_issuer(p: Paths) -> tuple[str, str, Any]:
    root = jwt_dir(p) / "issuer"
    try:
        kid = (root / "current").read_text().strip()
    except FileNotFoundError:
        raise NotFoundError(
            "no token issuing key yet", hint="run `pai token keygen` first"
        ) from None
    secret = root / f"{kid}.hs256"
    if secret.exists():
        return kid, "HS256", secret.read_bytes()
    try:
        key = serialization.load_pem_private_key((root / f"{kid}.pem").read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot load issuing key {kid}: {exc}") from None
    return kid, _alg_for(key), key


def issue_token(
    p: Paths,
    *,
    subject: str,
    tenant: str,
    scopes: list[str],
    ttl: timedelta,
    audience: str,
    issuer: str,
) -> tuple[str, dict[str, Any]]:
    """Sign a token with the current issuing key; returns (token, claims)."""
    if not subject or not tenant:
        raise UsageError("--sub and --tenant must not be empty")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise UsageError(f"scopes must be among {', '.join(SCOPES)} (got {', '.join(scopes)})")
    if ttl.total_seconds() <= 0:
        raise UsageError("--ttl must be positive")
    kid, alg, key = _load_issuer(p)
    now = utcnow()
    claims: dict[str, Any] = {
        "sub": subject,
        "tenant": tenant,
        "scopes": sorted(set(scopes)),
        "iss": issuer,
        "aud": audience,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    return token, {**claims, "kid": kid, "alg": alg}


@dataclass(frozen=True)
class TrustedKey:
    kid: str
    alg: str
    key: Any


def load_trusted_keys(p: Paths, *, allow_hs256: bool) -> dict[str, TrustedKey]:
    """The keys the daemon verifies against, by kid."""
    folder = jwt_dir(p) / "trusted"
    keys: dict[str, TrustedKey] = {}
    if not folder.is_dir():
        return keys
    for entry in sorted(folder.iterdir()):
        if entry.suffix == ".pem":
            try:
                public = serialization.load_pem_public_key(entry.read_bytes())
            except ValueError as exc:
                raise KeyError_(f"{entry} is not a PEM public key: {exc}") from None
            keys[entry.stem] = TrustedKey(entry.stem, _alg_for(public), public)
        elif entry.suffix == ".hs256" and allow_hs256:
            keys[entry.stem] = TrustedKey(entry.stem, "HS256", entry.read_bytes())
    return keys


class TokenVerifier:
    """Verifies bearer tokens offline; one instance per daemon (reloaded with the config)."""

    def __init__(
        self, keys: dict[str, TrustedKey], *, audience: str, issuer: str, leeway: int = 30
    ) -> None:
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        #: Tokens that verified, with their expiry: a client sends the same token thousands of
        #: times, and a signature check per request would cost more than the HTTP parsing.
        self._verified: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()

    def verify(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer ...`` header, or :class:`AuthError`."""
        token = _bearer(authorization)
        hit = self._verified.get(token)
        if hit is not None:
            principal, not_before, expires = hit
            now = time.time()
            if not_before - self.leeway <= now < expires + self.leeway:
                return principal
            del self._verified[token]
        principal, claims = self._verify(token)
        self._verified[token] = (
            principal,
            float(claims.get("nbf", 0)),
            float(claims["exp"]),
        )
        while len(self._verified) > MAX_CACHED_TOKENS:
            self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, dict[str, Any]]:
        header = _header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise AuthError("alg_none", "unsigned tokens (alg none) are not accepted")
        if alg not in ALGORITHMS:
            raise AuthError("unsupported_alg", f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self.keys:
            raise AuthError("unknown_key", "the token's kid names no trusted key")
        trusted = self.keys[kid]
        if alg != trusted.alg:
            raise AuthError(
                "alg_mismatch", f"key {kid} is an {trusted.alg} key; the token says {alg}"
            )
        claims = self._decode(token, trusted)
        return _principal(claims, kid), claims

    def _decode(self, token: str, trusted: TrustedKey) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                trusted.key,
                algorithms=[trusted.alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token_expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token_not_yet_valid", "the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise AuthError("wrong_audience", "the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise AuthError("wrong_issuer", "the token has another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError("missing_claim", f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthError("bad_signature", "the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthError("invalid_token", f"the token is invalid: {exc}") from None
        return claims


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing_token", "no Authorization: Bearer token was sent")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("missing_token", "the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _header(token: str) -> dict[str, Any]:
    try:
        header: dict[str, Any] = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise AuthError("malformed_token", "the bearer token is not a JWT") from None
    return header


def _principal(claims: dict[str, Any], kid: str) -> Principal:
    tenant = claims.get("tenant")
    if not isinstance(tenant, str) or not tenant:
        raise AuthError("missing_claim", "the token has no 'tenant' claim")
    raw = claims.get("scopes", claims.get("scope", []))
    scopes = raw.split() if isinstance(raw, str) else raw
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise AuthError("invalid_token", "the token's scopes must be a list of strings")
    return Principal(str(claims["sub"]), tenant, frozenset(scopes), kid)
