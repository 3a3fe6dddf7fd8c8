"""`pai bundle`: pack, verify, inspect, extract, split, join, determinism, anti-rollback."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import duckdb
import pytest

from pai.bundles.manifest import read_manifest
from pai.bundles.parts import parse_size
from pai.bundles.verify import verify_bundle
from pai.errors import UsageError
from pai.settings import paths
from pai.trust import TrustStore
from tests.helpers.bundles import make_payload, pack
from tests.helpers.offline import run_offline


@pytest.fixture
def bundle(cli, keys: Path, tmp_path: Path) -> Path:
    out = tmp_path / "crm-ai-1.0.0.pai"
    result = pack(cli, make_payload(tmp_path / "payload"), out)
    assert result.exit_code == 0, result.output
    return out


def audit_actions(home: Path) -> list[tuple[str, str]]:
    con = duckdb.connect(str(home / "audit" / "audit.duckdb"), read_only=True)
    try:
        return [
            (r[0], r[1])
            for r in con.execute("SELECT action, outcome FROM events ORDER BY seq").fetchall()
        ]
    finally:
        con.close()


def test_pack_then_verify_and_inspect(cli, bundle: Path, pai_home: Path) -> None:
    verified = cli("bundle", "verify", str(bundle), "--json")
    assert verified.exit_code == 0, verified.output
    doc = verified.json()
    assert doc["ok"] is True
    assert (doc["name"], doc["version"], doc["files"]) == ("crm-ai", "1.0.0", 5)
    assert len(doc["signers"]) == 1
    assert {c["name"]: c["files"] for c in doc["components"]} == {"minilm": 2, "kb": 1}

    inspected = cli("bundle", "inspect", str(bundle), "--json").json()
    assert inspected["verified"] is False
    assert inspected["signers"] == doc["signers"]
    assert inspected["components"][0]["kind"] == "model"
    assert inspected["expires"] is None
    human = cli("bundle", "inspect", str(bundle))
    assert "not verified" in human.stdout and "minilm" in human.stdout
    assert ("bundle.verify", "ok") in audit_actions(pai_home)
    assert ("bundle.pack", "ok") in audit_actions(pai_home)


def test_bundle_is_a_plain_tar_in_manifest_order(bundle: Path) -> None:
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[:2] == ["manifest.json", "signatures.json"]
    assert names[2:] == [f["path"] for f in read_manifest(bundle)["files"]]
    assert names[2:] == sorted(names[2:])
    assert {m.uid for m in members} == {0} and {m.uname for m in members} == {""}
    modes = {m.name: m.mode for m in members}
    assert modes["install.sh"] == 0o755 and modes["wheels/empty.txt"] == 0o644


def test_two_packs_are_byte_identical(cli, keys: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1790000000")
    source = make_payload(tmp_path / "payload")
    first, second = tmp_path / "a.pai", tmp_path / "b.pai"
    assert pack(cli, source, first, "1.0.0", "--expires", "2030-01-01").exit_code == 0
    os.utime(source / "install.sh", (1, 1))  # mtimes and atimes must not matter
    (source / "wheels" / "empty.txt").chmod(0o600)  # nor modes beyond the exec bit
    assert pack(cli, source, second, "1.0.0", "--expires", "2030-01-01").exit_code == 0
    assert first.read_bytes() == second.read_bytes()


def test_pack_refuses_symlinks_and_bad_versions(cli, keys: Path, tmp_path: Path) -> None:
    source = make_payload(tmp_path / "payload")
    bad = pack(cli, source, tmp_path / "x.pai", "1.0")
    assert bad.exit_code == 2
    assert "not a semantic version" in bad.stderr
    (source / "link").symlink_to("/etc/passwd")
    refused = pack(cli, source, tmp_path / "x.pai")
    assert refused.exit_code == 2
    assert "is a symlink" in refused.stderr
    assert not (tmp_path / "x.pai").exists()
    assert list(tmp_path.glob(".x.pai*")) == []


def test_extract_creates_the_folder_only_after_every_check(
    cli, bundle: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "site" / "crm-ai"
    result = cli("bundle", "extract", str(bundle), str(dest), "--json")
    assert result.exit_code == 0, result.output
    assert (dest / "install.sh").read_text() == "#!/bin/sh\necho ok\n"
    assert os.stat(dest / "install.sh").st_mode & 0o777 == 0o755
    assert (dest / "models" / "minilm" / "model.onnx").stat().st_size == 70_000
    assert (dest / "manifest.json").exists()
    again = cli("bundle", "extract", str(bundle), str(dest))
    assert again.exit_code == 2
    assert "already exists" in again.stderr


def test_extract_leaves_nothing_behind_on_failure(cli, bundle: Path, tmp_path: Path) -> None:
    data = bytearray(bundle.read_bytes())
    data[-2048] ^= 0x01  # inside the last payload member's data or padding
    bad = tmp_path / "bad.pai"
    bad.write_bytes(bytes(data))
    site = tmp_path / "site"
    site.mkdir()
    result = cli("bundle", "extract", str(bad), str(site / "crm-ai"))
    assert result.exit_code == 1
    assert "member" in result.stderr
    assert list(site.iterdir()) == []


def test_split_verify_parts_and_join(cli, keys: Path, tmp_path: Path) -> None:
    source = make_payload(tmp_path / "payload")
    (source / "models" / "minilm" / "big.bin").write_bytes(os.urandom(2_500_000))
    whole = tmp_path / "big.pai"
    assert pack(cli, source, whole).exit_code == 0
    parts_dir = tmp_path / "stick"
    split = cli(
        "bundle", "split", str(whole), "--size", "1M", "--out-dir", str(parts_dir), "--json"
    )
    assert split.exit_code == 0, split.output
    parts = sorted(parts_dir.glob("big.pai.part[0-9]*"))
    assert [p.name for p in parts] == ["big.pai.part001", "big.pai.part002", "big.pai.part003"]
    assert all(p.stat().st_size == 1024 * 1024 for p in parts[:2])

    by_parts = cli("bundle", "verify", *map(str, parts), "--json")
    assert by_parts.exit_code == 0, by_parts.output
    assert by_parts.json()["parts"] == [p.name for p in parts]
    by_index = cli("bundle", "verify", str(parts_dir / "big.pai.parts.json"), "--json")
    assert by_index.exit_code == 0, by_index.output
    for first in (parts_dir / "big.pai.parts.json", parts[0]):
        inspected = cli("bundle", "inspect", str(first), "--json")
        assert inspected.exit_code == 0, inspected.output
        assert inspected.json()["split_size"] == whole.stat().st_size

    extracted = tmp_path / "from-parts"
    assert cli("bundle", "extract", *map(str, parts), str(extracted)).exit_code == 0
    assert (extracted / "models" / "minilm" / "big.bin").stat().st_size == 2_500_000

    joined = tmp_path / "joined.pai"
    assert cli("bundle", "join", *map(str, parts), "-o", str(joined)).exit_code == 0
    assert joined.read_bytes() == whole.read_bytes()

    missing = cli("bundle", "verify", str(parts[0]), str(parts[2]))
    assert missing.exit_code == 1
    assert "part-missing" in missing.stderr and "big.pai.part002" in missing.stderr


def test_parse_size_accepts_fat32_sizes() -> None:
    assert parse_size("3.9G") == int(3.9 * 1024**3) < 4 * 1024**3
    assert parse_size("500M") == 500 * 1024**2
    assert parse_size("2097152") == 2 * 1024**2
    with pytest.raises(UsageError):
        parse_size("lots")


def test_anti_rollback_and_audited_downgrade(cli, keys: Path, tmp_path: Path, pai_home) -> None:
    source = make_payload(tmp_path / "payload")
    old, new = tmp_path / "old.pai", tmp_path / "new.pai"
    assert pack(cli, source, old, "1.2.0").exit_code == 0
    assert pack(cli, source, new, "1.10.0-rc.1").exit_code == 0
    assert cli("bundle", "verify", str(old)).exit_code == 0
    assert cli("bundle", "verify", str(new)).exit_code == 0
    assert cli("bundle", "verify", str(new)).exit_code == 0  # the same version again is fine
    refused = cli("bundle", "verify", str(old), "--json")
    assert refused.exit_code == 1
    assert refused.json()["error"]["code"] == "downgrade"
    assert "1.2.0 is older than 1.10.0-rc.1" in refused.stderr
    allowed = cli("bundle", "verify", str(old), "--allow-downgrade", "--json")
    assert allowed.exit_code == 0, allowed.output
    assert allowed.json()["downgraded_from"] == "1.10.0-rc.1"
    events = audit_actions(pai_home)
    assert ("bundle.verify", "denied") in events
    assert ("bundle.downgrade", "ok") in events
    # the floor stays where it was: the downgrade is allowed once, not remembered
    assert cli("bundle", "verify", str(old)).exit_code == 1


def test_api_verify_returns_the_manifest(bundle: Path, pai_home: Path) -> None:
    result = verify_bundle(bundle, TrustStore(paths().trust))
    assert result.manifest["name"] == "crm-ai"
    assert len(result.manifest_sha256) == 64
    assert result.signers and result.parts == []


@pytest.mark.integration
def test_verify_runs_offline_in_a_network_namespace(bundle: Path, pai_home: Path) -> None:
    env = {**os.environ, "PAI_HOME": str(pai_home)}
    result = run_offline(
        [sys.executable, "-m", "pai.cli", "bundle", "verify", str(bundle), "--json"], env=env
    )
    assert result.links == ["lo"]
    assert result.returncode == 0, result.stderr
    assert '"ok": true' in result.stdout


def test_headers_hold_long_paths_and_huge_sizes() -> None:
    """Paths over 100 bytes use the ustar prefix; sizes of 8 GiB and more use base-256."""
    from pai.bundles import tarfmt

    long_path = "models/" + "a" * 80 + "/" + "b" * 80 + "/weights.bin"
    info = tarfile.TarInfo.frombuf(tarfmt.header(long_path, 5, 0o644, 0), "utf-8", "strict")
    assert info.name == long_path and info.size == 5
    huge = 10 * 1024**3
    info = tarfile.TarInfo.frombuf(tarfmt.header("big.bin", huge, 0o644, 0), "utf-8", "strict")
    assert info.size == huge
    parsed = tarfmt.parse(tarfmt.header("big.bin", huge, 0o755, 0))
    assert not isinstance(parsed, str) and parsed.size == huge


def test_long_paths_round_trip(cli, keys: Path, tmp_path: Path) -> None:
    source = make_payload(tmp_path / "payload")
    deep = source / ("d" * 80) / ("e" * 80)
    deep.mkdir(parents=True)
    (deep / "file.txt").write_text("deep")
    out = tmp_path / "long.pai"
    assert pack(cli, source, out).exit_code == 0
    dest = tmp_path / "x"
    assert cli("bundle", "extract", str(out), str(dest)).exit_code == 0, "extract failed"
    assert (dest / ("d" * 80) / ("e" * 80) / "file.txt").read_text() == "deep"


def test_pack_with_two_keys_two_of_two(cli, keys: Path, tmp_path: Path) -> None:
    """--key twice with --threshold 2: both sign, the policy is in the signed manifest."""
    import json
    from datetime import timedelta

    from pai.canonical import canonical_bytes
    from pai.certs import issue_certificate
    from pai.keys import generate, load_private, write_private

    root = load_private(keys / "root.key")
    second = generate("signing")
    write_private(tmp_path / "second.key", second, None)
    cert = issue_certificate(root, second.public, lifetime=timedelta(days=30))
    (tmp_path / "second.cert").write_bytes(canonical_bytes(cert))
    current = keys / "signing" / f"{(keys / 'current').read_text().strip()}.key"
    out = tmp_path / "two.pai"
    packed = pack(
        cli, make_payload(tmp_path / "p"), out, "1.0.0",
        "--key", str(current), "--key", str(tmp_path / "second.key"), "--threshold", "2",
    )  # fmt: skip
    assert packed.exit_code == 0, packed.output
    verified = cli("bundle", "verify", str(out), "--json").json()
    assert verified["threshold"] == 2 and len(verified["signers"]) == 2
    policy = json.loads(cli("bundle", "inspect", str(out), "--json").stdout)["signature_policy"]
    assert policy["threshold"] == 2 and second.kid in policy["signers"]
    too_many = pack(
        cli, make_payload(tmp_path / "q"), tmp_path / "x.pai", "1.0.0", "--threshold", "2"
    )
    assert too_many.exit_code == 2
    assert "threshold 2 needs between 1 and 1 signers" in too_many.stderr
