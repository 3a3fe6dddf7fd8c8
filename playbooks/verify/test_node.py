"""The node checks `pai verify-node` runs with pytest-testinfra against live nodes.

Each test gets a testinfra ``host`` (one per inventory host, over Ansible's SSH settings) and
reads the same inventory variables the playbooks used, so a node is checked against what it
was meant to be. Shipped as package data; operators run it after any change.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

DEFAULTS: dict[str, Any] = {
    "pai_root": "/opt/pai",
    "pai_user": "pai",
    "pai_group": "pai",
    "pai_state_dir": "/var/lib/pai",
    "pai_log_dir": "/var/log/pai",
    "pai_config_dir": "/etc/pai",
    "pai_run_dir": "/run/pai",
    "pai_api_port": 8400,
    "pai_health_path": "/readyz",
    "pai_firewall": "auto",
}


def var(host: Any, name: str) -> Any:
    value = host.ansible.get_variables().get(name, DEFAULTS[name])
    if isinstance(value, str) and "{{" in value:
        return DEFAULTS[name]
    return value


def release(host: Any) -> dict[str, Any]:
    current = f"{var(host, 'pai_root')}/current"
    marker = host.file(f"{current}/.pai-release.json")
    assert marker.exists, f"{current} has no finished release"
    data: dict[str, Any] = json.loads(marker.content_string)
    return data


def test_current_is_a_symlink_to_a_finished_release(host: Any) -> None:
    root = var(host, "pai_root")
    link = host.file(f"{root}/current")
    assert link.is_symlink
    assert link.linked_to.startswith(f"{root}/releases/")
    assert release(host)["version"] == link.linked_to.rsplit("/", 1)[1]


def test_file_modes(host: Any) -> None:
    user, group = var(host, "pai_user"), var(host, "pai_group")
    root = var(host, "pai_root")
    expected = [
        (root, "root", "root", 0o755),
        (f"{root}/releases", "root", "root", 0o755),
        (f"{root}/bundles", "root", "root", 0o700),
        (var(host, "pai_config_dir"), "root", group, 0o750),
        (f"{var(host, 'pai_config_dir')}/serve.env", "root", group, 0o640),
        (var(host, "pai_state_dir"), user, group, 0o750),
        (var(host, "pai_log_dir"), user, group, 0o750),
    ]
    current = host.file(f"{root}/current").linked_to
    listing = host.run(
        "stat -c '%n %U %G %a' -- " + " ".join(p for p, *_ in expected) + f" {current}"
    )
    found = {}
    for line in listing.stdout.splitlines():
        name, owner, grp, mode = line.rsplit(" ", 3)
        found[name] = (owner, grp, int(mode, 8))
    for path, owner, grp, mode in expected:
        assert found.get(path) == (owner, grp, mode), f"{path}: {found.get(path)}"
    assert found[current][0] == "root"
    assert not found[current][2] & 0o022, "the release must not be group/world-writable"


def test_service_user_cannot_log_in(host: Any) -> None:
    user = host.user(var(host, "pai_user"))
    assert user.exists
    assert user.shell in ("/usr/sbin/nologin", "/bin/false")


def test_service_runs_as_the_service_user(host: Any) -> None:
    if host.file("/run/systemd/system").exists:
        assert host.service("pai-serve").is_running
        assert host.service("pai-serve").is_enabled
        return
    pidfile = f"{var(host, 'pai_run_dir')}/serve.pid"
    assert host.run(f"start-stop-daemon --status --pidfile {pidfile}").rc == 0
    supervisor = host.file(pidfile).content_string.strip()
    children = host.run(f"ps -o user=,args= --ppid {supervisor}").stdout.strip().splitlines()
    assert children, "the supervisor has no running child"
    assert all(line.split()[0] == var(host, "pai_user") for line in children)


def test_port_answers_with_the_installed_version(host: Any) -> None:
    port = int(var(host, "pai_api_port"))
    assert (
        host.socket(f"tcp://0.0.0.0:{port}").is_listening
        or host.socket(f"tcp://:::{port}").is_listening
    )
    url = f"http://127.0.0.1:{port}{var(host, 'pai_health_path')}"
    script = (
        f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=10).read().decode())"
    )
    out = host.run(f'python3 -c "{script}"')
    assert out.rc == 0, out.stderr
    body = json.loads(out.stdout)
    served = (
        [str(body["version"])]
        if "version" in body
        else [str(b.get("version")) for b in body.get("bundles", [])]
    )
    assert release(host)["version"] in served


def test_installed_pai_runs(host: Any) -> None:
    out = host.run(f"{var(host, 'pai_root')}/current/bin/pai --version")
    assert out.rc == 0, out.stderr
    assert out.stdout.startswith("pai ")


def test_firewall_rules(host: Any) -> None:
    if var(host, "pai_firewall") is False or host.run("nft list tables").rc != 0:
        pytest.skip("nftables is not available on this node (firewall skipped)")
    table = host.run("nft list table inet pai")
    assert table.rc == 0, "the pai nftables table is not loaded"
    rules = table.stdout
    assert "hook input priority filter; policy drop;" in rules
    assert "hook output priority filter; policy drop;" in rules
    assert f"tcp dport {int(var(host, 'pai_api_port'))} ip saddr @api4 accept" in rules
    assert "tcp dport 22 ip saddr @admin4 accept" in rules
