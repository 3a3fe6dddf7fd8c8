"""ansible-runner glue: run one packaged playbook, follow its events, keep its artifacts.

The playbooks and roles ship inside the ``pai.playbooks`` package, so the air-gapped control
node needs nothing but pai's own wheelhouse: no galaxy, no collections from a network. Each
run gets its own private data dir under ``$PAI_HOME/ansible/<run-id>/`` and keeps it (the
event stream, stdout and the status are what an operator reads after a failure).

Events are folded into one :class:`HostState` per host; the caller passes ``on_change`` to
render them live (the CLI draws a rich table) and gets a :class:`PlayResult` at the end.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pai.errors import PaiError, UsageError
from pai.settings import paths
from pai.timeutil import format_time, utcnow

STATUSES = ("ok", "changed", "failed", "unreachable", "skipped")


class InventoryError(UsageError):
    """The inventory file is missing, unreadable, or names no host to work on."""

    code = "inventory"


class PlaybookError(PaiError):
    """Ansible itself could not run (bad playbook, runner crash): no host result to report."""

    code = "playbook"


class ControlExtraMissing(PaiError):
    """The control-node tools (the ``control`` extra) are not installed where pai runs."""

    code = "control_extra_missing"


# module -> distribution of the `control` extra; serving nodes install pai without it.
CONTROL_MODULES = {
    "ansible": "ansible-core",
    "ansible_runner": "ansible-runner",
    "pytest": "pytest",
    "testinfra": "pytest-testinfra",
}


def require_control(command: str) -> None:
    """Refuse early, in one line, when pai was installed without ``pai[control]``.

    Only looks the modules up (``find_spec``): importing ansible here would patch
    ``sys.intern`` in this interpreter, which the playbook runs never need.
    """
    missing = [dist for mod, dist in CONTROL_MODULES.items() if _find(mod) is None]
    if missing:
        raise ControlExtraMissing(
            f"{command} runs on the control node and needs {', '.join(missing)}",
            hint="install pai with its control extra there: pip install 'pai[control]'",
        )


def _find(module: str) -> object:
    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def content_dir() -> Path:
    """The packaged Ansible content (playbooks, roles, ansible.cfg, the testinfra suite)."""
    return Path(str(resources.files("pai.playbooks")))


@dataclass
class HostState:
    """What is known about one host during and after a run."""

    host: str
    task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    message: str = ""

    @property
    def status(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        return "changed" if self.changed else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status,
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
            "message": self.message,
        }


@dataclass
class PlayResult:
    """The outcome of one playbook run."""

    playbook: str
    run_id: str
    status: str
    rc: int
    artifacts: Path
    hosts: dict[str, HostState] = field(default_factory=dict)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, s in self.hosts.items() if s.status in ("failed", "unreachable"))

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failed_hosts

    def as_dict(self) -> dict[str, Any]:
        return {
            "playbook": self.playbook,
            "run_id": self.run_id,
            "status": self.status,
            "rc": self.rc,
            "artifacts": str(self.artifacts),
            "hosts": [self.hosts[h].as_dict() for h in sorted(self.hosts)],
        }


def _message(data: Mapping[str, Any]) -> str:
    res = data.get("res") or {}
    text = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    return str(text).strip().splitlines()[0][:300] if str(text).strip() else ""


class _Tracker:
    """Folds ansible-runner events into per-host states."""

    def __init__(self, on_change: Callable[[dict[str, HostState]], None] | None) -> None:
        self.hosts: dict[str, HostState] = {}
        self.facts: dict[str, dict[str, Any]] = {}
        self.on_change = on_change

    def state(self, host: str) -> HostState:
        return self.hosts.setdefault(host, HostState(host))

    def __call__(self, event: Mapping[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        if kind == "runner_on_start" and host:
            self.state(host).task = str(data.get("task", ""))
        elif kind == "runner_on_ok" and host:
            self._ok(host, data)
        elif kind == "runner_on_failed" and host:
            state = self.state(host)
            if data.get("ignore_errors"):
                state.ok += 1
            else:
                state.failed += 1
                state.message = f"{data.get('task', '')}: {_message(data)}"
        elif kind == "runner_on_unreachable" and host:
            state = self.state(host)
            state.unreachable += 1
            state.message = _message(data)
        elif kind == "runner_on_skipped" and host:
            self.state(host).skipped += 1
        elif kind == "playbook_on_stats":
            self._stats(data)
        else:
            return True
        if self.on_change is not None:
            self.on_change(self.hosts)
        return True

    def _ok(self, host: str, data: Mapping[str, Any]) -> None:
        state = self.state(host)
        res = data.get("res") or {}
        if res.get("changed"):
            state.changed += 1
        else:
            state.ok += 1
        facts = res.get("ansible_facts") or {}
        if "pai_report" in facts:
            self.facts.setdefault(host, {}).update(facts["pai_report"])

    def _stats(self, data: Mapping[str, Any]) -> None:
        """The play recap is authoritative: replace the running counts with it."""
        for host in set().union(*(data.get(k) or {} for k in ("ok", "dark", "failures"))):
            state = self.state(host)
            changed = int((data.get("changed") or {}).get(host, 0))
            state.changed = changed
            state.ok = int((data.get("ok") or {}).get(host, 0)) - changed
            state.failed = int((data.get("failures") or {}).get(host, 0))
            state.unreachable = int((data.get("dark") or {}).get(host, 0))
            state.skipped = int((data.get("skipped") or {}).get(host, 0))
            state.task = "done"


def run_playbook(
    playbook: str,
    inventory: Path,
    *,
    extravars: Mapping[str, Any] | None = None,
    limit: str | None = None,
    check: bool = False,
    forks: int = 5,
    on_change: Callable[[dict[str, HostState]], None] | None = None,
    tags: Sequence[str] = (),
) -> PlayResult:
    """Run ``playbook`` (a file in :func:`content_dir`) against ``inventory``.

    Raises :class:`InventoryError` for an unusable inventory and :class:`PlaybookError`
    when Ansible produced no host result at all.
    """
    import ansible_runner

    inventory = Path(inventory).absolute()
    if not inventory.exists():
        raise InventoryError(f"inventory {inventory} does not exist")
    content = content_dir()
    if not (content / playbook).is_file():
        raise PlaybookError(f"packaged playbook {playbook} is missing from {content}")
    run_id = f"{format_time(utcnow()).replace(':', '')}-{secrets.token_hex(3)}"
    home = paths().ensure().home
    private = home / "ansible" / run_id
    private.mkdir(parents=True, mode=0o700)
    tracker = _Tracker(on_change)
    cmdline = ["--check", "--diff"] if check else []
    if tags:
        cmdline += ["--tags", ",".join(tags)]
    envvars = {
        "ANSIBLE_CONFIG": str(content / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(content / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "ansible" / "cp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "PATH": f"{ansible_bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    runner = ansible_runner.run(
        private_data_dir=str(private),
        project_dir=str(content),
        playbook=playbook,
        inventory=str(inventory),
        extravars=dict(extravars or {}),
        limit=limit,
        forks=max(1, forks),
        cmdline=" ".join(cmdline) or None,
        envvars=envvars,
        event_handler=tracker,
        quiet=True,
        ident="run",
        settings={"suppress_ansible_output": True, "job_timeout": 3600},
    )
    artifacts = private / "artifacts" / "run"
    rc = int(runner.rc if runner.rc is not None else 1)
    if not tracker.hosts:
        tail = _stdout_tail(artifacts)
        if rc == 0:
            raise InventoryError(
                f"no host in {inventory} matched"
                + (f" --limit {limit}" if limit else "")
                + " (the playbooks run on group 'pai_nodes')"
            )
        raise PlaybookError(f"ansible failed before reaching any host (rc {rc}): {tail}")
    return PlayResult(
        playbook=playbook,
        run_id=run_id,
        status=str(runner.status),
        rc=rc,
        artifacts=artifacts,
        hosts=tracker.hosts,
        facts=tracker.facts,
    )


def ansible_bin_dir() -> str:
    """The folder holding ansible-playbook & co. for the Python pai runs in."""
    return str(Path(_ansible_playbook()).parent)


def _ansible_playbook() -> str:
    """ansible-playbook from the environment pai runs in (a venv need not be on PATH)."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise PlaybookError("ansible-playbook is not installed next to pai (reinstall pai)")
    return found


def _stdout_tail(artifacts: Path) -> str:
    stdout = artifacts / "stdout"
    if not stdout.exists():
        return "no output"
    lines = [line for line in stdout.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-400:]


def list_hosts(inventory: Path, limit: str | None = None, group: str = "pai_nodes") -> list[str]:
    """Hosts of ``group`` in ``inventory`` (after ``limit``), in inventory order."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    inventory = Path(inventory).absolute()
    if not inventory.exists():
        raise InventoryError(f"inventory {inventory} does not exist")
    os.environ.setdefault("ANSIBLE_CONFIG", str(content_dir() / "ansible.cfg"))
    manager = InventoryManager(loader=DataLoader(), sources=[str(inventory)])
    if limit:
        manager.subset(limit)
    hosts = [h.name for h in manager.get_hosts(pattern=group)]
    if not hosts:
        raise InventoryError(
            f"no host of group '{group}' in {inventory}"
            + (f" matches --limit {limit}" if limit else "")
        )
    return hosts
