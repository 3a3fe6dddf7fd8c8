"""The shared kernel's contracts: canonical JSON, atomic writes, signature check order."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pai import keyring
from pai.canonical import canonical_bytes, parse_canonical
from pai.certs import (
    CertificateError,
    CertificateValidityError,
    RevokedKeyError,
    issue_certificate,
    issue_revocations,
)
from pai.errors import StorageError, UsageError
from pai.fsutil import atomic_write_bytes, atomic_writer
from pai.keys import generate
from pai.settings import paths
from pai.timeutil import utcnow
from pai.trust import SignatureError, TrustStore

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=20,
)


@given(json_values)
def test_canonical_round_trips_and_is_stable(value: object) -> None:
    data = canonical_bytes(value)
    assert parse_canonical(data) == value
    assert canonical_bytes(json.loads(data)) == data


def test_canonical_refuses_floats_and_other_encodings() -> None:
    with pytest.raises(UsageError, match="float"):
        canonical_bytes({"x": 0.5})
    assert canonical_bytes({"b": [1, 2], "a": "é"}) == '{"a":"é","b":[1,2]}'.encode()
    with pytest.raises(UsageError, match="not in canonical JSON form"):
        parse_canonical(b'{"b": 1, "a": 2}')


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_write_reports_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="nothing was changed"):
        atomic_write_bytes(blocker / "sub" / "f", b"data")


@pytest.fixture
def site(pai_home: Path) -> tuple[TrustStore, keyring.Signer]:
    p = paths()
    keyring.init_keys(p, passphrase=None, lifetime=timedelta(days=30))
    store = TrustStore(p.trust)
    store.add(p.keys / "root.pub")
    return store, keyring.load_signer(p)


def test_good_signature_verifies(site: tuple[TrustStore, keyring.Signer]) -> None:
    store, signer = site
    cert = store.verify_signature(signer.sign(b"manifest"), b"manifest", utcnow())
    assert cert.kid == signer.key.kid


def test_untrusted_root_is_refused(site: tuple[TrustStore, keyring.Signer]) -> None:
    store, _ = site
    stranger_root, stranger = generate("root"), generate("signing")
    cert = issue_certificate(stranger_root, stranger.public, lifetime=timedelta(days=1))
    forged = keyring.Signer(stranger, cert, None).sign(b"m")
    with pytest.raises(CertificateError, match="untrusted root"):
        store.verify_signature(forged, b"m", utcnow())


def test_certificate_signed_by_another_key_is_refused(
    site: tuple[TrustStore, keyring.Signer],
) -> None:
    store, signer = site
    entry = signer.sign(b"m")
    entry["certificate"]["body"]["valid_until"] = "2999-01-01T00:00:00Z"
    with pytest.raises(CertificateError, match="does not verify"):
        store.verify_signature(entry, b"m", utcnow())


def test_revoked_key_is_refused_before_validity(
    site: tuple[TrustStore, keyring.Signer],
) -> None:
    store, signer = site
    p = paths()
    keyring.rotate(p, passphrase=None, lifetime=timedelta(days=1), reason="lost laptop")
    revocations = keyring.load_revocations(p)
    store.absorb_revocations(revocations)
    with pytest.raises(RevokedKeyError, match="revoked"):
        store.verify_signature(signer.sign(b"m"), b"m", utcnow() + timedelta(days=365))


def test_older_revocation_list_cannot_unrevoke(site: tuple[TrustStore, keyring.Signer]) -> None:
    store, signer = site
    root = keyring.load_private_root(paths())
    newer = issue_revocations(root, [{"kid": signer.key.kid, "revoked_at": "x", "reason": "r"}], 2)
    older = issue_revocations(root, [], 1)
    store.absorb_revocations(newer)
    assert store.absorb_revocations(older).serial == 2
    with pytest.raises(RevokedKeyError):
        store.verify_signature(signer.sign(b"m"), b"m", utcnow())


def test_expired_certificate_is_refused(site: tuple[TrustStore, keyring.Signer]) -> None:
    store, signer = site
    with pytest.raises(CertificateValidityError, match="expired"):
        store.verify_signature(signer.sign(b"m"), b"m", utcnow() + timedelta(days=31))


def test_signature_over_other_bytes_is_refused(site: tuple[TrustStore, keyring.Signer]) -> None:
    store, signer = site
    with pytest.raises(SignatureError, match="does not verify"):
        store.verify_signature(signer.sign(b"manifest"), b"manifest!", utcnow())
