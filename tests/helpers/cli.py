"""Run the pai CLI in-process through typer's runner, exactly as the console script would."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from typer.testing import CliRunner

from pai.cli.main import app
from pai.cli.output import set_json


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_cli(*args: str, input: str | None = None) -> CliResult:
    set_json(False)  # module state from a previous in-process invocation must not leak
    runner = CliRunner()
    result = runner.invoke(app, list(args), input=input, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def run_cli_process(*args: str, timeout: float = 900) -> CliResult:
    """Run ``pai`` as a separate process (the console script's code path, own interpreter).

    Used where the command loads libraries that patch interpreter globals (ansible-core
    replaces ``sys.intern``), which must not leak into the test process.
    """
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "pai.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
