"""The ``pai`` command: the typer app, global options, and the one place errors are caught.

Command groups live in their own modules and are registered here. A :class:`PaiError` from
anywhere below becomes one line on stderr and its exit code (1 for failures, 2 for usage);
an unexpected exception is reported as an internal error, with a traceback only under
``--verbose``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from pai import __version__
from pai.cli import audit as audit_cmd
from pai.cli import backup as backup_cmd
from pai.cli import bundle as bundle_cmd
from pai.cli import bundle_build  # noqa: F401  (registers build, apply-delta on `pai bundle`)
from pai.cli import doctor as doctor_cmd
from pai.cli import install as install_cmd
from pai.cli import keys as keys_cmd
from pai.cli import serve as serve_cmd
from pai.cli import token as token_cmd
from pai.cli.output import error
from pai.errors import PaiError

_verbose = {"on": False}


class PaiGroup(TyperGroup):
    """Root group whose ``invoke`` is the single catch point for pai's error family."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except PaiError as exc:
            if _verbose["on"]:
                raise
            error(exc.code, exc.diagnostics(), exc.exit_code)
            ctx.exit(exc.exit_code)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            error("interrupted", "interrupted; nothing was left half-written", 130)
            ctx.exit(130)
        except Exception as exc:
            if _verbose["on"]:
                raise
            error(
                "internal",
                f"internal error: {type(exc).__name__}: {exc} "
                "(re-run with --verbose and report it)",
                70,
            )
            ctx.exit(70)


app = typer.Typer(
    cls=PaiGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="pai: private AI for a CRM inside an air-gapped perimeter.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pai {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    home: Path | None = typer.Option(
        None, "--home", envvar="PAI_HOME", help="State folder (default /var/lib/pai for root)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """pai: signed offline bundles, provisioning, inference, audit and backups."""
    _verbose["on"] = verbose
    if home is not None:
        os.environ["PAI_HOME"] = str(home)


app.add_typer(keys_cmd.app, name="keys")
app.add_typer(token_cmd.app, name="token")
app.command("serve")(serve_cmd.serve)
app.command("doctor")(doctor_cmd.doctor)
app.add_typer(bundle_cmd.app, name="bundle")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(backup_cmd.app, name="backup")
install_cmd.register(app)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
