"""`pai keys`: init, rotate, show, the trust store, passphrases."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.helpers.cli import run_cli


def test_init_writes_private_keys_0600(cli, pai_home: Path) -> None:
    result = cli("keys", "init", "--json")
    assert result.exit_code == 0, result.output
    doc = result.json()
    root_key = pai_home / "keys" / "root.key"
    assert stat.S_IMODE(root_key.stat().st_mode) == 0o600
    signing = pai_home / "keys" / "signing" / f"{doc['signing']}.key"
    assert stat.S_IMODE(signing.stat().st_mode) == 0o600
    assert json.loads(root_key.read_text())["encryption"] is None


def test_init_twice_is_refused_with_usage_exit(cli) -> None:
    assert cli("keys", "init").exit_code == 0
    again = cli("keys", "init")
    assert again.exit_code == 2
    assert "keys already exist" in again.stderr
    assert "Traceback" not in again.output


def test_encrypted_keys_need_the_passphrase(
    cli, pai_home: Path, tmp_path: Path, monkeypatch
) -> None:
    secret = tmp_path / "pass"
    secret.write_text("correct horse\n")
    assert cli("keys", "init", "--passphrase-file", str(secret)).exit_code == 0
    doc = json.loads((pai_home / "keys" / "root.key").read_text())
    assert doc["encryption"]["kdf"] == "scrypt"

    missing = cli("keys", "rotate")
    assert missing.exit_code == 1
    assert "encrypted and no passphrase" in missing.stderr

    wrong = tmp_path / "wrong"
    wrong.write_text("battery staple")
    bad = cli("keys", "rotate", "--passphrase-file", str(wrong))
    assert bad.exit_code == 1
    assert "wrong passphrase" in bad.stderr

    monkeypatch.setenv("PAI_PASSPHRASE", "correct horse")
    assert cli("keys", "rotate").exit_code == 0


def test_rotate_revokes_the_previous_signing_key(cli) -> None:
    first = cli("keys", "init", "--json").json()
    rotated = cli("keys", "rotate", "--json").json()
    assert rotated["revoked"] == first["signing"]
    shown = cli("keys", "show", "--json").json()
    assert shown["signing"] == rotated["signing"]
    assert shown["revoked"] == [first["signing"]]
    assert shown["revocation_serial"] == 1
    assert cli("keys", "rotate", "--json").json()["revoked"] == rotated["signing"]
    assert cli("keys", "show", "--json").json()["revocation_serial"] == 2


def test_trust_add_list_remove(cli, pai_home: Path) -> None:
    root = cli("keys", "init", "--json").json()["root"]
    store = pai_home / "elsewhere"
    added = cli("keys", "trust", "add", str(pai_home / "keys" / "root.pub"), "--trust", str(store))
    assert added.exit_code == 0, added.output
    listed = cli("keys", "trust", "list", "--trust", str(store), "--json").json()
    assert [r["kid"] for r in listed["roots"]] == [root]
    assert cli("keys", "trust", "remove", root[:8], "--trust", str(store)).exit_code == 0
    assert cli("keys", "trust", "list", "--trust", str(store), "--json").json()["roots"] == []
    gone = cli("keys", "trust", "remove", root, "--trust", str(store))
    assert gone.exit_code == 1
    assert "no trusted root" in gone.stderr


def test_trust_add_refuses_a_signing_key(cli, pai_home: Path) -> None:
    cli("keys", "init")
    pub = pai_home / "keys" / "node.pub"
    from pai.keyring import node_key
    from pai.settings import paths

    node_key(paths())
    refused = cli("keys", "trust", "add", str(pub))
    assert refused.exit_code == 1
    assert "only root keys" in refused.stderr


def test_missing_key_file_is_one_clear_line(cli, tmp_path: Path) -> None:
    result = cli("keys", "trust", "add", str(tmp_path / "nope.pub"))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "does not exist" in result.stderr


def test_json_errors_are_json(cli) -> None:
    cli("keys", "init")
    result = run_cli("keys", "init", "--json")
    assert result.exit_code == 2
    assert result.json()["error"]["code"] == "usage"
