"""Install, upgrade, roll back and verify serving nodes: the logic behind `pai install` & co.

The control node verifies a bundle once (signatures, expiry, every hash, version floor) and
hands the playbooks the bundle's sha256; each node checks its copy against that hash before
unpacking it. Upgrades go canary first, then in batches; a batch whose failures exceed
``max_fail`` is rolled back to the release its hosts ran before, and the upgrade stops.
Every host outcome is an audit event.
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pai.audit import record_event
from pai.errors import PaiError, UsageError
from pai.playbooks.runner import (
    HostState,
    PlayResult,
    ansible_bin_dir,
    content_dir,
    list_hosts,
    require_control,
    run_playbook,
)
from pai.settings import paths
from pai.timeutil import format_time, utcnow

OnChange = Callable[[str, dict[str, HostState]], None]


class VerifyNodeError(PaiError):
    """The node test suite could not run at all (not: a check failed on a node)."""

    code = "verify-node"


@dataclass(frozen=True)
class BundleFacts:
    """What the playbooks need to know about a verified bundle."""

    path: Path
    name: str
    version: str
    sha256: str
    manifest_sha256: str

    def extravars(self) -> dict[str, str]:
        return {
            "pai_bundle_src": str(self.path),
            "pai_bundle_sha256": self.sha256,
            "pai_bundle_name": self.name,
            "pai_version": self.version,
        }


@dataclass
class Step:
    """One playbook run within a command (an upgrade has several)."""

    label: str
    result: PlayResult

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.label, **self.result.as_dict()}


@dataclass
class Outcome:
    """What a provisioning command did, host by host and step by step."""

    action: str
    ok: bool
    steps: list[Step] = field(default_factory=list)
    bundle: BundleFacts | None = None
    stopped: str = ""
    rolled_back: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ok": self.ok,
            "action": self.action,
            "steps": [s.as_dict() for s in self.steps],
            "hosts": self.hosts(),
        }
        if self.bundle is not None:
            data["bundle"] = {
                "name": self.bundle.name,
                "version": self.bundle.version,
                "sha256": self.bundle.sha256,
                "manifest_sha256": self.bundle.manifest_sha256,
            }
        if self.stopped:
            data["stopped"] = self.stopped
        if self.rolled_back:
            data["rolled_back"] = self.rolled_back
        return data

    def hosts(self) -> list[dict[str, Any]]:
        """The last state of every host, with the facts its playbook reported."""
        latest: dict[str, dict[str, Any]] = {}
        for step in self.steps:
            for name, state in step.result.hosts.items():
                row = state.as_dict()
                row["step"] = step.label
                row.update(step.result.facts.get(name, {}))
                latest[name] = row
        return [latest[h] for h in sorted(latest)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(bundle: Path, *, allow_downgrade: bool = False) -> BundleFacts:
    """Verify ``bundle`` against the trust store (raises the bundle's own errors)."""
    from pai.bundles.verify import verify_bundle
    from pai.trust import TrustStore

    bundle = Path(bundle).absolute()
    verified = verify_bundle(bundle, TrustStore(paths().trust), allow_downgrade=allow_downgrade)
    return BundleFacts(
        path=bundle,
        name=verified.name,
        version=verified.version,
        sha256=_sha256(bundle),
        manifest_sha256=verified.manifest_sha256,
    )


def _audit(action: str, step: Step, bundle: BundleFacts | None, extra: dict[str, Any]) -> None:
    for name, state in sorted(step.result.hosts.items()):
        details: dict[str, Any] = {
            "host": name,
            "step": step.label,
            "run_id": step.result.run_id,
            "changed": state.changed,
            "status": state.status,
            **extra,
        }
        if bundle is not None:
            details.update(bundle=bundle.name, version=bundle.version, bundle_sha256=bundle.sha256)
        record_event(
            action,
            resource=f"host:{name}",
            outcome="ok" if state.status in ("ok", "changed") else "failed",
            details=details,
        )


def _runner(label: str, on_change: OnChange | None) -> Callable[[dict[str, HostState]], None]:
    def changed(states: dict[str, HostState]) -> None:
        if on_change is not None:
            on_change(label, states)

    return changed


def install(
    bundle: Path,
    inventory: Path,
    *,
    limit: str | None = None,
    check: bool = False,
    forks: int = 5,
    on_change: OnChange | None = None,
) -> Outcome:
    """Verify ``bundle``, then run the install playbook on the inventory's ``pai_nodes``."""
    require_control("pai install")
    list_hosts(inventory, limit)
    facts = verify(bundle)
    result = run_playbook(
        "install.yml",
        inventory,
        extravars=facts.extravars(),
        limit=limit,
        check=check,
        forks=forks,
        on_change=_runner("install", on_change),
    )
    step = Step("install", result)
    if not check:
        _audit("provision.install", step, facts, {})
    return Outcome("install", result.ok, [step], facts)


def parse_batch(batch: str, total: int) -> int:
    """``25%`` of ``total`` hosts (at least one) or a plain count."""
    text = batch.strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return max(1, math.ceil(total * share / 100))
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise UsageError(
            f"--batch {batch!r}: give a count (e.g. 2) or a share (e.g. 25%)"
        ) from None


def plan_batches(hosts: list[str], canary: int, batch: str) -> list[list[str]]:
    """Canary hosts first (their own batch), then the rest in batches of ``batch``."""
    if canary < 0:
        raise UsageError("--canary must be 0 or more")
    first, rest = hosts[:canary], hosts[canary:]
    size = parse_batch(batch, len(hosts))
    batches = [first] if first else []
    batches += [rest[i : i + size] for i in range(0, len(rest), size)]
    return batches


def upgrade(
    bundle: Path,
    inventory: Path,
    *,
    canary: int = 1,
    batch: str = "25%",
    max_fail: int = 0,
    limit: str | None = None,
    forks: int = 5,
    on_change: OnChange | None = None,
) -> Outcome:
    """Roll ``bundle`` out canary first, batch by batch, rolling back a failed batch."""
    require_control("pai upgrade")
    if max_fail < 0:
        raise UsageError("--max-fail must be 0 or more")
    hosts = list_hosts(inventory, limit)
    batches = plan_batches(hosts, canary, batch)
    facts = verify(bundle)
    outcome = Outcome("upgrade", True, bundle=facts)
    for number, members in enumerate(batches, start=1):
        label = f"batch {number}/{len(batches)}" + (" (canary)" if number == 1 and canary else "")
        result = run_playbook(
            "install.yml",
            inventory,
            extravars=facts.extravars(),
            limit=",".join(members),
            forks=forks,
            on_change=_runner(label, on_change),
        )
        step = Step(label, result)
        outcome.steps.append(step)
        _audit("provision.upgrade", step, facts, {"batch": number})
        if len(result.failed_hosts) <= max_fail:
            continue
        outcome.ok = False
        outcome.stopped = (
            f"{label}: {len(result.failed_hosts)} host(s) failed "
            f"({', '.join(result.failed_hosts)}), more than --max-fail {max_fail}"
        )
        undo = run_playbook(
            "rollback.yml",
            inventory,
            extravars={"pai_rollback_from": facts.version},
            limit=",".join(members),
            forks=forks,
            on_change=_runner(f"rollback of {label}", on_change),
        )
        undo_step = Step(f"rollback of {label}", undo)
        outcome.steps.append(undo_step)
        _audit("provision.rollback", undo_step, None, {"from": facts.version, "automatic": True})
        outcome.rolled_back = sorted(undo.hosts)
        break
    return outcome


def rollback(
    inventory: Path,
    *,
    to: str | None = None,
    limit: str | None = None,
    forks: int = 5,
    on_change: OnChange | None = None,
) -> Outcome:
    """Switch nodes to ``to`` (an installed release) or to the release they ran before."""
    require_control("pai rollback")
    list_hosts(inventory, limit)
    extravars = {"pai_rollback_to": to} if to else {}
    result = run_playbook(
        "rollback.yml",
        inventory,
        extravars=extravars,
        limit=limit,
        forks=forks,
        on_change=_runner("rollback", on_change),
    )
    step = Step("rollback", result)
    _audit("provision.rollback", step, None, {"to": to or "previous"})
    return Outcome("rollback", result.ok, [step])


def verify_nodes(inventory: Path, *, limit: str | None = None) -> dict[str, Any]:
    """Run the shipped testinfra suite against the live nodes; results per host and check."""
    require_control("pai verify-node")
    hosts = list_hosts(inventory, limit)
    run_dir = paths().ensure().home / "ansible" / f"verify-{format_time(utcnow())}"
    run_dir = run_dir.with_name(run_dir.name.replace(":", ""))
    run_dir.mkdir(parents=True, mode=0o700)
    junit = run_dir / "junit.xml"
    suite = content_dir() / "verify" / "test_node.py"
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(content_dir() / "ansible.cfg")
    env["ANSIBLE_HOST_KEY_CHECKING"] = "True"
    env["PATH"] = f"{ansible_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    command = [
        sys.executable, "-m", "pytest", str(suite), "-q", "-p", "no:cacheprovider",
        f"--rootdir={run_dir}", f"--junitxml={junit}",
        f"--hosts={','.join(f'ansible://{h}' for h in hosts)}",
        f"--ansible-inventory={Path(inventory).absolute()}",
        "-o", "addopts=", "-o", "junit_family=xunit1",
    ]  # fmt: skip
    proc = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=run_dir, check=False
    )
    (run_dir / "pytest.log").write_text(proc.stdout + proc.stderr)
    if not junit.exists():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise VerifyNodeError(f"the node test suite did not run: {' | '.join(tail)}")
    checks = _junit_checks(junit, hosts)
    per_host: dict[str, dict[str, Any]] = {
        h: {"host": h, "passed": 0, "failed": [], "skipped": []} for h in hosts
    }
    for check in checks:
        row = per_host.setdefault(
            check["host"], {"host": check["host"], "passed": 0, "failed": [], "skipped": []}
        )
        if check["result"] == "passed":
            row["passed"] += 1
        else:
            row[check["result"]].append(f"{check['check']}: {check['message']}".strip(": "))
    for row in per_host.values():
        record_event(
            "provision.verify-node",
            resource=f"host:{row['host']}",
            outcome="ok" if not row["failed"] else "failed",
            details={"host": row["host"], "passed": row["passed"], "failed": len(row["failed"])},
        )
    ok = proc.returncode == 0 and all(not r["failed"] for r in per_host.values())
    return {
        "ok": ok,
        "hosts": [per_host[h] for h in sorted(per_host)],
        "log": str(run_dir / "pytest.log"),
    }


def _junit_checks(junit: Path, hosts: list[str]) -> list[dict[str, str]]:
    checks: list[dict[str, str]] = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        check, _, param = name.partition("[")
        host = param.rstrip("]").removeprefix("ansible://") or "?"
        result, message = "passed", ""
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                result = "failed"
                message = (
                    (node.get("message") or "").splitlines()[0][:200] if node.get("message") else ""
                )
        skipped = case.find("skipped")
        if skipped is not None:
            result, message = "skipped", (skipped.get("message") or "")[:200]
        checks.append({"host": host, "check": check, "result": result, "message": message})
    return checks
