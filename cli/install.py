"""``pai install|upgrade|rollback|verify-node``: provision serving nodes with Ansible."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.live import Live
from rich.table import Table

from pai.cli.common import JSON_OPTION
from pai.cli.output import console, emit, err_console, json_mode, set_json, table
from pai.playbooks import provision
from pai.playbooks.runner import HostState

INVENTORY_OPTION = typer.Option(
    ..., "--inventory", "-i", help="Ansible inventory (INI or YAML) with group 'pai_nodes'."
)
LIMIT_OPTION = typer.Option(None, "--limit", "-l", help="Only these hosts (Ansible pattern).")
FORKS_OPTION = typer.Option(5, "--forks", "-f", min=1, help="Hosts worked on in parallel.")

STYLE = {"ok": "green", "changed": "yellow", "failed": "red", "unreachable": "red"}


def _live_table(label: str, states: dict[str, HostState]) -> Table:
    t = Table(title=f"pai: {label}", title_justify="left")
    for column in ("host", "task", "ok", "changed", "failed"):
        t.add_column(column)
    for name in sorted(states):
        s = states[name]
        color = STYLE.get(s.status, "white")
        t.add_row(
            f"[{color}]{name}[/]",
            s.task[:60],
            str(s.ok),
            str(s.changed),
            str(s.failed + s.unreachable),
        )
    return t


@contextmanager
def live_display() -> Iterator[Callable[[str, dict[str, HostState]], None] | None]:
    """Per host: the current task and its counts, redrawn as Ansible's events arrive."""
    if json_mode() or not err_console.is_terminal:
        yield None
        return
    with Live(console=err_console, transient=True, refresh_per_second=8) as live:

        def update(label: str, states: dict[str, HostState]) -> None:
            live.update(_live_table(label, states))

        yield update


def _summary(data: dict[str, Any]) -> None:
    rows = [
        [
            h["host"],
            h["step"],
            h["status"],
            h["ok"],
            h["changed"],
            h["failed"] + h["unreachable"],
            h.get("version", ""),
            h.get("firewall", ""),
            "gpu" if h.get("gpu") else "cpu",
            h.get("message", ""),
        ]
        for h in data["hosts"]
    ]
    columns = ["host", "step", "status", "ok", "changed", "failed", "version", "firewall"]
    table(f"pai {data['action']}", [*columns, "accel", "message"], rows)
    if "bundle" in data:
        b = data["bundle"]
        console.print(f"bundle {b['name']} {b['version']} sha256 {b['sha256'][:16]}…")
    if data.get("stopped"):
        console.print(f"[red]stopped:[/] {data['stopped']}")
    if data.get("rolled_back"):
        console.print(f"rolled back: {', '.join(data['rolled_back'])}")
    artifacts = {s["artifacts"] for s in data["steps"]}
    console.print(f"ansible artifacts: {', '.join(sorted(artifacts))}")
    console.print("[green]ok[/]" if data["ok"] else "[red]failed[/]")


def _finish(outcome: provision.Outcome) -> None:
    emit(outcome.as_dict(), _summary)
    if not outcome.ok:
        raise typer.Exit(1)


def install(
    bundle: Path = typer.Argument(..., help="The bundle file (verified before anything runs)."),
    inventory: Path = INVENTORY_OPTION,
    limit: str | None = LIMIT_OPTION,
    check: bool = typer.Option(False, "--check", help="Dry run: report what would change."),
    forks: int = FORKS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Verify a bundle, then install it on the inventory's nodes."""
    set_json(json_out)
    with live_display() as update:
        outcome = provision.install(
            bundle, inventory, limit=limit, check=check, forks=forks, on_change=update
        )
    _finish(outcome)


def upgrade(
    bundle: Path = typer.Argument(..., help="The newer bundle file."),
    inventory: Path = INVENTORY_OPTION,
    canary: int = typer.Option(1, "--canary", min=0, help="Hosts upgraded first, alone."),
    batch: str = typer.Option("25%", "--batch", help="Batch size after the canary: N or P%."),
    max_fail: int = typer.Option(
        0, "--max-fail", min=0, help="Failed hosts a batch may have before it is rolled back."
    ),
    limit: str | None = LIMIT_OPTION,
    forks: int = FORKS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Upgrade canary first, then in health-gated batches; roll back a failed batch."""
    set_json(json_out)
    with live_display() as update:
        outcome = provision.upgrade(
            bundle,
            inventory,
            canary=canary,
            batch=batch,
            max_fail=max_fail,
            limit=limit,
            forks=forks,
            on_change=update,
        )
    _finish(outcome)


def rollback(
    inventory: Path = INVENTORY_OPTION,
    to: str | None = typer.Option(None, "--to", help="Installed version (default: previous)."),
    limit: str | None = LIMIT_OPTION,
    forks: int = FORKS_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Switch nodes back to the previous (or a named) installed release."""
    set_json(json_out)
    with live_display() as update:
        outcome = provision.rollback(inventory, to=to, limit=limit, forks=forks, on_change=update)
    _finish(outcome)


def _verify_summary(data: dict[str, Any]) -> None:
    rows = [
        [h["host"], h["passed"], "; ".join(h["failed"]) or "-", "; ".join(h["skipped"]) or "-"]
        for h in data["hosts"]
    ]
    table("pai verify-node", ["host", "passed", "failed", "skipped"], rows)
    console.print(f"log: {data['log']}")
    console.print("[green]ok[/]" if data["ok"] else "[red]failed[/]")


def verify_node(
    inventory: Path = INVENTORY_OPTION,
    limit: str | None = LIMIT_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Check live nodes with the shipped testinfra suite."""
    set_json(json_out)
    with err_console.status("checking nodes", spinner="dots") if not json_mode() else _null():
        result = provision.verify_nodes(inventory, limit=limit)
    emit(result, _verify_summary)
    if not result["ok"]:
        raise typer.Exit(1)


@contextmanager
def _null() -> Iterator[None]:
    yield None


def register(app: typer.Typer) -> None:
    """Top-level commands (not a group): `pai install`, `pai upgrade`, ..."""
    app.command("install")(install)
    app.command("upgrade")(upgrade)
    app.command("rollback")(rollback)
    app.command("verify-node")(verify_node)
