"""Provisioning over real SSH against test hosts made by the tests (see hosts.py)."""

from __future__ import annotations

import pytest

from tests.integration import hosts

pytestmark = pytest.mark.integration


def test_hosts_answer_ssh_and_have_no_route_beyond_the_bridge(lab2: hosts.Lab) -> None:
    for host in lab2.hosts:
        result = lab2.ssh(host, "hostname; ip route get 10.231.0.1 || echo unreachable")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == host.name
        beyond = lab2.ssh(host, "ip route get 192.0.2.1 2>&1; ip route get 1.1.1.1 2>&1")
        assert beyond.stdout.count("Network is unreachable") == 2, beyond.stdout
        peer = next(h for h in lab2.hosts if h is not host)
        assert lab2.ssh(host, f"ip route get {peer.address}").returncode == 0
