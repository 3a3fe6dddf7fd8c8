"""`pai serve`: run the inference daemon in the foreground (docs/serve.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from pai.audit import record_event
from pai.cli.output import set_json
from pai.inference.config import load_serve_config
from pai.inference.server import serve as run_daemon
from pai.settings import paths


def serve(
    bundle: list[str] = typer.Option(
        None,
        "--bundle",
        "-b",
        help="Installed bundle folder or bundle file to serve (repeatable; default [serve] "
        "bundles).",
    ),
    host: str | None = typer.Option(None, "--host", help="Address to listen on."),
    port: int | None = typer.Option(None, "--port", help="Port (0 picks a free one)."),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file whose [serve] table to use."
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Accept requests without tokens (development only)."
    ),
    json_out: bool = typer.Option(
        False, "--json", help="Print the ready and stopped events as JSON lines."
    ),
) -> None:
    """Serve embeddings and search over HTTP until SIGTERM; SIGHUP reloads the bundles."""
    set_json(json_out)
    p = paths()
    settings = load_serve_config(p, config).with_overrides(
        host=host,
        port=port,
        device=device,
        bundles=tuple(bundle) if bundle else None,
        auth=False if no_auth else None,
    )
    if no_auth:
        record_event("serve.auth_disabled", resource="serve", outcome="ok")
    run_daemon(p, settings, json_lines=json_out)
