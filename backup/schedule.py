"""``pai backup schedule`` and the job it installs, ``pai backup run``.

The schedule is one cron.d file (default ``/etc/cron.d/pai-backup``) with one line that runs
``pai backup run``: create, then prune, under the schedule lock ``$PAI_HOME/backup/run.lock``.
A run that finds the lock held exits at once with :data:`EXIT_BUSY` instead of queueing behind
the previous one. The run prints exactly one JSON line, for the cron log and for monitoring.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

from pai.backup import age
from pai.backup.create import create
from pai.backup.errors import BusyError, PolicyError
from pai.backup.prune import Policy, prune
from pai.errors import PaiError
from pai.fsutil import atomic_write_text
from pai.locking import file_lock
from pai.settings import Paths

DEFAULT_CRON_FILE = Path("/etc/cron.d/pai-backup")
EXIT_OK = 0
EXIT_CREATE_FAILED = 1
EXIT_PRUNE_FAILED = 3
EXIT_BUSY = 75  # EX_TEMPFAIL: the previous run is still going
_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$|^[A-Za-z]{3}$")
_MACROS = {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
_MARK = "# managed by `pai backup schedule`; change it with that command"


def check_cron(expr: str) -> str:
    """A five-field cron expression or a macro like ``@daily``; raises PolicyError otherwise."""
    expr = " ".join(expr.split())
    if expr in _MACROS:
        return expr
    fields = expr.split(" ")
    if len(fields) != 5 or not all(_FIELD.match(f) for f in fields):
        raise PolicyError(
            f"cron schedule {expr!r} is not five fields like '0 2 * * *' or a macro like @daily"
        )
    return expr


def job_command(home: Path, args: list[str]) -> str:
    """The shell command cron runs: this interpreter, so the installed pai is the one used."""
    argv = [sys.executable, "-m", "pai.cli", "backup", "run", *args]
    log = home / "backup" / "run.log"
    return (
        f"PAI_HOME={shlex.quote(str(home))} "
        + " ".join(shlex.quote(a) for a in argv)
        + f" >> {shlex.quote(str(log))} 2>&1"
    )


def install(cron_file: Path, expr: str, home: Path, args: list[str], user: str = "root") -> str:
    line = f"{check_cron(expr)} {user} {job_command(home, args)}"
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    text = f"{_MARK}\nSHELL=/bin/sh\nPATH={path}\n{line}\n"
    atomic_write_text(cron_file, text, mode=0o644)
    return line


def remove(cron_file: Path) -> bool:
    if not cron_file.exists():
        return False
    if _MARK not in cron_file.read_text("utf-8", "replace"):
        raise PolicyError(f"{cron_file} was not written by `pai backup schedule`; left alone")
    cron_file.unlink()
    return True


def run_job(
    p: Paths, repo: Path, recipients: list[age.Recipient], policy: Policy | None
) -> tuple[dict[str, Any], int]:
    """Create then prune under the schedule lock; returns (summary, exit code). Never raises
    a PaiError: a cron job must always leave its one line."""
    summary: dict[str, Any] = {"ok": False, "repo": str(repo), "snapshot": None}
    try:
        lock = file_lock(p.ensure().home / "backup" / "run.lock", timeout=0)
        lock.__enter__()
    except PaiError:
        summary["error"] = BusyError("the previous scheduled backup is still running").message
        return summary, EXIT_BUSY
    try:
        try:
            result = create(p, repo, recipients, lock_timeout=0)
        except PaiError as exc:
            summary["error"] = f"create: {exc.diagnostics()}"
            return summary, EXIT_CREATE_FAILED
        summary.update(
            snapshot=result.snapshot,
            new_bytes=result.sidecar["sizes"]["new_bytes"],
            files=result.sidecar["sizes"]["files"],
        )
        if policy is not None and not policy.empty():
            try:
                pruned = prune(repo, policy, dry_run=False)
            except PaiError as exc:
                summary["error"] = f"prune: {exc.diagnostics()}"
                return summary, EXIT_PRUNE_FAILED
            summary.update(removed=pruned["remove"], bytes_freed=pruned["bytes_freed"])
        summary["ok"] = True
        return summary, EXIT_OK
    finally:
        lock.__exit__(None, None, None)
