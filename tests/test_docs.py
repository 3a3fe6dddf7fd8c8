"""Every `pai` command is documented in README.md or docs/ (datasette's habit)."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.main import get_command

from pai.cli.main import app

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: typer.core.TyperGroup, prefix: str) -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if isinstance(command, typer.core.TyperGroup):
            found.extend(_commands(command, path))
        else:
            found.append(path)
    return found


def _docs_text() -> str:
    texts = [(ROOT / "README.md").read_text()]
    texts += [p.read_text() for p in sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(texts)


def test_every_command_is_documented() -> None:
    root = get_command(app)
    assert isinstance(root, typer.core.TyperGroup)
    text = _docs_text()
    commands = _commands(root, "pai")
    assert commands
    missing = [command for command in commands if command not in text]
    assert not missing, f"undocumented commands: {missing}"
