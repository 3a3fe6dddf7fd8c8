"""Options and small helpers shared by several command groups."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pai.errors import PassphraseError
from pai.keys import passphrase_from_env, read_passphrase_file

JSON_OPTION = typer.Option(False, "--json", help="Print a JSON document for scripts.")
PASSPHRASE_FILE_OPTION = typer.Option(
    None,
    "--passphrase-file",
    help="File holding the key passphrase (or set PAI_PASSPHRASE_FILE / PAI_PASSPHRASE).",
)


def passphrase(file: Path | None, *, ask: bool = False, confirm: bool = False) -> bytes | None:
    """The passphrase from ``--passphrase-file``, the environment, or (if ``ask``) a prompt."""
    if file is not None:
        return read_passphrase_file(file)
    from_env = passphrase_from_env()
    if from_env or not ask:
        return from_env
    if not sys.stdin.isatty():
        raise PassphraseError(
            "a passphrase is needed and there is no terminal to ask on",
            hint="use --passphrase-file or set PAI_PASSPHRASE_FILE",
        )
    text = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    if not text:
        raise PassphraseError("the passphrase must not be empty")
    return str(text).encode()
