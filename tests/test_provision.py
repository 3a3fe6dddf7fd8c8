"""`pai install|upgrade|rollback|verify-node`: what is refused before any host is touched.

The real runs over SSH are in tests/integration/test_provision.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pai.playbooks.provision import plan_batches
from tests.helpers.cli import CliResult, run_cli_process


@pytest.fixture
def pai(pai_home: Path) -> Callable[..., CliResult]:
    """pai in its own process: these commands load ansible, which patches ``sys.intern``."""
    return run_cli_process


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.ini"
    path.write_text("[pai_nodes]\nn1\nn2\nn3\nn4\nn5\n\n[other]\nx1\n")
    return path


def test_install_refuses_a_missing_inventory(pai, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = pai("install", str(tmp_path / "b.bundle"), "-i", str(tmp_path / "none.ini"))
    assert result.exit_code == 2
    assert "none.ini does not exist" in result.stderr


def test_install_refuses_an_inventory_without_pai_nodes(pai, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  children:\n    web:\n      hosts:\n        w1: {}\n")
    result = pai("install", str(tmp_path / "b.bundle"), "-i", str(inv), "--json")
    assert result.exit_code == 2
    assert result.json()["error"]["code"] == "inventory"
    assert "no host of group 'pai_nodes'" in result.json()["error"]["message"]


def test_limit_that_matches_nothing_is_a_usage_error(pai, inventory: Path) -> None:  # type: ignore[no-untyped-def]
    result = pai("rollback", "-i", str(inventory), "--limit", "nosuchhost")
    assert result.exit_code == 2
    assert "matches --limit nosuchhost" in result.stderr


def test_install_refuses_a_missing_bundle(pai, inventory: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result = pai("install", str(tmp_path / "missing.bundle"), "-i", str(inventory))
    assert result.exit_code == 1
    assert "missing.bundle does not exist" in result.stderr


@pytest.mark.parametrize("batch", ["0", "-1", "0%", "150%", "half"])
def test_upgrade_refuses_a_bad_batch(pai, inventory: Path, tmp_path: Path, batch: str) -> None:  # type: ignore[no-untyped-def]
    result = pai("upgrade", str(tmp_path / "b.bundle"), "-i", str(inventory), "--batch", batch)
    assert result.exit_code == 2
    assert "--batch" in result.stderr


@pytest.mark.parametrize(
    ("canary", "batch", "expected"),
    [
        (1, "25%", [["n1"], ["n2", "n3"], ["n4", "n5"]]),
        (0, "2", [["n1", "n2"], ["n3", "n4"], ["n5"]]),
        (2, "100%", [["n1", "n2"], ["n3", "n4", "n5"]]),
        (1, "1%", [["n1"], ["n2"], ["n3"], ["n4"], ["n5"]]),
    ],
)
def test_upgrade_plan_is_canary_then_batches(
    canary: int, batch: str, expected: list[list[str]]
) -> None:
    assert plan_batches(["n1", "n2", "n3", "n4", "n5"], canary, batch) == expected


def test_the_packaged_content_is_complete() -> None:
    from pai.playbooks.runner import content_dir

    root = content_dir()
    for name in ("install.yml", "rollback.yml", "ansible.cfg", "verify/test_node.py"):
        assert (root / name).is_file(), name
    roles = {p.name for p in (root / "roles").iterdir()}
    assert {"base", "gpu", "runtime", "service", "firewall", "health", "rollback"} <= roles


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["install", "b.bundle", "-i", "hosts.ini"], "pai install"),
        (["upgrade", "b.bundle", "-i", "hosts.ini"], "pai upgrade"),
        (["rollback", "-i", "hosts.ini"], "pai rollback"),
        (["verify-node", "-i", "hosts.ini"], "pai verify-node"),
    ],
)
def test_control_commands_need_the_control_extra(  # type: ignore[no-untyped-def]
    cli, monkeypatch: pytest.MonkeyPatch, args: list[str], command: str
) -> None:
    # as on a serving node, installed without pai[control]: ansible-runner cannot be imported
    monkeypatch.setitem(sys.modules, "ansible_runner", None)
    result = cli(*args)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert f"{command} runs on the control node and needs ansible-runner" in result.stderr
    assert "pip install 'pai[control]'" in result.stderr
