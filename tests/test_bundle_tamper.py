"""The tamper corpus: every way of damaging a signed bundle is refused, for its own reason.

Each case asserts the exit code, the machine-readable check code of `--json`, and the
member, part or key the message names (docs/formats/bundle.md, "Verification order").
"""

from __future__ import annotations

import json
import os
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pai import keyring
from pai.bundles import errors
from pai.bundles.manifest import MANIFEST_NAME, SIGNATURES_NAME, read_manifest
from pai.bundles.signatures import signatures_document
from pai.bundles.verify import verify_bundle
from pai.canonical import canonical_bytes
from pai.certs import issue_certificate
from pai.keys import generate, load_private
from pai.settings import paths
from pai.timeutil import parse_time
from pai.trust import TrustStore
from tests.helpers import tarcraft as tc
from tests.helpers.bundles import make_payload, pack


@pytest.fixture
def bundle(cli, keys: Path, tmp_path: Path) -> Path:
    out = tmp_path / "crm-ai.pai"
    result = pack(cli, make_payload(tmp_path / "payload"), out, "1.0.0", "--expires", "30d")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def refused(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``refused(data, code, *fragments)``: verify those bytes; assert the refusal and reason."""
    counter = iter(range(10_000))

    def check(data: bytes | Path | list[Path], code: str, *fragments: str) -> str:
        if isinstance(data, bytes):
            target = tmp_path / f"tampered-{next(counter)}.pai"
            target.write_bytes(data)
            args = [str(target)]
        elif isinstance(data, Path):
            args = [str(data)]
        else:
            args = [str(p) for p in data]
        result = cli("bundle", "verify", *args, "--json")
        assert result.exit_code == 1, result.output
        error = result.json()["error"]
        assert error["code"] == code, error
        assert "Traceback" not in result.output
        assert result.stderr.count("\n") == 1
        for fragment in fragments:
            assert fragment in error["message"], (fragment, error["message"])
        return str(error["message"])

    return check


def payload_members(data: bytes) -> list[tc.Member]:
    return [m for m in tc.members(data) if m.name not in (MANIFEST_NAME, SIGNATURES_NAME)]


def resign(data: bytes, mutate: Any, signers: list[keyring.Signer] | None = None) -> bytes:
    """Re-sign a changed manifest with the (trusted) current key: tests checks after signing."""
    members = tc.members(data)
    manifest = json.loads(data[members[0].data : members[0].data + members[0].size])
    mutate(manifest)
    raw = canonical_bytes(manifest)
    signers = signers or [keyring.load_signer(paths())]
    mtime = int(parse_time(manifest["created"]).timestamp())
    lead = tc.regular_member(MANIFEST_NAME, raw, mtime) + tc.regular_member(
        SIGNATURES_NAME, signatures_document(raw, signers), mtime
    )
    return lead + data[members[1].end :]


def test_the_untouched_bundle_verifies(cli, bundle: Path) -> None:
    assert cli("bundle", "verify", str(bundle)).exit_code == 0


def test_one_byte_flipped_in_each_member_in_turn(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    for member in tc.members(data):
        if member.name == SIGNATURES_NAME:
            body = data[member.data : member.data + member.size]
            offset = member.data + body.rindex(b'"signature":"') + 20
            swapped = b"B" if data[offset : offset + 1] == b"A" else b"A"  # stays base64
            tampered = data[:offset] + swapped + data[offset + 1 :]
            refused(tampered, "signature", "manifest.json", "does not verify")
        elif member.name == MANIFEST_NAME:
            refused(
                tc.flip(data, member.data + member.size // 2),
                "signature",
                "manifest.json",
                "changed after signing",
            )
        elif member.size:
            flipped = tc.flip(data, member.data + member.size // 2)
            refused(flipped, "member-hash", f"member {member.name}:")
        # and the header of every member, the empty one included
        refused(tc.flip(data, member.header + 1), "header", "checksum")


@pytest.mark.parametrize("where", ["start", "manifest", "signatures", "payload", "trailer", "last"])
def test_truncation_at_several_offsets(bundle: Path, refused, where: str) -> None:
    data = bundle.read_bytes()
    members = tc.members(data)
    offsets = {
        "start": 100,
        "manifest": members[0].data + 7,
        "signatures": members[1].header + 512 + 3,
        "payload": members[3].data + members[3].size // 2,
        "trailer": len(data) - 1024,
        "last": len(data) - 1,
    }
    refused(data[: offsets[where]], "truncated", "the file ends inside")


def test_empty_file_is_truncated(refused) -> None:
    refused(b"", "truncated", "manifest.json")


def test_data_appended_after_the_archive(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    refused(data + tc.regular_member("extra.txt", b"x") + bytes(1024), "unexpected-member")
    refused(data + b"\0", "unexpected-member", "follows the end-of-archive marker")


def test_member_appended_with_tar(bundle: Path, tmp_path: Path, refused) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("not in the manifest")
    with tarfile.open(bundle, "a", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(extra, arcname="extra.txt")
    refused(bundle, "unexpected-member", "extra.txt is not listed")


def test_swapped_members(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    first, second = payload_members(data)[1:3]
    swapped = (
        data[: first.header]
        + tc.member_bytes(data, second)
        + tc.member_bytes(data, first)
        + data[second.end :]
    )
    refused(swapped, "member-order", f"member {second.name} appears where {first.name}")


def test_missing_members(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    members = payload_members(data)
    middle, last = members[1], members[-1]
    refused(data[: middle.header] + data[middle.end :], "member-order", middle.name)
    refused(data[: last.header] + data[last.end :], "missing-member", last.name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [("../x", "'..'"), ("models/../../x", "'..'"), ("/etc/cron.d/x", "absolute path")],
)
def test_unsafe_paths(bundle: Path, refused, name: str, reason: str) -> None:
    data = bundle.read_bytes()
    target = payload_members(data)[0]
    refused(tc.with_header(data, target, name=name), "unsafe-path", name, reason)


@pytest.mark.parametrize(
    ("typeflag", "kind"),
    [(b"2", "a symlink to '/etc/passwd'"), (b"1", "a hardlink"), (b"3", "a character device"),
     (b"4", "a block device"), (b"6", "a FIFO"), (b"5", "a directory")],
)  # fmt: skip
def test_links_and_devices(bundle: Path, refused, typeflag: bytes, kind: str) -> None:
    data = bundle.read_bytes()
    target = payload_members(data)[0]
    tampered = tc.with_header(data, target, typeflag=typeflag, linkname="/etc/passwd")
    refused(tampered, "unsafe-member-type", f"member {target.name} is {kind}")


def test_duplicated_path(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    first, second = payload_members(data)[:2]
    refused(tc.with_header(data, second, name=first.name), "duplicate-member", first.name)


def test_signature_removed(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    sigs = tc.find(data, SIGNATURES_NAME)
    refused(data[: sigs.header] + data[sigs.end :], "signature-missing", "second member")


def test_empty_signature_list(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    members = tc.members(data)
    manifest = read_manifest(bundle)
    sigs = json.loads(data[members[1].data : members[1].data + members[1].size])
    sigs["signatures"] = []
    mtime = int(parse_time(manifest["created"]).timestamp())
    tampered = (
        data[: members[1].header]
        + tc.regular_member(SIGNATURES_NAME, canonical_bytes(sigs), mtime)
        + data[members[1].end :]
    )
    refused(tampered, "signature-missing", "holds no signature")


def test_signed_by_an_untrusted_key(cli, keys: Path, tmp_path: Path, refused, monkeypatch) -> None:
    home = os.environ["PAI_HOME"]
    monkeypatch.setenv("PAI_HOME", str(tmp_path / "stranger"))
    assert cli("keys", "init").exit_code == 0
    out = tmp_path / "stranger.pai"
    assert pack(cli, make_payload(tmp_path / "p"), out).exit_code == 0
    monkeypatch.setenv("PAI_HOME", home)
    refused(out, "untrusted-signer", "untrusted root")


def test_expired(bundle: Path, pai_home: Path) -> None:
    manifest = read_manifest(bundle)
    later = parse_time(manifest["expires"]) + timedelta(seconds=1)
    with pytest.raises(errors.BundleExpiredError, match=r"expired: bundle crm-ai 1.0.0 expired"):
        verify_bundle(bundle, TrustStore(paths().trust), now=later)


def test_signing_certificate_outside_its_validity(cli, keys: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.pai"
    assert pack(cli, make_payload(tmp_path / "p"), out).exit_code == 0
    far = parse_time("2099-01-01T00:00:00Z")
    with pytest.raises(errors.SignerCertificateError, match="expired on"):
        verify_bundle(out, TrustStore(paths().trust), now=far)


def test_signed_by_a_revoked_key(cli, keys: Path, tmp_path: Path, refused) -> None:
    source = make_payload(tmp_path / "p")
    before = tmp_path / "before-rotation.pai"
    assert pack(cli, source, before, "1.0.0").exit_code == 0
    old_kid = cli("keys", "show", "--json").json()["signing"]
    assert cli("keys", "rotate").exit_code == 0
    # signing with the revoked key: its own bundle carries the list that revokes it
    with_old = tmp_path / "old-key.pai"
    old_key = keys / "signing" / f"{old_kid}.key"
    assert pack(cli, source, with_old, "1.0.1", "--key", str(old_key)).exit_code == 0
    refused(with_old, "revoked-signer", old_kid, "was revoked")
    # a bundle made before the rotation is refused once the site has seen the list
    after = tmp_path / "after-rotation.pai"
    assert pack(cli, source, after, "1.0.2").exit_code == 0
    assert cli("bundle", "verify", str(after)).exit_code == 0
    refused(before, "revoked-signer", old_kid)


def test_version_downgrade(cli, keys: Path, tmp_path: Path, refused) -> None:
    source = make_payload(tmp_path / "p")
    old, new = tmp_path / "old.pai", tmp_path / "new.pai"
    assert pack(cli, source, old, "2.0.0-beta.2").exit_code == 0
    assert pack(cli, source, new, "2.0.0").exit_code == 0
    assert cli("bundle", "verify", str(new)).exit_code == 0
    refused(old, "downgrade", "crm-ai 2.0.0-beta.2 is older than 2.0.0")


def test_a_corrupted_part_is_named(cli, keys: Path, tmp_path: Path, refused) -> None:
    source = make_payload(tmp_path / "p")
    (source / "models" / "minilm" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    whole = tmp_path / "big.pai"
    assert pack(cli, source, whole).exit_code == 0
    assert cli("bundle", "split", str(whole), "--size", "1M").exit_code == 0
    parts = sorted(tmp_path.glob("big.pai.part[0-9]*"))
    assert len(parts) == 4
    damaged = bytearray(parts[1].read_bytes())
    damaged[12345] ^= 0xFF
    parts[1].write_bytes(bytes(damaged))
    message = refused(parts, "part-corrupt", "part big.pai.part002:")
    assert "part001" not in message and "part003" not in message
    index = tmp_path / "big.pai.parts.json"
    refused(index, "part-corrupt", "big.pai.part002")
    # a part cut short is named before anything is read
    parts[2].write_bytes(parts[2].read_bytes()[:-1])
    refused(index, "part-corrupt", "big.pai.part003 is 1048575 bytes")


def test_a_damaged_first_part_is_named_too(cli, keys: Path, tmp_path: Path, refused) -> None:
    source = make_payload(tmp_path / "p")
    (source / "big.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    whole = tmp_path / "big.pai"
    assert pack(cli, source, whole).exit_code == 0
    assert cli("bundle", "split", str(whole), "--size", "1M").exit_code == 0
    first = tmp_path / "big.pai.part001"
    first.write_bytes(tc.flip(first.read_bytes(), 600))  # inside manifest.json
    refused(tmp_path / "big.pai.parts.json", "part-corrupt", "part big.pai.part001:")


def test_oversize_headers(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    manifest = tc.members(data)[0]
    huge = tc.with_header(data, manifest, size=1 << 32)
    refused(huge, "oversize-header", "manifest.json announces 4294967296 bytes")
    target = payload_members(data)[0]
    pax = tc.rewrite_header(data[target.header : target.data], typeflag=b"x", size=64 << 20)
    refused(data[: target.header] + pax + data[target.header :], "oversize-header", "extended")


def test_header_fields_beyond_the_checksum(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    target = payload_members(data)[1]
    refused(tc.with_header(data, target, size=target.size + 1), "member-size", target.name)
    block = bytearray(data[target.header : target.data])
    block[100:108] = b"0000777\0"  # mode, with a correct checksum
    fixed = tc.rewrite_header(bytes(block))
    tampered = data[: target.header] + fixed + data[target.data :]
    refused(tampered, "member-header", target.name)


def test_padding_and_trailer_must_be_zero(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    padded = next(m for m in payload_members(data) if m.size % 512)
    refused(tc.flip(data, padded.data + padded.size), "member-header", "padding", padded.name)
    refused(tc.flip(data, len(data) - 10), "trailer", "two zero blocks")


def test_unknown_format_version_is_refused(bundle: Path, refused) -> None:
    data = bundle.read_bytes()
    refused(
        resign(data, lambda m: m.update(format_version=2)),
        "unsupported-format",
        "format_version 2",
    )


def test_signed_manifest_with_an_unsafe_path(bundle: Path, refused) -> None:
    def evil(manifest: dict[str, Any]) -> None:
        manifest["files"][0]["path"] = "../../etc/cron.d/evil"

    refused(resign(bundle.read_bytes(), evil), "manifest", "'..'")


def test_signed_manifest_with_a_file_below_a_file(bundle: Path, refused) -> None:
    def nested(manifest: dict[str, Any]) -> None:
        entry = dict(manifest["files"][0])
        entry["path"] = manifest["files"][0]["path"] + "/inner"
        manifest["files"].insert(1, entry)
        manifest["total_size"] += entry["size"]

    refused(resign(bundle.read_bytes(), nested), "manifest", "lies below another listed file")


def test_threshold_of_distinct_signers(bundle: Path, pai_home: Path, refused) -> None:
    """A 2-of-2 policy with one signature, and with the same signer twice, is refused."""
    root = load_private(pai_home / "keys" / "root.key")
    second = generate("signing")
    cert = issue_certificate(root, second.public, lifetime=timedelta(days=30))
    other = keyring.Signer(second, cert, None)
    current = keyring.load_signer(paths())

    def two_of_two(manifest: dict[str, Any]) -> None:
        manifest["signature_policy"] = {
            "threshold": 2,
            "signers": sorted([current.key.kid, second.kid]),
        }

    data = bundle.read_bytes()
    refused(resign(data, two_of_two, [current]), "threshold", "needs 2 distinct", "1 verified")
    refused(resign(data, two_of_two, [current, current]), "threshold", "1 verified")
    ok = resign(data, two_of_two, [current, other])
    good = pai_home.parent / "two-signers.pai"
    good.write_bytes(ok)
    verified = verify_bundle(good, TrustStore(paths().trust))
    assert verified.signers == sorted([current.key.kid, second.kid])


def test_site_policy_raises_the_threshold(bundle: Path, pai_home: Path, refused) -> None:
    (pai_home / "config.toml").write_text("[bundle]\nmin_signatures = 2\n")
    refused(bundle, "threshold", "needs 2 distinct")


def test_refusals_are_audited(cli, bundle: Path, pai_home: Path) -> None:
    import duckdb

    bad = bundle.with_name("bad.pai")
    bad.write_bytes(tc.flip(bundle.read_bytes(), len(bundle.read_bytes()) // 2))
    assert cli("bundle", "verify", str(bad)).exit_code == 1
    con = duckdb.connect(str(pai_home / "audit" / "audit.duckdb"), read_only=True)
    try:
        row = con.execute(
            "SELECT action, outcome, details FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    assert row is not None
    assert row[0] == "bundle.verify" and row[1] == "denied"
    assert json.loads(row[2])["file"] == "bad.pai"


def test_every_error_code_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "formats" / "bundle.md").read_text()
    codes = [
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.BundleError)
    ]
    missing = [code for code in codes if f"`{code}`" not in doc]
    assert not missing, missing
