"""Provisioning over real SSH against two test hosts made by the tests (see hosts.py).

One story, in order: install, idempotent re-install, an upgrade whose second batch fails its
health check and is rolled back automatically, a manual rollback, and the node test suite.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import CliResult, run_cli, run_cli_process
from tests.integration import hosts, nodebundle

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, lab2: hosts.Lab) -> Iterator[dict[str, Any]]:
    """A control node: PAI_HOME with trusted keys, two signed bundles, an inventory."""
    work = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAI_HOME", str(work / "home"))
        for var in ("PAI_CONFIG", "PAI_PASSPHRASE", "PAI_PASSPHRASE_FILE"):
            mp.delenv(var, raising=False)
        assert run_cli("keys", "init").exit_code == 0
        root_pub = work / "home" / "keys" / "root.pub"
        assert run_cli("keys", "trust", "add", str(root_pub)).exit_code == 0
        wheel = nodebundle.pai_wheel(work / "wheel")
        model = nodebundle.tiny_model(work / "model")
        inventory_dir = work / "inventory"
        inventory_dir.mkdir()
        inventory = lab2.inventory(inventory_dir / "hosts.ini", extra="pai_health_retries=40")
        yield {
            "work": work,
            "inventory": inventory,
            "v1": nodebundle.make_bundle(work, "0.1.0", wheel, model),
            "v2": nodebundle.make_bundle(work, "0.2.0", wheel, model),
        }


def pai(*args: str) -> CliResult:
    return run_cli_process(*args)


def by_host(result: CliResult) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in result.json()["hosts"]}


def current(lab: hosts.Lab, host: hosts.Host) -> str:
    out = lab.ssh(host, "readlink /opt/pai/current")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().rsplit("/", 1)[1]


def readyz(host: hosts.Host) -> dict[str, Any]:
    """`pai serve`'s /readyz on the node, asked from the control node over the bridge."""
    with urllib.request.urlopen(f"http://{host.address}:8400/readyz", timeout=10) as r:
        body: dict[str, Any] = json.loads(r.read())
    return body


def served(lab: hosts.Lab, host: hosts.Host) -> list[str]:
    """The bundle versions the node's daemon serves."""
    out = lab.ssh(host, "true")  # the node is up
    assert out.returncode == 0
    return [b["version"] for b in readyz(host)["bundles"]]


def test_hosts_answer_ssh_and_have_no_route_beyond_the_bridge(lab2: hosts.Lab) -> None:
    for host in lab2.hosts:
        result = lab2.ssh(host, "hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == host.name
        beyond = lab2.ssh(host, "ip route get 192.0.2.1 2>&1; ip route get 1.1.1.1 2>&1")
        assert beyond.stdout.count("Network is unreachable") == 2, beyond.stdout
        peer = next(h for h in lab2.hosts if h is not host)
        assert lab2.ssh(host, f"ip route get {peer.address}").returncode == 0


def test_install_refuses_a_missing_inventory(site: dict[str, Any]) -> None:
    result = pai("install", str(site["v1"]), "-i", str(site["work"] / "nope.ini"))
    assert result.exit_code == 2
    assert "nope.ini does not exist" in result.stderr


def test_install_refuses_a_tampered_bundle_before_touching_a_host(
    site: dict[str, Any], lab2: hosts.Lab
) -> None:
    bad = site["work"] / "tampered.bundle"
    data = bytearray(site["v1"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    result = pai("install", str(bad), "-i", str(site["inventory"]))
    assert result.exit_code == 1
    assert "sha256" in result.stderr or "hash" in result.stderr
    assert lab2.ssh(lab2.hosts[0], "test -e /opt/pai").returncode == 1


def test_install_two_hosts(site: dict[str, Any], lab2: hosts.Lab) -> None:
    result = pai("install", str(site["v1"]), "-i", str(site["inventory"]), "--forks", "2", "--json")
    assert result.exit_code == 0, result.output
    rows = by_host(result)
    assert sorted(rows) == ["h1", "h2"]
    for row in rows.values():
        assert row["status"] == "changed"
        assert row["version"] == "0.1.0"
        assert row["health"] == "ok"
        assert row["gpu"] is False
        assert row["service"] == "supervisor"
        # the real daemon embedded the health check's text with the bundle's model
        assert row["smoke"] == f"{nodebundle.MODEL_NAME}@1.0.0 (32 dims)"
    for host in lab2.hosts:
        assert current(lab2, host) == "0.1.0"
        assert served(lab2, host) == ["0.1.0"]
        assert readyz(host)["models"] == [f"{nodebundle.MODEL_NAME}@1.0.0"]
        key = lab2.ssh(host, "stat -c '%a %U' /var/lib/pai/jwt/issuer/*.pem")
        assert key.stdout.split() == ["600", "pai"], key.stdout + key.stderr
    assert Path(result.json()["steps"][0]["artifacts"], "stdout").exists()


def test_second_install_changes_nothing(site: dict[str, Any]) -> None:
    result = pai("install", str(site["v1"]), "-i", str(site["inventory"]), "--forks", "2", "--json")
    assert result.exit_code == 0, result.output
    assert {h: r["changed"] for h, r in by_host(result).items()} == {"h1": 0, "h2": 0}


def test_check_mode_reports_an_upgrade_without_making_it(
    site: dict[str, Any], lab2: hosts.Lab
) -> None:
    result = pai("install", str(site["v2"]), "-i", str(site["inventory"]), "--check", "--json")
    assert result.exit_code == 0, result.output
    assert all(row["changed"] > 0 for row in result.json()["hosts"])
    for host in lab2.hosts:
        assert current(lab2, host) == "0.1.0"
        assert lab2.ssh(host, "test -e /opt/pai/releases/0.2.0").returncode == 1


def test_firewall_admits_the_api_only_from_allowed_networks(lab2: hosts.Lab) -> None:
    rules = lab2.ssh(lab2.hosts[0], "nft list table inet pai").stdout
    assert "policy drop" in rules
    # egress is denied: the node cannot open a connection to the control node's SSH port
    probe = lab2.ssh(
        lab2.hosts[0],
        f"timeout 3 bash -c 'echo > /dev/tcp/{lab2.gateway}/22' 2>&1 && echo open || echo closed",
    )
    assert probe.stdout.strip().endswith("closed"), probe.stdout


def test_upgrade_rolls_back_a_batch_that_fails_its_health_check(
    site: dict[str, Any], lab2: hosts.Lab
) -> None:
    host_vars = site["inventory"].parent / "host_vars"
    host_vars.mkdir()
    (host_vars / "h2.yml").write_text(
        "# fault injected by the test: release 0.2.0 cannot start its service on h2\n"
        "pai_serve_command: \"{{ '/bin/false' if (pai_version | string) == '0.2.0' "
        'else pai_serve_default_command }}"\n'
    )
    try:
        result = pai(
            "upgrade", str(site["v2"]), "-i", str(site["inventory"]),
            "--canary", "1", "--batch", "1", "--max-fail", "0", "--json",
        )  # fmt: skip
    finally:
        (host_vars / "h2.yml").unlink()
    assert result.exit_code == 1, result.output
    data = result.json()
    assert [s["step"] for s in data["steps"]] == [
        "batch 1/2 (canary)",
        "batch 2/2",
        "rollback of batch 2/2",
    ]
    assert "batch 2/2: 1 host(s) failed (h2)" in data["stopped"]
    assert data["rolled_back"] == ["h2"]
    h1, h2 = lab2.hosts
    assert current(lab2, h1) == "0.2.0"
    assert served(lab2, h1) == ["0.2.0"]
    assert current(lab2, h2) == "0.1.0"
    assert served(lab2, h2) == ["0.1.0"]


def test_rollback_to_an_unknown_version_changes_nothing(
    site: dict[str, Any], lab2: hosts.Lab
) -> None:
    result = pai("rollback", "-i", str(site["inventory"]), "--to", "9.9.9", "--json")
    assert result.exit_code == 1
    for row in result.json()["hosts"]:
        assert "no installed release 9.9.9" in row["message"]
    assert current(lab2, lab2.hosts[0]) == "0.2.0"


def test_rollback_returns_to_the_previous_release(site: dict[str, Any], lab2: hosts.Lab) -> None:
    result = pai("rollback", "-i", str(site["inventory"]), "--limit", "h1")
    assert result.exit_code == 0, result.output
    assert "pai rollback" in result.stdout  # the summary table's title
    assert "h1" in result.stdout and "h2" not in result.stdout
    assert "ansible artifacts:" in result.stdout
    assert current(lab2, lab2.hosts[0]) == "0.1.0"
    assert served(lab2, lab2.hosts[0]) == ["0.1.0"]


def test_verify_node_passes_on_healthy_nodes(site: dict[str, Any]) -> None:
    result = pai("verify-node", "-i", str(site["inventory"]), "--json")
    assert result.exit_code == 0, result.output
    for row in result.json()["hosts"]:
        assert row["failed"] == []
        assert row["passed"] == 7


def test_verify_node_reports_a_broken_node(site: dict[str, Any], lab2: hosts.Lab) -> None:
    assert lab2.ssh(lab2.hosts[1], "chmod 0777 /etc/pai").returncode == 0
    try:
        result = pai("verify-node", "-i", str(site["inventory"]), "--json")
    finally:
        lab2.ssh(lab2.hosts[1], "chmod 0750 /etc/pai")
    assert result.exit_code == 1
    rows = by_host(result)
    assert rows["h1"]["failed"] == []
    assert any(f.startswith("test_file_modes") for f in rows["h2"]["failed"])


def test_every_host_outcome_is_audited(site: dict[str, Any]) -> None:
    import duckdb

    con = duckdb.connect(str(site["work"] / "home" / "audit" / "audit.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT action, resource, outcome FROM events WHERE action LIKE 'provision.%'"
    ).fetchall()
    assert ("provision.install", "host:h1", "ok") in rows
    assert ("provision.upgrade", "host:h2", "failed") in rows
    assert ("provision.rollback", "host:h2", "ok") in rows
    assert ("provision.verify-node", "host:h2", "failed") in rows
