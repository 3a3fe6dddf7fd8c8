"""Run a command with no network: a fresh network namespace holding only a loopback device.

The air-gapped side must work with nothing but ``lo``; running it here proves no code path
reaches for DNS, a package index or a model hub. Later features reuse this helper for every
air-gapped command. As root it uses ``unshare --net``; as another user it adds
``--map-root-user`` (an unprivileged user namespace).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

_PROBE = 'ip -o link show; echo ---pai-offline---; ip link set lo up; exec "$@"'


@dataclass
class OfflineResult:
    """The command's result plus the network links that existed where it ran."""

    returncode: int
    stdout: str
    stderr: str
    links: list[str]


def unshare_command() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        raise RuntimeError("offline tests need util-linux `unshare` and iproute2 `ip`")
    command = [unshare, "--net"]
    if os.geteuid() != 0:
        command.append("--map-root-user")
    return command


def run_offline(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    timeout: float = 120,
) -> OfflineResult:
    """Run ``argv`` inside a new network namespace; refuse if it has anything but ``lo``."""
    proc = subprocess.run(
        [*unshare_command(), "sh", "-c", _PROBE, "pai-offline", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    head, sep, stdout = proc.stdout.partition("---pai-offline---\n")
    if not sep:
        raise RuntimeError(f"could not enter a network namespace: {proc.stderr.strip()}")
    links = [line.split(":")[1].strip() for line in head.splitlines() if ":" in line]
    if links != ["lo"]:
        raise RuntimeError(f"the namespace has links other than lo: {links}")
    return OfflineResult(proc.returncode, stdout, proc.stderr, links)
