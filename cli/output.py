"""Rendering for commands: rich for people, ``--json`` for scripts, errors on stderr.

Commands build a plain dict of what happened and hand it to :func:`emit`; they never print
directly, so the human and JSON forms always say the same thing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

_state = {"json": False}


def set_json(enabled: bool) -> None:
    """Remember that this invocation asked for ``--json`` (errors are then JSON too)."""
    _state["json"] = enabled


def json_mode() -> bool:
    return _state["json"]


def emit(data: dict[str, Any], human: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Print ``data`` as JSON in --json mode, else through ``human`` (or as key: value lines)."""
    if json_mode():
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        return
    if human is not None:
        human(data)
        return
    for key, value in data.items():
        console.print(f"[bold]{key}[/]: {value}")


def error(code: str, message: str, exit_code: int) -> None:
    """Report a failure: one line on stderr, and a JSON object on stdout in --json mode."""
    if json_mode():
        payload = {"ok": False, "error": {"code": code, "message": message}}
        sys.stdout.write(json.dumps(payload, sort_keys=True) + "\n")
    # escaped: a message may quote brackets (pai[control], a[0]) that rich would eat as markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, markup=True)
    _ = exit_code


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*[str(cell) for cell in row])
    console.print(t)


@contextmanager
def byte_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A transfer progress bar; yields ``advance(nbytes)``. Silent in --json mode or off a tty."""
    if json_mode() or not err_console.is_terminal:
        yield lambda _n: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
